"""DICOM instances on a DICOMweb server (a PACS, Orthanc, a cloud healthcare API).

:class:`DicomWebSource` is accepted wherever a source is (``scan``, the datasets,
:class:`~torchdicom.DicomDataModule`). Its scan asks the server, never downloading pixels:
QIDO-RS searches (studies → series → instances, paged with ``limit`` / ``offset``) list the
instances, WADO-RS series metadata (one request per series) describes them, and each
instance becomes an ordinary index row, built from its metadata as a pydicom data set by the
same row builder as local files (patient identifiers hashed alike).

A row's ``path`` names the instance and says how to reach it::

    dicomweb+http://host:8042/dicom-web/studies/<study>/series/<series>/instances/<sop>

so rows survive parquet and pickling; fsspec never sees them. Reading is WADO-RS frame
retrieval with ``transfer-syntax=*``: the stored code-streams arrive unchanged, each part
of the multipart response keeps its transfer syntax, and torchdicom's own checked decoders
(:mod:`torchdicom.io.frames`) decode them, so a remote read equals the local read of the
same file.

Authentication (a ``requests.Session`` and / or ``headers``) is registered per process
under the base URL; datasets carry the registrations to their DataLoader workers. Header
values, session credentials and URL user info never reach a message or a log line: they
are registered with the scrubber of :mod:`torchdicom.sources.remote`.

Failures (bounded retries with backoff on 5xx and connection errors, per
:data:`torchdicom.sources.remote.policy`):

* 404 → :class:`~torchdicom.errors.RemoteNotFoundError` naming the URL (not retried);
* no answer within the timeout, or a response slower than it →
  :class:`~torchdicom.errors.RemoteTimeoutError`;
* a truncated multipart body, a short part, a wrong number of parts →
  :class:`~torchdicom.errors.CorruptDicomError` naming the URL and frame;
* 401 / 403 and 5xx after the retries → :class:`~torchdicom.errors.RemoteError`.

``requests`` and ``dicomweb-client`` (``pip install torchdicom[dicomweb]``) load on first use.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdicom.errors import (
    CorruptDicomError,
    RemoteError,
    RemoteNotFoundError,
    RemoteTimeoutError,
    TorchDicomError,
)
from torchdicom.sources import remote
from torchdicom.sources.remote import display

if TYPE_CHECKING:  # numpy loads with the first read, not with the package
    import numpy as np

__all__ = [
    "PREFIX",
    "DicomWebSource",
    "instance_url",
    "is_dicomweb",
    "read_batch",
    "read_frames_dicomweb",
    "registrations",
    "restore",
]

log = logging.getLogger("torchdicom.sources")

#: Row paths of DICOMweb instances start with this before the base URL's scheme.
PREFIX = "dicomweb+"
_FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
# Frames are asked for without gzip (requests offers it by default): compressed code-streams
# do not shrink, and a server compressing every native frame spends its CPU on it (Orthanc:
# 13-22 ms per 512x512x16-bit frame with gzip, about 1 ms without, on loopback).
_FRAMES_HEADERS = {"Accept": _FRAMES_ACCEPT, "Accept-Encoding": "identity"}
_PAGE = 1000  # QIDO-RS page size (limit); servers may return fewer, then we stop
_MAX_FRAMES_PER_REQUEST = 256  # keeps the frame list of one URL short
_CHUNK = 256 * 1024


def is_dicomweb(path: Any) -> bool:
    """Whether ``path`` is a DICOMweb row path (``dicomweb+http(s)://…``)."""
    return isinstance(path, str) and path[:14].lower().startswith(PREFIX)


def instance_url(base_url: str, study: str, series: str, sop: str) -> str:
    """The row path of one instance (see the module docstring)."""
    return f"{PREFIX}{base_url}/studies/{study}/series/{series}/instances/{sop}"


def _split(path: str) -> tuple[str, str]:
    """``(base URL, "/studies/…/instances/…")`` of a row path."""
    url = path[len(PREFIX) :]
    at = url.rfind("/studies/")
    if at < 0:
        raise CorruptDicomError(display(path), "not a DICOMweb instance path (no /studies/)")
    return url[:at], url[at:]


# --------------------------------------------------------------------------- registry
@dataclass
class _Registration:
    """How to reach one server: what a process needs to build its session."""

    session: Any = None  # a requests.Session (pickled copy in workers) or None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: remote.policy.timeout_s


_REGISTERED: dict[str, _Registration] = {}
# Each thread's sessions, base -> (pid, epoch, session): a session per thread (requests does
# not promise thread safety) and per process (a forked child must not share its parent's
# sockets); they end with their thread. A registration bumps the epoch: sessions made
# before it are replaced on next use.
_THREAD = threading.local()
_EPOCH = 0
_LOCK = threading.Lock()


def _normal(base_url: str) -> str:
    return base_url.rstrip("/")


def register(
    base_url: str,
    session: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Register how this process reaches ``base_url`` (replaces an earlier registration)."""
    global _EPOCH
    base = _normal(base_url)
    reg = _Registration(session, dict(headers or {}), timeout)
    with _LOCK:
        _REGISTERED[base] = reg
        _EPOCH += 1
    _register_secrets(base, reg)


def forget_sessions() -> None:
    """Drop every thread's sessions in this process: the next request opens new ones."""
    global _EPOCH
    with _LOCK:
        _EPOCH += 1


def _register_secrets(base: str, reg: _Registration) -> None:
    """Hand the credentials to remote's scrubber: every error text and log line drops them."""
    secrets: list[str] = [str(v) for k, v in reg.headers.items() if k.lower() not in _PLAIN]
    session = reg.session
    if session is not None:
        secrets += [str(v) for k, v in session.headers.items() if _sensitive(k)]
        auth = getattr(session, "auth", None)
        pair = None
        if isinstance(auth, tuple) and len(auth) == 2:
            pair = auth
        elif hasattr(auth, "username") and hasattr(auth, "password"):
            pair = (auth.username, auth.password)
        if pair is not None:
            user, password = (str(x) for x in pair)
            secrets += [password, base64.b64encode(f"{user}:{password}".encode()).decode()]
    for value in list(secrets):
        # "Bearer <token>", "Basic <b64>": the token alone may be echoed back too.
        secrets += value.split()[1:]
    key = "dicomweb-" + hashlib.sha256(base.encode()).hexdigest()[:16]
    remote.configure(key, {"secrets": [s for s in secrets if len(s) >= 4]})


# Request headers whose values are no secret (every other header value is scrubbed).
_PLAIN = frozenset({"accept", "accept-encoding", "connection", "content-type", "user-agent"})


def _sensitive(header: str) -> bool:
    name = header.lower()
    return name in ("authorization", "cookie", "proxy-authorization") or any(
        word in name for word in ("token", "key", "secret", "auth")
    )


def registrations(paths: Sequence[str]) -> dict[str, _Registration]:
    """The registrations of the servers these row paths are on (to carry to workers)."""
    bases = {_split(p)[0] for p in paths if is_dicomweb(p)}
    with _LOCK:
        return {b: _REGISTERED[b] for b in bases if b in _REGISTERED}


def restore(regs: dict[str, _Registration]) -> None:
    """Register ``regs`` (from :func:`registrations`) in this process, e.g. a spawned worker."""
    for base, reg in regs.items():
        register(base, reg.session, reg.headers, reg.timeout)


def _session(base: str):
    """This thread's session for ``base`` (a copy of the registered one, with its headers)."""
    sessions = getattr(_THREAD, "sessions", None)
    if sessions is None:
        sessions = _THREAD.sessions = {}
    stamp = (os.getpid(), _EPOCH)
    held = sessions.get(base)
    if held is not None and held[0] == stamp:
        return held[1]
    import requests

    reg = _REGISTERED.get(base) or _Registration()
    if reg.session is None:
        session = requests.Session()
    else:
        try:  # a private copy: headers added here never change the caller's session
            session = pickle.loads(pickle.dumps(reg.session))
        except Exception:
            session = reg.session
    session.headers.update(reg.headers)
    sessions[base] = (stamp, session)
    return session


def _timeout(base: str) -> float:
    reg = _REGISTERED.get(base)
    return remote.policy.timeout_s if reg is None or reg.timeout is None else reg.timeout


# --------------------------------------------------------------------------- requests
class _Retry(Exception):
    """A failure worth another attempt (5xx, 429, connection error, timeout)."""

    def __init__(self, reason: str, timed_out: bool = False, cut_off: bool = False):
        super().__init__(reason)
        # cut_off: the body ended before its Content-Length (a short body); after the
        # retries that is damaged data (CorruptDicomError), not an unreachable server.
        self.reason, self.timed_out, self.cut_off = reason, timed_out, cut_off


def _classify(url: str, exc: BaseException) -> TorchDicomError | _Retry:
    """A requests / dicomweb-client exception as a final error or a retryable failure."""
    import requests

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return _status_error(url, status, getattr(response, "reason", "") or "")
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower():
        return _Retry(f"no answer within the timeout ({_short(exc)})", timed_out=True)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return _Retry(
            f"the response body ended before its Content-Length ({_short(exc)})", cut_off=True
        )
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return _Retry(_short(exc))
    return RemoteError(display(url), f"request failed: {_short(exc)}")


def _status_error(url: str, status: int, reason: str) -> TorchDicomError | _Retry:
    if status == 404:
        return RemoteNotFoundError(display(url), f"no such resource on the server (404 {reason})")
    if status in (401, 403):
        return RemoteError(display(url), f"access denied ({status} {reason}): check credentials")
    if status >= 500 or status in (408, 429):
        return _Retry(f"server error {status} {reason}")
    return RemoteError(display(url), f"the server refused the request ({status} {reason})")


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return display(f"{type(exc).__name__}: {lines[0] if lines else ''}")[:300]


def _with_retries(url: str, what: str, attempt_fn: Callable[[], Any]) -> Any:
    """``attempt_fn()`` with :data:`remote.policy`'s bounded retries; errors name the URL."""
    attempt = 0
    while True:
        try:
            return attempt_fn()
        except TorchDicomError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            failure = exc if isinstance(exc, _Retry) else _classify(url, exc)
            if isinstance(failure, TorchDicomError):
                raise failure from None
            if attempt >= remote.policy.retries:
                cls = (
                    RemoteTimeoutError
                    if failure.timed_out
                    else CorruptDicomError
                    if failure.cut_off
                    else RemoteError
                )
                raise cls(
                    display(url), f"{what} failed after {attempt + 1} attempts: {failure.reason}"
                ) from None
            wait = remote.policy.backoff_s * 2**attempt
            log.debug("%s: %s failed (%s); retry in %.2fs", display(url), what, failure, wait)
            time.sleep(wait)
            attempt += 1


def _client(base: str):
    """A dicomweb-client client on this thread's session (its own retries off: ours apply)."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(base, session=_session(base), timeout=_timeout(base))
    client.set_http_retry_params(retry=False)
    return client


# --------------------------------------------------------------------------- the source
class DicomWebSource:
    """The instances of a DICOMweb server (all, one study, or one series) as a scan source.

    Args:
        base_url: the DICOMweb root, e.g. ``"http://pacs:8042/dicom-web"`` (QIDO-RS and
            WADO-RS share it).
        study: (0020,000D) *Study Instance UID* to index only that study.
        series: (0020,000E) *Series Instance UID* (with ``study``) to index one series.
        session: a ``requests.Session`` carrying authentication (``session.auth``,
            cookies, client certificates); each process and thread uses a copy.
        headers: extra request headers, e.g. ``{"Authorization": "Bearer …"}``.
        timeout: seconds one request may wait for the server (connect, then each read)
            before it is retried and finally a :class:`RemoteTimeoutError`; default
            :attr:`torchdicom.sources.RemotePolicy.timeout_s`.

    Credentials never appear in ``repr``, messages or logs. The source registers itself
    for this process when built; datasets carry the registration to their workers.

    Example:
        >>> src = DicomWebSource("http://127.0.0.1:8042/dicom-web", study="1.2.3")
        >>> src
        DicomWebSource('http://127.0.0.1:8042/dicom-web', study='1.2.3')
    """

    def __init__(
        self,
        base_url: str,
        study: str | None = None,
        series: str | None = None,
        session: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.lower().startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"base_url must be an http(s) URL. Got: {display(str(base_url))!r}")
        if series is not None and study is None:
            raise ValueError("series needs its study (the DICOMweb paths nest series in studies)")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds. Got: {timeout}")
        headers = dict(headers or {})
        base_url = _without_userinfo(base_url, headers)
        self.base_url = _normal(base_url)
        self.study, self.series = study, series
        self.session, self.headers, self.timeout = session, headers, timeout
        self.register()

    def register(self) -> None:
        """Register this source's session / headers / timeout for its base URL in this process."""
        register(self.base_url, self.session, self.headers, self.timeout)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.register()  # a worker started by spawn has an empty registry

    def __repr__(self) -> str:
        parts = [repr(display(self.base_url))]
        if self.study is not None:
            parts.append(f"study={self.study!r}")
        if self.series is not None:
            parts.append(f"series={self.series!r}")
        return f"DicomWebSource({', '.join(parts)})"

    # ----------------------------------------------------------------- listing
    def _pages(self, what: str, search: Callable[..., list[dict]], **kwargs: Any) -> list[dict]:
        """Every result of a QIDO-RS search, ``_PAGE`` at a time (``limit`` / ``offset``)."""
        out: list[dict] = []
        url = f"{self.base_url} ({what})"
        while True:
            offset = len(out)
            page = _with_retries(
                url,
                f"QIDO-RS search for {what}",
                lambda offset=offset: search(limit=_PAGE, offset=offset, **kwargs),
            )
            out.extend(page)
            if len(page) < _PAGE:
                return out

    def _series(self, client) -> list[tuple[str, str]]:
        if self.series is not None:
            return [(str(self.study), self.series)]
        studies = (
            [self.study]
            if self.study is not None
            else [
                _value(s, "0020000D")
                for s in self._pages("studies", client.search_for_studies, fields=["0020000D"])
            ]
        )
        # Some servers answer one result per matching instance (Orthanc 1.10 does, for a
        # study search): each UID is kept once, in order.
        studies = list(dict.fromkeys(studies))
        found = []
        for study in studies:
            for s in self._pages(
                f"series of study {study}",
                client.search_for_series,
                study_instance_uid=study,
                fields=["0020000E"],
            ):
                found.append((study, _value(s, "0020000E")))
        return list(dict.fromkeys(found))

    def index_rows(
        self, progress: bool = True, workers: int | None = None
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, int, int]]]:
        """Index rows of the source's instances, from QIDO-RS and WADO-RS metadata (no pixels).

        Called by :func:`torchdicom.scan`. An instance whose metadata cannot be made into a
        row goes to the errors (``(path, error_type, reason, -1, -1)``); a series whose
        listing fails goes there once, under its series path.

        Returns:
            ``(rows, errors)``.
        """
        from tqdm.auto import tqdm

        from torchdicom._privacy import resolve_salt

        self.register()
        salt = resolve_salt()
        series = self._series(_client(self.base_url))
        rows: list[dict[str, Any]] = []
        errors: list[tuple[str, str, str, int, int]] = []
        n_threads = max(1, min(workers or 8, remote.policy.max_in_flight, len(series) or 1))
        bar = tqdm(desc=f"indexing {display(self.base_url)}", unit="series", disable=not progress)
        try:
            with ThreadPoolExecutor(n_threads, thread_name_prefix="torchdicom-qido") as pool:
                for got_rows, got_errors in pool.map(
                    lambda pair: self._index_series(*pair, salt), series
                ):
                    rows.extend(got_rows)
                    errors.extend(got_errors)
                    bar.update(1)
        finally:
            bar.close()
        return rows, errors

    def _index_series(
        self, study: str, series: str, salt: str
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, int, int]]]:
        base = self.base_url
        where = f"{PREFIX}{base}/studies/{study}/series/{series}"
        rows, errors = [], []
        try:
            client = _client(base)
            listed = self._pages(
                f"instances of series {series}",
                client.search_for_instances,
                study_instance_uid=study,
                series_instance_uid=series,
                fields=["00080018", "00100020"],
            )
            metadata = _with_retries(
                f"{base}/studies/{study}/series/{series}/metadata",
                "WADO-RS series metadata",
                lambda: client.retrieve_series_metadata(study, series),
            )
        except TorchDicomError as exc:
            return [], [(where, type(exc).__name__, str(exc), -1, -1)]
        by_uid = {_value(m, "00080018"): m for m in metadata}
        for sop in dict.fromkeys(_value(item, "00080018") for item in listed):
            path = instance_url(base, study, series, sop)
            meta = by_uid.get(sop)
            try:
                if meta is None:  # listed but not in the series metadata: ask for it alone
                    meta = _with_retries(
                        path[len(PREFIX) :] + "/metadata",
                        "WADO-RS instance metadata",
                        lambda sop=sop: client.retrieve_instance_metadata(study, series, sop),
                    )
                rows.append(row_from_metadata(meta, path, salt))
            except TorchDicomError as exc:
                errors.append((path, type(exc).__name__, exc.reason, -1, -1))
        return rows, errors


def _without_userinfo(url: str, headers: dict[str, str]) -> str:
    """``url`` without ``user:password@``, which becomes a basic Authorization header:
    row paths (and so index caches) never hold a password."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    headers.setdefault("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def row_from_metadata(meta: dict, path: str, salt: str | None = None) -> dict[str, Any]:
    """An index row from one instance's DICOM JSON metadata (QIDO-RS / WADO-RS).

    The JSON becomes a pydicom data set (bulk data left unread) and goes through the row
    builder of local files, :func:`torchdicom.io.header.row_from_dataset`, so every column,
    the patient hash included, is computed exactly as for the same file on disk.

    The transfer syntax comes from (0002,0010) or (0008,3002) *Available Transfer Syntax
    UID* when the server lists them, else it stays "" until a read: each frame is decoded
    by the transfer syntax its multipart part declares anyway.

    Raises:
        MissingPixelDataError, CorruptDicomError: as for a local file's header.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset

    from torchdicom.io.dicomfile import _short as short_exc
    from torchdicom.io.header import row_from_dataset

    try:
        ds = pydicom.Dataset.from_json(meta, bulk_data_uri_handler=lambda tag, vr, uri: None)
    except Exception as exc:
        raise CorruptDicomError(
            display(path), f"metadata cannot be read: {short_exc(exc)}"
        ) from None
    syntax = _value(meta, "00020010") or _value(meta, "00083002")
    if "Rows" in ds and not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        # Servers may leave the bulk data element out of the metadata; an image has one.
        ds.add_new(0x7FE00010, "OW" if int(ds.get("BitsAllocated", 8)) > 8 else "OB", None)
    ds.file_meta = FileMetaDataset()
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        # Unknown until read: parsed as Explicit VR Little Endian, kept as "".
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    try:
        row = dict(row_from_dataset(ds, path, -1, -1, salt))
    except TorchDicomError:
        raise
    except Exception as exc:
        raise CorruptDicomError(
            display(path), f"metadata cannot be interpreted: {short_exc(exc)}"
        ) from None
    if not syntax:
        row["transfer_syntax"], row["encapsulated"] = "", False
    row["pixel_offset"], row["pixel_length"] = -1, -1  # frames come by WADO-RS, not offset
    return row


# --------------------------------------------------------------------------- multipart
# Why a parser of our own: dicomweb-client's retrieve_instance_frames reads the whole
# response into memory before splitting it, and its iter_instance_frames yields the part
# bodies without their headers, so each frame's transfer syntax (Content-Type) is lost;
# with transfer-syntax=* the server may answer each frame in a different syntax, and a
# decoder must know which. This one reads the body incrementally and keeps each part's
# headers; it also tells a body cut short from a complete one.
@dataclass
class Part:
    """One part of a multipart/related response: its headers (lower-case names) and body."""

    headers: dict[str, str]
    body: bytes

    @property
    def transfer_syntax(self) -> str:
        """The ``transfer-syntax`` parameter of the part's Content-Type ("" when absent)."""
        return _param(self.headers.get("content-type", ""), "transfer-syntax")


def _param(content_type: str, name: str) -> str:
    """A parameter of a Content-Type value (quotes removed; nested ``type="…"`` skipped)."""
    depth_quote = False
    pieces, current = [], []
    for ch in content_type:
        if ch == '"':
            depth_quote = not depth_quote
        if ch == ";" and not depth_quote:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    for piece in pieces[1:]:
        key, _, value = piece.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return ""


def iter_parts(chunks: Iterator[bytes], content_type: str, url: str) -> Iterator[Part]:
    """The parts of a multipart/related body, each as soon as its last byte arrived.

    Args:
        chunks: the body, in pieces of any size (e.g. ``response.iter_content``).
        content_type: the response's Content-Type (it names the boundary).
        url: for messages.

    Raises:
        CorruptDicomError: no boundary, a part without its header block, a body that
            ends before the closing delimiter or inside a part.
    """
    boundary = _param(content_type, "boundary")
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise CorruptDicomError(
            display(url), f"expected a multipart/related response. Got: {content_type!r}"
        )
    delimiter = b"--" + boundary.encode("latin-1")
    buffer = bytearray()
    chunks = iter(chunks)
    ended = False

    def more() -> bool:
        nonlocal ended
        for chunk in chunks:
            if chunk:
                buffer.extend(chunk)
                return True
        ended = True
        return False

    def truncated(what: str) -> CorruptDicomError:
        return CorruptDicomError(display(url), f"multipart response is truncated: {what}")

    # The preamble, up to the first delimiter.
    while (at := buffer.find(delimiter)) < 0:
        if not more():
            raise truncated("no part delimiter in the body")
    del buffer[: at + len(delimiter)]
    count = 0
    while True:
        while len(buffer) < 2 and more():
            pass
        if buffer[:2] == b"--":
            return  # the closing delimiter
        if len(buffer) < 2:
            raise truncated(f"the body ends after {count} part(s) without the closing delimiter")
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if not more():
                raise truncated(f"part {count + 1} ends inside its headers")
        headers: dict[str, str] = {}
        for line in bytes(buffer[:end]).decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        del buffer[: end + 4]
        length = headers.get("content-length")
        closing = b"\r\n" + delimiter
        if length is not None and length.isdigit():
            need = int(length) + len(closing)
            while len(buffer) < need:
                if not more():
                    raise truncated(
                        f"part {count + 1} declares {length} bytes but the body ends after"
                        f" {max(0, len(buffer))}"
                    )
            if bytes(buffer[int(length) : need]) != closing:
                raise CorruptDicomError(
                    display(url),
                    f"multipart part {count + 1}: no delimiter after its {length} bytes",
                )
            body = bytes(buffer[: int(length)])
            del buffer[:need]
        else:
            start = 0
            while (at := buffer.find(closing, start)) < 0:
                start = max(0, len(buffer) - len(closing))
                if not more():
                    raise truncated(f"part {count + 1} has no closing delimiter")
            body = bytes(buffer[:at])
            del buffer[: at + len(closing)]
        count += 1
        yield Part(headers, body)


# --------------------------------------------------------------------------- frame reads
def fetch_frames(path: str, numbers: Sequence[int]) -> list[Part]:
    """WADO-RS frame retrieval of 1-based frame ``numbers`` of an instance, one part each.

    Streams the multipart response; retries the whole request on 5xx, connection errors
    and timeouts. The response must finish within the timeout per read and ``retries``
    times overall.

    Raises:
        RemoteNotFoundError, RemoteTimeoutError, RemoteError, CorruptDicomError.
    """
    base, rest = _split(path)
    url = f"{base}{rest}/frames/{','.join(str(n) for n in numbers)}"

    def attempt() -> list[Part]:
        session = _session(base)
        limit = _timeout(base)
        deadline = time.monotonic() + limit * max(4, len(numbers))
        response = session.get(url, headers=_FRAMES_HEADERS, stream=True, timeout=(limit, limit))
        try:
            if response.status_code != 200:
                failure = _status_error(url, response.status_code, response.reason or "")
                raise failure
            content_type = response.headers.get("Content-Type", "")

            def chunks() -> Iterator[bytes]:
                for chunk in response.iter_content(_CHUNK):
                    if time.monotonic() > deadline:
                        # A server dripping bytes never trips the per-read timeout.
                        raise _Retry("the response is slower than the timeout", timed_out=True)
                    yield chunk

            parts = list(iter_parts(chunks(), content_type, url))
        finally:
            response.close()
        if len(parts) != len(numbers):
            raise CorruptDicomError(
                display(url),
                f"asked for {len(numbers)} frame(s), the response has {len(parts)} part(s)",
                frame=numbers[min(len(parts), len(numbers) - 1)] - 1,
            )
        return parts

    return _with_retries(url, "WADO-RS frame retrieval", attempt)


def read_frames_dicomweb(
    row: dict[str, Any], idx: list[int], out: np.ndarray | None, as_rgb: bool
) -> np.ndarray:
    """The read route of DICOMweb rows (see :data:`torchdicom.io.frames.ROUTES`).

    Fetches the 0-based frames ``idx`` (each distinct frame once, in requests of up to
    256 frames) and decodes each part by its own transfer syntax: native bytes laid out
    by the row, code-streams checked and decoded by the pinned plugin, exactly as the
    local routes do.

    Returns:
        (F, C, H, W) stored values, equal to :func:`torchdicom.read_frames` of the file.
    """
    from torchdicom.io.frames import decode_part, stack_frames

    path = row["path"]
    wanted = list(dict.fromkeys(idx))
    decoded: dict[int, np.ndarray] = {}
    for k in range(0, len(wanted), _MAX_FRAMES_PER_REQUEST):
        chunk = wanted[k : k + _MAX_FRAMES_PER_REQUEST]
        parts = fetch_frames(path, [f + 1 for f in chunk])
        for frame, part in zip(chunk, parts):
            decoded[frame] = decode_part(row, part.body, part.transfer_syntax, frame, as_rgb)
    return stack_frames(out, [decoded[f] for f in idx], row)


def read_batch(
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
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return'. Got: {errors!r}")

    def one(row: dict[str, Any], picked: Sequence[int]) -> Any:
        try:
            return read_frames_dicomweb(row, list(picked), None, as_rgb)
        except TorchDicomError as exc:
            if errors == "raise":
                raise
            return exc

    n = max_in_flight or remote.policy.max_in_flight
    if n <= 1 or len(rows) <= 1:
        return [one(r, f) for r, f in zip(rows, frames)]
    pool = _pool(n)
    futures = [pool.submit(one, row, picked) for row, picked in zip(rows, frames)]
    # At most n of them run at once (the pool's threads); every one is waited for.
    results, first = [], None
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first
    return results


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's request threads (kept: their sessions keep their connections open).

    A pool inherited through fork has no threads behind it in the child: a child makes its own.
    """
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[:2] != (os.getpid(), threads):
            if _POOL is not None and _POOL[0] == os.getpid():
                _POOL[2].shutdown(wait=False)
            pool = ThreadPoolExecutor(threads, thread_name_prefix="torchdicom-wado")
            _POOL = (os.getpid(), threads, pool)
        return _POOL[2]


def cached_row(path: str) -> dict[str, Any]:
    """The row of one instance by its path (WADO-RS instance metadata; for ``read_frames``)."""
    base, rest = _split(path)
    url = f"{base}{rest}/metadata"
    from torchdicom._privacy import resolve_salt

    def attempt() -> dict:
        session = _session(base)
        response = session.get(
            url, headers={"Accept": "application/dicom+json"}, timeout=_timeout(base)
        )
        try:
            if response.status_code != 200:
                raise _status_error(url, response.status_code, response.reason or "")
            return response.json()
        finally:
            response.close()

    meta = _with_retries(url, "WADO-RS instance metadata", attempt)
    if isinstance(meta, list):
        if not meta:
            raise RemoteNotFoundError(display(url), "the server returned no metadata")
        meta = meta[0]
    return row_from_metadata(meta, path, resolve_salt())
