"""Finding DICOM files, parsing headers, reading frames."""

from torchdicom.io.files import get_dicom_files, has_dicm_magic
from torchdicom.io.frames import read_frames, resolve_frames, row_for_path, scaled_px
from torchdicom.io.header import dcmread, header_row, patient_hash

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
