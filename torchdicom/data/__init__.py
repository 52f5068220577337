"""PyTorch datasets over DICOM collections: frames, cine clips, series volumes, and collate.

Every dataset works from a :class:`~torchdicom.DicomIndex` (built by
:func:`~torchdicom.scan` when given a directory or a file list), so an item
costs one ``read_frames`` call on an index row: no header parsing, and for
multi-frame files only the frames the item needs are read.

Items are dicts of *stored* values plus the per-sample metadata the batched
transforms need; converting to Hounsfield units, windowing and augmenting
happen later, batched, ideally on the GPU (:mod:`torchdicom.transforms`).
"""

from torchdicom.data.clips import DicomClipDataset
from torchdicom.data.collate import Collate, collate
from torchdicom.data.frames import DicomDataset
from torchdicom.data.resize import SizePolicy, to_original, to_resized
from torchdicom.data.sampler import SizeBucketBatchSampler
from torchdicom.data.sources import LabelSource, MaskSource
from torchdicom.data.volumes import DicomVolumeDataset

__all__ = [
    "Collate",
    "DicomClipDataset",
    "DicomDataset",
    "DicomShardDataset",
    "DicomVolumeDataset",
    "LabelSource",
    "MaskSource",
    "SizeBucketBatchSampler",
    "SizePolicy",
    "collate",
    "to_original",
    "to_resized",
]


def __getattr__(name: str):
    # Shard streaming (torchdicom.data.shards) loads on first use: most runs read files.
    if name == "DicomShardDataset":
        from torchdicom.data.shards import DicomShardDataset

        return DicomShardDataset
    raise AttributeError(f"module 'torchdicom.data' has no attribute {name!r}")
