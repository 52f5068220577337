"""DicomShardDataset: stream frames from tar shards written by :func:`torchdicom.export.to_webdataset`.

Each shard's offset table (``<shard>.idx.json``) holds every member's index row with its
pixel offset and frame spans in tar coordinates. An item is read by handing the read
routes (:data:`torchdicom.io.frames.ROUTES`) a row whose ``path`` is the shard: native
frames are one ``pread`` at their offset inside the tar, compressed frames go through the
same span decoders as files, and the routes that need a whole DICOM file (pydicom's data
set) read only the member's byte range (``member_offset`` / ``member_size``). Items equal
:class:`~torchdicom.data.DicomDataset`'s for the same files (same keys, dtype rule,
:class:`~torchdicom.data.Collate`).

Remote shards (fsspec URLs) are *spooled* by default: the byte range of the members a
worker reads from a shard is fetched in a few large concurrent range requests into a
sparse local file, read through the routes, and deleted when the worker leaves the shard.
Per item that is no request at all, where reading members in place (``spool=False``) costs
a range request per frame, as per-file reads do.

Splitting (many nodes, many workers): items are split at the item level from the offset
tables, not by whole shards, so that every rank gets the same number of items:

1. The shard order of an epoch is a permutation seeded by ``(seed, epoch)``
   (``shuffle=True``; :meth:`set_epoch` picks the epoch), else the manifest's order. The
   items of the shards in that order form one sequence of ``N`` items.
2. Rank ``r`` of ``W`` ranks starts at item ``r * N // W`` and takes ``L`` items:
   ``epoch_rule="pad"`` (default) ``L = ceil(N / W)`` (wrapping around to the first items,
   so ``(-N) mod W`` items are seen twice an epoch, like ``DistributedSampler``);
   ``"drop"`` ``L = N // W`` (``N mod W`` items, others each shuffled epoch, are left out).
   With ``N`` divisible by ``W`` every item is seen exactly once either way.
3. DataLoader worker ``k`` of ``K`` takes items ``L*k//K .. L*(k+1)//K`` of its rank's
   ``L`` (disjoint: nothing is seen twice within a rank). Every rank splits the same ``L``
   the same way, so with the same ``num_workers`` and ``batch_size`` every rank yields the
   same number of batches, and DDP never waits at a collective for a missing batch.
4. Within a shard, a worker's items are read in an order permuted by
   ``(seed, epoch, rank, worker, shard)`` when shuffling. The permutation is of item
   positions, not of decoded images: a frame is a ``pread`` at its offset, so no buffer of
   decoded samples (webdataset's ``shuffle(n)``) is needed to mix a shard fully.

Why not ``webdataset.split_by_node`` / ``split_by_worker`` / ``with_epoch``: they split
whole shard URLs, so the counts per rank differ by up to a shard, and ``with_epoch``
evens them by repeating or cutting a stream, which loses exactly-once; and webdataset's
tar reader streams each member into memory, where the routes read frames at their
offsets. The shards are plain webdataset tars all the same (``<key>.dcm``, ``<key>.cls``),
readable by webdataset for other uses.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import posixpath
import re
import struct
import tarfile
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from torchdicom._runtime import batch_buffer, run_in_slices
from torchdicom.data._base import (
    _MAX_SUBSTITUTES,
    _TORCH_DTYPES,
    _into_dtype,
    _meta,
    _SkipCounter,
    first_readable,
    keeps_ybr,
    size_policy,
    stored_dtype,
)
from torchdicom.data.resize import ResizeMode
from torchdicom.errors import (
    CorruptDicomError,
    DicomFileNotFoundError,
    TorchDicomError,
)
from torchdicom.export import _FORMAT_VERSION, MANIFEST_NAME, SHARD_TABLE_SUFFIX, entry_checksum
from torchdicom.io.frames import (
    check_declared_size,
    native_layout,
    read_frames_numpy,
    read_native_batch,
)
from torchdicom.io.header import frame_row
from torchdicom.io.schema import INDEX_SCHEMA, KIND_FILLS
from torchdicom.keys import FRAME, IMAGE, INDEX, LABEL, PATH, SUBSTITUTED, YBR

__all__ = ["DicomShardDataset", "EpochLoader", "partition"]

log = logging.getLogger("torchdicom.data")

_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
_SPOOL_CHUNK = 16 * 2**20  # bytes per range request when spooling a remote shard
_TABLES_KEPT = 16  # offset tables kept per worker (see DicomShardDataset._table)
_JSON_MAX = 2**30  # an offset table or manifest larger than this is not one


class _Opened(NamedTuple):
    """A segment whose shard is open: its table, located items and where the routes read."""

    shard: int
    positions: np.ndarray
    table: dict[str, Any]
    located: list[tuple[int, int]]  # (member, item within the member) per position
    where: dict[str, Any]
    stack: contextlib.ExitStack
    whole: bool  # every member is readable (False: a spool holding the segment's only)


class _Pending(NamedTuple):
    """An item located but not read yet: its shard, offset-table member, row and frame, and
    its open segment and slot there (where its substitutes come from, on_error="skip")."""

    url: str
    member: dict[str, Any]
    row: dict[str, Any]
    frame: int
    index: int
    opened: _Opened
    slot: int  # in opened.positions; -1 for a substitute from outside the segment


class _Shard(NamedTuple):
    url: str
    tar_size: int
    members: int
    frames: int
    layouts: list[list[Any]]  # [pixel_keyword, bits_allocated, bits_stored, representation, n]
    samples: list[int] | None  # distinct Samples per Pixel (None: a manifest from before them)


# --------------------------------------------------------------------------- sources
def _is_remote(url: str) -> bool:
    from torchdicom.sources.remote import is_remote

    return is_remote(url)


def _display(url: str) -> str:
    from torchdicom.sources.remote import display

    return display(url) if "://" in url else url


def _expand(pattern: str) -> list[str]:
    """``"a/{000000..000003}.tar"`` → the four URLs (webdataset's brace notation; one range)."""
    m = _BRACES.search(pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    return [
        pattern[: m.start()] + str(k).zfill(width) + pattern[m.end() :]
        for k in range(int(lo), int(hi) + 1)
    ]


def _read_json(url: str, what: str) -> dict[str, Any]:
    """A manifest or offset table, local or remote; failures as torchdicom errors."""
    try:
        if _is_remote(url):
            from torchdicom.sources import remote

            # One ranged GET up to a bound no table reaches (a whole-object read costs a HEAD
            # for the size first on s3fs: a round trip per shard and epoch).
            text = remote.read_range(url, 0, _JSON_MAX)
            if len(text) >= _JSON_MAX:
                raise CorruptDicomError(_display(url), f"{what} is larger than {_JSON_MAX} bytes")
        else:
            from torchdicom.sources.remote import local_path

            with open(local_path(url), "rb") as f:
                if os.fstat(f.fileno()).st_size >= _JSON_MAX:
                    raise CorruptDicomError(url, f"{what} is larger than {_JSON_MAX} bytes")
                text = f.read()
    except FileNotFoundError:
        raise DicomFileNotFoundError(
            _display(url), f"no {what} (shards are written by torchdicom.export.to_webdataset)"
        ) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: hostile nesting
        raise CorruptDicomError(_display(url), f"{what} is not valid JSON: {exc}") from None


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if _is_remote(folder) else os.path.join(folder, name)


def _dirname(url: str) -> str:
    return posixpath.dirname(url) if _is_remote(url) else os.path.dirname(url)


def _typed_row(stored: dict[str, Any]) -> dict[str, Any]:
    """An offset table's row with its array columns as numpy arrays, as in an index."""
    row = dict(stored)
    for name, kind in INDEX_SCHEMA.items():
        if kind == "floats":
            row[name] = np.asarray(row.get(name) or [], dtype=np.float64)
        elif kind == "ints":
            row[name] = np.asarray(row.get(name) or [], dtype=np.int64)
        elif name not in row:  # a column added after the export: as the index fills it
            row[name] = KIND_FILLS[kind]
    return row


# --------------------------------------------------------------------------- untrusted input
# A shard set may come from another site or a bucket someone else writes: its manifest and
# offset tables are checked like a file's header before anything is allocated or read.
_MAX_TAR = 2**48  # bytes; a tar_size beyond this is not a shard
_MAX_NAME = 255  # a shard or member name longer than this is not one the export wrote
# Columns of a row the read routes use: a table row without one cannot be read.
_ROW_COLUMNS = (
    "path",
    "size",
    "rows",
    "columns",
    "frames",
    "samples_per_pixel",
    "photometric",
    "planar_configuration",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "transfer_syntax",
    "pixel_keyword",
    "pixel_offset",
    "pixel_length",
    "encapsulated",
    "frame_offsets",
    "frame_lengths",
)
# (7FE0,xxxx) element of each pixel keyword: the element header before a row's pixel offset.
_PIXEL_ELEMENTS = {"PixelData": 0x0010, "FloatPixelData": 0x0008, "DoubleFloatPixelData": 0x0009}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The JSON types of each INDEX_SCHEMA kind in an offset table row.
_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "float": _is_number,
    "ints": lambda v: isinstance(v, list) and all(map(_is_int, v)),
    "floats": lambda v: isinstance(v, list) and all(map(_is_number, v)),
}


class _Refused(Exception):
    """A value of an offset table or manifest that no export writes (the reason)."""


def _integer(value: Any, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused(f"{what} is {value!r}, not an integer")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise _Refused(f"{what} is {value}, outside {bound}")
    return value


def _plain_name(value: Any, what: str) -> str:
    """A file name inside the shards' folder / a tar: no folder part, no traversal."""
    if not isinstance(value, str) or not value:
        raise _Refused(f"{what} is {value!r}, not a file name")
    if (
        len(value) > _MAX_NAME
        or "/" in value
        or "\\" in value
        or "\0" in value
        or value in (".", "..")
        or value.startswith("..")
    ):
        raise _Refused(f"{what} {value[:80]!r} is not a plain file name (a folder part or '..')")
    return value


def _check_manifest(url: str, manifest: Any) -> tuple[list[dict[str, Any]], bool, Any]:
    """The manifest's shard entries, labels flag and classes, checked (see the module
    docstring of :mod:`torchdicom.export` for the format)."""

    def refuse(reason: str) -> CorruptDicomError:
        return CorruptDicomError(_display(url), f"shard manifest: {reason}")

    if not isinstance(manifest, dict) or manifest.get("format") != "torchdicom-shards":
        raise refuse("not a torchdicom shard manifest (no 'format': 'torchdicom-shards')")
    # Written by exports since the checksums (older manifests: the checks below only).
    if "crc32" in manifest and manifest["crc32"] != entry_checksum(manifest):
        raise refuse("changed since the export (its checksum differs): export again")
    entries = manifest.get("shards")
    if not isinstance(entries, list):
        raise refuse(f"'shards' is {type(entries).__name__}, not a list")
    if not entries:
        raise refuse("lists no shards (an export that skipped every file?)")
    classes = manifest.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
    ):
        raise refuse(f"'classes' is {classes!r}, not a list of names")
    try:
        _integer(manifest.get("version"), "'version'", 1, _FORMAT_VERSION)
    except _Refused as exc:
        raise refuse(str(exc)) from None
    seen: set[str] = set()
    for k, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise _Refused(f"is {type(entry).__name__}, not an object")
            name = _plain_name(entry.get("shard"), "'shard'")
            if name in seen:
                raise _Refused(f"{name} is listed twice")
            seen.add(name)
            tar_size = _integer(entry.get("tar_size"), "'tar_size'", 1024, _MAX_TAR)
            # A member takes at least a header block and a data block.
            members = _integer(entry.get("members"), "'members'", 1, tar_size // 1024)
            # At least one frame per member; a frame at least one bit of the tar.
            _integer(entry.get("frames"), "'frames'", members, 8 * tar_size)
            layouts = entry.get("layouts")
            if not isinstance(layouts, list) or not all(
                isinstance(lay, list)
                and len(lay) == 5
                and isinstance(lay[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in lay[1:])
                for lay in layouts
            ):
                raise _Refused(f"'layouts' is {str(layouts)[:80]}, not [keyword, 4 integers] rows")
            for keyword, allocated, stored, representation, _ in layouts:
                if keyword not in _PIXEL_ELEMENTS:
                    raise _Refused(f"'layouts' names pixel keyword {keyword[:40]!r}")
                _integer(allocated, "a layout's bits allocated", 1, 64)
                _integer(stored, "a layout's bits stored", 0, 64)
                _integer(representation, "a layout's pixel representation", 0, 1)
            if sum(lay[4] for lay in layouts) != members or any(lay[4] < 1 for lay in layouts):
                raise _Refused(
                    f"'layouts' count {sum(lay[4] for lay in layouts)} members, not {members}"
                )
            samples = entry.get("samples_per_pixel")
            if samples is not None and (
                not isinstance(samples, list)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in samples)
            ):
                raise _Refused(f"'samples_per_pixel' is {samples!r}, not a list of integers")
        except _Refused as exc:
            raise refuse(f"shard entry {k}: {exc}") from None
    return entries, bool(manifest.get("labels")), classes


def _check_table(url: str, table: Any) -> None:
    """Refuse an offset table whose structure no export writes: members out of the tar,
    overlapping or out of order, or without the row columns the routes read.

    Values of a member's row that only make that member unreadable (a wrong pixel offset,
    frame spans outside the member) are left to :func:`_row_refusal`: a member, not the
    shard, is then refused (``on_error="skip"`` substitutes it).
    """

    def refuse(reason: str) -> CorruptDicomError:
        return CorruptDicomError(_display(url), f"offset table: {reason}")

    if not isinstance(table, dict) or table.get("format") != "torchdicom-shard":
        raise refuse("not a torchdicom offset table (no 'format': 'torchdicom-shard')")
    members = table.get("members")
    try:
        _integer(table.get("version"), "'version'", 1, _FORMAT_VERSION)
        tar_size = _integer(table.get("tar_size"), "'tar_size'", 1024, _MAX_TAR)
        if not isinstance(members, list) or not members:
            raise _Refused(f"'members' is {str(members)[:80]}, not a list of members")
    except _Refused as exc:
        raise refuse(str(exc)) from None
    end = 0  # where the previous member's data ends, padded to the tar's 512-byte blocks
    names: set[str] = set()
    for k, member in enumerate(members):
        label = f"member {k}"
        try:
            if not isinstance(member, dict):
                raise _Refused(f"is {type(member).__name__}, not an object")
            name = _plain_name(member.get("member"), "'member'")
            label = f"member {name}"
            if name in names:
                raise _Refused("is listed twice")
            names.add(name)
            offset = _integer(member.get("offset"), "'offset'", 512, tar_size)
            size = _integer(member.get("size"), "'size'", 1, tar_size)
            if offset % 512:
                raise _Refused(f"'offset' {offset} is not on a 512-byte tar block")
            if offset < end + 512:
                raise _Refused(
                    f"bytes {offset}..{offset + size} overlap the member before it (which ends"
                    f" at {end}, its next header at {end})"
                )
            # The tar ends with two zero blocks after the last member's padded data.
            if offset + size > tar_size - 1024:
                raise _Refused(
                    f"bytes {offset}..{offset + size} reach beyond the tar's {tar_size} bytes"
                )
            end = offset + 512 * math.ceil(size / 512)
            row = member.get("row")
            if not isinstance(row, dict):
                raise _Refused(f"'row' is {type(row).__name__}, not an index row")
            missing = [c for c in _ROW_COLUMNS if c not in row]
            if missing:
                raise _Refused(f"its row has no {', '.join(missing)}")
            # One item per frame: the count decides every rank's share, so it must be sane
            # (at least one bit of the member per frame).
            _integer(row["frames"], "(0028,0008) frames", 1, 8 * size + 8)
            _integer(row["samples_per_pixel"], "(0028,0002) samples per pixel", 1, 4)
            # The layout columns decide the dataset's one dtype, before any member is read.
            keyword = row["pixel_keyword"]
            if not isinstance(keyword, str) or keyword not in _PIXEL_ELEMENTS:
                raise _Refused(f"its row's pixel_keyword is {str(keyword)[:40]!r}")
            _integer(row["bits_allocated"], "(0028,0100) bits allocated", 1, 64)
            _integer(row["bits_stored"], "(0028,0101) bits stored", 0, 64)
            _integer(row["pixel_representation"], "(0028,0103) pixel representation", 0, 1)
        except _Refused as exc:
            raise refuse(f"{label}: {exc}") from None


def _row_refusal(member: dict[str, Any]) -> str | None:
    """Why a (structurally valid) member's row cannot be read, or None.

    Types of every column, the pixel offset and frame spans inside the member, the row's
    file size equal to the member's (a row of another file) and, before anything is
    allocated, the declared pixel size against the member's bytes
    (:func:`~torchdicom.io.frames.check_declared_size`).
    """
    row, offset, size = member["row"], int(member["offset"]), int(member["size"])
    end = offset + size
    # Written by exports since the checksums: any value of the entry changed after export
    # (a row that would read other pixels: rows/columns swapped, bits stored, a label).
    if "crc32" in member and member["crc32"] != entry_checksum(member):
        return "its offset table entry changed since the export (checksum differs): export again"
    try:
        for name, kind in INDEX_SCHEMA.items():
            if name not in row:  # a column added after the export: filled as the index fills it
                continue
            value = row[name]
            ok = _KIND_CHECKS[kind](value)
            if not ok:
                raise _Refused(f"its row's {name} is {str(value)[:40]!r}, not {kind}")
        for name in ("rows", "columns", "bits_allocated"):
            _integer(row[name], f"its row's {name}", 1, 65535)
        if row["pixel_keyword"] not in _PIXEL_ELEMENTS:
            raise _Refused(f"its row's pixel_keyword is {row['pixel_keyword'][:40]!r}")
        if int(row["size"]) != size:
            raise _Refused(
                f"its row is of a file of {row['size']} bytes, the member holds {size}"
                " (an offset table of another shard?)"
            )
        pixel = int(row["pixel_offset"])
        if pixel != -1 and not offset + 8 <= pixel <= end:
            raise _Refused(f"pixel offset {pixel} is outside the member (bytes {offset}..{end})")
        spans = row["frame_offsets"]
        lengths = row["frame_lengths"]
        if len(spans) != len(lengths):
            raise _Refused(f"{len(spans)} frame offsets but {len(lengths)} frame lengths")
        for k, (start, length) in enumerate(zip(spans, lengths)):
            if not (max(pixel, offset) <= start and length >= 0 and start + length <= end):
                raise _Refused(
                    f"frame {k}'s bytes {start}..{start + length} are outside the member's"
                    f" pixel data (bytes {max(pixel, offset)}..{end})"
                )
        check_declared_size({**row, "path": "", "member_offset": offset, "member_size": size})
    except _Refused as exc:
        return f"offset table: {exc}"
    except CorruptDicomError as exc:
        return exc.reason
    return None


def _member_refusal(fd: int, member: dict[str, Any], row: dict[str, Any]) -> str | None:
    """Why the member's bytes in the tar are not what its row describes, or None.

    One ``pread`` of its tar header and its DICOM header: the tar header must be a regular
    file of the member's name and size (not a link, a device, another member: an offset
    table of another shard, or a tar rewritten after export), the element header before the
    pixel offset must be the row's pixel data element (native data: its length; compressed:
    undefined length), and the header bytes must have the checksum the export recorded
    (a member rewritten after export).
    """
    offset, size = int(member["offset"]), int(member["size"])
    pixel = int(row["pixel_offset"])
    head = (pixel if pixel >= 0 else offset + size) - offset
    if "head_crc32" not in member:
        head = min(head, max(pixel - offset, 0))  # a table written before the checksum
    buf = bytearray(512 + head)
    got = os.preadv(fd, [buf], offset - 512)
    if got != len(buf):
        return f"the tar ends inside member bytes {offset}..{offset + head}: the shard is truncated"
    try:
        info = _tar_header(bytes(buf[:512]))
    except tarfile.HeaderError as exc:
        return f"no valid tar header before its bytes at {offset} ({exc})"
    if info.name != member["member"] or not info.isreg() or info.size != size:
        kind = (
            "regular file"
            if info.isreg()
            else {
                tarfile.SYMTYPE: "symbolic link",
                tarfile.LNKTYPE: "hard link",
                tarfile.CHRTYPE: "character device",
                tarfile.BLKTYPE: "block device",
                tarfile.DIRTYPE: "directory",
                tarfile.FIFOTYPE: "FIFO",
            }.get(info.type, f"type {info.type!r}")
        )
        return (
            f"the tar holds {kind} {info.name[:80]!r} of {info.size} bytes at its offset, not"
            f" a file of {size} bytes: the offset table is not this shard's"
        )
    data = bytes(buf[512:])
    want = member.get("head_crc32")
    if want is not None and zlib.crc32(data) != want:
        return "its header bytes changed since the export (checksum differs): export again"
    if pixel >= 0:
        element = _pixel_element(data, pixel - offset, row)
        if element is not None:
            return element
    return None


def _tar_header(block: bytes) -> tarfile.TarInfo:
    """The tar header ``block`` as tarfile reads it; the plain USTAR headers the export
    writes are parsed here (a third of the time of ``TarInfo.frombuf``).

    Raises:
        tarfile.HeaderError: not a valid header (checksum, fields).
    """
    if block[257:263] != b"ustar\0" or block[345] or block[124] & 0x80 or block[148] & 0x80:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")  # GNU, PAX, prefix
    try:
        checksum = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise tarfile.InvalidHeaderError("invalid header") from None
    if checksum != sum(block[:148]) + 256 + sum(block[156:]):
        raise tarfile.InvalidHeaderError("bad checksum")
    info = tarfile.TarInfo(block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
    info.type = block[156:157] or tarfile.REGTYPE
    info.size = size
    return info


def _pixel_element(data: bytes, at: int, row: dict[str, Any]) -> str | None:
    """Why the bytes before offset ``at`` are not the row's pixel data element header."""
    big = row["transfer_syntax"] == _BIG_ENDIAN
    order = ">" if big else "<"
    tag = (0x7FE0, _PIXEL_ELEMENTS[row["pixel_keyword"]])
    implicit = row["transfer_syntax"] == _IMPLICIT_LE
    start = at - (8 if implicit else 12)
    if start < 0:
        return f"its pixel offset {at} leaves no room for the pixel data element header"
    group, element = struct.unpack_from(f"{order}HH", data, start)
    length = struct.unpack_from(f"{order}I", data, at - 4)[0]
    if (group, element) != tag:
        return (
            f"no ({tag[0]:04X},{tag[1]:04X}) element header before its pixel offset (found"
            f" ({group:04X},{element:04X})): the offset table does not describe this member"
        )
    if bool(row["encapsulated"]) != (length == 0xFFFFFFFF):
        said = "compressed (encapsulated)" if row["encapsulated"] else "native"
        found = "encapsulated" if length == 0xFFFFFFFF else f"native ({length} bytes)"
        return f"its row says {said} pixel data but the member's is {found}"
    if not row["encapsulated"] and int(row["pixel_length"]) not in (-1, length):
        return (
            f"its row says {row['pixel_length']} bytes of pixel data, the member's element {length}"
        )
    return None


# --------------------------------------------------------------------------- partition
def partition(
    counts: Sequence[int],
    order: Sequence[int],
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    epoch_rule: Literal["pad", "drop"] = "pad",
) -> list[tuple[int, int, int]]:
    """The items one DataLoader worker of one rank reads in an epoch, as shard segments.

    Args:
        counts: items of each shard, by shard number.
        order: the epoch's shard order (a permutation of the shard numbers).
        rank, world_size: this process's rank among ``world_size``.
        worker, num_workers: this DataLoader worker among ``num_workers`` (0 of 1 without).
        epoch_rule: ``"pad"``: every rank takes ``ceil(N / world_size)`` items, wrapping
            around; ``"drop"``: ``N // world_size`` (see the module docstring).

    Returns:
        ``(shard, first item, stop item)`` segments, items numbered within their shard, in
        reading order.
    """
    total = int(sum(counts))
    if total == 0:
        return []
    per_rank = math.ceil(total / world_size) if epoch_rule == "pad" else total // world_size
    start = rank * total // world_size
    lo = start + per_rank * worker // num_workers
    hi = start + per_rank * (worker + 1) // num_workers
    starts = np.concatenate([[0], np.cumsum([counts[s] for s in order])])
    segments: list[tuple[int, int, int]] = []
    pos = lo
    while pos < hi:
        at = pos % total  # "pad" wraps around to the first items of the epoch
        k = int(np.searchsorted(starts, at, side="right")) - 1
        shard = int(order[k])
        first = at - int(starts[k])
        take = min(int(counts[shard]) - first, hi - pos)
        segments.append((shard, first, first + take))
        pos += take
    return segments


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's (rank, world size): given, else torch.distributed, else RANK / WORLD_SIZE."""
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# --------------------------------------------------------------------------- the dataset
class DicomShardDataset(IterableDataset):
    """Frames (or first frames) of DICOM files streamed from tar shards, split across ranks
    and DataLoader workers.

    Args:
        source: the manifest written by :func:`~torchdicom.export.to_webdataset`
            (``shards/shards.json``, local or an fsspec URL), the shards' folder (its
            ``shards.json``), a list of shard paths/URLs, or a brace pattern
            ``"shards/{000000..000009}.tar"`` (then every offset table is read here).
        frames: ``"all"`` (one item per frame) or ``"first"`` (one item per file).
        transform: CPU-side callable on the item dict.
        shuffle: permute the shard order each epoch and the items within each shard
            (seeded by ``seed`` and the epoch of :meth:`set_epoch`).
        seed: the shuffle seed; the same on every rank.
        epoch_rule: ``"pad"`` or ``"drop"``: how unequal shares are evened out (see the
            module docstring; with a total divisible by the world size both give every
            item exactly once).
        rank, world_size: this process's place in DDP; default: torch.distributed when
            initialised, else the ``RANK`` / ``WORLD_SIZE`` environment variables, else 0 / 1.
        color: ``"rgb"`` or ``"ybr"`` as in :class:`~torchdicom.data.DicomDataset`.
        storage_options: fsspec options for remote shards.
        spool: fetch the members a worker reads from a remote shard in large range
            requests into a local sparse file (default for remote shards); ``False``
            reads each frame from the store in place (a range request per frame; with
            ``batch_size`` a batch's uncompressed frames go as one batch of concurrent
            requests, as :class:`~torchdicom.data.DicomDataset`'s).
        spool_dir: where spooled shards go (default: the system's temporary folder).
        batch_size: the DataLoader's ``batch_size``, when given: each run of that many items
            of a worker whose frames are uncompressed with one shape is read straight into
            one (B, C, H, W) batch buffer and :class:`~torchdicom.data.Collate` hands it on
            without stacking a copy (as DicomDataset's batches). Any other DataLoader batch
            size still gives correct batches, stacked. With a size policy that changes a
            batch's shape the frames are read one by one and resized (nothing to share).
        on_error: ``"raise"`` (default) or ``"skip"``: an item whose member cannot be read
            (a member damaged after export, a transform's TorchDicomError) is replaced by
            the next readable item of the shard this worker has open (its own segment
            first; a remote spooled shard: only that segment; none readable: a copy of the
            item read before it), as DicomDataset substitutes the next readable file;
            logged once per member with the shard, member and reason, and counted in
            :attr:`skipped` (all workers); the item carries
            ``substituted`` True and the failed item's ``index``. Item and batch counts per
            rank stay what they are without errors. Shard-level failures (a missing,
            truncated or rewritten shard) always raise.
        size, resize, channels: the size policy of :class:`~torchdicom.data.DicomDataset`
            (:class:`~torchdicom.data.resize.SizePolicy`): every item becomes ``size``
            (H, W) by ``resize`` (``"stretch"`` / ``"letterbox"`` / ``"crop"``) in the
            worker, in :attr:`dtype`, with ``original_size``, ``crop``, ``scale``,
            ``pad``; ``channels`` 1 (colour → luma) or 3 (grey repeated). With ``size`` and
            no ``channels``, shards mixing grey and colour raise ValueError here (from the
            manifest's samples per pixel; manifests written before it are not checked).

    Item (dict), as :class:`~torchdicom.data.DicomDataset`'s for the same files and
    arguments: ``image`` (C, H, W) in :attr:`dtype`; ``slope``, ``intercept``,
    ``window_center``, ``window_width``, ``affine`` (4, 4), ``monochrome1``,
    ``bits_stored``, ``signed``, ``ybr``; ``label`` (when the shards have labels: integers
    as written, strings encoded in sorted order, :attr:`classes`); ``path`` (the source
    file's path at export); ``frame``; ``index`` (the item's position in the export's
    order, the same in every epoch); with ``size``: ``original_size`` (2,), ``crop``
    (4,), ``scale`` (2,), ``pad`` (4,); with ``on_error="skip"``: ``substituted``.

    Length: ``len(dataset)`` is the items *one rank* yields per epoch (see ``epoch_rule``).

    Epochs: :meth:`set_epoch` writes a shared integer that DataLoader workers, persistent
    ones included, read when an epoch's iteration starts. :class:`EpochLoader` sets it from
    a callable each time it is iterated, and :class:`~torchdicom.DicomDataModule` (``shards=``)
    hands Lightning such a loader reading ``trainer.current_epoch``: no user code. With a
    plain DataLoader under Lightning call ``set_epoch`` in ``on_train_epoch_start``
    (Lightning sets the epoch of samplers only, and an iterable dataset has none).

    Limits (what :class:`~torchdicom.data.DicomDataset` has and this does not): no
    ``masks`` (a shard carries images and labels only), no ``decode_device`` (frames are
    decoded in the workers), no decoded-frame ``cache`` (each frame is decoded each time it
    is read; a frame is read once per epoch anyway), no ``frames=k``. Every rank needs the
    same ``num_workers`` (equal batch counts come from equal per-worker splits).

    Untrusted input: the manifest and offset tables are checked like a file's header
    before any value sizes anything (types, names without folder parts, counts bounded by
    the tar's size, members inside the tar and not overlapping, each table equal to the
    manifest's summary of it, the export's checksums); each member's tar header, pixel
    data element and header bytes are checked once per shard file version (local and
    spooled shards). See tests/RELIABILITY.md, "Shards".

    Raises:
        CorruptDicomError: a shard shorter than its offset table says (truncated), naming
            the shard and the first member it cuts; a damaged or foreign manifest / offset
            table (naming it, the shard entry or member and the value); any read error
            names the shard, the member and the source file.
        ValueError: bad arguments; shards holding no items.

    Example:
        >>> ds = DicomShardDataset("shards/shards.json", shuffle=True)  # doctest: +SKIP
        >>> loader = DataLoader(ds, batch_size=32, num_workers=4, collate_fn=Collate())  # doctest: +SKIP
        >>> for epoch in range(10):  # doctest: +SKIP
        ...     ds.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        frames: Literal["all", "first"] = "all",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch_rule: Literal["pad", "drop"] = "pad",
        rank: int | None = None,
        world_size: int | None = None,
        color: Literal["rgb", "ybr"] = "rgb",
        storage_options: dict[str, Any] | None = None,
        spool: bool | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        size: int | tuple[int, int] | None = None,
        resize: ResizeMode = "stretch",
        channels: Literal[1, 3] | None = None,
    ):
        super().__init__()
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be None or a positive int. Got: {batch_size!r}")
        self.batch_size = batch_size
        if frames not in ("all", "first"):
            raise ValueError(f"frames must be 'all' or 'first'. Got: {frames!r}")
        if epoch_rule not in ("pad", "drop"):
            raise ValueError(f"epoch_rule must be 'pad' or 'drop'. Got: {epoch_rule!r}")
        if color not in ("rgb", "ybr"):
            raise ValueError(f"color must be 'rgb' or 'ybr'. Got: {color!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'. Got: {on_error!r}")
        if (rank is None) != (world_size is None):
            raise ValueError(
                f"give both rank and world_size or neither. Got: {rank!r}, {world_size!r}"
            )
        if world_size is not None and not 0 <= int(rank) < int(world_size):  # type: ignore[arg-type]
            raise ValueError(f"rank must be in 0..world_size-1. Got: {rank} of {world_size}")
        self.frames, self.transform = frames, transform
        self.shuffle, self.seed, self.epoch_rule = shuffle, int(seed), epoch_rule
        self.rank, self.world_size = rank, world_size
        self.color, self.on_error = color, on_error
        self._skips = _SkipCounter()
        self._storage_options = storage_options
        self.spool, self.spool_dir = spool, None if spool_dir is None else os.fspath(spool_dir)
        self.shards, labels, classes = self._load(source)
        self._register()
        self.classes: list[str] | None = classes
        self._codes = {name: code for code, name in enumerate(classes or [])}
        self._has_labels = labels
        self._counts = [s.frames if frames == "all" else s.members for s in self.shards]
        #: CRC-32 of what every rank's share is computed from (shard names, sizes, counts,
        #: layouts): equal on every rank, or the ranks read different manifests (one
        #: rewritten between their starts) and would yield different item counts. Compare
        #: it across ranks (e.g. ``all_gather_object``) where a run must not risk that.
        self.fingerprint = zlib.crc32(
            json.dumps(
                [
                    [os.path.basename(s.url), s.tar_size, s.members, s.frames, s.layouts]
                    for s in self.shards
                ],
                sort_keys=True,
            ).encode()
        )
        # Each shard's first item in the export's order: the items' ``index``.
        self._base = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)
        if self.total == 0:
            raise ValueError(f"the shards of {source!r} hold no items")
        layouts = [dict(zip(_LAYOUT_KEYS, lay[:4])) for s in self.shards for lay in s.layouts]
        weights = [int(lay[4]) for s in self.shards for lay in s.layouts]
        # The same dtype rule as DicomDataset (stored_dtype weighs layouts by file count).
        rows = itertools.chain.from_iterable(
            itertools.repeat(r, n) for r, n in zip(layouts, weights)
        )
        self._stored = stored_dtype(rows)
        # Manifests written before samples per pixel was recorded give nothing to check.
        self.size_policy = size_policy(size, resize, channels, self.samples_per_pixel)
        # A shared integer: set_epoch in the main process reaches persistent workers too.
        self._epoch = multiprocessing.get_context().Value("q", 0)
        self._pinned: tuple[int, int] | None = None
        self._tables: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # ----------------------------------------------------------------- construction
    def _load(self, source: Any) -> tuple[list[_Shard], bool, list[str] | None]:
        """The shards' summaries, whether they carry labels, and the label classes."""
        if isinstance(source, str | os.PathLike):
            text = os.fspath(source)
            if text.endswith(".json"):
                return self._from_manifest(text)
            if text.endswith(".tar") or _BRACES.search(text):
                return self._from_tables(_expand(text))
            return self._from_manifest(_join(text, MANIFEST_NAME))
        if isinstance(source, Sequence) and not isinstance(source, bytes):
            return self._from_tables([os.fspath(u) for u in source])
        raise TypeError(
            "source must be a manifest, a folder, a brace pattern or a list of shards."
            f" Got: {type(source).__name__}"
        )

    def _configure(self, url: str) -> None:
        if _is_remote(url) and self._storage_options is not None:
            from torchdicom.sources.remote import configure

            configure(url, self._storage_options)

    def _from_manifest(self, url: str) -> tuple[list[_Shard], bool, list[str] | None]:
        self._configure(url)
        entries, labels, classes = _check_manifest(url, _read_json(url, "shard manifest"))
        folder = _dirname(url)
        shards = [
            _Shard(
                _join(folder, s["shard"]),
                s["tar_size"],
                s["members"],
                s["frames"],
                s["layouts"],
                s.get("samples_per_pixel"),
            )
            for s in entries
        ]
        return shards, labels, classes

    def _from_tables(self, urls: list[str]) -> tuple[list[_Shard], bool, list[str] | None]:
        shards, labels = [], []
        for url in urls:
            self._configure(url)
            table = _read_json(url + SHARD_TABLE_SUFFIX, "offset table")
            _check_table(url, table)
            shards.append(_summary(url, table))
            labels.extend(m["label"] for m in table["members"] if "label" in m)
        numbers = all(isinstance(v, int | float | bool) for v in labels)
        classes = None if numbers else sorted({str(v) for v in labels})
        return shards, bool(labels), classes

    def _register(self) -> None:
        for shard in self.shards[:1]:
            self._configure(shard.url)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # Pickled in the main process for spawn-started workers, where torch.distributed
        # is not initialised: they get the rank the main process has.
        if self.rank is None:
            state["_pinned"] = _rank_and_world(None, None)
        state["_tables"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._register()  # a spawn-started worker's fsspec registry is empty

    # ----------------------------------------------------------------- epoch and splitting
    @property
    def total(self) -> int:
        """Items in all shards (before splitting)."""
        return int(self._base[-1])

    @property
    def dtype(self) -> torch.dtype:
        """The one dtype of every item's ``image`` (the rule of :func:`~torchdicom.data._base.stored_dtype`)."""
        return _TORCH_DTYPES[self._stored]

    @property
    def samples_per_pixel(self) -> list[int]:
        """The distinct (0028,0002) *Samples per Pixel* of the shards' files, from the
        manifest (empty for a manifest written before it recorded them)."""
        return sorted({n for shard in self.shards for n in shard.samples or ()})

    @property
    def skipped(self) -> int:
        """Items substituted because their member failed (on_error="skip"; all workers,
        since the last :meth:`reset_skipped`)."""
        return self._skips.value

    def reset_skipped(self) -> None:
        self._skips.reset()

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose shuffle the next iteration uses (every rank: the same number).

        The value is shared with the DataLoader's workers (persistent ones too): set it
        before the loader is iterated. Lightning does not call this for an iterable
        dataset: use :class:`EpochLoader` (what ``DicomDataModule(shards=...)`` does), or
        call it from ``on_train_epoch_start`` (``dataset.set_epoch(self.current_epoch)``).
        """
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def _place(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if self._pinned is not None and get_worker_info() is not None:
            return self._pinned
        return _rank_and_world(None, None)

    def __len__(self) -> int:
        _, world = self._place()
        if self.epoch_rule == "pad":
            return math.ceil(self.total / world)
        return self.total // world

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        return [
            int(k) for k in np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        ]

    def segments(
        self, epoch: int, rank: int, world_size: int, worker: int = 0, num_workers: int = 1
    ) -> list[tuple[int, int, int]]:
        """``(shard, first item, stop item)`` segments one worker of one rank reads in
        ``epoch`` (see :func:`partition`)."""
        return partition(
            self._counts,
            self._order(epoch),
            rank,
            world_size,
            worker,
            num_workers,
            self.epoch_rule,
        )

    # ----------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self._place()
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        if self.epoch_rule == "drop" and self.total < world:
            raise ValueError(
                f"epoch_rule='drop' leaves no item to each of {world} ranks: the shards hold"
                f" only {self.total}"
            )
        size = self.batch_size or 1
        pending: list[_Pending] = []
        # The shards whose items are pending stay open (a spooled shard stays on disk) until
        # their chunk is read: a chunk may straddle two shards.
        held: list[contextlib.ExitStack] = []
        # Item positions are made once a segment's shard is open: only then are the counts
        # (from the manifest) checked against the offset table and the tar's real size.
        segments = [
            (shard, first, stop, (epoch, rank, worker))
            for shard, first, stop in self.segments(epoch, rank, world, worker, workers)
            if stop > first
        ]
        previous: list[dict[str, Any]] = []  # the last item read: a substitute of last resort
        try:
            for opened in self._open_ahead(segments):
                held.append(opened.stack)
                for entry in self._entries(opened):
                    pending.append(entry)
                    if len(pending) == size:
                        yield from self._read_chunk(pending, previous)
                        pending = []
                        while len(held) > 1:
                            held.pop(0).close()
            if pending:
                yield from self._read_chunk(pending, previous)
        finally:
            for stack in held:
                stack.close()

    def _table(self, shard: int) -> dict[str, Any]:
        """The shard's offset table, with each member's first item and typed row.

        The last :data:`_TABLES_KEPT` tables a worker read are kept: a later epoch that
        reads a shard again does not fetch and parse its table again (a shard is never
        changed in place by the export; a rewritten one fails the size check).
        """
        cached = self._tables.get(shard)
        if cached is not None:
            self._tables.move_to_end(shard)
            return cached
        expected = self.shards[shard]
        url = expected.url
        table = _read_json(url + SHARD_TABLE_SUFFIX, "offset table")
        _check_table(url, table)
        # Every rank computed its share from the manifest's counts: a table that disagrees
        # would make the ranks' item counts differ (a DDP hang), so it is an error here.
        found = _summary(url, table)
        for what, want, got in (
            ("bytes", expected.tar_size, found.tar_size),
            ("members", expected.members, found.members),
            ("frames", expected.frames, found.frames),
            ("layouts", sorted(map(tuple, expected.layouts)), sorted(map(tuple, found.layouts))),
            ("samples per pixel", expected.samples, found.samples),
        ):
            if what == "samples per pixel" and want is None:
                continue  # a manifest written before it recorded them
            if want != got:
                raise CorruptDicomError(
                    _display(url),
                    f"its offset table does not match the manifest ({what}: the table says"
                    f" {str(got)[:80]}, the manifest {str(want)[:80]}; the shard or the"
                    " manifest was rewritten or damaged after export): export again",
                )
        members = table["members"]
        per = [int(m["row"]["frames"]) if self.frames == "all" else 1 for m in members]
        table["_starts"] = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
        for m in members:
            m["_refused"] = _row_refusal(m)
            m["_typed"] = None if m["_refused"] else _typed_row(m["row"])
        self._tables[shard] = table
        while len(self._tables) > _TABLES_KEPT:
            self._tables.popitem(last=False)
        return table

    def _truncated(self, url: str, table: dict[str, Any], size: int) -> CorruptDicomError:
        cut = next(
            (m["member"] for m in table["members"] if int(m["offset"]) + int(m["size"]) > size),
            None,
        )
        where = f": member {cut} is cut" if cut is not None else ""
        return CorruptDicomError(
            _display(url),
            f"shard is truncated: {size} bytes where its offset table records"
            f" {table['tar_size']}{where}",
        )

    @contextlib.contextmanager
    def _opened(
        self, shard: int, table: dict[str, Any], members: Sequence[int]
    ) -> Iterator[dict[str, Any]]:
        """Where the routes read the shard: ``path`` / ``size`` / ``mtime_ns`` / ``etag``
        of the rows, after checking the shard's size against its offset table."""
        url = self.shards[shard].url
        want = int(table["tar_size"])
        if not _is_remote(url):
            from torchdicom.sources.remote import local_path

            path = os.path.abspath(local_path(url))
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise DicomFileNotFoundError(url, "no such shard") from None
            if st.st_size != want:
                raise self._truncated(url, table, st.st_size)
            # mtime from the shard itself: a copied shard (rsync, cp) keeps its offsets,
            # and a shard changed while it is read is a StaleIndexError from the routes.
            yield {"path": path, "size": want, "mtime_ns": st.st_mtime_ns, "etag": ""}
            return
        from torchdicom.sources import remote

        size, etag = remote.info(url)
        if size != want:
            raise self._truncated(url, table, size)
        if self.spool is False:
            yield {"path": url, "size": want, "mtime_ns": -1, "etag": etag}
            return
        with self._spooled(url, table, members, want) as path:
            st = os.stat(path)
            yield {"path": path, "size": want, "mtime_ns": st.st_mtime_ns, "etag": ""}

    @contextlib.contextmanager
    def _spooled(
        self, url: str, table: dict[str, Any], members: Sequence[int], size: int
    ) -> Iterator[str]:
        """A sparse local file of the shard's size holding the bytes of ``members``."""
        from torchdicom.sources import remote

        first = table["members"][min(members)]
        last = table["members"][max(members)]
        start = int(first["offset"]) - 512  # from the member's tar header: aligned, cheap
        stop = int(last["offset"]) + int(last["size"])
        starts = list(range(max(start, 0), stop, _SPOOL_CHUNK))
        ends = [min(s + _SPOOL_CHUNK, stop) for s in starts]
        fd, path = tempfile.mkstemp(suffix=".tar", prefix="torchdicom-shard-", dir=self.spool_dir)
        try:
            os.ftruncate(fd, size)
            blobs = remote.read_ranges([url] * len(starts), starts, ends)
            for s, e, blob in zip(starts, ends, blobs):
                if len(blob) != e - s:
                    raise CorruptDicomError(
                        _display(url),
                        f"read of bytes {s}-{e} returned {len(blob)} bytes: the shard is truncated",
                    )
                os.pwrite(fd, blob, s)
            os.close(fd)
            fd = -1
            yield path
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _prepare(self, shard: int, first: int, stop: int, place: tuple[int, int, int]) -> _Opened:
        """Read the shard's offset table (checked against the manifest), open the shard
        (its size checked; a remote one spooled) on a stack the caller closes, and locate
        the items ``first`` .. ``stop`` (in the epoch's order for ``place``: epoch, rank,
        worker)."""
        table = self._table(shard)
        stack = contextlib.ExitStack()
        try:
            ends = [_locate_in(table, first)[0], _locate_in(table, stop - 1)[0]]
            where = stack.enter_context(self._opened(shard, table, ends))
        except BaseException:
            stack.close()
            raise
        positions = np.arange(first, stop)
        if self.shuffle:
            epoch, rank, worker = place
            rng = np.random.default_rng([self.seed, epoch, rank, worker, shard])
            positions = rng.permutation(positions)
        located = [_locate_in(table, int(p)) for p in positions]
        whole = not _is_remote(self.shards[shard].url) or self.spool is False
        return _Opened(shard, positions, table, located, where, stack, whole)

    def _open_ahead(
        self, segments: list[tuple[int, int, int, tuple[int, int, int]]]
    ) -> Iterator[_Opened]:
        """The segments' shards opened in order; remote ones one ahead, on a thread.

        While a worker reads one shard's frames, the next shard's offset table, size check
        and spool download run in the background: a stream pays the store's latency once,
        not once per shard. At most two spooled shards per worker are on disk at a time
        (three while a batch straddles two).
        """
        if not segments:
            return
        if not _is_remote(self.shards[segments[0][0]].url):
            for segment in segments:
                yield self._prepare(*segment)
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="torchdicom-shard-ahead")
        ahead: Future[_Opened] | None = pool.submit(self._prepare, *segments[0])
        try:
            for k in range(len(segments)):
                assert ahead is not None
                current, ahead = ahead.result(), None
                if k + 1 < len(segments):
                    ahead = pool.submit(self._prepare, *segments[k + 1])
                yield current  # the caller holds current.stack from here
        finally:
            if ahead is not None:  # the consumer stopped early: remove the prefetched spool
                with contextlib.suppress(BaseException):
                    ahead.result().stack.close()
            pool.shutdown(wait=True)

    def _entries(self, opened: _Opened) -> Iterator[_Pending]:
        """The items of an opened segment, located (nothing read yet)."""
        rows: dict[int, dict[str, Any]] = {}  # a member's row, shared by its frames
        for slot in range(len(opened.positions)):
            yield self._entry(opened, slot, rows)

    def _entry(
        self,
        opened: _Opened,
        slot: int,
        rows: dict[int, dict[str, Any]] | None = None,
        position: int | None = None,
    ) -> _Pending:
        """Item ``slot`` of an opened segment, or (``slot`` -1) the item at ``position`` in
        its shard, located."""
        if slot >= 0:
            position = int(opened.positions[slot])
            m, within = opened.located[slot]
        else:
            assert position is not None
            m, within = _locate_in(opened.table, position)
        member = opened.table["members"][m]
        row = None if rows is None else rows.get(m)
        if row is None:
            row = self._member_row(member, opened.where)
            if rows is not None:
                rows[m] = row
        frame = within if self.frames == "all" else 0
        index = int(self._base[opened.shard]) + position
        return _Pending(self.shards[opened.shard].url, member, row, frame, index, opened, slot)

    def _batch_layout(self, chunk: list[_Pending]) -> Any:
        """The one native layout of the chunk's frames when they can be read into one batch
        buffer that the items keep as their images, else None."""
        if len(chunk) < 2 or any("_refused" in e.row for e in chunk):
            return None
        layouts = {native_layout(e.row) for e in chunk}
        layout = layouts.pop() if len(layouts) == 1 else None
        if layout is None or layout.dtype != self._stored:
            return None
        # A size policy that changes the shape makes a new image per item: the buffer
        # would only be copied out of (a policy that keeps it returns the slot itself).
        if self.size_policy and self.size_policy.output_shape(*layout.shape) != layout.shape:
            return None
        return layout

    def _read_chunk(
        self, chunk: list[_Pending], previous: list[dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        """The items of ``chunk``; native frames of one layout are read straight into one
        (B, C, H, W) batch buffer whose slots the items' images are (Collate hands it on
        without a copy, as for DicomDataset's batches)."""
        images: list[torch.Tensor | None] = [None] * len(chunk)
        layout = self._batch_layout(chunk)
        if layout is not None:
            like = torch.from_numpy(np.empty(0, self._stored))
            buffer = batch_buffer(like, len(chunk), layout.shape)
            slots = buffer.numpy()
            # Remote members read in place (spool=False): the chunk's frames as one batch of
            # concurrent range requests, as DicomDataset's batches; local rows are left here.
            done = read_native_batch([e.row for e in chunk], [e.frame for e in chunk], slots)

            def read(k0: int, k1: int) -> None:
                for k in range(k0, k1):
                    if done[k]:
                        continue
                    try:
                        read_frames_numpy(chunk[k].row, chunk[k].frame, out=slots[k : k + 1])
                    except TorchDicomError:
                        # Read again on its own by the item path, which names the shard and
                        # member, and raises or substitutes as on_error says.
                        continue
                    done[k] = True

            if get_worker_info() is None:
                # In the main process the preads overlap on the runtime's threads (the GIL
                # is released while the kernel copies); workers already read in parallel.
                run_in_slices(len(chunk), read, slots[0].size)
            else:
                read(0, len(chunk))
            images = [v if ok else None for v, ok in zip(buffer.unbind(0), done, strict=True)]
        for entry, image in zip(chunk, images):
            item = self._fetch(entry, image, previous)
            previous[:] = [item]
            yield item

    def _fetch(
        self, entry: _Pending, image: torch.Tensor | None, previous: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The item of ``entry`` (``image``: its frame, already read), or with
        ``on_error="skip"`` the first readable substitute (see :func:`first_readable`).

        Substitutes come from the shard this worker has open: the next items of the same
        segment, wrapping around, then (unless the shard is a spool holding only the
        segment's byte range) the shard's other items; when every one of them fails, a
        copy of the item read before (``previous``), when there is one.
        """
        if self.on_error == "raise":
            with self._naming(entry):
                return self._item(entry, image)
        opened = entry.opened
        segment = len(opened.positions)
        others: list[int] = []
        if opened.whole:
            mine = {int(p) for p in opened.positions}
            count = self._counts[opened.shard]
            others = [p for p in range(count) if p not in mine][:_MAX_SUBSTITUTES]
        tries = min(segment + len(others), _MAX_SUBSTITUTES)

        def candidate(attempt: int) -> _Pending:
            if attempt == 0:
                return entry
            if attempt < segment:
                return self._entry(opened, (entry.slot + attempt) % segment)
            return self._entry(opened, -1, position=others[attempt - segment])

        def read(attempt: int) -> dict[str, Any]:
            if attempt == tries:  # the whole segment failed
                return {
                    k: v.clone() if isinstance(v, torch.Tensor) else v
                    for k, v in previous[0].items()
                }
            e = candidate(attempt)
            with self._naming(e):
                return self._item(e, image if attempt == 0 else None)

        def key(attempt: int, exc: TorchDicomError) -> str:
            return f"{exc.path}::{candidate(attempt).member['member']}"

        item, attempt = first_readable(read, tries + len(previous[:1]), self._skips, key)
        item[INDEX] = entry.index
        item[SUBSTITUTED] = attempt > 0
        return item

    @staticmethod
    @contextlib.contextmanager
    def _naming(entry: _Pending) -> Iterator[None]:
        """Errors of the read routes name the shard, the member and the source file."""
        try:
            yield
        except TorchDicomError as exc:
            raise type(exc)(
                _display(entry.url),
                f"member {entry.member['member']} (from {entry.row['source_path']}): {exc.reason}",
                frame=exc.frame,
            ) from None

    def _member_row(self, member: dict[str, Any], where: dict[str, Any]) -> dict[str, Any]:
        refused = member["_refused"]
        if refused is None:
            row = dict(member["_typed"])
            row["source_path"] = row["path"]
            row.update(where)
            row["member_offset"] = int(member["offset"])
            row["member_size"] = int(member["size"])
            refused = _checked_bytes(member, row)
            if refused is None:
                return row
        # Read by nothing: _item raises the reason (naming the shard and member).
        return {**where, "source_path": str(member["row"].get("path"))[:200], "_refused": refused}

    def _item(self, entry: _Pending, image: torch.Tensor | None) -> dict[str, Any]:
        row, member, frame, index = entry.row, entry.member, entry.frame, entry.index
        if "_refused" in row:
            raise CorruptDicomError(row["path"], row["_refused"])
        keep_ybr = keeps_ybr(row, self.color)
        if image is None:
            values = read_frames_numpy(row, frame, as_rgb=not keep_ybr)
            image = torch.from_numpy(_into_dtype(values, self._stored, row["path"])[0])
        item: dict[str, Any] = {IMAGE: image, **_meta(frame_row(row, frame))}
        item[YBR] = keep_ybr
        if self._has_labels:
            label = member.get("label")
            if self.classes is not None:
                label = self._codes[str(label)]
            item[LABEL] = label
        item.update({PATH: row["source_path"], FRAME: frame, INDEX: index})
        if self.size_policy:
            item = self.size_policy(item)
        if self.transform is not None:
            item = self.transform(item)
        return item


_LAYOUT_KEYS = ("pixel_keyword", "bits_allocated", "bits_stored", "pixel_representation")


def _locate_in(table: dict[str, Any], position: int) -> tuple[int, int]:
    """(member, item within the member) of the item at ``position`` of a shard's table."""
    starts = table["_starts"]
    m = int(np.searchsorted(starts, position, side="right")) - 1
    return m, position - int(starts[m])


def _summary(url: str, table: dict[str, Any]) -> _Shard:
    """A checked offset table summed up as the manifest sums it up."""
    counts: dict[tuple[Any, ...], int] = {}
    for m in table["members"]:
        key = tuple(m["row"][c] for c in _LAYOUT_KEYS)
        counts[key] = counts.get(key, 0) + 1
    return _Shard(
        url,
        table["tar_size"],
        len(table["members"]),
        sum(m["row"]["frames"] for m in table["members"]),
        [[*k, n] for k, n in sorted(counts.items())],
        sorted({m["row"]["samples_per_pixel"] for m in table["members"]}),
    )


def _checked_bytes(member: dict[str, Any], row: dict[str, Any]) -> str | None:
    """:func:`_member_refusal` of a member of a local (or spooled) shard, once per shard file
    version; remote members read in place (``spool=False``) are not checked (a request)."""
    path = row["path"]
    if "://" in path:
        return None
    key = (path, int(row["mtime_ns"]))
    done = member.get("_checked")
    if done is not None and done[0] == key:
        return done[1]
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return f"the shard cannot be opened ({exc.strerror})"
    try:
        reason = _member_refusal(fd, member, row)
    finally:
        os.close(fd)
    member["_checked"] = (key, reason)
    return reason


class EpochLoader(DataLoader):
    """A DataLoader over a :class:`DicomShardDataset` that sets the dataset's epoch from
    ``epoch()`` each time it is iterated.

    An iterable dataset has no sampler whose ``set_epoch`` a training loop (Lightning's)
    calls, so the epoch is set where every epoch starts: ``iter(loader)``. It is written
    into the dataset's shared epoch before the workers are started or, with
    ``persistent_workers=True``, before they are told to start the next epoch: both read
    it when their iteration starts.

    Args:
        dataset: the shard dataset.
        *args, **kwargs: the DataLoader's.
        epoch: a callable giving the current epoch (e.g. the trainer's ``current_epoch``).

    Example:
        >>> loader = EpochLoader(ds, batch_size=32, num_workers=4, collate_fn=Collate(),
        ...                      epoch=lambda: trainer.current_epoch)  # doctest: +SKIP
    """

    def __init__(
        self, dataset: DicomShardDataset, *args: Any, epoch: Callable[[], int], **kwargs: Any
    ):
        if not isinstance(dataset, DicomShardDataset):
            raise TypeError(f"EpochLoader takes a DicomShardDataset. Got: {type(dataset).__name__}")
        super().__init__(dataset, *args, **kwargs)
        self._epoch_of = epoch

    def __iter__(self) -> Any:
        self.dataset.set_epoch(int(self._epoch_of()))  # type: ignore[attr-defined]
        return super().__iter__()
