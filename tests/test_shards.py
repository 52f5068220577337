"""Shards (torchdicom.export.to_webdataset) and streaming them (DicomShardDataset).

Round trip: every item read from the shards equals ``read_frames`` of the original file
(native CT, JPEG baseline cine, JPEG lossless, JPEG 2000, RLE, deflated, big-endian,
multi-frame) and carries DicomDataset's keys and metadata. Splitting: ranks × workers see
every item exactly once, and the rule for totals not divisible by the world size. Errors:
a truncated shard, bad source files. Remote: ``memory://`` and a real S3 server (moto).
A real 2-rank gloo DDP fit streams from shards (tests/ddp_shards_check.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from tests.conftest import real_file, run_ddp_script
from tests.test_remote import KEY_ID, SECRET, s3_server  # noqa: F401 - a fixture
from torchdicom import scan
from torchdicom.data import Collate, DicomDataset
from torchdicom.data.shards import DicomShardDataset, partition
from torchdicom.datamodule import DicomDataModule
from torchdicom.errors import CorruptDicomError, DicomFileNotFoundError, TorchDicomError
from torchdicom.export import SHARD_TABLE_SUFFIX, to_webdataset
from torchdicom.io.frames import read_frames, route_for
from torchdicom.samples import ct_like, us_cine_like
from torchdicom.sources import remote

# One file per read route (and the routes that need the whole file: deflated, big-endian).
_REAL = (
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, multi-frame
    "MR_small_RLE.dcm",  # RLE: code-streams by span
    "image_dfl.dcm",  # deflated: the pydicom data set route, on the member's bytes
    "MR_small_bigendian.dcm",  # native via pydicom
    "SC_ybr_full_uncompressed.dcm",  # YBR native
    "color3d_jpeg_baseline.dcm",  # JPEG baseline YCbCr, multi-frame
)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shard_sources")
    ct_like(root / "ct", n_series=1, slices=3, size=32)
    us_cine_like(root / "us", n=1, frames=4, size=32, jpeg=True)
    us_cine_like(root / "cine", n=1, frames=3, size=24, jpeg=False)
    for name in _REAL:
        shutil.copy(real_file(name), root / name)
    return root


@pytest.fixture(scope="module")
def exported(collection, tmp_path_factory):
    index = scan(collection, progress=False)
    out = tmp_path_factory.mktemp("shards")
    report = to_webdataset(index, str(out / "%06d.tar"), maxcount=3)
    return index, out, report


def _items(ds, **loader) -> list[dict]:
    return list(DataLoader(ds, batch_size=None, **loader))


def _expected(path: str, frame: int, dtype: torch.dtype) -> torch.Tensor:
    return read_frames(path, frame)[0].to(dtype)


# --------------------------------------------------------------------------- export
def test_shards_are_webdataset_tars_of_the_original_bytes(exported):
    index, _, report = exported
    assert report.written == len(index) and not report.skipped
    assert len(report.shards) == math.ceil(len(index) / 3)
    originals = {Path(r["path"]).read_bytes() for r in index.rows()}
    seen = 0
    for shard in report.shards:
        table = json.loads(Path(shard + SHARD_TABLE_SUFFIX).read_text())
        assert table["tar_size"] == os.path.getsize(shard)
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for member in table["members"]:
                assert member["member"] in names and member["member"].endswith(".dcm")
                data = tar.extractfile(member["member"]).read()
                assert data in originals
                # The offset table points at the member's bytes inside the tar.
                with open(shard, "rb") as f:
                    f.seek(member["offset"])
                    assert f.read(member["size"]) == data
                seen += 1
    assert seen == len(index)
    manifest = json.loads(Path(report.manifest).read_text())
    assert sum(s["members"] for s in manifest["shards"]) == len(index)
    assert sum(s["frames"] for s in manifest["shards"]) == index.total_frames


# --------------------------------------------------------------------------- round trip
def test_round_trip_equals_read_frames_and_dicomdataset(exported):
    index, _, report = exported
    ds = DicomShardDataset(report.manifest)
    ref = DicomDataset(index)
    assert ds.total == index.total_frames == len(ref)
    assert ds.dtype == ref.dtype
    by_source = {(ref[i]["path"], ref[i]["frame"]): ref[i] for i in range(len(ref))}
    items = _items(ds)
    assert sorted(it["index"] for it in items) == list(range(ds.total))
    routes = set()
    for item in items:
        want = by_source[(item["path"], item["frame"])]
        assert set(item) == set(want)
        assert item["image"].dtype == ds.dtype
        torch.testing.assert_close(item["image"], _expected(item["path"], item["frame"], ds.dtype))
        for key, value in want.items():
            if key in ("image", "index"):
                continue
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(item[key], value, equal_nan=True)
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(item[key])
            else:
                assert item[key] == value, key
    for row in index.rows():
        routes.add(route_for(row).name)
    # The shards were read through every kind of route, whole-file ones included.
    assert {"native", "pydicom data set", "native via pydicom"} <= routes
    assert any("JPEG 8-bit" in r for r in routes) and any("2000" in r for r in routes)


def test_first_frames_collate_and_labels(collection, tmp_path):
    ct = scan(collection / "ct", progress=False)
    labels = {r["path"]: ("lesion" if k % 2 else "clear") for k, r in enumerate(ct.rows())}
    report = to_webdataset(ct, str(tmp_path / "%03d.tar"), maxcount=2, labels=labels)
    with tarfile.open(report.shards[0]) as tar:
        assert tar.getnames() == [
            "000000000.dcm",
            "000000000.json",
            "000000001.dcm",
            "000000001.json",
        ]
    for batch_size in (None, 3):  # items read one by one / into one batch buffer
        ds = DicomShardDataset(
            str(tmp_path / f"{{000..{len(report.shards) - 1:03d}}}.tar"),
            frames="first",
            batch_size=batch_size,
        )
        assert ds.classes == ["clear", "lesion"]
        batches = list(DataLoader(ds, batch_size=3, collate_fn=Collate()))
        n = len(ct)
        assert ds.total == n
        assert [len(b["path"]) for b in batches] == [min(3, n - k) for k in range(0, n, 3)]
        for batch in batches:
            assert batch["image"].shape[1:] == (1, 32, 32)
            for image, path, label in zip(batch["image"], batch["path"], batch["label"].tolist()):
                assert ds.classes[label] == labels[path]
                torch.testing.assert_close(image, _expected(path, 0, ds.dtype))


# --------------------------------------------------------------------------- splitting
@pytest.mark.parametrize("total_shards", [[5, 3, 4], [1, 1, 1, 1, 1, 1, 1, 1], [7], [2, 0, 9, 1]])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_partition_rule(total_shards, world, workers):
    counts = total_shards
    n = sum(counts)
    order = list(reversed(range(len(counts))))
    base = np.concatenate([[0], np.cumsum(counts)])
    for rule in ("pad", "drop"):
        per_rank = math.ceil(n / world) if rule == "pad" else n // world
        seen: Counter[int] = Counter()
        worker_counts = []
        for rank in range(world):
            got = 0
            mine = []
            for w in range(workers):
                segs = partition(counts, order, rank, world, w, workers, rule)
                k = sum(b - a for _, a, b in segs)
                mine.append(k)
                for shard, a, b in segs:
                    assert 0 <= a <= b <= counts[shard]
                    seen.update(int(base[shard]) + p for p in range(a, b))
                got += k
            assert got == per_rank  # equal on every rank
            worker_counts.append(mine)
        # Same per-worker counts on every rank: equal batch counts for any batch size.
        assert all(c == worker_counts[0] for c in worker_counts)
        if rule == "pad":
            assert set(seen) == set(range(n))
            assert sum(seen.values()) - n == per_rank * world - n  # the padding, at most world-1
            assert max(seen.values()) <= 2
        else:
            assert max(seen.values(), default=1) == 1
            assert sum(seen.values()) == n - n % world
        if n % world == 0:
            assert sorted(seen.elements()) == list(range(n))  # exactly once


def test_two_ranks_two_workers_see_every_item_exactly_once(exported):
    index, _, report = exported
    for epoch in (0, 1):
        seen: list[int] = []
        orders = []
        for rank in (0, 1):
            ds = DicomShardDataset(report.manifest, shuffle=True, seed=3, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            indices = [it["index"] for it in _items(ds, num_workers=2)]
            assert len(indices) == len(ds) == math.ceil(ds.total / 2)
            seen += indices
            orders.append(indices)
        if ds.total % 2 == 0:
            assert sorted(seen) == list(range(ds.total))
        else:  # one item padded: seen twice, every other once
            counts = Counter(seen)
            assert set(counts) == set(range(ds.total)) and sum(counts.values()) == ds.total + 1
    assert ds.total == index.total_frames


def test_shuffle_depends_on_epoch_and_seed_only(exported):
    _, _, report = exported

    def order(epoch: int, seed: int) -> list[int]:
        ds = DicomShardDataset(report.manifest, shuffle=True, seed=seed, rank=0, world_size=1)
        ds.set_epoch(epoch)
        return [it["index"] for it in _items(ds)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) == sorted(order(2, 0))


# --------------------------------------------------------------------------- errors
def test_truncated_shard_names_shard_and_member(exported, tmp_path):
    _, _, report = exported
    shard = Path(report.shards[0])
    copy = tmp_path / shard.name
    data = shard.read_bytes()
    table = json.loads(Path(str(shard) + SHARD_TABLE_SUFFIX).read_text())
    last = table["members"][-1]
    copy.write_bytes(data[: last["offset"] + 10])  # cut inside the last member
    shutil.copy(str(shard) + SHARD_TABLE_SUFFIX, str(copy) + SHARD_TABLE_SUFFIX)
    ds = DicomShardDataset([str(copy)])
    with pytest.raises(CorruptDicomError) as err:
        _items(ds)
    assert str(copy) in str(err.value) and last["member"] in str(err.value)
    assert "truncated" in str(err.value)


def test_bad_source_files_are_skipped_and_listed(tmp_path, caplog):
    ct_like(tmp_path / "src", n_series=1, slices=5, size=16)
    index = scan(tmp_path / "src", progress=False)
    paths = [r["path"] for r in index.rows()]
    os.remove(paths[0])  # vanished
    with open(paths[1], "ab") as f:  # changed since indexed
        f.write(b"\0" * 8)
    os.remove(paths[2])
    os.mkdir(paths[2])  # unreadable: a directory now
    (tmp_path / "out").mkdir()
    with caplog.at_level(logging.WARNING, logger="torchdicom.export"):
        report = to_webdataset(index, str(tmp_path / "out" / "%06d.tar"), maxcount=10)
    assert [p for p, _ in report.skipped] == paths[:3]
    reasons = dict(report.skipped)
    assert "no such file" in reasons[paths[0]]
    assert "changed since it was indexed" in reasons[paths[1]]
    assert "directory" in reasons[paths[2]]
    assert all(p in caplog.text for p in paths[:3])
    assert report.written == len(paths) - 3
    items = _items(DicomShardDataset(report.manifest))
    assert sorted(it["path"] for it in items) == paths[3:]
    manifest = json.loads(Path(report.manifest).read_text())
    assert [s[0] for s in manifest["skipped"]] == paths[:3]


def test_stale_shard_is_an_error_not_wrong_pixels(exported, tmp_path):
    _, _, report = exported
    shard = Path(report.shards[0])
    copy = tmp_path / shard.name
    shutil.copy(shard, copy)
    shutil.copy(str(shard) + SHARD_TABLE_SUFFIX, str(copy) + SHARD_TABLE_SUFFIX)
    with open(copy, "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(CorruptDicomError, match="offset table records"):
        _items(DicomShardDataset([str(copy)]))


# --------------------------------------------------------------------------- remote
def _local_items(report) -> dict[int, dict]:
    return {it["index"]: it for it in _items(DicomShardDataset(report.manifest))}


@pytest.mark.parametrize("spool", [None, False])
def test_memory_shards_equal_local(exported, spool):
    index, _, local = exported
    fs = fsspec.filesystem("memory")
    try:
        to_webdataset(index, "memory://td-shards/set/%06d.tar", maxcount=4)
        assert fs.exists("/td-shards/set/000000.tar" + SHARD_TABLE_SUFFIX)
        ds = DicomShardDataset("memory://td-shards/set/shards.json", spool=spool)
        want = _local_items(local)
        items = _items(ds)
        assert len(items) == len(want)
        for item in items:
            torch.testing.assert_close(item["image"], want[item["index"]]["image"])
            assert item["path"] == want[item["index"]]["path"]
    finally:
        fs.rm("/td-shards", recursive=True)


def test_s3_shards_from_a_real_server(exported, s3_server):  # noqa: F811
    index, _, local = exported
    options = {"key": KEY_ID, "secret": SECRET, "endpoint_url": s3_server}
    remote.configure("s3", options)
    try:
        remote.filesystem("s3://x").mkdir("td-shards")
        report = to_webdataset(index, "s3://td-shards/ct/%06d.tar", maxcount=5)
        remote.configure("s3", {})  # the dataset registers its own options
        ds = DicomShardDataset(
            "s3://td-shards/ct/shards.json", storage_options=options, shuffle=True
        )
        want = _local_items(local)
        items = _items(ds, num_workers=2)
        assert sorted(it["index"] for it in items) == sorted(want)
        for item in items:
            torch.testing.assert_close(item["image"], want[item["index"]]["image"])
        assert SECRET not in repr(report)
    finally:
        remote.configure("s3", {})


# --------------------------------------------------------------------------- DDP
def test_two_rank_gloo_ddp_fit_streams_from_shards(tmp_path):
    ct_like(tmp_path / "src", n_series=2, slices=6, size=16)
    index = scan(tmp_path / "src", progress=False)
    labels = {r["path"]: k % 2 for k, r in enumerate(index.rows())}
    (tmp_path / "shards").mkdir()
    report = to_webdataset(index, str(tmp_path / "shards" / "%06d.tar"), maxcount=5, labels=labels)
    out = tmp_path / "out"
    run_ddp_script("ddp_shards_check.py", report.manifest, out, "2", timeout=240)
    n = len(index)
    for epoch in (0, 1):
        per_rank = [json.loads((out / f"rank{r}_epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1])  # equal batch counts
        seen = sorted(i for batches in per_rank for batch in batches for i in batch)
        assert seen == list(range(n))  # every item exactly once per epoch
    first = [i for b in json.loads((out / "rank0_epoch0.json").read_text()) for i in b]
    second = [i for b in json.loads((out / "rank0_epoch1.json").read_text()) for i in b]
    assert first != second  # set_epoch reshuffled


def test_memory_spool_is_removed_and_truncation_named(exported, tmp_path):
    index, _, _ = exported
    fs = fsspec.filesystem("memory")
    try:
        to_webdataset(index, "memory://td-shards/cut/%06d.tar", maxcount=4)
        spool = tmp_path / "spool"
        spool.mkdir()
        ds = DicomShardDataset("memory://td-shards/cut/shards.json", spool_dir=spool)
        stream = iter(ds)
        for _ in range(5):  # into the second shard: the third is being fetched ahead
            next(stream)
        assert list(spool.iterdir())
        stream.close()  # the consumer stops early
        assert not list(spool.iterdir())
        data = fs.cat_file("/td-shards/cut/000001.tar")
        fs.pipe_file("/td-shards/cut/000001.tar", data[: len(data) // 2])
        with pytest.raises(CorruptDicomError, match=r"000001\.tar.*truncated.*member"):
            _items(DicomShardDataset("memory://td-shards/cut/shards.json", spool_dir=spool))
        assert not list(spool.iterdir())
    finally:
        fs.rm("/td-shards", recursive=True)


def test_epoch_rules_and_arguments(exported):
    _, _, report = exported
    total = DicomShardDataset(report.manifest).total
    world = 4
    pad = [DicomShardDataset(report.manifest, rank=r, world_size=world) for r in range(world)]
    drop = [
        DicomShardDataset(report.manifest, rank=r, world_size=world, epoch_rule="drop")
        for r in range(world)
    ]
    assert {len(d) for d in pad} == {math.ceil(total / world)}
    assert {len(d) for d in drop} == {total // world}
    seen_pad = Counter(it["index"] for d in pad for it in _items(d))
    seen_drop = Counter(it["index"] for d in drop for it in _items(d))
    assert set(seen_pad) == set(range(total)) and sum(seen_pad.values()) == len(pad[0]) * world
    assert max(seen_drop.values()) == 1 and sum(seen_drop.values()) == total - total % world
    too_many = DicomShardDataset(report.manifest, rank=0, world_size=total + 1, epoch_rule="drop")
    with pytest.raises(ValueError, match="leaves no item"):
        _items(too_many)
    with pytest.raises(ValueError, match="both rank and world_size"):
        DicomShardDataset(report.manifest, rank=0)
    with pytest.raises(ValueError, match="epoch_rule"):
        DicomShardDataset(report.manifest, epoch_rule="repeat")


# --------------------------------------------------------------------------- size policy
def _assert_items_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if key == "index":
            continue
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, equal_nan=True, rtol=0, atol=0)
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize(
    ("size", "resize", "channels"),
    [((20, 28), "stretch", 1), ((24, 16), "letterbox", 3), (18, "crop", 1), (None, "stretch", 3)],
)
def test_size_policy_items_equal_dicomdataset(exported, size, resize, channels):
    """The mixed collection (grey and colour, 16 to 512 pixels) through the size policy:
    every item equals DicomDataset's over the same files, geometry keys included, and the
    batches stack."""
    index, _, report = exported
    policy = {"size": size, "resize": resize, "channels": channels}
    ds = DicomShardDataset(report.manifest, batch_size=4, **policy)
    ref = DicomDataset(index, **policy)
    by_source = {(ref[i]["path"], ref[i]["frame"]): ref[i] for i in range(len(ref))}
    items = _items(ds)
    assert len(items) == len(ref)
    for item in items:
        _assert_items_equal(item, by_source[(item["path"], item["frame"])])
    if size is not None:
        assert {"original_size", "crop", "scale", "pad"} <= set(items[0])
        for batch in DataLoader(ds, batch_size=4, collate_fn=Collate()):
            side = (size, size) if isinstance(size, int) else size
            assert batch["image"].shape[1:] == (channels, *side)
            assert batch["image"].dtype == ds.dtype


def test_size_policy_keeps_the_batch_buffer_when_nothing_is_resized(collection, tmp_path):
    """A policy that keeps the stored size leaves the frames in the one batch buffer they
    were read into (Collate hands it on as the batch without a copy); one that resizes
    reads them one by one; both give DicomDataset's items."""
    # The three int16 slices (ct_like's uint8 files are another layout: another buffer).
    ct = [r for r in scan(collection / "ct", progress=False).rows() if r["bits_allocated"] == 16]
    assert len(ct) == 3
    report = to_webdataset(ct, str(tmp_path / "%03d.tar"), maxcount=10)
    ref = {it["path"]: it for it in DicomDataset([r["path"] for r in ct], size=32)}
    kept = _items(DicomShardDataset(report.manifest, frames="first", size=32, batch_size=3))
    bases = {it["image"].untyped_storage().data_ptr() for it in kept}
    assert len(bases) == 1  # the three slots of one buffer
    resized = _items(DicomShardDataset(report.manifest, frames="first", size=16, batch_size=3))
    assert len({it["image"].untyped_storage().data_ptr() for it in resized}) == 3
    for item in kept:
        _assert_items_equal(item, ref[item["path"]])
    assert [it["image"].shape for it in resized] == [(1, 16, 16)] * 3


def test_size_without_channels_on_grey_and_colour_names_the_policy(exported):
    _, _, report = exported
    with pytest.raises(ValueError, match="channels=1"):
        DicomShardDataset(report.manifest, size=32)
    with pytest.raises(ValueError, match="resize"):
        DicomShardDataset(report.manifest, size=32, channels=1, resize="squash")
    with pytest.raises(ValueError, match="on_error"):
        DicomShardDataset(report.manifest, on_error="ignore")


# --------------------------------------------------------------------------- on_error
def _damaged(tmp_path: Path, maxcount: int):
    """Shards of 5 CT slices (16²) and two 3-frame JPEG cines (24², RGB) in which the first
    cine member's code-streams were overwritten after export (the shard keeps its size);
    the report and (shard, member, source file) of the damaged member."""
    ct_like(tmp_path / "src" / "ct", n_series=1, slices=5, size=16)
    us_cine_like(tmp_path / "src" / "us", n=2, frames=3, size=24, jpeg=True)
    index = scan(tmp_path / "src", progress=False)
    (tmp_path / "shards").mkdir()
    report = to_webdataset(index, str(tmp_path / "shards" / "%06d.tar"), maxcount=maxcount)
    for shard in report.shards:
        table = json.loads(Path(shard + SHARD_TABLE_SUFFIX).read_text())
        for member in table["members"]:
            if member["row"]["transfer_syntax"] == "1.2.840.10008.1.2.4.50":
                data = bytearray(Path(shard).read_bytes())
                # The code-streams only: a damaged header is caught before any decoder.
                start = member["row"]["frame_offsets"][0]
                stop = member["offset"] + member["size"]
                data[start:stop] = b"\xff" * (stop - start)
                Path(shard).write_bytes(bytes(data))
                return report, (shard, member["member"], member["row"]["path"])
    raise AssertionError("no JPEG member exported")


@pytest.fixture
def damaged(tmp_path):
    return _damaged(tmp_path, maxcount=4)


def test_a_damaged_member_raises_naming_shard_and_member(damaged):
    report, (shard, member, source) = damaged
    with pytest.raises(CorruptDicomError) as err:
        _items(DicomShardDataset(report.manifest, size=16, channels=1))
    assert shard in str(err.value) and member in str(err.value) and source in str(err.value)


def _indices_of(report, source: str) -> set[int]:
    """The item indices (export order, frames="all") of the frames of ``source``."""
    found, base = set(), 0
    for shard in report.shards:
        for member in json.loads(Path(shard + SHARD_TABLE_SUFFIX).read_text())["members"]:
            frames = int(member["row"]["frames"])
            if member["row"]["path"] == source:
                found |= set(range(base, base + frames))
            base += frames
    return found


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_substitutes_and_keeps_batch_counts_on_two_ranks(damaged, workers, caplog):
    report, (shard, member, source) = damaged
    bad = _indices_of(report, source)
    options = {"size": 16, "channels": 1, "batch_size": 2, "shuffle": True, "seed": 5}
    total = DicomShardDataset(report.manifest).total
    seen: Counter[int] = Counter()
    batch_counts = []
    with caplog.at_level(logging.WARNING, logger="torchdicom.data"):
        for rank in (0, 1):
            ds = DicomShardDataset(
                report.manifest, on_error="skip", rank=rank, world_size=2, **options
            )
            ds.set_epoch(1)
            loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=Collate())
            batches = list(loader)
            # As many batches and items as the rank has without damage: ceil(11 / 2) items.
            assert len(ds) == math.ceil(total / 2)
            assert sum(len(b["index"]) for b in batches) == len(ds)
            batch_counts.append(len(batches))
            substituted = 0
            for batch in batches:
                assert batch["image"].shape[1:] == (1, 16, 16)
                for index, path, flag in zip(
                    batch["index"].tolist(), batch["path"], batch["substituted"].tolist()
                ):
                    seen[index] += 1
                    # A substitute carries the failed item's index and another file's pixels.
                    assert flag == (index in bad) and path != source
                    substituted += flag
            assert ds.skipped >= substituted  # a substitute may be tried and fail too
    assert batch_counts[0] == batch_counts[1]
    assert set(seen) == set(range(total))  # every item (or its substitute) once, one padded
    assert sum(seen.values()) == 2 * math.ceil(total / 2)
    if workers == 0:  # the warnings of worker processes do not reach caplog
        warned = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert warned and all(shard in w and member in w for w in warned)
        assert "fragment" in warned[0]  # the reason


# --------------------------------------------------------------------------- Lightning epochs
class _EpochRecorder(pl.LightningModule):
    """Records ``batch["index"]`` per epoch, and what the validation loop sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 2)
        self.epochs: dict[int, list[int]] = {}
        self.validated: list[int] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.epochs.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        x = batch["image"].float().mean(dim=(1, 2, 3))[:, None]
        return nn.functional.cross_entropy(self.layer(x), batch["label"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.validated.extend(batch["index"].tolist())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(dm: DicomDataModule, epochs: int) -> _EpochRecorder:
    model = _EpochRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    return model


def test_datamodule_streams_shards_and_sets_the_epoch_of_persistent_workers(tmp_path):
    """Two epochs through pl.Trainer with 2 persistent workers and no set_epoch in user code:
    every item once per epoch, a new order each epoch, and each epoch's order the one
    ``set_epoch(epoch)`` gives (the epoch reached the workers)."""
    ct_like(tmp_path / "src", n_series=2, slices=5, size=16)
    index = scan(tmp_path / "src", progress=False)
    labels = {r["path"]: k % 2 for k, r in enumerate(index.rows())}
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    report = to_webdataset(index, str(tmp_path / "train" / "%06d.tar"), maxcount=4, labels=labels)
    val = to_webdataset(
        index.rows()[:3], str(tmp_path / "val" / "%06d.tar"), maxcount=4, labels=labels
    )
    options = {"batch_size": 2, "num_workers": 2, "frames": "first", "seed": 11}
    dm = DicomDataModule(
        shards=report.manifest, val_shards=val.manifest, persistent_workers=True, **options
    )
    model = _fit(dm, epochs=2)
    n = len(index)
    assert sorted(model.epochs) == [0, 1]
    for epoch, seen in model.epochs.items():
        assert sorted(seen) == list(range(n))  # every item exactly once
        ds = DicomShardDataset(report.manifest, frames="first", shuffle=True, seed=11)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=Collate())
        assert seen == [i for batch in loader for i in batch["index"].tolist()]
    assert model.epochs[0] != model.epochs[1]
    assert sorted(model.validated) == [0, 0, 1, 1, 2, 2]  # the val shards, each epoch
    assert dm.skipped == 0 and dm.classes is None


def test_datamodule_shard_arguments(exported):
    _, _, report = exported
    with pytest.raises(ValueError, match="one of them"):
        DicomDataModule()
    with pytest.raises(ValueError, match="one of them"):
        DicomDataModule("somewhere", shards=report.manifest)
    with pytest.raises(ValueError, match="masks"):
        DicomDataModule(shards=report.manifest, masks="masks")
    with pytest.raises(ValueError, match="val_shards"):
        DicomDataModule("somewhere", val_shards=report.manifest)
    mixed = DicomDataModule(shards=report.manifest)  # grey and colour, no channel policy
    with pytest.raises(ValueError, match="channels=1"):
        mixed.setup("fit")
    dm = DicomDataModule(shards=report.manifest, size=(16, 16), channels=1, on_error="skip")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.size_policy.size == (16, 16) and dm.train_set.on_error == "skip"
    assert dm.val_dataloader() == []  # no val_shards: no validation loop
    with pytest.raises(RuntimeError, match="shards"):
        dm.predict_dataloader()


def test_skip_a_shard_with_nothing_readable_repeats_the_item_before(tmp_path):
    """A damaged member alone in its shard (every substitute in the shard fails): its items
    are copies of the item read before; with no item before, the error is raised."""
    report, (shard, _, source) = _damaged(tmp_path, maxcount=1)
    bad = _indices_of(report, source)
    items = _items(DicomShardDataset(report.manifest, on_error="skip", size=16, channels=1))
    assert [it["index"] for it in items] == list(range(len(items)))
    before = items[min(bad) - 1]
    for index in bad:
        assert items[index]["substituted"] and items[index]["path"] == before["path"]
        torch.testing.assert_close(items[index]["image"], before["image"])
    with pytest.raises(CorruptDicomError, match="fragment"):
        _items(DicomShardDataset([shard], on_error="skip"))


# --------------------------------------------------------------------------- untrusted shard sets
# A shard set may come from another site or a bucket someone else writes: its manifest and
# offset tables are checked like a file's header. Each hostile edit below must give a
# TorchDicomError naming the shard (or manifest), the member and the reason, before anything
# is allocated from the lying values, and never wrong pixels.
@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Shards of 2 members: CT slices (16², native) and a 3-frame JPEG cine; the items."""
    root = tmp_path_factory.mktemp("untrusted")
    ct_like(root / "src" / "ct", n_series=1, slices=3, size=16)
    us_cine_like(root / "src" / "us", n=1, frames=3, size=16, jpeg=True)
    (root / "out").mkdir()
    report = to_webdataset(
        scan(root / "src", progress=False), str(root / "out" / "%06d.tar"), maxcount=2
    )
    items = {it["index"]: it["image"] for it in _items(DicomShardDataset(report.manifest))}
    return root / "out", report, items


def _copy_set(
    small_set, tmp_path: Path, checksums: bool = False
) -> tuple[Path, dict, dict, list[dict]]:
    """A copy of the set: its folder, manifest, the table of shard 0 and all tables.

    Without ``checksums`` the tables' and manifest's ``crc32`` are dropped (as a writer
    other than torchdicom, or an export before them, leaves them out): what the value
    checks alone catch. ``head_crc32`` (the member's header bytes) stays.
    """
    out, _, _ = small_set
    copy = tmp_path / "set"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "shards.json").read_text())
    tables = [
        json.loads((copy / f"{k:06d}.tar{SHARD_TABLE_SUFFIX}").read_text())
        for k in range(len(manifest["shards"]))
    ]
    if not checksums:
        manifest.pop("crc32")
        (copy / "shards.json").write_text(json.dumps(manifest))
        for k, table in enumerate(tables):
            for member in table["members"]:
                member.pop("crc32")
            _write_table(copy, k, table)
    return copy, manifest, tables[0], tables


def _write_table(copy: Path, shard: int, table: Any) -> None:
    text = table if isinstance(table, str) else json.dumps(table)
    (copy / f"{shard:06d}.tar{SHARD_TABLE_SUFFIX}").write_text(text)


def _first(table):
    return table["members"][0]


_TABLE_EDITS = {
    "not JSON": (lambda t: "{garbage", "offset table is not valid JSON"),
    "a list": (lambda t: "[]", "not a torchdicom offset table"),
    "deep nesting": (lambda t: "[" * 100_000, "offset table is not valid JSON"),
    "members not a list": (lambda t: t.update(members="x"), "'members' is x, not a list"),
    "no tar_size": (lambda t: t.pop("tar_size"), "'tar_size' is None, not an integer"),
    "tar_size a string": (lambda t: t.update(tar_size="abc"), "'tar_size' is 'abc'"),
    "no members": (lambda t: t.update(members=[]), "'members' is [], not a list"),
    "member without offset": (
        lambda t: _first(t).pop("offset"),
        "member 000000000.dcm: 'offset' is None, not an integer",
    ),
    "negative offset": (
        lambda t: _first(t).update(offset=-512),
        "member 000000000.dcm: 'offset' is -512, outside 512..",
    ),
    "offset beyond the tar": (
        lambda t: _first(t).update(offset=10**9),
        "member 000000000.dcm: 'offset' is 1000000000, outside",
    ),
    "size beyond the tar": (
        lambda t: _first(t).update(size=10**12),
        "member 000000000.dcm: 'size' is 1000000000000, outside",
    ),
    "unaligned offset": (
        lambda t: _first(t).update(offset=_first(t)["offset"] + 4),
        "is not on a 512-byte tar block",
    ),
    "member range past the end": (
        lambda t: _first(t).update(size=t["tar_size"] - 512),
        "reach beyond the tar's",
    ),
    "overlapping members": (
        lambda t: t["members"][1].update(offset=_first(t)["offset"]),
        "member 000000001.dcm: bytes 512..",
    ),
    "member listed twice": (
        lambda t: t["members"][1].update(member=_first(t)["member"]),
        "member 000000000.dcm: is listed twice",
    ),
    "traversal member name": (
        lambda t: _first(t).update(member="../../x.dcm"),
        "member 0: 'member' '../../x.dcm' is not a plain file name",
    ),
    "no row": (lambda t: _first(t).pop("row"), "'row' is NoneType, not an index row"),
    "row without columns": (
        lambda t: _first(t)["row"].pop("transfer_syntax") and None,
        "its row has no transfer_syntax",
    ),
    "frames 10⁹": (
        lambda t: _first(t)["row"].update(frames=10**9),
        "(0028,0008) frames is 1000000000, outside 1..",
    ),
    "frames 0": (lambda t: _first(t)["row"].update(frames=0), "(0028,0008) frames is 0"),
    "bits allocated 2⁴⁰": (
        lambda t: _first(t)["row"].update(bits_allocated=2**40),
        "(0028,0100) bits allocated is 1099511627776, outside 1..64",
    ),
    "pixel keyword": (
        lambda t: _first(t)["row"].update(pixel_keyword="Foo"),
        "its row's pixel_keyword is 'Foo'",
    ),
}


@pytest.mark.parametrize("via", ["manifest", "tables"])
@pytest.mark.parametrize("edit", list(_TABLE_EDITS))
def test_hostile_offset_table_is_refused_naming_shard_member_and_reason(
    small_set, tmp_path, edit, via
):
    copy, _, table, _ = _copy_set(small_set, tmp_path)
    change, reason = _TABLE_EDITS[edit]
    result = change(table)
    _write_table(copy, 0, result if isinstance(result, str) else table)
    source = str(copy / "shards.json") if via == "manifest" else [str(copy / "000000.tar")]
    with pytest.raises(CorruptDicomError) as err:
        _items(DicomShardDataset(source))
    assert "000000.tar" in str(err.value) and reason in str(err.value)


# Row values that make one member unreadable: the member is refused when it is read (and
# substituted under on_error="skip"), naming the shard, the member and its source file.
_ROW_EDITS = {
    "rows × columns of GBs": (
        lambda r: r.update(rows=65535, columns=65535),
        "(8589672450 bytes) but the file holds only 512 bytes of pixel data",
    ),
    "rows 10⁵": (lambda r: r.update(rows=100_000), "its row's rows is 100000, outside 1..65535"),
    "rows a string": (lambda r: r.update(rows="abc"), "its row's rows is 'abc', not int"),
    "pixel offset in the tar header": (
        lambda r: r.update(pixel_offset=10),
        "pixel offset 10 is outside the member",
    ),
    "pixel offset beyond": (
        lambda r: r.update(pixel_offset=10**7),
        "pixel offset 10000000 is outside the member",
    ),
    "pixel offset shifted inside the member": (
        lambda r: r.update(pixel_offset=r["pixel_offset"] - 2),
        "its header bytes changed since the export (checksum differs)",
    ),
    "a row of another file": (
        lambda r: r.update(size=r["size"] + 2),
        "(an offset table of another shard?)",
    ),
}


@pytest.mark.parametrize("edit", list(_ROW_EDITS))
def test_hostile_row_refuses_the_member_before_allocating(small_set, tmp_path, edit):
    import tracemalloc

    copy, _, table, _ = _copy_set(small_set, tmp_path)
    change, reason = _ROW_EDITS[edit]
    change(_first(table)["row"])
    _write_table(copy, 0, table)
    source = _first(table)["row"]["path"]
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDicomError) as err:
            list(DicomShardDataset(str(copy / "shards.json"), batch_size=3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "000000.tar" in message and "member 000000000.dcm" in message and reason in message
    assert str(source) in message
    assert peak < 64 * 2**20  # nothing sized from the lying row
    # on_error="skip": the member is substituted, the item count stays.
    ds = DicomShardDataset(str(copy / "shards.json"), on_error="skip")
    items = _items(ds)
    assert len(items) == len(small_set[2]) and ds.skipped >= 1


def test_row_saying_native_for_a_compressed_member_is_refused(small_set, tmp_path):
    copy, _, _, tables = _copy_set(small_set, tmp_path)
    shard = next(
        k for k, t in enumerate(tables) if any(m["row"]["encapsulated"] for m in t["members"])
    )
    table = tables[shard]
    member = next(m for m in table["members"] if m["row"]["encapsulated"])
    row = member["row"]
    row.update(
        transfer_syntax="1.2.840.10008.1.2.1",
        encapsulated=False,
        frame_offsets=[],
        frame_lengths=[],
        pixel_length=row["rows"] * row["columns"] * row["samples_per_pixel"] * row["frames"],
    )
    _write_table(copy, shard, table)
    with pytest.raises(CorruptDicomError) as err:
        _items(DicomShardDataset(str(copy / "shards.json")))
    assert f"{shard:06d}.tar" in str(err.value) and member["member"] in str(err.value)
    assert "its row says native pixel data but the member's is encapsulated" in str(err.value)


_CHECKSUM_EDITS = {
    # Edits no value check can see: the same byte count, other pixels or labels.
    "rows and columns swapped": lambda t: _first(t)["row"].update(rows=8, columns=32),
    "rescale intercept": lambda t: _first(t)["row"].update(rescale_intercept=0.0),
    "label": lambda t: _first(t).update(label=7),
}


@pytest.mark.parametrize("edit", list(_CHECKSUM_EDITS))
def test_export_checksums_refuse_edits_the_value_checks_cannot_see(small_set, tmp_path, edit):
    copy, manifest, table, _ = _copy_set(small_set, tmp_path, checksums=True)
    _CHECKSUM_EDITS[edit](table)
    _write_table(copy, 0, table)
    with pytest.raises(CorruptDicomError) as err:
        _items(DicomShardDataset(str(copy / "shards.json")))
    assert "000000.tar: member 000000000.dcm" in str(err.value)
    assert "offset table entry changed since the export (checksum differs)" in str(err.value)
    manifest["skipped"] = [["/elsewhere", "edited"]]
    (copy / "shards.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptDicomError, match=r"shards.json: shard manifest: changed since"):
        DicomShardDataset(str(copy / "shards.json"))


def test_offset_table_of_another_shard_is_refused(small_set, tmp_path):
    copy, _, _, tables = _copy_set(small_set, tmp_path)
    assert tables[0]["tar_size"] == tables[1]["tar_size"]  # the size check alone passes
    _write_table(copy, 0, tables[1])
    with pytest.raises(CorruptDicomError, match=r"000000.tar: .*member 00000000[23].dcm"):
        _items(DicomShardDataset([str(copy / "000000.tar")]))


_MANIFEST_EDITS = {
    "not JSON": (lambda m: "nope", "shard manifest is not valid JSON"),
    "a list": (lambda m: "[1]", "not a torchdicom shard manifest"),
    "no shards": (lambda m: m.pop("shards"), "'shards' is NoneType, not a list"),
    "frames 10¹³": (
        lambda m: m["shards"][0].update(frames=10**13),
        "shard entry 0: 'frames' is 10000000000000, outside",
    ),
    "frames negative": (lambda m: m["shards"][0].update(frames=-3), "'frames' is -3"),
    "frames a string": (lambda m: m["shards"][0].update(frames="x"), "'frames' is 'x'"),
    "members 0": (lambda m: m["shards"][0].update(members=0), "'members' is 0, outside"),
    "path traversal": (
        lambda m: m["shards"][0].update(shard="../../etc/passwd"),
        "shard entry 0: 'shard' '../../etc/passwd' is not a plain file name",
    ),
    "absolute path": (lambda m: m["shards"][0].update(shard="/etc/passwd"), "not a plain file"),
    "shard twice": (lambda m: m["shards"].append(m["shards"][0]), "is listed twice"),
    "layouts damaged": (lambda m: m["shards"][0].update(layouts=[["x"]]), "'layouts' is"),
    "classes damaged": (lambda m: m.update(labels=True, classes=5), "'classes' is 5"),
}


@pytest.mark.parametrize("edit", list(_MANIFEST_EDITS))
def test_hostile_manifest_is_refused_at_construction(small_set, tmp_path, edit):
    copy, manifest, _, _ = _copy_set(small_set, tmp_path)
    change, reason = _MANIFEST_EDITS[edit]
    result = change(manifest)
    (copy / "shards.json").write_text(result if isinstance(result, str) else json.dumps(manifest))
    with pytest.raises(CorruptDicomError) as err:
        DicomShardDataset(str(copy / "shards.json"))
    assert "shards.json" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize(
    "field, delta, what", [("frames", 3, "frames"), ("tar_size", 512, "bytes")]
)
def test_manifest_counts_disagreeing_with_a_table_fail_loudly_on_every_rank(
    small_set, tmp_path, field, delta, what
):
    """The ranks' shares come from the manifest: a table that disagrees is an error where
    the shard is opened, never fewer / more items on one rank (a DDP hang)."""
    copy, manifest, _, _ = _copy_set(small_set, tmp_path)
    manifest["shards"][1][field] += delta
    (copy / "shards.json").write_text(json.dumps(manifest))
    lengths, failed = set(), 0
    for rank in (0, 1):
        ds = DicomShardDataset(str(copy / "shards.json"), rank=rank, world_size=2)
        lengths.add(len(ds))
        try:
            assert len(_items(ds)) == len(ds)  # a rank whose share misses shard 1
        except CorruptDicomError as err:
            failed += 1
            assert "000001.tar" in str(err) and f"does not match the manifest ({what}" in str(err)
    assert failed >= 1
    assert len(lengths) == 1  # every rank computes its length from the same manifest


def test_manifest_listing_a_missing_shard_names_it(small_set, tmp_path):
    copy, _, _, _ = _copy_set(small_set, tmp_path)
    os.remove(copy / "000001.tar")
    with pytest.raises(DicomFileNotFoundError, match=r"000001.tar: no such shard"):
        _items(DicomShardDataset(str(copy / "shards.json")))
    os.remove(copy / f"000001.tar{SHARD_TABLE_SUFFIX}")
    with pytest.raises(DicomFileNotFoundError, match=r"000001.tar.idx.json: no offset table"):
        _items(DicomShardDataset(str(copy / "shards.json")))


def _tar_header_edit(copy: Path, member: dict, **fields) -> None:
    """Rewrite the tar header of ``member`` in shard 0 (checksum fixed up)."""
    shard = copy / "000000.tar"
    data = bytearray(shard.read_bytes())
    at = member["offset"] - 512
    info = tarfile.TarInfo.frombuf(bytes(data[at : at + 512]), "utf-8", "surrogateescape")
    for key, value in fields.items():
        setattr(info, key, value)
    data[at : at + 512] = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("symbolic link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
        ("hard link", {"type": tarfile.LNKTYPE, "linkname": "000000001.dcm"}),
        ("character device", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        ("regular file", {"name": "../../evil.dcm"}),
    ],
)
def test_link_device_and_renamed_members_are_refused(small_set, tmp_path, kind, fields):
    copy, _, table, _ = _copy_set(small_set, tmp_path)
    _tar_header_edit(copy, _first(table), **fields)
    with pytest.raises(CorruptDicomError) as err:
        _items(DicomShardDataset(str(copy / "shards.json")))
    message = str(err.value)
    assert "000000.tar" in message and "member 000000000.dcm" in message
    assert f"the tar holds {kind}" in message and "not this shard's" in message


def test_damaged_tar_header_and_rewritten_member_header(small_set, tmp_path):
    copy, _, table, _ = _copy_set(small_set, tmp_path)
    shard = copy / "000000.tar"
    data = bytearray(shard.read_bytes())
    data[_first(table)["offset"] - 512 + 148] ^= 0xFF  # the header checksum
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptDicomError, match=r"member 000000000.dcm.*no valid tar header"):
        _items(DicomShardDataset(str(copy / "shards.json")))
    ds = DicomShardDataset(str(copy / "shards.json"), on_error="skip")
    items = _items(ds)
    assert len(items) == len(small_set[2]) and ds.skipped == 1
    assert sum(it["substituted"] for it in items) == 1
    data[table["members"][1]["offset"] + 200] ^= 0x01  # inside member 1's DICOM header
    shard.write_bytes(bytes(data))
    # Member 1 alone: its rewritten header fails the export's checksum.
    table["members"] = [table["members"][1]]
    table["tar_size"] = (copy / "000000.tar").stat().st_size
    _write_table(copy, 0, table)
    with pytest.raises(CorruptDicomError, match=r"member 000000001.dcm .*checksum differs"):
        _items(DicomShardDataset([str(copy / "000000.tar")]))


def test_shard_truncated_inside_a_tar_header_names_the_member(small_set, tmp_path):
    copy, _, table, _ = _copy_set(small_set, tmp_path)
    shard = copy / "000000.tar"
    cut = table["members"][1]["offset"] - 300  # inside member 1's tar header
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(CorruptDicomError) as err:
        _items(DicomShardDataset(str(copy / "shards.json")))
    assert "000000.tar: shard is truncated" in str(err.value)
    assert "member 000000001.dcm is cut" in str(err.value)


# --------------------------------------------------------------------------- export hazards
def test_export_member_names_never_carry_source_names(tmp_path):
    """Source paths with '..' and very long names: the tar members are the export's keys."""
    src = tmp_path / "src" / "a"
    ct_like(src, n_series=1, slices=2, size=16)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    long_dir = tmp_path / "src" / ("d" * 200)
    long_dir.mkdir()
    shutil.move(str(files[1]), long_dir / ("x" * 200))
    index = scan(tmp_path / "src", progress=False)
    rows = index.rows()
    for row in rows:  # the path as another tool may write it: with '../' in it
        parent = os.path.dirname(row["path"])
        row["path"] = os.path.join(
            parent, "..", os.path.basename(parent), os.path.basename(row["path"])
        )
    (tmp_path / "out").mkdir()
    report = to_webdataset(rows, str(tmp_path / "out" / "%06d.tar"))
    assert report.written == len(rows) and not report.skipped
    with tarfile.open(report.shards[0]) as tar:
        assert [m.name for m in tar.getmembers()] == [f"{k:09d}.dcm" for k in range(len(rows))]
    items = _items(DicomShardDataset(report.manifest))
    assert sorted(it["path"] for it in items) == sorted(r["path"] for r in rows)


def test_export_source_changed_during_the_copy_is_skipped(tmp_path, monkeypatch):
    import torchdicom.export as export

    ct_like(tmp_path / "src", n_series=1, slices=3, size=16)
    index = scan(tmp_path / "src", progress=False)
    victim = index.rows()[1]["path"]
    real_open = open

    class Rewriting:
        """The file is rewritten (same size, new mtime) while it is read."""

        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, *args):
            data = self.f.read(*args)
            os.utime(victim, ns=(0, 1_000_000_000))
            return data

    victim_inode = os.stat(victim).st_ino

    def opening(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        # The export opens the checked descriptor of the file (or its path).
        same = (
            os.fstat(path).st_ino == victim_inode if isinstance(path, int) else str(path) == victim
        )
        return Rewriting(f) if same else f

    monkeypatch.setattr(export, "open", opening, raising=False)
    (tmp_path / "out").mkdir()
    report = to_webdataset(index, str(tmp_path / "out" / "%06d.tar"))
    assert [p for p, _ in report.skipped] == [victim]
    assert "changed since it was indexed" in report.skipped[0][1]
    assert report.written == len(index.rows()) - 1


def test_export_into_a_missing_or_unwritable_folder_names_it(tmp_path, monkeypatch):
    ct_like(tmp_path / "src", n_series=1, slices=2, size=16)
    index = scan(tmp_path / "src", progress=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"shards' folder does not exist: {missing}"):
        to_webdataset(index, str(missing / "%06d.tar"))
    (tmp_path / "ro").mkdir()

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'ro' / '000000.tar'} in"):
        to_webdataset(index, str(tmp_path / "ro" / "%06d.tar"))
    assert not list((tmp_path / "ro").iterdir())  # no temporary file left


def test_fsspec_failure_midway_leaves_no_manifest(tmp_path, monkeypatch):
    ct_like(tmp_path / "src", n_series=1, slices=4, size=16)
    index = scan(tmp_path / "src", progress=False)
    fs = fsspec.filesystem("memory")
    base = f"memory://midway-{os.getpid()}"
    first = to_webdataset(index, f"{base}/%06d.tar", maxcount=2)  # an earlier, whole export
    assert fs.exists(first.manifest)
    real_put = type(fs).put_file
    calls = []

    def failing(self, lpath, rpath, *args, **kwargs):
        calls.append(rpath)
        if str(rpath).endswith("000001.tar"):  # every retry too
            raise OSError(28, "No space left on device")
        return real_put(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(type(fs), "put_file", failing)
    with pytest.raises((OSError, TorchDicomError), match=r"000001.tar"):
        to_webdataset(index, f"{base}/%06d.tar", maxcount=1)
    assert not fs.exists(first.manifest)  # never a manifest pointing at a mixed set
    with pytest.raises(DicomFileNotFoundError, match="no shard manifest"):
        DicomShardDataset(first.manifest)
    fs.rm(base, recursive=True)


def test_reexport_over_an_existing_set(tmp_path):
    ct_like(tmp_path / "src", n_series=1, slices=4, size=16)
    index = scan(tmp_path / "src", progress=False)
    (tmp_path / "out").mkdir()
    old = to_webdataset(index, str(tmp_path / "out" / "%06d.tar"), maxcount=1)
    old_manifest = Path(old.manifest).read_text()
    rows = index.rows()[:2]
    new = to_webdataset(rows, str(tmp_path / "out" / "%06d.tar"), maxcount=1)
    assert len(new.shards) == 2
    items = _items(DicomShardDataset(new.manifest))
    assert sorted(it["path"] for it in items) == sorted(r["path"] for r in rows)
    # A reader still holding the old manifest: shards 2 and 3 are the old ones (whole), and
    # 0 and 1 were replaced by identical ones: every item equals its file.
    Path(old.manifest).write_text(old_manifest)
    for it in _items(DicomShardDataset(old.manifest)):
        assert torch.equal(it["image"], _expected(it["path"], it["frame"], it["image"].dtype))


def test_fingerprint_is_what_every_rank_splits_by(small_set, tmp_path):
    copy, manifest, _, _ = _copy_set(small_set, tmp_path)
    one = DicomShardDataset(str(copy / "shards.json"), rank=0, world_size=2)
    two = DicomShardDataset(str(copy / "shards.json"), rank=1, world_size=2)
    tables = DicomShardDataset(sorted(str(p) for p in copy.glob("*.tar")), rank=1, world_size=2)
    assert one.fingerprint == two.fingerprint == tables.fingerprint
    manifest["shards"] = manifest["shards"][:-1]  # a manifest rewritten between two ranks
    (copy / "shards.json").write_text(json.dumps(manifest))
    assert DicomShardDataset(str(copy / "shards.json")).fingerprint != one.fingerprint
