"""Peak memory of a scan and of an epoch, per file: it must be flat beyond the index itself.

``python -m benchmarks.memory [--quick]``

Each measurement runs in a fresh subprocess (``python -m benchmarks.memory --child
KIND DIR``) that reports its resident set after imports (the baseline) and its
high-water mark ``VmHWM`` from ``/proc/self/status`` at the end; the parent also reads
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` as a cross-check. The scan runs
in-process (``workers=0``) so that the whole index is built inside the measured
process; the epoch is ``DicomDataset(frames="first")`` through a ``DataLoader``
(batch 32, no workers) with ``torchdicom.collate``.

Reported: peak − baseline, that per file, and the marginal bytes per file between
the smallest and the largest set (what one more file costs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import ct_dataset

__all__ = ["make_file_tree", "measure", "run"]

ROOT = Path(__file__).resolve().parent.parent


def make_file_tree(directory: Path, n: int, size: int = 64) -> Path:
    """``n`` small int16 CT files in 10 sub-folders (a PACS-like tree), written fast.

    One file is encoded with pydicom and its bytes copied: a header parser's cost does not
    depend on the UID values, and writing 10 000 distinct files would dominate the run.
    """
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    ds = ct_dataset(size, size, 16, 16)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PixelData = np.random.default_rng(0).integers(0, 2000, (size, size), np.int16).tobytes()
    template = directory / "_template.dcm"
    ds.save_as(template, enforce_file_format=True)
    data = template.read_bytes()
    template.unlink()
    for i in range(n):
        sub = directory / f"series{i % 10:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"IM{i:06d}").write_bytes(data)
    return directory


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _child(kind: str, directory: str) -> None:
    import torch

    from torchdicom import DicomDataset, collate, scan

    baseline = _status_bytes("VmRSS")
    if kind == "scan":
        n = len(scan(directory, workers=0, progress=False))
    elif kind == "epoch":
        dataset = DicomDataset(scan(directory, workers=0, progress=False), frames="first")
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate)
        n = 0
        for batch in loader:
            n += batch["image"].shape[0]
    else:
        raise ValueError(f"kind must be 'scan' or 'epoch'. Got: {kind!r}")
    print(json.dumps({"n": n, "baseline": baseline, "peak": _status_bytes("VmHWM")}))


def _measure_one(kind: str, directory: Path) -> dict[str, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", kind, str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no output"
        raise RuntimeError(f"memory child '{kind} {directory}' failed: {tail}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # ru_maxrss (KiB on Linux) is the largest child so far; it only confirms VmHWM when it grew.
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["ru_maxrss"] = after * 1024 if after > before else 0
    return result


def measure(dirs: dict[int, Path]) -> str:
    """Measure scan and epoch peak RSS for each ``{n_files: directory}``; return markdown."""
    lines = [
        "| workload | files | baseline RSS | peak RSS | peak − baseline | per file |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    marginal: list[str] = []
    for kind in ("scan", "epoch"):
        results = {n: _measure_one(kind, d) for n, d in sorted(dirs.items())}
        for n, r in results.items():
            if r["n"] != n:
                raise RuntimeError(f"memory child {kind} saw {r['n']} files, expected {n}")
            extra = r["peak"] - r["baseline"]
            lines.append(
                f"| {kind} | {n:,} | {r['baseline'] / 2**20:.0f} MiB | {r['peak'] / 2**20:.0f} MiB"
                f" | {extra / 2**20:.1f} MiB | {extra / n:,.0f} B |"
            )
        (n0, r0), (n1, r1) = next(iter(results.items())), list(results.items())[-1]
        slope = (r1["peak"] - r0["peak"]) / (n1 - n0)
        marginal.append(f"{kind}: **{slope:,.0f} bytes per additional file** ({n0:,} → {n1:,})")
    lines += [
        "",
        "Marginal cost — " + "; ".join(marginal) + ". The index row (paths, UIDs, geometry,"
        " offsets in pandas) is the expected part of it; pixel buffers are per batch and do not"
        " grow with the number of files.",
        "",
        "Peak = VmHWM of a fresh subprocess; baseline = its RSS after importing torch and"
        " torchdicom; scan in-process (workers=0); epoch: DataLoader batch 32, no workers.",
    ]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Generate 100 / 1 000 / 10 000 (quick: 100 / 1 000) small files and measure them."""
    ns = [100, 1_000] if quick else [100, 1_000, 10_000]
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-memory-") as tmp:
        dirs = {n: make_file_tree(Path(tmp) / f"files_{n}", n) for n in ns}
        return measure(dirs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 and 1 000 files")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
    else:
        print(run(quick=args.quick))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
