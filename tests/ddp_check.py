"""Two-process DDP sampling check on CPU (gloo), run by tests/test_datamodule.py.

Usage: ``python tests/ddp_check.py DATA_DIR LABELS_CSV OUT_DIR [EPOCHS]``

Trains a trivial model on a :class:`~torchdicom.DicomDataModule` with
``strategy="ddp"``, ``accelerator="cpu"``, ``devices=2`` (Lightning starts the
second rank by re-running this script), and writes
``OUT_DIR/rank<R>_epoch<E>.json``: the dataset indices (``batch["index"]``)
each rank trained on, one list per batch, and ``OUT_DIR/rank<R>_index.json``: the
headers that rank parsed, whether it ran ``prepare_data`` and the index cache's
modification time after its ``setup``. The data folder must exist before the script
starts: both ranks read it, neither writes it.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

import torchdicom._indextable
from torchdicom.datamodule import DicomDataModule, default_index_cache
from torchdicom.transforms import Rescale

_parsed: list[str] = []
_scan_one = torchdicom._indextable._scan_one


def _counting_scan_one(path: str, salt: str | None = None) -> Any:
    _parsed.append(path)
    return _scan_one(path, salt)


# Small folders are parsed in the calling process: every header this rank parses passes here.
torchdicom._indextable._scan_one = _counting_scan_one


class _Recorder(pl.LightningModule):
    def __init__(self, out: Path):
        super().__init__()
        self.out = out
        self.layer = nn.Linear(1, 2)
        self.seen: list[list[int]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["index"].tolist())
        x = batch["image"].float().mean(dim=(1, 2, 3))[:, None]
        return nn.functional.cross_entropy(self.layer(x), batch["label"])

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        record = {
            "parsed": len(_parsed),
            "prepared": dm._prepared,
            "cache_mtime_ns": default_index_cache(dm.data).stat().st_mtime_ns,
        }
        (self.out / f"rank{self.global_rank}_index.json").write_text(json.dumps(record))

    def on_train_epoch_end(self) -> None:
        path = self.out / f"rank{self.global_rank}_epoch{self.current_epoch}.json"
        path.write_text(json.dumps(self.seen))
        self.seen = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def ddp_trainer(epochs: int) -> pl.Trainer:
    """Two CPU ranks (gloo), training only: no logger, checkpoints, progress or validation."""
    return pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def leave_process_group() -> None:
    """Tear the gloo group down before the interpreter exits.

    Left alive, its C++ threads are destroyed at exit while still joinable, and now and
    then a rank aborts ("terminate called without an active exception", SIGABRT) after
    fit has finished; the other rank then sees its peer crash.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    data, labels, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    epochs = int(argv[3]) if len(argv) > 3 else 2
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two ranks on a small CPU box
    warnings.filterwarnings("ignore")  # Lightning's hints about workers and logging
    dm = DicomDataModule(
        data,
        labels=labels,
        val_fraction=0.0,
        batch_size=4,
        num_workers=0,
        gpu_transforms=Rescale(),
    )
    trainer = ddp_trainer(epochs)
    trainer.fit(_Recorder(out), datamodule=dm)
    if trainer.global_rank == 0:
        assert dm.train_set is not None
        (out / "train_size.json").write_text(json.dumps(len(dm.train_set)))
        print(f"ddp_check: rank 0 done, world size {trainer.world_size}, pid {os.getpid()}")
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
