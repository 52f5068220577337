"""Where labels and masks come from: CSV / DataFrame / mapping / callable labels, paired mask
files or DICOM SEG objects."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchdicom.data.seg import SEG_SOP_CLASSES, SegMasks, find_seg_files
from torchdicom.errors import CorruptDicomError
from torchdicom.io.frames import read_frames_numpy, row_for_path
from torchdicom.io.schema import IndexRow

__all__ = ["LabelSource", "MaskSource"]

LabelSource = str | os.PathLike[str] | pd.DataFrame | Mapping[str, Any] | Callable[..., Any] | None
MaskSource = str | os.PathLike[str] | Mapping[str, Any] | Callable[[str], Any] | None

_FILE_COLUMNS = ("file", "fname", "filename", "path", "filepath", "image", "dicom")


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
    """Finds the mask of an image frame: a paired mask file, or the frame's DICOM SEG segments.

    ``masks`` as a path is a DICOM SEG file, a folder of SEG files, or a folder mirroring the
    image tree with one mask file per image; a folder is told apart by its first DICOM file
    (a SEG or not, see :func:`~torchdicom.data.seg.find_seg_files`).
    """

    def __init__(self, masks: MaskSource, root: Path | None):
        self.masks = masks
        self.root = root
        # DICOM SEG files (a SEG file, or a folder whose DICOM files are SEGs), read for the
        # dataset's rows in exclude(); None for mirrored mask files.
        self.seg_paths: list[str] | None = None
        self.seg: SegMasks | None = None
        if isinstance(masks, str | os.PathLike):
            if not os.path.exists(masks):
                raise ValueError(
                    "masks must be a directory mirroring the images, a DICOM SEG file or a"
                    f" folder of them, a mapping or a callable. Got: {masks} (no such path)"
                )
            self.seg_paths = find_seg_files(masks)

    def __bool__(self) -> bool:
        return self.masks is not None

    def exclude(self, rows: list[IndexRow]) -> list[IndexRow]:
        """Drop the mask files themselves from the image rows: a mask folder inside the image
        folder, or SEG objects among the images. For SEG masks, read the SEGs for the rows
        that remain (once: items then only look their frames up)."""
        if self.seg_paths is not None:
            rows = [r for r in rows if str(r.get("sop_class_uid", "")) not in SEG_SOP_CLASSES]
            self.seg = SegMasks(self.seg_paths, rows)
            return rows
        if not isinstance(self.masks, str | os.PathLike):
            return rows
        prefix = os.path.join(os.path.realpath(self.masks), "")
        return [r for r in rows if not os.path.realpath(r["path"]).startswith(prefix)]

    @property
    def segments(self) -> list[str] | None:
        """The SEG segment label of each mask channel, or None for mirrored mask files."""
        return None if self.seg is None else list(self.seg.segments)

    def read(
        self, row: dict[str, Any], frame: int | Sequence[int], shape: tuple[int, ...]
    ) -> torch.Tensor:
        """The mask of a frame (S, H, W) or of a list of frames (T, S, H, W), uint8.

        S is the number of SEG segments, or 1 for mirrored mask files.
        """
        if self.seg is not None:
            return self.seg.read(row, frame)
        return _read_mask(self(row["path"]), frame, shape, row["path"])

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
