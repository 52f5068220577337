"""DicomVolumeDataset: one 3-D volume per series."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np
import torch

from torchdicom.data._base import _Base, _Slot
from torchdicom.errors import CorruptDicomError
from torchdicom.io.frames import read_frames_numpy

__all__ = ["DicomVolumeDataset"]


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
