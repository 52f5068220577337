"""Frequency-histogram bins over a whole dataset, streamed in bounded memory (functional).

Pass the result as ``bins=`` to :func:`~torchdicom.transforms.histogram.hist_scaled`,
:class:`~torchdicom.transforms.FreqHistNormalize` or
:class:`~torchdicom.transforms.MultiWindow`, so every image is scaled through the same bins.
It takes any iterable of image tensors (a dataset's rescaled images, a DataLoader's
batches), not a dataset: transforms never import ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from torchdicom.transforms._utils import check_image
from torchdicom.transforms.histogram import (
    _MAX_RANGE,
    _check_n_bins,
    _dedup_sorted,
    _integer_view,
    _rank_positions,
)

__all__ = ["freqhist_bins_dataset"]


def freqhist_bins_dataset(
    images: Iterable[Tensor],
    n_bins: int = 100,
    max_samples: int = 1 << 22,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""One set of frequency-histogram bins over many images, streamed in bounded memory.

    Integer-valued images (integer dtypes, or integral floats) are accumulated into one integer
    histogram: the result is **exact**, equal to
    :func:`~torchdicom.transforms.histogram.freqhist_bins` of all pixels
    concatenated, and memory is bounded by the value range (the running histogram spans the
    values seen, at most ``4 * 2**17`` of them).
    Once a non-integral float image appears, the stream is summarised by a uniform random sample
    of at most ``max_samples`` pixels (a reservoir kept by random priority); the bins are then
    the order statistics of that sample — an approximation, exact while the stream holds no
    more than ``max_samples`` pixels.

    Args:
        images: iterable of (C, H, W) or (B, C, H, W) tensors (e.g. rescaled HU), any device.
        n_bins: number of groups.
        max_samples: reservoir size for float data.
        generator: random generator for the reservoir (CPU).

    Returns:
        (K,) strictly increasing bins, float32 (float64 if any image was float64), on the device
        of the first image; pass it as ``bins=`` to
        :func:`~torchdicom.transforms.histogram.hist_scaled` /
        :func:`~torchdicom.transforms.channels.to_nchan`.

    Shape:
        - output: :math:`(K,)`, ``K <= n_bins + 2``

    Example:
        >>> imgs = [torch.randint(-1000, 1000, (1, 16, 16)) for _ in range(3)]
        >>> freqhist_bins_dataset(imgs, n_bins=10).shape
        torch.Size([12])
    """
    _check_n_bins(n_bins)
    counts: Tensor | None = None
    low = 0
    sample: Tensor | None = None
    priority: Tensor | None = None
    total = 0
    device: torch.device | None = None
    out_dtype = torch.float32
    for image in images:
        xb, _ = check_image(image, "image")
        device = device or xb.device
        if xb.dtype == torch.float64:
            out_dtype = torch.float64
        flat = xb.detach().reshape(-1).to(device)
        if flat.numel() == 0:
            continue
        total += flat.numel()
        view = _integer_view(flat[None]) if sample is None else None
        if view is not None:
            lo = view.low
            hi = lo + view.span
            counts, low = _grow(counts, low, lo, hi)
            counts[lo - low : hi - low] += torch.bincount(
                view.keys.view(-1), minlength=view.span
            ).cpu()
            continue
        if sample is None and counts is not None:
            # Switch to sampling: draw the histogram's share of the reservoir from its counts.
            sample, priority = _sample_histogram(counts, low, max_samples, generator)
            counts = None
        vals = flat.to(torch.float64).cpu()
        keys = torch.rand(vals.numel(), generator=generator, dtype=torch.float64)
        if sample is not None and priority is not None:
            vals, keys = torch.cat([sample, vals]), torch.cat([priority, keys])
        if vals.numel() > max_samples:
            keep = torch.topk(keys, max_samples, largest=False).indices
            vals, keys = vals[keep], keys[keep]
        sample, priority = vals, keys
    if device is None:
        raise ValueError("freqhist_bins_dataset needs at least one non-empty image. Got: none")
    if counts is not None:
        cumulative = torch.cumsum(counts, dim=0)[None]
        ranks = _rank_positions(n_bins, total, cumulative.device)[None]
        picked = torch.searchsorted(cumulative, ranks, right=True).to(torch.float64) + low
    else:
        assert sample is not None
        ranks = _rank_positions(n_bins, sample.numel(), sample.device)
        picked = torch.sort(sample).values[ranks][None]
    result = _dedup_sorted(picked)
    return result.bins[0, : int(result.lengths[0])].to(device=device, dtype=out_dtype)


def _grow(counts: Tensor | None, low: int, lo: int, hi: int) -> tuple[Tensor, int]:
    """Widen the running histogram (index 0 is value ``low``) to cover [lo, hi)."""
    if counts is None:
        return torch.zeros(hi - lo, dtype=torch.int64), lo
    new_low = min(low, lo)
    new_high = max(low + counts.numel(), hi)
    if new_high - new_low > _MAX_RANGE * 4:
        raise ValueError(
            f"the dataset's integer value range is too wide for an exact histogram. Got: {new_low}..{new_high - 1}"
        )
    if new_low == low and new_high == low + counts.numel():
        return counts, low
    grown = torch.zeros(new_high - new_low, dtype=torch.int64)
    grown[low - new_low : low - new_low + counts.numel()] = counts
    return grown, new_low


def _sample_histogram(
    counts: Tensor, low: int, max_samples: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    values = torch.arange(counts.numel(), dtype=torch.float64) + low
    total = int(counts.sum())
    if total <= max_samples:
        vals = torch.repeat_interleave(values, counts)
    else:
        vals = values[
            torch.multinomial(counts.double(), max_samples, replacement=True, generator=generator)
        ]
    return vals, torch.rand(vals.numel(), generator=generator, dtype=torch.float64)
