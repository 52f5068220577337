"""One stored dtype per dataset: the rule, exact conversion, Collate's dtype check, mask folders.

Every image of every batch must equal ``read_frames`` of its file (in the batch dtype),
whatever mix of signed / unsigned / 8-bit files the folder holds, at 0 and 2 workers and
through the DDP sampler.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tests.conftest import real_file, run_ddp_script
from tests.dicom_factory import write_dicom
from torchdicom.data import Collate, DicomClipDataset, DicomDataset
from torchdicom.data._base import _into_dtype, stored_dtype
from torchdicom.datamodule import DicomDataModule
from torchdicom.errors import CorruptDicomError
from torchdicom.io import read_frames
from torchdicom.samples import ct_like, siim_like, us_cine_like
from torchdicom.transforms import Rescale
from torchdicom.transforms.functional import invert_monochrome1, rescale


# --------------------------------------------------------------------------- the rule
def _layout(bits_allocated: int, bits_stored: int, signed: int, keyword: str = "PixelData"):
    return {
        "pixel_keyword": keyword,
        "bits_allocated": bits_allocated,
        "bits_stored": bits_stored,
        "pixel_representation": signed,
    }


FLOAT = _layout(32, -1, 0, "FloatPixelData")
DOUBLE = _layout(64, -1, 0, "DoubleFloatPixelData")


@pytest.mark.parametrize(
    ("layouts", "expected"),
    [
        ([], "u1"),
        ([_layout(8, 8, 0)], "u1"),
        ([_layout(8, 8, 0), _layout(1, 1, 0)], "u1"),  # 8-bit and 1-bit
        ([_layout(1, 1, 0)], "u1"),
        ([_layout(8, 8, 1)], "i1"),
        ([_layout(8, 8, 1), _layout(8, 8, 0)], "i2"),
        ([_layout(16, 16, 1)], "i2"),
        ([_layout(16, 12, 1)], "i2"),  # 12-in-16 signed CT
        ([_layout(16, 16, 0)], "u2"),  # uniform unsigned 16-bit keeps its dtype
        ([_layout(16, 12, 0)], "u2"),  # fits int16 too, but the files are uint16
        ([_layout(16, 16, 1), _layout(16, 12, 0)], "i2"),  # CT from two scanners
        ([_layout(16, 16, 1), _layout(16, 15, 0)], "i2"),
        ([_layout(16, 16, 1), _layout(16, 16, 0)], "i4"),  # the ct_like sample set
        ([_layout(16, 16, 1), _layout(8, 8, 0)], "i2"),  # CT + 8-bit US
        ([_layout(16, 12, 0), _layout(8, 8, 0)], "u2"),  # CR + 8-bit US
        ([_layout(16, 16, 1), _layout(16, 12, 0), _layout(8, 8, 0)], "i2"),
        ([_layout(16, 16, 0), _layout(8, 8, 1)], "i4"),
        ([_layout(32, 16, 1)], "i2"),  # narrower than the file: Bits Stored decides
        ([_layout(32, 32, 0)], "u4"),
        ([_layout(32, 32, 1)], "i4"),
        ([_layout(32, 32, 1), _layout(32, 32, 0)], "i8"),
        ([_layout(16, -1, 1)], "i2"),  # no Bits Stored: Bits Allocated counts
        ([FLOAT], "f4"),
        ([FLOAT, _layout(16, 16, 1)], "f4"),
        ([FLOAT, _layout(32, 32, 1)], "f8"),  # int32 values are not all float32
        ([DOUBLE], "f8"),
        ([DOUBLE, FLOAT], "f8"),
    ],
)
def test_stored_dtype_rule(layouts: list[dict[str, Any]], expected: str) -> None:
    assert stored_dtype(layouts) == np.dtype(expected)


def test_stored_dtype_prefers_the_dtype_most_files_have() -> None:
    # Unsigned 12-bit fits int16 and uint16: the files' own dtype wins (no conversion).
    assert stored_dtype([_layout(16, 12, 0)] * 3 + [_layout(8, 8, 0)]) == np.dtype("u2")


def test_a_range_no_integer_dtype_holds_names_the_file() -> None:
    # Found by fuzzing: a 64-bit file whose Pixel Representation and Bits Stored were lost.
    # An error of the package naming the file, never a plain ValueError or a silent cast.
    unsigned64 = {**_layout(64, -1, 0), "path": "/d/u64.dcm"}
    signed16 = {**_layout(16, 16, 1), "path": "/d/ct.dcm"}
    with pytest.raises(
        CorruptDicomError, match=r"^/d/u64\.dcm: its stored values need more than 63 bits"
    ):
        stored_dtype([signed16, unsigned64])


def test_into_dtype_is_exact_or_refuses() -> None:
    wide = np.array([0, 4095, 60000], np.uint16)
    assert _into_dtype(wide[:2], np.dtype("i2"), "f").tolist() == [0, 4095]
    assert _into_dtype(wide, np.dtype("i4"), "f").tolist() == [0, 4095, 60000]
    with pytest.raises(CorruptDicomError, match=r"/x/IM1: stored values 0…60000 do not fit"):
        _into_dtype(wide, np.dtype("i2"), "/x/IM1")
    big = np.array([1 << 25], np.int32)
    with pytest.raises(CorruptDicomError, match="float32"):
        _into_dtype(big, np.dtype("f4"), "f")
    with pytest.raises(CorruptDicomError, match="float32 pixels"):
        _into_dtype(np.zeros(2, np.float32), np.dtype("i2"), "f")
    same = np.zeros(3, np.int16)
    assert _into_dtype(same, np.dtype("i2"), "f") is same  # no copy when nothing changes


# --------------------------------------------------------------------------- a mixed folder
def _mixed_folder(root: Path) -> Path:
    """CT int16 (16 bits), CR uint16 12-bit MONOCHROME1, US uint8 multi-frame; all 16x16."""
    for k in range(5):
        write_dicom(
            root / "ct" / f"ct{k}.dcm",
            rows=16,
            columns=16,
            bits_allocated=16,
            signed=True,
            rescale_intercept=-1024.0,
            rescale_slope=1.0,
            seed=k,
            extra={"PatientID": f"P{k}", "WindowCenter": 40, "WindowWidth": 400},
        )
        write_dicom(
            root / "cr" / f"cr{k}.dcm",
            rows=16,
            columns=16,
            bits_allocated=16,
            bits_stored=12,
            modality="CR",
            photometric="MONOCHROME1",
            seed=10 + k,
            extra={"PatientID": f"Q{k}", "WindowCenter": 2048, "WindowWidth": 4096},
        )
    for k in range(2):
        write_dicom(
            root / "us" / f"us{k}.dcm",
            rows=16,
            columns=16,
            frames=3,
            bits_allocated=8,
            modality="US",
            seed=20 + k,
            extra={"PatientID": f"U{k}"},
        )
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mixed_folder(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory):
    # int16 (16 and 12 bits stored) and uint16 (16 bits) series: int32 batches.
    return ct_like(tmp_path_factory.mktemp("ct"), n_series=4, slices=6, size=32)


def _check_batch(batch: dict[str, Any], dtype: torch.dtype) -> None:
    """Every image equals read_frames of its file, value for value, in the batch dtype."""
    image = batch["image"]
    assert image.dtype == dtype
    for k, (path, frame) in enumerate(zip(batch["path"], batch["frame"].tolist(), strict=True)):
        expected = read_frames(path, frame)[0]
        assert torch.equal(image[k], expected.to(dtype)), path
        # The conversion was exact: going back gives the file's own values.
        assert torch.equal(image[k].to(expected.dtype), expected), path


def test_mixed_folder_dtype_and_items(mixed: Path) -> None:
    ds = DicomDataset(mixed, frames="all")
    assert ds.dtype == torch.int16
    assert len(ds) == 5 + 5 + 2 * 3
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.int16
        expected = read_frames(item["path"], item["frame"])[0]
        assert torch.equal(item["image"], expected.to(torch.int16))
        assert item["signed"] == (expected.dtype == torch.int16)


@pytest.mark.parametrize("workers", [0, 2])
def test_mixed_folder_full_epoch(mixed: Path, workers: int) -> None:
    ds = DicomDataset(mixed, frames="all")
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers, collate_fn=Collate())
    seen: Counter[int] = Counter()
    for batch in loader:
        _check_batch(batch, torch.int16)
        seen.update(batch["index"].tolist())
    assert seen == Counter(range(len(ds)))


def test_mixed_batch_takes_the_one_buffer_path(mixed: Path) -> None:
    """int16 CT, uint16 CR and uint8 US slots are filled in one int16 buffer (no stack copy)."""
    ds = DicomDataset(mixed, frames="all")
    kinds = {}
    for i in range(len(ds)):
        kinds.setdefault(Path(ds.rows[ds.locate(i)[0]]["path"]).parent.name, i)
    items = ds.__getitems__([kinds["ct"], kinds["cr"], kinds["us"]])
    base = items[0]["image"].untyped_storage().data_ptr()
    assert all(it["image"].untyped_storage().data_ptr() == base for it in items)
    batch = Collate()(items)
    assert batch["image"].untyped_storage().data_ptr() == base
    _check_batch(batch, torch.int16)


def test_mixed_batch_rescale_inverts_unsigned_monochrome1_as_unsigned(mixed: Path) -> None:
    """A uint16 MONOCHROME1 CR file stored as int16 is still inverted over 0…4095."""
    ds = DicomDataset(mixed, frames="all")
    batch = Collate()([ds[i] for i in range(len(ds))])
    assert batch["signed"].dtype == torch.bool and 0 < int(batch["signed"].sum()) < len(ds)
    out = Rescale()(batch)["image"]
    for k, path in enumerate(batch["path"]):
        own = read_frames(path, int(batch["frame"][k]))  # the file's own dtype
        if bool(batch["monochrome1"][k]):
            own = invert_monochrome1(own, int(batch["bits_stored"][k]))
        expected = rescale(own, float(batch["slope"][k]), float(batch["intercept"][k]))
        torch.testing.assert_close(out[k], expected[0], rtol=0, atol=0)
    # Per-sample flags through the functional too: signed and unsigned rows of one int16 batch.
    x = torch.tensor([[[[0, 100]]], [[[0, 100]]]], dtype=torch.int16)
    both = invert_monochrome1(x, 12, signed=torch.tensor([True, False]))
    assert both.tolist() == [[[[-1, -101]]], [[[4095, 3995]]]]


def test_clip_dataset_shares_the_rule(mixed: Path) -> None:
    clips = DicomClipDataset(mixed / "us", clip_len=2, stride=1)
    assert clips.dtype == torch.uint8
    both = DicomClipDataset([*sorted((mixed / "us").iterdir()), mixed / "ct" / "ct0.dcm"], 1)
    assert both.dtype == torch.int16
    for i in range(len(both)):
        item = both[i]
        expected = read_frames(item["path"], slice(item["frame"], item["frame"] + 1))
        assert torch.equal(item["image"], expected.to(torch.int16))


def test_real_ct_mr_cr_us_files() -> None:
    """pydicom's CT (int16), RLE MR (int16), CR (uint16, 15 bits, MONOCHROME1), US (RGB uint8)."""
    files = [real_file(n) for n in ("CT_small.dcm", "MR_small_RLE.dcm", "RG1_UNCR.dcm")]
    files.append(real_file("US1_UNCR.dcm"))
    ds = DicomDataset(files)
    assert ds.dtype == torch.int16  # 15-bit unsigned fits int16 beside signed 16-bit
    for batch in DataLoader(ds, batch_size=1, collate_fn=Collate()):
        _check_batch(batch, torch.int16)
        # Rescale (with the MONOCHROME1 inversion of the CR) gives what the file's own dtype gives.
        own = read_frames(batch["path"][0], 0)
        if bool(batch["monochrome1"][0]):
            own = invert_monochrome1(own, int(batch["bits_stored"][0]))
        expected = rescale(own, float(batch["slope"][0]), float(batch["intercept"][0]))
        torch.testing.assert_close(Rescale()(batch)["image"], expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- ct_like end to end
class _Checker(pl.LightningModule):
    """Checks every training batch against read_frames and records the items it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen: list[int] = []
        self.dtypes: set[torch.dtype] = set()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.dtypes.add(batch["image"].dtype)
        _check_batch(batch, torch.int32)
        self.seen.extend(batch["index"].tolist())
        return self.layer(batch["image"].float().mean(dim=(1, 2, 3))[:, None]).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("workers", [0, 2])
def test_ct_like_trains_a_full_epoch(ct, workers: int) -> None:
    """The issue's reproduction: ct_like at batch 4 used to die on int16 + uint16 batches."""
    dm = DicomDataModule(ct.root, batch_size=4, num_workers=workers, val_fraction=0.2)
    model = _Checker()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert dm.dataset is not None and dm.train_set is not None
    assert dm.dataset.dtype == torch.int32
    # Only the images, never the masks/ folder: one item per CT file.
    assert {Path(r["path"]) for r in dm.dataset.rows} == set(ct.files)
    assert sorted(model.seen) == sorted(dm.train_set.indices)
    assert model.dtypes == {torch.int32}


def test_ct_like_with_masks_every_split(ct) -> None:
    # Two patients: one trains, one validates.
    dm = DicomDataModule(ct.root, masks="masks", batch_size=4, val_fraction=0.2)
    dm.setup()
    assert {Path(r["path"]) for r in dm.dataset.rows} == set(ct.files)
    n = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            _check_batch(batch, torch.int32)
            assert batch["mask"].dtype == torch.uint8
            for k, path in enumerate(batch["path"]):
                mask = read_frames(ct.root / "masks" / Path(path).relative_to(ct.root), 0)[0]
                assert torch.equal(batch["mask"][k], mask.to(torch.uint8))
            n += len(batch["path"])
    assert n == len(ct.files)


def test_ct_like_ddp_sampler_path(ct) -> None:
    """Two DistributedSampler ranks (in process): int32 batches, every item once."""
    dm = DicomDataModule(ct.root, batch_size=4, val_fraction=0.0)
    dm.setup()
    seen: list[int] = []
    for rank in (0, 1):
        sampler = DistributedSampler(dm.train_set, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(
            dm.train_set, batch_size=4, sampler=sampler, collate_fn=dm.collate, num_workers=0
        )
        for batch in loader:
            _check_batch(batch, torch.int32)
            seen.extend(batch["index"].tolist())
    assert set(seen) == set(range(len(ct.files))) and len(seen) == len(ct.files)


def test_ct_like_ddp_two_processes(ct, tmp_path: Path) -> None:
    """The real DDP path (tests/ddp_check.py: gloo, 2 ranks) over the mixed-dtype CT folder."""
    out = tmp_path / "ddp"
    run_ddp_script("ddp_check.py", ct.root, ct.labels_csv, out, "1", timeout=180)
    n = json.loads((out / "train_size.json").read_text())
    assert n == len(ct.files)  # val_fraction=0, masks/ left out
    ranks = [json.loads((out / f"rank{r}_epoch0.json").read_text()) for r in (0, 1)]
    seen = {i for rank in ranks for batch in rank for i in batch}
    assert seen == set(range(n))


def test_sample_sets_mixed_in_one_folder(tmp_path: Path) -> None:
    """CT (int16 + uint16), CR (uint8) and greyscale US cine (uint8) of ct/siim/us samples."""
    ct_like(tmp_path / "ct", n_series=2, slices=3, size=32)
    siim_like(tmp_path / "cr", n=5, size=32)
    us_cine_like(tmp_path / "us", n=2, frames=3, size=32, jpeg=False)
    dm = DicomDataModule(
        tmp_path,
        frames="all",
        batch_size=4,
        num_workers=2,
        val_fraction=0.0,
        exclude=["ct/masks", "us/masks"],
    )
    dm.setup()
    assert dm.dataset.dtype == torch.int32
    assert len(dm.dataset) == 6 + 5 + 2 * 3
    seen: list[int] = []
    for batch in dm.train_dataloader():
        _check_batch(batch, torch.int32)
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(len(dm.dataset)))


# --------------------------------------------------------------------------- values that do not fit
def test_a_value_beyond_the_dataset_dtype_raises_naming_the_file(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder that ignores Bits Stored (values beyond int16) is an error, not a wrap-around."""
    import torchdicom.data._base as base

    real = base.read_frames_numpy

    def beyond(row: dict[str, Any], frames: Any, **kwargs: Any) -> np.ndarray:
        values = real(row, frames, **kwargs)
        if "cr2" in row["path"]:
            values = values.copy()
            values.flat[0] = 60000
        return values

    monkeypatch.setattr(base, "read_frames_numpy", beyond)
    ds = DicomDataset(mixed, frames="all")
    bad = next(i for i in range(len(ds)) if "cr2" in ds.rows[ds.locate(i)[0]]["path"])
    with pytest.raises(CorruptDicomError, match=r"cr2\.dcm: stored values \d+…60000 do not fit"):
        ds[bad]
    with pytest.raises(CorruptDicomError, match=r"cr2\.dcm"):
        ds.__getitems__([bad - 1, bad])  # the one-buffer path converts the same way
    skipping = DicomDataset(mixed, frames="all", on_error="skip")
    item = skipping[bad]
    assert item["substituted"] and skipping.skipped == 1


# --------------------------------------------------------------------------- Collate
def _item(image: torch.Tensor, path: str) -> dict[str, Any]:
    return {"image": image, "affine": torch.eye(4, dtype=torch.float64), "path": path}


def test_collate_refuses_mixed_image_dtypes() -> None:
    """Never torch's promotion RuntimeError, never a silent cast into the first item's dtype."""
    items = [
        _item(torch.full((1, 2, 2), 200, dtype=torch.uint8), "/m/mask.dcm"),
        _item(torch.full((1, 2, 2), 2170, dtype=torch.int16), "/c/ct.dcm"),
        _item(torch.full((1, 2, 2), 3000, dtype=torch.uint16), "/c/ct16.dcm"),
    ]
    with pytest.raises(ValueError, match=r"different dtypes: torch.uint8 /m/mask.dcm, torch.int16"):
        Collate()(items)
    with pytest.raises(ValueError, match="different dtypes"):
        Collate(pad=True)(items)
    # Tensor labels (e.g. multi-label targets) are checked the same way.
    labelled = [_item(torch.zeros(1, 2, 2, dtype=torch.int16), f"/f{k}") for k in range(2)]
    labelled[0]["label"] = torch.tensor([1, 0], dtype=torch.uint8)
    labelled[1]["label"] = torch.tensor([1, 0], dtype=torch.int16)
    with pytest.raises(ValueError, match="cannot batch labels of different dtypes"):
        Collate()(labelled)
    labelled[0]["label"] = labelled[1]["label"]
    assert Collate()(labelled)["label"].tolist() == [[1, 0], [1, 0]]


def test_collate_stacks_other_tensor_keys_in_their_own_dtype() -> None:
    items = [_item(torch.zeros(1, 2, 2, dtype=torch.int32), f"/f{k}") for k in range(3)]
    for it in items:
        it["slope"] = 1.0
        it["per_slice"] = torch.ones(5, dtype=torch.float64)
    batch = Collate()(items)
    assert batch["image"].dtype == torch.int32 and batch["image"].shape == (3, 1, 2, 2)
    assert batch["affine"].dtype == torch.float64 and batch["affine"].shape == (3, 4, 4)
    assert batch["per_slice"].dtype == torch.float64 and batch["per_slice"].shape == (3, 5)


# --------------------------------------------------------------------------- mask folders
def test_datamodule_leaves_the_mask_folder_out(ct) -> None:
    default = DicomDataModule(ct.root)
    default.setup()
    assert {Path(r["path"]) for r in default.dataset.rows} == set(ct.files)
    keep_all = DicomDataModule(ct.root, exclude=[])
    keep_all.setup()
    assert {Path(r["path"]) for r in keep_all.dataset.rows} == set(ct.files) | set(ct.masks)
    # All of them in one dataset: the masks are uint8, the CT int16/uint16 → int32, no cut.
    assert keep_all.dataset.dtype == torch.int32
