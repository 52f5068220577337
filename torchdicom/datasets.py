"""PyTorch datasets over DICOM collections: frames, cine clips, series volumes.

Every dataset works from a :class:`~torchdicom.DicomIndex` (built by
:func:`~torchdicom.scan` when given a directory or a file list), so an item
costs one ``read_frames`` call on an index row: no header parsing, and for
multi-frame files only the frames the item needs are read.

Items are dicts of *stored* values plus the per-sample metadata the batched
transforms need; converting to Hounsfield units, windowing and augmenting
happen later, batched, ideally on the GPU (:mod:`torchdicom.transforms`).
"""

from __future__ import annotations

import inspect
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from torchdicom.cache import FrameCache
from torchdicom.errors import CorruptDicomError, TorchDicomError
from torchdicom.index import DicomIndex, scan
from torchdicom.io.frames import _is_fast_native, _np_dtype, read_frames_numpy, row_for_path
from torchdicom.transforms._native import run_rows
from torchdicom.transforms._utils import empty_large

__all__ = [
    "Collate",
    "DicomClipDataset",
    "DicomDataset",
    "DicomVolumeDataset",
    "collate",
]

log = logging.getLogger(__name__)

LabelSource = str | os.PathLike[str] | pd.DataFrame | Mapping[str, Any] | Callable[..., Any] | None
MaskSource = str | os.PathLike[str] | Mapping[str, Any] | Callable[[str], Any] | None

_FILE_COLUMNS = ("file", "fname", "filename", "path", "filepath", "image", "dicom")
_YBR = ("YBR_FULL", "YBR_FULL_422")


# --------------------------------------------------------------------------- shared plumbing
def _as_index(
    source: Any, index_cache: str | os.PathLike[str] | None = None
) -> tuple[DicomIndex, Path | None]:
    """A DicomIndex and the collection root (for relative label/mask paths)."""
    if isinstance(source, DicomIndex):
        index = source
        root = None
    elif isinstance(source, str | os.PathLike):
        p = Path(source)
        index = scan(p, cache=index_cache, progress=False)
        root = p.resolve() if p.is_dir() else p.resolve().parent
    elif isinstance(source, Iterable):
        files = [os.fspath(f) for f in source]
        index = scan(files, cache=index_cache, progress=False)
        root = None
    else:
        raise TypeError(
            f"source must be a directory, a list of files or a DicomIndex. Got: {type(source).__name__}"
        )
    if root is None and len(index.df):
        root = Path(os.path.commonpath([os.path.dirname(p) for p in index.df["path"]]))
    if len(index.errors):
        log.warning(
            "%d file(s) could not be indexed and are left out, e.g. %s",
            len(index.errors),
            index.errors["reason"].iloc[0],
        )
    return index, root


def _suffixes(path: str, depth: int = 6) -> list[str]:
    parts = Path(path).parts
    return ["/".join(parts[-k:]) for k in range(1, min(depth, len(parts)) + 1)]


def _read_label_table(labels: str | os.PathLike[str] | pd.DataFrame, label_column: str | None):
    base = None
    if isinstance(labels, str | os.PathLike):
        base = Path(labels).resolve().parent
        table = pd.read_csv(labels)
    else:
        table = labels
    cols = list(table.columns)
    file_col = next((c for c in cols if str(c).lower() in _FILE_COLUMNS), cols[0])
    if label_column is None:
        others = [c for c in cols if c != file_col]
        if not others:
            raise ValueError(
                f"label table has no label column besides {file_col!r}. Got columns: {cols}"
            )
        label_column = others[0]
    if label_column not in cols:
        raise ValueError(
            f"label column {label_column!r} not in the label table. Got columns: {cols}"
        )
    mapping: dict[str, Any] = {}
    for f, v in zip(table[file_col].astype(str), table[label_column]):
        key = f.replace("\\", "/")
        if base is not None and not os.path.isabs(key):
            mapping[os.path.normpath(base / key)] = v
        mapping[os.path.normpath(key) if os.path.isabs(key) else key.lstrip("./")] = v
    return mapping, label_column


class _Labeler:
    """Resolves a label per (path, frame) from a CSV, DataFrame, mapping or callable."""

    def __init__(self, labels: LabelSource, label_column: str | None):
        self.fn: Callable[..., Any] | None = None
        self.mapping: dict[str, Any] = {}
        self.column = label_column
        if labels is None:
            return
        if callable(labels) and not isinstance(labels, pd.DataFrame):
            self.fn = labels
            try:
                self.nargs = len(inspect.signature(labels).parameters)
            except (TypeError, ValueError):
                self.nargs = 1
            return
        if isinstance(labels, Mapping):
            self.mapping = {str(k).replace("\\", "/"): v for k, v in labels.items()}
        else:
            self.mapping, self.column = _read_label_table(labels, label_column)

    def __bool__(self) -> bool:
        return self.fn is not None or bool(self.mapping)

    def for_file(self, path: str) -> Any:
        if self.fn is not None:
            return None  # resolved per item (may depend on the frame)
        hit = self.mapping.get(os.path.normpath(path))
        if hit is not None:
            return hit
        for suffix in _suffixes(path):
            hit = self.mapping.get(suffix)
            if hit is not None:
                return hit
        raise KeyError(path)

    def call(self, path: str, frame: int) -> Any:
        assert self.fn is not None
        return self.fn(path, frame) if self.nargs >= 2 else self.fn(path)


def _encode_labels(values: list[Any]) -> tuple[list[Any], list[str] | None]:
    """Class names → integer codes (sorted names); numbers pass through."""
    if all(isinstance(v, int | float | np.integer | np.floating | bool) for v in values):
        return values, None
    classes = sorted({str(v) for v in values})
    code = {c: i for i, c in enumerate(classes)}
    return [code[str(v)] for v in values], classes


class _MaskResolver:
    """Finds the mask file paired with an image file."""

    def __init__(self, masks: MaskSource, root: Path | None):
        self.masks = masks
        self.root = root
        if isinstance(masks, str | os.PathLike) and not Path(masks).is_dir():
            raise ValueError(
                f"masks must be a directory mirroring the images, a mapping or a callable. Got: {masks}"
            )

    def __bool__(self) -> bool:
        return self.masks is not None

    def exclude(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop the mask files themselves when the mask folder lies inside the image folder."""
        if not isinstance(self.masks, str | os.PathLike):
            return rows
        prefix = os.path.join(os.path.realpath(self.masks), "")
        return [r for r in rows if not os.path.realpath(r["path"]).startswith(prefix)]

    def __call__(self, path: str) -> str:
        m = self.masks
        if callable(m):
            return os.fspath(m(path))
        if isinstance(m, Mapping):
            return os.fspath(m[path])
        assert isinstance(m, str | os.PathLike)
        if self.root is None:
            raise ValueError(
                "a mask directory needs the image root; pass masks as a callable instead"
            )
        rel = os.path.relpath(path, self.root)
        mask = os.path.join(os.fspath(m), rel)
        if not os.path.exists(mask):
            raise CorruptDicomError(path, f"no paired mask file: expected {mask}")
        return mask


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    photometric = str(row["photometric"])
    return {
        "slope": float(row["rescale_slope"]),
        "intercept": float(row["rescale_intercept"]),
        "window_center": float(row["window_center"]),
        "window_width": float(row["window_width"]),
        "monochrome1": photometric == "MONOCHROME1",
        "bits_stored": int(row["bits_stored"]),
    }


class _SkipCounter:
    """Counts substituted samples across DataLoader worker processes.

    A shared-memory integer: worker processes inherit it when they start
    (fork or spawn), so the main process sees every worker's skips.
    """

    def __init__(self) -> None:
        self._value = multiprocessing.get_context().Value("q", 0)
        self._seen: set[str] = set()  # per process: log each bad file once

    def add(self, path: str, exc: BaseException) -> None:
        with self._value.get_lock():
            self._value.value += 1
        if path not in self._seen:
            self._seen.add(path)
            log.warning("skipping unreadable sample (substituting another): %s", exc)

    @property
    def value(self) -> int:
        return int(self._value.value)

    def reset(self) -> None:
        with self._value.get_lock():
            self._value.value = 0


# A batch-buffer slot of one item: (its (C, H, W) tensor view, its (1, C, H, W) numpy view to
# read into, or None when the pixels are there already).
_Slot = tuple[torch.Tensor, np.ndarray | None]


def _item_starts(counts: list[int]) -> np.ndarray:
    """Global index of each file's first item (plus the total at the end), from items per file."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def _locate(starts: np.ndarray, i: int) -> tuple[int, int]:
    """(file position, item within that file) of global item ``i``, by bisection."""
    f = int(np.searchsorted(starts, i, side="right")) - 1
    return f, i - int(starts[f])


class _Base(Dataset):
    def __init__(
        self,
        source: Any,
        *,
        on_error: Literal["raise", "skip"] = "raise",
        color: Literal["rgb", "ybr"] = "rgb",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'. Got: {on_error!r}")
        if color not in ("rgb", "ybr"):
            raise ValueError(f"color must be 'rgb' or 'ybr'. Got: {color!r}")
        self.index, self.root = _as_index(source, index_cache)
        self.rows: list[dict[str, Any]] = self.index.rows()
        self.on_error = on_error
        self.color = color
        self.cache = FrameCache(cache) if isinstance(cache, str | os.PathLike) else cache
        self._skips = _SkipCounter()

    @property
    def skipped(self) -> int:
        """Samples substituted because their file failed (all workers, since the last reset)."""
        return self._skips.value

    def reset_skipped(self) -> None:
        self._skips.reset()

    def _keeps_ybr(self, row: Mapping[str, Any]) -> bool:
        """Whether this file's frames are handed over in YCbCr (color="ybr")."""
        return (
            self.color == "ybr"
            and int(row["samples_per_pixel"]) == 3
            and str(row["photometric"]) in _YBR
        )

    def _read(self, row: dict[str, Any], frames: Any) -> np.ndarray:
        as_rgb = not self._keeps_ybr(row)
        if self.cache is not None and bool(row["encapsulated"]):
            return self.cache.read(row, frames, as_rgb=as_rgb)
        return read_frames_numpy(row, frames, as_rgb=as_rgb)

    def _get(
        self, i: int, into: _Slot | None = None
    ) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._fetch(i)

    def _fetch(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        i %= n
        if self.on_error == "raise":
            return self._get(i, into)
        # Substitute the next readable sample so batch counts stay equal on
        # every DDP rank (no rank waits at a collective for a missing batch).
        last: TorchDicomError | None = None
        for attempt in range(min(n, 64)):
            j = (i + attempt) % n
            try:
                # A substitute is read on its own: it may not fit the batch slot.
                item = self._get(j, into if attempt == 0 else None)
            except TorchDicomError as exc:
                self._skips.add(exc.path or "?", exc)
                last = exc
                continue
            item["index"] = i
            item["substituted"] = attempt > 0
            return item
        assert last is not None
        raise last


# --------------------------------------------------------------------------- frame dataset
class DicomDataset(_Base):
    """One item per frame (or per file) of a DICOM collection.

    Args:
        source: a directory, a list of files, or a :class:`~torchdicom.DicomIndex`.
        frames: ``"all"`` — one item per frame of every file (multi-frame files
            contribute each frame); ``"first"`` — one item per file, frame 0;
            an int ``k`` — one item per file, frame ``k`` (files with fewer
            frames are left out, with a warning).
        labels: a CSV path or DataFrame (a file column — ``file``/``fname``/
            ``path``… or the first column — with paths relative to the CSV's
            folder or to the collection, and the ``label_column``), a mapping
            path → label, or a callable ``f(path)`` / ``f(path, frame)``.
            String classes are encoded as integers in sorted order
            (:attr:`classes`).
        masks: paired mask files: a directory mirroring the image tree, a
            mapping, or a callable image path → mask path. Masks are DICOM;
            the same frame is read.
        transform: CPU-side callable on the item dict (e.g.
            :class:`~torchdicom.transforms.AlbumentationsAdapter`).
        on_error: ``"raise"`` (default) or ``"skip"``: substitute the next
            readable sample, log the file once, count it in :attr:`skipped`.
        color: ``"rgb"`` (equal to pydicom) or ``"ybr"``: YBR_FULL(_422)
            frames are handed over unconverted for a batched device-side
            :class:`~torchdicom.transforms.YbrToRgb`.
        cache: a :class:`~torchdicom.cache.FrameCache` or directory for
            decoded compressed frames (shared by workers and ranks).
        index_cache: parquet file for the header index when ``source`` is a
            directory or a file list.
        label_column: the label column of a CSV/DataFrame (default: the first
            column that is not the file column).

    Item (dict):
        ``image`` (C, H, W) stored dtype; ``slope``, ``intercept``,
        ``window_center``, ``window_width`` float (NaN where absent);
        ``monochrome1`` bool; ``bits_stored`` int; ``ybr`` bool (frames left
        in YCbCr); ``label`` (when labels given); ``mask`` (1, H, W) uint8
        (when masks given); ``path`` str; ``frame`` int; ``index`` int.
    """

    def __init__(
        self,
        source: Any,
        frames: Literal["all", "first"] | int = "all",
        labels: LabelSource = None,
        masks: MaskSource = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        *,
        color: Literal["rgb", "ybr"] = "rgb",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
        label_column: str | None = None,
    ):
        super().__init__(
            source, on_error=on_error, color=color, cache=cache, index_cache=index_cache
        )
        if not (
            frames in ("all", "first") or (isinstance(frames, int) and not isinstance(frames, bool))
        ):
            raise ValueError(f"frames must be 'all', 'first' or an int. Got: {frames!r}")
        self.frames = frames
        self.transform = transform
        self._masks = _MaskResolver(masks, self.root)
        self.rows = self._masks.exclude(self.rows)
        if isinstance(frames, int) and frames != 0:
            keep = [r for r in self.rows if int(r["frames"]) > frames]
            if len(keep) < len(self.rows):
                log.warning(
                    "%d file(s) have fewer than %d frames and are left out",
                    len(self.rows) - len(keep),
                    frames + 1,
                )
            self.rows = keep
        self._starts = _item_starts([int(r["frames"]) if frames == "all" else 1 for r in self.rows])

        self._labeler = _Labeler(labels, label_column)
        self.classes: list[str] | None = None
        self._labels: list[Any] | None = None
        if self._labeler and self._labeler.fn is None:
            values, missing = [], []
            for r in self.rows:
                try:
                    values.append(self._labeler.for_file(r["path"]))
                except KeyError:
                    missing.append(r["path"])
            if missing:
                raise ValueError(
                    f"{len(missing)} file(s) have no label, e.g. {missing[0]}; label keys look like"
                    f" {next(iter(self._labeler.mapping))!r}"
                )
            self._labels, self.classes = _encode_labels(values)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def items_per_file(self) -> np.ndarray:
        """Number of items each file of :attr:`rows` contributes, (len(rows),) int64."""
        return np.diff(self._starts)

    def label_codes(self) -> list[Any]:
        """The (encoded) label of every file, in :attr:`rows` order (empty without table labels)."""
        return list(self._labels or [])

    def locate(self, i: int) -> tuple[int, int]:
        """(file position in :attr:`rows`, frame) of item ``i``, without reading anything."""
        if self.frames == "all":
            return _locate(self._starts, i)
        # One item per file: item i is file i (no search; this runs once per item).
        if not 0 <= i < len(self.rows):
            raise IndexError(f"index {i} out of range for a dataset of {len(self.rows)} items")
        return int(i), 0 if self.frames == "first" else int(self.frames)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items of one DataLoader batch (the DataLoader calls this instead of ``[i]``).

        When every item comes from an uncompressed file with the same frame shape and
        dtype, the images are read straight into one (B, C, H, W) batch buffer and each
        item's ``image`` is a view of its slot; :class:`Collate` hands that buffer on as
        the batch without stacking a copy. In the main process the buffer is recycled
        memory of an earlier, freed batch (first-touch page faults of fresh buffers cost
        more than reading the files); in a worker it is shared memory, which crosses to
        the main process uncopied. Otherwise items are read one by one, as by ``[i]``.
        """
        batch = self._batch_slots(indices)
        if batch is None:
            return [self._fetch(i) for i in indices]
        into, located = batch
        views, slots = into.unbind(0), into.numpy()  # all item views in two calls
        filled = self._prefill(located, slots)
        return [
            self._fetch(i, (views[k], None if filled[k] else slots[k : k + 1]))
            for k, i in enumerate(indices)
        ]

    def _prefill(self, located: list[tuple[int, int]], slots: np.ndarray) -> list[bool]:
        """Read the batch's pixels into ``slots`` on the transforms' thread pool.

        In the main process the reads (open, pread, close: the GIL is released while the
        kernel copies the bytes) overlap across threads. A file that fails is left for the
        item path, which reads it again and raises or substitutes as ``on_error`` says.
        Workers (and single-thread runs) read inside the item path instead.
        """
        done = [False] * len(located)
        if get_worker_info() is not None or torch.get_num_threads() < 2:
            return done

        def read(k0: int, k1: int) -> None:
            for k in range(k0, k1):
                f, frame = located[k]
                try:
                    read_frames_numpy(self.rows[f], frame, out=slots[k : k + 1])
                except TorchDicomError:
                    continue
                done[k] = True

        run_rows(len(located), read, slots[0].size)
        return done

    def _batch_slots(
        self, indices: Sequence[int]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
        """A (B, C, H, W) batch buffer for the items and their (file, frame), or None when the
        items differ in layout (or are not all uncompressed)."""
        n = len(self)
        if len(indices) < 2 or not all(
            isinstance(i, int | np.integer) and -n <= i < n for i in indices
        ):
            return None
        located = [self.locate(int(i) % n) for i in indices]
        layout = None
        for f, _frame in located:
            row = self.rows[f]
            if not _is_fast_native(row):
                return None
            this = (
                int(row["samples_per_pixel"]),
                int(row["rows"]),
                int(row["columns"]),
                _np_dtype(row),
            )
            if layout is not None and this != layout:
                return None
            layout = this
        assert layout is not None
        spp, h, w, dtype = layout
        like = torch.from_numpy(np.empty(0, dtype))
        return _batch_buffer(like, len(indices), (spp, h, w)), located

    def _get(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        f, frame = self.locate(i)
        row = self.rows[f]
        if into is not None:
            # A slot _batch_slots made for this very file's layout (read_frames_numpy checks
            # its shape and dtype again); the image is a view of the batch buffer. No numpy
            # slot: _prefill has read it already.
            image, slot = into
            if slot is not None:
                read_frames_numpy(row, frame, out=slot)
        else:
            image = torch.from_numpy(self._read(row, frame)[0])
        item: dict[str, Any] = {"image": image, **_meta(row)}
        item["ybr"] = self._keeps_ybr(row)
        if self._labels is not None:
            item["label"] = self._labels[f]
        elif self._labeler.fn is not None:
            item["label"] = self._labeler.call(row["path"], frame)
        if self._masks:
            item["mask"] = _read_mask(
                self._masks(row["path"]), frame, image.shape[-2:], row["path"]
            )
        item.update(path=row["path"], frame=frame, index=i)
        if self.transform is not None:
            item = self.transform(item)
        return item


def _read_mask(
    mask_path: str, frame: int | Sequence[int], shape: tuple[int, ...], image_path: str
) -> torch.Tensor:
    m = read_frames_numpy(row_for_path(mask_path), frame)  # (F, 1, H, W)
    if tuple(m.shape[-2:]) != tuple(shape):
        raise CorruptDicomError(
            mask_path,
            f"mask is {m.shape[-2]}x{m.shape[-1]} but its image {image_path} is {shape[0]}x{shape[1]}",
        )
    m = torch.from_numpy(m[:, :1].astype(np.uint8, copy=False))
    return m[0] if isinstance(frame, int) else m


# --------------------------------------------------------------------------- clips
class DicomClipDataset(_Base):
    """Cine clips from multi-frame files (ultrasound, fluoroscopy, cardiac MR).

    Items are windows of ``clip_len`` consecutive frames starting every
    ``stride`` frames; only the clip's frames are read (native files: one
    contiguous read; compressed: only those frames decoded).

    Args:
        source: a directory, a list of files, or a :class:`~torchdicom.DicomIndex`.
        clip_len: frames per clip (T).
        stride: distance between clip starts (default ``clip_len``: no overlap).
        masks, on_error, color, cache, index_cache: as for :class:`DicomDataset`.
        transform: CPU-side callable on the item dict.

    Item (dict):
        ``image`` (T, C, H, W) stored dtype; ``mask`` (T, 1, H, W) when masks
        given; ``path``; ``frame`` (first frame of the clip); ``index`` and the
        per-file metadata as in :class:`DicomDataset`. Files with fewer than
        ``clip_len`` frames give no clip.
    """

    def __init__(
        self,
        source: Any,
        clip_len: int,
        stride: int | None = None,
        *,
        masks: MaskSource = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        color: Literal["rgb", "ybr"] = "rgb",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
    ):
        if not isinstance(clip_len, int) or clip_len < 1:
            raise ValueError(f"clip_len must be a positive int. Got: {clip_len!r}")
        stride = clip_len if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int. Got: {stride!r}")
        super().__init__(
            source, on_error=on_error, color=color, cache=cache, index_cache=index_cache
        )
        self.clip_len, self.stride, self.transform = clip_len, stride, transform
        self._masks = _MaskResolver(masks, self.root)
        self.rows = [r for r in self._masks.exclude(self.rows) if int(r["frames"]) >= clip_len]
        self._starts = _item_starts(
            [(int(r["frames"]) - clip_len) // stride + 1 for r in self.rows]
        )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(file position, first frame) of clip ``i``."""
        f, k = _locate(self._starts, i)
        return f, k * self.stride

    def _get(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        f, start = self.locate(i)
        row = self.rows[f]
        frames = slice(start, start + self.clip_len)
        clip = self._read(row, frames)
        item: dict[str, Any] = {"image": torch.from_numpy(clip), **_meta(row)}
        item["ybr"] = self._keeps_ybr(row)
        if self._masks:
            item["mask"] = _read_mask(
                self._masks(row["path"]),
                list(range(start, start + self.clip_len)),
                clip.shape[-2:],
                row["path"],
            )
        item.update(path=row["path"], frame=start, index=i)
        if self.transform is not None:
            item = self.transform(item)
        return item


# --------------------------------------------------------------------------- volumes
class DicomVolumeDataset(_Base):
    """One item per series ((0020,000E) *Series Instance UID*): a 3-D volume in modality units.

    Slices are ordered by their position along the slice normal (the cross
    product of the (0020,0037) *Image Orientation (Patient)* row and column
    vectors, dotted with (0020,0032) *Image Position (Patient)*) — never by
    InstanceNumber, which exports often scramble. The slice spacing is the
    median distance between neighbouring positions.

    Args:
        source: a directory, a list of files, or a :class:`~torchdicom.DicomIndex`.
        gap_tolerance: relative deviation from the median slice distance
            allowed before a gap (missing slice) is reported.
        on_error: ``"raise"`` or ``"skip"`` (substitute another series).

    Item (dict):
        ``volume`` (D, H, W) float32 in HU / modality units (stored × slope +
        intercept, per slice); ``spacing`` (3,) float64 (dz, dy, dx) in mm;
        ``series_instance_uid``; ``paths`` (D file paths in volume order);
        ``positions`` (D,) float64 positions along the normal; ``index``.

    Raises (on access):
        CorruptDicomError: slices of different sizes or orientations, two
        slices at one position, or a gap; the message names the series and
        the slices concerned.
    """

    def __init__(
        self,
        source: Any,
        *,
        gap_tolerance: float = 0.25,
        on_error: Literal["raise", "skip"] = "raise",
        index_cache: str | os.PathLike[str] | None = None,
    ):
        super().__init__(source, on_error=on_error, index_cache=index_cache)
        self.gap_tolerance = gap_tolerance
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            key = r["series_instance_uid"] or r["path"]
            groups.setdefault(key, []).append(r)
        self.series = sorted(groups)
        self._groups = groups

    def __len__(self) -> int:
        return len(self.series)

    def _get(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        uid = self.series[i]
        slices, positions, dz = _order_series(uid, self._groups[uid], self.gap_tolerance)
        first = slices[0]
        vol = np.empty(
            (sum(int(s["frames"]) for s in slices), int(first["rows"]), int(first["columns"])),
            np.float32,
        )
        z = 0
        for s in slices:
            px = read_frames_numpy(s)[:, 0].astype(np.float32)
            slope, intercept = float(s["rescale_slope"]), float(s["rescale_intercept"])
            px *= 1.0 if math.isnan(slope) else slope
            px += 0.0 if math.isnan(intercept) else intercept
            vol[z : z + len(px)] = px
            z += len(px)
        dy = float(first["spacing_row"])
        dx = float(first["spacing_col"])
        return {
            "volume": torch.from_numpy(vol),
            "spacing": torch.tensor([dz, dy, dx], dtype=torch.float64),
            "series_instance_uid": uid,
            "paths": [s["path"] for s in slices],
            "positions": torch.from_numpy(np.asarray(positions, dtype=np.float64)),
            "index": i,
        }


def _order_series(
    uid: str, slices: list[dict[str, Any]], gap_tolerance: float
) -> tuple[list[dict[str, Any]], list[float], float]:
    name = f"series {uid}"
    sizes = {(int(s["rows"]), int(s["columns"])) for s in slices}
    if len(sizes) > 1:
        raise CorruptDicomError(
            name, f"slices have different sizes {sorted(sizes)}; cannot stack a volume"
        )
    if len(slices) == 1:
        s = slices[0]
        thickness = float(s["slice_thickness"])
        return (
            slices,
            [float(s["position_z"])],
            thickness if not math.isnan(thickness) else math.nan,
        )

    orient = np.array([[s[f"orientation_{k}"] for k in range(6)] for s in slices], dtype=np.float64)
    pos = np.array(
        [[s["position_x"], s["position_y"], s["position_z"]] for s in slices], dtype=np.float64
    )
    if np.isnan(orient).any() or np.isnan(pos).any():
        raise CorruptDicomError(
            name,
            "slices lack (0020,0032) Image Position or (0020,0037) Image Orientation (Patient);"
            " cannot order them in space",
        )
    if not np.allclose(orient, orient[0], atol=1e-4):
        raise CorruptDicomError(
            name, "slices have different orientations (a localizer mixed into the series?)"
        )
    normal = np.cross(orient[0, :3], orient[0, 3:])
    where = pos @ normal
    order = np.argsort(where, kind="stable")
    where = where[order]
    ordered = [slices[k] for k in order]
    steps = np.diff(where)
    if (np.abs(steps) < 1e-6).any():
        k = int(np.argmin(np.abs(steps)))
        raise CorruptDicomError(
            name,
            f"two slices at the same position {where[k]:.3f} mm: {ordered[k]['path']} and {ordered[k + 1]['path']}",
        )
    dz = float(np.median(steps))
    bad = np.abs(steps - dz) > gap_tolerance * dz
    if bad.any():
        k = int(np.argmax(bad))
        raise CorruptDicomError(
            name,
            f"gap between slices: {steps[k]:.3f} mm between {ordered[k]['path']} and"
            f" {ordered[k + 1]['path']} where the series spacing is {dz:.3f} mm (missing slice?)",
        )
    return ordered, where.tolist(), dz


# --------------------------------------------------------------------------- collate
_FLOAT_KEYS = ("slope", "intercept", "window_center", "window_width")


class Collate:
    """Stack dataset items into a batch dict.

    Images are stacked in their stored dtype (the float conversion happens on
    the device); per-sample metadata become tensors of shape (B,); ``path``
    stays a list of str.

    Args:
        pad: when images differ in size, pad each to the largest H and W
            (bottom/right, with the image's own minimum so padding reads as
            background) instead of raising.

    Raises:
        ValueError: images of different shapes (without ``pad``); the message
            lists the shapes and files.

    Batch:
        ``image`` (B, C, H, W) (or (B, T, C, H, W) for clips); ``slope``,
        ``intercept``, ``window_center``, ``window_width`` float32 (B,);
        ``monochrome1``, ``ybr`` bool (B,); ``bits_stored``, ``frame``,
        ``index`` int64 (B,); ``label`` int64 / float32 (B,); ``mask`` uint8
        like ``image`` with C=1; ``path`` list[str].
    """

    def __init__(self, pad: bool = False):
        self.pad = pad

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty list of items")
        out: dict[str, Any] = {}
        for key in items[0]:
            values = [it[key] for it in items]
            if key in ("image", "mask", "volume"):
                out[key] = self._stack(values, items, key)
            elif key in _FLOAT_KEYS:
                out[key] = torch.tensor(values, dtype=torch.float32)
            elif key in ("monochrome1", "ybr", "substituted"):
                out[key] = torch.tensor(values, dtype=torch.bool)
            elif key in ("bits_stored", "frame", "index"):
                out[key] = torch.tensor(values, dtype=torch.int64)
            elif key == "label":
                out[key] = _label_tensor(values)
            elif isinstance(values[0], torch.Tensor):
                out[key] = self._stack(values, items, key)
            else:
                out[key] = list(values)
        return out

    def _stack(
        self, values: list[torch.Tensor], items: Sequence[Mapping[str, Any]], key: str
    ) -> torch.Tensor:
        whole = _whole_buffer(values)
        if whole is not None:
            return whole
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1:
            return torch.stack(values, out=_batch_buffer(values[0], len(values)))
        if not self.pad or len({v.shape[:-2] for v in values}) > 1:
            detail = ", ".join(
                f"{tuple(v.shape)} {it.get('path', '?')}" for v, it in list(zip(values, items))[:4]
            )
            raise ValueError(
                f"cannot batch {key}s of different sizes: {detail}; use Collate(pad=True),"
                f" a resizing transform, or batch_size=1"
            )
        h = max(v.shape[-2] for v in values)
        w = max(v.shape[-1] for v in values)
        out = _batch_buffer(values[0], len(values), (*values[0].shape[:-2], h, w))
        for p, v in zip(out, values):
            p.fill_(v.min().item() if v.numel() and key != "mask" else 0)
            p[..., : v.shape[-2], : v.shape[-1]] = v
        return out


def _whole_buffer(values: list[torch.Tensor]) -> torch.Tensor | None:
    """The (B, ...) tensor whose slots the ``values`` are, in order and covering all of it.

    :meth:`DicomDataset.__getitems__` reads a batch's images into one buffer; stacking
    them would copy it into an identical one. None for anything else.
    """
    first = values[0]
    if first.device.type != "cpu":
        return None
    storage = first.untyped_storage()
    nbytes = first.numel() * first.element_size()
    base = storage.data_ptr()
    if nbytes == 0 or storage.nbytes() != nbytes * len(values):
        return None
    for k, v in enumerate(values):
        if (
            v.dtype != first.dtype
            or v.shape != first.shape
            or not v.is_contiguous()
            or v.untyped_storage().data_ptr() != base
            or v.data_ptr() != base + k * nbytes
        ):
            return None
    return first.new_empty(0).set_(storage, 0, (len(values), *first.shape))


def _batch_buffer(
    like: torch.Tensor, batch: int, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The (B, ...) output of a stack; in shared memory inside a DataLoader worker.

    A worker's batch travels to the main process through shared memory: built
    there directly (as torch's default_collate does), the batch is not copied
    again on its way, which for 32 CT slices saves a 16 MB copy per batch.
    Outside workers, CPU batches come from the transforms' recycling pool
    (:func:`~torchdicom.transforms._utils.empty_large`): the pages of an earlier,
    freed batch are written again instead of faulting in fresh ones.
    """
    shape = tuple(like.shape) if shape is None else shape
    if get_worker_info() is None:
        return empty_large((batch, *shape), like.dtype, like.device)
    numel = batch * math.prod(shape)
    storage = like.untyped_storage()._new_shared(numel * like.element_size(), device=like.device)
    return like.new_empty(0).set_(storage, 0, (batch, *shape))


def _label_tensor(values: list[Any]) -> torch.Tensor | list[Any]:
    if all(isinstance(v, bool | int | np.integer) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    if all(isinstance(v, int | float | np.integer | np.floating) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack(values)
    return list(values)


collate = Collate()
"""Default collate function (no padding); see :class:`Collate`."""
