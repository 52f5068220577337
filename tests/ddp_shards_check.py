"""Two-process DDP fit streaming from shards on CPU (gloo), run by tests/test_shards.py.

Usage: ``python tests/ddp_shards_check.py MANIFEST OUT_DIR [EPOCHS]``

Trains a trivial model on a :class:`~torchdicom.data.shards.DicomShardDataset` (shuffled,
2 DataLoader workers per rank) with ``strategy="ddp"``, ``accelerator="cpu"``,
``devices=2`` (Lightning starts the second rank by re-running this script), and writes
``OUT_DIR/rank<R>_epoch<E>.json``: the item indices (``batch["index"]``) each rank trained
on, one list per batch. The model calls ``set_epoch`` at the start of every epoch
(Lightning sets the epoch of samplers only, not of iterable datasets).
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
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_check import ddp_trainer, leave_process_group

from torchdicom.data import Collate
from torchdicom.data.shards import DicomShardDataset


class _Recorder(pl.LightningModule):
    def __init__(self, out: Path, dataset: DicomShardDataset):
        super().__init__()
        self.out = out
        self.dataset = dataset
        self.layer = nn.Linear(1, 2)
        self.seen: list[list[int]] = []

    def on_train_epoch_start(self) -> None:
        self.dataset.set_epoch(self.current_epoch)

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
    dataset = DicomShardDataset(manifest, shuffle=True, seed=7, batch_size=2)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=Collate())
    trainer = ddp_trainer(epochs)
    trainer.fit(_Recorder(out, dataset), train_dataloaders=loader)
    if trainer.global_rank == 0:
        print(f"ddp_shards_check: rank 0 done, world size {trainer.world_size}, pid {os.getpid()}")
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
