"""Plumbing shared by the datasets: the index behind them, per-file metadata, skipping bad files."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from torchdicom.cache import FrameCache
from torchdicom.data.resize import SizePolicy, check_channels
from torchdicom.data.seg import SEG_SOP_CLASSES
from torchdicom.errors import CorruptDicomError, TorchDicomError
from torchdicom.index import DicomIndex, scan
from torchdicom.io.frames import read_frames_numpy
from torchdicom.io.geometry import affine_from_row
from torchdicom.io.schema import IndexRow
from torchdicom.keys import (
    AFFINE,
    BITS_STORED,
    IMAGE,
    INDEX,
    INTERCEPT,
    MONOCHROME1,
    PENDING,
    SIGNED,
    SLOPE,
    SUBSTITUTED,
    WINDOW_CENTER,
    WINDOW_WIDTH,
)
from torchdicom.sources.dicomweb import registrations as dicomweb_registrations

log = logging.getLogger("torchdicom.data")

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")

_TORCH_DTYPES = {
    np.dtype(t): getattr(torch, name)
    for t, name in (
        ("u1", "uint8"),
        ("i1", "int8"),
        ("u2", "uint16"),
        ("i2", "int16"),
        ("u4", "uint32"),
        ("i4", "int32"),
        ("i8", "int64"),
        ("f4", "float32"),
        ("f8", "float64"),
    )
}

_YBR = ("YBR_FULL", "YBR_FULL_422")
# How many items a failed one may try as its substitute (on_error="skip") before the
# error is raised after all: a run of that many bad items is no longer a stray file.
_MAX_SUBSTITUTES = 64


def keeps_ybr(row: Mapping[str, Any], color: str) -> bool:
    """Whether a file's frames are handed over in YCbCr (``color="ybr"``, a YBR_FULL(_422)
    colour file) rather than converted to RGB."""
    return color == "ybr" and int(row["samples_per_pixel"]) == 3 and str(row["photometric"]) in _YBR


def size_policy(
    size: int | tuple[int, int] | None,
    resize: str,
    channels: Literal[1, 3] | None,
    samples_per_pixel: Iterable[int],
) -> SizePolicy:
    """A dataset's :class:`SizePolicy`, checked against its files' (0028,0002) *Samples per
    Pixel*: a size promises items that batch, so grey and colour must meet a channel policy.

    Raises:
        ValueError: bad ``size`` / ``resize`` / ``channels``; ``size`` set, ``channels``
            None and the files mixing grey and colour.
    """
    policy = SizePolicy(size, resize, channels)  # type: ignore[arg-type]
    if size is not None:
        check_channels(list(samples_per_pixel), channels)
    return policy


def _as_index(
    source: Any,
    index_cache: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[DicomIndex, Path | None]:
    """A DicomIndex and the collection root (for relative label/mask paths; None for URLs)."""
    from torchdicom.sources.dicomweb import is_dicomweb
    from torchdicom.sources.remote import bucket_root, configure, is_remote

    if isinstance(source, DicomIndex):
        index = source
        root = None
        # Per bucket: options registered earlier for one of these buckets must not win.
        for bucket in {bucket_root(p) for p in index.df["path"] if is_remote(p)}:
            configure(bucket, storage_options)
    elif callable(getattr(source, "index_rows", None)):
        # A source that indexes itself (torchdicom.sources.dicomweb.DicomWebSource); with a
        # cache, rows of instances the server still lists are reused (no metadata requests).
        index = scan(source, cache=index_cache, progress=False)
        root = None
    elif isinstance(source, str) and is_remote(source):
        index = scan(source, cache=index_cache, progress=False, storage_options=storage_options)
        root = None
    elif isinstance(source, str | os.PathLike):
        p = Path(source)
        index = scan(p, cache=index_cache, progress=False)
        root = p.resolve() if p.is_dir() else p.resolve().parent
    elif isinstance(source, Iterable):
        files = [os.fspath(f) for f in source]
        index = scan(files, cache=index_cache, progress=False, storage_options=storage_options)
        root = None
    else:
        raise TypeError(
            f"source must be a directory, a list of files or a DicomIndex. Got: {type(source).__name__}"
        )
    if (
        root is None
        and len(index.df)
        and not any(is_remote(p) or is_dicomweb(p) for p in index.df["path"])
    ):
        root = Path(os.path.commonpath([os.path.dirname(p) for p in index.df["path"]]))
    if len(index.errors):
        log.warning(
            "%d file(s) could not be indexed and are left out, e.g. %s",
            len(index.errors),
            index.errors["reason"].iloc[0],
        )
    return index, root


def _leave_out(
    rows: list[IndexRow], folders: Iterable[str | os.PathLike[str]], root: Path | None
) -> list[IndexRow]:
    """``rows`` without the files under ``folders`` (relative ones are relative to ``root``)."""
    prefixes = tuple(
        os.path.join(os.path.realpath(Path(root or ".") / folder), "") for folder in folders
    )
    if not prefixes:
        return rows
    return [r for r in rows if not os.path.realpath(r["path"]).startswith(prefixes)]


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    """An item's metadata from the index row as its frame sees it
    (:func:`~torchdicom.io.header.frame_row`: enhanced files carry each frame's own values).

    ``affine`` is the (4, 4) float64 voxel → patient (LPS, mm) matrix of
    :func:`~torchdicom.io.geometry.affine_from_row` (column, row, slice → position).
    """
    photometric = str(row["photometric"])
    return {
        AFFINE: torch.from_numpy(affine_from_row(row)),
        SLOPE: float(row["rescale_slope"]),
        INTERCEPT: float(row["rescale_intercept"]),
        WINDOW_CENTER: float(row["window_center"]),
        WINDOW_WIDTH: float(row["window_width"]),
        MONOCHROME1: photometric == "MONOCHROME1",
        BITS_STORED: int(row["bits_stored"]),
        # Two's complement stored values ((0028,0103) Pixel Representation 1): the image's
        # dtype no longer says so once files of both kinds share a dataset dtype.
        SIGNED: int(row["pixel_representation"]) == 1,
    }


# Integer dtypes a dataset may store its images in. At equal width the one most files are
# stored in wins (they need no conversion), then the earlier one here.
_INT_DTYPES = tuple(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "i8"))
_FLOAT_KEYWORDS = {"FloatPixelData": np.dtype("f4"), "DoubleFloatPixelData": np.dtype("f8")}
_FLOAT32_EXACT = 1 << 24  # every integer of at most this magnitude is a float32


def _value_bounds(row: Mapping[str, Any]) -> tuple[int, int]:
    """The smallest and largest stored value a file may hold, by its header.

    (0028,0101) *Bits Stored* bounds the values: :func:`~torchdicom.io.read_frames`
    clears (unsigned) or sign-extends (signed) the bits above it, as pydicom does.
    1-bit data unpacks to 0/1. A missing or impossible Bits Stored counts as
    (0028,0100) *Bits Allocated*.
    """
    allocated = int(row["bits_allocated"])
    stored = int(row["bits_stored"])
    if allocated == 1:
        return 0, 1
    bits = stored if 0 < stored <= allocated else allocated
    if int(row["pixel_representation"]) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _file_dtype(row: Mapping[str, Any]) -> np.dtype | None:
    """The dtype ``read_frames`` returns for the file (None where no integer dtype fits)."""
    if str(row["pixel_keyword"]) in _FLOAT_KEYWORDS:
        return _FLOAT_KEYWORDS[str(row["pixel_keyword"])]
    allocated = int(row["bits_allocated"])
    if allocated == 1:
        return np.dtype("u1")
    if allocated not in (8, 16, 32, 64):
        return None
    kind = "i" if int(row["pixel_representation"]) == 1 else "u"
    return np.dtype(f"{kind}{allocated // 8}")


def stored_dtype(rows: Iterable[Mapping[str, Any]]) -> np.dtype:
    """The narrowest dtype that holds the stored values of every file in ``rows`` exactly.

    Decided from the index alone ((0028,0100) *Bits Allocated*, (0028,0101) *Bits
    Stored*, (0028,0103) *Pixel Representation*, the pixel data keyword):

    - integer files: the narrowest integer dtype holding every file's value range
      (:func:`_value_bounds`) — ``uint8`` when all are unsigned 8-bit (1-bit and
      8-bit colour included); ``int16`` when signed 16-bit files mix with unsigned
      files of at most 15 stored bits; ``uint16`` when all are unsigned 16-bit;
      ``int32`` when signed files mix with unsigned 16-bit ones, and so on. At
      equal width the dtype most files already have wins, so a uniform collection
      keeps its own dtype.
    - any (7FE0,0008) *Float Pixel Data*: ``float32``, or ``float64`` with
      (7FE0,0009) *Double Float Pixel Data* or integers beyond 2**24 in magnitude.
    - no files: ``uint8``.
    """
    layouts: Counter[tuple[str, int, int, int]] = Counter()
    example: dict[tuple[str, int, int, int], str] = {}  # one file of each layout, for errors
    for r in rows:
        layout = (
            str(r["pixel_keyword"]),
            int(r["bits_allocated"]),
            int(r["bits_stored"]),
            int(r["pixel_representation"]),
        )
        layouts[layout] += 1
        example.setdefault(layout, str(r.get("path", "?")))
    lo = hi = 0
    widest: tuple[int, str] = (0, "?")  # the file whose value range needs the most bits
    floats: set[np.dtype] = set()
    files_in: Counter[np.dtype] = Counter()
    for (keyword, allocated, stored, signed), n in layouts.items():
        row = {
            "pixel_keyword": keyword,
            "bits_allocated": allocated,
            "bits_stored": stored,
            "pixel_representation": signed,
        }
        own = _file_dtype(row)
        if keyword in _FLOAT_KEYWORDS:
            floats.add(_FLOAT_KEYWORDS[keyword])
            continue
        low, high = _value_bounds(row)
        lo, hi = min(lo, low), max(hi, high)
        widest = max(widest, (max(-low, high), example[(keyword, allocated, stored, signed)]))
        if own is not None:
            files_in[own] += n
    if floats:
        exact32 = lo >= -_FLOAT32_EXACT and hi <= _FLOAT32_EXACT
        return np.dtype("f8") if np.dtype("f8") in floats or not exact32 else np.dtype("f4")
    fits = [d for d in _INT_DTYPES if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max]
    if not fits:
        # Only 64-bit data gets here (unsigned 64-bit, or 64-bit beside signed files): no
        # integer dtype torch batches holds every value exactly, and a cast would be wrong.
        raise CorruptDicomError(
            widest[1],
            f"its stored values need more than 63 bits, and together with the dataset's"
            f" other files ({lo}…{hi}) no integer dtype holds them all exactly; check its"
            f" (0028,0100) Bits Allocated / (0028,0101) Bits Stored / (0028,0103) Pixel"
            f" Representation, or leave it out (exclude=)",
        )
    width = min(d.itemsize for d in fits)
    return max((d for d in fits if d.itemsize == width), key=lambda d: files_in[d])


def _fit_check(values: np.ndarray, dtype: np.dtype, path: str) -> None:
    """Raise unless every value of ``values`` converts to ``dtype`` exactly."""
    if values.size == 0 or np.can_cast(values.dtype, dtype, "safe"):
        return
    if values.dtype.kind == "f" and dtype.kind != "f":
        raise CorruptDicomError(
            path, f"decoded {values.dtype} pixels where the dataset stores {dtype} integers"
        )
    lo, hi = values.min().item(), values.max().item()
    if dtype.kind == "f":
        bounds = (-_FLOAT32_EXACT, _FLOAT32_EXACT) if dtype.itemsize == 4 else (-math.inf, math.inf)
    else:
        bounds = (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    if not bounds[0] <= lo <= hi <= bounds[1]:
        raise CorruptDicomError(
            path,
            f"stored values {lo}…{hi} do not fit the dataset's {dtype} (bounds {bounds[0]}…"
            f"{bounds[1]}, from every file's (0028,0101) Bits Stored); the pixel data exceeds"
            f" what its header declares",
        )


def _into_dtype(values: np.ndarray, dtype: np.dtype, path: str) -> np.ndarray:
    """``values`` in ``dtype``, converted exactly or refused (never a silent wrap-around)."""
    if values.dtype == dtype:
        return values
    _fit_check(values, dtype, path)
    return values.astype(dtype)


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


def first_readable(
    read: Callable[[int], dict[str, Any]],
    attempts: int,
    skips: _SkipCounter,
    key: Callable[[int, TorchDicomError], str],
) -> tuple[dict[str, Any], int]:
    """The first item ``read(attempt)`` gives without a :class:`TorchDicomError`, and its attempt.

    What ``on_error="skip"`` does in every dataset: attempt 0 is the item asked for, the
    later ones its substitutes (the dataset decides which). Every failure is counted in
    ``skips`` and logged once per ``key(attempt, error)``. A substitute instead of a gap
    keeps the item count, and so the batch count of every DDP rank, unchanged: no rank
    waits at a collective for a batch another rank does not have.

    Raises:
        TorchDicomError: the last failure, when all ``attempts`` fail.
    """
    last: TorchDicomError | None = None
    for attempt in range(attempts):
        try:
            return read(attempt), attempt
        except TorchDicomError as exc:
            skips.add(key(attempt, exc), exc)
            last = exc
    assert last is not None, "first_readable needs at least one attempt"
    raise last


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


def _images_only(rows: list[IndexRow]) -> list[IndexRow]:
    """The rows that are images: DICOM SEG objects found among them are annotations.

    A SEG's pixel data are 1-bit segment frames; as training images they would be wrong
    items, and their uint8 would enter the dataset's dtype decision. They are masks only
    when given as ``masks=``.
    """
    keep = [r for r in rows if str(r.get("sop_class_uid", "")) not in SEG_SOP_CLASSES]
    if len(keep) < len(rows):
        log.info(
            "%d DICOM Segmentation object(s) among the files are not items (pass them as masks=)",
            len(rows) - len(keep),
        )
    return keep


def decode_target(decode_device: Any, decode_fallback: Any) -> torch.device | None:
    """The CUDA device of a ``decode_device`` setting (None: decode on the CPU), checked.

    Raises:
        ValueError: ``decode_device`` not None, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; a
            CUDA device without CUDA; ``decode_fallback`` not ``"cpu"`` or None.
    """
    from torchdicom.io.frames import _resolve_device

    if decode_fallback not in ("cpu", None):
        raise ValueError(f"decode_fallback must be 'cpu' or None. Got: {decode_fallback!r}")
    if decode_device is None:
        return None
    if not isinstance(decode_device, str | torch.device) or not _DEVICE.fullmatch(
        str(decode_device)
    ):
        raise ValueError(
            f"decode_device must be None, 'cpu', 'cuda' or 'cuda:N'. Got: {decode_device!r}"
        )
    try:
        target = _resolve_device(decode_device)
    except ValueError as exc:
        raise ValueError(f"decode_device={str(decode_device)!r}: {exc}") from None
    return None if target.type == "cpu" else target


class _Base(Dataset):
    def __init__(
        self,
        source: Any,
        *,
        on_error: Literal["raise", "skip"] = "raise",
        color: Literal["rgb", "ybr"] = "rgb",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'. Got: {on_error!r}")
        if color not in ("rgb", "ybr"):
            raise ValueError(f"color must be 'rgb' or 'ybr'. Got: {color!r}")
        self.index, self.root = _as_index(source, index_cache, storage_options)
        # Kept so that workers started by spawn register them again (__setstate__).
        self._storage_options = storage_options
        self.rows: list[IndexRow] = _images_only(self.index.rows())
        # How this process reaches the DICOMweb servers of the rows (session / headers),
        # kept so that workers started by spawn register them again (__setstate__).
        self._dicomweb = dicomweb_registrations([r["path"] for r in self.rows])
        self.on_error = on_error
        self.color = color
        self.cache = FrameCache(cache) if isinstance(cache, str | os.PathLike) else cache
        self._skips = _SkipCounter()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if state.get("_dicomweb"):
            from torchdicom.sources.dicomweb import restore

            restore(state["_dicomweb"])
        options = state.get("_storage_options")
        if options is not None:  # a worker started by spawn: the registry is empty there
            from torchdicom.sources.remote import bucket_root, configure, is_remote

            for bucket in {bucket_root(r["path"]) for r in self.rows if is_remote(r["path"])}:
                configure(bucket, options)

    @property
    def skipped(self) -> int:
        """Samples substituted because their file failed (all workers, since the last reset)."""
        return self._skips.value

    def reset_skipped(self) -> None:
        self._skips.reset()

    def _keeps_ybr(self, row: Mapping[str, Any]) -> bool:
        """Whether this file's frames are handed over in YCbCr (color="ybr")."""
        return keeps_ybr(row, self.color)

    @property
    def dtype(self) -> torch.dtype:
        """The one dtype of every item's ``image``: see :func:`stored_dtype`.

        Decided once, from the header index of the files the dataset reads, so every
        batch of the dataset has it whatever files it draws.
        """
        return _TORCH_DTYPES[self._stored_dtype()]

    def _stored_dtype(self) -> np.dtype:
        # Computed on first use (a subclass settles self.rows in its __init__ first) and
        # kept, so DataLoader workers receive it instead of recomputing it.
        cached = self.__dict__.get("_stored")
        if cached is None:
            cached = self.__dict__["_stored"] = stored_dtype(self.rows)
        return cached

    def _read(self, row: IndexRow, frames: Any) -> np.ndarray:
        """The frames of a file in the dataset's dtype (:attr:`dtype`)."""
        as_rgb = not self._keeps_ybr(row)
        if self.cache is not None and bool(row["encapsulated"]):
            values = self.cache.read(row, frames, as_rgb=as_rgb)
        else:
            values = read_frames_numpy(row, frames, as_rgb=as_rgb)
        return _into_dtype(values, self._stored_dtype(), row["path"])

    def _get(
        self, i: int, into: _Slot | None = None
    ) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- GPU decode
    def _init_decode(
        self, decode_device: Any, decode_fallback: str | None, transform: Any, size: Any
    ) -> None:
        """Check and keep ``decode_device`` / ``decode_fallback`` (see :meth:`decode_batch`)."""
        target = decode_target(decode_device, decode_fallback)
        if target is not None and (transform is not None or size is not None):
            given = "transform" if transform is not None else "size"
            raise ValueError(
                f"decode_device={str(decode_device)!r} decodes frames after the batch is"
                f" collated, so a per-item {given}= never sees their pixels; resize or"
                " transform the decoded batch on the device instead (gpu_transforms)"
            )
        self.decode_device, self.decode_fallback = decode_device, decode_fallback
        self._decode_target = target

    def _defers(self, row: IndexRow) -> bool:
        """Whether this file's frames are left for :meth:`decode_batch` (decoded on the GPU).

        Files the GPU decodes (:func:`~torchdicom.io.frames.gpu_decodable`) and stored in
        the dataset's own dtype; any other file is read in the worker as without
        ``decode_device``.
        """
        if self.__dict__.get("_decode_target") is None:
            return False
        from torchdicom.io.frames import gpu_decodable

        return gpu_decodable(row) and _file_dtype(row) == self._stored_dtype()

    def _placeholder(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The ``image`` of a deferred item: one element expanded to ``shape`` (no pixels
        are allocated, copied or sent from the worker; :class:`Collate` skips it)."""
        return torch.empty((), dtype=self.dtype).expand(shape)

    def _item_frames(self, i: int) -> tuple[IndexRow, list[int]]:  # pragma: no cover
        raise NotImplementedError

    def decode_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Decode a collated batch's deferred images on :attr:`decode_device`.

        With ``decode_device="cuda"`` the DataLoader workers do not decode the frames the GPU
        decodes (:func:`~torchdicom.io.frames.gpu_decodable`): their items carry no pixels
        and the collated batch marks them in ``batch["pending"]`` (bool (B,)); their slots of
        ``batch["image"]`` (a CPU tensor, (B, C, H, W) or (B, T, C, H, W) for clips, in
        :attr:`dtype`) hold no values yet. This step, run in the main process (CUDA cannot
        run in forked workers), reads those frames' code-streams and decodes them with
        nvImageCodec (one batch call per file, all its pending frames) straight into the batch tensor on the
        device; the rows read on the CPU are copied over. :class:`~torchdicom.DicomDataModule`
        runs it in ``transfer_batch_to_device``.

        Returns:
            The batch with ``image`` on the device, every row filled, in :attr:`dtype`
            (the same values as the CPU read: lossless syntaxes equal pydicom's, lossy JPEG
            within a few levels), and no ``pending`` key. Other keys are returned as they
            are. A batch without ``pending`` comes back unchanged.

        Raises:
            CorruptDicomError: a frame the GPU decoder fails on, naming file and frame,
                with ``decode_fallback=None`` (with ``"cpu"`` it is read on the CPU).
        """
        flags = batch.get(PENDING)
        if flags is None:
            return batch
        target = self._decode_target
        if target is None:  # pragma: no cover - only a dataset that defers marks items
            raise ValueError("this dataset has no decode_device; its batches have no pending rows")
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        out = dict(batch)
        del out[PENDING]
        image = batch[IMAGE]
        pending = [k for k, flag in enumerate(flags.tolist()) if flag]
        if image.device == target:
            into = image
        else:
            into = torch.empty(image.shape, dtype=image.dtype, device=target)
            ready = sorted(set(range(image.shape[0])) - set(pending))
            if ready:
                index = torch.tensor(ready)
                into[index.to(target)] = image[index].to(target, non_blocking=True)
        # One decoder call per file: every pending frame of the file in this batch.
        by_file: dict[str, tuple[IndexRow, list[int], list[int]]] = {}
        indices = batch[INDEX].tolist()
        for k in pending:
            row, frames = self._item_frames(int(indices[k]))
            _, slots, wanted = by_file.setdefault(row["path"], (row, [], []))
            slots.append(k)
            wanted.extend(frames)
        for row, slots, wanted in by_file.values():
            decoded = self._decode_frames(row, wanted, target)
            per_item = decoded.reshape(len(slots), *into.shape[1:])
            for k, values in zip(slots, per_item, strict=True):
                into[k] = values
        out[IMAGE] = into
        return out

    def _decode_frames(
        self, row: IndexRow, frames: list[int], device: torch.device
    ) -> torch.Tensor:
        from torchdicom.io import frames as io_frames

        check = io_frames.check_declared_size
        check(row)
        decoded = io_frames._read_gpu(
            row,
            frames,
            not self._keeps_ybr(row),
            device,
            self.decode_fallback == "cpu",
        )
        return decoded.to(self.dtype)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._fetch(i)

    def _fetch(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        i %= n
        if self.on_error == "raise":
            return self._get(i, into)

        # Substitute the next readable sample (see first_readable).
        def read(attempt: int) -> dict[str, Any]:
            j = (i + attempt) % n
            # A substitute is read on its own: it may not fit the batch slot.
            item = self._get(j, into if attempt == 0 else None)
            if attempt > 0 and item.get(PENDING):
                # decode_batch finds an item's frames by its index, which will name the
                # failed item: the substitute is read here, on the CPU.
                row, frames = self._item_frames(j)
                shape = item[IMAGE].shape
                item[IMAGE] = torch.from_numpy(self._read(row, frames)).reshape(shape)
                item[PENDING] = False
            return item

        item, attempt = first_readable(
            read, min(n, _MAX_SUBSTITUTES), self._skips, lambda _, exc: exc.path or "?"
        )
        item[INDEX] = i
        item[SUBSTITUTED] = attempt > 0
        return item


class _ItemDataset(_Base):
    """What the frame and clip datasets share: items counted by ``_starts``, masks, a size policy.

    Subclasses set ``self._starts`` and ``self._masks`` and then call :meth:`_settle`.
    """

    _starts: np.ndarray
    _masks: Any

    def _settle(
        self,
        size: int | tuple[int, int] | None,
        resize: str,
        channels: Literal[1, 3] | None,
        transform: Any,
        decode_device: str | torch.device | None,
        decode_fallback: Literal["cpu"] | None,
    ) -> None:
        """Fix what depends on the final rows: size policy, dtype, device decoding."""
        self.size_policy = size_policy(
            size, resize, channels, (r["samples_per_pixel"] for r in self.rows)
        )
        self._stored_dtype()  # decided now, from the final rows, and pickled to workers
        self._init_decode(decode_device, decode_fallback, transform, size)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def mask_segments(self) -> list[str] | None:
        """The segment label of each ``mask`` channel with SEG masks (None for mask files)."""
        return self._masks.segments
