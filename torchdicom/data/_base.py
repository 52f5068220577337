"""Plumbing shared by the datasets: the index behind them, per-file metadata, skipping bad files."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from torchdicom.cache import FrameCache
from torchdicom.errors import TorchDicomError
from torchdicom.index import DicomIndex, scan
from torchdicom.io.frames import read_frames_numpy

log = logging.getLogger("torchdicom.data")

_YBR = ("YBR_FULL", "YBR_FULL_422")


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
