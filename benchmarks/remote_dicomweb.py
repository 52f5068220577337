"""DICOMweb benchmark: frames/s from Orthanc (WADO-RS frame retrieval) next to the local read.

``python -m benchmarks.remote_dicomweb [--quick] [--n N] [--latency-ms MS] [--workers W]``

Writes ``N`` 512x512 int16 CT files (the files of ``benchmarks.remote``), stores them in a
real Orthanc with its DICOMweb plugin started on 127.0.0.1 (``tests/orthanc_server.py``:
the Debian packages ``orthanc`` + ``orthanc-dicomweb``), indexes them with
``DicomWebSource`` (QIDO-RS + WADO-RS metadata) and reads every file's frame:

* through ``DicomDataset`` + ``DataLoader`` (batch 32) from the local folder and from
  Orthanc, 0 and ``W`` workers; requests per batch counted where ``requests`` answers;
* with an added per-request latency (``--latency-ms``, 20 ms by default): **injected in
  the client session** — a ``requests`` transport adapter that sleeps before sending
  each request (it travels with the session to DataLoader workers), so concurrent
  requests overlap their waits as they would on a network — with 1 and with
  ``torchdicom.sources.policy.max_in_flight`` (32) requests of a batch in flight (the
  dataset's batch path sends a batch's frame requests together,
  ``torchdicom.io.frames.read_dicomweb_batch``; with ``W`` workers up to ``W`` times that).

Medians of several epochs after a warm-up epoch; the ratios are taken within this run.
Not a timed test: the figures move with the machine's load.

``run`` returns the markdown section; ``measure`` the figures (``benchmarks.remote``
merges them into its table).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from requests.adapters import HTTPAdapter

from benchmarks._common import EpochLoader, median_s, warm_page_cache, write_ct

__all__ = ["OrthancMissing", "measure", "run"]


class OrthancMissing(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed here (the message says what is missing)."""


BATCH = 32
_ROOT = Path(__file__).resolve().parent.parent


class _DelayAdapter(HTTPAdapter):
    """A ``requests`` transport adapter that sleeps ``delay_s`` before each request: the
    added latency (pickled with the session to DataLoader workers)."""

    __attrs__: ClassVar[list[str]] = [*HTTPAdapter.__attrs__, "delay_s"]

    def __init__(self, delay_s: float = 0.0):
        super().__init__(pool_maxsize=64)
        self.delay_s = delay_s

    def send(self, request, *args, **kwargs):  # type: ignore[override]
        time.sleep(self.delay_s)  # releases the GIL: waits of concurrent requests overlap
        return super().send(request, *args, **kwargs)


def _session(auth: tuple[str, str], delay_s: float = 0.0):
    import requests

    session = requests.Session()
    session.auth = auth
    if delay_s:
        session.mount("http://", _DelayAdapter(delay_s))
    return session


def measure(
    quick: bool = False, n: int = 256, latency_ms: float = 20.0, workers: int = 4
) -> dict[str, Any]:
    """Run the benchmark; the figures as a dict.

    Returns:
        ``{"fps": {label: frames/s}, "requests_per_batch": float, "batches": int,
        "n": int, "repeats": int, "latency_ms": float, "workers": int, "orthanc": str}``.
    """
    import torchdicom
    from torchdicom.sources import dicomweb, remote

    sys.path.insert(0, str(_ROOT))
    from tests.orthanc_server import PASSWORD, USER, OrthancServer, find_orthanc

    found = find_orthanc()
    if isinstance(found, str):
        raise OrthancMissing(found)
    if quick:
        n = min(n, 64)
    repeats = 3 if quick else 5
    fps: dict[str, float] = {}
    loaders: list[EpochLoader] = []
    auth = (USER, PASSWORD)
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-dicomweb-") as tmp:
        root = Path(tmp)
        paths = write_ct(root / "ct", n)
        warm_page_cache(paths)
        (root / "orthanc").mkdir()
        server = OrthancServer(root / "orthanc", *found)
        version = server.get("/system").decode()
        try:
            for p in paths:
                server.upload(p.read_bytes())

            def timed(label: str, fn: Any, reps: int = repeats) -> None:
                assert fn() == n  # warm-up: connections, first-call caches, workers
                fps[label] = n / median_s(fn, reps)

            def loader_epoch(ds: Any, n_workers: int):
                loader = EpochLoader(ds, n_workers, BATCH)
                loaders.append(loader)
                return loader.epoch

            local = torchdicom.DicomDataset(root / "ct", frames="first")
            timed("local folder, 0 workers", loader_epoch(local, 0))
            timed(f"local folder, {workers} workers", loader_epoch(local, workers))

            session = _session(auth)
            asked: list[str] = []
            session.hooks["response"].append(lambda response, **_: asked.append(response.url))
            source = torchdicom.DicomWebSource(server.dicomweb_url, session=session)
            web = torchdicom.DicomDataset(source, frames="first")
            assert len(web) == n
            batches = -(-n // BATCH)
            dicomweb.forget_sessions()  # the next requests use the hooked session
            asked.clear()
            EpochLoader(web, 0, BATCH).epoch()
            frame_requests = sum("/frames/" in url for url in asked)
            timed("Orthanc DICOMweb, 0 workers", loader_epoch(web, 0))
            timed(f"Orthanc DICOMweb, {workers} workers", loader_epoch(web, workers))
            lat = f"+{latency_ms:g} ms"
            dicomweb.register(server.dicomweb_url, _session(auth, latency_ms / 1000))
            saved = remote.policy.max_in_flight
            try:
                remote.policy.max_in_flight = 1
                timed(f"Orthanc {lat}, 1 in flight, 0 workers", loader_epoch(web, 0), 2)
            finally:
                remote.policy.max_in_flight = saved
            timed(f"Orthanc {lat}, {saved} in flight, 0 workers", loader_epoch(web, 0))
            timed(
                f"Orthanc {lat}, {saved} in flight, {workers} workers",
                loader_epoch(web, workers),
            )
        finally:
            for loader in loaders:
                loader.close()
            server.stop()
    return {
        "fps": fps,
        "requests_per_batch": frame_requests / batches,
        "batches": batches,
        "n": n,
        "repeats": repeats,
        "latency_ms": latency_ms,
        "workers": workers,
        "max_in_flight": remote.policy.max_in_flight,
        "orthanc": version,
    }


def run(quick: bool = False, n: int = 256, latency_ms: float = 20.0, workers: int = 4) -> str:
    """Run the benchmark and return its markdown section (see :func:`measure`)."""
    figures = measure(quick, n, latency_ms, workers)
    fps = figures["fps"]
    local = fps["local folder, 0 workers"]
    lines = [
        "## DICOMweb (python -m benchmarks.remote_dicomweb)",
        "",
        f"{figures['n']} files of 512x512 int16 CT (Explicit VR LE) stored in Orthanc 1.10"
        " with its DICOMweb plugin (Debian packages, its own process on 127.0.0.1), indexed"
        " by DicomWebSource (QIDO-RS + WADO-RS metadata); every file's frame by WADO-RS frame"
        " retrieval (transfer-syntax=*); DicomDataset + DataLoader batch 32 unless said;"
        f" median of {figures['repeats']} epochs (2 in the 1-in-flight row) after a warm-up."
        f" {platform.machine()}, {torch.get_num_threads()} torch threads,"
        f" Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "| read | frames/s | vs local (0 workers) |",
        "|---|---:|---:|",
    ]
    for label, value in fps.items():
        lines.append(f"| {label} | {value:,.0f} | {value / local:.2f}x |")
    lat = f"+{figures['latency_ms']:g} ms"
    inflight = figures["max_in_flight"]
    base = fps["Orthanc DICOMweb, 0 workers"]
    held = fps[f"Orthanc {lat}, {inflight} in flight, 0 workers"]
    one = fps[f"Orthanc {lat}, 1 in flight, 0 workers"]
    lines += [
        "",
        f"Requests per batch: {figures['requests_per_batch']:.2f} WADO-RS frame requests"
        f" (one per item, sent together; {figures['batches']} batches). The latency is a"
        " sleep before each request in the client session's transport adapter (it travels"
        " with the session to the workers), so concurrent requests overlap their waits."
        f" With {lat} per request, {inflight} requests in flight hold {held / base:.0%} of the"
        f" zero-latency DICOMweb rate and {held / local:.0%} of the local read; 1 in flight"
        f" holds {one / base:.0%}. Knob: `torchdicom.sources.policy.max_in_flight` (frame"
        " requests of one batch, per process).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    print(run(args.quick, args.n, args.latency_ms, args.workers))


if __name__ == "__main__":
    main()
