from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

import torchdicom.transforms.functional as F
from torchdicom.transforms import DICOM_WINDOWS, Rescale, Window, dicom_windows

from ._reference import ref_windowed, synthetic_ct

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class TestWindowsTable:
    def test_values_pinned(self):
        expected = {
            "brain": (80, 40),
            "subdural": (254, 100),
            "stroke": (8, 32),
            "brain_bone": (2800, 600),
            "brain_soft": (375, 40),
            "lungs": (1500, -600),
            "mediastinum": (350, 50),
            "abdomen_soft": (400, 50),
            "liver": (150, 30),
            "spine_soft": (250, 50),
            "spine_bone": (1800, 400),
        }
        for name, value in expected.items():
            assert DICOM_WINDOWS[name] == value
        assert dicom_windows is DICOM_WINDOWS


class TestRescale:
    def test_values(self):
        x = torch.tensor([[[[0, 1024, 2048]]]], dtype=torch.int16)
        out = F.rescale(x, 1.0, -1024.0)
        assert out.dtype == torch.float32
        assert out.flatten().tolist() == [-1024.0, 0.0, 1024.0]

    def test_per_sample_and_nan(self):
        x = torch.full((3, 1, 2, 2), 10, dtype=torch.uint16)
        out = F.rescale(
            x, torch.tensor([2.0, float("nan"), 0.5]), torch.tensor([1.0, 5.0, float("nan")])
        )
        # Either value missing (NaN) leaves the pair out, as pydicom's apply_modality_lut.
        assert out[:, 0, 0, 0].tolist() == [21.0, 10.0, 10.0]

    def test_does_not_modify_float_input(self):
        x = torch.ones(1, 2, 2)
        F.rescale(x, 2.0, 1.0)
        assert torch.equal(x, torch.ones(1, 2, 2))

    def test_exceptions(self):
        with pytest.raises(TypeError, match=r"Got: list"):
            F.rescale([1, 2], 1.0, 0.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"Got: \(2, 2\)"):
            F.rescale(torch.zeros(2, 2), 1.0, 0.0)
        with pytest.raises(ValueError, match=r"Got: \(3,\)"):
            F.rescale(torch.zeros(2, 1, 2, 2), torch.ones(3), 0.0)

    def test_real_ct(self):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        stored = torch.from_numpy(ds.pixel_array.astype(np.int16))[None]
        out = F.rescale(stored, float(ds.RescaleSlope), float(ds.RescaleIntercept))
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(out[0].numpy(), expected.astype(np.float32))

    def test_gradcheck(self):
        x = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda t: F.rescale(t, torch.tensor([2.0, 3.0]), -1.0), (x,)
        )


class TestInvertMonochrome1:
    def test_unsigned(self):
        x = torch.tensor([[[[0, 1, 4095]]]], dtype=torch.uint16)
        assert F.invert_monochrome1(x, 12).flatten().tolist() == [4095, 4094, 0]

    def test_signed(self):
        x = torch.tensor([[[[-2048, 0, 2047]]]], dtype=torch.int16)
        assert F.invert_monochrome1(x, 12).flatten().tolist() == [2047, -1, -2048]

    def test_per_sample_flags(self):
        x = torch.full((2, 1, 1, 1), 10, dtype=torch.uint8)
        out = F.invert_monochrome1(x, torch.tensor([8, 8]), apply=torch.tensor([True, False]))
        assert out.flatten().tolist() == [245, 10]
        assert out.dtype == torch.uint8

    def test_bad_bits(self):
        with pytest.raises(ValueError, match=r"Got:"):
            F.invert_monochrome1(torch.zeros(1, 1, 1), 0)


class TestWindowed:
    @pytest.mark.parametrize(
        ("width", "level", "x", "expected"),
        [
            (80, 40, [-1000, 0, 40, 80, 1000], [0.0, 0.0, 0.5, 1.0, 1.0]),
            # odd width: 81 // 2 == 40, same bounds as 80
            (81, 40, [0, 40, 80], [0.0, 0.5, 1.0]),
            # negative level: lungs, lo = -1350, hi = 150
            (1500, -600, [-1350, -600, 150, -2000], [0.0, 0.5, 1.0, 0.0]),
            (5, 0, [-3, -2, -1, 0, 2, 3], [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]),
        ],
    )
    def test_hand_values(self, width, level, x, expected):
        out = F.windowed(torch.tensor(x, dtype=torch.float32).view(1, 1, -1), width, level)
        assert out.flatten().tolist() == pytest.approx(expected)

    def test_matches_reference_and_int_float_agree(self):
        x = synthetic_ct().astype(np.int16) - 1024
        for width, level in DICOM_WINDOWS.values():
            ref = ref_windowed(x.astype(np.float32), width, level)
            np.testing.assert_array_equal(
                F.windowed(torch.from_numpy(x), width, level).numpy(), ref
            )
            np.testing.assert_array_equal(
                F.windowed(torch.from_numpy(x).float(), width, level).numpy(), ref
            )

    def test_dicom_mode(self):
        # PS3.3 C.11.2.1.2.1: c=40, w=80 -> 0 for x <= 0, 1 for x > 79, linear between
        x = torch.tensor([0.0, 0.5, 39.5, 79.0, 79.5]).view(1, 1, -1)
        out = F.windowed(x, 80, 40, mode="dicom").flatten()
        assert out.tolist() == pytest.approx([0.0, 0.5 / 79, 0.5, 1.0, 1.0])
        step = F.windowed(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, -1), 1, 0.5, mode="dicom")
        assert step.flatten().tolist() == [0.0, 0.0, 1.0]

    def test_properties(self):
        x = torch.linspace(-3000, 3000, 1001).view(1, 1, 1, -1)
        out = F.windowed(x, 350, 50)
        assert out.min() >= 0 and out.max() <= 1
        assert bool((out.diff(dim=-1) >= 0).all())

    def test_batch_equals_stacked_and_per_sample(self):
        x = torch.from_numpy(synthetic_ct(3)).float() - 1024
        widths, levels = torch.tensor([80.0, 1500.0, 400.0]), torch.tensor([40.0, -600.0, 50.0])
        batched = F.windowed(x, widths, levels)
        single = torch.stack(
            [F.windowed(x[i], float(widths[i]), float(levels[i])) for i in range(3)]
        )
        assert torch.equal(batched, single)

    def test_empty_and_noncontiguous(self):
        assert F.windowed(torch.zeros(0, 1, 4, 4), 80, 40).shape == (0, 1, 4, 4)
        x = torch.randn(2, 1, 8, 8).mul(500).transpose(-1, -2)
        assert torch.equal(F.windowed(x, 80, 40), F.windowed(x.contiguous(), 80, 40))

    def test_exceptions(self):
        with pytest.raises(ValueError, match=r"width must be >= 2.*Got: \[1.0\]"):
            F.windowed(torch.zeros(1, 1, 1), 1, 0)
        with pytest.raises(ValueError, match=r"mode must be.*Got: 'x'"):
            F.windowed(torch.zeros(1, 1, 1), 80, 40, mode="x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"Got: bool"):
            F.windowed(torch.zeros(1, 1, 1), True, 40)  # type: ignore[arg-type]

    def test_gradcheck(self):
        x = (torch.rand(2, 1, 3, 3, dtype=torch.float64) * 60 + 10).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: F.windowed(t, 80, 40), (x,))
        assert torch.autograd.gradcheck(lambda t: F.windowed(t, 80, 40, mode="dicom"), (x,))

    def test_window_from_header(self):
        x = torch.zeros(2, 1, 2, 2)
        centre, width = torch.tensor([40.0, float("nan")]), torch.tensor([80.0, float("nan")])
        with pytest.raises(ValueError, match=r"fallback.*Got: missing for samples \[1\]"):
            F.window_from_header(x, centre, width)
        out = F.window_from_header(x, centre, width, fallback=(400, 50))
        assert out[:, 0, 0, 0].tolist() == pytest.approx([0.0, 150 / 400])

    def test_pct_in_window(self):
        x = torch.tensor([[[[0.0, 40.0, 80.0, 81.0]]], [[[-1000.0] * 4]]])
        assert F.pct_in_window(x, "brain").tolist() == [0.75, 0.0]
        assert F.pct_in_window(x[0], (80, 40)).shape == ()


class TestModules:
    def test_rescale_module_equals_functional(self):
        x = torch.from_numpy(synthetic_ct(2))
        batch = {
            "image": x,
            "slope": torch.tensor([1.0, float("nan")]),
            "intercept": torch.tensor([-1024.0, -1024.0]),
            "label": ["a", "b"],
        }
        out = Rescale()(batch)
        assert out["label"] is batch["label"] and out["image"] is not x
        # The second sample has no slope: its intercept is not applied alone.
        expected = F.rescale(x, torch.tensor([1.0, 1.0]), torch.tensor([-1024.0, 0.0]))
        assert torch.equal(out["image"], expected)
        assert torch.equal(Rescale(1.0, -1024.0)(x), F.rescale(x, 1.0, -1024.0))

    def test_rescale_monochrome1_mirrors_window(self):
        x = torch.tensor([[[[100, 200]]], [[[100, 200]]]], dtype=torch.uint16)
        batch = {
            "image": x,
            "slope": torch.ones(2),
            "intercept": torch.zeros(2),
            "window_center": torch.tensor([150.0, 150.0]),
            "window_width": torch.tensor([100.0, 100.0]),
            "monochrome1": torch.tensor([True, False]),
            "bits_stored": torch.tensor([12, 12]),
        }
        out = Rescale()(batch)
        assert out["image"][0].flatten().tolist() == [3995.0, 3895.0]
        assert out["window_center"].tolist() == [4095.0 - 150.0, 150.0]
        shown = Window.from_header()(out)["image"]
        # inverted sample: low stored value now bright; the plain one unchanged
        assert shown[0].flatten().tolist() == [1.0, 0.0]
        assert shown[1].flatten().tolist() == [0.0, 1.0]

    def test_window_modules(self):
        x = torch.randn(2, 1, 4, 4) * 300
        assert torch.equal(Window.preset("brain")(x), F.windowed(x, 80, 40))
        with pytest.raises(ValueError, match=r"unknown window name.*Got: 'nope'"):
            Window.preset("nope")
        with pytest.raises(ValueError, match=r"Got: 1"):
            Window(1, 0)
        with pytest.raises(TypeError, match=r"Got: Tensor"):
            Window.from_header()(x)


@pytest.mark.cuda
@cuda
def test_cuda_window_rescale_match_cpu():
    x = torch.from_numpy(synthetic_ct(2))
    hu = F.rescale(x.cuda(), torch.tensor([1.0, 1.0]), -1024.0)
    assert hu.device.type == "cuda"
    torch.testing.assert_close(
        F.windowed(hu, 400, 50).cpu(), F.windowed(F.rescale(x, 1.0, -1024.0), 400, 50)
    )


class TestWindowFusedRescale:
    def _batch(self, monochrome1=None):
        x = torch.from_numpy(synthetic_ct(4, 16))
        batch = {
            "image": x,
            "slope": torch.tensor([1.0, 2.0, float("nan"), 0.5]),
            "intercept": torch.tensor([-1024.0, -2048.0, 0.0, float("nan")]),
            "bits_stored": torch.full((4,), 12),
            "label": torch.arange(4),
        }
        if monochrome1 is not None:
            batch["monochrome1"] = torch.tensor(monochrome1)
        return batch

    @pytest.mark.parametrize("flags", [None, [False] * 4, [False, True, False, True]])
    def test_equals_rescale_then_window(self, flags):
        batch = self._batch(flags)
        fused = Window(1500, -600, rescale=True)(batch)
        two = Window(1500, -600)(Rescale()(batch))
        assert torch.equal(fused["image"], two["image"])
        assert fused["label"] is batch["label"]

    def test_preset_and_repr(self):
        w = Window.preset("lungs", rescale=True)
        assert (w.width, w.level, w.rescale) == (1500, -600, True)
        assert "rescale=True" in repr(w)

    def test_bare_tensor_is_refused(self):
        with pytest.raises(TypeError, match="batch dict"):
            Window(400, 50, rescale=True)(torch.zeros(1, 1, 4, 4))
