"""Run every benchmark and write ``benchmarks/RESULTS.md`` (and the README's headline table).

``python -m benchmarks [--quick] [--write] [--only NAME ...]``

The full run writes ``benchmarks/RESULTS.md`` as one coherent document — a header with
the machine (CPU model, cores, memory, load, library versions), the command, then one
section per benchmark — plus ``benchmarks/scaling_*.png`` and the headline table
between the ``BENCHMARK_TABLE`` markers of ``README.md``. ``--quick`` (about a minute
per benchmark module) prints the report and keeps the full results on disk untouched
unless ``--write`` is given. A benchmark module that is missing or raises is recorded
in its section and makes the exit status 1; nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchdicom._atomic import write_text_atomic

__all__ = ["SECTIONS", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README_START = "<!-- BENCHMARK_TABLE:start (written by python -m benchmarks) -->"
README_END = "<!-- BENCHMARK_TABLE:end -->"
README_PLACEHOLDER = "BENCHMARK_TABLE"


@dataclass(frozen=True)
class Section:
    key: str  # for --only
    heading: str  # the "## ..." line of RESULTS.md; other engineers' headings are kept verbatim
    module: str


SECTIONS = (
    Section("startup", "## Start-up (python -m benchmarks.startup)", "benchmarks.startup"),
    Section("peers", "## Peers (python -m benchmarks.peers)", "benchmarks.peers"),
    Section("io", "## I/O (python -m benchmarks.io)", "benchmarks.io"),
    Section("scan", "## Scan (python -m benchmarks.scan)", "benchmarks.scan"),
    Section(
        "scan_dask",
        "## Distributed scan (python -m benchmarks.scan_dask)",
        "benchmarks.scan_dask",
    ),
    Section(
        "transforms", "## Transforms (python -m benchmarks.transforms)", "benchmarks.transforms"
    ),
    Section("loader", "## Loader (python -m benchmarks.loader)", "benchmarks.loader"),
    Section("resize", "## Size policy (python -m benchmarks.resize)", "benchmarks.resize"),
    Section(
        "scaling", "## Scaling and memory (python -m benchmarks.scaling)", "benchmarks.scaling"
    ),
    Section("remote", "## Remote (python -m benchmarks.remote)", "benchmarks.remote"),
    Section("shards", "## Shards (python -m benchmarks.shards)", "benchmarks.shards"),
)

_VERSIONS = (
    "torch",
    "numpy",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "pandas",
    "pyarrow",
    "kornia",
    "dicomsdl",
    "monai",
    "torchio",
    "SimpleITK",
    "fastai",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def _versions() -> str:
    parts = []
    for dist in _VERSIONS:
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def _run_section(section: Section, quick: bool, plot_dir: Path) -> tuple[str, bool, float]:
    """(markdown body, ok, seconds). A missing module or an exception becomes the body."""
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(section.module)
    except ImportError as exc:
        return (
            f"**NOT RUN**: `{section.module}` could not be imported ({type(exc).__name__}: {exc}).",
            False,
            time.perf_counter() - t0,
        )
    run: Callable[..., str] | None = getattr(module, "run", None)
    if run is None:
        return f"**NOT RUN**: `{section.module}` has no `run()`.", False, 0.0
    try:
        body = run(quick=quick, plot_dir=plot_dir) if section.key == "scaling" else run(quick=quick)
        return str(body).strip(), True, time.perf_counter() - t0
    except Exception as exc:  # recorded in the report and in the exit status, never hidden
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        last = tb[-1].strip()
        return (
            f"**FAILED** after {time.perf_counter() - t0:.0f} s: `{last}`\n\n"
            "```\n" + "".join(tb[-6:]).rstrip() + "\n```",
            False,
            time.perf_counter() - t0,
        )


_MACHINE = "## Machine"
_HEADLINE = "## Headline (torchdicom speed-up over each peer, same run)"
_GPU = "## GPU (python -m benchmarks.gpu)"


def _sections(path: Path) -> dict[str, str]:
    """The ``## `` sections of an earlier results file: heading -> body (stripped)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    heading: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            if heading is not None:
                out[heading] = "\n".join(body).strip()
            heading, body = line.rstrip(), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        out[heading] = "\n".join(body).strip()
    return out


def _headline() -> list[str] | None:
    try:
        from benchmarks import peers
    except ImportError:
        return None
    return peers.headline(peers.LAST) if peers.LAST else None


def _readme_block(headline: list[str], command: str, when: str) -> str:
    return "\n".join(
        [
            README_START,
            "",
            "torchdicom's speed-up over each reader (its time / torchdicom's time; > 1 = torchdicom"
            " faster; plain read is the physical limit of touching every byte once, so there"
            " ~1 is the best possible):",
            "",
            *headline,
            "",
            "Cine rows: MONAI and TorchIO have no frame access, so one frame costs them a"
            " whole-file load; for clips they load the file once and slice. Compressed rows are"
            " bound by the codec: each frame is one pread of its indexed code-stream span,"
            " decoded by libjpeg-turbo (JPEG), openjpeg (JPEG 2000), CharLS (JPEG-LS) or"
            " pylibjpeg-rle; see the codec-alone table in RESULTS.md.",
            "",
            f"From `{command}` ({when}). Absolute times, the machine, I/O, transform and loader"
            " tables: [benchmarks/RESULTS.md](benchmarks/RESULTS.md). Scaling plots:"
            " [files](benchmarks/scaling_files.png), [frames per file](benchmarks/scaling_frames.png),"
            " [image size](benchmarks/scaling_size.png),"
            " [DataLoader workers](benchmarks/scaling_workers.png).",
            "",
            README_END,
        ]
    )


def update_readme(block: str, readme: Path = ROOT / "README.md") -> bool:
    """Replace the placeholder line (first time) or the marked block; touch nothing else."""
    text = readme.read_text()
    if README_START in text and README_END in text:
        start = text.index(README_START)
        end = text.index(README_END) + len(README_END)
        new = text[:start] + block + text[end:]
    else:
        lines = text.split("\n")
        if README_PLACEHOLDER not in lines:
            return False
        lines[lines.index(README_PLACEHOLDER)] = block
        new = "\n".join(lines)
    if new != text:
        write_text_atomic(readme, new)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns 0 when every section ran, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short version")
    parser.add_argument(
        "--write",
        action="store_true",
        help="with --quick: write RESULTS.md, the PNGs and the README table anyway",
    )
    parser.add_argument(
        "--only", nargs="+", choices=[s.key for s in SECTIONS], help="run only these sections"
    )
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="the results file")
    args = parser.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m benchmarks", *argv_list])
    write = (not args.quick) or args.write
    # Quick runs that do not write keep their plots out of the tree.
    tmp = None if write else tempfile.TemporaryDirectory(prefix="torchdicom-bench-plots-")
    plot_dir = HERE if tmp is None else Path(tmp.name)

    started = dt.datetime.now(dt.timezone.utc)
    load_start = _load()
    t0 = time.perf_counter()
    chosen = [s for s in SECTIONS if not args.only or s.key in args.only]
    bodies: list[tuple[Section, str, bool, float]] = []
    for section in chosen:
        print(f"[benchmarks] {section.module} ...", file=sys.stderr, flush=True)
        body, ok, seconds = _run_section(section, args.quick, plot_dir)
        print(
            f"[benchmarks] {section.module}: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        bodies.append((section, body, ok, seconds))
    total = time.perf_counter() - t0
    failed = [s.module for s, _, ok, _ in bodies if not ok]

    import torch

    headline = _headline()
    when = f"{started:%Y-%m-%d %H:%M} UTC, {_cpu_model()}, {os.cpu_count()} cores"
    lines = [
        "# torchdicom benchmark results",
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {total / 60:.1f} min"
        f" (git {_git_commit()}). Every ratio below was measured in this one run, on the same"
        " files with the same warm page cache; absolute numbers appear only beside their"
        " ratios and move with the machine's load."
        + (
            " Only the sections named in the command ran this time; the others are kept from"
            " earlier runs (each names its own command)."
            if args.only
            else ""
        ),
        "",
        _MACHINE,
        "",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores; memory {_memory_gib()};"
        f" {platform.system()} {platform.release()} {platform.machine()}",
        f"- Load average (1/5/15 min): {load_start} at start, {_load()} at end"
        " (a shared machine: other jobs ran beside this one)",
        f"- Python {platform.python_version()}; {_versions()}",
        f"- CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
        f"- Command: `{command}`; sections: "
        + ", ".join(f"{s.key} {sec:.0f} s{'' if ok else ' FAILED'}" for s, _, ok, sec in bodies),
        "",
        _HEADLINE,
        "",
        "\n".join(headline or ["Not available: the peers section did not run or failed."]),
        "",
        "Cells are column time / torchdicom time (> 1: torchdicom faster). In the plain-read"
        " column torchdicom cannot exceed ~1: that is the physical limit of reading the bytes.",
        "",
    ]
    fresh = {section.heading: body for section, body, _, _ in bodies}
    # --only: the sections not run this time keep their text from the results file (each
    # says which run wrote it), and so do sections another tool wrote; nothing is dropped.
    kept = _sections(Path(args.out)) if args.only else {}
    if args.only and headline is None and _HEADLINE in kept:
        at = lines.index(_HEADLINE)
        lines[at + 2 : at + 6] = [kept[_HEADLINE], ""]  # the earlier table and its caption
    for section in SECTIONS:
        body = fresh.get(section.heading, kept.get(section.heading))
        if body is not None:
            lines += [section.heading, "", body, ""]
    known = {section.heading for section in SECTIONS} | {_MACHINE, _HEADLINE, _GPU}
    for heading, body in kept.items():
        if heading not in known:
            lines += [heading, "", body, ""]
    lines += [
        _GPU,
        "",
        (
            "Not run by this suite on this machine (no CUDA device). On a GPU machine run"
            " `python -m benchmarks.gpu --out gpu.md`: `pytest -m cuda`, device-side transforms"
            " at B = 64 (images/s vs CPU, host→device bytes per image), the loader with"
            " device-side transforms; it exits 2 with one line when there is no CUDA device."
            if not torch.cuda.is_available()
            else "A CUDA device is present: run `python -m benchmarks.gpu` for the device tables."
        ),
        "",
    ]
    if failed:
        lines += [f"**Sections that did not run or failed: {', '.join(failed)}.**", ""]
    report = "\n".join(lines).rstrip() + "\n"

    if write:
        out = Path(args.out)
        write_text_atomic(out, report)  # a crash mid-write must not leave half a results file
        print(f"[benchmarks] wrote {out}", file=sys.stderr)
        if headline and (args.only is None or "peers" in args.only):
            if update_readme(_readme_block(headline, command, when)):
                print("[benchmarks] updated the README headline table", file=sys.stderr)
            else:
                print("[benchmarks] README has no BENCHMARK_TABLE placeholder", file=sys.stderr)
    else:
        print(report)
        print(
            "[benchmarks] --quick: RESULTS.md, plots and README left untouched (add --write)",
            file=sys.stderr,
        )
    if tmp is not None:
        tmp.cleanup()
    if failed:
        print(f"[benchmarks] FAILED or not run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
