"""Size-policy benchmark: mixed-size 2–3 k radiographs resized to 512² per item, items/s.

``python -m benchmarks.resize [--quick] [--n N]``

Writes ``N`` (default 12) greyscale radiographs of different sizes between 2000 and 3000
pixels a side (uint16, 12 stored bits, some MONOCHROME1; Explicit VR Little Endian,
DX) to a temporary folder, warms the page cache, and measures in one run — same files,
``batch_size`` 4, ``num_workers`` 0 and 2 (the pipelines' epochs interleaved); one
warm-up epoch, then the median epoch of several:

* **naive**: a ``Dataset`` doing ``pydicom.dcmread`` + ``pixel_array`` + float32 +
  ``torch.nn.functional.interpolate(size=(512, 512), mode="area")`` per item, default
  collate → float32 (B, 1, 512, 512);
* **MONAI** (when importable): ``LoadImaged(reader="PydicomReader",
  ensure_channel_first=True)`` + ``Resized(spatial_size=(512, 512), mode="area")`` in a
  ``monai.data.Dataset``, MONAI's collate → float32 (B, 1, 512, 512) (rescaled values);
* **torchdicom**: ``DicomDataset(folder, frames="first", size=(512, 512), channels=1)``
  (index scanned once, not timed) + :class:`~torchdicom.Collate` → the stored uint16
  (B, 1, 512, 512), half the bytes to move to the device.

Every pipeline downsamples by area averaging, so the work per pixel is the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset as DicomDatasetHeader
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import medians_s, warm_page_cache
from torchdicom import Collate, DicomDataset, scan

__all__ = ["main", "run", "write_radiographs"]

SIZE = (512, 512)
BATCH = 4


def write_radiographs(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` DX radiographs of random sizes in [2000, 3000] a side (uint16, 12 stored bits;
    every third MONOCHROME1), smooth anatomy-like content plus noise."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rows, cols = (int(v) for v in rng.integers(2000, 3001, 2))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = DicomDatasetHeader()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.PatientID = f"BENCH{i}"
        ds.Modality = "DX"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if i % 3 == 2 else "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        y = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
        x = np.linspace(-1, 1, cols, dtype=np.float32)[None]
        body = 2500 * np.exp(-(x**2 + y**2) * 1.5) + 600
        noise = rng.integers(0, 200, (rows, cols), dtype=np.uint16)
        ds.PixelData = (body.astype(np.uint16) + noise).tobytes()
        path = directory / f"DX{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class NaiveDataset(Dataset):
    """What a first loader with a resize looks like: parse, decode, float, interpolate."""

    def __init__(self, paths: list[Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        pixels = pydicom.dcmread(self.paths[i]).pixel_array
        image = torch.from_numpy(pixels.astype(np.float32))[None, None]
        return F.interpolate(image, size=SIZE, mode="area")[0]


def _monai(paths: list[Path]) -> tuple[Dataset, Any, str] | None:
    """MONAI's dataset and collate for the same job, or None when MONAI does not import."""
    try:
        import monai
        from monai.data import Dataset as MonaiDataset
        from monai.data import list_data_collate
        from monai.transforms import Compose, LoadImaged, Resized
    except Exception:  # a broken optional install must not stop the benchmark
        return None
    pipeline = Compose(
        [
            LoadImaged(keys="image", reader="PydicomReader", ensure_channel_first=True),
            Resized(keys="image", spatial_size=SIZE, mode="area"),
        ]
    )
    dataset = MonaiDataset([{"image": str(p)} for p in paths], transform=pipeline)
    return dataset, list_data_collate, str(monai.__version__)


def _loader(dataset: Dataset, workers: int, collate_fn: Any = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=BATCH,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
    )


def _images(batch: Any) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch


def _epoch(loader: DataLoader) -> None:
    for batch in loader:
        _images(batch)


def run(quick: bool = False, n: int = 12) -> str:
    """Run the benchmark and return the markdown report.

    Args:
        quick: 3 timed epochs (else 5), no 2-worker runs.
        n: number of radiographs.
    """
    repeats = 3 if quick else 5
    results: dict[str, dict[int, float]] = {}
    dtypes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-resize-") as tmp:
        paths = write_radiographs(Path(tmp) / "dx", n)
        warm_page_cache(paths)
        index = scan(Path(tmp) / "dx", progress=False)  # parse once, outside the timings
        ours = DicomDataset(index, frames="first", size=SIZE, channels=1)
        ordered = [Path(r["path"]) for r in ours.rows]
        sizes = sorted({(int(r["rows"]), int(r["columns"])) for r in ours.rows})
        pipelines: dict[str, tuple[Dataset, Any]] = {
            "naive Dataset: dcmread + pixel_array + interpolate(area)": (
                NaiveDataset(ordered),
                None,
            ),
        }
        monai = _monai(ordered)
        if monai is not None:
            dataset, collate, version = monai
            pipelines[f"MONAI {version} LoadImaged(PydicomReader) + Resized(area)"] = (
                dataset,
                collate,
            )
        ours_name = "torchdicom DicomDataset(size=(512, 512), channels=1)"
        pipelines[ours_name] = (ours, Collate())

        # Same result (up to rounding to the stored integers), checked outside the timings.
        naive_first = pipelines[next(iter(pipelines))][0][0]
        ours_first = ours[0]["image"]
        assert ours_first.shape == (1, *SIZE) and ours_first.dtype == torch.uint16
        assert (ours_first.float() - naive_first).abs().max() <= 0.5
        for name, (dataset, collate) in pipelines.items():
            batch = _images(next(iter(_loader(dataset, 0, collate))))
            assert tuple(batch.shape) == (BATCH, 1, *SIZE), (name, batch.shape)
            dtypes[name] = str(batch.dtype).replace("torch.", "")

        # The pipelines' epochs interleaved (a, b, c, a, b, c, ...), so load from other jobs on
        # a shared machine falls on all alike; with 2 workers each, the idle pipelines' workers
        # only wait (3 pipelines: 6 worker processes, 2 busy at a time).
        for workers in (0,) if quick else (0, 2):
            loaders = [_loader(d, workers, c) for d, c in pipelines.values()]
            epochs = [lambda lo=lo: _epoch(lo) for lo in loaders]
            for name, seconds in zip(pipelines, medians_s(epochs, repeats)):
                results.setdefault(name, {})[workers] = n / seconds
            del loaders, epochs  # stops persistent workers

    naive_name = next(iter(results))
    workers = (0,) if quick else (0, 2)
    head = " | ".join(f"items/s, {w} workers | torchdicom vs it" for w in workers)
    lines = [
        f"{n} DX radiographs of {len(sizes)} sizes from {sizes[0][0]}×{sizes[0][1]} to"
        f" {sizes[-1][0]}×{sizes[-1][1]} (uint16, 12 stored bits, Explicit VR LE, page cache"
        f" warm), each resized to {SIZE[0]}×{SIZE[1]} per item by area averaging, batch"
        f" {BATCH}; median of {repeats} epochs after a warm-up epoch. {platform.machine()},"
        f" {os.cpu_count()} CPUs, Python {platform.python_version()}, torch"
        f" {torch.__version__}, pydicom {pydicom.__version__}.",
        "",
        f"| pipeline | batch dtype | {head} |",
        "|---|---|" + "---:|---:|" * len(workers),
    ]
    for name, rates in results.items():
        cells = []
        for w in workers:
            cells += [f"{rates[w]:,.1f}", f"{results[ours_name][w] / rates[w]:.2f}x"]
        lines.append(f"| {name} | {dtypes[name]} | " + " | ".join(cells) + " |")
    if len(results) == 2:
        lines += ["", "MONAI: not importable here, skipped."]
    lines += [
        "",
        "torchdicom's batches stay in the stored uint16 (2 bytes per pixel to the device);"
        " the peers hand over float32 (4). Ratios > 1: torchdicom faster."
        f" Naive = {naive_name}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.resize", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 epochs, 0 workers only")
    p.add_argument("--n", type=int, default=12, help="number of radiographs")
    args = p.parse_args(argv)
    print(run(quick=args.quick, n=args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
