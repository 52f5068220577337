"""The main job: index sample (or your) DICOM data, train a small CNN, draw pictures.

``torchdicom demo`` / ``make demo`` generates the three sample sets (cached),
builds a :class:`~torchdicom.DicomDataModule` over the chest radiographs with
device-side preprocessing and augmentation, trains a small CNN with Lightning
for a bounded run, prints data throughput and validation metrics, and writes
PNG figures: a window-preset grid of a CT slice, the CT histogram before and
after frequency-histogram normalisation, and a frame strip of an ultrasound
cine. ``--data DIR`` runs the same on a folder of your own.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from torchdicom.datamodule import DicomDataModule
from torchdicom.index import DicomIndex, scan
from torchdicom.io.frames import read_frames, scaled_px

__all__ = ["DemoClassifier", "DemoReport", "run_demo"]


class DemoClassifier(pl.LightningModule):
    """A small CNN for (B, C, H, W) float images → class logits; inputs are resized to ``size``.

    Three conv + max-pool blocks and a linear head over the flattened map: the
    head keeps *where* a finding is (a pneumothorax sits at a lung apex), which
    global average pooling would throw away on a few hundred training images.
    """

    def __init__(self, in_channels: int, n_classes: int, size: int = 64, lr: float = 1e-3):
        super().__init__()
        if size % 8:
            raise ValueError(f"size must be a multiple of 8. Got: {size}")
        self.save_hyperparameters()
        widths = (in_channels, 16, 32, 32)
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(widths[-1] * (size // 8) ** 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Area averaging: a faithful thumbnail of the windowed image.
        x = F.interpolate(x, size=(self.hparams.size, self.hparams.size), mode="area")
        return self.head(self.features(x))

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        bs = len(batch["label"])
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=bs)
        self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=bs)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


@dataclass
class DemoReport:
    """What the demo measured and wrote."""

    images_per_s: float
    val_metrics: dict[str, float]
    figures: list[Path]
    train_items: int
    val_items: int


def _throughput(dm: DicomDataModule, max_batches: int = 20) -> float:
    """Images per second through the training DataLoader plus the device-side transforms."""
    loader = dm.train_dataloader()
    n, t0 = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        batch = dm.on_after_batch_transfer(batch, 0)
        n += len(batch["image"])
        if i + 1 >= max_batches:
            break
    return n / max(time.perf_counter() - t0, 1e-9)


def _figures(out: Path, ct_files: list[Path], us_files: list[Path]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from torchdicom import viz
    from torchdicom.transforms.functional import freqhist_bins

    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    if ct_files:
        # A slice from the middle of the first series shows lungs, soft tissue and bone.
        path = ct_files[len(ct_files) // 2]
        hu = scaled_px(path)
        fig = viz.show_windows(hu)
        fig.savefig(out / "ct_windows.png", dpi=80)
        written.append(out / "ct_windows.png")
        # freqhist_bins pads each image's bins to a common length by repeating
        # the last edge; plot_hist wants only the strictly increasing ones.
        fh = freqhist_bins(hu[None, None])
        bins = fh.bins[0, : int(fh.lengths[0])]
        fig = viz.plot_hist(hu, bins=bins)
        fig.savefig(out / "ct_histogram.png", dpi=80)
        written.append(out / "ct_histogram.png")
    multi = [p for p in us_files if _frames(p) > 1]
    if multi:
        fig = viz.show_frames(multi[0], n=8)
        fig.savefig(out / "us_frames.png", dpi=80)
        written.append(out / "us_frames.png")
    return written


def _frames(path: Path) -> int:
    from torchdicom.io.frames import row_for_path

    return int(row_for_path(path)["frames"])


def _print(*args: Any) -> None:
    print(*args, flush=True)


def train_classifier(
    data: Path,
    labels: Path | None,
    *,
    epochs: int,
    batch_size: int,
    num_workers: int,
    max_time_s: float,
    ct_like: bool = False,
) -> tuple[DicomDataModule, dict[str, float], float]:
    """Build the DataModule, measure throughput, train, validate."""
    from torchdicom.transforms import DicomAugment, FreqHistNormalize, MultiWindow, Rescale

    if ct_like:
        gpu = nn.Sequential(
            Rescale(), MultiWindow(["lungs", "mediastinum", "spine_bone"], freqhist=False)
        )
        channels = 3
    else:
        gpu = nn.Sequential(Rescale(), FreqHistNormalize())
        channels = 1
    dm = DicomDataModule(
        data,
        labels=labels,
        frames="first",
        val_fraction=0.2,
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # no worker restart cost every epoch
        gpu_transforms=gpu,
        train_gpu_transforms=DicomAugment(),
        masks=None,
    )
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    assert dm.dataset is not None
    codes = dm.dataset.label_codes()
    classes = dm.classes or [str(c) for c in range(int(max(codes)) + 1)]
    _print(
        f"training data: {len(dm.train_set)} train / {len(dm.val_set)} val images, split by patient;"
        f" classes: {classes}"
    )
    ips = _throughput(dm)
    _print(f"data throughput (DataLoader + device-side transforms): {ips:.0f} images/s")
    model = DemoClassifier(channels, len(classes))
    trainer = pl.Trainer(
        max_epochs=epochs,
        max_time={"seconds": int(max_time_s)},
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=dm)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0] if len(dm.val_set) else {}
    return dm, {k: float(v) for k, v in metrics.items()}, ips


def run_demo(
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "demo_out",
    *,
    epochs: int = 15,
    batch_size: int = 16,
    num_workers: int = 2,
    max_time_s: float = 90.0,
    small: bool = False,
    samples_root: str | os.PathLike[str] | None = None,
) -> DemoReport:
    """Run the demo; see the module docstring.

    Args:
        data: your own folder (``None``: the generated sample sets). A
            ``labels.csv`` (``file,label``) in it enables training.
        out: where the PNG figures go.
        epochs, batch_size, num_workers: training settings.
        max_time_s: bound on the training time.
        small: tiny sample sets (tests).
        samples_root: where sample sets are cached.
    """
    from torchdicom.samples import demo_data

    out = Path(out)
    torch.manual_seed(0)
    if data is None:
        t0 = time.perf_counter()
        sets = demo_data(samples_root, small=small)
        verb = "reused" if sets.reused else "generated"
        _print(f"sample data {verb} in {time.perf_counter() - t0:.1f}s under {sets.root}")
        for name, s in (
            ("chest X-ray (SIIM-like)", sets.siim),
            ("CT (TCIA-like)", sets.ct),
            ("ultrasound cine", sets.us),
        ):
            index = scan(s.files, progress=False)
            _print(f"\n== {name}: {s.root}\n{index.summary()}")
            _show_frame_stats(index)
        train_root, labels = sets.siim.root, sets.siim.labels_csv
        ct_files, us_files = sets.ct.files, sets.us.files
        ct_mode = False
    else:
        root = Path(data)
        index = scan(root, progress=True)
        _print(f"\n== {root}\n{index.summary()}")
        _show_frame_stats(index)
        labels_csv = root / "labels.csv"
        train_root, labels = root, labels_csv if labels_csv.exists() else None
        paths = [Path(p) for p in index.df["path"]]
        ct_files = [p for p, m in zip(paths, index.df["modality"]) if m == "CT"]
        us_files = [p for p, f in zip(paths, index.df["frames"]) if f > 1]
        ct_mode = bool(len(index.df)) and (index.df["modality"] == "CT").mean() > 0.5

    metrics: dict[str, float] = {}
    ips = math.nan
    train_items = val_items = 0
    if labels is not None:
        _print("\n== training a small CNN (Lightning)")
        dm, metrics, ips = train_classifier(
            train_root,
            labels,
            epochs=epochs,
            batch_size=batch_size,
            num_workers=num_workers,
            max_time_s=max_time_s,
            ct_like=ct_mode,
        )
        train_items = len(dm.train_set or [])
        val_items = len(dm.val_set or [])
        _print("validation: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    else:
        _print("\nno labels.csv (columns file,label) in the folder: skipping training")

    figures = _figures(out, ct_files, us_files)
    _print("\nfigures: " + ", ".join(str(p) for p in figures))
    return DemoReport(ips, metrics, figures, train_items, val_items)


def _show_frame_stats(index: DicomIndex, n: int = 3) -> None:
    """Decode a few frames and print their statistics (stored and modality values)."""
    rows = index.rows()
    step = max(1, len(rows) // n)
    for row in rows[::step][:n]:
        stored = read_frames(row, 0).numpy()  # numpy: torch lacks reductions for uint16/uint32
        hu = scaled_px(row, 0)
        _print(
            f"  {Path(row['path']).name}: frame 0 {tuple(stored.shape[1:])} {stored.dtype}"
            f" stored [{stored.min()}, {stored.max()}],"
            f" scaled mean {hu.mean().item():.1f} ± {hu.std().item():.1f}"
        )
