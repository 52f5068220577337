"""Batched radiology transforms as pure functions on tensors.

Every function takes (C, H, W) or (B, C, H, W), any integer or float dtype, on any device, and
never moves data between devices. Per-sample parameters are numbers or (B,) tensors.
"""

from torchdicom.transforms.channels import to_3chan, to_nchan
from torchdicom.transforms.color import ybr_full_to_rgb
from torchdicom.transforms.dataset_bins import freqhist_bins_dataset
from torchdicom.transforms.histogram import FreqHistBins, freqhist_bins, hist_scaled
from torchdicom.transforms.intensity import (
    DICOM_WINDOWS,
    dicom_windows,
    invert_monochrome1,
    pct_in_window,
    rescale,
    resolve_window,
    window_from_header,
    windowed,
)
from torchdicom.transforms.mask import (
    crop_resize,
    gauss_blur2d,
    mask2bbox,
    mask_from_blur,
    uniform_blur2d,
)

__all__ = [
    "DICOM_WINDOWS",
    "FreqHistBins",
    "crop_resize",
    "dicom_windows",
    "freqhist_bins",
    "freqhist_bins_dataset",
    "gauss_blur2d",
    "hist_scaled",
    "invert_monochrome1",
    "mask2bbox",
    "mask_from_blur",
    "pct_in_window",
    "rescale",
    "resolve_window",
    "to_3chan",
    "to_nchan",
    "uniform_blur2d",
    "window_from_header",
    "windowed",
    "ybr_full_to_rgb",
]
