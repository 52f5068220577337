"""Augmentation on batch dicts: a kornia preset for radiology, and an albumentations adapter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from torchdicom.keys import IMAGE, MASK
from torchdicom.transforms._base import BatchTransform

__all__ = ["AlbumentationsAdapter", "DicomAugment"]


class DicomAugment(BatchTransform):
    r"""Radiology augmentation for windowed batches, moving ``mask`` with ``image``.

    A :class:`kornia.augmentation.AugmentationSequential` of: horizontal flip (p=0.5), a small
    affine (±``degrees``, ±``translate``, ``scale``; p=0.5), brightness and contrast jitter in
    window space, and Gaussian noise. Geometric steps warp the image bilinearly and the mask
    with nearest neighbour using the same drawn parameters; intensity steps touch only the image.
    Expects window-space images in [0, 1] (after :class:`Window` / :class:`MultiWindow`).

    Args:
        degrees: maximum rotation in degrees.
        translate: maximum shift as a fraction of the size.
        scale: zoom range.
        brightness: additive brightness range in window units.
        contrast: contrast factor range.
        noise_std: standard deviation of the Gaussian noise (0 disables it).
        vertical_flip: also flip top/bottom (off: anatomy is rarely upside down).

    Shape:
        - image: :math:`(B, C, H, W)` float; mask: :math:`(B, S, H, W)` any dtype, kept

    Example:
        >>> batch = {"image": torch.rand(2, 1, 16, 16), "mask": torch.ones(2, 1, 16, 16, dtype=torch.bool)}
        >>> DicomAugment()(batch)["mask"].shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.05,
        scale: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.1,
        contrast: tuple[float, float] = (0.9, 1.1),
        noise_std: float = 0.02,
        vertical_flip: bool = False,
    ) -> None:
        # kornia is imported here, not at module level: it costs ~1 s that importing
        # torchdicom.transforms for windowing alone should not pay.
        from kornia import augmentation as K

        super().__init__()
        if not 0 <= translate < 1:
            raise ValueError(f"translate must be in [0, 1). Got: {translate!r}")
        if noise_std < 0 or degrees < 0 or brightness < 0:
            raise ValueError(
                f"degrees, brightness and noise_std must be >= 0. Got: {degrees!r}, {brightness!r}, {noise_std!r}"
            )
        steps: list[nn.Module] = [K.RandomHorizontalFlip(p=0.5)]
        if vertical_flip:
            steps.append(K.RandomVerticalFlip(p=0.5))
        steps += [
            K.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, p=0.5),
            # kornia's brightness factor is additive around 1: (1 - b, 1 + b) shifts by ±b.
            K.RandomBrightness(brightness=(1 - brightness, 1 + brightness), p=0.5),
            K.RandomContrast(contrast=contrast, p=0.5),
        ]
        if noise_std > 0:
            steps.append(K.RandomGaussianNoise(std=noise_std, p=0.5))
        self.degrees, self.translate, self.scale = degrees, translate, scale
        self.brightness, self.contrast, self.noise_std = brightness, contrast, noise_std
        self.vertical_flip = vertical_flip
        self.with_mask = K.AugmentationSequential(*steps, data_keys=["input", "mask"])
        self.image_only = K.AugmentationSequential(*steps, data_keys=["input"])

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        return self.image_only(x)

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        image = data[IMAGE]
        if not image.is_floating_point():
            raise TypeError(
                f"DicomAugment expects a windowed float image in [0, 1]. Got: {image.dtype}"
            )
        if image.shape[0] == 0:
            return out
        mask = data.get(MASK)
        if mask is None:
            out[IMAGE] = self.image_only(image)
            return out
        new_image, new_mask = self.with_mask(image, mask.to(image.dtype))
        out[IMAGE] = new_image
        out[MASK] = new_mask > 0.5 if mask.dtype == torch.bool else new_mask.round().to(mask.dtype)
        return out


class AlbumentationsAdapter(BatchTransform):
    r"""Apply an ``albumentations`` pipeline to one sample on the CPU.

    The sample's ``image`` (C, H, W) tensor becomes an H×W×C numpy array (and ``mask`` (1, H, W)
    or (H, W) an H×W array, (S, H, W) with S segments an H×W×S array), goes through ``transform(image=..., mask=...)``, and comes back as
    tensors in (C, H, W) / the mask's original layout. The dtype is whatever albumentations
    returns: uint8 and float32 are kept by most transforms. Use it in a Dataset (per sample,
    before collate); for batched GPU augmentation use :class:`DicomAugment`.

    Args:
        transform: an ``A.Compose`` (any callable taking ``image=``/``mask=`` and returning a dict).

    Shape:
        - image: :math:`(C, H, W)` → :math:`(C, H', W')`

    Example:
        >>> import albumentations as A
        >>> AlbumentationsAdapter(A.Compose([A.HorizontalFlip(p=1.0)]))(torch.rand(1, 8, 8)).shape
        torch.Size([1, 8, 8])
    """

    def __init__(self, transform: Callable[..., dict[str, Any]]) -> None:
        super().__init__()
        if not callable(transform):
            raise TypeError(
                f"transform must be an albumentations Compose (callable). Got: {type(transform).__name__}"
            )
        self.transform = transform

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        return self._image_back(self.transform(image=self._image_to_hwc(x))["image"], x)

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        image = data[IMAGE]
        kwargs: dict[str, np.ndarray] = {"image": self._image_to_hwc(image)}
        mask = data.get(MASK)
        if mask is not None:
            if mask.dim() not in (2, 3):
                raise ValueError(f"mask must be (S, H, W) or (H, W). Got: {tuple(mask.shape)}")
            m = mask.detach().cpu()
            m = m.to(torch.uint8) if m.dtype == torch.bool else m
            # One segment: an H×W array; several (DICOM SEG channels): H×W×S, which
            # albumentations moves through the same geometry channel by channel.
            many = mask.dim() == 3 and mask.shape[0] > 1
            kwargs["mask"] = m.permute(1, 2, 0).numpy() if many else m.reshape(m.shape[-2:]).numpy()
        result = self.transform(**kwargs)
        out = dict(data)
        out[IMAGE] = self._image_back(result["image"], image)
        if mask is not None:
            back = np.asarray(result["mask"])
            if mask.dim() == 3 and mask.shape[0] > 1:
                new_mask = torch.from_numpy(np.ascontiguousarray(back.transpose(2, 0, 1)))
            else:
                new_mask = torch.from_numpy(np.ascontiguousarray(back))
                new_mask = new_mask.reshape(*mask.shape[:-2], *new_mask.shape[-2:])
            out[MASK] = new_mask.bool() if mask.dtype == torch.bool else new_mask.to(mask.dtype)
        return out

    @staticmethod
    def _image_to_hwc(image: Tensor) -> np.ndarray:
        if not isinstance(image, Tensor) or image.dim() != 3:
            raise ValueError(
                f"AlbumentationsAdapter works on one sample (C, H, W). Got: {getattr(image, 'shape', type(image))}"
            )
        return image.detach().cpu().permute(1, 2, 0).numpy()

    @staticmethod
    def _image_back(array: np.ndarray, like: Tensor) -> Tensor:
        hwc = array if array.ndim == 3 else array[..., None]
        return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))).to(like.device)
