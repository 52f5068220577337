"""torchdicom: DICOM medical images as first-class PyTorch data.

Parse headers once into an index, read frames by offset, and do the radiology
preprocessing (Hounsfield rescale, windowing, frequency-histogram
normalisation) as batched tensor transforms on the GPU.

Importing the package is cheap: every public name below is loaded from its
submodule on first access (PEP 562), so ``import torchdicom`` does not import
torch, Lightning, matplotlib, kornia, albumentations or numba, and the
header-only command-line tools (``torchdicom info``, ``scan``) never pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it. A name equal to its module's last
# component with no attribute (``errors``, ``transforms``) is the submodule itself.
_LAZY: dict[str, str] = {
    "data": "torchdicom.data",
    "errors": "torchdicom.errors",
    "transforms": "torchdicom.transforms",
    "FrameCache": "torchdicom.cache",
    "Collate": "torchdicom.data",
    "DicomClipDataset": "torchdicom.data",
    "DicomDataset": "torchdicom.data",
    "DicomVolumeDataset": "torchdicom.data",
    "DicomShardDataset": "torchdicom.data.shards",
    "collate": "torchdicom.data",
    "to_webdataset": "torchdicom.export",
    "DicomDataModule": "torchdicom.datamodule",
    "DicomWebSource": "torchdicom.sources.dicomweb",
    "CorruptDicomError": "torchdicom.errors",
    "MissingPixelDataError": "torchdicom.errors",
    "NotDicomError": "torchdicom.errors",
    "TorchDicomError": "torchdicom.errors",
    "UnsupportedTransferSyntaxError": "torchdicom.errors",
    "DicomIndex": "torchdicom.index",
    "scan": "torchdicom.index",
    "to_dataframe": "torchdicom.index",
    "dcmread": "torchdicom.io.dicomfile",
    "get_dicom_files": "torchdicom.io.files",
    "read_frames": "torchdicom.io.frames",
    "scaled_px": "torchdicom.io.frames",
    "DICOM_WINDOWS": "torchdicom.transforms.intensity",
    "dicom_windows": "torchdicom.transforms.intensity",
    "windowed": "torchdicom.transforms.intensity",
    "freqhist_bins": "torchdicom.transforms.histogram",
    "hist_scaled": "torchdicom.transforms.histogram",
    "to_3chan": "torchdicom.transforms.channels",
    "to_nchan": "torchdicom.transforms.channels",
}
_SUBMODULES = frozenset({"data", "errors", "transforms"})

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time ``__getattr__`` loads these
    from torchdicom import data, errors, transforms
    from torchdicom.cache import FrameCache
    from torchdicom.data import (
        Collate,
        DicomClipDataset,
        DicomDataset,
        DicomVolumeDataset,
        collate,
    )
    from torchdicom.data.shards import DicomShardDataset
    from torchdicom.datamodule import DicomDataModule
    from torchdicom.errors import (
        CorruptDicomError,
        MissingPixelDataError,
        NotDicomError,
        TorchDicomError,
        UnsupportedTransferSyntaxError,
    )
    from torchdicom.export import to_webdataset
    from torchdicom.index import DicomIndex, scan, to_dataframe
    from torchdicom.io.dicomfile import dcmread
    from torchdicom.io.files import get_dicom_files
    from torchdicom.io.frames import read_frames, scaled_px
    from torchdicom.sources.dicomweb import DicomWebSource
    from torchdicom.transforms.channels import to_3chan, to_nchan
    from torchdicom.transforms.histogram import freqhist_bins, hist_scaled
    from torchdicom.transforms.intensity import DICOM_WINDOWS, dicom_windows, windowed

__all__ = [
    "DICOM_WINDOWS",
    "Collate",
    "CorruptDicomError",
    "DicomClipDataset",
    "DicomDataModule",
    "DicomDataset",
    "DicomIndex",
    "DicomShardDataset",
    "DicomVolumeDataset",
    "DicomWebSource",
    "FrameCache",
    "MissingPixelDataError",
    "NotDicomError",
    "TorchDicomError",
    "UnsupportedTransferSyntaxError",
    "__version__",
    "collate",
    "data",
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
    "to_webdataset",
    "transforms",
    "windowed",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its submodule on first access, then cache it here."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'torchdicom' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if name in _SUBMODULES else getattr(module, name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
