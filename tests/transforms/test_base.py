"""BatchTransform: every module takes a tensor or a batch dict, and shows its arguments."""

from __future__ import annotations

import pytest
import torch

import torchdicom.transforms.functional as F
from torchdicom.transforms import (
    CropToMask,
    FreqHistNormalize,
    MaskFromBlur,
    MultiWindow,
    Rescale,
    Window,
    WindowFromHeader,
    YbrToRgb,
)
from torchdicom.transforms._base import BatchTransform


class Double(BatchTransform):
    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor

    def transform_image(self, x, batch):
        return x * self.factor


def test_tensor_in_tensor_out():
    x = torch.ones(2, 1, 4, 4)
    assert torch.equal(Double()(x), x * 2)


def test_dict_in_shallow_copy_out():
    batch = {"image": torch.ones(2, 1, 4, 4), "label": torch.arange(2), "path": ["a", "b"]}
    out = Double()(batch)
    assert out is not batch and torch.equal(out["image"], batch["image"] * 2)
    assert out["label"] is batch["label"] and out["path"] is batch["path"]
    assert torch.equal(batch["image"], torch.ones(2, 1, 4, 4))  # the input dict is untouched


def test_refusals():
    with pytest.raises(KeyError, match=r"no 'image' key. Got keys: \['label'\]"):
        Double()({"label": 1})
    with pytest.raises(TypeError, match=r"Double takes a tensor or a batch dict.*Got: list"):
        Double()([torch.ones(1, 4, 4)])


def test_extra_repr_lists_the_init_arguments():
    assert repr(Double(3.0)) == "Double(factor=3.0)"
    assert "bins=Tensor(shape=(5,))" in repr(FreqHistNormalize(bins=torch.arange(5.0)))
    assert "rescale=True" in repr(Window(400, 50, rescale=True))


@pytest.mark.parametrize(
    "module",
    [
        Rescale(),
        Window(400, 50),
        WindowFromHeader(fallback="brain"),
        MultiWindow(["brain"]),
        FreqHistNormalize(),
        MaskFromBlur("brain"),
        CropToMask(4),
        YbrToRgb(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_module_is_a_batch_transform(module):
    assert isinstance(module, BatchTransform)


def test_modules_check_their_arguments_with_the_functional_checks():
    # The same message from the function and the module: one check, in the functional layer.
    with pytest.raises(ValueError, match=r"mode must be 'fastai' or 'dicom'. Got: 'x'") as f:
        F.windowed(torch.zeros(1, 4, 4), 80, 40, mode="x")
    with pytest.raises(ValueError, match=r"mode must be 'fastai' or 'dicom'. Got: 'x'") as m:
        Window(80, 40, mode="x")
    assert str(f.value) == str(m.value)
    with pytest.raises(ValueError, match=r"size must be a positive int or \(h, w\). Got: 0"):
        CropToMask(0)
    with pytest.raises(ValueError, match=r"size must be a positive int or \(h, w\). Got: 0"):
        F.crop_resize(torch.zeros(1, 4, 4), torch.tensor([0, 0, 3, 3]), 0)
    with pytest.raises(ValueError, match=r"at least one window or the histogram channel"):
        MultiWindow([], freqhist=False)
    with pytest.raises(ValueError, match=r"at least one window or the histogram channel"):
        F.to_nchan(torch.zeros(1, 4, 4), [], bins=0)
