"""DicomVolumeDataset: one 3-D volume per series, from single-frame slices or enhanced files."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from torchdicom.cache import FrameCache
from torchdicom.data._base import _Base, _Slot
from torchdicom.errors import CorruptDicomError, TorchDicomError
from torchdicom.io.geometry import affine_from_row, slice_normal
from torchdicom.io.header import frame_row
from torchdicom.io.modality import rescale_parameters
from torchdicom.io.schema import IndexRow
from torchdicom.keys import (
    AFFINE,
    FRAMES,
    IMAGE,
    INDEX,
    INTERCEPT,
    PATHS,
    POSITIONS,
    SERIES_INSTANCE_UID,
    SLOPE,
    SPACING,
    WINDOW_CENTER,
    WINDOW_WIDTH,
)

__all__ = ["DicomVolumeDataset"]


class _Slice(NamedTuple):
    row: IndexRow  # the file's index row
    frame: int  # the slice's frame in that file
    view: Mapping[str, Any]  # the row as that frame sees it (frame_row)


class DicomVolumeDataset(_Base):
    """One item per series ((0020,000E) *Series Instance UID*): a 3-D volume of stored values.

    A series is either single-frame slices (classic CT / MR, one file per slice) or enhanced
    multi-frame files (Enhanced CT / MR …), whose frames are the slices, each with its own
    position, orientation, pixel spacing and rescale from the (5200,9230) *Per-frame
    Functional Groups Sequence*. Slices are ordered by their position along the slice normal
    (the cross product of the (0020,0037) *Image Orientation (Patient)* row and column
    vectors, dotted with (0020,0032) *Image Position (Patient)*) — never by InstanceNumber or
    stored frame order, which exports often scramble. The slice spacing is the median distance
    between neighbouring positions. A series that is one classic multi-frame file without
    per-frame positions keeps its stored frame order, spaced by (0018,0050) *Slice Thickness*.

    Args:
        source: a directory, a list of files, or a :class:`~torchdicom.DicomIndex`.
        gap_tolerance: relative deviation from the median slice distance
            allowed before a gap (missing slice) is reported.
        on_error: ``"raise"`` or ``"skip"`` (substitute another series).
        cache: a :class:`~torchdicom.cache.FrameCache` or directory for decoded
            compressed frames.
        index_cache: parquet file for the header index.

    Item (dict) — the same contract as every dataset's item, with one value per slice:
        ``image`` (1, D, H, W) stored values in the dataset's one stored dtype
        (:attr:`dtype`); ``slope``, ``intercept`` (D,) float32, each slice's own and
        NaN-free (a missing slope is 1, a missing intercept 0), so that
        :class:`~torchdicom.transforms.Rescale` turns a (B, 1, D, H, W) batch into modality
        units on the device; ``window_center``, ``window_width`` (D,) float32 (NaN where
        absent); ``spacing`` (3,) float64 (dz, dy, dx) in mm; ``affine`` (4, 4) float64
        voxel (column, row, slice) → patient LPS mm (:mod:`torchdicom.io.geometry`: its
        slice column steps from the first slice's position to the last's over D - 1, so
        ``affine @ (0, 0, k, 1)`` is slice k's (0020,0032)); ``positions`` (D,) float64
        positions along the normal; ``paths`` (D file paths in volume order); ``frames``
        (D,) int64, the frame of its file each slice is; ``series_instance_uid``;
        ``index``. For Hounsfield units of one volume without a batch:
        ``Rescale()({k: v[None] for k, v in item.items() if k in ("image", "slope",
        "intercept")})``.

    Raises (on access):
        CorruptDicomError: slices of different sizes or orientations, two
            slices at one position, or a gap; the message names the series and
            the slices concerned.
        TorchDicomError: a series that mixes enhanced multi-frame and other files, colour
            slices, or a file with a (0028,3000) *Modality LUT Sequence* (a table per-slice
            slope/intercept cannot express: read it with :func:`~torchdicom.scaled_px`).

    MONOCHROME1 slices are handed over as stored (volume items carry no ``monochrome1``
    flag, so :class:`~torchdicom.transforms.Rescale` does not invert them).
    """

    def __init__(
        self,
        source: Any,
        *,
        gap_tolerance: float = 0.25,
        on_error: Literal["raise", "skip"] = "raise",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        super().__init__(
            source,
            on_error=on_error,
            cache=cache,
            index_cache=index_cache,
            storage_options=storage_options,
        )
        self.gap_tolerance = gap_tolerance
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            key = r["series_instance_uid"] or r["path"]
            groups.setdefault(key, []).append(r)
        self.series = sorted(groups)
        self._groups = groups
        self._stored_dtype()  # decided now, from every file, and pickled to workers

    def __len__(self) -> int:
        return len(self.series)

    def _get(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        uid = self.series[i]
        slices, positions, dz = _order_series(uid, self._groups[uid], self.gap_tolerance)
        first = slices[0].view
        for s in slices:
            _check_readable(s.row)
        depth = len(slices)
        image = np.empty(
            (1, depth, int(first["rows"]), int(first["columns"])), self._stored_dtype()
        )
        # One read per file, its frames in stored order, each put at its place in the volume.
        wanted: dict[str, list[tuple[int, int]]] = {}
        for z, s in enumerate(slices):
            wanted.setdefault(s.row["path"], []).append((s.frame, z))
        for z_list in wanted.values():
            z_list.sort()
            row = slices[z_list[0][1]].row
            stored = self._read(row, [frame for frame, _ in z_list])  # (n, 1, H, W)
            image[0, [z for _, z in z_list]] = stored[:, 0]

        slope = np.empty(depth, np.float32)
        intercept = np.empty(depth, np.float32)
        center = np.empty(depth, np.float32)
        width = np.empty(depth, np.float32)
        for z, s in enumerate(slices):
            slope[z], intercept[z] = rescale_parameters(
                float(s.view["rescale_slope"]), float(s.view["rescale_intercept"])
            )
            center[z], width[z] = float(s.view["window_center"]), float(s.view["window_width"])
        step = None
        if depth > 1 and not math.isnan(first["position_x"]):
            last = slices[-1].view
            step = [(float(last[k]) - float(first[k])) / (depth - 1) for k in _POSITION]
        elif not math.isnan(dz):
            step = slice_normal(first) * dz
        return {
            IMAGE: torch.from_numpy(image),
            SLOPE: torch.from_numpy(slope),
            INTERCEPT: torch.from_numpy(intercept),
            WINDOW_CENTER: torch.from_numpy(center),
            WINDOW_WIDTH: torch.from_numpy(width),
            SPACING: torch.tensor(
                [dz, float(first["spacing_row"]), float(first["spacing_col"])], dtype=torch.float64
            ),
            AFFINE: torch.from_numpy(affine_from_row(first, step)),
            SERIES_INSTANCE_UID: uid,
            PATHS: [s.row["path"] for s in slices],
            FRAMES: torch.tensor([s.frame for s in slices], dtype=torch.int64),
            POSITIONS: torch.from_numpy(np.asarray(positions, dtype=np.float64)),
            INDEX: i,
        }


_POSITION = ("position_x", "position_y", "position_z")


def _has_per_frame(row: Mapping[str, Any]) -> bool:
    """Whether the file has per-frame values (an enhanced multi-frame object)."""
    return len(row.get("frame_position", ())) > 0


def _check_readable(row: Mapping[str, Any]) -> None:
    if int(row["samples_per_pixel"]) != 1:
        raise TorchDicomError(
            row["path"],
            f"a volume's slices are greyscale; this file has {int(row['samples_per_pixel'])}"
            f" samples per pixel ({row['photometric']})",
        )
    if bool(row.get("has_modality_lut", False)):
        raise TorchDicomError(
            row["path"],
            "has a (0028,3000) Modality LUT Sequence, a table that a volume's per-slice"
            " slope/intercept cannot express; read its modality values with"
            " torchdicom.scaled_px(path)",
        )


def _slices(uid: str, files: list[dict[str, Any]]) -> list[_Slice]:
    """The slices of a series: one per single-frame file, one per frame of an enhanced file."""
    enhanced = [r for r in files if _has_per_frame(r)]
    if enhanced and len(enhanced) < len(files):
        other = next(r for r in files if not _has_per_frame(r))
        raise TorchDicomError(
            f"series {uid}",
            f"mixes enhanced multi-frame files ({enhanced[0]['path']}) with files without"
            f" per-frame functional groups ({other['path']}); cannot stack one volume",
        )
    if not enhanced and len(files) > 1:
        multi = next((r for r in files if int(r["frames"]) > 1), None)
        if multi is not None:
            raise TorchDicomError(
                f"series {uid}",
                f"{multi['path']} has {int(multi['frames'])} frames but no per-frame positions,"
                f" among {len(files)} files; cannot place its frames in the volume",
            )
    return [_Slice(r, f, frame_row(r, f)) for r in files for f in range(max(1, int(r["frames"])))]


def _order_series(
    uid: str, files: list[dict[str, Any]], gap_tolerance: float
) -> tuple[list[_Slice], list[float], float]:
    """The series' slices in volume order, their positions along the normal and the spacing."""
    name = f"series {uid}"
    sizes = {(int(s["rows"]), int(s["columns"])) for s in files}
    if len(sizes) > 1:
        raise CorruptDicomError(
            name, f"slices have different sizes {sorted(sizes)}; cannot stack a volume"
        )
    slices = _slices(uid, files)
    if len(files) == 1 and not _has_per_frame(files[0]):
        # One classic file (one slice, or frames without their own positions): stored order.
        s = files[0]
        thickness = float(s["slice_thickness"])
        dz = thickness if thickness > 0 else math.nan
        start = float(np.dot(_position(s), slice_normal(s)))
        if math.isnan(start):
            start = float(s["position_z"])
        return (
            slices,
            [start + k * dz for k in range(len(slices))] if len(slices) > 1 else [start],
            dz,
        )

    views = [s.view for s in slices]
    if len(slices) == 1:  # one frame of an enhanced file: nothing to order
        dz = float(views[0]["slice_thickness"])
        where = float(np.dot(_position(views[0]), slice_normal(views[0])))
        return slices, [where], dz if dz > 0 else math.nan
    orient = np.array([[v[f"orientation_{k}"] for k in range(6)] for v in views], dtype=np.float64)
    pos = np.array([_position(v) for v in views], dtype=np.float64)
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
    where = pos @ slice_normal(views[0])
    order = np.argsort(where, kind="stable")
    where = where[order]
    ordered = [slices[k] for k in order]
    steps = np.diff(where)
    if (np.abs(steps) < 1e-6).any():
        k = int(np.argmin(np.abs(steps)))
        raise CorruptDicomError(
            name,
            f"two slices at the same position {where[k]:.3f} mm: {_describe(ordered[k])} and"
            f" {_describe(ordered[k + 1])}",
        )
    dz = float(np.median(steps))
    bad = np.abs(steps - dz) > gap_tolerance * dz
    if bad.any():
        k = int(np.argmax(bad))
        raise CorruptDicomError(
            name,
            f"gap between slices: {steps[k]:.3f} mm between {_describe(ordered[k])} and"
            f" {_describe(ordered[k + 1])} where the series spacing is {dz:.3f} mm (missing slice?)",
        )
    return ordered, where.tolist(), dz


def _position(view: Mapping[str, Any]) -> list[float]:
    return [float(view[k]) for k in _POSITION]


def _describe(s: _Slice) -> str:
    """A slice for messages: its file, and its frame for multi-frame files."""
    return f"{s.row['path']} frame {s.frame}" if int(s.row["frames"]) > 1 else s.row["path"]
