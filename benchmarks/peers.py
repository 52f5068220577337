"""torchdicom side by side with the other ways of reading DICOM pixels.

``python -m benchmarks.peers [--quick]``

Every reader gets the same files, after the same page-cache warm-up, in the
same process and run; each timing is the median of several repeats. Cells are
*time per item* and *torchdicom's speed-up over that column*
(``column time / torchdicom time``): above 1 torchdicom is faster; in the
plain-read column a value below 1 says how close torchdicom gets to the
physical limit of touching every byte once.

Columns (a peer that is not installed or does not import is recorded and
skipped, never silently dropped):

* **plain read**: ``open(path).read()`` — the physical limit (native files);
* **torchdicom**: ``read_frames(row, frames=...)`` with rows from :func:`scan`
  (headers parsed once, outside the timed loop);
* **pydicom**: ``dcmread(path).pixel_array``; for one frame of a multi-frame
  file ``pydicom.pixels.pixel_array(path, index=k)``, for clips
  ``pydicom.pixels.iter_pixels(path, indices=...)`` (pydicom's best, which
  decodes only the asked frames);
* **dicomsdl**: ``dicomsdl.open(path).pixelData(index=k, storedvalue=True)``;
* **MONAI**: ``LoadImage(reader="PydicomReader", image_only=True)(path)``
  (whole file: it has no frame access; also applies rescale → float32);
* **TorchIO**: ``ScalarImage(path).data`` (SimpleITK/GDCM; whole file;
  applies rescale → int32);
* **fastai**: ``fastai.medical.imaging`` (``dcmread``/``pixels``/
  ``scaled_px``) when it imports; it needs torchvision, which does not import
  beside this torch build, so here it is recorded as skipped.

Workloads: single-frame 512² int16 CT (native, JPEG 2000 lossless and JPEG
lossless SV1), 8-bit 1024² chest radiographs, 2048² 16-bit (12 stored)
radiographs, and multi-frame ultrasound cine (253², native MONOCHROME2 and
JPEG baseline YBR_FULL_422): one random frame per call, and sequential
16-frame clips. A second table sets the compressed reads against the decoder
alone on the same code-streams (Pillow, openjpeg, libjpeg-turbo, libjpeg),
and the run ends with issue 14's targets, met or missed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.uid import JPEG2000Lossless

from benchmarks._common import median_s, version, warm_page_cache
from torchdicom import read_frames, scan
from torchdicom.samples import ct_like, siim_like, us_cine_like

__all__ = ["PEERS", "Workload", "median_s", "peer_status", "run", "warm_page_cache"]

#: Column order of every table.
PEERS = ("plain read", "torchdicom", "pydicom", "dicomsdl", "MONAI", "TorchIO", "fastai")
CLIP_LEN = 16


# ---------------------------------------------------------------------------
# Peers: each returns (callable or None, reason when None).


def _load_dicomsdl() -> Any:
    import dicomsdl

    return dicomsdl


def _load_monai() -> Any:
    from monai.transforms import LoadImage

    return LoadImage(reader="PydicomReader", image_only=True)


def _load_torchio() -> Any:
    import torchio

    return torchio


def _load_fastai() -> Any:
    import fastai.medical.imaging as fmi

    return fmi


_LOADERS: dict[str, tuple[Callable[[], Any], str]] = {
    "dicomsdl": (_load_dicomsdl, "dicomsdl"),
    "MONAI": (_load_monai, "monai"),
    "TorchIO": (_load_torchio, "torchio"),
    "fastai": (_load_fastai, "fastai"),
}


def peer_status() -> dict[str, tuple[Any, str]]:
    """Import every optional peer once: name → (module/object or None, version or why it is skipped)."""
    out: dict[str, tuple[Any, str]] = {}
    for name, (loader, dist) in _LOADERS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = loader()
            out[name] = (obj, version(dist))
        except Exception as exc:  # any import failure is a reason to skip, recorded verbatim
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if name == "fastai":
                reason += " (fastai needs torchvision, which does not import beside this torch)"
            out[name] = (None, f"skipped — {reason}")
    return out


# ---------------------------------------------------------------------------
# Workload files.


def _ct_native(root: Path, n: int) -> list[Path]:
    # Series variant 0 of ct_like: int16, 16 bits stored, realistic anatomy (so J2K ratios are real).
    ct_like(root, n_series=1, slices=n, size=512, seed=0)
    return sorted(
        p for p in root.rglob("IM*") if p.is_file() and "masks" not in p.relative_to(root).parts
    )


def _ct_j2k(native: Sequence[Path], root: Path) -> list[Path]:
    root.mkdir(parents=True)
    out = []
    for i, src in enumerate(native):
        ds = pydicom.dcmread(src)
        ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg encoder, bit-exact
        path = root / f"IM{i + 1:06d}"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def _ct_jpeg_lossless(native: Sequence[Path], root: Path) -> list[Path] | str:
    """The CT slices as JPEG lossless SV1 (GDCM's encoder; pydicom has none), or why not."""
    try:
        import gdcm
    except ImportError:
        return "python-gdcm (the JPEG lossless encoder here) is not installed"
    root.mkdir(parents=True)
    out = []
    for i, src in enumerate(native):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        if not reader.Read():
            return f"GDCM could not read {src.name}"
        change.SetInput(reader.GetImage())
        if not change.Change():
            return f"GDCM could not encode {src.name}"
        writer = gdcm.ImageWriter()
        path = root / f"IM{i + 1:06d}"
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            return f"GDCM could not write {path.name}"
        out.append(path)
    return out


def _replicate(sources: Sequence[Path], root: Path, n: int) -> list[Path]:
    # Generating realistic radiographs costs ~1 s each; readers see a file, not its content
    # (native files), so a few distinct images are copied to make n files.
    root.mkdir(parents=True)
    out = []
    for i in range(n):
        path = root / f"{i:06d}.dcm"
        shutil.copyfile(sources[i % len(sources)], path)
        out.append(path)
    return out


def _cr_8bit(root: Path, n: int, distinct: int) -> list[Path]:
    s = siim_like(root / "gen", n=distinct, size=1024, seed=0)
    return _replicate(s.files, root / "files", n)


def _dx_16bit(cr: Sequence[Path], root: Path, n: int, distinct: int) -> list[Path]:
    # 2048² DX-like: the 8-bit chest upsampled and spread to 12 bits stored in 16 allocated.
    gen = root / "gen"
    gen.mkdir(parents=True)
    sources = []
    for i, src in enumerate(cr[:distinct]):
        ds = pydicom.dcmread(src)
        img = ds.pixel_array.astype(np.uint16)
        img = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1) * 16
        rng = np.random.default_rng(i)
        img = (img + rng.integers(0, 16, img.shape, dtype=np.uint16)).astype(np.uint16)
        ds.Rows, ds.Columns = img.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = img.tobytes()
        path = gen / f"dx{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sources.append(path)
    return _replicate(sources, root / "files", n)


# ---------------------------------------------------------------------------
# Measurements.


@dataclass
class Workload:
    """One table row: what is read, how many items per timed run, and each column's median time."""

    name: str
    unit: str  # "file" or "frame"
    items: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def per_item_ms(self, peer: str) -> float:
        return 1000 * self.seconds[peer] / self.items

    def speedup(self, peer: str) -> float:
        """How many times faster torchdicom is than ``peer`` on this workload."""
        return self.seconds[peer] / self.seconds["torchdicom"]


def _same_pixels(got: Any, ref: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> str:
    """Compare a peer's array with pydicom's stored values; name what the peer did differently.

    MONAI and TorchIO return arrays in their own axis order (transposed, RAS-flipped) and
    with the rescale applied, so those are tried before calling the values different.
    """
    arr = np.asarray(got).squeeze()
    if arr.ndim < 2:
        return f"shape {arr.shape} vs pydicom {ref.shape}"
    views = []
    for t in (arr, np.swapaxes(arr, 0, 1)):
        for fy in (False, True):
            for fx in (False, True):
                v = t[::-1] if fy else t
                views.append(v[:, ::-1] if fx else v)
    hu = ref.astype(np.float64) * slope + intercept
    for v in views:
        if v.shape != ref.shape:
            continue
        how = "" if v is arr else "same pixels in another axis order/orientation"
        if np.array_equal(v, ref):
            return how
        if (slope, intercept) != (1.0, 0.0) and np.allclose(v.astype(np.float64), hu):
            return f"rescaled values (dtype {v.dtype}){'; ' + how if how else ''}"
    same = [v for v in views if v.shape == ref.shape]
    if not same:
        return f"shape {arr.shape} vs pydicom {ref.shape}"
    diff = min(np.abs(v.astype(np.float64) - ref.astype(np.float64)).max() for v in same)
    return f"values differ from pydicom (max |Δ| {diff:g}, dtype {arr.dtype})"


def _single_frame(
    name: str,
    paths: list[Path],
    peers: dict[str, tuple[Any, str]],
    repeats: int,
    native: bool,
) -> Workload:
    warm_page_cache(paths)
    rows = scan(paths, progress=False, workers=0).rows()
    assert len(rows) == len(paths), f"{name}: scan indexed {len(rows)} of {len(paths)} files"
    w = Workload(name, "file", len(paths))
    ref_ds = pydicom.dcmread(paths[0])
    ref = ref_ds.pixel_array
    slope = float(ref_ds.get("RescaleSlope", 1.0))
    intercept = float(ref_ds.get("RescaleIntercept", 0.0))
    if not np.array_equal(read_frames(rows[0])[0].permute(1, 2, 0).squeeze(-1).numpy(), ref):
        w.notes["torchdicom"] = "DIFFERS from pydicom"

    readers: dict[str, Callable[[Path], Any]] = {
        "pydicom": lambda p: pydicom.dcmread(p).pixel_array,
    }
    sdl, _ = peers["dicomsdl"]
    if sdl is not None:
        readers["dicomsdl"] = lambda p: sdl.open(str(p)).pixelData(storedvalue=True)
    monai, _ = peers["MONAI"]
    if monai is not None:
        readers["MONAI"] = lambda p: monai(str(p))
    tio, _ = peers["TorchIO"]
    if tio is not None:
        readers["TorchIO"] = lambda p: tio.ScalarImage(str(p)).data
    fai, _ = peers["fastai"]
    if fai is not None:
        readers["fastai"] = lambda p: fai.dcmread(p).pixels

    if native:

        def plain() -> None:
            for p in paths:
                with open(p, "rb") as f:
                    f.read()

        w.seconds["plain read"] = median_s(plain, repeats)
    else:
        w.notes["plain read"] = "n/a (compressed)"

    def ours() -> None:
        for r in rows:
            read_frames(r)

    w.seconds["torchdicom"] = median_s(ours, repeats)
    for peer, reader in readers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI/TorchIO warn per file about metadata
            try:
                note = _same_pixels(reader(paths[0]), ref, slope, intercept)
                w.seconds[peer] = median_s(
                    lambda reader=reader: [reader(p) for p in paths], repeats
                )
            except (
                Exception
            ) as exc:  # a peer that cannot read this workload gets a note, not a crash
                w.notes[peer] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                continue
        if note:
            w.notes[peer] = note
    return w


def _whole_file_readers(peers: dict[str, tuple[Any, str]]) -> dict[str, Callable[[Path], Any]]:
    out: dict[str, Callable[[Path], Any]] = {}
    monai, _ = peers["MONAI"]
    if monai is not None:
        out["MONAI"] = lambda p: monai(str(p))
    tio, _ = peers["TorchIO"]
    if tio is not None:
        out["TorchIO"] = lambda p: tio.ScalarImage(str(p)).data
    fai, _ = peers["fastai"]
    if fai is not None:
        out["fastai"] = lambda p: fai.dcmread(p).pixels
    return out


def _cine_random(
    name: str, path: Path, frames: int, calls: int, peers: dict[str, tuple[Any, str]], repeats: int
) -> Workload:
    """One random frame per call. Readers without frame access load the whole file per call."""
    warm_page_cache([path])
    (row,) = scan([path], progress=False, workers=0).rows()
    rng = random.Random(0)
    ks = [rng.randrange(frames) for _ in range(calls)]
    w = Workload(name, "frame", calls)
    ref = pydicom.pixels.pixel_array(str(path), index=ks[0])
    got = read_frames(row, frames=ks[0])[0].permute(1, 2, 0).squeeze(-1).numpy()
    if not np.array_equal(got, ref):
        w.notes["torchdicom"] = "DIFFERS from pydicom"
    w.seconds["torchdicom"] = median_s(lambda: [read_frames(row, frames=k) for k in ks], repeats)
    w.seconds["pydicom"] = median_s(
        lambda: [pydicom.pixels.pixel_array(str(path), index=k) for k in ks], repeats
    )
    w.notes["pydicom"] = "pixels.pixel_array(index=k)"
    sdl, _ = peers["dicomsdl"]
    if sdl is not None:
        note = _same_pixels(sdl.open(str(path)).pixelData(index=ks[0], storedvalue=True), ref)
        w.seconds["dicomsdl"] = median_s(
            lambda: [sdl.open(str(path)).pixelData(index=k, storedvalue=True) for k in ks], repeats
        )
        if note:
            w.notes["dicomsdl"] = note
    # Whole-file readers: one call gets "a" frame; a few calls per repeat keep this short.
    for peer, reader in _whole_file_readers(peers).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                t = median_s(lambda reader=reader: reader(path), 3)
            except Exception as exc:
                w.notes[peer] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                continue
        w.seconds[peer] = t * calls  # same unit as the others: time for `calls` frames
        w.notes[peer] = "whole file per frame (no frame access)"
    return w


def _cine_clips(
    name: str, path: Path, frames: int, peers: dict[str, tuple[Any, str]], repeats: int
) -> Workload:
    """Every frame of the file as consecutive 16-frame clips (an epoch of a clip dataset)."""
    warm_page_cache([path])
    (row,) = scan([path], progress=False, workers=0).rows()
    starts = list(range(0, frames - CLIP_LEN + 1, CLIP_LEN))
    clips = [list(range(s, s + CLIP_LEN)) for s in starts]
    n_frames = len(clips) * CLIP_LEN
    w = Workload(name, "frame", n_frames)
    w.seconds["torchdicom"] = median_s(lambda: [read_frames(row, frames=c) for c in clips], repeats)
    w.seconds["pydicom"] = median_s(
        lambda: [list(pydicom.pixels.iter_pixels(str(path), indices=c)) for c in clips], repeats
    )
    w.notes["pydicom"] = "pixels.iter_pixels(indices=clip)"
    sdl, _ = peers["dicomsdl"]
    if sdl is not None:

        def sdl_clips() -> None:
            for c in clips:
                d = sdl.open(str(path))
                [d.pixelData(index=k, storedvalue=True) for k in c]

        w.seconds["dicomsdl"] = median_s(sdl_clips, repeats)
    # Whole-file readers do best by loading the cine once and slicing every clip from it.
    for peer, reader in _whole_file_readers(peers).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                w.seconds[peer] = median_s(lambda reader=reader: reader(path), 3)
            except Exception as exc:
                w.notes[peer] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                continue
        w.notes[peer] = "whole file once, then sliced"
    return w


@dataclass
class CodecRow:
    """torchdicom against the decoder alone on the very same code-streams (the codec's limit)."""

    name: str
    codec: str
    items: int
    torchdicom_s: float
    codec_s: float

    @property
    def ratio(self) -> float:
        return self.codec_s / self.torchdicom_s


def _code_streams(row: dict[str, Any], frames: Sequence[int]) -> list[bytes]:
    """The frames' code-streams, as pydicom finds them (outside the timed loop)."""
    from pydicom.encaps import get_frame

    with open(row["path"], "rb") as f:
        streams = []
        for k in frames:
            f.seek(int(row["pixel_offset"]))
            streams.append(get_frame(f, k, number_of_frames=int(row["frames"])))
    return streams


def _codec_alone(
    name: str,
    codec: str,
    paths: Sequence[Path],
    decode: Callable[[bytes], Any],
    repeats: int,
    clip: bool = False,
) -> CodecRow:
    """Single-frame files (one read per file), or one cine as 16-frame clips (``clip``)."""
    rows = scan(list(paths), progress=False, workers=0).rows()
    if clip:
        (row,) = rows
        clips = [
            list(range(s, s + CLIP_LEN))
            for s in range(0, int(row["frames"]) - CLIP_LEN + 1, CLIP_LEN)
        ]
        streams = _code_streams(row, [k for c in clips for k in c])
        t_ours = median_s(lambda: [read_frames(row, frames=c) for c in clips], repeats)
        items = len(streams)
    else:
        streams = [_code_streams(r, [0])[0] for r in rows]
        t_ours = median_s(lambda: [read_frames(r) for r in rows], repeats)
        items = len(rows)
    t_codec = median_s(lambda: [decode(s) for s in streams], repeats)
    return CodecRow(name, codec, items, t_ours, t_codec)


def _codec_rows(
    us_jpeg: Path, j2k: Sequence[Path], lossless: Sequence[Path] | str, repeats: int
) -> tuple[list[CodecRow], list[str]]:
    import io

    rows: list[CodecRow] = []
    notes: list[str] = []
    try:
        from PIL import Image

        def pillow_rgb(stream: bytes) -> Any:
            return Image.open(io.BytesIO(stream)).convert("RGB").tobytes()

        rows.append(
            _codec_alone(
                "US cine JPEG baseline YBR, 16-frame clips (RGB)",
                "Pillow (libjpeg-turbo) → RGB, 1 thread",
                [us_jpeg],
                pillow_rgb,
                repeats,
                clip=True,
            )
        )
    except ImportError:
        notes.append("Pillow not installed")
    try:
        from openjpeg import decode as openjpeg_decode

        rows.append(
            _codec_alone(
                "CT 512² JPEG 2000 lossless",
                "pylibjpeg-openjpeg decode",
                j2k,
                openjpeg_decode,
                repeats,
            )
        )
    except ImportError:
        notes.append("pylibjpeg-openjpeg not installed")
    if isinstance(lossless, str):
        notes.append(f"JPEG lossless: {lossless}")
    else:
        try:
            import imagecodecs

            rows.append(
                _codec_alone(
                    "CT 512² JPEG lossless SV1",
                    "libjpeg-turbo 3 (imagecodecs.jpeg8_decode)",
                    lossless,
                    imagecodecs.jpeg8_decode,
                    repeats,
                )
            )
        except ImportError:
            notes.append("imagecodecs not installed (torchdicom[codecs])")
        from libjpeg import decode as libjpeg_decode

        rows.append(
            _codec_alone(
                "CT 512² JPEG lossless SV1",
                "pylibjpeg-libjpeg decode",
                lossless,
                libjpeg_decode,
                repeats,
            )
        )
    return rows, notes


def _j2k_workers(paths: Sequence[Path], repeats: int) -> list[str]:
    """JPEG 2000 CT through DicomDataset + DataLoader at 0, 1 and 2 worker processes.

    openjpeg holds the GIL, so more decoding needs more processes: files/s per worker
    count, each epoch after a warm-up one (persistent workers).
    """
    from torch.utils.data import DataLoader

    from torchdicom import Collate, DicomDataset

    dataset = DicomDataset([str(p) for p in paths])
    lines = ["| DataLoader workers | files/s | vs 0 workers |", "|---:|---:|---:|"]
    base = None
    for workers in (0, 1, 2):
        loader = DataLoader(
            dataset,
            batch_size=4,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=Collate(),
        )
        for _ in loader:  # warm-up epoch: workers started, decoders loaded
            pass
        seconds = median_s(lambda loader=loader: [None for _ in loader], repeats)
        rate = len(dataset) / seconds
        base = base or rate
        lines.append(f"| {workers} | {rate:,.1f} | {rate / base:.2f}× |")
        del loader
    return lines


def _codec_table(rows: Sequence[CodecRow]) -> list[str]:
    lines = [
        "| workload | codec alone | torchdicom | codec alone | torchdicom / codec |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ours = 1000 * r.torchdicom_s / r.items
        theirs = 1000 * r.codec_s / r.items
        lines.append(f"| {r.name} | {r.codec} | {ours:.2f} ms | {theirs:.2f} ms | {r.ratio:.2f}× |")
    return lines


def _targets(workloads: Sequence[Workload], codec: Sequence[CodecRow]) -> list[str]:
    """Issue 14's targets for compressed data, met or missed, from this run."""
    by_name = {w.name: w for w in workloads}
    out = []

    def check(label: str, name: str, peer: str, goal: float) -> None:
        w = by_name.get(name)
        if w is None or peer not in w.seconds:
            out.append(f"{label}: not measured ({peer} missing)")
            return
        got = w.speedup(peer)
        out.append(f"{label} ≥ {goal:g}× {peer}: {'met' if got >= goal else 'MISSED'} ({got:.2f}×)")

    for name in by_name:
        if "JPEG baseline" in name:
            check(name, name, "dicomsdl", 2.0)
            check(name, name, "pydicom", 5.0)
        if "JPEG lossless" in name:
            check(name, name, "dicomsdl", 1.0)
    for r in codec:
        if "JPEG 2000" in r.name:
            verdict = "met" if r.ratio >= 0.95 else "MISSED"
            out.append(f"{r.name} ≥ 0.95× {r.codec}: {verdict} ({r.ratio:.2f}×)")
    return out


# ---------------------------------------------------------------------------
# Report.


def _cell(w: Workload, peer: str, skipped: dict[str, str]) -> str:
    if peer in skipped:
        return "skipped"
    if peer not in w.seconds:
        return w.notes.get(peer, "—")
    ms = w.per_item_ms(peer)
    ms_text = f"{ms:.3f} ms" if ms < 1 else f"{ms:.1f} ms" if ms < 100 else f"{ms:,.0f} ms"
    if peer == "torchdicom":
        return f"**{ms_text}**"
    return f"{ms_text} ({w.speedup(peer):.2f}×)"


def table(workloads: Sequence[Workload], skipped: dict[str, str]) -> list[str]:
    """Markdown: one row per workload, one column per peer, 'time per item (torchdicom speed-up)'."""
    lines = [
        "| workload | " + " | ".join(PEERS) + " |",
        "|---|" + "---:|" * len(PEERS),
    ]
    for w in workloads:
        cells = [_cell(w, p, skipped) for p in PEERS]
        lines.append(f"| {w.name} (per {w.unit}) | " + " | ".join(cells) + " |")
    return lines


def headline(workloads: Sequence[Workload]) -> list[str]:
    """The README table: ratios only (torchdicom speed-up over each peer; plain read = fraction of the limit)."""
    cols = [p for p in PEERS if p != "torchdicom" and any(p in w.seconds for w in workloads)]
    lines = ["| workload | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for w in workloads:
        cells = [f"{w.speedup(p):.2f}×" if p in w.seconds else "—" for p in cols]
        lines.append(f"| {w.name} | " + " | ".join(cells) + " |")
    return lines


#: The last run's workloads, so that the suite can build the README headline without re-running.
LAST: list[Workload] = []


def run(quick: bool = False) -> str:
    """Run every workload against every installed peer and return the markdown section.

    Args:
        quick: fewer files, frames and repeats (about half a minute).
    """
    n_ct, n_j2k, n_cr, n_dx = (10, 4, 6, 3) if quick else (60, 20, 30, 12)
    cine_frames, calls = (48, 20) if quick else (240, 100)
    repeats = 3 if quick else 5
    peers = peer_status()
    skipped = {name: why for name, (obj, why) in peers.items() if obj is None}
    t_start = time.perf_counter()
    workloads: list[Workload] = []
    with tempfile.TemporaryDirectory(prefix="torchdicom-bench-peers-") as tmp:
        root = Path(tmp)
        ct = _ct_native(root / "ct", n_ct)
        j2k = _ct_j2k(ct[:n_j2k], root / "ct_j2k")
        lossless = _ct_jpeg_lossless(ct[:n_j2k], root / "ct_jpeg_lossless")
        cr = _cr_8bit(root / "cr", n_cr, distinct=1 if quick else 4)
        dx = _dx_16bit(cr, root / "dx", n_dx, distinct=1 if quick else 2)
        us = us_cine_like(root / "us", n=2, frames=cine_frames, size=253, seed=0, jpeg=True)
        us_native, us_jpeg = us.files

        workloads.append(_single_frame("CT 512² int16, native", ct, peers, repeats, True))
        workloads.append(
            _single_frame("CT 512² int16, JPEG 2000 lossless", j2k, peers, repeats, False)
        )
        if not isinstance(lossless, str):
            workloads.append(
                _single_frame("CT 512² int16, JPEG lossless SV1", lossless, peers, repeats, False)
            )
        workloads.append(_single_frame("chest radiograph 1024² 8-bit", cr, peers, repeats, True))
        workloads.append(
            _single_frame("radiograph 2048² 16-bit (12 stored)", dx, peers, repeats, True)
        )
        for label, path in (("native", us_native), ("JPEG baseline YBR", us_jpeg)):
            workloads.append(
                _cine_random(
                    f"US cine {cine_frames}×253², {label}: one random frame",
                    path,
                    cine_frames,
                    calls,
                    peers,
                    repeats,
                )
            )
            workloads.append(
                _cine_clips(
                    f"US cine {cine_frames}×253², {label}: 16-frame clips",
                    path,
                    cine_frames,
                    peers,
                    repeats,
                )
            )
        codec, codec_notes = _codec_rows(us_jpeg, j2k, lossless, repeats)
        workers_table = _j2k_workers(j2k, repeats)
    LAST[:] = workloads
    elapsed = time.perf_counter() - t_start

    lines = [
        f"Same files, page cache warm, one process; median of {repeats} runs per cell"
        f" (whole-file cine readers: median of 3). Cell: time per item (**torchdicom speed-up**"
        " = column time / torchdicom time; > 1 means torchdicom is faster; in the plain-read"
        f" column < 1 is the fraction of the physical limit reached). Took {elapsed:.0f} s.",
        "",
        f"Files: CT {n_ct} (J2K {n_j2k}), chest radiographs {n_cr}, 2k radiographs {n_dx},"
        f" cine {cine_frames} frames ({calls} random frames per run; clips of {CLIP_LEN}).",
        "",
        *table(workloads, skipped),
        "",
        "Peers: "
        + "; ".join(
            f"{name} {why}" if obj is not None else f"{name}: {why}"
            for name, (obj, why) in peers.items()
        )
        + f"; pydicom {pydicom.__version__}.",
    ]
    lines += [
        "",
        "Compressed frames against the decoder alone on the same code-streams"
        " (located outside the timed loop; time per frame):",
        "",
        *_codec_table(codec),
        *(["", "Not measured: " + "; ".join(codec_notes)] if codec_notes else []),
        "",
        f"JPEG 2000 lossless CT ({len(j2k)} files) through DicomDataset + DataLoader (batch 4;"
        " openjpeg holds the GIL, so decoding scales with worker processes, up to the free"
        " cores):",
        "",
        *workers_table,
        "",
        "Targets (issue 14): " + "; ".join(_targets(workloads, codec)) + ".",
    ]
    notes = [
        f"- {w.name} — {peer}: {note}"
        for w in workloads
        for peer, note in w.notes.items()
        if peer not in skipped
    ]
    if notes:
        lines += ["", "Notes (what each peer returned or did differently):", "", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer files, frames and repeats")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
