"""nn.Module wrappers for foreground masks, mask crops and YBR→RGB."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from torchdicom.transforms._functional_color import ybr_full_to_rgb
from torchdicom.transforms._functional_intensity import WindowSpec, resolve_window
from torchdicom.transforms._functional_mask import crop_resize, mask2bbox, mask_from_blur
from torchdicom.transforms._utils import apply_to_image, require_key

__all__ = ["CropToMask", "MaskFromBlur", "YbrToRgb"]

Batch = Tensor | Mapping[str, Any]


class MaskFromBlur(nn.Module):
    r"""Foreground mask from a blurred window (:func:`mask_from_blur`).

    On a batch dict the image is kept and the mask is stored under ``key``; on a bare tensor
    the mask is returned.

    Args:
        window: :data:`DICOM_WINDOWS` name or ``(width, level)``.
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
        key: str = "mask",
    ) -> None:
        super().__init__()
        self.window = resolve_window(window)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0. Got: {sigma!r}")
        self.sigma, self.thresh, self.remove_max, self.key = sigma, thresh, remove_max, key

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        if isinstance(data, Tensor):
            return mask_from_blur(data, self.window, self.sigma, self.thresh, self.remove_max)
        image = require_key(data, "image", "MaskFromBlur")
        out = dict(data)
        out[self.key] = mask_from_blur(image, self.window, self.sigma, self.thresh, self.remove_max)
        return out

    def extra_repr(self) -> str:
        return f"window={self.window}, sigma={self.sigma}, thresh={self.thresh}, remove_max={self.remove_max}"


class CropToMask(nn.Module):
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

    def __init__(self, size: int | tuple[int, int], key: str = "mask") -> None:
        super().__init__()
        out_size = (
            (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
        )
        if len(out_size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in out_size
        ):
            raise ValueError(f"size must be a positive int or (h, w). Got: {size!r}")
        self.size, self.key = out_size, key

    def forward(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise TypeError(
                f"CropToMask needs a batch dict with 'image' and '{self.key}'. Got: {type(data).__name__}"
            )
        mask = require_key(data, self.key, "CropToMask")
        boxes = mask2bbox(mask)
        out = apply_to_image(data, lambda x, _: crop_resize(x, boxes, self.size))
        assert isinstance(out, dict)
        cropped = crop_resize(mask.to(torch.float32), boxes, self.size, mode="nearest")
        out[self.key] = cropped > 0.5 if mask.dtype == torch.bool else cropped.to(mask.dtype)
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, key={self.key!r}"


class YbrToRgb(nn.Module):
    r"""YBR_FULL → RGB on 8-bit colour batches (:func:`ybr_full_to_rgb`).

    Shape:
        - image: :math:`(B, 3, H, W)` → same shape and dtype

    Example:
        >>> YbrToRgb()(torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)).shape
        torch.Size([2, 3, 4, 4])
    """

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        return apply_to_image(data, lambda x, _: ybr_full_to_rgb(x))
