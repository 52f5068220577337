"""Fused CPU kernels for the hot intensity transforms (private).

Why hand-written: on CPU, torch runs ``rescale -> clamp -> sub -> div`` and the histogram
lookups as separate passes over batch-sized float buffers, and on a few cores those passes are
bound by memory traffic, not arithmetic. Batched histogram normalisation and windowing are the
point of this package, so they get one fused pass per image here, compiled by numba (no C
toolchain at install time). Each kernel does the *same float operations in the same order* as
the torch route it replaces (numba compiles without fast-math, so nothing is contracted into
FMAs or reassociated), which keeps every result bit-identical to the torch route and to the
tutorial's numpy formulas; the tests compare them element for element.

Images are split across the package's thread pool (:func:`torchdicom._runtime.run_in_slices`;
the kernels release the GIL). Only contiguous, grad-free CPU tensors of the dtypes in
:data:`DTYPES` come here; the callers keep their torch route for everything else (CUDA,
autograd, float16, strided views).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchdicom._runtime import run_in_slices

__all__: list[str] = []

#: torch dtypes the kernels take (numba has no float16/bfloat16 arithmetic worth using here).
DTYPES = frozenset(
    {
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.uint16,
        torch.int32,
        torch.int64,
        torch.float32,
        torch.float64,
    }
)

# Integer-valued images whose values lie in [-_HIST_BASE, _HIST_BASE) are histogrammed by the
# kernels (a table of at most 2 * _HIST_BASE int32 counts, 512 KiB: cache-resident), which
# covers every 8- and 16-bit image and HU from them. Wider or non-integral images take the
# torch route (sort or an offset histogram).
_HIST_BASE = 1 << 16

# Set False (tests do) to force the torch route and compare the two.
ENABLED = True


def usable(x: Tensor) -> bool:
    """Whether ``x`` can take the native route."""
    return (
        ENABLED
        and x.device.type == "cpu"
        and not x.requires_grad
        and x.dtype in DTYPES
        and x.is_contiguous()
    )


# --------------------------------------------------------------------------- kernels
_kernels: dict[str, Callable[..., Any]] | None = None
_kernels_lock = threading.Lock()


def _compile() -> dict[str, Callable[..., Any]]:
    # numba is imported on first use: importing it costs ~0.3 s that scripts which never run a
    # CPU transform should not pay. cache=True keeps compiled kernels on disk between runs.
    from numba import njit

    jit = njit(nogil=True, cache=True, boundscheck=False)

    @jit
    def rescale_images(x, slope, intercept, mul, out, start, stop):  # pragma: no cover - compiled
        # out[n] = float(x[n]) * slope[n] + intercept[n]; the multiply skipped where mul[n] is
        # False (slope 1 on integer input, where x * 1 == x exactly), as the torch route does.
        for n in range(start, stop):
            s = slope[n]
            c = intercept[n]
            image = x[n]
            dst = out[n]
            if mul[n]:
                for i in range(image.size):
                    dst[i] = image[i]  # the conversion to the output's float type
                    dst[i] = dst[i] * s + c
            else:
                for i in range(image.size):
                    dst[i] = image[i]
                    dst[i] = dst[i] + c

    @jit
    def window_images(x, lo, hi, span, out, start, stop):  # pragma: no cover - compiled
        # out[n, g] = (clamp(x[n], lo, hi) - lo) / (hi - lo) for each window g of image n; NaN is
        # kept as torch.clamp keeps it (comparisons with NaN are false).
        for n in range(start, stop):
            image = x[n]
            for g in range(lo.shape[1]):
                a = lo[n, g]
                b = hi[n, g]
                d = span[n, g]
                dst = out[n, g]
                for i in range(image.size):
                    dst[i] = image[i]  # the conversion to the output's float type
                    v = dst[i]
                    if v < a:
                        v = a
                    elif v > b:
                        v = b
                    dst[i] = (v - a) / d

    @jit
    def rescale_window_images(
        x, slope, intercept, mul, lo, hi, span, out, start, stop
    ):  # pragma: no cover - compiled
        # rescale_images then window_images, without the intermediate buffer. The clamp-and-scale
        # lines are window_images' own, written out again on purpose: a shared inlined helper
        # measured no faster and possibly slower in this, the loader's hottest loop.
        for n in range(start, stop):
            s = slope[n]
            c = intercept[n]
            m = mul[n]
            a = lo[n]
            b = hi[n]
            d = span[n]
            image = x[n]
            dst = out[n]
            for i in range(image.size):
                dst[i] = image[i]
                v = dst[i]
                if m:
                    v = v * s
                v = v + c
                if v < a:
                    v = a
                elif v > b:
                    v = b
                dst[i] = (v - a) / d

    @jit
    def value_range(image, integral):  # pragma: no cover - compiled
        # (min, max, all integral) in two vectorisable passes (one fused loop measured slower).
        # NaN never wins a comparison, so it is caught by the integrality pass (NaN != NaN);
        # infinities pass that test but fail the caller's range check on (min, max).
        lo = image[0]
        hi = image[0]
        for i in range(image.size):
            v = image[i]
            lo = v if v < lo else lo
            hi = v if v > hi else hi
        bad = False
        if integral:
            for i in range(image.size):
                v = image[i]
                bad |= v != np.floor(v)
        return lo, hi, not bad

    @jit
    def count_image(image, counts, low):  # pragma: no cover - compiled
        # counts[v - low] += 1; the caller checked that every value is an integer in range.
        for i in range(image.size):
            counts[np.int64(image[i]) - low] += 1

    @jit
    def pick_bins(counts, ranks, low, out):  # pragma: no cover - compiled
        # The order statistics at ``ranks`` (ascending) from a histogram, de-duplicated into
        # ``out`` (float64); returns how many. Same as searchsorted(cumsum(counts), ranks,
        # side="right") + low followed by unique(), in one walk.
        j = 0
        cum = counts[0]
        m = 0
        last = counts.size - 1
        for t in range(ranks.size):
            rank = ranks[t]
            while cum <= rank and j < last:
                j += 1
                cum += counts[j]
            value = np.float64(j + low)
            if m == 0 or out[m - 1] != value:
                out[m] = value
                m += 1
        return m

    @jit
    def gather_image(image, table, low, out):  # pragma: no cover - compiled
        for i in range(image.size):
            out[i] = table[np.int64(image[i]) - low]

    return {
        "rescale_images": rescale_images,
        "window_images": window_images,
        "rescale_window_images": rescale_window_images,
        "value_range": value_range,
        "count_image": count_image,
        "pick_bins": pick_bins,
        "gather_image": gather_image,
    }


def kernels() -> dict[str, Callable[..., Any]]:
    global _kernels
    if _kernels is None:
        with _kernels_lock:
            if _kernels is None:
                _kernels = _compile()
    return _kernels


def flat_images(x: Tensor) -> np.ndarray:
    """(B, ...) contiguous CPU tensor as a (B, N) numpy view (no copy)."""
    return x.detach().numpy().reshape(x.shape[0], -1)


def params(values: Tensor, dtype: torch.dtype, *shape: int) -> np.ndarray:
    """Per-sample parameters as a contiguous numpy array of ``dtype``.

    ``shape`` defaults to (B,) from (B, 1, 1, 1); window bounds pass ``(B, -1)`` for (B, G).
    """
    host = values.detach().to(device="cpu", dtype=dtype)
    return np.ascontiguousarray(host.reshape(shape or (-1,)).numpy())


def _rescale_params(
    x: Tensor, slope: Tensor, intercept: Tensor, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slope, intercept, multiply?) per image. The multiply is skipped on integer input with
    slope 1, where x * 1 == x exactly, as the torch route skips it."""
    s, c = params(slope, dtype), params(intercept, dtype)
    return s, c, np.ascontiguousarray(x.is_floating_point() | (s != 1))


# --------------------------------------------------------------------------- entry points
def rescale_into(x: Tensor, slope: Tensor, intercept: Tensor, out: Tensor) -> None:
    """out = x * slope + intercept per image; slope/intercept (B, 1, 1, 1) of out's dtype."""
    k = kernels()["rescale_images"]
    xs, dst = flat_images(x), flat_images(out)
    s, c, mul = _rescale_params(x, slope, intercept, out.dtype)
    run_in_slices(xs.shape[0], lambda start, stop: k(xs, s, c, mul, dst, start, stop), xs.shape[1])


def window_into(x: Tensor, lo: Tensor, hi: Tensor, span: Tensor, out: Tensor) -> None:
    """out[:, g] = (clamp(x, lo[:, g], hi[:, g]) - lo[:, g]) / span[:, g] per image.

    Args:
        x: (B, ...) values.
        lo, hi, span: (B, G) window bounds and ``hi - lo`` as the caller's torch route computes
            it (cast to out's dtype, as torch casts them).
        out: (B, G', N) with G' >= G and N = ``x[0].numel()``, every (b, g) plane contiguous;
            channels ``g < G`` are written.
    """
    k = kernels()["window_images"]
    b = x.shape[0]
    xs = flat_images(x)
    dst = out.detach().numpy()
    a, c, d = (params(v, out.dtype, b, -1) for v in (lo, hi, span))
    run_in_slices(b, lambda start, stop: k(xs, a, c, d, dst, start, stop), xs.shape[1] * a.shape[1])


def rescale_window_into(
    x: Tensor,
    slope: Tensor,
    intercept: Tensor,
    lo: Tensor,
    hi: Tensor,
    span: Tensor,
    out: Tensor,
) -> None:
    """:func:`rescale_into` then :func:`window_into` in one pass, bit-identical to the two."""
    k = kernels()["rescale_window_images"]
    xs, dst = flat_images(x), flat_images(out)
    s, c, mul = _rescale_params(x, slope, intercept, out.dtype)
    a, b, d = (params(v, out.dtype) for v in (lo, hi, span))
    run_in_slices(
        xs.shape[0], lambda start, stop: k(xs, s, c, mul, a, b, d, dst, start, stop), xs.shape[1]
    )


def integer_histogram(image: np.ndarray) -> tuple[int, np.ndarray] | None:
    """``(low, counts)`` of an integer-valued image's values: ``counts[j]`` pixels equal ``low + j``.

    None when the image is not integer-valued (non-integral floats, NaN, infinities) or its
    range is wider than ``2 * 2**16`` values; the caller then takes the torch route.
    """
    k = kernels()
    lo, hi, ok = k["value_range"](image, image.dtype.kind == "f")
    if not ok or not (lo >= -_HIST_BASE and hi < _HIST_BASE):
        return None
    low = int(lo)
    counts = np.zeros(int(hi) - low + 1, dtype=np.int32)
    k["count_image"](image, counts, low)
    return low, counts


def histogram_bins(low: int, counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Sorted distinct values at the (ascending) ``ranks`` of a histogram, float64."""
    out = np.empty(ranks.size, dtype=np.float64)
    m = kernels()["pick_bins"](counts, ranks, low, out)
    return out[:m]


def gather_into(image: np.ndarray, table: np.ndarray, low: int, out: np.ndarray) -> None:
    """out[i] = table[image[i] - low] for an integer-valued image whose values the table covers."""
    kernels()["gather_image"](image, table, low, out)
