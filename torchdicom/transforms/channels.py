"""Channel stacks: one windowed channel per window plus a histogram channel (function and module).

The tutorial's ``to_nchan`` / ``to_3chan``: a CT slice becomes an N-channel image, each channel
showing one tissue window, the last the frequency-histogram normalised image, ready for a
network pretrained on 3-channel photographs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

import torchdicom.transforms.histogram as _histogram
from torchdicom._runtime import empty_large
from torchdicom.transforms import _kernels
from torchdicom.transforms._base import BatchTransform
from torchdicom.transforms._utils import check_image, chunk_images, float_dtype, unbatch
from torchdicom.transforms.histogram import (
    FreqHistBins,
    _check_bins,
    _hist_scaled_native,
    _HistScaler,
    hist_scaled,
)
from torchdicom.transforms.intensity import (
    WindowMode,
    WindowSpec,
    _check_mode,
    resolve_window,
    windowed,
)

__all__ = ["MultiWindow", "to_3chan", "to_nchan"]


def _channel_windows(windows: Sequence[WindowSpec], with_hist: bool) -> list[tuple[float, float]]:
    """The windows as ``(width, level)`` pairs; at least one channel in all."""
    resolved = [resolve_window(w) for w in windows]
    if not resolved and not with_hist:
        raise ValueError(
            "a channel stack needs at least one window or the histogram channel."
            f" Got: windows={windows!r} without the histogram channel"
        )
    return resolved


def to_nchan(
    x: Tensor,
    windows: Sequence[WindowSpec],
    bins: Tensor | FreqHistBins | int | None = None,
    mode: WindowMode = "fastai",
) -> Tensor:
    r"""Stack one windowed channel per window, plus a :func:`hist_scaled` channel.

    As the tutorial's ``to_nchan``: ``[windowed(x, *w) for w in windows] + [hist_scaled(x, bins)]``,
    the last omitted when ``bins == 0``. For a C-channel input the output channels are grouped
    window by window (each group has C channels), then the histogram group.

    Args:
        x: values in HU.
        windows: :data:`DICOM_WINDOWS` names or ``(width, level)`` pairs.
        bins: ``None`` (per-image bins), bins as for :func:`hist_scaled`, or ``0`` for no
            histogram channel.
        mode: window mode, see :func:`windowed`.

    Returns:
        float32 (float64 for float64 input) in [0, 1].

    Shape:
        - x: :math:`(C, H, W)` or :math:`(B, C, H, W)`
        - output: :math:`(N C, H, W)` or :math:`(B, N C, H, W)`, ``N = len(windows) + (bins != 0)``

    Example:
        >>> x = torch.randint(-1000, 1000, (2, 1, 16, 16)).float()
        >>> to_nchan(x, ["brain", "subdural", (400, 50)]).shape
        torch.Size([2, 4, 16, 16])
    """
    xb, batched = check_image(x)
    with_hist = not (isinstance(bins, int) and not isinstance(bins, bool) and bins == 0)
    resolved = _channel_windows(windows, with_hist)
    if isinstance(bins, int) and with_hist:
        raise TypeError(f"bins must be None, 0, a Tensor or FreqHistBins. Got: {bins!r}")
    b, c, h, w = xb.shape
    groups = len(resolved) + int(with_hist)
    if xb.requires_grad:
        parts = [windowed(xb, width, level, mode=mode) for width, level in resolved]
        if with_hist:
            parts.append(hist_scaled(xb, bins=bins))  # type: ignore[arg-type]
        return unbatch(torch.cat(parts, dim=1), batched)
    # Channels are written into one preallocated output chunk by chunk, every window and the
    # histogram channel of a chunk one after the other while its images are fresh in cache.
    out = empty_large((b, groups, c, h, w), float_dtype(x), x.device)
    n = c * h * w
    if out.numel() == 0:
        return unbatch(out.view(b, groups * c, h, w), batched)
    if _kernels.usable(xb) and mode == "fastai" and all(w >= 2 for w, _ in resolved):
        if resolved:
            # The torch route's float operations exactly: clamp to float(lo), float(hi), then
            # subtract float(lo) and divide by float(hi - lo), hi - lo taken in Python.
            bounds = [(level - width // 2, level + width // 2) for width, level in resolved]
            grid = torch.tensor(
                [
                    [lo for lo, _ in bounds],
                    [hi for _, hi in bounds],
                    [hi - lo for lo, hi in bounds],
                ],
                dtype=torch.float64,
            )
            lo_t, hi_t, span_t = (bound.expand(b, -1) for bound in grid)
            _kernels.window_into(xb, lo_t, hi_t, span_t, out.view(b, groups, n))
        if with_hist:
            _hist_scaled_native(xb.reshape(b, n), out[:, -1].view(b, n), bins, 100)  # type: ignore[arg-type]
        return unbatch(out.view(b, groups * c, h, w), batched)
    scaler = _HistScaler(xb.reshape(b, n), bins, 100) if with_hist else None  # type: ignore[arg-type]
    step = (
        scaler.step
        if scaler is not None
        else chunk_images(b, n, x.device, _histogram._CHUNK_VALUES)
    )
    hist_images = out[:, -1].view(b, n)
    for start in range(0, b, step):
        chunk = xb[start : start + step]
        for i, (width, level) in enumerate(resolved):
            _window_into(out[start : start + step, i], chunk, width, level, mode)
        if scaler is not None:
            scaler.into(start, hist_images[start : start + step])
    return unbatch(out.view(b, groups * c, h, w), batched)


def _window_into(dest: Tensor, x: Tensor, width: float, level: float, mode: WindowMode) -> None:
    if mode != "fastai" or isinstance(width, bool) or width < 2:
        dest.copy_(windowed(x, width, level, mode=mode))
        return
    lo, hi = level - width // 2, level + width // 2
    if x.dtype == dest.dtype:
        torch.clamp(x, lo, hi, out=dest)
    else:
        # Integer / half input: convert first, as windowed() does (clamp's out= keeps dtype).
        dest.copy_(x).clamp_(lo, hi)
    dest.sub_(lo).div_(hi - lo)


def to_3chan(
    x: Tensor, windows: Sequence[WindowSpec], bins: Tensor | FreqHistBins | None = None
) -> Tensor:
    r"""Two windows plus the histogram channel, as the tutorial's ``to_3chan``.

    Args:
        x: values in HU.
        windows: exactly two window names or ``(width, level)`` pairs.
        bins: as for :func:`hist_scaled`.

    Returns:
        float32 (float64 for float64 input) in [0, 1].

    Shape:
        - x: :math:`(1, H, W)` or :math:`(B, 1, H, W)`
        - output: :math:`(3, H, W)` or :math:`(B, 3, H, W)`

    Example:
        >>> to_3chan(torch.zeros(2, 1, 8, 8), ["brain", "subdural"]).shape
        torch.Size([2, 3, 8, 8])
    """
    if len(windows) != 2:
        raise ValueError(f"to_3chan takes exactly two windows. Got: {list(windows)!r}")
    return to_nchan(x, windows, bins=bins)


# --------------------------------------------------------------------------- module
class MultiWindow(BatchTransform):
    r"""One channel per window plus, with ``freqhist``, a histogram-normalised channel (:func:`to_nchan`).

    Args:
        windows: :data:`~torchdicom.transforms.DICOM_WINDOWS` names or ``(width, level)`` pairs.
        freqhist: add the :func:`~torchdicom.transforms.histogram.hist_scaled` channel.
        bins: dataset-level bins for that channel (``None``: each image's own).
        mode: window mode.

    Shape:
        - image: :math:`(B, C, H, W)` → :math:`(B, N C, H, W)` float32

    Example:
        >>> MultiWindow(["brain", "subdural", "abdomen_soft"])(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        windows: Sequence[WindowSpec],
        freqhist: bool = True,
        bins: Tensor | None = None,
        mode: WindowMode = "fastai",
    ) -> None:
        super().__init__()
        _check_mode(mode)
        _check_bins(bins)
        self.windows = _channel_windows(windows, freqhist)
        self.freqhist, self.bins, self.mode = freqhist, bins, mode

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        return to_nchan(x, self.windows, bins=self.bins if self.freqhist else 0, mode=self.mode)
