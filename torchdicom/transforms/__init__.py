"""Batched radiology transforms: one topic per file, each function beside its module.

- :mod:`~torchdicom.transforms.intensity`: rescale to HU, MONOCHROME1 inversion, windowing
  (:class:`Rescale`, :class:`Window`, :class:`WindowFromHeader`)
- :mod:`~torchdicom.transforms.histogram`: frequency-histogram bins and scaling
  (:class:`FreqHistNormalize`); :mod:`~torchdicom.transforms.dataset_bins`: bins over a dataset
- :mod:`~torchdicom.transforms.channels`: window / histogram channel stacks (:class:`MultiWindow`)
- :mod:`~torchdicom.transforms.mask`: blurs, foreground masks, crops (:class:`MaskFromBlur`,
  :class:`CropToMask`)
- :mod:`~torchdicom.transforms.color`: YBR_FULL → RGB (:class:`YbrToRgb`)
- :mod:`~torchdicom.transforms.augment`: kornia and albumentations augmentation

The functions are gathered in :mod:`torchdicom.transforms.functional`. Modules take and return
the batch dict produced by the datasets' collate (a shallow copy with ``image`` replaced), or a
bare tensor where no per-sample metadata is needed.
"""

from torchdicom.transforms import functional
from torchdicom.transforms.augment import AlbumentationsAdapter, DicomAugment
from torchdicom.transforms.channels import MultiWindow
from torchdicom.transforms.color import YbrToRgb
from torchdicom.transforms.histogram import FreqHistBins, FreqHistNormalize
from torchdicom.transforms.intensity import (
    DICOM_WINDOWS,
    Rescale,
    Window,
    WindowFromHeader,
    dicom_windows,
)
from torchdicom.transforms.mask import CropToMask, MaskFromBlur

__all__ = [
    "DICOM_WINDOWS",
    "AlbumentationsAdapter",
    "CropToMask",
    "DicomAugment",
    "FreqHistBins",
    "FreqHistNormalize",
    "MaskFromBlur",
    "MultiWindow",
    "Rescale",
    "Window",
    "WindowFromHeader",
    "YbrToRgb",
    "dicom_windows",
    "functional",
]
