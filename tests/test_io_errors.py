"""Every failure is the right TorchDicomError, naming the file and the reason."""

from __future__ import annotations

import os
import pickle
import shutil
import tracemalloc
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest
from pydicom.uid import RLELossless

from tests.conftest import real_file
from tests.dicom_factory import PHI_PATIENT_ID, PHI_PATIENT_NAME, make_dataset, write_dicom
from torchdicom import dcmread, scaled_px, scan
from torchdicom.errors import (
    CorruptDicomError,
    DicomFileNotFoundError,
    FrameIndexError,
    MissingPixelDataError,
    NotDicomError,
    StaleIndexError,
    TorchDicomError,
    UnsupportedTransferSyntaxError,
)
from torchdicom.io import frames as frames_module
from torchdicom.io.frames import read_frames
from torchdicom.io.header import header_row


def _raises(error: type[TorchDicomError], fn, path: Path, *reason_words: str) -> TorchDicomError:
    """Call ``fn``; assert the exact error type, that it names ``path`` and the reason."""
    with pytest.raises(TorchDicomError) as info:
        fn()
    exc = info.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.startswith(str(path)), message
    assert exc.path == str(path)
    for word in reason_words:
        assert word.lower() in message.lower(), message
    # Never a patient identifier in an error message.
    assert PHI_PATIENT_NAME not in message and PHI_PATIENT_ID not in message
    return exc


# --------------------------------------------------------------------------- not a DICOM file
@pytest.mark.parametrize("reader", [read_frames, header_row, dcmread, scaled_px])
def test_zero_byte_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    _raises(NotDicomError, lambda: reader(path), path, "empty", "0 bytes")


@pytest.mark.parametrize("reader", [read_frames, header_row, dcmread])
def test_directory(tmp_path: Path, reader) -> None:
    path = tmp_path / "series.dcm"
    path.mkdir()
    _raises(NotDicomError, lambda: reader(path), path, "directory")


@pytest.mark.parametrize("reader", [read_frames, header_row, dcmread])
def test_missing_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "gone.dcm"
    exc = _raises(DicomFileNotFoundError, lambda: reader(path), path, "no such file")
    assert isinstance(exc, FileNotFoundError)


@pytest.mark.parametrize("content", [b"patient notes\n" * 40, b"\x89PNG\r\n\x1a\n" + bytes(300)])
def test_not_dicom_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "IM000001"
    path.write_bytes(content)
    exc = _raises(NotDicomError, lambda: read_frames(path), path, "not a DICOM file", "DICM")
    assert isinstance(exc, ValueError)


# --------------------------------------------------------------------------- damaged DICOM
def test_truncated_pixel_data_of_a_real_file(tmp_path: Path) -> None:
    source = real_file("CT_small.dcm")
    path = tmp_path / "cut.dcm"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _raises(CorruptDicomError, lambda: read_frames(path), path, "truncated", "bytes")


def test_truncated_multiframe_names_the_sizes(tmp_path: Path) -> None:
    path = tmp_path / "mf.dcm"
    write_dicom(path, rows=16, columns=16, frames=4)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    exc = _raises(CorruptDicomError, lambda: read_frames(path, 0), path, "truncated")
    assert "4 frames of 16x16x1 at 16 bits" in str(exc)


def _lying_file(path: Path, **header: int) -> None:
    ds, _ = make_dataset(rows=8, columns=8)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    "header",
    [
        {"NumberOfFrames": 100_000},
        {"Rows": 65535, "Columns": 65535},
        {"NumberOfFrames": 5000, "Rows": 4096, "Columns": 4096},
    ],
    ids=["frames", "rows-columns", "both"],
)
def test_lying_header_fails_before_allocating(tmp_path: Path, header: dict[str, int]) -> None:
    path = tmp_path / "liar.dcm"
    _lying_file(path, **header)
    tracemalloc.start()
    try:
        _raises(
            CorruptDicomError,
            lambda: read_frames(path),
            path,
            "declares",
            "only 128 bytes of pixel data",
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The declared sizes run from 12 MB to 160 GB; nothing near that is allocated.
    assert peak < 4 * 2**20, peak


def test_lying_header_on_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "liar_rle.dcm"
    write_dicom(path, rows=8, columns=8, transfer_syntax=RLELossless)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 1_000_000
    ds.save_as(path)
    tracemalloc.start()
    try:
        _raises(CorruptDicomError, lambda: read_frames(path, 5), path, "compressed frames")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak


def test_compressed_frame_larger_than_its_data_can_decode_to(tmp_path: Path) -> None:
    # Found by fuzzing: a real J2K MR with Rows set to 65535 made pydicom size
    # a 128 MiB output buffer from the header for a ~100 kB file.
    path = tmp_path / "liar_j2k.dcm"
    shutil.copy(real_file("MR2_J2KI.dcm"), path)
    ds = pydicom.dcmread(path)
    ds.Rows = 65535
    ds.save_as(path)
    tracemalloc.start()
    try:
        _raises(CorruptDicomError, lambda: read_frames(path), path, "impossible for 1 compressed")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_impossible_geometry_is_refused_at_parse(tmp_path: Path) -> None:
    path = tmp_path / "zero.dcm"
    _lying_file(path, Rows=0)
    _raises(CorruptDicomError, lambda: header_row(path), path, "impossible image size")
    path2 = tmp_path / "bits.dcm"
    _lying_file(path2, BitsAllocated=12)
    _raises(CorruptDicomError, lambda: read_frames(path2), path2, "Bits Allocated 12")


# --------------------------------------------------------------------------- frames, pixels
@pytest.mark.parametrize("bad", [3, -4, [0, 7], slice(None)])
def test_frame_out_of_range(tmp_path: Path, bad) -> None:
    path = tmp_path / "three.dcm"
    write_dicom(path, frames=3)
    if isinstance(bad, slice):  # slices clip like Python's, never raise
        assert read_frames(path, bad).shape[0] == 3
        return
    exc = _raises(FrameIndexError, lambda: read_frames(path, bad), path, "out of range")
    assert isinstance(exc, IndexError)
    assert "has 3 frames" in str(exc) and "0..2" in str(exc)


def test_frame_selection_type_error(tmp_path: Path) -> None:
    path = tmp_path / "one.dcm"
    write_dicom(path)
    with pytest.raises(TypeError, match="Got: float"):
        read_frames(path, 0.5)


def test_no_pixel_data(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    ds, _ = make_dataset()
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    _raises(MissingPixelDataError, lambda: read_frames(path), path, "Pixel Data", "no image")
    index = scan([path], workers=0, progress=False)
    assert len(index) == 0
    assert index.errors.loc[0, "error_type"] == "MissingPixelDataError"


def test_real_file_without_pixel_data() -> None:
    path = real_file("rtplan.dcm")
    _raises(MissingPixelDataError, lambda: read_frames(path), path, "no (7FE0,0010)")


# --------------------------------------------------------------------------- stale rows
@pytest.mark.parametrize("change", ["rewritten", "touched", "deleted"])
def test_stale_index_row(tmp_path: Path, change: str) -> None:
    path = tmp_path / "IM000001"
    write_dicom(path, rows=8, columns=8)
    row = scan([path], workers=0, progress=False).row(0)
    if change == "rewritten":
        write_dicom(path, rows=16, columns=16)  # same name, new content
    elif change == "touched":
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        path.unlink()
        _raises(DicomFileNotFoundError, lambda: read_frames(row), path, "deleted since")
        return
    exc = _raises(StaleIndexError, lambda: read_frames(row), path, "changed since", "rescan")
    assert isinstance(exc, RuntimeError)


def test_stale_row_on_decoder_path(tmp_path: Path) -> None:
    path = tmp_path / "rle.dcm"
    write_dicom(path, transfer_syntax=RLELossless)
    row = scan([path], workers=0, progress=False).row(0)
    shutil.copy(real_file("MR_small_RLE.dcm"), path)
    _raises(StaleIndexError, lambda: read_frames(row), path, "changed since")


def test_row_of_a_failed_file(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    row = {"path": str(path), "error": "NotDicomError: not a DICOM file"}
    _raises(CorruptDicomError, lambda: read_frames(row), path, "failed at scan time")


# --------------------------------------------------------------------------- decoders
class _NoPluginDecoder:
    """A pydicom decoder whose plugins are all missing (as on a bare install)."""

    is_available = False
    missing_dependencies: ClassVar[list[str]] = [
        "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-rle>=2.0",
        "gdcm - requires gdcm>=3.0.10",
    ]


def test_unavailable_decoder_names_the_package(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "rle.dcm"
    write_dicom(path, transfer_syntax=RLELossless)
    monkeypatch.setattr(frames_module, "get_decoder", lambda uid: _NoPluginDecoder())
    exc = _raises(
        UnsupportedTransferSyntaxError,
        lambda: read_frames(path),
        path,
        "RLE Lossless",
        "pylibjpeg-rle",
        "gdcm",
    )
    assert isinstance(exc, NotImplementedError)


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    path = tmp_path / "odd.dcm"
    ds, _ = make_dataset()
    ds.save_as(path, enforce_file_format=True)
    # Rewrite the transfer syntax UID in the file meta to a private one of the
    # same length, keeping the data set itself Explicit VR Little Endian.
    data = path.read_bytes()
    ts = str(ds.file_meta.TransferSyntaxUID).encode()
    fake = b"1.2.3.4.5.6.7.8.9.1"[: len(ts)].ljust(len(ts), b"9")
    path.write_bytes(data.replace(ts + b"\x00", fake + b"\x00", 1))
    _raises(
        UnsupportedTransferSyntaxError, lambda: read_frames(path), path, "has no pixel data decoder"
    )


# --------------------------------------------------------------------------- pickling
def test_errors_survive_pickling(tmp_path: Path) -> None:
    # DataLoader workers send exceptions to the parent process by pickle.
    exc = FrameIndexError(tmp_path / "a.dcm", "frame 9 is out of range", frame=9)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is FrameIndexError
    assert (back.path, back.reason, back.frame, str(back)) == (
        exc.path,
        exc.reason,
        exc.frame,
        str(exc),
    )
