"""DicomDataModule: patient-level splits, device-side transforms, DDP sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from torchdicom.datamodule import DicomDataModule, patient_split
from torchdicom.samples import siim_like

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _index_cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Default index caches go to a fresh folder per test, not the user's ~/.cache."""
    home = tmp_path_factory.mktemp("cache_home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def siim(tmp_path_factory: pytest.TempPathFactory):
    # 23 images of 1–3 per patient: an odd count, so 2 DDP ranks need padding.
    return siim_like(tmp_path_factory.mktemp("siim"), n=23, size=16)


# --------------------------------------------------------------------------- patient_split
def _groups(n_groups: int = 120, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"p{g}" for g in range(n_groups) for _ in range(int(rng.integers(1, 4)))]


def test_patient_split_no_overlap_covers_all_and_sizes():
    groups = _groups()
    train, val, test = patient_split(groups, 0.2, 0.1, seed=3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(groups)))
    owners = [{groups[i] for i in part} for part in (train, val, test)]
    assert not owners[0] & owners[1] and not owners[0] & owners[2] and not owners[1] & owners[2]
    # Whole patients are assigned until a split reaches its share: overshoot < one patient.
    n = len(groups)
    assert round(0.1 * n) <= len(test) < round(0.1 * n) + 3
    assert round(0.2 * n) <= len(val) < round(0.2 * n) + 3


def test_patient_split_deterministic_and_order_independent():
    groups = _groups()
    a = patient_split(groups, 0.2, 0.1, seed=7)
    b = patient_split(groups, 0.2, 0.1, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = patient_split(groups, 0.2, 0.1, seed=8)
    assert not np.array_equal(a[1], other[1])
    # The same patients land in the same split whatever the item order.
    perm = np.random.default_rng(1).permutation(len(groups))
    shuffled = [groups[k] for k in perm]
    c = patient_split(shuffled, 0.2, 0.1, seed=7)
    assert {groups[i] for i in a[1]} == {shuffled[i] for i in c[1]}


def test_patient_split_empty_groups_and_bad_fractions():
    train, val, test = patient_split([""] * 10, 0.3, 0.0)
    assert len(val) == 3 and len(train) == 7 and len(test) == 0
    for bad in ((1.0, 0.0), (-0.1, 0.0), (0.6, 0.5)):
        with pytest.raises(ValueError, match="fraction"):
            patient_split(["a"], *bad)


# --------------------------------------------------------------------------- setup
def _patients(dm: DicomDataModule, subset) -> set[str]:
    assert dm.dataset is not None
    return {dm.dataset.rows[dm.dataset.locate(i)[0]]["patient_hash"] for i in subset.indices}


def test_setup_splits_by_patient_deterministically(siim):
    def make(seed: int) -> DicomDataModule:
        dm = DicomDataModule(
            siim.root, labels=siim.labels_csv, val_fraction=0.25, test_fraction=0.2, seed=seed
        )
        dm.setup("fit")
        return dm

    dm = make(0)
    assert dm.classes == ["No Pneumothorax", "Pneumothorax"]
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sum(sizes) == 23
    assert sizes[1] >= round(0.25 * 23) and sizes[2] >= round(0.2 * 23)
    parts = [_patients(dm, s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    again = make(0)
    assert again.val_set.indices == dm.val_set.indices
    assert again.test_set.indices == dm.test_set.indices
    state = dm.state_dict()
    assert {k: state[k] for k in ("seed", "val_fraction", "test_fraction")} == {
        "seed": 0,
        "val_fraction": 0.25,
        "test_fraction": 0.2,
    }
    assert state["split"] == {**sizes_by_name(dm), "digest": again.state_dict()["split"]["digest"]}
    assert state["classes"] == dm.classes
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8  # 8-bit CR stays 8-bit on the host


def sizes_by_name(dm: DicomDataModule) -> dict[str, int]:
    return {"train": len(dm.train_set), "val": len(dm.val_set), "test": len(dm.test_set)}


def test_setup_from_parquet_index_equals_directory(siim, tmp_path):
    from torchdicom.index import scan

    index_file = tmp_path / "index.parquet"
    scan(siim.root, progress=False).to_parquet(index_file)
    from_dir = DicomDataModule(siim.root, labels=siim.labels_csv, val_fraction=0.3)
    from_index = DicomDataModule(index_file, labels=siim.labels_csv, val_fraction=0.3)
    for dm in (from_dir, from_index):
        dm.setup("fit")
    assert [r["path"] for r in from_index.dataset.rows] == [
        r["path"] for r in from_dir.dataset.rows
    ]
    assert from_index.dataset.label_codes() == from_dir.dataset.label_codes()
    assert from_index.val_set.indices == from_dir.val_set.indices


def test_loaders_need_setup(siim):
    with pytest.raises(RuntimeError, match="setup"):
        DicomDataModule(siim.root).train_dataloader()
    with pytest.raises(ValueError, match="batch_size"):
        DicomDataModule(siim.root, batch_size=0)


# --------------------------------------------------------------------------- device side
class _Record(nn.Module):
    """Records the image dtype it receives, then converts to float (what Rescale would)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.dtypes.append(batch["image"].dtype)
        return {**batch, "image": batch["image"].float()}


def test_on_after_batch_transfer_train_transforms_only_when_training(siim):
    gpu, train_gpu = _Record(), _Record()
    dm = DicomDataModule(
        siim.root, labels=siim.labels_csv, gpu_transforms=gpu, train_gpu_transforms=train_gpu
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(batch["path"], list)  # non-tensors stay as they are
    out = dm.on_after_batch_transfer(batch, 0)  # no trainer: not training
    assert out["image"].dtype == torch.float32
    assert gpu.dtypes == [torch.uint8] and train_gpu.dtypes == []
    dm.trainer = SimpleNamespace(training=True)  # type: ignore[assignment]
    dm.on_after_batch_transfer(batch, 0)
    assert len(gpu.dtypes) == 2 and train_gpu.dtypes == [torch.float32]
    dm.trainer = SimpleNamespace(training=False)  # type: ignore[assignment]
    dm.on_after_batch_transfer(batch, 0)
    assert len(gpu.dtypes) == 3 and len(train_gpu.dtypes) == 1


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 2)
        self.stages: list[tuple[str, torch.dtype]] = []

    def _loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        self.stages.append((stage, batch["image"].dtype))
        x = batch["image"].mean(dim=(1, 2, 3))[:, None]
        return nn.functional.cross_entropy(self.layer(x), batch["label"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._loss(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_feeds_raw_integers_to_the_device_hook(siim):
    gpu, train_gpu = _Record(), _Record()
    dm = DicomDataModule(
        siim.root,
        labels=siim.labels_csv,
        batch_size=4,
        gpu_transforms=gpu,
        train_gpu_transforms=train_gpu,
    )
    model = _Tiny()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    # Stored uint8 reached the hook; the transforms made the floats the model saw.
    assert gpu.dtypes == [torch.uint8] * 3  # 2 train + 1 val batch
    assert train_gpu.dtypes == [torch.float32] * 2  # training batches only
    assert Counter(stage for stage, _ in model.stages) == {"train": 2, "val": 1}
    assert {dtype for _, dtype in model.stages} == {torch.float32}


# --------------------------------------------------------------------------- DDP
def test_ddp_two_ranks_cover_every_sample_once(siim, tmp_path):
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "ddp_check.py"),
            str(siim.root),
            str(siim.labels_csv),
            str(out),
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    n = json.loads((out / "train_size.json").read_text())
    assert n == 23  # val_fraction=0: every image trains
    train_positions = set(range(23))  # dataset index == position when nothing is held out
    orders = []
    for epoch in (0, 1):
        ranks = [json.loads((out / f"rank{r}_epoch{epoch}.json").read_text()) for r in (0, 1)]
        # Equal batch counts: no rank waits at a collective for a missing batch.
        assert len(ranks[0]) == len(ranks[1]) == 3
        seen = [i for rank in ranks for batch in rank for i in batch]
        assert set(seen) == train_positions
        # DistributedSampler pads 23 to 24 by repeating one sample; nothing else repeats.
        counts = Counter(seen)
        assert len(seen) == 24 and sorted(counts.values()) == [1] * 22 + [2]
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch (set_epoch)


def test_lightning_cli_builds_the_datamodule_from_plain_arguments(tmp_path: Path) -> None:
    """LightningCLI parses the constructor: a labels CSV path stays a path."""
    from pytorch_lightning.cli import LightningCLI

    from torchdicom.demo import DemoClassifier
    from torchdicom.samples import siim_like

    sample = siim_like(tmp_path / "siim", n=12, size=32)
    cli = LightningCLI(
        DemoClassifier,
        DicomDataModule,
        run=False,
        save_config_callback=None,
        args=[
            "--model.in_channels=1",
            "--model.n_classes=2",
            f"--data.data={sample.root}",
            f"--data.labels={sample.labels_csv}",
            "--data.batch_size=4",
            "--data.val_fraction=0.25",
        ],
    )
    dm = cli.datamodule
    assert dm.labels == str(sample.labels_csv)
    dm.setup("fit")
    assert dm.classes == ["No Pneumothorax", "Pneumothorax"]
    assert len(dm.train_set) + len(dm.val_set) == 12
