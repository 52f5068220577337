"""GPU checks and benchmarks, to run unattended on a CUDA machine.

``python -m benchmarks.gpu [--quick] [--out FILE] [--skip-tests]``

1. ``pytest -m cuda`` (the tests marked ``cuda``; they are skipped on CPU machines).
2. Device-side transforms on a batch of B = 64 512² int16 CT images
   (``Rescale → MultiWindow(brain, subdural, bone) + freqhist channel``): images/s on
   the device (host→device copy from pinned memory included) against the same
   pipeline on the CPU, and the host→device bytes per image, computed from the batch
   tensor (``element_size() * numel / B``: 2 bytes per pixel for int16).
3. The loader with device-side transforms: ``DicomDataset`` + ``collate`` through a
   ``DataLoader`` (pinned memory), raw int16 batches copied to the device and
   transformed there, against the same loop with the transforms on the CPU.
4. GPU decode: JPEG baseline cine clips and JPEG 2000 lossless CT through
   ``read_frames(row, device="cuda")`` (nvImageCodec) against the CPU routes plus a copy.
5. ``benchmarks.transforms.run(device="cuda")`` (and ``benchmarks.loader.run`` with
   ``device="cuda"`` when it accepts one).

Without a CUDA device it prints one line to stderr and exits with status 2, so a
scheduler sees the failure instead of a silent CPU-only "success". Exit status 1
when the cuda tests or a benchmark fail; 0 otherwise.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks._common import median_s

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ["brain", "subdural", "brain_bone"]


def _pipeline() -> nn.Module:
    from torchdicom.transforms import MultiWindow, Rescale

    return nn.Sequential(Rescale(), MultiWindow(WINDOWS))


def _ct_batch(batch_size: int) -> dict[str, torch.Tensor]:
    from benchmarks.transforms import synthetic_ct_batch

    image = torch.from_numpy(synthetic_ct_batch(batch_size, 512)).pin_memory()
    return {
        "image": image,
        "slope": torch.ones(batch_size),
        "intercept": torch.full((batch_size,), -1024.0),
    }


def device_transforms(batch_size: int = 64, repeats: int = 10) -> str:
    """Images/s of the transform pipeline on CUDA (copy included) vs CPU, and H2D bytes/image."""
    batch = _ct_batch(batch_size)
    image = batch["image"]
    bytes_per_image = image.element_size() * image[0].numel()
    bytes_per_pixel = image.element_size()
    pipe_cpu, pipe_gpu = _pipeline(), _pipeline().cuda()

    def on_cpu() -> None:
        pipe_cpu(dict(batch))

    def on_gpu() -> None:
        moved = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
        pipe_gpu(moved)

    t_cpu = median_s(on_cpu, max(3, repeats // 3), sync=False)
    t_gpu = median_s(on_gpu, repeats, sync=True)
    return "\n".join(
        [
            f"| B = {batch_size}, 512² int16 CT, Rescale → MultiWindow({', '.join(WINDOWS)}) + freqhist"
            " | images/s | ratio |",
            "|---|---:|---:|",
            f"| CPU ({os.cpu_count()} cores) | {batch_size / t_cpu:,.0f} | 1.00× |",
            f"| {torch.cuda.get_device_name()} (H2D copy included) | {batch_size / t_gpu:,.0f}"
            f" | {t_cpu / t_gpu:.1f}× |",
            "",
            f"Host→device bytes per image: **{bytes_per_image:,}** = {bytes_per_pixel} per pixel"
            f" ({image.dtype}, from the batch tensor's element_size()); float32 would be"
            f" {4 * image[0].numel():,}.",
        ]
    )


def loader_device_transforms(n: int, batch_size: int = 64, workers: int = 2) -> str:
    """One epoch of DicomDataset + collate with the transforms on CUDA vs on the CPU."""
    from benchmarks.scaling import _dataset, _write
    from torchdicom import DicomDataset, collate

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-gpu-") as tmp:
        d = Path(tmp)
        for i in range(n):
            _write(
                _dataset(512),
                rng.integers(-1024, 3000, (512, 512), dtype=np.int16),
                d / f"IM{i:05d}",
            )
        dataset = DicomDataset(d, frames="first")
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=True,
            persistent_workers=workers > 0,
        )
        pipe_cpu, pipe_gpu = _pipeline(), _pipeline().cuda()
        keys = ("image", "slope", "intercept")
        h2d: list[int] = []

        def epoch_gpu() -> None:
            for b in loader:
                moved = {k: b[k].to("cuda", non_blocking=True) for k in keys}
                h2d.append(b["image"].element_size() * b["image"][0].numel())
                pipe_gpu(moved)

        def epoch_cpu() -> None:
            for b in loader:
                pipe_cpu({k: b[k] for k in keys})

        t_gpu = median_s(epoch_gpu, 3, sync=True)
        t_cpu = median_s(epoch_cpu, 3, sync=False)
    return "\n".join(
        [
            f"| loader, {n} files 512² int16, B = {batch_size}, {workers} workers | images/s | ratio |",
            "|---|---:|---:|",
            f"| transforms on CPU | {n / t_cpu:,.0f} | 1.00× |",
            f"| raw int16 to {torch.cuda.get_device_name()}, transforms there | {n / t_gpu:,.0f}"
            f" | {t_cpu / t_gpu:.1f}× |",
            "",
            f"Host→device bytes per image in the loader: {max(h2d):,} (int16 batches).",
        ]
    )


def gpu_decode(quick: bool = False) -> str:
    """Compressed frames decoded on the GPU (nvImageCodec) against the CPU routes, same files.

    JPEG baseline cine clips (YBR_FULL_422) and JPEG 2000 lossless CT slices, read with
    ``read_frames(row, device="cuda")`` (frames land in one device tensor) against
    ``read_frames(row).to("cuda")``; both end on the device. Lossless values are compared
    exactly, JPEG baseline by its largest difference (nvJPEG vs libjpeg-turbo).
    """
    from benchmarks.peers import _ct_j2k, _ct_native
    from torchdicom import read_frames, scan
    from torchdicom.io.frames import gpu_decodable
    from torchdicom.samples import us_cine_like

    repeats = 3 if quick else 10
    lines = [
        "| workload | CPU decode + copy | GPU decode | GPU / CPU | values |",
        "|---|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="torchdicom-gpu-decode-") as tmp:
        root = Path(tmp)
        us = us_cine_like(root / "us", n=1, frames=64 if quick else 240, jpeg=True).files[0]
        ct = _ct_native(root / "ct", 8 if quick else 32)
        j2k = _ct_j2k(ct, root / "j2k")
        cine = scan([us], workers=0, progress=False).row(0)
        slices = scan(j2k, workers=0, progress=False).rows()
        clips = [list(range(s, s + 16)) for s in range(0, int(cine["frames"]) - 15, 16)]
        cases = [
            ("US cine JPEG baseline YBR, 16-frame clips (per frame)", [cine], clips, False),
            ("CT 512² JPEG 2000 lossless (per file)", slices, [None], True),
        ]
        for name, rows, selections, exact in cases:
            if not all(gpu_decodable(r) for r in rows):
                lines.append(f"| {name} | — | — | — | not GPU-decodable here |")
                continue

            def cpu(rows=rows, selections=selections) -> None:
                for r in rows:
                    for sel in selections:
                        read_frames(r, sel).to("cuda", non_blocking=True)
                torch.cuda.synchronize()

            def gpu(rows=rows, selections=selections) -> None:
                for r in rows:
                    for sel in selections:
                        read_frames(r, sel, device="cuda", decode_fallback=None)
                torch.cuda.synchronize()

            items = sum(
                len(sel) if sel is not None else int(r["frames"])
                for r in rows
                for sel in selections
            )
            t_cpu, t_gpu = median_s(cpu, repeats), median_s(gpu, repeats)
            a = read_frames(rows[0], selections[0]).int()
            b = read_frames(rows[0], selections[0], device="cuda").cpu().int()
            diff = int((a - b).abs().max())
            values = (
                ("equal" if diff == 0 else f"DIFFER (max {diff})") if exact else f"max |Δ| {diff}"
            )
            lines.append(
                f"| {name} | {1000 * t_cpu / items:.2f} ms | {1000 * t_gpu / items:.2f} ms"
                f" | {t_cpu / t_gpu:.2f}× | {values} |"
            )
    return "\n".join(lines)


def _section(title: str, fn: Callable[[], str], failures: list[str]) -> list[str]:
    try:
        return [f"### {title}", "", fn(), ""]
    except Exception as exc:  # recorded and counted, never hidden
        failures.append(title)
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return [f"### {title}", "", f"**FAILED**: {last}", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and files")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m cuda")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            f"benchmarks.gpu: no CUDA device (torch {torch.__version__},"
            f" torch.version.cuda={torch.version.cuda}); nothing was run",
            file=sys.stderr,
        )
        return 2

    failures: list[str] = []
    lines = [
        f"## GPU (python -m benchmarks.gpu{' --quick' if args.quick else ''})",
        "",
        f"{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}),"
        f" {os.cpu_count()} CPU cores.",
        "",
    ]
    if not args.skip_tests:
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        summary = (tests.stdout.strip().splitlines() or ["no output"])[-1]
        # pytest exits 5 when nothing was collected: no cuda tests is a failure of this check too.
        if tests.returncode != 0:
            failures.append("pytest -m cuda")
            print(tests.stdout[-4000:], tests.stderr[-2000:], sep="\n", file=sys.stderr)
        lines += ["### pytest -m cuda", "", f"`{summary}` (exit {tests.returncode})", ""]

    repeats = 5 if args.quick else 20
    lines += _section("Device-side transforms", lambda: device_transforms(64, repeats), failures)
    lines += _section("GPU decode (nvImageCodec)", lambda: gpu_decode(quick=args.quick), failures)
    lines += _section(
        "Loader with device-side transforms",
        lambda: loader_device_transforms(128 if args.quick else 512),
        failures,
    )

    def transforms_cuda() -> str:
        from benchmarks import transforms

        return transforms.run(quick=args.quick, device="cuda")

    lines += _section("python -m benchmarks.transforms --device cuda", transforms_cuda, failures)

    def loader_cuda() -> str:
        from benchmarks import loader

        if "device" not in inspect.signature(loader.run).parameters:
            return (
                "benchmarks.loader.run has no device argument; covered by the loader table above."
            )
        return loader.run(quick=args.quick, device="cuda")

    lines += _section("python -m benchmarks.loader (device)", loader_cuda, failures)
    if failures:
        lines.append(f"**Failed: {', '.join(failures)}.**")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
