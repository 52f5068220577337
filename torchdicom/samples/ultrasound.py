"""Multi-frame ultrasound cine with per-frame nodule masks.

Native files, and one JPEG baseline YBR_FULL_422 file per set.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from torchdicom.samples._sampleset import SampleSet
from torchdicom.samples._texture import _smooth_noise
from torchdicom.samples._writing import (
    _SC_MULTIFRAME_BYTE_STORAGE,
    _US_MULTIFRAME_STORAGE,
    _ds_str,
    _fake_date,
    _fake_patient,
    _new_dataset,
    _set_image_pixel_module,
    _uid,
    _write,
    _write_streamed_pixels,
)

__all__ = ["us_cine_like"]


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Fully developed speckle: the magnitude of a smooth complex Gaussian field.

    Rayleigh distributed with mean 1, with a grain of ~2 pixels like a real
    point-spread function (white Rayleigh noise looks like TV static).
    """
    magnitude = np.hypot(_smooth_noise(rng, shape, 1.7), _smooth_noise(rng, shape, 1.7))
    return magnitude / magnitude.mean()


class _UsScene:
    """A thyroid ultrasound sweep: frame ``k`` is a pure function of (seed, file, k).

    The anatomy and most of the speckle live in a scene larger than the
    frame; the probe drifts over it, the frame adds fresh speckle, and a
    hypoechoic nodule grows and shrinks as the sweep crosses it in elevation.
    """

    def __init__(self, seed: int, index: int, size: int, frames: int):
        self.seed, self.index, self.size, self.frames = seed, index, size, frames
        rng = np.random.default_rng([seed, 3, index])
        s = size
        pad = s // 4
        self.pad = pad
        n = s + 2 * pad
        ys = np.arange(n, dtype=np.float32)[:, None]
        xs = np.arange(n, dtype=np.float32)[None, :]
        depth = (ys - pad) / s  # 0 at the skin line of an unshifted frame
        centre = n / 2
        echo = np.full((n, n), 0.38, dtype=np.float32)
        echo += 0.08 * _smooth_noise(rng, (n, n), s / 10)
        echo = np.where(depth < 0.07, 0.9, echo)  # skin / subcutis
        muscle = (depth >= 0.07) & (depth < 0.2)
        echo = np.where(muscle, 0.42 + 0.12 * np.sin(ys * 0.9), echo)  # strap muscles
        self.thyroid_axes = (0.48 * s, 0.22 * s)
        thyroid = ((xs - centre) / self.thyroid_axes[0]) ** 2 + (
            (depth - 0.45) * s / self.thyroid_axes[1]
        ) ** 2 < 1
        echo = np.where(thyroid, 0.72, echo)
        self.carotid = (centre + 0.5 * s, pad + 0.48 * s, 0.1 * s)  # x, y, radius
        cx, cy, cr = self.carotid
        echo = np.where((xs - cx) ** 2 + (ys - cy) ** 2 < cr * cr, 0.03, echo)
        trachea_x = centre - 0.52 * s
        shadow = (np.abs(xs - trachea_x) < 0.06 * s) & (depth > 0.38)
        arc = np.abs(np.hypot(xs - trachea_x, ys - (pad + 0.38 * s)) - 0.06 * s) < 2.5
        echo = np.where(shadow, 0.12, echo)
        echo = np.where(arc & (ys < pad + 0.38 * s), 1.0, echo)
        self.echo = echo
        self.speckle = _speckle(rng, (n, n))
        self.fresh_speckle = _speckle(rng, (n, n))
        self.nodule = (
            centre + rng.uniform(-0.2, 0.2) * s,
            pad + 0.45 * s,
            rng.uniform(0.09, 0.13) * s,
        )
        self.phases = rng.uniform(0, 2 * np.pi, 3)

        # Sector (fan) of a curvilinear probe, and the depth gain curve.
        fr = np.arange(s, dtype=np.float32)[:, None]
        fc = np.arange(s, dtype=np.float32)[None, :]
        apex_y = -0.25 * s
        radius = np.hypot(fc - s / 2, fr - apex_y)
        theta = np.arctan2(fc - s / 2, fr - apex_y)
        self.fan = (np.abs(theta) < 0.62) & (radius > 0.3 * s) & (radius < 1.22 * s)
        self.gain255 = 200 * (1.05 - 0.35 * fr / s) * self.fan
        self.frame_rows, self.frame_cols = fr, fc

    def _offset(self, k: int) -> tuple[int, int]:
        t = k / max(self.frames, 1)
        p = self.phases
        ox = self.pad + 0.8 * self.pad * np.sin(2 * np.pi * 1.3 * t + p[0])
        oy = self.pad + 0.3 * self.pad * np.sin(2 * np.pi * 0.7 * t + p[1])
        return round(ox), round(oy)

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(grey, mask): (H, W) uint8 frame and (H, W) uint8 0/1 nodule mask."""
        s = self.size
        ox, oy = self._offset(k)
        echo = self.echo[oy : oy + s, ox : ox + s]
        # Decorrelating speckle: a crop of a second field at a per-frame offset
        # (as random as fresh noise to the eye, and free).
        fy, fx = np.random.default_rng([self.seed, 3, self.index, k]).integers(0, 2 * self.pad, 2)
        fresh = self.fresh_speckle[fy : fy + s, fx : fx + s]
        speckle = 0.7 * self.speckle[oy : oy + s, ox : ox + s] + 0.3 * fresh

        # Elevational sweep through a sphere: the section radius breathes.
        sweep = 1.25 * np.sin(2 * np.pi * 2 * k / max(self.frames, 1) + self.phases[2])
        nx, ny, nr = self.nodule
        radius = nr * np.sqrt(max(0.0, 1 - sweep * sweep))
        mask = np.zeros((s, s), dtype=np.uint8)
        box = self._box(nx - ox, ny - oy, 1.2 * radius)
        if radius > 1 and box is not None:
            ys, xs = box
            r2 = ((self.frame_cols[:, xs] - (nx - ox)) / radius) ** 2 + (
                (self.frame_rows[ys] - (ny - oy)) / (0.8 * radius)
            ) ** 2
            inside = (r2 < 1) & self.fan[ys, xs]
            halo = (r2 >= 1) & (r2 < 1.35)
            echo = echo.copy()
            echo[ys, xs] = np.where(inside, 0.14, np.where(halo, 0.95, echo[ys, xs]))
            mask[ys, xs] = inside
        grey = np.clip(echo * speckle * self.gain255, 0, 255).astype(np.uint8)
        return grey, mask

    def _box(self, x: float, y: float, half: float) -> tuple[slice, slice] | None:
        """Row and column slices of the frame within ``half`` pixels of (x, y); None if outside."""
        r0, r1 = max(int(y - half), 0), min(int(y + half) + 2, self.size)
        c0, c1 = max(int(x - half), 0), min(int(x + half) + 2, self.size)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def colour(self, k: int, grey: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the grey frame with pulsatile colour-Doppler flow in the carotid."""
        ox, oy = self._offset(k)
        cx, cy, cr = self.carotid
        rgb = np.empty((*grey.shape, 3), dtype=np.uint8)
        rgb[...] = grey[:, :, None]
        box = self._box(cx - ox, cy - oy, cr)
        if box is None:
            return rgb
        ys, xs = box
        r = np.hypot(self.frame_cols[:, xs] - (cx - ox), self.frame_rows[ys] - (cy - oy))
        r /= 0.85 * cr
        lumen = (r < 1) & self.fan[ys, xs]
        pulse = max(0.0, np.sin(2 * np.pi * k / 25.0)) ** 2  # ~72 bpm at 30 frames/s
        velocity = (1 - r * r) * (0.35 + 0.65 * pulse)  # laminar profile
        red = np.clip(80 + 175 * velocity, 0, 255).astype(np.uint8)
        yellow = np.clip(255 * (velocity - 0.6) * 2.5, 0, 255).astype(np.uint8)
        flow = np.stack([red, yellow, np.zeros_like(red)], axis=-1)
        patch = rgb[ys, xs]
        patch[lumen] = flow[lumen]
        return rgb


def _jpeg_422(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG of an RGB frame, YCbCr 4:2:2 — what DICOM calls YBR_FULL_422."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "JPEG", quality=quality, subsampling=1)
    return buffer.getvalue()


def us_cine_like(
    dir: str | os.PathLike[str],
    n: int = 3,
    frames: int = 1000,
    size: int = 253,
    seed: int = 0,
    *,
    jpeg: bool = True,
) -> SampleSet:
    """Write thyroid-ultrasound-like multi-frame cine files with nodule masks.

    Layout::

        dir/us_000.dcm ... dir/us_<n-1>.dcm     cine, NumberOfFrames = frames
        dir/masks/us_000.dcm ...                masks, same name, same frames/rows/cols

    Files are Ultrasound Multi-frame Image Storage, 8-bit, frame time 33.3 ms.
    All are native Explicit VR Little Endian MONOCHROME2 except, when ``jpeg``,
    the last one: JPEG baseline (1.2.840.10008.1.2.4.50), SamplesPerPixel 3,
    PhotometricInterpretation YBR_FULL_422, one fragment per frame with a
    basic offset table; it shows colour-Doppler flow in the carotid artery.
    Masks are Multi-frame Grayscale Byte Secondary Capture, native,
    MONOCHROME2, values 0/1 (nodule). Frames are generated, encoded and
    written one at a time, so memory stays at a few frames.

    Args:
        dir: output folder (created).
        n: number of cine files.
        frames: frames per file.
        size: rows = columns.
        seed: everything, UIDs included, is a function of it.
        jpeg: make the last file the JPEG YBR_FULL_422 variant.

    Returns:
        The :class:`SampleSet` (``labels_csv`` is ``None``).
    """
    root = Path(dir)
    files: list[Path] = []
    masks: list[Path] = []
    for i in range(n):
        rng = np.random.default_rng([seed, 3, 1000, i])
        patient = _fake_patient(rng, "US")
        study_uid = _uid(seed, "us", "study", i)
        study_date = _fake_date(rng)
        scene = _UsScene(seed, i, size, frames)
        is_jpeg = jpeg and i == n - 1
        name = f"us_{i:03d}.dcm"
        sop_uid = _uid(seed, "us", "sop", i)
        ds = _new_dataset(
            _US_MULTIFRAME_STORAGE,
            sop_uid,
            JPEGBaseline8Bit if is_jpeg else ExplicitVRLittleEndian,
            patient,
            study_uid,
            study_date,
            _uid(seed, "us", "series", i),
            "US",
        )
        _cine_module(ds, frames)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.SeriesDescription = "THYROID CINE"
        ds.BodyPartExamined = "THYROID"
        ds.TransducerData = ["L12-5", "", ""]
        mask_ds = _new_dataset(
            _SC_MULTIFRAME_BYTE_STORAGE,
            _uid(seed, "us", "mask-sop", i),
            ExplicitVRLittleEndian,
            patient,
            study_uid,
            study_date,
            _uid(seed, "us", "mask-series", i),
            "OT",
        )
        _cine_module(mask_ds, frames)
        mask_ds.SeriesNumber = 1001
        mask_ds.InstanceNumber = 1
        mask_ds.SeriesDescription = "NODULE MASK"
        mask_ds.ConversionType = "WSD"
        reference = Dataset()
        reference.ReferencedSOPClassUID = _US_MULTIFRAME_STORAGE
        reference.ReferencedSOPInstanceUID = sop_uid
        mask_ds.ReferencedImageSequence = [reference]
        _set_image_pixel_module(mask_ds, size, size, bits_allocated=8, bits_stored=8, signed=False)

        # The mask frames are produced alongside the image frames; keep them
        # in a compact list of packed bits instead of regenerating the scene.
        mask_bits: list[np.ndarray] = []
        if is_jpeg:
            _set_image_pixel_module(
                ds,
                size,
                size,
                bits_allocated=8,
                bits_stored=8,
                signed=False,
                samples_per_pixel=3,
                photometric="YBR_FULL_422",
            )
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = "ISO_10918_1"
            encoded: list[bytes] = []
            for k in range(frames):
                grey, mask = scene.frame(k)
                encoded.append(_jpeg_422(scene.colour(k, grey)))
                mask_bits.append(np.packbits(mask))
            ratio = frames * size * size * 3 / max(sum(map(len, encoded)), 1)
            ds.LossyImageCompressionRatio = _ds_str(round(ratio, 2))
            ds.add_new(0x7FE00010, "OB", encapsulate(encoded, has_bot=True))
            ds["PixelData"].is_undefined_length = True
            del encoded
            _write(ds, root / name)
        else:
            _set_image_pixel_module(ds, size, size, bits_allocated=8, bits_stored=8, signed=False)

            _write_streamed_pixels(
                ds, root / name, _grey_frames(scene, mask_bits), frames * size * size
            )

        _write_streamed_pixels(
            mask_ds,
            root / "masks" / name,
            (np.unpackbits(bits, count=size * size) for bits in mask_bits),
            frames * size * size,
        )
        files.append(root / name)
        masks.append(root / "masks" / name)
    return SampleSet(
        root,
        files,
        None,
        root / "masks",
        masks,
        params={"n": n, "frames": frames, "size": size, "seed": seed, "jpeg": jpeg},
    )


def _grey_frames(scene: _UsScene, mask_bits: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the scene's grey frames one by one, keeping each mask as packed bits."""
    for k in range(scene.frames):
        grey, mask = scene.frame(k)
        mask_bits.append(np.packbits(mask))
        yield grey


def _cine_module(ds: Dataset, frames: int) -> None:
    ds.NumberOfFrames = frames
    ds.FrameTime = "33.3"
    ds.CineRate = 30
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
