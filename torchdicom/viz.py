"""Pictures of DICOM images: the fastai tutorial's ``show`` and friends.

Everything here uses matplotlib's object-oriented API and returns the Axes or
Figure it drew on; nothing calls ``plt.show()``, so the functions work the same
in notebooks (where pyplot figures display themselves), in scripts under the
Agg backend, and in tests. Inputs may be tensors, numpy arrays or file paths
(read with pydicom, rescaled to modality values such as HU).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from torchdicom.transforms.functional import DICOM_WINDOWS, hist_scaled, windowed

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_hist", "show", "show_frames", "show_windows"]

ImageLike = torch.Tensor | np.ndarray | str | os.PathLike
Window = str | tuple[float, float]

_DICOM_WINDOWS = DICOM_WINDOWS  # name -> (width, level), in HU


def _resolve_window(window: Window) -> tuple[float, float]:
    """(width, level) of a preset name or an explicit pair."""
    if isinstance(window, str):
        if window not in _DICOM_WINDOWS:
            raise ValueError(
                f"unknown window name; known: {sorted(_DICOM_WINDOWS)}. Got: {window!r}"
            )
        return _DICOM_WINDOWS[window]
    if isinstance(window, Sequence) and len(window) == 2:
        return float(window[0]), float(window[1])
    raise TypeError(f"window must be a preset name or a (width, level) pair. Got: {window!r}")


def _windowed(image: np.ndarray, width: float, level: float) -> np.ndarray:
    """The tutorial's window (see :func:`torchdicom.transforms.functional.windowed`) on one image."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))
    return windowed(t.reshape(1, 1, -1), float(width), float(level)).reshape(t.shape).numpy()


def _hist_scaled(image: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Frequency-histogram normalisation (:func:`torchdicom.transforms.functional.hist_scaled`)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))
    b = torch.as_tensor(np.asarray(bins, dtype=np.float64))
    # Any shape: hist_scaled wants (C, H, W), and the mapping is element-wise.
    return hist_scaled(t.reshape(1, 1, -1), bins=b).reshape(t.shape).numpy()


def _read_file(path: str | os.PathLike, frame: int) -> tuple[np.ndarray, bool]:
    """One frame of a DICOM file: (image, monochrome1).

    Grey images come back in modality units (:func:`torchdicom.scaled_px`:
    rescale slope/intercept or the Modality LUT), as float32 (H, W); colour ones
    as stored, RGB (H, W, 3). Only the requested frame is read.
    """
    from torchdicom.io.frames import read_frames, row_for_path, scaled_px

    row = row_for_path(path)
    frames = int(row["frames"])
    if not 0 <= frame < frames:
        raise IndexError(f"{os.fspath(path)}: frame {frame} out of range for {frames} frames")
    if int(row["samples_per_pixel"]) == 1:
        pixels = scaled_px(row, frame).numpy()
    else:
        pixels = np.moveaxis(read_frames(row, frame)[0].numpy(), 0, -1)
    return pixels, row["photometric"] == "MONOCHROME1"


def _to_image(x: ImageLike, frame: int = 0) -> tuple[np.ndarray, bool]:
    """Anything showable as (H, W) grey or (H, W, 3) colour numpy, plus a MONOCHROME1 flag.

    Tensors and arrays may be (H, W), (C, H, W) with C in {1, 3}, or a stack
    (T, C, H, W) from which ``frame`` is taken. Numpy (H, W, 3) — pydicom's
    layout for colour — is accepted as channels-last.
    """
    if isinstance(x, (str, os.PathLike)):
        return _read_file(x, frame)
    if isinstance(x, torch.Tensor):
        array = x.detach().cpu().numpy()
        channels_last_ok = False
    elif isinstance(x, np.ndarray):
        array = x
        channels_last_ok = True
    else:
        raise TypeError(f"expected a tensor, a numpy array or a file path. Got: {type(x).__name__}")

    if array.ndim == 4:
        array = array[frame]
    if array.ndim == 2:
        return array, False
    if array.ndim == 3:
        if array.shape[0] == 1:
            return array[0], False
        if array.shape[0] == 3:
            return np.moveaxis(array, 0, -1), False
        if channels_last_ok and array.shape[-1] == 3:
            return array, False
    raise ValueError(
        "expected an image of shape (H, W), (C, H, W) with C in {1, 3} or (T, C, H, W). "
        f"Got: {tuple(array.shape)}"
    )


def _colour_for_display(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) as imshow wants it: uint8 or floats in [0, 1] as they are, else min-max to [0, 1]."""
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    lo, hi = float(image.min()), float(image.max())
    if lo >= 0.0 and hi <= 1.0:
        return image
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _new_axes(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None):
    # pyplot (not a bare Figure) so that notebooks display the result like fastai's show.
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return fig, axes.ravel()


def show(
    x_or_path: ImageLike,
    window: Window | None = None,
    ax: Axes | None = None,
    cmap: str = "bone",
    frame: int = 0,
    title: str | None = None,
) -> Axes:
    """Show one image, optionally windowed, like the tutorial's ``show``.

    Args:
        x_or_path: a tensor or array (H, W), (C, H, W) with C = 1 (grey) or 3
            (RGB), (T, C, H, W) (``frame`` is shown), numpy (H, W, 3), or a DICOM
            file path (rescaled to modality values, e.g. HU).
        window: a preset name (``"brain"``, ``"lungs"``, …) or ``(width, level)``;
            the image is clipped to ``level ∓ width // 2`` and scaled to [0, 1].
            ``None`` shows the full range. Grey images only.
        ax: Axes to draw on; a new figure is created when ``None``.
        cmap: colour map for grey images; reversed for MONOCHROME1 files so
            that air still looks dark.
        frame: frame of a multi-frame file or of a (T, C, H, W) stack.
        title: Axes title.

    Returns:
        The Axes drawn on (its figure is ``ax.figure``).

    Shape:
        - Input: :math:`(H, W)`, :math:`(C, H, W)`, :math:`(T, C, H, W)`, or a path.

    Example:
        >>> ax = show(torch.rand(64, 64) * 2000 - 1000, window="lungs")
        >>> ax.images[0].get_array().shape
        (64, 64)
    """
    image, monochrome1 = _to_image(x_or_path, frame)
    if ax is None:
        _, axes = _new_axes()
        ax = axes[0]
    if image.ndim == 3:
        if window is not None:
            raise ValueError(
                f"windowing applies to grey images only. Got: colour image with window={window!r}"
            )
        ax.imshow(_colour_for_display(image))
    else:
        if monochrome1 and isinstance(cmap, str):
            cmap = cmap[:-2] if cmap.endswith("_r") else f"{cmap}_r"
        if window is None:
            ax.imshow(image, cmap=cmap)
        else:
            ax.imshow(_windowed(image, *_resolve_window(window)), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def show_windows(
    x: ImageLike,
    presets: Sequence[Window] = (
        "brain",
        "subdural",
        "lungs",
        "mediastinum",
        "liver",
        "spine_bone",
    ),
    ncols: int = 3,
) -> Figure:
    """One panel per window, titled ``name (W=…, L=…)``.

    Args:
        x: a grey image in modality units (tensor/array (H, W) or (1, H, W), or a path).
        presets: preset names or ``(width, level)`` pairs.
        ncols: panels per row.

    Returns:
        The Figure; unused trailing panels are hidden.
    """
    image, monochrome1 = _to_image(x)
    if image.ndim != 2:
        raise ValueError(f"show_windows needs a grey image. Got: shape {tuple(image.shape)}")
    if not presets:
        raise ValueError(f"presets must name at least one window. Got: {presets!r}")
    ncols = max(1, min(ncols, len(presets)))
    nrows = math.ceil(len(presets) / ncols)
    fig, axes = _new_axes(nrows, ncols, figsize=(3 * ncols, 3 * nrows))
    cmap = "bone_r" if monochrome1 else "bone"
    for ax, preset in zip(axes, presets):
        width, level = _resolve_window(preset)
        name = preset if isinstance(preset, str) else "window"
        show(
            image,
            window=(width, level),
            ax=ax,
            cmap=cmap,
            title=f"{name} (W={width:g}, L={level:g})",
        )
    for ax in axes[len(presets) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_hist(
    x: ImageLike,
    bins: torch.Tensor | np.ndarray | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    n_bins: int = 100,
) -> Figure:
    """Intensity histogram; with ``bins``, before and after frequency-histogram scaling.

    Args:
        x: an image (anything :func:`show` takes); all its values are counted.
        bins: freqhist bin edges (1-D, increasing), as from ``freqhist_bins``.
            When given, a second panel shows the histogram of the scaled image,
            which is close to flat when the bins came from the same image.
        ax: one Axes (without ``bins``) or two (with ``bins``) to draw on; a
            new figure is created when ``None``.
        n_bins: histogram bars per panel.

    Returns:
        The Figure holding the panels.
    """
    image, _ = _to_image(x)
    values = np.asarray(image, dtype=np.float64).ravel()
    panels = 1 if bins is None else 2
    if ax is None:
        fig, axes = _new_axes(1, panels, figsize=(4.5 * panels, 3.5))
    else:
        axes = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) != panels:
            raise ValueError(f"plot_hist needs {panels} Axes. Got: {len(axes)}")
        fig = axes[0].figure
    axes[0].hist(values, bins=n_bins, color="0.3")
    axes[0].set_title("intensity")
    if bins is not None:
        edges = bins.detach().cpu().numpy() if isinstance(bins, torch.Tensor) else np.asarray(bins)
        if edges.ndim != 1 or edges.size < 2:
            raise ValueError(f"bins must be 1-D with at least 2 edges. Got: shape {edges.shape}")
        axes[1].hist(
            _hist_scaled(values, edges.astype(np.float64)), bins=n_bins, range=(0, 1), color="0.3"
        )
        axes[1].set_title("after freqhist scaling")
    return fig


def show_frames(clip: ImageLike, n: int = 8, ncols: int = 8) -> Figure:
    """A strip of ``n`` evenly spaced frames, titled with their index.

    Args:
        clip: (T, C, H, W) or (T, H, W) tensor/array, or a multi-frame DICOM
            path (only the shown frames are decoded).
        n: frames to show (all of them when the clip is shorter).
        ncols: panels per row.

    Returns:
        The Figure.
    """
    if isinstance(clip, (str, os.PathLike)):
        import pydicom

        header = pydicom.dcmread(clip, stop_before_pixels=True)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    else:
        array = clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
        if array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4:
            raise ValueError(
                f"expected a clip (T, C, H, W) or (T, H, W). Got: shape {tuple(array.shape)}"
            )
        frames = array.shape[0]
    if frames < 1 or n < 1:
        raise ValueError(f"need at least one frame to show. Got: {frames} frames, n={n}")
    picks = [int(k) for k in np.unique(np.linspace(0, frames - 1, min(n, frames)).round())]
    ncols = max(1, min(ncols, len(picks)))
    nrows = math.ceil(len(picks) / ncols)
    fig, axes = _new_axes(nrows, ncols, figsize=(2 * ncols, 2 * nrows))
    for ax, k in zip(axes, picks):
        if isinstance(clip, (str, os.PathLike)):
            show(clip, ax=ax, frame=k, title=f"frame {k}")
        else:
            show(array[k], ax=ax, title=f"frame {k}")
    for ax in axes[len(picks) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
