"""Helpers shared by the benchmark modules: synthetic CT files, timing, page cache."""

from __future__ import annotations

import importlib.metadata
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "EpochLoader",
    "ct_dataset",
    "median_s",
    "medians_s",
    "version",
    "warm_page_cache",
    "write_ct",
]


def medians_s(fns: list[Callable[[], object]], repeats: int, sync: bool = False) -> list[float]:
    """Median wall time of each function over ``repeats`` runs, after one untimed warm-up each.

    The runs are interleaved (a, b, a, b, ...) so that load from other jobs on a shared machine
    falls on every side alike. ``sync``: wait for CUDA before and after each run (CUDA calls
    are asynchronous: time the work, not the launch).
    """
    for fn in fns:
        fn()  # imports, first-call caches and lazily built decoders stay out of the numbers
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            if sync:
                _cuda_synchronize()
            t0 = time.perf_counter()
            fn()
            if sync:
                _cuda_synchronize()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def median_s(fn: Callable[[], object], repeats: int, sync: bool = False) -> float:
    """:func:`medians_s` of one function."""
    return medians_s([fn], repeats, sync)[0]


def _cuda_synchronize() -> None:
    import torch

    torch.cuda.synchronize()


def warm_page_cache(paths: Iterable[Path]) -> None:
    """Read every byte once so that no reader pays for the disk and every one sees the same cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def ct_dataset(rows: int, columns: int, bits_allocated: int, bits_stored: int) -> Dataset:
    """A CT header (Explicit VR LE, rescale −1024) without pixel data or instance UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BENCH"
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if bits_allocated == 16 else 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return ds


def write_ct(directory: Path, n: int, bits_stored: int = 16, high: int | None = None) -> list[Path]:
    """``n`` 512x512 int16 CT slices ``IM000001`` … with random stored values in [-1024, high).

    ``high`` defaults to the largest value Bits Stored allows.
    """
    rng = np.random.default_rng(0)
    ds = ct_dataset(512, 512, 16, bits_stored)
    high = 2 ** (bits_stored - 1) - 1 if high is None else high
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.PixelData = rng.integers(-1024, high, (512, 512), dtype=np.int16).tobytes()
        path = directory / f"IM{i + 1:06d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def version(dist: str) -> str:
    """The installed version of a distribution, or ``"?"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


class EpochLoader:
    """One DataLoader over a dataset (torchdicom's ``Collate``), kept across timed epochs.

    Persistent workers: the timed epochs measure reading, not starting worker processes.
    """

    def __init__(self, ds: object, workers: int, batch_size: int, prefetch: bool = False):
        import torch

        from torchdicom import Collate
        from torchdicom.data.prefetch import PrefetchDataLoader

        # prefetch: the next batch's remote ranges are fetched while the current one is used.
        loader = PrefetchDataLoader if prefetch else torch.utils.data.DataLoader
        self.loader = loader(
            ds,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=Collate(),
        )

    def epoch(self) -> int:
        """Read one epoch; the number of items."""
        return sum(len(b["image"]) for b in self.loader)

    def close(self) -> None:
        # Persistent workers end with the iterator; drop it now, not at interpreter exit.
        self.loader._iterator = None
