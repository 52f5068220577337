"""Object storage through fsspec: ``memory://`` for the units, a real S3 server (moto's
``ThreadedMotoServer`` on 127.0.0.1) for the rest. Every remote read equals the local read
of the same file: native, JPEG, JPEG 2000, RLE, multi-frame."""

from __future__ import annotations

import io
import logging
import re
import socket
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

import torchdicom
from torchdicom import scan
from torchdicom.errors import (
    CorruptDicomError,
    RemoteError,
    RemoteNotFoundError,
    RemoteTimeoutError,
    StaleIndexError,
)
from torchdicom.io import header
from torchdicom.io.frames import native_layout, read_frames_numpy, route_for
from torchdicom.samples import ct_like, us_cine_like
from torchdicom.sources import remote

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
KEY_ID = "AKIATORCHDICOMTEST"
# Columns that differ between a local and a remote row of the same file by design.
_WHERE = {"path", "mtime_ns", "etag"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """One file per read route: native CT, native cine, JPEG cine, JPEG 2000, RLE."""
    root = tmp_path_factory.mktemp("remote_samples")
    ct_like(root / "ct", n_series=1, slices=3, size=64)
    us_cine_like(root / "us", n=1, frames=6, size=48, jpeg=True)
    us_cine_like(root / "cine", n=1, frames=5, size=40, jpeg=False)
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in ("", ".dcm"))
    found += [
        Path(get_testdata_file(name))
        for name in ("CT_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "MR_small_RLE.dcm")
    ]
    return found


def _local_index(files):
    return scan([str(f) for f in files], workers=0, progress=False)


def _local_of(names: dict[str, Path], url: str) -> str:
    """The local file uploaded as ``url`` (keys are unique object names)."""
    return str(names[url.rsplit("/", 1)[-1]])


def _assert_same_rows(local, far, names):
    """Row for row equal, but for where the file lives (path, mtime, etag)."""
    assert len(far.errors) == 0, far.errors
    assert len(far) == len(local)
    by_local = {_local_of(names, r["path"]): r for r in far.rows()}
    for row in local.rows():
        other = by_local[row["path"]]
        for column, value in row.items():
            if column in _WHERE:
                continue
            got = other[column]
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, got, equal_nan=value.dtype.kind == "f"), column
            elif isinstance(value, float) and np.isnan(value):
                assert np.isnan(got), column
            else:
                assert value == got, (column, value, got)


@pytest.fixture
def policy(monkeypatch):
    """Fast retries for the tests; restored afterwards."""
    monkeypatch.setattr(remote.policy, "backoff_s", 0.01)
    monkeypatch.setattr(remote.policy, "recheck_s", 0.0)
    return remote.policy


# --------------------------------------------------------------------------- memory://
@pytest.fixture
def memory(files):
    fs = fsspec.filesystem("memory")
    names = {}
    for k, f in enumerate(files):
        url = f"memory://td-test/set/{k:02d}_{f.name}"
        fs.pipe(url, f.read_bytes())
        names[url.rsplit("/", 1)[-1]] = f
    yield fs, names
    fs.rm("/td-test", recursive=True)


def test_memory_scan_equals_local_and_keeps_url_size_etag(files, memory):
    _fs, names = memory
    far = scan("memory://td-test/set", progress=False)
    _assert_same_rows(_local_index(files), far, names)
    assert all(p.startswith("memory://") for p in far.df["path"])
    assert (far.df["mtime_ns"] == -1).all()
    assert all(far.df["etag"])  # memory fs: its creation time
    sizes = [Path(_local_of(names, p)).stat().st_size for p in far.df["path"]]
    assert sizes == far.df["size"].tolist()


def test_memory_reads_equal_local_on_every_route(files, memory):
    _fs, names = memory
    far = scan("memory://td-test/set", progress=False)
    local = {r["path"]: r for r in _local_index(files).rows()}
    routes = set()
    for row in far.rows():
        mine = local[_local_of(names, row["path"])]
        routes.add(route_for(row).name)
        np.testing.assert_array_equal(read_frames_numpy(row), read_frames_numpy(mine))
        # One frame from the middle, and a URL instead of a row.
        last = int(row["frames"]) - 1
        np.testing.assert_array_equal(
            torchdicom.read_frames(row["path"], last).numpy(), read_frames_numpy(mine, last)
        )
    assert {"native", "JPEG 8-bit by span (Pillow)", "JPEG 2000 by span (openjpeg)"} <= routes


def test_memory_retries_server_errors_then_gives_up(memory, policy, monkeypatch):
    fs, names = memory
    url = "memory://td-test/set/" + next(iter(names))
    real = fs.cat_file
    calls = []

    def flaky(path, start=None, end=None, **kw):
        calls.append(path)
        if len(calls) <= 2:
            raise OSError("503 Service Unavailable")
        return real(path, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "cat_file", flaky)
    assert remote.read_range(url, 128, 132) == b"DICM"
    assert len(calls) == 3

    def down(path, start=None, end=None, **kw):
        calls.append(path)
        raise OSError("500 Internal Server Error")

    calls.clear()
    monkeypatch.setattr(fs, "cat_file", down)
    with pytest.raises(RemoteError, match="after 4 attempts") as err:
        remote.read_range(url, 0, 10)
    assert url in str(err.value)
    assert len(calls) == policy.retries + 1  # bounded


def test_memory_short_body_and_416_are_corrupt(memory, policy, monkeypatch):
    fs, names = memory
    url = "memory://td-test/set/" + next(u for u, f in names.items() if f.name == "CT_small.dcm")
    row = scan(url, progress=False).rows()[0]
    real = fs.cat_file
    monkeypatch.setattr(
        fs, "cat_file", lambda p, start=None, end=None, **kw: real(p, start, end)[:-7]
    )
    with pytest.raises(CorruptDicomError, match="returned"):
        read_frames_numpy(row)

    def not_satisfiable(p, start=None, end=None, **kw):
        raise OSError("416 Requested Range Not Satisfiable")

    monkeypatch.setattr(fs, "cat_file", not_satisfiable)
    with pytest.raises(CorruptDicomError, match="416"):
        read_frames_numpy(row)


def test_416_inside_a_key_name_is_not_a_range_error(memory, policy, monkeypatch):
    """A transient failure whose message names a key with '416' in it is retried, not
    reported as a range past the end of the object."""
    fs, names = memory
    url = "memory://td-test/set/" + next(u for u, f in names.items() if f.name == "CT_small.dcm")
    row = scan(url, progress=False).rows()[0]
    real = fs.cat_file
    calls = []

    def flaky(p, start=None, end=None, **kw):
        calls.append(p)
        if len(calls) == 1:
            raise ConnectionResetError("reset reading /bucket/1.2.840.416.5/scan_416.dcm")
        return real(p, start, end)

    monkeypatch.setattr(fs, "cat_file", flaky)
    np.testing.assert_array_equal(
        read_frames_numpy(row), read_frames_numpy(str(names[url.rsplit("/", 1)[-1]]))
    )
    assert len(calls) == 2
    assert remote._is_range_error(OSError("416 Requested Range Not Satisfiable"))
    assert remote._is_range_error(OSError("HTTP status=416, InvalidRange"))


def test_header_parse_stats_each_object_once(memory, monkeypatch):
    """The frame count and the frame spans of an encapsulated object reuse the size the
    header parse stat'ed: one info request per object."""
    _fs, names = memory
    calls = []
    real = remote.info
    monkeypatch.setattr(remote, "info", lambda *a, **k: calls.append(a) or real(*a, **k))
    for name, f in names.items():
        calls.clear()
        row = header.remote_header_row("memory://td-test/set/" + name)
        assert len(calls) == 1, (f.name, len(calls))
        if row["encapsulated"]:
            assert len(row["frame_offsets"]) == int(row["frames"])


def test_cached_remote_rescan_stats_each_object_once(memory, tmp_path, monkeypatch):
    """A rescan against an index cache: one info request per cached object (not two, not
    one per object never cached); an object rewritten since is parsed again."""
    fs, _names = memory
    cache = tmp_path / "index.parquet"
    first = scan("memory://td-test/set", cache=cache, progress=False)
    calls = []
    real = remote.info
    monkeypatch.setattr(remote, "info", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    again = scan("memory://td-test/set", cache=cache, progress=False)
    assert sorted(calls) == sorted(first.df["path"]) and len(again) == len(first)
    url = first.df["path"][0]
    fs.pipe(url, fs.cat_file(url))  # same bytes and size, a new version (etag)
    parsed = []
    real_row = header.remote_header_row
    monkeypatch.setattr(
        header, "remote_header_row", lambda u, *a: parsed.append(u) or real_row(u, *a)
    )
    third = scan("memory://td-test/set", cache=cache, progress=False)
    assert parsed == [url] and third.df["etag"][0] != first.df["etag"][0]


def test_cached_remote_failure_is_parsed_again_after_a_same_size_fix(files, tmp_path):
    """A remote object that failed, then replaced by a valid one of the same size (only
    its ETag tells): a rescan against the index cache indexes it, not the old failure."""
    fs = fsspec.filesystem("memory")
    good = files[-3].read_bytes()  # CT_small.dcm
    bad = bytes(len(good))  # same size, no DICOM in it
    url = "memory://td-refix/one.dcm"
    cache = tmp_path / "index.parquet"
    fs.pipe(url, bad)
    try:
        first = scan("memory://td-refix", cache=cache, progress=False)
        assert len(first) == 0 and len(first.errors) == 1
        fs.pipe(url, good)
        again = scan("memory://td-refix", cache=cache, progress=False)
    finally:
        fs.rm("/td-refix", recursive=True)
    assert len(again) == 1 and len(again.errors) == 0


def test_a_server_ignoring_ranges_is_an_error_not_wrong_bytes(memory, policy, monkeypatch):
    fs, names = memory
    url = "memory://td-test/set/" + next(u for u, f in names.items() if f.name == "CT_small.dcm")
    row = scan(url, progress=False).rows()[0]
    real = fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda p, start=None, end=None, **kw: real(p))
    with pytest.raises(RemoteError, match="ignores range"):
        read_frames_numpy(row)
    with pytest.raises(RemoteError, match="ignores range"):
        remote.read_ranges([url], [128], [132])


def test_memory_missing_and_changed_objects(memory, policy):
    fs, names = memory
    url = "memory://td-test/set/" + next(u for u, f in names.items() if f.name == "CT_small.dcm")
    with pytest.raises(RemoteNotFoundError, match=re.escape("memory://td-test/set/nope.dcm")):
        torchdicom.read_frames("memory://td-test/set/nope.dcm")
    row = scan(url, progress=False).rows()[0]
    fs.pipe(url, fs.cat_file(url) + b"\0\0")  # grown: size differs
    with pytest.raises(StaleIndexError, match="rescan"):
        read_frames_numpy(row)


def test_file_urls_are_local_paths(files):
    f = files[-3]  # CT_small.dcm
    np.testing.assert_array_equal(
        torchdicom.read_frames(f"file://{f}").numpy(), torchdicom.read_frames(f).numpy()
    )
    assert not remote.is_remote(f"file://{f}")
    assert remote.is_remote("s3://bucket/key") and remote.is_remote("memory://x")


def test_urls_lose_user_info_and_signatures():
    shown = remote.display("https://alice:pa55word@host/a.dcm?X-Amz-Signature=abc123&x=1")
    assert "pa55word" not in shown and "abc123" not in shown and "x=1" in shown


def test_signed_url_tokens_of_every_store_are_scrubbed():
    url = (
        "https://h/a.dcm?X-Goog-Signature=g00gsig&X-Goog-Credential=cred&GoogleAccessId=gid"
        "&Policy=pol1&Key-Pair-Id=kp1&access_token=tok1&sig=sas1&x=1"
    )
    shown = remote.display(url)
    for secret in ("g00gsig", "cred", "gid", "pol1", "kp1", "tok1", "sas1"):
        assert secret not in shown
    assert "x=1" in shown


def test_errors_about_urls_never_show_tokens_or_user_info():
    from torchdicom.errors import CorruptDicomError

    err = CorruptDicomError(
        "https://bob:hunter22@h/a.dcm?X-Amz-Signature=s1gned", "bad frame", frame=2
    )
    assert "hunter22" not in str(err) and "s1gned" not in str(err)
    assert "hunter22" not in err.path and "s1gned" not in err.path
    assert "h/a.dcm" in str(err) and "bad frame" in str(err)


def test_memory_pydicom_header_parse_reads_by_range(files, memory, monkeypatch):
    """The full (non-lean) header parse reads through read_range (retries, timeout),
    not an fsspec file object, and gives the local row."""
    from torchdicom.io.header import header_row

    fs, names = memory

    def no_open(*args, **kwargs):
        raise AssertionError("fsspec file object opened")

    monkeypatch.setattr(type(fs), "open", no_open)
    calls = []
    real = remote.read_range
    monkeypatch.setattr(
        remote, "read_range", lambda url, a, b: calls.append((a, b)) or real(url, a, b)
    )
    for url in sorted(names):
        url = "memory://td-test/set/" + url
        mine = header_row(_local_of(names, url), lean=False)
        far = header_row(url, lean=False)
        assert {k: str(v) for k, v in far.items() if k not in _WHERE} == {
            k: str(v) for k, v in mine.items() if k not in _WHERE
        }
    assert calls and all(0 <= a <= b for a, b in calls)


def test_memory_batch_leaves_other_shapes_and_missing_frames_to_the_item_path(files, memory):
    """read_native_batch never fills a slot whose shape differs from the row's (same byte
    count, other layout) nor reads a frame the row does not hold."""
    from torchdicom.io.frames import read_native_batch

    _fs, _names = memory
    far = scan("memory://td-test/set", progress=False)
    row = next(r for r in far.rows() if native_layout(r) is not None and int(r["frames"]) > 1)
    c, h, w = native_layout(row).shape
    dtype = native_layout(row).dtype
    assert read_native_batch([row], [0], np.zeros((1, c, h, w), dtype)) == [True]
    other = np.zeros((1, c, h * w // 2, 2), dtype)  # the frame's byte count, another shape
    assert read_native_batch([row], [0], other) == [False] and not other.any()
    for frame in (int(row["frames"]), -1):
        slot = np.zeros((1, c, h, w), dtype)
        assert read_native_batch([row], [frame], slot) == [False] and not slot.any()


def test_uid_named_objects_are_probed_in_one_batch(files, monkeypatch):
    """Objects with a dot in the name (UID file names) are probed for DICM together."""
    fs = fsspec.filesystem("memory")
    data = files[-3].read_bytes()  # CT_small.dcm
    uids = [f"memory://td-uids/1.2.840.10008.{k}" for k in range(5)]
    for url in uids:
        fs.pipe(url, data)
    fs.pipe("memory://td-uids/notes.txt", b"tiny")
    fs.pipe("memory://td-uids/img.png", b"\x89PNG" + bytes(300))
    one_by_one, batches = [], []
    real_range, real_batch = remote.read_range, remote._cat_ranges
    monkeypatch.setattr(remote, "read_range", lambda *a: one_by_one.append(a) or real_range(*a))
    monkeypatch.setattr(remote, "_cat_ranges", lambda *a: batches.append(a) or real_batch(*a))
    try:
        found = remote.looks_like_dicom(remote.find("memory://td-uids", progress=False))
    finally:
        fs.rm("/td-uids", recursive=True)
    assert [u.rsplit("/", 1)[-1] for u in found] == [u.rsplit("/", 1)[-1] for u in uids]
    assert len(batches) == 1 and not one_by_one


# --------------------------------------------------------------------------- S3 (moto)
@pytest.fixture(scope="module")
def s3_server():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # the dev extra installs it
        pytest.skip(f"moto[server,s3] is not installed ({exc}): pip install -e .[dev]")
    try:
        import s3fs  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"s3fs is not installed ({exc}): pip install -e .[dev]")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"cannot start moto's S3 server on 127.0.0.1: {exc}")
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_server, files):
    options = {"key": KEY_ID, "secret": SECRET, "endpoint_url": s3_server}
    remote.configure("s3", options)
    fs = remote.filesystem("s3://x")
    fs.mkdir("td-bucket")
    names = {}
    for k, f in enumerate(files):
        url = f"s3://td-bucket/set/{k:02d}_{f.name}"
        fs.pipe(url, f.read_bytes())
        names[url.rsplit("/", 1)[-1]] = f
    yield fs, options, names
    remote.configure("s3", {})


def test_s3_scan_equals_local_with_etags(files, s3):
    _fs, options, names = s3
    far = scan("s3://td-bucket/set", progress=False, storage_options=options)
    _assert_same_rows(_local_index(files), far, names)
    assert far.df["path"].tolist() == sorted(f"s3://td-bucket/set/{n}" for n in names)
    assert all(len(e) >= 32 for e in far.df["etag"])  # S3 ETags (MD5 of the object)


def test_s3_listing_has_its_own_time_limit(s3, policy, monkeypatch):
    """A listing of a prefix (all its pages) runs under list_timeout_s, requests under
    timeout_s: a large bucket is not cut off at one request's limit."""
    fs, _options, _names = s3
    monkeypatch.setattr(policy, "list_timeout_s", 123.0)
    seen = {}
    for owner, name in ((fs, "isfile"), (remote, "_listing")):
        real = getattr(owner, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name] = kwargs.get("timeout")
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    assert len(remote.find("s3://td-bucket/set", progress=False)) == len(_names)
    assert seen == {"_listing": 123.0, "isfile": policy.timeout_s}


def test_s3_reads_equal_local_on_every_route(files, s3):
    _fs, options, names = s3
    far = scan("s3://td-bucket/set", progress=False, storage_options=options)
    local = {r["path"]: r for r in _local_index(files).rows()}
    for row in far.rows():
        np.testing.assert_array_equal(
            read_frames_numpy(row), read_frames_numpy(local[_local_of(names, row["path"])])
        )


def test_s3_batch_is_one_cat_ranges_call(s3, monkeypatch):
    fs, options, _names = s3
    ds = torchdicom.DicomDataset("s3://td-bucket/set", storage_options=options, frames="first")
    layouts = [native_layout(r) for r in ds.rows]
    native = [i for i, lay in enumerate(layouts) if lay == layouts_of_ct(layouts)]
    assert len(native) >= 3  # the CT slices
    calls = {"cat_ranges": 0, "cat_file": 0}
    for name in calls:
        real = getattr(fs, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(fs, name, counted)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, native), batch_size=len(native), collate_fn=torchdicom.Collate()
    )
    batch = next(iter(loader))
    assert calls == {"cat_ranges": 1, "cat_file": 0}
    for k, i in enumerate(native):
        np.testing.assert_array_equal(
            batch["image"][k].numpy(), read_frames_numpy(ds.rows[i], 0)[0]
        )


def test_storage_options_are_kept_per_bucket(s3, files, policy, monkeypatch):
    """Two buckets with different options in one process: each object is read with its
    bucket's, whichever was registered last (here: an endpoint where nothing listens)."""
    _fs, options, names = s3
    monkeypatch.setattr(remote, "_OPTIONS", dict(remote._OPTIONS))  # restored afterwards
    monkeypatch.setattr(policy, "retries", 0)
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    elsewhere = {
        "key": "OTHERKEY",
        "secret": "other-secret-value",
        "endpoint_url": dead,
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
    }
    index = scan("s3://td-bucket/set", progress=False, storage_options=options)
    remote.configure("s3://td-elsewhere/x", elsewhere)  # the protocol's default now
    assert remote.options("s3://td-elsewhere/y")["endpoint_url"] == dead
    assert remote.options("s3://td-bucket/set/a.dcm")["endpoint_url"] == options["endpoint_url"]
    row = next(r for r in index.rows() if r["path"].endswith("CT_small.dcm"))
    np.testing.assert_array_equal(
        read_frames_numpy(row), read_frames_numpy(str(names[row["path"].rsplit("/", 1)[-1]]))
    )
    with pytest.raises(RemoteError) as err:
        remote.read_range("s3://td-elsewhere/x/a.dcm", 0, 4)
    assert "other-secret-value" not in str(err.value) and "OTHERKEY" not in str(err.value)
    remote.configure("s3", {})  # a protocol reset clears its buckets too
    assert remote.options("s3://td-bucket/set/a.dcm") == {}


def test_a_batch_across_buckets_reads_each_with_its_options(s3_server, s3, files, monkeypatch):
    """Ranges of two buckets with different options in one batch: one batch call per
    filesystem, each range with its bucket's."""
    fs, options, _names = s3
    monkeypatch.setattr(remote, "_OPTIONS", dict(remote._OPTIONS))  # restored afterwards
    other = {**options, "endpoint_url": s3_server.replace("127.0.0.1", "localhost")}
    data = files[-3].read_bytes()
    remote.configure("s3://td-bucket/set", options)
    remote.configure("s3://td-second/set", other)
    fs_other = remote.filesystem("s3://td-second/set")
    assert fs_other is not fs
    fs_other.mkdir("td-second")
    for url in ("s3://td-bucket/mixed/a.dcm", "s3://td-second/set/b.dcm"):
        remote.filesystem(url).pipe(url, data)
    calls = []
    real = remote._cat_ranges
    monkeypatch.setattr(
        remote, "_cat_ranges", lambda u, a, b: calls.append(list(u)) or real(u, a, b)
    )
    urls = ["s3://td-bucket/mixed/a.dcm", "s3://td-second/set/b.dcm"] * 2
    got = remote.read_ranges(urls, [0, 128, 128, 0], [4, 132, 132, 4])
    assert got == [data[0:4], b"DICM", b"DICM", data[0:4]]
    assert sorted(calls) == [["s3://td-bucket/mixed/a.dcm"] * 2, ["s3://td-second/set/b.dcm"] * 2]


def test_s3_missing_object_names_the_url(s3, policy):
    with pytest.raises(RemoteNotFoundError, match=re.escape("s3://td-bucket/set/absent.dcm")):
        torchdicom.read_frames("s3://td-bucket/set/absent.dcm")
    with pytest.raises(RemoteNotFoundError):
        scan("s3://td-bucket/no-such-prefix", progress=False)


def test_s3_changed_object_is_stale(s3, files, policy):
    fs, _options, _names = s3
    url = "s3://td-bucket/changed/one.dcm"
    ct = files[-3].read_bytes()
    fs.pipe(url, ct)
    row = scan(url, progress=False).rows()[0]
    read_frames_numpy(row)
    changed = bytearray(ct)
    changed[-1] ^= 0xFF  # same size, other bytes: only the ETag tells
    fs.pipe(url, bytes(changed))
    with pytest.raises(StaleIndexError, match="ETag changed"):
        read_frames_numpy(row)


def test_s3_secret_never_in_errors_or_logs(s3, policy, caplog, monkeypatch):
    fs, _options, _names = s3
    caplog.set_level(logging.DEBUG, logger="torchdicom")
    raised = []
    with pytest.raises(RemoteNotFoundError) as err:
        torchdicom.read_frames("s3://td-bucket/set/absent.dcm")
    raised.append(err.value)

    def leaky(*args, **kwargs):  # a client error that quotes the credentials
        raise OSError(f"503 SlowDown: signature for {KEY_ID}:{SECRET} rejected")

    monkeypatch.setattr(fs, "cat_file", leaky)
    with pytest.raises(RemoteError) as err:
        remote.read_range("s3://td-bucket/set/any.dcm", 0, 10)
    raised.append(err.value)
    assert "<redacted>" in str(err.value)
    for exc in raised:
        assert SECRET not in str(exc) and KEY_ID not in str(exc)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("torchdicom")]
    assert ours  # the retries were logged, scrubbed
    assert not any(SECRET in m or KEY_ID in m for m in ours)


def layouts_of_ct(layouts):
    """The native layout most rows share (the CT slices)."""
    found = [lay for lay in layouts if lay is not None]
    return max(found, key=found.count)


@pytest.fixture
def silent_server():
    """A TCP server on loopback that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_server_that_never_answers_times_out(s3_server, silent_server, policy, monkeypatch):
    monkeypatch.setattr(policy, "retries", 1)
    monkeypatch.setattr(policy, "timeout_s", 2.0)
    options = {
        "key": KEY_ID,
        "secret": SECRET,
        "endpoint_url": silent_server,
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
    }
    saved = remote.options("s3")
    started = time.monotonic()
    try:
        with pytest.raises(RemoteTimeoutError) as err:
            scan("s3://td-silent/x.dcm", progress=False, storage_options=options)
    finally:
        remote.configure("s3", saved)
    assert time.monotonic() - started < 15
    assert "s3://td-silent/x.dcm" in str(err.value) and SECRET not in str(err.value)


def test_datamodule_trains_one_short_epoch_from_s3(s3):
    import pytorch_lightning as pl

    from torchdicom.demo import DemoClassifier
    from torchdicom.transforms import Rescale

    _fs, options, _names = s3
    dm = torchdicom.DicomDataModule(
        "s3://td-bucket/set",
        storage_options=options,
        labels=lambda path: int(path.endswith(".dcm") and "_ct" in path.rsplit("/", 1)[-1]),
        frames="first",
        size=(32, 32),
        channels=1,
        batch_size=2,
        val_fraction=0.3,
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
    assert "storage_options" not in dm.hparams  # credentials stay out of checkpoints
    from torchdicom.data.prefetch import PrefetchDataLoader

    # A URL's loaders prefetch the next batch's ranges (a local folder's do not need to).
    assert isinstance(dm.train_dataloader(), PrefetchDataLoader)


def test_s3_compressed_frames_are_one_request_each(s3, policy, monkeypatch):
    fs, options, names = s3
    monkeypatch.setattr(policy, "recheck_s", 3600.0)  # no size / ETag request in the count
    index = scan("s3://td-bucket/set", progress=False, storage_options=options)
    cine = next(r for r in index.rows() if route_for(r).name == "JPEG 8-bit by span (Pillow)")
    read_frames_numpy(cine, 0)  # the size / ETag check, once
    calls = []
    real = fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    got = read_frames_numpy(cine, [1, 3, 4])
    assert len(calls) == 3  # one ranged GET per frame, no header, no whole file
    local = read_frames_numpy(str(names[cine["path"].rsplit("/", 1)[-1]]), [1, 3, 4])
    np.testing.assert_array_equal(got, local)


def test_s3_decoded_frame_cache_serves_remote_files(s3, tmp_path, monkeypatch):
    fs, options, _ = s3
    ds = torchdicom.DicomDataset(
        "s3://td-bucket/set", storage_options=options, frames="first", cache=tmp_path / "frames"
    )
    jpeg = next(i for i, r in enumerate(ds.rows) if route_for(r).name.startswith("JPEG 8-bit"))
    first = ds[jpeg]["image"]
    calls = []
    real = fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    again = ds[jpeg]["image"]
    assert calls == []  # decoded once, then from the cache
    assert torch.equal(first, again)


def test_s3_dataloader_workers_read_remote_files(s3):
    _fs, options, _ = s3
    ds = torchdicom.DicomDataset("s3://td-bucket/set", storage_options=options, frames="first")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=2, collate_fn=torchdicom.Collate()
    )
    seen = {b["path"][0]: b["image"][0] for b in loader}
    assert len(seen) == len(ds)
    for i, row in enumerate(ds.rows):
        assert torch.equal(seen[row["path"]], ds[i]["image"])


@pytest.fixture
def s3_requests(s3):
    """The HTTP requests the S3 client sends from now on, by operation (``GetObject``,
    ``HeadObject``, ``ListObjectsV2``): counted where botocore sends them, so retries and
    every range of a ``cat_ranges`` batch count, and nothing is answered in their place."""
    fs, _options, _names = s3
    sent: dict[str, int] = {}

    def count(event_name: str, **kwargs) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        sent[operation] = sent.get(operation, 0) + 1

    events = fs.s3.meta.events
    events.register("before-send.s3", count, unique_id="td-test-count")
    yield sent
    events.unregister("before-send.s3", unique_id="td-test-count")


@pytest.fixture
def block_cache(tmp_path, monkeypatch):
    """A block cache in a temporary directory, small blocks (objects span several)."""
    monkeypatch.setattr(remote.policy, "block_cache_dir", str(tmp_path / "blocks"))
    monkeypatch.setattr(remote.policy, "block_cache_block_bytes", 8192)
    return tmp_path / "blocks"


def _epoch_images(ds, num_workers: int = 0) -> dict[str, torch.Tensor]:
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=num_workers, collate_fn=torchdicom.Collate()
    )
    return {b["path"][0]: b["image"][0] for b in loader}


def test_s3_block_cache_second_epoch_makes_no_range_requests(s3, block_cache, s3_requests):
    """Epoch 1 in two DataLoader worker processes fills the cache; epoch 2 (another
    process) reads every route from it with no GET, and the values equal the local read."""
    _fs, options, names = s3
    ds = torchdicom.DicomDataset("s3://td-bucket/set", storage_options=options, frames="first")
    first = _epoch_images(ds, num_workers=2)
    assert any(block_cache.rglob("*.*"))  # written by the workers
    s3_requests.clear()
    cache = remote.block_cache()
    hits = cache.hits
    second = _epoch_images(ds)
    assert s3_requests.get("GetObject", 0) == 0, s3_requests
    assert cache.hits > hits and cache.misses == 0
    # The batch path (one cat_ranges call per batch) reads through the cache too.
    ct = [
        i
        for i, r in enumerate(ds.rows)
        if native_layout(r) == layouts_of_ct([native_layout(r) for r in ds.rows])
    ]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, ct), batch_size=len(ct), collate_fn=torchdicom.Collate()
    )
    batch = next(iter(loader))
    assert s3_requests.get("GetObject", 0) == 0, s3_requests
    for path, image in second.items():
        local = read_frames_numpy(str(names[path.rsplit("/", 1)[-1]]), 0)[0]
        np.testing.assert_array_equal(image.numpy(), local)
        assert torch.equal(first[path], image)
    for k, i in enumerate(ct):
        assert torch.equal(batch["image"][k], second[ds.rows[i]["path"]])


def test_s3_block_cache_never_serves_blocks_of_an_old_etag(
    s3, files, policy, block_cache, s3_requests
):
    """Same key, same size, other bytes: the old row is stale, and the rescanned row reads
    the new bytes from the store, not the cached blocks of the old version."""
    fs, _options, _names = s3
    url = "s3://td-bucket/cached/one.dcm"
    ct = files[-3].read_bytes()  # CT_small.dcm
    fs.pipe(url, ct)
    row = scan(url, progress=False).rows()[0]
    old = read_frames_numpy(row)
    s3_requests.clear()
    np.testing.assert_array_equal(read_frames_numpy(row), old)
    assert s3_requests.get("GetObject", 0) == 0  # cached
    changed = bytearray(ct)
    changed[-2048:] = bytes(255 - b for b in changed[-2048:])  # the last pixel rows
    fs.pipe(url, bytes(changed))
    with pytest.raises(StaleIndexError, match="ETag changed"):
        read_frames_numpy(row)
    new_row = scan(url, progress=False).rows()[0]
    assert new_row["etag"] != row["etag"] and new_row["size"] == row["size"]
    s3_requests.clear()
    got = read_frames_numpy(new_row)
    assert s3_requests.get("GetObject", 0) >= 1
    expected = pydicom.dcmread(io.BytesIO(bytes(changed))).pixel_array
    assert not np.array_equal(got, old)
    np.testing.assert_array_equal(got[0, 0], expected)


def test_block_cache_unwritable_warns_once_and_reads_stay_correct(
    files, memory, tmp_path, monkeypatch
):
    _fs, names = memory
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setattr(remote.policy, "block_cache_dir", str(blocker / "blocks"))
    far = scan("memory://td-test/set", progress=False)
    with pytest.warns(RuntimeWarning, match="block cache") as caught:
        for _ in range(2):
            for row in far.rows():
                np.testing.assert_array_equal(
                    read_frames_numpy(row), read_frames_numpy(_local_of(names, row["path"]))
                )
    assert len([w for w in caught if "block cache" in str(w.message)]) == 1
    assert remote.block_cache() is None


def test_block_cache_stays_within_its_size_bound(files, memory, tmp_path, monkeypatch):
    _fs, names = memory
    directory = tmp_path / "blocks"
    monkeypatch.setattr(remote.policy, "block_cache_dir", str(directory))
    monkeypatch.setattr(remote.policy, "block_cache_block_bytes", 4096)
    monkeypatch.setattr(remote.policy, "block_cache_max_bytes", 64 * 1024)
    far = scan("memory://td-test/set", progress=False)
    total = sum(int(s) for s in far.df["size"])
    assert total > 2 * 64 * 1024  # more than the bound passes through the cache
    for row in far.rows():
        np.testing.assert_array_equal(
            read_frames_numpy(row), read_frames_numpy(_local_of(names, row["path"]))
        )
    held = sum(p.stat().st_size for p in directory.rglob("*.*"))
    assert 0 < held <= 64 * 1024 + 4096 * 16  # evicted down each time it passes the bound


def test_block_cache_serves_any_range_exactly(tmp_path, monkeypatch):
    """Ranges across block edges, partly cached, past the end, repeated: the bytes the
    object holds there; only blocks not yet cached are fetched."""
    fs = fsspec.filesystem("memory")
    data = np.random.default_rng(5).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    url = "memory://td-blocks/obj"
    fs.pipe(url, data)
    monkeypatch.setattr(remote.policy, "block_cache_dir", str(tmp_path / "blocks"))
    monkeypatch.setattr(remote.policy, "block_cache_block_bytes", 4096)
    version = (len(data), remote.info(url)[1])
    fetched = []
    real = remote._fetch_exact
    monkeypatch.setattr(
        remote, "_fetch_exact", lambda u, a, b: fetched.append(list(zip(a, b))) or real(u, a, b)
    )
    try:
        ranges = [
            (100, 9000),
            (0, 20_000),
            (4096, 8192),
            (49_000, 50_000),
            (49_990, 60_000),
            (7, 8),
        ]
        for start, end in ranges:
            assert remote.read_range(url, start, end, version=version) == data[start:end]
        # (100, 9000): blocks 0-2 in one request; (0, 20000): blocks 3-4 only.
        assert fetched[:2] == [[(0, 12_288)], [(12_288, 20_480)]]
        fetched.clear()
        got = remote.read_ranges(
            [url] * len(ranges),
            [a for a, _ in ranges],
            [b for _, b in ranges],
            versions=[version] * len(ranges),
        )
        assert got == [data[a:b] for a, b in ranges] and fetched == []
    finally:
        fs.rm("/td-blocks", recursive=True)


def test_adjacent_ranges_of_one_object_are_one_request(monkeypatch):
    """Consecutive frames of one object in a batch: one ranged request for the run."""
    fs = fsspec.filesystem("memory")
    data = bytes(range(256)) * 64
    fs.pipe("memory://td-merge/a", data)
    fs.pipe("memory://td-merge/b", data[::-1])
    asked = []
    real = fs.cat_ranges
    monkeypatch.setattr(
        fs, "cat_ranges", lambda u, a, b, **k: asked.append(len(u)) or real(u, a, b, **k)
    )
    try:
        urls = ["memory://td-merge/a"] * 3 + ["memory://td-merge/b"] + ["memory://td-merge/a"]
        starts, ends = [1000, 2000, 3000, 0, 2500], [2000, 3000, 4000, 10, 2600]
        got = remote.read_ranges(urls, starts, ends)
    finally:
        fs.rm("/td-merge", recursive=True)
    assert got[:3] == [data[1000:2000], data[2000:3000], data[3000:4000]]
    assert got[3] == data[::-1][:10] and got[4] == data[2500:2600]
    assert asked == [2]  # a: 1000-4000 (the overlapping 2500-2600 inside it), b: 0-10


def test_s3_listing_reports_each_page(s3, s3_requests, monkeypatch):
    """A prefix longer than one page is listed page by page, the bar advancing per page."""
    from tqdm import std

    fs, _options, _names = s3
    for k in range(25):
        fs.pipe(f"s3://td-bucket/paged/{k:03d}.dcm", b"x")
    fs.pipe("s3://td-bucket/paged/folder/", b"")  # a folder placeholder: not an object
    monkeypatch.setattr(remote.policy, "list_page_size", 10)
    steps = []
    real = std.tqdm.update
    monkeypatch.setattr(std.tqdm, "update", lambda self, n=1: steps.append(n) or real(self, n))
    s3_requests.clear()
    found = remote.find("s3://td-bucket/paged", progress=True)
    assert found == [f"s3://td-bucket/paged/{k:03d}.dcm" for k in range(25)]
    assert s3_requests["ListObjectsV2"] >= 3  # the pages (and s3fs's isfile probe)
    assert [n for n in steps if n] == [10, 10, 5]  # per page; the placeholder not counted


def test_scan_fetches_header_bytes_not_pixel_data(tmp_path, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    us_cine_like(tmp_path / "us", n=1, frames=40, size=128, jpeg=True)
    ct_like(tmp_path / "ct", n_series=1, slices=1, size=256)
    fs = fsspec.filesystem("memory")
    sizes = {}
    for f in sorted(p for p in tmp_path.rglob("*") if p.is_file() and "masks" not in p.parts):
        url = f"memory://td-scan-bytes/{f.parent.name}_{f.name}"
        fs.pipe(url, f.read_bytes())
        sizes[url] = f.stat().st_size
    fetched = []
    real = MemoryFileSystem.cat_file

    def counted(self, path, start=None, end=None, **kwargs):  # every thread's instance
        data = real(self, path, start=start, end=end, **kwargs)
        fetched.append(len(data))
        return data

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counted)
    try:
        index = scan("memory://td-scan-bytes", progress=False)
    finally:
        fs.rm("/td-scan-bytes", recursive=True)
    dicom = [u for u in sizes if not u.endswith(".csv")]  # labels.csv: no DICM, not scanned
    assert len(index) == len(dicom) == 2 and len(index.errors) == 0
    assert 40 in index.df["frames"].tolist()
    # Headers and fragment item headers only: a few kB per object, not the pixel data.
    assert sum(fetched) < 0.05 * sum(sizes.values()), (sum(fetched), sum(sizes.values()))


# --------------------------------------------------------------------------- prefetch
@pytest.fixture(scope="module")
def ct_slices(tmp_path_factory) -> list[Path]:
    """Eight CT slices of one shape (the datasets' batch path reads them as byte ranges)."""
    root = tmp_path_factory.mktemp("prefetch_ct")
    ct_like(root, n_series=1, slices=8, size=32)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in ("", ".dcm") and "masks" not in p.parts
    )


@pytest.fixture
def ct_prefix(s3, ct_slices, request):
    """The CT slices under a prefix of their own (a test may delete objects there)."""
    fs, options, _names = s3
    prefix = f"s3://td-bucket/pf-{request.node.name[:40]}"
    names = {}
    for k, f in enumerate(ct_slices):
        url = f"{prefix}/{k:02d}_{f.name}"
        fs.pipe(url, f.read_bytes())
        names[url.rsplit("/", 1)[-1]] = f
    yield prefix, options, names
    fs.rm(prefix.removeprefix("s3://"), recursive=True)


@pytest.fixture
def s3_gets(s3):
    """The object key of every GetObject the S3 client sends from now on, in order
    (counted where botocore sends them, retries included)."""
    fs, _options, _names = s3
    sent: list[str] = []

    def record(request, **kwargs) -> None:
        if request.method == "GET" and "list-type" not in request.url:
            sent.append(request.url.split("?", 1)[0].rsplit("/", 1)[-1])

    events = fs.s3.meta.events
    events.register("before-send.s3.GetObject", record, unique_id="td-test-gets")
    yield sent
    events.unregister("before-send.s3.GetObject", unique_id="td-test-gets")


def _prefetch_dataset(prefix: str, options: dict) -> torchdicom.DicomDataset:
    ds = torchdicom.DicomDataset(prefix, storage_options=options, frames="first")
    assert len(ds) == 8 and all(native_layout(r) == native_layout(ds.rows[0]) for r in ds.rows)
    return ds


def _wait_for_prefetches() -> None:
    for held in list(remote._HELD.values()):
        held.future.exception()  # finished (its error, if any, is the read's business)


@pytest.fixture
def no_prefetch_left():
    yield
    remote.drop_prefetched()


def test_prefetch_requests_the_next_batch_before_it_is_asked_for(
    ct_prefix, s3_gets, monkeypatch, no_prefetch_left
):
    from torchdicom.data.prefetch import PrefetchDataLoader

    prefix, options, _names = ct_prefix
    monkeypatch.setattr(remote.policy, "recheck_s", 3600.0)
    ds = _prefetch_dataset(prefix, options)
    name = [r["path"].rsplit("/", 1)[-1] for r in ds.rows]
    loader = PrefetchDataLoader(ds, batch_size=2, collate_fn=torchdicom.Collate())
    batches = iter(loader)
    first = next(batches)
    _wait_for_prefetches()
    # Batch 1's objects were fetched while batch 0 was handed over, before anyone asked.
    assert {name[2], name[3]} <= set(s3_gets), s3_gets
    before = list(s3_gets)
    second = next(batches)
    # Reading batch 1 sent no request for its own objects (only batch 2's prefetch).
    assert s3_gets[: len(before)] == before
    assert not {name[2], name[3]} & set(s3_gets[len(before) :]), s3_gets
    assert first["path"][0] == ds.rows[0]["path"] and second["path"][1] == ds.rows[3]["path"]
    for k, i in enumerate((2, 3)):
        assert torch.equal(second["image"][k], ds[i]["image"])


def _record_worker_gets(folder: Path, prefix: str, worker_id: int) -> None:
    """In a DataLoader worker: append the key of every GetObject its S3 client sends
    (where botocore sends it) to a file of the worker's own."""
    log = folder / f"gets-{worker_id}"

    def record(request, **kwargs) -> None:
        with open(log, "a") as f:
            f.write(request.url.split("?", 1)[0].rsplit("/", 1)[-1] + "\n")

    events = remote.filesystem(prefix).s3.meta.events
    events.register("before-send.s3.GetObject", record, unique_id="td-test-worker-gets")


def _collate_with_prefetch_hits(items: list) -> dict:
    """Collate, and say how many ranges the reading process took from its prefetches."""
    return {**torchdicom.Collate()(items), "hits": remote.prefetch_hits()}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_prefetched_epoch_equals_plain_reads_and_fetches_each_object_once(
    ct_prefix, s3_gets, monkeypatch, tmp_path, num_workers, no_prefetch_left
):
    import functools

    from torchdicom.data.prefetch import PrefetchDataLoader

    prefix, options, names = ct_prefix
    monkeypatch.setattr(remote.policy, "recheck_s", 3600.0)
    ds = _prefetch_dataset(prefix, options)
    plain = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=torchdicom.Collate())
    expected = [b["image"] for b in plain]
    s3_gets.clear()
    loader = PrefetchDataLoader(
        ds,
        batch_size=2,
        num_workers=num_workers,
        collate_fn=_collate_with_prefetch_hits,
        worker_init_fn=functools.partial(_record_worker_gets, tmp_path, prefix),
    )
    hits = remote.prefetch_hits()
    got = list(loader)
    # Each batch but the first each process reads was prefetched, whole, in that process
    # (with 2 workers: batch 2 by worker 0 as batch 0 arrived, batch 3 by worker 1).
    if num_workers:
        assert [b["hits"] for b in got] == [0, 0, 2, 2]
    else:
        assert [b["hits"] - hits for b in got] == [0, 2, 4, 6]
    for log in sorted(tmp_path.glob("gets-*")):  # the workers' requests
        s3_gets += log.read_text().split()
    assert [b["path"] for b in got] == [
        [r["path"] for r in ds.rows[k : k + 2]] for k in range(0, 8, 2)
    ]
    for batch, image in zip(got, expected, strict=True):
        assert torch.equal(batch["image"], image)
        for path, values in zip(batch["path"], batch["image"]):
            local = read_frames_numpy(str(names[path.rsplit("/", 1)[-1]]), 0)[0]
            np.testing.assert_array_equal(values.numpy(), local)
    # Every prefetch was taken by the read of its batch, in the process that read it
    # (worker w reads batches w, w + 2, …): each object fetched once, never twice.
    assert sorted(s3_gets) == sorted(r["path"].rsplit("/", 1)[-1] for r in ds.rows), s3_gets


def test_items_read_one_by_one_take_their_prefetched_ranges_too(
    ct_prefix, s3_gets, monkeypatch, no_prefetch_left
):
    """A size policy reads item by item (no batch buffer): each item's frame is still the
    range the prefetch fetched, so those reads send no request."""
    from torchdicom.data.prefetch import PrefetchDataLoader

    prefix, options, _names = ct_prefix
    monkeypatch.setattr(remote.policy, "recheck_s", 3600.0)
    ds = torchdicom.DicomDataset(prefix, storage_options=options, frames="first", size=(16, 16))
    expected = [
        b["image"]
        for b in torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=torchdicom.Collate())
    ]
    s3_gets.clear()
    hits = remote.prefetch_hits()
    loader = PrefetchDataLoader(ds, batch_size=4, collate_fn=_collate_with_prefetch_hits)
    got = list(loader)
    assert [b["hits"] - hits for b in got] == [0, 4]
    assert len(s3_gets) == len(ds)  # each object once: batch 1's by its prefetch
    for batch, image in zip(got, expected, strict=True):
        assert torch.equal(batch["image"], image)


def test_compressed_frames_take_their_prefetched_spans(s3, policy, monkeypatch, no_prefetch_left):
    """A JPEG cine's frames: each frame's recorded code-stream span is prefetched, and
    the span route reads it from there (decoded values equal the local read)."""
    _fs, options, names = s3
    monkeypatch.setattr(policy, "recheck_s", 3600.0)
    ds = torchdicom.DicomDataset("s3://td-bucket/set", storage_options=options, frames="all")
    items = [
        i
        for i in range(len(ds))
        if route_for(ds.rows[ds.locate(i)[0]]).name == "JPEG 8-bit by span (Pillow)"
    ][1:4]
    assert len(items) == 3
    hits = remote.prefetch_hits()
    assert ds.prefetch(items) is not None
    _wait_for_prefetches()
    got = ds.__getitems__(items)
    assert remote.prefetch_hits() - hits == 3
    for item, i in zip(got, items):
        f, frame = ds.locate(i)
        local = read_frames_numpy(str(names[ds.rows[f]["path"].rsplit("/", 1)[-1]]), frame)[0]
        np.testing.assert_array_equal(item["image"].numpy(), local)


def test_object_deleted_after_its_prefetch_fails_the_read_as_without(
    s3, ct_prefix, s3_gets, policy, no_prefetch_left
):
    from torchdicom.data.prefetch import PrefetchDataLoader

    fs, _, _ = s3
    prefix, options, _names = ct_prefix
    ds = _prefetch_dataset(prefix, options)
    loader = PrefetchDataLoader(ds, batch_size=2, collate_fn=torchdicom.Collate())
    batches = iter(loader)
    next(batches)
    _wait_for_prefetches()
    gone = ds.rows[3]["path"]
    assert gone.rsplit("/", 1)[-1] in s3_gets  # prefetched, and held
    fs.rm(gone)
    # Not raised by the prefetch, nor served from it: the read checks the object (recheck_s
    # = 0 here) and raises what it raises without a prefetch.
    with pytest.raises(RemoteNotFoundError, match=re.escape(gone)):
        next(batches)


@pytest.fixture
def memory_ct(ct_slices):
    """Twelve CT objects of one layout on ``memory://`` (eight distinct slices)."""
    fs = fsspec.filesystem("memory")
    for k in range(12):
        fs.pipe(f"memory://td-ct/set/{k:02d}.dcm", ct_slices[k % 8].read_bytes())
    yield torchdicom.DicomDataset("memory://td-ct/set", frames="first")
    fs.rm("/td-ct", recursive=True)


def test_a_failed_prefetch_is_fetched_again_by_the_read(
    memory_ct, policy, monkeypatch, no_prefetch_left
):
    """The prefetch's fetch fails (a 5xx past its retries): nothing is raised then; the
    read fetches again, and gets the bytes once the store answers."""
    from fsspec.implementations.memory import MemoryFileSystem

    ds, batch = memory_ct, [0, 1]
    real = MemoryFileSystem.cat_file
    monkeypatch.setattr(remote.policy, "retries", 0)

    def failing(self, path, start=None, end=None, **kw):
        raise ConnectionResetError("reset by peer")

    monkeypatch.setattr(MemoryFileSystem, "cat_file", failing)
    assert ds.prefetch(batch) is not None
    _wait_for_prefetches()
    assert isinstance(next(iter(remote._HELD.values())).future.exception(), RemoteError)
    monkeypatch.setattr(MemoryFileSystem, "cat_file", real)
    items = ds.__getitems__(batch)
    for item, i in zip(items, batch):
        assert torch.equal(item["image"], torch.from_numpy(read_frames_numpy(ds.rows[i], 0)[0]))
    assert not remote._HELD


def test_prefetch_holds_at_most_prefetch_batches(memory_ct, monkeypatch, no_prefetch_left):
    from torchdicom.data.prefetch import PrefetchBatches

    ds = memory_ct
    frame_bytes = ds[0]["image"].numel() * ds[0]["image"].element_size()
    groups = [ds.prefetch([k, k + 1]) for k in range(0, 12, 2)]  # six batches, none read
    assert all(g is not None for g in groups)
    _wait_for_prefetches()
    assert len(remote._HELD) == remote.policy.prefetch_batches == 2
    assert remote.prefetched_bytes() == 2 * 2 * frame_bytes
    # A loop that breaks off drops what its prefetches still hold.
    remote.drop_prefetched()
    batches = iter(PrefetchBatches([[0, 1], [2, 3], [4, 5]], ds))
    next(batches)
    assert remote._HELD
    batches.close()
    assert not remote._HELD and remote.prefetched_bytes() == 0
    monkeypatch.setattr(remote.policy, "prefetch_batches", 0)  # off: nothing starts
    assert ds.prefetch([0, 1]) is None and not remote._HELD


def test_prefetch_through_the_block_cache_fetches_each_block_once(
    ct_prefix, block_cache, monkeypatch, no_prefetch_left
):
    from torchdicom.data.prefetch import PrefetchDataLoader

    prefix, options, names = ct_prefix
    monkeypatch.setattr(remote.policy, "recheck_s", 3600.0)
    ds = _prefetch_dataset(prefix, options)
    cache = remote.block_cache()
    misses = cache.misses
    loader = PrefetchDataLoader(ds, batch_size=2, collate_fn=torchdicom.Collate())
    for batch in loader:
        for path, values in zip(batch["path"], batch["image"]):
            local = read_frames_numpy(str(names[path.rsplit("/", 1)[-1]]), 0)[0]
            np.testing.assert_array_equal(values.numpy(), local)
    # The prefetch put the blocks in the cache; the read took them from there.
    assert cache.misses - misses == len(list(block_cache.rglob("*.*")))
    assert cache.hits > 0
