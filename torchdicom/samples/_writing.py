"""Writing sample files: headers of fake patients, native and streamed pixels, label CSVs.

Shared by every generator. UIDs, names, IDs and dates are pure functions of the
generator's seed (nothing reads the clock or the host), so the same arguments write
the same bytes. The identities are fake but realistic-looking, so that privacy tests
have something to catch.
"""

from __future__ import annotations

import csv
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

_CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
_CT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_US_MULTIFRAME_STORAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")
_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
_SC_MULTIFRAME_BYTE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.2")

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


def _write_labels(path: Path, header: tuple[str, str], labels: list[tuple[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(labels)
