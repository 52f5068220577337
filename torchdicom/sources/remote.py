"""DICOM objects behind fsspec URLs: object storage (``s3://``, ``gs://``, ``az://``), HTTP, memory.

A path containing ``://`` whose protocol is not ``file`` is *remote*: the index keeps the
URL as ``path``, the object's ``size`` and its ``etag`` (ETag, with ``@VersionId`` where the
store versions objects; for stores without ETags — ``memory://`` — the creation or
modification time; "" when the store gives neither, then only the size is checked).
``mtime_ns`` is -1 for remote rows. ``file://`` URLs are plain local paths.

Every byte comes through :func:`read_range` / :func:`read_ranges`: bounded retries with
exponential backoff, an overall per-request timeout on async filesystems (s3fs, gcsfs,
adlfs, HTTP), and errors mapped to torchdicom's:

* missing object (404, no such key) → :class:`~torchdicom.errors.RemoteNotFoundError`
  naming the URL (not retried);
* a body shorter than the range asked, HTTP 416 →
  :class:`~torchdicom.errors.CorruptDicomError`;
* the object's size or ETag differs from the index row →
  :class:`~torchdicom.errors.StaleIndexError`;
* no answer within the timeout → :class:`~torchdicom.errors.RemoteTimeoutError`;
* anything else (5xx, connection reset) is retried, then
  :class:`~torchdicom.errors.RemoteError`.

Credentials (``storage_options`` values, URL user info) never reach a message or a log line:
every text is scrubbed of them first.

``storage_options`` are registered per bucket (and as the protocol's default) and process
with :func:`configure` (``scan`` / the datasets do it for you), so buckets or endpoints
with different credentials can be read side by side; one filesystem per (protocol,
options) per process, re-created after a fork (fsspec's own instance cache is keyed by
process).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import logging
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchdicom._atomic import atomic_write
from torchdicom._redact import add_secrets, display
from torchdicom._redact import scrub as _scrub
from torchdicom.errors import (
    CorruptDicomError,
    RemoteError,
    RemoteNotFoundError,
    RemoteTimeoutError,
    StaleIndexError,
    TorchDicomError,
)

__all__ = [
    "BlockCache",
    "RemotePolicy",
    "block_cache",
    "configure",
    "find",
    "info",
    "is_remote",
    "local_path",
    "policy",
    "prefetch",
    "read_range",
    "read_ranges",
    "read_ranges_into",
]

log = logging.getLogger("torchdicom.sources")


@dataclass
class RemotePolicy:
    """How remote reads behave (one per process: :data:`policy`; change its fields).

    Attributes:
        retries: attempts after the first for a failed request (5xx, reset, timeout).
        backoff_s: the first retry waits this long, each next one twice as long.
        timeout_s: overall limit of one request on async filesystems (s3, gs, az,
            http); client timeouts (s3fs ``config_kwargs={"read_timeout": …}``) still
            apply beneath it.
        max_in_flight: concurrent requests of one :func:`read_ranges` call (a
            DataLoader batch: one range per frame, the ranges of one object that touch
            merged into one request). Per process: with ``W`` DataLoader workers up to
            ``W x max_in_flight`` requests are in flight, the next batches' while the
            current one trains. A batch waits one round trip plus its transfer; more in
            flight than a batch has ranges changes nothing, so against a high-latency
            store raise the batch size or the workers, not only this.
        recheck_s: an object's size / ETag is checked against its index row at most
            once per this many seconds per process (0: before every read). Within that
            window an object rewritten in place is not noticed: a read may return the
            new version's bytes at the old row's offsets (a short body still raises).
            Set 0 where objects are rewritten under the same key while training.
        list_timeout_s: overall limit of one listing (``fs.find`` of a prefix: every
            page of it, so a large bucket needs longer than one request).
        block_size: read-ahead block of the file object used for headers pydicom
            parses (the lean header walk reads exact ranges).
        list_page_size: objects per listing request where the store pages its listings
            (S3: ``MaxKeys``, at most 1000); the listing's progress bar advances per page.
        block_cache_dir: a local directory for a cache of remote bytes (``None``: no
            cache). Pixel reads of indexed objects (native frames, compressed frames by
            span) go through it in blocks of ``block_cache_block_bytes``: a block
            read once is read from local disk afterwards, in every process of the
            machine (DataLoader workers, DDP ranks) that uses the directory. Blocks are
            keyed by (URL, size, ETag): an object whose ETag changed never serves its
            old blocks (its rows are stale; a rescan's rows key new blocks). The ETag is
            the one last checked (``recheck_s``): a block fetched while its object is
            rewritten in place within that window is stored under the old ETag, and
            would be served again if the object ever returned to that content; where
            objects are rewritten in place, set ``recheck_s = 0`` (as without a cache).
            Objects without an ETag (``""``) are not cached. Defaults to the environment
            variable ``TORCHDICOM_BLOCK_CACHE`` (so that spawn-started workers see it).
            An unwritable directory turns the cache off with one warning.
        block_cache_block_bytes: bytes per cached block; the first read of a frame
            fetches the whole blocks it touches (adjacent missing blocks in one
            request), so a larger block over-reads more for small frames picked at
            random and makes fewer files for large ones.
        block_cache_max_bytes: size bound of the cache directory; beyond it the least
            recently written blocks are evicted.
        prefetch_batches: how many batches' prefetched ranges (:func:`prefetch`, started
            by :class:`~torchdicom.data.prefetch.PrefetchDataLoader`) a process holds at
            most, fetched or in flight; starting one more drops the oldest. 2 is what a
            loader needs: the batch being read and the next one. 0 turns prefetching off.
    """

    retries: int = 3
    backoff_s: float = 0.2
    timeout_s: float = 60.0
    max_in_flight: int = 32
    recheck_s: float = 300.0
    list_timeout_s: float = 900.0
    block_size: int = 64 * 1024
    list_page_size: int = 1000
    block_cache_dir: str | None = field(
        default_factory=lambda: os.environ.get("TORCHDICOM_BLOCK_CACHE") or None
    )
    block_cache_block_bytes: int = 2**20
    block_cache_max_bytes: int = 20 * 2**30
    prefetch_batches: int = 2


policy = RemotePolicy()

_OPTIONS: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()
_LOCAL_PROTOCOLS = ("file", "local")


def is_remote(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL of a non-local filesystem (``s3://…``, ``memory://…``)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    protocol = path.split("://", 1)[0].lower()
    # dicomweb+http(s):// rows are DICOMweb instances (torchdicom.sources.dicomweb), read
    # by WADO-RS, never through fsspec.
    return protocol not in _LOCAL_PROTOCOLS and not protocol.startswith("dicomweb+")


def local_path(path: str) -> str:
    """``file://`` URLs as plain paths; anything else unchanged."""
    if isinstance(path, str) and path.lower().startswith("file://"):
        return path[len("file://") :]
    return path


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def bucket_root(url: str) -> str:
    """The part of a URL that storage options are registered for: protocol and bucket /
    container / host (``s3://bucket``, ``https://host:port``)."""
    protocol, _, rest = url.partition("://")
    return f"{protocol.lower()}://{rest.split('/', 1)[0]}"


def configure(url_or_protocol: str, storage_options: dict[str, Any] | None) -> None:
    """Register ``storage_options`` in this process, for a protocol (``"s3"``) or for a
    URL's bucket (``"s3://bucket/prefix"``: that bucket, and the protocol's default).

    Objects of a bucket with options of its own use those; any other object of the
    protocol uses the protocol's, the last registered. So two buckets (or endpoints)
    with different credentials can be read side by side. ``None`` leaves the
    registrations as they are; ``{}`` resets them to the defaults (for a protocol: its
    buckets' too).
    """
    if storage_options is None:
        return
    with _LOCK:
        if "://" not in url_or_protocol:
            if not storage_options:
                prefix = f"{url_or_protocol}://"
                for key in [k for k in _OPTIONS if k.startswith(prefix)]:
                    del _OPTIONS[key]
            _OPTIONS[url_or_protocol] = dict(storage_options)
            return
        _OPTIONS[_protocol(url_or_protocol)] = dict(storage_options)
        _OPTIONS[bucket_root(url_or_protocol)] = dict(storage_options)


def options(url_or_protocol: str) -> dict[str, Any]:
    """The storage options a URL's objects are read with, or a protocol's (a copy; never log it)."""
    if "://" in url_or_protocol:
        found = _OPTIONS.get(bucket_root(url_or_protocol))
        if found is not None:
            return dict(found)
        url_or_protocol = _protocol(url_or_protocol)
    return dict(_OPTIONS.get(url_or_protocol, {}))


def filesystem(url: str):
    """The process's fsspec filesystem for ``url``: its protocol, with the options
    registered for its bucket, else for its protocol."""
    import fsspec

    protocol = _protocol(url)
    try:
        # fsspec caches instances per (class, arguments, process).
        return fsspec.filesystem(protocol, **options(url))
    except (ImportError, ValueError) as exc:
        raise RemoteError(
            display(url),
            f"no filesystem for {protocol}:// ({_scrub(str(exc))}); install its extra, e.g."
            " `pip install torchdicom[s3]` (s3fs), [gcs] (gcsfs), [azure] (adlfs), [http] (aiohttp)",
        ) from None


# --------------------------------------------------------------------------- secrets
def _option_secrets() -> list[str]:
    """The secrets of the registered storage options (torchdicom._redact scrubs them)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    for opts in list(_OPTIONS.values()):
        for key, value in opts.items():
            if key in ("endpoint_url", "client_kwargs") and isinstance(value, str):
                continue  # an address, not a secret
            walk(value)
    return found


add_secrets(_option_secrets)


# --------------------------------------------------------------------------- requests
def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower()


# 416 as a status, not inside a key or UID in the message ("1.2.840.416…", "scan_416.dcm").
_STATUS_416 = re.compile(r"(?<![\w./-])416(?![\w./-])")


def _is_range_error(exc: BaseException) -> bool:
    if any(getattr(exc, name, None) == 416 for name in ("status", "status_code", "code")):
        return True
    text = str(exc)
    return (
        "InvalidRange" in text
        or "Range Not Satisfiable" in text
        or _STATUS_416.search(text) is not None
    )


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return _scrub(f"{type(exc).__name__}: {lines[0] if lines else ''}")[:300]


def _call(url: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)`` with bounded retries; failures as torchdicom errors naming the URL."""
    fs = kwargs.pop("fs", None)
    limit = kwargs.pop("timeout_s", None)
    if fs is not None and getattr(fs, "async_impl", False):
        # fsspec's sync(): never a hang
        kwargs["timeout"] = policy.timeout_s if limit is None else limit
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except TorchDicomError:
            raise
        except FileNotFoundError:
            raise RemoteNotFoundError(display(url), "no such object") from None
        except PermissionError as exc:
            raise RemoteError(display(url), f"access denied: {_short(exc)}") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if _is_range_error(exc):
                raise CorruptDicomError(
                    display(url), f"{what}: the range lies beyond the object (416)"
                ) from None
            if attempt >= policy.retries:
                if _is_timeout(exc):
                    raise RemoteTimeoutError(
                        display(url),
                        f"{what}: no answer after {attempt + 1} attempts ({_short(exc)})",
                    ) from None
                raise RemoteError(
                    display(url), f"{what} failed after {attempt + 1} attempts: {_short(exc)}"
                ) from None
            wait = policy.backoff_s * 2**attempt
            log.debug("%s: %s failed (%s); retry in %.2fs", display(url), what, _short(exc), wait)
            time.sleep(wait)
            attempt += 1


def info(url: str, refresh: bool = True) -> tuple[int, str]:
    """``(size, etag)`` of a remote object (see the module docstring for ``etag``)."""
    fs = filesystem(url)
    if refresh:
        try:
            fs.invalidate_cache(fs._strip_protocol(url))
        except Exception:
            pass
    meta = _call(url, "stat", fs.info, url, fs=fs)
    if meta.get("type") == "directory":
        raise RemoteNotFoundError(display(url), "is a directory (prefix), not an object")
    return int(meta.get("size") or 0), _etag(meta)


def _etag(meta: dict[str, Any]) -> str:
    etag = meta.get("ETag") or meta.get("etag") or meta.get("md5Hash") or meta.get("content_md5")
    version = meta.get("VersionId") or meta.get("generation") or meta.get("version_id")
    if not etag:
        stamp = meta.get("LastModified") or meta.get("mtime") or meta.get("created")
        etag = "" if stamp is None else f"t:{stamp}"
    etag = str(etag).strip('"')
    if version and version != "null":
        etag = f"{etag}@{version}"
    return etag


# (size, ETag) of an object as its index row records it: the key of its cached blocks.
Version = tuple[int, str]


def read_range(url: str, start: int, end: int, *, version: Version | None = None) -> bytes:
    """Bytes ``[start, end)`` of a remote object (fewer when the object is shorter).

    With ``version`` (the row's size and ETag, checked against the store by the caller)
    the read goes through the local block cache when one is configured
    (:attr:`RemotePolicy.block_cache_dir`).
    """
    if end <= start:
        return b""
    if version is not None and _block_cache() is not None:
        return read_ranges([url], [start], [end], versions=[version])[0]
    fs = filesystem(url)
    data = _call(url, f"read of bytes {start}-{end}", fs.cat_file, url, start=start, end=end, fs=fs)
    return _within(url, start, end, data)


def _within(url: str, start: int, end: int, data: bytes) -> bytes:
    # A server that ignores the Range header answers with the whole object: its bytes
    # would be taken for the range's (a header parsed at wrong offsets, wrong pixels).
    if len(data) > end - start:
        raise RemoteError(
            display(url),
            f"read of bytes {start}-{end}: {len(data)} bytes came back, more than asked"
            " (the server ignores range requests)",
        )
    return data


def _cat_ranges(urls: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[Any]:
    """One ``cat_ranges`` call: each range's bytes, or the exception its request ended in."""
    fs = filesystem(urls[0])
    kwargs: dict[str, Any] = {"on_error": "return"}
    if getattr(fs, "async_impl", False):
        kwargs["batch_size"] = policy.max_in_flight
    return _call(
        urls[0],
        f"batch read of {len(urls)} ranges",
        fs.cat_ranges,
        list(urls),
        list(starts),
        list(ends),
        fs=fs,
        **kwargs,
    )


def read_ranges(
    urls: Sequence[str],
    starts: Sequence[int],
    ends: Sequence[int],
    *,
    versions: Sequence[Version | None] | None = None,
) -> list[bytes]:
    """Many ranges in one ``cat_ranges`` call (concurrent on async filesystems); each checked.

    ``policy.max_in_flight`` requests are in flight at a time. With ``versions`` (each
    range's object as its row records it, ``None`` for an unversioned read) and a block
    cache configured, cached blocks are read from local disk and only the missing ones
    are fetched, adjacent missing blocks of an object in one request, all in one call.
    """
    if not urls:
        return []
    cache = _block_cache() if versions is not None else None
    if cache is None:
        return _fetch_ranges(urls, starts, ends)
    buffers = [bytearray(max(end - start, 0)) for start, end in zip(starts, ends)]
    views = [memoryview(b) for b in buffers]
    filled = cache.read_into(urls, starts, views, versions)  # type: ignore[arg-type]
    return [bytes(view[:n]) for view, n in zip(views, filled)]


def read_ranges_into(
    urls: Sequence[str],
    starts: Sequence[int],
    views: Sequence[memoryview],
    *,
    versions: Sequence[Version | None] | None = None,
) -> list[int]:
    """:func:`read_ranges` into the caller's buffers: range ``i`` is ``len(views[i])``
    bytes from ``starts[i]``. Returns the bytes filled per view (fewer where the object
    ends early: the caller reports it). Cached blocks are read straight into the views.

    Ranges :func:`prefetch` holds (same URL, start, length and row version) are taken
    from it, waiting for their fetch if it is still in flight; a range whose prefetch
    failed is fetched again here, so its error is raised by this read, as without it.
    """
    if not urls:
        return []
    held = _take_prefetched(urls, starts, views, versions) if _HELD else None
    if held is not None:  # some ranges were prefetched: the others are read as always
        rest = [i for i, n in enumerate(held) if n is None]
        if rest:
            got = read_ranges_into(
                [urls[i] for i in rest],
                [starts[i] for i in rest],
                [views[i] for i in rest],
                versions=None if versions is None else [versions[i] for i in rest],
            )
            for i, n in zip(rest, got):
                held[i] = n
        return held  # type: ignore[return-value]
    cache = _block_cache() if versions is not None else None
    if cache is not None:
        return cache.read_into(urls, starts, views, versions)  # type: ignore[arg-type]
    ends = [start + len(view) for start, view in zip(starts, views)]
    filled = []
    for view, data in zip(views, _fetch_ranges(urls, starts, ends)):
        view[: len(data)] = data
        filled.append(len(data))
    return filled


def _fetch_ranges(urls: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """The ranges from the store in one batch call; ranges of one object that touch or
    overlap (consecutive frames of a multi-frame file in one batch) as one request."""
    if not urls:
        return []
    order = sorted(range(len(urls)), key=lambda i: (urls[i], starts[i]))
    merged: list[list[Any]] = []  # [url, start, end, members]
    for i in order:
        last = merged[-1] if merged else None
        if last is not None and last[0] == urls[i] and starts[i] <= last[2]:
            last[2] = max(last[2], ends[i])
            last[3].append(i)
        else:
            merged.append([urls[i], starts[i], ends[i], [i]])
    if len(merged) == len(urls):
        return _fetch_exact(urls, starts, ends)
    out: list[bytes] = [b""] * len(urls)
    fetched = _fetch_exact([m[0] for m in merged], [m[1] for m in merged], [m[2] for m in merged])
    for (_url, start, _end, members), data in zip(merged, fetched):
        for i in members:  # a short body gives short slices: the callers report it
            out[i] = data[starts[i] - start : ends[i] - start]
    return out


def _fetch_exact(urls: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """The ranges from the store: one batch call; a failed range once more on its own
    (retried and mapped one by one)."""
    if len(urls) == 1:
        return [read_range(urls[0], starts[0], ends[0])]
    # One call per filesystem: a batch may span buckets read with different options.
    groups: dict[int, list[int]] = {}
    roots = {bucket_root(url) for url in urls}
    if len(roots) > 1:
        by_root = {where: id(filesystem(where)) for where in roots}  # fsspec's cached instances
        for i, url in enumerate(urls):
            groups.setdefault(by_root[bucket_root(url)], []).append(i)
    if len(groups) > 1:
        out: list[bytes] = [b""] * len(urls)
        for members in groups.values():
            picked = _fetch_exact(
                [urls[i] for i in members], [starts[i] for i in members], [ends[i] for i in members]
            )
            for i, data in zip(members, picked):
                out[i] = data
        return out
    out = []
    for url, start, end, data in zip(urls, starts, ends, _cat_ranges(urls, starts, ends)):
        if isinstance(data, BaseException):
            data = read_range(url, start, end)
        out.append(_within(url, start, end, data))
    return out


# --------------------------------------------------------------------------- block cache
# Written blocks between two size checks of the cache directory (per process).
_EVICT_EVERY_BYTES = 256 * 2**20


class BlockCache:
    """Remote bytes cached on local disk in fixed blocks (see :attr:`RemotePolicy.block_cache_dir`).

    Why not fsspec's ``blockcache`` / ``simplecache``: they cache through fsspec file
    objects, whose reads bypass :func:`read_range`'s overall timeout, retries and error
    mapping; ``blockcache`` keeps one sparse file plus a metadata file per object that
    every process rewrites (DataLoader workers would race on it), and ``simplecache``
    copies whole objects (a 2 GB cine for one frame).

    Layout: ``<dir>/<key[:2]>/<key>.<block>``, ``key`` a SHA-256 of (URL, size, ETag,
    block size), so neither URLs nor their tokens appear on disk. A block file holds
    the object's bytes ``[block * B, min((block + 1) * B, size))``; it is written
    atomically (:func:`torchdicom._atomic.atomic_write`), so a reader in any process
    sees a whole block or none, and a file of another length is discarded.
    """

    def __init__(self, directory: str | os.PathLike[str], block_bytes: int, max_bytes: int):
        if block_bytes < 1:
            raise ValueError(f"block_cache_block_bytes must be >= 1. Got: {block_bytes}")
        self.directory = Path(directory)
        self.block_bytes = int(block_bytes)
        self.max_bytes = int(max_bytes)
        self.enabled = True
        self.hits = 0  # blocks read from disk (this process)
        self.misses = 0  # blocks fetched from the store (this process)
        self._written = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._disable(exc)

    def _key(self, url: str, version: Version) -> str:
        text = f"{url}\0{int(version[0])}\0{version[1]}\0{self.block_bytes}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def _path(self, key: str, block: int) -> Path:
        return self.directory / key[:2] / f"{key}.{block}"

    def _length(self, size: int, block: int) -> int:
        return max(0, min(self.block_bytes, size - block * self.block_bytes))

    def _get_into(self, key: str, block: int, length: int, lo: int, dst: memoryview) -> bool:
        """Fill ``dst`` with bytes ``[lo, lo + len(dst))`` of a cached block of ``length``
        bytes, read straight into the caller's buffer (no intermediate object: fresh
        half-megabyte buffers per frame cost more in page faults than the read itself);
        ``False`` when the block is not cached."""
        path = self._path(key, block)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError:  # absent, or evicted by another process meanwhile
            return False
        try:
            if os.fstat(f.fileno()).st_size != length:  # not a block of this object
                path.unlink(missing_ok=True)
                return False
            f.seek(lo)
            return f.readinto(dst) == len(dst)
        except OSError:
            return False
        finally:
            f.close()

    def _put(self, key: str, block: int, data: bytes) -> None:
        if not self.enabled:
            return
        path = self._path(key, block)
        try:
            path.parent.mkdir(exist_ok=True)
            # No fsync: the rename is atomic; a block lost to a power loss is fetched again.
            with atomic_write(path, durable=False, mode=0o600) as f:
                f.write(data)
        except OSError as exc:
            self._disable(exc)
            return
        self._written += len(data)
        if self._written >= min(_EVICT_EVERY_BYTES, max(self.max_bytes // 8, 1)):
            self._written = 0
            self._evict()

    def _evict(self) -> None:
        entries = []
        for path in self.directory.glob("*/*"):
            try:
                st = path.stat()
            except OSError:  # evicted by another process meanwhile
                continue
            entries.append((st.st_mtime_ns, st.st_size, path))
        total = sum(e[1] for e in entries)
        if total <= self.max_bytes:
            return
        entries.sort()
        target = int(self.max_bytes * 0.9)
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _disable(self, exc: OSError) -> None:
        if self.enabled:
            self.enabled = False
            warnings.warn(
                f"remote block cache at {self.directory} disabled ({exc.strerror or exc});"
                " remote bytes will be fetched without a cache",
                RuntimeWarning,
                stacklevel=4,
            )

    def read_into(
        self,
        urls: Sequence[str],
        starts: Sequence[int],
        views: Sequence[memoryview],
        versions: Sequence[Version | None],
    ) -> list[int]:
        """Fill each view from its range (cached blocks from disk, the missing blocks in
        one batch of requests); returns the bytes filled per view (fewer: the object ends
        there)."""
        bsize = self.block_bytes
        filled = [0] * len(urls)
        # Pieces still to fetch: (range, block, lo, hi, offset in the view).
        todo: list[tuple[int, int, int, int, int]] = []
        missing: dict[tuple[str, Version], set[int]] = {}
        plain: list[int] = []  # ranges read without the cache (no version, no ETag)
        for i, (url, start, view, version) in enumerate(zip(urls, starts, views, versions)):
            end = start + len(view)
            if version is None or not version[1]:
                if end > start:
                    plain.append(i)
                continue
            size = int(version[0])
            end = min(end, size)  # past the indexed size: a short result, as from the store
            filled[i] = max(end - start, 0)
            if end <= start:
                continue
            key = self._key(url, version)
            for block in range(start // bsize, (end - 1) // bsize + 1):
                length = self._length(size, block)
                lo, hi = max(start - block * bsize, 0), min(end - block * bsize, length)
                at = block * bsize + lo - start
                if self._get_into(key, block, length, lo, view[at : at + hi - lo]):
                    self.hits += 1
                else:
                    missing.setdefault((url, version), set()).add(block)
                    todo.append((i, block, lo, hi, at))
        runs = self._runs(missing)
        # The missing runs and the uncached ranges: one batch, max_in_flight at a time.
        requests = self._requests(runs)
        requests += [(urls[i], starts[i], starts[i] + len(views[i])) for i in plain]
        fetched = _fetch_ranges(*zip(*requests)) if requests else []
        got = self._store(runs, fetched)
        for i, block, lo, hi, at in todo:
            piece = got[(urls[i], versions[i])].get(block, b"")[lo:hi]  # type: ignore[index]
            views[i][at : at + len(piece)] = piece
            if len(piece) < hi - lo:  # a short fetch: the bytes end here
                filled[i] = min(filled[i], at + len(piece))
        for i, data in zip(plain, fetched[len(runs) :]):
            views[i][: len(data)] = data
            filled[i] = len(data)
        return filled

    def _runs(
        self, missing: dict[tuple[str, Version], set[int]]
    ) -> list[tuple[str, Version, int, int]]:
        """The missing blocks as runs (url, version, first, last block): adjacent missing
        blocks of an object are one request."""
        runs: list[tuple[str, Version, int, int]] = []
        for (url, version), blocks in missing.items():
            self.misses += len(blocks)
            for block in sorted(blocks):
                if runs and runs[-1][:2] == (url, version) and runs[-1][3] == block - 1:
                    runs[-1] = (url, version, runs[-1][2], block)
                else:
                    runs.append((url, version, block, block))
        return runs

    def _requests(self, runs: list[tuple[str, Version, int, int]]) -> list[tuple[str, int, int]]:
        bsize = self.block_bytes
        return [
            (url, first * bsize, min((last + 1) * bsize, int(version[0])))
            for url, version, first, last in runs
        ]

    def _store(
        self, runs: list[tuple[str, Version, int, int]], fetched: Sequence[bytes]
    ) -> dict[tuple[str, Version], dict[int, bytes]]:
        """Cache the fetched runs' blocks; returns them by (url, version) and block."""
        bsize = self.block_bytes
        got: dict[tuple[str, Version], dict[int, bytes]] = {}
        for (url, version, first, last), data in zip(runs, fetched):
            key, have = self._key(url, version), got.setdefault((url, version), {})
            for block in range(first, last + 1):
                piece = data[(block - first) * bsize : (block - first + 1) * bsize]
                if len(piece) != self._length(int(version[0]), block):
                    have[block] = piece  # the object is shorter than its row: never cached
                    break
                have[block] = piece
                self._put(key, block, piece)
        return got

    def warm(
        self,
        urls: Sequence[str],
        starts: Sequence[int],
        ends: Sequence[int],
        versions: Sequence[Version],
    ) -> None:
        """Fetch the blocks of these ranges that are not cached yet (one batch of
        requests) and cache them, reading none of the cached ones (:func:`prefetch`: the
        read that follows takes them from disk, straight into its buffers)."""
        bsize = self.block_bytes
        missing: dict[tuple[str, Version], set[int]] = {}
        for url, start, end, version in zip(urls, starts, ends, versions):
            size = int(version[0])
            end = min(end, size)
            if end <= start:
                continue
            key = self._key(url, version)
            for block in range(start // bsize, (end - 1) // bsize + 1):
                try:
                    if self._path(key, block).stat().st_size == self._length(size, block):
                        continue
                except OSError:  # not cached (or evicted meanwhile)
                    pass
                missing.setdefault((url, version), set()).add(block)
        runs = self._runs(missing)
        requests = self._requests(runs)
        if requests:
            self._store(runs, _fetch_ranges(*zip(*requests)))


_CACHE: BlockCache | None = None
_CACHE_LOCK = threading.Lock()


def _block_cache() -> BlockCache | None:
    """The process's block cache as the policy configures it; ``None`` when off."""
    global _CACHE
    directory = policy.block_cache_dir
    if not directory:
        return None
    cache = _CACHE
    wanted = (
        Path(directory),
        int(policy.block_cache_block_bytes),
        int(policy.block_cache_max_bytes),
    )
    if cache is None or (cache.directory, cache.block_bytes, cache.max_bytes) != wanted:
        with _CACHE_LOCK:
            cache = _CACHE
            if cache is None or (cache.directory, cache.block_bytes, cache.max_bytes) != wanted:
                cache = _CACHE = BlockCache(*wanted)
    return cache if cache.enabled else None


def block_cache() -> BlockCache | None:
    """The block cache reads go through in this process (hit / miss counters), if any."""
    return _block_cache()


def find(url: str, progress: bool = True) -> list[str]:
    """The objects under a remote prefix (listed by the store), as URLs, sorted.

    A URL naming one object gives that object. On S3 the listing is read page by page
    (``policy.list_page_size`` objects a request) and the progress bar advances as each
    page arrives; other stores list with ``fs.find`` (one update when it returns).
    The whole listing runs under ``policy.list_timeout_s``.
    """
    from tqdm.auto import tqdm

    fs = filesystem(url)
    bar = tqdm(desc=f"listing {display(url)}", unit="object", disable=not progress)
    try:
        if _call(url, "stat", fs.isfile, url, fs=fs):
            return [url]
        found = _call(
            url, "listing", _listing, fs, url, bar, fs=fs, timeout_s=policy.list_timeout_s
        )
    finally:
        bar.close()
    urls = [name if "://" in name else fs.unstrip_protocol(name) for name in found]
    if not urls and not _call(url, "stat", fs.exists, url, fs=fs):
        raise RemoteNotFoundError(display(url), "no such object or prefix")
    return sorted(urls)


def _pages_by_request(fs: Any) -> bool:
    """Whether ``fs`` is s3fs with the page-by-page listing :func:`_s3_pages` relies on."""
    return (
        type(fs).__name__ == "S3FileSystem"
        and hasattr(fs, "_list_pages")
        and not getattr(fs, "version_aware", False)
    )


def _listing(fs: Any, url: str, bar: Any, timeout: float | None = None) -> list[str]:
    """Every object under ``url``; ``bar`` counts them as they arrive."""
    bar.reset()  # a retried listing starts over
    if _pages_by_request(fs):
        from fsspec.asyn import sync

        return sync(fs.loop, _s3_pages, fs, url, bar, timeout=timeout)
    found = fs.find(url) if timeout is None else fs.find(url, timeout=timeout)
    bar.update(len(found))
    return found


async def _s3_pages(fs: Any, url: str, bar: Any) -> list[str]:
    """``ListObjectsV2`` of the prefix page by page (s3fs's ``_list_pages``: each page
    retried like any request). ``fs.find`` returns only after the last page: on a prefix
    of 10^6 objects that is a thousand requests with no sign of progress."""
    bucket, key, _ = fs.split_path(url)
    prefix = key.strip("/") + "/" if key else ""
    names: list[str] = []
    async for page in fs._list_pages(
        "list_objects_v2",
        Bucket=bucket,
        Prefix=prefix,
        Delimiter="",
        MaxKeys=max(1, int(policy.list_page_size)),
        **fs.req_kw,
    ):
        # Keys ending in "/" are folder placeholders some tools write, not objects.
        keys = [c["Key"] for c in page.get("Contents", []) if not c["Key"].endswith("/")]
        names += [f"{bucket}/{k}" for k in keys]
        bar.update(len(keys))
    return names


def looks_like_dicom(urls: Iterable[str]) -> list[str]:
    """The URLs worth a header parse: ``.dcm`` / no extension, or ``DICM`` at byte 128.

    The others (UID-named files such as ``1.2.840….5`` among them) are probed together,
    ``max_in_flight`` requests at a time, not one request after another.
    """
    urls = list(urls)
    probe = []
    for url in urls:
        name = url.rsplit("/", 1)[-1].lower()
        if not (name.endswith((".dcm", ".dicom")) or "." not in name):
            probe.append(url)
    dicm: set[str] = set()
    step = max(1, 16 * policy.max_in_flight)
    for k in range(0, len(probe), step):
        chunk = probe[k : k + step]
        try:
            heads = _cat_ranges(chunk, [128] * len(chunk), [132] * len(chunk))
        except TorchDicomError:
            heads = [None] * len(chunk)
        for url, head in zip(chunk, heads):
            if not isinstance(head, bytes) or len(head) > 4:  # failed: once more, checked
                try:
                    head = read_range(url, 128, 132)
                except TorchDicomError:
                    continue
            if head == b"DICM":
                dicm.add(url)
    probed = set(probe)
    return [url for url in urls if url not in probed or url in dicm]


# --------------------------------------------------------------------------- reads for the index
class RemoteHandle:
    """What the read routes use in place of a file descriptor for a remote object.

    ``etag`` is set when the handle comes from :func:`open_checked` (the object was
    checked against its row): pixel reads then go through the block cache, if any.
    """

    __slots__ = ("etag", "size", "url")

    def __init__(self, url: str, size: int, etag: str | None = None):
        self.url = url
        self.size = size
        self.etag = etag

    def read_into(self, view: memoryview, offset: int, path: str, frame: int | None) -> None:
        versions = None if self.etag is None else [(self.size, self.etag)]
        got = read_ranges_into([self.url], [offset], [view], versions=versions)[0]
        if got < len(view):
            raise CorruptDicomError(
                display(path),
                f"pixel data ends early: the object returned {got} of {len(view)} bytes",
                frame=frame,
            )

    def pread(self, n: int, at: int) -> bytes:
        if at >= self.size:
            return b""
        memo = getattr(_SCAN_MEMO, "reads", None)
        if memo is None or getattr(_SCAN_MEMO, "url", None) != self.url:
            return read_range(self.url, at, min(at + n, self.size))
        # One header parse walks the fragment items up to three times (the lean walk,
        # the frame count, the frame spans): each item header is fetched once.
        data = memo.get((at, n))
        if data is None:
            data = memo[(at, n)] = read_range(self.url, at, min(at + n, self.size))
        return data

    def whole(self) -> bytes:
        if self.etag is not None:  # a checked object (a rare route reading it whole): cached
            return read_range(self.url, 0, self.size, version=(self.size, self.etag))
        return self.pread(self.size, 0)


def handle(url: str) -> RemoteHandle:
    """A handle on ``url`` for the header code: the size the running header parse stat'ed
    (no request), else the store's (fsspec's listing cache may answer)."""
    if getattr(_SCAN_MEMO, "url", None) == url:
        return RemoteHandle(url, _SCAN_MEMO.size)
    return RemoteHandle(url, info(url, refresh=False)[0])


_CHECKED: dict[str, tuple[float, int, str]] = {}
# The reads of the header parse running in this thread (see RemoteHandle.pread).
_SCAN_MEMO = threading.local()


def open_checked(row: dict[str, Any]) -> RemoteHandle:
    """A handle on the row's object after checking its size / ETag (at most every ``recheck_s``)."""
    url = row["path"]
    size, etag = int(row["size"]), str(row.get("etag") or "")
    seen = _CHECKED.get(url)
    now = time.monotonic()
    if seen is None or now - seen[0] >= policy.recheck_s or seen[1:] != (size, etag):
        got_size, got_etag = info(url)
        if got_size != size or (etag and got_etag != etag):
            _CHECKED.pop(url, None)
            raise StaleIndexError(
                display(url),
                f"object changed since it was indexed (size {size} -> {got_size} bytes"
                f"{'' if got_etag == etag else ', ETag changed'}): rescan it",
            )
        _CHECKED[url] = (now, size, etag)
    return RemoteHandle(url, size, etag)


def forget_checks() -> None:
    """Make the next read of every object re-check its size / ETag."""
    _CHECKED.clear()


@contextlib.contextmanager
def header_reads(url: str, size: int) -> Iterator[None]:
    """While the header of ``url`` (``size`` bytes, stat'ed already) is parsed in this
    thread: :func:`handle` takes that size (no request) and each range is fetched once
    (see :meth:`RemoteHandle.pread`)."""
    _SCAN_MEMO.url, _SCAN_MEMO.reads, _SCAN_MEMO.size = url, {}, size
    try:
        yield
    finally:
        _SCAN_MEMO.url = _SCAN_MEMO.reads = _SCAN_MEMO.size = None


def mark_checked(url: str, size: int, etag: str) -> None:
    """``url`` was seen now at ``(size, etag)``: :func:`open_checked` trusts that for
    ``recheck_s``."""
    _CHECKED[url] = (time.monotonic(), size, etag)


class _RangeReader(io.RawIOBase):
    """A remote object as a raw binary file: every read one :func:`read_range` (retried,
    under ``timeout_s``, errors mapped), never past the object's size."""

    def __init__(self, url: str, size: int):
        super().__init__()
        self.url, self.size, self.pos = url, size, 0

    @property
    def name(self) -> str:
        return self.url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.pos + len(view), self.size)
        if end <= self.pos:
            return 0
        data = read_range(self.url, self.pos, end)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_file(url: str, size: int | None = None):
    """A buffered file object of a remote object (for pydicom's header parse).

    Reads go through :func:`read_range` (the fsspec file objects' own reads have no
    overall timeout), ``block_size`` bytes of read-ahead at a time.
    """
    if size is None:
        size = handle(url).size
    return io.BufferedReader(_RangeReader(url, size), buffer_size=policy.block_size)


# --------------------------------------------------------------------------- prefetch
# A prefetched range: (URL, start, length, the row's (size, ETag)). The version is part of
# the key so that a rescanned row (another ETag) never takes bytes fetched for the old one.
RangeKey = tuple[str, int, int, Version]


class _Prefetched:
    """One batch's ranges, fetched in the background: ``future`` gives ``{key: bytes}``
    (ranges read through the block cache are cached, not held); ``left`` counts the keys
    no read has taken yet."""

    __slots__ = ("future", "left")

    def __init__(self, future: Future[dict[RangeKey, bytes]], left: int):
        self.future = future
        self.left = left


# The holding area of this process: groups oldest first, and which group holds a key.
_HELD: OrderedDict[int, _Prefetched] = OrderedDict()
_HELD_BY_KEY: dict[RangeKey, int] = {}
_HELD_LOCK = threading.Lock()
_HELD_PID = os.getpid()
_GROUPS = itertools.count()
_PREFETCH_POOL: ThreadPoolExecutor | None = None
_TAKEN = [0]  # ranges reads took from prefetches in this process (see prefetch_hits)


def _prefetch_pool() -> ThreadPoolExecutor:
    """The threads prefetches run on (held under ``_HELD_LOCK``). Their own, not the
    runtime's pool: a prefetch waits on the network for a round trip, and the runtime's
    slices (batch reads, kernels) must not queue behind it."""
    global _PREFETCH_POOL
    if _PREFETCH_POOL is None:
        _PREFETCH_POOL = ThreadPoolExecutor(
            max_workers=max(1, int(policy.prefetch_batches)),
            thread_name_prefix="torchdicom-prefetch",
        )
    return _PREFETCH_POOL


def _forget_parent() -> None:
    """In a forked child (a DataLoader worker), drop what the parent held: its futures
    belong to threads that do not exist here. Called under ``_HELD_LOCK``."""
    global _HELD_PID, _PREFETCH_POOL
    if os.getpid() != _HELD_PID:
        _HELD.clear()
        _HELD_BY_KEY.clear()
        _PREFETCH_POOL = None
        _TAKEN[0] = 0
        _HELD_PID = os.getpid()


def _drop_group(group: int) -> None:
    """Forget a group (under ``_HELD_LOCK``): its bytes go when its fetch ends."""
    held = _HELD.pop(group, None)
    if held is None:
        return
    held.future.cancel()  # not started yet: never sent
    for key in [k for k, g in _HELD_BY_KEY.items() if g == group]:
        del _HELD_BY_KEY[key]


def prefetch(
    rows: Sequence[Mapping[str, Any]], starts: Sequence[int], lengths: Sequence[int]
) -> int | None:
    """Start fetching byte ranges of indexed remote objects in the background.

    Range ``i`` is ``lengths[i]`` bytes from ``starts[i]`` of ``rows[i]``'s object.
    Each object is checked against its row first (:func:`open_checked`), then the ranges
    go to the store in one batch (:func:`read_ranges`' merging, ``max_in_flight`` at a
    time) on a thread of this process; with a block cache, the missing blocks are
    fetched into the cache instead of being held. The next :func:`read_ranges_into` of
    the same ranges (same row version) takes the bytes.

    Nothing is raised here: an object that fails its check or its fetch is left out, and
    the read fetches it again and raises what it raises without a prefetch. The read
    still checks each object against its row (``recheck_s``) before taking its bytes, so
    an object changed or deleted since its last check fails the read as without a
    prefetch; within ``recheck_s`` of that check the prefetched bytes of the row's
    version are served, as cached blocks are.

    At most ``policy.prefetch_batches`` calls are held (fetched, or in flight) per
    process; one more drops the oldest, so memory stays within that many batches.
    Ranges already held are not fetched twice.

    Returns:
        The group's id for :func:`drop_prefetched`, or ``None`` when nothing was started
        (prefetching off, or every range already held).
    """
    limit = int(policy.prefetch_batches)
    if limit < 1 or not rows:
        return None
    with _HELD_LOCK:
        _forget_parent()
        pairs: dict[RangeKey, Mapping[str, Any]] = {}
        for row, start, length in zip(rows, starts, lengths):
            key = (
                str(row["path"]),
                int(start),
                int(length),
                (int(row["size"]), str(row.get("etag") or "")),
            )
            if key not in _HELD_BY_KEY:
                pairs[key] = row
        if not pairs:
            return None
        while len(_HELD) >= limit:
            _drop_group(next(iter(_HELD)))
        group = next(_GROUPS)
        future = _prefetch_pool().submit(_prefetch_job, list(pairs), list(pairs.values()))
        _HELD[group] = _Prefetched(future, len(pairs))
        for key in pairs:
            _HELD_BY_KEY[key] = group
    return group


def _prefetch_job(keys: list[RangeKey], rows: list[Mapping[str, Any]]) -> dict[RangeKey, bytes]:
    """The fetch of one :func:`prefetch` call, on a prefetch thread."""
    checked: dict[str, bool] = {}
    wanted = []
    for key, row in zip(keys, rows):
        url = key[0]
        if url not in checked:
            try:
                open_checked(row)  # type: ignore[arg-type]
                checked[url] = True
            except TorchDicomError:  # stale, missing: the read checks again and raises
                checked[url] = False
        if checked[url]:
            wanted.append(key)
    cache = _block_cache()
    if cache is not None:
        cached = [k for k in wanted if k[3][1]]  # objects with an ETag: into the cache
        if cached:
            cache.warm(
                [k[0] for k in cached],
                [k[1] for k in cached],
                [k[1] + k[2] for k in cached],
                [k[3] for k in cached],
            )
        wanted = [k for k in wanted if not k[3][1]]
    if not wanted:
        return {}
    fetched = _fetch_ranges(
        [k[0] for k in wanted], [k[1] for k in wanted], [k[1] + k[2] for k in wanted]
    )
    return dict(zip(wanted, fetched))


def _take_prefetched(
    urls: Sequence[str],
    starts: Sequence[int],
    views: Sequence[memoryview],
    versions: Sequence[Version | None] | None,
) -> list[int | None] | None:
    """Fill the views of prefetched ranges (each taken once); ``None`` per range that
    was not prefetched or whose fetch failed, ``None`` overall when none was."""
    if versions is None:
        return None  # prefetched ranges are always of a row's version
    keys: list[RangeKey | None] = [
        None if version is None else (url, int(start), len(view), (int(version[0]), version[1]))
        for url, start, view, version in zip(urls, starts, views, versions)
    ]
    taken: dict[int, tuple[_Prefetched, list[int]]] = {}
    with _HELD_LOCK:
        _forget_parent()
        for i, key in enumerate(keys):
            group = None if key is None else _HELD_BY_KEY.pop(key, None)
            if group is None:
                continue
            held = _HELD[group]
            taken.setdefault(group, (held, []))[1].append(i)
            held.left -= 1
            if held.left == 0:  # every range taken: the group is done
                del _HELD[group]
    if not taken:
        return None
    filled: list[int | None] = [None] * len(urls)
    for held, members in taken.values():
        try:
            data = held.future.result()  # in flight: this read waits for the same bytes
        except (Exception, CancelledError):  # fetched again by the caller, raising there
            continue
        for i in members:
            got = data.get(keys[i])  # type: ignore[arg-type]
            if got is None:
                continue  # left out (check failed), or cached: the caller reads it
            views[i][: len(got)] = got
            filled[i] = len(got)
            _TAKEN[0] += 1
    return filled


def prefetch_hits() -> int:
    """Ranges this process's reads took from :func:`prefetch` (held bytes, fetched before
    the read asked for them); ranges the prefetch put in the block cache count as the
    cache's hits instead."""
    with _HELD_LOCK:
        _forget_parent()
        return _TAKEN[0]


def drop_prefetched(groups: Iterable[int] | None = None) -> None:
    """Forget prefetched ranges no read has taken: the groups ``groups`` (ids
    :func:`prefetch` returned), or all of them. Their bytes go once their fetch ends."""
    with _HELD_LOCK:
        _forget_parent()
        for group in list(_HELD) if groups is None else list(groups):
            _drop_group(group)


def prefetched_bytes() -> int:
    """Bytes this process holds in prefetched ranges no read has taken yet (fetched
    groups only: a fetch in flight counts when it ends)."""
    with _HELD_LOCK:
        _forget_parent()
        held = list(_HELD.items())
        live = set(_HELD_BY_KEY.items())
    total = 0
    for group, entry in held:
        if entry.future.done() and not entry.future.cancelled():
            try:
                data = entry.future.result()
            except Exception:
                continue
            total += sum(len(v) for k, v in data.items() if (k, group) in live)
    return total
