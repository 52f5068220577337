"""Opening DICOM files safely: every failure a torchdicom error, every allocation bounded.

:func:`dcmread` is :func:`pydicom.dcmread` hardened for hospital files: a file that is
not DICOM is refused before pydicom parses it into garbage, damaged headers raise
:class:`~torchdicom.errors.CorruptDicomError` naming the file, and every read goes
through :class:`BoundedReader`, so a corrupt length never allocates more than the
file holds. pydicom's warnings and log lines are kept, but the element values they
quote (which can be the patient's name or ID) are withheld.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat as stat_module
import warnings
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from torchdicom.errors import (
    CorruptDicomError,
    DicomFileNotFoundError,
    NotDicomError,
    TorchDicomError,
)

__all__ = [
    "BoundedReader",
    "dcmread",
    "pydicom_warnings_logged",
    "stat_file",
    "withhold_values",
]

_INVALID_VALUE = re.compile(r"(Invalid value for VR \w+): .*?(\. Please see|$)", re.S)
# A quoted value (a Python repr, str or bytes) inside a pydicom message.
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" + r'|b?"(?:[^"\\]|\\.)*"', re.S)
_WITHHELD = "<value withheld>"


def withhold_values(message: str) -> str:
    """A pydicom message with the element values it quotes replaced by ``<value withheld>``.

    pydicom quotes a malformed element's value verbatim; in a damaged header
    that value can run over the patient's name and ID.
    """
    message = _INVALID_VALUE.sub(rf"\1: {_WITHHELD}\2", message)
    return _QUOTED.sub(_WITHHELD, message)


class _WithholdValues(logging.Filter):
    """Keep pydicom's "invalid value" log lines but drop the value they quote.

    pydicom logs a malformed element's value verbatim; in a damaged header
    that value can run over the patient's name and ID. Logs leave the site
    (training logs, CI), identifiers must not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        withheld = withhold_values(message)
        if withheld != message:
            record.msg = withheld
            record.args = ()
        return True


logging.getLogger("pydicom").addFilter(_WithholdValues())

_log = logging.getLogger("torchdicom.io")
# Kinds of pydicom warning already logged at WARNING by this process; repeats go to DEBUG,
# so a scan of 10 000 files with the same odd value logs it once, not 10 000 times.
_WARNED_KINDS: set[str] = set()
_MAX_WARNED_KINDS = 4096


@contextlib.contextmanager
def pydicom_warnings_logged(path: str) -> Iterator[None]:
    """Route the warnings pydicom raises inside the block to the ``torchdicom.io`` logger.

    pydicom warns about every odd value in hospital files. Instead of hiding them
    (the problems that matter become torchdicom errors) or letting them through as
    Python warnings with the values they quote, each distinct message is logged once
    per file, its quoted values withheld (:func:`withhold_values`): at WARNING the first
    time its kind is seen in this process, at DEBUG afterwards. Warnings from elsewhere
    (numpy, ...) are re-issued unchanged. Like :class:`warnings.catch_warnings`, the
    capture is process-wide while the block runs.

    Args:
        path: the file being read, named in each log line.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # after the capture ends, so that re-issued warnings are not caught again
        _route_warnings(path, caught)


def _route_warnings(path: str, caught: list[warnings.WarningMessage]) -> None:
    seen: set[str] = set()
    for w in caught:
        if f"{os.sep}pydicom{os.sep}" not in w.filename:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        text = withhold_values(str(w.message))
        if text in seen:
            continue
        seen.add(text)
        kind = f"{w.category.__name__}: {text}"
        first = kind not in _WARNED_KINDS
        if first and len(_WARNED_KINDS) < _MAX_WARNED_KINDS:
            _WARNED_KINDS.add(kind)
        _log.log(logging.WARNING if first else logging.DEBUG, "%s: pydicom: %s", path, text)


# Reads at most this large go through unchanged (the per-element fast case).
_CLAMP_READS_ABOVE = 1 << 16


class BoundedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` never allocates more than the bytes left in it.

    CPython's ``read(n)`` allocates ``n`` bytes before reading. pydicom and
    the pixel decoders call it with lengths taken from the file, so one
    corrupt length (0xFFFFFFFE in a header element or a JPEG fragment item)
    would allocate 4 GiB for a 1 kB file. Clamping to the bytes left in the
    file bounds every allocation by the file size; the short read then
    surfaces as the usual truncation error.

    Args:
        file: a path, or a file descriptor (not closed unless ``closefd``).
        closefd: close a passed descriptor when this reader is closed.
    """

    def __init__(self, file: str | int, closefd: bool = True):
        raw = io.FileIO(file, "rb", closefd=closefd)
        super().__init__(raw)
        self._size = os.fstat(raw.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > _CLAMP_READS_ABOVE:
            size = max(0, min(size, self._size - self.tell()))
        return super().read(size)


def _open_bounded(path: str, mode: str = "rb") -> BoundedReader:
    """``open`` for pydicom's deferred reads (it calls ``fileobj_type(path, "rb")``)."""
    return BoundedReader(path)


def _looks_like_raw_dataset(head: bytes) -> bool:
    """Whether a file without a preamble starts like a DICOM data set.

    Old exports write the data set with no 128-byte preamble and no file meta.
    The first tag is then a low group (0002 / 0008 …), little- or big-endian.
    """
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def dcmread(path: str | os.PathLike[str], **kwargs: Any) -> Dataset:
    """Read a DICOM file with pydicom, turning failures into torchdicom errors.

    Files with the Part 10 preamble are read strictly; files without one are
    read with ``force=True`` only when their first bytes look like a DICOM
    data set (so text files and images are rejected instead of parsed into
    garbage).

    Args:
        path: the file.
        **kwargs: passed to :func:`pydicom.dcmread` (``stop_before_pixels``,
            ``defer_size``, ``specific_tags`` …).

    Returns:
        The :class:`pydicom.dataset.Dataset`.

    Raises:
        DicomFileNotFoundError: the path does not exist.
        NotDicomError: a directory, an empty file, or not DICOM at all.
        CorruptDicomError: DICOM whose header cannot be parsed (truncated …).
    """
    fspath = os.fspath(path)
    return _dcmread(fspath, stat_file(fspath), **kwargs)


def stat_file(path: str) -> os.stat_result:
    """``os.stat`` of a file about to be read, failures as torchdicom errors.

    Raises:
        DicomFileNotFoundError: the path does not exist.
        NotDicomError: the path cannot be opened.
    """
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DicomFileNotFoundError(path, "no such file") from None
    except OSError as exc:
        raise NotDicomError(path, f"cannot be opened ({exc.strerror})") from None


def _dcmread(fspath: str, st: os.stat_result, **kwargs: Any) -> Dataset:
    """:func:`dcmread` for a path already stat-ed (one ``stat`` per read, not two)."""
    if stat_module.S_ISDIR(st.st_mode):
        raise NotDicomError(fspath, "is a directory, not a DICOM file")
    if st.st_size == 0:
        raise NotDicomError(fspath, "file is empty (0 bytes)")
    remote = "://" in fspath
    if remote:  # a remote object (torchdicom.sources): header bytes by range
        from torchdicom.sources.remote import RemoteHandle, open_file

        head = RemoteHandle(fspath, st.st_size).pread(132, 0)
    else:
        try:
            with open(fspath, "rb") as f:
                head = f.read(132)
        except OSError as exc:
            raise NotDicomError(fspath, f"cannot be read ({exc.strerror})") from None
    force = kwargs.pop("force", None)
    if force is None:
        if head[128:132] == b"DICM":
            force = False
        elif _looks_like_raw_dataset(head):
            force = True
        else:
            raise NotDicomError(
                fspath,
                "not a DICOM file: no 'DICM' marker at byte 128 and no DICOM data set at the start",
            )
    try:
        with pydicom_warnings_logged(fspath):
            # The problems that matter become errors below; the rest is logged.
            if remote:
                with open_file(fspath, st.st_size) as f:
                    ds = pydicom.dcmread(f, force=force, **kwargs)
            else:
                with BoundedReader(fspath) as f:
                    ds = pydicom.dcmread(f, force=force, **kwargs)
                # Deferred values are read later by reopening the file: bounded too.
                ds.fileobj_type = _open_bounded
    except InvalidDicomError as exc:
        raise NotDicomError(fspath, f"not a valid DICOM file ({exc})") from None
    except TorchDicomError:
        raise
    except Exception as exc:  # pydicom raises many types on damaged files
        raise CorruptDicomError(fspath, f"header cannot be parsed: {_short(exc)}") from None
    return ds


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]
