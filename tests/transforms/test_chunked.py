"""The CPU chunk loop (a few images at a time) against the per-image numpy references.

The production chunk holds about 2**19+ values, so the small images of these tests would all
land in one chunk: the fixture shrinks it to two images (and to one) so that chunk boundaries,
a last partial chunk, and chunks that take different routes are all exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchdicom.transforms.functional as F
import torchdicom.transforms.histogram as H
from torchdicom.transforms import FreqHistBins

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
    # A NaN intercept (the file had none) leaves the pair out: slope 1, intercept 0 (as pydicom).
    missing = np.isnan(intercept.numpy()).reshape(5, 1, 1, 1)
    ref = x.numpy().astype(np.float32) * np.where(missing, np.float32(1), np.float32(slope))
    ref = ref + np.nan_to_num(intercept.numpy(), nan=0.0).reshape(5, 1, 1, 1)
    np.testing.assert_array_equal(out.numpy(), ref)
