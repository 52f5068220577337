"""How torchdicom's costs grow: number of files, frames per file, image size, DataLoader workers.

``python -m benchmarks.scaling [--quick] [--plots DIR]``

* **files** (100 → 10 000; quick 100 → 1 000): one directory scan + index, and one
  pass of ``read_frames`` over the index. Per-file cost should stay constant.
* **frames per file** (10 → 1 000): one random frame of a native cine with
  ``read_frames`` (must stay flat: frames are located by offset), beside pydicom's
  one-frame ``pixels.pixel_array(index=k)`` and its whole-file ``pixel_array``.
* **image size** (256² → 2048², int16): plain read, torchdicom, pydicom per file.
* **DataLoader workers** (0, 1, 2): images/s of ``DicomDataset`` + ``collate`` on
  512² CT, second epoch (persistent workers, so start-up is not counted).
* **memory** (:mod:`benchmarks.memory`): peak RSS of a scan and of an epoch, per file.

Plots (matplotlib, Agg) go to ``--plots`` (default: this folder) as ``scaling_*.png``.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the suite runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import pydicom
import pydicom.pixels
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from benchmarks._common import median_s, warm_page_cache
from benchmarks.memory import make_file_tree, measure
from torchdicom import DicomDataset, collate, read_frames, scan

__all__ = ["PLOTS", "run"]

HERE = Path(__file__).resolve().parent
#: The figures this module writes, relative to the plot folder.
PLOTS = ("scaling_files.png", "scaling_frames.png", "scaling_size.png", "scaling_workers.png")
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def _dataset(size: int, bits: int = 16, frames: int = 1) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if frames == 1 else US_MULTIFRAME
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = uid
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "SCALING"
    ds.Modality = "CT" if frames == 1 else "US"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if bits == 16 else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    else:
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


def _write(ds: Dataset, pixels: np.ndarray, path: Path) -> None:
    data = pixels.tobytes()
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    ds.save_as(path, enforce_file_format=True)


def _files(ns: list[int], root: Path) -> tuple[list[str], dict[int, Path], plt.Figure]:
    dirs = {n: make_file_tree(root / f"files_{n}", n) for n in ns}
    rows = [
        "| files | scan + index | per file | read all (read_frames) | per file |",
        "|---:|---:|---:|---:|---:|",
    ]
    xs, scan_s, read_s = [], [], []
    for n, d in dirs.items():
        warm_page_cache(p for p in d.rglob("IM*"))
        repeats = 1 if n >= 10_000 else 3
        t_scan = median_s(lambda d=d: scan(d, progress=False), repeats)
        index_rows = scan(d, progress=False).rows()
        assert len(index_rows) == n, f"scan found {len(index_rows)} of {n} files"
        t_read = median_s(lambda r=index_rows: [read_frames(x) for x in r], repeats)
        xs.append(n)
        scan_s.append(t_scan)
        read_s.append(t_read)
        rows.append(
            f"| {n:,} | {t_scan:.2f} s | {1e6 * t_scan / n:.0f} µs | {t_read:.2f} s | {1e6 * t_read / n:.0f} µs |"
        )
    growth_scan = (scan_s[-1] / xs[-1]) / (scan_s[0] / xs[0])
    rows += [
        "",
        f"Per-file scan cost at {xs[-1]:,} files is {growth_scan:.2f}× the cost at {xs[0]:,}"
        " (1.0 = linear; the smallest set also pays the fixed start-up of the process pool).",
    ]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(xs, [1e6 * t / n for t, n in zip(scan_s, xs)], "o-", label="scan + index")
    ax.loglog(xs, [1e6 * t / n for t, n in zip(read_s, xs)], "s-", label="read_frames (indexed)")
    ax.set(xlabel="files", ylabel="µs per file", title="Cost per file vs number of files")
    ax.legend()
    return rows, dirs, fig


def _frames(counts: list[int], root: Path, calls: int) -> tuple[list[str], plt.Figure]:
    rows = [
        "| frames | torchdicom one frame | pydicom one frame (index=k) | pydicom whole file | whole / torchdicom |",
        "|---:|---:|---:|---:|---:|",
    ]
    rng = np.random.default_rng(1)
    ours, pyd_one, pyd_whole = [], [], []
    size = 128
    for f in counts:
        path = root / f"cine_{f}.dcm"
        _write(_dataset(size, 8, f), rng.integers(0, 256, (f, size, size), dtype=np.uint8), path)
        warm_page_cache([path])
        (row,) = scan([path], progress=False, workers=0).rows()
        pick = random.Random(f)
        ks = [pick.randrange(f) for _ in range(calls)]
        t_ours = (
            median_s(lambda ks=ks, row=row: [read_frames(row, frames=k) for k in ks], 5) / calls
        )
        t_one = median_s(
            lambda ks=ks, p=str(path): [pydicom.pixels.pixel_array(p, index=k) for k in ks[:20]], 3
        ) / min(calls, 20)
        t_whole = median_s(lambda p=path: pydicom.dcmread(p).pixel_array, 3)
        ours.append(t_ours)
        pyd_one.append(t_one)
        pyd_whole.append(t_whole)
        rows.append(
            f"| {f:,} | {1e3 * t_ours:.3f} ms | {1e3 * t_one:.3f} ms | {1e3 * t_whole:.1f} ms | {t_whole / t_ours:,.0f}× |"
        )
    rows += [
        "",
        f"torchdicom one-frame time at {counts[-1]:,} frames / at {counts[0]:,} frames:"
        f" **{ours[-1] / ours[0]:.2f}×** (flat = 1; pydicom index=k: {pyd_one[-1] / pyd_one[0]:.2f}×,"
        f" whole file: {pyd_whole[-1] / pyd_whole[0]:.0f}×). {size}² 8-bit native, {calls} random frames.",
    ]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(counts, [1e3 * t for t in ours], "o-", label="torchdicom read_frames(frames=k)")
    ax.loglog(counts, [1e3 * t for t in pyd_one], "s-", label="pydicom pixel_array(index=k)")
    ax.loglog(counts, [1e3 * t for t in pyd_whole], "^-", label="pydicom whole file")
    ax.set(xlabel="frames in file", ylabel="ms per random frame", title="One frame vs file length")
    ax.legend(fontsize=8)
    return rows, fig


def _sizes(sizes: list[int], root: Path, budget_mb: int) -> tuple[list[str], plt.Figure]:
    rows = [
        "| size | files | plain read | torchdicom | pydicom | torchdicom / plain | pydicom / torchdicom |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rng = np.random.default_rng(2)
    series: dict[str, list[float]] = {"plain read": [], "torchdicom": [], "pydicom": []}
    for s in sizes:
        n = max(3, min(50, budget_mb * 2**20 // (2 * s * s)))
        d = root / f"size_{s}"
        d.mkdir()
        pixels = rng.integers(-1024, 3000, (s, s), dtype=np.int16)
        paths = []
        for i in range(n):
            p = d / f"IM{i:04d}"
            _write(_dataset(s), pixels, p)
            paths.append(p)
        warm_page_cache(paths)
        idx = scan(paths, progress=False, workers=0).rows()

        def plain(paths: list[Path] = paths) -> None:
            for p in paths:
                with open(p, "rb") as fh:
                    fh.read()

        t = {
            "plain read": median_s(plain, 5) / n,
            "torchdicom": median_s(lambda idx=idx: [read_frames(r) for r in idx], 5) / n,
            "pydicom": median_s(lambda ps=paths: [pydicom.dcmread(p).pixel_array for p in ps], 5)
            / n,
        }
        for k, v in t.items():
            series[k].append(v)
        rows.append(
            f"| {s}² | {n} | {1e3 * t['plain read']:.3f} ms | {1e3 * t['torchdicom']:.3f} ms"
            f" | {1e3 * t['pydicom']:.3f} ms | {t['plain read'] / t['torchdicom']:.2f}×"
            f" | {t['pydicom'] / t['torchdicom']:.2f}× |"
        )
    mb = [2 * s * s / 2**20 for s in sizes]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k, v in series.items():
        ax.loglog([s * s for s in sizes], [m / t for m, t in zip(mb, v)], "o-", label=k)
    ax.set(xlabel="pixels per image (int16)", ylabel="MiB/s", title="Throughput vs image size")
    ax.legend(fontsize=8)
    return rows, fig


def _workers(
    counts: list[int], root: Path, n: int, batch_size: int
) -> tuple[list[str], plt.Figure]:
    d = root / "loader_ct"
    d.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        _write(
            _dataset(512), rng.integers(-1024, 3000, (512, 512), dtype=np.int16), d / f"IM{i:05d}"
        )
    warm_page_cache(d.iterdir())
    dataset = DicomDataset(d, frames="first")
    rates = []
    for w in counts:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=w,
            collate_fn=collate,
            persistent_workers=w > 0,
        )

        def epoch(loader: torch.utils.data.DataLoader = loader) -> None:
            for batch in loader:
                batch["image"].shape  # noqa: B018 - the batch must be materialised

        rates.append(n / median_s(epoch, 3))
        del loader
    rows = [
        "| DataLoader workers | images/s | vs 0 workers |",
        "|---:|---:|---:|",
        *(f"| {w} | {r:,.0f} | {r / rates[0]:.2f}× |" for w, r in zip(counts, rates)),
        "",
        f"{n} files of 512² int16 CT, batch {batch_size}, DicomDataset(frames='first') + collate,"
        f" persistent workers, median of 3 epochs after a warm-up epoch; {os.cpu_count()} CPUs"
        " (workers compete with the main process and with other jobs on a shared machine).",
    ]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([str(w) for w in counts], rates)
    ax.set(xlabel="DataLoader num_workers", ylabel="images/s", title="Loader throughput (512² CT)")
    return rows, fig


def run(quick: bool = False, plot_dir: str | os.PathLike[str] | None = None) -> str:
    """Run the scaling and memory measurements, write the plots, return the markdown section.

    Args:
        quick: 100 → 1 000 files, shorter cines and loader runs.
        plot_dir: where ``scaling_*.png`` go (default: the benchmarks folder). The links in
            the returned markdown are relative to it.
    """
    plot_dir = Path(plot_dir) if plot_dir is not None else HERE
    plot_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ns = [100, 1_000] if quick else [100, 1_000, 10_000]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-scaling-") as tmp:
        root = Path(tmp)
        files_rows, dirs, fig_files = _files(ns, root)
        frame_rows, fig_frames = _frames([10, 100, 1000], root, calls=100 if quick else 300)
        size_rows, fig_sizes = _sizes([256, 512, 1024, 2048], root, budget_mb=16 if quick else 64)
        worker_rows, fig_workers = _workers([0, 1, 2], root, n=64 if quick else 256, batch_size=32)
        memory_md = measure(dirs)
    for fig, name in zip((fig_files, fig_frames, fig_sizes, fig_workers), PLOTS):
        fig.tight_layout()
        fig.savefig(plot_dir / name, dpi=100)
        plt.close(fig)
    lines += [
        f"Took {time.perf_counter() - t0:.0f} s. Plots: "
        + ", ".join(f"[{p}]({p})" for p in PLOTS)
        + ".",
        "",
        "### Number of files (64² int16 CT in 10 folders)",
        "",
        *files_rows,
        "",
        "![files](scaling_files.png)",
        "",
        "### Frames per file (one random frame)",
        "",
        *frame_rows,
        "",
        "![frames](scaling_frames.png)",
        "",
        "### Image size (single-frame int16, native)",
        "",
        *size_rows,
        "",
        "![size](scaling_size.png)",
        "",
        "### DataLoader workers",
        "",
        *worker_rows,
        "",
        "![workers](scaling_workers.png)",
        "",
        "### Memory (python -m benchmarks.memory)",
        "",
        memory_md,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 → 1 000 files, shorter runs")
    parser.add_argument("--plots", default=None, help="folder for the PNGs (default: benchmarks/)")
    args = parser.parse_args(argv)
    print(run(quick=args.quick, plot_dir=args.plots))


if __name__ == "__main__":
    main()
