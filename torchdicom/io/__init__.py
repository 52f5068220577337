"""Finding DICOM files, parsing headers, reading frames.

The names below load from their submodule on first access (PEP 562): the header-level
modules (``torchdicom.io.files``, ``dicomfile``, ``schema``, ``header``) import pydicom only, and
importing them, or this package, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "dcmread": "torchdicom.io.dicomfile",
    "header_row": "torchdicom.io.header",
    "patient_hash": "torchdicom._privacy",
    "get_dicom_files": "torchdicom.io.files",
    "has_dicm_magic": "torchdicom.io.files",
    "read_frames": "torchdicom.io.frames",
    "resolve_frames": "torchdicom.io.frames",
    "row_for_path": "torchdicom.io.frames",
    "scaled_px": "torchdicom.io.frames",
}

if TYPE_CHECKING:
    from torchdicom._privacy import patient_hash
    from torchdicom.io.dicomfile import dcmread
    from torchdicom.io.files import get_dicom_files, has_dicm_magic
    from torchdicom.io.frames import read_frames, resolve_frames, row_for_path, scaled_px
    from torchdicom.io.header import header_row

__all__ = [
    "dcmread",
    "get_dicom_files",
    "has_dicm_magic",
    "header_row",
    "patient_hash",
    "read_frames",
    "resolve_frames",
    "row_for_path",
    "scaled_px",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its submodule on first access, then cache it here."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'torchdicom.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
