"""The CPU runtime shared by the loader and the transforms (torchdicom/_runtime.py).

The thread pool (:func:`run_in_slices`), the recycling result pool (:func:`empty_large`,
:class:`_BufferPool`) and the batch buffers (:func:`batch_buffer`, :func:`whole_buffer`).
"""

from __future__ import annotations

import pytest
import torch

from torchdicom._runtime import (
    _POOL,
    _BufferPool,
    batch_buffer,
    empty_large,
    run_in_slices,
    whole_buffer,
)


def test_run_in_slices_waits_for_every_slice_and_reraises():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    done = []

    def fn(start, stop):
        done.append((start, stop))
        if start == 0:
            raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            run_in_slices(8, fn, 1 << 20)
    finally:
        torch.set_num_threads(before)
    assert sorted(done) == [(0, 4), (4, 8)]


def test_run_in_slices_keeps_small_jobs_on_the_calling_thread():
    done = []
    run_in_slices(8, lambda start, stop: done.append((start, stop)), 16)
    assert done == [(0, 8)]


def test_batch_buffer_and_whole_buffer():
    like = torch.zeros(1, 4, 4, dtype=torch.int16)
    buffer = batch_buffer(like, 3)
    assert buffer.shape == (3, 1, 4, 4) and buffer.dtype == torch.int16
    padded = batch_buffer(like, 2, (1, 6, 5))
    assert padded.shape == (2, 1, 6, 5)
    # The slots of one buffer, in order, are that buffer; anything else is not.
    slots = list(buffer.unbind(0))
    whole = whole_buffer(slots)
    assert (
        whole is not None and whole.data_ptr() == buffer.data_ptr() and whole.shape == buffer.shape
    )
    assert whole_buffer(slots[::-1]) is None
    assert whole_buffer(slots[:2]) is None
    assert whole_buffer([torch.zeros(1, 4, 4, dtype=torch.int16) for _ in range(3)]) is None


def test_empty_large():
    cpu = torch.device("cpu")
    big = empty_large((3, 1 << 20), torch.float32, cpu)  # 12 MiB: from the recycling pool
    big.fill_(2.0)
    assert (
        big.shape == (3, 1 << 20) and big.dtype == torch.float32 and float(big.sum()) == 6 * 2**20
    )
    small = empty_large((4,), torch.int32, cpu)
    assert small.shape == (4,) and small.dtype == torch.int32


class TestBufferPool:
    SHAPE = (2, 1 << 20)  # 8 MiB of float32: pooled

    def _take(self):
        return empty_large(self.SHAPE, torch.float32, torch.device("cpu"))

    def test_memory_is_reused_only_after_every_reference_is_gone(self):
        _POOL.clear()
        a = self._take()
        ptr = a.data_ptr()
        b = self._take()
        assert b.data_ptr() != ptr  # a is alive
        row = a[1]
        storage = b.untyped_storage()
        b_ptr = storage.data_ptr()
        del a, b
        c = self._take()
        d = self._take()
        # a's slab is kept alive by its view `row`, b's by its storage: neither is reused.
        assert {c.data_ptr(), d.data_ptr()}.isdisjoint({ptr, b_ptr})
        row.fill_(7.0)
        assert float(row.sum()) == 7.0 * (1 << 20)
        del row, storage
        e = self._take()
        assert e.data_ptr() in (ptr, b_ptr)  # a freed slab, while c and d stay busy

    def test_reused_memory_is_the_freed_buffer(self):
        _POOL.clear()
        a = self._take()
        ptr = a.data_ptr()
        del a
        assert self._take().data_ptr() == ptr

    def test_numpy_and_dtype_views_keep_the_slab(self):
        _POOL.clear()
        a = self._take()
        ptr = a.data_ptr()
        as_numpy = a.numpy()
        as_int = a.view(torch.int32)
        del a
        b = self._take()
        assert b.data_ptr() != ptr
        del as_numpy, b
        c = self._take()
        assert c.data_ptr() != ptr  # as_int still holds it
        del as_int, c

    def test_bounded(self):
        pool = _BufferPool(max_bytes=3 << 22, max_slabs=2)
        held = [pool.take(1 << 22) for _ in range(4)]  # all busy: the last two are untracked
        assert len(pool._slabs) == 2
        del held
        pool.take(1 << 23)  # frees room by dropping idle slabs
        assert pool._total() <= 3 << 22 and len(pool._slabs) <= 2

    def test_small_and_non_cpu_requests_bypass_the_pool(self):
        _POOL.clear()
        small = empty_large((8,), torch.float64, torch.device("cpu"))
        assert small.shape == (8,) and small.dtype == torch.float64
        assert _POOL._slabs == []

    def test_size_from_the_environment(self, monkeypatch):
        import torchdicom._runtime as U

        monkeypatch.setenv("TORCHDICOM_CPU_POOL_MB", "64")
        assert U._pool_bytes() == 64 << 20
        monkeypatch.setenv("TORCHDICOM_CPU_POOL_MB", "0")
        off = _BufferPool(U._pool_bytes(), 8)
        a = off.take(1 << 22)
        del a
        assert off._slabs == []  # nothing kept: every buffer is fresh memory
        monkeypatch.setenv("TORCHDICOM_CPU_POOL_MB", "lots")
        with pytest.raises(ValueError, match="TORCHDICOM_CPU_POOL_MB"):
            U._pool_bytes()
