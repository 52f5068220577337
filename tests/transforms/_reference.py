"""Per-image numpy references written from the tutorial's definitions (sort + numpy.interp)."""

from __future__ import annotations

import numpy as np


def ref_freqhist_bins(image: np.ndarray, n_bins: int = 100) -> np.ndarray:
    values = np.sort(image.reshape(-1))
    # The tutorial computes the positions and len * t in float32.
    t = np.concatenate(
        [
            np.float32([0.001]),
            np.arange(n_bins, dtype=np.float32) / np.float32(n_bins) + np.float32(1 / 2 / n_bins),
            np.float32([0.999]),
        ]
    )
    index = (np.float32(values.size) * t).astype(np.int64)
    return np.unique(values[index])


def ref_hist_scaled(image: np.ndarray, bins: np.ndarray | None = None) -> np.ndarray:
    b = ref_freqhist_bins(image) if bins is None else bins
    y = np.interp(image.reshape(-1), b, np.linspace(0.0, 1.0, len(b)))
    return np.clip(y.astype(np.float32), 0, 1).reshape(image.shape)


def ref_windowed(x: np.ndarray, width: int, level: int) -> np.ndarray:
    lo, hi = level - width // 2, level + width // 2
    return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def synthetic_ct(batch_size: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """Small int16 CT-like batch of stored values (intercept -1024)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    out = np.empty((batch_size, 1, size, size), np.int16)
    for i in range(batch_size):
        hu = np.full((size, size), -1000.0)
        hu[(xx / 0.38) ** 2 + (yy / 0.3) ** 2 < 1] = 40.0
        hu[(xx / 0.06) ** 2 + ((yy - 0.2) / 0.06) ** 2 < 1] = rng.uniform(700, 1200)
        hu += rng.normal(0, 15, hu.shape)
        out[i, 0] = np.rint(hu + 1024).astype(np.int16)
    return out
