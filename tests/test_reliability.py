"""Fault injection, concurrency and resource bounds (see tests/RELIABILITY.md).

What a 10-hour training run on a hospital export must survive: files that
change under the index, corrupt files inside DataLoader workers and DDP
ranks, processes killed while writing a cache, read-only or full disks,
threads sharing reused buffers, and collections of many thousand files.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import JPEG2000Lossless, RLELossless
from torch.utils.data import DataLoader

from tests.conftest import real_file
from tests.dicom_factory import pixel_array_fchw, write_dicom
from torchdicom import DicomDataset, read_frames, scan
from torchdicom.cache import FrameCache
from torchdicom.data import collate
from torchdicom.errors import (
    CorruptDicomError,
    DicomFileNotFoundError,
    StaleIndexError,
)
from torchdicom.index import DicomIndex

ROOT = Path(__file__).resolve().parents[1]


def _pydicom_pixels(path: Path) -> np.ndarray:
    return pixel_array_fchw(pydicom.dcmread(path))


# --------------------------------------------------------------------------- stale index
@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Path, DicomIndex]:
    root = tmp_path / "data"
    for k in range(3):
        write_dicom(root / f"f{k}.dcm", rows=16, columns=16, seed=k)
    return root, scan(root, progress=False)


def test_file_deleted_after_scan_is_a_clear_error(indexed):
    _root, index = indexed
    row = index.row(1)
    os.unlink(row["path"])
    with pytest.raises(DicomFileNotFoundError, match="deleted since it was indexed") as info:
        read_frames(row)
    assert info.value.path == row["path"]
    ds = DicomDataset(index, on_error="raise")
    with pytest.raises(DicomFileNotFoundError):
        ds[1]


@pytest.mark.parametrize("same_size", [False, True], ids=["other-size", "same-size"])
def test_file_rewritten_after_scan_is_stale_never_wrong_pixels(indexed, same_size):
    _root, index = indexed
    row = index.row(0)
    path = Path(row["path"])
    # A rewrite by another tool: new pixels in place (same size) or a larger image.
    if same_size:
        # Not a fresh write_dicom: its random UIDs vary in length, so the size would too.
        data = bytearray(path.read_bytes())
        pixels = slice(len(data) - 16 * 16 * 2, len(data))
        data[pixels] = bytes(255 - b for b in data[pixels])
        path.write_bytes(bytes(data))
    else:
        write_dicom(path, rows=32, columns=32, seed=99)
    # Filesystem timestamps are coarse (a few ms on some kernels): make sure the
    # rewrite is visible in mtime as it is for any rewrite that is not
    # within one clock tick of the scan (documented limit in RELIABILITY.md).
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, row["mtime_ns"] + 10_000_000))
    assert (os.path.getsize(path) == row["size"]) == same_size
    with pytest.raises(StaleIndexError, match="rescan") as info:
        read_frames(row)
    assert info.value.path == str(path)
    # A fresh scan reads the new pixels.
    new_row = scan(path, progress=False).row(0)
    np.testing.assert_array_equal(read_frames(new_row).numpy(), _pydicom_pixels(path))


def test_stale_file_in_skip_dataset_is_substituted_not_misread(indexed):
    _root, index = indexed
    ds = DicomDataset(index, on_error="skip")
    path = Path(index.row(0)["path"])
    with open(path, "ab") as f:  # appended junk: size changes
        f.write(b"\0" * 64)
    item = ds[0]
    assert item["substituted"] and item["path"] != str(path)
    assert ds.skipped == 1


# --------------------------------------------------------------------------- DataLoader workers
@pytest.fixture
def with_corrupt(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Eight good files and two whose pixel data is cut short (scan fine, read fails)."""
    root = tmp_path / "data"
    for k in range(10):
        write_dicom(root / f"f{k:02d}.dcm", rows=16, columns=16, seed=k)
    bad = [root / "f02.dcm", root / "f07.dcm"]
    for p in bad:
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) - 64)
    return root, bad


def test_loader_skip_counts_and_raise_names_the_file(with_corrupt):
    root, bad = with_corrupt
    ds = DicomDataset(root, on_error="skip")
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b["image"]) for b in batches] == [5, 5]
    assert ds.skipped == 2

    strict = DataLoader(DicomDataset(root), batch_size=5, num_workers=2, collate_fn=collate)
    it = iter(strict)
    try:
        # DataLoader re-raises a worker's exception as type(exc)(message):
        # TorchDicomError accepts that, so the main process sees the same class.
        with pytest.raises(CorruptDicomError) as info:
            list(it)
    finally:
        it._shutdown_workers()  # type: ignore[attr-defined]
    assert "CorruptDicomError" in str(info.value)
    assert str(bad[0]) in str(info.value)


# --------------------------------------------------------------------------- killed writers
def _index_writer(root: str, cache: str, ready: Any) -> None:
    index = scan(root, progress=False, workers=0)
    ready.set()
    while True:
        index.to_parquet(cache)


def _frame_cache_writer(src: str, directory: str, ready: Any) -> None:
    row = scan(src, progress=False, workers=0).row(0)
    cache = FrameCache(directory)
    ready.set()
    while True:
        cache.clear()
        cache.read(row)


def _kill_writer_at_random(target: Any, args: tuple[str, str], rng: random.Random) -> None:
    # Forked (no interpreter start-up): the child only parses headers and
    # writes files, nothing that depends on the parent's threads.
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(30), "writer did not start"
        time.sleep(rng.uniform(0.0, 0.1))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)


def test_sigkill_while_writing_index_cache_never_leaves_a_torn_cache(tmp_path):
    root = tmp_path / "data"
    for k in range(40):
        write_dicom(root / f"f{k:02d}.dcm", rows=8, columns=8, seed=k)
    cache = tmp_path / "index.parquet"
    fresh = scan(root, progress=False, workers=0)
    rng = random.Random(7)
    for _ in range(6):
        _kill_writer_at_random(_index_writer, (str(root), str(cache)), rng)
        # The next run reads whatever the killed writer left: the previous whole
        # file or nothing (atomic rename), never a torn one.
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "cache ignored and rebuilt" would fail here
            index = scan(root, cache=cache, progress=False, workers=0)
        assert index.df["path"].tolist() == fresh.df["path"].tolist()
        assert index.df["pixel_offset"].tolist() == fresh.df["pixel_offset"].tolist()


def test_torn_index_cache_is_detected_and_rebuilt(tmp_path):
    root = tmp_path / "data"
    for k in range(4):
        write_dicom(root / f"f{k}.dcm", rows=8, columns=8, seed=k)
    cache = tmp_path / "index.parquet"
    scan(root, cache=cache, progress=False)
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])  # what a non-atomic writer would leave
    with pytest.warns(UserWarning, match="rebuilt"):
        index = scan(root, cache=cache, progress=False)
    assert len(index) == 4
    assert len(DicomIndex.read_parquet(cache)) == 4  # rewritten whole


def test_sigkill_while_writing_frame_cache_never_serves_a_torn_frame(tmp_path, caplog):
    src = tmp_path / "src"
    write_dicom(src / "rle.dcm", rows=64, columns=64, frames=6, transfer_syntax=RLELossless)
    directory = tmp_path / "frames"
    row = scan(src, progress=False).row(0)
    expected = read_frames(row).numpy()
    rng = random.Random(11)
    for _ in range(5):
        _kill_writer_at_random(_frame_cache_writer, (str(src), str(directory)), rng)
        cache = FrameCache(directory)
        with caplog.at_level("WARNING", logger="torchdicom.cache"):
            got = cache.read(row)
        np.testing.assert_array_equal(got, expected)
        # Entries are renamed into place whole: none fails its checksum.
        assert "damaged" not in caplog.text


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_frame_cache_on_unwritable_disk_falls_back_with_one_warning(tmp_path, monkeypatch, code):
    write_dicom(
        tmp_path / "src" / "j2k.dcm",
        rows=32,
        columns=32,
        frames=3,
        transfer_syntax=JPEG2000Lossless,
    )
    row = scan(tmp_path / "src", progress=False).row(0)
    expected = read_frames(row).numpy()
    real_replace = os.replace

    def failing_replace(a: Any, b: Any, *args: Any, **kwargs: Any) -> None:
        if str(b).endswith(".frame"):
            raise OSError(code, os.strerror(code))
        real_replace(a, b, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    cache = FrameCache(tmp_path / "frames")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            np.testing.assert_array_equal(cache.read(row), expected)
    assert [str(w.message) for w in caught if "cache" in str(w.message)].__len__() == 1
    assert not cache.enabled
    assert not list((tmp_path / "frames").glob("*/.*.tmp")), "temporary files left behind"


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_index_cache_on_unwritable_disk_scans_without_cache(tmp_path, monkeypatch, code):
    root = tmp_path / "data"
    for k in range(3):
        write_dicom(root / f"f{k}.dcm", rows=8, columns=8, seed=k)
    cache = tmp_path / "idx" / "index.parquet"

    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.warns(UserWarning, match="not written") as caught:
        index = scan(root, cache=cache, progress=False)
    assert len([w for w in caught if "cache" in str(w.message)]) == 1
    assert len(index) == 3 and not cache.exists()
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- concurrency
@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Files exercising every reuse-prone path: interleaved RGB (scratch buffer), 1-bit, decoders."""
    root = tmp_path_factory.mktemp("layouts")
    specs: list[dict[str, Any]] = [
        {"rows": 40, "columns": 48, "frames": 3, "samples_per_pixel": 3, "bits_allocated": 8},
        {"rows": 33, "columns": 31, "frames": 2, "samples_per_pixel": 3, "bits_allocated": 16},
        {"rows": 13, "columns": 7, "frames": 5, "bits_allocated": 1},
        {"rows": 64, "columns": 64, "frames": 4, "bits_allocated": 16, "bits_stored": 12,
         "signed": True, "garbage_high_bits": True},
        {"rows": 32, "columns": 32, "frames": 3, "transfer_syntax": RLELossless},
        {"rows": 24, "columns": 40, "frames": 2, "samples_per_pixel": 3, "bits_allocated": 8,
         "transfer_syntax": RLELossless},
    ]  # fmt: skip
    paths = []
    for i, spec in enumerate(specs):
        for copy in range(2):
            path = root / f"l{i}_{copy}.dcm"
            write_dicom(path, seed=10 * i + copy, **spec)
            paths.append(path)
    for name in ("SC_rgb_small_odd.dcm", "JPEG2000.dcm", "MR_small.dcm"):
        dst = root / name
        shutil.copy(real_file(name), dst)
        paths.append(dst)
    return paths


def test_threads_never_share_read_buffers(layouts):
    index = scan(layouts, progress=False)
    rows = index.rows()
    expected = {r["path"]: read_frames(r).numpy() for r in rows}
    # Each thread reads a different file at a time, in a different order.
    jobs = [rows[(t + k) % len(rows)] for k in range(12) for t in range(8)]
    barrier = threading.Barrier(8)

    def work(t: int) -> list[tuple[str, np.ndarray]]:
        barrier.wait()  # start together so reads overlap
        mine = jobs[t::8]
        return [(r["path"], read_frames(r).numpy()) for r in mine for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        results = [x for chunk in pool.map(work, range(8)) for x in chunk]
    assert len(results) == len(jobs) * 3
    for path, arr in results:
        np.testing.assert_array_equal(arr, expected[path], err_msg=path)


def test_loader_workers_return_what_a_single_process_reads(layouts):
    ds = DicomDataset(scan(layouts, progress=False), frames="first")
    single = [ds[i]["image"] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=None, num_workers=2, shuffle=False)
    for i, item in enumerate(loader):
        torch.testing.assert_close(item["image"], single[i], rtol=0, atol=0)


# --------------------------------------------------------------------------- DDP with skips
def _ddp_rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(1)  # forked: keep the parent's intra-op pool out of it
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=20),
    )
    try:
        ds = DicomDataset(root, on_error="skip")
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate)
        batches = 0
        for batch in loader:
            # A rank with fewer batches would leave the other blocked here.
            total = torch.tensor([float(batch["image"].float().sum())])
            dist.all_reduce(total)
            batches += 1
        Path(out, f"rank{rank}").write_text(f"{batches} {ds.skipped}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_get_equal_batches_despite_skipped_files(with_corrupt, tmp_path):
    root, _bad = with_corrupt
    out = tmp_path / "ddp"
    out.mkdir()
    port = _free_port()
    t0 = time.monotonic()
    # fork: no interpreter start-up per rank (spawn costs ~10 s on 2 cores).
    torch.multiprocessing.start_processes(
        _ddp_rank, args=(2, port, str(root), str(out)), nprocs=2, join=True, start_method="fork"
    )
    assert time.monotonic() - t0 < 60
    results = [Path(out, f"rank{r}").read_text().split() for r in range(2)]
    batches = [int(b) for b, _ in results]
    assert batches[0] == batches[1] == 2  # 10 items / 2 ranks / batch 3 → 2 batches each
    assert sum(int(s) for _, s in results) == 2  # each corrupt file substituted once


def _free_port() -> int:
    """A free TCP port on localhost (released before use; fine for a test)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- resource bounds
def _tiny_collection(directory: Path, n: int) -> Path:
    """``n`` small native files (bytes copied, UIDs irrelevant for scanning)."""
    template = directory / "template.dcm"
    write_dicom(template, rows=4, columns=4, seed=0)
    data = template.read_bytes()
    template.unlink()
    for k in range(n):
        sub = directory / f"d{k // 1000:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"IM{k:05d}").write_bytes(data)
    return directory


def _scan_peak(root: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        index = scan(root, progress=False, workers=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return len(index), peak


def _check_scan_memory_flat(tmp_path: Path, small: int, large: int) -> None:
    n_small, peak_small = _scan_peak(_tiny_collection(tmp_path / "small", small))
    n_large, peak_large = _scan_peak(_tiny_collection(tmp_path / "large", large))
    assert (n_small, n_large) == (small, large)
    per_file = (peak_large - peak_small) / (large - small)
    # An index row is ~45 values (a few kB as a dict plus its DataFrame cells);
    # a kept pydicom Dataset would add tens of kB per file.
    assert per_file < 12_000, f"scan keeps {per_file:.0f} bytes per file"


def test_scan_memory_is_flat_in_file_count(tmp_path):
    _check_scan_memory_flat(tmp_path, 100, 1000)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TORCHDICOM_SLOW"), reason="set TORCHDICOM_SLOW=1")
def test_scan_memory_is_flat_for_10000_files(tmp_path):
    _check_scan_memory_flat(tmp_path, 1000, 10_000)


_EPOCH_UNDER_LOW_FD_LIMIT = """
import resource, sys
from torchdicom import DicomDataset
ds = DicomDataset(sys.argv[1], frames="all")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
n = int(sys.argv[2])
for i in range(n):
    ds[i % len(ds)]
print("done", n, len(ds))
"""


def _epoch_under_low_fd_limit(tmp_path: Path, items: int) -> None:
    root = tmp_path / "data"
    write_dicom(root / "native.dcm", rows=8, columns=8, frames=4)
    write_dicom(root / "rgb.dcm", rows=8, columns=8, samples_per_pixel=3, bits_allocated=8)
    write_dicom(root / "bits.dcm", rows=8, columns=8, bits_allocated=1)
    write_dicom(root / "rle.dcm", rows=8, columns=8, transfer_syntax=RLELossless)
    proc = subprocess.run(
        [sys.executable, "-c", _EPOCH_UNDER_LOW_FD_LIMIT, str(root), str(items)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["done", str(items), "7"]


def test_no_file_handle_leak_under_a_64_descriptor_limit(tmp_path):
    # One leaked descriptor per item would fail after ~50 items; 5 000 items
    # keep the default run short, the 100 000-item epoch runs with TORCHDICOM_SLOW.
    _epoch_under_low_fd_limit(tmp_path, 5_000)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TORCHDICOM_SLOW"), reason="set TORCHDICOM_SLOW=1")
def test_no_file_handle_leak_over_a_100000_item_epoch(tmp_path):
    _epoch_under_low_fd_limit(tmp_path, 100_000)


def test_reads_and_errors_close_their_file_handles(tmp_path, layouts):
    bad = tmp_path / "bad.dcm"
    write_dicom(bad, rows=16, columns=16)
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) - 10)
    rows = scan([*layouts, bad], progress=False).rows()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for r in rows:
            try:
                read_frames(r)
            except CorruptDicomError:
                pass
    assert len(os.listdir("/proc/self/fd")) == before
