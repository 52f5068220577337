"""Collate: dataset items into a batch dict of stored-dtype images and (B,) metadata tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchdicom._runtime import batch_buffer, whole_buffer
from torchdicom.keys import (
    BOOL_KEYS,
    FLOAT_KEYS,
    IMAGE,
    INT_KEYS,
    LABEL,
    MASK,
    PATH,
    PENDING,
    PIXEL_KEYS,
)

__all__ = ["Collate", "collate"]


class Collate:
    """Stack dataset items into a batch dict.

    Images are stacked in their stored dtype (the float conversion happens on
    the device); per-sample metadata become tensors of shape (B,); ``path``
    stays a list of str.

    Args:
        pad: when images differ in size, pad each to the largest H and W
            (bottom/right, with the image's own minimum so padding reads as
            background) instead of raising.

    Raises:
        ValueError: images of different shapes (without ``pad``), or tensors of
            one key in different dtypes (items of one dataset share its
            :attr:`~DicomDataset.dtype`; items of two datasets may not); the
            message lists the shapes or dtypes and files. Nothing is ever cast
            into another item's dtype.

    Batch:
        ``image`` (B, C, H, W) (or (B, T, C, H, W) for clips) in the items' one
        dtype; any other tensor key stacked in its own dtype (``affine`` float64
        (B, 4, 4)); ``slope``, ``intercept``, ``window_center``, ``window_width``
        float32 (B,), or (B, D) for volumes' per-slice values;
        ``monochrome1``, ``signed``, ``ybr`` bool (B,); ``bits_stored``, ``frame``,
        ``index`` int64 (B,); ``label`` int64 / float32 (B,); ``mask`` uint8
        (B, S, H, W) (one channel per segment; (B, T, S, H, W) for clips); ``path`` list[str].

        Items of a dataset with a CUDA ``decode_device`` carry ``pending``: the batch's
        ``pending`` bool (B,) marks the rows whose ``image`` slots are left unfilled (their
        items hold no pixels); the dataset's ``decode_batch`` fills them on the device.
        Their images must all have one shape (no ``pad``).
    """

    def __init__(self, pad: bool = False):
        self.pad = pad

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty list of items")
        out: dict[str, Any] = {}
        for key in items[0]:
            values = [it[key] for it in items]
            if key == IMAGE and any(it.get(PENDING) for it in items):
                out[key] = self._stack_pending(values, items)
            elif key in PIXEL_KEYS:
                out[key] = self._stack(values, items, key)
            elif key in FLOAT_KEYS and isinstance(values[0], torch.Tensor):
                # Per-slice values of volumes (D,) (or per-frame values of clips): (B, D).
                out[key] = self._stack(
                    [torch.as_tensor(v, dtype=torch.float32) for v in values], items, key
                )
            elif key in FLOAT_KEYS:
                out[key] = torch.tensor(values, dtype=torch.float32)
            elif key in BOOL_KEYS:
                out[key] = torch.tensor(values, dtype=torch.bool)
            elif key in INT_KEYS:
                out[key] = torch.tensor(values, dtype=torch.int64)
            elif key == LABEL and not all(isinstance(v, torch.Tensor) for v in values):
                out[key] = _label_tensor(values)
            elif isinstance(values[0], torch.Tensor):
                out[key] = self._stack(values, items, key)
            else:
                out[key] = list(values)
        return out

    def _stack_pending(
        self, values: list[torch.Tensor], items: Sequence[Mapping[str, Any]]
    ) -> torch.Tensor:
        """The (B, ...) image batch with only the rows read on the CPU filled."""
        shapes = {tuple(v.shape) for v in values}
        dtypes = {v.dtype for v in values}
        if len(shapes) > 1 or len(dtypes) > 1:
            detail = ", ".join(
                f"{tuple(v.shape)} {v.dtype} {it.get(PATH, '?')}"
                for v, it in list(zip(values, items))[:4]
            )
            raise ValueError(
                f"cannot batch images of different sizes or dtypes: {detail}; with"
                f" decode_device the images of a batch must agree (batch by size:"
                f" DicomDataModule(batching='by_size'), or batch_size=1)"
            )
        out = batch_buffer(values[0], len(values))
        for slot, v, it in zip(out, values, items):
            if not it.get(PENDING):
                slot.copy_(v)
        return out

    def _stack(
        self, values: list[torch.Tensor], items: Sequence[Mapping[str, Any]], key: str
    ) -> torch.Tensor:
        whole = whole_buffer(values)
        if whole is not None:
            return whole
        dtypes = {v.dtype for v in values}
        if len(dtypes) > 1:
            # torch.stack(out=) would cast every item into the first one's dtype
            # (silently cutting int16 CT values into a uint8 buffer, say).
            first: dict[torch.dtype, str] = {}  # one item of each dtype
            for v, it in zip(values, items):
                first.setdefault(v.dtype, it.get(PATH, "?"))
            detail = ", ".join(f"{dtype} {path}" for dtype, path in first.items())
            raise ValueError(
                f"cannot batch {key}s of different dtypes: {detail};"
                f" items of one dataset share its dtype — are the items from two datasets, or"
                f" does a transform change the dtype of some?"
            )
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1:
            return torch.stack(values, out=batch_buffer(values[0], len(values)))
        if not self.pad or len({v.shape[:-2] for v in values}) > 1:
            detail = ", ".join(
                f"{tuple(v.shape)} {it.get(PATH, '?')}" for v, it in list(zip(values, items))[:4]
            )
            raise ValueError(
                f"cannot batch {key}s of different sizes: {detail}; give the dataset a size"
                f" policy (size=(H, W), resize=, channels=1 or 3), batch by size"
                f" (DicomDataModule(batching='by_size')), use Collate(pad=True) (same channels"
                f" only), or batch_size=1"
            )
        h = max(v.shape[-2] for v in values)
        w = max(v.shape[-1] for v in values)
        out = batch_buffer(values[0], len(values), (*values[0].shape[:-2], h, w))
        for p, v in zip(out, values):
            p.fill_(v.min().item() if v.numel() and key != MASK else 0)
            p[..., : v.shape[-2], : v.shape[-1]] = v
        return out


def _label_tensor(values: list[Any]) -> torch.Tensor | list[Any]:
    if all(isinstance(v, bool | int | np.integer) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    if all(isinstance(v, int | float | np.integer | np.floating) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    return list(values)


collate = Collate()
"""Default collate function (no padding); see :class:`Collate`."""
