"""Mutation fuzzing: a damaged file gives pydicom's pixels or a TorchDicomError.

For every mutated input, ``read_frames`` (by path and by index row),
``scaled_px``, ``scan`` and a ``DicomDataset`` item must either return pixels
equal to what pydicom returns for that input or raise a
:class:`~torchdicom.TorchDicomError` naming the file — never another exception
type, a crash, a call over two seconds, or a traced allocation beyond a
multiple of the file size (see :mod:`tests.fuzz._harness`).

``TORCHDICOM_FUZZ_EXAMPLES`` sets the number of inputs (``make fuzz``: 10 000;
default: a small, derandomized run). ``TORCHDICOM_FUZZ_REPORT=path.json``
writes the outcome counts there (what tests/RELIABILITY.md reports).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRBigEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from tests.conftest import real_files
from tests.dicom_factory import write_dicom
from tests.fuzz import _mutate
from tests.fuzz._harness import CALLS, FAILURES, Worker
from tests.fuzz._mutate import ABSURD_VALUES, TRANSFER_SYNTAXES, Mutation

EXAMPLES = int(os.environ.get("TORCHDICOM_FUZZ_EXAMPLES", "120"))
REPORT = os.environ.get("TORCHDICOM_FUZZ_REPORT")
# Seeds up to this size keep one example well under a second.
_MAX_SEED_BYTES = 300_000

# Reasons a stricter rejection may give: each names a real defect of the
# input. A rejection outside this list is a bug in the reason (or a new
# defect class to add here deliberately).
_STRICTER_REASONS = re.compile(
    "|".join(
        [
            r"header cannot be (parsed|interpreted)",
            r"not a DICOM file",
            r"not a valid DICOM file",
            r"pixel data is truncated",
            r"pixel data ends early",
            r"impossible",
            r"unsupported \(0028,",
            r"does not fit in \(0028,0100\)",
            r"pixel data cannot be decoded",
            r"decoded frame has shape",
            r"without its description",
            r"no \(7FE0,0010\) Pixel Data",
            r"no pixel data decoder",
            r"no installed decoder",
            r"cannot decode",
            r"Modality LUT",
            r"not indexed",
            r"compressed frames",
            # a code-stream header that disagrees with the DICOM header (issue 11)
            r"code-stream says",
            r"code-stream holds",
            r"RLE segments, but the RLE header",
            r"the RLE header's segment",
            # DicomDataset's one dtype: values beyond the (0028,0101) Bits Stored it was sized by
            r"exceeds what its header declares",
        ]
    )
)


# --------------------------------------------------------------------------- seeds
def _generated_seeds(directory: Path) -> list[Path]:
    """One small file per pixel layout the factory covers."""
    specs: list[dict[str, Any]] = [
        {"bits_allocated": 8},
        {"bits_allocated": 16, "bits_stored": 12, "signed": True, "garbage_high_bits": True},
        {"bits_allocated": 32, "signed": True},
        {"bits_allocated": 1, "rows": 5, "columns": 3, "frames": 3},
        {"pixel_keyword": "FloatPixelData"},
        {"pixel_keyword": "DoubleFloatPixelData"},
        {"samples_per_pixel": 3, "bits_allocated": 8, "planar_configuration": 0},
        {"samples_per_pixel": 3, "bits_allocated": 8, "planar_configuration": 1, "frames": 2},
        {"frames": 4, "rescale_slope": 2.0, "rescale_intercept": -1024.0},
        {"transfer_syntax": ExplicitVRBigEndian},
        {"transfer_syntax": RLELossless, "frames": 3},
        {"transfer_syntax": JPEG2000Lossless, "frames": 2, "rows": 32, "columns": 32},
        {"transfer_syntax": JPEGLSLossless, "frames": 2, "bits_stored": 12},
        {"transfer_syntax": JPEGLSLossless, "samples_per_pixel": 3, "bits_allocated": 8},
        {"transfer_syntax": RLELossless, "samples_per_pixel": 3, "bits_allocated": 8},
        {"preamble": False},
    ]
    out = []
    for i, spec in enumerate(specs):
        path = directory / f"seed{i:02d}.dcm"
        write_dicom(path, seed=i, **spec)
        out.append(path)
    return out


def _real_seeds() -> list[Path]:
    """Real files small enough to fuzz quickly that hold pixel data."""
    out = []
    for p in real_files():
        if p.stat().st_size > _MAX_SEED_BYTES:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=False, defer_size=1024)
        except Exception:
            continue
        if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            out.append(p)
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    generated = _generated_seeds(tmp_path_factory.mktemp("seeds"))
    return [(p.name, p.read_bytes()) for p in [*generated, *_real_seeds()]]


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout_s=120.0)
    yield w
    w.close()


@pytest.fixture(scope="module")
def tally():
    counts: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in CALLS}
    stats: dict[str, Any] = {
        "inputs": 0,
        "by_call": counts,
        "by_op": collections.Counter(),
        "reasons": collections.Counter(),
        "max_elapsed_s": 0.0,
        "max_peak_ratio": 0.0,
        "seeds": 0,
    }
    yield stats
    _write_report(stats)


def _write_report(stats: dict[str, Any]) -> None:
    """Outcome counts to ``TORCHDICOM_FUZZ_REPORT`` (rewritten as the run goes, so a
    run stopped early still reports what it tried)."""
    if REPORT:
        counts = stats["by_call"]
        out = {
            "inputs": stats["inputs"],
            "seeds": stats["seeds"],
            "by_call": {k: dict(v) for k, v in counts.items()},
            "by_op": dict(stats["by_op"]),
            "stricter_reasons": dict(stats["reasons"].most_common(40)),
            "max_elapsed_s": stats["max_elapsed_s"],
            "max_peak_over_file_size": stats["max_peak_ratio"],
        }
        Path(REPORT).write_text(json.dumps(out, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- strategies
_fraction = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)
_u32 = st.sampled_from([0, 1, 2, 3, 7, 8, 0xFF, 0x1000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF])


def _set_strategy() -> st.SearchStrategy[Mutation]:
    pairs = [(k, v) for k, values in ABSURD_VALUES.items() for v in values]
    return st.builds(Mutation, op=st.just("set"), arg=st.sampled_from(pairs))


_rescale = st.builds(
    Mutation,
    op=st.just("rescale"),
    arg=st.tuples(
        st.sampled_from(["Rows", "Columns", "SamplesPerPixel", "BitsAllocated"]),
        st.sampled_from([0.5, 2.0]),
    ),
)

_mutation = st.one_of(
    _set_strategy(),
    _rescale,
    st.builds(
        Mutation,
        op=st.just("drop"),
        arg=st.sampled_from(
            [
                ("PixelData",),
                ("Rows",),
                ("BitsAllocated",),
                ("SamplesPerPixel", "PhotometricInterpretation"),
                ("PixelRepresentation", "BitsStored"),
            ]
        ),
    ),
    st.builds(Mutation, op=st.just("truncate"), where=_fraction),
    st.builds(
        Mutation,
        op=st.sampled_from(["flip_header", "flip_pixels"]),
        where=_fraction,
        arg=st.integers(1, 255),
    ),
    st.builds(
        Mutation,
        op=st.sampled_from(["insert_header", "insert_pixels"]),
        where=_fraction,
        arg=st.binary(min_size=1, max_size=16),
    ),
    st.builds(
        Mutation,
        op=st.sampled_from(["delete_header", "delete_pixels"]),
        where=_fraction,
        arg=st.integers(1, 64),
    ),
    st.builds(
        Mutation,
        op=st.sampled_from(["u32_header", "pixel_length", "fragment_length"]),
        where=_fraction,
        arg=_u32,
    ),
    st.builds(Mutation, op=st.just("undefined_length"), where=_fraction),
    st.builds(Mutation, op=st.just("duplicate_pixels")),
    st.builds(Mutation, op=st.just("transfer_syntax"), arg=st.sampled_from(TRANSFER_SYNTAXES)),
)

_counter = itertools.count()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="TORCHDICOM_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_mutated_files_give_pydicom_pixels_or_torchdicom_error(
    data: st.DataObject,
    seeds: list[tuple[str, bytes]],
    worker: Worker,
    tally: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Draw the seed's position, not its bytes: hypothesis prints what it draws.
    name, seed_bytes = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    mutations = data.draw(st.lists(_mutation, min_size=1, max_size=3), label="mutations")
    mutated = _mutate.apply(seed_bytes, mutations)
    # A fresh name per input: the header cache is keyed by (path, size, mtime)
    # and a same-size rewrite within one mtime tick would look unchanged.
    directory = tmp_path_factory.getbasetemp() / "fuzz"
    directory.mkdir(exist_ok=True)
    path = directory / f"in{next(_counter):06d}.dcm"
    path.write_bytes(mutated)
    try:
        verdicts = worker.check(str(path))
    finally:
        path.unlink()

    tally["inputs"] += 1
    tally["seeds"] = len(seeds)
    for m in mutations:
        tally["by_op"][m.op if m.op not in ("set", "rescale") else f"{m.op} {m.arg[0]}"] += 1  # type: ignore[index]
    if tally["inputs"] % 50 == 0:
        _write_report(tally)
    context = f"seed {name}, mutations: {_mutate.describe(mutations)}"
    assert "crash" not in verdicts, f"{verdicts['crash']} ({context})"
    assert "harness" not in verdicts, verdicts["harness"]
    for call, v in verdicts.items():
        tally["by_call"][call][v["class"]] += 1
        tally["max_elapsed_s"] = max(tally["max_elapsed_s"], v["elapsed"])
        tally["max_peak_ratio"] = max(tally["max_peak_ratio"], v["peak"] / max(len(mutated), 1))
        assert v["class"] not in FAILURES, f"{call}: {v['class']} {v.get('detail', '')} ({context})"
        if v["class"] in ("stricter", "rejected"):
            assert v["names_file"], f"{call}: error does not name the file ({context})"
        if v["class"] == "stricter":
            tally["reasons"][f"{v['error_type']}: {_reason_key(v['reason'])}"] += 1
            assert _STRICTER_REASONS.search(v["reason"]), (
                f"{call}: rejected a file pydicom reads, for an unexpected reason:"
                f" {v['error_type']}: {v['reason']} ({context})"
            )


def _reason_key(reason: str) -> str:
    """The reason without numbers and file-specific parts, for counting."""
    reason = re.sub(r"\d+", "N", reason)
    return reason.split(": ", 1)[0][:90]
