"""The index row: its columns, their types, and how pandas stores them.

One source of truth: :class:`IndexRow`, the typed record of one indexed file, in
column order. :data:`INDEX_SCHEMA` (column → kind) is derived from its annotations;
:data:`KIND_DTYPES` and :data:`KIND_FILLS` say how each kind is held in a
:class:`pandas.DataFrame` and what fills a missing value. A new column is one line
in :class:`IndexRow` (plus the code in :mod:`torchdicom.io.header` that fills it).

"Row" means this record only: an image in a batch is an item, a pixel count is a height.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

__all__ = [
    "INDEX_COLUMNS",
    "INDEX_SCHEMA",
    "KIND_DTYPES",
    "KIND_FILLS",
    "PER_FRAME_COLUMNS",
    "ColumnKind",
    "FloatArray",
    "IndexRow",
    "IntArray",
]

#: A "floats" cell: one float64 value per frame and component (see PER_FRAME_COLUMNS).
FloatArray = npt.NDArray[np.float64]
#: An "ints" cell: int64 values, one per frame (parquet: list<int64>).
IntArray = npt.NDArray[np.int64]
ColumnKind = Literal["str", "int", "float", "bool", "floats", "ints"]


class IndexRow(TypedDict):
    """One indexed file: what locates and decodes its pixels, and the metadata training needs.

    int columns hold -1 when unknown, float columns NaN when absent, str columns "".
    """

    path: str
    size: int
    mtime_ns: int
    etag: str  # remote objects (fsspec URLs): ETag / version, else "" (see torchdicom.sources)
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_hash: str  # torchdicom._privacy.patient_hash of PatientID, else PatientName
    modality: str
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric: str
    planar_configuration: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    transfer_syntax: str
    pixel_keyword: str
    pixel_vr: str
    pixel_offset: int  # of the pixel data value in the file; -1: not addressable (deflated)
    pixel_length: int  # -1: undefined length (encapsulated)
    encapsulated: bool
    has_extended_offsets: bool
    # Each frame's code-stream span in the file (encapsulated, undefined length): the file
    # offset of its first fragment's item header, and the bytes to the end of its last
    # fragment. Empty where pydicom alone can locate the frames (see codestream.frame_spans).
    frame_offsets: IntArray
    frame_lengths: IntArray
    rescale_slope: float
    rescale_intercept: float
    has_modality_lut: bool
    window_center: float
    window_width: float
    position_x: float
    position_y: float
    position_z: float
    orientation_0: float
    orientation_1: float
    orientation_2: float
    orientation_3: float
    orientation_4: float
    orientation_5: float
    spacing_row: float
    spacing_col: float
    slice_thickness: float
    instance_number: int
    # Per-frame values of enhanced multi-frame objects (see PER_FRAME_COLUMNS).
    frame_position: FloatArray
    frame_orientation: FloatArray
    frame_spacing: FloatArray
    frame_rescale_slope: FloatArray
    frame_rescale_intercept: FloatArray
    frame_window_center: FloatArray
    frame_window_width: FloatArray


_KIND_OF_TYPE: dict[Any, ColumnKind] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    FloatArray: "floats",
    IntArray: "ints",
}

#: The index schema, in column order: name → kind (derived from :class:`IndexRow`).
INDEX_SCHEMA: dict[str, ColumnKind] = {
    name: _KIND_OF_TYPE[annotation] for name, annotation in typing.get_type_hints(IndexRow).items()
}
INDEX_COLUMNS: tuple[str, ...] = tuple(INDEX_SCHEMA)

# pandas dtype and missing-value fill of each kind. A "floats" cell is a float64 numpy
# array (parquet: list<double>), an "ints" cell an int64 array (list<int64>), empty when
# missing; pandas cannot fillna with an array, so the index fills those cells itself.
KIND_DTYPES: dict[ColumnKind, Any] = {
    "int": "int64",
    "bool": bool,
    "str": object,
    "float": "float64",
    "floats": object,
    "ints": object,
}
KIND_FILLS: dict[ColumnKind, Any] = {
    "int": -1,
    "bool": False,
    "str": "",
    "float": math.nan,
    "floats": np.empty(0, np.float64),
    "ints": np.empty(0, np.int64),
}

# "floats" columns hold one float64 array per file: for a file with functional groups
# ((5200,9229) *Shared* / (5200,9230) *Per-frame Functional Groups Sequence*, i.e. enhanced
# multi-frame objects) ``frames * width`` values, frame after frame, each frame's value taken
# from its per-frame group, else the shared group, else the top-level element (NaN when none
# has it); empty for every other file, whose scalar columns hold the one value of all its
# frames. The scalar columns always hold frame 0's value. Each array column → the scalar
# columns one frame's values go to (the array's width per frame is their count).
PER_FRAME_COLUMNS: dict[str, tuple[str, ...]] = {
    "frame_position": ("position_x", "position_y", "position_z"),
    "frame_orientation": tuple(f"orientation_{k}" for k in range(6)),
    "frame_spacing": ("spacing_row", "spacing_col"),
    "frame_rescale_slope": ("rescale_slope",),
    "frame_rescale_intercept": ("rescale_intercept",),
    "frame_window_center": ("window_center",),
    "frame_window_width": ("window_width",),
}
