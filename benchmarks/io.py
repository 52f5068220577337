"""I/O benchmark: files/s reading single-frame CT, and one frame of a long cine.

``python -m benchmarks.io [--quick] [--n N]``

Generates ``N`` 512x512 int16 CT files (Explicit VR Little Endian, rescale
-1024) with Bits Stored 16, and ``N`` more with Bits Stored 12 (the two common
scanner outputs; 12-in-16 makes a reader clear or sign-extend the unused high
bits as pydicom does), in a temporary folder, warms the page cache, then
measures in one run, each repeated and reported as the median:

* **plain read**: ``open`` + ``read()`` of each whole file — the physical
  limit of any reader that touches every byte once;
* **torchdicom indexed**: ``read_frames(row)`` with rows from :func:`scan`
  (header parsed once at scan time, not in the timed loop);
* **pydicom**: ``pydicom.dcmread(path).pixel_array``;
* **dicomsdl** (optional, when installed): ``dicomsdl.open(path).pixelData(storedvalue=True)``.

And a 1000-frame 253x253 8-bit native multi-frame file: one random frame by
``read_frames(path, frames=k)`` against decoding the whole file with
``pydicom.dcmread(path).pixel_array`` (what a reader without frame access
has to do to get one frame).

Targets (issue 3): indexed >= 0.7x plain read and >= 5x pydicom; one frame
of the cine >= 100x faster than whole-file decode.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

from benchmarks._common import ct_dataset, median_s, warm_page_cache, write_ct
from torchdicom import read_frames, scan

__all__ = ["main", "run"]

CINE_FRAMES = 1000
CINE_SIZE = 253


def _write_cine(path: Path) -> None:
    rng = np.random.default_rng(1)
    ds = ct_dataset(CINE_SIZE, CINE_SIZE, 8, 8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.Modality = "US"
    ds.NumberOfFrames = CINE_FRAMES
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
    data = rng.integers(0, 256, (CINE_FRAMES, CINE_SIZE, CINE_SIZE), dtype=np.uint8).tobytes()
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    ds.save_as(path, enforce_file_format=True)


def _dicomsdl_reader() -> Callable[[Path], object] | None:
    try:
        import dicomsdl
    except ImportError:
        return None
    return lambda p: dicomsdl.open(str(p)).pixelData(storedvalue=True)


def run(quick: bool = False, n: int = 500) -> str:
    """Run the benchmark and return the markdown report.

    Args:
        quick: fewer files (at most 100) and repeats, a 200-call frame sample.
        n: number of CT files.
    """
    if quick:
        n = min(n, 100)
    repeats = 3 if quick else 7
    frame_calls = 200 if quick else 1000
    whole_repeats = 3 if quick else 5

    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-io-") as tmp:
        root = Path(tmp)
        paths = write_ct(root / "ct16", n, bits_stored=16)
        paths12 = write_ct(root / "ct12", n, bits_stored=12)
        cine = root / "cine.dcm"
        _write_cine(cine)
        warm_page_cache([*paths, *paths12, cine])

        rows = scan(root / "ct16", progress=False).rows()
        rows12 = scan(root / "ct12", progress=False).rows()
        assert len(rows) == len(rows12) == n
        # Same pixels from every reader, checked once outside the timings.
        ref = pydicom.dcmread(paths[0]).pixel_array
        assert np.array_equal(read_frames(rows[0])[0, 0].numpy(), ref)
        ref12 = pydicom.dcmread(paths12[0]).pixel_array
        assert np.array_equal(read_frames(rows12[0])[0, 0].numpy(), ref12)

        def plain() -> None:
            for p in paths:
                with open(p, "rb") as f:
                    f.read()

        def indexed() -> None:
            for r in rows:
                read_frames(r)

        def indexed12() -> None:
            for r in rows12:
                read_frames(r)

        def with_pydicom() -> None:
            for p in paths:
                pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is the point

        timings: dict[str, float] = {
            "plain open+read (physical limit)": median_s(plain, repeats),
            "torchdicom read_frames(row) (indexed)": median_s(indexed, repeats),
            "torchdicom read_frames(row), Bits Stored 12": median_s(indexed12, repeats),
            "pydicom dcmread().pixel_array": median_s(with_pydicom, repeats),
        }
        sdl = _dicomsdl_reader()
        if sdl is not None:
            assert np.array_equal(sdl(paths[0]), ref)

            def with_dicomsdl() -> None:
                for p in paths:
                    sdl(p)

            timings["dicomsdl pixelData() (optional)"] = median_s(with_dicomsdl, repeats)

        # One frame of the cine, random k each call.
        rng = random.Random(0)
        ks = [rng.randrange(CINE_FRAMES) for _ in range(frame_calls)]
        whole = pydicom.dcmread(cine).pixel_array
        assert torch.equal(read_frames(cine, frames=ks[0])[0, 0], torch.from_numpy(whole[ks[0]]))
        del whole

        def one_frame() -> None:
            for k in ks:
                read_frames(cine, frames=k)

        per_frame = median_s(one_frame, repeats) / frame_calls
        per_whole = median_s(lambda: pydicom.dcmread(cine).pixel_array, whole_repeats)

    plain_rate = n / timings["plain open+read (physical limit)"]
    pydicom_rate = n / timings["pydicom dcmread().pixel_array"]
    lines = [
        f"{n} files of 512x512 int16 CT per set (Explicit VR LE, page cache warm; plain read,"
        f" pydicom and dicomsdl on the Bits Stored 16 set); median of {repeats} runs."
        f" {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" torch {torch.__version__}, pydicom {pydicom.__version__}.",
        "",
        "| reader | files/s | ms/file | vs plain read | torchdicom (BS 16) vs it |",
        "|---|---:|---:|---:|---:|",
    ]
    ours = n / timings["torchdicom read_frames(row) (indexed)"]
    ours12 = n / timings["torchdicom read_frames(row), Bits Stored 12"]
    for name, t in timings.items():
        rate = n / t
        lines.append(
            f"| {name} | {rate:,.0f} | {1000 * t / n:.3f} | {rate / plain_rate:.2f}x | {ours / rate:.2f}x |"
        )
    frame_speedup = per_whole / per_frame

    def verdict(value: float, target: float) -> str:
        return f"{'met' if value >= target else 'MISSED'}: {value:.2f}x"

    lines += [
        "",
        f"One frame of a {CINE_FRAMES}-frame {CINE_SIZE}x{CINE_SIZE} 8-bit native multi-frame file"
        f" (random frame, {frame_calls} calls per run):",
        "",
        "| reader | ms | speed-up |",
        "|---|---:|---:|",
        f"| torchdicom read_frames(path, frames=k) | {1000 * per_frame:.3f} | {frame_speedup:,.0f}x |",
        f"| pydicom dcmread().pixel_array (whole file) | {1000 * per_whole:.1f} | 1x |",
        "",
        f"Targets: indexed >= 0.7x plain read (Bits Stored 16 {verdict(ours / plain_rate, 0.7)};"
        f" Bits Stored 12 {verdict(ours12 / plain_rate, 0.7)}),"
        f" >= 5x pydicom (BS 16 {verdict(ours / pydicom_rate, 5)};"
        f" BS 12 {verdict(ours12 / pydicom_rate, 5)}),"
        f" one frame >= 100x whole-file decode ({verdict(frame_speedup, 100)}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.io", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 files, fewer repeats")
    parser.add_argument("--n", type=int, default=500, help="number of CT files (default 500)")
    args = parser.parse_args(argv)
    print(run(quick=args.quick, n=args.n))


if __name__ == "__main__":
    main()
