"""Tests of the sample DICOM generators: determinism, layout, headers, pixels, demo cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from torchdicom.samples import SampleSet, ct_like, demo_data, siim_like, us_cine_like
from torchdicom.samples import demo as demo_module
from torchdicom.samples.siim import _chest_radiograph
from torchdicom.samples.ultrasound import _UsScene


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def siim(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return siim_like(tmp_path_factory.mktemp("siim"), n=20, size=48, seed=1)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return ct_like(tmp_path_factory.mktemp("ct"), n_series=4, slices=10, size=48, seed=1)


@pytest.fixture(scope="module")
def us(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return us_cine_like(tmp_path_factory.mktemp("us"), n=2, frames=12, size=65, seed=1)


class TestDeterminism:
    @pytest.mark.parametrize(
        ("generate", "kwargs"),
        [
            (siim_like, {"n": 5, "size": 32}),
            (ct_like, {"n_series": 4, "slices": 2, "size": 32}),
            (us_cine_like, {"n": 2, "frames": 3, "size": 33}),
        ],
    )
    def test_same_seed_same_bytes(self, tmp_path: Path, generate, kwargs) -> None:
        generate(tmp_path / "a", seed=7, **kwargs)
        generate(tmp_path / "b", seed=7, **kwargs)
        generate(tmp_path / "c", seed=8, **kwargs)
        a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
        assert a == b
        assert a != c


class TestSiim:
    def test_layout_and_labels(self, siim: SampleSet) -> None:
        rows = _read_csv(siim.labels_csv)
        assert list(rows[0]) == ["file", "label"]
        assert [siim.root / r["file"] for r in rows] == siim.files
        for index, row in enumerate(rows):
            assert row["label"] in ("No Pneumothorax", "Pneumothorax")
            assert row["file"] == f"train/{row['label']}/{index:06d}.dcm"
        assert {r["label"] for r in rows} == {"No Pneumothorax", "Pneumothorax"}
        assert siim.masks == [] and siim.masks_dir is None

    def test_headers_and_pixels(self, siim: SampleSet) -> None:
        patient_ids = []
        for path in siim.files:
            ds = pydicom.dcmread(path)
            assert ds.Modality == "CR"
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored) == (
                "MONOCHROME2",
                8,
                8,
            )
            assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds
            assert str(ds.PatientName) and ds.PatientBirthDate and ds.InstitutionName
            pixels = ds.pixel_array
            assert pixels.shape == (48, 48) and pixels.dtype == np.uint8
            assert pixels.max() > 150 and pixels.min() < 60  # bone bright, air dark
            patient_ids.append(ds.PatientID)
        assert len(set(patient_ids)) < len(patient_ids)  # some patients have several images

    def test_pneumothorax_is_visible(self) -> None:
        # Same pose and anatomy (same generator state), with and without the
        # pneumothorax: the affected lung must be visibly darker somewhere.
        plain = _chest_radiograph(np.random.default_rng(3), 128, False).astype(int)
        ptx = _chest_radiograph(np.random.default_rng(3), 128, True).astype(int)
        assert (plain - ptx).max() > 20


class TestCt:
    def test_layout_labels_and_masks(self, ct: SampleSet) -> None:
        rows = _read_csv(ct.labels_csv)
        assert list(rows[0]) == ["file", "lesion"]
        assert [ct.root / r["file"] for r in rows] == ct.files
        assert ct.masks == [ct.root / "masks" / r["file"] for r in rows]
        assert {r["lesion"] for r in rows} == {"0", "1"}
        series_dirs = {Path(r["file"]).parent for r in rows}
        assert len(series_dirs) == 4
        assert len({d.parent for d in series_dirs}) == 2  # two series per patient
        names = [Path(r["file"]).name for r in rows]
        assert any(name.endswith(".dcm") for name in names)
        assert any(name.startswith("IM") and "." not in name for name in names)
        for path, mask_path, row in zip(ct.files, ct.masks, rows, strict=True):
            assert path.read_bytes()[128:132] == b"DICM"
            image, mask = pydicom.dcmread(path), pydicom.dcmread(mask_path)
            assert (mask.Rows, mask.Columns) == (image.Rows, image.Columns)
            assert (mask.PhotometricInterpretation, mask.BitsAllocated) == ("MONOCHROME2", 8)
            assert mask.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
            assert mask.ImagePositionPatient == image.ImagePositionPatient
            values = mask.pixel_array
            assert set(np.unique(values)) <= {0, 1}
            assert int(values.any()) == int(row["lesion"])

    def test_pixels_and_hounsfield_range(self, ct: SampleSet) -> None:
        variants = set()
        for path in ct.files:
            ds = pydicom.dcmread(path)
            assert ds.Modality == "CT"
            pixels = ds.pixel_array
            assert pixels.shape == (48, 48)
            hu = pixels * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert hu.min() >= -2000 and hu.max() <= 2000
            assert hu.min() <= -1000  # air / padding
            assert hu.max() > 300  # bone
            variants.add((pixels.dtype.str, int(ds.BitsStored), float(ds.RescaleIntercept)))
        assert variants == {("<i2", 16, -1024.0), ("<u2", 16, -1024.0), ("<i2", 12, 0.0)}

    def test_series_geometry(self, ct: SampleSet) -> None:
        by_series: dict[str, list[pydicom.Dataset]] = {}
        for path in ct.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
        shuffled = 0
        multi_window = 0
        for datasets in by_series.values():
            assert len({d.StudyInstanceUID for d in datasets}) == 1
            z = [float(d.ImagePositionPatient[2]) for d in datasets]
            assert len(set(z)) == len(z)
            assert all(float(d.SliceLocation) == pytest.approx(zi) for d, zi in zip(datasets, z))
            assert [float(v) for v in datasets[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            instance_order = [
                d.InstanceNumber
                for d in sorted(datasets, key=lambda d: -float(d.ImagePositionPatient[2]))
            ]
            shuffled += instance_order != sorted(instance_order)
            multi_window += datasets[0]["WindowCenter"].VM > 1
        assert shuffled == 1
        assert multi_window == 1


class TestUltrasound:
    def test_native_files(self, us: SampleSet) -> None:
        native = pydicom.dcmread(us.files[0])
        assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert native.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
        assert (native.Modality, native.NumberOfFrames, native.PhotometricInterpretation) == (
            "US",
            12,
            "MONOCHROME2",
        )
        pixels = native.pixel_array
        assert pixels.shape == (12, 65, 65) and pixels.dtype == np.uint8
        scene = _UsScene(1, 0, 65, 12)
        for k in (0, 5, 11):
            np.testing.assert_array_equal(pixels[k], scene.frame(k)[0])

    def test_odd_pixel_data_is_padded(self, us: SampleSet) -> None:
        odd = us_cine_like(us.root.parent / "odd", n=1, frames=3, size=33, seed=0, jpeg=False)
        ds = pydicom.dcmread(odd.files[0])
        assert len(ds.PixelData) == 3 * 33 * 33 + 1
        assert ds.pixel_array.shape == (3, 33, 33)

    def test_jpeg_variant_decodes_close_to_source(self, us: SampleSet) -> None:
        ds = pydicom.dcmread(us.files[-1])
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("YBR_FULL_422", 3)
        rgb = ds.pixel_array
        assert rgb.shape == (12, 65, 65, 3) and rgb.dtype == np.uint8
        scene = _UsScene(1, 1, 65, 12)
        for k in (0, 7):
            source = scene.colour(k, scene.frame(k)[0]).astype(int)
            assert np.abs(rgb[k].astype(int) - source).mean() < 8
            np.testing.assert_array_equal(pixel_array(ds, index=k), rgb[k])

    def test_masks_pair_with_frames(self, us: SampleSet) -> None:
        assert us.labels_csv is None
        assert [p.name for p in us.masks] == [p.name for p in us.files]
        for index, (image_path, mask_path) in enumerate(zip(us.files, us.masks, strict=True)):
            image, mask = pydicom.dcmread(image_path), pydicom.dcmread(mask_path)
            assert (mask.NumberOfFrames, mask.Rows, mask.Columns) == (
                image.NumberOfFrames,
                image.Rows,
                image.Columns,
            )
            assert mask.BitsAllocated == 8
            values = mask.pixel_array
            assert set(np.unique(values)) <= {0, 1}
            scene = _UsScene(1, index, 65, 12)
            expected = np.stack([scene.frame(k)[1] for k in range(12)])
            np.testing.assert_array_equal(values, expected)
        assert any(pydicom.dcmread(p).pixel_array.any() for p in us.masks)


class TestDemoData:
    def test_reuse_then_invalidate(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TORCHDICOM_SAMPLES", str(tmp_path / "cache"))
        first = demo_data(small=True)
        assert first.root == tmp_path / "cache" and not first.reused
        assert (first.root / "manifest.json").is_file()
        assert first.siim.root == first.root / "siim" and first.ct.root == first.root / "ct"
        all_files = [
            *first.siim.files,
            *first.ct.files,
            *first.ct.masks,
            *first.us.files,
            *first.us.masks,
        ]
        mtimes = {p: p.stat().st_mtime_ns for p in all_files}

        second = demo_data(small=True)
        assert second.reused
        assert second.ct.files == first.ct.files and second.us.masks == first.us.masks
        assert {p: p.stat().st_mtime_ns for p in all_files} == mtimes

        # A missing file is noticed, and the set regenerated.
        first.ct.masks[0].unlink()
        third = demo_data(small=True)
        assert not third.reused and first.ct.masks[0].is_file()

        # Changed parameters invalidate the cache.
        changed = {name: dict(params) for name, params in demo_module._SMALL_PARAMS.items()}
        changed["siim"]["n"] = 3
        monkeypatch.setattr(demo_module, "_SMALL_PARAMS", changed)
        fourth = demo_data(small=True)
        assert not fourth.reused and len(fourth.siim.files) == 3
        assert len(list((fourth.root / "siim").rglob("*.dcm"))) == 3
        assert demo_data(small=True).reused
