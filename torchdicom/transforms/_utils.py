"""Shared argument checks and batch plumbing for the transforms (private)."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cache
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


# Fresh CPU buffers from 4 MiB up are advised onto transparent huge pages (as numpy does for its
# arrays): first-touch page faults on 4 KiB pages cost more than the arithmetic that fills them.
_HUGEPAGE_MIN_BYTES = 1 << 22
_MADV_HUGEPAGE = 14  # linux/mman.h


@cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def empty_large(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty`` for a large result or buffer that is about to be written in full.

    On Linux CPU, buffers of 4 MiB and more are advised ``MADV_HUGEPAGE`` before their first
    touch (the kernel ignores the advice where transparent huge pages are off), which makes
    faulting a fresh 128 MB ``to_nchan`` output several times cheaper. Values are unaffected.
    """
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or nbytes < _HUGEPAGE_MIN_BYTES:
        return out
    madvise = _madvise()
    if madvise is not None:
        page = 4096
        start = -(-out.data_ptr() // page) * page
        end = (out.data_ptr() + nbytes) // page * page
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: failure is harmless
    return out


def chunk_rows(rows: int, row_numel: int, device: torch.device, target: int) -> int:
    """How many rows (images) to process at once so that a chunk holds about ``target`` values.

    On CPU chunks bound the intermediates and let their buffers be reused, instead of
    whole-batch temporaries; other devices take the whole batch at once.
    """
    if device.type != "cpu":
        return max(rows, 1)
    return max(1, min(rows, target // max(row_numel, 1)))


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


def apply_to_image(
    data: Tensor | Mapping[str, Any], fn: Callable[[Tensor, Mapping[str, Any] | None], Tensor]
) -> Tensor | dict[str, Any]:
    """Run ``fn`` on a plain tensor, or on ``data["image"]`` of a batch dict.

    A dict comes back as a shallow copy with ``image`` replaced; every other key (``label``,
    ``path``, ``frame``, ``index``, meta tensors) passes through untouched.
    """
    if isinstance(data, Tensor):
        return fn(data, None)
    if isinstance(data, Mapping):
        if "image" not in data:
            raise KeyError(f"the batch dict has no 'image' key. Got keys: {sorted(data)}")
        out = dict(data)
        out["image"] = fn(data["image"], data)
        return out
    raise TypeError(
        f"expected a tensor or a batch dict with an 'image' key. Got: {type(data).__name__}"
    )


def require_key(batch: Mapping[str, Any] | None, key: str, who: str) -> Any:
    """``batch[key]``, or a ValueError that says which transform needed it."""
    if batch is None:
        raise TypeError(
            f"{who} reads '{key}' from a batch dict; pass the dict, not a bare tensor. Got: Tensor"
        )
    if key not in batch:
        raise KeyError(f"{who} needs '{key}' in the batch dict. Got keys: {sorted(batch)}")
    return batch[key]
