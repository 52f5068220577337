"""The lean header scan (torchdicom.io.rawheader) gives pydicom's rows, row for row.

Every real file (pydicom's test files and pydicom-data, the damaged ones included) and
the generated sample sets are read both ways: ``header_row(lean=True)`` (the default:
the raw-element walk for plain files, pydicom for the rest) and ``header_row(lean=False)``
(pydicom for every file). Rows must be equal column for column (NaN equal to NaN, arrays
element for element); failures must be the same error type with the same reason; and the
torchdicom.io log (pydicom's warnings, values withheld) must say the same.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.conftest import real_files
from torchdicom.errors import TorchDicomError
from torchdicom.io import header
from torchdicom.io.header import header_row
from torchdicom.samples import ct_like, siim_like, us_cine_like


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _outcome(path: Path, lean: bool) -> tuple[str, Any]:
    try:
        return "row", header_row(path, lean=lean)
    except TorchDicomError as exc:
        return type(exc).__name__, str(exc)


def _logged(path: Path, lean: bool) -> tuple[tuple[str, Any], list[str]]:
    """The outcome and what torchdicom.io logged meanwhile (pydicom's warnings included)."""
    logger = logging.getLogger("torchdicom.io")
    handler, level = _Messages(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        return _outcome(path, lean), handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _went_lean(path: Path) -> bool:
    """Whether the lean walk answered for the file (a row or an error), not pydicom."""
    if not os.path.isfile(path):
        return False
    try:
        return header._lean_row(str(path), os.stat(path), None) is not None
    except TorchDicomError:
        return True


def _differences(paths: list[Path]) -> tuple[list[str], int]:
    """Each difference between the two scans as a line, and how many files went lean."""
    out = []
    lean = 0
    for path in paths:
        (new, new_log), (old, old_log) = _logged(path, True), _logged(path, False)
        lean += _went_lean(path)
        if new_log != old_log:
            out.append(f"{path}: logged: lean {new_log!r:.300} vs pydicom {old_log!r:.300}")
        if new[0] != old[0]:
            out.append(f"{path}: lean {new[0]} {new[1]!r:.200} vs pydicom {old[0]} {old[1]!r:.200}")
        elif new[0] != "row":
            if new[1] != old[1]:
                out.append(f"{path}: {new[0]}: lean {new[1]!r} vs pydicom {old[1]!r}")
        else:
            if list(new[1]) != list(old[1]):
                out.append(f"{path}: columns differ")
            for column in old[1]:
                if not _same(new[1].get(column), old[1][column]):
                    out.append(
                        f"{path}: {column}: lean {new[1].get(column)!r} vs {old[1][column]!r}"
                    )
    return out, lean


def test_lean_elements_are_the_keywords_tags():
    for keyword, (tag, vr) in header._LEAN_ELEMENTS.items():
        assert tag_for_keyword(keyword) == tag, keyword
        assert pydicom.datadict.dictionary_VR(tag) == vr.decode(), keyword


def test_every_real_file_same_row_or_error():
    paths = real_files()
    assert len(paths) > 100
    differences, lean = _differences(paths)
    assert not differences, "\n".join(differences[:20])
    assert lean >= 20  # the lean walk is really taken, not always left to pydicom


def test_sample_sets_same_rows(tmp_path):
    sets = [
        ct_like(tmp_path / "ct", n_series=4, slices=3, size=64),
        siim_like(tmp_path / "siim", n=6, size=64),
        us_cine_like(tmp_path / "us", n=2, frames=4, size=32, jpeg=True),
    ]
    paths = sorted(p for s in sets for p in Path(s.root).rglob("*") if p.is_file())
    differences, lean = _differences(paths)
    assert not differences, "\n".join(differences[:20])
    assert lean >= 12


def _ct(path: Path, implicit: bool = False, **elements: Any) -> Path:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientID = "P1"
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = bytes(64 * 64 * 2)
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit)
    return path


def _item(**elements: Any) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.parametrize(
    "implicit, elements",
    [
        (False, {}),
        (True, {}),
        (False, {"WindowCenter": ["40", "400"], "WindowWidth": ["400", "1500"]}),
        (False, {"WindowCenter": "40"}),  # no width: both NaN, as pydicom's row
        (False, {"RescaleSlope": "0", "RescaleIntercept": "-1024.5"}),
        (False, {"ImagePositionPatient": ["0", "0"], "PixelSpacing": "0.5"}),
        (False, {"SliceThickness": "0", "InstanceNumber": " 7 "}),
        (False, {"NumberOfFrames": "1"}),
        (False, {"PatientID": "", "PatientName": "Doe^John"}),
        (False, {"ImageType": ["ORIGINAL", "PRIMARY"], "Modality": "CT\\MR"}),
        (False, {"DerivationCodeSequence": Sequence([_item(CodeValue="1"), _item()])}),
        (True, {"DerivationCodeSequence": Sequence([_item(CodeValue="1")])}),
        (False, {"ModalityLUTSequence": Sequence([_item(LUTExplanation="x")])}),
        # Left to pydicom: odd values, non-ASCII text, values pydicom warns about.
        (False, {"InstanceNumber": "1.5", "RescaleSlope": "1e400"}),
        (False, {"SOPInstanceUID": "1.02.3", "Modality": "ct"}),
        (False, {"PatientID": "x" * 65}),
        (False, {"PatientName": "Müller", "SpecificCharacterSet": "ISO_IR 100"}),
        (False, {"WindowCenter": "12345678901234567"}),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on writing the odd values
def test_generated_variants_same_row(tmp_path, implicit, elements):
    path = _ct(tmp_path / "f.dcm", implicit, **elements)
    differences, _ = _differences([path])
    assert not differences, "\n".join(differences)
    if elements.get("Modality") == "ct" or len(elements.get("PatientID", "")) > 64:
        assert header._lean_row(str(path), os.stat(path), None) is None


def test_undefined_length_sequence_is_skipped(tmp_path):
    path = _ct(
        tmp_path / "f.dcm",
        ReferencedImageSequence=Sequence([_item(ReferencedSOPInstanceUID="1.2")]),
    )
    ds = pydicom.dcmread(path)
    ds["ReferencedImageSequence"].is_undefined_length = True
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = True
    ds.save_as(path)
    assert header._lean_row(str(path), os.stat(path), None) is not None
    differences, _ = _differences([path])
    assert not differences, "\n".join(differences)


def test_truncated_left_to_pydicom_padding_lean(tmp_path):
    path = _ct(tmp_path / "f.dcm")
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-100])
    padded = tmp_path / "padded.dcm"
    padded.write_bytes(data + b"\xfc\xff\xfc\xff" + b"OB\x00\x00" + (4).to_bytes(4, "little") * 2)
    assert header._lean_row(str(cut), os.stat(cut), None) is None
    assert header._lean_row(str(padded), os.stat(padded), None) is not None
    differences, _ = _differences([cut, padded])
    assert not differences, "\n".join(differences)


def _sequence_seed(path: Path, implicit: bool) -> Path:
    """A lean file with nested undefined-length sequences and items of both lengths."""
    inner = Sequence([_item(CodeValue="2", CodingSchemeDesignator="DCM")])
    _ct(
        path,
        implicit,
        SpecificCharacterSet="ISO_IR 100",
        ReferencedImageSequence=Sequence(
            [_item(ReferencedSOPInstanceUID="1.2", PurposeOfReferenceCodeSequence=inner)] * 2
        ),
        ModalityLUTSequence=Sequence([_item(LUTExplanation="x")]),
        WindowCenter=["40", "400"],
        WindowWidth=["400", "1500"],
        ImagePositionPatient=["1", "2", "3"],
    )
    ds = pydicom.dcmread(path)
    for keyword in ("ReferencedImageSequence", "ModalityLUTSequence"):
        ds[keyword].is_undefined_length = True
    for k, item in enumerate(ds.ReferencedImageSequence):
        item.is_undefined_length_sequence_item = bool(k)  # one of each
        item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    ds.save_as(path, implicit_vr=implicit)
    assert header._lean_row(str(path), os.stat(path), None) is not None
    return path


def test_damaged_copies_same_row_or_error(tmp_path):
    """Byte mutations of lean files (tests/fuzz/_mutate.py): both scans agree on each."""
    from tests.fuzz._mutate import ABSURD_VALUES, Mutation, apply

    seeds = [_sequence_seed(tmp_path / "e.dcm", False), _sequence_seed(tmp_path / "i.dcm", True)]
    seeds += [p for p in real_files() if _went_lean(p)][:10]
    rng = np.random.default_rng(16)
    args = {
        "flip_header": [1, 2, 4, 8, 16, 32, 64, 128, 0],
        "insert_header": [b"\x00", b"\xff\xff", b"\\", b"ABCD", bytes(8)],
        "delete_header": [1, 2, 4, 8],
        "u32_header": [0, 1, 7, 0xFFFF, 100000, 0xFFFFFFFE],
        "pixel_length": [0, 1, 100, 0xFFFFFFFE, 0xFFFFFFFF],
        "truncate": [None],
        "undefined_length": [None],
        "duplicate_pixels": [None],
        "set": [(k, v) for k, values in ABSURD_VALUES.items() for v in values],
    }
    ops = sorted(args)
    paths = []
    for i in range(300):
        seed = seeds[i % len(seeds)]
        mutations = []
        for _ in range(int(rng.integers(1, 3))):
            op = ops[int(rng.integers(len(ops)))]
            mutations.append(
                Mutation(op, float(rng.random()), args[op][int(rng.integers(len(args[op])))])
            )
        path = tmp_path / f"m{i:03d}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path.write_bytes(apply(seed.read_bytes(), mutations))
        paths.append(path)
    differences, lean = _differences(paths)
    assert not differences, "\n".join(differences[:20])
    assert lean >= 30
