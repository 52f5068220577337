"""Start-up: what first contact with torchdicom costs, against its targets (issue 13).

``python -m benchmarks.startup [--quick]``

Times whole processes, start to exit, in one run with the commands interleaved (a, b, c, ...,
a, b, c, ...) so that load from other jobs falls on each alike; reports the median of each:

* ``python -c pass`` (the interpreter alone, for scale),
* ``python -c "import torch"`` and ``python -c "import torchdicom"``: target
  ``import torchdicom`` ≤ ``import torch`` + 0.5 s,
* ``torchdicom info FILE`` and ``python -c "import pydicom; pydicom.dcmread(FILE)"``: target
  ``info`` ≤ 3 × the pydicom read,

on pydicom's own ``CT_small.dcm``. One untimed run of each first warms the page cache and
Python's bytecode caches.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["measure", "run"]

ROOT = Path(__file__).resolve().parent.parent
IMPORT_BUDGET_S = 0.5  # import torchdicom <= import torch + this
INFO_RATIO = 3.0  # torchdicom info FILE <= this x the pydicom read


def _info_command(path: str) -> list[str]:
    """The installed ``torchdicom`` script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "torchdicom"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "info", path]
    found = shutil.which("torchdicom")
    if found:
        return [found, "info", path]
    return [sys.executable, "-m", "torchdicom", "info", path]


def commands(path: str) -> dict[str, list[str]]:
    """The timed commands, by label."""
    py = sys.executable
    return {
        "python -c pass": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch"],
        "import torchdicom": [py, "-c", "import torchdicom"],
        "torchdicom info FILE": _info_command(path),
        "pydicom.dcmread(FILE)": [py, "-c", f"import pydicom; pydicom.dcmread({path!r})"],
    }


def _time(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - t0


def measure(repeats: int, path: str | None = None) -> dict[str, float]:
    """Median wall seconds of each command over ``repeats`` interleaved runs."""
    if path is None:
        from pydicom.data import get_testdata_file

        path = str(get_testdata_file("CT_small.dcm"))
    todo = commands(path)
    for command in todo.values():
        _time(command)  # warm-up: page cache, __pycache__
    times: dict[str, list[float]] = {label: [] for label in todo}
    for _ in range(repeats):
        for label, command in todo.items():
            times[label].append(_time(command))
    return {label: statistics.median(t) for label, t in times.items()}


def report(medians: dict[str, float], repeats: int) -> str:
    """The markdown section: the medians, then each target with its measured value."""
    lines = [
        "| command | median wall time |",
        "|---|---:|",
        *(f"| `{label}` | {seconds:.3f} s |" for label, seconds in medians.items()),
        "",
        "| target | measured | limit | met |",
        "|---|---:|---:|:---:|",
    ]
    extra = medians["import torchdicom"] - medians["import torch"]
    lines.append(
        f"| `import torchdicom` − `import torch` ≤ {IMPORT_BUDGET_S} s | {extra:+.3f} s"
        f" | {IMPORT_BUDGET_S:.3f} s | {'yes' if extra <= IMPORT_BUDGET_S else '**no**'} |"
    )
    ratio = medians["torchdicom info FILE"] / medians["pydicom.dcmread(FILE)"]
    lines.append(
        f"| `torchdicom info FILE` ≤ {INFO_RATIO:g} × pydicom read | {ratio:.2f} ×"
        f" | {INFO_RATIO:g} × | {'yes' if ratio <= INFO_RATIO else '**no**'} |"
    )
    lines += [
        "",
        f"Whole processes, start to exit, median of {repeats} interleaved runs after one warm-up"
        " each; FILE is pydicom's `CT_small.dcm`. `import torchdicom` loads no third-party"
        " package (each public name loads its module on first use) and `info` reads the header"
        " and the frame with pydicom and numpy, without torch.",
    ]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Measure (5 runs each when quick, else 15) and return the markdown section."""
    repeats = 5 if quick else 15
    return report(measure(repeats), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 runs of each command, not 15")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
