"""Enhanced multi-frame objects: per-frame functional groups in the index, in items, in volumes.

Real file: pydicom-data's ``eCT_Supplemental.dcm`` (Enhanced CT, 2 frames stored against the
slice normal). Generated: an Enhanced CT whose frames are stored in shuffled order, each with
its own rescale and window, on an oblique (coronal) plane.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedCTImageStorage, generate_uid

from tests.conftest import real_file
from tests.dicom_factory import make_dataset, write_ct_series, write_dicom
from torchdicom import DicomDataset, DicomIndex, DicomVolumeDataset, collate, scaled_px, scan
from torchdicom.errors import TorchDicomError
from torchdicom.io.header import frame_row
from torchdicom.io.schema import PER_FRAME_COLUMNS
from torchdicom.transforms import Rescale

# Coronal plane: rows run along +x, columns along -z; the normal (row × column) is +y.
ORIENTATION = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
SPACING = [0.75, 0.5]  # (row spacing Δr, column spacing Δc)
DY = 2.5  # slice distance along the normal


def _item(**elements) -> Sequence:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return Sequence([ds])


def write_enhanced_ct(path: Path, frames: int = 6, seed: int = 0, series: str | None = None):
    """An Enhanced CT whose frames are stored in shuffled slice order, rescale per frame.

    Returns:
        (stored (F, 1, H, W) values in stored order, slice of each stored frame, slopes,
        intercepts, window centres): stored frame f lies on slice ``slot[f]``.
    """
    rng = np.random.default_rng(seed)
    slot = rng.permutation(frames)
    slopes = 1.0 + 0.25 * np.arange(frames)
    intercepts = -1024.0 + 10.0 * np.arange(frames)
    centres = 40.0 + np.arange(frames)
    ds, values = make_dataset(
        rows=6, columns=5, frames=frames, bits_allocated=16, bits_stored=12, signed=True, seed=seed
    )
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SeriesInstanceUID = series or generate_uid()
    shared = Dataset()
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=ORIENTATION)
    shared.PixelMeasuresSequence = _item(PixelSpacing=SPACING, SliceThickness=DY)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in range(frames):
        groups = Dataset()
        groups.PlanePositionSequence = _item(
            ImagePositionPatient=[-10.0, 100.0 + DY * float(slot[f]), 30.0]
        )
        groups.PixelValueTransformationSequence = _item(
            RescaleSlope=float(slopes[f]), RescaleIntercept=float(intercepts[f]), RescaleType="HU"
        )
        groups.FrameVOILUTSequence = _item(WindowCenter=float(centres[f]), WindowWidth=400.0)
        per_frame.append(groups)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return values, slot, slopes, intercepts, centres


@pytest.fixture
def enhanced(tmp_path: Path):
    path = tmp_path / "enhanced" / "ct.dcm"
    return path, *write_enhanced_ct(path)


def _groups(ds: Dataset, frame: int, sequence: str, keyword: str):
    """A functional group value as pydicom reads it: per-frame, else shared."""
    item = ds.PerFrameFunctionalGroupsSequence[frame]
    if sequence not in item:
        item = ds.SharedFunctionalGroupsSequence[0]
    return getattr(getattr(item, sequence)[0], keyword)


# --------------------------------------------------------------------------- index
def test_index_per_frame_values_of_ect_supplemental() -> None:
    path = real_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row = scan([path], workers=0, progress=False).row(0)
    frames = int(ds.NumberOfFrames)
    for f in range(frames):
        view = frame_row(row, f)
        position = _groups(ds, f, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _groups(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _groups(ds, f, "PixelMeasuresSequence", "PixelSpacing")
        slope = _groups(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _groups(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
        centre = _groups(ds, f, "FrameVOILUTSequence", "WindowCenter")
        width = _groups(ds, f, "FrameVOILUTSequence", "WindowWidth")
        assert [view[f"position_{a}"] for a in "xyz"] == [float(v) for v in position]
        assert [view[f"orientation_{k}"] for k in range(6)] == [float(v) for v in orientation]
        assert [view["spacing_row"], view["spacing_col"]] == [float(v) for v in spacing]
        assert (view["rescale_slope"], view["rescale_intercept"]) == (slope, intercept)
        assert (view["window_center"], view["window_width"]) == (centre, width)
    # The scalar columns are frame 0's values.
    assert row["position_z"] == frame_row(row, 0)["position_z"] != frame_row(row, 1)["position_z"]
    for column, names in PER_FRAME_COLUMNS.items():
        assert row[column].shape == (frames * len(names),)


def test_index_per_frame_values_of_shuffled_enhanced(enhanced) -> None:
    path, _values, slot, slopes, intercepts, centres = enhanced
    row = scan([path], workers=0, progress=False).row(0)
    assert row["frames"] == len(slot)
    positions = row["frame_position"].reshape(-1, 3)
    np.testing.assert_array_equal(positions[:, 1], 100.0 + DY * slot)
    np.testing.assert_array_equal(row["frame_rescale_slope"], slopes)
    np.testing.assert_array_equal(row["frame_rescale_intercept"], intercepts)
    np.testing.assert_array_equal(row["frame_window_center"], centres)
    np.testing.assert_array_equal(row["frame_orientation"].reshape(-1, 6), [ORIENTATION] * 6)
    np.testing.assert_array_equal(row["frame_spacing"].reshape(-1, 2), [SPACING] * 6)


def test_classic_files_have_empty_per_frame_columns(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 2)
    row = scan(files, workers=0, progress=False).row(0)
    for column in PER_FRAME_COLUMNS:
        assert row[column].dtype == np.float64 and row[column].shape == (0,)
    assert frame_row(row, 0) is row


def test_parquet_cache_round_trips_per_frame_columns(enhanced, tmp_path: Path) -> None:
    path = enhanced[0]
    classic = write_ct_series(tmp_path / "s", 2)
    cache = tmp_path / "index.parquet"
    first = scan([path, *classic, tmp_path / "missing.dcm"], workers=0, progress=False, cache=cache)
    back = DicomIndex.read_parquet(cache)
    again = scan([path, *classic], workers=0, progress=False, cache=cache)  # rows from the cache
    for index in (back, again):
        assert list(index.df["path"]) == list(first.df["path"])
        for column in PER_FRAME_COLUMNS:
            for a, b in zip(index.df[column], first.df[column], strict=True):
                assert isinstance(a, np.ndarray) and a.dtype == np.float64
                np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- 2-D items
def test_frame_items_carry_their_own_values(enhanced) -> None:
    path, values, slot, slopes, intercepts, centres = enhanced
    ds = DicomDataset([path], frames="all")
    assert len(ds) == len(slot)
    for f in range(len(slot)):
        item = ds[f]
        assert item["frame"] == f
        assert torch.equal(item["image"], torch.from_numpy(values[f]).to(ds.dtype))
        assert (item["slope"], item["intercept"]) == (slopes[f], intercepts[f])
        assert item["window_center"] == centres[f]
        assert item["affine"].dtype == torch.float64 and item["affine"].shape == (4, 4)
        origin = item["affine"] @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
        assert origin[:3].tolist() == [-10.0, 100.0 + DY * slot[f], 30.0]


def test_scaled_px_applies_each_frames_rescale(enhanced) -> None:
    path, values, _slot, slopes, intercepts, _centres = enhanced
    expected = values[:, 0].astype(np.float32) * slopes.astype(np.float32)[:, None, None]
    expected += intercepts.astype(np.float32)[:, None, None]
    np.testing.assert_array_equal(scaled_px(path).numpy(), expected)
    np.testing.assert_array_equal(scaled_px(path, frame=3).numpy(), expected[3])


def test_affine_of_a_single_frame_item() -> None:
    """CT_small: axial, pixel spacing and position from its header, slice thickness in z."""
    path = real_file("CT_small.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    affine = DicomDataset([path])[0]["affine"].numpy()
    dr, dc = (float(v) for v in header.PixelSpacing)
    o = [float(v) for v in header.ImageOrientationPatient]
    expected = np.eye(4)
    expected[:3, 0] = np.array(o[:3]) * dc
    expected[:3, 1] = np.array(o[3:]) * dr
    expected[:3, 2] = np.cross(o[:3], o[3:]) * float(header.SliceThickness)
    expected[:3, 3] = [float(v) for v in header.ImagePositionPatient]
    np.testing.assert_allclose(affine, expected)
    # Voxel (column i, row j) lies at position + i * Δc * row cosine + j * Δr * column cosine.
    voxel = affine @ np.array([3.0, 5.0, 0.0, 1.0])
    np.testing.assert_allclose(
        voxel[:3], expected[:3, 3] + 3 * dc * np.array(o[:3]) + 5 * dr * np.array(o[3:])
    )


def test_affine_without_geometry_is_the_spacing_diagonal(tmp_path: Path) -> None:
    path = tmp_path / "cr.dcm"
    write_dicom(path, modality="CR")
    affine = DicomDataset([path])[0]["affine"]
    assert torch.equal(affine, torch.eye(4, dtype=torch.float64))


# --------------------------------------------------------------------------- volumes
def _volume_of(path: Path) -> dict:
    vols = DicomVolumeDataset([path])
    assert len(vols) == 1
    return vols[0]


def test_volume_of_ect_supplemental_equals_frames_reordered_by_position() -> None:
    path = real_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    item = _volume_of(path)
    normal = np.cross(
        [
            float(v)
            for v in _groups(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")[:3]
        ],
        [
            float(v)
            for v in _groups(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")[3:]
        ],
    )
    positions = [
        [float(v) for v in _groups(ds, f, "PlanePositionSequence", "ImagePositionPatient")]
        for f in range(int(ds.NumberOfFrames))
    ]
    order = np.argsort(np.asarray(positions) @ normal)
    assert order.tolist() == [1, 0]  # stored against the normal
    assert item["frames"].tolist() == order.tolist()
    expected = torch.from_numpy(ds.pixel_array[order][None])
    assert item["image"].shape == expected.shape
    assert torch.equal(item["image"], expected.to(item["image"].dtype))
    assert item["slope"].tolist() == [1.0, 1.0] and item["intercept"].tolist() == [-1024.0] * 2
    assert item["spacing"][0].item() == pytest.approx(10.0)
    for k, f in enumerate(order):
        voxel = item["affine"] @ torch.tensor([0.0, 0.0, float(k), 1.0], dtype=torch.float64)
        assert voxel[:3].tolist() == pytest.approx(positions[f])


def test_volume_of_shuffled_enhanced_ct(enhanced) -> None:
    path, _values, slot, slopes, intercepts, centres = enhanced
    ds = pydicom.dcmread(path)
    order = np.argsort(slot)  # stored frame of each slice, bottom to top along +y
    item = _volume_of(path)
    pixel_array = ds.pixel_array  # (F, H, W) in stored order
    assert item["image"].shape == (1, len(slot), 6, 5)
    assert torch.equal(
        item["image"][0], torch.from_numpy(pixel_array[order]).to(item["image"].dtype)
    )
    assert item["frames"].tolist() == order.tolist()
    assert item["paths"] == [str(path)] * len(slot)
    assert item["slope"].dtype == item["intercept"].dtype == torch.float32
    np.testing.assert_array_equal(item["slope"].numpy(), slopes[order])
    np.testing.assert_array_equal(item["intercept"].numpy(), intercepts[order])
    np.testing.assert_array_equal(item["window_center"].numpy(), centres[order])
    # Spacing measured from the positions (dz) and from Pixel Measures (dy, dx = Δr, Δc).
    assert item["spacing"].dtype == torch.float64
    assert item["spacing"].tolist() == pytest.approx([DY, *SPACING])
    np.testing.assert_allclose(item["positions"].numpy(), 100.0 + DY * np.arange(len(slot)))
    # affine: voxel (column i, row j, slice k) → LPS mm.
    affine = item["affine"]
    assert affine.dtype == torch.float64
    for k in range(len(slot)):
        voxel = affine @ torch.tensor([0.0, 0.0, float(k), 1.0], dtype=torch.float64)
        assert voxel[:3].tolist() == pytest.approx([-10.0, 100.0 + DY * k, 30.0])
    step_i = affine @ torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    step_j = affine @ torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert step_i[:3].tolist() == pytest.approx([SPACING[1], 0.0, 0.0])  # along the row, Δc
    assert step_j[:3].tolist() == pytest.approx([0.0, 0.0, -SPACING[0]])  # down the column, Δr


def test_rescale_of_a_volume_batch_is_per_slice(enhanced, tmp_path: Path) -> None:
    path, values, slot, slopes, intercepts, _centres = enhanced
    other = tmp_path / "other" / "ct.dcm"
    values2, slot2, slopes2, intercepts2, _ = write_enhanced_ct(other, seed=1)
    vols = DicomVolumeDataset([path, other])
    items = [vols[0], vols[1]]
    batch = collate(items)  # per-slice (D,) values stack to (B, D)
    assert batch["image"].shape == (2, 1, 6, 6, 5) and batch["slope"].shape == (2, 6)
    assert batch["slope"].dtype == torch.float32 and batch["affine"].shape == (2, 4, 4)
    hu = Rescale()(batch)["image"]
    assert hu.dtype == torch.float32 and hu.shape == batch["image"].shape
    by_path = {
        str(path): (values, slot, slopes, intercepts),
        str(other): (values2, slot2, slopes2, intercepts2),
    }
    for b, it in enumerate(items):
        stored, slots, s, c = by_path[it["paths"][0]]
        order = np.argsort(slots)
        expected = stored[order, 0].astype(np.float32) * s[order].astype(np.float32)[:, None, None]
        expected += c[order].astype(np.float32)[:, None, None]
        np.testing.assert_array_equal(hu[b, 0].numpy(), expected)
        # The same as scaled_px, frame by frame.
        for k, f in enumerate(order):
            np.testing.assert_array_equal(
                hu[b, 0, k].numpy(), scaled_px(it["paths"][0], int(f)).numpy()
            )


def test_volume_of_classic_series_still_sorted(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 4)
    item = DicomVolumeDataset(tmp_path / "s")[0]
    assert item["image"].shape == (1, 4, 8, 8)
    assert item["paths"] == [str(p) for p in files]
    assert item["frames"].tolist() == [0, 0, 0, 0]
    assert item["slope"].tolist() == [1.0] * 4 and item["intercept"].tolist() == [-1024.0] * 4
    assert item["spacing"].tolist() == pytest.approx([1.0, 0.5, 0.5])
    expected = np.diag([0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(item["affine"].numpy(), expected)


def test_volume_missing_slope_is_one(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 3)
    for p in files:
        ds = pydicom.dcmread(p)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(p, enforce_file_format=True)
    item = DicomVolumeDataset(tmp_path / "s")[0]
    assert item["slope"].tolist() == [1.0] * 3 and item["intercept"].tolist() == [0.0] * 3


def test_volume_mixing_enhanced_and_classic_files_is_an_error(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 3, rows=6, columns=5)
    series = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    write_enhanced_ct(tmp_path / "s" / "enhanced.dcm", series=series)
    with pytest.raises(TorchDicomError, match="mixes enhanced multi-frame files"):
        DicomVolumeDataset(tmp_path / "s")[0]


def test_volume_with_modality_lut_names_the_file() -> None:
    path = real_file("mlut_18.dcm")
    with pytest.raises(TorchDicomError, match=r"Modality LUT Sequence.*scaled_px") as info:
        DicomVolumeDataset([path])[0]
    assert str(path) in str(info.value)


def test_scan_indexes_every_frame_of_a_500_frame_enhanced_header(tmp_path: Path) -> None:
    # (Its cost, ~50 ms here, is a benchmark figure, not asserted in a unit test.)
    path = tmp_path / "big.dcm"
    write_enhanced_ct(path, frames=500)
    row = scan([path], workers=0, progress=False).row(0)
    assert row["frame_position"].shape == (1500,)
    assert not math.isnan(row["frame_rescale_slope"][-1])


# --------------------------------------------------------------------------- rescale (B, K)
class TestRescalePerPart:
    """``rescale`` with one slope/intercept per slice of a volume or frame of a clip."""

    @staticmethod
    def _expected(x: torch.Tensor, slope: torch.Tensor, intercept: torch.Tensor, axis: int):
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[axis] = slope.shape[1]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.to(dtype) * slope.to(dtype).view(shape) + intercept.to(dtype).view(shape)

    @pytest.mark.parametrize("contiguous", [True, False])
    def test_volume_batch(self, contiguous: bool) -> None:
        from torchdicom.transforms.functional import rescale

        x = torch.randint(-2000, 2000, (3, 1, 4, 5, 12), dtype=torch.int16)
        if not contiguous:
            x = x[..., ::2]
        slope = torch.rand(3, 4) + 0.5
        intercept = torch.randn(3, 4) * 100
        out = rescale(x, slope, intercept)
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert torch.equal(out, self._expected(x, slope, intercept, 2))

    def test_clip_batch_and_broadcast_intercept(self) -> None:
        from torchdicom.transforms.functional import rescale

        x = torch.randint(0, 255, (2, 3, 1, 4, 4), dtype=torch.uint8)  # (B, T, C, H, W)
        slope = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 1.5]])
        out = rescale(x, slope, torch.tensor([-1.0, 1.0]))
        intercept = torch.tensor([[-1.0] * 3, [1.0] * 3])
        assert torch.equal(out, self._expected(x, slope, intercept, 1))

    def test_nan_means_identity_and_float64_stays(self) -> None:
        from torchdicom.transforms.functional import rescale

        x = torch.rand(2, 1, 3, 2, 2, dtype=torch.float64)
        nan = torch.full((2, 3), math.nan)
        assert torch.equal(rescale(x, nan, nan), x)

    def test_gradient_flows(self) -> None:
        from torchdicom.transforms.functional import rescale

        x = torch.rand(2, 1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
        slope = torch.rand(2, 3, dtype=torch.float64) + 0.5
        torch.autograd.gradcheck(lambda v: rescale(v, slope, 0.0), (x,))

    def test_parts_must_be_whole_planes(self) -> None:
        from torchdicom.transforms.functional import rescale

        x = torch.zeros(2, 1, 3, 4, 4)
        with pytest.raises(ValueError, match=r"K must be one of \[1, 3\]"):
            rescale(x, torch.ones(2, 4), 0.0)
        with pytest.raises(ValueError, match="shape"):
            rescale(x, torch.ones(3, 3), 0.0)

    def test_empty_batch(self) -> None:
        from torchdicom.transforms.functional import rescale

        out = rescale(torch.zeros(0, 1, 3, 4, 4, dtype=torch.int16), torch.ones(0, 3), 0.0)
        assert out.shape == (0, 1, 3, 4, 4) and out.dtype == torch.float32


def test_an_intercept_without_its_slope_is_not_applied_as_pydicom_does(tmp_path: Path) -> None:
    # DICOM pairs (0028,1052)/(0028,1053); pydicom's apply_modality_lut applies them only
    # together. scaled_px, Rescale and volumes follow the same rule (io.modality).
    from pydicom.pixels import apply_modality_lut

    files = write_ct_series(tmp_path / "s", 2)
    for p in files:
        ds = pydicom.dcmread(p)
        del ds.RescaleSlope
        ds.save_as(p, enforce_file_format=True)
    ds = pydicom.dcmread(files[0])
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(scaled_px(files[0]).numpy(), expected)
    item = DicomVolumeDataset(tmp_path / "s")[0]
    assert item["slope"].tolist() == [1.0] * 2 and item["intercept"].tolist() == [0.0] * 2
    batch = collate([DicomDataset(tmp_path / "s")[0]])
    np.testing.assert_array_equal(Rescale()(batch)["image"][0, 0].numpy(), expected)
