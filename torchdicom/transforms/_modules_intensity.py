"""nn.Module wrappers for rescale, windowing and histogram normalisation, reading the batch dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchdicom.io.modality import rescale_parameters
from torchdicom.transforms._functional_histogram import FreqHistBins, hist_scaled, to_nchan
from torchdicom.transforms._functional_intensity import (
    WindowMode,
    WindowSpec,
    invert_monochrome1,
    rescale,
    resolve_window,
    window_from_header,
    windowed,
)
from torchdicom.transforms._utils import apply_to_image, require_key

__all__ = ["FreqHistNormalize", "MultiWindow", "Rescale", "Window"]

Batch = Tensor | Mapping[str, Any]


def _check_mode(mode: str) -> None:
    if mode not in ("fastai", "dicom"):
        raise ValueError(f"mode must be 'fastai' or 'dicom'. Got: {mode!r}")


class Rescale(nn.Module):
    r"""Stored values → Hounsfield (modality) units with each sample's slope and intercept.

    On a batch dict it reads ``slope`` and ``intercept`` (NaN → 1 and 0). When the dict has
    ``monochrome1`` flags and ``bits_stored``, flagged samples are inverted first (as
    two's complement values where the dict's ``signed`` flags say so, else by the dtype)
    (:func:`invert_monochrome1`) and their ``window_center`` is mirrored the same way
    (``slope * (max + min) + 2 * intercept - centre``), so :meth:`Window.from_header` still
    selects the same tissue, now displayed MONOCHROME2-style.

    Args:
        slope: used for bare tensors (a dict's own ``slope`` wins).
        intercept: used for bare tensors (a dict's own ``intercept`` wins).

    Shape:
        - image: :math:`(B, C, H, W)` any dtype → float32; volume batches
          :math:`(B, 1, D, H, W)` with :math:`(B, D)` ``slope`` / ``intercept`` (one per
          slice, as :class:`~torchdicom.DicomVolumeDataset` items carry them) too, see
          :func:`rescale`

    Example:
        >>> batch = {"image": torch.zeros(2, 1, 8, 8, dtype=torch.int16),
        ...          "slope": torch.ones(2), "intercept": torch.full((2,), -1024.0)}
        >>> Rescale()(batch)["image"].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, slope: float = 1.0, intercept: float = 0.0) -> None:
        super().__init__()
        self.slope = slope
        self.intercept = intercept

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        if not isinstance(data, Mapping):
            return rescale(data, self.slope, self.intercept)
        slope = data.get("slope", self.slope)
        intercept = data.get("intercept", self.intercept)
        if not _inverts_monochrome1(data):
            return apply_to_image(data, lambda x, _: rescale(x, slope, intercept))
        flags = data["monochrome1"]
        out = dict(data)
        image = data["image"]
        inverted = invert_monochrome1(
            image, data["bits_stored"], apply=flags.to(image.device), signed=data.get("signed")
        )
        out["image"] = rescale(inverted, slope, intercept)
        if "window_center" in data:
            out["window_center"] = _mirror_centre(data, inverted, slope, intercept)
        return out

    def extra_repr(self) -> str:
        return f"slope={self.slope}, intercept={self.intercept}"


def _inverts_monochrome1(data: Mapping[str, Any]) -> bool:
    """Whether :class:`Rescale` inverts some sample of this batch dict first.

    Most batches hold no MONOCHROME1 image: the full-size inversion pass is skipped then (one
    tiny (B,) reduction instead of a pass over the pixels).
    """
    flags = data.get("monochrome1")
    return flags is not None and "bits_stored" in data and bool(torch.as_tensor(flags).any())


def _mirror_centre(data: Mapping[str, Any], image: Tensor, slope: Any, intercept: Any) -> Tensor:
    centre = data["window_center"]
    flags = data["monochrome1"].to(device=centre.device, dtype=torch.bool)
    bits = (
        torch.as_tensor(data["bits_stored"], device=centre.device)
        .to(torch.float64)
        .expand(centre.shape)
    )
    signed = data.get("signed")
    if signed is None:
        signed = image.is_signed() and not image.is_floating_point()
    two_complement = (
        torch.as_tensor(signed, device=centre.device).to(torch.bool).expand(centre.shape)
    )
    total = torch.where(two_complement, torch.full_like(bits, -1.0), torch.pow(2.0, bits) - 1)
    s = torch.as_tensor(slope, dtype=torch.float64, device=centre.device).expand(centre.shape)
    i = torch.as_tensor(intercept, dtype=torch.float64, device=centre.device).expand(centre.shape)
    s, i = rescale_parameters(s, i)
    mirrored = (s * total + 2 * i - centre.to(torch.float64)).to(centre.dtype)
    return torch.where(flags, mirrored, centre)


class Window(nn.Module):
    r"""Window onto [0, 1] with a fixed ``(width, level)`` (see :func:`windowed`).

    Use :meth:`preset` for a :data:`DICOM_WINDOWS` name and :meth:`from_header` for each
    sample's own (0028,1050)/(0028,1051) window.

    Args:
        width: window width (>= 2 in ``"fastai"`` mode, >= 1 in ``"dicom"`` mode).
        level: window centre.
        mode: ``"fastai"`` or ``"dicom"``.
        rescale: apply :class:`Rescale` first, fused: the batch dict holds stored values
            (raw int16 as collated) and the output equals ``Window(...)(Rescale()(batch))``
            bit for bit, in one pass on CPU without a batch-sized HU intermediate. Batches
            with MONOCHROME1 samples take the two steps one after the other.

    Shape:
        - image: :math:`(B, C, H, W)` → float32, same shape

    Example:
        >>> Window(400, 50)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
        >>> batch = {"image": torch.zeros(2, 1, 8, 8, dtype=torch.int16),
        ...          "slope": torch.ones(2), "intercept": torch.full((2,), -1024.0)}
        >>> Window(1500, -600, rescale=True)(batch)["image"].dtype
        torch.float32
    """

    def __init__(
        self, width: float, level: float, mode: WindowMode = "fastai", rescale: bool = False
    ) -> None:
        super().__init__()
        _check_mode(mode)
        for name, value in (("width", width), ("level", level)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number. Got: {value!r}")
        minimum = 2 if mode == "fastai" else 1
        if not width >= minimum:
            raise ValueError(f"width must be >= {minimum} in {mode!r} mode. Got: {width!r}")
        self.width, self.level, self.mode = width, level, mode
        self.rescale = bool(rescale)

    @classmethod
    def preset(cls, name: str, mode: WindowMode = "fastai", rescale: bool = False) -> Window:
        """A window from :data:`DICOM_WINDOWS`, e.g. ``Window.preset("brain")``."""
        if not isinstance(name, str):
            raise TypeError(f"preset takes a DICOM_WINDOWS name. Got: {name!r}")
        return cls(*resolve_window(name), mode=mode, rescale=rescale)

    @staticmethod
    def from_header(
        fallback: WindowSpec | None = None, mode: WindowMode = "fastai"
    ) -> WindowFromHeader:
        """Each sample's own header window; see :class:`WindowFromHeader`."""
        return WindowFromHeader(fallback=fallback, mode=mode)

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        if self.rescale:
            if not isinstance(data, Mapping):
                raise TypeError(
                    "Window(rescale=True) reads 'slope' and 'intercept' from a batch dict; "
                    "pass the dict, not a bare tensor. Got: Tensor"
                )
            if not _inverts_monochrome1(data):
                slope, intercept = data.get("slope", 1.0), data.get("intercept", 0.0)
                return apply_to_image(
                    data,
                    lambda x, _: windowed(
                        x, self.width, self.level, self.mode, slope=slope, intercept=intercept
                    ),
                )
            data = Rescale()(data)  # MONOCHROME1 inversion first, then the window
        return apply_to_image(
            data, lambda x, _: windowed(x, self.width, self.level, mode=self.mode)
        )

    def extra_repr(self) -> str:
        extra = ", rescale=True" if self.rescale else ""
        return f"width={self.width}, level={self.level}, mode={self.mode!r}{extra}"


class WindowFromHeader(nn.Module):
    r"""Window each sample with the batch dict's ``window_center`` / ``window_width``.

    Args:
        fallback: window name or ``(width, level)`` for samples whose header had none (NaN);
            without it such a batch raises ``ValueError``.
        mode: ``"fastai"`` or ``"dicom"``.

    Shape:
        - image: :math:`(B, C, H, W)` → float32, same shape

    Example:
        >>> batch = {"image": torch.zeros(2, 1, 8, 8), "window_center": torch.tensor([40.0, 50.0]),
        ...          "window_width": torch.tensor([80.0, 400.0])}
        >>> Window.from_header()(batch)["image"].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, fallback: WindowSpec | None = None, mode: WindowMode = "fastai") -> None:
        super().__init__()
        _check_mode(mode)
        if fallback is not None:
            resolve_window(fallback)
        self.fallback, self.mode = fallback, mode

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        def fn(x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
            centre = require_key(batch, "window_center", "Window.from_header()")
            width = require_key(batch, "window_width", "Window.from_header()")
            return window_from_header(x, centre, width, mode=self.mode, fallback=self.fallback)

        return apply_to_image(data, fn)

    def extra_repr(self) -> str:
        return f"fallback={self.fallback!r}, mode={self.mode!r}"


def _check_bins(bins: Any) -> None:
    if bins is not None and not isinstance(bins, (Tensor, FreqHistBins)):
        raise TypeError(
            f"bins must be None or a Tensor of dataset-level bins. Got: {type(bins).__name__}"
        )


class MultiWindow(nn.Module):
    r"""One channel per window plus, with ``freqhist``, a histogram-normalised channel (:func:`to_nchan`).

    Args:
        windows: :data:`DICOM_WINDOWS` names or ``(width, level)`` pairs.
        freqhist: add the :func:`hist_scaled` channel.
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
        self.windows = [resolve_window(w) for w in windows]
        if not self.windows and not freqhist:
            raise ValueError(
                f"MultiWindow needs at least one window or freqhist=True. Got: {windows!r}"
            )
        self.freqhist, self.bins, self.mode = freqhist, bins, mode

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        bins = self.bins if self.freqhist else 0
        return apply_to_image(
            data, lambda x, _: to_nchan(x, self.windows, bins=bins, mode=self.mode)
        )

    def extra_repr(self) -> str:
        return f"windows={self.windows}, freqhist={self.freqhist}, mode={self.mode!r}"


class FreqHistNormalize(nn.Module):
    r"""Frequency-histogram normalisation onto [0, 1] (:func:`hist_scaled`).

    Args:
        bins: ``None`` for per-image bins, or a (K,) tensor of dataset-level bins
            (:func:`freqhist_bins_dataset`).
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
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int. Got: {n_bins!r}")
        self.bins, self.n_bins = bins, n_bins

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        return apply_to_image(data, lambda x, _: hist_scaled(x, bins=self.bins, n_bins=self.n_bins))

    def extra_repr(self) -> str:
        kind = "per-image" if self.bins is None else f"dataset ({self.bins.shape[-1]})"
        return f"bins={kind}, n_bins={self.n_bins}"
