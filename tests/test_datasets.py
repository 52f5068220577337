"""DicomDataset / DicomClipDataset / DicomVolumeDataset / Collate against read_frames and pydicom."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid
from torch.utils.data import DataLoader

import torchdicom.io.frames as frames_module
from tests.conftest import real_file
from tests.dicom_factory import write_ct_series, write_dicom
from torchdicom.data import (
    Collate,
    DicomClipDataset,
    DicomDataset,
    DicomVolumeDataset,
    collate,
)
from torchdicom.errors import CorruptDicomError
from torchdicom.io.frames import read_frames
from torchdicom.samples import SIIM_LABELS, ct_like, siim_like, us_cine_like
from torchdicom.transforms import YbrToRgb


# --------------------------------------------------------------------------- sample sets
# Module-scoped and tiny: generating all three takes well under a second.
@pytest.fixture(scope="module")
def siim(tmp_path_factory: pytest.TempPathFactory):
    return siim_like(tmp_path_factory.mktemp("siim"), n=10, size=32)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory):
    # Six slices so series 3's shuffled InstanceNumbers cannot come out sorted by chance.
    return ct_like(tmp_path_factory.mktemp("ct"), n_series=4, slices=6, size=32)


@pytest.fixture(scope="module")
def us(tmp_path_factory: pytest.TempPathFactory):
    # us_000 native MONOCHROME2, us_001 JPEG baseline YBR_FULL_422; 10 frames each.
    return us_cine_like(tmp_path_factory.mktemp("us"), n=2, frames=10, size=32)


def _first(value: Any) -> float:
    """A header value as float; the first of a multi-valued one; NaN when absent."""
    if value is None:
        return math.nan
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)


# --------------------------------------------------------------------------- items
def test_item_equals_read_frames_and_header(ct):
    ds = DicomDataset(ct.root, masks=ct.masks_dir)
    assert len(ds) == len(ct.files)
    for i in range(0, len(ds), 5):
        item = ds[i]
        path = item["path"]
        assert item["frame"] == 0 and item["index"] == i
        expected = read_frames(path, 0)[0]
        # ct_like mixes int16 and uint16 series: every item is in the dataset's one dtype.
        assert item["image"].dtype == ds.dtype == torch.int32
        assert torch.equal(item["image"], expected.to(ds.dtype))
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert item["slope"] == _first(header.get("RescaleSlope"))
        assert item["intercept"] == _first(header.get("RescaleIntercept"))
        assert item["window_center"] == _first(header.get("WindowCenter"))
        assert item["window_width"] == _first(header.get("WindowWidth"))
        assert item["bits_stored"] == header.BitsStored
        assert item["monochrome1"] is False and item["ybr"] is False


def test_metadata_nan_where_absent(us):
    item = DicomDataset(us.files[0], frames="first")[0]
    for key in ("slope", "intercept", "window_center", "window_width"):
        assert math.isnan(item[key]), key


def test_frames_all_global_indexing_over_mixed_files(ct, us):
    singles = [str(p) for p in ct.files[:3]]
    cine = str(us.files[0])
    ds = DicomDataset([singles[0], cine, *singles[1:]])
    n_cine = int(pydicom.dcmread(cine, stop_before_pixels=True).NumberOfFrames)
    assert len(ds) == 3 + n_cine
    # Every (file, frame) pair appears exactly once, in rows order then frame order.
    pairs = [ds.locate(i) for i in range(len(ds))]
    expected = [(f, k) for f, row in enumerate(ds.rows) for k in range(int(row["frames"]))]
    assert pairs == expected
    for i in (0, 1, len(ds) // 2, len(ds) - 1):
        f, k = ds.locate(i)
        item = ds[i]
        assert item["path"] == ds.rows[f]["path"] and item["frame"] == k
        assert torch.equal(item["image"], read_frames(item["path"], k)[0])
    assert torch.equal(ds[-1]["image"], ds[len(ds) - 1]["image"])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_frames_first_and_int(ct, us, caplog):
    files = [str(ct.files[0]), str(us.files[0])]
    first = DicomDataset(files, frames="first")
    assert len(first) == 2
    assert [first.locate(i) for i in range(2)] == [(0, 0), (1, 0)]
    with caplog.at_level(logging.WARNING, logger="torchdicom.data"):
        third = DicomDataset(files, frames=3)
    # The single-frame CT file has no frame 3: left out, with a warning.
    assert len(third) == 1
    assert "fewer than 4 frames" in caplog.text
    item = third[0]
    assert item["frame"] == 3 and item["path"] == str(us.files[0])
    assert torch.equal(item["image"], read_frames(us.files[0], 3)[0])


# --------------------------------------------------------------------------- labels
def _folder_label(path: str) -> str:
    return Path(path).parent.name


def test_labels_from_csv_classes_sorted(siim):
    ds = DicomDataset(siim.root, labels=siim.labels_csv)
    assert ds.classes == sorted(SIIM_LABELS)
    for i in range(len(ds)):
        item = ds[i]
        assert ds.classes[item["label"]] == _folder_label(item["path"])


def test_labels_from_dataframe_mapping_and_callable(siim):
    table = pd.read_csv(siim.labels_csv)
    by_df = DicomDataset(siim.root, labels=table)
    mapping = {str(siim.root / f): lab for f, lab in zip(table["file"], table["label"])}
    by_map = DicomDataset(siim.root, labels=mapping)
    by_fn = DicomDataset(siim.root, labels=_folder_label)
    by_fn2 = DicomDataset(siim.root, labels=lambda path, frame: frame + 7)
    assert by_df.classes == by_map.classes == sorted(SIIM_LABELS)
    assert by_df.label_codes() == by_map.label_codes()
    for i in range(len(by_df)):
        assert by_df[i]["label"] == by_map[i]["label"]
        # A callable's value is passed through as is (no class encoding).
        assert by_fn[i]["label"] == _folder_label(by_fn[i]["path"])
        assert by_fn2[i]["label"] == 7


def test_numeric_labels_pass_through_and_missing_label_raises(ct):
    ds = DicomDataset(ct.root, labels=ct.labels_csv, masks=ct.masks_dir)
    assert ds.classes is None
    table = pd.read_csv(ct.labels_csv)
    lesion = {str(ct.root / f): v for f, v in zip(table["file"], table["lesion"])}
    assert all(ds[i]["label"] == lesion[ds[i]["path"]] for i in range(len(ds)))
    with pytest.raises(ValueError, match="have no label"):
        DicomDataset(ct.root, labels=table.iloc[1:], masks=ct.masks_dir)


# --------------------------------------------------------------------------- masks
def test_masks_paired_and_mask_folder_excluded(ct):
    ds = DicomDataset(ct.root, masks=ct.masks_dir)
    # masks/ lies inside the data folder: its files are not images.
    assert len(ds) == len(ct.files)
    assert not any("/masks/" in r["path"] for r in ds.rows)
    for i in range(0, len(ds), 7):
        item = ds[i]
        rel = os.path.relpath(item["path"], ct.root)
        expected = read_frames(ct.masks_dir / rel, 0)[0]
        assert item["mask"].dtype == torch.uint8
        assert torch.equal(item["mask"], expected.to(torch.uint8))


def test_missing_mask_names_the_file(ct, tmp_path):
    root = tmp_path / "ct"
    shutil.copytree(ct.root, root)
    victim = root / "masks" / ct.files[2].relative_to(ct.root)
    victim.unlink()
    ds = DicomDataset(root, masks=root / "masks")
    i = next(
        i
        for i in range(len(ds))
        if ds.rows[ds.locate(i)[0]]["path"].endswith(str(ct.files[2].relative_to(ct.root)))
    )
    with pytest.raises(CorruptDicomError, match="no paired mask") as info:
        ds[i]
    assert str(ct.files[2].relative_to(ct.root)) in str(info.value)
    assert str(victim) in str(info.value)


# --------------------------------------------------------------------------- clips
@pytest.mark.parametrize(
    ("clip_len", "stride", "starts"),
    [(4, None, [0, 4]), (4, 2, [0, 2, 4, 6]), (4, 3, [0, 3, 6]), (10, 1, [0]), (3, 4, [0, 4])],
)
def test_clip_counts_and_boundaries(us, clip_len, stride, starts):
    ds = DicomClipDataset(us.files[0], clip_len, stride)
    assert len(ds) == len(starts)  # (frames - clip_len) // stride + 1 with 10 frames
    assert [ds.locate(i) for i in range(len(ds))] == [(0, s) for s in starts]
    last = ds[len(ds) - 1]
    assert last["frame"] == starts[-1]
    assert last["image"].shape == (clip_len, 1, 32, 32)
    expected = read_frames(us.files[0], slice(starts[-1], starts[-1] + clip_len))
    assert torch.equal(last["image"], expected)


def test_clip_counts_per_file_and_short_files(us, ct):
    files = [str(us.files[0]), str(ct.files[0]), str(us.files[1])]
    ds = DicomClipDataset(files, clip_len=4, stride=3)
    # The one-frame CT file is shorter than a clip: no clip; each cine gives 3.
    assert len(ds) == 6
    assert [ds.rows[ds.locate(i)[0]]["path"] for i in range(6)] == [str(us.files[0])] * 3 + [
        str(us.files[1])
    ] * 3
    with pytest.raises(ValueError, match="clip_len"):
        DicomClipDataset(files, clip_len=0)
    with pytest.raises(ValueError, match="stride"):
        DicomClipDataset(files, clip_len=2, stride=0)


def test_clip_reads_only_its_frames(us, monkeypatch):
    requested: list[tuple[str, list[int]]] = []

    def spy(read):
        def spied(row, idx, out, as_rgb):
            requested.append((row["path"], list(idx)))
            return read(row, idx, out, as_rgb)

        return spied

    spied = tuple(route._replace(read=spy(route.read)) for route in frames_module.ROUTES)
    monkeypatch.setattr(frames_module, "ROUTES", spied)
    ds = DicomClipDataset(us.root, clip_len=3, stride=2, masks=us.masks_dir)
    n_per_file = (10 - 3) // 2 + 1
    jpeg_item = ds[n_per_file + 2]  # third clip of the JPEG file: frames 4, 5, 6
    assert jpeg_item["frame"] == 4
    assert (str(us.files[1]), [4, 5, 6]) in requested
    assert jpeg_item["mask"].shape == (3, 1, 32, 32)
    requested.clear()
    ds[1]  # native file, frames 2..4, and its mask
    assert requested == [(str(us.files[0]), [2, 3, 4]), (str(us.masks[0]), [2, 3, 4])]


# --------------------------------------------------------------------------- volumes
def test_volume_order_spacing_and_hu(ct):
    vols = DicomVolumeDataset([str(p) for p in ct.files])
    assert len(vols) == 4
    scrambled = 0
    for i in range(len(vols)):
        item = vols[i]
        positions = item["positions"].numpy()
        assert (np.diff(positions) > 0).all()
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in item["paths"]]
        assert [float(h.ImagePositionPatient[2]) for h in headers] == pytest.approx(positions)
        instances = [int(h.InstanceNumber) for h in headers]
        scrambled += instances not in (sorted(instances), sorted(instances, reverse=True))
        dz = float(headers[0].SliceThickness)  # ct_like spaces slices by their thickness
        dy, dx = (float(v) for v in headers[0].PixelSpacing)
        assert item["spacing"].dtype == torch.float64
        assert item["spacing"].tolist() == pytest.approx([dz, dy, dx])
        assert item["image"].shape == (1, 6, 32, 32) and item["image"].dtype == vols.dtype
        assert item["slope"].shape == item["intercept"].shape == (6,)
        for k, h in enumerate(headers):
            stored = read_frames(item["paths"][k], 0)[0, 0]
            assert torch.equal(item["image"][0, k], stored.to(vols.dtype))
            assert item["slope"][k] == float(h.RescaleSlope)
            assert item["intercept"][k] == float(h.RescaleIntercept)
            voxel = item["affine"] @ torch.tensor([0.0, 0.0, k, 1.0], dtype=torch.float64)
            assert voxel[:3].tolist() == pytest.approx([float(v) for v in h.ImagePositionPatient])
    assert scrambled == 1  # series 3 of ct_like


def _series(tmp_path: Path, n: int = 5) -> list[Path]:
    return write_ct_series(tmp_path / "series", n)


def test_volume_gap_is_an_error(tmp_path):
    files = _series(tmp_path)
    files[2].unlink()
    with pytest.raises(CorruptDicomError, match=r"gap between slices.*missing slice") as info:
        DicomVolumeDataset(tmp_path / "series")[0]
    assert str(files[1]) in str(info.value) and str(files[3]) in str(info.value)


def test_volume_duplicate_position_is_an_error(tmp_path):
    files = _series(tmp_path)
    twin = pydicom.dcmread(files[1])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    twin.save_as(tmp_path / "series" / "IM000099", enforce_file_format=True)
    with pytest.raises(CorruptDicomError, match="two slices at the same position"):
        DicomVolumeDataset(tmp_path / "series")[0]


def test_volume_inconsistent_sizes_is_an_error(tmp_path):
    files = _series(tmp_path)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    write_dicom(
        files[4],
        rows=16,
        columns=16,
        signed=True,
        extra={
            "SeriesInstanceUID": series_uid,
            "ImagePositionPatient": [0.0, 0.0, 4.0],
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        },
    )
    with pytest.raises(CorruptDicomError, match="different sizes") as info:
        DicomVolumeDataset(tmp_path / "series")[0]
    assert series_uid in str(info.value)


# --------------------------------------------------------------------------- errors in a DataLoader
@pytest.fixture
def with_corrupt(tmp_path) -> tuple[Path, list[Path]]:
    """Ten good CT files and two truncated ones (indexed fine; failing on read)."""
    root = tmp_path / "data"
    for k in range(12):
        write_dicom(root / f"f{k:02d}.dcm", rows=16, columns=16, seed=k)
    bad = [root / "f01.dcm", root / "f06.dcm"]  # in batch 0 (worker 0) and batch 1 (worker 1)
    for p in bad:
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) - 100)
    return root, bad


def test_skip_in_multiworker_loader_keeps_batches_full(with_corrupt, caplog):
    root, _bad = with_corrupt
    ds = DicomDataset(root, on_error="skip")
    assert len(ds) == 12
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b["image"]) for b in batches] == [4, 4, 4]
    # The batch's positions are the requested ones; two were filled by substitutes.
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(12))
    assert int(torch.cat([b["substituted"] for b in batches]).sum()) == 2
    # Each worker hit one bad file; the shared counter sees both in the main process.
    assert ds.skipped == 2
    ds.reset_skipped()
    assert ds.skipped == 0


def test_raise_in_multiworker_loader_names_the_file(with_corrupt):
    root, bad = with_corrupt
    loader = DataLoader(DicomDataset(root), batch_size=4, num_workers=2, collate_fn=collate)
    # DataLoader re-raises a worker's exception as type(exc)(message):
    # TorchDicomError accepts that, so the main process sees the same class.
    batches = iter(loader)
    try:
        with pytest.raises(CorruptDicomError) as info:
            list(batches)
    finally:
        # Stop the workers now: left to the garbage collector they can stall
        # a later test by the DataLoader's 5 s join timeout per worker.
        batches._shutdown_workers()  # type: ignore[attr-defined]
    assert "CorruptDicomError" in str(info.value)
    assert str(bad[0]) in str(info.value) and "truncated" in str(info.value)


# --------------------------------------------------------------------------- collate
def test_collate_dtypes_and_shapes(ct, siim):
    ds = DicomDataset(ct.root, labels=ct.labels_csv, masks=ct.masks_dir)
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 32, 32)
    assert batch["image"].dtype == ds[0]["image"].dtype  # stored dtype, not float
    assert batch["mask"].shape == (3, 1, 32, 32) and batch["mask"].dtype == torch.uint8
    for key in ("slope", "intercept", "window_center", "window_width"):
        assert batch[key].dtype == torch.float32 and batch[key].shape == (3,)
    for key in ("monochrome1", "ybr"):
        assert batch[key].dtype == torch.bool and batch[key].shape == (3,)
    for key in ("bits_stored", "frame", "index", "label"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (3,)
    assert batch["path"] == [ds[i]["path"] for i in range(3)]

    clips = DicomClipDataset(ct.root, clip_len=1)
    assert collate([clips[0], clips[1]])["image"].shape == (2, 1, 1, 32, 32)
    float_labels = collate([{**ds[0], "label": 0.5}, {**ds[1], "label": 1}])
    assert float_labels["label"].dtype == torch.float32
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_collate_mixed_sizes_raise_unless_pad(ct, siim, tmp_path):
    small = DicomDataset(ct.files[0], frames="first")[0]
    big_path = tmp_path / "big.dcm"
    write_dicom(big_path, rows=40, columns=24, signed=True)
    big = DicomDataset(big_path, frames="first")[0]
    with pytest.raises(ValueError, match="different sizes") as info:
        collate([small, big])
    assert str(ct.files[0]) in str(info.value) and str(big_path) in str(info.value)
    batch = Collate(pad=True)([small, big])
    assert batch["image"].shape == (2, 1, 40, 32)
    assert torch.equal(batch["image"][0, :, :32, :32], small["image"])
    assert torch.equal(batch["image"][1, :, :40, :24], big["image"])
    # Padding uses the image's own minimum, so it reads as background.
    assert (batch["image"][0, :, 32:, :] == small["image"].min()).all()


# --------------------------------------------------------------------------- colour
@pytest.mark.parametrize("source", ["us_cine_jpeg", "SC_rgb_jpeg_dcmtk.dcm"])
def test_ybr_mode_and_device_side_conversion(us, source):
    path = us.files[1] if source == "us_cine_jpeg" else real_file(source)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.PhotometricInterpretation.startswith("YBR_FULL")
    ybr = DicomDataset(path, color="ybr")
    rgb = DicomDataset(path, color="rgb")
    n = min(len(ybr), 3)
    batch = collate([ybr[i] for i in range(n)])
    assert batch["ybr"].all() and not collate([rgb[i] for i in range(n)])["ybr"].any()
    reference = torch.stack([read_frames(path, i)[0] for i in range(n)])
    assert batch["image"].shape == reference.shape and batch["image"].dtype == torch.uint8
    assert not torch.equal(batch["image"], reference)  # really YCbCr
    converted = YbrToRgb()(batch)["image"]
    diff = (converted.int() - reference.int()).abs()
    assert int(diff.max()) <= 2


class _Sized(torch.utils.data.Dataset):
    """Items of two sizes, as a folder mixing detectors would give."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.full((1, 4 + i % 2, 4), i, dtype=torch.int16)
        return {"image": image, "path": f"item{i}"}


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_pad_in_workers(workers):
    # Inside workers the batch is built in shared memory; the values must not change.
    loader = DataLoader(_Sized(), batch_size=4, num_workers=workers, collate_fn=Collate(pad=True))
    for b, batch in enumerate(loader):
        assert batch["image"].shape == (4, 1, 5, 4) and batch["image"].dtype == torch.int16
        for k in range(4):
            i = 4 * b + k
            assert (batch["image"][k, :, : 4 + i % 2] == i).all()
            assert (batch["image"][k, :, 4 + i % 2 :] == i).all()  # padded with its own minimum
        assert batch["path"] == [f"item{4 * b + k}" for k in range(4)]


# --------------------------------------------------------------------------- batched reads
def _per_item_batch(ds: DicomDataset, indices: list[int]) -> dict[str, Any]:
    return collate([ds[i] for i in indices])


def _assert_batches_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(
                a[key].nan_to_num(-7), b[key].nan_to_num(-7)
            ), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("workers", [0, 2])
def test_getitems_batches_equal_per_item_batches(siim, workers):
    ds = DicomDataset(siim.root / "train", labels=siim.labels_csv, frames="first")
    loader = DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate)
    n = len(ds)
    for k, batch in enumerate(loader):
        indices = list(range(5 * k, min(5 * k + 5, n)))
        _assert_batches_equal(batch, _per_item_batch(ds, indices))


def test_getitems_reads_into_one_buffer_that_collate_passes_on(siim):
    ds = DicomDataset(siim.files, frames="first")
    items = ds.__getitems__([3, 0, 7, 1])
    base = items[0]["image"].untyped_storage().data_ptr()
    assert all(it["image"].untyped_storage().data_ptr() == base for it in items)
    batch = collate(items)
    assert batch["image"].untyped_storage().data_ptr() == base  # no copy
    assert torch.equal(batch["image"], torch.stack([ds[i]["image"] for i in (3, 0, 7, 1)]))
    # Items out of their buffer's order are stacked as usual (a copy, same values).
    shuffled = collate([items[1], items[0], items[2], items[3]])
    assert shuffled["image"].untyped_storage().data_ptr() != base
    assert torch.equal(shuffled["image"][0], batch["image"][1])


def test_getitems_falls_back_for_compressed_and_mixed_sizes(us, ct, siim):
    compressed = DicomDataset(us.files, frames="all")  # us_001 is JPEG: no shared buffer
    indices = [10, 11, 15, 16]
    assert {compressed[i]["path"] for i in indices} == {str(compressed.rows[1]["path"])}
    assert compressed._batch_slots(indices) is None
    _assert_batches_equal(
        collate(compressed.__getitems__(indices)), _per_item_batch(compressed, indices)
    )
    # Same size, different stored dtypes (int16 CT, uint8 CR): one buffer in the dataset's.
    mixed = DicomDataset([*ct.files[:2], *siim.files[:2]])
    assert mixed._batch_slots([0, 1, 2, 3]) is not None
    _assert_batches_equal(
        collate(mixed.__getitems__([0, 1, 2, 3])), _per_item_batch(mixed, [0, 1, 2, 3])
    )


def test_getitems_skip_substitutes_into_a_copied_batch(with_corrupt):
    root, _bad = with_corrupt
    ds = DicomDataset(root, on_error="skip")
    batch = collate(ds.__getitems__([0, 1, 2, 3]))  # f01 is truncated
    assert batch["substituted"].tolist() == [False, True, False, False]
    assert torch.equal(batch["image"][1], ds[2]["image"])  # the next readable sample
    with pytest.raises(CorruptDicomError, match=r"f01\.dcm"):
        DicomDataset(root).__getitems__([0, 1, 2])


def test_read_frames_numpy_into_out(ct, us):
    row = DicomDataset(ct.files, frames="first").rows[0]
    expected = read_frames(row).numpy()
    out = np.full(expected.shape, -1, expected.dtype)
    got = frames_module.read_frames_numpy(row, out=out)
    assert got is out and np.array_equal(out, expected)
    jpeg = str(next(f for f in us.files if Path(f).name == "us_001.dcm"))
    expected = read_frames(jpeg, frames=[2, 3]).numpy()
    out = np.zeros(expected.shape, expected.dtype)
    assert np.array_equal(frames_module.read_frames_numpy(jpeg, [2, 3], out=out), expected)
    for bad in (np.zeros((1, 1, 4, 4), expected.dtype), np.zeros(expected.shape, np.float32)):
        with pytest.raises(ValueError, match=r"us_001\.dcm"):
            frames_module.read_frames_numpy(jpeg, [2, 3], out=bad)
    with pytest.raises(ValueError, match="out must have shape"):
        frames_module.read_frames_numpy(row, out=np.zeros((2, 1, 32, 32), np.int16))


def test_batch_of_jpeg_frames_is_decoded_on_the_thread_pool(us, monkeypatch) -> None:
    # The JPEG cine's frames of one batch are decoded on the runtime's pool (Pillow releases
    # the GIL) in the main process, and the items equal those read one by one.
    import torchdicom.data.frames as data_frames

    ds = DicomDataset([us.files[1]], frames="all")
    indices = [7, 2, 5, 0]
    one_by_one = [ds[i] for i in indices]
    pooled = []
    real = data_frames.run_in_slices

    def spy(count, fn, numel):
        pooled.append(count)
        return real(count, fn, numel)

    monkeypatch.setattr(data_frames, "run_in_slices", spy)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    batch = ds.__getitems__(indices)
    assert pooled == [4]
    for got, expected in zip(batch, one_by_one, strict=True):
        assert got["frame"] == expected["frame"]
        assert torch.equal(got["image"], expected["image"])
