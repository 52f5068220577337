"""The keys of dataset items and batch dicts, named once.

The datasets write these keys, :class:`~torchdicom.Collate` batches them by the groups below,
and the transforms read them; a custom transform or dataset should spell them from here too.
This module imports nothing, so both ``data`` and ``transforms`` (which never import each
other) stand on it.

Per-sample values are the file's (or frame's) own header values; in a batch each becomes a
(B,) tensor (a volume's per-slice values (B, D)).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AFFINE",
    "BITS_STORED",
    "BOOL_KEYS",
    "CROP",
    "FLOAT_KEYS",
    "FRAME",
    "FRAMES",
    "IMAGE",
    "INDEX",
    "INTERCEPT",
    "INT_KEYS",
    "LABEL",
    "MASK",
    "MONOCHROME1",
    "ORIGINAL_SIZE",
    "PAD",
    "PATH",
    "PATHS",
    "PENDING",
    "PIXEL_KEYS",
    "POSITIONS",
    "SCALE",
    "SERIES_INSTANCE_UID",
    "SIGNED",
    "SLOPE",
    "SPACING",
    "SUBSTITUTED",
    "WINDOW_CENTER",
    "WINDOW_WIDTH",
    "YBR",
]

# --------------------------------------------------------------------------- pixels
#: Stored values: (C, H, W) per frame item, (T, C, H, W) per clip, (1, D, H, W) per volume.
IMAGE: Final = "image"
#: Segment masks beside the image: (S, H, W) uint8, one channel per segment.
MASK: Final = "mask"

# --------------------------------------------------------------------------- per-sample header values
#: (0028,1053) *Rescale Slope* (NaN: the file had none, read as 1).
SLOPE: Final = "slope"
#: (0028,1052) *Rescale Intercept* (NaN: the file had none, read as 0).
INTERCEPT: Final = "intercept"
#: First value of (0028,1050) *Window Center* (NaN: none).
WINDOW_CENTER: Final = "window_center"
#: First value of (0028,1051) *Window Width* (NaN: none).
WINDOW_WIDTH: Final = "window_width"
#: (0028,0004) *Photometric Interpretation* is MONOCHROME1 (minimum displayed white).
MONOCHROME1: Final = "monochrome1"
#: (0028,0101) *Bits Stored*.
BITS_STORED: Final = "bits_stored"
#: (0028,0103) *Pixel Representation* 1: two's complement stored values.
SIGNED: Final = "signed"
#: The colour frames are handed over in YCbCr (``color="ybr"``), not RGB.
YBR: Final = "ybr"
#: (4, 4) float64 voxel (column, row, slice) -> patient LPS mm.
AFFINE: Final = "affine"

# --------------------------------------------------------------------------- where the item comes from
#: The file's path (a list of str in a batch).
PATH: Final = "path"
#: The frame of the file (a clip's first frame).
FRAME: Final = "frame"
#: The item's index in its dataset.
INDEX: Final = "index"
#: Another item stood in for this one, whose file failed (``on_error="skip"``).
SUBSTITUTED: Final = "substituted"
#: The item's image is decoded on the device in the main process (``decode_device="cuda"``):
#: until the dataset's ``decode_batch`` runs, its slot of the batch ``image`` holds no values.
PENDING: Final = "pending"
#: The item's label, from the dataset's ``labels``.
LABEL: Final = "label"

# --------------------------------------------------------------------------- volumes
#: (dz, dy, dx) in mm.
SPACING: Final = "spacing"
#: (0020,000E) *Series Instance UID* of the volume.
SERIES_INSTANCE_UID: Final = "series_instance_uid"
#: The path of each slice's file.
PATHS: Final = "paths"
#: The frame of each slice in its file.
FRAMES: Final = "frames"
#: Each slice's (0020,0032) *Image Position (Patient)*.
POSITIONS: Final = "positions"

# --------------------------------------------------------------------------- size policy
#: (H, W) before the size policy.
ORIGINAL_SIZE: Final = "original_size"
#: The crop taken from the original image.
CROP: Final = "crop"
#: The resampling factors.
SCALE: Final = "scale"
#: The padding added after resampling.
PAD: Final = "pad"

# --------------------------------------------------------------------------- how Collate batches them
#: Images and masks: stacked into one (B, ...) buffer.
PIXEL_KEYS: Final = (IMAGE, MASK)
#: Batched as float32 (B,) (or (B, D) for volumes' per-slice values).
FLOAT_KEYS: Final = (SLOPE, INTERCEPT, WINDOW_CENTER, WINDOW_WIDTH)
#: Batched as bool (B,).
BOOL_KEYS: Final = (MONOCHROME1, SIGNED, YBR, SUBSTITUTED, PENDING)
#: Batched as int64 (B,).
INT_KEYS: Final = (BITS_STORED, FRAME, INDEX)
