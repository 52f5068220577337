"""A bounded raw-element walk over a plain DICOM header, for the lean scan.

:func:`walk_header` reads a Part 10 file's elements straight from the bytes (``os.pread``
of a few kB at a time), keeps the raw values of the elements asked for and skips every
other value without reading it: no pydicom data set, no value conversion. It only
answers for *plain* files, the ones where the answer is certain to be what pydicom would
parse: a preamble and explicit VR little endian file meta; an uncompressed little endian
or an encapsulated transfer syntax; elements in ascending order with valid VRs; sequences
of undefined length well formed (pydicom parses them at read time: they are walked, item
by item); pixel data (7FE0,0010) of defined length (native) or undefined length whose
fragments lead to the sequence delimiter (encapsulated); and anything after the pixel
data (trailing padding) well formed to the last byte. Anything else (raw data sets, big
endian, deflate, float pixel data, truncation, a damaged element …) returns ``None``, and
the caller reads the file with pydicom as before.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import NamedTuple

from pydicom.datadict import DicomDictionary
from pydicom.uid import AllTransferSyntaxes

__all__ = ["RawHeader", "walk_header"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
# VRs whose explicit length is 32-bit (after two reserved bytes), and the 16-bit ones.
_VRS_32 = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_VRS_16 = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_CHARACTER_SET = 0x00080005
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_CHUNK = 8192
# pydicom's encapsulated (compressed) transfer syntaxes: all explicit VR little endian.
_ENCAPSULATED = frozenset(
    str(uid)
    for uid in AllTransferSyntaxes
    if uid.is_encapsulated and uid.is_little_endian and not uid.is_implicit_VR
)
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class RawHeader(NamedTuple):
    """What :func:`walk_header` found in a plain file."""

    transfer_syntax: str
    implicit: bool
    values: dict[int, tuple[bytes | None, bytes]]  # tag -> (VR as in the file or None, value)
    present: frozenset[int]  # every data set tag seen before the pixel data
    encapsulated: bool
    pixel_vr: str  # "" when implicit VR
    pixel_offset: int  # of the value
    pixel_length: int  # -1: undefined (encapsulated)
    pixel_value: bytes | None  # the value when pydicom would hold it (at most defer_size)


class _NotPlain(Exception):
    """The file is not plain: read it with pydicom."""


class _Window:
    """Bytes of an open file at absolute offsets, read a chunk at a time."""

    __slots__ = ("base", "buf", "chunk", "pread", "size", "skip_chunk")

    def __init__(self, pread, size: int, skip_chunk: int = _CHUNK):
        self.pread = pread  # (n, offset) -> bytes: os.pread of a descriptor, or a remote range
        self.size = size
        self.chunk = _CHUNK
        # Read size while skipping fragment items: a remote object reads the 8-byte item
        # headers only, never the compressed pixel data between them.
        self.skip_chunk = skip_chunk
        self.base = 0
        self.buf = pread(_CHUNK, 0)

    def at(self, pos: int, n: int) -> int:
        """Make ``[pos, pos + n)`` available in ``buf``; its index there."""
        off = pos - self.base
        if off < 0 or off + n > len(self.buf):
            if pos + n > self.size:
                raise _NotPlain
            self.buf = self.pread(max(n, self.chunk), pos)
            self.base = pos
            off = 0
            if len(self.buf) < n:
                raise _NotPlain
        return off


def _element(w: _Window, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR, value length, header length) of the element at ``pos``."""
    off = pos - w.base
    buf = w.buf
    if off < 0 or off + 12 > len(buf):  # the usual case, 12 bytes in the window, skips this
        off = w.at(pos, 8)
        buf = w.buf
    if implicit:
        group, elem, length = _IMPLICIT.unpack_from(buf, off)
        return group << 16 | elem, None, length, 8
    group, elem, vr, length = _EXPLICIT.unpack_from(buf, off)
    if group == 0xFFFE:  # items and delimiters: no VR, a 32-bit length
        return group << 16 | elem, None, _U32.unpack_from(buf, off + 4)[0], 8
    if vr in _VRS_16:
        return group << 16 | elem, vr, length, 8
    if vr in _VRS_32:
        off = w.at(pos, 12)
        return group << 16 | elem, vr, _U32.unpack_from(w.buf, off + 8)[0], 12
    raise _NotPlain


def _check_sequence(tag: int, vr: bytes | None) -> None:
    """Refuse an undefined-length element that is not a sequence (implicit VR: by the dictionary)."""
    if vr is None:
        entry = DicomDictionary.get(tag)
        if entry is None or entry[0] != "SQ":
            raise _NotPlain
    elif vr != b"SQ":
        raise _NotPlain


def _skip_items(w: _Window, pos: int, implicit: bool) -> int:
    """Past the sequence delimiter of an undefined-length sequence whose items start at ``pos``.

    pydicom parses such a sequence at read time, so its items are walked element by
    element (a damaged one makes the file not plain), though no value is kept.
    """
    while True:
        tag, _, length, hdr = _element(w, pos, True)
        pos += hdr
        if tag == _SEQUENCE_END:
            if length != 0:
                raise _NotPlain
            return pos
        if tag != _ITEM:
            raise _NotPlain
        end = None if length == _UNDEFINED else pos + length
        last = -1
        while end is None or pos < end:
            tag, vr, length, hdr = _element(w, pos, implicit)
            pos += hdr
            if tag == _ITEM_END and end is None:
                if length != 0:
                    raise _NotPlain
                break
            # A character set here is converted by pydicom as it reads: leave it to pydicom.
            if tag <= last or tag >> 16 == 0xFFFE or tag == _CHARACTER_SET:
                raise _NotPlain
            last = tag
            if length == _UNDEFINED:
                _check_sequence(tag, vr)
                pos = _skip_items(w, pos, implicit)
            else:
                pos += length
        if end is not None and pos != end:
            raise _NotPlain


def _skip_fragments(w: _Window, pos: int) -> int:
    """Past the sequence delimiter of encapsulated pixel data whose items start at ``pos``.

    As pydicom walks them: items skipped by their lengths, up to the delimiter; a
    length past the end or any other tag is not plain (pydicom would scan bytes).
    """
    w.chunk = w.skip_chunk
    try:
        return _skip_items_to_delimiter(w, pos)
    finally:
        w.chunk = _CHUNK


def _skip_items_to_delimiter(w: _Window, pos: int) -> int:
    while True:
        off = w.at(pos, 8)
        tag = _U32.unpack_from(w.buf, off)[0]
        length = _U32.unpack_from(w.buf, off + 4)[0]
        pos += 8
        if tag == 0xE0DDFFFE:  # (FFFE,E0DD) as a little endian u32
            if length != 0:
                raise _NotPlain
            return pos
        if tag != 0xE000FFFE or pos + length > w.size:
            raise _NotPlain
        pos += length


def _walk_trailing(w: _Window, pos: int, implicit: bool) -> None:
    """Check the elements after the pixel data (pydicom parses them) end the file cleanly."""
    last = _PIXEL_DATA
    while pos < w.size:
        tag, vr, length, hdr = _element(w, pos, implicit)
        if tag <= last or tag >> 16 == 0xFFFE:
            raise _NotPlain
        last = tag
        pos += hdr
        if length == _UNDEFINED:
            _check_sequence(tag, vr)
            pos = _skip_items(w, pos, implicit)
        else:
            pos += length
    if pos != w.size:
        raise _NotPlain


def walk_header(
    fspath: str, size: int, wanted: frozenset[int], refused: frozenset[int], defer_size: int
) -> RawHeader | None:
    """The raw header of a plain file (see the module docstring), else ``None``.

    Args:
        fspath: the file.
        size: its size in bytes (from the caller's ``stat``).
        wanted: the data set tags whose raw values to keep.
        refused: data set tags whose presence makes the file not plain (functional
            groups, float pixel data …: what only pydicom's parse should answer).
        defer_size: pixel data of at most this many bytes is not plain (pydicom reads
            it at parse time, as the index's ``defer_size`` asks).
    """
    if size < 144:
        return None
    if "://" in fspath:  # a remote object (torchdicom.sources): header bytes by range
        from torchdicom.sources.remote import RemoteHandle

        try:
            return _walk(
                _Window(RemoteHandle(fspath, size).pread, size, skip_chunk=8),
                wanted,
                refused,
                defer_size,
            )
        except (_NotPlain, struct.error):
            return None
    try:
        fd = os.open(fspath, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        return _walk(_Window(functools.partial(os.pread, fd), size), wanted, refused, defer_size)
    except (_NotPlain, OSError, struct.error):
        return None
    finally:
        os.close(fd)


def _walk(
    w: _Window, wanted: frozenset[int], refused: frozenset[int], defer_size: int
) -> RawHeader | None:
    if w.buf[128:132] != b"DICM":
        return None
    # File meta: explicit VR little endian, group 0002 only.
    pos = 132
    syntax = b""
    last = -1
    while True:
        off = w.at(pos, 8)
        if _U16.unpack_from(w.buf, off)[0] != 0x0002:
            break
        tag, vr, length, hdr = _element(w, pos, False)
        if tag <= last or length == _UNDEFINED:
            return None
        last = tag
        if tag == 0x00020010:
            off = w.at(pos + hdr, length)
            syntax = w.buf[off : off + length]
        pos += hdr + length
    transfer_syntax = syntax.rstrip(b"\x00 ").decode("ascii", "replace")
    encapsulated = False
    if transfer_syntax == _EXPLICIT_LE:
        implicit = False
    elif transfer_syntax in _ENCAPSULATED:
        implicit = False
        encapsulated = True
    elif transfer_syntax == _IMPLICIT_LE:
        implicit = True
        off = w.at(pos, 8)
        first_vr = w.buf[off + 4 : off + 6]
        if 0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B:
            return None  # pydicom would switch to explicit VR (with a warning)
    else:
        return None

    values: dict[int, tuple[bytes | None, bytes]] = {}
    present: list[int] = []
    last = -1
    while True:
        tag, vr, length, hdr = _element(w, pos, implicit)
        if tag <= last or tag >> 16 == 0xFFFE or tag in refused:
            return None
        last = tag
        if tag >= _PIXEL_DATA:
            if tag != _PIXEL_DATA or vr not in (None, b"OB", b"OW"):
                return None
            offset = pos + hdr
            value = None
            if length == _UNDEFINED:
                if not encapsulated:
                    return None
                end = _skip_fragments(w, offset)
                # pydicom keeps a short value in memory (defer_size counts to the delimiter).
                if end - 4 - offset < defer_size:
                    return None
            else:
                end = offset + length
                if encapsulated or end > w.size or length == 0:
                    return None
                if length <= defer_size:  # read at parse time, as pydicom does
                    off = w.at(offset, length)
                    value = w.buf[off : off + length]
            _walk_trailing(w, end, implicit)
            return RawHeader(
                transfer_syntax,
                implicit,
                values,
                frozenset(present),
                encapsulated,
                vr.decode("ascii") if vr is not None else "",
                offset,
                -1 if length == _UNDEFINED else length,
                value,
            )
        present.append(tag)
        pos += hdr
        if length == _UNDEFINED:
            _check_sequence(tag, vr)
            pos = _skip_items(w, pos, implicit)
            continue
        if tag in wanted:
            off = w.at(pos, length)
            values[tag] = (vr, w.buf[off : off + length])
        pos += length
