"""Voxel → patient geometry: the 4×4 affine of a frame or a volume.

DICOM PS3.3 C.7.6.2.1.1: the centre of the voxel in column ``i``, row ``j`` of slice ``k``
lies at ``affine @ (i, j, k, 1)`` in the patient's LPS frame, in mm, with

* column 0: the row direction cosine (the first three values of (0020,0037) *Image
  Orientation (Patient)*, the direction of increasing column index) × Δc, the column spacing
  (the second value of (0028,0030) *Pixel Spacing*);
* column 1: the column direction cosine (the last three values) × Δr, the row spacing (the
  first value of *Pixel Spacing*);
* column 2: the step from one slice to the next: for a volume ``(T_D - T_1) / (D - 1)``
  (first to last (0020,0032) *Image Position (Patient)*, so a tilted gantry is honoured); for a
  single frame the slice normal (row × column cosine) × (0018,0050) *Slice Thickness*, or ×
  1 mm when the thickness is unknown;
* column 3: the position of the first voxel, (0020,0032) *Image Position (Patient)*.

A tensor ``image[..., k, j, i]`` holds voxel ``(i, j, k)``: the affine's index order is the
reverse of the tensor's (as in ITK and nibabel).

Files without geometry (CR, ultrasound, secondary captures: no position or orientation) get a
usable stand-in rather than NaN: missing direction cosines are the patient axes (1, 0, 0) and
(0, 1, 0), a missing position is the origin and a missing (or zero) spacing or thickness is 1 mm. That matrix is
invertible and keeps resampling code working; it does not place the image in the patient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["affine_from_row", "slice_normal"]

_AXES = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def _orientation(row: Mapping[str, Any]) -> np.ndarray:
    values = np.array([float(row[f"orientation_{k}"]) for k in range(6)], dtype=np.float64)
    return _AXES.copy() if np.isnan(values).any() else values


def slice_normal(row: Mapping[str, Any]) -> np.ndarray:
    """The unit slice normal (row cosine × column cosine) of a row, (3,) float64."""
    o = _orientation(row)
    normal = np.cross(o[:3], o[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else np.array([0.0, 0.0, 1.0])


def affine_from_row(row: Mapping[str, Any], slice_step: np.ndarray | None = None) -> np.ndarray:
    """The 4×4 voxel → patient (LPS, mm) affine of one frame's index row (see the module doc).

    Args:
        row: an index row as one frame sees it (:func:`~torchdicom.io.header.frame_row`).
        slice_step: column 2, the (3,) step between slices in mm; default: the slice normal ×
            (0018,0050) *Slice Thickness* (1 mm when unknown).

    Returns:
        (4, 4) float64.
    """
    o = _orientation(row)
    dr, dc = (_length(row[name]) for name in ("spacing_row", "spacing_col"))
    position = [float(row[f"position_{a}"]) for a in "xyz"]
    position = [0.0 if math.isnan(v) else v for v in position]
    if slice_step is None:
        slice_step = slice_normal(row) * _length(row["slice_thickness"])
    out = np.eye(4, dtype=np.float64)
    out[:3, 0] = o[:3] * dc
    out[:3, 1] = o[3:] * dr
    out[:3, 2] = slice_step
    out[:3, 3] = position
    return out


def _length(value: Any) -> float:
    """A spacing or thickness in mm; 1 when missing (NaN) or not positive."""
    value = float(value)
    return value if value > 0 else 1.0
