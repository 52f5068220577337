"""``torchdicom`` command line: scan | info | show | demo | bench.

Every command exits non-zero with one clear line on stderr when it fails.
Patient identifiers are masked (hashed) unless ``--show-phi`` is given.
``info``, ``scan`` and ``--help`` use header-level code (pydicom, numpy, pandas) only and
never import torch, so they start in a fraction of a second; output cut short by the
reader (``torchdicom info FILE | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

# Header elements `info` prints, in order. Identifying ones are masked by default.
_INFO_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "Modality",
    "Manufacturer",
    "SOPClassUID",
    "SeriesDescription",
    "SeriesInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
)


def _cmd_scan(args: argparse.Namespace) -> int:
    from torchdicom.index import scan

    index = scan(args.dir, workers=args.workers, cache=args.cache, progress=not args.quiet)
    print(index.summary())
    if args.out:
        index.to_parquet(args.out)
        print(f"index written to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    # Header-level code and numpy only: `info` must not pay for importing torch.
    import numpy as np
    from pydicom.uid import UID

    from torchdicom._privacy import IDENTIFYING_ELEMENTS, patient_hash
    from torchdicom.io.dicomfile import dcmread
    from torchdicom.io.frames import read_frames_numpy, row_for_path, scaled_px_numpy

    # Read the pixels first: a damaged file then fails with one error line
    # before anything is printed. A header whose elements are shifted by
    # damage can otherwise parse "fine" and show identifying bytes under
    # harmless-looking keys, bypassing the masking of PatientName/PatientID.
    row = row_for_path(args.file)
    frame = args.frame
    stored = read_frames_numpy(row, frame).astype(np.float64)
    values = scaled_px_numpy(row, frame).astype(np.float64)
    ds = dcmread(args.file, stop_before_pixels=True)
    print(f"file: {args.file}")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        print(f"{'TransferSyntax':<26} {ts} ({UID(str(ts)).name})")
    for key in _INFO_KEYS:
        if key not in ds:
            continue
        value = ds.get(key)
        masking = None if args.show_phi else IDENTIFYING_ELEMENTS.get(key)
        if masking is not None:
            text = f"<masked: hash {patient_hash(str(value))}>" if masking == "hash" else "<masked>"
        else:
            text = str(value)
        print(f"{key:<26} {text}")
    # std with ddof=1: the sample standard deviation, as torch.std gives.
    std = values.std(ddof=1) if values.size > 1 else math.nan
    print(
        f"pixels (frame {frame} of {row['frames']}): stored min {stored.min():g} max {stored.max():g}"
        f" mean {stored.mean():.2f}; scaled min {values.min():g} max {values.max():g}"
        f" mean {values.mean():.2f} std {std:.2f}"
    )
    return 0


def _parse_window(text: str | None):
    if text is None:
        return None
    if "," in text:
        width, level = (float(t) for t in text.split(",", 1))
        return (width, level)
    return text


def _cmd_show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from torchdicom import viz
    from torchdicom.io.frames import row_for_path, scaled_px

    row = row_for_path(args.file)
    image = scaled_px(row, args.frame)
    ax = viz.show(
        image, window=_parse_window(args.window), title=f"{Path(args.file).name} frame {args.frame}"
    )
    ax.figure.savefig(args.output, dpi=100, bbox_inches="tight")
    print(f"written {args.output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from torchdicom.demo import run_demo

    report = run_demo(
        args.data,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_workers=args.workers,
        max_time_s=args.max_time,
        small=args.small,
    )
    if not math.isnan(report.images_per_s):
        print(
            f"\ndone: {report.images_per_s:.0f} images/s through the loader; figures in {args.out}"
        )
    return 0


def _checkout() -> Path | None:
    """The source checkout holding ``benchmarks/``: beside the package (an editable or
    in-tree install), else the working directory; ``None`` for an installed wheel."""
    package_root = Path(__file__).resolve().parent.parent
    for root in (package_root, Path.cwd()):
        if (root / "benchmarks" / "__main__.py").is_file() and (root / "torchdicom").is_dir():
            return root
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks are not part of the package (they import peers and write RESULTS.md):
    # run them as their own program from the checkout, never import them.
    import subprocess

    root = _checkout()
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        *(["--quick"] if args.quick else []),
        *args.extra,
    ]
    if root is None:
        raise SystemExit(
            "torchdicom: error: the benchmarks live in the source repository, not in the installed"
            " package: in a checkout of torchdicom run `python -m benchmarks"
            + (" --quick" if args.quick else "")
            + "`"
        )
    print(f"running `{' '.join(['python', *command[1:]])}` in {root}", file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=root, check=False).returncode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchdicom", description="DICOM as first-class PyTorch data.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="index a folder of DICOM files and summarise it")
    s.add_argument("dir")
    s.add_argument("--out", help="write the index to this parquet file")
    s.add_argument("--cache", help="reuse/refresh this parquet index cache")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_scan)

    s = sub.add_parser("info", help="key header elements and pixel statistics of one file")
    s.add_argument("file")
    s.add_argument("--frame", type=int, default=0)
    s.add_argument("--show-phi", action="store_true", help="print patient identifiers unmasked")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("show", help="render one frame to a PNG")
    s.add_argument("file")
    s.add_argument("--frame", type=int, default=0)
    s.add_argument("--window", help="a preset name (brain, lungs, …) or WIDTH,LEVEL")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser("demo", help="train a small CNN on sample (or your) data and draw figures")
    s.add_argument("--data", help="your own folder instead of the generated samples")
    s.add_argument("--out", default="demo_out", help="folder for the PNG figures")
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--max-time", type=float, default=90.0, help="bound on training seconds")
    s.add_argument("--small", action="store_true", help="tiny sample sets (for tests)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser(
        "bench",
        help="run the benchmarks (python -m benchmarks, from a source checkout)",
        description="Run `python -m benchmarks` in the source checkout; other arguments"
        " (--only NAME ..., --write) are passed on.",
    )
    s.add_argument("--quick", action="store_true", help="the one-minute version")
    s.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        try:
            parser = _parser()
            args, extra = parser.parse_known_args(argv)
            if extra and args.command != "bench":
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.extra = extra
            code = _run(args)
        except SystemExit:  # --help, usage errors: flush here too
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`torchdicom info FILE | head`): it asked for less output,
        # which is not an error. Send what is still buffered to /dev/null so that the
        # interpreter's own flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _run(args: argparse.Namespace) -> int:
    from torchdicom.errors import TorchDicomError

    try:
        return int(args.func(args) or 0)
    except TorchDicomError as exc:
        print(f"torchdicom: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, IndexError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"torchdicom: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torchdicom: interrupted", file=sys.stderr)
        return 130
