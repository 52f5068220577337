"""Shard streaming benchmark: frames/s from tar shards next to per-file reads, local and remote.

``python -m benchmarks.shards [--quick] [--n N] [--maxcount M] [--latency-ms MS]``

Writes ``N`` 512x512 int16 CT files, exports them with
:func:`torchdicom.export.to_webdataset` (``M`` files per shard), and reads every file's
frame through a DataLoader (batch 32, 0 workers, :class:`~torchdicom.Collate`) in four
ways, in the same run, median of several epochs after a warm-up epoch:

* per-file reads: :class:`~torchdicom.DicomDataset` over the folder / the ``s3://`` prefix
  (its batch path: one ``cat_ranges`` call of 32 concurrent range requests per batch);
* shards: :class:`~torchdicom.data.shards.DicomShardDataset` over the local shards / the
  ``s3://`` shards (spooled: each shard's bytes in 16 MiB range requests, concurrent, into
  a local sparse file; then one ``pread`` per frame), and ``spool=False`` (one range request
  per frame) to show what the spooling buys.

Remote = moto's S3 server in its own process on 127.0.0.1 (as benchmarks.remote), first as
it is, then with an added per-request latency (``--latency-ms``, 20 ms by default): an
``asyncio.sleep`` before every request s3fs sends (its ``_call_s3``: GET, HEAD, LIST),
on both sides.

Not a timed test: moto is a Python server, so the remote figures measure it too; the
ratios between the two ways under the same latency are the point.
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

from benchmarks._common import median_s, medians_s, version, warm_page_cache, write_ct

__all__ = ["run"]

BATCH = 32


def _epoch(ds) -> int:
    from torchdicom import Collate

    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, collate_fn=Collate())
    return sum(len(b["image"]) for b in loader)


def run(quick: bool = False, n: int = 512, maxcount: int = 128, latency_ms: float = 20.0) -> str:
    """Run the benchmark and return the markdown report.

    Args:
        quick: at most 128 files, fewer repeats.
        n: number of CT files.
        maxcount: files per shard.
        latency_ms: added latency of every S3 request in the latency runs.
    """
    import torchdicom
    from torchdicom.data.shards import DicomShardDataset
    from torchdicom.export import to_webdataset
    from torchdicom.sources import remote

    if quick:
        n = min(n, 128)
        maxcount = min(maxcount, 32)
    repeats = 3 if quick else 5
    server, host, port = _start_moto()
    options = {"key": "bench", "secret": "bench-secret", "endpoint_url": f"http://{host}:{port}"}
    fps: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="torchdicom-bench-shards-") as tmp:
            root = Path(tmp)
            paths = write_ct(root / "ct", n)
            file_kib = os.path.getsize(paths[0]) // 1024
            index = torchdicom.scan(root / "ct", progress=False)
            (root / "shards").mkdir()
            report = to_webdataset(index, str(root / "shards" / "%06d.tar"), maxcount=maxcount)
            warm_page_cache([*paths, *map(Path, report.shards)])
            remote.configure("s3", options)
            fs = remote.filesystem("s3://x")
            fs.mkdir("bench")
            for p in paths:
                fs.pipe(f"s3://bench/ct/{p.name}", p.read_bytes())
            for p in (root / "shards").iterdir():
                fs.put_file(str(p), f"s3://bench/shards/{p.name}")

            ways = {
                "local: per-file (DicomDataset)": torchdicom.DicomDataset(
                    root / "ct", frames="first"
                ),
                "local: shards (DicomShardDataset)": DicomShardDataset(
                    report.manifest, batch_size=BATCH
                ),
            }
            far = {
                "s3: per-file (DicomDataset, 32 ranges per batch)": torchdicom.DicomDataset(
                    "s3://bench/ct", storage_options=options, frames="first"
                ),
                "s3: shards, spooled": DicomShardDataset(
                    "s3://bench/shards/shards.json", storage_options=options, batch_size=BATCH
                ),
                "s3: shards, a range per frame (spool=False)": DicomShardDataset(
                    "s3://bench/shards/shards.json",
                    storage_options=options,
                    spool=False,
                    batch_size=BATCH,
                ),
            }
            for ds in [*ways.values(), *far.values()]:
                assert _epoch(ds) == n
            # What one 512 KiB range request costs moto, from a file object and from a shard.
            shard_url = f"s3://bench/shards/{Path(report.shards[0]).name}"
            file_range_ms, shard_range_ms = (
                median_s(lambda url=url: remote.read_range(url, 4096, 4096 + 2**19), 5) * 1e3
                for url in (f"s3://bench/ct/{paths[0].name}", shard_url)
            )
            both = {**ways, **far}
            times = medians_s([lambda ds=ds: _epoch(ds) for ds in both.values()], repeats)
            fps.update({name: n / t for name, t in zip(both, times)})

            import s3fs

            # Every S3 request of s3fs (GET, HEAD, LIST) goes through _call_s3: the
            # latency is added there, for every filesystem instance (the sync methods are
            # bound at construction, so patching an instance's _cat_file misses most).
            real_call = s3fs.S3FileSystem._call_s3

            async def slow_call(self, *args, **kwargs):
                await asyncio.sleep(latency_ms / 1000)
                return await real_call(self, *args, **kwargs)

            s3fs.S3FileSystem._call_s3 = slow_call
            try:
                slow = list(far.items())[:2]  # a range per frame at 20 ms: see the row above
                times = medians_s(
                    [lambda ds=ds: _epoch(ds) for _, ds in slow], max(2, repeats // 2)
                )
                for (name, _), t in zip(slow, times):
                    fps[f"{name} + {latency_ms:g} ms per request"] = n / t
            finally:
                s3fs.S3FileSystem._call_s3 = real_call
    finally:
        remote.configure("s3", {})
        server.terminate()
        server.wait(10)

    local = fps["local: per-file (DicomDataset)"]
    lines = [
        f"{n} files of 512x512 int16 CT (Explicit VR LE, {file_kib} KiB"
        f" each) in {len(report.shards)} shards of {maxcount}; every file's frame through a"
        f" DataLoader (batch {BATCH}, 0 workers, Collate); median of {repeats} epochs after a"
        f" warm-up epoch (latency rows: {max(2, repeats // 2)}). S3 = moto {version('moto')}"
        f" server (its own process) on 127.0.0.1, s3fs {version('s3fs')}; latency = an"
        f" asyncio.sleep before every S3 request (s3fs _call_s3). {platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "| read | frames/s | vs local per-file |",
        "|---|---:|---:|",
    ]
    for name, value in fps.items():
        lines.append(f"| {name} | {value:,.0f} | {value / local:.2f}x |")
    lat = f" + {latency_ms:g} ms per request"
    per_file = fps[f"s3: per-file (DicomDataset, 32 ranges per batch){lat}"]
    sharded = fps[f"s3: shards, spooled{lat}"]
    lines += [
        "",
        f"With {latency_ms:g} ms per request, spooled shards stream at {sharded / per_file:.1f}x"
        f" the per-file rate ({sharded:,.0f} vs {per_file:,.0f} frames/s): a shard costs one"
        " HEAD and a few 16 MiB GETs in flight together, where per-file reads cost a request"
        " per frame (32 in flight per batch).",
        "",
        f"moto serves a 512 KiB range of a file object in {file_range_ms:.1f} ms"
        f" and of a {maxcount}-file shard in {shard_range_ms:.1f} ms (its range"
        " reads cost in proportion to the object, unlike S3's): the `spool=False` row and"
        " the 16 MiB spool requests measure that too.",
    ]
    return "\n".join(lines)


def _start_moto() -> tuple[subprocess.Popen, str, int]:
    """moto's S3 server in its own process on 127.0.0.1 (a threaded one would share the
    client's GIL and measure the two together)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--maxcount", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    print(run(quick=args.quick, n=args.n, maxcount=args.maxcount, latency_ms=args.latency_ms))


if __name__ == "__main__":
    main()
