"""Synthetic DICOM files for tests: every pixel layout torchdicom must read.

``write_dicom(path, ...)`` builds a small, valid Part 10 file with pydicom and
returns the array its pixel data encodes, laid out like torchdicom's
``read_frames`` output, (F, C, H, W). Tests should still compare against
pydicom's ``pixel_array`` (the reference); the returned array is what the
factory *meant* to store, handy for checks pydicom cannot make.

Covered: 1-bit packed, 8/16/32-bit unsigned and signed, Bits Stored below
Bits Allocated with garbage in the unused high bits (12-in-16 CT), float32
(7FE0,0008) *Float Pixel Data*, float64 (7FE0,0009) *Double Float Pixel Data*,
1 or 3 samples with planar configuration 0 or 1, and the transfer syntaxes
Implicit/Explicit VR Little Endian, Explicit VR Big Endian, Deflated Explicit
VR Little Endian, and any encapsulated syntax pydicom can encode (RLE
Lossless, JPEG 2000 Lossless) through ``Dataset.compress``.

Identifiers are synthetic but distinctive (``PHI_*``) so tests can grep for
them in caches, data frames and error messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

__all__ = [
    "PHI_BIRTH_DATE",
    "PHI_PATIENT_ID",
    "PHI_PATIENT_NAME",
    "make_dataset",
    "make_pixels",
    "pixel_array_fchw",
    "write_ct_series",
    "write_dicom",
]

# Distinctive identifiers: a test finding these strings anywhere has found a leak.
PHI_PATIENT_NAME = "Leakmouth^Zebedee"
PHI_PATIENT_ID = "PID-93X7Q41"
PHI_BIRTH_DATE = "19310417"

_NATIVE = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)


def make_pixels(
    *,
    rows: int = 8,
    columns: int = 8,
    frames: int = 1,
    samples_per_pixel: int = 1,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    pixel_keyword: str = "PixelData",
    seed: int = 0,
) -> np.ndarray:
    """Random stored values, (F, C, H, W), covering the full range of ``bits_stored``."""
    rng = np.random.default_rng(seed)
    shape = (frames, samples_per_pixel, rows, columns)
    if pixel_keyword == "FloatPixelData":
        return rng.normal(0, 1000, shape).astype(np.float32)
    if pixel_keyword == "DoubleFloatPixelData":
        return rng.normal(0, 1000, shape).astype(np.float64)
    if bits_allocated == 1:
        return rng.integers(0, 2, shape, dtype=np.uint8)
    bits_stored = bits_allocated if bits_stored is None else bits_stored
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    if signed:
        lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        lo, hi = 0, 2**bits_stored - 1
    out = rng.integers(lo, hi, shape, dtype=np.int64, endpoint=True)
    # Make sure the extremes are present: sign-extension bugs live there.
    flat = out.reshape(-1)
    flat[0], flat[-1] = lo, hi
    return out.astype(dtype)


def _stored_bytes(
    values: np.ndarray,
    *,
    bits_allocated: int,
    bits_stored: int,
    planar_configuration: int,
    big_endian: bool,
    garbage_high_bits: bool,
    seed: int,
) -> bytes:
    """Encode (F, C, H, W) values as the Pixel Data value bytes."""
    spp = values.shape[1]
    # File layout: planar 0 interleaves samples (F, H, W, C); planar 1 is (F, C, H, W).
    layout = values.transpose(0, 2, 3, 1) if spp > 1 and planar_configuration == 0 else values
    layout = np.ascontiguousarray(layout)
    if bits_allocated == 1:
        return pack_bits(layout.reshape(-1))
    if garbage_high_bits and bits_stored < bits_allocated and values.dtype.kind in "iu":
        # Fill the bits above Bits Stored with noise (overlay planes, scanner
        # junk); readers must ignore them (PS3.5 8.1.1).
        unsigned = layout.view(layout.dtype.str.replace("i", "u"))
        rng = np.random.default_rng(seed + 1)
        noise = rng.integers(0, 2 ** (bits_allocated - bits_stored), unsigned.shape)
        stored_mask = (1 << bits_stored) - 1
        unsigned = (unsigned & stored_mask) | (noise.astype(unsigned.dtype) << bits_stored)
        layout = unsigned
    elif bits_stored < bits_allocated and values.dtype.kind == "i":
        # Signed values with fewer stored bits: the stored pattern keeps only
        # the low bits (two's complement of width bits_stored), high bits 0.
        unsigned = layout.view(layout.dtype.str.replace("i", "u"))
        layout = unsigned & ((1 << bits_stored) - 1)
    order = ">" if big_endian else "<"
    data = layout.astype(layout.dtype.newbyteorder(order)).tobytes()
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    return data


def make_dataset(
    *,
    rows: int = 8,
    columns: int = 8,
    frames: int = 1,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    samples_per_pixel: int = 1,
    planar_configuration: int = 0,
    photometric: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_keyword: str = "PixelData",
    garbage_high_bits: bool = False,
    values: np.ndarray | None = None,
    modality: str = "CT",
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    number_of_frames_tag: bool | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> tuple[Dataset, np.ndarray]:
    """Build a dataset and the (F, C, H, W) stored values it encodes.

    Args:
        rows, columns, frames, samples_per_pixel: the geometry.
        bits_allocated, bits_stored, signed: (0028,0100), (0028,0101) and
            (0028,0103). ``bits_allocated=1`` packs bits.
        planar_configuration: (0028,0006) for 3 samples.
        photometric: default MONOCHROME2 for 1 sample, RGB for 3.
        transfer_syntax: native (LE implicit/explicit, BE, deflated) or an
            encapsulated syntax pydicom can encode (RLE Lossless, JPEG 2000
            Lossless).
        pixel_keyword: PixelData, FloatPixelData (32 bits) or
            DoubleFloatPixelData (64 bits).
        garbage_high_bits: put noise above Bits Stored.
        values: the stored values (F, C, H, W) instead of random ones.
        number_of_frames_tag: write (0028,0008) even for one frame (default:
            only when ``frames > 1``).
        extra: further elements, by keyword.

    Returns:
        ``(dataset, values)``; write it with ``dataset.save_as(path, enforce_file_format=True)``.
    """
    if pixel_keyword == "FloatPixelData":
        bits_allocated = 32
    elif pixel_keyword == "DoubleFloatPixelData":
        bits_allocated = 64
    bits_stored = bits_allocated if bits_stored is None else bits_stored
    if values is None:
        values = make_pixels(
            rows=rows,
            columns=columns,
            frames=frames,
            samples_per_pixel=samples_per_pixel,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            signed=signed,
            pixel_keyword=pixel_keyword,
            seed=seed,
        )
    values = np.asarray(values)
    frames, samples_per_pixel, rows, columns = values.shape
    if photometric is None:
        photometric = "MONOCHROME2" if samples_per_pixel == 1 else "RGB"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    encapsulated = transfer_syntax not in _NATIVE
    # Encapsulated files are written native first, then compressed by pydicom.
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if encapsulated else transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PHI_PATIENT_NAME
    ds.PatientID = PHI_PATIENT_ID
    ds.PatientBirthDate = PHI_BIRTH_DATE
    ds.Modality = modality
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric
    if samples_per_pixel > 1:
        ds.PlanarConfiguration = planar_configuration
    ds.Rows = rows
    ds.Columns = columns
    if number_of_frames_tag or (number_of_frames_tag is None and frames > 1):
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits_allocated
    if pixel_keyword == "PixelData":
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(signed)
    if rescale_slope is not None:
        ds.RescaleSlope = rescale_slope
    if rescale_intercept is not None:
        ds.RescaleIntercept = rescale_intercept
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)

    data = _stored_bytes(
        values,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        planar_configuration=planar_configuration,
        big_endian=transfer_syntax == ExplicitVRBigEndian,
        garbage_high_bits=garbage_high_bits,
        seed=seed,
    )
    if pixel_keyword == "FloatPixelData":
        ds.FloatPixelData = data
    elif pixel_keyword == "DoubleFloatPixelData":
        ds.DoubleFloatPixelData = data
    else:
        ds.PixelData = data
        # OB for bytes (and packed bits), OW for words, as most writers do.
        ds["PixelData"].VR = "OB" if bits_allocated <= 8 else "OW"
    if encapsulated:
        # Hand pydicom the values in pixel_array layout: compressing from the
        # native bytes misreads planar configuration 1.
        arr = np.moveaxis(values, 1, -1)
        arr = arr[..., 0] if samples_per_pixel == 1 else arr
        arr = np.ascontiguousarray(arr[0] if frames == 1 else arr)
        ds.compress(transfer_syntax, arr, generate_instance_uid=False)
    return ds, values


def write_dicom(path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Write a synthetic file (see :func:`make_dataset`) and return its (F, C, H, W) values.

    Pass ``preamble=False`` to write a bare data set with no Part 10 header.
    """
    preamble = kwargs.pop("preamble", True)
    ds, values = make_dataset(**kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ts = ds.file_meta.TransferSyntaxUID
        del ds.file_meta
        ds.save_as(path, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian)
    return values


def write_ct_series(
    directory: str | os.PathLike[str],
    n: int,
    *,
    rows: int = 8,
    columns: int = 8,
    name: str = "IM{:06d}",
) -> list[Path]:
    """``n`` small int16 CT slices (rescale -1024) named PACS-style, for scan tests."""
    directory = Path(directory)
    series = generate_uid()
    out = []
    for i in range(n):
        path = directory / name.format(i + 1)
        write_dicom(
            path,
            rows=rows,
            columns=columns,
            bits_allocated=16,
            bits_stored=12,
            signed=True,
            rescale_slope=1.0,
            rescale_intercept=-1024.0,
            seed=i,
            extra={
                "SeriesInstanceUID": series,
                "InstanceNumber": i + 1,
                "ImagePositionPatient": [0.0, 0.0, float(i)],
                "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                "PixelSpacing": [0.5, 0.5],
                "SliceThickness": 1.0,
                "WindowCenter": 40,
                "WindowWidth": 400,
            },
        )
        out.append(path)
    return out


def pixel_array_fchw(ds: Dataset) -> np.ndarray:
    """pydicom's ``pixel_array`` reshaped to torchdicom's (F, C, H, W), native byte order."""
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None]
    arr = arr[:, None] if spp == 1 else np.moveaxis(arr, -1, 1)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)
