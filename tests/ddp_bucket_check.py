"""Two-process DDP check of ``batching="by_size"`` on CPU (gloo), run by tests/test_sampler.py.

Usage: ``python tests/ddp_bucket_check.py DATA_DIR LABELS_CSV OUT_DIR``

Like ``tests/ddp_check.py`` (whose recorder it uses): trains two epochs with
``strategy="ddp"``, ``devices=2`` on a :class:`~torchdicom.DicomDataModule` with
``batching="by_size"``, and writes ``OUT_DIR/rank<R>_epoch<E>.json`` (the dataset
indices of each batch) and ``OUT_DIR/shapes<R>.json`` (each batch's image shape).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_check import _Recorder, ddp_trainer, leave_process_group

from torchdicom.datamodule import DicomDataModule


class _ShapeRecorder(_Recorder):
    def __init__(self, out: Path):
        super().__init__(out)
        self.shapes: list[list[int]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.shapes.append(list(batch["image"].shape))
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> None:
        (self.out / f"shapes{self.global_rank}.json").write_text(json.dumps(self.shapes))


def main(argv: list[str]) -> None:
    data, labels, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two ranks on a small CPU box
    warnings.filterwarnings("ignore")
    dm = DicomDataModule(
        data, labels=labels, val_fraction=0.0, batch_size=2, batching="by_size", seed=3
    )
    ddp_trainer(2).fit(_ShapeRecorder(out), datamodule=dm)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
