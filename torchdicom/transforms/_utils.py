"""Shared argument checks and batch plumbing for the transforms (private)."""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
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


# CPU results from 4 MiB up come from the recycling pool below.
_POOL_MIN_BYTES = 1 << 22


class _BufferPool:
    """Recycles the memory of large CPU results once nothing references them any more.

    Why: a fresh batch-sized buffer costs page faults (the kernel zeroes every page on first
    touch) that take as long as the transform that fills it; a training loop allocates the
    same sizes batch after batch, freeing the previous batch's meanwhile. This is the CPU
    counterpart of torch's CUDA caching allocator, for the transforms' own results only.

    Each slab is handed out as a fresh numpy view wrapped by ``torch.from_numpy``; the tensor
    (and every view or storage reference derived from it) keeps that view alive, so a slab is
    reused only after its weak reference to the view is dead. Bounded by :data:`POOL_BYTES`
    and :data:`POOL_SLABS`; busy slabs are never evicted, and a request that does not fit
    gets an untracked buffer. Tensors from it are not resizable (``resize_`` raises), like
    any ``torch.from_numpy`` tensor.
    """

    def __init__(self, max_bytes: int, max_slabs: int) -> None:
        self.max_bytes, self.max_slabs = max_bytes, max_slabs
        self._slabs: list[tuple[np.ndarray, weakref.ref[np.ndarray] | None]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` whose memory no live tensor uses."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child starts with a pool of its own
                self._slabs, self._pid = [], os.getpid()
            for k, (slab, ref) in enumerate(self._slabs):
                if slab.nbytes == nbytes and (ref is None or ref() is None):
                    del self._slabs[k]
                    return self._hand_out(slab)
            self._make_room(nbytes)
            # numpy advises huge pages itself for arrays of 4 MiB and more.
            slab = np.empty(nbytes, dtype=np.uint8)
            if len(self._slabs) < self.max_slabs and self._total() + nbytes <= self.max_bytes:
                return self._hand_out(slab)
            return slab

    def _hand_out(self, slab: np.ndarray) -> np.ndarray:
        view = slab[:]
        self._slabs.append((slab, weakref.ref(view)))  # most recently used last
        return view

    def _total(self) -> int:
        return sum(slab.nbytes for slab, _ in self._slabs)

    def _make_room(self, nbytes: int) -> None:
        # Drop free slabs, least recently used first, until the new one fits.
        k = 0
        while k < len(self._slabs) and (
            len(self._slabs) >= self.max_slabs or self._total() + nbytes > self.max_bytes
        ):
            ref = self._slabs[k][1]
            if ref is None or ref() is None:
                del self._slabs[k]
            else:
                k += 1

    def clear(self) -> None:
        with self._lock:
            self._slabs = []


def _pool_bytes() -> int:
    value = os.environ.get("TORCHDICOM_CPU_POOL_MB", "1024")
    try:
        megabytes = int(value)
    except ValueError:
        raise ValueError(
            f"TORCHDICOM_CPU_POOL_MB must be a whole number of MiB (0 turns the pool off). Got: {value!r}"
        ) from None
    return max(megabytes, 0) << 20


#: Bounds of the CPU result pool: at most this many bytes (``TORCHDICOM_CPU_POOL_MB``, default
#: 1024; 0 turns recycling off) and slabs kept for reuse (a 32-image 512 x 512 float32 batch is
#: 32 MiB; four windowed channels 128 MiB).
POOL_BYTES = _pool_bytes()
POOL_SLABS = 8
_POOL = _BufferPool(POOL_BYTES, POOL_SLABS)


def empty_large(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty`` for a large result or buffer that is about to be written in full.

    On CPU, buffers of 4 MiB and more come from a pool that recycles the memory of earlier
    results once nothing references them (see :class:`_BufferPool`): batch after batch the
    same pages are written again instead of being faulted in and zeroed anew. Fresh slabs are
    numpy arrays, which numpy advises ``MADV_HUGEPAGE`` from 4 MiB up (the kernel ignores the
    advice where transparent huge pages are off). Values are unaffected.
    """
    shape = tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if torch.device(device).type == "cpu" and nbytes >= _POOL_MIN_BYTES:
        return torch.from_numpy(_POOL.take(nbytes)).view(dtype).view(shape)
    return torch.empty(shape, dtype=dtype, device=device)


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
