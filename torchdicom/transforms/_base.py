"""The base of the transforms' modules: a bare tensor or a batch dict in, the same kind out."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from torchdicom.keys import IMAGE

__all__ = ["Batch", "BatchTransform", "require_key"]

#: What a transform module takes: a bare image tensor, or a batch dict with ``image``.
Batch = Tensor | Mapping[str, Any]


class BatchTransform(nn.Module):
    r"""An ``nn.Module`` that runs one image operation on a tensor or on a batch dict's ``image``.

    A subclass stores its arguments under the names of its ``__init__`` parameters (checked
    there by the functional layer's own checks, so a bad argument fails at construction) and
    implements :meth:`transform_image`; ``forward`` then serves both kinds of input:

    - a tensor ``x`` gives ``transform_image(x, None)``;
    - a batch dict gives a shallow copy with ``image`` replaced by
      ``transform_image(data["image"], data)``; every other key (``label``, ``path``, meta
      tensors) passes through untouched. A transform that writes other keys too overrides
      :meth:`transform_batch`.

    ``extra_repr`` lists the ``__init__`` parameters as ``name=value`` (tensors by their shape).
    """

    def forward(self, data: Batch) -> Tensor | dict[str, Any]:
        if isinstance(data, Tensor):
            return self.transform_image(data, None)
        if isinstance(data, Mapping):
            if IMAGE not in data:
                raise KeyError(f"the batch dict has no '{IMAGE}' key. Got keys: {sorted(data)}")
            return self.transform_batch(data)
        raise TypeError(
            f"{type(self).__name__} takes a tensor or a batch dict with an '{IMAGE}' key."
            f" Got: {type(data).__name__}"
        )

    def transform_image(self, x: Tensor, batch: Mapping[str, Any] | None) -> Tensor:
        """The operation on an image tensor; ``batch`` is its dict (None for a bare tensor)."""
        raise NotImplementedError

    def transform_batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """A shallow copy of ``data`` with ``image`` transformed."""
        out = dict(data)
        out[IMAGE] = self.transform_image(data[IMAGE], data)
        return out

    def extra_repr(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return ", ".join(
            f"{name}={_shown(getattr(self, name))}" for name in names if hasattr(self, name)
        )


def _shown(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)})"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return repr(value)
    return type(value).__name__  # a pipeline or a named tuple of tensors: its kind


def require_key(batch: Mapping[str, Any] | None, key: str, who: str) -> Any:
    """``batch[key]``, or an error that says which transform needed it."""
    if batch is None:
        raise TypeError(
            f"{who} reads '{key}' from a batch dict; pass the dict, not a bare tensor. Got: Tensor"
        )
    if key not in batch:
        raise KeyError(f"{who} needs '{key}' in the batch dict. Got keys: {sorted(batch)}")
    return batch[key]
