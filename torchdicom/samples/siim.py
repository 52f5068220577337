"""SIIM_SMALL-like chest radiographs: 8-bit CR images in ``train/<label>/`` folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from torchdicom.samples._sampleset import SampleSet
from torchdicom.samples._texture import _ridges, _smooth_noise
from torchdicom.samples._writing import (
    _CR_STORAGE,
    _ds_str,
    _fake_date,
    _fake_patient,
    _new_dataset,
    _set_native_pixels,
    _uid,
    _write,
    _write_labels,
)

__all__ = ["SIIM_LABELS", "siim_like"]

#: The two class folders (and CSV labels) of :func:`siim_like`.
SIIM_LABELS = ("No Pneumothorax", "Pneumothorax")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """A soft step from 0 to 1 over ``x`` in [-2, 2] (a linear ramp: 6x cheaper than tanh)."""
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


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
    labels: list[tuple[str, object]] = []
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
            labels.append((rel, label))
            index += 1
    labels_csv = root / "labels.csv"
    _write_labels(labels_csv, ("file", "label"), labels)
    return SampleSet(root, files, labels_csv, params={"n": n, "size": size, "seed": seed})
