"""Mutations of DICOM files: what hospital exports do to them, on purpose.

Two kinds of mutation, both deterministic functions of their arguments so
hypothesis can draw and shrink them:

* **structural** — the file is parsed with pydicom, one header element is
  set to an absurd or inconsistent value, or to a plausible wrong one (Rows
  or Columns doubled or halved, 1 <-> 3 samples, 8 <-> 16 bits allocated:
  a header edited after compression) (Rows, Columns, Number of Frames,
  Bits Allocated/Stored, Samples per Pixel, Pixel Representation, Planar
  Configuration, Photometric Interpretation), the pixel data is removed, or
  the transfer syntax UID is swapped without re-encoding, and the file is
  written back;
* **byte-level** — truncation, bit flips, insertions and deletions in the
  header or the pixel data, a duplicated Pixel Data element, corrupted
  fragment / offset-table lengths, and undefined lengths with no delimiter.

Positions are fractions in [0, 1) of the region they act on, so one drawn
mutation applies to any seed file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

__all__ = [
    "ABSURD_VALUES",
    "TRANSFER_SYNTAXES",
    "Mutation",
    "Regions",
    "apply",
    "describe",
    "regions",
]

_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"
_UNDEFINED = b"\xff\xff\xff\xff"

# Values a lying header carries: zero, one, off-by-one of valid ones, and maxima.
ABSURD_VALUES: dict[str, tuple[object, ...]] = {
    "Rows": (0, 1, 3, 255, 4097, 65535),
    "Columns": (0, 1, 3, 255, 4097, 65535),
    "NumberOfFrames": (0, -1, 2, 7, 1000, 2**31 - 1, "1e9", "abc"),
    "BitsAllocated": (0, 1, 7, 8, 12, 16, 24, 32, 64, 65535),
    "BitsStored": (0, 1, 7, 12, 17, 33, 65535),
    "SamplesPerPixel": (0, 2, 3, 4, 65535),
    "PixelRepresentation": (0, 1, 2, 65535),
    "PlanarConfiguration": (0, 1, 7),
    "PhotometricInterpretation": (
        "MONOCHROME1",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "PALETTE COLOR",
        "NONSENSE",
        "",
    ),
}

TRANSFER_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEG2000Lossless,
    "1.2.3.4.5.6.7",  # not a transfer syntax at all
)


@dataclass(frozen=True)
class Regions:
    """Where the header ends and the pixel data value lies, in the seed file."""

    pixel_tag: int  # offset of the (7FE0,0010) tag, or len(data) when absent
    pixel_value: int  # offset of its value
    size: int


def regions(data: bytes) -> Regions:
    """Locate the pixel data element of a (little-endian) file by its tag bytes."""
    tag = data.rfind(_PIXEL_TAG_LE)
    if tag < 0:
        return Regions(len(data), len(data), len(data))
    # Explicit VR OB/OW: tag, VR, 2 reserved, 4-byte length; implicit: tag, length.
    explicit = data[tag + 4 : tag + 6] in (b"OB", b"OW", b"UN")
    value = tag + (12 if explicit else 8)
    return Regions(tag, min(value, len(data)), len(data))


@dataclass(frozen=True)
class Mutation:
    """One mutation: an operation name and its drawn arguments."""

    op: str
    where: float = 0.0  # position as a fraction of the region acted on
    arg: object = None


def _pos(lo: int, hi: int, where: float) -> int:
    if hi <= lo:
        return lo
    return lo + int(where * (hi - lo))


def _structural(data: bytes, m: Mutation) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if m.op == "set":
            keyword, value = m.arg  # type: ignore[misc]
            if keyword == "NumberOfFrames":
                ds.NumberOfFrames = str(value)
            else:
                setattr(ds, keyword, value)
        elif m.op == "rescale":
            # A plausible lie: the value doubled, halved, or swapped for its usual
            # alternative (1 <-> 3 samples, 8 <-> 16 bits) — what an edit after
            # compression leaves, and what made GDCM abort (issue 11).
            keyword, factor = m.arg  # type: ignore[misc]
            current = int(getattr(ds, keyword))
            swaps = {"SamplesPerPixel": {1: 3, 3: 1}, "BitsAllocated": {8: 16, 16: 8}}
            if keyword in swaps:
                value = swaps[keyword].get(current, current)
            else:
                value = max(1, min(65535, int(current * factor)))
            setattr(ds, keyword, value)
        elif m.op == "drop":
            for keyword in m.arg:  # type: ignore[union-attr]
                if keyword in ds:
                    delattr(ds, keyword)
        else:
            raise ValueError(m.op)
        out = io.BytesIO()
        ds.save_as(out)
    return out.getvalue()


def _set_transfer_syntax(data: bytes, uid: str) -> bytes:
    """Swap the (0002,0010) value without re-encoding the data set."""
    tag = data.find(b"\x02\x00\x10\x00UI")
    if tag < 0:
        return data
    old_len = int.from_bytes(data[tag + 6 : tag + 8], "little")
    value = uid.encode() + (b"\x00" if len(uid) % 2 else b"")
    out = bytearray(data[: tag + 6] + len(value).to_bytes(2, "little"))
    out += value + data[tag + 8 + old_len :]
    # Keep (0002,0000) File Meta Information Group Length consistent, so only
    # the lie about the encoding remains.
    glen = out.find(b"\x02\x00\x00\x00UL\x04\x00")
    if 0 <= glen < tag:
        old = int.from_bytes(out[glen + 8 : glen + 12], "little")
        new = old + len(value) - old_len
        if 0 <= new < 2**32:  # an earlier mutation may have made the length absurd already
            out[glen + 8 : glen + 12] = new.to_bytes(4, "little")
    return bytes(out)


def _byte_level(data: bytes, m: Mutation) -> bytes:
    r = regions(data)
    b = bytearray(data)
    header = (0, r.pixel_tag)
    pixels = (r.pixel_value, r.size)
    if m.op == "truncate":
        return bytes(b[: _pos(0, r.size, m.where)])
    if m.op in ("flip_header", "flip_pixels"):
        lo, hi = header if m.op == "flip_header" else pixels
        if hi > lo:
            p = _pos(lo, hi, m.where)
            b[p] ^= int(m.arg) or 0xFF  # type: ignore[arg-type]
        return bytes(b)
    if m.op in ("insert_header", "insert_pixels"):
        lo, hi = header if m.op == "insert_header" else pixels
        p = _pos(lo, hi, m.where)
        return bytes(b[:p] + bytes(m.arg) + b[p:])  # type: ignore[arg-type]
    if m.op in ("delete_header", "delete_pixels"):
        lo, hi = header if m.op == "delete_header" else pixels
        p = _pos(lo, hi, m.where)
        return bytes(b[:p] + b[p + int(m.arg) :])  # type: ignore[arg-type]
    if m.op == "u32_header":
        # Overwrite four header bytes with a length-like value: hits lengths,
        # VRs and tags alike, as a mis-written export does.
        p = _pos(0, max(r.pixel_tag - 4, 0), m.where)
        b[p : p + 4] = int(m.arg).to_bytes(4, "little")  # type: ignore[arg-type]
        return bytes(b)
    if m.op == "pixel_length":
        # The Pixel Data element's own length (0xFFFFFFFF: undefined, never ended).
        if r.pixel_tag < r.size:
            b[r.pixel_value - 4 : r.pixel_value] = int(m.arg).to_bytes(4, "little")  # type: ignore[arg-type]
        return bytes(b)
    if m.op == "fragment_length":
        # An item (offset table or fragment) length inside encapsulated pixel data.
        items = []
        start = r.pixel_value
        while (k := data.find(_ITEM_TAG_LE, start)) >= 0:
            items.append(k)
            start = k + 4
        if items:
            k = items[_pos(0, len(items), m.where)]
            b[k + 4 : k + 8] = int(m.arg).to_bytes(4, "little")  # type: ignore[arg-type]
        return bytes(b)
    if m.op == "undefined_length":
        # A header length set to undefined with no delimiter anywhere after it.
        p = _pos(0, max(r.pixel_tag - 4, 0), m.where)
        b[p : p + 4] = _UNDEFINED
        return bytes(b)
    if m.op == "duplicate_pixels":
        # A second Pixel Data element appended (a concatenating export).
        return bytes(b + b[r.pixel_tag :]) if r.pixel_tag < r.size else bytes(b)
    if m.op == "transfer_syntax":
        return _set_transfer_syntax(data, str(m.arg))
    raise ValueError(f"unknown mutation {m.op}")


STRUCTURAL_OPS = ("set", "rescale", "drop")


def apply(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply mutations in order; a structural one that pydicom cannot write is skipped."""
    for m in mutations:
        if m.op in STRUCTURAL_OPS:
            try:
                data = _structural(data, m)
            except Exception:
                continue  # the previous mutation made the file unwritable: keep it as is
        else:
            data = _byte_level(data, m)
    return data


def describe(mutations: list[Mutation]) -> str:
    return "; ".join(f"{m.op}({m.where:.3f}, {m.arg!r})" for m in mutations)
