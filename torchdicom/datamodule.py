"""Lightning DataModule: index once, split by patient, transform on the device.

Raw stored integers cross the host→device link (2 bytes per pixel for CT,
not 4), and the float conversion, Hounsfield rescale, windowing and
augmentation run batched on the device in :meth:`on_after_batch_transfer`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdicom.cache import FrameCache
from torchdicom.data import Collate, DicomDataset, MaskSource
from torchdicom.data.resize import ResizeMode, check_channels
from torchdicom.data.sampler import SizeBucketBatchSampler, item_shapes
from torchdicom.index import DicomIndex, scan

__all__ = ["DicomDataModule", "patient_split"]

log = logging.getLogger(__name__)

#: Folders (relative to the data folder) left out of the images by default: masks live there.
MASK_FOLDERS = ("masks",)


def patient_split(
    groups: list[str], val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split items into train/val/test so that no group (patient) is in two splits.

    Groups are ordered by a seeded hash (deterministic, independent of file
    order) and assigned to test, then val, until each split holds its
    fraction of the *items*; the rest is train. Items with an empty group are
    their own group.

    Returns:
        Three int64 arrays of item positions (train, val, test).
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name} must be in [0, 1). Got: {f}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1. Got: {val_fraction + test_fraction}"
        )
    keys = [g if g else f"\0item{i}" for i, g in enumerate(groups)]
    by_group: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_group.setdefault(k, []).append(i)
    order = sorted(by_group, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    n = len(groups)
    want_test, want_val = round(test_fraction * n), round(val_fraction * n)
    test: list[int] = []
    val: list[int] = []
    train: list[int] = []
    for k in order:
        items = by_group[k]
        if len(test) < want_test:
            test.extend(items)
        elif len(val) < want_val:
            val.extend(items)
        else:
            train.extend(items)
    return (
        np.array(sorted(train), np.int64),
        np.array(sorted(val), np.int64),
        np.array(sorted(test), np.int64),
    )


class DicomDataModule(pl.LightningDataModule):
    """A LightningDataModule over a DICOM folder (works with ``LightningCLI``).

    Args:
        data: a directory of DICOM files, or a parquet index written by
            :meth:`DicomIndex.to_parquet` / ``torchdicom scan --out``.
        labels: a CSV path or a callable ``f(path)`` / ``f(path, frame)`` (see
            :class:`DicomDataset`). A DataFrame or a mapping works too from Python;
            the annotation lists only the types ``LightningCLI`` parses safely
            (jsonargparse reads a path given for a union with table types as the
            file's contents).
        masks: paired masks (see :class:`DicomDataset`).
        frames: ``"all"``, ``"first"`` or a frame index (see :class:`DicomDataset`).
        val_fraction, test_fraction: share of items per split; split by hashed
            patient ID, so no patient is in two splits; deterministic for ``seed``.
        seed: split seed.
        batch_size, num_workers, pin_memory (default: when CUDA is available),
        persistent_workers: DataLoader settings.
        cpu_transform: per-item callable run in the workers (e.g. an
            albumentations adapter).
        gpu_transforms: ``nn.Module`` on the batch dict, run on the device in
            :meth:`on_after_batch_transfer` for every split (e.g. ``Rescale →
            MultiWindow``).
        train_gpu_transforms: ``nn.Module`` run after ``gpu_transforms`` for
            training batches only (augmentation).
        on_error: ``"raise"`` or ``"skip"`` (see :class:`DicomDataset`).
        color: ``"rgb"`` or ``"ybr"``.
        cache_dir: decoded-frame cache directory for compressed files, shared
            by workers and ranks (``None``: no cache).
        index_cache: parquet file caching the header index of ``data``.
        label_column: label column of a CSV/DataFrame.
        pad: pad mixed image sizes in a batch (see :class:`Collate`).
        drop_last: drop the last incomplete training batch.
        size, resize, channels: the size policy (see :class:`DicomDataset`): every
            item becomes ``size`` (H, W) in the DataLoader workers, by ``resize``
            ``"stretch"`` / ``"letterbox"`` / ``"crop"``, still in its stored dtype;
            ``channels`` 1 (colour → luma) or 3 (grey repeated). A collection mixing
            grey and colour needs ``channels`` (or ``batching="by_size"``).
        batching: ``"default"`` — batches of ``batch_size`` in random (train) or
            index order; ``"by_size"`` — every batch holds items of one (C, H, W), read
            from the index, at full resolution (see
            :class:`~torchdicom.data.sampler.SizeBucketBatchSampler`: seeded by
            ``seed``, reshuffled per epoch, DDP ranks get equal batch counts).
        exclude: folders of ``data`` (relative to it, or absolute) whose files
            are not images. Default ``["masks"]``: a ``masks/`` folder at the
            top of ``data`` — where :mod:`torchdicom.samples` writes masks, and
            what ``masks="masks"`` names — holds masks, never training images,
            whether or not ``masks`` is given. ``[]`` keeps every file. Folders
            that do not exist are ignored.

    Batches are dicts (see :class:`Collate`); ``image`` arrives on the device
    in the dataset's one stored dtype (:attr:`DicomDataset.dtype`: e.g. int32
    for CT series mixing int16 and uint16 storage) and leaves
    :meth:`on_after_batch_transfer` as whatever the GPU transforms make of it.
    """

    def __init__(
        self,
        data: str | os.PathLike[str],
        labels: str | os.PathLike[str] | Callable[..., Any] | None = None,
        masks: MaskSource = None,
        frames: Literal["all", "first"] | int = "first",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        cpu_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        gpu_transforms: nn.Module | None = None,
        train_gpu_transforms: nn.Module | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        color: Literal["rgb", "ybr"] = "rgb",
        cache_dir: str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
        label_column: str | None = None,
        pad: bool = False,
        drop_last: bool = False,
        size: tuple[int, int] | None = None,
        resize: ResizeMode = "stretch",
        channels: Literal[1, 3] | None = None,
        batching: Literal["default", "by_size"] = "default",
        exclude: list[str] | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1. Got: {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0. Got: {num_workers}")
        self.data = data
        self.labels = labels
        self.masks = masks
        self.frames = frames
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.cpu_transform = cpu_transform
        self.gpu_transforms = gpu_transforms
        self.train_gpu_transforms = train_gpu_transforms
        self.on_error = on_error
        self.color = color
        self.cache_dir = cache_dir
        self.index_cache = index_cache
        self.label_column = label_column
        self.collate = Collate(pad=pad)
        self.drop_last = drop_last
        if batching not in ("default", "by_size"):
            raise ValueError(f"batching must be 'default' or 'by_size'. Got: {batching!r}")
        self.size, self.resize, self.channels = size, resize, channels
        self.batching = batching
        self.exclude = list(MASK_FOLDERS if exclude is None else exclude)
        self.dataset: DicomDataset | None = None
        self.train_set: Subset | None = None
        self.val_set: Subset | None = None
        self.test_set: Subset | None = None

    # ----------------------------------------------------------------- setup
    def _index(self) -> DicomIndex:
        p = Path(self.data)
        if p.is_file() and p.suffix == ".parquet":
            return DicomIndex.read_parquet(p)
        return scan(p, progress=False)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        root = Path(self.data) if Path(self.data).is_dir() else None
        source: Any = self._index() if root is None else root
        self.dataset = DicomDataset(
            source,
            index_cache=self.index_cache,
            frames=self.frames,
            labels=self.labels,
            masks=_mirror(self.masks, root),
            transform=self.cpu_transform,
            on_error=self.on_error,
            color=self.color,
            cache=FrameCache(self.cache_dir) if self.cache_dir is not None else None,
            label_column=self.label_column,
            size=self.size,
            resize=self.resize,
            channels=self.channels,
            exclude=self._excluded(root),
        )
        if self.batching == "default" and self.batch_size > 1:
            # Grey and colour items would meet in a batch: say which policy to choose now.
            check_channels([r["samples_per_pixel"] for r in self.dataset.rows], self.channels)
        # One patient per item, by repeating each file's hash over its items
        # (no per-item bisection: a cine collection has millions of frames).
        per_file = [r["patient_hash"] for r in self.dataset.rows]
        groups = np.repeat(np.array(per_file, dtype=object), self.dataset.items_per_file()).tolist()
        train, val, test = patient_split(groups, self.val_fraction, self.test_fraction, self.seed)
        self.train_set = Subset(self.dataset, train.tolist())
        self.val_set = Subset(self.dataset, val.tolist())
        self.test_set = Subset(self.dataset, test.tolist())
        log.info(
            "split by patient: %d train, %d val, %d test items", len(train), len(val), len(test)
        )

    def _excluded(self, root: Path | None) -> list[Path]:
        """The existing folders of :attr:`exclude`, absolute (relative ones need a data folder)."""
        folders = [
            Path(f) if root is None else root / f
            for f in self.exclude
            if root is not None or os.path.isabs(f)
        ]
        found = [f.resolve() for f in folders if f.is_dir()]
        for f in found:
            log.info("leaving out the files under %s (exclude=)", f)
        return found

    @property
    def classes(self) -> list[str] | None:
        return None if self.dataset is None else self.dataset.classes

    # ----------------------------------------------------------------- loaders
    def _loader(self, subset: Subset | None, shuffle: bool, drop_last: bool = False) -> DataLoader:
        if subset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        if self.batching == "by_size":
            # Under DDP, Lightning re-creates this batch sampler with a DistributedSampler as
            # ``sampler``, from which it takes the rank and world size (and the epoch).
            batches = SizeBucketBatchSampler(
                item_shapes(subset),
                self.batch_size,
                shuffle=shuffle,
                seed=self.seed,
                drop_last=drop_last,
            )
            return DataLoader(
                subset,
                batch_sampler=batches,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers,
                collate_fn=self.collate,
            )
        return DataLoader(
            subset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    # ----------------------------------------------------------------- device side
    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        # Only tensors move; paths stay on the host. Stored integers move as they are.
        if isinstance(batch, dict):
            return {
                k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.gpu_transforms is not None:
            self.gpu_transforms.to(_batch_device(batch))
            batch = self.gpu_transforms(batch)
        trainer = getattr(self, "trainer", None)
        if self.train_gpu_transforms is not None and trainer is not None and trainer.training:
            self.train_gpu_transforms.to(_batch_device(batch))
            batch = self.train_gpu_transforms(batch)
        return batch

    @property
    def skipped(self) -> int:
        """Samples substituted because their file failed (on_error="skip"), all workers."""
        return 0 if self.dataset is None else self.dataset.skipped

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }


def _batch_device(batch: Any) -> torch.device:
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"].device
    return torch.device("cpu")


def _mirror(masks: MaskSource, root: Path | None) -> MaskSource:
    """A relative mask directory is taken relative to the data directory."""
    if isinstance(masks, str | os.PathLike) and root is not None and not os.path.isabs(masks):
        candidate = root / masks
        if candidate.is_dir():
            return candidate
    return masks
