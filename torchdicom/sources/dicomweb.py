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

Servers speak DICOMweb in dialects (tested against a loopback server in each): QIDO-RS
pages capped below ``limit`` (with or without a ``Warning``), ``limit`` / ``offset``
ignored, 204 for no results; no instance-level search or no series-level metadata (the
other one is used); values as BulkDataURI; multipart bodies with LF-only lines, quoted
boundaries, preambles and folded headers; parts labelled only by media type; one frame as
a bare body; ``transfer-syntax=*`` refused (the frames are then asked for in the stored
syntax, then Explicit VR Little Endian, then the server's default).

Failures (bounded retries with backoff on 5xx and connection errors, per
:data:`torchdicom.sources.remote.policy`):

* 404 → :class:`~torchdicom.errors.RemoteNotFoundError` naming the URL (not retried);
* no answer within the timeout, or a response slower than it →
  :class:`~torchdicom.errors.RemoteTimeoutError`;
* a truncated multipart body, a short part, a wrong number of parts →
  :class:`~torchdicom.errors.CorruptDicomError` naming the URL and frame;
* 401 / 403 and 5xx after the retries → :class:`~torchdicom.errors.RemoteError`; a 429 or
  503 with ``Retry-After`` (a cloud API's spent quota) waits that long (at most 60 s)
  before its retry.

``requests`` (``pip install torchdicom[dicomweb]``) loads on first use. dicomweb-client is
not used: see the comments above :func:`_get_json` and :class:`Part` for why.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from torchdicom.errors import (
    CorruptDicomError,
    RemoteError,
    RemoteNotFoundError,
    RemoteTimeoutError,
    TorchDicomError,
)
from torchdicom.sources import remote
from torchdicom.sources.remote import display

__all__ = [
    "PREFIX",
    "DicomWebSource",
    "fetch_parts",
    "in_flight",
    "instance_url",
    "is_dicomweb",
    "registrations",
    "restore",
]

log = logging.getLogger("torchdicom.sources")

#: Row paths of DICOMweb instances start with this before the base URL's scheme.
PREFIX = "dicomweb+"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
# What to ask for when a server refuses transfer-syntax=* (406 / 400 / 415: some PACS and
# older gateways implement only explicit syntaxes): the row's own syntax in its media type
# (code-streams still unchanged, see _accepts), then Explicit VR Little Endian (the
# server decodes), then no transfer-syntax parameter at all (the server's default, which
# PS3.18 makes Explicit VR Little Endian for application/octet-stream).
_NATIVE_ACCEPT = (
    f'multipart/related; type="application/octet-stream"; transfer-syntax={_EXPLICIT_LE}'
)
_DEFAULT_ACCEPT = 'multipart/related; type="application/octet-stream"'
# Statuses by which a server says "not in that representation" (then the next form is tried).
_NOT_ACCEPTABLE = frozenset({400, 406, 415})
# Frames are asked for without gzip (requests offers it by default): compressed code-streams
# do not shrink, and a server compressing every native frame spends its CPU on it (Orthanc:
# 13-22 ms per 512x512x16-bit frame with gzip, about 1 ms without, on loopback).
_FRAMES_HEADERS = {"Accept-Encoding": "identity"}
# The default transfer syntax of each single-frame media type of PS3.18 (Table 8.7.3-5 in
# 2024 editions; image/x-jls is the name older editions and servers use): a part whose
# Content-Type has no transfer-syntax parameter is in its media type's default.
_MEDIA_DEFAULTS = {
    "application/octet-stream": _EXPLICIT_LE,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/x-jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}
_PAGE = 1000  # QIDO-RS page size (limit); servers may cap it lower (see _pages)
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

    def __init__(
        self, reason: str, timed_out: bool = False, cut_off: bool = False, wait: float = 0.0
    ):
        super().__init__(reason)
        # cut_off: the body ended before its Content-Length (a short body); after the
        # retries that is damaged data (CorruptDicomError), not an unreachable server.
        self.reason, self.timed_out, self.cut_off = reason, timed_out, cut_off
        self.wait = wait  # seconds the server asked for (Retry-After), at least


# A whole JSON or bulk data answer may take this many timeouts (a metadata response of a
# big series is megabytes); a frames answer takes ``timeout * max(4, frames)``.
_JSON_TIMEOUTS = 10


class _Watchdog:
    """Ends a response that is still arriving after ``seconds``: ``timeout`` bounds each
    socket read only, and a server dripping a few bytes within every read would otherwise
    hold the request (and a training step) for as long as it likes. When it fired,
    :meth:`end` raises a retryable timeout whatever the read made of the cut body."""

    def __init__(self, response: Any, seconds: float):
        self.fired = threading.Event()
        self.response = response
        self.timer = threading.Timer(max(seconds, 0.0), self._cut)
        self.timer.daemon = True
        self.timer.start()

    def _cut(self) -> None:
        self.fired.set()
        try:  # unblocks a read waiting in another thread (urllib3 >= 2.3)
            self.response.raw.shutdown()
        except Exception:
            try:
                self.response.close()
            except Exception:
                pass

    def end(self) -> None:
        self.timer.cancel()
        if self.fired.is_set():
            raise _Retry("the response is slower than the timeout", timed_out=True)


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _get(base: str, url: str, **kwargs: Any) -> Any:
    """``GET url`` with this thread's session for ``base``, following redirects only on the
    same server: the session's credentials never go to another host.

    Raises:
        RemoteError: a redirect to another scheme, host or port, or more than 5.
    """
    from urllib.parse import urljoin, urlsplit

    session = _session(base)
    for _ in range(6):
        response = session.get(url, allow_redirects=False, **kwargs)
        if response.status_code not in _REDIRECTS:
            return response
        target = urljoin(response.url, response.headers.get("Location", ""))
        response.close()
        if urlsplit(target)[:2] != urlsplit(base)[:2]:
            error = RemoteError(
                display(url),
                f"the server redirects to another server ({display(target)[:200]}): not followed",
            )
            error.status = 0  # type: ignore[attr-defined]
            raise error
        url = target
        kwargs.pop("params", None)  # the Location holds the query
    raise RemoteError(display(url), "more than 5 redirects")


# The longest Retry-After honoured: a server asking for more is retried sooner (and ends
# as an error after the retries) rather than stalling a training step for minutes.
_MAX_RETRY_AFTER_S = 60.0


def _retry_after(value: str | None) -> float:
    """Seconds of a Retry-After header (delay-seconds or an HTTP date); 0 when absent."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def _classify(url: str, exc: BaseException) -> TorchDicomError | _Retry:
    """A requests exception as a final error or a retryable failure."""
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


def _raise_for_status(url: str, response: Any) -> None:
    """Raise the error of a response that is not 200 OK (see :func:`_status_error`)."""
    if response.status_code != 200:
        raise _status_error(
            url, response.status_code, response.reason or "", response.headers.get("Retry-After")
        )


def _status_error(
    url: str, status: int, reason: str, retry_after: str | None = None
) -> TorchDicomError | _Retry:
    """The error of an HTTP status; final errors carry it as ``.status`` (callers that have
    another way to ask, e.g. per-instance metadata after a refused series metadata, look)."""
    error: TorchDicomError
    if status == 404:
        error = RemoteNotFoundError(display(url), f"no such resource on the server (404 {reason})")
    elif status in (401, 403):
        error = RemoteError(display(url), f"access denied ({status} {reason}): check credentials")
    elif status == 501:  # "not implemented" does not change by asking again
        error = RemoteError(display(url), f"the server does not implement this (501 {reason})")
    elif status >= 500 or status in (408, 429):
        # Cloud APIs answer 429 / 503 with Retry-After when a quota is spent: honoured.
        return _Retry(f"server error {status} {reason}", wait=_retry_after(retry_after))
    else:
        error = RemoteError(display(url), f"the server refused the request ({status} {reason})")
    error.status = status  # type: ignore[attr-defined]
    return error


def _status_of(error: BaseException) -> int | None:
    """The HTTP status a final error came from (None: not from a status)."""
    return getattr(error, "status", None)


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
            wait = max(remote.policy.backoff_s * 2**attempt, failure.wait)
            log.debug("%s: %s failed (%s); retry in %.2fs", display(url), what, failure, wait)
            time.sleep(wait)
            attempt += 1


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
        headers: extra request headers, e.g. ``{"Authorization": "Bearer …"}``. They are
            fixed: a token that expires (Google Cloud, Azure, Keycloak in front of
            dcm4chee-arc: minutes to an hour) belongs in a ``session`` whose ``auth``
            renews it (a ``requests.auth.AuthBase``, google-auth's ``AuthorizedSession``).
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
    def _pages(
        self, what: str, url: str, params: dict[str, Any], key: str, expected: int | None = None
    ) -> list[dict]:
        """Every result of a QIDO-RS search, ``_PAGE`` at a time (``limit`` / ``offset``),
        each ``key`` (a tag, e.g. the UID the search lists) once, in the server's order.

        Servers page differently: dcm4chee-arc caps a page at its "QIDO Max Number of
        Results" below ``limit`` and says so in a ``Warning`` header, others cap silently
        (Google's defaults, DICOMcloud, DICOM-RST), some ignore ``limit`` / ``offset`` and
        answer everything every time, some answer an empty result with 204. So a short
        page ends the listing only when ``expected`` (a count the parent search reported,
        e.g. (0020,1209) *Number of Series Related Instances*) is reached and no Warning
        came; otherwise the next offset is asked for, and a page that brings no new
        ``key`` (empty, or the same results again) ends it: never a loop. (A server that
        both caps pages and ignores ``offset`` cannot be listed whole; for instances, the
        series metadata fills in what the listing missed.)
        """
        out: list[dict] = []
        seen: set[str] = set()
        offset = 0
        while True:
            try:
                page, warning = _qido_page(self.base_url, url, params, key, offset, what)
            except RemoteError as exc:
                if not offset or _status_of(exc) not in _ASK_OTHERWISE:
                    raise
                # A server refusing an offset past its last result (instead of answering
                # none): the listing ended.
                log.debug("%s: %s past the end refused (%s): done", display(url), what, exc)
                return out
            offset += len(page)
            fresh = 0
            for item in page:
                uid = _value(item, key)
                if uid and uid not in seen:
                    seen.add(uid)
                    out.append(item)
                    fresh += 1
            if warning:
                log.debug("%s: QIDO-RS %s: server warning %r", display(url), what, warning[:200])
            if not fresh:
                return out  # empty, or a server that ignores offset: nothing more to get
            if expected is not None and len(seen) >= expected and not warning:
                return out
            # A full page, a capped one, or a short one with nothing to tell the end from a
            # silent cap: the next offset says (one request more than strictly needed).

    def _series(self) -> list[tuple[str, str, int | None]]:
        """``(study, series, instances expected or None)`` of every selected series."""
        base = self.base_url
        if self.series is not None:
            return [(str(self.study), self.series, None)]
        if self.study is not None:
            studies: list[tuple[str, int | None]] = [(self.study, None)]
        else:
            studies = [
                (_value(s, "0020000D"), _count(s, "00201206"))
                for s in self._pages(
                    "studies",
                    f"{base}/studies",
                    {"includefield": ["0020000D", "00201206"]},
                    "0020000D",
                )
            ]
        found: dict[tuple[str, str], int | None] = {}
        for study, n_series in studies:
            for s in self._pages(
                f"series of study {study}",
                f"{base}/studies/{study}/series",
                {"includefield": ["0020000E", "00201209"]},
                "0020000E",
                expected=n_series,
            ):
                found.setdefault((study, _value(s, "0020000E")), _count(s, "00201209"))
        return [(study, series, n) for (study, series), n in found.items()]

    def index_rows(
        self,
        progress: bool = True,
        workers: int | None = None,
        salt: str | None = None,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, int, int]]]:
        """Index rows of the source's instances, from QIDO-RS and WADO-RS metadata (no pixels).

        Called by :func:`torchdicom.scan`. An instance whose metadata cannot be made into a
        row goes to the errors (``(path, error_type, reason, -1, -1)``); a series whose
        listing fails goes there once, under its series path.

        Args:
            progress: a tqdm bar over the series.
            workers: series indexed at once (default 8, at most ``policy.max_in_flight``).
            salt: the key of ``patient_hash`` (default: :func:`~torchdicom._privacy.resolve_salt`).
            known: rows of an earlier scan by path (``scan(cache=…)``): a listed instance
                whose path is there keeps that row, and a series whose listed instances
                are all known asks for no metadata. A SOP Instance UID names one
                instance's content for good (PS3.3), so the UIDs the listing returns are
                the validity key; an instance no longer listed is dropped.

        Returns:
            ``(rows, errors)``.
        """
        from tqdm.auto import tqdm

        from torchdicom._privacy import resolve_salt

        self.register()
        salt = resolve_salt(salt)
        known = known or {}
        series = self._series()
        rows: list[dict[str, Any]] = []
        errors: list[tuple[str, str, str, int, int]] = []
        n_threads = max(1, min(workers or 8, remote.policy.max_in_flight, len(series) or 1))
        bar = tqdm(desc=f"indexing {display(self.base_url)}", unit="series", disable=not progress)
        try:
            with ThreadPoolExecutor(n_threads, thread_name_prefix="torchdicom-qido") as pool:
                for got_rows, got_errors in pool.map(
                    lambda one: self._index_series(*one, salt, known), series
                ):
                    rows.extend(got_rows)
                    errors.extend(got_errors)
                    bar.update(1)
        finally:
            bar.close()
        return rows, errors

    def _index_series(
        self,
        study: str,
        series: str,
        expected: int | None,
        salt: str,
        known: dict[str, dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, int, int]]]:
        base = self.base_url
        where = f"{base}/studies/{study}/series/{series}"
        rows, errors = [], []
        listed: list[dict] = []
        try:
            listed = self._pages(
                f"instances of series {series}",
                f"{where}/instances",
                {"includefield": ["00080018"]},
                "00080018",
                expected=expected,
            )
        except TorchDicomError as exc:
            if _status_of(exc) not in _ASK_OTHERWISE:
                return [], [(PREFIX + where, type(exc).__name__, str(exc), -1, -1)]
            # No instance-level QIDO here: the series metadata lists the instances.
            log.debug("%s: instance search refused (%s); using the series metadata", where, exc)
        sops = [_value(item, "00080018") for item in listed]
        by_uid: dict[str, dict] = {}
        if not listed or any(instance_url(base, study, series, s) not in known for s in sops):
            try:
                metadata, _ = _get_json(base, f"{where}/metadata", None, "WADO-RS series metadata")
                by_uid = {_value(m, "00080018"): m for m in metadata}
            except TorchDicomError as exc:
                if not listed or _status_of(exc) not in _ASK_OTHERWISE:
                    return [], [(PREFIX + where, type(exc).__name__, str(exc), -1, -1)]
                # No series metadata here (e.g. a server with only instance-level WADO-RS
                # metadata): each new instance is asked for alone below.
                log.debug("%s: series metadata refused (%s); asking per instance", where, exc)
        # Listed and described instances alike: a listing cut short by a server's cap, or a
        # metadata response that leaves some out, loses nothing the other one has.
        for sop in dict.fromkeys([*sops, *by_uid]):
            if not sop:
                continue
            path = instance_url(base, study, series, sop)
            if path in known and sop not in by_uid:
                rows.append(known[path])
                continue
            meta = by_uid.get(sop)
            try:
                if meta is None:  # listed but not in the series metadata: ask for it alone
                    meta = _instance_metadata(path)
                rows.append(row_from_metadata(meta, path, salt))
            except TorchDicomError as exc:
                errors.append((path, type(exc).__name__, exc.reason, -1, -1))
        return rows, errors


# Statuses of a search or metadata request the server does not offer in that form (then the
# other source of the same facts is used: series metadata for an instance listing, instance
# metadata for series metadata).
_ASK_OTHERWISE = frozenset({400, 404, 405, 406, 415, 501})


# QIDO-RS request forms, tried in order while a server answers 400: (limit, whether the
# related-count fields are asked for). Azure's DICOM service refuses a limit above 200;
# a server may refuse includefield of attributes it does not keep (the counts), and one
# may refuse limit altogether (then it pages by its own default, and offset goes on).
_QIDO_FORMS: tuple[tuple[int | None, bool], ...] = (
    (_PAGE, True),
    (200, True),
    (200, False),
    (None, False),
)
_QIDO_FORM: dict[str, int] = {}  # base URL -> the first form it accepted (per process)


def _qido_page(
    base: str, url: str, params: dict[str, Any], key: str, offset: int, what: str
) -> tuple[list[dict], str]:
    """One QIDO-RS page at ``offset``, in the first request form the server accepts.

    Raises:
        RemoteError and subclasses: as :func:`_get_json`; a 400 of the last form.
    """
    start = _QIDO_FORM.get(base, 0)
    for k in range(start, len(_QIDO_FORMS)):
        limit, with_counts = _QIDO_FORMS[k]
        query = dict(params) if with_counts else {**params, "includefield": [key]}
        if limit is not None:
            query["limit"] = limit
        query["offset"] = offset
        try:
            found = _get_json(base, url, query, f"QIDO-RS search for {what}")
        except RemoteError as exc:
            if _status_of(exc) != 400 or k == len(_QIDO_FORMS) - 1:
                raise
            log.debug(
                "%s: QIDO-RS refused with limit=%s%s (%s); trying a plainer request",
                display(url),
                limit,
                " and the count fields" if with_counts else "",
                exc,
            )
            continue
        if k != start:
            with _LOCK:
                _QIDO_FORM[base] = max(_QIDO_FORM.get(base, 0), k)
        return found
    raise AssertionError("unreachable: the last form returns or raises")  # pragma: no cover


def _count(item: dict, tag: str) -> int | None:
    """An integer attribute of a QIDO-RS result (e.g. a related-instances count), or None."""
    try:
        return int(_value(item, tag))
    except ValueError:
        return None


# Why not dicomweb-client for QIDO-RS and metadata: paging needs each response's Warning
# header (a server saying its page was capped) and its 204, which the client drops (it logs
# the Warning at WARNING level, once per page); and its GETs send a Host header without the
# port, from which servers build the absolute BulkDataURIs of the metadata (Orthanc then
# answers http://host/… for a server on http://host:8042/…).
def _get_json(
    base: str, url: str, params: dict[str, Any] | None, what: str
) -> tuple[list[dict], str]:
    """One DICOM JSON request (a QIDO-RS page, WADO-RS metadata): ``(data sets, the
    Warning header or "")``; 204 or an empty body is no data sets, one bare object is one.

    Raises:
        RemoteError and subclasses; CorruptDicomError for a body that is not DICOM JSON.
    """

    def attempt() -> tuple[list[dict], str]:
        response = _get(
            base,
            url,
            params=params,
            headers={"Accept": "application/dicom+json, application/json"},
            stream=True,  # the body is read under the watchdog
            timeout=_timeout(base),
        )
        watchdog = _Watchdog(response, _timeout(base) * _JSON_TIMEOUTS)
        try:
            if response.status_code == 204:
                return [], response.headers.get("Warning", "")
            _raise_for_status(response.url, response)
            warning = response.headers.get("Warning", "")
            if not response.content.strip():
                return [], warning
            try:
                found = response.json()
            except ValueError:
                raise CorruptDicomError(
                    display(url),
                    f"{what}: the answer is not DICOM JSON (Content-Type"
                    f" {response.headers.get('Content-Type', '')!r})",
                ) from None
        finally:
            response.close()
            watchdog.end()  # past the deadline: a timeout, whatever was read
        if isinstance(found, dict):  # a server answering one data set as a bare object
            found = [found]
        if not isinstance(found, list) or not all(isinstance(x, dict) for x in found):
            raise CorruptDicomError(display(url), f"{what}: expected a JSON array of data sets")
        return found, warning

    return _with_retries(url, what, attempt)


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
    """The first value of ``tag`` in a DICOM JSON data set as text; "" when it is absent or
    not an element with a ``Value`` list (a server's JSON is untrusted input)."""
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values or values[0] is None:
        return ""
    return str(values[0])


def row_from_metadata(meta: dict, path: str, salt: str | None = None) -> dict[str, Any]:
    """An index row from one instance's DICOM JSON metadata (QIDO-RS / WADO-RS).

    The JSON becomes a pydicom data set (bulk data left unread) and goes through the row
    builder of local files, :func:`torchdicom.io.header.row_from_dataset`, so every column,
    the patient hash included, is computed exactly as for the same file on disk.

    The transfer syntax comes from (0002,0010) or (0008,3002) *Available Transfer Syntax
    UID* when the server lists them, else it stays "" until a read: each frame is decoded
    by the transfer syntax its multipart part declares anyway (:func:`part_syntax`).

    Values given as InlineBinary are decoded; values given as a BulkDataURI are fetched
    only for the elements the row is built from (rescale, window, geometry, image pixel
    description, identifiers, also inside functional groups), from the server of ``path``
    only (the session's credentials never go to another host); other bulk data (pixel
    data, LUT data, overlays, icons) stays unread.

    Raises:
        MissingPixelDataError, CorruptDicomError: as for a local file's header.
        RemoteError: a needed bulk data value cannot be fetched.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset

    from torchdicom.io.dicomfile import _short as short_exc
    from torchdicom.io.header import row_from_dataset

    def bulk(tag: str, vr: str, uri: str) -> Any:
        return _bulk_value(path, tag, vr, uri)

    try:
        ds = pydicom.Dataset.from_json(_resolve_un(meta), bulk_data_uri_handler=bulk)
    except TorchDicomError:
        raise
    except Exception as exc:
        raise CorruptDicomError(
            display(path), f"metadata cannot be read: {short_exc(exc)}"
        ) from None
    syntax = _value(meta, "00020010") or _value(meta, "00083002")
    if "Rows" in ds and not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        # Servers may leave the bulk data element out of the metadata; an image has one.
        try:  # an empty or absurd (0028,0100) is the row builder's to judge
            wide = int(ds.get("BitsAllocated", 8) or 8) > 8
        except (TypeError, ValueError):
            wide = True
        ds.add_new(0x7FE00010, "OW" if wide else "OB", None)
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


_NUMERIC_VRS = {"DS": float, "FL": float, "FD": float, "IS": int, "SL": int, "SS": int}
_NUMERIC_VRS.update({"SV": int, "UL": int, "US": int, "UV": int})


def _resolve_un(meta: dict) -> dict:
    """DICOM JSON with VR UN elements of dictionary tags given their dictionary VR.

    Servers send UN for elements whose VR they do not know (an instance stored in Implicit
    VR Little Endian, or received that way). pydicom converts an UN InlineBinary of a known
    tag to the known VR's value but keeps VR UN, and then refuses the element, so one such
    element (say (0028,1050) *Window Center*) would make the whole instance unreadable.
    Values are decoded here by the dictionary VR; an UN BulkDataURI gets that VR (then
    :func:`_bulk_value` decides by it); a value that cannot be decoded, or a tag whose VR
    the dictionary leaves ambiguous (``US or SS``), is left out. Sequences are walked.
    """
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement, convert_raw_data_element
    from pydicom.tag import Tag

    out: dict = {}
    for tag, element in meta.items():
        if not isinstance(element, dict):
            out[tag] = element
            continue
        vr = element.get("vr")
        if vr == "SQ" and isinstance(element.get("Value"), list):
            items = [_resolve_un(i) if isinstance(i, dict) else i for i in element["Value"]]
            element = {**element, "Value": items}
        elif vr == "UN":
            try:
                known = dictionary_VR(Tag(tag))
            except (KeyError, ValueError):
                out[tag] = element  # a private or unknown tag: stays UN bytes
                continue
            if known == "UN":
                out[tag] = element
                continue
            if " " in known or known == "SQ":
                continue  # ambiguous VR or a sequence in bytes: left out
            element = {**element, "vr": known}
            if "InlineBinary" in element and known not in _BINARY_VRS:
                try:
                    raw = base64.b64decode(element.pop("InlineBinary"))
                    raw_element = RawDataElement(
                        Tag(tag), known, len(raw), raw, 0, False, True, False, False
                    )
                    value = convert_raw_data_element(raw_element).value
                except Exception:
                    continue
                values = list(value) if isinstance(value, list | tuple) else [value]
                if known == "PN":
                    element["Value"] = [{"Alphabetic": str(v)} for v in values]
                else:
                    kind = _NUMERIC_VRS.get(known, str)
                    element["Value"] = [kind(v) for v in values if v is not None]
        out[tag] = element
    return out


@functools.cache
def _row_tags() -> frozenset[int]:
    """The tags :func:`~torchdicom.io.header.row_from_dataset` reads a value of."""
    from torchdicom.io.header import _FUNCTIONAL_GROUP_SOURCES, _LEAN_ELEMENTS

    return frozenset(
        [tag for tag, _ in _LEAN_ELEMENTS.values()]
        + [element for _, element in _FUNCTIONAL_GROUP_SOURCES.values()]
    )


# Binary VRs: bulk data proper (pixel data, LUT data, overlays), never needed for a row.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _bulk_value(path: str, tag: str, vr: str, uri: str) -> Any:
    """The value of a metadata element given as a BulkDataURI, when the row needs it.

    PS3.18 F.2 lets a server send any long value (DS, IS, US … as well as OB / OW) by
    reference; a row built without it would silently lose, e.g., a rescale slope.

    Returns:
        The converted value, or None (the element stays empty) for elements the row does
        not read, binary VRs (UN of a dictionary tag has its VR by then, see
        :func:`_resolve_un`), and URIs on another server than ``path``'s.
    """
    from urllib.parse import urljoin, urlsplit

    from pydicom.dataelem import RawDataElement, convert_raw_data_element
    from pydicom.tag import Tag

    if vr in _BINARY_VRS or int(Tag(tag)) not in _row_tags():
        return None
    base, rest = _split(path)
    url = urljoin(f"{base}{rest}/metadata", uri)
    if urlsplit(url)[:2] != urlsplit(base)[:2]:
        log.debug("%s: bulk data of (%s) is on another server: not fetched", display(path), tag)
        return None

    raw = _with_retries(url, f"WADO-RS bulk data of ({tag})", lambda: _get_bulk(base, url))
    element = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True, False, False)
    return convert_raw_data_element(element).value


def _get_bulk(base: str, url: str) -> bytes:
    """One attempt of a bulk data request on the server ``base``: the value's bytes.

    PS3.18 answers bulk data as a one-part multipart/related; some servers send a bare
    body, taken as is.
    """
    response = _get(
        base,
        url,
        headers={"Accept": f"{_DEFAULT_ACCEPT}, application/octet-stream"},
        stream=True,  # the body is read under the watchdog
        timeout=_timeout(base),
    )
    watchdog = _Watchdog(response, _timeout(base) * _JSON_TIMEOUTS)
    try:
        _raise_for_status(url, response)
        content_type = response.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/"):
            return response.content
        parts = list(iter_parts(iter([response.content]), content_type, url))
    finally:
        response.close()
        watchdog.end()  # past the deadline: a timeout, whatever was read
    if len(parts) != 1:
        raise CorruptDicomError(display(url), f"bulk data in {len(parts)} parts, expected 1")
    return parts[0].body


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
    def media_type(self) -> str:
        """The part's media type, lower case ("application/octet-stream" when unlabelled)."""
        value = self.headers.get("content-type", "").split(";")[0].strip().lower()
        return value or "application/octet-stream"

    @property
    def transfer_syntax(self) -> str:
        """The ``transfer-syntax`` parameter of the part's Content-Type, else the default of
        its media type (PS3.18: Explicit VR Little Endian for application/octet-stream,
        JPEG baseline for image/jpeg, …); "" for a media type without one."""
        given = _param(self.headers.get("content-type", ""), "transfer-syntax")
        return given or _MEDIA_DEFAULTS.get(self.media_type, "")


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

    Tolerates what servers send besides RFC 2046's canonical form: a quoted or bare
    boundary, a preamble and an epilogue, LF-only line ends (the line end of the first
    delimiter line is taken for the whole body, so a body byte ``\\r`` before a CRLF
    delimiter is never mistaken for part of it), transport padding after a delimiter,
    folded header lines, parts with or without Content-Length.

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

    def more() -> bool:
        for chunk in chunks:
            if chunk:
                buffer.extend(chunk)
                return True
        return False

    def truncated(what: str) -> CorruptDicomError:
        return CorruptDicomError(display(url), f"multipart response is truncated: {what}")

    def line(what: str) -> bytes:
        """The next line of ``buffer`` without its line end (consumed)."""
        start = 0
        while (nl := buffer.find(b"\n", start)) < 0:
            start = len(buffer)
            if not more():
                raise truncated(what)
        text = bytes(buffer[:nl])
        del buffer[: nl + 1]
        return text

    # The preamble, up to the first delimiter.
    while (at := buffer.find(delimiter)) < 0:
        if not more():
            raise truncated("no part delimiter in the body")
    del buffer[: at + len(delimiter)]
    eol = b""  # the body's line end, b"\r\n" or b"\n": from the first delimiter line
    count = 0
    while True:
        while len(buffer) < 2 and more():
            pass
        if buffer[:2] == b"--":
            return  # the closing delimiter; the epilogue is not read
        if len(buffer) < 2:
            raise truncated(f"the body ends after {count} part(s) without the closing delimiter")
        rest = line(f"part {count + 1} ends inside its headers")  # transport padding, CR
        if not eol:
            eol = b"\r\n" if rest.endswith(b"\r") else b"\n"
        headers: dict[str, str] = {}
        last = ""
        while header := line(f"part {count + 1} ends inside its headers").rstrip(b"\r"):
            text = header.decode("latin-1")
            if text[:1] in (" ", "\t") and last:  # a folded header line continues the last
                headers[last] += " " + text.strip()
                continue
            name, sep, value = text.partition(":")
            if sep:
                last = name.strip().lower()
                headers[last] = value.strip()
        length = headers.get("content-length", "").strip()
        closing = eol + delimiter
        if length.isdigit():
            need = int(length) + len(closing)
            while len(buffer) < need:
                if not more():
                    raise truncated(
                        f"part {count + 1} declares {length} bytes but the body ends after"
                        f" {len(buffer)}"
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
# Per process: Accept forms a server refused (base URL -> forms), learnt when a later form
# worked, so one 406 is paid once per server, not once per read.
_REFUSED: dict[str, set[str]] = {}

# The media type a transfer syntax's frames travel in (PS3.18 Table 8.7.3-5).
_SYNTAX_MEDIA = {
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"),
        "image/jpeg",
    ),
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
        "image/jphc",
    ),
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


def _accepts(syntax: str) -> list[str]:
    """The Accept values to try, in order, for frames stored in ``syntax`` ("" unknown)."""
    forms = [_FRAMES_ACCEPT]
    media = _SYNTAX_MEDIA.get(syntax)
    if media is not None:
        forms.append(f'multipart/related; type="{media}"; transfer-syntax={syntax}')
    return [*forms, _NATIVE_ACCEPT, _DEFAULT_ACCEPT]


def fetch_frames(
    path: str, numbers: Sequence[int], syntax: str = "", max_bytes: int | None = None
) -> list[Part]:
    """WADO-RS frame retrieval of 1-based frame ``numbers`` of an instance, one part each.

    Streams the multipart response; retries the whole request on 5xx, connection errors
    and timeouts. The response must finish within the timeout per read and ``retries``
    times overall. A server that refuses ``transfer-syntax=*`` (406, 400 or 415) is asked
    for the stored ``syntax`` in its media type, then for Explicit VR Little Endian, then
    with no transfer syntax (its default); what it refused is remembered for the process.
    A single frame answered as a bare body (not multipart), as some servers do, is one part.

    Raises:
        RemoteNotFoundError, RemoteTimeoutError, RemoteError, CorruptDicomError.
    """
    base, rest = _split(path)
    url = f"{base}{rest}/frames/{','.join(str(n) for n in numbers)}"
    refused = _REFUSED.get(base, set())
    forms = [a for a in _accepts(syntax) if a not in refused] or [_DEFAULT_ACCEPT]
    first: TorchDicomError | None = None
    for k, accept in enumerate(forms):
        try:
            parts = _with_retries(
                url,
                "WADO-RS frame retrieval",
                lambda accept=accept: _get_parts(url, accept, max_bytes),
            )
        except RemoteError as exc:
            if _status_of(exc) not in _NOT_ACCEPTABLE or k == len(forms) - 1:
                raise (first or exc) if _status_of(exc) in _NOT_ACCEPTABLE else exc from None
            first = first or exc
            log.debug(
                "%s: the server refused Accept %r (%s); asking for %r",
                display(url),
                accept,
                _status_of(exc),
                forms[k + 1],
            )
            continue
        if k:  # a later form worked: the earlier ones were refused for the representation
            with _LOCK:
                _REFUSED.setdefault(base, set()).update(forms[:k])
        if len(parts) != len(numbers):
            raise CorruptDicomError(
                display(url),
                f"asked for {len(numbers)} frame(s), the response has {len(parts)} part(s)",
                frame=numbers[min(len(parts), len(numbers) - 1)] - 1,
            )
        return parts
    raise AssertionError("unreachable: the last form returns or raises")  # pragma: no cover


def _get_parts(url: str, accept: str, max_bytes: int | None = None) -> list[Part]:
    """One attempt of a frame request: the parts of the response (at most ``max_bytes``
    of body after any Content-Encoding, so a gzip bomb never fills memory)."""
    base = _split(PREFIX + url)[0]
    limit = _timeout(base)
    frames = url.rsplit("/frames/", 1)[1].count(",") + 1
    deadline = time.monotonic() + limit * max(4, frames)
    response = _get(
        base,
        url,
        headers={**_FRAMES_HEADERS, "Accept": accept},
        stream=True,
        timeout=(limit, limit),
    )
    watchdog = _Watchdog(response, deadline - time.monotonic())
    try:
        _raise_for_status(url, response)
        content_type = response.headers.get("Content-Type", "")

        def chunks() -> Iterator[bytes]:
            received = 0
            for chunk in response.iter_content(_CHUNK):
                if time.monotonic() > deadline:
                    # A server dripping bytes never trips the per-read timeout.
                    raise _Retry("the response is slower than the timeout", timed_out=True)
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise CorruptDicomError(
                        display(url),
                        f"the response is larger than {frames} frame(s) of this instance"
                        f" can be (over {max_bytes} bytes)",
                    )
                yield chunk

        media = content_type.split(";")[0].strip().lower()
        if frames == 1 and (media == "application/octet-stream" or media.startswith("image/")):
            # One frame as a bare body (Azure's single-part answer, some gateways'): its
            # Content-Type is the part's.
            return [Part({"content-type": content_type}, b"".join(chunks()))]
        return [_inherit(part, content_type) for part in iter_parts(chunks(), content_type, url)]
    finally:
        response.close()
        watchdog.end()  # past the deadline: a timeout, whatever was read


def _inherit(part: Part, content_type: str) -> Part:
    """``part`` labelled by the response where it is not itself: a part without a
    Content-Type has the response's ``type``, and one without a ``transfer-syntax`` the
    response's (some servers name the syntax once, on the response)."""
    own = part.headers.get("content-type", "") or _param(content_type, "type")
    outer = _param(content_type, "transfer-syntax")
    if own and outer and outer != "*" and not _param(own, "transfer-syntax"):
        own = f"{own}; transfer-syntax={outer}"
    if own:
        part.headers["content-type"] = own
    return part


def _native_frame_bytes(row: dict[str, Any]) -> int:
    """Bytes of one native frame of the row (1-bit data packed)."""
    pixels = int(row["rows"]) * int(row["columns"]) * int(row["samples_per_pixel"])
    allocated = int(row["bits_allocated"])
    return pixels * allocated // 8 if allocated >= 8 else -(-pixels * allocated // 8)


# Code-stream families told apart by their first markers (:func:`_sniff`): a part labelled
# with a syntax of another family than its markers show is a lying label (a JPEG baseline
# code-stream decoded as lossless JPEG keeps its YBR colour: different pixels, no error).
_FAMILY = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"), "jpeg"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"), "jpeg-lossless"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "jpeg-ls"),
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.92",
            "1.2.840.10008.1.2.4.93",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
        ),
        "j2k",
    ),
    "1.2.840.10008.1.2.5": "rle",
}


def _max_bytes(row: dict[str, Any], frames: int) -> int | None:
    """The most body a response of ``frames`` frames of ``row`` may bring: twice the native
    size per frame (a code-stream of noise can outgrow its pixels a little) plus headroom
    for part headers; None when the row cannot say."""
    try:
        per_frame = _native_frame_bytes(row)
    except (KeyError, TypeError, ValueError):
        return None
    return frames * (2 * per_frame + 2**16) + 2**16


def _sniff(data: bytes) -> str:
    """The transfer syntax a code-stream's first markers show ("" when not recognised)."""
    if data[:4] == b"\xff\x4f\xff\x51" or data[4:8] == b"jP  ":  # J2K code-stream, JP2 box
        return "1.2.840.10008.1.2.4.90"
    if 1 <= int.from_bytes(data[:4], "little") <= 15 and data[4:8] == b"\x40\0\0\0":
        return "1.2.840.10008.1.2.5"  # an RLE header: 1-15 segments, the first at byte 64
    if data[:2] != b"\xff\xd8":
        return ""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:  # JPEG markers up to the frame header
        marker = data[at + 1]
        if marker == 0xF7:
            return "1.2.840.10008.1.2.4.80"  # JPEG-LS
        if marker in (0xC0, 0xC1, 0xC3):
            return {0xC0: "1.2.840.10008.1.2.4.50", 0xC1: "1.2.840.10008.1.2.4.51"}.get(
                marker, "1.2.840.10008.1.2.4.70"
            )
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return ""


def part_syntax(part: Part, row: dict[str, Any]) -> str:
    """The transfer syntax to decode ``part`` of ``row`` with.

    The part's ``transfer-syntax`` parameter when it has one. Without it, PS3.18 says the
    media type's default (Explicit VR Little Endian for ``application/octet-stream``,
    JPEG baseline for ``image/jpeg`` …), but a media type covers several syntaxes
    (``image/jpeg``: baseline, extended, lossless) and servers leave the parameter out for
    any of them, so: the row's stored syntax when it travels in that media type, else what
    the code-stream's first markers show, else the default. Servers also send stored
    code-streams as plain unlabelled ``application/octet-stream``: such a part whose length
    is not one native frame is decoded as the row's stored syntax or what its markers show.
    """
    given = _param(part.headers.get("content-type", ""), "transfer-syntax")
    if given:
        return given
    media, stored = part.media_type, str(row["transfer_syntax"])
    if media == "application/octet-stream":
        if len(part.body) in (_native_frame_bytes(row), _native_frame_bytes(row) + 1):
            return _EXPLICIT_LE
        media = _SYNTAX_MEDIA.get(stored, media)
    if _SYNTAX_MEDIA.get(stored) == media:
        return stored
    return _sniff(part.body) or part.transfer_syntax or stored or _EXPLICIT_LE


# Stored syntaxes whose decoders hand colour over as RGB: lossy JPEG (YBR_FULL_422 /
# YBR_FULL) and JPEG 2000 / HTJ2K (YBR_ICT / YBR_RCT). RLE and lossless JPEG keep the
# colour space they were given, so a server decoding those sends what the row says.
_DECODED_AS_RGB = frozenset(
    (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    )
)


def _as_sent(row: dict[str, Any], syntax: str) -> dict[str, Any]:
    """The row as the server sent its frame: a stored YBR colour code-stream of
    :data:`_DECODED_AS_RGB` that the server decoded to native bytes (a server refusing
    every compressed syntax) arrives as RGB, pixel by pixel, as DCMTK (Orthanc), GDCM and
    pydicom decode it (a YBR_FULL_422 frame at full size can be nothing else). Only with
    the row's stored syntax known: a native YBR frame of a native instance stays YBR."""
    if (
        str(row["transfer_syntax"]) in _DECODED_AS_RGB
        and not _SYNTAX_MEDIA.get(syntax)
        and str(row["photometric"]).startswith("YBR")
    ):
        return {**row, "photometric": "RGB", "planar_configuration": 0}
    return row


def fetch_parts(
    row: dict[str, Any], idx: list[int]
) -> Iterator[tuple[int, dict[str, Any], bytes, str]]:
    """The received frames of a DICOMweb row, for :mod:`torchdicom.io.frames` to decode.

    Fetches the 0-based frames ``idx`` (each distinct frame once, in requests of up to
    256 frames) and yields, request by request, each frame's ``(frame, row as sent, part
    bytes, transfer syntax)``: the part's own syntax (:func:`part_syntax`) and the row as
    the server sent that frame (:func:`_as_sent`).
    """
    path = row["path"]
    wanted = list(dict.fromkeys(idx))
    for k in range(0, len(wanted), _MAX_FRAMES_PER_REQUEST):
        chunk = wanted[k : k + _MAX_FRAMES_PER_REQUEST]
        parts = fetch_frames(
            path, [f + 1 for f in chunk], str(row["transfer_syntax"]), _max_bytes(row, len(chunk))
        )
        for frame, part in zip(chunk, parts):
            syntax = part_syntax(part, row)
            shown = _sniff(part.body)
            if shown and syntax in _FAMILY and _FAMILY[shown] != _FAMILY[syntax]:
                raise CorruptDicomError(
                    display(path),
                    f"the part says transfer syntax {syntax}, its code-stream's markers say"
                    f" {shown}",
                    frame=frame,
                )
            yield frame, _as_sent(row, syntax), part.body, syntax


def in_flight(calls: Sequence[Callable[[], Any]], max_in_flight: int | None = None) -> list[Any]:
    """Run ``calls`` (requests to DICOMweb servers) on this process's request threads,
    ``max_in_flight`` at a time (default ``policy.max_in_flight``); their results in order.

    Every call is waited for; then the first one's exception, if any, is raised.
    """
    n = max_in_flight or remote.policy.max_in_flight
    if n <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    pool = _pool(n)
    futures = [pool.submit(call) for call in calls]
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


def _instance_metadata(path: str) -> dict:
    """The WADO-RS metadata of the instance at row path ``path``."""
    base, rest = _split(path)
    url = f"{base}{rest}/metadata"
    found, _ = _get_json(base, url, None, "WADO-RS instance metadata")
    if not found:
        raise RemoteNotFoundError(display(url), "the server returned no metadata")
    return found[0]


def cached_row(path: str) -> dict[str, Any]:
    """The row of one instance by its path (WADO-RS instance metadata; for ``read_frames``)."""
    from torchdicom._privacy import resolve_salt

    return row_from_metadata(_instance_metadata(path), path, resolve_salt())
