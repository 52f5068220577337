"""Blurs, foreground masks from a blurred window, bounding boxes and crops: functions and modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchdicom.keys import IMAGE, MASK
from torchdicom.transforms._base import BatchTransform, require_key
from torchdicom.transforms._utils import check_image, float_dtype, unbatch
from torchdicom.transforms.intensity import WindowSpec, resolve_window, windowed

__all__ = [
    "CropToMask",
    "MaskFromBlur",
    "crop_resize",
    "gauss_blur2d",
    "mask2bbox",
    "mask_from_blur",
    "uniform_blur2d",
]


def _check_sigma(sigma: Any) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number. Got: {sigma!r}")


def gauss_blur2d(x: Tensor, sigma: float) -> Tensor:
    r"""Gaussian blur with the tutorial's kernel: size ``int(sigma / 4) * 2 + 1``, replicate border.

    Args:
        x: image or batch.
        sigma: standard deviation in pixels (> 0).

    Returns:
        float32 (float64 for float64 input), same shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: same as ``x``

    Example:
        >>> gauss_blur2d(torch.rand(2, 1, 32, 32), 4.0).shape
        torch.Size([2, 1, 32, 32])
    """
    xb, batched = check_image(x)
    _check_sigma(sigma)
    size = int(sigma / 4) * 2 + 1
    import kornia  # on first use: ~1 s that windowing-only users should not pay

    out = kornia.filters.gaussian_blur2d(
        xb.to(float_dtype(x)), (size, size), (float(sigma), float(sigma)), "replicate"
    )
    return unbatch(out, batched)


def uniform_blur2d(x: Tensor, size: int, border_type: str = "constant") -> Tensor:
    r"""Box blur of ``size`` × ``size`` pixels (the tutorial's ``uniform_blur2d``, zero padding).

    Args:
        x: image or batch.
        size: odd kernel size >= 1.
        border_type: kornia border mode; ``"constant"`` pads with zeros as the tutorial does.

    Returns:
        float32 (float64 for float64 input), same shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: same as ``x``

    Example:
        >>> uniform_blur2d(torch.rand(2, 1, 32, 32), 5).shape
        torch.Size([2, 1, 32, 32])
    """
    xb, batched = check_image(x)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd positive int. Got: {size!r}")
    import kornia  # on first use (see gauss_blur2d)

    out = kornia.filters.box_blur(xb.to(float_dtype(x)), (size, size), border_type=border_type)
    return unbatch(out, batched)


def mask_from_blur(
    x: Tensor, window: WindowSpec, sigma: float = 0.3, thresh: float = 0.05, remove_max: bool = True
) -> Tensor:
    r"""Foreground mask: window, blur with ``sigma × image width`` pixels, threshold.

    As the tutorial: ``p = windowed(x, *window)``; with ``remove_max`` the saturated pixels
    (``p == 1``, at or above the window top, e.g. contrast or metal) are set to 0 first; then
    ``gauss_blur2d(p, sigma * W) > thresh``.

    Args:
        x: values in HU.
        window: a :data:`DICOM_WINDOWS` name or ``(width, level)``.
        sigma: blur as a fraction of the image width.
        thresh: threshold in window units [0, 1].
        remove_max: zero saturated pixels before blurring.

    Returns:
        bool mask, same shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: same as ``x``

    Example:
        >>> mask_from_blur(torch.zeros(2, 1, 32, 32), "abdomen_soft").shape
        torch.Size([2, 1, 32, 32])
    """
    xb, batched = check_image(x)
    _check_sigma(sigma)
    width, level = resolve_window(window)
    p = windowed(xb, width, level)
    if remove_max:
        p = torch.where(p == 1, torch.zeros_like(p), p)
    return unbatch(gauss_blur2d(p, sigma * xb.shape[-1]) > thresh, batched)


def mask2bbox(mask: Tensor) -> Tensor:
    r"""Bounding box of each mask's nonzero pixels (over all channels).

    Convention: ``(x_min, y_min, x_max, y_max)``, inclusive pixel indices (the tutorial returns
    the same corners as ``[[x_min, y_min], [x_max, y_max]]``). An empty mask gives the whole
    image ``(0, 0, W - 1, H - 1)``.

    Args:
        mask: bool or numeric mask.

    Returns:
        int64 boxes.

    Shape:
        - mask: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: :math:`(4,)` or :math:`(B, 4)`

    Example:
        >>> m = torch.zeros(2, 1, 8, 8, dtype=torch.bool); m[:, :, 2:5, 3:7] = True
        >>> mask2bbox(m).shape
        torch.Size([2, 4])
    """
    if isinstance(mask, Tensor) and mask.dtype == torch.bool:
        mb, batched = check_image(mask.to(torch.uint8), "mask")
    else:
        mb, batched = check_image(mask, "mask")
    h, w = mb.shape[-2:]
    nonzero = (mb != 0).any(dim=1)
    cols, rows = nonzero.any(dim=1), nonzero.any(dim=2)  # (B, W), (B, H)

    def bounds(hits: Tensor, size: int) -> tuple[Tensor, Tensor]:
        # argmax of a 0/1 vector is its first 1; on the flipped vector, the last one.
        first = hits.to(torch.uint8).argmax(dim=1)
        last = size - 1 - hits.flip(1).to(torch.uint8).argmax(dim=1)
        empty = ~hits.any(dim=1)
        return torch.where(empty, 0, first), torch.where(empty, size - 1, last)

    x0, x1 = bounds(cols, w)
    y0, y1 = bounds(rows, h)
    empty = ~nonzero.flatten(1).any(dim=1)
    # An empty mask is the whole image in both directions, not a mix.
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    whole = torch.tensor([0, 0, w - 1, h - 1], device=boxes.device, dtype=boxes.dtype)
    boxes = torch.where(empty[:, None], whole, boxes).to(torch.int64)
    return boxes if batched else boxes[0]


def _output_size(size: Any) -> tuple[int, int]:
    """``size`` as ``(h, w)``: one positive int for a square, or two."""
    pair = (size, size) if isinstance(size, int) else size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair)
    ):
        raise ValueError(f"size must be a positive int or (h, w). Got: {size!r}")
    return pair[0], pair[1]


def crop_resize(
    x: Tensor, bboxes: Tensor, size: int | tuple[int, int], mode: str = "bilinear"
) -> Tensor:
    r"""Crop each image to its box and resize it to ``size`` (kornia ``crop_and_resize``).

    Args:
        x: image or batch (integer input is cropped as float).
        bboxes: ``(x_min, y_min, x_max, y_max)`` inclusive, as :func:`mask2bbox` returns.
        size: output ``(h, w)`` or one int for a square.
        mode: ``"bilinear"`` or ``"nearest"`` (use nearest for masks).

    Returns:
        float32 (float64 for float64 input) crops.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - bboxes: :math:`(4,)` or :math:`(B, 4)`
        - output: :math:`(C, h, w)` or :math:`(B, C, h, w)`

    Example:
        >>> crop_resize(torch.rand(2, 1, 32, 32), torch.tensor([[4, 4, 20, 24]] * 2), 16).shape
        torch.Size([2, 1, 16, 16])
    """
    xb, batched = check_image(x)
    out_size = _output_size(size)
    if not isinstance(bboxes, Tensor):
        raise TypeError(f"bboxes must be a torch.Tensor. Got: {type(bboxes).__name__}")
    boxes = bboxes if bboxes.dim() == 2 else bboxes[None]
    if boxes.shape != (xb.shape[0], 4):
        raise ValueError(f"bboxes must be ({xb.shape[0]}, 4). Got: {tuple(bboxes.shape)}")
    if xb.shape[0] == 0:
        return torch.empty((0, xb.shape[1], *out_size), dtype=float_dtype(x), device=x.device)
    dtype = float_dtype(x)
    b = boxes.to(device=xb.device, dtype=dtype)
    x0, y0, x1, y1 = b.unbind(dim=1)
    corners = torch.stack(
        [torch.stack(p, dim=1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], dim=1
    )  # (B, 4, 2): top-left, top-right, bottom-right, bottom-left
    import kornia  # on first use (see gauss_blur2d)

    out = kornia.geometry.transform.crop_and_resize(xb.to(dtype), corners, out_size, mode=mode)
    return unbatch(out, batched)


# --------------------------------------------------------------------------- modules
class MaskFromBlur(BatchTransform):
    r"""Foreground mask from a blurred window (:func:`mask_from_blur`).

    On a batch dict the image is kept and the mask is stored under ``key``; on a bare tensor
    the mask is returned.

    Args:
        window: :data:`~torchdicom.transforms.DICOM_WINDOWS` name or ``(width, level)``.
        sigma: blur as a fraction of the image width.
        thresh: threshold in window units.
        remove_max: zero saturated pixels before blurring.
        key: dict key the mask is written to.

    Shape:
        - image: :math:`(B, 1, H, W)` → mask :math:`(B, 1, H, W)` bool

    Example:
        >>> MaskFromBlur("abdomen_soft")({"image": torch.zeros(2, 1, 16, 16)})["mask"].shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        window: WindowSpec,
        sigma: float = 0.3,
        thresh: float = 0.05,
        remove_max: bool = True,
        key: str = MASK,
    ) -> None:
        super().__init__()
        self.window = resolve_window(window)
        _check_sigma(sigma)
        self.sigma, self.thresh, self.remove_max, self.key = sigma, thresh, remove_max, key

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        return mask_from_blur(x, self.window, self.sigma, self.thresh, self.remove_max)

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        out[self.key] = self.transform_image(data[IMAGE], data)
        return out


class CropToMask(BatchTransform):
    r"""Crop image (and mask) to the mask's bounding box and resize to ``size``.

    The image is resampled bilinearly, the mask with nearest neighbour (and keeps its dtype).

    Args:
        size: output ``(h, w)`` or an int for a square.
        key: dict key of the mask.

    Shape:
        - image: :math:`(B, C, H, W)` → :math:`(B, C, h, w)` float32
        - mask: :math:`(B, 1, H, W)` → :math:`(B, 1, h, w)`

    Example:
        >>> m = torch.zeros(2, 1, 16, 16, dtype=torch.bool); m[:, :, 4:12, 2:10] = True
        >>> CropToMask(8)({"image": torch.rand(2, 1, 16, 16), "mask": m})["image"].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, size: int | tuple[int, int], key: str = MASK) -> None:
        super().__init__()
        self.size, self.key = _output_size(size), key

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        mask = require_key(batch, self.key, "CropToMask")
        return crop_resize(x, mask2bbox(mask), self.size)

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        mask = require_key(data, self.key, "CropToMask")
        boxes = mask2bbox(mask)
        out = dict(data)
        out[IMAGE] = crop_resize(data[IMAGE], boxes, self.size)
        cropped = crop_resize(mask.to(torch.float32), boxes, self.size, mode="nearest")
        out[self.key] = cropped > 0.5 if mask.dtype == torch.bool else cropped.to(mask.dtype)
        return out
