"""What a generator wrote: :class:`SampleSet`, and its form in the demo manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SampleSet"]


@dataclass
class SampleSet:
    """What a generator wrote.

    Attributes:
        root: the folder the set was written to.
        files: the image files, absolute, in a stable order.
        labels_csv: the labels file (``root/labels.csv``), or ``None`` when the
            set has no per-file labels.
        masks_dir: the folder of mask files (``root/masks``), or ``None``.
        masks: mask files paired with ``files`` by position (``masks[i]`` is
            the mask of ``files[i]``); empty when the set has no masks.
        params: the generator arguments, for the demo manifest.
    """

    root: Path
    files: list[Path]
    labels_csv: Path | None = None
    masks_dir: Path | None = None
    masks: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def _to_json(self) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            return None if p is None else p.relative_to(self.root).as_posix()

        return {
            "files": [rel(p) for p in self.files],
            "labels_csv": rel(self.labels_csv),
            "masks_dir": rel(self.masks_dir),
            "masks": [rel(p) for p in self.masks],
            "params": self.params,
        }

    @classmethod
    def _from_json(cls, root: Path, d: dict[str, Any]) -> SampleSet:
        def absolute(p: str | None) -> Path | None:
            return None if p is None else root / p

        return cls(
            root=root,
            files=[root / p for p in d["files"]],
            labels_csv=absolute(d["labels_csv"]),
            masks_dir=absolute(d["masks_dir"]),
            masks=[root / p for p in d["masks"]],
            params=d["params"],
        )
