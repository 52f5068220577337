"""The size policy: one output size and channel count for every item, applied per item.

Radiograph collections are never one size, and ultrasound or secondary-capture sets mix
RGB with greyscale. :class:`SizePolicy` makes every item of a dataset one (C, H, W) so
that a batch can be stacked: it runs per item inside ``Dataset.__getitem__`` (so in the
DataLoader workers, before collate), resizes with :func:`torch.nn.functional.interpolate`
and rounds the result back to the item's stored dtype, so batches stay 1–2 bytes per
pixel on their way to the device.

Geometry: ``output = pad(resize(crop(input)))``. In continuous pixel coordinates (pixel
``i`` spans ``[i, i + 1)``, the convention of ``interpolate(align_corners=False)``) a point
maps as ``out = (orig - crop[:2]) * scale + pad[:2]``; :func:`to_original` inverts it.
Every item carries the numbers (as tensors, so :class:`~torchdicom.Collate` stacks them):

- ``original_size`` int64 (2,): (H, W) as stored;
- ``crop`` int64 (4,): (y0, x0, y1, x1), the region of the original that was kept
  (the whole image except for ``resize="crop"``);
- ``scale`` float64 (2,): (sy, sx), output pixels per original pixel;
- ``pad`` int64 (4,): (top, left, bottom, right) pixels added after resizing
  (non-zero only for ``resize="letterbox"``).

:class:`~torchdicom.DicomDataset` and :class:`~torchdicom.DicomClipDataset` take
``size=``, ``resize=``, ``channels=``; :class:`~torchdicom.DicomVolumeDataset` does not: a
volume is one series of one in-plane size, and what volumes need is resampling to a voxel
spacing, a different operation (on the device, batched, after loading).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from torchdicom.keys import (
    AFFINE,
    CROP,
    IMAGE,
    MASK,
    MONOCHROME1,
    ORIGINAL_SIZE,
    PAD,
    SCALE,
    YBR,
)

__all__ = ["ResizeMode", "SizePolicy", "check_channels", "to_original", "to_resized"]

ResizeMode = Literal["stretch", "letterbox", "crop"]

_MODES = ("stretch", "letterbox", "crop")
# ITU-R BT.601 luma, the weights of (0028,0004) YBR_FULL and of most greyscale conversions.
_LUMA = (0.299, 0.587, 0.114)


class SizePolicy:
    """Resize (and/or convert the channels of) one dataset item to a fixed (C, H, W).

    A picklable callable on an item dict, run per item in the DataLoader worker. The
    datasets build it from their ``size=``, ``resize=`` and ``channels=`` arguments.

    Args:
        size: output (H, W), an int for a square, or None to keep each item's size
            (only the channel policy then applies).
        resize: ``"stretch"`` — scale each axis to ``size`` (aspect ratio not kept);
            ``"letterbox"`` — scale the longest side to fit, pad the rest (centred; the
            image's minimum, or its maximum for MONOCHROME1, so padding reads as
            background; masks pad with 0); ``"crop"`` — scale the shortest side to fit,
            centre-crop the rest (the crop is taken in original pixels, then resized).
        channels: ``None`` — keep the item's channels; ``1`` — colour becomes luma
            (BT.601 weights; items left in YCbCr give their Y plane); ``3`` — grey is
            repeated into three channels.

    Item keys read: ``image`` (C, H, W) or (T, C, H, W); optional ``mask`` (S, H, W) or
    (T, S, H, W); optional ``affine`` (4, 4); ``monochrome1`` and ``ybr`` flags. Keys
    written: ``image`` (in its own dtype), ``mask``, ``affine``, ``ybr`` (False after a
    conversion to luma) and, when ``size`` is set, ``original_size``, ``crop``,
    ``scale``, ``pad`` (see the module docstring).

    Resampling: area averaging when both axes shrink, bilinear otherwise (with
    antialiasing on a shrinking axis), computed in float32, then rounded and clamped
    into the range of an integer dtype. Masks use ``nearest-exact``, same geometry.

    Example:
        >>> policy = SizePolicy((64, 64), "letterbox", channels=1)
        >>> item = {"image": torch.zeros(3, 100, 50, dtype=torch.uint8)}
        >>> out = policy(item)
        >>> out["image"].shape, out["image"].dtype, out["pad"].tolist()
        (torch.Size([1, 64, 64]), torch.uint8, [0, 16, 0, 16])
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        resize: ResizeMode = "stretch",
        channels: Literal[1, 3] | None = None,
    ):
        self.size = _size(size)
        if resize not in _MODES:
            raise ValueError(f"resize must be one of {_MODES}. Got: {resize!r}")
        if channels not in (None, 1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be None, 1 or 3. Got: {channels!r}")
        self.resize = resize
        self.channels = channels

    def __bool__(self) -> bool:
        """Whether the policy changes anything at all."""
        return self.size is not None or self.channels is not None

    def __repr__(self) -> str:
        return f"SizePolicy(size={self.size}, resize={self.resize!r}, channels={self.channels})"

    def output_shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """The (C, H, W) an image of (c, h, w) becomes, without reading it."""
        c = self.channels if self.channels is not None else c
        return (c, *self.size) if self.size is not None else (c, h, w)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image = item[IMAGE]
        if image.ndim not in (3, 4):
            raise ValueError(
                f"image must be (C, H, W) or (T, C, H, W). Got: {tuple(image.shape)} "
                f"{item.get('path', '')}".rstrip()
            )
        out = dict(item)
        if self.channels is not None:
            out[IMAGE], converted = _convert_channels(image, self.channels, bool(item.get(YBR)))
            if converted and self.channels == 1 and YBR in out:
                out[YBR] = False
        if self.size is None:
            return out
        h, w = image.shape[-2:]
        crop, resized, pad = self.geometry(int(h), int(w))
        ch, cw = crop[2] - crop[0], crop[3] - crop[1]
        scale = (resized[0] / ch, resized[1] / cw)
        fill = _background(out[IMAGE], item) if any(pad) else 0.0
        out[IMAGE] = _resample_image(out[IMAGE], crop, resized, pad, fill)
        if item.get(MASK) is not None:
            out[MASK] = _resample_mask(item[MASK], crop, resized, pad)
        if item.get(AFFINE) is not None:
            out[AFFINE] = _updated_affine(item[AFFINE], crop, scale, pad)
        out[ORIGINAL_SIZE] = torch.tensor([h, w], dtype=torch.int64)
        out[CROP] = torch.tensor(crop, dtype=torch.int64)
        out[SCALE] = torch.tensor(scale, dtype=torch.float64)
        out[PAD] = torch.tensor(pad, dtype=torch.int64)
        return out

    def geometry(
        self, h: int, w: int
    ) -> tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int, int, int]]:
        """(crop box (y0, x0, y1, x1), resized (H, W), pad (top, left, bottom, right)) for an
        (h, w) image. Needs ``size``."""
        assert self.size is not None
        oh, ow = self.size
        crop = (0, 0, h, w)
        if self.resize == "stretch":
            return crop, (oh, ow), (0, 0, 0, 0)
        if self.resize == "letterbox":
            s = min(oh / h, ow / w)
            rh, rw = min(oh, max(1, round(h * s))), min(ow, max(1, round(w * s)))
            top, left = (oh - rh) // 2, (ow - rw) // 2
            return crop, (rh, rw), (top, left, oh - rh - top, ow - rw - left)
        # crop: the largest centred region of the output's aspect ratio, in original pixels.
        s = max(oh / h, ow / w)
        ch, cw = min(h, max(1, round(oh / s))), min(w, max(1, round(ow / s)))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return (y0, x0, y0 + ch, x0 + cw), (oh, ow), (0, 0, 0, 0)


def check_channels(samples_per_pixel: Sequence[int], channels: int | None, what: str = "") -> None:
    """Raise a clear error when items of different channel counts meet without a policy.

    Args:
        samples_per_pixel: (0028,0002) *Samples per Pixel* of every file (from the index).
        channels: the dataset's channel policy.
        what: a short description of the collection for the message.
    """
    if channels is not None:
        return
    counts = sorted({int(s) for s in samples_per_pixel})
    if len(counts) > 1:
        raise ValueError(
            f"the collection{' ' + what if what else ''} mixes images of {counts} channels"
            " (greyscale and colour); choose a channel policy: channels=1 (colour becomes"
            " luma) or channels=3 (grey is repeated)"
        )


def to_original(points: torch.Tensor, item: Mapping[str, Any]) -> torch.Tensor:
    """Map (..., 2) (y, x) points of a resized item back to the original image's pixels.

    Boxes map corner by corner: pass (..., 2, 2) [(y0, x0), (y1, x1)]. Works on one item
    or a batch (``item`` a batch dict: the geometry is (B, ...) and ``points`` (B, ..., 2)).
    Continuous coordinates, pixel ``i`` spanning ``[i, i + 1)``; points in the padding map
    outside the image.

    Example:
        >>> policy = SizePolicy((50, 50), "letterbox")
        >>> item = policy({"image": torch.zeros(1, 100, 50, dtype=torch.int16)})
        >>> to_original(torch.tensor([[25.0, 24.5]], dtype=torch.float64), item).tolist()
        [[50.0, 25.0]]
    """
    crop, scale, pad = _geometry_tensors(item, points)
    return (points - pad) / scale + crop


def to_resized(points: torch.Tensor, item: Mapping[str, Any]) -> torch.Tensor:
    """Map (..., 2) (y, x) points of the original image into the resized item (inverse of
    :func:`to_original`)."""
    crop, scale, pad = _geometry_tensors(item, points)
    return (points - crop) * scale + pad


def _geometry_tensors(
    item: Mapping[str, Any], points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if SCALE not in item:
        raise ValueError("the item carries no geometry (it was not resized: no size= policy)")
    dtype = points.dtype if points.is_floating_point() else torch.float64
    scale = torch.as_tensor(item[SCALE]).to(points.device, dtype)
    crop = torch.as_tensor(item[CROP])[..., :2].to(points.device, dtype)
    pad = torch.as_tensor(item[PAD])[..., :2].to(points.device, dtype)
    # A batch's (B, 2) geometry broadcasts over the points between B and the last axis.
    extra = points.ndim - scale.ndim
    if scale.ndim == 2 and extra > 0:
        shape = (scale.shape[0],) + (1,) * extra + (2,)
        scale, crop, pad = scale.reshape(shape), crop.reshape(shape), pad.reshape(shape)
    return crop, scale, pad


# --------------------------------------------------------------------------- helpers
def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        oh, ow = (int(s) for s in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or (H, W). Got: {size!r}") from None
    if oh < 1 or ow < 1:
        raise ValueError(f"size must be positive. Got: {size!r}")
    return oh, ow


def _convert_channels(image: torch.Tensor, channels: int, ybr: bool) -> tuple[torch.Tensor, bool]:
    """(image with ``channels`` channels, whether it changed). Channels are axis -3."""
    c = image.shape[-3]
    if c == channels:
        return image, False
    if channels == 3 and c == 1:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous(), True
    if channels == 1 and c == 3:
        if ybr:  # YCbCr: the Y plane is the luma already
            return image[..., :1, :, :].contiguous(), True
        weights = torch.tensor(_LUMA, dtype=torch.float32).reshape(3, 1, 1)
        luma = (_to_float32(image) * weights).sum(dim=-3, keepdim=True)
        return _round_to(luma, image.dtype), True
    raise ValueError(
        f"cannot convert {c} channels to {channels}: only 1 ↔ 3 are supported. "
        f"Got: {tuple(image.shape)}"
    )


def _to_float32(values: torch.Tensor) -> torch.Tensor:
    """float32 copy of an image. On the CPU through numpy: torch has no vectorised uint16
    conversion, and its threaded elementwise kernels stall on a busy machine, while the
    per-item work here is one single-threaded pass."""
    if values.device.type == "cpu" and not values.is_floating_point():
        return torch.from_numpy(values.numpy().astype(np.float32))
    return values.to(torch.float32)


def _round_to(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 values back in ``dtype``: rounded (half to even) and clamped into its range
    when integer."""
    if dtype.is_floating_point:
        return values.to(dtype)
    info = torch.iinfo(dtype)
    if values.device.type == "cpu":  # numpy, as in _to_float32
        arr = values.detach().numpy()
        np.rint(arr, out=arr)
        np.clip(arr, info.min, info.max, out=arr)
        return torch.from_numpy(arr.astype(torch.empty(0, dtype=dtype).numpy().dtype))
    return values.round_().clamp_(info.min, info.max).to(dtype)


def _background(image: torch.Tensor, item: Mapping[str, Any]) -> float:
    """The value padding takes: what reads as background (MONOCHROME1 is inverted)."""
    if image.numel() == 0:
        return 0.0
    if image.dtype in (torch.uint16, torch.uint32):  # no min/max kernels for these
        image = image.to(torch.int64)
    return float(image.max() if item.get(MONOCHROME1) else image.min())


def _planes(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(N, C, H, W) view for interpolate, and the leading shape to restore."""
    lead = tuple(x.shape[:-2])
    return x.reshape(1, math.prod(lead), *x.shape[-2:]), lead


def _resample_image(
    image: torch.Tensor,
    crop: tuple[int, int, int, int],
    resized: tuple[int, int],
    pad: tuple[int, int, int, int],
    fill: float,
) -> torch.Tensor:
    y0, x0, y1, x1 = crop
    region = image[..., y0:y1, x0:x1]
    if tuple(region.shape[-2:]) == resized:
        out = region
    else:
        planes, lead = _planes(_to_float32(region))
        ch, cw = region.shape[-2:]
        if resized[0] <= ch and resized[1] <= cw:
            # Both axes shrink: area averaging (every input pixel weighs in; fast).
            res = F.interpolate(planes, size=resized, mode="area")
        else:
            # Bilinear; antialiasing only acts on an axis that shrinks.
            res = F.interpolate(
                planes, size=resized, mode="bilinear", align_corners=False, antialias=True
            )
        out = _round_to(res, image.dtype).reshape(*lead, *resized)
    if any(pad):
        top, left, bottom, right = pad
        full = out.new_full(
            (*out.shape[:-2], top + resized[0] + bottom, left + resized[1] + right), fill
        )
        full[..., top : top + resized[0], left : left + resized[1]] = out
        return full
    return out.contiguous()


def _resample_mask(
    mask: torch.Tensor,
    crop: tuple[int, int, int, int],
    resized: tuple[int, int],
    pad: tuple[int, int, int, int],
) -> torch.Tensor:
    y0, x0, y1, x1 = crop
    kind = mask.dtype
    region = mask[..., y0:y1, x0:x1]
    if kind == torch.bool:  # interpolate and pad take no bool
        region = region.to(torch.uint8)
    if tuple(region.shape[-2:]) != resized:
        planes, lead = _planes(region)
        # nearest-exact: the pixel-centre convention bilinear uses (plain "nearest" is off by
        # half a pixel).
        region = F.interpolate(planes, size=resized, mode="nearest-exact").reshape(*lead, *resized)
    if any(pad):
        top, left, bottom, right = pad
        region = F.pad(region, (left, right, top, bottom))
    return region.to(kind).contiguous()


def _updated_affine(
    affine: torch.Tensor | Any,
    crop: tuple[int, int, int, int],
    scale: tuple[float, float],
    pad: tuple[int, int, int, int],
) -> torch.Tensor:
    """The 4×4 voxel → patient matrix of the resized item.

    Convention: the affine takes voxel indices (column x, row y, slice z, 1) — ITK/NIfTI
    order — to patient LPS mm, integer indices at pixel centres. A new index ``i'`` on an
    axis sits at the old continuous index ``(i' + 0.5 - pad) / s - 0.5 + crop``.
    """
    a = torch.as_tensor(affine, dtype=torch.float64)
    sy, sx = scale
    m = torch.eye(4, dtype=torch.float64)
    m[0, 0], m[0, 3] = 1 / sx, (0.5 - pad[1]) / sx - 0.5 + crop[1]
    m[1, 1], m[1, 3] = 1 / sy, (0.5 - pad[0]) / sy - 0.5 + crop[0]
    return a @ m
