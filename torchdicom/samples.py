"""Deterministic generators of realistic sample DICOM sets.

The fastai medical-imaging tutorial works on three datasets — SIIM_SMALL chest
radiographs, CT slices and a thyroid ultrasound cine set — that cannot be
downloaded everywhere. These generators write look-alikes as *real* DICOM
files (file meta, preamble, proper SOP classes) so that the same loaders, the
demo and the tests run anywhere:

- :func:`siim_like`: 8-bit CR chest radiographs in ``train/<label>/`` folders.
- :func:`ct_like`: 512x512 CT series with rescale, windows, lesion masks, and
  the storage variants real exports mix (signed / unsigned / 12-in-16, shuffled
  instance numbers, extensionless files).
- :func:`us_cine_like`: multi-frame ultrasound cine, native and one JPEG
  baseline YBR_FULL_422 file, with per-frame nodule masks.
- :func:`demo_data`: all three under one cache folder, regenerated only when
  the manifest says the parameters or the files changed.

Every generator is a pure function of its arguments: the same seed writes the
same bytes (UIDs are derived from the seed, dates are drawn from it, nothing
reads the clock). Images are phantoms drawn with vectorised numpy — plausible
enough to look at and to train a tiny network on, never real patient data; the
names, IDs and dates in the headers are fake but realistic-looking so that
privacy tests have something to catch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from torchdicom._atomic import write_text_atomic

__all__ = [
    "SAMPLES_VERSION",
    "SIIM_LABELS",
    "DemoData",
    "SampleSet",
    "ct_like",
    "demo_data",
    "siim_like",
    "us_cine_like",
]

#: Bumped whenever a generator's output changes, so cached demo sets are rebuilt.
SAMPLES_VERSION = 2

_CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
_CT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_US_MULTIFRAME_STORAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")
_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
_SC_MULTIFRAME_BYTE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.2")

#: The two class folders (and CSV labels) of :func:`siim_like`.
SIIM_LABELS = ("No Pneumothorax", "Pneumothorax")


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


@dataclass
class DemoData:
    """The three demo sets written by :func:`demo_data`.

    Attributes:
        root: the cache folder holding ``siim/``, ``ct/``, ``us/`` and
            ``manifest.json``.
        siim: chest radiographs (:func:`siim_like`).
        ct: CT series (:func:`ct_like`).
        us: ultrasound cine (:func:`us_cine_like`).
        reused: ``True`` when the sets were already complete and nothing was
            written.
    """

    root: Path
    siim: SampleSet
    ct: SampleSet
    us: SampleSet
    reused: bool = False


# ---------------------------------------------------------------------------
# Shared helpers: identities, headers, writing
# ---------------------------------------------------------------------------

_SURNAMES = (
    "Abernathy",
    "Baptiste",
    "Castellano",
    "Delacroix",
    "Eriksen",
    "Fairweather",
    "Gallagher",
    "Halvorsen",
    "Ishikawa",
    "Jablonski",
    "Kowalczyk",
    "Lindqvist",
    "Montgomery",
    "Nakamura",
    "Okonkwo",
    "Pettersen",
    "Quintero",
    "Rasmussen",
    "Sandoval",
    "Thibodeaux",
    "Umarov",
    "Valcourt",
    "Whitcombe",
    "Yamaguchi",
    "Zielinski",
)
_GIVEN = (
    "Amelia",
    "Bruno",
    "Celeste",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ingrid",
    "Jonas",
    "Keiko",
    "Leopold",
    "Marisol",
    "Nikolai",
    "Ottilie",
    "Pascal",
    "Rosalind",
    "Soren",
    "Tamsin",
    "Ulrich",
    "Vivienne",
    "Wendell",
)
_INSTITUTIONS = (
    "Lakeside Memorial Hospital",
    "St. Aldric Regional Medical Center",
    "Northvale University Clinic",
)


@dataclass(frozen=True)
class _Patient:
    name: str
    patient_id: str
    birth_date: str
    sex: str
    institution: str


_UID_NAMESPACE = uuid.UUID("6b1f3c52-8f0e-5a7e-9d1a-2c4b7e0f9a31")


def _uid(*parts: object) -> UID:
    """A UID that is a pure function of ``parts`` (never of the clock or host).

    A "2.25." UID from a name-based (v5) UUID: ``generate_uid(prefix=None,
    entropy_srcs=...)`` looks like it would do this but ignores the entropy
    sources and draws a random uuid4.
    """
    name = "/".join(map(str, parts))
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def _fake_patient(rng: np.random.Generator, id_prefix: str) -> _Patient:
    sex = str(rng.choice(["F", "M"]))
    year = int(rng.integers(1938, 2004))
    return _Patient(
        name=f"{rng.choice(_SURNAMES)}^{rng.choice(_GIVEN)}",
        patient_id=f"{id_prefix}{int(rng.integers(100000, 999999))}",
        birth_date=f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex=sex,
        institution=str(rng.choice(_INSTITUTIONS)),
    )


def _fake_date(rng: np.random.Generator) -> tuple[str, str]:
    """(StudyDate, StudyTime) drawn from the generator, never from the clock."""
    date = f"{int(rng.integers(2017, 2024))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    time = f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    return date, time


def _ds_str(value: float) -> str:
    """Format a number for a DS element: at most 16 characters, no float noise."""
    text = f"{value:.6g}"
    return "0" if text == "-0" else text


def _new_dataset(
    sop_class: UID,
    sop_instance: UID,
    transfer_syntax: UID,
    patient: _Patient,
    study_uid: UID,
    study_date: tuple[str, str],
    series_uid: UID,
    modality: str,
) -> Dataset:
    """A dataset with file meta and the patient/study/series modules filled in."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date[0]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_date[1]
    ds.AccessionNumber = f"A{int(study_uid[-7:]):07d}"
    ds.Modality = modality
    ds.Manufacturer = "torchdicom synthetic phantom"
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = "Marlowe^Henrietta"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_uid[-6:]
    return ds


def _set_image_pixel_module(
    ds: Dataset,
    rows: int,
    columns: int,
    *,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    samples_per_pixel: int = 1,
    photometric: str = "MONOCHROME2",
) -> None:
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric
    if samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)


def _set_native_pixels(ds: Dataset, pixels: np.ndarray, *, bits_stored: int) -> None:
    """Store a (H, W) integer image natively, filling the Image Pixel module.

    The dtype decides BitsAllocated and PixelRepresentation; ``bits_stored``
    may be smaller (e.g. 12-in-16), in which case values must already fit.
    """
    signed = pixels.dtype.kind == "i"
    bits_allocated = pixels.dtype.itemsize * 8
    _set_image_pixel_module(
        ds,
        *pixels.shape,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
    )
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    ds.add_new(0x7FE00010, "OB" if bits_allocated == 8 else "OW", little.tobytes())


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_streamed_pixels(
    ds: Dataset, path: Path, frames: Iterator[np.ndarray], nbytes: int
) -> None:
    """Write ``ds`` and then an 8-bit native (7FE0,0010) *Pixel Data* frame by frame.

    A 1000-frame cine is tens of MB: streaming the frames after the header
    keeps only one frame in memory. Explicit VR Little Endian only; Pixel
    Data is the last element of the dataset, so appending it is valid.
    """
    _write(ds, path)
    padded = nbytes + (nbytes & 1)  # element values have even length
    written = 0
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, padded))
        for frame in frames:
            data = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
            f.write(data)
            written += len(data)
        if written != nbytes:
            raise RuntimeError(f"{path}: streamed {written} pixel bytes, expected {nbytes}")
        if padded != nbytes:
            f.write(b"\x00")


def _write_labels(path: Path, header: tuple[str, str], rows: list[tuple[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------
# Procedural texture
# ---------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise of shape (H, W), float32, roughly zero-mean unit-range.

    A coarse Gaussian grid (one value per ``cell`` pixels) interpolated with a
    smoothstep: cheap, vectorised, and free of the blockiness of plain repeats.
    """
    h, w = shape
    cell = max(float(cell), 1.0)
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)

    def weights(n: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.arange(n, dtype=np.float32) / cell
        i = t.astype(np.intp)
        f = t - i
        return i, f * f * (3 - 2 * f)

    # Separable: interpolate the small grid along y first, then gather along x once.
    y0, fy = weights(h)
    x0, fx = weights(w)
    columns = grid[y0] * (1 - fy[:, None]) + grid[y0 + 1] * fy[:, None]  # (H, gw)
    return columns[:, x0] * (1 - fx) + columns[:, x0 + 1] * fx


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """A soft step from 0 to 1 over ``x`` in [-2, 2] (a linear ramp: 6x cheaper than tanh)."""
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


def _ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin curvy lines along the zero set of a smooth field: vessel-like markings."""
    return np.exp(-((noise / width) ** 2))


# ---------------------------------------------------------------------------
# SIIM-like chest radiographs
# ---------------------------------------------------------------------------


def _chest_radiograph(rng: np.random.Generator, size: int, pneumothorax: bool) -> np.ndarray:
    """A PA chest radiograph phantom, (size, size) uint8, MONOCHROME2 (air dark).

    Pneumothorax: a peripheral crescent at the upper part of one lung where
    air has replaced lung — darker, without vessel markings, bounded by a thin
    bright visceral pleural line.
    """
    s = size
    shift = rng.uniform(-0.04, 0.04, 2).astype(np.float32)
    scale = np.float32(rng.uniform(0.92, 1.04))
    angle = rng.uniform(-0.05, 0.05)
    grid = np.linspace(-1.0, 1.0, s, dtype=np.float32)
    yy, xx = grid[:, None], grid[None, :]
    c, sn = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (c * xx + sn * yy - shift[0]) / scale
    v = (-sn * xx + c * yy - shift[1]) / scale
    au = np.abs(u)
    edge = 40.0  # sigmoid steepness: soft organ borders like a projection

    # Neck above the shoulders, trunk below.
    half_width = 0.28 + 0.62 * _sigmoid((v + 0.72) * 18)
    body = _sigmoid((half_width - au) * edge)
    img = 0.05 + 0.52 * body

    # Lungs: ellipses tapered towards the apex, cut by the diaphragm domes.
    lx = (au - 0.4) / (0.27 * (0.72 + 0.28 * np.clip(v + 0.6, 0, 1)))
    ly = (v + 0.02) / 0.6
    lung_r = np.sqrt(lx * lx + ly * ly)
    dome = 0.42 + 0.5 * ((au - 0.38) / 0.3) ** 2
    heart = ((u - 0.1) / 0.3) ** 2 + ((v - 0.32) / 0.24) ** 2
    lung = _sigmoid((1 - lung_r) * 25) * _sigmoid((dome - v) * edge) * _sigmoid((heart - 1) * 8)
    lung *= _sigmoid((au - 0.12) * edge)  # mediastinum

    side = 1 if rng.random() < 0.5 else -1
    on_side = _sigmoid(side * u * edge)
    ptx = np.zeros_like(img)
    if pneumothorax:
        depth = rng.uniform(0.4, 0.6)
        lower_limit = rng.uniform(0.1, 0.4)
        boundary = 1 - depth
        upper = _sigmoid((lower_limit - v) * 12)
        ptx = lung * on_side * upper * _sigmoid((lung_r - boundary) * 60)
        pleural_line = lung * on_side * upper * np.exp(-(((lung_r - boundary) / 0.015) ** 2))
        img += 0.2 * pleural_line

    # Strong enough that a tiny CNN learns it within the demo's few epochs.
    img -= 0.3 * lung + 0.25 * ptx
    # Vessel markings fan out from the hila and fade towards the periphery.
    hilum = np.sqrt((au - 0.17) ** 2 + (v - 0.05) ** 2)
    vessels = _ridges(_smooth_noise(rng, (s, s), s / 22), 0.18) * np.clip(1.1 - hilum / 0.7, 0, 1)
    img += 0.2 * vessels * lung * (1 - ptx)

    # Posterior ribs: curved bands; clavicles; spine behind the mediastinum.
    thorax = _sigmoid((0.86 - au) * edge) * _sigmoid((v + 0.72) * edge) * _sigmoid((0.55 - v) * 20)
    rib_phase = (v - 0.35 * au * au) * 7.5 + rng.uniform(0, 1)
    ribs = _sigmoid((np.cos(2 * np.pi * rib_phase) - 0.55) * 12) * _sigmoid((au - 0.12) * 20)
    img += 0.08 * ribs * thorax
    clavicle = np.exp(-(((v + 0.62 - 0.25 * (au - 0.3) ** 2) / 0.035) ** 2)) * (au < 0.6)
    img += 0.14 * clavicle * _sigmoid((au - 0.05) * edge)
    img += 0.08 * _sigmoid((0.065 - au) * edge) * _sigmoid((v + 0.9) * edge)

    img += 0.035 * _smooth_noise(rng, (s, s), s / 24) * body
    img += 0.012 * rng.standard_normal((s, s), dtype=np.float32)
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.04, 0.04)
    img = np.clip(img * gain + offset, 0, 1)
    return np.round(img * 255).astype(np.uint8)


def siim_like(
    dir: str | os.PathLike[str], n: int = 250, size: int = 256, seed: int = 0
) -> SampleSet:
    """Write SIIM_SMALL-like chest radiographs.

    Layout (``label`` is ``"No Pneumothorax"`` or ``"Pneumothorax"``)::

        dir/labels.csv                     columns: file,label
        dir/train/<label>/NNNNNN.dcm       NNNNNN = 000000 ... n-1

    ``file`` in the CSV is relative to ``dir`` with ``/`` separators, e.g.
    ``train/Pneumothorax/000003.dcm``. Files are CR Image Storage, Explicit VR
    Little Endian, MONOCHROME2, 8 bits stored, no rescale; about 30% are
    pneumothorax cases; patients have 1–3 images each (shared PatientID).

    Args:
        dir: output folder (created).
        n: number of images.
        size: rows = columns.
        seed: everything, UIDs included, is a function of it.

    Returns:
        The :class:`SampleSet` (no masks).
    """
    root = Path(dir)
    rng = np.random.default_rng([seed, 1])
    files: list[Path] = []
    rows: list[tuple[str, object]] = []
    pixel_spacing = _ds_str(0.168 * 1024 / size)  # a 1024-pixel detector at 0.168 mm
    index = 0
    while index < n:
        patient = _fake_patient(rng, "SIIM")
        for _ in range(min(int(rng.integers(1, 4)), n - index)):
            label = SIIM_LABELS[int(rng.random() < 0.3)]
            study_uid = _uid(seed, "siim", "study", index)
            series_uid = _uid(seed, "siim", "series", index)
            sop_uid = _uid(seed, "siim", "sop", index)
            ds = _new_dataset(
                _CR_STORAGE,
                sop_uid,
                ExplicitVRLittleEndian,
                patient,
                study_uid,
                _fake_date(rng),
                series_uid,
                "CR",
            )
            ds.SeriesNumber = 1
            ds.InstanceNumber = 1
            ds.BodyPartExamined = "CHEST"
            ds.ViewPosition = str(rng.choice(["PA", "AP"]))
            ds.SeriesDescription = f"view: {ds.ViewPosition}"
            ds.PatientOrientation = ["L", "F"]
            ds.PixelSpacing = [pixel_spacing, pixel_spacing]
            ds.ConversionType = "WSD"
            ds.LossyImageCompression = "00"
            img = _chest_radiograph(rng, size, label == "Pneumothorax")
            _set_native_pixels(ds, img, bits_stored=8)
            rel = f"train/{label}/{index:06d}.dcm"
            _write(ds, root / rel)
            files.append(root / rel)
            rows.append((rel, label))
            index += 1
    labels_csv = root / "labels.csv"
    _write_labels(labels_csv, ("file", "label"), rows)
    return SampleSet(root, files, labels_csv, params={"n": n, "size": size, "seed": seed})


# ---------------------------------------------------------------------------
# CT series
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CtVariant:
    """How one series is stored: the mix real PACS exports contain."""

    name: str
    dtype: type[np.integer]
    bits_stored: int
    intercept: float
    outside_fov_hu: float  # value of the pixels outside the reconstruction circle
    extension: str
    shuffled_instances: bool
    slice_thickness: float
    multi_window: bool


_CT_VARIANTS = (
    _CtVariant("CHEST_AXIAL", np.int16, 16, -1024.0, -2000.0, "", False, 2.5, False),
    # Unsigned storage: stored 0 is -1024 HU, so nothing below -1024 exists.
    _CtVariant("CHEST_LUNG", np.uint16, 16, -1024.0, -1024.0, ".dcm", False, 3.0, True),
    # Signed 12-in-16 with intercept 0: exercises sign extension from bit 11.
    _CtVariant("CHEST_12BIT", np.int16, 12, 0.0, -2000.0, "", False, 5.0, False),
    # InstanceNumber order does not follow z, as in messy exports.
    _CtVariant("CHEST_REFORMAT", np.int16, 16, -1024.0, -2000.0, "", True, 2.0, False),
)


class _CtPhantom:
    """An axial chest phantom in HU; z-independent anatomy is drawn once per series."""

    def __init__(self, rng: np.random.Generator, size: int, z_centre: float, z_extent: float):
        self.size = size
        self.spacing = 360.0 / size  # a 36 cm field of view at any matrix size
        self.rng = rng
        self.z_centre, self.z_extent = z_centre, z_extent
        coords = (np.arange(size, dtype=np.float32) - size / 2 + 0.5) * self.spacing
        x, y = coords[None, :], coords[:, None]  # LPS: +x patient left, +y posterior
        self.x, self.y = x, y
        shape = (size, size)

        def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
            return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1

        a, b = rng.uniform(150, 170), rng.uniform(105, 120)
        self.fov = x * x + y * y < (size / 2 * self.spacing) ** 2
        body = ellipse(0, 10, a, b)
        inner = ellipse(0, 10, a - 14, b - 14)
        base = np.full(shape, -1000.0, dtype=np.float32)
        base[body] = -100.0
        base[inner] = 45.0
        base += (8 * _smooth_noise(rng, shape, 12)) * inner
        heart = ellipse(15, -22, 58, 48)
        base[heart] = 40.0
        base[ellipse(22, 42, 13, 13)] = 180.0  # contrast-filled descending aorta
        vertebra = ellipse(0, 72, 21, 19)
        base[vertebra] = 900.0
        base[ellipse(0, 72, 17, 15)] = 260.0
        base[ellipse(0, 101, 9, 9)] = 20.0  # spinal canal
        base[ellipse(0, 120, 5, 12)] = 700.0  # spinous process
        self.base = base
        self.clip = ellipse(30, 33, 1.6, 1.6)  # surgical clip: the +2000 HU values

        # Lungs: normalised radius, thresholded per slice so they taper at apex and base.
        left = ((x - 78) / 62) ** 2 + ((y + 2) / 82) ** 2
        right = ((x + 78) / 62) ** 2 + ((y + 2) / 82) ** 2
        self.lung_r2 = np.minimum(left, right)
        self.lung_allowed = inner & ~heart & ~vertebra & ~ellipse(22, 42, 16, 16)
        self.vessel_fields = (_smooth_noise(rng, shape, 14), _smooth_noise(rng, shape, 14))
        self.lung_texture = _smooth_noise(rng, shape, 20)

        # Ribs: cross-sections just inside the fat layer; each shows on some slices.
        angles = np.deg2rad(np.array([-160, -130, -100, -80, -50, -20, 20, 45, 135, 160]))
        self.ribs = [
            (ellipse(0.9 * a * np.cos(t), 10 + 0.9 * b * np.sin(t), 7, 5), rng.uniform(0, 1))
            for t in angles
        ]
        # Lesion: a soft-tissue sphere in the right lung.
        self.lesion_centre = (
            rng.uniform(-95, -60),
            rng.uniform(-20, 20),
            z_centre + rng.uniform(-0.25, 0.25) * z_extent,
        )
        self.lesion_radius = rng.uniform(9, 14)

    def slice(self, z: float) -> tuple[np.ndarray, np.ndarray]:
        """HU image (float32, unclipped) and lesion mask (uint8 0/1) at height ``z`` mm."""
        rng = self.rng
        t = np.clip(1 - ((z - self.z_centre) / (1.4 * self.z_extent)) ** 2, 0.3, 1.0)
        lung = (self.lung_r2 < t) & self.lung_allowed
        phase = z / 15.0
        vessels = _ridges(
            np.cos(phase) * self.vessel_fields[0] + np.sin(phase) * self.vessel_fields[1], 0.08
        )
        lung_hu = -860 + 25 * self.lung_texture + 780 * vessels
        hu = np.where(lung, lung_hu, self.base)
        for rib, offset in self.ribs:
            if np.sin(2 * np.pi * (z / 30.0 + offset)) > 0.1:
                hu[rib] = 1100.0
        cx, cy, cz = self.lesion_centre
        r2 = self.lesion_radius**2 - (z - cz) ** 2
        mask = np.zeros(hu.shape, dtype=np.uint8)
        if r2 > 0:
            inside = ((self.x - cx) ** 2 + (self.y - cy) ** 2) < r2
            hu[inside] = 35.0
            mask[inside] = 1
        if abs(z - self.z_centre) < 0.3 * self.z_extent:
            hu[self.clip] = 2600.0
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * 14
        return hu, mask


def ct_like(
    dir: str | os.PathLike[str],
    n_series: int = 4,
    slices: int = 25,
    size: int = 512,
    seed: int = 0,
) -> SampleSet:
    """Write CT series like a PACS/TCIA export, with lesion labels and masks.

    Layout::

        dir/labels.csv                                    columns: file,lesion (0/1)
        dir/<PatientID>/<SeriesNumber>_<Description>/IM000001   (series 1: IM000001.dcm)
        dir/masks/<same relative path as the image>       lesion mask, 0/1

    Series ``i`` uses storage variant ``i % 4``:

    0. int16, 16 bits stored, slope 1 / intercept -1024, -2000 HU outside the FOV.
    1. uint16, 16 bits stored, intercept -1024 (so HU ≥ -1024), two windows
       (multi-valued WindowCenter/WindowWidth), ``.dcm`` file names.
    2. int16 with 12 bits stored (signed 12-in-16), intercept 0.
    3. like 0, but InstanceNumber (and so file names) in an order that does not
       follow z.

    Each series has ImagePositionPatient (z varying), ImageOrientationPatient
    (axial), PixelSpacing, SliceThickness, SliceLocation, WindowCenter/Width,
    InstanceNumber; two series per patient and study. HU after rescale lie in
    -2000…+2000. A lesion sphere crosses some slices of every series; masks are
    Secondary Capture, same Rows/Columns, MONOCHROME2, 8-bit, values 0/1, with
    the image's geometry and a ReferencedImageSequence to it.

    Args:
        dir: output folder (created).
        n_series: number of series.
        slices: slices per series.
        size: rows = columns (field of view is 360 mm at any size).
        seed: everything, UIDs included, is a function of it.

    Returns:
        The :class:`SampleSet`; ``files`` in folder then file-name order.
    """
    root = Path(dir)
    files: list[Path] = []
    masks: list[Path] = []
    rows: list[tuple[str, object]] = []
    patients: list[_Patient] = []
    for i in range(n_series):
        rng = np.random.default_rng([seed, 2, i])
        variant = _CT_VARIANTS[i % len(_CT_VARIANTS)]
        patient_index = i // 2
        if patient_index == len(patients):
            patients.append(_fake_patient(np.random.default_rng([seed, 2, 1000, i]), "CT"))
        patient = patients[patient_index]
        study_uid = _uid(seed, "ct", "study", patient_index)
        study_date = _fake_date(np.random.default_rng([seed, 2, 2000, patient_index]))
        series_uid = _uid(seed, "ct", "series", i)
        frame_of_reference = _uid(seed, "ct", "for", patient_index)
        mask_series_uid = _uid(seed, "ct", "mask-series", i)
        series_number = 100 * (patient_index + 1) + 2 + i % 2
        series_dir = f"{patient.patient_id}/{series_number:04d}_{variant.name}"

        thickness = variant.slice_thickness
        z_top = rng.uniform(-60, -20)
        z_positions = z_top - thickness * np.arange(slices)
        phantom = _CtPhantom(rng, size, float(z_positions.mean()), max(thickness * slices / 2, 1.0))
        instance_numbers = np.arange(1, slices + 1)
        if variant.shuffled_instances:
            instance_numbers = rng.permutation(instance_numbers)
        spacing = _ds_str(phantom.spacing)
        origin = _ds_str(-(size / 2 - 0.5) * phantom.spacing)
        info = np.iinfo(variant.dtype)
        lo = max(info.min, -(2 ** (variant.bits_stored - 1)) if info.min < 0 else 0)
        hi = min(info.max, 2 ** (variant.bits_stored - (info.min < 0)) - 1)

        for z, instance in zip(z_positions, instance_numbers, strict=True):
            hu, lesion = phantom.slice(float(z))
            hu = np.clip(hu, -2000, 2000)
            hu[~phantom.fov] = variant.outside_fov_hu
            stored = np.clip(np.round(hu - variant.intercept), lo, hi).astype(variant.dtype)
            name = f"IM{int(instance):06d}{variant.extension}"
            rel = f"{series_dir}/{name}"

            sop_uid = _uid(seed, "ct", "sop", i, int(instance))
            ds = _new_dataset(
                _CT_STORAGE,
                sop_uid,
                ExplicitVRLittleEndian,
                patient,
                study_uid,
                study_date,
                series_uid,
                "CT",
            )
            _ct_geometry(ds, frame_of_reference, origin, spacing, float(z), thickness)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SeriesNumber = series_number
            ds.SeriesDescription = variant.name.replace("_", " ").title()
            ds.BodyPartExamined = "CHEST"
            ds.InstanceNumber = int(instance)
            ds.AcquisitionNumber = 1
            ds.KVP = "120"
            ds.ConvolutionKernel = "STANDARD"
            ds.PatientPosition = "HFS"
            ds.RescaleIntercept = _ds_str(variant.intercept)
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            if variant.multi_window:
                ds.WindowCenter = ["40", "-600"]
                ds.WindowWidth = ["400", "1500"]
                ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
            else:
                ds.WindowCenter = "40"
                ds.WindowWidth = "400"
            _set_native_pixels(ds, stored, bits_stored=variant.bits_stored)
            _write(ds, root / rel)

            mask_ds = _new_dataset(
                _SC_STORAGE,
                _uid(seed, "ct", "mask-sop", i, int(instance)),
                ExplicitVRLittleEndian,
                patient,
                study_uid,
                study_date,
                mask_series_uid,
                "OT",
            )
            _ct_geometry(mask_ds, frame_of_reference, origin, spacing, float(z), thickness)
            mask_ds.ConversionType = "WSD"
            mask_ds.SeriesNumber = series_number + 1000
            mask_ds.SeriesDescription = f"LESION MASK {variant.name}"
            mask_ds.InstanceNumber = int(instance)
            reference = Dataset()
            reference.ReferencedSOPClassUID = _CT_STORAGE
            reference.ReferencedSOPInstanceUID = sop_uid
            mask_ds.ReferencedImageSequence = [reference]
            _set_native_pixels(mask_ds, lesion, bits_stored=8)
            _write(mask_ds, root / "masks" / rel)

            files.append(root / rel)
            masks.append(root / "masks" / rel)
            rows.append((rel, int(lesion.any())))

    order = sorted(range(len(files)), key=lambda k: rows[k][0])
    files, masks, rows = (
        [files[k] for k in order],
        [masks[k] for k in order],
        [rows[k] for k in order],
    )
    labels_csv = root / "labels.csv"
    _write_labels(labels_csv, ("file", "lesion"), rows)
    return SampleSet(
        root,
        files,
        labels_csv,
        root / "masks",
        masks,
        params={"n_series": n_series, "slices": slices, "size": size, "seed": seed},
    )


def _ct_geometry(
    ds: Dataset, frame_of_reference: UID, origin: str, spacing: str, z: float, thickness: float
) -> None:
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [origin, origin, _ds_str(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = _ds_str(thickness)
    ds.SliceLocation = _ds_str(z)


# ---------------------------------------------------------------------------
# Ultrasound cine
# ---------------------------------------------------------------------------


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
        rows = np.arange(n, dtype=np.float32)[:, None]
        cols = np.arange(n, dtype=np.float32)[None, :]
        depth = (rows - pad) / s  # 0 at the skin line of an unshifted frame
        centre = n / 2
        echo = np.full((n, n), 0.38, dtype=np.float32)
        echo += 0.08 * _smooth_noise(rng, (n, n), s / 10)
        echo = np.where(depth < 0.07, 0.9, echo)  # skin / subcutis
        muscle = (depth >= 0.07) & (depth < 0.2)
        echo = np.where(muscle, 0.42 + 0.12 * np.sin(rows * 0.9), echo)  # strap muscles
        self.thyroid_axes = (0.48 * s, 0.22 * s)
        thyroid = ((cols - centre) / self.thyroid_axes[0]) ** 2 + (
            (depth - 0.45) * s / self.thyroid_axes[1]
        ) ** 2 < 1
        echo = np.where(thyroid, 0.72, echo)
        self.carotid = (centre + 0.5 * s, pad + 0.48 * s, 0.1 * s)  # x, y, radius
        cx, cy, cr = self.carotid
        echo = np.where((cols - cx) ** 2 + (rows - cy) ** 2 < cr * cr, 0.03, echo)
        trachea_x = centre - 0.52 * s
        shadow = (np.abs(cols - trachea_x) < 0.06 * s) & (depth > 0.38)
        arc = np.abs(np.hypot(cols - trachea_x, rows - (pad + 0.38 * s)) - 0.06 * s) < 2.5
        echo = np.where(shadow, 0.12, echo)
        echo = np.where(arc & (rows < pad + 0.38 * s), 1.0, echo)
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
            rows, cols = box
            r2 = ((self.frame_cols[:, cols] - (nx - ox)) / radius) ** 2 + (
                (self.frame_rows[rows] - (ny - oy)) / (0.8 * radius)
            ) ** 2
            inside = (r2 < 1) & self.fan[rows, cols]
            halo = (r2 >= 1) & (r2 < 1.35)
            echo = echo.copy()
            echo[rows, cols] = np.where(inside, 0.14, np.where(halo, 0.95, echo[rows, cols]))
            mask[rows, cols] = inside
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
        rows, cols = box
        r = np.hypot(self.frame_cols[:, cols] - (cx - ox), self.frame_rows[rows] - (cy - oy))
        r /= 0.85 * cr
        lumen = (r < 1) & self.fan[rows, cols]
        pulse = max(0.0, np.sin(2 * np.pi * k / 25.0)) ** 2  # ~72 bpm at 30 frames/s
        velocity = (1 - r * r) * (0.35 + 0.65 * pulse)  # laminar profile
        red = np.clip(80 + 175 * velocity, 0, 255).astype(np.uint8)
        yellow = np.clip(255 * (velocity - 0.6) * 2.5, 0, 255).astype(np.uint8)
        flow = np.stack([red, yellow, np.zeros_like(red)], axis=-1)
        patch = rgb[rows, cols]
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


# ---------------------------------------------------------------------------
# Demo cache
# ---------------------------------------------------------------------------

_MANIFEST = "manifest.json"

# Defaults sized to generate in seconds on two cores (see demo_data): ~100 MB in all.
_DEMO_PARAMS: dict[str, dict[str, Any]] = {
    "siim": {"n": 250, "size": 256, "seed": 0},
    "ct": {"n_series": 4, "slices": 25, "size": 512, "seed": 0},
    "us": {"n": 3, "frames": 300, "size": 253, "seed": 0},
}
_SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "siim": {"n": 8, "size": 64, "seed": 0},
    "ct": {"n_series": 4, "slices": 4, "size": 64, "seed": 0},
    "us": {"n": 2, "frames": 6, "size": 48, "seed": 0},
}
_GENERATORS = {"siim": siim_like, "ct": ct_like, "us": us_cine_like}


def _default_root() -> Path:
    env = os.environ.get("TORCHDICOM_SAMPLES")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/torchdicom/samples").expanduser()


def _read_manifest(root: Path, expected: dict[str, Any]) -> DemoData | None:
    """The cached sets when the manifest matches ``expected`` and every file is there."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("version") != SAMPLES_VERSION or manifest.get("params") != expected:
        return None
    sets = {}
    for name in _GENERATORS:
        entry = manifest.get("sets", {}).get(name)
        if entry is None:
            return None
        sample_set = SampleSet._from_json(root / name, entry)
        sizes = entry.get("sizes", {})
        for path in [*sample_set.files, *sample_set.masks, sample_set.labels_csv]:
            if path is None:
                continue
            rel = path.relative_to(root).as_posix()
            try:
                if path.stat().st_size != sizes.get(rel):
                    return None
            except OSError:
                return None
        sets[name] = sample_set
    return DemoData(root, sets["siim"], sets["ct"], sets["us"], reused=True)


def demo_data(root: str | os.PathLike[str] | None = None, small: bool = False) -> DemoData:
    """Generate the three demo sets once, and reuse them afterwards.

    ``root`` (default ``$TORCHDICOM_SAMPLES`` or ``~/.cache/torchdicom/samples``)
    receives ``siim/`` (:func:`siim_like`), ``ct/`` (:func:`ct_like`), ``us/``
    (:func:`us_cine_like`) and ``manifest.json``. The manifest, written last
    and atomically, records the version and generator parameters and the size
    of every file; a later call reuses the sets when it matches and every file
    is present, and otherwise deletes ``siim/``, ``ct/``, ``us/`` under
    ``root`` and regenerates them — so ``root`` must be a folder torchdicom
    owns.

    Defaults: SIIM 250 images at 256x256; CT 4 series x 25 slices at 512x512;
    ultrasound 3 files x 300 frames at 253x253 (the last one JPEG) — fewer
    frames than :func:`us_cine_like`'s 1000, which would add ~240 MB (native
    frames and masks) and several seconds; call it directly for full-length cine.
    ``small=True`` writes a tiny version for tests (a few files, 64-pixel CT,
    six-frame cine).

    Args:
        root: the cache folder.
        small: the tiny test version instead of the default one.

    Returns:
        :class:`DemoData`; ``reused`` tells whether anything was written.
    """
    root = _default_root() if root is None else Path(root)
    params = _SMALL_PARAMS if small else _DEMO_PARAMS
    cached = _read_manifest(root, params)
    if cached is not None:
        return cached

    root.mkdir(parents=True, exist_ok=True)
    # Remove the manifest first: an interrupted run then leaves none, and the
    # next call regenerates instead of trusting half-written sets.
    (root / _MANIFEST).unlink(missing_ok=True)
    sets = {}
    for name, generate in _GENERATORS.items():
        shutil.rmtree(root / name, ignore_errors=True)
        sets[name] = generate(root / name, **params[name])

    manifest_sets = {}
    for name, sample_set in sets.items():
        entry = sample_set._to_json()
        entry["sizes"] = {
            path.relative_to(root).as_posix(): path.stat().st_size
            for path in [*sample_set.files, *sample_set.masks, sample_set.labels_csv]
            if path is not None
        }
        manifest_sets[name] = entry
    manifest = {"version": SAMPLES_VERSION, "params": params, "sets": manifest_sets}
    write_text_atomic(root / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return DemoData(root, sets["siim"], sets["ct"], sets["us"], reused=False)
