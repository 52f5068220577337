"""DICOMweb against a real Orthanc on loopback (tests/orthanc_server.py), and the failure
cases against a small real HTTP server of the test's own on loopback.

Every remote read equals the local read of the same file: native CT, native multi-frame,
native RGB, JPEG baseline cine (YBR_FULL_422), JPEG lossless, JPEG 2000 (grey multi-frame
and RGB)."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import logging
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import torchdicom
from torchdicom import scan
from torchdicom.errors import (
    CorruptDicomError,
    RemoteError,
    RemoteNotFoundError,
    RemoteTimeoutError,
)
from torchdicom.io.frames import read_dicomweb_batch, read_frames_numpy, route_for
from torchdicom.samples import ct_like, us_cine_like
from torchdicom.sources import dicomweb, remote
from torchdicom.sources.dicomweb import DicomWebSource, fetch_frames, iter_parts

from .orthanc_server import PASSWORD, USER, orthanc  # noqa: F401 (the fixture)

TOKEN = "tok-9d1e7c55-SECRET-bearer"
# Columns a DICOMweb row holds differently from a local row of the same file, by design:
# where the bytes are (no file: no size, offsets or code-stream spans).
_WHERE = {
    "path",
    "size",
    "mtime_ns",
    "etag",
    "transfer_syntax",
    "encapsulated",
    "pixel_offset",
    "pixel_length",
    "frame_offsets",
    "frame_lengths",
    "pixel_vr",
}


@pytest.fixture
def policy(monkeypatch) -> remote.RemotePolicy:
    """Fast retries for the failure tests (restored after each test)."""
    monkeypatch.setattr(remote.policy, "retries", 2)
    monkeypatch.setattr(remote.policy, "backoff_s", 0.01)
    return remote.policy


def _session() -> requests.Session:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return session


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """The test files, each with fresh UIDs (Orthanc de-duplicates), stored in Orthanc.

    Returns SOP Instance UID → the local copy that was uploaded.
    """
    root = tmp_path_factory.mktemp("dicomweb_samples")
    ct_like(root / "ct", n_series=1, slices=2, size=64)
    us_cine_like(root / "us", n=2, frames=4, size=48, jpeg=True)  # native + JPEG cine
    sources = sorted(
        p
        for p in (root / "ct").rglob("*")
        if p.is_file() and p.suffix in ("", ".dcm") and "masks" not in p.parts
    )
    sources += sorted(p for p in (root / "us").glob("*.dcm"))
    sources += [
        Path(get_testdata_file(name))
        for name in (
            "CT_small.dcm",  # native int16
            "emri_small.dcm",  # native multi-frame uint16
            "SC_rgb_2frame.dcm",  # native RGB, two frames
            "JPEG-LL.dcm",  # JPEG lossless
            "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, multi-frame
            "US1_J2KR.dcm",  # JPEG 2000 RGB
        )
    ]
    out = root / "uploaded"
    out.mkdir()
    found: dict[str, Path] = {}
    study = generate_uid()
    for k, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study if k % 2 else generate_uid()  # studies with 1 and many series
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{k:02d}_{src.name}"
        ds.save_as(path)
        orthanc.upload(path.read_bytes())
        found[str(ds.SOPInstanceUID)] = path
    return found


@pytest.fixture(scope="module")
def index(orthanc, uploaded):  # noqa: F811
    return scan(DicomWebSource(orthanc.dicomweb_url, session=_session()), progress=False)


def _local(uploaded: dict[str, Path], row) -> Path:
    return uploaded[row["sop_instance_uid"]]


# --------------------------------------------------------------------------- scan
def test_scan_gives_the_local_rows_without_pixels(orthanc, uploaded):  # noqa: F811
    session = _session()
    asked: list[str] = []
    session.hooks["response"].append(lambda response, **_: asked.append(response.url))
    index = scan(DicomWebSource(orthanc.dicomweb_url, session=session), progress=False)
    assert len(index.errors) == 0
    assert sorted(index.df["sop_instance_uid"]) == sorted(uploaded)
    # QIDO-RS searches and WADO-RS metadata only: no frame, no instance, no rendered image.
    assert asked and all(
        "/frames" not in url
        and "/rendered" not in url
        and url.split("?")[0].endswith(("/studies", "/series", "/instances", "/metadata"))
        for url in asked
    )
    local = scan([str(p) for p in uploaded.values()], workers=0, progress=False)
    local_rows = {r["sop_instance_uid"]: r for r in local.rows()}
    for row in index.rows():
        assert row["path"].startswith("dicomweb+http://127.0.0.1:")
        assert not remote.is_remote(row["path"])  # never through fsspec
        mine = local_rows[row["sop_instance_uid"]]
        for column, value in mine.items():
            if column in _WHERE:
                continue
            got = row[column]
            if isinstance(value, np.ndarray) or isinstance(got, np.ndarray):
                np.testing.assert_array_equal(got, value, err_msg=column)
            elif isinstance(value, float) and np.isnan(value):
                assert np.isnan(got), column
            else:
                assert got == value, (column, got, value)


def test_scan_cache_against_orthanc_asks_only_the_listing_again(orthanc, uploaded, tmp_path):  # noqa: F811
    cache = tmp_path / "orthanc.parquet"
    source = DicomWebSource(orthanc.dicomweb_url, session=_session())
    first = scan(source, cache=cache, progress=False)
    session = _session()
    asked: list[str] = []
    session.hooks["response"].append(lambda response, **_: asked.append(response.url))
    source = DicomWebSource(orthanc.dicomweb_url, session=session)
    again = scan(source, cache=cache, progress=False)
    assert asked and not any("/metadata" in url for url in asked)
    pd.testing.assert_frame_equal(
        again.df.reset_index(drop=True), first.df.reset_index(drop=True), check_like=True
    )


def test_qido_patient_ids_are_hashed_like_local_ones(orthanc, uploaded, index):  # noqa: F811
    raw = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in uploaded.values()}
    cells = index.df.astype(str).to_numpy().ravel().tolist()
    for patient_id in raw - {""}:
        assert not any(cell == patient_id for cell in cells)
    ct = next(r for r in index.rows() if _local(uploaded, r).name.endswith("CT_small.dcm"))
    assert (
        ct["patient_hash"]
        == scan([str(_local(uploaded, ct))], progress=False).df.iloc[0]["patient_hash"]
    )


def test_scan_one_study_and_one_series(orthanc, uploaded, index):  # noqa: F811
    row = index.df.iloc[0]
    study, series = row["study_instance_uid"], row["series_instance_uid"]
    by_study = scan(DicomWebSource(orthanc.dicomweb_url, study, session=_session()), progress=False)
    assert set(by_study.df["study_instance_uid"]) == {study}
    assert len(by_study.df) == int((index.df["study_instance_uid"] == study).sum())
    one = scan(
        DicomWebSource(orthanc.dicomweb_url, study, series, session=_session()), progress=False
    )
    assert list(one.df["series_instance_uid"]) == [series]


def test_source_arguments_are_checked():
    with pytest.raises(ValueError, match="http"):
        DicomWebSource("s3://bucket/dicom-web")
    with pytest.raises(ValueError, match="study"):
        DicomWebSource("http://127.0.0.1:1/dicom-web", series="1.2.3")
    with pytest.raises(ValueError, match="timeout"):
        DicomWebSource("http://127.0.0.1:1/dicom-web", timeout=0)
    # User info in the URL becomes a basic Authorization header: never in a row path.
    source = DicomWebSource("http://user:pw123456@127.0.0.1:1/dicom-web")
    assert source.base_url == "http://127.0.0.1:1/dicom-web" and "pw123456" not in repr(source)
    assert source.headers["Authorization"] == "Basic " + base64.b64encode(b"user:pw123456").decode()


# --------------------------------------------------------------------------- reads
def test_every_remote_read_equals_the_local_read(uploaded, index):
    routes = set()
    for row in index.rows():
        local = _local(uploaded, row)
        routes.add(route_for(read_frames_numpy.__globals__["row_for_path"](str(local))).name)
        assert route_for(row).name == "DICOMweb (WADO-RS frames)"
        got = read_frames_numpy(row)
        want = read_frames_numpy(str(local))
        assert got.dtype == want.dtype and got.shape == want.shape, local.name
        np.testing.assert_array_equal(got, want, err_msg=local.name)
        if int(row["frames"]) > 2:  # a selection, out of order, with a repeat
            pick = [int(row["frames"]) - 1, 0, 1, 0]
            np.testing.assert_array_equal(read_frames_numpy(row, pick), want[pick])
    # The files cover native, JPEG baseline, JPEG lossless and JPEG 2000 locally.
    assert any(name.startswith("native") for name in routes)
    assert any("JPEG 8-bit" in name for name in routes)
    assert any("lossless" in name.lower() or "by span" in name for name in routes)
    assert any("2000" in name for name in routes)


def test_each_part_keeps_its_transfer_syntax(uploaded, index):
    for row in index.rows():
        stored = str(
            pydicom.dcmread(
                _local(uploaded, row), stop_before_pixels=True
            ).file_meta.TransferSyntaxUID
        )
        parts = fetch_frames(row["path"], [1])
        assert len(parts) == 1
        if pydicom.uid.UID(stored).is_encapsulated:
            assert parts[0].transfer_syntax == stored  # the stored code-stream, unchanged
        else:
            assert not pydicom.uid.UID(parts[0].transfer_syntax or stored).is_encapsulated


def test_read_frames_by_path_and_as_tensor(uploaded, index):
    row = next(r for r in index.rows() if int(r["frames"]) > 2)
    got = torchdicom.read_frames(row["path"], [1, 2])
    np.testing.assert_array_equal(
        got.numpy(), read_frames_numpy(str(_local(uploaded, row)), [1, 2])
    )


def test_dataset_reads_concurrently_and_survives_pickling(orthanc, uploaded):  # noqa: F811
    ds = torchdicom.DicomDataset(
        DicomWebSource(orthanc.dicomweb_url, headers=orthanc.auth_header), frames="first"
    )
    want = {i: ds[i]["image"] for i in range(len(ds))}
    batch = ds.__getitems__(list(range(len(ds))))  # the batch path (threads where it pays)
    for i, item in enumerate(batch):
        np.testing.assert_array_equal(item["image"].numpy(), want[i].numpy())
    # What a worker started by spawn gets: the dataset's state, unpickled (its shared skip
    # counter crosses only through spawn itself), in a process with an empty registry.
    state = {**ds.__dict__, "_dicomweb": pickle.loads(pickle.dumps(ds._dicomweb))}
    dicomweb._REGISTERED.clear()
    dicomweb.forget_sessions()
    again = object.__new__(type(ds))
    again.__setstate__(state)  # registers the headers it brought
    np.testing.assert_array_equal(again[0]["image"].numpy(), want[0].numpy())


def test_a_batch_of_dicomweb_frames_is_requested_together_into_one_buffer(orthanc, uploaded, index):  # noqa: F811
    same = index.df[(index.df["modality"] == "CT") & (index.df["rows"] == 64)]
    assert len(same) >= 2
    session = _session()
    asked: list[str] = []
    session.hooks["response"].append(lambda response, **_: asked.append(response.url))
    dicomweb.register(orthanc.dicomweb_url, session)
    try:
        ds = torchdicom.DicomDataset(
            torchdicom.DicomIndex(same.reset_index(drop=True), index.errors.iloc[:0]),
            frames="first",
        )
        items = ds.__getitems__(list(range(len(ds))))
    finally:
        dicomweb.register(orthanc.dicomweb_url, _session())
    # One frame request per item (read_dicomweb_batch, in flight together), none again per item.
    assert sum("/frames/" in url for url in asked) == len(ds)
    # The items are slots of one (B, C, H, W) batch buffer.
    assert len({item["image"].untyped_storage().data_ptr() for item in items}) == 1
    for row, item in zip(ds.rows, items):
        want = read_frames_numpy(str(_local(uploaded, row)), 0)[0]
        np.testing.assert_array_equal(item["image"].numpy(), want)


def test_read_batch_matches_item_reads(index):
    rows = list(index.rows())
    frames = [[0] for _ in rows]
    many = read_dicomweb_batch(rows, frames, max_in_flight=4)
    for row, got in zip(rows, many):
        np.testing.assert_array_equal(got, read_frames_numpy(row, 0))


# --------------------------------------------------------------------------- auth
def test_credentials_are_needed_and_never_shown(orthanc, index, policy, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    row = index.rows()[0]
    dicomweb.register(orthanc.dicomweb_url)  # no credentials
    try:
        with pytest.raises(RemoteError) as err:
            read_frames_numpy(row)
        assert "access denied (401" in str(err.value)
        assert row["path"].removeprefix("dicomweb+") in str(err.value)  # the URL is named
        # A wrong bearer token: refused, and the token appears in no message nor log record.
        source = DicomWebSource(orthanc.dicomweb_url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert TOKEN not in repr(source)
        with pytest.raises(RemoteError) as err:
            scan(source, progress=False)
        assert TOKEN not in str(err.value)
        with pytest.raises(RemoteError) as err:
            read_frames_numpy(row)
        assert TOKEN not in str(err.value)
        secret = RemoteError(row["path"], f"echoed: Authorization: Bearer {TOKEN}")
        assert TOKEN not in str(secret) and "<redacted>" in str(secret)
    finally:
        dicomweb.register(orthanc.dicomweb_url, _session())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in logged and PASSWORD not in logged
    b64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert b64 not in logged


def test_basic_auth_through_headers_and_through_a_session(orthanc, index):  # noqa: F811
    row = index.rows()[0]
    via_headers = DicomWebSource(orthanc.dicomweb_url, headers=orthanc.auth_header)
    a = read_frames_numpy(row)
    assert len(scan(via_headers, progress=False).df) == len(index.df)
    dicomweb.register(orthanc.dicomweb_url, _session())
    np.testing.assert_array_equal(read_frames_numpy(row), a)


# --------------------------------------------------------------------------- failures
class _Faulty(BaseHTTPRequestHandler):
    """WADO-RS frames that go wrong in one way per instance UID (the path says which)."""

    hits: dict[str, int]
    release: threading.Event

    def log_message(self, *args) -> None:  # quiet
        pass

    def _multipart(self, parts: list[bytes], close: bool = True) -> bytes:
        out = b"preamble\r\n"
        for body in parts:
            out += (
                b"--BOUNDARY\r\nContent-Type: application/octet-stream;"
                b" transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n" + body + b"\r\n"
            )
        return out + (b"--BOUNDARY--\r\n" if close else b"")

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header(
            "Content-Type", 'multipart/related; type="application/octet-stream"; boundary=BOUNDARY'
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        kind = self.path.split("/instances/")[1].split("/")[0]
        self.hits[kind] = self.hits.get(kind, 0) + 1
        frame = bytes(range(8)) * 2  # one 2x4 frame of uint16
        if kind == "missing":
            self._send(404)
        elif kind == "broken":
            self._send(500)
        elif kind == "quota":  # a cloud API's spent quota: 429 with Retry-After, then OK
            if self.hits[kind] == 1:
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(200, self._multipart([frame]))
        elif kind == "flaky":
            self._send(503 if self.hits[kind] == 1 else 200, self._multipart([frame]))
        elif kind == "truncated":
            self._send(200, self._multipart([frame], close=False)[:-6])
        elif kind == "short":
            self._send(200, self._multipart([frame[:10]]))
        elif kind == "parts":
            self._send(200, self._multipart([frame]))  # two frames asked, one sent
        elif kind == "cut":  # the body ends before its Content-Length: connection closed
            body = self._multipart([frame])
            self.send_response(200)
            self.send_header("Content-Type", "multipart/related; boundary=BOUNDARY")
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        elif kind == "stall":
            self.release.wait(30)  # answers nothing until the test ends
        elif kind == "drip":  # a byte at a time, each within the timeout: never done
            body = self._multipart([frame])
            self.send_response(200)
            self.send_header("Content-Type", "multipart/related; boundary=BOUNDARY")
            self.send_header("Content-Length", str(len(body) * 100))
            self.end_headers()
            try:
                for byte in body * 100:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.release.wait(0.2):
                        return
            except OSError:
                return
        elif kind == "bomb":  # 16 MiB of zeros in 16 KiB of gzip, in a part never closed
            body = _bomb_body()
            self.send_response(200)
            self.send_header("Content-Type", "multipart/related; boundary=BOUNDARY")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "elsewhere":  # a redirect to another host (here: another port)
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.trap_port}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "moved":  # a redirect on the same server is followed
            self.send_response(307)
            self.send_header("Location", self.path.replace("/moved/", "/good/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "good":
            self._send(200, self._multipart([frame]))


@functools.cache
def _bomb_body() -> bytes:
    """One 2x4 frame then 16 MiB of zeros, in an unclosed part, gzipped (about 16 KiB)."""
    frame = bytes(range(8)) * 2
    return gzip.compress(_Faulty._multipart(None, [frame + bytes(2**24)], close=False), 9)


@pytest.fixture
def faulty() -> Iterator[tuple[str, dict[str, int]]]:
    hits: dict[str, int] = {}
    release = threading.Event()
    trap = socket.socket()  # another server no request may reach
    trap.bind(("127.0.0.1", 0))
    trap.listen(4)
    trap.settimeout(0)
    handler = type(
        "Handler",
        (_Faulty,),
        {"hits": hits, "release": release, "trap": trap, "trap_port": trap.getsockname()[1]},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    dicomweb.register(base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=0.5)
    try:
        yield base, hits
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        trap.close()


def _row(base: str, kind: str, frames: int = 1) -> dict:
    """A native 2x4 uint16 row on the faulty server."""
    row = {
        "path": f"dicomweb+{base}/studies/1.2/series/1.2.3/instances/{kind}",
        "size": -1,
        "mtime_ns": -1,
        "etag": "",
        "rows": 2,
        "columns": 4,
        "frames": frames,
        "samples_per_pixel": 1,
        "photometric": "MONOCHROME2",
        "planar_configuration": 0,
        "bits_allocated": 16,
        "bits_stored": 16,
        "high_bit": 15,
        "pixel_representation": 0,
        "transfer_syntax": "",
        "pixel_keyword": "PixelData",
        "pixel_vr": "OW",
        "pixel_offset": -1,
        "pixel_length": -1,
        "encapsulated": False,
        "has_extended_offsets": False,
        "frame_offsets": np.empty(0, np.int64),
        "frame_lengths": np.empty(0, np.int64),
    }
    return row


def _url(base: str, kind: str) -> str:
    return f"{base}/studies/1.2/series/1.2.3/instances/{kind}/frames/1"


def test_a_good_part_reads(faulty, policy):
    base, _ = faulty
    got = read_frames_numpy(_row(base, "good"))
    np.testing.assert_array_equal(got.ravel(), np.frombuffer(bytes(range(8)) * 2, "<u2"))


def test_404_is_remote_not_found_naming_the_url(faulty, policy):
    base, hits = faulty
    with pytest.raises(RemoteNotFoundError) as err:
        read_frames_numpy(_row(base, "missing"))
    assert _url(base, "missing") in str(err.value) and "404" in str(err.value)
    assert hits["missing"] == 1  # not retried


def test_5xx_is_retried_then_an_error(faulty, policy):
    base, hits = faulty
    with pytest.raises(RemoteError) as err:
        read_frames_numpy(_row(base, "broken"))
    assert not isinstance(err.value, RemoteNotFoundError | RemoteTimeoutError)
    assert _url(base, "broken") in str(err.value)
    assert "server error 500" in str(err.value) and "after 3 attempts" in str(err.value)
    assert hits["broken"] == policy.retries + 1
    assert TOKEN not in str(err.value)


def test_a_transient_5xx_is_retried_and_the_read_succeeds(faulty, policy):
    base, hits = faulty
    got = read_frames_numpy(_row(base, "flaky"))
    assert got.shape == (1, 1, 2, 4) and hits["flaky"] == 2


def test_a_429_waits_as_long_as_retry_after_says(faulty, policy, caplog):
    caplog.set_level(logging.DEBUG, logger="torchdicom.sources")
    base, hits = faulty
    got = read_frames_numpy(_row(base, "quota"))
    assert got.shape == (1, 1, 2, 4) and hits["quota"] == 2
    waits = [r.getMessage() for r in caplog.records if "retry in" in r.getMessage()]
    assert len(waits) == 1 and "server error 429" in waits[0] and "retry in 1.00s" in waits[0]


def test_truncated_multipart_is_corrupt(faulty, policy):
    base, _ = faulty
    with pytest.raises(CorruptDicomError) as err:
        read_frames_numpy(_row(base, "truncated"))
    assert _url(base, "truncated") in str(err.value) and "truncated" in str(err.value)


def test_short_part_is_corrupt_naming_the_frame(faulty, policy):
    base, _ = faulty
    with pytest.raises(CorruptDicomError) as err:
        read_frames_numpy(_row(base, "short"))
    assert err.value.frame == 0 and "frame 0" in str(err.value)
    assert "short" in str(err.value) and "10 bytes" in str(err.value)
    assert "instances/short" in str(err.value)


def test_wrong_number_of_parts_is_corrupt(faulty, policy):
    base, _ = faulty
    with pytest.raises(CorruptDicomError) as err:
        read_frames_numpy(_row(base, "parts", frames=2))
    assert "asked for 2 frame(s), the response has 1 part(s)" in str(err.value)
    assert "instances/parts/frames/1,2" in str(err.value)


def test_a_body_cut_short_is_retried_then_corrupt(faulty, policy):
    base, hits = faulty
    with pytest.raises(CorruptDicomError) as err:
        read_frames_numpy(_row(base, "cut"))
    assert _url(base, "cut") in str(err.value) and "Content-Length" in str(err.value)
    assert hits["cut"] == policy.retries + 1


def test_a_server_that_stops_answering_is_a_timeout(faulty, policy, monkeypatch):
    base, hits = faulty
    monkeypatch.setattr(policy, "retries", 1)
    with pytest.raises(RemoteTimeoutError) as err:
        read_frames_numpy(_row(base, "stall"))
    assert _url(base, "stall") in str(err.value) and "no answer" in str(err.value)
    assert hits["stall"] == 2 and TOKEN not in str(err.value)


# --------------------------------------------------------------------------- multipart
def test_a_server_dripping_bytes_within_each_read_timeout_is_a_timeout(faulty, policy):
    # Found by tests/fuzz/test_fuzz_dicomweb.py: the per-read timeout never tripped and
    # iter_content waited for a whole 256 KiB chunk, so the read lasted as long as the drip.
    base, hits = faulty
    t0 = time.monotonic()
    with pytest.raises(RemoteTimeoutError) as err:
        read_frames_numpy(_row(base, "drip"))
    assert time.monotonic() - t0 < 3 * 4 * 0.5 + 2  # (retries + 1) x 4 timeouts, at most
    assert str(err.value) == (
        f"{_url(base, 'drip')}: WADO-RS frame retrieval failed after 3 attempts:"
        " the response is slower than the timeout"
    )
    assert hits["drip"] == 3


def test_a_redirect_to_another_host_is_not_followed(faulty, policy):
    # Found by tests/fuzz/test_fuzz_dicomweb.py: requests followed a frames (or metadata,
    # or bulk data) redirect to any host, with the session's cookies and custom headers.
    base, hits = faulty
    handler_trap = next(c for c in _Faulty.__subclasses__() if c.hits is hits).trap
    with pytest.raises(RemoteError) as err:
        read_frames_numpy(_row(base, "elsewhere"))
    port = handler_trap.getsockname()[1]
    assert str(err.value) == (
        f"{_url(base, 'elsewhere')}: the server redirects to another server"
        f" (http://127.0.0.1:{port}/steal): not followed"
    )
    assert type(err.value) is RemoteError and hits["elsewhere"] == 1  # not retried
    with pytest.raises(BlockingIOError):
        handler_trap.accept()  # nobody knocked
    got = read_frames_numpy(_row(base, "moved"))  # the same server: followed
    np.testing.assert_array_equal(got.ravel(), np.frombuffer(bytes(range(8)) * 2, "<u2"))


def test_multipart_parser_streams_parts_with_their_headers():
    body = (
        b"ignored preamble\r\n--b1\r\nContent-Type: application/octet-stream;"
        b" transfer-syntax=1.2.840.10008.1.2.4.50\r\nContent-Length: 5\r\n\r\nab\r\nc\r\n"
        b"--b1\r\nContent-Type: image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90\r\n\r\n"
        b"--b1x--\r\n--b1--\r\n"
    )
    ctype = 'multipart/related; type="application/octet-stream"; boundary="b1"'
    for size in (1, 3, len(body)):  # any chunking, the delimiter split across chunks
        chunks = (body[i : i + size] for i in range(0, len(body), size))
        parts = list(iter_parts(chunks, ctype, "http://h/x"))
        assert [p.body for p in parts] == [b"ab\r\nc", b"--b1x--"]
        assert [p.transfer_syntax for p in parts] == [
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.90",
        ]
    with pytest.raises(CorruptDicomError, match="truncated"):
        list(iter_parts(iter([body[:60]]), ctype, "http://h/x"))
    # LF-only line ends (the first delimiter line sets them): a body ending in CR keeps it.
    lf = b"--b1 \nContent-Type: image/jpeg\n\nab\r\n--b1\ncontent-type:\n image/jls\n\nc\n--b1--"
    for size in (1, 2, len(lf)):
        chunks = (lf[i : i + size] for i in range(0, len(lf), size))
        parts = list(iter_parts(chunks, "multipart/related; boundary=b1", "http://h/x"))
        assert [p.body for p in parts] == [b"ab\r", b"c"]
        assert [p.transfer_syntax for p in parts] == [
            "1.2.840.10008.1.2.4.50",  # image/jpeg's default
            "1.2.840.10008.1.2.4.80",  # a folded header: image/jls's default
        ]
    with pytest.raises(CorruptDicomError, match="expected a multipart"):
        list(iter_parts(iter([b""]), "application/dicom", "http://h/x"))


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_trains_the_demo_model_from_orthanc(orthanc, uploaded, tmp_path, workers):  # noqa: F811
    import pytorch_lightning as pl

    from torchdicom.demo import DemoClassifier
    from torchdicom.transforms import Rescale

    cache = tmp_path / "index.parquet"
    dm = torchdicom.DicomDataModule(
        DicomWebSource(
            orthanc.dicomweb_url, headers={"Authorization": orthanc.auth_header["Authorization"]}
        ),
        labels=lambda path: int(path[-1]) % 2,
        frames="first",
        size=(32, 32),
        channels=1,
        batch_size=2,
        num_workers=workers,
        val_fraction=0.3,
        index_cache=cache,
        gpu_transforms=Rescale(),
    )
    model = DemoClassifier(in_channels=1, n_classes=2, size=32)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished
    assert cache.is_file()  # prepare_data scanned the server into the index cache
    assert len(dm.dataset.rows) == len(uploaded)
    assert "data" not in dm.hparams  # the source (its credentials) stays out of checkpoints


def test_datamodule_scans_a_remote_url_in_prepare_data_and_setup_reads_the_cache(tmp_path):
    """An fsspec URL is indexed once per node, in prepare_data, like a local folder; setup
    (every rank) reads that index back instead of listing the store again."""
    import fsspec

    fs = fsspec.filesystem("memory")
    names = ["CT_small.dcm", "MR_small.dcm"]
    for name in names:
        fs.pipe(f"memory://td-dm-cache/{name}", Path(get_testdata_file(name)).read_bytes())
    cache = tmp_path / "index.parquet"
    dm = torchdicom.DicomDataModule("memory://td-dm-cache", index_cache=cache, batch_size=1)
    try:
        dm.prepare_data()
        assert cache.is_file() and len(torchdicom.DicomIndex.read_parquet(cache).df) == 2
        fs.rm("memory://td-dm-cache/MR_small.dcm")  # a listing now would find one object
        dm.setup("fit")
        assert len(dm.dataset.rows) == 2  # the index prepare_data wrote
    finally:
        fs.rm("memory://td-dm-cache", recursive=True)


# --------------------------------------------------------------------------- other dialects
# A small DICOMweb server of the test's own, on loopback, that answers the way servers other
# than Orthanc do (dcm4chee-arc's capped QIDO pages with a Warning, silent caps, servers that
# ignore limit/offset or answer 204, LF-only multipart, bare single-frame bodies, parts
# labelled only by media type, refused transfer-syntax=*, no series metadata, BulkDataURI
# values). It serves real files: every read must equal the local read of the same file.
_DIALECT_FILES = (
    "CT_small.dcm",  # native int16
    "emri_small.dcm",  # native multi-frame uint16
    "JPEG-LL.dcm",  # JPEG lossless SV1 (.70)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline RGB (YBR_FULL)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS (.80)
    "MR_small_RLE.dcm",  # RLE (.5)
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 multi-frame (.90)
)
_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}
_STUDIES = ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2")


def _qido_item(**uids: str) -> dict:
    tags = {"study": "0020000D", "series": "0020000E", "sop": "00080018"}
    return {tags[k]: {"vr": "UI", "Value": [v]} for k, v in uids.items()}


class _Archive:
    """The instances the dialect server holds: real files under fresh UIDs."""

    def __init__(self) -> None:
        self.instances: dict[str, dict] = {}  # sop -> its study, series, file, frames
        for k, name in enumerate(_DIALECT_FILES):
            self.add(name, _STUDIES[k % 2], f"1.2.826.0.1.3680043.8.498.10.{k}")

    def add(self, name: str, study: str, series: str, sop: str | None = None) -> str:
        path = Path(get_testdata_file(name))
        ds = pydicom.dcmread(path)
        sop = sop or f"{series}.{len(self.instances) + 1}"
        syntax = str(ds.file_meta.TransferSyntaxUID)
        n = int(ds.get("NumberOfFrames", 1))
        if pydicom.uid.UID(syntax).is_encapsulated:
            stored = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=n))
        else:
            size = len(ds.PixelData) // n
            stored = [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        meta.StudyInstanceUID, meta.SeriesInstanceUID, meta.SOPInstanceUID = study, series, sop
        self.instances[sop] = {
            "study": study,
            "series": series,
            "file": path,
            "syntax": syntax,
            "stored": stored,
            "ds": ds,
            "json": meta.to_json_dict(bulk_data_threshold=1 << 30),
        }
        return sop

    def native(self, sop: str, frame: int) -> bytes:
        """A frame decoded by the server (Explicit VR Little Endian): colour as RGB pixel by
        pixel, as DCMTK (Orthanc) sends it. Decoded by torchdicom's local read, so that a
        lossy code-stream's decode is the same on both sides."""
        item = self.instances[sop]
        if not pydicom.uid.UID(item["syntax"]).is_encapsulated:
            return item["stored"][frame]
        chw = read_frames_numpy(str(item["file"]), frame)[0]
        return np.ascontiguousarray(chw.transpose(1, 2, 0)).tobytes()


class _Dialect(BaseHTTPRequestHandler):
    """QIDO-RS, WADO-RS metadata / frames / bulk data in the dialect of ``options``."""

    archive: _Archive
    options: dict
    asked: list[tuple[str, dict, str]]  # (path, query, Accept) of every request

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, results: list, headers: dict | None = None) -> None:
        if not results and self.options.get("no_content"):
            self.send_response(204)
            self.end_headers()
            return
        body = json.dumps(results).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _page(self, results: list, query: dict) -> None:
        """A QIDO-RS page: limit / offset obeyed, capped, or ignored, per the options."""
        if int(query.get("limit", ["0"])[0]) > self.options.get("max_limit", 1 << 30):
            return self._status(400)  # Azure: limit must be 1..200
        fields = {f for value in query.get("includefield", []) for f in value.split(",")}
        if self.options.get("strict_fields") and fields & {"00201206", "00201209"}:
            return self._status(400)  # an attribute this server does not keep
        if self.options.get("ignore_paging"):
            return self._json(results)
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", [str(len(results))])[0])
        cap = self.options.get("page_cap") or limit
        page = results[offset : offset + min(limit, cap)]
        more = len(results) - offset - len(page)
        headers = {}
        if more > 0 and cap < limit and self.options.get("warn"):
            headers["Warning"] = (
                f"299 {{+SERVICE}}: There are {more} additional results that can be requested"
            )
        self._json(page, headers)

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        accept = self.headers.get("Accept", "")
        self.asked.append((parts.path, query, accept))
        segments = parts.path.removeprefix("/dicom-web/").split("/")
        items = self.archive.instances
        counts = self.options.get("counts", True)
        if segments[0] == "bulk":  # /bulk/<sop>/<tag>: a value given as BulkDataURI
            value = self.options["bulk_values"][(segments[1], segments[2])]
            return self._multipart([("application/octet-stream", value)])
        if segments == ["studies"]:
            studies = dict.fromkeys(i["study"] for i in items.values())
            results = []
            for study in studies:
                item = _qido_item(study=study)
                n = len({i["series"] for i in items.values() if i["study"] == study})
                if counts:
                    item["00201206"] = {"vr": "IS", "Value": [n]}
                results.append(item)
            return self._page(results, query)
        study = segments[1]
        if segments[2:] == ["series"]:
            results = []
            for series in dict.fromkeys(i["series"] for i in items.values() if i["study"] == study):
                item = _qido_item(study=study, series=series)
                if counts:
                    n = sum(i["series"] == series for i in items.values())
                    item["00201209"] = {"vr": "IS", "Value": [n]}
                results.append(item)
            return self._page(results, query)
        series = segments[3]
        in_series = [(s, i) for s, i in items.items() if i["series"] == series]
        if segments[4:] == ["instances"]:
            if self.options.get("no_instance_search"):
                return self._status(400)
            return self._page(
                [_qido_item(study=study, series=series, sop=s) for s, _ in in_series], query
            )
        if segments[4:] == ["metadata"]:
            if not self.options.get("series_metadata", True):
                return self._status(404)
            return self._json([self._metadata(s) for s, _ in in_series])
        sop = segments[5]
        if segments[6:] == ["metadata"]:
            return self._json([self._metadata(sop)])
        if segments[6] == "frames":
            return self._frames(sop, [int(n) - 1 for n in segments[7].split(",")], accept)
        self._status(404)

    def _metadata(self, sop: str) -> dict:
        item = self.archive.instances[sop]
        meta = json.loads(json.dumps(item["json"]))
        if self.options.get("ts_in_metadata", True):
            meta["00020010"] = {"vr": "UI", "Value": [item["syntax"]]}
        for tag in {*self.options.get("bulk", ()), *self.options.get("bulk_un", ())}:
            if tag in meta:
                element = meta[tag]
                if tag in self.options.get("bulk_un", ()):
                    element["vr"] = "UN"  # and its value by reference
                value = "\\".join(str(v) for v in element.pop("Value"))
                self.options.setdefault("bulk_values", {})[(sop, tag)] = value.encode()
                # Built from the request's Host header, as Orthanc and dcm4chee-arc do.
                host = self.headers["Host"]
                element["BulkDataURI"] = f"http://{host}/dicom-web/bulk/{sop}/{tag}"
        for tag in self.options.get("inline_un", ()):  # a VR the server did not know
            if tag in meta:
                value = "\\".join(str(v) for v in meta[tag]["Value"]).encode()
                value += b" " * (len(value) % 2)
                meta[tag] = {"vr": "UN", "InlineBinary": base64.b64encode(value).decode()}
        for tag, uri in self.options.get("bulk_uris", {}).items():
            meta[tag] = {"vr": "OW", "BulkDataURI": uri}
        return meta

    def _frames(self, sop: str, frames: list[int], accept: str) -> None:
        item = self.archive.instances[sop]
        refuse = self.options.get("refuse", ())
        if "*" in refuse and "transfer-syntax=*" in accept:
            return self._status(406)
        if "explicit" in refuse and "transfer-syntax=" in accept:
            return self._status(400)
        stored_wanted = "transfer-syntax=*" in accept or item["syntax"] in accept
        style = self.options.get("style", "octet")
        parts = []
        for f in frames:
            if stored_wanted:
                syntax, body = item["syntax"], item["stored"][f]
            else:
                syntax, body = "1.2.840.10008.1.2.1", self.archive.native(sop, f)
            encapsulated = pydicom.uid.UID(syntax).is_encapsulated
            media = _MEDIA[syntax] if encapsulated else "application/octet-stream"
            if style == "octet":  # Orthanc's, Google's: octet-stream with the syntax
                ctype = f"application/octet-stream; transfer-syntax={syntax}"
            elif style == "media":  # image/* for code-streams, with the syntax
                ctype = f"{media}; transfer-syntax={syntax}"
            elif style == "media_no_ts":  # image/* by media type only (its default)
                ctype = media
            elif style == "outer":  # unlabelled parts: the response names type and syntax
                ctype = ""
                self.outer_syntax = syntax
            else:  # "octet_no_ts": everything unlabelled
                ctype = "application/octet-stream"
            parts.append((ctype, body))
        if self.options.get("bare") and len(parts) == 1:
            self.send_response(200)
            self.send_header("Content-Type", parts[0][0])
            self.send_header("Content-Length", str(len(parts[0][1])))
            self.end_headers()
            self.wfile.write(parts[0][1])
            return
        self._multipart(parts)

    def _multipart(self, parts: list[tuple[str, bytes]]) -> None:
        eol = b"\n" if self.options.get("lf") else b"\r\n"
        boundary = "7d3c:b8=x"  # characters that need quoting in a header
        body = b"This is a multi-part message in MIME format." + eol
        for k, (ctype, data) in enumerate(parts):
            body += f"--{boundary}  ".encode() + eol  # transport padding after it
            if ctype:
                body += f"Content-Type: {ctype}".encode() + eol
            body += f"Content-ID: <frame{k}@test>".encode() + eol
            body += b"Content-Location:" + eol + b" /dicom-web/somewhere" + eol  # folded
            if not self.options.get("lf"):
                body += f"Content-Length: {len(data)}".encode() + eol
            body += eol + data + eol
        body += f"--{boundary}--".encode() + eol + b"epilogue" + eol
        outer = getattr(self, "outer_syntax", "")
        self.send_response(200)
        self.send_header(
            "Content-Type",
            f'multipart/related; type=application/octet-stream; boundary="{boundary}"'
            + (f"; transfer-syntax={outer}" if outer else ""),
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def dialect() -> Iterator:
    """``make(**options)`` starts a dialect server; returns ``(base URL, handler class)``."""
    servers = []

    def make(**options):
        handler = type(
            "Handler", (_Dialect,), {"archive": _Archive(), "options": options, "asked": []}
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        base = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        return base, handler

    try:
        yield make
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        dicomweb._REFUSED.clear()
        dicomweb._QIDO_FORM.clear()


def _dialect_scan(base: str, **kwargs):
    source = DicomWebSource(base, headers={"Authorization": f"Bearer {TOKEN}"})
    return scan(source, progress=False, **kwargs)


def _assert_reads_equal_local(index, archive: _Archive) -> None:
    assert len(index.errors) == 0, index.errors.to_dict("records")
    assert sorted(index.df["sop_instance_uid"]) == sorted(archive.instances)
    for row in index.rows():
        local = archive.instances[row["sop_instance_uid"]]["file"]
        want = read_frames_numpy(str(local))
        got = read_frames_numpy(row)
        assert got.dtype == want.dtype and got.shape == want.shape, local.name
        np.testing.assert_array_equal(got, want, err_msg=local.name)


def _count(handler, suffix: str) -> int:
    return sum(path.endswith(suffix) for path, _, _ in handler.asked)


@pytest.mark.parametrize(
    "options",
    [
        {"style": "octet"},  # Orthanc / Google
        {"style": "media"},  # image/jpeg, image/jp2, … with their syntax
        {"style": "media_no_ts"},  # media types only: PS3.18 defaults
        {"style": "media_no_ts", "ts_in_metadata": False},  # Azure: no (0002,0010)
        {"style": "octet_no_ts", "ts_in_metadata": False},  # unlabelled code-streams
        {"style": "octet", "lf": True},  # LF-only lines, no Content-Length
        {"style": "media", "bare": True},  # one frame as a bare body, not multipart
        {"style": "outer"},  # parts unlabelled, the syntax on the response
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_frames_read_in_each_dialect_equal_the_local_read(dialect, policy, options):
    from torchdicom.io.frames import gpu_decodable, native_layout

    base, handler = dialect(**options)
    index = _dialect_scan(base)
    _assert_reads_equal_local(index, handler.archive)
    if options.get("ts_in_metadata", True) is False:
        # Unknown until read: "" in the row, and nothing that routes on it breaks.
        for row in index.rows():
            assert row["transfer_syntax"] == "" and not row["encapsulated"]
            assert route_for(row).name == "DICOMweb (WADO-RS frames)"
            assert not gpu_decodable(row)
            if not str(row["photometric"]).startswith("YBR"):
                assert native_layout(row) is not None


def test_a_server_refusing_transfer_syntax_star_is_asked_for_explicit_syntaxes(
    dialect, policy, caplog
):
    caplog.set_level(logging.DEBUG, logger="torchdicom.sources")
    base, handler = dialect(style="media", refuse={"*"})
    index = _dialect_scan(base)
    _assert_reads_equal_local(index, handler.archive)
    # Each code-stream still arrived as stored (asked for by its own syntax), not decoded.
    compressed = {
        sop
        for sop, item in handler.archive.instances.items()
        if pydicom.uid.UID(item["syntax"]).is_encapsulated
    }
    asked = [
        accept
        for path, _, accept in handler.asked
        if "/frames/" in path and path.split("/instances/")[1].split("/")[0] in compressed
    ]
    assert asked and not any("transfer-syntax=1.2.840.10008.1.2.1" in a for a in asked)
    # One 406 per server, then only the form that works.
    star = [a for p, _, a in handler.asked if "/frames/" in p and "transfer-syntax=*" in a]
    assert len(star) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused Accept" in logged and "406" in logged and TOKEN not in logged


def test_a_server_refusing_every_explicit_syntax_gets_its_default(dialect, policy):
    """transfer-syntax=* and any explicit one refused (400): the bare multipart/related
    Accept gets the server's default, Explicit VR Little Endian, decoded by the server."""
    base, handler = dialect(style="octet_no_ts", refuse={"*", "explicit"}, ts_in_metadata=False)
    grey = [s for s, i in handler.archive.instances.items() if i["ds"].SamplesPerPixel == 1]
    handler.archive.instances = {s: handler.archive.instances[s] for s in grey}
    _assert_reads_equal_local(_dialect_scan(base), handler.archive)
    # With the stored syntax known, a lossy YBR colour code-stream decoded by the server
    # (RGB, pixel by pixel) reads as the local decode.
    base, handler = dialect(style="octet_no_ts", refuse={"*", "explicit"})
    _assert_reads_equal_local(_dialect_scan(base), handler.archive)


@pytest.mark.parametrize(
    "options",
    [
        {"page_cap": 2, "warn": True, "counts": False},  # dcm4chee-arc: capped, says so
        {"page_cap": 3, "counts": False},  # a silent cap below limit
        {"page_cap": 1, "counts": True},  # counts tell where the end is
        {"ignore_paging": True},  # everything, whatever limit / offset
        {"ignore_paging": True, "counts": False, "no_content": True},
        {"no_content": True, "counts": False},  # 204 for an empty page
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_qido_paging_dialects_neither_loop_nor_drop(dialect, policy, options):
    base, handler = dialect(**options)
    for _ in range(5):  # a series of 5: pages end mid-series
        handler.archive.add("CT_small.dcm", _STUDIES[0], "1.2.826.0.1.3680043.8.498.99")
    index = _dialect_scan(base)
    assert len(index.errors) == 0
    assert sorted(index.df["sop_instance_uid"]) == sorted(handler.archive.instances)
    n_series = len({i["series"] for i in handler.archive.instances.values()})
    searches = _count(handler, "/instances")
    assert searches <= 2 * n_series + 12  # bounded: never a loop


def test_qido_refusals_of_limit_or_fields_step_down_once_per_server(dialect, policy):
    """Azure's DICOM service answers 400 to limit > 200; a server may answer 400 to an
    includefield it does not keep. The scan steps down to a plainer request, once."""
    base, handler = dialect(max_limit=200, no_content=True)
    _assert_reads_equal_local(_dialect_scan(base), handler.archive)
    limits = [int(q["limit"][0]) for p, q, _ in handler.asked if "limit" in q]
    assert limits.count(1000) == 1 and set(limits) == {1000, 200}
    base, handler = dialect(strict_fields=True)
    _assert_reads_equal_local(_dialect_scan(base), handler.archive)


def test_qido_counts_spare_the_extra_page_request(dialect, policy):
    base, handler = dialect()  # counts given, limit obeyed
    _dialect_scan(base)
    n_series = len({i["series"] for i in handler.archive.instances.values()})
    assert _count(handler, "/instances") == n_series  # one page each, no confirmation
    assert _count(handler, "/series") == len(_STUDIES)


def test_an_empty_server_answering_204_is_an_empty_index(dialect, policy):
    base, handler = dialect(no_content=True)
    handler.archive.instances.clear()
    index = _dialect_scan(base)
    assert len(index.df) == 0 and len(index.errors) == 0


def test_no_series_metadata_nor_instance_search_falls_back(dialect, policy):
    """A server without series-level metadata (404) is asked per instance; one without
    instance-level QIDO (400) is listed by its series metadata."""
    base, handler = dialect(series_metadata=False)
    _assert_reads_equal_local(_dialect_scan(base), handler.archive)
    assert _count(handler, "/metadata") == len(handler.archive.instances) + len(
        {i["series"] for i in handler.archive.instances.values()}
    )
    base, handler = dialect(no_instance_search=True)
    _assert_reads_equal_local(_dialect_scan(base), handler.archive)


def test_bulk_data_uris_are_fetched_only_for_what_the_row_needs(dialect, policy):
    evil = "http://203.0.113.9/steal"  # another host: never sent the credentials
    base, handler = dialect(
        bulk={"00281052", "00281053", "00200032"},
        inline_un={"00281050", "00281051"},
        bulk_un={"00180050"},
        bulk_uris={"00283006": f"{evil}/lut", "00091010": "/dicom-web/bulk/none/00091010"},
    )
    index = _dialect_scan(base)
    assert len(index.errors) == 0
    local = scan([str(i["file"]) for i in handler.archive.instances.values()], progress=False)
    by_file = {Path(r["path"]).name: r for r in local.rows()}
    for row in index.rows():
        want = by_file[handler.archive.instances[row["sop_instance_uid"]]["file"].name]
        for column in (
            "rescale_slope",
            "rescale_intercept",
            "position_x",
            "position_z",
            "window_center",
            "window_width",
            "slice_thickness",
        ):
            assert row[column] == want[column] or (
                np.isnan(row[column]) and np.isnan(want[column])
            ), column
    fetched = [p for p, _, _ in handler.asked if p.startswith("/dicom-web/bulk/")]
    assert fetched and not any(p.endswith(("00283006", "00091010")) for p in fetched)


def test_scan_cache_writes_the_index_and_reuses_rows_of_listed_instances(dialect, policy, tmp_path):
    base, handler = dialect()
    cache = tmp_path / "dicomweb.parquet"
    first = _dialect_scan(base, cache=cache)
    assert cache.is_file()
    assert sorted(torchdicom.DicomIndex.read(cache).df["path"]) == sorted(first.df["path"])
    handler.asked.clear()
    again = _dialect_scan(base, cache=cache)
    assert sorted(again.df["path"]) == sorted(first.df["path"])
    assert _count(handler, "/metadata") == 0  # the listing only
    # One instance more in one series, one gone from another: only the new one is described.
    sop = handler.archive.add("CT_small.dcm", _STUDIES[0], "1.2.826.0.1.3680043.8.498.10.0")
    gone = next(s for s, i in handler.archive.instances.items() if i["series"].endswith(".1"))
    del handler.archive.instances[gone]
    handler.asked.clear()
    third = _dialect_scan(base, cache=cache)
    assert sorted(third.df["sop_instance_uid"]) == sorted(handler.archive.instances)
    assert [p for p, _, _ in handler.asked if p.endswith("/metadata")] == [
        "/dicom-web/studies/{}/series/{}/metadata".format(
            _STUDIES[0], "1.2.826.0.1.3680043.8.498.10.0"
        )
    ]
    assert sop in set(torchdicom.DicomIndex.read(cache).df["sop_instance_uid"])


def test_a_code_stream_labelled_with_another_familys_syntax_is_corrupt(dialect, policy):
    # Found by tests/fuzz/test_fuzz_dicomweb.py: a JPEG baseline code-stream labelled JPEG
    # lossless (1.2.840.10008.1.2.4.70) decoded without an error but kept its YBR colour.
    base, handler = dialect(style="octet")
    sop = next(
        s for s, i in handler.archive.instances.items() if i["file"].name == "SC_rgb_jpeg_dcmtk.dcm"
    )
    handler.archive.instances[sop]["syntax"] = "1.2.840.10008.1.2.4.70"
    index = _dialect_scan(base)
    row = next(r for r in index.rows() if r["sop_instance_uid"] == sop)
    with pytest.raises(CorruptDicomError) as err:
        read_frames_numpy(row)
    assert str(err.value) == (
        f"{row['path']}: frame 0: the part says transfer syntax 1.2.840.10008.1.2.4.70,"
        " its code-stream's markers say 1.2.840.10008.1.2.4.50"
    )


def test_qido_values_that_are_not_elements_are_absent():
    # Found by tests/fuzz/test_fuzz_dicomweb.py: a series result whose (0020,1209) was a bare
    # number (not an element) made the scan raise AttributeError.
    for element in (0, None, "x", [], {"vr": "IS"}, {"Value": 7}, {"Value": []}, {"Value": [None]}):
        assert dicomweb._value({"00201209": element}, "00201209") == ""
        assert dicomweb._count({"00201209": element}, "00201209") is None
    assert dicomweb._count({"00201209": {"vr": "IS", "Value": [3]}}, "00201209") == 3


def test_a_gzip_bomb_is_cut_off_at_what_the_frames_can_hold(faulty, policy):
    # Found by tests/fuzz/test_fuzz_dicomweb.py: a 256 KiB gzip body holding 256 MiB of
    # zeros in an unclosed part grew the parser's buffer to 256 MiB.
    import tracemalloc

    base, hits = faulty
    _bomb_body()  # made before the tracing: the server runs in this process
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDicomError) as err:
            read_frames_numpy(_row(base, "bomb"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    assert str(err.value) == (
        f"{_url(base, 'bomb')}: the response is larger than 1 frame(s) of this instance can"
        " be (over 131104 bytes)"
    )
    assert hits["bomb"] == 1  # not retried


def test_metadata_with_an_empty_bits_allocated_is_corrupt():
    # Found by tests/fuzz/test_fuzz_dicomweb.py: (0028,0100) without a value (a BulkDataURI
    # on another server, not fetched) made the scan raise TypeError.
    meta = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    meta = meta.to_json_dict()
    meta["00280100"] = {"vr": "US"}
    path = "dicomweb+http://h/dicom-web/studies/1/series/2/instances/3"
    with pytest.raises(CorruptDicomError) as err:
        dicomweb.row_from_metadata(meta, path)
    assert str(err.value) == (
        f"{path}: unsupported (0028,0100) Bits Allocated -1 for PixelData"
        " (expected one of (1, 8, 16, 32, 64))"
    )
