from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from pydicom.pixels.processing import convert_color_space

import torchdicom.transforms.functional as F
from torchdicom.transforms import (
    AlbumentationsAdapter,
    CropToMask,
    DicomAugment,
    MaskFromBlur,
    YbrToRgb,
)

from ._reference import synthetic_ct


def _hu(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(synthetic_ct(batch, size)).float() - 1024


class TestMasks:
    def test_mask_from_blur_finds_body(self):
        hu = _hu()
        mask = F.mask_from_blur(hu, "abdomen_soft")
        assert mask.dtype == torch.bool and mask.shape == hu.shape
        assert bool(mask[:, 0, 16, 16].all()) and not bool(mask[:, 0, 0, 0].any())
        assert torch.equal(MaskFromBlur("abdomen_soft")({"image": hu})["mask"], mask)

    def test_remove_max_zeroes_saturated(self):
        x = torch.full((1, 1, 16, 16), 5000.0)  # everything above the window top
        assert not bool(F.mask_from_blur(x, "brain").any())
        assert bool(F.mask_from_blur(x, "brain", remove_max=False).all())

    def test_mask2bbox(self):
        m = torch.zeros(3, 1, 6, 8, dtype=torch.bool)
        m[0, 0, 1:4, 2:7] = True
        m[1, 0, 5, 0] = True
        assert F.mask2bbox(m).tolist() == [[2, 1, 6, 3], [0, 5, 0, 5], [0, 0, 7, 5]]
        assert F.mask2bbox(m[0]).tolist() == [2, 1, 6, 3]
        assert F.mask2bbox(torch.zeros(0, 1, 4, 4)).shape == (0, 4)

    def test_crop_resize_identity_box(self):
        x = torch.rand(2, 1, 8, 8)
        out = F.crop_resize(x, torch.tensor([[0, 0, 7, 7]] * 2), 8)
        torch.testing.assert_close(out, x)
        with pytest.raises(ValueError, match=r"Got: \(3, 4\)"):
            F.crop_resize(x, torch.zeros(3, 4), 4)

    def test_crop_to_mask(self):
        m = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
        m[:, :, 4:12, 2:10] = True
        out = CropToMask(8)({"image": torch.rand(2, 1, 16, 16), "mask": m, "label": 1})
        assert out["image"].shape == (2, 1, 8, 8) and out["mask"].dtype == torch.bool
        assert bool(out["mask"].all()) and out["label"] == 1

    def test_pct_and_blurs(self):
        x = torch.rand(2, 1, 16, 16)
        assert F.gauss_blur2d(x, 4.0).shape == x.shape
        box = F.uniform_blur2d(torch.ones(1, 1, 5, 5), 3)
        assert float(box[0, 0, 2, 2]) == pytest.approx(1.0) and float(
            box[0, 0, 0, 0]
        ) == pytest.approx(4 / 9)
        with pytest.raises(ValueError, match=r"Got: 2"):
            F.uniform_blur2d(x, 2)


class TestYbr:
    def test_matches_pydicom(self):
        rng = np.random.default_rng(0)
        ybr = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
        ybr[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [0, 255, 0], [255, 0, 255]]
        expected = np.stack([convert_color_space(a, "YBR_FULL", "RGB") for a in ybr])
        out = YbrToRgb()(torch.from_numpy(ybr).permute(0, 3, 1, 2))
        assert out.dtype == torch.uint8
        diff = np.abs(out.permute(0, 2, 3, 1).numpy().astype(int) - expected.astype(int))
        assert diff.max() <= 1

    def test_exceptions(self):
        with pytest.raises(ValueError, match=r"3 channels. Got: \(1, 1, 4, 4\)"):
            F.ybr_full_to_rgb(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


class TestAugment:
    def test_mask_moves_with_image(self):
        torch.manual_seed(0)
        image = torch.zeros(4, 1, 32, 32)
        image[:, :, 8:20, 4:14] = 1.0
        batch = {"image": image, "mask": image.bool(), "label": torch.arange(4)}
        out = DicomAugment(brightness=0.0, contrast=(1.0, 1.0), noise_std=0.0)(batch)
        assert out["mask"].dtype == torch.bool and out["label"] is batch["label"]
        # geometric steps are shared: the mask still marks the bright square
        assert torch.equal(out["mask"], out["image"] > 0.5) or (
            (out["mask"] != (out["image"] > 0.5)).float().mean() < 0.02
        )

    def test_image_only_and_empty(self):
        assert DicomAugment()(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)
        assert DicomAugment()({"image": torch.rand(0, 1, 16, 16)})["image"].shape == (0, 1, 16, 16)
        with pytest.raises(TypeError, match=r"Got: torch.int16"):
            DicomAugment()({"image": torch.zeros(1, 1, 4, 4, dtype=torch.int16)})

    def test_albumentations_adapter(self):
        image = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
        mask = torch.zeros(1, 4, 6, dtype=torch.bool)
        mask[0, :, 0] = True
        out = AlbumentationsAdapter(A.Compose([A.HorizontalFlip(p=1.0)]))(
            {"image": image, "mask": mask}
        )
        assert torch.equal(out["image"], image.flip(-1))
        assert torch.equal(out["mask"], mask.flip(-1))
        u8 = torch.randint(0, 255, (1, 8, 8), dtype=torch.uint8)
        assert AlbumentationsAdapter(A.Compose([A.VerticalFlip(p=1.0)]))(u8).dtype == torch.uint8

    def test_albumentations_adapter_moves_every_segment_channel(self):
        # DICOM SEG masks are (S, H, W): each segment follows the image's geometry.
        image = torch.rand(1, 6, 8)
        mask = torch.zeros(3, 6, 8, dtype=torch.uint8)
        mask[0, 0, :3] = 1
        mask[1, :, 1] = 1
        mask[2, 5, 7] = 1
        out = AlbumentationsAdapter(A.Compose([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)]))(
            {"image": image, "mask": mask}
        )
        assert out["mask"].shape == (3, 6, 8) and out["mask"].dtype == torch.uint8
        assert torch.equal(out["mask"], mask.flip(-1).flip(-2))
        assert torch.equal(out["image"], image.flip(-1).flip(-2))
        with pytest.raises(ValueError, match=r"mask must be \(S, H, W\) or \(H, W\)"):
            AlbumentationsAdapter(A.Compose([]))({"image": image, "mask": mask[None]})
