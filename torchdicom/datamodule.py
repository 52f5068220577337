"""Lightning DataModule: index once, split by patient, transform on the device.

Raw stored integers cross the host→device link (2 bytes per pixel for CT,
not 4), and the float conversion, Hounsfield rescale, windowing and
augmentation run batched on the device in :meth:`on_after_batch_transfer`.

The header index is built in :meth:`DicomDataModule.prepare_data` (once per node: Lightning
calls it on local rank 0 only, the other ranks wait) and written to a parquet cache;
:meth:`DicomDataModule.setup`, on every rank, reads it back.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from torchdicom._privacy import resolve_salt
from torchdicom.cache import FrameCache
from torchdicom.data import Collate, DicomDataset, MaskSource
from torchdicom.data._base import decode_target
from torchdicom.data.prefetch import PrefetchDataLoader
from torchdicom.data.resize import ResizeMode, check_channels
from torchdicom.data.sampler import SizeBucketBatchSampler, item_shapes
from torchdicom.errors import RankMismatchError
from torchdicom.index import DicomIndex, scan
from torchdicom.keys import IMAGE, PENDING
from torchdicom.sources.remote import is_remote

__all__ = ["DicomDataModule", "default_index_cache", "patient_split"]

log = logging.getLogger(__name__)

#: Folders (relative to the data folder) left out of the images by default: masks live there.
MASK_FOLDERS = ("masks",)

#: The Lightning packages whose Trainer may drive a DicomDataModule, by import name.
LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning.pytorch")


def _lightning_data_module_bases() -> tuple[type, ...]:
    """``LightningDataModule`` of each installed Lightning package.

    ``pytorch_lightning`` and ``lightning`` (``lightning.pytorch``) ship the same code as two
    sets of classes, and each Trainer only takes a datamodule that is an instance of its own
    package's ``LightningDataModule`` (``isinstance`` in its data connector). Deriving from
    both makes one class that either Trainer accepts; their hooks have equal code, so
    Lightning's ``is_overridden`` sees the same overrides under both.
    """
    bases: list[type] = []
    for name in LIGHTNING_PACKAGES:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            continue
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a broken optional install must not break the other package
            warnings.warn(
                f"{name} is installed but failed to import ({type(exc).__name__}: {exc});"
                f" DicomDataModule works without it",
                stacklevel=3,
            )
            continue
        bases.append(module.LightningDataModule)
    if not bases:
        raise ImportError(
            "DicomDataModule needs Lightning: pip install pytorch-lightning (or lightning)"
        )
    return tuple(bases)


if TYPE_CHECKING:  # type checkers see one base; at run time it is every installed package's
    from pytorch_lightning import LightningDataModule as _LightningDataModule
else:
    _BASES = _lightning_data_module_bases()
    _LightningDataModule = (
        _BASES[0] if len(_BASES) == 1 else type("_LightningDataModule", _BASES, {})
    )


def default_index_cache(data: str | os.PathLike[str], remote: bool = False) -> Path:
    """Where :class:`DicomDataModule` keeps the header index of the folder ``data`` when no
    ``index_cache`` is given.

    ``$XDG_CACHE_HOME/torchdicom/index/<key>.parquet`` (``~/.cache`` when
    ``XDG_CACHE_HOME`` is unset). The key is the HMAC-SHA256 of the folder's resolved path
    keyed by the patient-hash salt (:func:`torchdicom._privacy.resolve_salt`), 16 hex
    digits: one index per folder and salt (the index holds patient hashes made with that
    salt), and a file name that shows neither the folder nor the salt. The index is never
    written into the data folder: collections are often read-only or shared, and the
    index (paths, pseudonymous patient keys) stays in the user's own cache, owner-only.

    With ``remote=True`` ``data`` is a URL or a server key (the DICOMweb base URL, study
    and series), used as it is.

    Example:
        >>> default_index_cache("/data/ct").suffix
        '.parquet'
    """
    key = hmac.new(
        resolve_salt().encode("utf-8", "surrogatepass"),
        # A URL / server key as it is (realpath would make it relative to the working folder).
        os.fsencode(os.fspath(data) if remote else os.path.realpath(data)),
        hashlib.sha256,
    ).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "torchdicom" / "index" / f"{key}.parquet"


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


class DicomDataModule(_LightningDataModule):
    """A LightningDataModule over a DICOM folder (works with ``LightningCLI``).

    Both Lightning packages: the class derives from the ``LightningDataModule`` of
    ``pytorch_lightning`` and, when it is installed, of ``lightning`` (``lightning.pytorch``),
    so a ``pytorch_lightning.Trainer`` and a ``lightning.pytorch.Trainer`` both accept it
    (each checks ``isinstance`` against its own package's class). The LightningModule must
    still come from the same package as the Trainer.

    What Lightning calls, and what each step does:

    - :meth:`prepare_data` (once per node, local rank 0, before any ``setup``): scans the
      headers of ``data`` into the parquet index ``index_cache`` (default
      :func:`default_index_cache`), with a progress bar; only new or changed files (size,
      mtime) are parsed.
    - :meth:`setup` (every rank): reads that index, builds the :class:`DicomDataset` and
      splits it by patient. Called without :meth:`prepare_data` (by hand), it scans first,
      with a progress bar. Ranks other than local rank 0 never write the index.
    - ``*_dataloader``: the splits; :meth:`predict_dataloader` yields every item.
    - :meth:`on_after_batch_transfer`: ``gpu_transforms`` (all stages), then
      ``train_gpu_transforms`` (training only), on the device.
    - :meth:`state_dict` / :meth:`load_state_dict`: the split, kept across a resume.

    The constructor's arguments are saved with ``save_hyperparameters`` (``dm.hparams``, in
    checkpoints, for ``load_from_checkpoint``) except values that are not plain data
    (callables, modules, tables: pass them again to ``load_from_checkpoint``), paths as
    strings (checkpoints then load with ``torch.load(weights_only=True)``). They are not
    sent to the logger: Lightning refuses to merge a model's ``size``, ``seed`` or
    ``channels`` hyperparameter with a different value of the DataModule's; log them with
    ``trainer.logger.log_hyperparams(dm.hparams)`` when wanted.

    Args:
        data: a directory of DICOM files, or a parquet index written by
            :meth:`DicomIndex.to_parquet` / ``torchdicom scan --out``, an fsspec URL
            (``s3://…``), or a :class:`~torchdicom.DicomWebSource`; a URL or server is
            scanned by :meth:`prepare_data` into the index cache, which :meth:`setup` reads.
            The loaders of a URL are :class:`~torchdicom.data.prefetch.PrefetchDataLoader`:
            each process fetches its next batch's byte ranges while the current one trains.
            None when streaming ``shards``.
        labels: a CSV path or a callable ``f(path)`` / ``f(path, frame)`` (see
            :class:`DicomDataset`). A DataFrame or a mapping works too from Python;
            the annotation lists only the types ``LightningCLI`` parses safely
            (jsonargparse reads a path given for a union with table types as the
            file's contents).
        masks: paired masks (see :class:`DicomDataset`).
        frames: ``"all"``, ``"first"`` or a frame index (see :class:`DicomDataset`).
        val_fraction, test_fraction: share of items per split; split by hashed
            patient ID, so no patient is in two splits; deterministic for ``seed``.
        seed: split seed (and the seed of ``batching="by_size"``).
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
        index_cache: the parquet file holding the header index of a ``data`` folder
            (default: :func:`default_index_cache`, in the user's cache directory, never in
            the data folder). Written by local rank 0 only, atomically.
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
        decode_device, decode_fallback: GPU decoding (see :class:`DicomDataset`): with
            ``"cuda"`` the workers read, but do not decode, the frames the GPU decodes, and
            :meth:`transfer_batch_to_device` decodes them in the main process straight into
            the batch tensor on the device (``DicomDataset.decode_batch``) before moving the
            rest; ``image`` arrives decoded, as without it. Checked here: a CUDA device
            without CUDA raises ValueError. Not with ``cpu_transform`` or ``size``.
        shards: instead of ``data``, the manifest (or folder, or brace pattern) of shards
            written by :func:`~torchdicom.export.to_webdataset`: training streams from them
            through a :class:`~torchdicom.data.shards.DicomShardDataset` (shuffled by
            ``seed``, split across DDP ranks and workers), whose epoch the train loader sets
            from ``trainer.current_epoch`` each time Lightning iterates it (persistent
            workers included): no ``set_epoch`` in user code. ``frames``, ``cpu_transform``,
            ``on_error``, ``color``, ``size`` / ``resize`` / ``channels``,
            ``storage_options`` and the loader settings apply; labels come from the shards;
            the splits are shard sets, not fractions (``val_fraction`` / ``test_fraction``
            are not used). Not with ``labels``, ``masks``, ``cache_dir``,
            ``decode_device`` or ``batching="by_size"``; no :meth:`predict_dataloader`.
        val_shards: the validation shards (read in order, never shuffled); without them
            there is no validation loop.

    Batches are dicts (see :class:`Collate`); ``image`` arrives on the device
    in the dataset's one stored dtype (:attr:`DicomDataset.dtype`: e.g. int32
    for CT series mixing int16 and uint16 storage) and leaves
    :meth:`on_after_batch_transfer` as whatever the GPU transforms make of it.
    """

    def __init__(
        self,
        data: str | os.PathLike[str] | None = None,
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
        storage_options: dict[str, Any] | None = None,
        decode_device: str | None = None,
        decode_fallback: Literal["cpu"] | None = "cpu",
        shards: str | os.PathLike[str] | None = None,
        val_shards: str | os.PathLike[str] | None = None,
    ):
        super().__init__()
        if (data is None) == (shards is None):
            raise ValueError(
                "give data (a DICOM folder, index or URL) or shards (a shard manifest), one of"
                f" them. Got: data={data!r}, shards={shards!r}"
            )
        if shards is not None:
            given = {
                "labels": labels is not None,
                "masks": masks is not None,
                "cache_dir": cache_dir is not None,
                "decode_device": decode_device is not None,
                "batching='by_size'": batching == "by_size",
            }
            if any(given.values()):
                raise ValueError(
                    f"{', '.join(k for k, v in given.items() if v)} cannot be used with shards"
                    " (labels come from the shards; no masks, frame cache, GPU decode or size"
                    " buckets when streaming shards)"
                )
        elif val_shards is not None:
            raise ValueError("val_shards goes with shards=, not data=")
        decode_target(decode_device, decode_fallback)  # a clear error now, not at setup()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1. Got: {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0. Got: {num_workers}")
        if batching not in ("default", "by_size"):
            raise ValueError(f"batching must be 'default' or 'by_size'. Got: {batching!r}")
        # The arguments that may hold objects rather than data stay out of hparams when they do.
        maybe_objects = {
            "data": data,  # a DicomWebSource holds a session / headers: never in checkpoints
            "labels": labels,
            "masks": masks,
            "cpu_transform": cpu_transform,
            "gpu_transforms": gpu_transforms,
            "train_gpu_transforms": train_gpu_transforms,
        }
        self.save_hyperparameters(
            # storage_options hold credentials: never in hparams, checkpoints or logs.
            ignore=[name for name, value in maybe_objects.items() if not _plain(value)]
            + ["storage_options"],
            logger=False,
        )
        for name, value in list(self.hparams.items()):
            # Paths as strings: checkpoints load with torch.load(weights_only=True).
            self.hparams[name] = _as_data(value)
        self.data = data
        self.shards, self.val_shards = shards, val_shards
        self.storage_options = storage_options
        self.decode_device, self.decode_fallback = decode_device, decode_fallback
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
        self.size, self.resize, self.channels = size, resize, channels
        self.batching = batching
        self.exclude = list(MASK_FOLDERS if exclude is None else exclude)
        self.dataset: DicomDataset | None = None
        self.train_set: Subset | None = None
        self.val_set: Subset | None = None
        self.test_set: Subset | None = None
        self._prepared = False  # prepare_data ran in this process
        self._split_digest: str | None = None
        self._restored: dict[str, Any] | None = None  # a state loaded before setup, to check

    # ----------------------------------------------------------------- index
    def _root(self) -> Path | None:
        """The data folder, or ``None`` when ``data`` is an index file, a URL or a server."""
        if self._remote():
            return None
        p = Path(self.data)
        return p if p.is_dir() else None

    def _index_file(self, root: Path) -> Path:
        return Path(self.index_cache) if self.index_cache is not None else default_index_cache(root)

    def _remote(self) -> bool:
        """``data`` is an fsspec URL or a source that indexes itself (a DicomWebSource)."""
        return is_remote(self.data) or callable(getattr(self.data, "index_rows", None))

    def _remote_index_file(self) -> Path:
        """The index cache of a URL / server: ``index_cache``, else one per URL and salt."""
        if self.index_cache is not None:
            return Path(self.index_cache)
        data = self.data
        if not isinstance(data, str):  # DicomWebSource: the server and what it selects
            data = f"{data.base_url}|{data.study}|{data.series}"
        return default_index_cache(data, remote=True)

    def _scan_remote(self, cache: Path) -> DicomIndex:
        """List and header-scan where the data is (see torchdicom.sources), into ``cache``."""
        if isinstance(self.data, str):
            return scan(self.data, cache=cache, progress=True, storage_options=self.storage_options)
        # QIDO-RS + WADO-RS metadata; rows of instances still listed come from the cache
        # (a SOP Instance UID names fixed content), so a later prepare_data asks only for
        # the listing and the metadata of new series.
        return scan(self.data, cache=cache, progress=True)

    def _index(self) -> DicomIndex:
        if self._remote():
            # What prepare_data (local rank 0) scanned into the cache; a scan where that
            # has not run on this node (or could not write the cache).
            if not isinstance(self.data, str):
                self.data.register()  # this process's session / headers for the server
            cache = self._remote_index_file()
            if self._local_rank() == 0 and not self._prepared:
                self.prepare_data()
            if cache.is_file():
                return DicomIndex.read_parquet(cache)
            if isinstance(self.data, str):
                return scan(self.data, progress=True, storage_options=self.storage_options)
            return scan(self.data, progress=True)
        p = Path(self.data)
        if p.is_file() and p.suffix == ".parquet":
            return DicomIndex.read_parquet(p)
        return scan(p, progress=False)

    def _local_rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and hasattr(trainer, "local_rank"):
            return int(trainer.local_rank)
        return int(os.environ.get("LOCAL_RANK", "0"))

    def prepare_data(self) -> None:
        """Scan the headers of the ``data`` folder into the index cache, with a progress bar.

        Lightning calls this once per node (on local rank 0; the other ranks wait for it)
        before any :meth:`setup`. Files whose (size, mtime) match the cache are not parsed
        again; the cache is rewritten atomically when anything changed. A parquet index
        given as ``data`` needs nothing, nor does a DataModule already set up (every
        ``fit`` / ``validate`` / ``test`` / ``predict`` calls this; the index is read once).
        Shards need nothing.
        """
        if self.shards is not None:
            self._prepared = True
            return
        root = self._root()
        if self._remote() and self.dataset is None:
            cache = self._remote_index_file()
            try:
                cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                pass  # the scan warns that it cannot write the cache
            self._scan_remote(cache)
        if root is not None and self.dataset is None:
            cache = self._index_file(root)
            try:
                cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                pass  # scan warns that it cannot write the cache, and indexes without it
            scan(root, cache=cache, progress=True)
        self._prepared = True

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the index, build the dataset and split it by patient (once for all stages).

        On local rank 0 this reads the cache :meth:`prepare_data` wrote; when that has not
        run in this process (``setup`` called by hand) it runs first, so a long scan shows
        its progress. Files changed since the scan are parsed and the cache updated. Other
        ranks read a private copy of the cache: they never write it, and a file that
        changed after local rank 0's scan is parsed on that rank only.

        In a ``torch.distributed`` run (initialised, world size > 1) every rank must call
        it (Lightning does): the ranks compare what they read (the shards' fingerprints and
        items per rank, or the split's digest and counts) and all raise
        :class:`~torchdicom.errors.RankMismatchError` when they differ, instead of hanging
        later at a collective with unequal epochs.
        """
        if self.dataset is not None:
            return
        if self.shards is not None:
            if self.train_set is None:
                train, val = self._shard_sets()
                self._check_ranks_agree(self.shards, "shard manifests", _shard_summary(train))
                if val is not None:
                    self._check_ranks_agree(self.val_shards, "shard manifests", _shard_summary(val))
                self.train_set, self.val_set = train, val
            return
        root = self._root()
        if root is None:
            self.dataset = self._dataset(self._index(), None, None)
        elif self._local_rank() == 0:
            if not self._prepared:
                self.prepare_data()
            self.dataset = self._dataset(root, root, self._index_file(root))
        else:
            shared = self._index_file(root)
            with tempfile.TemporaryDirectory(prefix="torchdicom-index-") as private_dir:
                private = Path(private_dir) / "index.parquet"
                try:
                    shutil.copyfile(shared, private)
                except OSError:
                    log.warning(
                        "local rank %d: no index at %s (prepare_data has not run on local"
                        " rank 0): parsing every header on this rank",
                        self._local_rank(),
                        shared,
                    )
                self.dataset = self._dataset(root, root, private)
        if self.batching == "default" and self.batch_size > 1:
            # Grey and colour items would meet in a batch: say which policy to choose now.
            check_channels([r["samples_per_pixel"] for r in self.dataset.rows], self.channels)
        self._split()
        # Each node scans its own index: a node whose mount lags (files added, removed or
        # still being copied) gets another split, so its ranks would train on other items,
        # let val items into training elsewhere, and (with another length) hang DDP at a
        # collective. The split digest (files, relative to the root, and val/test
        # positions) and the counts are cheap to compare once here.
        assert self.train_set is not None and self.val_set is not None
        assert self.test_set is not None
        self._check_ranks_agree(
            self.data,
            "indexes",
            f"split {self._split_digest}, train/val/test items"
            f" {len(self.train_set)}/{len(self.val_set)}/{len(self.test_set)}",
        )
        if self._restored is not None:
            state, self._restored = self._restored, None
            self._check_restored(state)

    def _check_ranks_agree(self, source: Any, what: str, summary: str) -> None:
        """Raise :class:`~torchdicom.errors.RankMismatchError` on every rank unless every
        rank of an initialised ``torch.distributed`` run computed the same ``summary``.

        Ranks that read different data would yield different epoch lengths and hang at
        a collective (or silently train on other items): comparing once in ``setup``,
        before any step, makes that an immediate error on all of them instead.
        """
        world = _world_size()
        if world == 1:
            return
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, summary)
        error = _rank_mismatch(source, what, gathered)
        if error is not None:
            raise error

    def _dataset(self, source: Any, root: Path | None, index_cache: Path | None) -> DicomDataset:
        return DicomDataset(
            source,
            index_cache=index_cache,
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
            storage_options=self.storage_options,
            decode_device=self.decode_device,
            decode_fallback=self.decode_fallback,
        )

    def _split(self) -> None:
        """Split :attr:`dataset` by patient with the current settings."""
        assert self.dataset is not None
        # One patient per item, by repeating each file's hash over its items
        # (no per-item bisection: a cine collection has millions of frames).
        per_file = [r["patient_hash"] for r in self.dataset.rows]
        groups = np.repeat(np.array(per_file, dtype=object), self.dataset.items_per_file()).tolist()
        train, val, test = patient_split(groups, self.val_fraction, self.test_fraction, self.seed)
        self.train_set = Subset(self.dataset, train.tolist())
        self.val_set = Subset(self.dataset, val.tolist())
        self.test_set = Subset(self.dataset, test.tolist())
        root = self.dataset.root
        paths = [
            r["path"] if root is None else os.path.relpath(r["path"], root)
            for r in self.dataset.rows
        ]
        self._split_digest = _split_digest(paths, val, test)
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
        if self.shards is not None:
            return None if self.train_set is None else self.train_set.classes
        return None if self.dataset is None else self.dataset.classes

    # ----------------------------------------------------------------- shards
    def _shard_sets(self) -> tuple[Any, Any]:
        """The train (shuffled) and validation (in order, or None) shard datasets."""
        from torchdicom.data.shards import DicomShardDataset

        options: dict[str, Any] = {
            "frames": self.frames,
            "transform": self.cpu_transform,
            "seed": self.seed,
            "on_error": self.on_error,
            "color": self.color,
            "storage_options": self.storage_options,
            "batch_size": self.batch_size,
            "size": self.size,
            "resize": self.resize,
            "channels": self.channels,
        }
        train = DicomShardDataset(self.shards, shuffle=True, **options)  # type: ignore[arg-type]
        val = None
        if self.val_shards is not None:
            val = DicomShardDataset(self.val_shards, shuffle=False, **options)
        if self.batch_size > 1:
            # As for data=: grey and colour items would meet in a batch; say so now.
            for shards in (train, val):
                if shards is not None:
                    check_channels(shards.samples_per_pixel, self.channels)
        return train, val

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else int(trainer.current_epoch)

    def _shard_loader(self, dataset: Any, train: bool, drop_last: bool) -> Any:
        """A loader over a shard dataset; the train one sets its epoch when iterated.

        Lightning creates the train loader once (unless ``reload_dataloaders_every_n_epochs``)
        and calls ``iter`` on it every epoch, after the epoch counter moved on: that is
        where :class:`~torchdicom.data.shards.EpochLoader` sets the dataset's shared epoch,
        before workers start (or persistent ones are told to begin the next epoch).
        """
        from torchdicom.data.shards import EpochLoader

        if dataset is None:
            if self.train_set is None:
                raise RuntimeError("call setup() before asking for a DataLoader")
            return []  # no validation / test shards: Lightning skips the loop
        options: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "collate_fn": self.collate,
            "drop_last": drop_last,
        }
        if train:
            return EpochLoader(dataset, epoch=self._current_epoch, **options)
        return DataLoader(dataset, **options)

    # ----------------------------------------------------------------- loaders
    def _loader(self, subset: Subset | None, shuffle: bool, drop_last: bool = False) -> DataLoader:
        if self.shards is not None:
            return self._shard_loader(subset, shuffle, drop_last)
        if subset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        # Remote objects: the next batch's byte ranges are fetched while the current one
        # trains (a batch otherwise waits its round trip, then its transfer).
        loader = PrefetchDataLoader if is_remote(self.data) else DataLoader
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
            return loader(
                subset,
                batch_sampler=batches,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers,
                collate_fn=self.collate,
            )
        return loader(
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
        """Every item of the collection, whatever its split, in index order, never shuffled.

        Index order is by file path, then frame; ``batch["index"]`` is the item's position
        in :attr:`dataset`, ``batch["path"]`` / ``batch["frame"]`` name it. With
        ``batching="by_size"`` batches are grouped by size (sizes in order of first
        appearance, index order within each). Batches carry the keys of the other
        splits (``label`` too when ``labels`` are given); only ``gpu_transforms`` run on
        them. Under DDP, Lightning gives each rank a share (its sampler pads the shares to
        equal length by repeating items).
        """
        if self.shards is not None:
            raise RuntimeError(
                "predict_dataloader reads data= (a DICOM folder or index); for shards iterate"
                " a DicomShardDataset(shuffle=False) over them"
            )
        if self.dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        return self._loader(Subset(self.dataset, range(len(self.dataset))), shuffle=False)

    # ----------------------------------------------------------------- device side
    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        # Only tensors move; paths stay on the host. Stored integers move as they are.
        if isinstance(batch, dict) and PENDING in batch and self.dataset is not None:
            # decode_device: frames left undecoded by the workers are decoded here, in the
            # main process, straight into the batch tensor on the device.
            batch = self.dataset.decode_batch(batch)
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
        if self.shards is not None:
            return sum(d.skipped for d in (self.train_set, self.val_set) if d is not None)
        return 0 if self.dataset is None else self.dataset.skipped

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to train on the same split (Lightning checkpoints it).

        Returns:
            ``seed``, ``val_fraction``, ``test_fraction``: the split settings, which
            :meth:`load_state_dict` restores. After :meth:`setup` also ``split`` (``train``,
            ``val``, ``test``: item counts; ``digest``: a hash of the files, relative to
            the collection root, and of the val/test item positions) and ``classes`` (the
            label names, in code order), which :meth:`load_state_dict` checks. The epoch
            of the ``by_size`` shuffle is Lightning's: it restores the epoch and calls
            ``set_epoch``.
        """
        state: dict[str, Any] = {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }
        if self.dataset is not None:
            assert self.train_set is not None and self.val_set is not None
            assert self.test_set is not None
            state["split"] = {
                "train": len(self.train_set),
                "val": len(self.val_set),
                "test": len(self.test_set),
                "digest": self._split_digest,
            }
            state["classes"] = self.classes
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the checkpoint's split settings replace the constructor's.

        Lightning calls this after :meth:`setup` when resuming (``fit(ckpt_path=...)``); the
        split is then redone with the restored settings, before any DataLoader is made.
        Called before :meth:`setup`, the check below happens at the end of it.

        Raises:
            ValueError: the classes differ from the checkpoint's (label codes would name
                other classes).

        Warns:
            UserWarning: the split differs from the checkpoint's (files added, removed or
                changed since): the resumed run trains on other items.
        """
        changed = {
            name: state_dict[name]
            for name in ("seed", "val_fraction", "test_fraction")
            if name in state_dict and state_dict[name] != getattr(self, name)
        }
        for name, value in changed.items():
            log.info("%s=%r from the checkpoint (was %r)", name, value, getattr(self, name))
            setattr(self, name, value)
        if self.dataset is None:
            self._restored = state_dict
            return
        if changed:
            self._split()
        self._check_restored(state_dict)

    def _check_restored(self, state: dict[str, Any]) -> None:
        if "classes" in state and state["classes"] != self.classes:
            raise ValueError(
                f"the classes differ from the checkpoint's: label codes would name other"
                f" classes. Saved: {state['classes']}. Got: {self.classes}"
            )
        split = state.get("split")
        if split is not None and split.get("digest") != self._split_digest:
            now = self.state_dict()["split"]
            warnings.warn(
                "the split differs from the checkpoint's (files added, removed or changed"
                f" since): train/val/test items {split['train']}/{split['val']}/{split['test']}"
                f" then, {now['train']}/{now['val']}/{now['test']} now",
                stacklevel=3,
            )


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain data (saved as a hyperparameter), not an object."""
    if value is None or isinstance(value, bool | int | float | str | os.PathLike):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


def _as_data(value: Any) -> Any:
    """A plain hyperparameter with its paths as strings."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return type(value)(_as_data(v) for v in value)
    return value


def _split_digest(paths: list[str], val: np.ndarray, test: np.ndarray) -> str:
    """A hash naming a split: the files in order and the val / test item positions."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p) + b"\0")
    for name, part in ((b"val", val), (b"test", test)):
        h.update(name + np.asarray(part, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def _world_size() -> int:
    """Ranks in the default group of an initialised ``torch.distributed`` run, else 1."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _shard_summary(dataset: Any) -> str:
    """What decides a shard dataset's split across ranks, in words."""
    return f"fingerprint {dataset.fingerprint:08x}, {len(dataset)} items per rank"


def _rank_mismatch(source: Any, what: str, gathered: list[str]) -> RankMismatchError | None:
    """The error naming ``source`` and the ranks that disagree, or None when all agree.

    Args:
        source: the manifest, folder or index the ranks were given (named in the message).
        what: what the ranks read, plural (``"shard manifests"``, ``"indexes"``).
        gathered: one summary per rank, in rank order (what ``all_gather_object`` gives):
            equal summaries mean equal data.

    Returns:
        A :class:`~torchdicom.errors.RankMismatchError` listing the ranks grouped by their
        summary, the group of rank 0 first; None when every summary equals rank 0's.
    """
    if all(s == gathered[0] for s in gathered):
        return None
    groups: dict[str, list[int]] = {}
    for rank, summary in enumerate(gathered):
        groups.setdefault(summary, []).append(rank)
    parts = []
    for summary, ranks in groups.items():
        who = "rank" if len(ranks) == 1 else "ranks"
        parts.append(f"{who} {', '.join(map(str, ranks))}: {summary}")
    others = sorted(r for r, s in enumerate(gathered) if s != gathered[0])
    return RankMismatchError(
        _display_source(source),
        f"the ranks read different {what} (a node with a stale copy, or data rewritten"
        f" while the job started); rank{'s' if len(others) > 1 else ''}"
        f" {', '.join(map(str, others))} disagree{'' if len(others) > 1 else 's'} with rank 0,"
        f" and unequal epochs would hang DDP at a collective. {'; '.join(parts)}",
    )


def _display_source(source: Any) -> str:
    """A path or URL as given (TorchDicomError redacts a URL's credentials); for a source
    object (DICOMweb) only its class: its repr may carry a server's headers."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return f"data={type(source).__name__}"


def _batch_device(batch: Any) -> torch.device:
    if isinstance(batch, dict) and isinstance(batch.get(IMAGE), torch.Tensor):
        return batch[IMAGE].device
    return torch.device("cpu")


def _mirror(masks: MaskSource, root: Path | None) -> MaskSource:
    """A relative mask directory is taken relative to the data directory."""
    if isinstance(masks, str | os.PathLike) and root is not None and not os.path.isabs(masks):
        candidate = root / masks
        if candidate.is_dir():
            return candidate
    return masks
