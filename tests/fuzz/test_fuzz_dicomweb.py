"""Mutation fuzzing of the DICOMweb client: a damaged server answer gives the original
frames (rows) or a TorchDicomError.

A real loopback ``ThreadingHTTPServer`` (the dialect server of tests/test_dicomweb.py,
serving real pydicom test files: native CT, native multi-frame MR, JPEG baseline RGB,
JPEG 2000 multi-frame) answers each hypothesis example with one mutated response:

* WADO-RS frames (multipart/related): the body cut, a bit flipped, a response or part
  Content-Length that lies (0, ±1, 10¹², garbage), the boundary changed in the header or
  in the body, a part dropped or doubled, a part's or the response's transfer-syntax /
  media type changed, a gzip / deflate Content-Encoding claimed (with a plain body, a real
  gzip body, or a gzip bomb), a redirect to another host, a stall past the timeout, or a
  body dripped slower than the timeout;
* QIDO-RS / WADO-RS metadata JSON: one value anywhere replaced by an absurd one (wrong
  types, 2⁶³, huge Rows / Columns / NumberOfFrames), a key deleted, a BulkDataURI to
  another host or port, deep nesting, a redirect, a drip.

Each read must equal the original frames or raise a TorchDicomError; a flip inside the
pixel bytes of a native frame is undetectable (no checksum in DICOMweb), so there the read
may equal the mutated bytes' decoding; inside a code-stream, any pixels of the right shape
(the local fuzzer covers the decoders). Each scan must give rows or per-instance errors,
never another exception. Every example is bounded in time (``setitimer``; the client's own
timeout turns stalls into RemoteTimeoutError) and traced allocation (tracemalloc); a
second listening socket (another host in the URLs' eyes: another port) must never be asked
anything.

``TORCHDICOM_FUZZ_EXAMPLES`` sets the number of examples of each test (default 20).
"""

from __future__ import annotations

import collections
import copy
import gzip
import json
import os
import signal
import socket
import threading
import time
import tracemalloc
import warnings
import zlib
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_dicomweb import _Archive, _Dialect
from torchdicom.errors import TorchDicomError
from torchdicom.io.frames import read_frames_numpy
from torchdicom.sources import dicomweb, remote
from torchdicom.sources.dicomweb import DicomWebSource, row_from_metadata

EXAMPLES = int(os.environ.get("TORCHDICOM_FUZZ_EXAMPLES", "20"))
_TIMEOUT_S = 0.3  # the client's timeout: stalls must end as RemoteTimeoutError
_LIMIT_S = 15.0  # wall-clock bound of one example (retries and backoff included)
_ALLOC_LIMIT = 48 * 2**20  # traced bytes one example may allocate
_OUTCOMES: collections.Counter[str] = collections.Counter()

# Seeds: (file, frames read in one request).
_SEEDS = (
    ("CT_small.dcm", [0]),  # native int16
    ("emri_small.dcm", [0, 3]),  # native uint16 multi-frame
    ("SC_rgb_jpeg_dcmtk.dcm", [0]),  # JPEG baseline RGB
    ("emri_small_jpeg_2k_lossless.dcm", [1, 2]),  # JPEG 2000 multi-frame
)
_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.5",
    "*",
    "",
    "1.2.3.garbage",
]
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", ""}
_MEDIA = [
    "application/octet-stream",
    "image/jpeg",
    "image/jp2",
    "image/jls",
    "image/x-dicom-rle",
    "text/html",
    "multipart/related",
    "",
]
_ABSURD: list[Any] = [0, -1, 2**16 - 1, 2**31, 2**63, 10**30, "x", "", None, [], {}, 1.5, True]
_BOUNDARY = "fuzz-b0undary"


# --------------------------------------------------------------------------- the server
class _Trap:
    """A listening socket no request may reach (another host to the client: another port)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()


class _Fuzzed(_Dialect):
    """The dialect server with each answer passed through the example's plan."""

    plan: dict  # {"frames": fn(handler, raw) | None, "json": fn(path, results) | None}

    def _json(self, results: list, headers: dict | None = None) -> None:
        mutate = self.plan.get("json")
        if mutate is None:
            return super()._json(results, headers)
        mutate(self, self.path, results)

    def _frames(self, sop: str, frames: list[int], accept: str) -> None:
        item = self.archive.instances[sop]
        parts = [(item["syntax"], item["stored"][f]) for f in frames]
        mutate = self.plan.get("frames")
        body, spans = _canonical(parts)
        headers = {
            "Content-Type": (
                f'multipart/related; type="application/octet-stream"; boundary="{_BOUNDARY}"'
            ),
            "Content-Length": str(len(body)),
        }
        if mutate is None:
            return self._raw(200, headers, body)
        mutate(self, headers, body, spans)

    def _raw(self, status: int, headers: dict, body: bytes, stall: float = 0.0) -> None:
        head = f"HTTP/1.0 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            self.wfile.write(head.encode("latin-1") + b"\r\n")
            if stall:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                time.sleep(stall)
                self.wfile.write(body[len(body) // 2 :])
            else:
                self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout): fine

    def _drip(self, status: int, headers: dict, body: bytes) -> None:
        """The body a few bytes at a time, each within the timeout, all of it far beyond."""
        head = f"HTTP/1.0 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            self.wfile.write(head.encode("latin-1") + b"\r\n")
            for k in range(0, len(body), 4):
                self.wfile.write(body[k : k + 4])
                self.wfile.flush()
                time.sleep(_TIMEOUT_S / 3)
        except OSError:
            pass


def _canonical(parts: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[int, int]]]:
    """The multipart body of ``(syntax, bytes)`` parts and each part's body span."""
    body, spans = b"", []
    for syntax, data in parts:
        body += f"--{_BOUNDARY}\r\n".encode()
        body += f"Content-Type: application/octet-stream; transfer-syntax={syntax}\r\n".encode()
        body += f"Content-Length: {len(data)}\r\n\r\n".encode()
        spans.append((len(body), len(body) + len(data)))
        body += data + b"\r\n"
    body += f"--{_BOUNDARY}--\r\n".encode()
    return body, spans


_STATE: dict[str, Any] = {}


def _bomb(head: bytes) -> bytes:
    """A gzip member: ``head`` then 256 MiB of zeros (about 256 KiB; the zeros made once)."""
    if "bomb" not in _STATE:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        zeros = bytes(2**20)
        _STATE["bomb"] = b"".join(z.compress(zeros) for _ in range(256)) + z.flush(
            zlib.Z_FULL_FLUSH
        )
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = z.compress(head) + z.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + first + _STATE["bomb"] + end


def _server() -> dict[str, Any]:
    """One server for the module (hypothesis reruns examples inside one test call)."""
    if not _STATE:
        handler = type(
            "Handler",
            (_Fuzzed,),
            {"archive": _Archive(), "options": {}, "asked": [], "plan": {}},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.handle_error = lambda *args: None  # a mutated UID breaks its routing: fine
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        base = f"http://127.0.0.1:{port}/dicom-web"
        trap = _Trap()
        source = DicomWebSource(base, headers={"Authorization": "Bearer fuzz-SECRET"})
        source.timeout = _TIMEOUT_S
        source.register()
        archive = handler.archive
        rows, originals = {}, {}
        for name, frames in _SEEDS:
            sop = next(s for s, i in archive.instances.items() if i["file"].name == name)
            item = archive.instances[sop]
            meta = json.loads(json.dumps(item["json"]))
            meta["00020010"] = {"vr": "UI", "Value": [item["syntax"]]}
            path = dicomweb.instance_url(base, item["study"], item["series"], sop)
            rows[name] = row_from_metadata(meta, path)
            originals[name] = read_frames_numpy(str(item["file"]), frames)
        _STATE.update(
            server=server,
            handler=handler,
            base=base,
            port=port,
            trap=trap,
            source=source,
            rows=rows,
            originals=originals,
        )
    return _STATE


@pytest.fixture(autouse=True)
def _fast_policy(monkeypatch):
    monkeypatch.setattr(remote.policy, "retries", 1)
    monkeypatch.setattr(remote.policy, "backoff_s", 0.01)
    yield
    dicomweb._REFUSED.clear()
    dicomweb._QIDO_FORM.clear()


# --------------------------------------------------------------------------- the bounds
class _Alarm(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def _bounded(fn):
    """``("ok", value)`` / ``("error", exc)`` / ``("foreign", exc)`` within the bounds."""
    trap = _server()["trap"]
    hits = trap.hits
    tracemalloc.start()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, _LIMIT_S)
    t0 = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = ("ok", fn())
    except _Alarm:
        pytest.fail(f"over {_LIMIT_S}s")
    except TorchDicomError as exc:
        outcome = ("error", exc)
    except Exception as exc:  # judged below
        outcome = ("foreign", exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.monotonic() - t0
    assert peak <= _ALLOC_LIMIT, f"traced peak {peak / 2**20:.0f} MiB"
    assert trap.hits == hits, "a request went to another host"
    if outcome[0] == "foreign":
        raise AssertionError(f"foreign exception {outcome[1]!r}") from outcome[1]
    if outcome[0] == "error":
        assert "fuzz-SECRET" not in str(outcome[1])
    return outcome, elapsed


# --------------------------------------------------------------------------- frames
def _frame_mutation(data: st.DataObject, body: bytes, spans, trap_port: int):
    """``(description, handler action, how a changed read may still be right)``."""
    kind = data.draw(
        st.sampled_from(
            [
                "truncate",
                "flip",
                "response_length",
                "part_length",
                "boundary",
                "delimiter",
                "parts",
                "syntax",
                "outer_syntax",
                "media",
                "outer_media",
                "gzip",
                "redirect",
                "stall",
                "drip",
                "status",
            ]
        ),
        label="kind",
    )
    tolerate = None  # None: the read must equal the original (or raise)

    def send(h, headers, b, **kw):
        h._raw(200, headers, b, **kw)

    if kind == "truncate":
        cut = data.draw(st.integers(0, len(body) - 1), label="cut")
        lie = data.draw(st.booleans(), label="lie")

        def act(h, headers, b, spans):
            headers = {**headers, "Content-Length": str(len(b) if lie else cut)}
            h._raw(200, headers, b[:cut])

    elif kind == "flip":
        pos = data.draw(st.integers(0, len(body) - 1), label="pos")
        bit = data.draw(st.integers(0, 7), label="bit")
        inside = next((k for k, (a, z) in enumerate(spans) if a <= pos < z), None)
        if inside is not None:
            tolerate = ("flip", inside, pos - spans[inside][0], bit)

        def act(h, headers, b, spans):
            m = bytearray(b)
            m[pos] ^= 1 << bit
            h._raw(200, headers, bytes(m))

    elif kind == "response_length":
        value = data.draw(
            st.sampled_from([0, 1, -1, len(body) - 1, len(body) + 1, 10**12, "x", ""]),
            label="length",
        )

        def act(h, headers, b, spans):
            h._raw(200, {**headers, "Content-Length": str(value)}, b)

    elif kind == "part_length":
        which = data.draw(st.integers(0, len(spans) - 1), label="part")
        n = spans[which][1] - spans[which][0]
        value = data.draw(
            st.sampled_from([0, 1, n - 1, n + 1, n * 2, 10**12, 2**63, "-5", "", "0x10", " 12"]),
            label="value",
        )

        def act(h, headers, b, spans):
            old = f"Content-Length: {n}\r\n\r\n".encode()
            at = b.rfind(old, 0, spans[which][0])
            b = b[:at] + f"Content-Length: {value}\r\n\r\n".encode() + b[at + len(old) :]
            h._raw(200, headers, b)

    elif kind == "boundary":
        value = data.draw(
            st.sampled_from(
                [
                    'boundary=""',
                    "boundary=x",
                    f"boundary={_BOUNDARY}",
                    f'boundary="{_BOUNDARY}x"',
                    f'boundary="{_BOUNDARY[:-1]}"',
                    "",
                    f"BOUNDARY={_BOUNDARY}",
                ]
            ),
            label="boundary",
        )

        def act(h, headers, b, spans):
            ctype = f'multipart/related; type="application/octet-stream"; {value}'
            h._raw(200, {**headers, "Content-Type": ctype}, b)

    elif kind == "delimiter":
        which = data.draw(st.integers(0, body.count(b"--" + _BOUNDARY.encode()) - 1), label="d")
        repl = data.draw(
            st.sampled_from([b"", b"--", b"--x", b"-" + _BOUNDARY.encode(), b"\r\n"]), label="r"
        )

        def act(h, headers, b, spans):
            pieces = b.split(b"--" + _BOUNDARY.encode())
            out = pieces[0]
            for k, piece in enumerate(pieces[1:]):
                out += (repl if k == which else b"--" + _BOUNDARY.encode()) + piece
            h._raw(200, headers, out)

    elif kind == "parts":
        how = data.draw(st.sampled_from(["drop", "double", "empty"]), label="how")
        which = data.draw(st.integers(0, len(spans) - 1), label="part")

        def act(h, headers, b, spans):
            starts = [b.rfind(b"--" + _BOUNDARY.encode(), 0, a) for a, _ in spans]
            ends = [*starts[1:], b.rfind(b"--" + _BOUNDARY.encode() + b"--")]
            piece = b[starts[which] : ends[which]]
            if how == "drop":
                b = b[: starts[which]] + b[ends[which] :]
            elif how == "double":
                b = b[: ends[which]] + piece + b[ends[which] :]
            else:
                b = b[: spans[0][0] - 4].rsplit(b"--", 1)[0] + b"--" + _BOUNDARY.encode() + b"--"
            h._raw(200, {**headers, "Content-Length": str(len(b))}, b)

    elif kind in ("syntax", "outer_syntax"):
        value = data.draw(st.sampled_from(_SYNTAXES), label="syntax")
        which = data.draw(st.integers(0, len(spans) - 1), label="part")
        tolerate = ("syntax", value)

        def act(h, headers, b, spans):
            if kind == "syntax":
                at = b.rfind(b"transfer-syntax=", 0, spans[which][0])
                end = b.index(b"\r\n", at)
                b = b[:at] + f"transfer-syntax={value}".encode() + b[end:]
                headers = {**headers, "Content-Length": str(len(b))}
            else:
                headers = {
                    **headers,
                    "Content-Type": headers["Content-Type"] + f"; transfer-syntax={value}",
                }
                b = b.replace(b"; transfer-syntax=", b"; x-was=")
            h._raw(200, headers, b)

    elif kind in ("media", "outer_media"):
        value = data.draw(st.sampled_from(_MEDIA), label="media")
        which = data.draw(st.integers(0, len(spans) - 1), label="part")
        tolerate = ("media", value)

        def act(h, headers, b, spans):
            if kind == "media":
                at = b.rfind(b"Content-Type: ", 0, spans[which][0]) + len(b"Content-Type: ")
                end = b.index(b";", at)
                b = b[:at] + value.encode() + b[end:]
                headers = {**headers, "Content-Length": str(len(b))}
            else:
                rest = headers["Content-Type"].partition(";")[2]
                headers = {**headers, "Content-Type": f"{value};{rest}"}
            h._raw(200, headers, b)

    elif kind == "gzip":
        how = data.draw(st.sampled_from(["claim", "real", "deflate", "bomb"]), label="how")

        def act(h, headers, b, spans):
            if how == "real":
                b = gzip.compress(b)
            elif how == "bomb":  # 256 MiB of zeros inside a part that never closes
                head = b[: spans[0][0]].replace(b"Content-Length", b"X-Was")
                b = _bomb(head)
            encoding = "deflate" if how == "deflate" else "gzip"
            h._raw(200, {**headers, "Content-Encoding": encoding, "Content-Length": str(len(b))}, b)

    elif kind == "redirect":
        status = data.draw(st.sampled_from([301, 302, 303, 307, 308]), label="status")

        def act(h, headers, b, spans):
            h._raw(
                status, {"Location": f"http://127.0.0.1:{trap_port}/x", "Content-Length": "0"}, b""
            )

    elif kind == "stall":

        def act(h, headers, b, spans):
            h._raw(200, headers, b, stall=_TIMEOUT_S * 4)

    elif kind == "drip":

        def act(h, headers, b, spans):
            h._drip(200, headers, b[: 4 * 40] + b"\0" * 400)

    else:  # "status"
        status = data.draw(st.sampled_from([100, 199, 201, 206, 299, 304, 418, 599]), label="s")

        def act(h, headers, b, spans):
            h._raw(status, headers, b)

    return kind, act, tolerate


def _acceptable_change(name: str, row, got: np.ndarray, want: np.ndarray, tolerate, frames):
    """Whether ``got`` != the original is a mutation no client can see."""
    if tolerate is None:
        return False
    native = not row["encapsulated"]
    if tolerate[0] == "flip":
        _, part, offset, bit = tolerate
        if not native:  # inside a code-stream: the decoders' business (tests/fuzz)
            return got.shape == want.shape
        flat = want.copy()
        raw = bytearray(flat[part].tobytes())
        raw[offset] ^= 1 << bit
        flat[part] = np.frombuffer(bytes(raw), want.dtype).reshape(want[part].shape)
        return np.array_equal(got, flat)
    if tolerate[0] == "syntax":  # a native frame relabelled as another native syntax
        return native and tolerate[1] in _NATIVE and got.shape == want.shape
    return False


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(seed=st.sampled_from([name for name, _ in _SEEDS]), data=st.data())
def test_mutated_frames_responses_read_right_or_raise(seed, data):
    state = _server()
    frames = dict(_SEEDS)[seed]
    row = state["rows"][seed]
    item = next(i for i in state["handler"].archive.instances.values() if i["file"].name == seed)
    body, spans = _canonical([(item["syntax"], item["stored"][f]) for f in frames])
    kind, act, tolerate = _frame_mutation(data, body, spans, state["trap"].port)
    state["handler"].plan = {"frames": act}
    try:
        (status, value), _ = _bounded(lambda: read_frames_numpy(row, frames))
    finally:
        state["handler"].plan = {}
    want = state["originals"][seed]
    if status == "error":
        _OUTCOMES[f"frames/{kind}/error/{type(value).__name__}"] += 1
        assert str(row["path"]).split("/studies/")[0].removeprefix("dicomweb+") in str(value)
        if kind in ("stall", "drip"):
            assert type(value).__name__ == "RemoteTimeoutError", value
        return
    if np.array_equal(value, want) and value.dtype == want.dtype:
        _OUTCOMES[f"frames/{kind}/equal"] += 1
        return
    assert _acceptable_change(seed, row, value, want, tolerate, frames), (
        f"{kind}: different pixels without an error"
    )
    _OUTCOMES[f"frames/{kind}/undetectable"] += 1


# --------------------------------------------------------------------------- QIDO / metadata
def _paths(node: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for k, v in enumerate(node):
            out += _paths(v, (*at, k))
    return out


def _json_mutation(data: st.DataObject, trap_port: int, port: int):
    target = data.draw(
        st.sampled_from(["/studies", "/series", "/instances", "/metadata"]), label="target"
    )
    kind = data.draw(
        st.sampled_from(
            ["value", "delete", "huge", "bulk", "deep", "raw", "redirect", "drip", "type"]
        ),
        label="kind",
    )
    choice = data.draw(st.integers(0, 10**6), label="choice")
    absurd = data.draw(st.sampled_from(_ABSURD), label="absurd")
    raw = data.draw(
        st.sampled_from([b"", b"[", b"{}", b"null", b"1e999", b'"x"', b"[1,2]", b"\xff\xfe"]),
        label="raw",
    )
    tag = data.draw(
        st.sampled_from(["00280010", "00280011", "00280008", "00280100", "00280002", "00281053"]),
        label="tag",
    )
    uri = data.draw(
        st.sampled_from(
            [
                f"http://127.0.0.1:{trap_port}/bulk",
                f"//127.0.0.1:{trap_port}/bulk",
                f"http://localhost:{trap_port}/bulk",
                f"http://127.0.0.1:{port}@127.0.0.1:{trap_port}/bulk",
                f"http://127.0.0.1:{port}/dicom-web/../nowhere",
                "file:///etc/passwd",
                "ftp://127.0.0.1/x",
                "",
                "relative/bulk",
            ]
        ),
        label="uri",
    )

    def act(h, path, results):
        if target not in path.split("?")[0][-len(target) - 40 :] or not path.split("?")[0].endswith(
            target
        ):
            return _Dialect._json(h, results)
        results = copy.deepcopy(results)
        if kind == "raw":
            return h._raw(200, {"Content-Type": "application/dicom+json"}, raw)
        if kind == "redirect":
            return h._raw(302, {"Location": f"http://127.0.0.1:{trap_port}/x"}, b"")
        if kind == "deep":
            body = b"[" * 100_000 + b"]" * 100_000
            return h._raw(200, {"Content-Type": "application/dicom+json"}, body)
        if kind == "drip":
            body = json.dumps(results).encode()
            return h._drip(200, {"Content-Type": "application/dicom+json"}, body + b" " * 400)
        if results:
            item = results[choice % len(results)]
            if kind in ("huge", "bulk", "type"):
                if kind == "huge":
                    item[tag] = {"vr": "US" if tag != "00280008" else "IS", "Value": [absurd]}
                elif kind == "bulk":
                    item[tag] = {"vr": "DS" if tag == "00281053" else "US", "BulkDataURI": uri}
                else:
                    item[tag] = absurd
            else:
                paths = [p for p in _paths(results) if p]
                where = paths[choice % len(paths)]
                parent = results
                for key in where[:-1]:
                    parent = parent[key]
                if kind == "delete":
                    del parent[where[-1]]
                else:
                    parent[where[-1]] = absurd
        body = json.dumps(results).encode()
        h._raw(
            200, {"Content-Type": "application/dicom+json", "Content-Length": str(len(body))}, body
        )

    return f"{target}/{kind}", act


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(data=st.data())
def test_mutated_qido_and_metadata_scan_to_rows_or_errors(data):
    state = _server()
    what, act = _json_mutation(data, state["trap"].port, state["port"])
    state["handler"].plan = {"json": act}
    try:
        (status, value), _ = _bounded(lambda: state["source"].index_rows(progress=False))
        if status == "ok":
            rows, errors = value
            for _path, error_type, reason, _, _ in errors:
                assert error_type.endswith("Error") and "fuzz-SECRET" not in reason
            # A row from mutated metadata reads its first frame or raises: never a
            # foreign exception, an allocation beyond the bound or a hang.
            state["handler"].plan = {}
            for row in rows[:3]:
                _bounded(lambda row=row: read_frames_numpy(row, [0]))
            _OUTCOMES[f"scan/{what}/rows"] += 1
        else:
            _OUTCOMES[f"scan/{what}/error/{type(value).__name__}"] += 1
    finally:
        state["handler"].plan = {}


def test_zz_report():
    """Prints the outcome counts (``-s``) of the run (what tests/RELIABILITY.md reports)."""
    for key, n in sorted(_OUTCOMES.items()):
        print(f"{n:6d}  {key}")
