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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["affine_from_row", "slice_normal"]

_AXES = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# Plain Python floats below, not numpy: one affine per dataset item, a few µs each.
def _orientation(row: Mapping[str, Any]) -> tuple[float, ...]:
    values = tuple(float(row[f"orientation_{k}"]) for k in range(6))
    return _AXES if any(math.isnan(v) for v in values) else values


def _normal(o: tuple[float, ...]) -> tuple[float, float, float]:
    nx = o[1] * o[5] - o[2] * o[4]
    ny = o[2] * o[3] - o[0] * o[5]
    nz = o[0] * o[4] - o[1] * o[3]
    length = math.sqrt(nx * nx + ny * ny + nz * nz)
    return (nx / length, ny / length, nz / length) if length > 0 else (0.0, 0.0, 1.0)


def slice_normal(row: Mapping[str, Any]) -> np.ndarray:
    """The unit slice normal (row cosine × column cosine) of a row, (3,) float64."""
    return np.array(_normal(_orientation(row)), dtype=np.float64)


def affine_from_row(
    row: Mapping[str, Any], slice_step: Sequence[float] | None = None
) -> np.ndarray:
    """The 4×4 voxel → patient (LPS, mm) affine of one frame's index row (see the module doc).

    Args:
        row: an index row as one frame sees it (:func:`~torchdicom.io.header.frame_row`).
        slice_step: column 2, the (3,) step between slices in mm; default: the slice normal ×
            (0018,0050) *Slice Thickness* (1 mm when unknown).

    Returns:
        (4, 4) float64.

    Example:
        >>> row = {"orientation_0": 1, "orientation_1": 0, "orientation_2": 0,
        ...        "orientation_3": 0, "orientation_4": 1, "orientation_5": 0,
        ...        "spacing_row": 0.8, "spacing_col": 0.5, "slice_thickness": 2.0,
        ...        "position_x": -100, "position_y": -120, "position_z": 30}
        >>> (affine_from_row(row) @ [4, 10, 0, 1]).tolist()  # column 4, row 10
        [-98.0, -112.0, 30.0, 1.0]
    """
    o = _orientation(row)
    dr, dc = _length(row["spacing_row"]), _length(row["spacing_col"])
    px, py, pz = (float(row[f"position_{a}"]) for a in "xyz")
    if slice_step is None:
        thickness = _length(row["slice_thickness"])
        sx, sy, sz = (v * thickness for v in _normal(o))
    else:
        sx, sy, sz = (float(v) for v in slice_step)
    return np.array(
        [
            [o[0] * dc, o[3] * dr, sx, 0.0 if math.isnan(px) else px],
            [o[1] * dc, o[4] * dr, sy, 0.0 if math.isnan(py) else py],
            [o[2] * dc, o[5] * dr, sz, 0.0 if math.isnan(pz) else pz],
            [0.0, 0.0, 0.0, 1.0],
        ],
        dtype=np.float64,
    )


def _length(value: Any) -> float:
    """A spacing or thickness in mm; 1 when missing (NaN) or not positive."""
    value = float(value)
    return value if value > 0 else 1.0
