"""Size bucketing: batches of items that share one (C, H, W), at full resolution.

The alternative to a size policy (:mod:`torchdicom.data.resize`) when images must keep
their pixels: :class:`SizeBucketBatchSampler` groups item indices by the shape the index
already knows (no decoding), so every batch stacks without padding, and device-side
transforms can resize or crop uniform batches afterwards.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import BatchSampler, Dataset, Sampler, Subset

__all__ = ["SizeBucketBatchSampler", "item_shapes"]


class _Epoch(Sampler[int]):
    """The items a bucket sampler draws from, holding the epoch.

    Lightning calls ``set_epoch`` on ``batch_sampler.sampler``; this is what it finds when
    no distributed sampler was injected.
    """

    def __init__(self, n: int):
        self.n = n
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class SizeBucketBatchSampler(BatchSampler):
    """Batches of item indices that share one key (the item's (C, H, W)), seeded, DDP-aware.

    Each epoch, with ``shuffle``, the items of each bucket are shuffled and cut into
    batches of ``batch_size`` (each bucket's last batch may be smaller), and the batches
    of all buckets are shuffled together; without ``shuffle`` the buckets come in order
    of their first item and the items in index order. The order depends only on
    ``seed`` and the epoch (:meth:`set_epoch`), so every rank computes the same list.

    Distributed (``num_replicas`` > 1): rank ``r`` takes batches ``r, r + R, r + 2R, …``
    of that list. To give every rank the same number of batches (no rank waits at a
    collective for a missing batch) while every item is seen once per epoch, the list is
    brought to a multiple of R by halving its largest batches — items are never repeated
    for it. Only when there are fewer items than batches needed (fewer items than ranks)
    are items repeated, cycling through the list, as
    :class:`~torch.utils.data.distributed.DistributedSampler` pads. With ``drop_last``
    each bucket's incomplete batch is dropped (different items each epoch when shuffled)
    and so are the last ``len % R`` batches: every batch then has ``batch_size`` items.

    Lightning: under DDP the trainer re-creates a batch sampler with a
    :class:`~torch.utils.data.distributed.DistributedSampler` as ``sampler``; this class
    takes ``num_replicas`` and ``rank`` from it (and its epoch, which Lightning sets), and
    ignores its order. Outside Lightning, ``num_replicas`` and ``rank`` default to the
    initialised process group's, like ``DistributedSampler``.

    Args:
        keys: one hashable key per item (e.g. its (C, H, W)); see :func:`item_shapes`.
        batch_size: items per batch.
        shuffle: shuffle within and across buckets (train); False for evaluation.
        seed: the shuffle seed, the same on every rank.
        drop_last: drop incomplete batches (see above).
        num_replicas, rank: the DDP world size and this process's rank.
        sampler: a (distributed) sampler to take ``num_replicas``/``rank``/epoch from;
            its indices are not used (the keys decide). Lightning passes it.

    Example:
        >>> keys = [(1, 4, 4), (3, 8, 8), (1, 4, 4), (1, 4, 4), (3, 8, 8)]
        >>> sampler = SizeBucketBatchSampler(keys, batch_size=2, shuffle=False)
        >>> list(sampler)
        [[0, 2], [3], [1, 4]]
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        sampler: Sampler[int] | None = None,
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int. Got: {batch_size!r}")
        self.keys = list(keys)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if sampler is not None and hasattr(sampler, "num_replicas") and hasattr(sampler, "rank"):
            num_replicas = sampler.num_replicas if num_replicas is None else num_replicas
            rank = sampler.rank if rank is None else rank
        if num_replicas is None:
            num_replicas = (
                dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            )
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank must be in [0, num_replicas). Got: rank={rank}, num_replicas={num_replicas}"
            )
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.sampler = sampler if sampler is not None else _Epoch(len(self.keys))
        buckets: dict[Hashable, list[int]] = {}
        for i, key in enumerate(self.keys):
            buckets.setdefault(key, []).append(i)
        # Bucket order: of first appearance (deterministic, the same on every rank).
        self.buckets = [np.asarray(v, dtype=np.int64) for v in buckets.values()]

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the same on every rank)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        else:  # pragma: no cover - a sampler without epochs
            self.sampler = _Epoch(len(self.keys))
            self.sampler.set_epoch(epoch)

    def _all_batches(self) -> list[np.ndarray]:
        """Every rank's batches of this epoch, in order (identical on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[np.ndarray] = []
        for bucket in self.buckets:
            items = rng.permutation(bucket) if self.shuffle else bucket
            for k in range(0, len(items), self.batch_size):
                batch = items[k : k + self.batch_size]
                if self.drop_last and len(batch) < self.batch_size:
                    continue
                batches.append(batch)
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        r = self.num_replicas
        if r == 1 or not batches:
            return batches
        if self.drop_last:
            return batches[: len(batches) - len(batches) % r]
        while len(batches) % r:
            sizes = [len(b) for b in batches]
            k = int(np.argmax(sizes))  # the first of the largest
            if sizes[k] < 2:
                break
            half = (sizes[k] + 1) // 2
            batches[k : k + 1] = [batches[k][:half], batches[k][half:]]
        # Fewer items than ranks: repeat batches from the start (DistributedSampler's padding).
        pad = (-len(batches)) % r
        return batches + [batches[k % len(batches)] for k in range(pad)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._all_batches()[self.rank :: self.num_replicas]:
            yield batch.tolist()

    def __len__(self) -> int:
        sizes = [len(b) for b in self.buckets]
        if self.drop_last:
            total = sum(n // self.batch_size for n in sizes)
            return total // self.num_replicas
        total = sum(-(-n // self.batch_size) for n in sizes)
        return -(-total // self.num_replicas)  # splitting/padding reaches the next multiple


def item_shapes(dataset: Dataset[Any]) -> list[tuple[int, ...]]:
    """The (C, H, W) (clips: (T, C, H, W)) every item of a torchdicom dataset will have,
    read from the index rows (no decoding), after the dataset's size policy.

    Accepts a :class:`~torch.utils.data.Subset` of one (the DataModule's splits).
    """
    if isinstance(dataset, Subset):
        inner = item_shapes(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    rows = getattr(dataset, "rows", None)
    per_file = getattr(dataset, "items_per_file", None)
    if rows is None:
        raise TypeError(
            f"item_shapes needs a torchdicom dataset (with index rows). Got: {type(dataset).__name__}"
        )
    counts = per_file() if callable(per_file) else np.diff(dataset._starts)
    policy = getattr(dataset, "size_policy", None)
    clip_len = getattr(dataset, "clip_len", None)
    out: list[tuple[int, ...]] = []
    for row, n in zip(rows, counts, strict=True):
        shape = (int(row["samples_per_pixel"]), int(row["rows"]), int(row["columns"]))
        if policy:
            shape = policy.output_shape(*shape)
        if clip_len is not None:
            shape = (int(clip_len), *shape)
        out.extend([shape] * int(n))
    return out
