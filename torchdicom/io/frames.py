"""Reading frames: stored values as tensors, only the frames asked for.

The read routes form a table, :data:`ROUTES`, in the style of pydicom's
decoder registry: ordered ``Route(name, accepts(row), read(row, frames, out,
as_rgb))`` entries with one signature, and the first entry that accepts the
index row reads (never chosen by trial and error). A new route — a faster
codec, a remote byte source, GPU decode — is one new entry.

* **native** (Implicit/Explicit VR LE, 8/16/32/64-bit, not YBR): the pixel
  data value starts at a byte offset recorded at scan time, so a run of
  frames is one ``pread`` straight into the output's memory — no header
  parse, no intermediate ``bytes``. This is the project's own hot path (the
  reason it exists), so it is hand-written rather than delegated;
  :func:`native_layout` tells callers (the datasets' batch path) which rows
  it reads and into what dtype and shape.
* **packed bits** (1-bit native little-endian): the bytes covering the
  frames, unpacked.
* **JPEG 8-bit by span (Pillow)** (JPEG baseline / extended, 8 bits): each
  frame's code-stream span was recorded at scan time (``frame_offsets`` /
  ``frame_lengths``, see :func:`torchdicom.io.codestream.frame_spans`), so a
  frame is one ``pread``; libjpeg-turbo (Pillow) decodes it exactly as
  pydicom's Pillow plugin does, the frames of a clip in parallel on the
  runtime's thread pool (Pillow releases the GIL), and YCbCr is converted by
  pydicom's own conversion (libjpeg-turbo's differs by ±1).
* **JPEG lossless by span (imagecodecs)** and **JPEG 2000 by span
  (openjpeg)**: the same, through libjpeg-turbo 3 (``torchdicom[codecs]``)
  and openjpeg called directly; a frame whose output would need pydicom's
  corrections goes to the pinned plugin.
* **code-streams by span** (other encapsulated syntaxes with recorded spans):
  one ``pread`` per frame, checked, then decoded by the pinned plugin.
* **code-streams by offset** (encapsulated data whose frames the scan could
  not pin down unambiguously): the file is opened at the pixel data offset,
  each requested frame's code-stream is located as pydicom locates it (basic
  offset table or fragment scan), checked and decoded.
* **native via pydicom** (big-endian, YBR native): pydicom's decoder, frame
  by frame from the recorded offset.
* **pydicom data set** (deflated files, extended offset tables, no recorded
  offset, mid-byte 1-bit frames): the data set is read with pydicom and only
  the requested frames are decoded.

Before any route runs, :func:`check_declared_size` refuses a header that
claims more pixels than the file holds. A route whose decoder releases the
GIL says so (``Route.parallel``): the datasets then decode a batch's frames
on the runtime's thread pool.

``read_frames(..., device="cuda")`` decodes JPEG and JPEG 2000 / HTJ2K frames
with recorded spans on the GPU (nvImageCodec, :func:`gpu_decodable`), after the
same code-stream check; everything else is read by the table above and moved.

Compressed frames are decoded by one pydicom plugin pinned per transfer
syntax (:func:`decoding_plugin`: Pillow / pylibjpeg / pyjpegls first, GDCM
only where nothing else is installed) after their code-stream header passed
:func:`torchdicom.io.codestream.check_frame`, so no decoder sees a frame that
disagrees with the header (GDCM aborts the interpreter on those).

Every path returns exactly what ``pydicom``'s ``Dataset.pixel_array`` returns
for the same frames when decoding with that plugin (pydicom 3 defaults: YCbCr
converted to RGB, frames beyond (0028,0008) *Number of Frames* included; see
:func:`torchdicom.io.codestream.frames_held`), laid out channels-first as
(F, C, H, W).
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import UID

from torchdicom.errors import (
    CorruptDicomError,
    DicomFileNotFoundError,
    FrameIndexError,
    NotDicomError,
    StaleIndexError,
    TorchDicomError,
    UnsupportedTransferSyntaxError,
)
from torchdicom.io import imagecodecs_plugin
from torchdicom.io.codestream import check_frame, join_fragments
from torchdicom.io.dicomfile import BoundedReader, _short, dcmread, stat_file
from torchdicom.io.header import as_row, cached_row, header_row_stat
from torchdicom.io.modality import modality_values

# torch is imported where a tensor is made: the header-only command-line tools read pixels
# as numpy through this module without paying for torch.
if TYPE_CHECKING:
    import torch

__all__ = [
    "ROUTES",
    "FrameSelection",
    "NativeLayout",
    "Route",
    "check_declared_size",
    "decoding_plugin",
    "gpu_decodable",
    "native_layout",
    "read_dicomweb_batch",
    "read_frames",
    "read_frames_dicomweb",
    "read_native_batch",
    "resolve_frames",
    "route_for",
    "row_for_path",
    "scaled_px",
]

FrameSelection = Union[int, slice, Sequence[int], np.ndarray, "torch.Tensor", None]

_NATIVE_LE = frozenset({pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian})
_O_RDONLY = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_HAS_PREADV = hasattr(os, "preadv")

# A compressed frame decodes to at most this many times its share of the
# file (plus a floor under which any frame is allowed). Real ratios stay far
# below: lossless 2-4x, lossy 10-50x, RLE at most 64x; only near-blank frames
# go higher, and those are small enough for the floor. A header beyond it is
# lying about its dimensions and would make the decoder allocate what the file
# cannot hold (pydicom sizes its output buffer from the header).
_MAX_DECODE_RATIO = 256
_DECODE_FLOOR_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- header cache
class _HeaderCache:
    """LRU of parsed header rows keyed by path, valid while (size, mtime) hold.

    Makes repeated ``read_frames(path, k)`` calls on the same file cost one
    ``stat`` instead of a header parse. Per process (DataLoader workers each
    have their own); guarded by a lock for threads.
    """

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._rows: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> dict[str, Any]:
        st = stat_file(path)
        with self._lock:
            row = self._rows.get(path)
            if row is not None and row["size"] == st.st_size and row["mtime_ns"] == st.st_mtime_ns:
                self._rows.move_to_end(path)
                return row
        row = header_row_stat(path, st)
        with self._lock:
            self._rows[path] = row
            self._rows.move_to_end(path)
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        return row

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


_HEADERS = _HeaderCache()


def row_for_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The index row of one file, parsed once and cached while the file is unchanged."""
    fspath = os.fspath(path)
    if fspath[:9].lower() == "dicomweb+":  # a DICOMweb instance: its WADO-RS metadata
        from torchdicom.sources.dicomweb import cached_row as dicomweb_row

        return dicomweb_row(fspath)
    if "://" in fspath:
        from torchdicom.sources.remote import is_remote, local_path

        if is_remote(fspath):
            return cached_row(fspath)
        fspath = local_path(fspath)
    return _HEADERS.get(os.path.abspath(fspath))


def _source_row(source: Any) -> dict[str, Any]:
    if isinstance(source, str | os.PathLike):
        return row_for_path(source)
    row = as_row(source)
    if not isinstance(row.get("error"), float | type(None)) and row.get("error"):
        raise CorruptDicomError(row.get("path"), f"this file failed at scan time: {row['error']}")
    return row


# --------------------------------------------------------------------------- frame selection
def resolve_frames(frames: FrameSelection, n_frames: int, path: str | None = None) -> list[int]:
    """Turn a frame selection into a list of 0-based frame indices.

    Args:
        frames: ``None`` (all), an int (negative counts from the end), a slice,
            or a sequence / 1-D array / tensor of ints.
        n_frames: the file's (0028,0008) *Number of Frames* (1 when absent).
        path: the file, for error messages.

    Raises:
        FrameIndexError: an index outside ``-n_frames .. n_frames - 1``.
        TypeError: a selection of another type.
    """
    if frames is None:
        return list(range(n_frames))
    if isinstance(frames, slice):
        return list(range(*frames.indices(n_frames)))
    torch_module = sys.modules.get("torch")  # a tensor implies torch is loaded
    if isinstance(frames, np.ndarray) or (
        torch_module is not None and isinstance(frames, torch_module.Tensor)
    ):
        frames = frames.tolist()
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer | Sequence | list):
        raise TypeError(
            f"frames must be None, an int, a slice or a sequence of ints. Got: {type(frames).__name__}"
        )
    items = [frames] if isinstance(frames, int | np.integer) else list(frames)
    out = []
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise TypeError(f"frame indices must be ints. Got: {type(k).__name__}")
        k = int(k)
        if not -n_frames <= k < n_frames:
            raise FrameIndexError(
                path,
                f"frame {k} is out of range: the file has {n_frames} frame{'s' if n_frames != 1 else ''}"
                f" (valid 0..{n_frames - 1})",
            )
        out.append(k % n_frames)
    return out


# --------------------------------------------------------------------------- sizes
def _np_dtype(row: dict[str, Any]) -> np.dtype:
    keyword = row["pixel_keyword"]
    if keyword == "FloatPixelData":
        return np.dtype("<f4")
    if keyword == "DoubleFloatPixelData":
        return np.dtype("<f8")
    signed = "i" if int(row["pixel_representation"]) == 1 else "u"
    return np.dtype(f"<{signed}{int(row['bits_allocated']) // 8}")


def _frame_nbits(row: dict[str, Any]) -> int:
    return (
        int(row["rows"])
        * int(row["columns"])
        * int(row["samples_per_pixel"])
        * int(row["bits_allocated"])
    )


def _declared_native_bytes(row: dict[str, Any]) -> int:
    nbits = _frame_nbits(row)
    if row["photometric"] == "YBR_FULL_422" and int(row["samples_per_pixel"]) == 3:
        nbits = nbits * 2 // 3  # two chroma samples shared by each pixel pair
    return math.ceil(int(row["frames"]) * nbits / 8)


def _describe(row: dict[str, Any]) -> str:
    n = int(row["frames"])
    return (
        f"{n} frame{'s' if n != 1 else ''} of {row['rows']}x{row['columns']}x{row['samples_per_pixel']}"
        f" at {row['bits_allocated']} bits"
    )


def _data_end(row: dict[str, Any]) -> int:
    """Where the file's bytes end: its size, or for a member of a shard (a tar written by
    :func:`torchdicom.export.to_webdataset`, whose rows carry ``member_offset`` /
    ``member_size`` and offsets in tar coordinates) the member's end, not the tar's."""
    if "member_size" in row:
        return int(row["member_offset"]) + int(row["member_size"])
    return int(row["size"])


def _check_native_size(row: dict[str, Any]) -> None:
    """Refuse a native file whose header claims more pixels than the file holds."""
    path = row["path"]
    declared = _declared_native_bytes(row)
    offset = int(row["pixel_offset"])
    length = int(row["pixel_length"])
    if offset >= 0:
        available = _data_end(row) - offset
        if length >= 0:
            available = min(available, length)
    else:
        available = length if length >= 0 else int(row.get("member_size", row["size"]))
    if declared > available:
        raise CorruptDicomError(
            path,
            f"pixel data is truncated or the header is wrong: it declares {_describe(row)}"
            f" ({declared} bytes) but the file holds only {max(available, 0)} bytes of pixel data",
        )


def _check_encapsulated_size(row: dict[str, Any]) -> None:
    path = row["path"]
    size = int(row.get("member_size", row["size"]))
    # Each frame needs at least one 8-byte item header.
    if int(row["frames"]) > max(size // 8, 1):
        raise CorruptDicomError(
            path,
            f"header declares {row['frames']} compressed frames but a file of {size} bytes can hold at most {size // 8}",
        )
    frame_bytes = _frame_nbits(row) // 8
    start = max(int(row["pixel_offset"]), int(row.get("member_offset", 0)))
    per_frame = max(_data_end(row) - start, 0) / int(row["frames"])
    if frame_bytes > max(_DECODE_FLOOR_BYTES, _MAX_DECODE_RATIO * per_frame):
        raise CorruptDicomError(
            path,
            f"header declares frames of {row['rows']}x{row['columns']}x{row['samples_per_pixel']} at"
            f" {row['bits_allocated']} bits ({frame_bytes} bytes each), impossible for"
            f" {row['frames']} compressed frame(s) in a {size}-byte file",
        )


_SCRATCH = threading.local()
_SCRATCH_KEEP = 64 * 2**20  # larger scratch buffers are not kept between calls


def _scratch(nbytes: int) -> np.ndarray:
    """A per-thread reusable byte buffer (never shared across threads or workers)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(nbytes, dtype=np.uint8)
        if nbytes <= _SCRATCH_KEEP:
            _SCRATCH.buf = buf
    return buf[:nbytes]


def _runs(idx: list[int]) -> list[tuple[int, int, int]]:
    """Group frame indices into (first_frame, count, output_position) runs of consecutive frames."""
    runs: list[tuple[int, int, int]] = []
    for pos, k in enumerate(idx):
        if runs and runs[-1][0] + runs[-1][1] == k:
            start, count, p = runs[-1]
            runs[-1] = (start, count + 1, p)
        else:
            runs.append((k, 1, pos))
    return runs


class NativeLayout(NamedTuple):
    """How the native route lays a file's frames out: dtype and (C, H, W) frame shape."""

    dtype: np.dtype
    shape: tuple[int, int, int]


_DTYPES: dict[tuple[str, int, int], np.dtype] = {}


def _native_dtype(row: dict[str, Any]) -> np.dtype:
    key = (row["pixel_keyword"], int(row["pixel_representation"]), int(row["bits_allocated"]))
    dtype = _DTYPES.get(key)
    if dtype is None:
        dtype = _DTYPES[key] = _np_dtype(row)
    return dtype


def _is_native(row: dict[str, Any]) -> bool:
    return (
        row["transfer_syntax"] in _NATIVE_LE
        and int(row["pixel_offset"]) >= 0
        and int(row["bits_allocated"]) in (8, 16, 32, 64)
        and not str(row["photometric"]).startswith("YBR_FULL")
    )


def native_layout(row: dict[str, Any]) -> NativeLayout | None:
    """The layout the native route reads a row's frames in, or None when they need decoding.

    Native means little-endian, byte-aligned, not YBR, with its pixel data
    offset recorded at scan time: a frame is one ``pread`` straight into an
    output of this dtype and (C, H, W) shape, so a batch of such rows with one
    layout can be read into one batch buffer
    (:class:`~torchdicom.data.DicomDataset`'s batch path).

    Args:
        row: an index row.

    DICOMweb rows (frames by WADO-RS) have a layout too, whatever the transfer syntax
    the server sends: their frames decode to it (:func:`read_native_batch` requests a
    batch's frames together).

    Returns:
        ``NativeLayout(dtype, (C, H, W))``: the stored dtype (as in
        :func:`read_frames`) and frame shape; ``None`` for compressed,
        big-endian, 1-bit, YBR or unaddressed pixel data.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> native_layout(row_for_path(get_testdata_file("CT_small.dcm")))
        NativeLayout(dtype=dtype('int16'), shape=(1, 128, 128))
    """
    if not _is_native(row) and not _dicomweb_layout(row):
        return None
    shape = (int(row["samples_per_pixel"]), int(row["rows"]), int(row["columns"]))
    return NativeLayout(_native_dtype(row), shape)


def _dicomweb_layout(row: dict[str, Any]) -> bool:
    # A DICOMweb row's frames decode to the stored dtype and (C, H, W) shape whatever the
    # transfer syntax the server sends: the datasets' batch path may hold them in one
    # buffer, and read_native_batch requests the batch's frames together. Not YBR (the
    # batch path reads RGB) nor 1-bit data, as for local files.
    return (
        _is_dicomweb(row)
        and int(row["bits_allocated"]) in (8, 16, 32, 64)
        and not str(row["photometric"]).startswith("YBR")
    )


# --------------------------------------------------------------------------- file access
def _open_checked(row: dict[str, Any]) -> int:
    """Open the row's file as a bare descriptor and make sure it is the file that was indexed.

    A descriptor, not a file object: the native hot path reads with ``pread``
    and skips FileIO; the routes that need a file wrap it in a
    :class:`~torchdicom.io.dicomfile.BoundedReader`. The caller closes it.
    """
    path = row["path"]
    if "://" in path:  # a remote object (fsspec URL): byte ranges, size / ETag checked
        from torchdicom.sources.remote import is_remote, open_checked

        if is_remote(path):
            return open_checked(row)  # type: ignore[return-value]
    try:
        fd = os.open(path, _O_RDONLY)
    except FileNotFoundError:
        raise DicomFileNotFoundError(path, "no such file (deleted since it was indexed?)") from None
    except IsADirectoryError:
        raise NotDicomError(path, "is a directory, not a DICOM file") from None
    except OSError as exc:
        raise NotDicomError(path, f"cannot be opened ({exc.strerror})") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise NotDicomError(path, "is a directory, not a DICOM file")
    try:
        check_unchanged(row, st)
    except StaleIndexError:
        os.close(fd)
        raise
    return fd


def check_unchanged(row: Mapping[str, Any], st: os.stat_result) -> None:
    """Refuse a local file whose (size, mtime) differ from its index row.

    Raises:
        StaleIndexError: the file changed since it was indexed.
    """
    if st.st_size != int(row["size"]) or st.st_mtime_ns != int(row["mtime_ns"]):
        raise StaleIndexError(
            row["path"],
            f"file changed since it was indexed (size {row['size']} -> {st.st_size} bytes"
            f" or modification time changed): rescan it",
        )


def _pread_exact(fd: int, view: memoryview, offset: int, path: str, frame: int) -> None:
    """Fill ``view`` from ``offset`` of ``fd``; a short file is a :class:`CorruptDicomError`."""
    if type(fd) is not int:  # a remote handle (torchdicom.sources.remote.RemoteHandle)
        fd.read_into(view, offset, path, frame)
        return
    got = 0
    total = len(view)
    while got < total:
        n = _pread_into(fd, view[got:] if got else view, offset + got)
        if not n:
            raise CorruptDicomError(
                path, "pixel data ends early: the file is truncated", frame=frame
            )
        got += n


def _close(fd: Any) -> None:
    if type(fd) is int:
        os.close(fd)


class _MemberFile(io.BytesIO):
    """A shard member's bytes that seek and tell in tar coordinates (the row's offsets)."""

    def __init__(self, data: bytes, base: int):
        super().__init__(data)
        self._base = base

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            offset -= self._base
        return super().seek(offset, whence) + self._base

    def tell(self) -> int:
        return super().tell() + self._base


def _member_bytes(fd: Any, row: dict[str, Any]) -> bytes:
    """A shard member's bytes (see :func:`_data_end`): one read of its range, not the tar."""
    data = bytearray(int(row["member_size"]))
    _pread_exact(fd, memoryview(data), int(row["member_offset"]), row["path"], None)  # type: ignore[arg-type]
    return bytes(data)


def _bounded(row: dict[str, Any]) -> Any:
    """The row's file as a bounded binary file; a remote object is fetched whole (rare routes)."""
    fd = _open_checked(row)
    if "member_size" in row:  # a shard member: its own byte range only, never the whole tar
        try:
            return _MemberFile(_member_bytes(fd, row), int(row["member_offset"]))
        finally:
            if type(fd) is int:
                os.close(fd)
    if type(fd) is int:
        return BoundedReader(fd)
    return io.BytesIO(fd.whole())


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if _HAS_PREADV:
        return os.preadv(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.readv(fd, [view])


# --------------------------------------------------------------------------- the routes
class _OutMismatch(ValueError):
    """A caller's ``out`` buffer does not fit: the caller's mistake, not the file's."""


def _check_out(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, path: str) -> None:
    if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
        raise _OutMismatch(
            f"out must be a writable C-contiguous numpy array. Got: {type(out).__name__}"
        )
    if out.shape != shape or out.dtype != dtype:
        raise _OutMismatch(
            f"out must have shape {shape} and dtype {dtype} for {path}. "
            f"Got: {out.shape} {out.dtype}"
        )


def _read_native(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    # The hot path of training: one open, one fstat, one pread per run of
    # consecutive frames straight into the output's memory. Kept lean on
    # purpose (profiled: per-call Python overhead was a third of the time).
    path = row["path"]
    dtype = _native_dtype(row)
    rows, cols, spp = int(row["rows"]), int(row["columns"]), int(row["samples_per_pixel"])
    frame_bytes = rows * cols * spp * dtype.itemsize
    offset = int(row["pixel_offset"])
    interleaved = spp > 1 and int(row["planar_configuration"]) == 0
    if out is None:
        out = np.empty((len(idx), spp, rows, cols), dtype=dtype)
    else:
        _check_out(out, (len(idx), spp, rows, cols), dtype, path)
    if not idx:
        return out
    runs = [(idx[0], len(idx), 0)] if idx == list(range(idx[0], idx[0] + len(idx))) else _runs(idx)
    fd = _open_checked(row)
    try:
        for start, count, pos in runs:
            if interleaved:
                # Stored (H, W, C): read into the scratch buffer, then transpose
                # into the channels-first output in one copy.
                raw = _scratch(count * frame_bytes)
                _pread_exact(fd, memoryview(raw), offset + start * frame_bytes, path, start)
                src = raw.view(dtype).reshape(count, rows, cols, spp).transpose(0, 3, 1, 2)
                out[pos : pos + count] = src
            else:
                # Planar or single-sample: the file layout already is (C, H, W).
                view = memoryview(out[pos : pos + count] if len(runs) > 1 else out).cast("B")
                _pread_exact(fd, view, offset + start * frame_bytes, path, start)
    finally:
        _close(fd)
    bits_stored = int(row["bits_stored"])
    if bits_stored < int(row["bits_allocated"]) and row["pixel_keyword"] == "PixelData":
        # Training reads the same unchanged files every epoch: a single-frame
        # file found clean once (same size and mtime, checked on open above)
        # needs no second range check.
        # The pixel offset tells apart the members of one shard (same path, size, mtime).
        key = (path, int(row["size"]), int(row["mtime_ns"]), offset)
        single = int(row["frames"]) == 1
        if not (single and key in _CLEAN_HIGH_BITS):
            was_clean = _clear_unused_bits(out, bits_stored)
            if single and was_clean:
                _CLEAN_HIGH_BITS.add(key)
    return out


def _read_dicomweb_batch(
    rows: Sequence[dict[str, Any]], frames: Sequence[int], slots: np.ndarray, done: list[bool]
) -> None:
    """The DICOMweb rows of a batch: their frames requested together, ``max_in_flight`` at a
    time (:func:`read_dicomweb_batch`), decoded into their slots. A row
    that fails or decodes to another shape / dtype is left to the item path."""
    jobs = [
        k
        for k, row in enumerate(rows)
        if _is_dicomweb(row)
        and native_layout(row) == (slots.dtype, slots.shape[1:])
        and 0 <= int(frames[k]) < int(row["frames"])
    ]
    if len(jobs) < 2:
        return
    got = read_dicomweb_batch(
        [rows[k] for k in jobs], [[int(frames[k])] for k in jobs], errors="return"
    )
    for k, frame in zip(jobs, got):
        if isinstance(frame, np.ndarray) and (frame.shape[1:], frame.dtype) == (
            slots.shape[1:],
            slots.dtype,
        ):
            slots[k] = frame[0]
            done[k] = True


def read_native_batch(
    rows: Sequence[dict[str, Any]], frames: Sequence[int], slots: np.ndarray
) -> list[bool]:
    """Read one frame of each remote native row into ``slots[k]`` in one ``cat_ranges`` call.

    The batch path of the datasets for remote objects (fsspec URLs): every item's frame
    is one byte range, and the ranges of the whole batch go to the store together
    (concurrently, :attr:`torchdicom.sources.RemotePolicy.max_in_flight` at a time).
    DICOMweb rows: the batch's WADO-RS frame requests, as many in flight.
    Local rows, rows the native route does not read, rows of another dtype than
    ``slots`` and rows that fail (stale, missing, short) are left out (``False``): the
    item path reads them and raises as it always does.

    Args:
        rows: index rows, one per slot.
        frames: the 0-based frame of each row.
        slots: the (B, C, H, W) batch buffer.

    Returns:
        Which slots were filled.
    """
    done = [False] * len(rows)
    _read_dicomweb_batch(rows, frames, slots, done)
    jobs = [
        k
        for k, row in enumerate(rows)
        if "://" in row["path"] and _is_native(row) and _native_dtype(row) == slots.dtype
    ]
    if not jobs:
        return done
    from torchdicom.sources.remote import is_remote, open_checked, read_ranges_into

    urls, starts, views, versions, keep = [], [], [], [], []
    scratch: list[np.ndarray | None] = []  # per range: None when read into the slot itself
    for k in jobs:
        row = rows[k]
        if not is_remote(row["path"]):
            continue
        layout = (int(row["samples_per_pixel"]), int(row["rows"]), int(row["columns"]))
        if slots[k].shape != layout or not 0 <= int(frames[k]) < int(row["frames"]):
            continue  # another shape, or no such frame: the item path reads (or refuses) it
        try:
            check_declared_size(row)
            open_checked(row)  # size / ETag (at most every recheck_s)
        except TorchDicomError:
            continue
        frame_bytes = slots[k].nbytes
        start = int(row["pixel_offset"]) + int(frames[k]) * frame_bytes
        urls.append(row["path"])
        starts.append(start)
        # Where the file's sample order is the slot's, the bytes land in the slot itself
        # (cached blocks are read straight into it); interleaved samples need a transpose.
        interleaved = layout[0] > 1 and int(row["planar_configuration"]) == 0
        direct = not interleaved and slots[k].flags.c_contiguous
        scratch.append(None if direct else np.empty(frame_bytes, np.uint8))
        views.append(memoryview(slots[k] if direct else scratch[-1]).cast("B"))
        versions.append((int(row["size"]), str(row.get("etag") or "")))  # block cache key
        keep.append(k)
    try:
        got = read_ranges_into(urls, starts, views, versions=versions)
    except TorchDicomError:
        for k in keep:
            slots[k][...] = 0  # maybe partly written: the item path starts from a clean slot
        return done
    for k, n, buffer in zip(keep, got, scratch):
        row, slot = rows[k], slots[k]
        if n != slot.nbytes:
            slot[...] = 0  # a short object: the item path reads it again and raises
            continue
        if buffer is not None:
            spp, h, w = slot.shape
            values = buffer.view(slot.dtype)
            if spp > 1 and int(row["planar_configuration"]) == 0:
                slot[...] = values.reshape(h, w, spp).transpose(2, 0, 1)
            else:
                slot[...] = values.reshape(spp, h, w)
        bits_stored = int(row["bits_stored"])
        if bits_stored < int(row["bits_allocated"]) and row["pixel_keyword"] == "PixelData":
            _clear_unused_bits(slots[k : k + 1], bits_stored)
        done[k] = True
    return done


def prefetch_frame_ranges(rows: Sequence[dict[str, Any]], frames: Sequence[int]) -> int | None:
    """Start fetching, in the background, the byte range each remote row's frame is read
    from (:func:`torchdicom.sources.remote.prefetch`): a native frame's pixels (whether
    :func:`read_native_batch` reads it into a batch slot or the item path reads it on
    its own: a size policy, another dtype, a batch of mixed shapes), or a compressed
    frame's recorded code-stream span (the span routes read exactly that). Other rows
    are left alone; nothing is raised (the read raises what it raises without a
    prefetch).

    Returns:
        The prefetch group's id, or ``None`` when nothing was started.
    """
    from torchdicom.sources.remote import is_remote, prefetch

    picked, starts, lengths = [], [], []
    for row, frame in zip(rows, frames):
        k = int(frame)
        if not is_remote(row["path"]) or not 0 <= k < int(row["frames"]):
            continue
        try:
            check_declared_size(row)
        except TorchDicomError:
            continue  # the read refuses it, as without a prefetch
        if _is_native(row):
            length = int(row["samples_per_pixel"]) * int(row["rows"]) * int(row["columns"])
            length *= _native_dtype(row).itemsize  # the file's dtype: what the routes read
            start = int(row["pixel_offset"]) + k * length
        elif _by_span(row):
            start, length = int(row["frame_offsets"][k]), int(row["frame_lengths"][k])
            if start < 0 or length < 8 or start + length > _data_end(row):
                continue  # the read refuses this span
        else:
            continue
        picked.append(row)
        starts.append(start)
        lengths.append(length)
    return prefetch(picked, starts, lengths) if picked else None


class _BoundedKeySet:
    """A set that forgets its oldest keys beyond ``capacity`` (per process)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, int, int]) -> bool:
        return key in self._keys

    def add(self, key: tuple[str, int, int]) -> None:
        with self._lock:
            self._keys[key] = None
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)


# (path, size, mtime_ns) of single-frame files whose bits above Bits Stored
# were found clear / properly sign-extended.
_CLEAN_HIGH_BITS = _BoundedKeySet(200_000)


def _clear_unused_bits(out: np.ndarray, bits_stored: int) -> bool:
    """Clear (unsigned) or sign-extend (signed) the bits above Bits Stored, in place.

    PS3.5 8.1.1: bits above Bits Stored carry no meaning (overlay planes,
    scanner junk); pydicom's ``pixel_array`` clears them for unsigned data and
    sign-extends signed data (12-in-16 CT), so do the same. Most files are
    clean already, and NumPy's integer shifts are not vectorised (two shifts
    cost about as much as reading the frame from the page cache), so first
    check the value range with vectorised reductions and only shift when a
    value lies outside what Bits Stored allows. (``torch.aminmax`` would be
    one pass, but its intra-op threads cost more than they save here.)

    Returns whether the values were clean already.
    """
    if out.size == 0:
        return True
    if out.dtype.kind == "i":
        limit = 1 << (bits_stored - 1)
        clean = bool(out.min() >= -limit and out.max() < limit)
    else:
        clean = bool(out.max() < (1 << bits_stored))
    if not clean:
        shift = out.dtype.itemsize * 8 - bits_stored
        np.left_shift(out, shift, out=out)
        np.right_shift(out, shift, out=out)
    return clean


def _unaligned_bits(row: dict[str, Any]) -> bool:
    """1-bit frames that do not start on a byte boundary (rows x columns x samples % 8)."""
    return int(row["bits_allocated"]) == 1 and bool(
        (int(row["rows"]) * int(row["columns"]) * int(row["samples_per_pixel"])) % 8
    )


def _is_packed_bits(row: dict[str, Any]) -> bool:
    return (
        row["transfer_syntax"] in _NATIVE_LE
        and int(row["pixel_offset"]) >= 0
        and int(row["bits_allocated"]) == 1
    )


def _read_packed_bits(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """1-bit frames (segmentations, overlays-as-image), unpacked to uint8 0/1.

    Frames are packed back to back with no padding (PS3.5 8.1.1, bits in
    little-endian order), so when rows x columns is not a multiple of 8 a
    frame starts mid-byte: read the bytes covering it and slice the bits.
    """
    path = row["path"]
    rows, cols, spp = int(row["rows"]), int(row["columns"]), int(row["samples_per_pixel"])
    frame_bits = rows * cols * spp
    offset = int(row["pixel_offset"])
    if out is None:
        out = np.empty((len(idx), spp, rows, cols), dtype=np.uint8)
    else:
        _check_out(out, (len(idx), spp, rows, cols), np.dtype(np.uint8), path)
    fd = _open_checked(row)
    try:
        for start, count, pos in _runs(idx):
            first_bit = start * frame_bits
            last_bit = first_bit + count * frame_bits
            first_byte = first_bit // 8
            raw = _scratch(math.ceil(last_bit / 8) - first_byte)
            _pread_exact(fd, memoryview(raw), offset + first_byte, path, start)
            bits = np.unpackbits(raw, bitorder="little")
            skip = first_bit - 8 * first_byte
            src = bits[skip : skip + count * frame_bits]
            if spp > 1 and int(row["planar_configuration"]) == 0:
                src = src.reshape(count, rows, cols, spp).transpose(0, 3, 1, 2)
            out[pos : pos + count] = src.reshape(count, spp, rows, cols)
    finally:
        _close(fd)
    return out


# Which pydicom decoding plugin reads each compressed transfer syntax, best
# first. pydicom's own order puts GDCM first whenever python-gdcm is installed
# (the `torchdicom[gdcm]` extra), and GDCM aborts the interpreter (SIGABRT) on
# code-streams that disagree with the header; it also falls back from one
# plugin to the next frame by frame, so one file could be read by two decoders.
# torchdicom pins one plugin per file instead: GDCM only where nothing else
# installed decodes the syntax, and no fallback after a failure (a fallback
# would hand exactly the frames that broke one decoder to the next one).
#
# * JPEG baseline / extended 8-bit: Pillow (libjpeg-turbo). Its output equals
#   GDCM's exactly on every real baseline file in the test sets, i.e. equals
#   pydicom's pixel_array with the recommended install; pylibjpeg-libjpeg
#   differs from both by a few levels (IDCT and chroma upsampling differ).
#   Pillow cannot decode 12-bit JPEG: those go to pylibjpeg.
# * JPEG lossless: libjpeg-turbo 3 through imagecodecs (torchdicom[codecs]; a plugin
#   of torchdicom's own, torchdicom.io.imagecodecs_plugin, ~6x pylibjpeg), else
#   pylibjpeg; all exact on intact streams, like GDCM.
# * JPEG-LS: pyjpegls (CharLS, the implementation GDCM also uses), then
#   pylibjpeg; both equal GDCM on the lossless and near-lossless test files.
# * JPEG 2000: pylibjpeg-openjpeg (also decodes multi-sample data above 8 bits,
#   which Pillow refuses), then Pillow; both are OpenJPEG, equal to GDCM.
# * HTJ2K: pylibjpeg only (pydicom has no other plugin).
# * RLE: pylibjpeg-rle (fast), then pydicom's own decoder; lossless, so equal.
_PLUGIN_PREFERENCE: dict[str, tuple[str, ...]] = {
    pydicom.uid.JPEGBaseline8Bit: ("pillow", "pylibjpeg", "gdcm"),
    pydicom.uid.JPEGExtended12Bit: ("pillow", "pylibjpeg", "gdcm"),
    pydicom.uid.JPEGLossless: ("imagecodecs", "pylibjpeg", "gdcm"),
    pydicom.uid.JPEGLosslessSV1: ("imagecodecs", "pylibjpeg", "gdcm"),
    pydicom.uid.JPEGLSLossless: ("pyjpegls", "pylibjpeg", "gdcm"),
    pydicom.uid.JPEGLSNearLossless: ("pyjpegls", "pylibjpeg", "gdcm"),
    pydicom.uid.JPEG2000Lossless: ("pylibjpeg", "pillow", "gdcm"),
    pydicom.uid.JPEG2000: ("pylibjpeg", "pillow", "gdcm"),
    pydicom.uid.HTJ2KLossless: ("pylibjpeg",),
    pydicom.uid.HTJ2KLosslessRPCL: ("pylibjpeg",),
    pydicom.uid.HTJ2K: ("pylibjpeg",),
    pydicom.uid.RLELossless: ("pylibjpeg", "pydicom"),
}
_PILLOW_8BIT_ONLY = frozenset({pydicom.uid.JPEGExtended12Bit})


def decoding_plugin(transfer_syntax: str, bits_stored: int = 8) -> str:
    """The pydicom decoding plugin torchdicom uses for a transfer syntax.

    Args:
        transfer_syntax: (0002,0010) *Transfer Syntax UID*.
        bits_stored: (0028,0101) *Bits Stored*; JPEG extended above 8 bits is
            not for Pillow.

    Returns:
        The plugin name to pass as ``decoding_plugin`` to pydicom (``"pillow"``,
        ``"pylibjpeg"``, ``"pyjpegls"``, ``"pydicom"``, ``"gdcm"``), or ``""``
        for native syntaxes (no plugins) and syntaxes without an installed one.

    Example:
        >>> decoding_plugin("1.2.840.10008.1.2.4.80")  # JPEG-LS lossless
        'pyjpegls'
    """
    uid = UID(transfer_syntax)
    if uid in (pydicom.uid.JPEGLossless, pydicom.uid.JPEGLosslessSV1):
        imagecodecs_plugin.register()  # torchdicom's own plugin, when imagecodecs is installed
    try:
        available = get_decoder(uid).available_plugins
    except NotImplementedError:
        return ""
    preferred = [
        name
        for name in _PLUGIN_PREFERENCE.get(uid, ())
        if not (name == "pillow" and uid in _PILLOW_8BIT_ONLY and bits_stored > 8)
    ]
    # Plugins pydicom may add later go before GDCM, never after it.
    others = sorted(name for name in available if name not in preferred and name != "gdcm")
    order = [n for n in preferred if n != "gdcm"] + others + ["gdcm"]
    return next((name for name in order if name in available), "")


def _decoder_for(row: dict[str, Any]):
    path = row["path"]
    uid = UID(row["transfer_syntax"])
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        name = uid.name if uid.is_transfer_syntax else "unknown"
        raise UnsupportedTransferSyntaxError(
            path, f"transfer syntax {uid} ({name}) has no pixel data decoder in pydicom"
        ) from None
    if not decoder.is_available:
        # pydicom 3 lists one "plugin - requires package" line per plugin.
        missing = "; ".join(str(line) for line in decoder.missing_dependencies)
        if not missing:
            missing = "none of its plugins is installed"
        raise UnsupportedTransferSyntaxError(
            path,
            f"no installed decoder for {uid.name} ({uid}); install a package for one of its plugins"
            f" ({missing}), e.g. `pip install pylibjpeg pylibjpeg-libjpeg"
            f" pylibjpeg-openjpeg pylibjpeg-rle` or `pip install torchdicom[gdcm]`",
        )
    return decoder


def _to_chw(arr: np.ndarray, spp: int) -> np.ndarray:
    """(H, W) or (H, W, C) → (C, H, W)."""
    if spp == 1:
        return arr[None] if arr.ndim == 2 else arr.reshape(1, *arr.shape[-2:])
    return np.moveaxis(arr, -1, 0)


def _decode_error(row: dict[str, Any], exc: BaseException, frame: int | None) -> TorchDicomError:
    if isinstance(exc, TorchDicomError):
        return exc
    text = _short(exc)
    if "plugin" in text.lower() and ("missing" in text.lower() or "available" in text.lower()):
        return UnsupportedTransferSyntaxError(
            row["path"], f"cannot decode {row['transfer_syntax']}: {text}"
        )
    return CorruptDicomError(row["path"], f"pixel data cannot be decoded: {text}", frame=frame)


def _decode_opts(row: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "rows": int(row["rows"]),
        "columns": int(row["columns"]),
        "samples_per_pixel": int(row["samples_per_pixel"]),
        "bits_allocated": int(row["bits_allocated"]),
        "bits_stored": int(row["bits_stored"]),
        "pixel_representation": int(row["pixel_representation"]),
        "photometric_interpretation": str(row["photometric"]),
        "number_of_frames": int(row["frames"]),
        "pixel_keyword": str(row["pixel_keyword"]),
    }
    if int(row["samples_per_pixel"]) > 1:
        opts["planar_configuration"] = int(row["planar_configuration"])
    if row.get("pixel_vr"):
        opts["pixel_vr"] = str(row["pixel_vr"])
    return opts


def _one_frame_buffer(frame: bytes) -> bytes:
    """``frame`` as encapsulated pixel data of one frame: empty offset table, one fragment.

    pydicom's decoders take encapsulated pixel data, not a bare code-stream;
    with one frame declared, pydicom joins every fragment into that frame, so
    it decodes exactly ``frame`` (odd lengths included: no padding is added).
    """
    return (
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\x00\xe0"
        + len(frame).to_bytes(4, "little")
        + frame
    )


def _decode_codestream(
    row: dict[str, Any],
    decoder,
    plugin: str,
    frame: bytes,
    index: int,
    as_rgb: bool,
    opts: dict[str, Any],
) -> np.ndarray:
    """Check one compressed frame's code-stream header against the row, then decode it.

    The check comes first so that no decoder (GDCM aborts the process on
    such frames) ever sees a code-stream that disagrees with (0028,0010)
    *Rows*, (0028,0011) *Columns*, (0028,0002) *Samples per Pixel* or
    (0028,0100) *Bits Allocated*; see :mod:`torchdicom.io.codestream`.
    """
    info = check_frame(
        frame,
        row["transfer_syntax"],
        rows=int(row["rows"]),
        columns=int(row["columns"]),
        samples_per_pixel=int(row["samples_per_pixel"]),
        bits_allocated=int(row["bits_allocated"]),
        path=row["path"],
        index=index,
    )
    widen = None
    if (
        info is not None
        and info.kind != "JPEG 2000"
        and info.precision <= 8
        and opts["bits_allocated"] == 16
    ):
        # An 8-bit JPEG / JPEG-LS stream in 16-bit storage (legal: Bits Stored
        # 8, Bits Allocated 16): pylibjpeg returns 8-bit samples that pydicom
        # would read as 16-bit ones and fail. Decode as 8-bit, then widen to
        # the stored dtype (the values GDCM gives). Only 16: JPEG allows 8 or
        # 16 bits allocated, and widening to 32/64 would let a lying header
        # multiply the output.
        opts = {**opts, "bits_allocated": 8, "bits_stored": min(opts["bits_stored"], 8)}
        widen = _np_dtype(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr, _ = decoder.as_array(
            _one_frame_buffer(frame),
            index=0,
            as_rgb=as_rgb,
            decoding_plugin=plugin,
            **{**opts, "number_of_frames": 1},
        )
    if widen is not None:
        arr = arr.astype(widen)
    return _to_chw(arr, int(row["samples_per_pixel"]))


def _read_codestreams(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """Encapsulated frames located in the file from the pixel data offset, then decoded.

    Each frame's code-stream is located the way pydicom locates it (basic
    offset table, else fragments), checked, then decoded by the pinned plugin.
    """
    decoder = _decoder_for(row)
    opts = _decode_opts(row)
    offset = int(row["pixel_offset"])
    plugin = decoding_plugin(row["transfer_syntax"], int(row["bits_stored"]))
    n_frames = int(row["frames"])
    arrays: list[np.ndarray] = []
    # Bounded: a corrupt fragment length must not make the decoder
    # allocate 4 GiB (see BoundedReader).
    with _bounded(row) as f:
        for k in idx:
            try:
                f.seek(offset)
                frame = get_frame(f, k, number_of_frames=n_frames)
                arrays.append(_decode_codestream(row, decoder, plugin, frame, k, as_rgb, opts))
            except Exception as exc:
                raise _decode_error(row, exc, k) from None
    return _fill(out, _stack(arrays, row), row["path"])


def _by_span(row: dict[str, Any]) -> bool:
    """Encapsulated frames whose code-stream spans the scan recorded (see ``frame_offsets``)."""
    spans = row.get("frame_offsets")
    return (
        bool(row["encapsulated"])
        and spans is not None
        and len(spans) == int(row["frames"]) > 0
        and _addressable(row)
    )


def _read_span(fd: int, row: dict[str, Any], k: int) -> bytes:
    """Frame ``k``'s code-stream: one ``pread`` of its recorded span, its fragments joined."""
    offset, length = int(row["frame_offsets"][k]), int(row["frame_lengths"][k])
    if offset < 0 or length < 8 or offset + length > _data_end(row):
        raise CorruptDicomError(
            row["path"], f"frame span {offset}+{length} lies outside the file", frame=k
        )
    span = _scratch(length)
    _pread_exact(fd, memoryview(span), offset, row["path"], k)
    try:
        return join_fragments(span)
    except ValueError as exc:
        raise CorruptDicomError(row["path"], f"frame {k}: {exc}", frame=k) from None


def _read_codestreams_by_span(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """Encapsulated frames read by their recorded spans, checked, decoded by the pinned plugin.

    The same code-streams and decoder as :func:`_read_codestreams`, without
    walking the fragments on every read.
    """
    decoder = _decoder_for(row)
    opts = _decode_opts(row)
    plugin = decoding_plugin(row["transfer_syntax"], int(row["bits_stored"]))
    arrays: list[np.ndarray] = []
    fd = _open_checked(row)
    try:
        for k in idx:
            try:
                frame = _read_span(fd, row, k)
                arrays.append(_decode_codestream(row, decoder, plugin, frame, k, as_rgb, opts))
            except Exception as exc:
                raise _decode_error(row, exc, k) from None
    finally:
        _close(fd)
    return _fill(out, _stack(arrays, row), row["path"])


class _NotForCodec(Exception):
    """A frame a direct codec would not decode exactly as the pinned plugin: use that instead."""


def _check_codestream(frame: bytes, row: dict[str, Any], k: int):
    return check_frame(
        frame,
        row["transfer_syntax"],
        rows=int(row["rows"]),
        columns=int(row["columns"]),
        samples_per_pixel=int(row["samples_per_pixel"]),
        bits_allocated=int(row["bits_allocated"]),
        path=row["path"],
        index=k,
    )


# JPEG syntaxes whose 8-bit frames libjpeg-turbo (Pillow) decodes; the pinned plugin for
# them is Pillow, and this route makes the same calls pydicom's Pillow plugin makes.
_PILLOW_JPEG = frozenset({pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit})


# The layouts this route reproduces pydicom's handling of; others (a planar
# configuration of 1, a palette or other colour model on a JPEG stream) are laid
# out by pydicom's own rules, through the pinned plugin.
_PILLOW_LAYOUTS = frozenset(
    {
        (1, "MONOCHROME1", 0),
        (1, "MONOCHROME2", 0),
        (3, "RGB", 0),
        (3, "YBR_FULL", 0),
        (3, "YBR_FULL_422", 0),
    }
)


def _pillow_jpeg(row: dict[str, Any]) -> bool:
    spp = int(row["samples_per_pixel"])
    planar = int(row["planar_configuration"]) if spp > 1 else 0
    return (
        row["transfer_syntax"] in _PILLOW_JPEG
        and int(row["bits_allocated"]) == 8
        and int(row["bits_stored"]) == 8
        and int(row["pixel_representation"]) == 0
        and (spp, str(row["photometric"]), planar) in _PILLOW_LAYOUTS
        and _by_span(row)
        and decoding_plugin(row["transfer_syntax"], 8) == "pillow"
    )


def _decode_pillow(
    frame: bytes, row: dict[str, Any], k: int, as_rgb: bool, dst: np.ndarray
) -> None:
    """One 8-bit JPEG frame into ``dst`` (C, H, W) uint8, as pydicom's Pillow plugin decodes it.

    Colour frames come out unconverted (YCbCr as stored) unless the stream's
    Adobe marker asks Pillow to transform them, exactly like the plugin; then,
    with ``as_rgb``, pydicom's own YCbCr to RGB conversion (float32, rounded)
    runs on the frame while it is in cache — libjpeg-turbo's own conversion
    differs from it by ±1 on some samples. Pillow releases the GIL while it
    decodes.
    """
    from PIL import Image

    spp = int(row["samples_per_pixel"])
    info = _check_codestream(frame, row, k)
    if info is None or info.precision != 8:
        raise _NotForCodec
    with Image.open(io.BytesIO(frame), formats=("JPEG",)) as image:
        if spp != 1 and "adobe_transform" not in image.info:
            image.draft("YCbCr", image.size)
        if image.mode not in (("L",) if spp == 1 else ("YCbCr", "RGB")):
            raise _NotForCodec
        raw = np.frombuffer(image.tobytes(), dtype=np.uint8)
    shape = (int(row["rows"]), int(row["columns"]), spp)
    if raw.size != math.prod(shape):
        raise CorruptDicomError(
            row["path"], f"decoded frame has {raw.size} samples, expected {shape}", frame=k
        )
    raw = raw.reshape(shape)
    if spp == 3 and as_rgb and row["photometric"] in ("YBR_FULL", "YBR_FULL_422"):
        _ybr_to_rgb(raw, dst)
    else:
        dst[...] = raw.transpose(2, 0, 1)


class _YbrTables:
    """pydicom's YBR_FULL to RGB conversion of 8-bit samples as lookup tables.

    pydicom converts in float32 (a matrix product, rounded by ``floor(x + 0.5)``),
    about 1 ms per 253² frame. Its result for a pixel depends on that pixel's
    (Y, Cb, Cr) alone, and there are only 256³ of those, so the tables are
    pydicom's own output for every one of them (built once per process, in
    about 0.3 s): exact by construction, on any machine. R depends on (Y, Cr)
    and B on (Y, Cb) (checked when built; otherwise pydicom converts each frame);
    G takes a 16 MiB table.
    """

    def __init__(self) -> None:
        grid = np.empty((256, 256, 3), dtype=np.uint8)
        grid[..., 1] = np.arange(256, dtype=np.uint8)[:, None]  # Cb down
        grid[..., 2] = np.arange(256, dtype=np.uint8)[None, :]  # Cr across
        self.red = np.empty((256, 256), dtype=np.uint8)  # [Y, Cr]
        self.green = np.empty((256, 256, 256), dtype=np.uint8)  # [Y, Cb, Cr]
        self.blue = np.empty((256, 256), dtype=np.uint8)  # [Y, Cb]
        self.exact = True
        for y in range(256):
            grid[..., 0] = y
            rgb = convert_color_space(grid.copy(), "YBR_FULL", "RGB")
            self.red[y] = rgb[0, :, 0]
            self.green[y] = rgb[..., 1]
            self.blue[y] = rgb[:, 0, 2]
            if not (
                (rgb[..., 0] == self.red[y][None, :]).all()
                and (rgb[..., 2] == self.blue[y][:, None]).all()
            ):
                self.exact = False
                return
        self.kernel = _ybr_kernel()


_YBR: _YbrTables | None = None
_YBR_LOCK = threading.Lock()


def _ybr_kernel():
    # numba on first use (as the transforms' kernels): about 0.1 ms per 253² frame.
    from numba import njit

    @njit(nogil=True, cache=True, boundscheck=False)
    def convert(src, dst, red, green, blue):  # pragma: no cover - compiled
        # src: (N, 3) uint8 YCbCr, interleaved; dst: (3, N) uint8 RGB, channels first.
        for i in range(src.shape[0]):
            y, cb, cr = src[i, 0], src[i, 1], src[i, 2]
            dst[0, i] = red[y, cr]
            dst[1, i] = green[y, cb, cr]
            dst[2, i] = blue[y, cb]

    return convert


def _ybr_to_rgb(frame: np.ndarray, dst: np.ndarray) -> None:
    """(H, W, 3) uint8 YCbCr into ``dst`` (3, H, W) as RGB, exactly as pydicom converts it."""
    global _YBR
    if _YBR is None:
        with _YBR_LOCK:
            if _YBR is None:
                _YBR = _YbrTables()
    if not _YBR.exact:
        dst[...] = convert_color_space(frame.copy(), "YBR_FULL", "RGB").transpose(2, 0, 1)
        return
    src = np.ascontiguousarray(frame).reshape(-1, 3)
    if dst.flags.c_contiguous:
        _YBR.kernel(src, dst.reshape(3, -1), _YBR.red, _YBR.green, _YBR.blue)
    else:
        planes = np.empty((3, src.shape[0]), dtype=np.uint8)
        _YBR.kernel(src, planes, _YBR.red, _YBR.green, _YBR.blue)
        dst[...] = planes.reshape(dst.shape)


# JPEG lossless (processes 14 and 14 SV1): libjpeg-turbo 3 decodes them (through
# imagecodecs, which releases the GIL), about 6x faster than pylibjpeg-libjpeg here;
# the same library as the pinned plugin (torchdicom.io.imagecodecs_plugin), called
# directly.
_LOSSLESS_JPEG = frozenset({pydicom.uid.JPEGLossless, pydicom.uid.JPEGLosslessSV1})


def _imagecodecs_jpeg(row: dict[str, Any]) -> bool:
    return (
        row["transfer_syntax"] in _LOSSLESS_JPEG
        and int(row["samples_per_pixel"]) == 1
        and int(row["bits_allocated"]) in (8, 16)
        and 1 < int(row["bits_stored"]) <= int(row["bits_allocated"])
        and _by_span(row)
        and decoding_plugin(row["transfer_syntax"]) == imagecodecs_plugin.LABEL
    )


def _decode_lossless_jpeg(
    frame: bytes, row: dict[str, Any], k: int, as_rgb: bool, dst: np.ndarray
) -> None:
    """One lossless JPEG frame into ``dst`` (1, H, W) of the stored dtype (see :func:`read_frames`)."""
    import imagecodecs

    info = _check_codestream(frame, row, k)
    bits_stored = int(row["bits_stored"])
    if info is None or info.precision != bits_stored:
        raise _NotForCodec  # e.g. 8-bit streams in 16-bit storage: the plugin widens them
    raw = imagecodecs.jpeg8_decode(frame)
    shape = (int(row["rows"]), int(row["columns"]))
    if raw.shape != shape or raw.dtype.itemsize * 8 != int(row["bits_allocated"]):
        raise _NotForCodec
    arr = raw.view(_np_dtype(row))
    if arr.dtype.kind == "i" and bits_stored < arr.dtype.itemsize * 8:
        # Sign-extend from Bits Stored, as pydicom does for signed data.
        shift = arr.dtype.itemsize * 8 - bits_stored
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    dst[0] = arr


# JPEG 2000: openjpeg (pylibjpeg-openjpeg, the pinned plugin's library) called directly
# on the frame's code-stream, skipping pydicom's per-frame decode set-up. Where its output
# needs pydicom's corrections (a sign or precision that differs from the header), the
# pinned plugin decodes instead. openjpeg holds the GIL: frames are decoded in turn.
_J2K = frozenset({pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEG2000})


def _openjpeg_j2k(row: dict[str, Any]) -> bool:
    return (
        row["transfer_syntax"] in _J2K
        and int(row["samples_per_pixel"]) == 1
        and int(row["bits_allocated"]) in (8, 16)
        and _by_span(row)
        and decoding_plugin(row["transfer_syntax"]) == "pylibjpeg"
        and _has_openjpeg()
    )


def _has_openjpeg() -> bool:
    global _OPENJPEG
    if _OPENJPEG is None:
        try:
            import openjpeg  # noqa: F401

            _OPENJPEG = True
        except ImportError:
            _OPENJPEG = False
    return _OPENJPEG


_OPENJPEG: bool | None = None


def _decode_openjpeg(
    frame: bytes, row: dict[str, Any], k: int, as_rgb: bool, dst: np.ndarray
) -> None:
    """One single-sample JPEG 2000 frame into ``dst`` (1, H, W) of the stored dtype."""
    import openjpeg

    info = _check_codestream(frame, row, k)
    if info is None or info.precision != int(row["bits_stored"]):
        raise _NotForCodec
    arr = openjpeg.decode(frame)
    if arr.shape != dst.shape[1:] or arr.dtype != dst.dtype:
        raise _NotForCodec  # a sign the header does not declare: pydicom corrects it
    dst[0] = arr


def _read_by_codec(
    row: dict[str, Any],
    idx: list[int],
    out: np.ndarray | None,
    as_rgb: bool,
    decode_frame: Callable[[bytes, dict[str, Any], int, bool, np.ndarray], None],
    parallel: bool = True,
) -> np.ndarray:
    """Frames by span through a codec, on the runtime's thread pool when it releases the GIL.

    ``decode_frame(code_stream, row, k, as_rgb, dst)`` checks the code-stream and
    writes frame ``k`` into ``dst``, its (C, H, W) slot of the output (the
    caller's ``out`` when given), or raises :class:`_NotForCodec` to hand the
    whole read to the pinned plugin.
    """
    rows, cols, spp = int(row["rows"]), int(row["columns"]), int(row["samples_per_pixel"])
    shape, dtype = (len(idx), spp, rows, cols), _np_dtype(row)
    if out is not None:
        _check_out(out, shape, dtype, row["path"])
    fd = _open_checked(row)
    try:
        # The first frame's code-stream is checked against the header before the output is
        # allocated: a header lying about Rows/Columns (fuzzing: Rows 240 -> 4097 on a JPEG
        # cine) must be an error, not a buffer the file cannot fill.
        first = _read_span(fd, row, idx[0]) if idx else b""
        if idx:
            _check_codestream(first, row, idx[0])
        result = np.empty(shape, dtype=dtype) if out is None else out
    except BaseException:
        _close(fd)
        raise

    def decode(start: int, stop: int) -> None:
        for pos in range(start, stop):
            k = idx[pos]
            try:
                stream = first if pos == 0 else _read_span(fd, row, k)
                decode_frame(stream, row, k, as_rgb, result[pos])
            except _NotForCodec:
                raise
            except Exception as exc:
                raise _decode_error(row, exc, k) from None

    try:
        if parallel and len(idx) > 1:
            from torchdicom._runtime import run_in_slices  # imports torch: only for clips

            run_in_slices(len(idx), decode, rows * cols * spp)
        else:
            decode(0, len(idx))
    except _NotForCodec:
        return _read_codestreams_by_span(row, idx, out, as_rgb)
    finally:
        _close(fd)
    return result


def _read_jpeg_pillow(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """8-bit JPEG frames by span through libjpeg-turbo (Pillow): see :func:`_decode_pillow`."""
    return _read_by_codec(row, idx, out, as_rgb, _decode_pillow)


def _read_j2k_openjpeg(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """Single-sample JPEG 2000 frames by span through openjpeg, in turn (it holds the GIL)."""
    return _read_by_codec(row, idx, out, as_rgb, _decode_openjpeg, parallel=False)


def _read_lossless_jpeg(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """Lossless JPEG frames by span through libjpeg-turbo 3 (imagecodecs)."""
    return _read_by_codec(row, idx, out, as_rgb, _decode_lossless_jpeg)


def _read_native_decoded(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """Native data the native route does not take (YBR, big-endian), decoded by pydicom.

    Frame by frame: pydicom's ``iter_array`` skips the 4:2:2 upsampling that
    ``as_array`` does.
    """
    decoder = _decoder_for(row)
    opts = _decode_opts(row)
    spp = int(row["samples_per_pixel"])
    offset = int(row["pixel_offset"])
    arrays: list[np.ndarray] = []
    with _bounded(row) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for k in idx:
                    f.seek(offset)
                    arr, _ = decoder.as_array(f, index=k, as_rgb=as_rgb, **opts)
                    arrays.append(_to_chw(arr, spp))
        except Exception as exc:
            failed = idx[len(arrays)] if len(arrays) < len(idx) else None
            raise _decode_error(row, exc, failed) from None
    return _fill(out, _stack(arrays, row), row["path"])


def _extended_offsets(ds: pydicom.Dataset) -> tuple[bytes, bytes] | None:
    """(7FE0,0001) *Extended Offset Table* and (7FE0,0002) its lengths, as pydicom reads them."""
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return None


def _read_via_dataset(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """Anything else (deflated, extended offset table, no recorded offset): read with pydicom."""
    path = row["path"]
    fd = _open_checked(row)  # stale check only: pydicom reopens the file itself
    if type(fd) is int and "member_size" not in row:
        os.close(fd)
        ds = dcmread(path)
    else:  # a remote object these rare files need whole, or a shard member's byte range
        try:
            blob = _member_bytes(fd, row) if "member_size" in row else fd.whole()
        finally:
            if type(fd) is int:
                os.close(fd)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(blob), force=True)
        except Exception as exc:
            raise CorruptDicomError(path, f"header cannot be parsed: {_short(exc)}") from None
    decoder = _decoder_for(row)
    spp = int(row["samples_per_pixel"])
    n_frames = int(row["frames"])
    if _unaligned_bits(row):
        # pydicom 3.0 cannot decode one frame of 1-bit data whose frames start
        # mid-byte (it assumes byte-aligned frames); decode all and select.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr, _ = decoder.as_array(ds, as_rgb=as_rgb, number_of_frames=n_frames)
        except Exception as exc:
            raise _decode_error(row, exc, None) from None
        arr = arr.reshape(n_frames, *arr.shape[-(2 if spp == 1 else 3) :])
        return _fill(out, _stack([_to_chw(arr[k], spp) for k in idx], row), path)
    arrays = []
    if bool(row["encapsulated"]):
        # Deflated, defined-length or extended-offset encapsulated data: the
        # value is in memory; frames are located as pydicom does, then
        # checked and decoded like the addressable route's.
        plugin = decoding_plugin(row["transfer_syntax"], int(row["bits_stored"]))
        opts = _decode_opts(row)
        for k in idx:
            try:
                frame = get_frame(
                    ds.PixelData,
                    k,
                    number_of_frames=n_frames,
                    extended_offsets=_extended_offsets(ds),
                )
                arrays.append(_decode_codestream(row, decoder, plugin, frame, k, as_rgb, opts))
            except Exception as exc:
                raise _decode_error(row, exc, k) from None
        return _fill(out, _stack(arrays, row), path)
    for k in idx:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # (0028,0008) as indexed: more whole frames than the header
                # declares are read (see header.row_from_dataset).
                arr, _ = decoder.as_array(ds, index=k, as_rgb=as_rgb, number_of_frames=n_frames)
        except Exception as exc:
            raise _decode_error(row, exc, k) from None
        arrays.append(_to_chw(arr, spp))
    return _fill(out, _stack(arrays, row), path)


def _stack(arrays: list[np.ndarray], row: dict[str, Any]) -> np.ndarray:
    expected = (int(row["samples_per_pixel"]), int(row["rows"]), int(row["columns"]))
    for k, a in enumerate(arrays):
        if a.shape != expected:
            raise CorruptDicomError(
                row["path"],
                f"decoded frame has shape {tuple(a.shape)} but the header declares {expected} (C, H, W)",
                frame=k,
            )
    if not arrays:
        return np.empty(
            (0, *expected), dtype=_np_dtype(row) if int(row["bits_allocated"]) >= 8 else np.uint8
        )
    out = np.stack(arrays)
    # Big-endian files decode to big-endian arrays; torch only takes native order.
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _fill(out: np.ndarray | None, result: np.ndarray, path: str) -> np.ndarray:
    """``result``, copied into the caller's ``out`` when one was given."""
    if out is None:
        return result
    _check_out(out, result.shape, result.dtype, path)
    out[...] = result
    return out


def _addressable(row: dict[str, Any]) -> bool:
    """Pixel data the decoding routes can read from its recorded offset, frame by frame."""
    return (
        int(row["pixel_offset"]) >= 0
        and not bool(row["has_extended_offsets"])
        and not _unaligned_bits(row)
        # Encapsulated data must have undefined length; with a defined one
        # (a broken writer) pydicom decodes only that many bytes, so read
        # it the way pydicom does rather than scan fragments past it.
        and not (bool(row["encapsulated"]) and int(row["pixel_length"]) >= 0)
    )


# --------------------------------------------------------------------------- DICOMweb
def _is_dicomweb(row: dict[str, Any]) -> bool:
    """A DICOMweb instance (``dicomweb+http(s)://…`` path): frames come by WADO-RS."""
    return str(row["path"])[:9].lower() == "dicomweb+"


def read_frames_dicomweb(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """The read route of DICOMweb rows (see :data:`ROUTES`).

    Fetches the 0-based frames ``idx`` (each distinct frame once, in requests of up to
    256 frames: :func:`torchdicom.sources.dicomweb.fetch_parts`) and decodes each part by
    its own transfer syntax: native bytes laid out by the row, code-streams checked and
    decoded by the pinned plugin, exactly as the local routes do.

    Returns:
        (F, C, H, W) stored values, equal to :func:`torchdicom.read_frames` of the file.
    """
    from torchdicom.sources.dicomweb import fetch_parts

    decoded: dict[int, np.ndarray] = {}
    for frame, as_sent, body, syntax in fetch_parts(row, idx):
        decoded[frame] = decode_part(as_sent, body, syntax, frame, as_rgb)
    return stack_frames(out, [decoded[f] for f in idx], row)


def read_dicomweb_batch(
    rows: Sequence[dict[str, Any]],
    frames: Sequence[Sequence[int]],
    max_in_flight: int | None = None,
    as_rgb: bool = True,
    errors: str = "raise",
) -> list[Any]:
    """Frames of many DICOMweb rows, ``max_in_flight`` requests at a time.

    Args:
        rows: index rows of DICOMweb instances.
        frames: the 0-based frames of each row.
        max_in_flight: concurrent requests (default ``policy.max_in_flight``); with a
            server far away, throughput grows with it until the server or the link is busy.

        errors: ``"raise"`` the first row's error (after every request ended), or
            ``"return"`` each row's :class:`TorchDicomError` in its place.

    Returns:
        One (F, C, H, W) array per row (or its error, with ``errors="return"``).
    """
    from torchdicom.sources.dicomweb import in_flight

    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return'. Got: {errors!r}")

    def one(row: dict[str, Any], picked: Sequence[int]) -> Any:
        try:
            return read_frames_dicomweb(row, list(picked), None, as_rgb)
        except TorchDicomError as exc:
            if errors == "raise":
                raise
            return exc

    calls = [functools.partial(one, row, picked) for row, picked in zip(rows, frames)]
    return in_flight(calls, max_in_flight)


def decode_part(
    row: dict[str, Any], data: bytes, transfer_syntax: str, frame: int, as_rgb: bool
) -> np.ndarray:
    """One frame's bytes as they came from a server (a WADO-RS part), decoded: (C, H, W).

    ``transfer_syntax`` is the part's own ("" means Explicit VR Little Endian, the
    default of ``application/octet-stream``). Native bytes are laid out by the row (a part
    shorter than one frame is a :class:`CorruptDicomError`); code-streams are checked
    against the row and decoded by the pinned plugin, as the local routes do.
    """
    syntax = transfer_syntax or row["transfer_syntax"] or pydicom.uid.ExplicitVRLittleEndian
    uid = UID(syntax)
    here = {**row, "transfer_syntax": str(uid), "encapsulated": uid.is_encapsulated}
    if not uid.is_encapsulated:
        frame_bytes = math.ceil(
            _declared_native_bytes({**here, "frames": 1})
            if int(row["bits_allocated"]) >= 8
            else _frame_nbits(row) / 8
        )
        if len(data) < frame_bytes or len(data) > frame_bytes + 1:  # +1: even-length padding
            raise CorruptDicomError(
                row["path"],
                f"the server sent {len(data)} bytes for a native frame of {frame_bytes}"
                f" ({_describe({**row, 'frames': 1})}): short or wrong part",
                frame=frame,
            )
        data = data[:frame_bytes]
        rows, cols, spp = int(row["rows"]), int(row["columns"]), int(row["samples_per_pixel"])
        if int(row["bits_allocated"]) == 1:
            bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
            arr = bits[: rows * cols * spp].reshape(rows, cols, spp) if spp > 1 else None
            if arr is None:
                return bits[: rows * cols].reshape(1, rows, cols).copy()
            return np.ascontiguousarray(arr.transpose(2, 0, 1))
        if _is_native({**here, "pixel_offset": 0}):
            values = np.frombuffer(data, _native_dtype(row))
            if spp > 1 and int(row["planar_configuration"]) == 0:
                arr = np.ascontiguousarray(values.reshape(rows, cols, spp).transpose(2, 0, 1))
            else:
                arr = values.reshape(spp, rows, cols).copy()
            if int(row["bits_stored"]) < int(row["bits_allocated"]) and (
                row["pixel_keyword"] == "PixelData"
            ):
                _clear_unused_bits(arr, int(row["bits_stored"]))
            return arr
    try:
        decoder = _decoder_for(here)
        opts = {**_decode_opts(here), "number_of_frames": 1}
        if uid.is_encapsulated:
            plugin = decoding_plugin(str(uid), int(row["bits_stored"]))
            return _decode_codestream(here, decoder, plugin, data, frame, as_rgb, opts)
        with warnings.catch_warnings():  # big-endian or YBR native: pydicom's decoder
            warnings.simplefilter("ignore")
            arr, _ = decoder.as_array(data, index=0, as_rgb=as_rgb, **opts)
        arr = _to_chw(arr, int(row["samples_per_pixel"]))
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)
    except Exception as exc:
        raise _decode_error(here, exc, frame) from None


def stack_frames(
    out: np.ndarray | None, arrays: list[np.ndarray], row: dict[str, Any]
) -> np.ndarray:
    """Decoded (C, H, W) frames as one (F, C, H, W) result, shape-checked, into ``out`` if given."""
    return _fill(out, _stack(arrays, row), row["path"])


# --------------------------------------------------------------------------- the route table
class Route(NamedTuple):
    """One way of reading frames: the first route whose ``accepts(row)`` is true reads them.

    ``read(row, frames, out, as_rgb)`` reads the 0-based ``frames`` (already
    resolved and range-checked) and returns them as a C-contiguous
    (F, C, H, W) array equal to pydicom's ``pixel_array``, filled into ``out``
    when one is given (checked: shape and dtype). It raises
    :class:`~torchdicom.errors.TorchDicomError` subclasses for what is wrong
    with the file; the declared pixel size was checked before it is called.
    """

    name: str
    accepts: Callable[[dict[str, Any]], bool]
    read: Callable[[dict[str, Any], list[int], np.ndarray | None, bool], np.ndarray]
    #: Its decoder releases the GIL: reads of several files gain from running on threads
    #: (the datasets decode a batch's frames on the runtime's pool when this is set).
    parallel: bool = False


# In order; the last accepts every row. A new route (a faster codec, a remote
# byte source, GPU decode) is one new entry before the one it replaces.
ROUTES: tuple[Route, ...] = (
    Route("native", _is_native, _read_native),
    # Right after the hot path, before every file route: a DICOMweb row has no file offset
    # (pixel_offset -1, no spans), so native never takes it and the others must not.
    # Network-bound, so parallel.
    Route("DICOMweb (WADO-RS frames)", _is_dicomweb, read_frames_dicomweb, parallel=True),
    Route("packed bits", _is_packed_bits, _read_packed_bits),
    Route("JPEG 8-bit by span (Pillow)", _pillow_jpeg, _read_jpeg_pillow, parallel=True),
    Route(
        "JPEG lossless by span (imagecodecs)",
        _imagecodecs_jpeg,
        _read_lossless_jpeg,
        parallel=True,
    ),
    Route("JPEG 2000 by span (openjpeg)", _openjpeg_j2k, _read_j2k_openjpeg),
    Route("code-streams by span", _by_span, _read_codestreams_by_span),
    Route(
        "code-streams by offset",
        lambda row: bool(row["encapsulated"]) and _addressable(row),
        _read_codestreams,
    ),
    Route(
        "native via pydicom",
        lambda row: not bool(row["encapsulated"]) and _addressable(row),
        _read_native_decoded,
    ),
    Route("pydicom data set", lambda row: True, _read_via_dataset),
)


def route_for(row: dict[str, Any]) -> Route:
    """The route of :data:`ROUTES` that reads a row's frames (the first that accepts it)."""
    for route in ROUTES:
        if route.accepts(row):
            return route
    raise AssertionError("the last route accepts every row")  # pragma: no cover


def check_declared_size(row: dict[str, Any]) -> None:
    """Refuse a row whose header claims more pixels than its file can hold.

    Native data must fit the bytes after the pixel data offset; compressed
    frames may decode to at most a bounded multiple of their share of the
    file. Run before anything is allocated or decoded.

    Raises:
        CorruptDicomError: the declared size does not fit the file.
    """
    if _is_dicomweb(row):
        return  # no file size: each part is checked against one frame's size as it arrives
    if bool(row["encapsulated"]):
        _check_encapsulated_size(row)
    else:
        _check_native_size(row)


def read_frames_numpy(
    source: Any,
    frames: FrameSelection = None,
    *,
    as_rgb: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`read_frames` as a NumPy array (F, C, H, W); see there.

    ``as_rgb=False`` hands YBR_FULL / YBR_FULL_422 / JPEG YCbCr frames over
    unconverted (chroma upsampled, still YCbCr) so the colour conversion can
    run batched on the device (:class:`torchdicom.transforms.YbrToRgb`).

    ``out``: a C-contiguous (F, C, H, W) array of the file's dtype to fill and
    return (e.g. one slot of a batch buffer); native files are read straight
    into it, decoded frames are copied in. A wrong shape or dtype raises
    ``ValueError``.
    """
    row = _source_row(source)
    path = row["path"]
    idx = resolve_frames(frames, int(row["frames"]), path)
    try:
        check_declared_size(row)
        return route_for(row).read(row, idx, out, as_rgb)
    except (TorchDicomError, _OutMismatch):
        raise
    except MemoryError:
        raise CorruptDicomError(path, f"not enough memory to decode {_describe(row)}") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        # Also a Rust decoder's panic (pyo3 PanicException derives from
        # BaseException), seen on corrupt RLE segments.
        raise _decode_error(row, exc, None) from None


def read_frames(
    source: Any,
    frames: FrameSelection = None,
    *,
    as_rgb: bool = True,
    device: str | torch.device | None = None,
    decode_fallback: str | None = "cpu",
) -> torch.Tensor:
    """Read stored pixel values of the requested frames as a tensor.

    Values equal ``pydicom``'s ``Dataset.pixel_array`` for the same frames
    (pydicom 3 defaults: YBR_FULL / YBR_FULL_422 / JPEG YCbCr converted to RGB;
    no rescale, no LUTs, no MONOCHROME1 inversion — those are transforms).

    Args:
        source: a path, or an index row (``dict``/pandas ``Series`` from
            :class:`~torchdicom.DicomIndex`). With a row, native files are read
            by byte offset without parsing the header; the file's size and
            mtime are checked against the row first.
        frames: ``None`` for all frames, an int, a slice, or a sequence of ints.
            Only these frames are read (and, when compressed, decoded).
        as_rgb: ``False`` keeps YBR_FULL / YBR_FULL_422 / JPEG YCbCr frames in
            YCbCr (chroma upsampled) for a batched device-side conversion.
        device: ``None`` / ``"cpu"``, or a CUDA device: frames the GPU decodes
            (:func:`gpu_decodable`: unsigned JPEG .50/.51/.57/.70, JPEG 2000 /
            HTJ2K .90/.91/.201-.203 with recorded frame spans) are decoded by
            nvImageCodec (``pip install torchdicom[gpu]``) straight into the
            output on that device; other frames are read on the CPU and moved.
            GPU values are nvImageCodec's: lossless syntaxes equal pydicom's,
            lossy JPEG may differ from libjpeg-turbo by a few levels.
        decode_fallback: ``"cpu"`` decodes a frame the GPU decoder fails on
            with the CPU routes; ``None`` raises :class:`CorruptDicomError`
            naming the file and frame.

    Returns:
        Tensor of shape (F, C, H, W) in the stored dtype: ``uint8`` for 1- and
        8-bit unsigned, ``int8``/``uint16``/``int16``/``uint32``/``int32`` by
        (0028,0100) *Bits Allocated* and (0028,0103) *Pixel Representation*,
        ``float32`` for (7FE0,0008) *Float Pixel Data*, ``float64`` for
        (7FE0,0009) *Double Float Pixel Data*. C is 1 or 3.

    Raises:
        FrameIndexError: a frame outside the file's frame count.
        CorruptDicomError: truncated or inconsistent pixel data, a header
            claiming more pixels than the file can hold (checked before
            anything is allocated), or a compressed frame whose code-stream
            header disagrees with (0028,0010) *Rows*, (0028,0011) *Columns*,
            (0028,0002) *Samples per Pixel* or (0028,0100) *Bits Allocated*
            (the message names the frame and both values).
        UnsupportedTransferSyntaxError: no decoder installed (names the package).
        StaleIndexError: the file changed since the row was indexed.
        NotDicomError, MissingPixelDataError, DicomFileNotFoundError.
        ValueError: a CUDA ``device`` without CUDA, or an unknown ``decode_fallback``.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> read_frames(get_testdata_file("CT_small.dcm")).shape
        torch.Size([1, 1, 128, 128])
    """
    import torch

    if device is None:
        return torch.from_numpy(read_frames_numpy(source, frames, as_rgb=as_rgb))
    if decode_fallback not in ("cpu", None):
        raise ValueError(f"decode_fallback must be 'cpu' or None. Got: {decode_fallback!r}")
    target = _resolve_device(device)
    if target.type == "cpu":
        return torch.from_numpy(read_frames_numpy(source, frames, as_rgb=as_rgb))
    row = _source_row(source)
    if not gpu_decodable(row):
        return torch.from_numpy(read_frames_numpy(row, frames, as_rgb=as_rgb)).to(target)
    idx = resolve_frames(frames, int(row["frames"]), row["path"])
    check_declared_size(row)
    return _read_gpu(row, idx, as_rgb, target, decode_fallback == "cpu")


# --------------------------------------------------------------------------- GPU decode
# nvImageCodec decodes these on the GPU (nvJPEG, nvJPEG2000); JPEG-LS and RLE stay on
# the CPU. Signed data stays on the CPU too: decoders disagree on how they hand back
# signed samples, and the CPU routes give pydicom's values.
_GPU_SYNTAXES = frozenset(
    {
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.JPEGExtended12Bit,
        pydicom.uid.JPEGLossless,
        pydicom.uid.JPEGLosslessSV1,
        pydicom.uid.JPEG2000Lossless,
        pydicom.uid.JPEG2000,
        pydicom.uid.HTJ2KLossless,
        pydicom.uid.HTJ2KLosslessRPCL,
        pydicom.uid.HTJ2K,
    }
)


def gpu_decodable(row: dict[str, Any]) -> bool:
    """Whether ``read_frames(row, device="cuda")`` decodes the row's frames on the GPU.

    True for unsigned 8/16-bit single- or three-sample JPEG (.50, .51, .57,
    .70) and JPEG 2000 / HTJ2K (.90, .91, .201-.203) whose frame spans the
    scan recorded; everything else is decoded on the CPU and moved.
    """
    return (
        row["transfer_syntax"] in _GPU_SYNTAXES
        and int(row["pixel_representation"]) == 0
        and int(row["bits_allocated"]) in (8, 16)
        and int(row["samples_per_pixel"]) in (1, 3)
        and _by_span(row)
    )


def _resolve_device(device: str | torch.device) -> torch.device:
    import torch

    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} asks for GPU decoding, but CUDA is not available"
            " (torch.cuda.is_available() is False). Got: torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
        )
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device. Got: {device!r}")
    return target


_GPU_DECODERS: dict[int, Any] = {}


def _nvimgcodec(row: dict[str, Any]) -> Any:
    try:
        from nvidia import nvimgcodec
    except ImportError:
        raise UnsupportedTransferSyntaxError(
            row["path"],
            "GPU decoding needs nvImageCodec: pip install torchdicom[gpu]"
            " (nvidia-nvimgcodec-cu12), or read with device=None and move the tensor",
        ) from None
    return nvimgcodec


def _gpu_decode(
    row: dict[str, Any], streams: list[bytes], as_rgb: bool, device: torch.device
) -> list[Any]:
    """Decode code-streams on ``device`` in one batch; a failed frame is ``None``."""
    import torch

    nvimgcodec = _nvimgcodec(row)
    index = device.index if device.index is not None else torch.cuda.current_device()
    decoder = _GPU_DECODERS.get(index)
    if decoder is None:
        decoder = _GPU_DECODERS[index] = nvimgcodec.Decoder(device_id=index)
    rgb = int(row["samples_per_pixel"]) == 3 and as_rgb
    params = nvimgcodec.DecodeParams(
        color_spec=nvimgcodec.ColorSpec.RGB if rgb else nvimgcodec.ColorSpec.UNCHANGED,
        allow_any_depth=True,
    )
    stream = torch.cuda.current_stream(device).cuda_stream
    images = decoder.decode(streams, params=params, cuda_stream=stream)
    return [None if image is None else torch.as_tensor(image, device=device) for image in images]


def _read_gpu(
    row: dict[str, Any], idx: list[int], as_rgb: bool, device: torch.device, fallback: bool
) -> torch.Tensor:
    """Frames by span, checked on the CPU, batch-decoded on the GPU into one tensor there."""
    import torch

    rows, cols, spp = int(row["rows"]), int(row["columns"]), int(row["samples_per_pixel"])
    dtype = torch.from_numpy(np.empty(0, _np_dtype(row))).dtype
    fd = _open_checked(row)
    try:
        streams = []
        for k in idx:
            frame = _read_span(fd, row, k)
            _check_codestream(frame, row, k)  # no decoder sees a frame that disagrees
            streams.append(frame)
    finally:
        _close(fd)
    out = torch.empty((len(idx), spp, rows, cols), dtype=dtype, device=device)
    if not idx:
        return out
    try:
        decoded = _gpu_decode(row, streams, as_rgb, device)
    except TorchDicomError:
        raise
    except Exception as exc:
        if not fallback:
            raise CorruptDicomError(row["path"], f"the GPU decoder failed: {_short(exc)}") from None
        decoded = [None] * len(idx)
    for pos, (k, image) in enumerate(zip(idx, decoded, strict=True)):
        if image is not None:
            image = image.reshape(rows, cols, -1) if image.dim() != 3 else image
        if image is None or tuple(image.shape) != (rows, cols, spp) or image.dtype != dtype:
            if not fallback:
                got = "nothing" if image is None else f"{tuple(image.shape)} {image.dtype}"
                raise CorruptDicomError(
                    row["path"], f"the GPU decoder could not decode this frame (got {got})", frame=k
                )
            cpu = read_frames_numpy(row, [k], as_rgb=as_rgb)
            out[pos] = torch.from_numpy(cpu[0]).to(device)
            continue
        out[pos] = image.permute(2, 0, 1)
    return out


def scaled_px(source: Any, frame: int | None = None) -> torch.Tensor:
    """Stored values in modality units (Hounsfield for CT), as float32.

    The fastai ``scaled_px``: ``stored × RescaleSlope + RescaleIntercept``
    ((0028,1053) / (0028,1052); for enhanced objects each frame's own, from its
    Pixel Value Transformation functional group), or through the (0028,3000)
    *Modality LUT Sequence* when present; the stored values unchanged (as
    float32) when the file has neither (see :mod:`torchdicom.io.modality`).

    Args:
        source: a path or an index row.
        frame: ``None`` for every frame, or one frame index.

    Returns:
        float32 tensor (float64 for (7FE0,0009) *Double Float Pixel Data*, whose
        range float32 cannot hold) shaped like ``pixel_array``: (H, W) for a single frame,
        (F, H, W) for a multi-frame file, with a trailing channel axis
        (…, H, W, 3) for colour.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> hu = scaled_px(get_testdata_file("CT_small.dcm"))
        >>> hu.shape, hu.dtype
        (torch.Size([128, 128]), torch.float32)
    """
    import torch

    return torch.from_numpy(scaled_px_numpy(source, frame))


def scaled_px_numpy(source: Any, frame: int | None = None) -> np.ndarray:
    """:func:`scaled_px` as a numpy array (for callers that do not load torch)."""
    row = _source_row(source)
    stored = read_frames_numpy(row, frame)  # (F, C, H, W)
    arr = np.moveaxis(stored, 1, -1)  # (F, H, W, C)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    numbers = resolve_frames(frame, int(row["frames"]), row["path"])
    out = modality_values(row, arr, numbers)
    if frame is not None or int(row["frames"]) == 1:
        out = out[0]
    return out
