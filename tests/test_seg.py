"""DICOM SEG masks: masks= as a SEG file or a folder of them, read with highdicom."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.conftest import real_file
from torchdicom.data.collate import Collate
from torchdicom.data.frames import DicomDataset
from torchdicom.errors import CorruptDicomError, NotDicomError
from torchdicom.samples import ct_like

hd = pytest.importorskip("highdicom")
from pydicom.sr.codedict import codes  # noqa: E402

SIZE = 32
SLICES = 6


def _descriptions(labels: list[str]) -> list[object]:
    return [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Liver,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(labels, start=1)
    ]


def _write_seg(
    path: Path,
    sources: list[pydicom.Dataset],
    pixels: np.ndarray,
    labels: list[str],
    segmentation_type: str = "BINARY",
) -> Path:
    """A SEG highdicom writes for ``sources`` (sorted like ``pixels``' first axis)."""
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=_descriptions(labels),
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="torchdicom tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        **({"max_fractional_value": 200} if segmentation_type == "FRACTIONAL" else {}),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _sources(files: list[Path]) -> list[pydicom.Dataset]:
    out = [pydicom.dcmread(f) for f in files]
    out.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return out


def _expected(seg_path: Path, uid: str, frac: bool = False) -> np.ndarray:
    """highdicom's own (S, H, W) array for one source instance (fractional: ≥ 0.5)."""
    seg = hd.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_instance(
        [uid], ignore_spatial_locations=True, assert_missing_frames_are_empty=True
    )[0]
    pixels = pixels >= 0.5 if frac else pixels
    return np.moveaxis(pixels, -1, 0).astype(np.uint8)


@pytest.fixture
def ct_seg(tmp_path):
    """A ct_like series (masks/ removed) and a two-segment SEG; segment 2 only on slices 2, 3."""
    sample = ct_like(tmp_path / "ct", n_series=1, slices=SLICES, size=SIZE)
    shutil.rmtree(sample.masks_dir)
    sources = _sources(sample.files)
    rng = np.random.default_rng(0)
    pixels = np.zeros((SLICES, SIZE, SIZE, 2), np.uint8)
    pixels[..., 0] = rng.random((SLICES, SIZE, SIZE)) > 0.5
    pixels[2:4, 5:20, 8:25, 1] = 1
    seg_path = _write_seg(tmp_path / "segs" / "seg.dcm", sources, pixels, ["liver", "lesion"])
    return sample, sources, pixels, seg_path


def _uid(item) -> str:
    return str(pydicom.dcmread(item["path"], stop_before_pixels=True).SOPInstanceUID)


# --------------------------------------------------------------------------- SOP instance path
class TestSopInstance:
    def test_masks_equal_highdicom(self, ct_seg):
        sample, sources, pixels, seg_path = ct_seg
        ds = DicomDataset(sample.files, masks=seg_path)
        assert ds.mask_segments == ["liver", "lesion"]
        order = [s.SOPInstanceUID for s in sources]
        for i in range(len(ds)):
            item = ds[i]
            mask = item["mask"]
            assert mask.shape == (2, SIZE, SIZE) and mask.dtype == torch.uint8
            uid = _uid(item)
            np.testing.assert_array_equal(mask.numpy(), _expected(seg_path, uid))
            np.testing.assert_array_equal(mask.numpy(), pixels[order.index(uid)].transpose(2, 0, 1))

    def test_partial_segment_zero_elsewhere(self, ct_seg):
        sample, sources, _, seg_path = ct_seg
        ds = DicomDataset(sample.files, masks=seg_path)
        covered = {sources[2].SOPInstanceUID, sources[3].SOPInstanceUID}
        for i in range(len(ds)):
            item = ds[i]
            lesion = item["mask"][1]
            assert bool(lesion.any()) == (_uid(item) in covered)

    def test_unreferenced_frames_are_zeros(self, ct_seg, tmp_path):
        sample, sources, pixels, _ = ct_seg
        # A SEG of only the first three slices (empty frames are omitted by highdicom).
        seg_path = _write_seg(tmp_path / "part.dcm", sources[:3], pixels[:3], ["a", "b"])
        ds = DicomDataset(sample.files, masks=seg_path)
        order = [s.SOPInstanceUID for s in sources]
        for i in range(len(ds)):
            item = ds[i]
            k = order.index(_uid(item))
            if k >= 3:
                assert item["mask"].shape == (2, SIZE, SIZE) and not item["mask"].any()
            else:
                np.testing.assert_array_equal(item["mask"].numpy(), pixels[k].transpose(2, 0, 1))

    def test_folder_of_segs_inside_the_data_folder(self, ct_seg):
        sample, _, _, seg_path = ct_seg
        inside = sample.root / "segs"
        inside.mkdir()
        shutil.copy(seg_path, inside / "seg.dcm")
        ds = DicomDataset(sample.root, masks=inside)
        # The SEG object is a mask, not an image.
        assert len(ds.rows) == SLICES
        assert all("/segs/" not in r["path"] for r in ds.rows)
        for i in range(len(ds)):
            item = ds[i]
            np.testing.assert_array_equal(item["mask"].numpy(), _expected(seg_path, _uid(item)))

    def test_a_seg_among_the_images_is_left_out(self, ct_seg):
        sample, _, _, seg_path = ct_seg
        shutil.copy(seg_path, sample.root / "seg.dcm")
        ds = DicomDataset(sample.root, masks=sample.root / "seg.dcm")
        assert len(ds) == SLICES

    def test_mirrored_mask_folder_still_works(self, tmp_path):
        sample = ct_like(tmp_path / "ct", n_series=1, slices=3, size=SIZE)
        ds = DicomDataset(sample.root, masks=sample.masks_dir)
        assert ds.mask_segments is None
        assert ds[0]["mask"].shape == (1, SIZE, SIZE)

    def test_picklable_for_workers(self, ct_seg):
        sample, _, _, seg_path = ct_seg
        ds = DicomDataset(sample.files, masks=seg_path)
        ds._masks = pickle.loads(pickle.dumps(ds._masks))  # what a spawned worker gets
        for i in range(len(ds)):
            np.testing.assert_array_equal(ds[i]["mask"].numpy(), _expected(seg_path, _uid(ds[i])))
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=Collate())
        batches = list(loader)
        assert batches[0]["mask"].shape == (3, 2, SIZE, SIZE)
        assert batches[0]["mask"].dtype == torch.uint8


# --------------------------------------------------------------------------- segment types
def test_fractional_is_thresholded_at_one_half(ct_seg, tmp_path):
    sample, sources, _, _ = ct_seg
    rng = np.random.default_rng(1)
    probabilities = rng.random((SLICES, SIZE, SIZE, 2)).astype(np.float32)
    seg_path = _write_seg(tmp_path / "frac.dcm", sources, probabilities, ["p", "q"], "FRACTIONAL")
    ds = DicomDataset(sample.files, masks=seg_path)
    for i in range(len(ds)):
        item = ds[i]
        expected = _expected(seg_path, _uid(item), frac=True)
        np.testing.assert_array_equal(item["mask"].numpy(), expected)
        assert 0 < expected.mean() < 1


def test_labelmap(ct_seg, tmp_path):
    sample, sources, pixels, _ = ct_seg
    labels = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    labels[pixels[..., 0] > 0] = 1
    labels[pixels[..., 1] > 0] = 2
    seg_path = _write_seg(tmp_path / "lm.dcm", sources, labels, ["a", "b"], "LABELMAP")
    ds = DicomDataset(sample.files, masks=seg_path)
    order = [s.SOPInstanceUID for s in sources]
    for i in range(len(ds)):
        item = ds[i]
        k = order.index(_uid(item))
        expected = np.stack([labels[k] == 1, labels[k] == 2]).astype(np.uint8)
        np.testing.assert_array_equal(item["mask"].numpy(), expected)
        np.testing.assert_array_equal(item["mask"].numpy(), _expected(seg_path, _uid(item)))


# --------------------------------------------------------------------------- several series
def test_segments_across_series_are_a_union_by_label(tmp_path):
    sample = ct_like(tmp_path / "ct", n_series=3, slices=3, size=SIZE)
    shutil.rmtree(sample.masks_dir)
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for f in sample.files:
        d = pydicom.dcmread(f)
        by_series.setdefault(d.SeriesInstanceUID, []).append(d)
    series = [sorted(v, key=lambda d: float(d.ImagePositionPatient[2])) for v in by_series.values()]
    ones = np.ones((3, SIZE, SIZE, 2), np.uint8)
    _write_seg(tmp_path / "segs" / "a.dcm", series[0], ones, ["liver", "lesion"])
    _write_seg(tmp_path / "segs" / "b.dcm", series[1], ones, ["lesion", "spleen"])
    ds = DicomDataset(sample.files, masks=tmp_path / "segs")
    assert ds.mask_segments == ["liver", "lesion", "spleen"]
    want = {
        series[0][0].SeriesInstanceUID: [1, 1, 0],
        series[1][0].SeriesInstanceUID: [0, 1, 1],
        series[2][0].SeriesInstanceUID: [0, 0, 0],  # no SEG: zeros, same S
    }
    for i in range(len(ds)):
        item = ds[i]
        uid = pydicom.dcmread(item["path"], stop_before_pixels=True).SeriesInstanceUID
        assert item["mask"].shape == (3, SIZE, SIZE)
        assert item["mask"].amax(dim=(1, 2)).tolist() == want[uid]


# --------------------------------------------------------------------------- liver.dcm
def _liver_sources(tmp_path: Path) -> tuple[Path, list[str]]:
    """CT files whose SOP Instance UIDs, geometry and size match what liver.dcm references
    (its source images are not in pydicom-data), plus one CT it does not reference."""
    seg = pydicom.dcmread(real_file("liver.dcm"))
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = tmp_path / "liver"
    out.mkdir()
    uids = []
    extra = pydicom.uid.generate_uid()
    for k, item in enumerate([*seg.PerFrameFunctionalGroupsSequence, None]):
        if item is None:
            uid, position = extra, [0.0, 0.0, 0.0]
        else:
            uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            position = item.PlanePositionSequence[0].ImagePositionPatient
        uids.append(str(uid))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, uid, "CT"
        ds.StudyInstanceUID = seg.StudyInstanceUID
        ds.SeriesInstanceUID = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        ds.FrameOfReferenceUID = seg.FrameOfReferenceUID
        ds.ImagePositionPatient = position
        ds.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        ds.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
        ds.Rows, ds.Columns = seg.Rows, seg.Columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.InstanceNumber = 1, -1024, k + 1
        ds.PixelData = np.zeros((seg.Rows, seg.Columns), np.int16).tobytes()
        ds.save_as(out / f"IM{k:04d}.dcm", enforce_file_format=True)
    return out, uids


def test_liver_masks_equal_highdicom(tmp_path):
    liver = real_file("liver.dcm")
    folder, uids = _liver_sources(tmp_path)
    ds = DicomDataset(folder, masks=liver)
    assert len(ds) == 4
    assert ds.mask_segments == ["Liver"]
    seg = hd.seg.segread(liver)
    for i in range(len(ds)):
        item = ds[i]
        uid = _uid(item)
        mask = item["mask"]
        assert mask.shape == (1, 512, 512) and mask.dtype == torch.uint8
        if uid == uids[-1]:
            assert not mask.any()  # not referenced by the SEG
            continue
        expected = seg.get_pixels_by_source_instance([uid], ignore_spatial_locations=True)[0]
        np.testing.assert_array_equal(mask.numpy(), np.moveaxis(expected, -1, 0))
        assert mask.any()


# --------------------------------------------------------------------------- errors
def test_not_a_seg_file(ct_seg):
    sample, *_ = ct_seg
    with pytest.raises(NotDicomError, match="not a DICOM Segmentation"):
        DicomDataset(sample.files, masks=sample.files[0])


@pytest.mark.parametrize("kept", [0.3, 0.6, 0.95])
def test_damaged_seg(ct_seg, tmp_path, kept):
    sample, _, _, seg_path = ct_seg
    data = seg_path.read_bytes()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises((CorruptDicomError, NotDicomError), match=r"broken\.dcm"):
        DicomDataset(sample.files, masks=broken)


def test_seg_size_differs_from_its_image(ct_seg, tmp_path):
    _, _, _, seg_path = ct_seg
    # Same seed: same UIDs, other size.
    other = ct_like(tmp_path / "small", n_series=1, slices=SLICES, size=16)
    with pytest.raises(CorruptDicomError, match=r"32x32.*16x16") as info:
        DicomDataset(other.files, masks=seg_path)
    assert str(seg_path) in str(info.value) and "IM0000" in str(info.value)


def test_missing_mask_path(ct_seg, tmp_path):
    sample, *_ = ct_seg
    with pytest.raises(ValueError, match="no such path"):
        DicomDataset(sample.files, masks=tmp_path / "nowhere")


# --------------------------------------------------------------------------- downstream
def test_masks_follow_images_through_augment(ct_seg):
    from torchdicom.transforms import DicomAugment

    sample, _, _, seg_path = ct_seg
    ds = DicomDataset(sample.files, masks=seg_path)
    batch = Collate()([ds[i] for i in range(len(ds))])
    mask = batch["mask"]
    assert mask.shape == (SLICES, 2, SIZE, SIZE) and mask.dtype == torch.uint8
    # Channel 1 a copy of channel 0: any geometric step must move both the same way.
    mask = torch.cat([mask[:, :1], mask[:, :1]], dim=1)
    torch.manual_seed(0)
    out = DicomAugment(degrees=20, noise_std=0)(
        {"image": torch.rand(SLICES, 1, SIZE, SIZE), "mask": mask}
    )
    assert out["mask"].shape == mask.shape and out["mask"].dtype == torch.uint8
    assert torch.equal(out["mask"][:, 0], out["mask"][:, 1])
    assert set(out["mask"].unique().tolist()) <= {0, 1}
    # Flip only: image and each mask channel flipped together.
    image = mask[:, :1].float()
    flip = DicomAugment(
        degrees=0, translate=0, scale=(1, 1), brightness=0, contrast=(1, 1), noise_std=0
    )
    out = flip({"image": image, "mask": mask})
    for c in range(2):
        assert torch.equal(out["mask"][:, c : c + 1].float(), out["image"])


@pytest.mark.parametrize("as_folder", [True, False])
def test_datamodule_with_seg_masks(ct_seg, as_folder):
    from torchdicom.datamodule import DicomDataModule

    sample, _, _, seg_path = ct_seg
    inside = sample.root / "segs"
    inside.mkdir()
    shutil.copy(seg_path, inside / "seg.dcm")
    masks = inside if as_folder else inside / "seg.dcm"
    dm = DicomDataModule(sample.root, masks=masks, batch_size=2, val_fraction=0.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (2, 2, SIZE, SIZE) and batch["mask"].dtype == torch.uint8


# --------------------------------------------------------------------------- enhanced images
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
EFRAMES = 5


def _enhanced_ct(path: Path, size: int = 16) -> pydicom.Dataset:
    """An Enhanced CT with per-frame Plane Position (one axial volume)."""
    uid = pydicom.uid.generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ENHANCED_CT, uid, "CT"
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "p", "P^Q", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = (
        "20200101",
        "000000",
        "1",
        "",
    )
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = EFRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    orientation, measures, shared = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 2.0
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(EFRAMES):
        group, plane, content = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [-4.0, -4.0, -10.0 + 2.0 * k]
        content.DimensionIndexValues = [k + 1]
        group.PlanePositionSequence, group.FrameContentSequence = [plane], [content]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    rng = np.random.default_rng(2)
    ds.PixelData = rng.integers(0, 100, (EFRAMES, size, size), dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture
def enhanced(tmp_path):
    source = _enhanced_ct(tmp_path / "enh.dcm")
    pixels = np.zeros((EFRAMES, 16, 16, 2), np.uint8)
    pixels[1:4, 3:9, 3:9, 0] = 1
    pixels[2, 5:12, 5:12, 1] = 1
    seg_path = _write_seg(tmp_path / "seg" / "seg.dcm", [source], pixels, ["a", "b"])
    return tmp_path / "enh.dcm", source, pixels, seg_path


def _by_frame(seg_path: Path, uid: str) -> np.ndarray:
    """highdicom's own (F, S, H, W) array for every frame of a multi-frame source."""
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_frame(
        uid, list(range(1, EFRAMES + 1)), assert_missing_frames_are_empty=True
    )
    return np.moveaxis(pixels, -1, 1)


def test_enhanced_by_frame_number(enhanced):
    image, source, pixels, seg_path = enhanced
    ds = DicomDataset([image], masks=seg_path)
    expected = _by_frame(seg_path, source.SOPInstanceUID)
    np.testing.assert_array_equal(expected, pixels.transpose(0, 3, 1, 2))
    for i in range(EFRAMES):
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), expected[i])


def _without_frame_references(seg_path: Path, out: Path, keep_instance: bool) -> Path:
    """The SEG with its frames' source references cut down: the instance without frame
    numbers, or no source image references at all (only the series it segments)."""
    seg = pydicom.dcmread(seg_path)
    for group in seg.PerFrameFunctionalGroupsSequence:
        if keep_instance:
            for source in group.DerivationImageSequence[0].SourceImageSequence:
                del source.ReferencedFrameNumber
        else:
            del group.DerivationImageSequence
    seg.save_as(out)
    return out


@pytest.mark.parametrize("keep_instance", [True, False])
def test_enhanced_by_position(enhanced, tmp_path, keep_instance):
    image, source, _, seg_path = enhanced
    stripped = _without_frame_references(seg_path, tmp_path / "pos.dcm", keep_instance)
    ds = DicomDataset([image], masks=stripped)
    expected = _by_frame(seg_path, source.SOPInstanceUID)
    for i in range(EFRAMES):
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), expected[i])


def test_enhanced_positions_read_from_the_header(enhanced, tmp_path):
    from torchdicom.data.seg import SegMasks

    image, source, _, seg_path = enhanced
    stripped = _without_frame_references(seg_path, tmp_path / "pos.dcm", True)
    rows = [
        {k: v for k, v in r.items() if k != "frame_position"} for r in DicomDataset([image]).rows
    ]
    masks = SegMasks([stripped], rows)
    expected = _by_frame(seg_path, source.SOPInstanceUID)
    np.testing.assert_array_equal(masks.read(rows[0], list(range(EFRAMES))).numpy(), expected)


def test_clip_masks(enhanced):
    from torchdicom.data.clips import DicomClipDataset

    image, source, _, seg_path = enhanced
    clips = DicomClipDataset([image], clip_len=3, stride=2, masks=seg_path)
    expected = _by_frame(seg_path, source.SOPInstanceUID)
    item = clips[1]
    assert item["mask"].shape == (3, 2, 16, 16) and item["mask"].dtype == torch.uint8
    np.testing.assert_array_equal(item["mask"].numpy(), expected[2:5])


# --------------------------------------------------------------------------- dependency
def test_without_highdicom_the_error_names_the_extra(ct_seg, monkeypatch):
    from torchdicom.data.seg import MissingHighdicomError
    from torchdicom.errors import TorchDicomError

    sample, _, _, seg_path = ct_seg
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)  # import fails
    with pytest.raises(MissingHighdicomError, match=r"pip install torchdicom\[seg\]") as info:
        DicomDataset(sample.files, masks=seg_path)
    assert isinstance(info.value, TorchDicomError) and isinstance(info.value, ImportError)


def test_import_torchdicom_does_not_import_highdicom():
    import subprocess
    import sys

    code = (
        "import sys, torchdicom, torchdicom.data.frames, torchdicom.data.seg;"
        "print('highdicom' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("segmentation_type", ["FRACTIONAL", "LABELMAP"])
def test_enhanced_by_position_fractional_and_labelmap(tmp_path, segmentation_type):
    source = _enhanced_ct(tmp_path / "enh.dcm")
    rng = np.random.default_rng(3)
    if segmentation_type == "FRACTIONAL":
        pixels = rng.random((EFRAMES, 16, 16, 2)).astype(np.float32)
    else:
        pixels = rng.integers(0, 3, (EFRAMES, 16, 16)).astype(np.uint8)
    seg_path = _write_seg(tmp_path / "s.dcm", [source], pixels, ["a", "b"], segmentation_type)
    stripped = _without_frame_references(seg_path, tmp_path / "pos.dcm", True)
    ds = DicomDataset([tmp_path / "enh.dcm"], masks=stripped)
    expected = _by_frame(seg_path, source.SOPInstanceUID)
    if segmentation_type == "FRACTIONAL":
        expected = (expected >= 0.5).astype(np.uint8)
    assert expected.any() and not expected.all()
    for i in range(EFRAMES):
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), expected[i])


def test_non_seg_files_in_a_seg_folder_are_left_out(ct_seg, tmp_path, caplog):
    sample, _, _, seg_path = ct_seg
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(seg_path, folder / "a_seg.dcm")
    shutil.copy(sample.files[0], folder / "z_ct.dcm")
    with caplog.at_level("WARNING", logger="torchdicom.data"):
        ds = DicomDataset(sample.files, masks=folder)
    assert "not DICOM Segmentations" in caplog.text
    assert ds.mask_segments == ["liver", "lesion"]
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), _expected(seg_path, _uid(ds[0])))


def test_segments_with_one_label_keep_their_own_channels(ct_seg, tmp_path):
    sample, sources, pixels, _ = ct_seg
    seg_path = _write_seg(tmp_path / "same.dcm", sources, pixels, ["liver", "liver"])
    ds = DicomDataset(sample.files, masks=seg_path)
    assert ds.mask_segments == ["liver", "liver (2)"]
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), _expected(seg_path, _uid(ds[i])))


def test_classic_series_by_position_when_the_seg_names_no_source_frames(ct_seg, tmp_path):
    sample, _, _, seg_path = ct_seg
    stripped = _without_frame_references(seg_path, tmp_path / "pos.dcm", keep_instance=False)
    ds = DicomDataset(sample.files, masks=stripped)
    for i in range(len(ds)):
        item = ds[i]
        np.testing.assert_array_equal(item["mask"].numpy(), _expected(seg_path, _uid(item)))


def test_seg_objects_among_images_are_never_items_even_without_masks(ct_seg) -> None:
    # A SEG sitting in the image folder is an annotation: without masks= it is still left
    # out of every dataset (its 1-bit frames would be wrong images and enter the dtype).
    sample, _, _, seg_path = ct_seg
    inside = Path(sample.files[0]).parent / "seg.dcm"
    shutil.copy(seg_path, inside)
    ds = DicomDataset(Path(sample.files[0]).parent)
    assert len(ds.rows) == SLICES
    assert all(r["path"] != str(inside) for r in ds.rows)
    assert ds.dtype != torch.uint8
