"""Rescale to Hounsfield units, MONOCHROME1 inversion and windowing: functions and their modules.

The functions (:func:`rescale`, :func:`invert_monochrome1`, :func:`windowed`,
:func:`window_from_header`, :func:`pct_in_window`) are pure and batched; the modules
(:class:`Rescale`, :class:`Window`, :class:`WindowFromHeader`) read their per-sample
parameters from the batch dict and call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from torchdicom._runtime import empty_large
from torchdicom.io.modality import rescale_parameters
from torchdicom.keys import (
    BITS_STORED,
    IMAGE,
    INTERCEPT,
    MONOCHROME1,
    SIGNED,
    SLOPE,
    WINDOW_CENTER,
    WINDOW_WIDTH,
)
from torchdicom.transforms import _kernels
from torchdicom.transforms._base import BatchTransform, require_key
from torchdicom.transforms._utils import (
    Param,
    check_image,
    chunk_images,
    float_dtype,
    per_sample,
    unbatch,
)

# Values per chunk for the in-cache window pass: about one 512x512 float32 image.
_WINDOW_CHUNK_VALUES = 1 << 18

__all__ = [
    "DICOM_WINDOWS",
    "Rescale",
    "Window",
    "WindowFromHeader",
    "dicom_windows",
    "invert_monochrome1",
    "pct_in_window",
    "rescale",
    "resolve_window",
    "window_from_header",
    "windowed",
]

#: Named windows, name -> (width, level) in Hounsfield units, as in the fastai tutorial.
DICOM_WINDOWS: Mapping[str, tuple[int, int]] = {
    "brain": (80, 40),
    "subdural": (254, 100),
    "stroke": (8, 32),
    "brain_bone": (2800, 600),
    "brain_soft": (375, 40),
    "lungs": (1500, -600),
    "mediastinum": (350, 50),
    "abdomen_soft": (400, 50),
    "liver": (150, 30),
    "spine_soft": (250, 50),
    "spine_bone": (1800, 400),
}
#: The tutorial's lowercase spelling of :data:`DICOM_WINDOWS`.
dicom_windows = DICOM_WINDOWS

WindowMode = Literal["fastai", "dicom"]
WindowSpec = str | tuple[float, float]


def resolve_window(window: WindowSpec) -> tuple[float, float]:
    """A window given by name (a key of :data:`DICOM_WINDOWS`) or as ``(width, level)``.

    Returns:
        ``(width, level)``.
    """
    if isinstance(window, str):
        if window not in DICOM_WINDOWS:
            raise ValueError(
                f"unknown window name; known: {sorted(DICOM_WINDOWS)}. Got: {window!r}"
            )
        return DICOM_WINDOWS[window]
    if (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
    ):
        return window[0], window[1]
    raise TypeError(
        f"a window is a name of DICOM_WINDOWS or a (width, level) pair. Got: {window!r}"
    )


def rescale(x: Tensor, slope: Param = 1.0, intercept: Param = 0.0) -> Tensor:
    r"""Apply the linear modality LUT: ``x * slope + intercept``.

    (0028,1053) *Rescale Slope* and (0028,1052) *Rescale Intercept* map stored values to
    Hounsfield units for CT (modality units otherwise). Where the slope or the intercept is NaN
    (the file lacks it) the pair is not applied (slope 1, intercept 0), as pydicom does
    (:func:`torchdicom.io.modality.rescale_parameters`, the rule ``scaled_px`` and the
    datasets follow too).

    Args:
        x: stored values, any integer or float dtype.
        slope: a number, a (B,) tensor, or a (B, K) tensor: one value for each of K equal
            consecutive parts of every sample — the D slices of a (B, 1, D, H, W) volume batch
            (:class:`~torchdicom.DicomVolumeDataset` items carry (D,) slopes), the T frames of
            a (B, T, C, H, W) clip batch.
        intercept: the same kinds as ``slope`` (a (B,) one broadcasts over a (B, K) slope).

    Returns:
        float32 values (float64 for float64 input), same shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)`, :math:`(B, C, H, W)`, or 5-D :math:`(B, 1, D, H, W)` /
          :math:`(B, T, C, H, W)`
        - slope, intercept: numbers, :math:`(B,)` or :math:`(B, K)`
        - output: same as ``x``

    Example:
        >>> x = torch.full((2, 1, 4, 4), 1024, dtype=torch.int16)
        >>> rescale(x, 1.0, torch.tensor([-1024.0, -1000.0])).shape
        torch.Size([2, 1, 4, 4])
        >>> volumes = torch.zeros(2, 1, 3, 4, 4, dtype=torch.int16)  # (B, 1, D, H, W)
        >>> rescale(volumes, torch.ones(2, 3), torch.full((2, 3), -1024.0)).shape
        torch.Size([2, 1, 3, 4, 4])
    """
    if isinstance(x, Tensor) and x.dim() == 5:  # a batch of volumes or clips
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"x must have an integer or floating dtype. Got: {x.dtype}")
        xb, batched = x, True
    else:
        xb, batched = check_image(x)
    dtype = float_dtype(x)
    b = xb.shape[0]
    s, i = _part_params(slope, intercept, b, xb.device, dtype)
    parts = s.shape[1]
    if parts == 1 and xb.dim() == 4:
        return unbatch(_rescale_images(xb, s.view(b, 1, 1, 1), i.view(b, 1, 1, 1), dtype), batched)
    if b == 0:
        return torch.empty(xb.shape, dtype=dtype, device=xb.device)
    numel = xb[0].numel()
    # Parts are whole (H, W) planes: K is the product of the sizes before them (D, T or T*C).
    whole = {math.prod(xb.shape[1:j]) for j in range(2, xb.dim() - 1)}
    if parts not in whole:
        raise ValueError(
            f"a (B, K) slope/intercept gives one value per (H, W) plane or group of planes;"
            f" K must be one of {sorted(whole)} for x of shape {tuple(xb.shape)}. Got: K={parts}"
        )
    # Each part as one image of its own slope and intercept: (B * K, 1, 1, N / K) is a view of a
    # contiguous x, so the fused native pass serves volumes and clips as it serves images.
    planes = xb.reshape(b * parts, 1, 1, numel // parts)
    out = _rescale_images(planes, s.reshape(-1, 1, 1, 1), i.reshape(-1, 1, 1, 1), dtype)
    return unbatch(out.reshape(xb.shape), batched)


def _rescale_images(xb: Tensor, s: Tensor, i: Tensor, dtype: torch.dtype) -> Tensor:
    """``xb * s + i`` for a (B, C, H, W) ``xb`` and (B, 1, 1, 1) NaN-free ``s`` and ``i``."""
    if xb.requires_grad:
        return xb.to(dtype) * s + i
    # A fresh (huge-page-advised) output, converted into and scaled in place: mixed-dtype ops
    # (int16 * float32) would first materialise a converted copy of the whole batch.
    if _kernels.usable(xb):
        out = empty_large(xb.shape, dtype, xb.device)
        _kernels.rescale_into(xb, s, i, out)  # one fused pass, the same float operations
        return out
    out = empty_large(xb.shape, dtype, xb.device).copy_(xb)
    if xb.is_floating_point() or not bool((s == 1).all()):
        out.mul_(s)  # x * 1 == x exactly for values converted from integers: skipped then
    out.add_(i)
    return out


def _per_part(value: Param, name: str, b: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A number, (B,) or (B, K) parameter as a (B, K) tensor (K = 1 unless given)."""
    if isinstance(value, Tensor) and value.dim() == 2:
        if value.shape[0] != b:
            raise ValueError(
                f"{name} must be a number or a tensor of shape ({b},) or ({b}, K)."
                f" Got: {tuple(value.shape)}"
            )
        return value.to(device=device, dtype=dtype)
    return per_sample(value, name, b, device, dtype).view(b, 1)


def _part_params(
    slope: Param, intercept: Param, b: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(B, K) slope and intercept, NaN meaning 1 and 0; a K = 1 one broadcasts to the other's K."""
    s = _per_part(slope, "slope", b, device, dtype)
    i = _per_part(intercept, "intercept", b, device, dtype)
    parts = max(s.shape[1], i.shape[1])
    if s.shape[1] not in (1, parts) or i.shape[1] not in (1, parts):
        raise ValueError(
            f"slope and intercept must have one value per sample or the same K per sample."
            f" Got: {tuple(s.shape)} and {tuple(i.shape)}"
        )
    return rescale_parameters(s.expand(b, parts), i.expand(b, parts))


def _rescale_params(
    slope: Param | None, intercept: Param | None, b: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(B, 1, 1, 1) slope and intercept, NaN (and None) meaning 1 and 0."""
    s = per_sample(1.0 if slope is None else slope, "slope", b, device, dtype)
    i = per_sample(0.0 if intercept is None else intercept, "intercept", b, device, dtype)
    return rescale_parameters(s, i)


def invert_monochrome1(
    x: Tensor,
    bits_stored: Param,
    apply: Tensor | bool = True,
    signed: Tensor | bool | None = None,
) -> Tensor:
    r"""Invert MONOCHROME1 stored values so that larger means brighter, as in MONOCHROME2.

    (0028,0004) *Photometric Interpretation* MONOCHROME1 displays the minimum value as white.
    The inversion maps each stored value ``v`` to ``max + min - v`` over the range that
    (0028,0101) *Bits Stored* allows: ``2**bits - 1 - v`` for unsigned data and ``-1 - v`` for
    signed (two's complement) data, so the result stays in the same range and dtype.

    Args:
        x: stored values.
        bits_stored: a number or a (B,) tensor.
        apply: ``True``, or a (B,) bool tensor selecting the samples to invert (the batch's
            ``monochrome1`` flags); the others are returned unchanged.
        signed: whether values are two's complement: a bool, a (B,) bool tensor (the batch's
            ``signed`` flags: a dataset mixing signed and unsigned files stores both in one
            signed dtype), or ``None`` to infer it from the dtype (signed integer dtypes are
            signed, unsigned and float dtypes are not).

    Returns:
        same dtype and shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: same as ``x``

    Example:
        >>> x = torch.tensor([[[[0, 4095]]]], dtype=torch.uint16)
        >>> invert_monochrome1(x, 12).shape
        torch.Size([1, 1, 1, 2])
    """
    xb, batched = check_image(x)
    b = xb.shape[0]
    if signed is None:
        signed = xb.is_signed() and not xb.is_floating_point()
    work = torch.float64 if xb.is_floating_point() else torch.int64
    bits = per_sample(bits_stored, "bits_stored", b, xb.device, torch.int64)
    if bool(((bits < 1) | (bits > 32)).any()):
        raise ValueError(f"bits_stored must be in 1..32. Got: {bits.flatten().tolist()}")
    if isinstance(signed, Tensor):
        two_complement = per_sample(signed, "signed", b, xb.device, torch.bool)
        total = torch.where(two_complement, torch.full_like(bits, -1), (1 << bits) - 1)
    else:
        total = torch.full_like(bits, -1) if signed else (1 << bits) - 1
    inverted = (total.to(work) - xb.to(work)).to(xb.dtype)
    if isinstance(apply, bool):
        return unbatch(inverted if apply else xb.clone(), batched)
    flags = per_sample(apply, "apply", b, xb.device, torch.bool)
    return unbatch(torch.where(flags, inverted, xb), batched)


def _window_bounds(width: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
    # The tutorial floors width // 2 (Python floor division, also for float widths).
    half = torch.div(width, 2, rounding_mode="floor")
    return level - half, level + half


def _check_mode(mode: str) -> None:
    if mode not in ("fastai", "dicom"):
        raise ValueError(f"mode must be 'fastai' or 'dicom'. Got: {mode!r}")


def _check_window(width: Any, level: Any, mode: str) -> None:
    """A fixed ``(width, level)`` and mode, as :class:`Window` takes them (numbers)."""
    _check_mode(mode)
    for name, value in (("width", width), ("level", level)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number. Got: {value!r}")
    minimum = 2 if mode == "fastai" else 1
    if not width >= minimum:
        raise ValueError(f"width must be >= {minimum} in {mode!r} mode. Got: {width!r}")


def _check_width(width: Tensor, minimum: float) -> None:
    bad = torch.isnan(width) | (width < minimum)
    if bool(bad.any()):
        raise ValueError(
            f"window width must be >= {minimum:g} and not NaN. Got: {width.flatten().tolist()}"
        )


def windowed(
    x: Tensor,
    width: Param,
    level: Param,
    mode: WindowMode = "fastai",
    slope: Param | None = None,
    intercept: Param | None = None,
) -> Tensor:
    r"""Map the window ``(width, level)`` onto [0, 1].

    ``mode="fastai"`` (the tutorial's definition): ``lo = level - width // 2``,
    ``hi = level + width // 2`` (floor division), ``(clamp(x, lo, hi) - lo) / (hi - lo)``.
    Needs ``width >= 2``.

    ``mode="dicom"``: the linear VOI LUT function of DICOM PS3.3 C.11.2.1.2.1 with output
    range [0, 1]: 0 where ``x <= c - 0.5 - (w - 1) / 2``, 1 where ``x > c - 0.5 + (w - 1) / 2``,
    ``(x - (c - 0.5)) / (w - 1) + 0.5`` between. Needs ``width >= 1``.

    Args:
        x: values in the window's units (usually HU after :func:`rescale`).
        width: a number or a (B,) tensor.
        level: the window centre, a number or a (B,) tensor.
        mode: ``"fastai"`` or ``"dicom"``.
        slope, intercept: when either is given, ``x`` holds stored values and is rescaled
            first: the result equals ``windowed(rescale(x, slope, intercept), ...)`` bit for bit,
            but on CPU it is one fused pass with no batch-sized HU intermediate (the usual
            loader step: raw int16 in, windowed float32 out).

    Returns:
        float32 in [0, 1] (float64 for float64 input), same shape as ``x``. Differentiable in
        ``x`` (zero gradient where clamped).

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: same as ``x``

    Example:
        >>> x = torch.linspace(-1000, 1000, 16).reshape(1, 1, 4, 4)
        >>> windowed(x, *DICOM_WINDOWS["brain"]).shape
        torch.Size([1, 1, 4, 4])
    """
    xb, batched = check_image(x)
    _check_mode(mode)
    dtype = float_dtype(x)
    b = xb.shape[0]
    w = per_sample(width, "width", b, xb.device, dtype)
    c = per_sample(level, "level", b, xb.device, dtype)
    if torch.isnan(c).any():
        raise ValueError(f"window level must not be NaN. Got: {c.flatten().tolist()}")
    fused = slope is not None or intercept is not None
    if mode == "fastai":
        _check_width(w, 2)
        lo, hi = _window_bounds(w, c)
        if fused and _kernels.usable(xb) and b > 0:
            s, i = _rescale_params(slope, intercept, b, xb.device, dtype)
            out = empty_large(xb.shape, dtype, xb.device)
            _kernels.rescale_window_into(xb, s, i, lo, hi, hi - lo, out)
            return unbatch(out, batched)
    if fused:
        hu = rescale(x, 1.0 if slope is None else slope, 0.0 if intercept is None else intercept)
        return windowed(hu, width, level, mode=mode)
    if mode == "fastai":
        if xb.requires_grad:
            xf = xb.to(dtype)
            return unbatch((torch.clamp(xf, lo, hi) - lo) / (hi - lo), batched)
        # One (huge-page-advised) output, filled a few images at a time: each chunk is
        # converted, clamped, shifted and scaled while it sits in cache, instead of three
        # passes over a batch-sized temporary. Same float32 operations in the same order as
        # (clamp(x, lo, hi) - lo) / (hi - lo), so the values are identical.
        out = empty_large(xb.shape, dtype, xb.device)
        span = hi - lo
        if _kernels.usable(xb) and b > 0:
            _kernels.window_into(
                xb, lo.view(b, 1), hi.view(b, 1), span.view(b, 1), out.view(b, 1, -1)
            )
            return unbatch(out, batched)
        step = chunk_images(b, xb[0].numel() if b else 1, xb.device, _WINDOW_CHUNK_VALUES)
        for start in range(0, b, step):
            chunk = slice(start, start + step)
            out[chunk].copy_(xb[chunk]).clamp_(lo[chunk], hi[chunk]).sub_(lo[chunk]).div_(
                span[chunk]
            )
        return unbatch(out, batched)
    _check_width(w, 1)
    xf = xb.to(dtype)
    centre = c - 0.5
    half = (w - 1) / 2
    # Nested where, not clamp: for width 1 the middle branch divides by zero but is never chosen.
    linear = (xf - centre) / (w - 1) + 0.5
    one = torch.ones((), dtype=dtype, device=xb.device)
    out = torch.where(xf <= centre - half, 0 * one, torch.where(xf > centre + half, one, linear))
    return unbatch(out, batched)


def window_from_header(
    x: Tensor,
    window_center: Param,
    window_width: Param,
    mode: WindowMode = "fastai",
    fallback: WindowSpec | None = None,
) -> Tensor:
    r"""Window each image with its own (0028,1050) *Window Center* / (0028,1051) *Window Width*.

    The batch dict carries the first value of each (multi-valued) tag as float32 (B,) tensors,
    NaN where the file had none.

    Args:
        x: values in HU / modality units.
        window_center: a number or (B,) tensor.
        window_width: a number or (B,) tensor.
        mode: see :func:`windowed`.
        fallback: a window name or ``(width, level)`` used for samples whose centre or width is
            NaN; without it such samples raise ``ValueError``.

    Returns:
        float32 in [0, 1] (float64 for float64 input), same shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - window_center, window_width: :math:`(B,)` or numbers
        - output: same as ``x``

    Example:
        >>> x = torch.zeros(2, 1, 4, 4)
        >>> window_from_header(x, torch.tensor([40.0, float("nan")]), torch.tensor([80.0, float("nan")]),
        ...                    fallback="abdomen_soft").shape
        torch.Size([2, 1, 4, 4])
    """
    xb, _ = check_image(x)
    b = xb.shape[0]
    dtype = float_dtype(x)
    c = per_sample(window_center, "window_center", b, xb.device, dtype).flatten()
    w = per_sample(window_width, "window_width", b, xb.device, dtype).flatten()
    missing = torch.isnan(c) | torch.isnan(w)
    if bool(missing.any()):
        if fallback is None:
            raise ValueError(
                "some samples have no Window Center/Width in their header; pass fallback=(width, level) "
                f"or a DICOM_WINDOWS name. Got: missing for samples {missing.nonzero().flatten().tolist()}"
            )
        fw, fl = resolve_window(fallback)
        c = torch.where(missing, torch.full_like(c, fl), c)
        w = torch.where(missing, torch.full_like(w, fw), w)
    return windowed(x, w, c, mode=mode)


def pct_in_window(x: Tensor, window: WindowSpec) -> Tensor:
    r"""Fraction of each image's pixels inside the window's closed range [lo, hi].

    ``lo``/``hi`` are those of :func:`windowed` (``level ∓ width // 2``). (The tutorial's
    version compares against ``(width, level)`` themselves, which selects nothing for most
    windows; this follows what its docstring says instead.)

    Args:
        x: values in HU.
        window: a :data:`DICOM_WINDOWS` name or ``(width, level)``.

    Returns:
        float32 fractions in [0, 1] (float64 for float64 input).

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: :math:`()` or :math:`(B,)`

    Example:
        >>> pct_in_window(torch.zeros(3, 1, 8, 8), "brain").shape
        torch.Size([3])
    """
    xb, batched = check_image(x)
    width, level = resolve_window(window)
    lo, hi = level - width // 2, level + width // 2
    dtype = float_dtype(x)
    inside = (xb >= lo) & (xb <= hi)
    out = inside.flatten(1).to(dtype).mean(dim=1)
    return out if batched else out.squeeze(0)


# --------------------------------------------------------------------------- modules
class Rescale(BatchTransform):
    r"""Stored values → Hounsfield (modality) units with each sample's slope and intercept.

    On a batch dict it reads ``slope`` and ``intercept`` (NaN → 1 and 0). When the dict has
    ``monochrome1`` flags and ``bits_stored``, flagged samples are inverted first (as
    two's complement values where the dict's ``signed`` flags say so, else by the dtype)
    (:func:`invert_monochrome1`) and their ``window_center`` is mirrored the same way
    (``slope * (max + min) + 2 * intercept - centre``), so :meth:`Window.from_header` still
    selects the same tissue, now displayed MONOCHROME2-style.

    Args:
        slope: used for bare tensors (a dict's own ``slope`` wins).
        intercept: used for bare tensors (a dict's own ``intercept`` wins).

    Shape:
        - image: :math:`(B, C, H, W)` any dtype → float32; volume batches
          :math:`(B, 1, D, H, W)` with :math:`(B, D)` ``slope`` / ``intercept`` (one per
          slice, as :class:`~torchdicom.DicomVolumeDataset` items carry them) too, see
          :func:`rescale`

    Example:
        >>> batch = {"image": torch.zeros(2, 1, 8, 8, dtype=torch.int16),
        ...          "slope": torch.ones(2), "intercept": torch.full((2,), -1024.0)}
        >>> Rescale()(batch)["image"].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, slope: float = 1.0, intercept: float = 0.0) -> None:
        super().__init__()
        self.slope = slope
        self.intercept = intercept

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        if batch is None:
            return rescale(x, self.slope, self.intercept)
        return rescale(x, batch.get(SLOPE, self.slope), batch.get(INTERCEPT, self.intercept))

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if not _inverts_monochrome1(data):
            return super().transform_batch(data)
        slope = data.get(SLOPE, self.slope)
        intercept = data.get(INTERCEPT, self.intercept)
        out = dict(data)
        image = data[IMAGE]
        inverted = invert_monochrome1(
            image,
            data[BITS_STORED],
            apply=data[MONOCHROME1].to(image.device),
            signed=data.get(SIGNED),
        )
        out[IMAGE] = rescale(inverted, slope, intercept)
        if WINDOW_CENTER in data:
            out[WINDOW_CENTER] = _mirror_centre(data, inverted, slope, intercept)
        return out


def _inverts_monochrome1(data: Mapping[str, Any]) -> bool:
    """Whether :class:`Rescale` inverts some sample of this batch dict first.

    Most batches hold no MONOCHROME1 image: the full-size inversion pass is skipped then (one
    tiny (B,) reduction instead of a pass over the pixels).
    """
    flags = data.get(MONOCHROME1)
    return flags is not None and BITS_STORED in data and bool(torch.as_tensor(flags).any())


def _mirror_centre(data: Mapping[str, Any], image: Tensor, slope: Any, intercept: Any) -> Tensor:
    centre = data[WINDOW_CENTER]
    flags = data[MONOCHROME1].to(device=centre.device, dtype=torch.bool)
    bits = (
        torch.as_tensor(data[BITS_STORED], device=centre.device)
        .to(torch.float64)
        .expand(centre.shape)
    )
    signed = data.get(SIGNED)
    if signed is None:
        signed = image.is_signed() and not image.is_floating_point()
    two_complement = (
        torch.as_tensor(signed, device=centre.device).to(torch.bool).expand(centre.shape)
    )
    total = torch.where(two_complement, torch.full_like(bits, -1.0), torch.pow(2.0, bits) - 1)
    s = torch.as_tensor(slope, dtype=torch.float64, device=centre.device).expand(centre.shape)
    i = torch.as_tensor(intercept, dtype=torch.float64, device=centre.device).expand(centre.shape)
    s, i = rescale_parameters(s, i)
    mirrored = (s * total + 2 * i - centre.to(torch.float64)).to(centre.dtype)
    return torch.where(flags, mirrored, centre)


class Window(BatchTransform):
    r"""Window onto [0, 1] with a fixed ``(width, level)`` (see :func:`windowed`).

    Use :meth:`preset` for a :data:`DICOM_WINDOWS` name and :meth:`from_header` for each
    sample's own (0028,1050)/(0028,1051) window.

    Args:
        width: window width (>= 2 in ``"fastai"`` mode, >= 1 in ``"dicom"`` mode).
        level: window centre.
        mode: ``"fastai"`` or ``"dicom"``.
        rescale: apply :class:`Rescale` first, fused: the batch dict holds stored values
            (raw int16 as collated) and the output equals ``Window(...)(Rescale()(batch))``
            bit for bit, in one pass on CPU without a batch-sized HU intermediate. Batches
            with MONOCHROME1 samples take the two steps one after the other.

    Shape:
        - image: :math:`(B, C, H, W)` → float32, same shape

    Example:
        >>> Window(400, 50)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
        >>> batch = {"image": torch.zeros(2, 1, 8, 8, dtype=torch.int16),
        ...          "slope": torch.ones(2), "intercept": torch.full((2,), -1024.0)}
        >>> Window(1500, -600, rescale=True)(batch)["image"].dtype
        torch.float32
    """

    def __init__(
        self, width: float, level: float, mode: WindowMode = "fastai", rescale: bool = False
    ) -> None:
        super().__init__()
        _check_window(width, level, mode)
        self.width, self.level, self.mode = width, level, mode
        self.rescale = bool(rescale)

    @classmethod
    def preset(cls, name: str, mode: WindowMode = "fastai", rescale: bool = False) -> Window:
        """A window from :data:`DICOM_WINDOWS`, e.g. ``Window.preset("brain")``."""
        if not isinstance(name, str):
            raise TypeError(f"preset takes a DICOM_WINDOWS name. Got: {name!r}")
        return cls(*resolve_window(name), mode=mode, rescale=rescale)

    @staticmethod
    def from_header(
        fallback: WindowSpec | None = None, mode: WindowMode = "fastai"
    ) -> WindowFromHeader:
        """Each sample's own header window; see :class:`WindowFromHeader`."""
        return WindowFromHeader(fallback=fallback, mode=mode)

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        if not self.rescale:
            return windowed(x, self.width, self.level, mode=self.mode)
        if batch is None:
            raise TypeError(
                "Window(rescale=True) reads 'slope' and 'intercept' from a batch dict; "
                "pass the dict, not a bare tensor. Got: Tensor"
            )
        return windowed(
            x,
            self.width,
            self.level,
            self.mode,
            slope=batch.get(SLOPE, 1.0),
            intercept=batch.get(INTERCEPT, 0.0),
        )

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if self.rescale and _inverts_monochrome1(data):
            # MONOCHROME1 inversion first, then the window.
            inverted = Rescale().transform_batch(data)
            inverted[IMAGE] = windowed(inverted[IMAGE], self.width, self.level, mode=self.mode)
            return inverted
        return super().transform_batch(data)


class WindowFromHeader(BatchTransform):
    r"""Window each sample with the batch dict's ``window_center`` / ``window_width``.

    Args:
        fallback: window name or ``(width, level)`` for samples whose header had none (NaN);
            without it such a batch raises ``ValueError``.
        mode: ``"fastai"`` or ``"dicom"``.

    Shape:
        - image: :math:`(B, C, H, W)` → float32, same shape

    Example:
        >>> batch = {"image": torch.zeros(2, 1, 8, 8), "window_center": torch.tensor([40.0, 50.0]),
        ...          "window_width": torch.tensor([80.0, 400.0])}
        >>> Window.from_header()(batch)["image"].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, fallback: WindowSpec | None = None, mode: WindowMode = "fastai") -> None:
        super().__init__()
        _check_mode(mode)
        if fallback is not None:
            resolve_window(fallback)
        self.fallback, self.mode = fallback, mode

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        centre = require_key(batch, WINDOW_CENTER, "Window.from_header()")
        width = require_key(batch, WINDOW_WIDTH, "Window.from_header()")
        return window_from_header(x, centre, width, mode=self.mode, fallback=self.fallback)
