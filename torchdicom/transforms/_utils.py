"""Argument checks and per-sample parameters shared by the functional transforms (private)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []

Param = float | int | Tensor


def check_image(x: Any, name: str = "x") -> tuple[Tensor, bool]:
    """Check that ``x`` is a (C, H, W) or (B, C, H, W) real tensor; return it as (B, C, H, W).

    Returns:
        The 4-D view and whether the input already had a batch dimension.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor. Got: {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} must have shape (C, H, W) or (B, C, H, W). Got: {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must have an integer or floating dtype. Got: {x.dtype}")
    return (x if x.dim() == 4 else x.unsqueeze(0)), x.dim() == 4


def unbatch(y: Tensor, batched: bool) -> Tensor:
    """Undo the batch dimension :func:`check_image` added."""
    return y if batched else y.squeeze(0)


def float_dtype(x: Tensor) -> torch.dtype:
    """The dtype results are computed and returned in.

    float64 stays float64 (so gradcheck and double-precision users keep their precision); every
    other dtype (integers, float16, bfloat16, float32) goes to float32, because HU values near
    ±3000 lose whole units in half precision.
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def chunk_images(count: int, image_numel: int, device: torch.device, target: int) -> int:
    """How many of ``count`` images to process at once so that a chunk holds about ``target`` values.

    On CPU chunks bound the intermediates and let their buffers be reused, instead of
    whole-batch temporaries; other devices take the whole batch at once.
    """
    if device.type != "cpu":
        return max(count, 1)
    return max(1, min(count, target // max(image_numel, 1)))


def per_sample(
    value: Param, name: str, batch_size: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A scalar or (B,) parameter as a (B, 1, 1, 1) tensor on ``device`` with ``dtype``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(
            f"{name} must be a number or a tensor of shape (B,). Got: {type(value).__name__}"
        )
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch_size)
        elif value.dim() != 1 or value.shape[0] != batch_size:
            raise ValueError(
                f"{name} must be a number or a tensor of shape ({batch_size},). Got: {tuple(value.shape)}"
            )
        return value.to(device=device, dtype=dtype).view(-1, 1, 1, 1)
    return torch.full((batch_size, 1, 1, 1), float(value), device=device, dtype=dtype)
