"""DICOM Segmentation (SEG) objects as per-frame masks, read once per dataset with highdicom.

A SEG is read whole at dataset construction into a lookup (SOP Instance UID, 0-based frame)
→ the frame's segments as one bit-packed (S, H, W) array, so an item costs one dictionary
look-up and an unpack. Only frames with at least one segment pixel are kept; every other
frame of the dataset gets zeros. The lookup holds numpy arrays only, so it pickles into
DataLoader workers (and is shared copy-on-write under fork).

Matching a SEG frame to an image frame:

* single-frame images: by (0008,1155) *Referenced SOP Instance UID* of the SEG frame's
  source image (highdicom's ``get_pixels_by_source_instance``);
* multi-frame images: by referenced SOP Instance UID and (0008,1160) *Referenced Frame
  Number* (``get_pixels_by_source_frame``);
* by position where the SEG does not say which source frames its frames come from (it
  names an enhanced image without frame numbers, or its frames carry no source image
  references at all, only the series it segments): a SEG frame belongs to each frame of the
  images of the series it references whose (0020,0032) *Image Position (Patient)* — per
  frame for enhanced images (Plane Position functional group) — lies within
  :data:`POSITION_TOLERANCE_MM` of the SEG frame's plane position on every axis. Where a
  series repeats positions (time points), all of them get the mask.

(0028,135A) *Spatial Locations Preserved* is not required: most SEG writers leave it out
(pydicom-data's ``liver.dcm`` does), and highdicom refuses source indexing without it
unless told to ignore it, which is what is done here.

Segment types:

* ``BINARY``: 0/1 as stored.
* ``FRACTIONAL`` (probability or occupancy): a pixel belongs to a segment when its value,
  scaled by (0062,000E) *Maximum Fractional Value* to 0…1, is at least 0.5.
* ``LABELMAP``: one channel per segment number, 1 where the stored label equals it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchdicom.errors import (
    CorruptDicomError,
    MissingPixelDataError,
    NotDicomError,
    TorchDicomError,
)
from torchdicom.io.dicomfile import dcmread
from torchdicom.io.files import get_dicom_files
from torchdicom.io.frames import check_declared_size, row_for_path

__all__ = ["POSITION_TOLERANCE_MM", "SEG_SOP_CLASSES", "SegMasks", "find_seg_files"]

log = logging.getLogger("torchdicom.data")

# Segmentation Storage and Label Map Segmentation Storage.
SEG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
POSITION_TOLERANCE_MM = 0.01
_FRACTIONAL_THRESHOLD = 0.5
_CHUNK = 16  # source instances (or frames) asked of highdicom at a time: bounds the dense array


class MissingHighdicomError(TorchDicomError, ImportError):
    """DICOM SEG masks need highdicom, which is not installed."""


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError:
        raise MissingHighdicomError(
            None, "DICOM SEG masks need highdicom: pip install torchdicom[seg]"
        ) from None
    return highdicom


def _sop_class(path: str) -> str | None:
    """The file's SOP Class UID, or None when it is not a readable DICOM file."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except TorchDicomError:
        return None
    return str(ds.get("SOPClassUID", "")) or None


def find_seg_files(masks: str | os.PathLike[str]) -> list[str] | None:
    """The SEG files ``masks`` names, or None when it is a folder of mirrored mask images.

    A file must be a SEG. A folder counts as a folder of SEGs when its first DICOM file
    (in :func:`~torchdicom.io.files.get_dicom_files` order) is a SEG; then every SEG in it
    is used and its other DICOM files are left out with a warning. Otherwise it is a mask
    folder mirroring the images, recognised from one header read, however large it is.

    Raises:
        NotDicomError: ``masks`` is a file but not a DICOM Segmentation.
    """
    path = os.fspath(masks)
    if not os.path.isdir(path):
        sop_class = _sop_class(path)
        if sop_class not in SEG_SOP_CLASSES:
            raise NotDicomError(
                path,
                "masks= names a file that is not a DICOM Segmentation (SOP Class UID "
                f"{sop_class or 'unreadable'}; expected 1.2.840.10008.5.1.4.1.1.66.4)",
            )
        return [path]
    files = [os.fspath(f) for f in get_dicom_files(path)]
    for i, f in enumerate(files):
        sop_class = _sop_class(f)
        if sop_class is None:
            continue
        if sop_class not in SEG_SOP_CLASSES:
            return None
        segs = [f] + [g for g in files[i + 1 :] if _sop_class(g) in SEG_SOP_CLASSES]
        if len(segs) < len(files) - i:
            log.warning(
                "%d file(s) in the SEG folder %s are not DICOM Segmentations and are left out",
                len(files) - i - len(segs),
                path,
            )
        return segs
    return None


def _check_seg(path: str, ds: Any) -> Any:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in SEG_SOP_CLASSES:
        raise NotDicomError(path, f"not a DICOM Segmentation (SOP Class UID {sop_class or '?'})")
    return ds


def _seg_header(path: str) -> Any:
    """The SEG's header without its pixel data."""
    return _check_seg(path, dcmread(path, stop_before_pixels=True))


def _read_seg(path: str) -> Any:
    """The whole SEG as a highdicom ``Segmentation``.

    Its declared pixel data size is checked against the file first (as for every read):
    a truncated SEG or a lying header is a :class:`CorruptDicomError`, not a failed
    reshape or an out-of-memory deep in highdicom.
    """
    hd = _highdicom()
    try:
        row = row_for_path(path)
    except MissingPixelDataError:
        raise CorruptDicomError(path, "a SEG without (7FE0,0010) Pixel Data") from None
    check_declared_size(row)
    ds = _check_seg(path, dcmread(path))
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:  # highdicom's checks raise ValueError, AttributeError, KeyError …
        raise CorruptDicomError(path, f"not a readable DICOM Segmentation: {exc}") from None


def _segment_labels(seg: Any) -> dict[int, str]:
    """Segment number → its channel name, in segment-number order: the (0062,0005) *Segment
    Label* (``"Segment <n>"`` where absent), with ``" (2)"``, ``" (3)"`` … added to a label
    that an earlier segment of the same SEG has already, so that each segment of a SEG has
    a channel of its own.

    A LABELMAP's background segment (number 0) is not a segment here: it gets no channel.
    """
    # highdicom's Segmentation.segment_numbers: all but the one equal to (0028,0120) *Pixel
    # Padding Value* (a LABELMAP's background); works on the plain header too.
    background = seg.get("PixelPaddingValue")
    numbers = {
        int(item.SegmentNumber)
        for item in seg.SegmentSequence
        if background is None or int(item.SegmentNumber) != int(background)
    }
    labels = {
        int(item.SegmentNumber): str(
            item.get("SegmentLabel", "") or f"Segment {item.SegmentNumber}"
        )
        for item in seg.SegmentSequence
        if int(item.SegmentNumber) in numbers
    }
    out: dict[int, str] = {}
    for number in sorted(labels):
        name, k = labels[number], 1
        while name in out.values():
            k += 1
            name = f"{labels[number]} ({k})"
        out[number] = name
    return out


def _as_binary(pixels: np.ndarray, segmentation_type: str) -> np.ndarray:
    """(N, H, W, s) highdicom pixels (BINARY 0/1, FRACTIONAL rescaled 0…1) → bool."""
    if segmentation_type == "FRACTIONAL":
        return pixels >= _FRACTIONAL_THRESHOLD
    return pixels > 0


def _frame_positions(row: Mapping[str, Any], frames: int) -> np.ndarray:
    """(frames, 3) Image Position (Patient) of each frame of an image file, NaN where absent.

    From the index's per-frame ``frame_position`` column where the index has it, else from
    the file's functional groups (one header read per file, at dataset construction).
    """
    indexed = row.get("frame_position")
    if indexed is not None and len(indexed) == 3 * frames:
        return np.asarray(indexed, float).reshape(frames, 3)
    out = np.full((frames, 3), np.nan)
    ds = dcmread(row["path"], stop_before_pixels=True)
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for k in range(frames):
        for groups in (per_frame[k] if k < len(per_frame) else None, shared[0] if shared else None):
            plane = groups.get("PlanePositionSequence") if groups is not None else None
            if plane:
                out[k] = [float(v) for v in plane[0].ImagePositionPatient]
                break
    return out


class SegMasks:
    """Per-frame masks from DICOM SEG files, for the image files of one dataset.

    Args:
        seg_paths: the SEG files.
        rows: the dataset's index rows (the images the masks are for).

    Attributes:
        segments: the segment labels, one per mask channel, in channel order: the union of
            the SEGs' (0062,0005) *Segment Label* values, in order of first appearance with
            the SEG files taken in path order and each SEG's segments in segment-number
            order. When every SEG has the same segments (one SEG per series, the usual
            case), these are simply its segments in segment-number order. Segments of
            different SEGs with the same label share a channel (where two SEGs cover one
            frame, their pixels are or-ed); within one SEG a repeated label gets ``" (2)"``
            … so that each segment has its own channel.
        seg_paths: the SEG files, sorted.

    Raises:
        MissingHighdicomError: highdicom is not installed.
        NotDicomError, CorruptDicomError: a SEG file is not a readable Segmentation.
        CorruptDicomError: a SEG's frames differ in size from an image they reference.
    """

    def __init__(
        self, seg_paths: Iterable[str | os.PathLike[str]], rows: Sequence[Mapping[str, Any]]
    ):
        self.seg_paths = sorted(os.fspath(p) for p in seg_paths)
        if not self.seg_paths:
            raise ValueError("no DICOM SEG files given for masks")
        _highdicom()  # before reading anything: say what to install
        # The channels first, from the headers; then one whole SEG in memory at a time.
        self.segments: list[str] = []
        for path in self.seg_paths:
            header = _seg_header(path)
            if "SegmentSequence" not in header:
                raise CorruptDicomError(path, "a SEG without (0062,0002) Segment Sequence")
            try:
                labels = _segment_labels(header)
            except (AttributeError, TypeError, ValueError) as exc:
                raise CorruptDicomError(path, f"unreadable Segment Sequence: {exc}") from None
            for label in labels.values():
                if label not in self.segments:
                    self.segments.append(label)
        self._packed: dict[tuple[str, int], np.ndarray] = {}
        by_uid: dict[str, Mapping[str, Any]] = {}
        by_series: dict[str, list[str]] = {}
        for r in rows:
            uid = str(r["sop_instance_uid"])
            if uid not in by_uid:
                by_uid[uid] = r
                by_series.setdefault(str(r["series_instance_uid"]), []).append(uid)
        for path in self.seg_paths:
            self._add(path, _read_seg(path), by_uid, by_series)

    def __len__(self) -> int:
        """The number of mask channels S."""
        return len(self.segments)

    def _add(
        self,
        path: str,
        seg: Any,
        by_uid: Mapping[str, Mapping[str, Any]],
        by_series: Mapping[str, list[str]],
    ) -> None:
        """Put the SEG's frames into the lookup, for the images it references: ``by_uid``
        SOP Instance UID → index row, ``by_series`` Series Instance UID → those UIDs."""
        labels = _segment_labels(seg)
        numbers = sorted(labels)
        channels = np.array([self.segments.index(labels[n]) for n in numbers])
        seg_type = seg.segmentation_type.value
        derived = _derivation_references(seg)
        sources = seg.get_source_image_uids()
        referenced = {str(uid) for _, _, uid in sources} | set(derived)
        seg_series = {str(series) for _, series, _ in sources}
        # The images the SEG names, and the other images of the series it names.
        hits = sorted(
            {u for u in referenced if u in by_uid}
            | {u for series in seg_series for u in by_series.get(series, ())}
        )
        if not hits:
            log.warning("the SEG %s references none of the dataset's images", path)
            return
        ask = {
            "segment_numbers": numbers,
            "ignore_spatial_locations": True,
            "assert_missing_frames_are_empty": True,
            "skip_overlap_checks": True,
        }
        by_position = []
        single = []
        for uid in hits:
            r = by_uid[uid]
            if derived and uid not in derived:
                # An image of the series that the SEG derives no frame from: not matched by
                # position either, which in a series with repeated positions (time points)
                # would paint the masks on the wrong acquisition.
                continue
            _check_size(path, seg, r)
            frames = int(r["frames"])
            if frames == 1 and uid in derived:
                single.append(uid)
            elif derived.get(uid):
                for k in range(0, frames, _CHUNK):
                    wanted = list(range(k + 1, min(k + _CHUNK, frames) + 1))
                    pixels = self._ask(path, seg.get_pixels_by_source_frame, uid, wanted, **ask)
                    for n, frame in zip(wanted, _as_binary(pixels, seg_type)):
                        self._put((uid, n - 1), frame, channels)
            else:
                # The SEG does not say which source frames its frames come from: no source
                # references at all, or this multi-frame image named without frame numbers.
                by_position.append(r)
        for k in range(0, len(single), _CHUNK):
            chunk = single[k : k + _CHUNK]
            pixels = self._ask(path, seg.get_pixels_by_source_instance, chunk, **ask)
            for uid, frame in zip(chunk, _as_binary(pixels, seg_type)):
                self._put((uid, 0), frame, channels)
        if by_position:
            self._add_by_position(seg, by_position, channels)

    def _add_by_position(
        self, seg: Any, rows: Sequence[Mapping[str, Any]], channels: np.ndarray
    ) -> None:
        """Match the SEG's frames to the images' frames by Image Position (Patient)."""
        keys: list[tuple[str, int]] = []
        positions = []
        for r in rows:
            uid, frames = str(r["sop_instance_uid"]), int(r["frames"])
            if frames == 1:
                positions.append([[float(r[f"position_{a}"]) for a in "xyz"]])
            else:
                positions.append(_frame_positions(r, frames))
            keys += [(uid, k) for k in range(frames)]
        image_positions = np.concatenate([np.asarray(p, float) for p in positions])
        seg_positions, seg_numbers = _seg_frame_positions(seg)
        numbers = sorted(_segment_labels(seg))
        seg_type = seg.segmentation_type.value
        max_fractional = float(seg.get("MaximumFractionalValue", 1) or 1)
        for f, (position, number) in enumerate(zip(seg_positions, seg_numbers)):
            if seg_type != "LABELMAP" and number not in numbers:
                continue
            # NaN positions compare False: never matched.
            near = np.flatnonzero(
                np.abs(image_positions - position).max(axis=1) <= POSITION_TOLERANCE_MM
            )
            if not near.size:
                continue
            stored = (
                seg.get_stored_frame(f + 1)
                if hasattr(seg, "get_stored_frame")  # highdicom >= 0.25
                else seg.pixel_array[f]
                if int(seg.get("NumberOfFrames", 1)) > 1
                else seg.pixel_array
            )
            if seg_type == "LABELMAP":
                binary = np.stack([stored == n for n in numbers], axis=-1)
            else:
                values = stored / max_fractional if seg_type == "FRACTIONAL" else stored
                binary = np.zeros((*stored.shape, len(numbers)), bool)
                binary[..., numbers.index(number)] = _as_binary(values, seg_type)
            for j in near:
                self._put(keys[j], binary, channels)

    @staticmethod
    def _ask(path: str, method: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        try:
            return method(*args, **kwargs)
        except MemoryError:
            raise
        except Exception as exc:  # highdicom and the pixel decoders raise many kinds
            raise CorruptDicomError(
                path, f"cannot read the SEG's frames for its source images: {exc}"
            ) from None

    def _put(self, key: tuple[str, int], frame: np.ndarray, channels: np.ndarray) -> None:
        """Or a (H, W, s) bool frame into the (S, H, W) mask kept for ``key``."""
        if not frame.any():
            return
        h, w = frame.shape[:2]
        mask = self._unpack(key, h, w) if key in self._packed else np.zeros((len(self), h, w), bool)
        mask[channels] |= np.moveaxis(frame, -1, 0)
        self._packed[key] = np.packbits(mask)

    def _unpack(self, key: tuple[str, int], h: int, w: int) -> np.ndarray:
        bits = np.unpackbits(self._packed[key], count=len(self) * h * w)
        return bits.reshape(len(self), h, w).view(bool)

    def read(self, row: Mapping[str, Any], frame: int | Sequence[int]) -> torch.Tensor:
        """The mask of one frame (S, H, W) or of a list of frames (T, S, H, W), uint8 0/1.

        Frames no segment covers are zeros.
        """
        h, w = int(row["rows"]), int(row["columns"])
        uid = str(row["sop_instance_uid"])
        wanted = [frame] if isinstance(frame, int) else list(frame)
        out = np.zeros((len(wanted), len(self), h, w), np.uint8)
        for t, k in enumerate(wanted):
            if (uid, int(k)) in self._packed:
                out[t] = self._unpack((uid, int(k)), h, w)
        m = torch.from_numpy(out)
        return m[0] if isinstance(frame, int) else m


def _check_size(path: str, seg: Any, row: Mapping[str, Any]) -> None:
    """Refuse a SEG whose frames differ in size from an image it is matched to."""
    if (int(row["rows"]), int(row["columns"])) != (int(seg.Rows), int(seg.Columns)):
        raise CorruptDicomError(
            path,
            f"SEG frames are {seg.Rows}x{seg.Columns} but the image {row['path']} it "
            f"references is {row['rows']}x{row['columns']}",
        )


def _derivation_references(seg: Any) -> dict[str, bool]:
    """The source instances the SEG's frames are derived from ((5200,9230) *Per-frame
    Functional Groups* → (0008,9124) *Derivation Image* → (0008,2112) *Source Image*), each
    with whether it names the source frames by (0008,1160) *Referenced Frame Number*."""
    out: dict[str, bool] = {}
    for groups in seg.get("PerFrameFunctionalGroupsSequence") or []:
        for derivation in groups.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                uid = str(source.ReferencedSOPInstanceUID)
                out[uid] = out.get(uid, False) or bool(source.get("ReferencedFrameNumber"))
    return out


def _seg_frame_positions(seg: Any) -> tuple[np.ndarray, list[int]]:
    """(frames, 3) plane positions of the SEG's frames and each frame's segment number."""
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    positions, numbers = [], []
    for groups in seg.get("PerFrameFunctionalGroupsSequence") or []:
        plane = groups.get("PlanePositionSequence") or (
            shared.get("PlanePositionSequence") if shared is not None else None
        )
        positions.append(
            [float(v) for v in plane[0].ImagePositionPatient] if plane else [np.nan] * 3
        )
        ident = groups.get("SegmentIdentificationSequence") or (
            shared.get("SegmentIdentificationSequence") if shared is not None else None
        )
        numbers.append(int(ident[0].ReferencedSegmentNumber) if ident else 0)
    return np.asarray(positions, float).reshape(-1, 3), numbers
