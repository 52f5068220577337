"""torchdicom: DICOM medical images as first-class PyTorch data.

Parse headers once into an index, read frames by offset, and do the radiology
preprocessing (Hounsfield rescale, windowing, frequency-histogram
normalisation) as batched tensor transforms on the GPU.
"""

from torchdicom import errors, transforms
from torchdicom.cache import FrameCache
from torchdicom.data import Collate, DicomClipDataset, DicomDataset, DicomVolumeDataset, collate
from torchdicom.datamodule import DicomDataModule
from torchdicom.errors import (
    CorruptDicomError,
    MissingPixelDataError,
    NotDicomError,
    TorchDicomError,
    UnsupportedTransferSyntaxError,
)
from torchdicom.index import DicomIndex, scan, to_dataframe
from torchdicom.io import dcmread, get_dicom_files, read_frames, scaled_px
from torchdicom.transforms.functional import (
    DICOM_WINDOWS,
    dicom_windows,
    freqhist_bins,
    hist_scaled,
    to_3chan,
    to_nchan,
    windowed,
)

__version__ = "0.1.0"

__all__ = [
    "DICOM_WINDOWS",
    "Collate",
    "CorruptDicomError",
    "DicomClipDataset",
    "DicomDataModule",
    "DicomDataset",
    "DicomIndex",
    "DicomVolumeDataset",
    "FrameCache",
    "MissingPixelDataError",
    "NotDicomError",
    "TorchDicomError",
    "UnsupportedTransferSyntaxError",
    "__version__",
    "collate",
    "dcmread",
    "dicom_windows",
    "errors",
    "freqhist_bins",
    "get_dicom_files",
    "hist_scaled",
    "read_frames",
    "scaled_px",
    "scan",
    "to_3chan",
    "to_dataframe",
    "to_nchan",
    "transforms",
    "windowed",
]
