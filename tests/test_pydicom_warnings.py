"""pydicom's warnings reach torchdicom's logger once per file, with the values they quote withheld."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from torchdicom.io.dicomfile import dcmread, pydicom_warnings_logged, withhold_values
from torchdicom.io.header import header_row

NAME = "Secretname^Zelda"


def _write_invalid_uid_file(path: Path) -> Path:
    """A file whose Study Instance UID is invalid and quotes the patient's name."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00" * 8
    with config.disable_value_validation():
        ds.PatientName = NAME
        ds.StudyInstanceUID = f"1.2.{NAME}"  # damage that runs over the name
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def bad_uid(tmp_path: Path) -> Path:
    return _write_invalid_uid_file(tmp_path / "bad_uid.dcm")


def test_warning_logged_with_value_withheld_not_raised(bad_uid, caplog):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pydicom warning escaping would fail the test
        row = header_row(bad_uid)
    assert row["rows"] == 2
    records = [r for r in caplog.records if r.name == "torchdicom.io"]
    assert records, "the invalid UID warning was not logged"
    message = records[0].getMessage()
    assert "Invalid value for VR UI: <value withheld>" in message and str(bad_uid) in message
    for part in (NAME, *NAME.split("^")):
        assert part not in caplog.text  # neither our line nor pydicom's own logger line


def test_repeats_are_logged_once_per_file_then_at_debug(bad_uid, tmp_path, caplog):
    other = _write_invalid_uid_file(tmp_path / "other.dcm")
    caplog.set_level(logging.DEBUG, logger="torchdicom.io")
    for path in (bad_uid, bad_uid, other):
        ds = dcmread(path, stop_before_pixels=True)
        with pydicom_warnings_logged(str(path)):
            ds.StudyInstanceUID, ds.StudyInstanceUID  # noqa: B018 - two checks, one message
    ours = [r for r in caplog.records if r.name == "torchdicom.io" and "VR UI" in r.getMessage()]
    assert len(ours) == 3  # one per read, the duplicate within a read dropped
    # This process may have seen the kind before (another test): at most the first is WARNING.
    assert all(r.levelno == logging.DEBUG for r in ours[1:])


def test_other_warnings_pass_through():
    with pytest.warns(RuntimeWarning, match="not pydicom's"), pydicom_warnings_logged("x.dcm"):
        warnings.warn("not pydicom's", RuntimeWarning, stacklevel=1)


@pytest.mark.parametrize(
    "message",
    [
        f"Invalid value for VR PN: '{NAME}'. Please see <https://example>",
        f'The value "{NAME}" is odd',
        f"bytes b'{NAME}\\x00' here",
        f'Invalid value for VR LO: "O\'{NAME}".',
    ],
)
def test_withhold_values(message):
    out = withhold_values(message)
    assert NAME not in out and "Zelda" not in out and "<value withheld>" in out
