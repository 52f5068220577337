"""Remote benchmark: frames/s from object servers on loopback next to the local read.

``python -m benchmarks.remote [--quick] [--n N] [--latency-ms MS] [--workers W]``

Writes ``N`` 512x512 int16 CT files and reads every file's frame through ``DicomDataset`` +
``DataLoader`` (batch 32) from the local folder and from two real servers, each in its own
process on 127.0.0.1:

* **moto** — moto's S3 server (``s3://``, through s3fs): the S3 protocol, signing and
  all, but a Python server that spends milliseconds of CPU per request;
* **HTTP** — aiohttp's static-file server (``http://``, through fsspec's HTTP
  filesystem): ranged GETs answered with ``sendfile``, ETags, about a tenth of moto's
  CPU per request. It shows what the *client* achieves when the server is not the
  bottleneck.

Both servers can add a latency to every request (``--latency-ms``, 20 ms by default):
the server sleeps before answering, so every process of the client (DataLoader workers
too) sees it, and concurrent requests overlap their waits as they would on a network.
Medians of several epochs after a warm-up epoch; ratios are taken within this run.

Rows marked *prefetch* read through ``PrefetchDataLoader``: the next batch's ranges are
fetched while the current batch is consumed (``prefetch_batches``).

Knobs (``torchdicom.sources.policy``): ``max_in_flight`` (concurrent range requests of
one batch, per process: with ``W`` DataLoader workers up to ``W x max_in_flight`` are in
flight, the next batches' requests while the current one trains), ``block_cache_dir`` /
``block_cache_block_bytes`` / ``block_cache_max_bytes`` (the local block cache: after
the first epoch reads come from local disk), ``recheck_s`` (how often an object's size /
ETag is re-checked). The decoded-frame cache (``DicomDataset(cache=...)``) serves remote
compressed frames too.

Not a timed test: the figures move with the machine's load; the ratios are what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import EpochLoader, medians_s, version, warm_page_cache, write_ct

__all__ = ["run"]

BATCH = 32
# A request to this path sets the server's added latency (?ms=20); it never reaches moto
# or the file tree.
_LATENCY_PATH = "/__torchdicom_latency__"


def run(quick: bool = False, n: int = 256, latency_ms: float = 20.0, workers: int = 2) -> str:
    """Run the benchmark and return the markdown report.

    Every row is timed in one interleaved loop (row a, row b, ..., then again), so that
    load from other jobs on a shared machine falls on every row alike; the servers with
    and without added latency are separate instances for that reason.

    Args:
        quick: at most 64 files, fewer repeats.
        n: number of CT files.
        latency_ms: latency the servers add to every request in the latency rows.
        workers: DataLoader worker processes of the multi-process rows.
    """

    import torchdicom
    from torchdicom.sources import remote

    if quick:
        n = min(n, 64)
    repeats = 3 if quick else 5
    lat = f"+{latency_ms:g} ms"
    inflight = remote.policy.max_in_flight
    saved_policy = (remote.policy.max_in_flight, remote.policy.block_cache_dir)
    notes: dict[str, str] = {}
    rows: list[_Row] = []
    servers: list[_Server] = []
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-remote-") as tmp:
        root = Path(tmp)
        paths = write_ct(root / "ct", n)
        warm_page_cache(paths)
        try:
            moto, moto_lat, http, http_lat = (
                _Server(kind, root) for kind in ("moto", "moto", "http", "http")
            )
            servers += [moto, moto_lat, http, http_lat]
            moto_lat.set_latency(latency_ms)
            http_lat.set_latency(latency_ms)
            s3 = {}  # server -> dataset; one bucket per server (options are kept per bucket)
            for server, bucket in ((moto, "bench"), (moto_lat, "bench-latency")):
                options = {"key": "bench", "secret": "bench-secret", "endpoint_url": server.url}
                remote.configure(f"s3://{bucket}", options)
                fs = remote.filesystem(f"s3://{bucket}")
                fs.mkdir(bucket)
                for p in paths:
                    fs.pipe(f"s3://{bucket}/ct/{p.name}", p.read_bytes())
                s3[server] = torchdicom.DicomDataset(
                    f"s3://{bucket}/ct", storage_options=options, frames="first"
                )
            web = {
                server: torchdicom.DicomDataset(
                    [f"{server.url}/ct/{p.name}" for p in paths], frames="first"
                )
                for server in (http, http_lat)
            }
            local = torchdicom.DicomDataset(root / "ct", frames="first")
            sent = _count_requests(remote.filesystem("s3://bench"), s3[moto])
            batches = -(-n // BATCH)
            blocks = str(root / "blocks")

            rows += [
                _Row("local folder, 0 workers", local, 0),
                _Row(f"local folder, {workers} workers", local, workers),
                _Row("moto S3, 0 workers", s3[moto], 0, moto),
                _Row("HTTP, 0 workers", web[http], 0, http),
                _Row(f"moto S3 {lat}, 1 in flight, 0 workers", s3[moto_lat], 0, moto_lat, 1),
                _Row(f"moto S3 {lat}, {inflight} in flight, 0 workers", s3[moto_lat], 0, moto_lat),
                _Row(
                    f"moto S3 {lat}, {inflight} in flight, 0 workers, prefetch",
                    s3[moto_lat],
                    0,
                    moto_lat,
                    prefetch=True,
                ),
                _Row(
                    f"moto S3 {lat}, {inflight} in flight, {workers} workers",
                    s3[moto_lat],
                    workers,
                    moto_lat,
                ),
                _Row(f"HTTP {lat}, {inflight} in flight, 0 workers", web[http_lat], 0, http_lat),
                _Row(
                    f"HTTP {lat}, {inflight} in flight, 0 workers, prefetch",
                    web[http_lat],
                    0,
                    http_lat,
                    prefetch=True,
                ),
                _Row(
                    f"HTTP {lat}, {inflight} in flight, {workers} workers",
                    web[http_lat],
                    workers,
                    http_lat,
                ),
                # The block cache: the warm-up epoch fills it, the timed epochs read local disk.
                _Row(
                    f"moto S3 {lat}, block cache (warm), 0 workers",
                    s3[moto_lat],
                    0,
                    moto_lat,
                    cache_dir=blocks,
                ),
                _Row(
                    f"moto S3 {lat}, block cache (warm), {workers} workers",
                    s3[moto_lat],
                    workers,
                    moto_lat,
                    cache_dir=blocks,
                ),
                # Orthanc (DICOMweb) is measured after this table by benchmarks.remote_dicomweb:
                # same files, loader and latency, its own interleaved rows (a server of its own).
            ]
            times = medians_s([row.epoch for row in rows], repeats)
            remote.policy.block_cache_dir = blocks
            cache = remote.block_cache()
            notes["cache"] = (
                f"{cache.hits} block reads from the cache and {cache.misses} blocks fetched"
                " in the main process over the block-cache row's epochs (warm-up included)"
                if cache is not None
                else "the block cache was off (directory not writable)"
            )
        finally:
            for row in rows:
                row.close()
            remote.policy.max_in_flight, remote.policy.block_cache_dir = saved_policy
            remote.configure("s3", {})
            for server in servers:
                server.stop()
    fps = {row.label: n / t for row, t in zip(rows, times)}
    cpu = {row.label: row.cpu_ms(n) for row in rows}
    report = _report(fps, cpu, sent, batches, n, repeats, latency_ms, workers, notes)
    return report + "\n\n" + _dicomweb(quick, n, latency_ms, workers)


def _dicomweb(quick: bool, n: int, latency_ms: float, workers: int) -> str:
    """The Orthanc DICOMweb rows (:mod:`benchmarks.remote_dicomweb`) as a subsection.

    Orthanc missing is said in the report (the object-storage rows stand on their own);
    any other failure propagates.
    """
    from benchmarks import remote_dicomweb

    try:
        text = remote_dicomweb.run(quick=quick, n=n, latency_ms=latency_ms, workers=workers)
    except remote_dicomweb.OrthancMissing as exc:
        return f"### DICOMweb (Orthanc)\n\nnot measured: {exc}\n"
    return text.replace(
        "## DICOMweb (python -m benchmarks.remote_dicomweb)", "### DICOMweb (Orthanc)", 1
    )


class _Row:
    """One row of the table: a dataset read through its own DataLoader under its own
    policy (in-flight requests, block cache), with the CPU its epochs used."""

    def __init__(
        self,
        label: str,
        ds: Any,
        workers: int,
        server: _Server | None = None,
        max_in_flight: int | None = None,
        cache_dir: str | None = None,
        prefetch: bool = False,
    ):
        self.label, self.workers, self.server = label, workers, server
        self.max_in_flight, self.cache_dir = max_in_flight, cache_dir
        self.loader = EpochLoader(ds, workers, BATCH, prefetch)
        self.calls = 0
        self.client_s = self.server_s = 0.0

    def epoch(self) -> int:
        from torchdicom.sources import remote

        # The policy of this row; workers keep the one of the warm-up epoch (they fork then).
        saved = (remote.policy.max_in_flight, remote.policy.block_cache_dir)
        remote.policy.max_in_flight = self.max_in_flight or saved[0]
        remote.policy.block_cache_dir = self.cache_dir
        client = time.process_time()
        served = self.server.cpu_s() if self.server is not None else 0.0
        try:
            frames = self.loader.epoch()
        finally:
            remote.policy.max_in_flight, remote.policy.block_cache_dir = saved
        if self.calls:  # the warm-up epoch stays out of the CPU figures
            self.client_s += time.process_time() - client
            if self.server is not None:
                self.server_s += self.server.cpu_s() - served
        self.calls += 1
        return frames

    def cpu_ms(self, n: int) -> tuple[float | None, float | None]:
        """(client, server) CPU ms per frame over the timed epochs; the client's only
        without workers (their CPU is not this process's)."""
        frames = n * max(self.calls - 1, 1)
        client = self.client_s / frames * 1e3 if self.workers == 0 else None
        server = self.server_s / frames * 1e3 if self.server is not None else None
        return client, server

    def close(self) -> None:
        self.loader.close()


def _report(
    fps: dict[str, float],
    cpu: dict[str, tuple[float | None, float | None]],
    sent: dict[str, int],
    batches: int,
    n: int,
    repeats: int,
    latency_ms: float,
    workers: int,
    notes: dict[str, str],
) -> str:
    def ms(value: float | None) -> str:
        return "—" if value is None or value != value else f"{value:.2f}"

    base = fps["local folder, 0 workers"]
    base_w = fps[f"local folder, {workers} workers"]
    lines = [
        f"{n} files of 512x512 int16 CT (Explicit VR LE), every file's frame through"
        f" DicomDataset + DataLoader (batch {BATCH}; persistent workers where workers > 0);"
        f" median of {repeats} epochs after a warm-up epoch. Servers on 127.0.0.1, each in"
        f" its own process: moto {version('moto')} (S3, via s3fs {version('s3fs')}) and"
        f" aiohttp {version('aiohttp')}'s static-file server (HTTP, via fsspec"
        f" {version('fsspec')}). Latency rows: the server sleeps {latency_ms:g} ms before"
        f" answering each request. {platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        f"| read | frames/s | vs local, 0 workers | vs local, {workers} workers"
        " | client CPU ms/frame | server CPU ms/frame |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, value in fps.items():
        client, server = cpu.get(name, (None, None))
        lines.append(
            f"| {name} | {value:,.0f} | {value / base:.2f}x | {value / base_w:.2f}x"
            f" | {ms(client)} | {ms(server)} |"
        )
    lat = f"+{latency_ms:g} ms"

    def held(row: str, of: str) -> str:
        return f"{fps[row] / fps[of]:.0%}" if row in fps and of in fps else "?"

    gets = sent.get("GetObject", 0)
    inflight = next(k for k in fps if k.startswith(f"moto S3 {lat}, ") and "1 in flight" not in k)
    inflight = inflight.split(", ")[1]
    lines += [
        "",
        f"Requests per batch (moto, 0 workers, one epoch of {batches} batches):"
        f" {sent.get('cat_ranges', 0) / batches:.2f} `cat_ranges` calls carrying"
        f" {gets / batches:.1f} ranged GETs (sent concurrently, `max_in_flight` at a time)"
        f" and {sent.get('HeadObject', 0) / batches:.2f} HEADs. Block cache: {notes['cache']}.",
        "",
        f"Latency ({lat} a request): with {inflight}, 0 workers, the batch holds"
        f" {held(f'moto S3 {lat}, {inflight}, 0 workers', 'moto S3, 0 workers')} of the"
        f" no-latency moto rate"
        f" ({held(f'moto S3 {lat}, {inflight}, 0 workers', f'moto S3 {lat}, 1 in flight, 0 workers')}"
        " of one in flight) and"
        f" {held(f'HTTP {lat}, {inflight}, 0 workers', 'HTTP, 0 workers')} of the no-latency"
        f" HTTP rate; with {workers} workers"
        f" {held(f'moto S3 {lat}, {inflight}, {workers} workers', 'moto S3, 0 workers')} and"
        f" {held(f'HTTP {lat}, {inflight}, {workers} workers', 'HTTP, 0 workers')}; prefetching"
        " the next batch (`PrefetchDataLoader`), 0 workers:"
        f" {held(f'moto S3 {lat}, {inflight}, 0 workers, prefetch', 'moto S3, 0 workers')}"
        f" (moto) and {held(f'HTTP {lat}, {inflight}, 0 workers, prefetch', 'HTTP, 0 workers')}"
        " (HTTP). Against"
        " the local read (the issue's target, >= 80 %): the block cache, warm, holds"
        f" {held(f'moto S3 {lat}, block cache (warm), 0 workers', 'local folder, 0 workers')}"
        " (0 workers); uncached, the best remote row holds"
        f" {max(v for k, v in fps.items() if lat in k and 'cache' not in k) / base:.0%}.",
    ]
    return "\n".join(lines)


def _count_requests(fs: Any, ds: Any) -> dict[str, int]:
    """HTTP requests the S3 client sends in one epoch of ``ds`` (0 workers; counted where
    botocore sends them), plus the ``cat_ranges`` calls that carry them."""
    sent: dict[str, int] = {}

    def count(event_name: str, **kwargs: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        sent[operation] = sent.get(operation, 0) + 1

    real = fs.cat_ranges

    def cat_ranges(*args: Any, **kwargs: Any) -> Any:
        sent["cat_ranges"] = sent.get("cat_ranges", 0) + 1
        return real(*args, **kwargs)

    loader = EpochLoader(ds, 0, BATCH)
    loader.epoch()  # warm: the size / ETag checks (once per recheck_s) stay out of the count
    events = fs.s3.meta.events
    events.register("before-send.s3", count, unique_id="bench-count")
    fs.cat_ranges = cat_ranges
    try:
        loader.epoch()
    finally:
        events.unregister("before-send.s3", unique_id="bench-count")
        fs.cat_ranges = real  # an instance attribute (fsspec's sync wrapper): put it back
    return sent


# --------------------------------------------------------------------------- servers
class _Server:
    """A loopback server in its own process (not a thread of the client: it would share
    the client's GIL and measure the two together)."""

    def __init__(self, kind: str, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = ["-m", "benchmarks.remote", "--serve", kind, "--port", str(port)]
        self.process = subprocess.Popen(
            [sys.executable, *command, "--root", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the {kind} server did not start within 30 s")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (Linux ``/proc``; NaN elsewhere)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    def set_latency(self, ms: float) -> None:
        with urllib.request.urlopen(f"{self.url}{_LATENCY_PATH}?ms={ms}", timeout=10):
            pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _serve_moto(port: int) -> None:
    """moto's S3 server as ``python -m moto.server`` runs it (threaded werkzeug), behind a
    WSGI layer that adds the latency (a sleep per request thread: requests overlap)."""
    from urllib.parse import parse_qs

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    delay = [0.0]

    def with_latency(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == _LATENCY_PATH:
            delay[0] = float(parse_qs(environ.get("QUERY_STRING", ""))["ms"][0]) / 1000
            start_response("204 No Content", [])
            return [b""]
        if delay[0]:
            time.sleep(delay[0])
        return app(environ, start_response)

    run_simple("127.0.0.1", port, with_latency, threaded=True, request_handler=MotoRequestHandler)


def _serve_http(port: int, root: str) -> None:
    """aiohttp's static-file server (Range, HEAD, ETag, sendfile), with the latency as an
    ``asyncio.sleep`` per request (requests overlap)."""
    from aiohttp import web

    delay = [0.0]

    @web.middleware
    async def with_latency(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == _LATENCY_PATH:
            delay[0] = float(request.query["ms"]) / 1000
            return web.Response(status=204)
        if delay[0]:
            await asyncio.sleep(delay[0])
        return await handler(request)

    app = web.Application(middlewares=[with_latency])
    app.router.add_static("/", root)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serve", choices=("moto", "http"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "moto":
        _serve_moto(args.port)
    elif args.serve == "http":
        _serve_http(args.port, args.root)
    else:
        print(run(quick=args.quick, n=args.n, latency_ms=args.latency_ms, workers=args.workers))


if __name__ == "__main__":
    main()
