"""torchdicom: DICOM medical images as first-class PyTorch data.

Parse headers once into an index, read frames by offset, and do the radiology
preprocessing (Hounsfield rescale, windowing, frequency-histogram
normalisation) as batched tensor transforms on the GPU.
"""

from torchdicom import errors
from torchdicom.errors import (
    CorruptDicomError,
    MissingPixelDataError,
    NotDicomError,
    TorchDicomError,
    UnsupportedTransferSyntaxError,
)
from torchdicom.index import DicomIndex, scan, to_dataframe
from torchdicom.io import dcmread, get_dicom_files, read_frames, scaled_px

__version__ = "0.1.0"

__all__ = [
    "CorruptDicomError",
    "DicomIndex",
    "MissingPixelDataError",
    "NotDicomError",
    "TorchDicomError",
    "UnsupportedTransferSyntaxError",
    "__version__",
    "dcmread",
    "errors",
    "get_dicom_files",
    "read_frames",
    "scaled_px",
    "scan",
    "to_dataframe",
]
