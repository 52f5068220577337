"""The fused CPU kernels (transforms/_kernels.py) against the torch route and the references.

Every case runs the same call twice, once with the kernels enabled and once with
``_kernels.ENABLED = False`` (the torch route, the one CUDA takes), and the results must be equal
element for element, NaN in the same places, on 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchdicom.transforms.functional as F
from torchdicom.transforms import FreqHistBins, _kernels

from ._reference import ref_hist_scaled, ref_windowed, synthetic_ct

WINDOWS = ["brain", "subdural", "abdomen_soft", (1500.5, -600.25), (3, 0)]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _both(fn):
    """fn() with the kernels, then with the torch route."""
    assert _kernels.ENABLED
    native = fn()
    _kernels.ENABLED = False
    try:
        reference = fn()
    finally:
        _kernels.ENABLED = True
    return native, reference


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # NaN == NaN here, bit patterns aside


def _images(kind: str, n: int = 6, size: int = 24) -> torch.Tensor:
    raw = synthetic_ct(n, size)
    arrays = {
        "int16": raw,
        "uint16": raw.astype(np.uint16),
        "uint8": (raw // 16).clip(0, 255).astype(np.uint8),
        "int8": (raw // 32 - 60).clip(-128, 127).astype(np.int8),
        "int32": raw.astype(np.int32) * 3 - 70000,  # wider than the kernels' histogram
        "int64": raw.astype(np.int64) - 1024,
        "hu": raw.astype(np.float32) - 1024,
        "hu64": raw.astype(np.float64) - 1024,
        "fractional": raw.astype(np.float32) * 0.37 + 0.1,
        "edges": np.where(raw > 1500, 65535, -65536).astype(np.int32),  # the histogram's ends
        "beyond": np.where(raw > 1500, 65536, 0).astype(np.int32),  # one past its top
    }
    return torch.from_numpy(np.ascontiguousarray(arrays[kind]))


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    """Float HU with NaN, +inf and -inf in some images, the others left integral."""
    x = x.clone()
    x[1, 0, 0, 0] = float("nan")
    x[3, 0, 2, 5] = float("inf")
    x[4, 0, 7, 1] = float("-inf")
    return x


KINDS = [
    "int16",
    "uint16",
    "uint8",
    "int8",
    "int32",
    "int64",
    "hu",
    "hu64",
    "fractional",
    "edges",
    "beyond",
]


@pytest.mark.parametrize("kind", KINDS)
def test_hist_scaled_native_equals_torch_route(threads, kind):
    x = _images(kind)
    native, reference = _both(lambda: F.hist_scaled(x))
    _assert_same(native, reference)
    if kind in ("int16", "hu", "fractional"):
        for i in range(x.shape[0]):  # and the tutorial's own numbers
            np.testing.assert_array_equal(native[i].numpy(), ref_hist_scaled(x[i].numpy()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hist_scaled_native_nan_and_infinities(threads, dtype):
    x = _with_specials(_images("hu").to(dtype))
    native, reference = _both(lambda: F.hist_scaled(x))
    _assert_same(native, reference)
    assert torch.isnan(native[1]).any() and not torch.isnan(native[0]).any()


@pytest.mark.parametrize("kind", ["int16", "hu", "fractional"])
def test_hist_scaled_native_given_bins(threads, kind):
    x = _images(kind)
    shared = F.freqhist_bins_dataset([x], n_bins=20)
    per_image = F.freqhist_bins(x, n_bins=7)
    for bins in (shared, per_image, per_image.bins.to(torch.float64)[:, :3] + torch.arange(3)):
        native, reference = _both(lambda b=bins: F.hist_scaled(x, bins=b))
        _assert_same(native, reference)


@pytest.mark.parametrize("n_bins", [1, 2, 100, 700])
def test_hist_scaled_native_n_bins(n_bins):
    # 700 bins: rank positions are not monotone (0.5 / n_bins < 0.001); 1 bin: one value.
    x = _images("hu")
    native, reference = _both(lambda: F.hist_scaled(x, n_bins=n_bins))
    _assert_same(native, reference)


def test_hist_scaled_native_constant_and_single_image():
    x = torch.full((1, 1, 9, 9), -1000.0)
    native, reference = _both(lambda: F.hist_scaled(x))
    _assert_same(native, reference)
    native, reference = _both(lambda: F.hist_scaled(x[0]))  # unbatched
    _assert_same(native, reference)


@pytest.mark.parametrize("kind", ["int16", "hu", "hu64", "fractional", "uint8"])
def test_to_nchan_native_equals_torch_route(threads, kind):
    x = _images(kind)
    native, reference = _both(lambda: F.to_nchan(x, WINDOWS))
    _assert_same(native, reference)
    native, reference = _both(lambda: F.to_nchan(x, WINDOWS, bins=0))
    _assert_same(native, reference)
    if kind == "hu":
        for i in range(x.shape[0]):
            for j, w in enumerate(WINDOWS):
                width, level = F.resolve_window(w)
                np.testing.assert_array_equal(
                    native[i, j].numpy(), ref_windowed(x[i, 0].numpy(), width, level)
                )


def test_to_nchan_native_multichannel_and_specials(threads):
    x = torch.cat([_with_specials(_images("hu"))] * 3, dim=1)  # (B, 3, H, W)
    native, reference = _both(lambda: F.to_nchan(x, ["brain", "lungs"]))
    _assert_same(native, reference)
    assert native.shape == (6, 9, 24, 24)


@pytest.mark.parametrize("kind", ["int16", "uint16", "int32", "hu", "hu64", "int8"])
def test_rescale_native_equals_torch_route(threads, kind):
    x = _images(kind)
    b = x.shape[0]
    slopes = torch.tensor([1.0, 0.5, 2.5, 1.0, float("nan"), 1e-3])[:b]
    intercepts = torch.tensor([-1024.0, 0.0, -3.75, float("nan"), 12.0, -1.0])[:b]
    for slope, intercept in ((1.0, -1024.0), (0.37, 1.5), (slopes, intercepts)):
        native, reference = _both(lambda s=slope, i=intercept: F.rescale(x, s, i))
        _assert_same(native, reference)


@pytest.mark.parametrize("kind", ["int16", "hu", "hu64", "fractional"])
def test_windowed_native_equals_torch_route(threads, kind):
    x = _images(kind)
    if x.is_floating_point():
        x = _with_specials(x)
    widths = torch.tensor([80.0, 1500.0, 3.0, 2.0, 400.5, 254.0])
    levels = torch.tensor([40.0, -600.0, 0.0, 1.0, 50.25, 100.0])
    for width, level in ((1500, -600), (81, 40), (widths, levels)):
        native, reference = _both(lambda w=width, lv=level: F.windowed(x, w, lv))
        _assert_same(native, reference)


def test_native_route_is_taken_and_skipped_where_it_must(monkeypatch):
    calls = []
    real = _kernels.kernels

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(_kernels, "kernels", spy)
    x = _images("hu")
    F.hist_scaled(x)
    assert calls, "a contiguous float32 CPU batch takes the kernels"
    calls.clear()
    F.windowed(x.transpose(2, 3), 80, 40)  # strided view: the torch route
    F.hist_scaled(x.to(torch.float16))  # float16: the torch route
    F.windowed(x.requires_grad_(), 80, 40)  # autograd: the torch route
    assert not calls


def test_native_route_usable_in_forked_dataloader_workers():
    # The kernels' thread pool is per process: a pool inherited through fork has no threads.
    F.hist_scaled(_images("hu"))  # the parent makes its pool first
    torch.set_num_threads(2)

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return F.to_nchan(_images("hu"), ["brain"])  # runs in the worker

    loader = torch.utils.data.DataLoader(
        Batches(), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    expected = F.to_nchan(_images("hu"), ["brain"])
    got = list(loader)
    assert len(got) == 4 and all(torch.equal(g, expected) for g in got)


def test_freqhist_bins_kernel_matches_searchsorted():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 5, 300).astype(np.int32)
    counts[[0, -1]] = [0, 2]
    ranks = np.sort(rng.integers(0, counts.sum(), 40))
    expected = np.unique(np.searchsorted(np.cumsum(counts), ranks, side="right") - 50)
    np.testing.assert_array_equal(_kernels.histogram_bins(-50, counts, ranks), expected)


def test_freqhist_bins_type_is_unchanged():
    assert isinstance(F.freqhist_bins(_images("hu")), FreqHistBins)


@pytest.mark.parametrize("kind", ["int16", "uint16", "hu", "hu64"])
def test_windowed_fused_rescale_equals_two_steps(threads, kind):
    x = _images(kind)
    slopes = torch.tensor([1.0, 0.5, 2.5, 1.0, float("nan"), 1e-3])
    intercepts = torch.tensor([-1024.0, 0.0, -3.75, float("nan"), 12.0, -1.0])
    for slope, intercept in ((1.0, -1024.0), (slopes, intercepts), (None, -1024.0), (0.5, None)):
        two_steps = F.windowed(
            F.rescale(x, 1.0 if slope is None else slope, 0.0 if intercept is None else intercept),
            1500,
            -600,
        )
        fused, reference = _both(
            lambda s=slope, i=intercept: F.windowed(x, 1500, -600, slope=s, intercept=i)
        )
        _assert_same(fused, two_steps)
        _assert_same(reference, two_steps)
    dicom = F.windowed(x, 400, 50, mode="dicom", slope=slopes, intercept=intercepts)
    _assert_same(dicom, F.windowed(F.rescale(x, slopes, intercepts), 400, 50, mode="dicom"))
