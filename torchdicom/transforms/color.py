"""YBR_FULL to RGB for batches of 8-bit colour frames: the function and its module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchdicom.transforms._base import BatchTransform
from torchdicom.transforms._utils import check_image, unbatch

__all__ = ["YbrToRgb", "ybr_full_to_rgb"]

# ITU-R BT.601 full range (JPEG/JFIF), the coefficients of DICOM PS3.3 C.7.6.3.1.2 YBR_FULL.
_CR_TO_R = 1.402
_CB_TO_G = -0.114 * 1.772 / 0.587
_CR_TO_G = -0.299 * 1.402 / 0.587
_CB_TO_B = 1.772


def ybr_full_to_rgb(x: Tensor) -> Tensor:
    r"""Convert YBR_FULL (Y, Cb, Cr) to RGB, rounded and clipped to [0, 255].

    ``R = Y + 1.402 (Cr - 128)``, ``G = Y - 0.3441 (Cb - 128) - 0.7141 (Cr - 128)``,
    ``B = Y + 1.772 (Cb - 128)``, computed in float32 and rounded half up — the formula of
    pydicom's ``convert_color_space(arr, "YBR_FULL", "RGB")``.

    Args:
        x: 3-channel YBR_FULL values, uint8 (or any dtype holding 0..255).

    Returns:
        RGB in ``x``'s dtype.

    Shape:
        - x: :math:`(3, H, W)` or :math:`(B, 3, H, W)`
        - output: same as ``x``

    Example:
        >>> ybr_full_to_rgb(torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)).shape
        torch.Size([2, 3, 4, 4])
    """
    xb, batched = check_image(x)
    if xb.shape[1] != 3:
        raise ValueError(f"YBR_FULL input must have 3 channels. Got: {tuple(x.shape)}")
    f = xb.to(torch.float32)
    y, cb, cr = f[:, 0], f[:, 1] - 128, f[:, 2] - 128
    rgb = torch.stack(
        [y + _CR_TO_R * cr, y + _CB_TO_G * cb + _CR_TO_G * cr, y + _CB_TO_B * cb], dim=1
    )
    out = torch.floor(rgb + 0.5).clamp_(0, 255)
    return unbatch(
        out if xb.is_floating_point() and xb.dtype == torch.float32 else out.to(xb.dtype), batched
    )


class YbrToRgb(BatchTransform):
    r"""YBR_FULL → RGB on 8-bit colour batches (:func:`ybr_full_to_rgb`).

    Shape:
        - image: :math:`(B, 3, H, W)` → same shape and dtype

    Example:
        >>> YbrToRgb()(torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)).shape
        torch.Size([2, 3, 4, 4])
    """

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        return ybr_full_to_rgb(x)
