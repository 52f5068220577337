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

``storage_options`` are registered per protocol and process with :func:`configure`
(``scan`` / the datasets do it for you); one filesystem per (protocol, options) per
process, re-created after a fork (fsspec's own instance cache is keyed by process).
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torchdicom.errors import (
    CorruptDicomError,
    RemoteError,
    RemoteNotFoundError,
    RemoteTimeoutError,
    StaleIndexError,
    TorchDicomError,
)

__all__ = [
    "RemotePolicy",
    "configure",
    "find",
    "info",
    "is_remote",
    "local_path",
    "policy",
    "read_range",
    "read_ranges",
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
        max_in_flight: concurrent requests of one :func:`read_ranges` call (a batch).
        recheck_s: an object's size / ETag is checked against its index row at most
            once per this many seconds per process (0: before every read). Within that
            window an object rewritten in place is not noticed: a read may return the
            new version's bytes at the old row's offsets (a short body still raises).
            Set 0 where objects are rewritten under the same key while training.
        list_timeout_s: overall limit of one listing (``fs.find`` of a prefix: every
            page of it, so a large bucket needs longer than one request).
        block_size: read-ahead block of the file object used for headers pydicom
            parses (the lean header walk reads exact ranges).
    """

    retries: int = 3
    backoff_s: float = 0.2
    timeout_s: float = 60.0
    max_in_flight: int = 32
    recheck_s: float = 300.0
    list_timeout_s: float = 900.0
    block_size: int = 64 * 1024


policy = RemotePolicy()

_OPTIONS: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()
_LOCAL_PROTOCOLS = ("file", "local")


def is_remote(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL of a non-local filesystem (``s3://…``, ``memory://…``)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() not in _LOCAL_PROTOCOLS


def local_path(path: str) -> str:
    """``file://`` URLs as plain paths; anything else unchanged."""
    if isinstance(path, str) and path.lower().startswith("file://"):
        return path[len("file://") :]
    return path


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def configure(url_or_protocol: str, storage_options: dict[str, Any] | None) -> None:
    """Register ``storage_options`` for a protocol (``"s3"`` or any ``s3://…`` URL) in this process.

    ``None`` leaves the registration as it is; ``{}`` resets it to the defaults.
    """
    if storage_options is None:
        return
    protocol = _protocol(url_or_protocol) if "://" in url_or_protocol else url_or_protocol
    with _LOCK:
        _OPTIONS[protocol] = dict(storage_options)


def options(protocol: str) -> dict[str, Any]:
    """The registered storage options of a protocol (a copy; never log it)."""
    return dict(_OPTIONS.get(protocol, {}))


def filesystem(url: str):
    """The process's fsspec filesystem for ``url``'s protocol and registered options."""
    import fsspec

    protocol = _protocol(url)
    try:
        # fsspec caches instances per (class, arguments, process).
        return fsspec.filesystem(protocol, **_OPTIONS.get(protocol, {}))
    except (ImportError, ValueError) as exc:
        raise RemoteError(
            display(url),
            f"no filesystem for {protocol}:// ({_scrub(str(exc))}); install its extra, e.g."
            " `pip install torchdicom[s3]` (s3fs), [gcs] (gcsfs), [azure] (adlfs), [http] (aiohttp)",
        ) from None


# --------------------------------------------------------------------------- secrets
def _secrets() -> list[str]:
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
    return sorted(set(found), key=len, reverse=True)


_USERINFO = re.compile(r"(://)[^/@\s]*@")
# Query parameters that carry signatures or tokens (presigned URLs, SAS tokens).
# S3 (X-Amz-*), GCS (X-Goog-*, GoogleAccessId), Azure SAS (sig …), CloudFront (Policy,
# Key-Pair-Id), OAuth / API keys.
_TOKEN_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-[a-z-]*|x-goog-[a-z-]*|googleaccessid|sig|signature|token|sv|se|sp"
    r"|code|policy|key-pair-id|access_token|api_?key|key)=)[^&#\s]*"
)


def _scrub(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "<redacted>")
    text = _USERINFO.sub(r"\1<redacted>@", text)
    return _TOKEN_QUERY.sub(r"\1<redacted>", text)


def display(url: str) -> str:
    """The URL as errors and logs show it: user info and signed query parameters removed."""
    return _scrub(url)


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


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a remote object (fewer when the object is shorter)."""
    if end <= start:
        return b""
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


def read_ranges(urls: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """Many ranges in one ``cat_ranges`` call (concurrent on async filesystems); each checked."""
    if not urls:
        return []
    out: list[bytes] = []
    for url, start, end, data in zip(urls, starts, ends, _cat_ranges(urls, starts, ends)):
        if isinstance(data, BaseException):
            data = read_range(url, start, end)  # retried and mapped one by one
        out.append(_within(url, start, end, data))
    return out


def find(url: str, progress: bool = True) -> list[str]:
    """The objects under a remote prefix (``fs.find``, listed by the store), as URLs, sorted.

    A URL naming one object gives that object.
    """
    from tqdm.auto import tqdm

    fs = filesystem(url)
    bar = tqdm(desc=f"listing {display(url)}", unit="object", disable=not progress)
    try:
        if _call(url, "stat", fs.isfile, url, fs=fs):
            return [url]
        found = _call(url, "listing", fs.find, url, fs=fs, timeout_s=policy.list_timeout_s)
        bar.update(len(found))
    finally:
        bar.close()
    urls = [name if "://" in name else fs.unstrip_protocol(name) for name in found]
    if not urls and not _call(url, "stat", fs.exists, url, fs=fs):
        raise RemoteNotFoundError(display(url), "no such object or prefix")
    return sorted(urls)


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
    """What the read routes use in place of a file descriptor for a remote object."""

    __slots__ = ("size", "url")

    def __init__(self, url: str, size: int):
        self.url = url
        self.size = size

    def read_into(self, view: memoryview, offset: int, path: str, frame: int | None) -> None:
        data = read_range(self.url, offset, offset + len(view))
        if len(data) < len(view):
            raise CorruptDicomError(
                display(path),
                f"pixel data ends early: the object returned {len(data)} of {len(view)} bytes",
                frame=frame,
            )
        view[:] = data

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
    return RemoteHandle(url, size)


def forget_checks() -> None:
    """Make the next read of every object re-check its size / ETag."""
    _CHECKED.clear()


class _Stat:
    """The fields of ``os.stat_result`` the header code reads, for a remote object."""

    __slots__ = ("st_mode", "st_mtime_ns", "st_size")

    def __init__(self, size: int):
        import stat

        self.st_mode = stat.S_IFREG | 0o444
        self.st_size = size
        self.st_mtime_ns = -1


_ROWS: OrderedDict[tuple[str, int, str], dict[str, Any]] = OrderedDict()
_ROWS_LOCK = threading.Lock()


def header_row(url: str, salt: str | None = None, lean: bool = True) -> dict[str, Any]:
    """The index row of a remote object: only header bytes are fetched (bounded ranges)."""
    from torchdicom.io.header import header_row_stat

    size, etag = info(url)
    _SCAN_MEMO.url, _SCAN_MEMO.reads, _SCAN_MEMO.size = url, {}, size
    try:
        row = dict(header_row_stat(url, _Stat(size), salt, lean))
    finally:
        _SCAN_MEMO.url = _SCAN_MEMO.reads = _SCAN_MEMO.size = None
    row["etag"] = etag
    _CHECKED[url] = (time.monotonic(), size, etag)
    return row


def cached_row(url: str) -> dict[str, Any]:
    """:func:`header_row`, cached per (URL, size, ETag) in this process."""
    size, etag = info(url)
    key = (url, size, etag)
    with _ROWS_LOCK:
        row = _ROWS.get(key)
        if row is not None:
            return row
    row = header_row(url)
    with _ROWS_LOCK:
        _ROWS[key] = row
        while len(_ROWS) > 4096:
            _ROWS.popitem(last=False)
    return row


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
