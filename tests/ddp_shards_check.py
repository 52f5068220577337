"""Two-process DDP fit streaming from shards on CPU (gloo), run by tests/test_shards.py.

Usage: ``python tests/ddp_shards_check.py MANIFEST OUT_DIR [EPOCHS]``

Trains a trivial model on ``DicomDataModule(shards=MANIFEST)`` (a shuffled
:class:`~torchdicom.data.shards.DicomShardDataset`, 2 DataLoader workers per rank) with
``strategy="ddp"``, ``accelerator="cpu"``, ``devices=2`` (Lightning starts the second rank
by re-running this script), and writes ``OUT_DIR/rank<R>_epoch<E>.json``: the item indices
(``batch["index"]``) each rank trained on, one list per batch. Nothing here calls
``set_epoch``: the DataModule's train loader sets the epoch from the trainer's each epoch.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_check import ddp_trainer, leave_process_group

from torchdicom.datamodule import DicomDataModule


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

    def on_train_epoch_end(self) -> None:
        path = self.out / f"rank{self.global_rank}_epoch{self.current_epoch}.json"
        path.write_text(json.dumps(self.seen))
        self.seen = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(argv: list[str]) -> None:
    manifest, out = argv[0], Path(argv[1])
    epochs = int(argv[2]) if len(argv) > 2 else 2
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two ranks on a small CPU box
    warnings.filterwarnings("ignore")  # Lightning's hints about workers and logging
    data = DicomDataModule(shards=manifest, seed=7, batch_size=2, num_workers=2, frames="all")
    trainer = ddp_trainer(epochs)
    trainer.fit(_Recorder(out), datamodule=data)
    if trainer.global_rank == 0:
        print(f"ddp_shards_check: rank 0 done, world size {trainer.world_size}, pid {os.getpid()}")
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
