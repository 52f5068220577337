"""Scan benchmark: header rows per second per process, the lean scan against pydicom.

``python -m benchmarks.scan [--quick] [--n N]``

Generates ``N`` 512x512 int16 CT files (Explicit VR Little Endian, rescale -1024), warms
the page cache, then measures in one run, interleaved (a, b, c, a, b, c, …), the median
of several passes over all files, each in this one process:

* **torchdicom lean**: ``header_row(path)`` (the default: the raw-element walk of
  :mod:`torchdicom.io.rawheader`);
* **torchdicom pydicom path**: ``header_row(path, lean=False)`` (the scan before issue 16);
* **torchdicom scan**: ``scan(paths, workers=0)``: the rows plus the pandas index;
* **pydicom**: ``pydicom.dcmread(path, stop_before_pixels=True)`` (a header only, no row);
* **dicomsdl** (optional, when installed): ``dicomsdl.open(path, 0x7FE00010)`` (header up
  to the pixel data, no row), and the same plus ``getValues`` of the row's elements.

Target (issue 16): the lean scan >= 1.5x pydicom's ``dcmread(stop_before_pixels=True)``.
The two torchdicom paths are checked to give the same rows first (tests/test_lean_scan.py
checks every real file).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from benchmarks._common import medians_s, warm_page_cache, write_ct
from torchdicom import scan
from torchdicom.io import header
from torchdicom.io.header import header_row

__all__ = ["run"]

# The elements a row is built from, for dicomsdl's getValues.
_KEYWORDS = list(header._LEAN_ELEMENTS)


def _dicomsdl_readers() -> dict[str, Callable[[str], object]]:
    try:
        import dicomsdl
    except ImportError:
        return {}
    return {
        "dicomsdl open(path, 0x7FE00010) (optional)": lambda p: dicomsdl.open(p, 0x7FE00010),
        "dicomsdl open + getValues(row elements) (optional)": lambda p: dicomsdl.open(
            p, 0x7FE00010
        ).getValues(_KEYWORDS),
    }


def _same_row(a: dict, b: dict) -> bool:
    for column, value in b.items():
        other = a[column]
        if isinstance(value, np.ndarray):
            if not np.array_equal(other, value, equal_nan=value.dtype.kind == "f"):
                return False
        elif not (value == other or (value != value and other != other)):
            return False
    return list(a) == list(b)


def run(quick: bool = False, n: int = 500) -> str:
    """Run the benchmark and return the markdown report.

    Args:
        quick: at most 100 files, fewer repeats.
        n: number of CT files.
    """
    if quick:
        n = min(n, 100)
    repeats = 5 if quick else 15
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-scan-") as tmp:
        paths = [str(p) for p in write_ct(Path(tmp) / "ct", n)]
        warm_page_cache(map(Path, paths))
        for p in paths[:20]:
            assert _same_row(header_row(p), header_row(p, lean=False)), p
        assert header._lean_row(paths[0], os.stat(paths[0]), None) is not None

        def over_all(read: Callable[[str], object]) -> Callable[[], None]:
            def go() -> None:
                for p in paths:
                    read(p)

            return go

        readers: dict[str, Callable[[str], object]] = {
            "torchdicom header_row (lean, default)": header_row,
            "torchdicom header_row(lean=False) (pydicom path, before)": lambda p: header_row(
                p, lean=False
            ),
            "pydicom dcmread(stop_before_pixels=True)": lambda p: pydicom.dcmread(
                p, stop_before_pixels=True
            ),
            **_dicomsdl_readers(),
        }
        passes = {name: over_all(read) for name, read in readers.items()}
        # The whole scan: rows, the pandas index, the errors table (one process).
        passes["torchdicom scan(paths, workers=0) (index built)"] = lambda: scan(
            paths, workers=0, progress=False
        )

        times = medians_s(list(passes.values()), repeats)

    rates = {name: n / t for name, t in zip(passes, times, strict=True)}
    pydicom_rate = rates["pydicom dcmread(stop_before_pixels=True)"]
    lean_rate = rates["torchdicom header_row (lean, default)"]
    lines = [
        f"{n} files of 512x512 int16 CT (Explicit VR LE, page cache warm), one process;"
        f" median of {repeats} interleaved passes over all files."
        f" {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" pydicom {pydicom.__version__}. Only the torchdicom rows build an index row.",
        "",
        "| reader | files/s | µs/file | vs pydicom stop_before_pixels |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {1e6 / rate:.0f} | {rate / pydicom_rate:.2f}x |")
    ratio = lean_rate / pydicom_rate
    lines += [
        "",
        f"Target: lean scan >= 1.5x pydicom dcmread(stop_before_pixels=True):"
        f" {'met' if ratio >= 1.5 else 'MISSED'}: {ratio:.2f}x"
        f" ({lean_rate / rates['torchdicom header_row(lean=False) (pydicom path, before)']:.2f}x"
        " the scan before).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 files, fewer repeats")
    parser.add_argument("--n", type=int, default=500, help="number of CT files (default 500)")
    args = parser.parse_args(argv)
    print(run(quick=args.quick, n=args.n))


if __name__ == "__main__":
    main()
