"""Loader benchmark: windowed CT images/s through a DataLoader.

``python -m benchmarks.loader [--quick] [--n N]``

Writes ``N`` 512x512 int16 CT files (Explicit VR Little Endian, slope 1,
intercept -1024) to a temporary folder, warms the page cache, and measures in
one run — same files, same windowing ("lungs", W 1500 / L -600, fastai
formula, float32 (B, 1, 512, 512) out), ``batch_size`` 32, ``num_workers``
0 (the pipelines' epochs interleaved) and 2 (persistent workers, one pipeline
at a time); one warm-up epoch, then the median epoch of several:

* **naive**: a ``Dataset`` doing ``pydicom.dcmread`` + ``pixel_array`` +
  rescale and windowing in numpy per image, default collate;
* **MONAI** (when importable): ``LoadImage(reader="PydicomReader")`` per
  item + the same numpy rescale/window;
* **torchdicom**: :class:`~torchdicom.DicomDataset` (index scanned once, not
  timed) + :class:`~torchdicom.Collate`, then batched
  ``Window(W, L, rescale=True)`` (Rescale → Window fused into one pass) on the
  batch in the main process (on a GPU machine that step runs on the device in
  ``on_after_batch_transfer``); also the two modules one after the other;
* **torchdicom, transforms in the workers**: the same batched transforms
  run in the collate function, so ``num_workers`` processes share them;
* **torchdicom, raw batches**: the same loader without the CPU transforms —
  what crosses to the device in the intended setup.

Target (issue 5): torchdicom >= 10x the naive Dataset.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import median_s, medians_s, warm_page_cache, write_ct
from torchdicom import Collate, DicomDataset, scan
from torchdicom.transforms import Rescale, Window

__all__ = ["main", "run"]

WIDTH, LEVEL = 1500.0, -600.0  # the "lungs" window
BATCH = 32
TARGET = 10.0
CPU_NAME = "torchdicom DicomDataset + batched Window(rescale=True) (fused Rescale → Window, CPU)"


# --------------------------------------------------------------------------- pipelines
def _window_numpy(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """fastai ``windowed`` on one image, float32: ((HU - (L - W/2)) / W) clipped to [0, 1]."""
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    out = (hu - np.float32(LEVEL - WIDTH / 2)) / np.float32(WIDTH)
    return np.clip(out, 0.0, 1.0, out=out)[None]


class NaiveDataset(Dataset):
    """What a first loader looks like: parse the file, decode, window, per item."""

    def __init__(self, paths: list[Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        ds = pydicom.dcmread(self.paths[i])
        image = _window_numpy(ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept))
        return torch.from_numpy(image)


class MonaiDataset(Dataset):
    """MONAI's ``LoadImage`` with its pydicom reader, then the same numpy window."""

    def __init__(self, paths: list[Path]):
        from monai.transforms import LoadImage

        self.paths = [str(p) for p in paths]
        # MONAI's PydicomReader applies the rescale itself (stored * slope + intercept).
        self.load = LoadImage(reader="PydicomReader", image_only=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        hu = np.asarray(self.load(self.paths[i]), dtype=np.float32)
        # PydicomReader returns (W, H) (ITK-style axes); transpose back to rows x columns.
        return torch.from_numpy(_window_numpy(hu.T, 1.0, 0.0))


class _CollateThen:
    """Collate, then the batched transforms, in the worker (a CPU-only setup's choice)."""

    def __init__(self, transforms: nn.Module):
        self.collate = Collate()
        self.transforms = transforms

    def __call__(self, items: list[dict[str, Any]]) -> torch.Tensor:
        return self.transforms(self.collate(items))["image"]


def _monai_version() -> str | None:
    try:
        import monai
        from monai.transforms import LoadImage  # noqa: F401 - the import is the check
    except Exception:  # a broken optional install must not stop the benchmark
        return None
    return str(monai.__version__)


def _run_epoch(loader: DataLoader, after: Callable[[Any], Any]) -> None:
    for batch in loader:
        after(batch)


def _epoch_time(loader: DataLoader, after: Callable[[Any], torch.Tensor], repeats: int) -> float:
    """Median seconds per epoch after one warm-up epoch (workers started, caches warm)."""
    return median_s(lambda: _run_epoch(loader, after), repeats)


def _interleaved_epochs(
    loaders: dict[str, tuple[DataLoader, Callable[[Any], Any]]], repeats: int
) -> dict[str, float]:
    """Median seconds per epoch of each loader, epochs taken in turn after one warm-up each."""
    epochs = [lambda lo=loader, af=after: _run_epoch(lo, af) for loader, after in loaders.values()]
    return dict(zip(loaders, medians_s(epochs, repeats), strict=True))


def _loader(dataset: Dataset, workers: int, collate_fn: Any = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=BATCH,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
    )


def run(quick: bool = False, n: int = 128) -> str:
    """Run the benchmark and return the markdown report.

    Args:
        quick: at most 64 files, 3 timed epochs (else 7).
        n: number of CT files.
    """
    if quick:
        n = min(n, 64)
    repeats = 3 if quick else 7
    monai_version = _monai_version()
    gpu_side = Window(WIDTH, LEVEL, rescale=True)
    two_steps = nn.Sequential(Rescale(), Window(WIDTH, LEVEL))

    def transforms(batch: dict[str, Any]) -> torch.Tensor:
        return gpu_side(batch)["image"]

    def transforms_two_steps(batch: dict[str, Any]) -> torch.Tensor:
        return two_steps(batch)["image"]

    results: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-loader-") as tmp:
        paths = write_ct(Path(tmp) / "ct", n, high=3072)
        warm_page_cache(paths)
        index = scan(Path(tmp) / "ct", progress=False)  # parse once, outside the timings
        ours = DicomDataset(index, frames="first")
        assert len(ours) == n
        # Same output from every pipeline, checked once outside the timings.
        naive = NaiveDataset([Path(r["path"]) for r in ours.rows])
        reference = torch.stack([naive[i] for i in range(BATCH)])
        got = transforms(Collate()([ours[i] for i in range(BATCH)]))
        assert got.dtype == torch.float32 and torch.allclose(got, reference, atol=1e-6)
        assert torch.equal(got, transforms_two_steps(Collate()([ours[i] for i in range(BATCH)])))
        pipelines: dict[str, tuple[Dataset, Any, Callable[[Any], Any]]] = {
            "naive Dataset: dcmread + pixel_array + numpy window": (naive, None, lambda b: b),
        }
        if monai_version is not None:
            monai_ds = MonaiDataset([Path(r["path"]) for r in ours.rows])
            assert torch.allclose(monai_ds[0], reference[0], atol=1e-6)
            pipelines[f"MONAI {monai_version} LoadImage(PydicomReader) + numpy window"] = (
                monai_ds,
                None,
                lambda b: b,
            )
        pipelines[CPU_NAME] = (ours, Collate(), transforms)
        pipelines["torchdicom DicomDataset + batched Rescale() then Window() (CPU, two passes)"] = (
            ours,
            Collate(),
            transforms_two_steps,
        )
        pipelines[
            "torchdicom DicomDataset + batched Window(rescale=True) in the workers' collate"
        ] = (
            ours,
            _CollateThen(gpu_side),
            lambda b: b,
        )
        pipelines["torchdicom DicomDataset, raw int16 batches (transforms on device)"] = (
            ours,
            Collate(),
            lambda b: b,
        )
        # 0 workers: the pipelines' epochs interleaved (a, b, c, a, b, c, ...), so load from
        # other jobs on a shared machine and the process's own memory state fall on all alike.
        in_process = {
            name: (_loader(dataset, 0, collate_fn), after)
            for name, (dataset, collate_fn, after) in pipelines.items()
        }
        for name, seconds in _interleaved_epochs(in_process, repeats).items():
            results[name] = {0: n / seconds}
        # 2 workers: one pipeline at a time (ten persistent workers at once would swamp 2 CPUs).
        for name, (dataset, collate_fn, after) in pipelines.items():
            loader = _loader(dataset, 2, collate_fn)
            results[name][2] = n / _epoch_time(loader, after, repeats)
            del loader  # stops persistent workers before the next pipeline

    naive_name = next(iter(results))
    lines = [
        f"{n} files of 512x512 int16 CT (Explicit VR LE, page cache warm), batch {BATCH},"
        f" window W {WIDTH:g} / L {LEVEL:g} → float32 (B, 1, 512, 512); median of {repeats}"
        f" epochs after a warm-up epoch. {platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, torch {torch.__version__},"
        f" pydicom {pydicom.__version__}, {torch.get_num_threads()} torch threads.",
        "",
        "| pipeline | images/s, 0 workers | vs naive | images/s, 2 workers | vs naive |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rates in results.items():
        cells = []
        for workers in (0, 2):
            rate = rates[workers]
            cells += [f"{rate:,.0f}", f"{rate / results[naive_name][workers]:.1f}x"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if monai_version is None:
        lines += ["", "MONAI: not importable here, skipped."]
    verdicts = []
    for workers in (0, 2):
        ratio = results[CPU_NAME][workers] / results[naive_name][workers]
        verdicts.append(
            f"{workers} workers {'met' if ratio >= TARGET else 'MISSED'} ({ratio:.1f}x)"
        )
    lines += ["", f"Target >= {TARGET:g}x naive with CPU transforms: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__)
    p.add_argument("--quick", action="store_true", help="64 files, 3 epochs")
    p.add_argument("--n", type=int, default=128, help="number of CT files")
    args = p.parse_args(argv)
    print(run(quick=args.quick, n=args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
