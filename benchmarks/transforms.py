"""Batched radiology transforms vs the tutorial's per-image loop (sort + numpy.interp).

Run: ``python -m benchmarks.transforms [--quick] [--device cuda] [--threads N]``. Every ratio is
measured in one run on one machine (shared machines are noisy; compare ratios, not absolute
times).
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import torch

import torchdicom.transforms.functional as F
from benchmarks._common import medians_s

__all__ = ["main", "run", "synthetic_ct_batch"]

WINDOWS = ("brain", "subdural", "abdomen_soft")
INTERCEPT = -1024.0


def synthetic_ct_batch(batch_size: int = 32, size: int = 512, seed: int = 0) -> np.ndarray:
    """Plausible int16 CT stored values (intercept -1024): air, fat, soft tissue, lungs, bone, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = np.empty((batch_size, 1, size, size), np.int16)
    for i in range(batch_size):
        hu = np.full((size, size), -1000.0, np.float32)
        a, b = rng.uniform(0.30, 0.42), rng.uniform(0.22, 0.34)
        cx, cy = rng.uniform(-0.03, 0.03, 2)
        body = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1
        hu[body] = 40.0
        inner = ((xx - cx) / (a - 0.03)) ** 2 + ((yy - cy) / (b - 0.03)) ** 2 < 1
        hu[body & ~inner] = -100.0  # subcutaneous fat
        for side in (-1, 1):
            lung = ((xx - cx - side * a * 0.45) / (a * 0.35)) ** 2 + (
                (yy - cy) / (b * 0.6)
            ) ** 2 < 1
            hu[lung] = -850.0
        spine = ((xx - cx) / 0.05) ** 2 + ((yy - cy - b * 0.7) / 0.05) ** 2 < 1
        hu[spine] = rng.uniform(700, 1200)
        hu += rng.normal(0, 12, hu.shape).astype(np.float32)
        out[i, 0] = np.clip(np.rint(hu - INTERCEPT), -2000, 4095).astype(np.int16)
    return out


def _tutorial_bins(image: np.ndarray, n_bins: int = 100) -> np.ndarray:
    values = np.sort(image.ravel())
    t = np.concatenate(
        [
            np.float32([0.001]),
            np.arange(n_bins, dtype=np.float32) / n_bins + np.float32(0.5 / n_bins),
            [0.999],
        ]
    ).astype(np.float32)
    return np.unique(values[(len(values) * t).astype(np.int64)])


def _tutorial_hist_scaled(image: np.ndarray) -> np.ndarray:
    bins = _tutorial_bins(image)
    y = np.interp(image.ravel(), bins, np.linspace(0.0, 1.0, len(bins)))
    return np.clip(y.astype(np.float32), 0, 1).reshape(image.shape)


def _tutorial_windowed(image: np.ndarray, width: int, level: int) -> np.ndarray:
    lo, hi = level - width // 2, level + width // 2
    return (np.clip(image, lo, hi) - lo) / (hi - lo)


def loop_hist(hu: np.ndarray) -> np.ndarray:
    """(a) the tutorial's way, per image: sort, pick bins, numpy.interp; written into one batch."""
    out = np.empty(hu.shape, np.float32)
    for i, image in enumerate(hu):
        out[i] = _tutorial_hist_scaled(image)
    return out


def loop_pipeline(stored: np.ndarray) -> np.ndarray:
    """(b) per image: rescale, three windows, freqhist channel; written into one batch.

    Each channel is assigned straight into the preallocated batch (no per-image concatenate
    followed by a stack of the batch), so the loop does not pay for copies the batched side
    avoids.
    """
    b, c, h, w = stored.shape
    out = np.empty((b, len(WINDOWS) + 1, c, h, w), np.float32)
    for i, image in enumerate(stored):
        hu = image.astype(np.float32) + np.float32(INTERCEPT)
        for j, name in enumerate(WINDOWS):
            out[i, j] = _tutorial_windowed(hu, *F.DICOM_WINDOWS[name])
        out[i, -1] = _tutorial_hist_scaled(hu)
    return out.reshape(b, -1, h, w)


def batched_hist(hu: torch.Tensor) -> torch.Tensor:
    return F.hist_scaled(hu)


def batched_pipeline(stored: torch.Tensor) -> torch.Tensor:
    hu = F.rescale(stored, 1.0, INTERCEPT)
    return F.to_nchan(hu, WINDOWS)


def run(quick: bool = False, device: str = "cpu") -> str:
    """Measure and return the markdown table (also the lines of notes below it)."""
    batch = 8 if quick else 32
    size = 256 if quick else 512
    repeats = 3 if quick else 9
    stored_np = synthetic_ct_batch(batch, size)
    hu_np = stored_np.astype(np.float32) + np.float32(INTERCEPT)
    stored, hu = torch.from_numpy(stored_np), torch.from_numpy(hu_np)

    # The two sides must agree before their speed means anything.
    np.testing.assert_array_equal(batched_hist(hu).numpy(), loop_hist(hu_np))
    np.testing.assert_array_equal(batched_pipeline(stored).numpy(), loop_pipeline(stored_np))

    rows = []
    for label, loop, batched in (
        ("(a) freqhist_bins + hist_scaled", lambda: loop_hist(hu_np), lambda: batched_hist(hu)),
        (
            "(b) rescale → 3 windows + freqhist channel",
            lambda: loop_pipeline(stored_np),
            lambda: batched_pipeline(stored),
        ),
    ):
        t_loop, t_batched = medians_s([loop, batched], repeats)
        rows.append((label, t_loop, t_batched))

    lines = [
        f"Batch of {batch} {size}×{size} int16 CT (intercept {INTERCEPT:g}), CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} "
        "interleaved repeats.",
        "",
        "| operation | per-image loop (numpy) | batched (torchdicom) | speed-up | fastai |",
        "|---|---:|---:|---:|---:|",
    ]
    has_fastai = importlib.util.find_spec("fastai") is not None
    for label, t_loop, t_batched in rows:
        fastai_cell = "see note" if has_fastai else "not installed"
        lines.append(
            f"| {label} | {t_loop * 1e3:.1f} ms | {t_batched * 1e3:.1f} ms | {t_loop / t_batched:.1f}× | {fastai_cell} |"
        )
    lines.append("")
    if not has_fastai:
        lines.append(
            "fastai is not installed: its column is skipped (the loop column is its algorithm)."
        )
    else:
        lines.append("fastai is importable but not timed here: the loop column runs its algorithm.")

    if device == "cuda":
        if not torch.cuda.is_available():
            lines.append("--device cuda: no CUDA device available, skipped.")
        else:
            gpu_batch = 64
            stored_gpu = torch.from_numpy(synthetic_ct_batch(gpu_batch, size)).cuda()
            (t_gpu,) = medians_s([lambda: batched_pipeline(stored_gpu)], repeats, sync=True)
            cpu_rate = batch / rows[1][2]
            gpu_rate = gpu_batch / t_gpu
            lines += [
                "",
                f"| (b) on {torch.cuda.get_device_name()} | B={gpu_batch} | {gpu_rate:.0f} images/s "
                f"| {gpu_rate / cpu_rate:.1f}× the CPU batched rate |",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small batch, fewer repeats")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(run(quick=args.quick, device=args.device))


if __name__ == "__main__":
    main()
