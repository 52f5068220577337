"""Mutation fuzzing of shard sets: a damaged tar, offset table or manifest gives the
original pixels or a TorchDicomError.

A small set (native CT slices, a JPEG baseline cine, an RLE and a deflated file) is exported
once; every example copies it, applies 1–2 mutations drawn by hypothesis and reads every item
with :class:`~torchdicom.data.shards.DicomShardDataset`:

* tar: a byte flipped / a 4-byte length-like value written at a random position, a cut,
  bytes inserted or deleted;
* offset table / manifest: a byte flipped, a cut, or one JSON value (anywhere in the
  document) replaced by an absurd one (0, -1, 2³¹-1, 10¹², a string, null, a list, a
  neighbour value ±1 / ±512) — with and without the export's checksums (a writer other
  than torchdicom has none: the value checks alone must hold).

Each read must either raise a :class:`~torchdicom.errors.TorchDicomError` or return items
whose images equal the original pixels, within a per-example time bound (``setitimer``)
and an allocation bound (tracemalloc). Bytes inside a member's pixel data or code-streams
are not covered by any check (as in a file): for flips there, the member's items must equal
``read_frames`` of the mutated member bytes as a file (or raise), the other items the originals.

``TORCHDICOM_FUZZ_EXAMPLES`` sets the number of examples (default 150).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import real_file
from torchdicom import scan
from torchdicom.data.shards import DicomShardDataset
from torchdicom.errors import TorchDicomError
from torchdicom.export import SHARD_TABLE_SUFFIX, to_webdataset
from torchdicom.io.frames import read_frames
from torchdicom.samples import ct_like, us_cine_like

EXAMPLES = int(os.environ.get("TORCHDICOM_FUZZ_EXAMPLES", "150"))
_LIMIT_S = 10.0  # wall-clock bound of one example's reads (they take ~50 ms)
_ALLOC_LIMIT = 64 * 2**20  # traced bytes one example's reads may allocate

REPORT = os.environ.get("TORCHDICOM_FUZZ_REPORT")
# Outcome counts of this run (written to TORCHDICOM_FUZZ_REPORT_shards.json beside the
# report of tests/fuzz/test_fuzz.py when set): what tests/RELIABILITY.md reports.
_OUTCOMES: collections.Counter[str] = collections.Counter()

_ABSURD: list[Any] = [0, -1, 2**31 - 1, 10**12, "x", None, [], {}, 1.5, True]


class _Alarm(BaseException):
    """Raised by the timer; a BaseException so library code cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm()


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """The exported set, its original items by index, and each member's byte ranges."""
    root = tmp_path_factory.mktemp("fuzz_shards")
    ct_like(root / "src" / "ct", n_series=1, slices=2, size=16)
    us_cine_like(root / "src" / "us", n=1, frames=2, size=16, jpeg=True)
    for name in ("MR_small_RLE.dcm", "image_dfl.dcm"):
        shutil.copy(real_file(name), root / "src" / name)
    (root / "out").mkdir()
    report = to_webdataset(
        scan(root / "src", progress=False), str(root / "out" / "%06d.tar"), maxcount=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = {it["index"]: it["image"] for it in DicomShardDataset(report.manifest)}
    yield root / "out", items
    if REPORT:
        Path(REPORT).with_suffix(".shards.json").write_text(json.dumps(_OUTCOMES, indent=1))


def _files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())}


@st.composite
def _mutations(draw: Any, names: list[str]) -> list[tuple[str, str, Any]]:
    """1–2 (file, kind, parameters) mutations of the set's files."""
    out = []
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(names))
        if name.endswith(".tar"):
            kind = draw(st.sampled_from(["flip", "flip", "flip", "u32", "cut", "insert", "delete"]))
        else:
            kind = draw(st.sampled_from(["value", "value", "value", "flip", "cut"]))
        out.append((name, kind, (draw(st.integers(0, 2**32)), draw(st.integers(0, 2**32)))))
    return out


def _json_paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place of a JSON document (dict keys and list positions)."""
    found = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _json_paths(v, (*path, k))
    elif isinstance(value, list):
        for k, v in enumerate(value):
            found += _json_paths(v, (*path, k))
    return found


def _replace(doc: Any, path: tuple, pick: int) -> Any:
    if not path:
        return _ABSURD[pick % len(_ABSURD)]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    choices = list(_ABSURD)
    if isinstance(old, int) and not isinstance(old, bool):
        choices += [old + 1, old - 1, old + 512, old - 512, old * 2]
    parent[path[-1]] = choices[pick % len(choices)]
    return doc


def _mutate(
    folder: Path, mutations: list[tuple[str, str, Any]], checksums: bool
) -> list[tuple[str, int]]:
    """Apply the mutations; returns the (tar, position) of byte flips (for the pixel rule)."""
    flips = []
    for name, kind, (a, b) in mutations:
        path = folder / name
        data = bytearray(path.read_bytes())
        if kind == "value":
            try:
                doc = json.loads(data)
            except ValueError:
                continue  # an earlier mutation broke the JSON already
            paths = _json_paths(doc)
            doc = _replace(doc, paths[a % len(paths)], b)
            path.write_text(json.dumps(doc))
            continue
        if not data:
            continue  # cut to nothing by an earlier mutation
        at = a % len(data)
        if kind == "flip":
            data[at] ^= 1 << (b % 8) or 1
            if name.endswith(".tar"):
                flips.append((name, at))
        elif kind == "u32":
            data[at : at + 4] = (b % 2**32).to_bytes(4, "little")
            if name.endswith(".tar"):
                flips.extend((name, at + k) for k in range(4))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([b % 256]) * (1 + b % 16)
        elif kind == "delete":
            del data[at : at + 1 + b % 64]
        path.write_bytes(bytes(data))
    if not checksums:
        _drop_checksums(folder)
    return flips


def _drop_checksums(folder: Path) -> None:
    for path in folder.glob("*.json"):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(doc, dict):
            doc.pop("crc32", None)
            members = doc.get("members")
            for member in members if isinstance(members, list) else []:
                if isinstance(member, dict):
                    member.pop("crc32", None)
            path.write_text(json.dumps(doc))


# Row columns that say how a member's bytes become pixels. Without the export's checksums a
# changed value of one of them reads other pixels from intact bytes (rows and columns
# swapped, another signedness): the value checks cannot see it (the header is not parsed).
_INTERPRETATION = (
    "rows",
    "columns",
    "frames",
    "samples_per_pixel",
    "photometric",
    "planar_configuration",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "transfer_syntax",
    "pixel_keyword",
    "encapsulated",
    "pixel_offset",
    "pixel_length",
    "frame_offsets",
    "frame_lengths",
)


def _row_values_changed(original: Path, folder: Path) -> bool:
    """Whether a mutated offset table still parses and one of its rows has another value in
    an interpretation column than the original (a lie only the checksums catch)."""
    for path in original.glob(f"*{SHARD_TABLE_SUFFIX}"):
        try:
            mutated = json.loads((folder / path.name).read_text())
            members = mutated["members"]
            for before, after in zip(json.loads(path.read_text())["members"], members):
                if any(before["row"][c] != after["row"].get(c) for c in _INTERPRETATION):
                    return True
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return False


def _pixel_members(original: Path, flips: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Items (indices) of members whose pixel data / code-streams a flip changed, per mutated
    member file written beside: {member file: [item indices]}; flips elsewhere: none."""
    manifest = json.loads((original / "shards.json").read_text())
    base, hit = 0, {}
    for entry in manifest["shards"]:
        table = json.loads((original / (entry["shard"] + SHARD_TABLE_SUFFIX)).read_text())
        for member in table["members"]:
            row = member["row"]
            start = row["pixel_offset"] if row["pixel_offset"] >= 0 else member["offset"]
            end = member["offset"] + member["size"]
            for name, at in flips:
                if name == entry["shard"] and start <= at < end:
                    hit[(name, member["offset"], member["size"])] = list(
                        range(base, base + row["frames"])
                    )
            base += row["frames"]
    return hit


def _expected_after_flips(folder: Path, hit: dict, tmp: Path) -> dict[int, torch.Tensor | None]:
    """The items of members whose pixel bytes changed: read_frames of the mutated member as a
    file (None where that raises too)."""
    out: dict[int, torch.Tensor | None] = {}
    for k, ((name, offset, size), indices) in enumerate(hit.items()):
        member = tmp / f"member{k}.dcm"
        with open(folder / name, "rb") as f:
            f.seek(offset)
            member.write_bytes(f.read(size))
        for frame, index in enumerate(indices):
            try:
                out[index] = read_frames(str(member), frame)[0]
            except TorchDicomError:
                out[index] = None
    return out


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_shard_set_gives_original_pixels_or_a_torchdicom_error(
    shard_set, tmp_path_factory, data
):
    original, items = shard_set
    names = [n for n in _files(original) if n.endswith((".tar", ".json"))]
    mutations = data.draw(_mutations(names), label="mutations")
    checksums = data.draw(st.booleans(), label="checksums")
    source = data.draw(st.sampled_from(["manifest", "tables"]), label="source")
    work = tmp_path_factory.mktemp("example")
    folder = work / "set"
    shutil.copytree(original, folder)
    flips = _mutate(folder, mutations, checksums)
    trusted = not checksums and _row_values_changed(original, folder)
    hit = _pixel_members(original, flips)
    expected = _expected_after_flips(folder, hit, work)
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    got: dict[int, torch.Tensor] = {}
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    tracemalloc.start()
    signal.setitimer(signal.ITIMER_REAL, _LIMIT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = DicomShardDataset(str(folder / "shards.json") if source == "manifest" else shards)
            for item in ds:
                got[item["index"]] = item["image"]
        outcome = "items"
    except TorchDicomError:
        outcome = "error"
    except _Alarm:
        pytest.fail(f"hang over {_LIMIT_S} s: {mutations}")
    except BaseException as exc:  # the failure this test exists to find
        pytest.fail(f"{type(exc).__name__} (not a TorchDicomError) for {mutations}: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert peak < _ALLOC_LIMIT, f"{peak} bytes traced for {mutations}"
    kinds = "+".join(sorted({f"{n.split('.', 1)[1]}:{k}" for n, k, _ in mutations}))
    _OUTCOMES[f"{outcome} {kinds}"] += 1
    _OUTCOMES[outcome] += 1
    _OUTCOMES["pixel-byte flips"] += bool(expected)
    if outcome == "error":
        return
    if trusted:
        # Read through a lying row value of a table without checksums: only the bounds hold
        # (no foreign error, hang or allocation), the pixels may be other ones.
        _OUTCOMES["items read through a changed row value (no checksums)"] += 1
        return
    # Items were returned: every one is the original pixels, or, for a member whose pixel
    # bytes were flipped, what read_frames gives for those bytes as a file.
    for index, image in got.items():
        if index in expected:
            want = expected[index]
            assert want is not None, f"item {index} read where its member file fails: {mutations}"
            assert torch.equal(image, want.to(image.dtype)), f"item {index}: {mutations}"
        else:
            assert index in items and torch.equal(image, items[index]), (
                f"item {index}: wrong pixels for {mutations}"
            )
    assert sorted(got) == sorted(items), f"items {sorted(got)} for {mutations}"
