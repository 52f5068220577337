"""Frequency-histogram normalisation: the bins, the scaling, and its module.

The bins are the tutorial's: per image, the sorted pixel values picked at fractional
positions ``[0.001, (i + 0.5) / n_bins for i < n_bins, 0.999]`` (positions computed in float32
exactly as the tutorial computes them, index ``floor(position * pixel_count)``), de-duplicated.
For integer-valued images the same order statistics come from a per-image histogram and its
cumulative counts instead of a full sort, and :func:`hist_scaled` interpolates once per
distinct value (a lookup table over the value range) and gathers the pixels from it.

On CPU the batch is processed in chunks of whole images (about :data:`_CHUNK_VALUES` values), so
the intermediates (int32 keys, histograms, tables) stay bounded and are reused from chunk to
chunk, and the only batch-sized allocation is the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from torchdicom._runtime import empty_large, run_in_slices
from torchdicom.transforms import _kernels
from torchdicom.transforms._base import BatchTransform
from torchdicom.transforms._utils import (
    check_image,
    chunk_images,
    float_dtype,
    unbatch,
)

__all__ = ["FreqHistBins", "FreqHistNormalize", "freqhist_bins", "hist_scaled"]

# Histogram order statistics are used while one image's value range stays below this (covers
# all 16-bit data) and one chunk's histogram below _MAX_HIST_ENTRIES counts.
_MAX_RANGE = 1 << 17
_MAX_HIST_ENTRIES = 1 << 25
# CPU work happens about this many values (16 images of 512 x 512) at a time, so intermediates
# stay bounded and their buffers are reused. Smaller, cache-sized chunks measured no faster on
# one thread and much slower on two threads of a busy machine (every torch op is a parallel
# region whose join can wait on a descheduled worker). Read at call time (tests shrink it).
_CHUNK_VALUES = 1 << 22


class FreqHistBins(NamedTuple):
    """Per-image bins padded to a common length.

    Attributes:
        bins: (B, K) strictly increasing over the first ``lengths[b]`` entries, then padded with
            the last valid value (so every image's bins stay sorted); (K,) for an unbatched image.
        lengths: (B,) int64 number of valid bins per image; a 0-dim tensor when unbatched.
    """

    bins: Tensor
    lengths: Tensor


def _rank_positions(n_bins: int, pixel_count: int, device: torch.device) -> Tensor:
    # float32 throughout, as the tutorial: arange(n).float() / n + 1/2/n, then len * t, then long().
    t = torch.cat(
        [
            torch.tensor([0.001]),
            torch.arange(n_bins, dtype=torch.float32) / n_bins + (1 / 2 / n_bins),
            torch.tensor([0.999]),
        ]
    )
    return (pixel_count * t).long().to(device)


def _check_n_bins(n_bins: Any) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int. Got: {n_bins!r}")


class _IntegerView(NamedTuple):
    # (k, N) int32: value - low + j * span for image j, an index into a (k * span) table
    keys: Tensor
    low: int  # the chunk's smallest value
    span: int  # the chunk's max - min + 1: every image's values lie in [low, low + span)


def _integer_view(
    v: Tensor, keys: Tensor | None = None, scratch: Tensor | None = None
) -> _IntegerView | None:
    """Offset integer keys for a (k, N) chunk, or None when the histogram route does not apply.

    Float input qualifies when every value is finite and integral (HU from integer CT with an
    integer slope/intercept), so those order statistics are exact too. ``keys`` (int32) and
    ``scratch`` (``v.dtype``, floats only) are optional reusable buffers of at least k images.
    The range is the chunk's (one reduction, not one per image); images whose values do not reach
    its ends just have empty histogram entries there.
    """
    k, n = v.shape
    if v.requires_grad or k == 0 or n == 0:
        return None
    keys = torch.empty((k, n), dtype=torch.int32, device=v.device) if keys is None else keys[:k]
    if v.is_floating_point():
        lo_t, hi_t = torch.aminmax(v)
        lo, hi = float(lo_t), float(hi_t)
        # Wide values must fit int32 keys; NaN and infinities fail these comparisons.
        if not (lo >= -(2**30) and hi <= 2**30):
            return None
        # Integral iff frac() is 0 everywhere: one pass and one reduction, no bool temporaries.
        frac = torch.frac(v, out=scratch[:k]) if scratch is not None else torch.frac(v)
        fmin, fmax = torch.aminmax(frac)
        if not (bool(fmin == 0) and bool(fmax == 0)):
            return None
        keys.copy_(v)
        low, high = int(lo), int(hi)
    else:
        if v.element_size() >= 4:
            lo_t, hi_t = torch.aminmax(v)
            if lo_t < -(2**30) or hi_t > 2**30:
                return None
            keys.copy_(v)
        else:
            # 8/16-bit values always fit; uint16 has no aminmax kernel on CPU, int32 does.
            keys.copy_(v)
            lo_t, hi_t = torch.aminmax(keys)
        low, high = int(lo_t), int(hi_t)
    span = high - low + 1
    if span > _MAX_RANGE or span * k > _MAX_HIST_ENTRIES:
        return None
    if k == 1:
        keys.sub_(low)
    else:
        offsets = torch.arange(k, dtype=torch.int32, device=v.device) * -span + low
        keys.sub_(offsets[:, None])
    return _IntegerView(keys, low, span)


def _key_buffers(v: Tensor, count: int, scratch: bool = True) -> tuple[Tensor, Tensor | None]:
    """Reusable buffers of ``count`` images for :func:`_integer_view`: int32 keys and a float scratch."""
    shape = (count, v.shape[1])
    keys = empty_large(shape, torch.int32, v.device)
    if not (scratch and v.is_floating_point()):
        return keys, None
    return keys, empty_large(shape, v.dtype, v.device)


def _picked_from_view(view: _IntegerView, ranks: Tensor) -> Tensor:
    """(k, R) int64 order statistics at ``ranks`` from the chunk's histograms."""
    k = view.keys.shape[0]
    counts = torch.bincount(view.keys.view(-1), minlength=k * view.span).view(k, view.span)
    cumulative = torch.cumsum(counts, dim=1)
    # The k-th smallest value (0-based) is the first v with more than k values <= v.
    index = torch.searchsorted(cumulative, ranks.expand(k, -1).contiguous(), right=True)
    return index + view.low


def _picked_by_sort(v: Tensor, ranks: Tensor) -> Tensor:
    # uint16/uint32 lack sort and scatter kernels on CPU: order them as int64.
    wide = v.detach() if v.is_floating_point() or v.is_signed() else v.detach().to(torch.int64)
    return torch.sort(wide, dim=1).values[:, ranks]


def _dedup_sorted(picked: Tensor) -> FreqHistBins:
    # Positions are not monotone when n_bins > 500 (0.5 / n_bins < 0.001), so sort first.
    vals = torch.sort(picked, dim=1).values
    new = torch.ones_like(vals, dtype=torch.bool)
    new[:, 1:] = vals[:, 1:] != vals[:, :-1]
    lengths = new.sum(dim=1)
    target = torch.cumsum(new, dim=1) - 1
    # Rows start as their maximum (= the last valid bin), so the tail is padded with it.
    out = vals[:, -1:].expand_as(vals).clone()
    out.scatter_(1, target, vals)
    return FreqHistBins(out, lengths)


def _bins_per_image(v: Tensor, n_bins: int, wide: torch.dtype) -> FreqHistBins:
    """Per-image bins of a (B, N) batch, chunk by chunk, de-duplicated in ``wide``.

    ``wide`` (int64 or float64) holds every value of ``v`` exactly, so the bins are the same
    numbers whichever route (histogram or sort) a chunk took.
    """
    b, n = v.shape
    ranks = _rank_positions(n_bins, n, v.device)
    if b == 0:
        empty = torch.empty((0, ranks.numel()), dtype=wide, device=v.device)
        return FreqHistBins(empty, torch.empty(0, dtype=torch.int64, device=v.device))
    step = chunk_images(b, n, v.device, _CHUNK_VALUES)
    keys, scratch = _key_buffers(v, step)
    picked = []
    for start in range(0, b, step):
        chunk = v[start : start + step]
        view = _integer_view(chunk, keys, scratch)
        chunk_picked = (
            _picked_from_view(view, ranks) if view is not None else _picked_by_sort(chunk, ranks)
        )
        picked.append(chunk_picked.to(wide))
    return _dedup_sorted(torch.cat(picked))


def freqhist_bins(x: Tensor, n_bins: int = 100) -> FreqHistBins:
    r"""The tutorial's frequency-histogram bins, per image.

    Each image (all of its ``C * H * W`` values) is split into ``n_bins`` groups holding about
    the same number of pixels; the bins are the order statistics at positions
    ``[0.001, (i + 0.5) / n_bins ..., 0.999]``, de-duplicated. Integer-valued images (any integer
    dtype, or floats that are all integral) use a batched histogram + cumulative-count search,
    giving exactly the values a full sort would; other floats are sorted.

    Args:
        x: image or batch.
        n_bins: number of groups.

    Returns:
        :class:`FreqHistBins` ``(bins, lengths)``; ``bins`` has ``x``'s dtype, padded to
        ``K = n_bins + 2`` columns with each image's last valid value.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - bins: :math:`(K,)` or :math:`(B, K)`; lengths: :math:`()` or :math:`(B,)`

    Example:
        >>> x = torch.randint(-1000, 1000, (2, 1, 16, 16), dtype=torch.int16)
        >>> freqhist_bins(x, n_bins=10).bins.shape
        torch.Size([2, 12])
    """
    xb, batched = check_image(x)
    _check_n_bins(n_bins)
    v = xb.reshape(xb.shape[0], math.prod(xb.shape[1:]))
    if v.shape[1] == 0:
        raise ValueError(
            f"freqhist_bins needs images with at least one pixel. Got: {tuple(x.shape)}"
        )
    wide = torch.float64 if v.is_floating_point() else torch.int64
    result = _bins_per_image(v, n_bins, wide)
    result = FreqHistBins(result.bins.to(v.dtype), result.lengths)
    if batched:
        return result
    return FreqHistBins(result.bins[0], result.lengths[0])


def _targets(j: Tensor, lengths: Tensor) -> Tensor:
    # numpy.linspace(0, 1, L)[j] bit for bit: j * (1 / (L - 1)), with the last one exactly 1.
    last = (lengths - 1).clamp_min(1).to(torch.float64)
    y = j.to(torch.float64) * (1.0 / last)
    return torch.where(j >= lengths - 1, torch.ones_like(y), y)


def _interp(values: Tensor, bins: Tensor, lengths: Tensor) -> Tensor:
    """numpy.interp(values[b], bins[b, :L], linspace(0, 1, L)) per image b, in float64.

    values: (B, M) float64; bins: (B, K) float64, sorted per image; lengths: (B,) int64 >= 1.
    """
    k = bins.shape[1]
    lengths = lengths[:, None]
    j = torch.searchsorted(bins, values, right=True) - 1
    j = torch.minimum(j.clamp_min(0), (lengths - 2).clamp_min(0))
    j1 = (j + 1).clamp_max(k - 1)
    x0 = bins.gather(1, j)
    x1 = bins.gather(1, j1)
    y0 = _targets(j, lengths)
    y1 = _targets(j1, lengths)
    # numpy's order of operations: slope * (x - xp[j]) + fp[j].
    out = (y1 - y0) / (x1 - x0) * (values - x0) + y0
    first = bins[:, :1]
    last = bins.gather(1, lengths - 1)
    zero, one = (
        torch.zeros((), dtype=out.dtype, device=out.device),
        torch.ones((), dtype=out.dtype, device=out.device),
    )
    out = torch.where(values < first, zero, out)
    out = torch.where(values >= last, one, out)
    # One bin: numpy.linspace(0, 1, 1) == [0.0], so every value maps to 0 (NaN stays NaN).
    return torch.where((lengths == 1) & ~torch.isnan(values), zero, out)


def _normalise_bins(
    bins: Tensor | FreqHistBins, batch_size: int, device: torch.device
) -> FreqHistBins:
    if isinstance(bins, FreqHistBins):
        b, lengths = bins.bins, bins.lengths
        if b.dim() == 1:
            b, lengths = b[None], lengths.reshape(1)
        if b.dim() != 2 or b.shape[0] != batch_size or lengths.shape != (batch_size,):
            raise ValueError(
                f"per-image bins must be (B, K) with lengths (B,), B={batch_size}. "
                f"Got: {tuple(bins.bins.shape)} and {tuple(bins.lengths.shape)}"
            )
        if bool((lengths < 1).any()):
            raise ValueError(f"every image needs at least one bin. Got: lengths {lengths.tolist()}")
        return FreqHistBins(
            b.to(device=device, dtype=torch.float64), lengths.to(device=device, dtype=torch.int64)
        )
    if not isinstance(bins, Tensor):
        raise TypeError(
            f"bins must be None, 0, a Tensor or FreqHistBins. Got: {type(bins).__name__}"
        )
    if (
        bins.dim() not in (1, 2)
        or bins.shape[-1] == 0
        or (bins.dim() == 2 and bins.shape[0] != batch_size)
    ):
        raise ValueError(
            f"bins must be (K,) shared or (B, K) per image, K >= 1, B={batch_size}. Got: {tuple(bins.shape)}"
        )
    b = bins.detach().to(device=device, dtype=torch.float64)
    if bool((b[..., 1:] <= b[..., :-1]).any()):
        raise ValueError(f"bins must be strictly increasing. Got: {bins.tolist()}")
    b = b.expand(batch_size, -1) if b.dim() == 1 else b
    lengths = torch.full((batch_size,), b.shape[1], dtype=torch.int64, device=device)
    return FreqHistBins(b.contiguous(), lengths)


def hist_scaled(x: Tensor, bins: Tensor | FreqHistBins | None = None, n_bins: int = 100) -> Tensor:
    r"""Scale each value through the frequency-histogram bins onto [0, 1].

    The semantics of ``numpy.interp(x, bins, numpy.linspace(0, 1, len(bins)))`` (values outside
    the bins clamp to 0 or 1), computed in float64 as numpy does and then cast, so the result is
    bit-identical to ``numpy.interp(...).astype(float32)`` per image; then clamped to [0, 1].
    Differentiable in ``x`` with the bins held constant.

    Args:
        x: image or batch.
        bins: ``None`` for each image's own :func:`freqhist_bins`; a :class:`FreqHistBins` for
            per-image bins; a (K,) tensor shared by every image (dataset-level bins, see
            :func:`~torchdicom.transforms.functional.freqhist_bins_dataset`); or a (B, K) tensor of per-image bins, all valid.
        n_bins: groups when ``bins`` is ``None``.

    Returns:
        float32 (float64 for float64 input) in [0, 1], same shape as ``x``.

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: same as ``x``

    Example:
        >>> x = torch.randint(-1000, 1000, (2, 1, 16, 16), dtype=torch.int16)
        >>> hist_scaled(x).shape
        torch.Size([2, 1, 16, 16])
    """
    xb, batched = check_image(x)
    _check_n_bins(n_bins)
    dtype = float_dtype(x)
    b = xb.shape[0]
    v = xb.reshape(b, math.prod(xb.shape[1:]))
    if v.numel() == 0:
        return torch.empty(x.shape, dtype=dtype, device=x.device)
    if v.requires_grad:
        # Differentiable route: the whole batch through the per-pixel formula.
        per_image = _bins_per_image(v, n_bins, torch.float64) if bins is None else bins
        fb = _normalise_bins(per_image, b, v.device)
        out = _interp(v.to(torch.float64), fb.bins, fb.lengths).clamp(0, 1).to(dtype)
        return unbatch(out.view(xb.shape), batched)
    out = empty_large(xb.shape, dtype, v.device)
    if _kernels.usable(v):
        _hist_scaled_native(v, out.view(b, -1), bins, n_bins)
        return unbatch(out, batched)
    scaler = _HistScaler(v, bins, n_bins)
    for start in range(0, b, scaler.step):
        scaler.into(start, out.view(b, -1)[start : start + scaler.step])
    return unbatch(out, batched)


def _hist_scaled_native(
    v: Tensor, dest: Tensor, bins: Tensor | FreqHistBins | None, n_bins: int
) -> None:
    """:func:`hist_scaled` of a contiguous CPU (B, N) batch into ``dest`` (B, N) via the kernels.

    Per image: one pass for the value range, one for the histogram, the tutorial's numpy calls
    on the (small) histogram for bins and table, one gather pass for the pixels. Images that are
    not integer-valued go through :class:`_HistScaler` one by one.
    """
    b, n = v.shape
    shared = None if bins is None else _normalise_bins(bins, b, v.device)
    # Ascending ranks: the picks are monotone in the rank, and de-duplication sorts them anyway.
    ranks = np.sort(_rank_positions(n_bins, n, v.device).numpy()) if bins is None else None
    images = _kernels.flat_images(v)
    dst = dest.numpy()
    table_dtype = np.float64 if dest.dtype == torch.float64 else np.float32
    failed: list[int] = []

    def work(start: int, stop: int) -> None:
        for j in range(start, stop):
            hist = _kernels.integer_histogram(images[j])
            if hist is None:
                failed.append(j)  # list.append is atomic under the GIL
                continue
            low, counts = hist
            if shared is None:
                assert ranks is not None
                image_bins = _kernels.histogram_bins(low, counts, ranks)
            else:
                image_bins = shared.bins[j, : int(shared.lengths[j])].numpy()
            grid = np.arange(counts.size, dtype=np.float64) + low
            y = np.interp(grid, image_bins, np.linspace(0.0, 1.0, len(image_bins)))
            table = np.clip(y, 0.0, 1.0, out=y).astype(table_dtype)
            _kernels.gather_into(images[j], table, low, dst[j])

    run_in_slices(b, work, n)
    for j in sorted(failed):
        given = (
            None
            if shared is None
            else FreqHistBins(shared.bins[j : j + 1], shared.lengths[j : j + 1])
        )
        _HistScaler(v[j : j + 1], given, n_bins).into(0, dest[j : j + 1])


class _HistScaler:
    """:func:`hist_scaled` of a (B, N) batch, chunk by chunk (see :data:`_CHUNK_VALUES`)."""

    def __init__(self, v: Tensor, bins: Tensor | FreqHistBins | None, n_bins: int) -> None:
        b, n = v.shape
        self.v = v
        self.step = chunk_images(b, n, v.device, _CHUNK_VALUES)
        # Float32/64 chunks use their destination images as the scratch of the integrality check.
        self.keys, self.scratch = _key_buffers(v, self.step, float_dtype(v) != v.dtype)
        self.shared = None if bins is None else _normalise_bins(bins, b, v.device)
        self.ranks = _rank_positions(n_bins, n, v.device) if bins is None else None

    def chunk(self, start: int, dest: Tensor) -> tuple[Tensor, _IntegerView | None]:
        """Images ``start : start + k`` and their integer view (None: not integer-valued)."""
        images = self.v[start : start + dest.shape[0]]
        scratch = dest if dest.dtype == images.dtype else self.scratch
        return images, _integer_view(images, self.keys, scratch)

    def bins(self, start: int, images: Tensor, view: _IntegerView | None) -> FreqHistBins:
        """The chunk's bins, float64."""
        if self.shared is not None:
            stop = start + images.shape[0]
            return FreqHistBins(self.shared.bins[start:stop], self.shared.lengths[start:stop])
        assert self.ranks is not None
        if view is not None:
            picked = _picked_from_view(view, self.ranks)
        else:
            picked = _picked_by_sort(images, self.ranks)
        return _dedup_sorted(picked.to(torch.float64))

    def table(self, start: int, images: Tensor, view: _IntegerView, dtype: torch.dtype) -> Tensor:
        """(k, span) hist_scaled of every value of the chunk's range, per image, in ``dtype``.

        The entries are the very numbers the per-pixel formula gives for those values.
        """
        if view.keys.device.type == "cpu":
            return self._table_numpy(start, view, dtype)
        fb = self.bins(start, images, view)
        grid = torch.arange(view.span, device=fb.bins.device, dtype=torch.float64) + view.low
        values = grid.expand(images.shape[0], -1).contiguous()
        return _interp(values, fb.bins, fb.lengths).clamp_(0, 1).to(dtype)

    def _table_numpy(self, start: int, view: _IntegerView, dtype: torch.dtype) -> Tensor:
        # On CPU the per-image work on these small arrays (<= 65536 entries) runs as the
        # tutorial's own numpy calls: bins by searchsorted + unique, then numpy.interp itself,
        # at a fraction of the per-op overhead of some 60 tiny torch ops per chunk.
        k = view.keys.shape[0]
        grid = np.arange(view.span, dtype=np.float64) + view.low
        table = np.empty((k, view.span), dtype=np.float64 if dtype == torch.float64 else np.float32)
        if self.shared is None:
            assert self.ranks is not None
            counts = torch.bincount(view.keys.view(-1), minlength=k * view.span)
            cumulative = np.cumsum(counts.numpy().reshape(k, view.span), axis=1)
            ranks = self.ranks.numpy()
        for j in range(k):
            if self.shared is None:
                picked = np.searchsorted(cumulative[j], ranks, side="right") + view.low
                bins = np.unique(picked).astype(np.float64)
            else:
                length = int(self.shared.lengths[start + j])
                bins = self.shared.bins[start + j, :length].numpy()
            y = np.interp(grid, bins, np.linspace(0.0, 1.0, len(bins)))
            table[j] = np.clip(y, 0.0, 1.0, out=y)
        return torch.from_numpy(table)

    def into(self, start: int, dest: Tensor) -> None:
        """Write images ``start : start + k`` into ``dest`` ((k, N), every image contiguous)."""
        images, view = self.chunk(start, dest)
        if view is None:
            fb = self.bins(start, images, view)
            dest.copy_(_interp(images.to(torch.float64), fb.bins, fb.lengths).clamp_(0, 1))
            return
        # Integer values: gather the pixels from the chunk's (k * span) table.
        table = self.table(start, images, view, dest.dtype).view(-1)
        if dest.is_contiguous():
            torch.index_select(table, 0, view.keys.view(-1), out=dest.view(-1))
            return
        for j in range(dest.shape[0]):
            torch.index_select(table, 0, view.keys[j], out=dest[j])


def _check_bins(bins: Any) -> None:
    """Bins a module keeps: none (per image) or dataset-level ones."""
    if bins is not None and not isinstance(bins, (Tensor, FreqHistBins)):
        raise TypeError(
            f"bins must be None or a Tensor of dataset-level bins. Got: {type(bins).__name__}"
        )


# --------------------------------------------------------------------------- module
class FreqHistNormalize(BatchTransform):
    r"""Frequency-histogram normalisation onto [0, 1] (:func:`hist_scaled`).

    Args:
        bins: ``None`` for per-image bins, or a (K,) tensor of dataset-level bins
            (:func:`~torchdicom.transforms.functional.freqhist_bins_dataset`).
        n_bins: groups for per-image bins.

    Shape:
        - image: :math:`(B, C, H, W)` → float32, same shape

    Example:
        >>> FreqHistNormalize()(torch.randint(0, 100, (2, 1, 8, 8))).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, bins: Tensor | None = None, n_bins: int = 100) -> None:
        super().__init__()
        _check_bins(bins)
        _check_n_bins(n_bins)
        self.bins, self.n_bins = bins, n_bins

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        return hist_scaled(x, bins=self.bins, n_bins=self.n_bins)
