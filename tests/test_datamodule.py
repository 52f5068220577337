"""DicomDataModule: patient-level splits, device-side transforms, DDP sampling."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.conftest import run_ddp_script
from torchdicom.datamodule import DicomDataModule, default_index_cache, patient_split
from torchdicom.samples import siim_like


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
    run_ddp_script("ddp_check.py", siim.root, siim.labels_csv, out, "2", timeout=120)
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
    # Local rank 0 parsed every header in prepare_data; rank 1 parsed none and wrote nothing.
    index = [json.loads((out / f"rank{r}_index.json").read_text()) for r in (0, 1)]
    assert index[0]["parsed"] == 23 and index[0]["prepared"]
    assert index[1]["parsed"] == 0 and not index[1]["prepared"]
    assert index[0]["cache_mtime_ns"] == index[1]["cache_mtime_ns"]


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


# --------------------------------------------------------------------------- prepare_data / setup
@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose headers are parsed (small folders are parsed in this process)."""
    import torchdicom._indextable as index_module

    seen: list[str] = []
    real = index_module._scan_one

    def spy(path: str, salt: str | None = None):
        seen.append(path)
        return real(path, salt)

    monkeypatch.setattr(index_module, "_scan_one", spy)
    return seen


def test_prepare_data_writes_the_index_and_setup_reads_it(siim, parses, _index_cache_home):
    dm = DicomDataModule(siim.root, labels=siim.labels_csv)
    cache = default_index_cache(siim.root)
    assert cache.is_relative_to(_index_cache_home) and not cache.exists()
    dm.prepare_data()
    assert cache.exists() and len(parses) == 23
    written = cache.stat().st_mtime_ns
    dm.setup("fit")
    assert len(parses) == 23  # setup parsed nothing: it read the index
    assert cache.stat().st_mtime_ns == written  # ...and did not rewrite it
    assert len(dm.dataset) == 23
    # A new run (a new process) parses nothing either: the cache is revalidated by size, mtime.
    again = DicomDataModule(siim.root, labels=siim.labels_csv)
    again.prepare_data()
    again.setup("fit")
    assert len(parses) == 23 and again.val_set.indices == dm.val_set.indices


def test_prepare_data_after_setup_does_nothing(siim, monkeypatch):
    """Each Trainer entry point (fit, validate, ...) calls prepare_data: no walk once set up."""
    import torchdicom.datamodule as datamodule_module

    dm = DicomDataModule(siim.root, labels=siim.labels_csv)
    dm.setup("fit")
    calls: list[Any] = []
    monkeypatch.setattr(datamodule_module, "scan", lambda *a, **k: calls.append(a))
    dm.prepare_data()
    assert calls == []


def test_index_cache_argument_and_a_changed_file(siim, parses, tmp_path):
    cache = tmp_path / "sub" / "index.parquet"
    dm = DicomDataModule(siim.root, labels=siim.labels_csv, index_cache=cache)
    dm.prepare_data()
    assert cache.exists() and len(parses) == 23
    changed = siim.files[0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    DicomDataModule(siim.root, labels=siim.labels_csv, index_cache=cache).setup("fit")
    assert parses[23:] == [str(changed)]  # only the changed file is parsed again


def test_setup_without_prepare_data_scans_with_progress(siim, parses, capfd):
    dm = DicomDataModule(siim.root, labels=siim.labels_csv)
    dm.setup("fit")  # by hand: no Trainer called prepare_data
    assert len(parses) == 23 and default_index_cache(siim.root).exists()
    assert "scanning DICOM headers" in capfd.readouterr().err


def test_other_ranks_never_write_the_index(siim, parses, capfd):
    cache = default_index_cache(siim.root)

    def rank1() -> DicomDataModule:
        dm = DicomDataModule(siim.root, labels=siim.labels_csv)
        dm.trainer = SimpleNamespace(local_rank=1, training=False)  # type: ignore[assignment]
        return dm

    # No index yet (prepare_data has not run): rank 1 parses for itself, shows no progress,
    # and writes nothing.
    dm = rank1()
    dm.setup("fit")
    assert len(dm.dataset) == 23 and len(parses) == 23 and not cache.exists()
    assert "scanning DICOM headers" not in capfd.readouterr().err
    # Local rank 0 writes the index; rank 1 then reads it, parsing nothing.
    DicomDataModule(siim.root, labels=siim.labels_csv).prepare_data()
    before = cache.read_bytes(), cache.stat().st_mtime_ns
    rank1().setup("fit")
    assert len(parses) == 46
    # A file changed after rank 0's scan: rank 1 parses it, the shared index stays as it was.
    changed = siim.files[1]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    rank1().setup("fit")
    assert parses[46:] == [str(changed)]
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == before


def test_default_index_cache_is_per_folder_and_salt(tmp_path, monkeypatch, _index_cache_home):
    a, b = tmp_path / "Smith_John", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.delenv("TORCHDICOM_SALT", raising=False)
    path_a = default_index_cache(a)
    assert path_a.parent == _index_cache_home / "torchdicom" / "index"
    assert "Smith" not in str(path_a)  # the folder's name is not in the file's
    assert path_a != default_index_cache(b)
    assert default_index_cache(a / ".." / "Smith_John") == path_a
    monkeypatch.setenv("TORCHDICOM_SALT", "site-secret")
    assert default_index_cache(a) != path_a


# --------------------------------------------------------------------------- state, hparams
def test_state_dict_round_trip_restores_split_and_batch_order(siim):
    def make(seed: int) -> DicomDataModule:
        return DicomDataModule(
            siim.root,
            labels=siim.labels_csv,
            val_fraction=0.3,
            test_fraction=0.2,
            seed=seed,
            batch_size=4,
            batching="by_size",
        )

    saved = make(5)
    saved.setup("fit")
    state = saved.state_dict()
    first = next(iter(saved.train_dataloader()))["index"].tolist()
    for load_before_setup in (False, True):
        resumed = make(0)  # another seed: the checkpoint's wins
        if load_before_setup:
            resumed.load_state_dict(state)
            resumed.setup("fit")
        else:
            resumed.setup("fit")
            assert resumed.val_set.indices != saved.val_set.indices
            resumed.load_state_dict(state)
        assert resumed.seed == 5
        for name in ("train_set", "val_set", "test_set"):
            assert getattr(resumed, name).indices == getattr(saved, name).indices
        assert next(iter(resumed.train_dataloader()))["index"].tolist() == first
        assert resumed.state_dict() == state


def test_load_state_dict_checks_classes_and_split(siim):
    dm = DicomDataModule(siim.root, labels=siim.labels_csv)
    dm.setup("fit")
    state = dm.state_dict()
    other = DicomDataModule(siim.root, labels=siim.labels_csv, exclude=["train/Pneumothorax"])
    other.setup("fit")
    with pytest.warns(UserWarning, match="split differs"):
        other.load_state_dict({k: v for k, v in state.items() if k != "classes"})
    with pytest.raises(ValueError, match="classes differ"):
        other.load_state_dict({**state, "classes": ["a", "b", "c"]})


def test_save_hyperparameters_keeps_plain_arguments(siim):
    from torchdicom.transforms import Rescale

    dm = DicomDataModule(
        siim.root,
        labels=siim.labels_csv,
        gpu_transforms=Rescale(),
        size=(8, 8),
        batch_size=4,
    )
    # Paths as strings: a checkpoint holding them loads with torch.load(weights_only=True).
    assert dm.hparams["data"] == str(siim.root)
    assert dm.hparams["labels"] == str(siim.labels_csv)
    assert dm.hparams["size"] == (8, 8) and dm.hparams["batch_size"] == 4
    assert dm.hparams["exclude"] is None and dm.hparams["cpu_transform"] is None
    assert "gpu_transforms" not in dm.hparams  # a module: not a hyperparameter
    assert dm._log_hyperparams is False  # not merged with the model's (its own `size`...)
    by_callable = DicomDataModule(siim.root, labels=lambda path: 0)
    assert "labels" not in by_callable.hparams and "data" in by_callable.hparams


def test_predict_dataloader_yields_every_item_in_index_order(siim):
    for batching in ("default", "by_size"):
        dm = DicomDataModule(
            siim.root, labels=siim.labels_csv, val_fraction=0.3, batch_size=5, batching=batching
        )
        dm.setup("predict")
        batches = list(dm.predict_dataloader())
        seen = [i for b in batches for i in b["index"].tolist()]
        assert sorted(seen) == list(range(23))
        if batching == "default":
            assert seen == list(range(23))
            paths = [p for b in batches for p in b["path"]]
            assert paths == sorted(paths) == [r["path"] for r in dm.dataset.rows]
        assert {"image", "label", "path", "index"} <= set(batches[0])
