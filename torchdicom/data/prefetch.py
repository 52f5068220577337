"""Prefetch the next batch's remote bytes while the current batch is consumed.

A remote batch (fsspec URLs: :mod:`torchdicom.sources.remote`) waits one round trip and
then its transfer. Without DataLoader workers nothing overlaps those with the training
step, and only the sampler knows which batch comes next. :class:`PrefetchDataLoader` (a
drop-in :class:`~torch.utils.data.DataLoader`) wraps its batch sampler in
:class:`PrefetchBatches`, which, as it hands out batch ``i``, asks the dataset to start
fetching the batch the same process reads next (:meth:`DicomDataset.prefetch
<torchdicom.data.frames.DicomDataset.prefetch>`, on background threads). Reading that
batch later takes the held bytes (:func:`torchdicom.sources.remote.prefetch`).

- **0 workers**: batch ``i + 1`` is prefetched in the main process as batch ``i`` is read.
- **W workers**: the DataLoader hands worker ``w`` every W-th batch, so batch ``i`` travels
  to its worker with the indices of batch ``i + W``, and the worker starts that prefetch
  when the batch arrives.

Datasets of local files, and datasets without a ``prefetch`` method, are left alone: the
wrapper then only passes batches through.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler, Subset, get_worker_info

from torchdicom.sources.remote import drop_prefetched

__all__ = ["PrefetchBatches", "PrefetchDataLoader", "start_prefetch"]


def start_prefetch(dataset: Dataset[Any], indices: Sequence[int]) -> int | None:
    """Ask ``dataset`` (through any :class:`~torch.utils.data.Subset` around it) to start
    fetching the items ``indices`` in the background.

    Returns:
        The prefetch group's id, or ``None`` when the dataset has no ``prefetch`` or
        started nothing.
    """
    while isinstance(dataset, Subset):
        indices = [dataset.indices[int(i)] for i in indices]
        dataset = dataset.dataset
    prefetch = getattr(dataset, "prefetch", None)
    if prefetch is None:
        return None
    return prefetch(indices)


class _Ahead(list):
    """A batch's indices carrying those of the batch its worker reads next.

    The DataLoader pickles each batch's indices to the worker that reads it; unpickling
    (:func:`_arrive`, in the worker) starts the prefetch of ``ahead`` there and hands the
    DataLoader a plain list, so nothing else sees this class.
    """

    def __init__(self, indices: Iterable[int], ahead: list[int]):
        super().__init__(indices)
        self.ahead = ahead

    def __reduce__(self) -> tuple[Any, tuple[list[int], list[int]]]:
        return _arrive, (list(self), self.ahead)


def _arrive(indices: list[int], ahead: list[int]) -> list[int]:
    """A batch arriving in a worker: start prefetching the worker's next batch."""
    info = get_worker_info()
    if info is not None:
        start_prefetch(info.dataset, ahead)
    return indices


class PrefetchBatches(Sampler[list[int]]):
    """A batch sampler that starts prefetching each process's next batch.

    Yields the batches of ``batches`` unchanged. With ``num_workers=0``, before handing
    out batch ``i`` it calls ``dataset.prefetch(batch i + 1)``; with workers, batch ``i``
    carries batch ``i + num_workers`` to its worker, which starts that prefetch (the
    DataLoader gives worker ``w`` batches ``w, w + W, …``). When iteration ends (epoch
    end, or the loop broke off) the prefetches this iterator started in this process and
    no read took are dropped. Memory stays within
    :attr:`~torchdicom.sources.remote.RemotePolicy.prefetch_batches` batches per process.

    Use it with a DataLoader of your own (or use :class:`PrefetchDataLoader`)::

        batches = BatchSampler(RandomSampler(dataset), batch_size=32, drop_last=False)
        loader = DataLoader(
            dataset,
            batch_sampler=PrefetchBatches(batches, dataset, num_workers=2),
            num_workers=2,
            collate_fn=Collate(),
        )

    Args:
        batches: the batch sampler (lists of indices into ``dataset``).
        dataset: the DataLoader's dataset (a :class:`~torch.utils.data.Subset` of a
            torchdicom dataset works too).
        num_workers: the DataLoader's ``num_workers``.

    Example:
        >>> batches = PrefetchBatches([[0, 1], [2, 3], [4]], dataset=list(range(5)))
        >>> list(batches)
        [[0, 1], [2, 3], [4]]
    """

    def __init__(self, batches: Iterable[list[int]], dataset: Dataset[Any], num_workers: int = 0):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0. Got: {num_workers!r}")
        self.batches = batches
        self.dataset = dataset
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # What Lightning and users read off a batch sampler (sampler, batch_size,
        # drop_last, set_epoch) is the wrapped one's.
        if name in ("batches", "dataset", "num_workers"):
            raise AttributeError(name)
        return getattr(self.batches, name)

    def __iter__(self) -> Iterator[list[int]]:
        step = max(1, self.num_workers)
        source = iter(self.batches)
        window: deque[list[int]] = deque(itertools.islice(source, step + 1))
        started: deque[int] = deque(maxlen=4)  # this iterator's recent prefetch groups
        try:
            while window:
                batch = window.popleft()
                nxt = next(source, None)
                if nxt is not None:
                    window.append(nxt)
                ahead = list(window[step - 1]) if len(window) >= step else None
                if ahead is None:
                    yield batch
                elif self.num_workers == 0:
                    group = start_prefetch(self.dataset, ahead)
                    if group is not None:
                        started.append(group)
                    yield batch
                else:
                    yield _Ahead(batch, ahead)
        finally:
            if started:
                drop_prefetched(started)


class PrefetchDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` that prefetches the next batch's remote
    bytes while the current batch is consumed (see :class:`PrefetchBatches`).

    Takes exactly the DataLoader's arguments; batches (``batch_size``, or a
    ``batch_sampler`` such as :class:`~torchdicom.data.sampler.SizeBucketBatchSampler`)
    come out unchanged, and under Lightning (DDP samplers, predict) it is re-created like
    any DataLoader subclass. ``batch_size=None`` (no batching) prefetches nothing.
    :class:`~torchdicom.DicomDataModule` uses it for remote data; for a DataLoader of
    your own over remote objects, write ``PrefetchDataLoader(dataset, batch_size=32,
    num_workers=0, collate_fn=Collate())`` instead of ``DataLoader(...)``.
    """

    @property
    def _index_sampler(self) -> Any:
        # What the DataLoader's iterators draw batches from (torch's own property):
        # the batch sampler, wrapped, so sampler / batch_sampler stay what was given.
        index_sampler = super()._index_sampler
        if not self._auto_collation:
            return index_sampler
        return PrefetchBatches(index_sampler, self.dataset, self.num_workers)
