"""On-disk cache of decoded frames for compressed DICOM.

Decoding a JPEG 2000 or JPEG frame costs milliseconds; reading it back raw
from the page cache costs microseconds. The cache is a directory, so every
DataLoader worker and every DDP rank on a machine shares one copy.

Format (no pickle, nothing executable): per frame one file
``<dir>/<key[:2]>/<key>.frame`` holding a magic line, a 4-byte header length,
a JSON header (dtype, shape, CRC-32 of the payload) and the raw payload.
Files are written atomically (:func:`torchdicom._atomic.atomic_write`), so
readers see a whole file or none; a file that fails its checksum (torn by a crash, bit
rot) is deleted and decoded again. The total size is bounded: when it grows
past ``max_bytes`` the least recently written files are evicted.

When the directory cannot be written (read-only, disk full) the cache turns
itself off with one warning and frames are decoded as if there were no cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from torchdicom._atomic import atomic_write
from torchdicom.io.frames import FrameSelection, read_frames_numpy, resolve_frames
from torchdicom.io.schema import IndexRow

__all__ = ["FrameCache"]

log = logging.getLogger(__name__)

_MAGIC = b"TORCHDICOM-FRAME-1\n"
_EVICT_EVERY_BYTES = 256 * 2**20


class FrameCache:
    """Decoded-frame cache shared by processes on one machine.

    Args:
        directory: where cached frames live (created when missing).
        max_bytes: size bound; the oldest entries are evicted beyond it.

    Example:
        >>> cache = FrameCache("/tmp/torchdicom-frames")  # doctest: +SKIP
        >>> ds = DicomDataset("us/", cache=cache)           # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 20 * 2**30):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._written_since_evict = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._disable(exc)

    def __getstate__(self) -> dict[str, Any]:  # workers start with fresh counters
        state = self.__dict__.copy()
        state.update(hits=0, misses=0, _written_since_evict=0)
        return state

    # ----------------------------------------------------------------- public
    def read(
        self, row: IndexRow, frames: FrameSelection = None, *, as_rgb: bool = True
    ) -> np.ndarray:
        """Frames of an indexed file, (F, C, H, W), from the cache or decoded and stored.

        Same values and dtype as :func:`torchdicom.read_frames` for the row.
        """
        idx = resolve_frames(frames, int(row["frames"]), row["path"])
        if not self.enabled:
            return read_frames_numpy(row, idx, as_rgb=as_rgb)
        found: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for k in idx:
            arr = self._get(self._key(row, k, as_rgb))
            if arr is None:
                missing.append(k)
            else:
                found[k] = arr
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            decoded = read_frames_numpy(row, missing, as_rgb=as_rgb)
            for k, arr in zip(missing, decoded):
                found[k] = arr
                self._put(self._key(row, k, as_rgb), arr)
        return np.stack([found[k] for k in idx])

    def clear(self) -> None:
        """Delete every cached frame."""
        for p in self.directory.glob("*/*.frame"):
            p.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*/*.frame"))

    # ----------------------------------------------------------------- internals
    @staticmethod
    def _key(row: IndexRow, frame: int, as_rgb: bool) -> str:
        # The file's identity includes size and mtime (and a remote object's ETag): an
        # edited file never hits an entry decoded from its old content.
        text = f"{row['path']}\0{int(row['size'])}\0{int(row['mtime_ns'])}\0{frame}\0{int(as_rgb)}"
        etag = row.get("etag")
        if etag and isinstance(etag, str):
            text += f"\0{etag}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.frame"

    def _get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            if not data.startswith(_MAGIC):
                raise ValueError("bad magic")
            pos = len(_MAGIC)
            (hlen,) = struct.unpack_from("<I", data, pos)
            pos += 4
            header = json.loads(data[pos : pos + hlen])
            pos += hlen
            payload = memoryview(data)[pos:]
            dtype = np.dtype(header["dtype"])
            shape = tuple(int(s) for s in header["shape"])
            if dtype.hasobject or len(payload) != int(np.prod(shape)) * dtype.itemsize:
                raise ValueError("payload size does not match header")
            if zlib.crc32(payload) != int(header["crc32"]):
                raise ValueError("checksum mismatch")
            return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            log.warning("decoded-frame cache entry %s is damaged (%s); decoding again", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _put(self, key: str, arr: np.ndarray) -> None:
        if not self.enabled:
            return
        arr = np.ascontiguousarray(arr)
        payload = memoryview(arr).cast("B")
        header = json.dumps(
            {"dtype": arr.dtype.str, "shape": list(arr.shape), "crc32": zlib.crc32(payload)}
        ).encode()
        path = self._path(key)
        try:
            path.parent.mkdir(exist_ok=True)
            # No fsync: an entry torn by a power loss fails its checksum and is decoded again.
            with atomic_write(path, durable=False, mode=0o600) as f:
                f.write(_MAGIC)
                f.write(struct.pack("<I", len(header)))
                f.write(header)
                f.write(payload)
        except OSError as exc:
            self._disable(exc)
            return
        self._written_since_evict += len(payload)
        if self._written_since_evict >= min(_EVICT_EVERY_BYTES, max(self.max_bytes // 8, 1)):
            self._written_since_evict = 0
            self._evict()

    def _evict(self) -> None:
        entries = []
        for p in self.directory.glob("*/*.frame"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        total = sum(e[1] for e in entries)
        if total <= self.max_bytes:
            return
        entries.sort()
        target = int(self.max_bytes * 0.9)
        for _, size, p in entries:
            if total <= target:
                break
            p.unlink(missing_ok=True)
            total -= size

    def _disable(self, exc: OSError) -> None:
        if self.enabled:
            self.enabled = False
            warnings.warn(
                f"decoded-frame cache at {self.directory} disabled ({exc.strerror or exc});"
                " frames will be decoded without a cache",
                RuntimeWarning,
                stacklevel=3,
            )
