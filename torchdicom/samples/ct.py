"""CT series: slices with rescale, windows and lesion masks.

Series are stored in the variants real exports mix (signed / unsigned / 12-in-16,
shuffled instance numbers, extensionless files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from torchdicom.samples._sampleset import SampleSet
from torchdicom.samples._texture import _ridges, _smooth_noise
from torchdicom.samples._writing import (
    _CT_STORAGE,
    _SC_STORAGE,
    _ds_str,
    _fake_date,
    _fake_patient,
    _new_dataset,
    _Patient,
    _set_native_pixels,
    _uid,
    _write,
    _write_labels,
)

__all__ = ["ct_like"]


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
    labels: list[tuple[str, object]] = []
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
            labels.append((rel, int(lesion.any())))

    order = sorted(range(len(files)), key=lambda k: labels[k][0])
    files, masks, labels = (
        [files[k] for k in order],
        [masks[k] for k in order],
        [labels[k] for k in order],
    )
    labels_csv = root / "labels.csv"
    _write_labels(labels_csv, ("file", "lesion"), labels)
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
