from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

import torchdicom.transforms.functional as F
from torchdicom.transforms import FreqHistBins, FreqHistNormalize, MultiWindow

from ._reference import ref_freqhist_bins, ref_hist_scaled, ref_windowed, synthetic_ct

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _assert_bins_equal(result: FreqHistBins, images: np.ndarray, n_bins: int = 100) -> None:
    for i, image in enumerate(images):
        ref = ref_freqhist_bins(image, n_bins)
        length = int(result.lengths[i])
        assert length == len(ref)
        np.testing.assert_array_equal(result.bins[i, :length].numpy(), ref)
        # padding repeats the last valid bin so rows stay sorted
        assert bool((result.bins[i, length:] == result.bins[i, length - 1]).all())


class TestFreqHistBins:
    @pytest.mark.parametrize("kind", ["int16", "uint16", "float_int_valued", "float", "float64"])
    def test_equals_reference(self, kind):
        raw = synthetic_ct(4, 32)
        images = {
            "int16": raw,
            "uint16": raw.astype(np.uint16),
            "float_int_valued": raw.astype(np.float32) - 1024,
            "float": raw.astype(np.float32) * 0.37 + 0.1,
            "float64": raw.astype(np.float64) * 0.37,
        }[kind]
        _assert_bins_equal(F.freqhist_bins(torch.from_numpy(images)), images)

    @pytest.mark.parametrize("n_bins", [1, 7, 100, 600])
    def test_n_bins(self, n_bins):
        images = synthetic_ct(2, 32)
        result = F.freqhist_bins(torch.from_numpy(images), n_bins=n_bins)
        assert result.bins.shape == (2, n_bins + 2)
        _assert_bins_equal(result, images, n_bins)

    @settings(max_examples=30, deadline=None)
    @given(
        st.integers(1, 3),
        st.integers(1, 20),
        st.integers(1, 20),
        st.integers(0, 2**31 - 1),
        st.sampled_from([1, 5, 50, 3000]),
    )
    def test_int_and_float_agree_property(self, batch, h, w, seed, spread):
        rng = np.random.default_rng(seed)
        images = rng.integers(-spread, spread + 1, size=(batch, 1, h, w)).astype(np.int32)
        ints = F.freqhist_bins(torch.from_numpy(images))
        floats = F.freqhist_bins(torch.from_numpy(images.astype(np.float32) + 0.5))
        _assert_bins_equal(ints, images)
        assert torch.equal(ints.lengths, floats.lengths)
        assert torch.equal(ints.bins.float() + 0.5, floats.bins)

    def test_unbatched_and_empty(self):
        image = torch.from_numpy(synthetic_ct(1, 16)[0])
        single = F.freqhist_bins(image)
        assert single.bins.dim() == 1 and single.lengths.dim() == 0
        empty = F.freqhist_bins(torch.zeros(0, 1, 4, 4))
        assert empty.bins.shape == (0, 102) and empty.lengths.shape == (0,)

    def test_noncontiguous(self):
        x = torch.from_numpy(synthetic_ct(2, 16)).transpose(-1, -2)
        assert torch.equal(F.freqhist_bins(x).bins, F.freqhist_bins(x.contiguous()).bins)

    def test_exceptions(self):
        with pytest.raises(ValueError, match=r"n_bins must be a positive int. Got: 0"):
            F.freqhist_bins(torch.zeros(1, 4, 4), n_bins=0)
        with pytest.raises(ValueError, match=r"at least one pixel. Got:"):
            F.freqhist_bins(torch.zeros(1, 0, 4))


class TestHistScaled:
    @pytest.mark.parametrize("kind", ["int16", "float_int_valued", "float", "constant"])
    def test_equals_numpy_interp(self, kind):
        raw = synthetic_ct(3, 32)
        images = {
            "int16": raw,
            "float_int_valued": raw.astype(np.float32) - 1024,
            "float": raw.astype(np.float32) * 0.37 + 0.1,
            "constant": np.full((2, 1, 8, 8), 7, np.int16),
        }[kind]
        out = F.hist_scaled(torch.from_numpy(images))
        assert out.dtype == torch.float32
        for i, image in enumerate(images):
            np.testing.assert_array_equal(out[i].numpy(), ref_hist_scaled(image))

    def test_shared_bins(self):
        images = synthetic_ct(3, 32).astype(np.float32) - 1024
        bins = np.array([-1000.0, -500.0, 0.0, 40.0, 100.0, 1000.0])
        out = F.hist_scaled(torch.from_numpy(images), bins=torch.from_numpy(bins))
        for i, image in enumerate(images):
            np.testing.assert_array_equal(out[i].numpy(), ref_hist_scaled(image, bins))

    def test_properties(self):
        x = torch.linspace(-2000, 2000, 4096).view(1, 1, 64, 64)
        out = F.hist_scaled(x)
        assert out.min() >= 0 and out.max() <= 1
        assert bool((out.flatten().diff() >= 0).all())
        batch = torch.from_numpy(synthetic_ct(3, 16))
        stacked = torch.stack([F.hist_scaled(batch[i]) for i in range(3)])
        assert torch.equal(F.hist_scaled(batch), stacked)

    def test_module_equals_functional(self):
        x = torch.from_numpy(synthetic_ct(2, 16))
        out = FreqHistNormalize()({"image": x, "label": 3})
        assert out["label"] == 3 and torch.equal(out["image"], F.hist_scaled(x))

    def test_empty(self):
        assert F.hist_scaled(torch.zeros(0, 1, 4, 4)).shape == (0, 1, 4, 4)

    def test_gradcheck(self):
        x = (torch.rand(1, 1, 3, 3, dtype=torch.float64) * 8 + 1).requires_grad_()
        bins = torch.tensor([0.0, 2.5, 5.0, 10.0], dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda t: F.hist_scaled(t, bins=bins), (x,))

    def test_exceptions(self):
        with pytest.raises(ValueError, match=r"strictly increasing. Got:"):
            F.hist_scaled(torch.zeros(1, 2, 2), bins=torch.tensor([1.0, 1.0]))
        with pytest.raises(TypeError, match=r"Got: list"):
            F.hist_scaled(torch.zeros(1, 2, 2), bins=[1.0, 2.0])  # type: ignore[arg-type]


class TestDatasetBins:
    def test_integer_exact(self):
        images = [torch.from_numpy(synthetic_ct(1, 16, seed=s)[0]) for s in range(4)]
        images.append(torch.from_numpy(synthetic_ct(1, 16, seed=9)[0] + 3000))  # widens the range
        bins = F.freqhist_bins_dataset(iter(images))
        ref = ref_freqhist_bins(np.concatenate([i.numpy().reshape(-1) for i in images]))
        np.testing.assert_array_equal(bins.numpy(), ref.astype(np.float32))

    def test_float_reservoir_exact_when_small(self):
        images = [torch.rand(1, 8, 8) for _ in range(3)]
        bins = F.freqhist_bins_dataset(images, max_samples=10_000)
        ref = ref_freqhist_bins(
            np.concatenate([i.numpy().reshape(-1) for i in images]).astype(np.float64)
        )
        np.testing.assert_allclose(bins.numpy(), ref, rtol=0, atol=1e-7)

    def test_float_reservoir_bounded(self):
        gen = torch.Generator().manual_seed(0)
        images = [torch.rand(1, 32, 32) for _ in range(8)]
        bins = F.freqhist_bins_dataset(images, n_bins=10, max_samples=512, generator=gen)
        assert bins.shape == (12,)
        assert bool((bins.diff() > 0).all())
        assert abs(float(bins[6]) - 0.55) < 0.1  # about the 55th percentile of U(0, 1)

    def test_empty(self):
        with pytest.raises(ValueError, match=r"Got: none"):
            F.freqhist_bins_dataset([])


class TestToNChan:
    def test_channels_match_parts(self):
        hu = torch.from_numpy(synthetic_ct(2, 32)).float() - 1024
        out = F.to_nchan(hu, ["brain", (1500, -600)])
        assert out.shape == (2, 3, 32, 32)
        np.testing.assert_array_equal(out[:, 0:1].numpy(), ref_windowed(hu.numpy(), 80, 40))
        np.testing.assert_array_equal(out[:, 1:2].numpy(), ref_windowed(hu.numpy(), 1500, -600))
        assert torch.equal(out[:, 2:3], F.hist_scaled(hu))
        assert F.to_nchan(hu, ["brain"], bins=0).shape == (2, 1, 32, 32)
        assert torch.equal(F.to_3chan(hu, ["brain", (1500, -600)]), out)

    def test_module(self):
        hu = torch.from_numpy(synthetic_ct(2, 16)).float() - 1024
        out = MultiWindow(["brain", "lungs", "abdomen_soft"])({"image": hu})["image"]
        assert torch.equal(out, F.to_nchan(hu, ["brain", "lungs", "abdomen_soft"]))
        assert MultiWindow(["brain"], freqhist=False)(hu).shape == (2, 1, 16, 16)

    def test_exceptions(self):
        with pytest.raises(ValueError, match=r"exactly two windows"):
            F.to_3chan(torch.zeros(1, 4, 4), ["brain"])
        with pytest.raises(TypeError, match=r"window.*Got: 3"):
            F.to_nchan(torch.zeros(1, 4, 4), [3])  # type: ignore[list-item]

    def test_gradcheck(self):
        x = (torch.rand(1, 1, 3, 3, dtype=torch.float64) * 60 + 10).requires_grad_()
        bins = torch.tensor([0.0, 30.0, 100.0], dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda t: F.to_nchan(t, ["brain"], bins=bins), (x,))


def _pydicom_data_file(name: str) -> Path | None:
    try:
        import data_store  # pydicom-data
    except ImportError:
        return None
    path = Path(data_store.__file__).parent / "data" / name
    return path if path.exists() else None


@pytest.mark.parametrize("name", ["CT_small.dcm", "liver.dcm"])
def test_real_ct_pipeline_matches_reference(name):
    path = get_testdata_file(name) if name == "CT_small.dcm" else _pydicom_data_file(name)
    if path is None:
        pytest.skip(f"{name} is not available")
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    if stored.ndim == 3:  # multi-frame: keep it small
        stored = stored[:2]
    frames = stored.reshape(-1, 1, *stored.shape[-2:])
    hu = frames.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    out = F.to_nchan(
        F.rescale(
            torch.from_numpy(frames),
            float(getattr(ds, "RescaleSlope", 1)),
            float(getattr(ds, "RescaleIntercept", 0)),
        ),
        ["brain", "abdomen_soft"],
    )
    for i in range(frames.shape[0]):
        np.testing.assert_array_equal(out[i, 0].numpy(), ref_windowed(hu[i, 0], 80, 40))
        np.testing.assert_array_equal(out[i, 2].numpy(), ref_hist_scaled(hu[i])[0])


@pytest.mark.cuda
@cuda
def test_cuda_histogram_matches_cpu():
    x = torch.from_numpy(synthetic_ct(3, 32))
    for inp in (x, x.float() * 0.37):
        cpu = F.freqhist_bins(inp)
        gpu = F.freqhist_bins(inp.cuda())
        assert gpu.bins.device.type == "cuda"
        assert torch.equal(gpu.bins.cpu(), cpu.bins) and torch.equal(gpu.lengths.cpu(), cpu.lengths)
        assert torch.equal(F.hist_scaled(inp.cuda()).cpu(), F.hist_scaled(inp))
        assert torch.equal(F.to_nchan(inp.cuda(), ["brain"]).cpu(), F.to_nchan(inp, ["brain"]))
