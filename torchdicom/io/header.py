"""Parsing DICOM headers once into flat, picklable rows.

A *row* (:class:`~torchdicom.io.schema.IndexRow`, a plain ``dict``) holds everything
needed to locate and decode the pixel data later without parsing the file again
(transfer syntax, geometry, byte offset of the pixel data value) plus the per-sample
metadata training needs (rescale, window, geometry). Rows are what
:func:`torchdicom.scan` puts into a :class:`~torchdicom.DicomIndex`, one per file.
A plain file's row comes from the lean raw-element walk (:mod:`torchdicom.io.rawheader`:
only the row's elements are read and converted); every other file is opened with
:mod:`torchdicom.io.dicomfile` (pydicom) and gives the row pydicom's parse gives. The two
paths agree row for row (``header_row(..., lean=False)`` forces pydicom; tests/test_lean_scan.py).

Raw patient identifiers never enter a row: ``patient_hash`` is the keyed hash
(:func:`torchdicom._privacy.patient_hash`) of (0010,0020) *Patient ID* (or
(0010,0010) *Patient's Name* when the ID is empty).
"""

from __future__ import annotations

import math
import os
import re
import stat as stat_module
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import MAX_VALUE_LEN, STR_VR_REGEXES, VALIDATORS

from torchdicom._privacy import patient_hash
from torchdicom.errors import (
    CorruptDicomError,
    MissingPixelDataError,
    TorchDicomError,
)
from torchdicom.io.codestream import frame_spans, frames_held
from torchdicom.io.dicomfile import _dcmread, _short, pydicom_warnings_logged, stat_file
from torchdicom.io.rawheader import RawHeader, walk_header
from torchdicom.io.schema import PER_FRAME_COLUMNS, IndexRow

__all__ = [
    "as_row",
    "frame_row",
    "header_row",
    "row_from_dataset",
]

# Pixel data elements, in the order DICOM allows them; exactly one may be present.
PIXEL_TAGS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Elements larger than this are not read at parse time (pydicom "deferred"),
# so scanning never loads pixel data.
_DEFER_SIZE = 4096

# Where each per-frame column is found: (functional group sequence, element in its item).
_FUNCTIONAL_GROUP_SOURCES: dict[str, tuple[int, int]] = {
    "frame_position": (0x00209113, 0x00200032),  # Plane Position / Image Position (Patient)
    "frame_orientation": (0x00209116, 0x00200037),  # Plane Orientation / Image Orientation
    "frame_spacing": (0x00289110, 0x00280030),  # Pixel Measures / Pixel Spacing
    "frame_rescale_slope": (0x00289145, 0x00281053),  # Pixel Value Transformation / Slope
    "frame_rescale_intercept": (0x00289145, 0x00281052),  # … / Rescale Intercept
    "frame_window_center": (0x00289132, 0x00281050),  # Frame VOI LUT / Window Center
    "frame_window_width": (0x00289132, 0x00281051),  # Frame VOI LUT / Window Width
}
_SHARED_GROUPS = 0x52009229
_PER_FRAME_GROUPS = 0x52009230

# Where a row's values come from: a pydicom data set, or the lean scan's values by keyword
# (:func:`_lean_values`; no functional groups, so their tags are never in it).
_Values = Dataset | Mapping[str, Any]


def _first_float(value: Any) -> float:
    """First value of a possibly multi-valued numeric element, NaN when absent/bad."""
    if value is None or value == "":
        return math.nan
    if isinstance(value, list | tuple | MultiValue):
        try:
            value = value[0]
        except (IndexError, TypeError):
            return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _floats(value: Any, n: int) -> list[float]:
    out = [math.nan] * n
    if value is None or isinstance(value, str | bytes):
        return out
    try:
        items = list(value)
    except TypeError:
        return out
    for i, v in enumerate(items[:n]):
        try:
            f = float(v)
            out[i] = f if math.isfinite(f) else math.nan
        except (TypeError, ValueError):
            pass
    return out


def _int(ds: _Values, keyword: str, default: int = -1) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else default
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return default


def _functional_group_value(ds: _Values, sequence: str, keyword: str) -> Any:
    """A value from the shared functional groups, else from the first frame's.

    Enhanced (multi-frame) objects keep rescale, window and geometry inside
    (5200,9229) *Shared* / (5200,9230) *Per-frame Functional Groups Sequence*.
    """
    for fg_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(fg_keyword)
        if not groups:
            continue
        item = groups[0]
        seq = item.get(sequence)
        if seq:
            value = seq[0].get(keyword)
            if value is not None and value != "":
                return value
    return None


def _values(value: Any, width: int) -> list[float]:
    """``width`` floats of an element value (a scalar or multi-valued), NaN where absent/bad.

    A multi-valued (0028,1050) *Window Center* of width 1 keeps its first value.
    """
    if width == 1:
        return [_first_float(value)]
    return _floats(value, width)


def _group_value(groups: Dataset, sequence: int, element: int) -> Any:
    """The ``element`` of the first item of functional group ``sequence`` in one groups item."""
    if sequence not in groups:
        return None
    items = groups[sequence].value
    if not items:
        return None
    raw = items[0].get_item(element)
    if raw is None:
        return None
    value = raw.value
    if isinstance(value, bytes) and raw.VR in (None, "DS", "IS"):
        # Still the raw decimal string: parsing it here is several times cheaper than
        # pydicom's conversion, which a 1000-frame header would pay 7000 times.
        text = value.decode("ascii", "replace").strip(" \x00")
        try:
            return [float(v) for v in text.split("\\")] if text else None
        except ValueError:
            value = items[0][element].value  # let pydicom make what it can of it
    return None if value is None or value == "" else value


def _per_frame_values(ds: _Values, frames: int) -> dict[str, Any]:
    """The "floats" columns of a file (see :data:`PER_FRAME_COLUMNS`): empty arrays unless the
    file has functional groups, then ``frames * width`` values per column."""
    shared_items = ds[_SHARED_GROUPS].value if _SHARED_GROUPS in ds else None
    per_frame = ds[_PER_FRAME_GROUPS].value if _PER_FRAME_GROUPS in ds else None
    if not shared_items and not per_frame:
        return {column: np.empty(0, np.float64) for column in PER_FRAME_COLUMNS}
    shared = shared_items[0] if shared_items else None
    per_frame = list(per_frame or ())[:frames]
    out: dict[str, Any] = {}
    for column, (sequence, element) in _FUNCTIONAL_GROUP_SOURCES.items():
        width = len(PER_FRAME_COLUMNS[column])
        default = _group_value(shared, sequence, element) if shared is not None else None
        if default is None and element in ds:
            default = ds[element].value
        values = np.empty((frames, width), np.float64)
        values[:] = _values(default, width)
        for f, groups in enumerate(per_frame):
            value = _group_value(groups, sequence, element)
            if value is not None:
                values[f] = _values(value, width)
        out[column] = values.reshape(-1)
    return out


def frame_row(row: Mapping[str, Any], frame: int) -> Mapping[str, Any]:
    """The index row as seen by one frame: its scalar columns hold that frame's values.

    For a file with per-frame values (enhanced multi-frame objects: position, orientation,
    pixel spacing, rescale, window) a copy of ``row`` with the frame's values in
    ``position_*``, ``orientation_*``, ``spacing_*``, ``rescale_*`` and ``window_*``; any
    other row comes back as it is (the same object).
    """
    out: dict[str, Any] | None = None
    for column, names in PER_FRAME_COLUMNS.items():
        values = row.get(column)
        width = len(names)
        if values is None or len(values) < (frame + 1) * width:
            continue
        if out is None:
            out = dict(row)
        for k, name in enumerate(names):
            out[name] = float(values[frame * width + k])
    return row if out is None else out


def _str(ds: _Values, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        # A multi-valued CS such as ImageType: keep the first value.
        value = value[0] if len(value) else ""
    return str(value).strip()


class _PixelData(NamedTuple):
    """Where a file's pixel data is and how it is stored: what a row needs beyond values."""

    keyword: str  # PixelData, FloatPixelData or DoubleFloatPixelData
    vr: str  # "" when not known (implicit VR)
    transfer_syntax: str
    encapsulated: bool
    offset: int  # of the value in the file; -1: not addressable (deflated, unknown)
    length: int  # -1: undefined (encapsulated)
    value: bytes | None  # the value when already read at parse time
    has_extended_offsets: bool  # (7FE0,0001) Extended Offset Table present


def row_from_dataset(
    ds: Dataset, path: str, size: int, mtime_ns: int, salt: str | None = None
) -> IndexRow:
    """Build an index row from a header parsed with deferred pixel data.

    Raises:
        MissingPixelDataError: no pixel data element.
        CorruptDicomError: the image pixel description is impossible.
    """
    return _row(ds, _pixel_data(ds, path), path, size, mtime_ns, salt)


def _pixel_data(ds: Dataset, path: str) -> _PixelData:
    """The :class:`_PixelData` of a header parsed by pydicom.

    Raises:
        MissingPixelDataError: no pixel data element.
    """
    pixel_tag = next((t for t in PIXEL_TAGS if t in ds), None)
    if pixel_tag is None:
        raise MissingPixelDataError(
            path, "no (7FE0,0010) Pixel Data element: this file holds no image"
        )
    raw = ds.get_item(pixel_tag, keep_deferred=True)

    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not tsyntax:
        # No file meta (raw data set): pydicom tells what it parsed with.
        implicit = getattr(ds, "is_implicit_VR", getattr(ds, "_is_implicit_VR", True))
        little = getattr(ds, "is_little_endian", getattr(ds, "_is_little_endian", True))
        if little:
            tsyntax = (
                pydicom.uid.ImplicitVRLittleEndian
                if implicit
                else pydicom.uid.ExplicitVRLittleEndian
            )
        else:
            tsyntax = pydicom.uid.ExplicitVRBigEndian
    uid = UID(tsyntax)

    value_tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    if value_tell is None:
        # Element already read (small file): recover position and length.
        value_tell = getattr(raw, "file_tell", None)
        value = raw.value
        length = len(value) if value is not None else 0
    # Offsets inside a deflated stream are not file offsets.
    addressable = value_tell is not None and uid != pydicom.uid.DeflatedExplicitVRLittleEndian
    return _PixelData(
        keyword=PIXEL_TAGS[pixel_tag],
        vr=str(getattr(raw, "VR", "") or ""),
        transfer_syntax=str(uid),
        encapsulated=bool(uid.is_encapsulated) if uid.is_transfer_syntax else False,
        offset=int(value_tell) if addressable else -1,
        length=-1 if length in (None, _UNDEFINED_LENGTH) else int(length),
        # In memory when pydicom already read it (undefined length, small files).
        value=raw.value if isinstance(getattr(raw, "value", None), bytes) else None,
        has_extended_offsets=_EXTENDED_OFFSET_TABLE in ds,
    )


def _row(
    ds: _Values,
    pixel: _PixelData,
    path: str,
    size: int,
    mtime_ns: int,
    salt: str | None,
) -> IndexRow:
    """The row of a header: its values by keyword from ``ds`` (a pydicom data set, or the
    lean scan's :func:`_lean_values`, which has no functional groups), its pixel data
    from ``pixel``.

    Raises:
        CorruptDicomError: the image pixel description is impossible.
    """
    keyword = pixel.keyword
    rows = _int(ds, "Rows")
    columns = _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", 1)
    samples = _int(ds, "SamplesPerPixel", 1)
    bits_allocated = _int(ds, "BitsAllocated")
    bits_stored = _int(ds, "BitsStored", bits_allocated)
    if keyword != "PixelData" and bits_stored < 0:
        bits_stored = bits_allocated
    pixel_representation = _int(ds, "PixelRepresentation", 0)
    planar = _int(ds, "PlanarConfiguration", 0)
    photometric = _str(ds, "PhotometricInterpretation")

    _validate_geometry(path, rows, columns, frames, samples, bits_allocated, bits_stored, keyword)
    # Pixel data holding more frames than declared: index what pydicom returns (and warn).
    frames = frames_held(
        path,
        frames if "NumberOfFrames" in ds else None,
        transfer_syntax=pixel.transfer_syntax,
        encapsulated=pixel.encapsulated,
        offset=pixel.offset,
        length=pixel.length,
        value=pixel.value,
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        photometric=photometric,
    )

    spans = None
    if (
        pixel.encapsulated
        and pixel.offset >= 0
        and pixel.length < 0
        and not pixel.has_extended_offsets
    ):
        spans = _frame_spans(path, pixel.offset, pixel.value, frames)
    frame_offsets, frame_lengths = (
        (np.asarray(spans[0], np.int64), np.asarray(spans[1], np.int64))
        if spans is not None
        else (_NO_SPANS, _NO_SPANS)
    )

    slope = _first_float(ds.get("RescaleSlope"))
    intercept = _first_float(ds.get("RescaleIntercept"))
    if math.isnan(slope) and math.isnan(intercept):
        slope = _first_float(
            _functional_group_value(ds, "PixelValueTransformationSequence", "RescaleSlope")
        )
        intercept = _first_float(
            _functional_group_value(ds, "PixelValueTransformationSequence", "RescaleIntercept")
        )
    center = _first_float(ds.get("WindowCenter"))
    width = _first_float(ds.get("WindowWidth"))
    if math.isnan(center) or math.isnan(width):
        center = _first_float(_functional_group_value(ds, "FrameVOILUTSequence", "WindowCenter"))
        width = _first_float(_functional_group_value(ds, "FrameVOILUTSequence", "WindowWidth"))
    position = ds.get("ImagePositionPatient") or _functional_group_value(
        ds, "PlanePositionSequence", "ImagePositionPatient"
    )
    orientation = ds.get("ImageOrientationPatient") or _functional_group_value(
        ds, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    spacing = ds.get("PixelSpacing") or _functional_group_value(
        ds, "PixelMeasuresSequence", "PixelSpacing"
    )
    thickness = ds.get("SliceThickness") or _functional_group_value(
        ds, "PixelMeasuresSequence", "SliceThickness"
    )
    px, py, pz = _floats(position, 3)
    o = _floats(orientation, 6)
    sr, sc = _floats(spacing, 2)
    per_frame = _per_frame_values(ds, frames)
    if len(per_frame["frame_rescale_slope"]):
        # Functional groups: the scalar columns are frame 0's values.
        first = frame_row(per_frame, 0)
        slope, intercept = first["rescale_slope"], first["rescale_intercept"]
        center, width = first["window_center"], first["window_width"]
        px, py, pz = (first[f"position_{a}"] for a in "xyz")
        o = [first[f"orientation_{k}"] for k in range(6)]
        sr, sc = first["spacing_row"], first["spacing_col"]

    identifier = _str(ds, "PatientID") or _str(ds, "PatientName")

    return {
        "path": path,
        "size": int(size),
        "mtime_ns": int(mtime_ns),
        "etag": "",
        "sop_instance_uid": _str(ds, "SOPInstanceUID"),
        "sop_class_uid": _str(ds, "SOPClassUID"),
        "series_instance_uid": _str(ds, "SeriesInstanceUID"),
        "study_instance_uid": _str(ds, "StudyInstanceUID"),
        "patient_hash": patient_hash(identifier, salt),
        "modality": _str(ds, "Modality"),
        "rows": rows,
        "columns": columns,
        "frames": frames,
        "samples_per_pixel": samples,
        "photometric": photometric,
        "planar_configuration": planar,
        "bits_allocated": bits_allocated,
        "bits_stored": bits_stored,
        "high_bit": _int(ds, "HighBit", bits_stored - 1),
        "pixel_representation": pixel_representation,
        "transfer_syntax": pixel.transfer_syntax,
        "pixel_keyword": keyword,
        "pixel_vr": pixel.vr,
        "pixel_offset": pixel.offset,
        "pixel_length": pixel.length,
        "encapsulated": pixel.encapsulated,
        "has_extended_offsets": pixel.has_extended_offsets,
        "frame_offsets": frame_offsets,
        "frame_lengths": frame_lengths,
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "has_modality_lut": "ModalityLUTSequence" in ds,
        "window_center": center,
        "window_width": width,
        "position_x": px,
        "position_y": py,
        "position_z": pz,
        "orientation_0": o[0],
        "orientation_1": o[1],
        "orientation_2": o[2],
        "orientation_3": o[3],
        "orientation_4": o[4],
        "orientation_5": o[5],
        "spacing_row": sr,
        "spacing_col": sc,
        "slice_thickness": _first_float(thickness),
        "instance_number": _int(ds, "InstanceNumber"),
        **per_frame,
    }


_NO_SPANS = np.empty(0, np.int64)


def _frame_spans(
    path: str, offset: int, value: bytes | None, frames: int
) -> tuple[list[int], list[int]] | None:
    """Each frame's code-stream span (see :func:`codestream.frame_spans`), in file offsets."""
    if value is not None:
        # pydicom holds the value without its sequence delimiter, which the file has.
        closed = value + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        spans = frame_spans(lambda at, n: closed[at : at + n], 0, len(closed), frames)
        if spans is None:
            return None
        return [offset + at for at in spans[0]], spans[1]
    if "://" in path:  # a remote object: each fragment's item header by range
        from torchdicom.sources.remote import handle

        remote = handle(path)
        return frame_spans(lambda at, n: remote.pread(n, at), offset, remote.size, frames)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        return None  # the read reports the file
    try:
        end = os.fstat(fd).st_size
        return frame_spans(
            lambda at, n: os.pread(fd, max(0, min(n, end - at)), at), offset, end, frames
        )
    finally:
        os.close(fd)


# Beyond these a header is lying (or hostile); refuse before any allocation.
_MAX_DIM = 65535  # Rows/Columns are US: 16-bit
_MAX_FRAMES = 10_000_000


def _validate_geometry(
    path: str,
    rows: int,
    columns: int,
    frames: int,
    samples: int,
    bits_allocated: int,
    bits_stored: int,
    keyword: str,
) -> None:
    if rows == -1 or columns == -1:
        raise CorruptDicomError(
            path,
            "pixel data without its description: (0028,0010) Rows or (0028,0011) Columns is missing",
        )
    if rows <= 0 or columns <= 0 or rows > _MAX_DIM or columns > _MAX_DIM:
        raise CorruptDicomError(
            path, f"impossible image size: (0028,0010) Rows={rows}, (0028,0011) Columns={columns}"
        )
    if frames <= 0 or frames > _MAX_FRAMES:
        raise CorruptDicomError(path, f"impossible (0028,0008) Number of Frames: {frames}")
    if samples not in (1, 3):
        raise CorruptDicomError(
            path, f"unsupported (0028,0002) Samples per Pixel: {samples} (expected 1 or 3)"
        )
    allowed = {
        "PixelData": (1, 8, 16, 32, 64),
        "FloatPixelData": (32,),
        "DoubleFloatPixelData": (64,),
    }[keyword]
    if bits_allocated not in allowed:
        raise CorruptDicomError(
            path,
            f"unsupported (0028,0100) Bits Allocated {bits_allocated} for {keyword} (expected one of {allowed})",
        )
    if keyword == "PixelData" and not (1 <= bits_stored <= bits_allocated):
        raise CorruptDicomError(
            path,
            f"(0028,0101) Bits Stored {bits_stored} does not fit in (0028,0100) Bits Allocated {bits_allocated}",
        )


def header_row(
    path: str | os.PathLike[str], salt: str | None = None, lean: bool = True
) -> IndexRow:
    """Parse one file's header (pixel data not read) into an index row.

    Args:
        path: the file.
        salt: the key of ``patient_hash`` (see :func:`torchdicom._privacy.resolve_salt`).
        lean: read a plain file's header with the lean raw-element walk
            (:mod:`torchdicom.io.rawheader`), which converts only the elements the row
            uses; every other file, and ``lean=False``, is parsed by pydicom. Both give
            the same row.

    Raises:
        TorchDicomError: any subclass, naming the file and the reason.
    """
    fspath = os.fspath(path)
    if "://" in fspath:
        from torchdicom.sources.remote import is_remote, local_path

        if is_remote(fspath):
            return remote_header_row(fspath, salt, lean)  # type: ignore[return-value]
        fspath = local_path(fspath)
    return header_row_stat(fspath, stat_file(fspath), salt, lean)


def header_row_stat(
    fspath: str, st: os.stat_result, salt: str | None = None, lean: bool = True
) -> IndexRow:
    """:func:`header_row` for a path already stat-ed; size and mtime come from ``st``."""
    if lean and stat_module.S_ISREG(st.st_mode):
        row = _lean_row(fspath, st, salt)
        if row is not None:
            return row
    ds = _dcmread(fspath, st, defer_size=_DEFER_SIZE)
    try:
        # pydicom checks a value when it is first used: here, not in dcmread.
        with pydicom_warnings_logged(fspath):
            return row_from_dataset(ds, fspath, st.st_size, st.st_mtime_ns, salt)
    except TorchDicomError:
        raise
    except Exception as exc:  # a damaged element found while reading values
        raise CorruptDicomError(fspath, f"header cannot be interpreted: {_short(exc)}") from None


# --------------------------------------------------------------------------- remote objects
class _Stat:
    """The fields of ``os.stat_result`` the header code reads, for a remote object."""

    __slots__ = ("st_mode", "st_mtime_ns", "st_size")

    def __init__(self, size: int):
        self.st_mode = stat_module.S_IFREG | 0o444
        self.st_size = size
        self.st_mtime_ns = -1


# cached_row's rows per (URL, size, ETag), the oldest dropped past 4096.
_ROWS: OrderedDict[tuple[str, int, str], dict[str, Any]] = OrderedDict()
_ROWS_LOCK = threading.Lock()


def remote_header_row(url: str, salt: str | None = None, lean: bool = True) -> dict[str, Any]:
    """The index row of a remote object (an fsspec URL, :mod:`torchdicom.sources.remote`):
    only header bytes are fetched (bounded ranges), each once; the row keeps its ETag."""
    from torchdicom.sources import remote

    size, etag = remote.info(url)
    with remote.header_reads(url, size):
        row = dict(header_row_stat(url, _Stat(size), salt, lean))
    row["etag"] = etag
    remote.mark_checked(url, size, etag)
    return row


def cached_row(url: str) -> dict[str, Any]:
    """:func:`remote_header_row`, cached per (URL, size, ETag) in this process."""
    from torchdicom.sources import remote

    size, etag = remote.info(url)
    key = (url, size, etag)
    with _ROWS_LOCK:
        row = _ROWS.get(key)
        if row is not None:
            return row
    row = remote_header_row(url)
    with _ROWS_LOCK:
        _ROWS[key] = row
        while len(_ROWS) > 4096:
            _ROWS.popitem(last=False)
    return row


# --------------------------------------------------------------------------- the lean scan
# The elements a row is built from: keyword -> (tag, VR). Everything else in the header is
# skipped unread by the lean walk.
_LEAN_ELEMENTS: dict[str, tuple[int, bytes]] = {
    "SOPClassUID": (0x00080016, b"UI"),
    "SOPInstanceUID": (0x00080018, b"UI"),
    "Modality": (0x00080060, b"CS"),
    "PatientName": (0x00100010, b"PN"),
    "PatientID": (0x00100020, b"LO"),
    "SliceThickness": (0x00180050, b"DS"),
    "StudyInstanceUID": (0x0020000D, b"UI"),
    "SeriesInstanceUID": (0x0020000E, b"UI"),
    "InstanceNumber": (0x00200013, b"IS"),
    "ImagePositionPatient": (0x00200032, b"DS"),
    "ImageOrientationPatient": (0x00200037, b"DS"),
    "SamplesPerPixel": (0x00280002, b"US"),
    "PhotometricInterpretation": (0x00280004, b"CS"),
    "PlanarConfiguration": (0x00280006, b"US"),
    "NumberOfFrames": (0x00280008, b"IS"),
    "Rows": (0x00280010, b"US"),
    "Columns": (0x00280011, b"US"),
    "PixelSpacing": (0x00280030, b"DS"),
    "BitsAllocated": (0x00280100, b"US"),
    "BitsStored": (0x00280101, b"US"),
    "HighBit": (0x00280102, b"US"),
    "PixelRepresentation": (0x00280103, b"US"),
    "WindowCenter": (0x00281050, b"DS"),
    "WindowWidth": (0x00281051, b"DS"),
    "RescaleIntercept": (0x00281052, b"DS"),
    "RescaleSlope": (0x00281053, b"DS"),
}
_CHARACTER_SET = 0x00080005
_LEAN_WANTED = frozenset([_CHARACTER_SET, *(tag for tag, _ in _LEAN_ELEMENTS.values())])
# Functional groups and float pixel data: rows that only pydicom's parse builds.
_LEAN_REFUSED = frozenset((_SHARED_GROUPS, _PER_FRAME_GROUPS, 0x7FE00008, 0x7FE00009))
_MODALITY_LUT_SEQUENCE = 0x00283000

# Values whose conversion is certain to be pydicom's: printable ASCII text (any character
# set decodes it alike) and canonical IS / DS strings, trailing NUL padding allowed.
# Anything else sends the file to pydicom, which converts (and warns) as it always has.
_ASCII_TEXT = re.compile(rb"[\x20-\x7e]*\x00*")
_IS_ONE = rb" *[+-]?[0-9]{1,9} *"
_IS_TEXT = re.compile(_IS_ONE + rb"(?:\\" + _IS_ONE + rb")*\x00*")
_DS_ONE = rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})? *"
_DS_TEXT = re.compile(_DS_ONE + rb"(?:\\" + _DS_ONE + rb")*\x00*")


class _NotLean(Exception):
    """A value the lean scan does not convert: parse the file with pydicom."""


# Values already converted, most of them repeated from file to file of a series (study and
# series UIDs, modality, spacing, rescale, window): (keyword, raw value) -> value.
_CONVERTED: dict[tuple[str, bytes], Any] = {}


def _lean_value(keyword: str, vr: bytes, found: tuple[bytes | None, bytes] | None) -> Any:
    """A raw value as the row reads it from ``ds.get``: ``None`` when absent or empty, else
    the first int of a US / IS, one float or a tuple of floats of a DS, the text (or a tuple
    of texts) of a string.

    Raises:
        _NotLean: a conversion not certain to be pydicom's (another VR, a value that is not
            printable ASCII or a canonical IS / DS, one pydicom would warn about).
    """
    if found is None:
        return None
    file_vr, value = found
    if file_vr is not None and file_vr != vr:
        raise _NotLean
    if not value:
        return None
    if vr == b"US":
        if len(value) % 2:
            raise _NotLean
        return value[0] | value[1] << 8
    known = _CONVERTED.get((keyword, value))
    if known is not None:
        return known
    form = _IS_TEXT if vr == b"IS" else _DS_TEXT if vr == b"DS" else _ASCII_TEXT
    if not form.fullmatch(value):
        raise _NotLean
    parts = _validated(vr.decode(), value)
    converted: Any
    if vr == b"IS":
        converted = int(parts[0])
    elif vr == b"DS":
        converted = float(parts[0]) if len(parts) == 1 else tuple(float(p) for p in parts)
    else:
        converted = parts[0] if len(parts) == 1 else tuple(parts)
    if len(_CONVERTED) >= 4096:
        _CONVERTED.clear()
    _CONVERTED[keyword, value] = converted
    return converted


def _validated(vr: str, value: bytes) -> list[str]:
    """The values of an ASCII element as pydicom splits them, each passing pydicom's check.

    pydicom validates a value when it converts it and warns about a bad one; such a
    file is left to pydicom (:class:`_NotLean`), so that the warning is still logged.
    The checks are pydicom's own (its regular expression and maximum length per VR),
    without its per-call message building.
    """
    text = value.decode("ascii")
    parts = text.rstrip("\x00 ").split("\\")
    if vr == "PN":
        check = VALIDATORS["PN"]
        if not all(check(vr, part)[0] for part in (*parts, *text.split("\\"))):
            raise _NotLean
        return parts
    regex = STR_VR_REGEXES.get(vr)
    limit = MAX_VALUE_LEN.get(vr, 0)
    # Text VRs are checked before their trailing padding is removed, too.
    for part in (*parts, *text.split("\\")) if vr == "LO" else parts:
        if (limit and len(part) > limit) or (regex is not None and part and not regex.match(part)):
            raise _NotLean
    return parts


def _lean_row(fspath: str, st: os.stat_result, salt: str | None) -> IndexRow | None:
    """:func:`row_from_dataset` for a plain file, from its raw header; ``None``: not plain.

    Every value is converted before the row is built, so a value the lean scan leaves to
    pydicom (:class:`_NotLean`) never hides behind an error of the row's own.
    """
    raw = walk_header(fspath, st.st_size, _LEAN_WANTED, _LEAN_REFUSED, _DEFER_SIZE)
    if raw is None:
        return None
    try:
        values = _lean_values(raw)
    except _NotLean:
        return None
    pixel = _PixelData(
        keyword="PixelData",  # float pixel data is refused by the walk
        vr=raw.pixel_vr,
        transfer_syntax=raw.transfer_syntax,
        encapsulated=raw.encapsulated,
        offset=raw.pixel_offset,
        length=raw.pixel_length,
        value=raw.pixel_value,
        has_extended_offsets=_EXTENDED_OFFSET_TABLE in raw.present,
    )
    return _row(values, pixel, fspath, st.st_size, st.st_mtime_ns, salt)


def _lean_values(raw: RawHeader) -> dict[str, Any]:
    """The row's values by keyword, as :func:`_row` reads them from a data set: a keyword
    is present exactly when its element is; no functional groups (the walk refuses them).

    Raises:
        _NotLean: a value whose conversion is left to pydicom.
    """
    _check_character_set(raw.values)
    found = raw.values
    values = {
        keyword: _lean_value(keyword, vr, found.get(tag))
        for keyword, (tag, vr) in _LEAN_ELEMENTS.items()
        if tag in raw.present and keyword != "PatientName"
    }
    # The row reads the name only when the ID is empty; so does pydicom's path, which never
    # converts (or warns about) the name of a file with an ID.
    name_tag, name_vr = _LEAN_ELEMENTS["PatientName"]
    if name_tag in raw.present and not _str(values, "PatientID"):
        values["PatientName"] = _lean_value("PatientName", name_vr, found.get(name_tag))
    if _MODALITY_LUT_SEQUENCE in raw.present:
        values["ModalityLUTSequence"] = None
    return values


def _check_character_set(values: dict[int, tuple[bytes | None, bytes]]) -> None:
    """Refuse a (0008,0005) *Specific Character Set* pydicom would not take as it is.

    pydicom converts it while parsing (a damaged one fails the read there, a misspelt
    one is corrected with a warning): only exact known terms are lean.
    """
    found = values.get(_CHARACTER_SET)
    if found is None or not found[1]:
        return
    if found[0] not in (None, b"CS") or not _ASCII_TEXT.fullmatch(found[1]):
        raise _NotLean
    terms = found[1].decode("ascii").rstrip("\x00 ").split("\\")
    if any(term and term not in python_encoding for term in terms):
        raise _NotLean


def as_row(source: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A plain dict from an index row (dict, pandas Series or itertuples namedtuple)."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "to_dict"):
        return source.to_dict()
    if hasattr(source, "_asdict"):
        return source._asdict()
    if isinstance(source, Mapping):
        return dict(source)
    raise TypeError(
        f"expected a path or an index row (dict / pandas Series). Got: {type(source).__name__}"
    )
