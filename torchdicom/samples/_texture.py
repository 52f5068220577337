"""Procedural texture for the phantoms: smooth value noise and vessel-like ridges."""

from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise of shape (H, W), float32, roughly zero-mean unit-range.

    A coarse Gaussian grid (one value per ``cell`` pixels) interpolated with a
    smoothstep: cheap, vectorised, and free of the blockiness of plain repeats.
    """
    h, w = shape
    cell = max(float(cell), 1.0)
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)

    def weights(n: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.arange(n, dtype=np.float32) / cell
        i = t.astype(np.intp)
        f = t - i
        return i, f * f * (3 - 2 * f)

    # Separable: interpolate the small grid along y first, then gather along x once.
    y0, fy = weights(h)
    x0, fx = weights(w)
    columns = grid[y0] * (1 - fy[:, None]) + grid[y0 + 1] * fy[:, None]  # (H, gw)
    return columns[:, x0] * (1 - fx) + columns[:, x0 + 1] * fx


def _ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin curvy lines along the zero set of a smooth field: vessel-like markings."""
    return np.exp(-((noise / width) ** 2))
