"""Code-stream headers of compressed frames, checked against the DICOM header.

A pixel decoder sizes its output from the DICOM header but decodes what the
code-stream says. When the two disagree (a file whose (0028,0010) *Rows* or
(0028,0002) *Samples per Pixel* was edited after compression, a converter
that wrote the wrong (0028,0100) *Bits Allocated*) decoders misbehave in
every way: pydicom's checks catch some, others return garbage of the right
size, and GDCM aborts the whole interpreter (SIGABRT, "An invalid logic
behavior occurred"). So before any decoder sees a frame, its code-stream
header is parsed here and compared with the DICOM header; a disagreement is a
:class:`~torchdicom.errors.CorruptDicomError` naming the file, the frame, the
header's value and the code-stream's value.

What is read, per transfer syntax family:

* **JPEG** (baseline, extended, lossless): the first SOF\\ *n* segment —
  sample precision P, lines Y, samples per line X, components Nf
  (ITU-T T.81 B.2.2). Y = 0 means the height comes later in a DNL segment
  (T.81 B.2.5), which is looked up after the first scan.
* **JPEG-LS**: the SOF55 segment (0xFFF7), laid out like a JPEG SOF
  (ITU-T T.87 C.2.2).
* **JPEG 2000** (incl. High-Throughput): the SIZ segment (0xFF51) of the
  code-stream — image size minus offset, components, and per component the
  bit depth and signedness (ITU-T T.800 A.5.1); a JP2 file wrapper is
  opened to its ``jp2c`` box first.
* **RLE Lossless**: the 64-byte RLE header — the number of segments and
  their offsets (PS3.5 G.3.1).

The module also counts the frames pixel data really holds, the way pydicom's
``pixel_array`` counts them (:func:`frames_held`): from the bytes of native
data, and from the offset table or fragment structure (item headers and
end-of-image markers, never the code-streams' contents) of encapsulated data.

The bit depth rule: a code-stream's sample precision must fit in (0028,0100)
*Bits Allocated*. It is deliberately not compared with (0028,0101) *Bits
Stored*: real files routinely disagree there (12-bit CT in a 16-bit JPEG
lossless stream, 8-bit J2K precision for a header saying 12), and pydicom
decodes them by the code-stream's precision.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import pydicom.uid as uids

from torchdicom.errors import CorruptDicomError

__all__ = [
    "CodestreamHeader",
    "check_frame",
    "codestream_family",
    "encapsulated_frames_held",
    "frame_spans",
    "frames_held",
    "join_fragments",
    "native_frames_held",
    "parse_j2k",
    "parse_jpeg",
    "parse_rle",
]

_JPEG = frozenset(
    {
        uids.JPEGBaseline8Bit,
        uids.JPEGExtended12Bit,
        uids.JPEGLossless,
        uids.JPEGLosslessSV1,
    }
)
_JPEG_LS = frozenset({uids.JPEGLSLossless, uids.JPEGLSNearLossless})
_J2K = frozenset(
    {
        uids.JPEG2000Lossless,
        uids.JPEG2000,
        uids.HTJ2KLossless,
        uids.HTJ2KLosslessRPCL,
        uids.HTJ2K,
    }
)

# Start-of-frame markers of T.81 (0xC4 DHT, 0xC8 JPG and 0xCC DAC share the
# range but are not frames) and SOF55 of T.87 (JPEG-LS).
_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)
# Markers with no length field: TEM, RST0-7, SOI (EOI and SOS end the search).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_SOS, _EOI, _DNL = 0xDA, 0xD9, 0xDC

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"

log = logging.getLogger("torchdicom.io")

_RLE_HEADER_BYTES = 64
_RLE_MAX_SEGMENTS = 15


class _Unparseable(ValueError):
    """The code-stream header is missing or malformed (the reason is the message)."""


class _Mismatch(ValueError):
    """The RLE header disagrees with the DICOM header (the message says how)."""


@dataclass(frozen=True)
class CodestreamHeader:
    """What a frame's code-stream says about the image it holds.

    Attributes:
        kind: ``"JPEG"``, ``"JPEG-LS"`` or ``"JPEG 2000"``.
        rows: lines (image height).
        columns: samples per line (image width).
        samples: components.
        precision: the largest bit depth of any component.
    """

    kind: str
    rows: int
    columns: int
    samples: int
    precision: int


def codestream_family(transfer_syntax: str) -> str | None:
    """``"JPEG"``, ``"JPEG-LS"``, ``"JPEG 2000"``, ``"RLE"``, or ``None`` for other syntaxes."""
    if transfer_syntax in _JPEG:
        return "JPEG"
    if transfer_syntax in _JPEG_LS:
        return "JPEG-LS"
    if transfer_syntax in _J2K:
        return "JPEG 2000"
    if transfer_syntax == uids.RLELossless:
        return "RLE"
    return None


# --------------------------------------------------------------------------- JPEG / JPEG-LS
def _u16(data: bytes, pos: int) -> int:
    if pos + 2 > len(data):
        raise _Unparseable("the code-stream ends inside a marker segment")
    return (data[pos] << 8) | data[pos + 1]


def parse_jpeg(frame: bytes, kind: str = "JPEG") -> CodestreamHeader:
    """Read the SOF (or JPEG-LS SOF55) segment of a JPEG-family code-stream.

    Args:
        frame: one frame's code-stream, starting with SOI (0xFFD8).
        kind: ``"JPEG"`` or ``"JPEG-LS"`` (names the stream in messages).

    Raises:
        ValueError: no SOI, no SOF before the first scan, or a truncated segment.
    """
    if frame[:2] != b"\xff\xd8":
        raise _Unparseable(f"the {kind} code-stream does not start with an SOI marker")
    pos = 2
    end = len(frame)
    while pos < end:
        if frame[pos] != 0xFF:
            raise _Unparseable(f"the {kind} code-stream has no marker at byte {pos}")
        # Any number of 0xFF fill bytes may precede a marker (T.81 B.1.1.2).
        while pos < end and frame[pos] == 0xFF:
            pos += 1
        if pos >= end:
            break
        marker = frame[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (_SOS, _EOI):
            raise _Unparseable(f"the {kind} code-stream has no start-of-frame (SOF) segment")
        length = _u16(frame, pos)
        if length < 2:
            raise _Unparseable(f"the {kind} code-stream has a marker segment of length {length}")
        if marker in _SOF_MARKERS:
            if pos + 8 > end:
                raise _Unparseable(f"the {kind} code-stream ends inside its SOF segment")
            precision = frame[pos + 2]
            lines = _u16(frame, pos + 3)
            columns = _u16(frame, pos + 5)
            components = frame[pos + 7]
            if lines == 0:
                lines = _dnl_lines(frame, pos + length, kind)
            return CodestreamHeader(kind, lines, columns, components, precision)
        pos += length
    raise _Unparseable(f"the {kind} code-stream has no start-of-frame (SOF) segment")


def _dnl_lines(frame: bytes, start: int, kind: str) -> int:
    """Y = 0 in the SOF: the number of lines is in a DNL segment after the first scan.

    Entropy-coded data never holds 0xFF followed by 0xDC (JPEG stuffs 0x00
    after 0xFF, JPEG-LS a byte below 0x80), so the first such pair is the DNL.
    """
    pos = frame.find(b"\xff\xdc", start)
    if pos < 0 or pos + 6 > len(frame):
        raise _Unparseable(
            f"the {kind} code-stream's SOF gives 0 lines and no DNL segment gives the number"
        )
    return _u16(frame, pos + 4)


# --------------------------------------------------------------------------- JPEG 2000
def _j2k_codestream(frame: bytes) -> int:
    """Offset of the J2K code-stream in ``frame``: 0, or inside a JP2 ``jp2c`` box."""
    if frame[:4] == _J2K_SOC_SIZ:
        return 0
    if frame[: len(_JP2_SIGNATURE)] != _JP2_SIGNATURE:
        raise _Unparseable(
            "the JPEG 2000 code-stream starts with neither SOC+SIZ (0xFF4F 0xFF51) nor a JP2 signature"
        )
    pos = 0
    end = len(frame)
    while pos + 8 <= end:
        box_length, box_type = struct.unpack_from(">I4s", frame, pos)
        header = 8
        if box_length == 1:  # the real length follows as 64 bits
            if pos + 16 > end:
                break
            box_length = struct.unpack_from(">Q", frame, pos + 8)[0]
            header = 16
        elif box_length == 0:  # the last box runs to the end
            box_length = end - pos
        if box_type == b"jp2c":
            return pos + header
        if box_length < header:
            break
        pos += box_length
    raise _Unparseable("the JP2 file holds no contiguous code-stream (jp2c) box")


def parse_j2k(frame: bytes) -> CodestreamHeader:
    """Read the SIZ segment of a JPEG 2000 code-stream (raw, or wrapped in JP2).

    Raises:
        ValueError: no SOC + SIZ, or a truncated SIZ.
    """
    pos = _j2k_codestream(frame)
    if frame[pos : pos + 4] != _J2K_SOC_SIZ:
        raise _Unparseable("the JPEG 2000 code-stream does not start with SOC and SIZ markers")
    # SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz.
    fixed = ">HHIIIIIIIIH"
    body = pos + 4
    if body + struct.calcsize(fixed) > len(frame):
        raise _Unparseable("the JPEG 2000 code-stream ends inside its SIZ segment")
    _, _, xsiz, ysiz, xosiz, yosiz, _, _, _, _, csiz = struct.unpack_from(fixed, frame, body)
    comps = body + struct.calcsize(fixed)
    if csiz == 0 or comps + 3 * csiz > len(frame):
        raise _Unparseable(f"the JPEG 2000 SIZ segment is truncated or lists {csiz} components")
    # Ssiz: bit depth - 1 in the low 7 bits, signedness in the top bit.
    precision = max((frame[comps + 3 * c] & 0x7F) + 1 for c in range(csiz))
    return CodestreamHeader("JPEG 2000", ysiz - yosiz, xsiz - xosiz, csiz, precision)


# --------------------------------------------------------------------------- RLE
def parse_rle(frame: bytes) -> list[int]:
    """The segment offsets listed in an RLE frame's 64-byte header (PS3.5 G.5).

    Raises:
        ValueError: a frame shorter than its header, or 0 / more than 15 segments.
    """
    if len(frame) < _RLE_HEADER_BYTES:
        raise _Unparseable(
            f"the RLE frame is {len(frame)} bytes, shorter than its {_RLE_HEADER_BYTES}-byte header"
        )
    header = struct.unpack_from("<16I", frame, 0)
    count = header[0]
    if not 1 <= count <= _RLE_MAX_SEGMENTS:
        raise _Unparseable(f"the RLE header lists {count} segments (1 to 15 allowed)")
    return list(header[1 : 1 + count])


# --------------------------------------------------------------------------- the check
def check_frame(
    frame: bytes,
    transfer_syntax: str,
    *,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    path: str | None,
    index: int,
) -> CodestreamHeader | None:
    """Refuse a frame whose code-stream disagrees with the DICOM header.

    Args:
        frame: the frame's code-stream (all its fragments joined).
        transfer_syntax: (0002,0010) *Transfer Syntax UID*; other syntaxes
            than JPEG, JPEG-LS, JPEG 2000 and RLE pass unchecked.
        rows, columns: (0028,0010) *Rows*, (0028,0011) *Columns*.
        samples_per_pixel: (0028,0002) *Samples per Pixel*.
        bits_allocated: (0028,0100) *Bits Allocated*.
        path: the file, for the message.
        index: the 0-based frame, for the message.

    Returns:
        The parsed header (JPEG, JPEG-LS, JPEG 2000), or ``None`` (RLE and
        syntaxes without a checked code-stream).

    Raises:
        CorruptDicomError: a mismatch ("(0028,0010) Rows is 512 but the
            JPEG-LS code-stream says 256"), or an absent or unreadable
            code-stream header.
    """
    family = codestream_family(transfer_syntax)
    if family is None:
        return None
    try:
        if family == "RLE":
            _check_rle(frame, samples_per_pixel, bits_allocated)
            return None
        info = parse_j2k(frame) if family == "JPEG 2000" else parse_jpeg(frame, family)
    except _Unparseable as exc:
        raise CorruptDicomError(path, f"pixel data cannot be decoded: {exc}", frame=index) from None
    except _Mismatch as exc:
        raise CorruptDicomError(path, str(exc), frame=index) from None
    stream = f"the {info.kind} code-stream"
    for tag, value, found in (
        ("(0028,0010) Rows", rows, info.rows),
        ("(0028,0011) Columns", columns, info.columns),
        ("(0028,0002) Samples per Pixel", samples_per_pixel, info.samples),
    ):
        if value != found:
            raise CorruptDicomError(
                path, f"{tag} is {value} but {stream} says {found}", frame=index
            )
    if info.precision > bits_allocated:
        raise CorruptDicomError(
            path,
            f"(0028,0100) Bits Allocated is {bits_allocated} but {stream} holds"
            f" {info.precision}-bit samples",
            frame=index,
        )
    return info


def _check_rle(frame: bytes, samples_per_pixel: int, bits_allocated: int) -> None:
    offsets = parse_rle(frame)
    # One segment per byte of each sample, most significant byte first (PS3.5 G.2).
    expected = samples_per_pixel * ((bits_allocated + 7) // 8)
    if len(offsets) != expected:
        raise _Mismatch(
            f"(0028,0002) Samples per Pixel is {samples_per_pixel} and (0028,0100) Bits Allocated"
            f" is {bits_allocated}, which make {expected} RLE segments, but the RLE header"
            f" says {len(offsets)}"
        )
    previous = _RLE_HEADER_BYTES - 1
    for k, offset in enumerate(offsets):
        if not previous < offset <= len(frame):
            raise _Mismatch(
                f"the RLE header's segment {k} starts at byte {offset}, outside"
                f" {previous + 1}..{len(frame)} of the {len(frame)}-byte frame"
            )
        previous = offset


# --------------------------------------------------------------------------- frames held
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_END_MARKER = b"\xff\xd9"  # JPEG EOI; also JPEG 2000 EOC
# pydicom looks for the end marker in a fragment's last bytes only.
_END_MARKER_WINDOW = 10


def _frames_by_offset_table(offsets: tuple[int, ...], lengths: list[int]) -> int:
    """How many frames pydicom's offset-table walk yields: a new frame each time a
    fragment starts at or past the next listed offset, never more than one per fragment."""
    frame = 0
    position = 0
    for length in lengths:
        if frame < len(offsets) - 1 and position >= offsets[frame + 1]:
            frame += 1
        position += 8 + length
    return frame + 1


def native_frames_held(
    declared: int,
    length: int,
    *,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    photometric: str,
) -> int:
    """How many frames pydicom's ``pixel_array`` returns for native pixel data.

    pydicom 3 (its default ``allow_excess_frames=True``) returns every whole
    frame the value holds when it is longer than (0028,0008) *Number of
    Frames* frames plus padding, except for YBR_FULL_422 (where excess bytes
    mean a wrong Photometric Interpretation instead).

    Args:
        declared: (0028,0008) *Number of Frames*, 1 when absent.
        length: the pixel data value's length in bytes (-1 when unknown).

    Returns:
        ``declared``, or the larger number of whole frames the value holds.
    """
    frame_bits = rows * columns * samples_per_pixel * bits_allocated
    if length < 0 or frame_bits <= 0 or photometric == "YBR_FULL_422":
        return declared
    expected = -(-frame_bits * declared // 8)
    if length <= expected + expected % 2:
        return declared
    return max(declared, length * 8 // frame_bits)


class _Walk(NamedTuple):
    offsets: tuple[int, ...]  # the basic offset table (relative to the first fragment's item)
    fragments: list[tuple[int, int]]  # (file offset of the value, length) of each fragment
    closed: bool  # the fragments end in a sequence delimiter inside the file


def _walk_fragments(read_at: Callable[[int, int], bytes], start: int, end: int) -> _Walk | None:
    """The basic offset table and fragments of encapsulated pixel data; None: damaged table.

    Only item headers are read; every fragment costs at least its 8-byte
    header, so the walk ends, and it never reads at or past ``end``.
    """
    head = read_at(start, 8)
    if len(head) < 8 or head[:4] != _ITEM:
        return None
    table_bytes = int.from_bytes(head[4:], "little")
    if table_bytes % 4 or start + 8 + table_bytes > end:
        return None
    offsets = struct.unpack(f"<{table_bytes // 4}I", read_at(start + 8, table_bytes))
    fragments: list[tuple[int, int]] = []
    pos = start + 8 + table_bytes
    closed = False
    while pos + 8 <= end:
        item = read_at(pos, 8)
        if len(item) < 8 or item[:4] != _ITEM:
            closed = item == _SEQUENCE_DELIMITER
            break  # the sequence delimiter, or damage the read reports
        length = int.from_bytes(item[4:], "little")
        fragments.append((pos + 8, length))
        pos += 8 + length
    return _Walk(offsets, fragments, closed)


def frame_spans(
    read_at: Callable[[int, int], bytes], start: int, end: int, frames: int
) -> tuple[list[int], list[int]] | None:
    """Where each frame's fragments lie in the file, as pydicom's ``get_frame`` finds them.

    A frame's span runs from its first fragment's item header to the end of
    its last fragment, so reading a frame is one ``pread`` of the span, whose
    items are then joined (:func:`join_fragments`). Recorded only where the
    frames are unambiguous: a basic offset table whose every entry starts a
    fragment (one entry per frame), or, without one, one fragment per frame,
    or all fragments of a single frame; and the fragments must end in the
    sequence delimiter, inside the file. Anything else (extended offset
    tables, frames split at end-of-image markers, damaged tables) gives
    ``None``: those frames are located by pydicom at read time.

    Args:
        read_at: ``read_at(offset, n)`` returns up to ``n`` bytes of the file at ``offset``.
        start: the file offset of the pixel data value (the offset table's item tag).
        end: the file size.
        frames: the frames indexed (see :func:`frames_held`).

    Returns:
        ``(offsets, lengths)`` of each frame's span, or ``None``.
    """
    walked = _walk_fragments(read_at, start, end)
    if walked is None or not walked.closed or not walked.fragments or frames < 1:
        return None
    items = [offset - 8 for offset, _ in walked.fragments]
    stops = [offset + length for offset, length in walked.fragments]
    if walked.offsets:
        if len(walked.offsets) != frames:
            return None
        base = items[0]
        starts = [base + relative for relative in walked.offsets]
        where = {item: k for k, item in enumerate(items)}
        if any(s not in where for s in starts) or any(b <= a for a, b in pairwise(starts)):
            return None
        firsts = [where[s] for s in starts]
        lasts = [k - 1 for k in firsts[1:]] + [len(items) - 1]
    elif len(items) == frames:
        firsts = lasts = list(range(frames))
    elif frames == 1:
        firsts, lasts = [0], [len(items) - 1]
    else:
        return None
    offsets = [items[k] for k in firsts]
    return offsets, [stops[last] - items[first] for first, last in zip(firsts, lasts, strict=True)]


def join_fragments(span: bytes | memoryview) -> bytes:
    """The code-stream of one frame from its span (see :func:`frame_spans`): its items joined.

    Raises:
        ValueError: the span is not a run of whole fragment items (the file
            changed in place, or the index is not this file's).
    """
    view = memoryview(span)
    if len(view) >= 8 and view[:4] == _ITEM:
        length = int.from_bytes(view[4:8], "little")
        if length == len(view) - 8:
            return bytes(view[8:])  # one fragment: the common case
    parts = []
    pos = 0
    while pos < len(view):
        if pos + 8 > len(view) or view[pos : pos + 4] != _ITEM:
            raise ValueError("the frame's bytes are not fragment items")
        length = int.from_bytes(view[pos + 4 : pos + 8], "little")
        if pos + 8 + length > len(view):
            raise ValueError("a fragment runs past the frame's recorded end")
        parts.append(view[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return b"".join(parts)


def encapsulated_frames_held(
    read_at: Callable[[int, int], bytes],
    start: int,
    end: int,
    declared: int,
    *,
    one_fragment_per_frame: bool = False,
) -> tuple[int, int]:
    """How many frames pydicom finds in encapsulated pixel data, and how many images it holds.

    Follows pydicom 3's ``generate_frames``: a basic offset table gives one
    frame per entry; without one, a single fragment is one frame, as many
    fragments as declared frames are one frame each, the fragments of a
    single declared frame are joined into that frame, and more fragments than
    (several) declared frames are split after each fragment that ends in an
    end-of-image marker (JPEG EOI / JPEG 2000 EOC, 0xFFD9), leftover
    fragments making a last frame. Only item headers and fragment tails are
    read: a few bytes per fragment.

    Args:
        read_at: ``read_at(offset, n)`` returns up to ``n`` bytes of the file at ``offset``.
        start: the file offset of the pixel data value (the offset table's item tag).
        end: where reading must stop (the file size).
        declared: (0028,0008) *Number of Frames*, 1 when absent.
        one_fragment_per_frame: RLE (PS3.5 A.4.2: each frame in exactly one
            fragment), where every fragment is an image.

    Returns:
        ``(frames, images)``: the frames pydicom decodes (``declared`` unless
        the data holds more), and the number of fragments ending an image
        when pydicom joins several fragments into one declared frame (else
        ``frames``). Damaged item structure gives ``(declared, declared)``:
        the read reports it.
    """
    walked = _walk_fragments(read_at, start, end)
    if walked is None:
        return declared, declared  # a damaged offset table: the read reports it
    offsets, fragments, _ = walked
    if offsets:
        held = _frames_by_offset_table(offsets, [length for _, length in fragments])
        return (held, held) if held > declared else (declared, declared)
    if len(fragments) <= 1 or len(fragments) <= declared:
        return declared, declared
    if one_fragment_per_frame and declared == 1:
        # pydicom joins them into one frame; each was an image all the same.
        return 1, len(fragments)
    ends = 0
    trailing = False
    for offset, length in fragments:
        window = min(length, _END_MARKER_WINDOW)
        trailing = _END_MARKER not in read_at(offset + length - window, window)
        ends += not trailing
    images = ends + trailing
    if declared == 1:
        return 1, images
    return max(declared, images), max(declared, images)


def _file_size(path: str) -> int:
    if "://" in path:
        from torchdicom.sources.remote import handle, is_remote

        if is_remote(path):
            return handle(path).size
    return os.stat(path).st_size


def frames_held(
    path: str,
    declared: int | None,
    *,
    transfer_syntax: str,
    encapsulated: bool,
    offset: int,
    length: int,
    value: bytes | None,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    photometric: str,
) -> int:
    """The number of frames to index: what pydicom's ``pixel_array`` returns.

    torchdicom promises pydicom's pixels, and pydicom returns the frames the
    pixel data holds beyond (0028,0008) *Number of Frames* (or when it is
    missing), with a warning. So does the index: the frames are kept and a
    warning naming the file and both counts goes to the ``torchdicom.io``
    logger. Frames are never dropped silently: where pydicom joins several
    fragments that each hold an image into one declared frame, that is
    logged too.

    Args:
        path: the file (read only for encapsulated data not in memory).
        declared: (0028,0008) *Number of Frames*, ``None`` when absent.
        transfer_syntax: (0002,0010) *Transfer Syntax UID*.
        encapsulated: whether the transfer syntax is encapsulated.
        offset: file offset of the pixel data value (-1: not addressable).
        length: the value's length in bytes (-1: undefined or unknown).
        value: the value when it is already in memory, else ``None``.
        rows, columns, samples_per_pixel, bits_allocated, photometric: the
            (0028,xxxx) image pixel description, already validated.

    Returns:
        The number of frames to index (at least ``declared``, or 1).
    """
    count = 1 if declared is None else declared
    rle = transfer_syntax == uids.RLELossless
    said = "absent" if declared is None else str(declared)
    if not encapsulated:
        if value is not None:
            length = len(value)
        elif offset >= 0 and length > 0:
            # pydicom counts the bytes it reads, never past the end of the file.
            try:
                length = max(0, min(length, _file_size(path) - offset))
            except OSError:
                return count  # the read reports the file
        held = native_frames_held(
            count,
            length,
            rows=rows,
            columns=columns,
            samples_per_pixel=samples_per_pixel,
            bits_allocated=bits_allocated,
            photometric=photometric,
        )
        images = held
    elif value is not None:
        held, images = encapsulated_frames_held(
            lambda at, n: value[at : at + n], 0, len(value), count, one_fragment_per_frame=rle
        )
    elif offset >= 0 and length < 0 and "://" in path:
        # A remote object (torchdicom.sources): item headers (and fragment tails) by range.
        from torchdicom.sources.remote import handle

        try:
            remote = handle(path)
            held, images = encapsulated_frames_held(
                lambda at, n: remote.pread(n, at),
                offset,
                remote.size,
                count,
                one_fragment_per_frame=rle,
            )
        except OSError:
            return count  # the read reports the object
    elif offset >= 0 and length < 0:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            return count  # the read reports the file
        try:
            end = os.fstat(fd).st_size
            held, images = encapsulated_frames_held(
                lambda at, n: os.pread(fd, max(0, min(n, end - at)), at),
                offset,
                end,
                count,
                one_fragment_per_frame=rle,
            )
        finally:
            os.close(fd)
    else:
        # Deflated or defined-length encapsulated data: counted by pydicom at read time only.
        return count
    if held > count:
        log.warning(
            "%s: the pixel data holds %d frames but (0028,0008) Number of Frames is %s;"
            " all %d frames are read, as pydicom's pixel_array does",
            path,
            held,
            said,
            held,
        )
    elif images > held:
        log.warning(
            "%s: (0028,0008) Number of Frames is %s and the pixel data has no offset table,"
            " but its %d fragments each end an image; as pydicom's pixel_array does, they"
            " are decoded as one frame",
            path,
            said,
            images,
        )
    return held
