"""Size bucketing (torchdicom.data.sampler) alone, under DDP, under Lightning's DDP sampler
path, and the DataModule training on a folder of mixed sizes and channels."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from pytorch_lightning.trainer.connectors.data_connector import _update_dataloader
from pytorch_lightning.trainer.states import RunningStage
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from tests.conftest import run_ddp_script
from tests.test_resize import MIXED, _write_mixed
from torchdicom.data import DicomDataset, SizeBucketBatchSampler
from torchdicom.data.sampler import item_shapes
from torchdicom.datamodule import DicomDataModule

N = 2 * len(MIXED)  # items of the mixed folder
KEYS = [(1, 30, 20)] * 7 + [(3, 10, 10)] * 5 + [(1, 20, 30)] * 2 + [(1, 8, 8)]


def _epoch(sampler: SizeBucketBatchSampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def _ranks(keys: list, world: int, epoch: int = 0, **kw: Any) -> list[list[list[int]]]:
    return [
        _epoch(SizeBucketBatchSampler(keys, num_replicas=world, rank=r, **kw), epoch)
        for r in range(world)
    ]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two of each size (a/img, b/img): buckets of two items.
    root = tmp_path_factory.mktemp("mixed")
    for copy in ("a", "b"):
        _write_mixed(root / copy, with_masks=False)
    return root


class TestSingleProcess:
    def test_batches_hold_one_key_and_every_item_once(self) -> None:
        sampler = SizeBucketBatchSampler(KEYS, batch_size=3, seed=1)
        batches = _epoch(sampler)
        assert len(batches) == len(sampler) == 3 + 2 + 1 + 1
        assert all(len({KEYS[i] for i in b}) == 1 for b in batches)
        assert all(len(b) <= 3 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(KEYS)))

    def test_seeded_and_reshuffled_per_epoch(self) -> None:
        a = SizeBucketBatchSampler(KEYS, batch_size=3, seed=1)
        b = SizeBucketBatchSampler(KEYS, batch_size=3, seed=1)
        assert _epoch(a, 0) == _epoch(b, 0)
        assert _epoch(a, 0) != _epoch(a, 1)  # within and across buckets
        assert _epoch(a, 0) != _epoch(SizeBucketBatchSampler(KEYS, batch_size=3, seed=2), 0)
        orders = {tuple(map(tuple, _epoch(a, e))) for e in range(10)}
        assert len(orders) == 10
        first_keys = {KEYS[_epoch(a, e)[0][0]] for e in range(20)}
        assert len(first_keys) > 1  # the buckets are interleaved, not one after the other

    def test_no_shuffle_is_index_order(self) -> None:
        sampler = SizeBucketBatchSampler(KEYS, batch_size=4, shuffle=False)
        assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10], [11], [12, 13], [14]]

    def test_drop_last(self) -> None:
        sampler = SizeBucketBatchSampler(KEYS, batch_size=3, drop_last=True)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2 + 1
        assert all(len(b) == 3 for b in batches)

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match="batch_size"):
            SizeBucketBatchSampler(KEYS, batch_size=0)
        with pytest.raises(ValueError, match="rank"):
            SizeBucketBatchSampler(KEYS, batch_size=2, num_replicas=2, rank=2)

    def test_is_a_batch_sampler_for_the_dataloader(self, mixed: Path) -> None:
        ds = DicomDataset(mixed, frames="first")
        sampler = SizeBucketBatchSampler(item_shapes(ds), batch_size=4)
        assert isinstance(sampler, BatchSampler)
        batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=_collate))
        assert sorted(p for b in batches for p in b["path"]) == sorted(r["path"] for r in ds.rows)
        assert {tuple(b["image"].shape[1:]) for b in batches} == {
            (spp, h, w) for _, h, w, spp, *_ in MIXED
        }

    def test_item_shapes_follow_the_size_policy_and_subsets(self, mixed: Path) -> None:
        ds = DicomDataset(mixed, frames="first", size=(16, 24), channels=3)
        assert set(item_shapes(ds)) == {(3, 16, 24)}
        plain = DicomDataset(mixed, frames="first")
        subset = torch.utils.data.Subset(plain, [2, 0])
        full = item_shapes(plain)
        assert item_shapes(subset) == [full[2], full[0]]
        assert full == [tuple(plain[i]["image"].shape) for i in range(len(plain))]
        with pytest.raises(TypeError, match="torchdicom dataset"):
            item_shapes(torch.utils.data.TensorDataset(torch.zeros(2)))


def _collate(items: list[dict]) -> dict:
    from torchdicom.data import Collate

    return Collate()(items)


class TestDistributed:
    @pytest.mark.parametrize("world", [2, 3, 4])
    @pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
    def test_equal_batch_counts_every_item_once(self, world: int, batch_size: int) -> None:
        for epoch in (0, 1):
            ranks = _ranks(KEYS, world, epoch, batch_size=batch_size, seed=3)
            counts = {len(r) for r in ranks}
            assert len(counts) == 1  # no rank waits at a collective
            expected = len(SizeBucketBatchSampler(KEYS, batch_size, num_replicas=world, rank=0))
            assert counts == {expected}
            seen = [i for r in ranks for b in r for i in b]
            if len(KEYS) >= expected * world:
                assert sorted(seen) == list(range(len(KEYS)))  # each item once
            else:  # too few items to fill every rank's batches: padding repeats some
                assert set(seen) == set(range(len(KEYS))) and len(seen) == expected * world
            assert all(len({KEYS[i] for i in b}) == 1 for r in ranks for b in r)
            assert all(0 < len(b) <= batch_size for r in ranks for b in r)

    def test_fewer_items_than_ranks_repeat_items(self) -> None:
        ranks = _ranks([(1, 2, 2)] * 2 + [(3, 2, 2)], 4, batch_size=2)
        assert [len(r) for r in ranks] == [1, 1, 1, 1]
        seen = Counter(i for r in ranks for b in r for i in b)
        assert set(seen) == {0, 1, 2} and sum(seen.values()) == 4

    def test_drop_last_equal_full_batches(self) -> None:
        ranks = _ranks(KEYS, 2, batch_size=2, drop_last=True)
        assert len(ranks[0]) == len(ranks[1]) == 3  # 3 + 2 + 1 full batches of 2, over 2 ranks
        assert all(len(b) == 2 for r in ranks for b in r)

    def test_len_matches_iteration_everywhere(self) -> None:
        for n_keys, world, bs, drop in itertools.product((1, 4, 9), (1, 2, 3), (1, 2, 4), (0, 1)):
            keys = [(k % 3,) for k in range(n_keys * 2 + 1)]
            for rank in range(world):
                s = SizeBucketBatchSampler(
                    keys, bs, drop_last=bool(drop), num_replicas=world, rank=rank, seed=5
                )
                assert len(list(s)) == len(s)


class TestLightningDdpPath:
    """Lightning re-creates the batch sampler with a DistributedSampler on each rank."""

    def _rank_loaders(self, mixed: Path, world: int) -> list[DataLoader]:
        dm = DicomDataModule(mixed, batching="by_size", batch_size=2, val_fraction=0.0, seed=4)
        dm.setup("fit")
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = dm.train_dataloader()  # as the trainer asks for it
        assert isinstance(loader.batch_sampler, SizeBucketBatchSampler)
        out = []
        for rank in range(world):
            dist = DistributedSampler(
                loader.dataset, num_replicas=world, rank=rank, shuffle=True, seed=0
            )
            out.append(_update_dataloader(loader, dist, mode=RunningStage.TRAINING))
        return out

    def test_ranks_cover_every_item_once_with_equal_batch_counts(self, mixed: Path) -> None:
        loaders = self._rank_loaders(mixed, world=2)
        orders = []
        for epoch in (0, 1):
            per_rank = []
            for loader in loaders:
                _set_sampler_epoch(loader, epoch)  # what the fit loop does each epoch
                assert isinstance(loader.batch_sampler, SizeBucketBatchSampler)
                assert loader.batch_sampler.num_replicas == 2
                per_rank.append([b["index"].tolist() for b in loader])
                for b in loader:
                    assert b["image"].shape[0] == len(b["path"])  # stacked: one size per batch
            assert len(per_rank[0]) == len(per_rank[1]) == len(loaders[0].batch_sampler)
            seen = [i for rank in per_rank for b in rank for i in b]
            assert sorted(seen) == list(range(N))
            orders.append(seen)
        assert orders[0] != orders[1]  # set_epoch reached the bucket sampler


# --------------------------------------------------------------------------- training
class _MeanModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: set[torch.dtype] = set()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.shapes.append(tuple(batch["image"].shape))
        self.dtypes.add(batch["image"].dtype)
        x = batch["image"].float().mean(dim=tuple(range(1, batch["image"].ndim)))[:, None]
        return self.layer(x / 1000).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(dm: DicomDataModule) -> _MeanModel:
    model = _MeanModel()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    return model


@pytest.mark.filterwarnings("ignore")
def test_datamodule_trains_mixed_sizes_and_channels(mixed: Path) -> None:
    with pytest.raises(ValueError, match=r"channels=1.*channels=3"):
        DicomDataModule(mixed, val_fraction=0.0, batch_size=2).setup("fit")
    model = _fit(DicomDataModule(mixed, size=(64, 64), channels=1, batch_size=2, val_fraction=0.0))
    assert set(model.shapes) <= {(2, 1, 64, 64), (1, 1, 64, 64)}
    assert sum(s[0] for s in model.shapes) == 2 * N  # two epochs
    assert len(model.dtypes) == 1 and not next(iter(model.dtypes)).is_floating_point


@pytest.mark.filterwarnings("ignore")
def test_datamodule_trains_by_size(mixed: Path) -> None:
    with pytest.raises(ValueError, match="batching"):
        DicomDataModule(mixed, batching="sorted")  # type: ignore[arg-type]
    model = _fit(DicomDataModule(mixed, batching="by_size", batch_size=2, val_fraction=0.0))
    assert sum(s[0] for s in model.shapes) == 2 * N  # two epochs
    full = {(spp, h, w) for _, h, w, spp, *_ in MIXED}
    assert {s[1:] for s in model.shapes} == full  # full resolution, one size per batch


def test_ddp_two_ranks_by_size(mixed: Path, tmp_path: Path) -> None:
    """A real two-process DDP run (gloo): equal batch counts, every item once per epoch,
    one size per batch, reshuffled per epoch."""
    import json

    labels = tmp_path / "labels.csv"
    files = sorted(p.relative_to(mixed) for p in mixed.rglob("*") if p.is_file())
    labels.write_text("file,label\n" + "".join(f"{f},{k % 2}\n" for k, f in enumerate(files)))
    out = tmp_path / "ddp"
    run_ddp_script("ddp_bucket_check.py", mixed, labels, out, timeout=180)
    orders = []
    for epoch in (0, 1):
        ranks = [json.loads((out / f"rank{r}_epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1])  # no rank waits at a collective
        seen = [i for rank in ranks for batch in rank for i in batch]
        assert sorted(seen) == list(range(N))  # each item once
        orders.append(seen)
    assert orders[0] != orders[1]
    full = {(spp, h, w) for _, h, w, spp, *_ in MIXED}
    shapes = [s for r in (0, 1) for s in json.loads((out / f"shapes{r}.json").read_text())]
    assert {tuple(s[1:]) for s in shapes} == full
