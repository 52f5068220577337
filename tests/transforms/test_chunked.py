"""The CPU chunk loop (a few images at a time) against the per-image numpy references.

The production chunk holds about 2**19+ values, so the small images of these tests would all
land in one chunk: the fixture shrinks it to two images (and to one) so that chunk boundaries,
a last partial chunk, and chunks that take different routes are all exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchdicom.transforms.histogram as H
import torchdicom.transforms.functional as F
from torchdicom.transforms import FreqHistBins
from torchdicom._runtime import _POOL, _BufferPool, empty_large

from ._reference import ref_freqhist_bins, ref_hist_scaled, ref_windowed, synthetic_ct

SIZE = 16
PIXELS = SIZE * SIZE


@pytest.fixture(params=[1, 2], ids=["chunk1", "chunk2"])
def chunked(request, monkeypatch):
    """Chunks of 1 or 2 images; the batches below have 5 images (not divisible by 2)."""
    monkeypatch.setattr(H, "_CHUNK_VALUES", request.param * PIXELS)
    return request.param


def _images(kind: str) -> np.ndarray:
    raw = synthetic_ct(5, SIZE)
    if kind == "int16":
        return raw
    if kind == "uint16":
        return raw.astype(np.uint16)
    if kind == "uint8":
        return (raw // 16).clip(0, 255).astype(np.uint8)
    if kind == "int32":
        return raw.astype(np.int32) * 3 - 70000  # negative, wider than 16 bits
    if kind == "float_int_valued":
        return raw.astype(np.float32) - 1024
    if kind == "float":
        return raw.astype(np.float32) * 0.37 + 0.1
    if kind == "float64":
        return raw.astype(np.float64) - 1024
    if kind == "float16":
        return (raw.astype(np.float32) / 8).astype(np.float16)
    if kind == "mixed":
        # Integral images and one fractional image: its chunk takes the sort route.
        out = raw.astype(np.float32) - 1024
        out[3] += 0.25
        return out
    if kind == "far_ranges":
        # Rows of one chunk far apart: the chunk-wide value range is mostly empty.
        out = raw.astype(np.int32)
        out[1] += 60000
        out[4] -= 40000
        return out
    raise AssertionError(kind)


KINDS = [
    "int16",
    "uint16",
    "uint8",
    "int32",
    "float_int_valued",
    "float",
    "float64",
    "float16",
    "mixed",
    "far_ranges",
]


@pytest.mark.parametrize("kind", KINDS)
def test_freqhist_bins_chunked(chunked, kind):
    images = _images(kind)
    result = F.freqhist_bins(torch.from_numpy(images))
    assert result.bins.dtype == torch.from_numpy(images).dtype
    for i, image in enumerate(images):
        ref = ref_freqhist_bins(image)
        length = int(result.lengths[i])
        assert length == len(ref)
        np.testing.assert_array_equal(result.bins[i, :length].numpy(), ref)
        assert bool((result.bins[i, length:] == result.bins[i, length - 1]).all())


def _ref_scaled(image: np.ndarray, bins: np.ndarray | None = None) -> np.ndarray:
    if image.dtype == np.float64:  # float64 stays float64: numpy.interp's own result
        b = ref_freqhist_bins(image) if bins is None else bins
        y = np.interp(image.reshape(-1), b, np.linspace(0.0, 1.0, len(b)))
        return np.clip(y, 0, 1).reshape(image.shape)
    return ref_hist_scaled(image, bins)


@pytest.mark.parametrize("kind", KINDS)
def test_hist_scaled_chunked(chunked, kind):
    images = _images(kind)
    out = F.hist_scaled(torch.from_numpy(images))
    assert out.dtype == (torch.float64 if images.dtype == np.float64 else torch.float32)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(out[i].numpy(), _ref_scaled(image))


@pytest.mark.parametrize("kind", ["int16", "float_int_valued", "float", "mixed"])
def test_hist_scaled_given_bins_chunked(chunked, kind):
    images = _images(kind)
    x = torch.from_numpy(images)
    shared = np.array([-1000.0, -500.0, 0.0, 40.0, 100.0, 1000.0])
    out = F.hist_scaled(x, bins=torch.from_numpy(shared))
    for i, image in enumerate(images):
        np.testing.assert_array_equal(out[i].numpy(), ref_hist_scaled(image, shared))
    # Per-image bins of different lengths, padded (FreqHistBins), one row with a single bin.
    own = F.freqhist_bins(x, n_bins=7)
    lengths = own.lengths.clone()
    lengths[2] = 1
    out = F.hist_scaled(x, bins=FreqHistBins(own.bins, lengths))
    for i, image in enumerate(images):
        bins = own.bins[i, : int(lengths[i])].double().numpy()
        np.testing.assert_array_equal(out[i].numpy(), ref_hist_scaled(image, bins))


def test_chunked_equals_whole_batch(monkeypatch):
    x = torch.from_numpy(synthetic_ct(7, SIZE)).float() - 1024
    x[5] += 0.5
    whole = (F.freqhist_bins(x), F.hist_scaled(x), F.to_nchan(x, ["brain", "lungs"]))
    monkeypatch.setattr(H, "_CHUNK_VALUES", 3 * PIXELS)
    parts = (F.freqhist_bins(x), F.hist_scaled(x), F.to_nchan(x, ["brain", "lungs"]))
    assert torch.equal(whole[0].bins, parts[0].bins)
    assert torch.equal(whole[0].lengths, parts[0].lengths)
    assert torch.equal(whole[1], parts[1]) and torch.equal(whole[2], parts[2])


@pytest.mark.parametrize("kind", ["int16", "float_int_valued", "float", "mixed", "uint16"])
def test_to_nchan_chunked(chunked, kind):
    images = _images(kind)
    x = torch.from_numpy(images)
    out = F.to_nchan(x, ["brain", (1500, -600)])
    assert out.shape == (5, 3, SIZE, SIZE)
    hu = images.astype(np.float32)
    for i in range(5):
        np.testing.assert_array_equal(out[i, 0:1].numpy(), ref_windowed(hu[i], 80, 40))
        np.testing.assert_array_equal(out[i, 1:2].numpy(), ref_windowed(hu[i], 1500, -600))
        np.testing.assert_array_equal(out[i, 2:3].numpy(), ref_hist_scaled(images[i]))
    assert torch.equal(F.to_nchan(x, ["brain"], bins=0), out[:, :1])
    dicom = F.to_nchan(x, ["brain"], mode="dicom")
    assert torch.equal(dicom[:, :1], F.windowed(x, 80, 40, mode="dicom"))
    assert torch.equal(dicom[:, 1:], out[:, 2:])


def test_to_nchan_multichannel_chunked(chunked):
    x = torch.from_numpy(synthetic_ct(5, SIZE)).float().view(5, 1, SIZE, SIZE)
    x = torch.cat([x, x.flip(-1) - 1024], dim=1)  # (5, 2, H, W): channels grouped per window
    out = F.to_nchan(x, ["brain", "lungs"])
    assert out.shape == (5, 6, SIZE, SIZE)
    assert torch.equal(out[:, 0:2], F.windowed(x, 80, 40))
    assert torch.equal(out[:, 2:4], F.windowed(x, *F.DICOM_WINDOWS["lungs"]))
    assert torch.equal(out[:, 4:6], F.hist_scaled(x))


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint16, torch.uint8, torch.float32])
@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_rescale_dtypes_and_slopes(dtype, slope):
    raw = synthetic_ct(5, SIZE).astype(np.float32)
    x = torch.from_numpy(raw).to(dtype)
    intercept = torch.tensor([-1024.0, -1000.0, 0.0, 3.5, float("nan")])
    before = x.clone()
    out = F.rescale(x, slope, intercept)
    assert torch.equal(x, before)
    ref = x.numpy().astype(np.float32) * np.float32(slope)
    ref = ref + np.nan_to_num(intercept.numpy(), nan=0.0).reshape(5, 1, 1, 1)
    np.testing.assert_array_equal(out.numpy(), ref)


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
