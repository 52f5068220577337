"""DicomDataset: one item per frame (or per file) of a DICOM collection."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import get_worker_info

from torchdicom._runtime import batch_buffer, run_in_slices
from torchdicom.cache import FrameCache
from torchdicom.data._base import _item_starts, _ItemDataset, _leave_out, _locate, _meta, _Slot
from torchdicom.data.resize import ResizeMode
from torchdicom.data.sources import (
    LabelSource,
    MaskSource,
    _encode_labels,
    _Labeler,
    _MaskResolver,
)
from torchdicom.errors import TorchDicomError
from torchdicom.io.frames import (
    native_layout,
    prefetch_frame_ranges,
    read_frames_numpy,
    read_native_batch,
    route_for,
)
from torchdicom.io.header import frame_row
from torchdicom.keys import FRAME, IMAGE, INDEX, LABEL, MASK, PATH, PENDING, YBR

__all__ = ["DicomDataset"]

log = logging.getLogger("torchdicom.data")


class DicomDataset(_ItemDataset):
    """One item per frame (or per file) of a DICOM collection.

    Args:
        source: a directory, a list of files, or a :class:`~torchdicom.DicomIndex`.
        frames: ``"all"`` — one item per frame of every file (multi-frame files
            contribute each frame); ``"first"`` — one item per file, frame 0;
            an int ``k`` — one item per file, frame ``k`` (files with fewer
            frames are left out, with a warning).
        labels: a CSV path or DataFrame (a file column — ``file``/``fname``/
            ``path``… or the first column — with paths relative to the CSV's
            folder or to the collection, and the ``label_column``), a mapping
            path → label, or a callable ``f(path)`` / ``f(path, frame)``.
            String classes are encoded as integers in sorted order
            (:attr:`classes`).
        masks: a DICOM Segmentation (SEG) file or a folder of them (read with
            highdicom, ``pip install torchdicom[seg]``; one mask channel per
            segment, see :mod:`torchdicom.data.seg`), or paired mask files: a
            directory mirroring the image tree, a mapping, or a callable image
            path → mask path (masks are DICOM; the same frame is read). A
            folder is a SEG folder when its first DICOM file is a SEG.
        transform: CPU-side callable on the item dict (e.g.
            :class:`~torchdicom.transforms.AlbumentationsAdapter`).
        on_error: ``"raise"`` (default) or ``"skip"``: substitute the next
            readable sample, log the file once, count it in :attr:`skipped`.
        color: ``"rgb"`` (equal to pydicom) or ``"ybr"``: YBR_FULL(_422)
            frames are handed over unconverted for a batched device-side
            :class:`~torchdicom.transforms.YbrToRgb`.
        cache: a :class:`~torchdicom.cache.FrameCache` or directory for
            decoded compressed frames (shared by workers and ranks).
        index_cache: parquet file for the header index when ``source`` is a
            directory or a file list.
        storage_options: fsspec options when ``source`` is a URL (``s3://bucket/prefix``,
            ``gs://…``, ``memory://…``) or a list / index of URLs; see
            :mod:`torchdicom.sources.remote`. Never logged.
        label_column: the label column of a CSV/DataFrame (default: the first
            column that is not the file column).
        size: output (H, W) (or an int for a square) every item is resized to, per
            item in the DataLoader worker, rounded back to the stored dtype (see
            :class:`~torchdicom.data.resize.SizePolicy`); items then carry
            ``original_size``, ``crop``, ``scale``, ``pad`` (map predictions back with
            :func:`~torchdicom.data.resize.to_original`). None: sizes as stored.
        resize: ``"stretch"``, ``"letterbox"`` (scale the longest side, pad) or
            ``"crop"`` (scale the shortest side, centre-crop); masks follow, nearest.
        channels: None (each file's own; with ``size`` set, a collection mixing grey
            and colour raises at construction, naming ``channels=1`` / ``channels=3``),
            1 (colour becomes luma) or 3 (grey is repeated).
        exclude: folders whose files are not items (absolute, or relative to
            the collection root), e.g. a mask folder inside the image folder
            that is not given as ``masks`` (one that is, is left out anyway).
        decode_device: ``None`` / ``"cpu"`` (decode in the DataLoader workers), or
            ``"cuda"`` / ``"cuda:N"``: frames the GPU decodes
            (:func:`~torchdicom.io.frames.gpu_decodable`: unsigned JPEG .50/.51/.57/.70,
            JPEG 2000 / HTJ2K .90/.91/.201-.203, stored in :attr:`dtype`) are not decoded in
            the workers; their items carry ``pending`` True and no pixels, and
            :meth:`decode_batch`, run on the collated batch in the main process, decodes
            them with nvImageCodec (``pip install torchdicom[gpu]``) straight into the batch
            tensor on the device (:class:`~torchdicom.DicomDataModule` does this in
            ``transfer_batch_to_device``). Other files (native, JPEG-LS, RLE, signed…) are
            read in the workers as before. Any ``num_workers`` works. A CUDA device
            without CUDA raises ValueError here; with ``transform`` or ``size`` too (a
            per-item step cannot see pixels decoded later).
        decode_fallback: ``"cpu"`` (default) reads a frame the GPU decoder fails on with
            the CPU routes; ``None`` raises :class:`~torchdicom.errors.CorruptDicomError`
            naming the file and frame (in :meth:`decode_batch`; ``on_error`` does not
            apply there).

    Item (dict):
        ``image`` (C, H, W) in the dataset's one stored dtype :attr:`dtype`;
        ``slope``, ``intercept``,
        ``window_center``, ``window_width`` float (NaN where absent; frames of
        enhanced multi-frame files carry their own, from their per-frame
        functional groups); ``affine`` (4, 4) float64 voxel (column, row,
        slice) → patient LPS mm of the frame (:mod:`torchdicom.io.geometry`);
        ``monochrome1`` bool; ``bits_stored`` int; ``signed`` bool ((0028,0103)
        *Pixel Representation* 1: two's complement values, whatever :attr:`dtype`
        they are stored in); ``ybr`` bool (frames left
        in YCbCr); ``label`` (when labels given); ``mask`` (S, H, W) uint8
        (when masks given: S segments of the SEGs, in :attr:`mask_segments`
        order, 0/1, zeros for frames no segment covers; S = 1 for mask
        files); ``path`` str; ``frame`` int; ``index`` int. With a CUDA
        ``decode_device``: ``pending`` bool, and for pending items ``image`` is a
        placeholder of the right shape and dtype holding no pixels (one element,
        expanded) until :meth:`decode_batch`.

    Stored dtype:
        Every ``image`` of a dataset has one dtype, :attr:`dtype`, so any two items
        batch together. It is decided once from the index: the narrowest dtype that
        holds every file's stored values exactly, by (0028,0100) *Bits Allocated*,
        (0028,0101) *Bits Stored* and (0028,0103) *Pixel Representation* —
        ``uint8`` when every file is unsigned 8-bit (1-bit and 8-bit colour
        included); ``int16`` for signed files of up to 16 stored bits, mixed or
        not with unsigned files of up to 15; ``uint16`` when every file is unsigned
        16-bit; ``int32`` when signed files mix with unsigned 16-bit ones (e.g. CT
        series from several scanners); ``float32``/``float64`` with float pixel
        data. A uniform collection keeps its files' own dtype. Files stored in
        another dtype are converted exactly on reading (the values do not change;
        ``read_frames`` of the file equals the item's ``image``). A file whose
        values exceed its Bits Stored, so that they do not fit :attr:`dtype`,
        raises :class:`~torchdicom.errors.CorruptDicomError` naming the file and the
        value range — never a silent wrap-around.
    """

    def __init__(
        self,
        source: Any,
        frames: Literal["all", "first"] | int = "all",
        labels: LabelSource = None,
        masks: MaskSource = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        *,
        color: Literal["rgb", "ybr"] = "rgb",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
        label_column: str | None = None,
        size: int | tuple[int, int] | None = None,
        resize: ResizeMode = "stretch",
        channels: Literal[1, 3] | None = None,
        exclude: Sequence[str | os.PathLike[str]] = (),
        storage_options: dict[str, Any] | None = None,
        decode_device: str | torch.device | None = None,
        decode_fallback: Literal["cpu"] | None = "cpu",
    ):
        super().__init__(
            source,
            on_error=on_error,
            color=color,
            cache=cache,
            index_cache=index_cache,
            storage_options=storage_options,
        )
        if not (
            frames in ("all", "first") or (isinstance(frames, int) and not isinstance(frames, bool))
        ):
            raise ValueError(f"frames must be 'all', 'first' or an int. Got: {frames!r}")
        self.frames = frames
        self.transform = transform
        self._masks = _MaskResolver(masks, self.root)
        self.rows = _leave_out(self._masks.exclude(self.rows), exclude, self.root)
        if isinstance(frames, int) and frames != 0:
            keep = [r for r in self.rows if int(r["frames"]) > frames]
            if len(keep) < len(self.rows):
                log.warning(
                    "%d file(s) have fewer than %d frames and are left out",
                    len(self.rows) - len(keep),
                    frames + 1,
                )
            self.rows = keep
        self._starts = _item_starts([int(r["frames"]) if frames == "all" else 1 for r in self.rows])
        self._settle(size, resize, channels, transform, decode_device, decode_fallback)

        self._labeler = _Labeler(labels, label_column)
        self.classes: list[str] | None = None
        self._labels: list[Any] | None = None
        if self._labeler and self._labeler.fn is None:
            values, missing = [], []
            for r in self.rows:
                try:
                    values.append(self._labeler.for_file(r["path"]))
                except KeyError:
                    missing.append(r["path"])
            if missing:
                raise ValueError(
                    f"{len(missing)} file(s) have no label, e.g. {missing[0]}; label keys look like"
                    f" {next(iter(self._labeler.mapping))!r}"
                )
            self._labels, self.classes = _encode_labels(values)

    def items_per_file(self) -> np.ndarray:
        """Number of items each file of :attr:`rows` contributes, (len(rows),) int64."""
        return np.diff(self._starts)

    def label_codes(self) -> list[Any]:
        """The (encoded) label of every file, in :attr:`rows` order (empty without table labels)."""
        return list(self._labels or [])

    def locate(self, i: int) -> tuple[int, int]:
        """(file position in :attr:`rows`, frame) of item ``i``, without reading anything."""
        if self.frames == "all":
            return _locate(self._starts, i)
        # One item per file: item i is file i (no search; this runs once per item).
        if not 0 <= i < len(self.rows):
            raise IndexError(f"index {i} out of range for a dataset of {len(self.rows)} items")
        return int(i), 0 if self.frames == "first" else int(self.frames)

    def _item_frames(self, i: int) -> tuple[dict[str, Any], list[int]]:
        f, frame = self.locate(i)
        return self.rows[f], [frame]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items of one DataLoader batch (the DataLoader calls this instead of ``[i]``).

        When every item comes from an uncompressed file with the same frame shape and
        dtype, the images are read straight into one (B, C, H, W) batch buffer and each
        item's ``image`` is a view of its slot; :class:`Collate` hands that buffer on as
        the batch without stacking a copy. In the main process the buffer is recycled
        memory of an earlier, freed batch (first-touch page faults of fresh buffers cost
        more than reading the files); in a worker it is shared memory, which crosses to
        the main process uncopied. Otherwise items are read one by one, as by ``[i]``.
        """
        # A size policy makes a new image per item: nothing to read into one buffer.
        batch = None if self.size_policy else self._batch_slots(indices)
        if batch is None:
            decoded = self._predecode(indices)
            return [
                self._fetch(i, None if image is None else (image, None))
                for i, image in zip(indices, decoded, strict=True)
            ]
        into, located = batch
        views, slots = into.unbind(0), into.numpy()  # all item views in two calls
        filled = self._prefill(located, slots)
        return [
            self._fetch(i, (views[k], None if filled[k] else slots[k : k + 1]))
            for k, i in enumerate(indices)
        ]

    def _predecode(self, indices: Sequence[int]) -> list[torch.Tensor | None]:
        """Decode the batch's compressed frames on the runtime's thread pool, where it pays.

        Only frames whose read route's decoder releases the GIL (``Route.parallel``:
        libjpeg-turbo through Pillow or imagecodecs) and only in the main process with
        more than one thread (workers already decode in parallel); without a frame cache
        (it reads and writes files of its own). A frame that fails is left for the item
        path, which reads it again and raises or substitutes as ``on_error`` says.
        """
        done: list[torch.Tensor | None] = [None] * len(indices)
        n = len(self)
        if (
            len(indices) < 2
            or self.cache is not None
            or get_worker_info() is not None
            or torch.get_num_threads() < 2
        ):
            return done
        jobs = []
        for k, i in enumerate(indices):
            if isinstance(i, int | np.integer) and -n <= i < n:
                f, frame = self.locate(int(i) % n)
                row = self.rows[f]
                if route_for(row).parallel and not self._defers(row):
                    jobs.append((k, row, frame))
        if len(jobs) < 2:
            return done

        def read(j0: int, j1: int) -> None:
            for k, row, frame in jobs[j0:j1]:
                try:
                    done[k] = torch.from_numpy(self._read(row, frame)[0])
                except TorchDicomError:
                    continue

        row = jobs[0][1]
        numel = int(row["rows"]) * int(row["columns"]) * int(row["samples_per_pixel"])
        run_in_slices(len(jobs), read, numel)
        return done

    def _prefill(self, located: list[tuple[int, int]], slots: np.ndarray) -> list[bool]:
        """Read the batch's pixels into ``slots`` on the package's thread pool.

        Only files stored in the batch dtype are read here; the item path reads and
        converts the others.

        In the main process the reads (open, pread, close: the GIL is released while the
        kernel copies the bytes) overlap across threads. A file that fails is left for the
        item path, which reads it again and raises or substitutes as ``on_error`` says.
        Workers (and single-thread runs) read inside the item path instead.
        """
        # Remote objects (fsspec URLs): the batch's frames as byte ranges of one request batch.
        done = read_native_batch(
            [self.rows[f] for f, _ in located], [fr for _, fr in located], slots
        )
        if get_worker_info() is not None or torch.get_num_threads() < 2:
            return done

        dtype = slots.dtype

        def read(k0: int, k1: int) -> None:
            for k in range(k0, k1):
                if done[k]:
                    continue
                f, frame = located[k]
                layout = native_layout(self.rows[f])
                if layout is None or layout.dtype != dtype:
                    continue  # read and converted in the item path
                try:
                    read_frames_numpy(self.rows[f], frame, out=slots[k : k + 1])
                except TorchDicomError:
                    continue
                done[k] = True

        run_in_slices(len(located), read, slots[0].size)
        return done

    def _batch_slots(
        self, indices: Sequence[int]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
        """A (B, C, H, W) batch buffer for the items and their (file, frame), or None when the
        items differ in shape (or are not all uncompressed).

        The buffer has the dataset's dtype (:attr:`dtype`), whatever the files' own: a file
        stored in another dtype is read and converted into its slot by the item path."""
        n = len(self)
        if len(indices) < 2 or not all(
            isinstance(i, int | np.integer) and -n <= i < n for i in indices
        ):
            return None
        located = [self.locate(int(i) % n) for i in indices]
        shape = None
        for f, _frame in located:
            layout = native_layout(self.rows[f])
            if layout is None or (shape is not None and layout.shape != shape):
                return None
            shape = layout.shape
        assert shape is not None
        like = torch.from_numpy(np.empty(0, self._stored_dtype()))
        return batch_buffer(like, len(indices), shape), located

    def prefetch(self, indices: Sequence[int]) -> int | None:
        """Start fetching, in the background, the remote bytes of the items ``indices``
        (a coming batch) so that reading them later finds them held
        (:func:`torchdicom.sources.remote.prefetch`).

        Each item from a remote object (fsspec URL) is one byte range, the one its read
        takes: an uncompressed frame (read into a batch buffer or on its own: a size
        policy, mixed shapes) or a compressed frame's recorded code-stream span. Frames
        without recorded spans, DICOMweb items and local files are not prefetched (a
        local dataset returns at once). Nothing is raised: the read raises what it
        would raise without a prefetch. :class:`~torchdicom.data.prefetch.PrefetchDataLoader`
        calls this with the next batch's indices.

        Returns:
            The prefetch group's id (for :func:`torchdicom.sources.remote.drop_prefetched`),
            or ``None`` when nothing was started.
        """
        remote = self.__dict__.get("_remote_rows")
        if remote is None:  # once per dataset (and per worker): local datasets skip all
            remote = self.__dict__["_remote_rows"] = any("://" in r["path"] for r in self.rows)
        if not remote:
            return None
        n = len(self)
        located = [
            self.locate(int(i) % n)
            for i in indices
            if isinstance(i, int | np.integer) and -n <= i < n
        ]
        return prefetch_frame_ranges(
            [self.rows[f] for f, _ in located], [frame for _, frame in located]
        )

    def _get(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        f, frame = self.locate(i)
        row = self.rows[f]
        defer = self._defers(row)
        if defer:  # decoded on the device by decode_batch, in the main process
            shape = (int(row["samples_per_pixel"]), int(row["rows"]), int(row["columns"]))
            image = self._placeholder(shape)
        elif into is not None:
            # A slot _batch_slots made for this very file's shape, in the dataset's dtype
            # (read_frames_numpy checks shape and dtype again); the image is a view of the
            # batch buffer. No numpy slot: _prefill has read it already.
            image, slot = into
            if slot is not None:
                layout = native_layout(row)
                if layout is not None and layout.dtype == slot.dtype:
                    read_frames_numpy(row, frame, out=slot)
                else:
                    slot[...] = self._read(row, frame)  # converted exactly, or refused
        else:
            image = torch.from_numpy(self._read(row, frame)[0])
        item: dict[str, Any] = {IMAGE: image, **_meta(frame_row(row, frame))}
        item[YBR] = self._keeps_ybr(row)
        if self._labels is not None:
            item[LABEL] = self._labels[f]
        elif self._labeler.fn is not None:
            item[LABEL] = self._labeler.call(row["path"], frame)
        if self._masks:
            item[MASK] = self._masks.read(row, frame, image.shape[-2:])
        item.update({PATH: row["path"], FRAME: frame, INDEX: i})
        if self._decode_target is not None:
            item[PENDING] = defer
        if self.size_policy:
            item = self.size_policy(item)
        if self.transform is not None:
            item = self.transform(item)
        return item
