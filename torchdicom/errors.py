"""The torchdicom exception hierarchy.

Every failure that comes from a file is a :class:`TorchDicomError` whose message
names the file, the frame where one is concerned, and the reason in plain
words, e.g.::

    CorruptDicomError: /data/ct/IM0001: pixel data is truncated: the header
    declares 1 frame of 512x512x1 at 16 bits (524288 bytes) but only 1000 bytes
    follow the (7FE0,0010) Pixel Data tag

Each class also derives from the closest built-in exception so that generic
``except ValueError`` / ``except IndexError`` code keeps working.
"""

from __future__ import annotations

import os

__all__ = [
    "CorruptDicomError",
    "DicomFileNotFoundError",
    "FrameIndexError",
    "MissingPixelDataError",
    "NotDicomError",
    "RankMismatchError",
    "RemoteError",
    "RemoteNotFoundError",
    "RemoteTimeoutError",
    "StaleIndexError",
    "TorchDicomError",
    "UnsupportedTransferSyntaxError",
]


class TorchDicomError(Exception):
    """Base class of every error torchdicom raises about a file.

    Args:
        path: the file concerned (``None`` when no file is involved).
        reason: what is wrong, in words a radiologist-engineer understands.
        frame: the 0-based frame concerned, when relevant.

    Attributes:
        path: the file as a string, or ``None``.
        reason: the reason without the file prefix.
        frame: the frame index, or ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        reason: str | None = None,
        *,
        frame: int | None = None,
    ):
        if reason is None:
            # One argument: an already formatted message. This is how PyTorch's
            # DataLoader re-raises a worker's exception in the main process
            # (``type(exc)(message)``), so the error keeps its own class there.
            self.path, self.reason, self.frame = None, str(path), frame
            super().__init__(self.reason)
            return
        self.path = None if path is None else os.fspath(path)
        if self.path is not None and "://" in self.path:
            # A remote object's URL (torchdicom.sources): user info, signed-URL tokens and
            # registered credentials never reach a message, a log line or a worker's pickle.
            from torchdicom._redact import display

            self.path = display(self.path)
            reason = display(reason)
        self.reason = reason
        self.frame = frame
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.frame is not None:
            parts.append(f"frame {self.frame}")
        parts.append(self.reason)
        return ": ".join(parts)

    def __reduce__(self):  # keep path/frame when crossing DataLoader worker processes
        return (_rebuild, (type(self), self.path, self.reason, self.frame))


def _rebuild(cls: type[TorchDicomError], path: str | None, reason: str, frame: int | None):
    return cls(path, reason, frame=frame)


class DicomFileNotFoundError(TorchDicomError, FileNotFoundError):
    """The path does not exist (or vanished between scan and read)."""


class NotDicomError(TorchDicomError, ValueError):
    """The path is not a DICOM file: empty, a directory, or no DICOM structure."""


class CorruptDicomError(TorchDicomError, ValueError):
    """The file is DICOM but damaged: truncated, inconsistent header, bad pixel data."""


class UnsupportedTransferSyntaxError(TorchDicomError, NotImplementedError):
    """No installed decoder handles the file's transfer syntax; the message names the package."""


class MissingPixelDataError(TorchDicomError, ValueError):
    """The file has no (7FE0,0010) Pixel Data (nor Float/Double Float Pixel Data)."""


class FrameIndexError(TorchDicomError, IndexError):
    """A requested frame is outside ``0 .. NumberOfFrames - 1``."""


class StaleIndexError(TorchDicomError, RuntimeError):
    """The file changed on disk (size or mtime) since it was indexed; rescan it."""


class RankMismatchError(TorchDicomError, RuntimeError):
    """The ranks of a distributed run read different data (a shard manifest, an index
    split), so they would train on different items or epoch lengths and hang at a
    collective; the message names the manifest or folder and which ranks disagree."""


class RemoteError(TorchDicomError, OSError):
    """A remote object (fsspec URL) could not be read after the bounded retries."""


class RemoteNotFoundError(RemoteError, DicomFileNotFoundError):
    """The remote object does not exist (404, no such key)."""


class RemoteTimeoutError(RemoteError, TimeoutError):
    """The remote server did not answer within the configured timeout."""
