"""torchdicom: DICOM medical images as first-class PyTorch data."""

from torchdicom import errors
from torchdicom.errors import TorchDicomError

__version__ = "0.1.0"

__all__ = ["TorchDicomError", "__version__", "errors"]
