"""The size policy (torchdicom.data.resize): geometry, dtypes, channels, masks, affine,
and datasets over folders mixing sizes, aspect ratios and grey/colour."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import real_file
from tests.dicom_factory import write_dicom
from torchdicom.data import Collate, DicomClipDataset, DicomDataset
from torchdicom.data.resize import SizePolicy, check_channels, to_original, to_resized

# (name, rows, columns, samples, bits allocated, bits stored, photometric, box (y0, x0, y1, x1))
MIXED = [
    ("grey16_300x250", 300, 250, 1, 16, 12, "MONOCHROME2", (60, 40, 180, 150)),
    ("grey16_256x320", 256, 320, 1, 16, 16, "MONOCHROME2", (30, 200, 130, 300)),
    ("mono1_180x240", 180, 240, 1, 16, 10, "MONOCHROME1", (90, 20, 170, 100)),
    ("rgb8_200x200", 200, 200, 3, 8, 8, "RGB", (20, 20, 100, 120)),
    ("rgb8_120x260", 120, 260, 3, 8, 8, "RGB", (10, 130, 110, 250)),
]
BRIGHT = {8: 250, 16: 900}


def _write_mixed(root: Path, with_masks: bool = True) -> tuple[Path, Path]:
    """Images in root/img (a bright box on a dim noisy background) and their masks (the box)
    in root/msk, mirrored."""
    rng = np.random.default_rng(0)
    for name, h, w, spp, ba, bs, photometric, (y0, x0, y1, x1) in MIXED:
        dtype = np.uint8 if ba == 8 else np.uint16
        values = rng.integers(0, 40, (1, spp, h, w)).astype(dtype)
        values[..., y0:y1, x0:x1] = BRIGHT[ba]
        write_dicom(
            root / "img" / name,
            values=values,
            bits_allocated=ba,
            bits_stored=bs,
            photometric=photometric,
            modality="CR" if spp == 1 else "OT",
        )
        if with_masks:
            mask = np.zeros((1, 1, h, w), np.uint8)
            mask[..., y0:y1, x0:x1] = 1
            write_dicom(root / "msk" / name, values=mask, bits_allocated=8, modality="OT")
    return root / "img", root / "msk"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write_mixed(tmp_path_factory.mktemp("mixed"))


def _item(h: int, w: int, c: int = 1, dtype: torch.dtype = torch.int16) -> dict:
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        image = torch.rand(c, h, w, generator=g, dtype=dtype) * 1000
    else:
        hi = min(torch.iinfo(dtype).max, 4000)
        image = torch.randint(0, hi, (c, h, w), generator=g).to(dtype)
    return {"image": image}


# --------------------------------------------------------------------------- geometry
class TestGeometry:
    @pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
    @pytest.mark.parametrize("hw", [(300, 250), (100, 400), (64, 64), (20, 30)])
    def test_output_size_and_keys(self, resize: str, hw: tuple[int, int]) -> None:
        out = SizePolicy((64, 48), resize)(_item(*hw))
        assert out["image"].shape == (1, 64, 48)
        assert out["original_size"].tolist() == list(hw)
        assert out["scale"].dtype == torch.float64 and out["scale"].shape == (2,)
        assert out["pad"].dtype == torch.int64 and out["pad"].shape == (4,)
        assert out["crop"].dtype == torch.int64 and out["crop"].shape == (4,)
        y0, x0, y1, x1 = out["crop"].tolist()
        top, left, bottom, right = out["pad"].tolist()
        sy, sx = out["scale"].tolist()
        # the kept region, scaled, plus the padding, is the output
        assert round((y1 - y0) * sy) + top + bottom == 64
        assert round((x1 - x0) * sx) + left + right == 48

    def test_stretch(self) -> None:
        out = SizePolicy((50, 100), "stretch")(_item(100, 50))
        assert out["scale"].tolist() == [0.5, 2.0]
        assert out["pad"].tolist() == [0, 0, 0, 0] and out["crop"].tolist() == [0, 0, 100, 50]

    def test_letterbox_keeps_aspect_and_centres(self) -> None:
        out = SizePolicy((64, 64), "letterbox")(_item(200, 100))
        assert out["scale"].tolist() == [0.32, 0.32]
        assert out["pad"].tolist() == [0, 16, 0, 16]
        assert out["crop"].tolist() == [0, 0, 200, 100]

    def test_crop_keeps_aspect_and_centres(self) -> None:
        out = SizePolicy((64, 64), "crop")(_item(200, 100))
        assert out["crop"].tolist() == [50, 0, 150, 100]
        assert out["scale"].tolist() == [0.64, 0.64]
        assert out["pad"].tolist() == [0, 0, 0, 0]

    def test_letterbox_pads_with_background(self) -> None:
        item = {"image": torch.full((1, 10, 40), 7, dtype=torch.int16)}
        item["image"][0, 0, 0] = 3
        out = SizePolicy((40, 40), "letterbox")(item)
        assert out["image"][0, 0, 20].item() == 3  # the image's minimum in the padding
        item["monochrome1"] = True  # inverted: the maximum reads as black
        assert SizePolicy((40, 40), "letterbox")(item)["image"][0, 0, 20].item() == 7

    def test_same_size_is_untouched(self) -> None:
        item = _item(32, 32)
        out = SizePolicy(32)(item)
        assert torch.equal(out["image"], item["image"])
        assert out["scale"].tolist() == [1.0, 1.0]

    def test_to_original_inverts_to_resized(self) -> None:
        for resize in ("stretch", "letterbox", "crop"):
            item = SizePolicy((64, 80), resize)(_item(300, 250))
            pts = torch.tensor([[0.0, 0.0], [12.5, 70.25], [63.0, 79.0]], dtype=torch.float64)
            assert torch.allclose(to_resized(to_original(pts, item), item), pts)

    def test_to_original_on_a_batch(self) -> None:
        policy = SizePolicy((40, 40), "letterbox")
        items = [policy(_item(80, 40)), policy(_item(40, 80))]
        batch = Collate()(items)
        centre = torch.tensor([[[20.0, 20.0]], [[20.0, 20.0]]], dtype=torch.float64)  # (B, 1, 2)
        back = to_original(centre, batch)
        assert back.tolist() == [[[40.0, 20.0]], [[20.0, 40.0]]]
        boxes = torch.zeros(2, 3, 2, 2, dtype=torch.float64)  # (B, boxes, corners, yx)
        assert to_original(boxes, batch).shape == (2, 3, 2, 2)

    def test_to_original_needs_geometry(self) -> None:
        with pytest.raises(ValueError, match="no geometry"):
            to_original(torch.zeros(1, 2), {"image": torch.zeros(1, 2, 2)})

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match="resize must be"):
            SizePolicy(8, "squash")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="channels must be"):
            SizePolicy(8, channels=2)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="size must be"):
            SizePolicy((0, 4))
        with pytest.raises(ValueError, match="size must be"):
            SizePolicy("big")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="image must be"):
            SizePolicy(8)({"image": torch.zeros(4, 4)})

    def test_picklable(self) -> None:
        policy = pickle.loads(pickle.dumps(SizePolicy((8, 9), "crop", channels=3)))
        assert (policy.size, policy.resize, policy.channels) == ((8, 9), "crop", 3)
        assert policy.output_shape(1, 100, 50) == (3, 8, 9)


# --------------------------------------------------------------------------- values
class TestValues:
    @pytest.mark.parametrize(
        "dtype", [torch.uint8, torch.int16, torch.uint16, torch.int32, torch.float32]
    )
    @pytest.mark.parametrize("size", [(37, 29), (160, 200)])  # down, up
    def test_dtype_kept_and_values_in_range(self, dtype: torch.dtype, size: tuple) -> None:
        item = _item(90, 70, dtype=dtype)
        out = SizePolicy(size)(item)
        assert out["image"].dtype == dtype
        src = item["image"].to(torch.float64)
        res = out["image"].to(torch.float64)
        assert res.min() >= src.min() and res.max() <= src.max()  # no overshoot

    def test_rounded_not_truncated(self) -> None:
        image = torch.tensor([[[0, 1], [0, 1]]], dtype=torch.int16)  # mean 0.5 per row pair
        out = SizePolicy((1, 1))({"image": image * 3})  # mean 1.5 → 2 (round half to even)
        assert out["image"].item() == 2
        out = SizePolicy((1, 1))({"image": torch.tensor([[[0, 0], [0, 3]]], dtype=torch.int16)})
        assert out["image"].item() == 1  # 0.75 → 1, truncation would give 0

    def test_downsampling_averages(self) -> None:
        # A 1-pixel checkerboard averages to its mean (area), it does not alias.
        board = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 1000
        out = SizePolicy((16, 16))({"image": board[None].to(torch.int16)})
        assert torch.all(out["image"] == 500)

    def test_matches_interpolate(self) -> None:
        item = _item(120, 90)
        up = SizePolicy((240, 180))(item)["image"]
        ref = torch.nn.functional.interpolate(
            item["image"][None].float(), size=(240, 180), mode="bilinear", align_corners=False
        )[0]
        assert torch.equal(up, ref.round().to(torch.int16))
        down = SizePolicy((60, 45))(item)["image"]
        ref = torch.nn.functional.interpolate(item["image"][None].float(), (60, 45), mode="area")
        assert torch.equal(down, ref[0].round().to(torch.int16))

    def test_clip_frames_share_geometry(self) -> None:
        clip = torch.randint(0, 255, (4, 3, 50, 70), dtype=torch.uint8)
        mask = torch.randint(0, 2, (4, 2, 50, 70), dtype=torch.uint8)
        out = SizePolicy((32, 32), "letterbox")({"image": clip, "mask": mask})
        assert out["image"].shape == (4, 3, 32, 32) and out["image"].dtype == torch.uint8
        assert out["mask"].shape == (4, 2, 32, 32) and out["mask"].dtype == torch.uint8
        for t in range(4):
            one = SizePolicy((32, 32), "letterbox")({"image": clip[t], "mask": mask[t]})
            assert torch.equal(one["image"], out["image"][t])
            assert torch.equal(one["mask"], out["mask"][t])


# --------------------------------------------------------------------------- channels
class TestChannels:
    def test_rgb_to_luma(self) -> None:
        rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(3, 1, 1).expand(3, 4, 4)
        out = SizePolicy(channels=1)({"image": rgb.contiguous(), "ybr": False})
        assert out["image"].shape == (1, 4, 4) and out["image"].dtype == torch.uint8
        assert torch.all(out["image"] == 76)  # round(0.299 * 255)
        assert "scale" not in out  # no size: no geometry

    def test_ybr_gives_its_y_plane(self) -> None:
        ybr = torch.stack(
            [torch.full((4, 4), 100), torch.full((4, 4), 30), torch.full((4, 4), 200)]
        )
        out = SizePolicy(channels=1)({"image": ybr.to(torch.uint8), "ybr": True})
        assert torch.all(out["image"] == 100) and out["ybr"] is False

    def test_grey_repeated(self) -> None:
        grey = torch.randint(0, 4000, (1, 5, 6), dtype=torch.int16)
        out = SizePolicy(channels=3)({"image": grey})
        assert out["image"].shape == (3, 5, 6)
        assert all(torch.equal(out["image"][c], grey[0]) for c in range(3))

    def test_unsupported_conversion(self) -> None:
        with pytest.raises(ValueError, match="only 1 ↔ 3"):
            SizePolicy(channels=1)({"image": torch.zeros(4, 2, 2, dtype=torch.uint8)})

    def test_check_channels_names_the_policies(self) -> None:
        check_channels([1, 1], None)
        check_channels([1, 3], 1)
        with pytest.raises(ValueError, match=r"channels=1.*channels=3"):
            check_channels([1, 3, 1], None)


# --------------------------------------------------------------------------- masks, affine
class TestMaskAndAffine:
    @pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
    def test_mask_follows_the_image(self, resize: str) -> None:
        image = torch.zeros(1, 120, 90, dtype=torch.int16)
        mask = torch.zeros(1, 120, 90, dtype=torch.uint8)
        image[:, 30:90, 20:60] = 1000
        mask[:, 30:90, 20:60] = 1
        out = SizePolicy((64, 64), resize)({"image": image, "mask": mask})
        assert out["mask"].dtype == torch.uint8 and set(out["mask"].unique().tolist()) <= {0, 1}
        ys, xs = torch.nonzero(out["mask"][0], as_tuple=True)
        corners = to_resized(torch.tensor([[30.0, 20.0], [90.0, 60.0]], dtype=torch.float64), out)
        (ey0, ex0), (ey1, ex1) = corners.tolist()
        assert abs(ys.min().item() - ey0) <= 1 and abs(ys.max().item() + 1 - ey1) <= 1
        assert abs(xs.min().item() - ex0) <= 1 and abs(xs.max().item() + 1 - ex1) <= 1
        inside = out["image"][out["mask"].bool()].float().mean()
        assert inside > 900  # the bright box is where the mask is

    def test_bool_mask_stays_bool(self) -> None:
        mask = torch.zeros(2, 20, 20, dtype=torch.bool)
        mask[0, 5:10] = True
        out = SizePolicy((10, 30), "letterbox")({"image": _item(20, 20)["image"], "mask": mask})
        assert out["mask"].dtype == torch.bool and out["mask"].shape == (2, 10, 30)

    @pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
    def test_affine_maps_new_pixels_to_the_same_patient_point(self, resize: str) -> None:
        # voxel (column x, row y, slice z) -> LPS, spacing 0.7 x 0.5 mm, an oblique plane
        affine = torch.tensor(
            [[0.0, 0.5, 0.0, -100.0], [0.7, 0.0, 0.0, 20.0], [0.0, 0.0, 2.0, 7.0], [0, 0, 0, 1]],
            dtype=torch.float64,
        )
        out = SizePolicy((64, 48), resize)({"image": _item(150, 90)["image"], "affine": affine})
        assert out["affine"].dtype == torch.float64
        for y, x in [(0, 0), (10, 30), (63, 47)]:
            # centre of the new pixel, in original continuous pixels, then to an index
            oy, ox = to_original(torch.tensor([y + 0.5, x + 0.5], dtype=torch.float64), out)
            old = affine @ torch.tensor([ox - 0.5, oy - 0.5, 0.0, 1.0], dtype=torch.float64)
            new = out["affine"] @ torch.tensor([x, y, 0.0, 1.0], dtype=torch.float64)
            assert torch.allclose(old, new)


# --------------------------------------------------------------------------- datasets
def _epoch(ds: DicomDataset, workers: int, batch_size: int = 2) -> list[dict]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=Collate())
    return list(loader)


class TestDatasets:
    def test_mixed_folder_fails_without_a_policy(self, mixed: tuple[Path, Path]) -> None:
        images, _ = mixed
        with pytest.raises(ValueError, match=r"channels=1.*channels=3"):
            DicomDataset(images, frames="first", size=(64, 64))
        ds = DicomDataset(images, frames="first")  # item access stays possible
        with pytest.raises(ValueError, match=r"different sizes.*size policy.*by_size"):
            _epoch(ds, 0, batch_size=len(ds))

    @pytest.mark.parametrize("workers", [0, 2])
    @pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
    @pytest.mark.parametrize("channels", [1, 3])
    def test_full_epochs(
        self, mixed: tuple[Path, Path], workers: int, resize: str, channels: int
    ) -> None:
        images, masks = mixed
        ds = DicomDataset(
            images, frames="first", masks=masks, size=(48, 64), resize=resize, channels=channels
        )
        plain = DicomDataset(images, frames="first")
        dtype = plain[0]["image"].dtype  # the dataset's one stored dtype
        seen = []
        for batch in _epoch(ds, workers):
            b = len(batch["path"])
            assert batch["image"].shape == (b, channels, 48, 64)
            assert batch["image"].dtype == dtype
            assert batch["mask"].shape == (b, 1, 48, 64) and batch["mask"].dtype == torch.uint8
            assert batch["scale"].shape == (b, 2) and batch["pad"].shape == (b, 4)
            assert batch["crop"].shape == (b, 4) and batch["original_size"].shape == (b, 2)
            for k in range(b):
                name = Path(batch["path"][k]).name
                spec = next(m for m in MIXED if m[0] == name)
                assert batch["original_size"][k].tolist() == [spec[1], spec[2]]
                # the bright box is where the mask is, and where the geometry puts it
                m = batch["mask"][k, 0].bool()
                assert m.any()
                inside = batch["image"][k][:, m].float().mean()
                outside = batch["image"][k][:, ~m].float().mean()
                assert inside > 4 * outside
                y0, x0, y1, x1 = spec[7]
                box = torch.tensor([[y0, x0], [y1, x1]], dtype=torch.float64)
                item = {key: batch[key][k] for key in ("scale", "crop", "pad")}
                (ey0, ex0), (ey1, ex1) = to_resized(box, item).clamp(min=0).tolist()
                ys, xs = torch.nonzero(m, as_tuple=True)
                assert abs(ys.min().item() - max(ey0, 0)) <= 1
                assert abs(xs.min().item() - max(ex0, 0)) <= 1
                assert abs(ys.max().item() + 1 - min(ey1, 48)) <= 1
                assert abs(xs.max().item() + 1 - min(ex1, 64)) <= 1
                seen.append(name)
        assert sorted(seen) == sorted(m[0] for m in MIXED)

    def test_same_layout_batch_takes_no_shared_buffer(self, tmp_path: Path) -> None:
        # Same-size native files would take the one-buffer fast path; with a size policy the
        # items are resized one by one instead, and equal a resize of the plain items.
        for k in range(3):
            write_dicom(tmp_path / f"ct{k}", rows=40, columns=30, bits_stored=12, seed=k)
        ds = DicomDataset(tmp_path, frames="first", size=(20, 20))
        plain = DicomDataset(tmp_path, frames="first")
        items = ds.__getitems__([0, 1, 2])
        for k, item in enumerate(items):
            assert item["image"].shape == (1, 20, 20)
            assert torch.equal(item["image"], SizePolicy((20, 20))(plain[k])["image"])

    def test_clips(self, tmp_path: Path) -> None:
        write_dicom(
            tmp_path / "us_rgb",
            rows=30,
            columns=40,
            frames=6,
            samples_per_pixel=3,
            bits_allocated=8,
        )
        write_dicom(tmp_path / "us_grey", rows=50, columns=20, frames=4, bits_allocated=8)
        with pytest.raises(ValueError, match="channels=1"):
            DicomClipDataset(tmp_path, clip_len=2, size=16)
        ds = DicomClipDataset(tmp_path, clip_len=2, size=16, resize="letterbox", channels=1)
        batch = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=Collate())))
        assert batch["image"].shape == (len(ds), 2, 1, 16, 16)
        assert batch["image"].dtype == torch.uint8

    def test_pydicom_data_radiographs(self, tmp_path: Path) -> None:
        # Real radiographs of different sizes (CR 1955x1841 and 1760x1760, MONOCHROME1,
        # 16-bit) beside an RGB secondary capture and an 8-bit grey image.
        for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "SC_rgb.dcm", "vlut_04.dcm"):
            shutil.copy(real_file(name), tmp_path / name)
        ds = DicomDataset(tmp_path, frames="first", size=(128, 128), resize="letterbox", channels=1)
        batches = _epoch(ds, 0, batch_size=4)
        assert len(batches) == 1
        batch = batches[0]
        assert batch["image"].shape == (4, 1, 128, 128)
        assert not batch["image"].is_floating_point()
        sizes = {tuple(s) for s in batch["original_size"].tolist()}
        assert {(1955, 1841), (1760, 1760), (100, 100), (512, 512)} == sizes
        # Downsampling averages: the resized radiograph's mean is the original's, within 1 %.
        k = [Path(p).name for p in batch["path"]].index("RG3_UNCR.dcm")
        original = DicomDataset(tmp_path / "RG3_UNCR.dcm")[0]["image"].float().mean()
        assert abs(batch["image"][k].float().mean() - original) < 0.01 * original


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
def test_dataset_item_affine_follows_the_geometry(tmp_path: Path, resize: str) -> None:
    """A resized item's ``affine`` puts each new pixel where the original affine puts the
    same point of the original image (oblique plane, anisotropic pixels)."""
    write_dicom(
        tmp_path / "cr",
        rows=90,
        columns=60,
        bits_stored=12,
        extra={
            "ImagePositionPatient": [-100.0, 20.0, 7.5],
            "ImageOrientationPatient": [0.0, 1.0, 0.0, 0.6, 0.0, -0.8],
            "PixelSpacing": [0.7, 0.4],
        },
    )
    plain = DicomDataset(tmp_path)[0]
    item = DicomDataset(tmp_path, size=(32, 40), resize=resize)[0]
    assert not torch.allclose(item["affine"], plain["affine"])
    for y, x in [(0, 0), (5, 17), (31, 39)]:
        oy, ox = to_original(torch.tensor([y + 0.5, x + 0.5], dtype=torch.float64), item)
        old = plain["affine"] @ torch.tensor([ox - 0.5, oy - 0.5, 0, 1], dtype=torch.float64)
        new = item["affine"] @ torch.tensor([x, y, 0, 1], dtype=torch.float64)
        assert torch.allclose(old, new)
