"""Two-process DDP fit where the ranks may read different shard manifests, run by
tests/test_shard_ranks.py.

Usage: ``python tests/ddp_shards_mismatch.py MANIFEST RANK1_MANIFEST OUT_DIR``

Rank 0 streams ``DicomDataModule(shards=MANIFEST)``, rank 1 (which Lightning starts by
re-running this script, with ``LOCAL_RANK=1``) ``shards=RANK1_MANIFEST``; ``strategy="ddp"``,
``accelerator="cpu"``, ``devices=2``, one epoch. A rank whose ``setup`` raises
:class:`~torchdicom.errors.RankMismatchError` writes ``OUT_DIR/rank<R>_error.txt`` (the
message) and waits for the other rank to do the same before raising: rank 0's Lightning
kills rank 1 as soon as its own exception unwinds, and each rank's file is the test's
evidence that it raised. A rank that trains writes ``OUT_DIR/rank<R>_trained.json`` (its
batch count).
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
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_check import ddp_trainer, leave_process_group

from torchdicom.datamodule import DicomDataModule
from torchdicom.errors import RankMismatchError


class _Reporting(DicomDataModule):
    """Writes this rank's RankMismatchError before it leaves setup."""

    def __init__(self, out: Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.out = out

    def setup(self, stage: str | None = None) -> None:
        try:
            super().setup(stage)
        except RankMismatchError as exc:
            (self.out / f"rank{dist.get_rank()}_error.txt").write_text(str(exc))
            dist.barrier()  # every rank raised (the check is collective): both files exist
            raise


class _Counter(pl.LightningModule):
    def __init__(self, out: Path):
        super().__init__()
        self.out = out
        self.layer = nn.Linear(1, 2)
        self.batches = 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.batches += 1
        x = batch["image"].float().mean(dim=(1, 2, 3))[:, None]
        return nn.functional.cross_entropy(self.layer(x), batch["label"])

    def on_train_epoch_end(self) -> None:
        (self.out / f"rank{self.global_rank}_trained.json").write_text(json.dumps(self.batches))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(argv: list[str]) -> None:
    manifests, out = argv[:2], Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two ranks on a small CPU box
    warnings.filterwarnings("ignore")  # Lightning's hints about workers and logging
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    data = _Reporting(out, shards=manifests[rank], seed=7, batch_size=2, num_workers=0)
    trainer = ddp_trainer(1)
    trainer.fit(_Counter(out), datamodule=data)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
