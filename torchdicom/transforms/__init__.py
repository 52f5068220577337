"""Batched radiology transforms: functional (``torchdicom.transforms.functional``) and modules.

Modules take and return the batch dict produced by the datasets' collate (a shallow copy with
``image`` replaced), or a bare tensor where no per-sample metadata is needed.
"""

from torchdicom.transforms import functional
from torchdicom.transforms._functional_histogram import FreqHistBins
from torchdicom.transforms._functional_intensity import DICOM_WINDOWS, dicom_windows
from torchdicom.transforms._modules_augment import AlbumentationsAdapter, DicomAugment
from torchdicom.transforms._modules_intensity import (
    FreqHistNormalize,
    MultiWindow,
    Rescale,
    Window,
    WindowFromHeader,
)
from torchdicom.transforms._modules_mask import CropToMask, MaskFromBlur, YbrToRgb

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
