"""Tests of torchdicom.viz: what each function draws, on tensors, arrays and real files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: no display in tests

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pydicom
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydicom.data import get_testdata_file

from torchdicom.samples import us_cine_like
from torchdicom.viz import plot_hist, show, show_frames, show_windows

CT_SMALL = get_testdata_file("CT_small.dcm")


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("library code called plt.show()")

    monkeypatch.setattr(plt, "show", refuse)
    monkeypatch.setattr(Figure, "show", refuse)
    yield
    plt.close("all")


def _fastai_windowed(x: torch.Tensor, width: int, level: int) -> torch.Tensor:
    # The tutorial's definition, written out independently of the module under test.
    lo, hi = level - width // 2, level + width // 2
    return (x.clamp(lo, hi) - lo) / (hi - lo)


def _hu_ramp() -> torch.Tensor:
    return torch.linspace(-1200, 1200, 48 * 40).reshape(48, 40)


class TestShow:
    def test_returns_axes_with_windowed_image(self) -> None:
        x = _hu_ramp()
        ax = show(x, window="lungs")
        assert isinstance(ax, Axes) and isinstance(ax.figure, Figure)
        assert len(ax.images) == 1
        np.testing.assert_allclose(
            ax.images[0].get_array(), _fastai_windowed(x, 1500, -600).numpy(), atol=1e-6
        )
        assert ax.images[0].get_clim() == (0.0, 1.0)

    def test_explicit_window_pair_and_title(self) -> None:
        x = _hu_ramp()
        ax = show(x, window=(81, 40), title="odd width")
        np.testing.assert_allclose(
            ax.images[0].get_array(), _fastai_windowed(x, 81, 40).numpy(), atol=1e-6
        )
        assert ax.get_title() == "odd width"

    def test_no_window_shows_values(self) -> None:
        x = _hu_ramp()
        ax = show(x[None])  # (1, H, W) is grey
        np.testing.assert_array_equal(ax.images[0].get_array(), x.numpy())
        assert ax.images[0].get_cmap().name == "bone"

    def test_rgb_tensor_and_array(self) -> None:
        rgb = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
        ax = show(rgb)
        np.testing.assert_array_equal(ax.images[0].get_array(), rgb.permute(1, 2, 0).numpy())
        ax = show(rgb.permute(1, 2, 0).numpy())  # pydicom's channels-last layout
        assert ax.images[0].get_array().shape == (20, 30, 3)
        wide = torch.rand(3, 4, 4) * 1000  # not displayable as is: scaled to [0, 1]
        shown = show(wide).images[0].get_array()
        assert shown.min() == 0.0 and shown.max() == 1.0
        with pytest.raises(ValueError, match="grey images only"):
            show(rgb, window="brain")

    def test_draws_on_given_axes(self) -> None:
        _, axes = plt.subplots(1, 2)
        assert show(_hu_ramp(), ax=axes[1]) is axes[1]
        assert len(axes[0].images) == 0 and len(axes[1].images) == 1

    def test_file_path_is_rescaled(self) -> None:
        ds = pydicom.dcmread(CT_SMALL)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ax = show(CT_SMALL, window="brain")
        np.testing.assert_allclose(
            ax.images[0].get_array(), _fastai_windowed(torch.from_numpy(hu), 80, 40).numpy()
        )
        ax = show(Path(CT_SMALL))
        np.testing.assert_allclose(ax.images[0].get_array(), hu)

    def test_multiframe_file_frame(self, tmp_path: Path) -> None:
        cine = us_cine_like(tmp_path, n=1, frames=4, size=32, jpeg=False).files[0]
        frames = pydicom.dcmread(cine).pixel_array
        ax = show(cine, frame=2)
        np.testing.assert_array_equal(ax.images[0].get_array(), frames[2])
        with pytest.raises(IndexError, match="frame 4"):
            show(cine, frame=4)

    def test_bad_inputs(self) -> None:
        with pytest.raises(ValueError, match="unknown window"):
            show(_hu_ramp(), window="bones")
        with pytest.raises(TypeError, match="Got"):
            show(_hu_ramp(), window=(1, 2, 3))
        with pytest.raises(ValueError, match=r"Got: \(5, 8, 8\)"):
            show(torch.zeros(5, 8, 8))
        with pytest.raises(TypeError, match="Got: list"):
            show([[1, 2], [3, 4]])

    def test_saves_png(self, tmp_path: Path) -> None:
        show(CT_SMALL, window="mediastinum").figure.savefig(tmp_path / "show.png")
        assert (tmp_path / "show.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestShowWindows:
    def test_one_panel_per_window(self, tmp_path: Path) -> None:
        x = _hu_ramp()
        fig = show_windows(x)
        assert isinstance(fig, Figure)
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 6
        assert visible[0].get_title() == "brain (W=80, L=40)"
        assert visible[2].get_title() == "lungs (W=1500, L=-600)"
        np.testing.assert_allclose(
            visible[2].images[0].get_array(), _fastai_windowed(x, 1500, -600).numpy(), atol=1e-6
        )
        fig.savefig(tmp_path / "windows.png")

    def test_ncols_and_pairs(self) -> None:
        fig = show_windows(CT_SMALL, presets=("liver", (400, 50), "spine_bone", "stroke"), ncols=3)
        assert len(fig.axes) == 6
        assert sum(ax.get_visible() for ax in fig.axes) == 4
        assert fig.axes[1].get_title() == "window (W=400, L=50)"


class TestPlotHist:
    def test_single_panel(self) -> None:
        fig = plot_hist(_hu_ramp(), n_bins=30)
        assert isinstance(fig, Figure) and len(fig.axes) == 1
        assert len(fig.axes[0].patches) == 30

    def test_before_and_after_freqhist(self, tmp_path: Path) -> None:
        x = torch.randn(64, 64) ** 3 * 300  # heavy-tailed, like HU
        bins = torch.quantile(x.flatten(), torch.linspace(0, 1, 21)).unique()
        fig = plot_hist(x, bins=bins, n_bins=10)
        assert len(fig.axes) == 2
        after = np.array([bar.get_height() for bar in fig.axes[1].patches])
        assert len(after) == 10
        # Scaling by the image's own quantiles flattens its histogram.
        assert after.max() / after.min() < 1.5
        before = np.array([bar.get_height() for bar in fig.axes[0].patches])
        assert before.max() / max(before.min(), 1) > 10
        fig.savefig(tmp_path / "hist.png")

    def test_given_axes(self) -> None:
        fig, axes = plt.subplots(1, 2)
        assert plot_hist(_hu_ramp(), bins=np.array([-1200.0, 0.0, 1200.0]), ax=axes) is fig
        with pytest.raises(ValueError, match="needs 1 Axes"):
            plot_hist(_hu_ramp(), ax=axes)


class TestShowFrames:
    @pytest.mark.parametrize("shape", [(20, 16, 16), (20, 1, 16, 16), (20, 3, 16, 16)])
    def test_evenly_spaced_frames(self, shape: tuple[int, ...]) -> None:
        clip = torch.rand(shape)
        fig = show_frames(clip, n=5, ncols=5)
        assert isinstance(fig, Figure) and len(fig.axes) == 5
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["frame 0", "frame 5", "frame 10", "frame 14", "frame 19"]
        shown = fig.axes[2].images[0].get_array()
        expected = clip[10] if len(shape) == 3 else clip[10].permute(1, 2, 0).squeeze(-1)
        np.testing.assert_allclose(shown, expected.numpy(), atol=1e-6)

    def test_short_clip_and_rows(self) -> None:
        fig = show_frames(np.zeros((3, 8, 8), dtype=np.uint8), n=8)
        assert len(fig.axes) == 3
        fig = show_frames(torch.rand(30, 8, 8), n=8, ncols=4)
        assert len(fig.axes) == 8 and sum(len(ax.images) for ax in fig.axes) == 8

    def test_multiframe_file(self, tmp_path: Path) -> None:
        cine = us_cine_like(tmp_path, n=1, frames=9, size=33).files[0]  # JPEG YBR_FULL_422
        fig = show_frames(cine, n=3)
        assert [ax.get_title() for ax in fig.axes] == ["frame 0", "frame 4", "frame 8"]
        assert fig.axes[1].images[0].get_array().shape == (33, 33, 3)
        fig.savefig(tmp_path / "frames.png")
