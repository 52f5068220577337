"""Remote benchmark: frames/s from an S3 server (moto, loopback) next to the local read.

``python -m benchmarks.remote [--quick] [--n N] [--latency-ms MS]``

Writes ``N`` 512x512 int16 CT files, uploads them to moto's S3 server (started in its own
process on 127.0.0.1), and reads every file's frame through ``DicomDataset`` + ``DataLoader``
(batch 32, 0 workers) from the local folder and from ``s3://``; median of several
epochs after a warm-up epoch. It counts the requests per batch (the batch path merges
a batch's frames into one ``cat_ranges`` call) and repeats the remote read with an
added per-request latency (``--latency-ms``, 20 ms by default: an ``asyncio.sleep``
before every S3 GET), once with one request in flight and once with
``policy.max_in_flight`` (32) in flight.

Knobs (``torchdicom.sources.policy``): ``max_in_flight`` (concurrent range requests of
one batch), ``recheck_s`` (how often an object's size / ETag is re-checked),
``retries`` / ``backoff_s`` / ``timeout_s``; the decoded-frame cache
(``DicomDataset(cache=...)``) serves remote compressed frames too. There is no local
block cache yet (see the report of issue 15).

Not a timed test: moto is a Python server, so the remote figures measure the server as
much as the client; the ratio under added latency is what the concurrency buys.
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
from pathlib import Path

import torch

from benchmarks._common import median_s, warm_page_cache, write_ct

__all__ = ["run"]

BATCH = 32


def _epoch(ds) -> int:
    from torchdicom import Collate

    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, collate_fn=Collate())
    return sum(len(b["image"]) for b in loader)


def run(quick: bool = False, n: int = 256, latency_ms: float = 20.0) -> str:
    """Run the benchmark and return the markdown report.

    Args:
        quick: at most 64 files, fewer repeats.
        n: number of CT files.
        latency_ms: added latency of every S3 request in the latency runs.
    """

    import torchdicom
    from torchdicom.sources import remote

    if quick:
        n = min(n, 64)
    repeats = 3 if quick else 7
    server, host, port = _start_moto()
    options = {"key": "bench", "secret": "bench-secret", "endpoint_url": f"http://{host}:{port}"}
    try:
        with tempfile.TemporaryDirectory(prefix="torchdicom-bench-remote-") as tmp:
            paths = write_ct(Path(tmp) / "ct", n)
            warm_page_cache(paths)
            remote.configure("s3", options)
            fs = remote.filesystem("s3://x")
            fs.mkdir("bench")
            for p in paths:
                fs.pipe(f"s3://bench/ct/{p.name}", p.read_bytes())
            local = torchdicom.DicomDataset(Path(tmp) / "ct", frames="first")
            far = torchdicom.DicomDataset("s3://bench/ct", storage_options=options, frames="first")
            assert _epoch(far) == n

            calls = {"cat_ranges": 0, "cat_file": 0}
            real = {name: getattr(fs, name) for name in calls}

            def counting(name):
                def call(*args, **kwargs):
                    calls[name] += 1
                    return real[name](*args, **kwargs)

                return call

            for name in calls:
                setattr(fs, name, counting(name))
            _epoch(far)
            batches = -(-n // BATCH)
            for name in calls:
                setattr(fs, name, real[name])

            t_local = median_s(lambda: _epoch(local), repeats)
            t_far = median_s(lambda: _epoch(far), repeats)

            real_get = fs._cat_file

            async def slow_get(*args, **kwargs):
                await asyncio.sleep(latency_ms / 1000)
                return await real_get(*args, **kwargs)

            fs._cat_file = slow_get
            saved = remote.policy.max_in_flight
            try:
                remote.policy.max_in_flight = 1
                t_serial = median_s(lambda: _epoch(far), max(2, repeats // 2))
                remote.policy.max_in_flight = saved
                t_conc = median_s(lambda: _epoch(far), repeats)
            finally:
                remote.policy.max_in_flight = saved
                fs._cat_file = real_get
    finally:
        remote.configure("s3", {})
        server.terminate()
        server.wait(10)

    fps = {
        "local folder": n / t_local,
        "s3:// (moto, loopback)": n / t_far,
        f"s3:// + {latency_ms:g} ms per request, 1 in flight": n / t_serial,
        f"s3:// + {latency_ms:g} ms per request, {saved} in flight": n / t_conc,
    }
    lines = [
        f"{n} files of 512x512 int16 CT (Explicit VR LE), every file's frame through"
        f" DicomDataset + DataLoader (batch {BATCH}, 0 workers); median of {repeats} epochs"
        f" after a warm-up epoch. S3 = moto {_version('moto')} server (its own process) on 127.0.0.1,"
        f" s3fs {_version('s3fs')}. {platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "| read | frames/s | vs local |",
        "|---|---:|---:|",
    ]
    for name, value in fps.items():
        lines.append(f"| {name} | {value:,.0f} | {value / fps['local folder']:.2f}x |")
    lines += [
        "",
        f"Requests per batch (one epoch, {batches} batches): {calls['cat_ranges'] / batches:.2f}"
        f" `cat_ranges` calls (one per batch, {BATCH} ranges each, concurrent) and"
        f" {calls['cat_file'] / batches:.2f} single-range reads.",
        "",
        f"Latency run: {latency_ms:g} ms added to every GET; with {saved} in flight the batch"
        f" holds {fps[list(fps)[3]] / fps['s3:// (moto, loopback)']:.0%} of the loopback"
        f" remote rate and {fps[list(fps)[3]] / fps['local folder']:.0%} of the local rate"
        " (target >= 80 % of local). Knobs: `torchdicom.sources.policy.max_in_flight`"
        " (concurrent requests per batch), `recheck_s` (size / ETag re-check interval)."
        " No local block cache is implemented yet.",
    ]
    return "\n".join(lines)


def _start_moto() -> tuple[subprocess.Popen, str, int]:
    """moto's S3 server in its own process on 127.0.0.1 (not a thread of this one: a
    threaded server would share the client's GIL and measure the two together)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, "127.0.0.1", port
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("moto's server did not start within 30 s")


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    print(run(quick=args.quick, n=args.n, latency_ms=args.latency_ms))


if __name__ == "__main__":
    main()
