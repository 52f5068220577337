"""DicomDataModule under both Lightning packages: ``pytorch_lightning`` and ``lightning``.

Each package's Trainer takes only datamodules that are instances of its own
``LightningDataModule``; DicomDataModule derives from both. A short fit, a resume from a
checkpoint and a predict run under each installed package, with a LightningModule and a
Trainer from that package.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from torchdicom.datamodule import DicomDataModule
from torchdicom.samples import siim_like

PACKAGES = ["pytorch_lightning", "lightning.pytorch"]


@pytest.fixture(autouse=True)
def _index_cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache_home")))


@pytest.fixture(scope="module")
def siim(tmp_path_factory: pytest.TempPathFactory):
    return siim_like(tmp_path_factory.mktemp("siim"), n=14, size=16)


@pytest.fixture(params=PACKAGES)
def lightning(request: pytest.FixtureRequest):
    return pytest.importorskip(request.param)


class _Record(nn.Module):
    """Records the image dtype it receives, then converts to float."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.dtypes.append(batch["image"].dtype)
        return {**batch, "image": batch["image"].float()}


def _model(lightning: Any) -> Any:
    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 2)

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            x = batch["image"].mean(dim=(1, 2, 3))[:, None]
            return nn.functional.cross_entropy(self.layer(x), batch["label"])

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            self.training_step(batch, batch_idx)

        def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            return batch["index"]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Tiny()


def _trainer(lightning: Any, **kwargs: Any) -> Any:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return lightning.Trainer(**{**settings, **kwargs})


def test_is_a_datamodule_of_every_installed_package(lightning):
    assert issubclass(DicomDataModule, lightning.LightningDataModule)
    helpers = importlib.import_module(lightning.__name__ + ".utilities.model_helpers")
    dm = DicomDataModule(".")
    # The hooks Lightning looks up on a datamodule: ours where we define them, and the
    # package's own (a model's batch hooks still run) where we do not.
    overridden = {
        "prepare_data": True,
        "train_dataloader": True,
        "predict_dataloader": True,
        "transfer_batch_to_device": True,
        "on_after_batch_transfer": True,
        "on_before_batch_transfer": False,
        "teardown": False,
    }
    assert {name: helpers.is_overridden(name, dm) for name in overridden} == overridden


def test_fit_resume_and_predict(lightning, siim, tmp_path: Path):
    gpu, train_gpu = _Record(), _Record()

    def make(seed: int) -> DicomDataModule:
        return DicomDataModule(
            siim.root,
            labels=siim.labels_csv,
            batch_size=4,
            val_fraction=0.3,
            seed=seed,
            gpu_transforms=gpu,
            train_gpu_transforms=train_gpu,
        )

    dm = make(seed=4)
    trainer = _trainer(lightning)
    trainer.fit(_model(lightning), datamodule=dm)
    assert dm._prepared  # the Trainer called prepare_data
    assert gpu.dtypes == [torch.uint8] * 3  # 2 train + 1 val batch, stored integers
    assert train_gpu.dtypes == [torch.float32] * 2  # training batches only
    checkpoint = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)  # plain data only
    assert saved["DicomDataModule"] == dm.state_dict()
    assert saved["datamodule_hyper_parameters"]["data"] == str(siim.root)

    # Resume with another seed: the checkpoint's split comes back before any DataLoader.
    other = make(seed=0)
    other.setup("fit")
    assert other.val_set.indices != dm.val_set.indices  # seed 0 alone splits otherwise
    resumed = make(seed=0)
    _trainer(lightning, max_epochs=2).fit(
        _model(lightning), datamodule=resumed, ckpt_path=checkpoint
    )
    assert resumed.seed == 4 and resumed.val_set.indices == dm.val_set.indices

    rebuilt = DicomDataModule.load_from_checkpoint(checkpoint)
    assert rebuilt.seed == 4 and rebuilt.labels == str(siim.labels_csv)

    predicted = _trainer(lightning).predict(_model(lightning), datamodule=resumed)
    assert torch.cat(predicted).tolist() == list(range(14))  # every item, in order


def test_one_package_installed_is_enough() -> None:
    """With ``lightning`` absent, the class derives from pytorch_lightning's alone."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['lightning'] = None\n"  # as if not installed
        "from torchdicom.datamodule import DicomDataModule\n"
        "print(sorted({c.__module__.split('.')[0] for c in DicomDataModule.__mro__}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split("\n")[-2] == "['builtins', 'pytorch_lightning', 'torchdicom']"
