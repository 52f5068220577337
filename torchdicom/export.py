"""Shards for multi-node streaming: the original DICOM files of an index, packed into tars.

:func:`to_webdataset` writes each indexed file's *original bytes* (never re-encoded) as a
tar member ``<key>.dcm``, webdataset-style (plus ``<key>.cls`` / ``<key>.json`` for its
label), ``maxcount`` members / ``maxsize`` bytes per shard. Beside each shard goes a small
offset table, ``<shard>.idx.json``: for every member its byte offset and size inside the
tar and its index row (:class:`~torchdicom.io.schema.IndexRow`) with the pixel data offset
and the frame spans shifted to tar coordinates. A reader therefore never parses a header
nor walks the tar: :class:`~torchdicom.data.shards.DicomShardDataset` reads a frame with
one ``pread`` at ``offset inside the tar`` through the same read routes as a file
(:data:`torchdicom.io.frames.ROUTES`). A manifest, ``shards.json`` in the shards' folder,
sums each shard up (members, frames, pixel layouts, samples per pixel, label classes) so
that a dataset over thousands of shards reads one small file at construction, not every
offset table.

Why a sidecar and not a first tar member ``__index__.json``: the offsets are known only
once the members are written, so a leading member would mean writing each tar twice (or
reserving space for a table of unknown size); a sidecar is also one small request that
does not touch the tar, and the tar stays a plain webdataset tar (a ``__index__`` member
would be a sample of its own to webdataset's readers).

Every file replaced in a local folder is written atomically (:mod:`torchdicom._atomic`):
a reader sees a whole shard or none. For fsspec URLs (``s3://…``, ``memory://…``) a shard
is assembled in a local temporary file and uploaded in one put (object stores make an
object visible whole). An offset table is written after its tar, and the manifest last,
so a table's presence means its tar is complete.

Each table entry carries ``crc32`` (CRC-32 of its canonical JSON, :func:`entry_checksum`)
and ``head_crc32`` (of the member's bytes before its pixel data), the manifest its own
``crc32``: a reader refuses an entry or manifest changed after export, and a member whose
header bytes were rewritten. An earlier manifest at the target is deleted before the first
shard is written, so an export that fails midway leaves no manifest, never one that points
at a mix of old and new shards.

A source file that cannot be read (vanished, unreadable, changed since it was indexed:
size, modification time or ETag differ) is skipped, logged and listed in the returned
:class:`ExportReport`; the export goes on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import posixpath
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from torchdicom._atomic import atomic_write, write_text_atomic
from torchdicom.errors import (
    CorruptDicomError,
    NotDicomError,
    StaleIndexError,
    TorchDicomError,
)

__all__ = ["SHARD_TABLE_SUFFIX", "ExportReport", "to_webdataset"]

log = logging.getLogger("torchdicom.export")

#: The offset table of shard ``X`` is ``X`` + this suffix.
SHARD_TABLE_SUFFIX = ".idx.json"
#: The manifest's default name, in the shards' folder.
MANIFEST_NAME = "shards.json"
_FORMAT_VERSION = 1
# Columns of an index row that say where the file's bytes are: rewritten to tar coordinates.
_LAYOUT_COLUMNS = ("pixel_keyword", "bits_allocated", "bits_stored", "pixel_representation")

LabelSource = Mapping[str, Any] | Callable[[str], Any] | None


@dataclass
class ExportReport:
    """What :func:`to_webdataset` wrote and what it skipped.

    Attributes:
        shards: the shards written, in order (paths or URLs as given by the pattern).
        manifest: the manifest written (path or URL).
        written: members (DICOM files) written.
        frames: frames in those files.
        skipped: ``(source path, reason)`` of every file left out.
    """

    shards: list[str] = field(default_factory=list)
    manifest: str = ""
    written: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"ExportReport({len(self.shards)} shards, {self.written} files, {self.frames} frames,"
            f" {len(self.skipped)} skipped)"
        )


# --------------------------------------------------------------------------- source bytes
def _read_local(row: Mapping[str, Any]) -> bytes:
    """The file's bytes, checked against its row (size, mtime) before and after reading."""
    from torchdicom.io.frames import _open_checked, check_unchanged

    path = str(row["path"])
    fd = _open_checked(dict(row))  # open errors mapped, (size, mtime) checked before
    with open(fd, "rb", closefd=True) as f:
        try:
            data = f.read()
        except OSError as exc:
            raise NotDicomError(path, f"cannot be read ({exc.strerror})") from None
        after = os.fstat(fd)
    # A file rewritten while it was copied: neither version's bytes can be trusted.
    check_unchanged(row, after)
    if len(data) != int(row["size"]):
        raise StaleIndexError(path, f"read {len(data)} bytes where the index has {row['size']}")
    return data


def _read_remote(row: Mapping[str, Any]) -> bytes:
    """The object's bytes, checked against its row's size / ETag (one info, one read)."""
    from torchdicom.sources import remote

    url = str(row["path"])
    size, etag = remote.info(url)
    want = str(row.get("etag") or "")
    if size != int(row["size"]) or (want and etag != want):
        raise StaleIndexError(
            remote.display(url),
            f"object changed since it was indexed (size {row['size']} -> {size} bytes"
            f"{'' if etag == want else ', ETag changed'}): rescan it",
        )
    data = remote.read_range(url, 0, size)
    if len(data) != size:
        raise CorruptDicomError(
            remote.display(url), f"the object returned {len(data)} of {size} bytes"
        )
    return data


def _source_bytes(row: Mapping[str, Any]) -> bytes:
    from torchdicom.sources.remote import is_remote, local_path

    if is_remote(row["path"]):
        return _read_remote(row)
    return _read_local({**row, "path": local_path(str(row["path"]))})


# --------------------------------------------------------------------------- rows as JSON
def _plain(value: Any) -> Any:
    """A JSON-ready value: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _shifted_row(row: Mapping[str, Any], data_offset: int) -> dict[str, Any]:
    """The index row with the pixel data offset and frame spans in tar coordinates.

    ``path``, ``size``, ``mtime_ns`` and ``etag`` stay the source file's (provenance);
    the reader puts the shard's in their place.
    """
    out = {k: _plain(v) for k, v in row.items()}
    if int(out["pixel_offset"]) >= 0:  # -1: not addressable (deflated): stays so
        out["pixel_offset"] = int(out["pixel_offset"]) + data_offset
    spans = out.get("frame_offsets")
    if spans is not None and len(spans):
        out["frame_offsets"] = [int(o) + data_offset for o in spans]
    return out


def _label_member(label: Any) -> tuple[str, bytes]:
    """The label's tar member extension and bytes: ``cls`` for an integer, else ``json``."""
    if isinstance(label, bool | np.bool_):
        return "json", json.dumps(bool(label)).encode()
    if isinstance(label, int | np.integer):
        return "cls", str(int(label)).encode()
    return "json", json.dumps(_plain(label)).encode()


def _label_of(labels: LabelSource, path: str) -> Any:
    if labels is None:
        return None
    if callable(labels):
        return labels(path)
    if path not in labels:
        raise KeyError(path)
    return labels[path]


# --------------------------------------------------------------------------- output
def _is_remote(url: str) -> bool:
    from torchdicom.sources.remote import is_remote

    return is_remote(url)


@contextlib.contextmanager
def _writing(url: str) -> Iterator[None]:
    """A local write's OSError names the output (not its temporary file) and its folder."""
    try:
        yield
    except OSError as exc:
        if _is_remote(url) or exc.errno is None:
            raise
        folder = os.path.dirname(os.path.abspath(url))
        raise type(exc)(
            exc.errno, f"cannot write {url} in {folder}: {exc.strerror or exc}", url
        ) from exc


@contextlib.contextmanager
def _output(url: str) -> Iterator[BinaryIO]:
    """A binary file whose content becomes ``url`` whole when the block ends without error."""
    if not _is_remote(url):
        from torchdicom.sources.remote import local_path

        with _writing(url), atomic_write(local_path(url)) as f:
            yield f
        return
    from torchdicom.sources import remote

    fd, tmp = tempfile.mkstemp(suffix=".tar")
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
        fs = remote.filesystem(url)
        remote._call(url, "upload", fs.put_file, tmp, url, fs=fs)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_text(url: str, text: str) -> None:
    if not _is_remote(url):
        from torchdicom.sources.remote import local_path

        with _writing(url):
            write_text_atomic(local_path(url), text)
        return
    from torchdicom.sources import remote

    fs = remote.filesystem(url)
    remote._call(url, "write", fs.pipe_file, url, text.encode("utf-8"), fs=fs)


def _remove(url: str) -> None:
    """Delete ``url`` if it exists (local path or fsspec URL)."""
    if not _is_remote(url):
        from torchdicom.sources.remote import local_path

        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(url))
        return
    from torchdicom.sources import remote

    fs = remote.filesystem(url)
    if remote._call(url, "check", fs.exists, url, fs=fs):
        remote._call(url, "delete", fs.rm_file, url, fs=fs)


def entry_checksum(entry: Mapping[str, Any]) -> int:
    """CRC-32 of an offset-table member or a manifest, without its ``crc32`` (and without
    keys a reader adds, ``_…``): canonical JSON, so that any value changed after export (a
    damaged or hand-edited table) no longer matches."""
    body = {k: v for k, v in entry.items() if k != "crc32" and not k.startswith("_")}
    text = json.dumps(body, sort_keys=True, allow_nan=True, separators=(",", ":"))
    return zlib.crc32(text.encode("utf-8"))


def _shard_name(pattern: str, number: int) -> str:
    try:
        name = pattern % number
    except TypeError:
        raise ValueError(
            f"pattern must hold one integer field such as '%06d'. Got: {pattern!r}"
        ) from None
    if name == pattern % (number + 1):
        raise ValueError(f"pattern must hold one integer field such as '%06d'. Got: {pattern!r}")
    return name


class _ShardWriter:
    """One open shard: its tar, its members' table, its running size."""

    def __init__(self, url: str):
        self.url = url
        self._stack = contextlib.ExitStack()
        self.file = self._stack.enter_context(_output(url))
        # Closed in close(): the tar spans many add() calls.
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        # Member data in large writes, not tarfile's 16 KiB chunks: frames read back from a
        # shard so written (page cache) came out about 25 % faster here (512 KiB CT frames).
        self.tar.copybufsize = 8 * 2**20
        self.members: list[dict[str, Any]] = []
        self.frames = 0
        self.layouts: Counter[tuple[Any, ...]] = Counter()
        self.samples: set[int] = set()  # (0028,0002) Samples per Pixel of the members
        self.labels: list[Any] = []

    def add(self, name: str, data: bytes) -> int:
        """Append a member; returns the byte offset of its data in the tar."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        info.mtime = 0  # the same bytes make the same shard
        # The data follows the member's header (one 512-byte block: USTAR, short names).
        header = info.tobuf(tarfile.USTAR_FORMAT, self.tar.encoding, self.tar.errors)
        start = self.tar.offset + len(header)
        self.tar.addfile(info, io.BytesIO(data))
        return start

    @property
    def nbytes(self) -> int:
        return self.file.tell()

    def close(self) -> int:
        """Finish the tar (end-of-archive blocks) and publish it; returns its size."""
        self.tar.close()  # leaves self.file open: it was given as fileobj
        size = self.file.tell()
        self._stack.close()
        return size

    def abort(self, exc: BaseException) -> None:
        self._stack.__exit__(type(exc), exc, exc.__traceback__)


def _tar_bytes(size: int) -> int:
    """Bytes a member of ``size`` takes in a tar: its 512-byte header and padded data."""
    return 512 + 512 * math.ceil(size / 512)


def to_webdataset(
    index: Any,
    pattern: str,
    *,
    maxcount: int = 1000,
    maxsize: int = 3 * 2**30,
    labels: LabelSource = None,
    manifest: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ExportReport:
    """Write the original DICOM files of an index as webdataset tar shards with offset tables.

    Args:
        index: a :class:`~torchdicom.DicomIndex` (its ``rows()``) or a list of index rows.
        pattern: the shards' path or fsspec URL with one integer field, e.g.
            ``"shards/%06d.tar"`` or ``"s3://bucket/ct/%06d.tar"``; the folder must exist
            (local) and shards are numbered from 0.
        maxcount: at most this many DICOM files per shard.
        maxsize: a new shard starts before a member would take the tar past this many
            bytes (a single file larger than ``maxsize`` gets a shard of its own).
        labels: a mapping source path → label or a callable ``f(path)``. An integer is
            written as member ``<key>.cls``, anything else as ``<key>.json``; both are in
            the offset table too. A file without a label in the mapping is skipped and
            listed.
        manifest: where the manifest goes (default ``shards.json`` in the shards' folder).
        storage_options: fsspec options for remote sources and outputs
            (:func:`torchdicom.sources.remote.configure`).

    Returns:
        An :class:`ExportReport`: shards, manifest, files and frames written, and the
        ``(path, reason)`` of every source file skipped (also logged as warnings).

    Raises:
        ValueError: ``pattern`` without one integer field, ``maxcount`` < 1 or
            ``maxsize`` < 1024.
        OSError / RemoteError: an output cannot be written (the shard being written is
            then removed, not left half-written).

    Example:
        >>> report = to_webdataset(scan("ct/"), "shards/%06d.tar", maxcount=500)  # doctest: +SKIP
        >>> report.skipped  # doctest: +SKIP
        [('ct/IM0042', 'file changed since it was indexed ...')]
    """
    if maxcount < 1:
        raise ValueError(f"maxcount must be at least 1. Got: {maxcount}")
    if maxsize < 1024:
        raise ValueError(f"maxsize must be at least 1024 bytes. Got: {maxsize}")
    _shard_name(pattern, 0)  # checked before anything is read
    from torchdicom.sources.remote import configure, display

    rows = index.rows() if hasattr(index, "rows") else list(index)
    for url in {str(r["path"]) for r in rows if _is_remote(str(r["path"]))} | {pattern}:
        if _is_remote(url):
            configure(url, storage_options)
    folder = posixpath.dirname(pattern) if _is_remote(pattern) else os.path.dirname(pattern)
    manifest = manifest or (
        posixpath.join(folder, MANIFEST_NAME)
        if _is_remote(pattern)
        else os.path.join(folder, MANIFEST_NAME)
    )
    if not _is_remote(pattern) and not os.path.isdir(folder or "."):
        raise FileNotFoundError(
            errno.ENOENT, f"the shards' folder does not exist: {folder} (create it first)", folder
        )
    report = ExportReport(manifest=manifest)
    # An earlier export's manifest would point at shards this one replaces: it goes first,
    # so that an export that fails midway leaves no manifest rather than a wrong one.
    _remove(manifest)
    summaries: list[dict[str, Any]] = []
    all_labels: list[Any] = []
    writer: _ShardWriter | None = None
    key = 0

    def finish(w: _ShardWriter) -> None:
        tar_size = w.close()
        table = {
            "format": "torchdicom-shard",
            "version": _FORMAT_VERSION,
            "tar_size": tar_size,
            "members": w.members,
        }
        _write_text(w.url + SHARD_TABLE_SUFFIX, json.dumps(table, allow_nan=True))
        report.shards.append(w.url)
        summaries.append(
            {
                "shard": os.path.basename(w.url)
                if not _is_remote(w.url)
                else w.url.rsplit("/", 1)[-1],
                "tar_size": tar_size,
                "members": len(w.members),
                "frames": w.frames,
                "layouts": [[*layout, n] for layout, n in sorted(w.layouts.items())],
                # A reader's size policy checks grey against colour without the tables.
                "samples_per_pixel": sorted(w.samples),
            }
        )
        log.info("wrote shard %s: %d files, %d bytes", display(w.url), len(w.members), tar_size)

    try:
        for row in rows:
            path = str(row["path"])
            try:
                label = _label_of(labels, path)
            except KeyError:
                report.skipped.append((path, "no label for this file"))
                log.warning("export: skipping %s: no label for this file", display(path))
                continue
            try:
                data = _source_bytes(row)
            except (TorchDicomError, OSError) as exc:
                reason = exc.reason if isinstance(exc, TorchDicomError) else str(exc)
                report.skipped.append((path, reason))
                log.warning("export: skipping %s: %s", display(path), reason)
                continue
            extra = _tar_bytes(len(data)) + (_tar_bytes(64) if label is not None else 0)
            if writer is not None and (
                len(writer.members) >= maxcount or writer.nbytes + extra > maxsize
            ):
                finish(writer)
                writer = None
            if writer is None:
                writer = _ShardWriter(_shard_name(pattern, len(report.shards)))
            name = f"{key:09d}"
            offset = writer.add(f"{name}.dcm", data)
            # The bytes before the pixel data (the whole file when they are not addressable):
            # a reader checks them once per shard, catching a member rewritten after export.
            head = int(row["pixel_offset"]) if int(row["pixel_offset"]) >= 0 else len(data)
            member: dict[str, Any] = {
                "key": name,
                "member": f"{name}.dcm",
                "offset": offset,
                "size": len(data),
                "head_crc32": zlib.crc32(data[:head]),
                "row": _shifted_row(row, offset),
            }
            if label is not None:
                ext, blob = _label_member(label)
                writer.add(f"{name}.{ext}", blob)
                member["label"] = _plain(label)
                writer.labels.append(label)
                all_labels.append(label)
            member["crc32"] = entry_checksum(json.loads(json.dumps(member, allow_nan=True)))
            writer.members.append(member)
            writer.frames += int(row["frames"])
            writer.layouts[tuple(_plain(row[c]) for c in _LAYOUT_COLUMNS)] += 1
            writer.samples.add(int(row["samples_per_pixel"]))
            report.written += 1
            report.frames += int(row["frames"])
            key += 1
        if writer is not None:
            finish(writer)
            writer = None
    except BaseException as exc:
        if writer is not None:
            with contextlib.suppress(BaseException):  # exc is what the caller sees
                writer.abort(exc)
        raise
    classes = None
    if all_labels and not all(
        isinstance(v, int | float | np.integer | np.floating | bool) for v in all_labels
    ):
        classes = sorted({str(v) for v in all_labels})
    body = {
        "format": "torchdicom-shards",
        "version": _FORMAT_VERSION,
        "layout_columns": list(_LAYOUT_COLUMNS),
        "labels": bool(all_labels),
        "classes": classes,
        "shards": summaries,
        "skipped": [list(s) for s in report.skipped],
    }
    body["crc32"] = entry_checksum(json.loads(json.dumps(body)))
    _write_text(manifest, json.dumps(body, indent=1))
    return report
