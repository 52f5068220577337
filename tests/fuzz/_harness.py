"""Run torchdicom on one (mutated) file under a watchdog and judge the outcome.

The calls run in a separate worker process so that a crash (segfault in a
decoder) or a hang in C code cannot take the test session down: the parent
waits with a timeout, and kills and restarts the worker when it does not
answer. Inside the worker each call also runs under ``setitimer`` (Python
level hangs are interrupted and reported) and ``tracemalloc`` (NumPy and
Python allocations are traced; the peak is compared with the file size).

The verdict for each call is one of:

* ``equal``     — pixels returned, pydicom returns the same pixels;
* ``lenient``   — pixels returned, pydicom fails, shape matches the header;
* ``rejected``  — a :class:`TorchDicomError`, pydicom fails too;
* ``stricter``  — a :class:`TorchDicomError`, but pydicom returns pixels;
* failures: ``mismatch`` (pixels differ from pydicom's or from the header),
  ``foreign`` (another exception type), ``hang`` (over ``HANG_S``),
  ``overalloc`` (traced peak beyond the bound), ``crash`` (worker died).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
import tracemalloc
import warnings
from typing import Any

import numpy as np

HANG_S = 2.0  # CPU seconds per call
# Traced allocation allowed per call: a floor (interpreter, pandas frames,
# decoder scratch for tiny images) plus a multiple of the file size. Compressed
# frames may decode larger than their file; torchdicom bounds that ratio
# itself (frames._MAX_DECODE_RATIO), which the floor covers for fuzz seeds.
ALLOC_FLOOR = 64 * 2**20
ALLOC_PER_FILE_BYTE = 16
FAILURES = ("mismatch", "foreign", "hang", "overalloc", "crash")

CALLS = ("read_frames", "read_frames_row", "scaled_px", "scan", "dataset_item")


class _Alarm(BaseException):
    """Raised by the itimer handler; a BaseException so library code cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm()


def _guarded(fn: Any, limit_s: float) -> tuple[str, Any, float, int]:
    """(status, value-or-error, seconds, traced peak bytes) of ``fn()``."""
    from torchdicom.errors import TorchDicomError

    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fn()
        status = "ok"
    except _Alarm:
        status, value = "hang", None
    except TorchDicomError as exc:
        status, value = "error", exc
    except BaseException as exc:
        status, value = "foreign", "".join(traceback.format_exception(exc)[-6:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    # CPU seconds, not wall-clock: on a loaded machine (CI, parallel fuzzers)
    # wall time charges other processes' work to this call. A real hang still
    # trips the wall-clock itimer above (5 x HANG_S) and the parent's timeout.
    elapsed = time.process_time() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    return status, value, elapsed, peak


def _reference(path: str) -> tuple[np.ndarray | None, Any]:
    """pydicom's pixels (F, C, H, W) and the dataset, or (None, None) when pydicom fails."""
    import pydicom

    from torchdicom.io.frames import decoding_plugin

    def ref():
        ds = pydicom.dcmread(path, force=True)
        # pydicom's defaults (excess frames returned, as torchdicom indexes
        # them), except the decoder: the plugin torchdicom pins. pydicom's own
        # order puts GDCM first when python-gdcm is installed, and GDCM aborts
        # the process on the lying headers this fuzzer writes.
        meta = getattr(ds, "file_meta", None)
        uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        try:
            bits_stored = int(ds.get("BitsStored", 8) or 8)
        except (TypeError, ValueError):
            bits_stored = 8
        plugin = decoding_plugin(uid, bits_stored) if uid else ""
        arr = (
            ds.pixel_array if not plugin else pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)
        )
        return _fchw(arr, int(ds.get("SamplesPerPixel", 1) or 1)), ds

    status, value, _, _ = _guarded(ref, 10.0)
    if status != "ok":
        return None, None
    return value


def _fchw(arr: np.ndarray, samples: int) -> np.ndarray:
    """``pixel_array`` as (F, C, H, W), whatever the frame count it found."""
    if arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None]
    arr = arr[:, None] if samples == 1 else np.moveaxis(arr, -1, 1)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _scaled_reference(ref: np.ndarray, ds: Any) -> np.ndarray | None:
    from pydicom.pixels import apply_modality_lut

    arr = np.moveaxis(ref, 1, -1)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape[0] == 1:
        arr = arr[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except Exception:
        return None


def check_file(path: str) -> dict[str, Any]:
    """Run every public entry point on ``path``; return one verdict per call."""
    import torch

    from torchdicom import DicomDataset, read_frames, scaled_px, scan

    size = os.path.getsize(path)
    bound = ALLOC_FLOOR + ALLOC_PER_FILE_BYTE * size
    results: dict[str, Any] = {}
    header: dict[str, Any] = {}

    index_holder: list[Any] = []

    def scan_call():
        index = scan([path], progress=False, workers=0)
        index_holder.append(index)
        assert len(index) + len(index.errors) == 1, "scan lost the file"
        if len(index.errors):
            # scan never raises for a bad file: surface its recorded error type.
            return ("error", index.errors["error_type"].iloc[0], index.errors["reason"].iloc[0])
        return ("row", index.row(0))

    def item_call():
        # The index scan_call built (one scan per input keeps the run fast).
        ds = DicomDataset(index_holder[0], frames="first", on_error="raise")
        if len(ds) == 0:
            return None
        return ds[0]["image"].numpy()

    calls = {
        "read_frames": lambda: read_frames(path).numpy(),
        "scaled_px": lambda: scaled_px(path).numpy(),
        "scan": scan_call,
        "dataset_item": item_call,
    }
    raw: dict[str, tuple[str, Any, float, int]] = {}
    for name, fn in calls.items():
        if name == "dataset_item" and not index_holder:
            continue  # scan failed outright (already a failure verdict)
        raw[name] = _guarded(fn, HANG_S * 5)
    if raw["scan"][0] == "ok" and raw["scan"][1][0] == "row":
        row = raw["scan"][1][1]
        header = row
        raw["read_frames_row"] = _guarded(lambda: read_frames(row).numpy(), HANG_S * 5)

    ref, ref_ds = _reference(path)
    for name, (status, value, elapsed, peak) in raw.items():
        verdict: dict[str, Any] = {"elapsed": elapsed, "peak": peak}
        if status == "hang" or elapsed > HANG_S:
            verdict["class"] = "hang"
        elif status == "foreign":
            verdict.update({"class": "foreign", "detail": value})
        elif peak > bound:
            verdict.update({"class": "overalloc", "detail": f"peak {peak} > bound {bound}"})
        elif status == "error":
            verdict.update(
                {
                    "class": "stricter" if ref is not None else "rejected",
                    "error_type": type(value).__name__,
                    "reason": value.reason,
                    "names_file": value.path == path,
                }
            )
        elif name == "scan":
            if value[0] == "error":
                verdict.update(
                    {
                        "class": "stricter" if ref is not None else "rejected",
                        "error_type": value[1],
                        "reason": value[2],
                        "names_file": path in value[2],
                    }
                )
            else:
                verdict["class"] = "equal" if ref is not None else "lenient"
        elif value is None:  # dataset_item on a file scan left out
            verdict["class"] = "stricter" if ref is not None else "rejected"
            verdict.update(
                {"error_type": "(left out by scan)", "reason": "not indexed", "names_file": True}
            )
        else:
            verdict.update(_judge_pixels(name, value, ref, ref_ds, header, path))
        results[name] = verdict
    del torch
    return results


def _judge_pixels(
    name: str,
    value: np.ndarray,
    ref: np.ndarray | None,
    ref_ds: Any,
    header: dict[str, Any],
    path: str,
) -> dict[str, Any]:
    if ref is not None:
        if name in ("read_frames", "read_frames_row"):
            expected = ref
        elif name == "dataset_item":
            expected = ref[0]
        else:  # scaled_px: float32 arithmetic vs pydicom's float64
            expected = _scaled_reference(ref, ref_ds)
            if expected is None:
                return {"class": "lenient"}
            if value.shape == expected.shape and np.allclose(
                value, expected, rtol=1e-5, atol=1e-3, equal_nan=True
            ):
                return {"class": "equal"}
            return {"class": "mismatch", "detail": f"scaled {value.shape} vs {expected.shape}"}
        if _same(value, expected):
            return {"class": "equal"}
        return {
            "class": "mismatch",
            "detail": f"ours {value.dtype}{value.shape} vs pydicom {expected.dtype}{expected.shape}",
        }
    # pydicom failed: at least the shape must follow the header we indexed.
    if header:
        c, h, w = (int(header[k]) for k in ("samples_per_pixel", "rows", "columns"))
        frames = int(header["frames"])
        ok = {
            "read_frames": (frames, c, h, w),
            "read_frames_row": (frames, c, h, w),
            "dataset_item": (c, h, w),
        }.get(name)
        if ok is not None and tuple(value.shape) != ok:
            return {"class": "mismatch", "detail": f"shape {value.shape} vs header {ok}"}
    return {"class": "lenient"}


# --------------------------------------------------------------------------- worker process
# One real file per decode route with a one-time cost per process: the JPEG YCbCr tables
# and their numba kernel (compiled on first use: seconds in a fresh install, before numba's
# on-disk cache exists), the codec imports. Paid before the first input, the CPU-second
# hang limit measures each input's own work, not the process's start-up.
_WARM_UP_FILES = (
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG-lossy.dcm",
    "JPEG2000.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
)


def _warm_up() -> None:
    from pydicom.data import get_testdata_file

    from torchdicom import read_frames

    for name in _WARM_UP_FILES:
        with contextlib.suppress(Exception):
            read_frames(get_testdata_file(name))


def _worker_main(conn: Any) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    import logging

    logging.disable(logging.CRITICAL)  # datasets log skipped files; not under test here
    import torchdicom  # noqa: F401 - import before tracing starts

    _warm_up()
    tracemalloc.start()
    while True:
        path = conn.recv()
        if path is None:
            return
        try:
            conn.send(check_file(path))
        except BaseException as exc:  # the harness itself failed: report, never die silently
            conn.send({"harness": "".join(traceback.format_exception(exc))})


class Worker:
    """A long-lived checking process, restarted after a crash or a hang."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._ctx = mp.get_context("spawn")  # no inherited torch/OpenMP state from the parent
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def check(self, path: str) -> dict[str, Any]:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send(path)
        if self._conn.poll(self.timeout_s):
            try:
                return self._conn.recv()
            except EOFError:
                pass  # died while answering
            self._stop()
            return {"crash": "worker died"}
        alive = self._proc.is_alive()
        self._stop()
        return {"crash": "worker hung (killed)" if alive else "worker died"}

    def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.kill()
                self._proc.join(5)
        self._proc = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(Exception):
                self._conn.send(None)
                self._proc.join(5)
        self._stop()
