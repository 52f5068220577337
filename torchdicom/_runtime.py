"""The CPU runtime shared by the loader and the transforms: a thread pool, a result pool, batch buffers.

Both floors above — ``data`` (reading a batch's pixels into one buffer) and ``transforms`` (the
fused kernels, their batch-sized results) — run on the same few threads and recycle the same
large buffers, so those live here, on the ground floor, importing nothing of the package.

- :func:`run_in_slices`: a callable over contiguous slices of ``range(count)``, on a per-process
  pool of threads (the work must release the GIL to gain anything: numba kernels, ``pread``).
- :func:`empty_large`: ``torch.empty`` whose large CPU results recycle the memory of earlier
  ones (:class:`_BufferPool`).
- :func:`batch_buffer`: the (B, ...) output of a stack, in shared memory inside a DataLoader
  worker; :func:`whole_buffer` recognises a list of tensors that already are one.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["batch_buffer", "empty_large", "run_in_slices", "whole_buffer"]


# --------------------------------------------------------------------------- threads
_executor_pool: ThreadPoolExecutor | None = None
_executor_pid = -1
_executor_lock = threading.Lock()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _executor(workers: int) -> ThreadPoolExecutor:
    # One pool per process: a pool inherited through fork (DataLoader workers) has no threads
    # behind it in the child, so a child makes its own.
    global _executor_pool, _executor_pid
    with _executor_lock:
        if (
            _executor_pool is None
            or _executor_pid != os.getpid()
            or _executor_pool._max_workers < workers
        ):
            _executor_pool = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="torchdicom"
            )
            _executor_pid = os.getpid()
        return _executor_pool


def run_in_slices(count: int, fn: Callable[[int, int], None], item_numel: int) -> None:
    """Call ``fn(start, stop)`` over contiguous slices of ``range(count)``, in parallel.

    ``count`` items (images of a batch, files of a read) of about ``item_numel`` values each
    are split into one slice per thread (``torch.get_num_threads()``); the calling thread takes
    the first. Small jobs (under about a quarter of a 512 x 512 image per thread) run on the
    calling thread alone: handing them to the pool would cost more than it saves.

    Raises:
        The first exception any slice raised, once every slice has finished (they write into
        shared output).
    """
    threads = min(_threads(), count, max(1, count * item_numel // (1 << 16)))
    if threads <= 1:
        fn(0, count)
        return
    bounds = [count * t // threads for t in range(threads + 1)]
    pool = _executor(threads - 1)
    futures = [pool.submit(fn, bounds[t], bounds[t + 1]) for t in range(1, threads)]
    error: BaseException | None = None
    try:
        fn(bounds[0], bounds[1])
    except BaseException as exc:  # still wait for the others: they write into shared output
        error = exc
    for future in futures:
        try:
            future.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


# --------------------------------------------------------------------------- result pool
# CPU results from 4 MiB up come from the recycling pool below.
_POOL_MIN_BYTES = 1 << 22


class _BufferPool:
    """Recycles the memory of large CPU results once nothing references them any more.

    Why: a fresh batch-sized buffer costs page faults (the kernel zeroes every page on first
    touch) that take as long as the transform that fills it; a training loop allocates the
    same sizes batch after batch, freeing the previous batch's meanwhile. This is the CPU
    counterpart of torch's CUDA caching allocator, for the package's own results only.

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


def empty_large(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
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


# --------------------------------------------------------------------------- batch buffers
def batch_buffer(
    like: torch.Tensor, batch: int, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The (B, ...) output of a stack of ``batch`` tensors like ``like``; in shared memory
    inside a DataLoader worker.

    A worker's batch travels to the main process through shared memory: built
    there directly (as torch's default_collate does), the batch is not copied
    again on its way, which for 32 CT slices saves a 16 MB copy per batch.
    Outside workers, CPU batches come from the recycling pool (:func:`empty_large`):
    the pages of an earlier, freed batch are written again instead of faulting in fresh ones.
    """
    shape = tuple(like.shape) if shape is None else shape
    if get_worker_info() is None:
        return empty_large((batch, *shape), like.dtype, like.device)
    numel = batch * math.prod(shape)
    storage = like.untyped_storage()._new_shared(numel * like.element_size(), device=like.device)
    return like.new_empty(0).set_(storage, 0, (batch, *shape))


def whole_buffer(values: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The (B, ...) tensor whose slots the ``values`` are, in order and covering all of it.

    A dataset that reads a batch's images into one :func:`batch_buffer` hands out views of
    it; stacking them would copy it into an identical one. None for anything else.
    """
    first = values[0]
    if first.device.type != "cpu":
        return None
    storage = first.untyped_storage()
    nbytes = first.numel() * first.element_size()
    base = storage.data_ptr()
    if nbytes == 0 or storage.nbytes() != nbytes * len(values):
        return None
    for k, v in enumerate(values):
        if (
            v.dtype != first.dtype
            or v.shape != first.shape
            or not v.is_contiguous()
            or v.untyped_storage().data_ptr() != base
            or v.data_ptr() != base + k * nbytes
        ):
            return None
    return first.new_empty(0).set_(storage, 0, (len(values), *first.shape))
