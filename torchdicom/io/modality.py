"""The Modality LUT: stored values → modality units (Hounsfield for CT), written once.

(0028,1053) *Rescale Slope* and (0028,1052) *Rescale Intercept* (for enhanced objects: each
frame's Pixel Value Transformation functional group) map stored values linearly; a
(0028,3000) *Modality LUT Sequence* maps them through a table instead. Index rows and batch
dicts hold NaN where a file has no slope or intercept. The linear rescale applies only when
a file has both — as pydicom's ``apply_modality_lut`` and fastai's ``scaled_px`` do, and as DICOM
pairs them (either present makes both Type 1) — so a file missing either is read as slope 1,
intercept 0. That rule lives here, for :func:`~torchdicom.scaled_px`,
:func:`torchdicom.transforms.functional.rescale` / :class:`~torchdicom.transforms.Rescale`
and :class:`~torchdicom.DicomVolumeDataset`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from torchdicom.errors import CorruptDicomError
from torchdicom.io.dicomfile import _short, dcmread
from torchdicom.io.header import frame_row

if TYPE_CHECKING:  # torch is not loaded by header-level callers (the info command)
    import torch

__all__ = ["frame_rescale", "modality_values", "rescale_parameters"]

Values = TypeVar("Values", float, np.ndarray, "torch.Tensor")


def rescale_parameters(slope: Values | None, intercept: Values | None) -> tuple[Values, Values]:
    """The slope and intercept to apply: the identity (1, 0) wherever either is missing.

    A missing value is NaN (or None). The pair is applied only when both are present, as
    pydicom's ``apply_modality_lut`` does: an intercept without its slope (a damaged header)
    is not applied on its own.

    Args:
        slope: a number, a numpy array or a tensor.
        intercept: the same kind and shape as ``slope``.

    Returns:
        ``(slope, intercept)`` of the kinds given (None gives the float 1.0 / 0.0), NaN-free.

    Example:
        >>> rescale_parameters(1.0, -1024.0)
        (1.0, -1024.0)
        >>> rescale_parameters(float("nan"), -1024.0)
        (1.0, 0.0)
    """
    if slope is None or intercept is None:
        return 1.0 if slope is None else _fill(slope, 1.0), 0.0 if intercept is None else _fill(
            intercept, 0.0
        )
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded
    if torch is not None and isinstance(slope, torch.Tensor):
        missing = torch.isnan(slope) | torch.isnan(intercept)
        return (
            torch.where(missing, torch.ones_like(slope), slope),
            torch.where(missing, torch.zeros_like(intercept), intercept),
        )
    if isinstance(slope, np.ndarray):
        missing = np.isnan(slope) | np.isnan(intercept)
        return np.where(missing, 1.0, slope), np.where(missing, 0.0, intercept)
    s, i = float(slope), float(intercept)
    return (1.0, 0.0) if math.isnan(s) or math.isnan(i) else (s, i)


def _fill(value: Any, missing: float) -> Any:
    """``value`` with NaN as ``missing`` (the other of the pair was not given at all)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return torch.where(torch.isnan(value), torch.full_like(value, missing), value)
    if isinstance(value, np.ndarray):
        return np.where(np.isnan(value), missing, value)
    value = float(value)
    return missing if math.isnan(value) else value


def frame_rescale(row: Mapping[str, Any], frames: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's slope and intercept, NaN-free (float64 arrays of ``len(frames)``).

    Per-frame values of enhanced objects where the index has them, else the file's.
    """
    slopes = np.empty(len(frames), np.float64)
    intercepts = np.empty(len(frames), np.float64)
    for k, frame in enumerate(frames):
        values = frame_row(row, frame)
        slopes[k], intercepts[k] = rescale_parameters(
            float(values["rescale_slope"]), float(values["rescale_intercept"])
        )
    return slopes, intercepts


def modality_values(
    row: Mapping[str, Any], stored: np.ndarray, frames: Sequence[int]
) -> np.ndarray:
    """Stored values of ``frames`` in modality units, float32.

    Args:
        row: the file's index row.
        stored: the frames' stored values, (F, ...) with F = ``len(frames)``.
        frames: the file's frame number of each of the F frames.

    Returns:
        float32 (F, ...) (float64 for float64 stored values, i.e. (7FE0,0009) *Double
        Float Pixel Data*): through the Modality LUT Sequence when the file has one, else
        ``stored × slope + intercept`` with each frame's own values (in that dtype);
        the stored values unchanged, as float32, when the file has neither.

    Raises:
        CorruptDicomError: a Modality LUT Sequence that cannot be applied.
    """
    if bool(row.get("has_modality_lut", False)):
        from pydicom.pixels import apply_modality_lut

        ds = dcmread(row["path"], stop_before_pixels=True)
        try:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        except Exception as exc:
            raise CorruptDicomError(
                row["path"], f"(0028,3000) Modality LUT Sequence cannot be applied: {_short(exc)}"
            ) from None
    # float32 like everything downstream, except (7FE0,0009) Double Float Pixel Data:
    # float32 cannot hold its range, and rounding it there would return wrong values.
    kind = np.float64 if stored.dtype == np.float64 else np.float32
    out = stored.astype(kind)
    slopes, intercepts = frame_rescale(row, frames)
    if (slopes == 1).all() and (intercepts == 0).all():
        return out
    shape = (len(frames),) + (1,) * (out.ndim - 1)
    out *= slopes.astype(kind).reshape(shape)
    out += intercepts.astype(kind).reshape(shape)
    return out
