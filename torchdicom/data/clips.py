"""DicomClipDataset: cine clips from multi-frame files."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch

from torchdicom.cache import FrameCache
from torchdicom.data._base import _item_starts, _ItemDataset, _locate, _meta, _Slot
from torchdicom.data.resize import ResizeMode
from torchdicom.data.sources import MaskSource, _MaskResolver
from torchdicom.io.header import frame_row
from torchdicom.keys import FRAME, IMAGE, INDEX, MASK, PATH, PENDING, YBR

__all__ = ["DicomClipDataset"]


class DicomClipDataset(_ItemDataset):
    """Cine clips from multi-frame files (ultrasound, fluoroscopy, cardiac MR).

    Items are windows of ``clip_len`` consecutive frames starting every
    ``stride`` frames; only the clip's frames are read (native files: one
    contiguous read; compressed: only those frames decoded).

    Args:
        source: a directory, a list of files, or a :class:`~torchdicom.DicomIndex`.
        clip_len: frames per clip (T).
        stride: distance between clip starts (default ``clip_len``: no overlap).
        masks, on_error, color, cache, index_cache: as for :class:`DicomDataset`.
        transform: CPU-side callable on the item dict.
        size, resize, channels: the size policy, as for :class:`DicomDataset`; every
            frame of a clip goes through the same geometry (masks too).
        decode_device, decode_fallback: GPU decoding of the clip's frames, as for
            :class:`DicomDataset` (a pending clip is decoded by :meth:`decode_batch` into
            its (T, C, H, W) slot of the (B, T, C, H, W) batch).

    Item (dict):
        ``image`` (T, C, H, W) in the dataset's one stored dtype :attr:`dtype`
        (chosen as for :class:`DicomDataset`); ``mask`` (T, S, H, W) uint8 when
        masks given (S as for :class:`DicomDataset`, :attr:`mask_segments`);
        ``path``; ``frame`` (first frame of the clip); ``index`` and the
        per-file metadata as in :class:`DicomDataset` (for enhanced files with
        per-frame values: the clip's first frame's rescale, window and
        ``affine``). Files with fewer than
        ``clip_len`` frames give no clip.
    """

    def __init__(
        self,
        source: Any,
        clip_len: int,
        stride: int | None = None,
        *,
        masks: MaskSource = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        color: Literal["rgb", "ybr"] = "rgb",
        cache: FrameCache | str | os.PathLike[str] | None = None,
        index_cache: str | os.PathLike[str] | None = None,
        size: int | tuple[int, int] | None = None,
        resize: ResizeMode = "stretch",
        channels: Literal[1, 3] | None = None,
        storage_options: dict[str, Any] | None = None,
        decode_device: str | torch.device | None = None,
        decode_fallback: Literal["cpu"] | None = "cpu",
    ):
        if not isinstance(clip_len, int) or clip_len < 1:
            raise ValueError(f"clip_len must be a positive int. Got: {clip_len!r}")
        stride = clip_len if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int. Got: {stride!r}")
        super().__init__(
            source,
            on_error=on_error,
            color=color,
            cache=cache,
            index_cache=index_cache,
            storage_options=storage_options,
        )
        self.clip_len, self.stride, self.transform = clip_len, stride, transform
        self._masks = _MaskResolver(masks, self.root)
        self.rows = [r for r in self._masks.exclude(self.rows) if int(r["frames"]) >= clip_len]
        self._starts = _item_starts(
            [(int(r["frames"]) - clip_len) // stride + 1 for r in self.rows]
        )
        self._settle(size, resize, channels, transform, decode_device, decode_fallback)

    def locate(self, i: int) -> tuple[int, int]:
        """(file position, first frame) of clip ``i``."""
        f, k = _locate(self._starts, i)
        return f, k * self.stride

    def _item_frames(self, i: int) -> tuple[dict[str, Any], list[int]]:
        f, start = self.locate(i)
        return self.rows[f], list(range(start, start + self.clip_len))

    def _get(self, i: int, into: _Slot | None = None) -> dict[str, Any]:
        f, start = self.locate(i)
        row = self.rows[f]
        defer = self._defers(row)
        if defer:  # decoded on the device by decode_batch, in the main process
            spp, h, w = (int(row[k]) for k in ("samples_per_pixel", "rows", "columns"))
            image = self._placeholder((self.clip_len, spp, h, w))
        else:
            image = torch.from_numpy(self._read(row, slice(start, start + self.clip_len)))
        # Metadata of the clip's first frame (for enhanced files with per-frame values).
        item: dict[str, Any] = {IMAGE: image, **_meta(frame_row(row, start))}
        item[YBR] = self._keeps_ybr(row)
        if self._masks:
            item[MASK] = self._masks.read(
                row, list(range(start, start + self.clip_len)), image.shape[-2:]
            )
        item.update({PATH: row["path"], FRAME: start, INDEX: i})
        if self._decode_target is not None:
            item[PENDING] = defer
        if self.size_policy:
            item = self.size_policy(item)
        if self.transform is not None:
            item = self.transform(item)
        return item
