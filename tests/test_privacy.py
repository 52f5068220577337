"""No patient identifier leaves a file through torchdicom unless asked for.

Files carry distinctive identifiers (tests.dicom_factory.PHI_*); the test
greps for them in the index and its parquet cache, the decoded-frame cache,
DEBUG logs, CLI output and the messages of errors raised on damaged copies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import warnings
from pathlib import Path

import pytest
from pydicom.uid import RLELossless

from tests.dicom_factory import PHI_BIRTH_DATE, PHI_PATIENT_ID, PHI_PATIENT_NAME, write_dicom
from tests.fuzz import _mutate
from tests.fuzz._mutate import Mutation
from torchdicom import DicomDataset, read_frames, scan, to_dataframe
from torchdicom._privacy import DEFAULT_SALT, IDENTIFYING_ELEMENTS, patient_hash
from torchdicom.cli import main
from torchdicom.errors import TorchDicomError

# The name as stored (PN components) and each component alone.
SECRETS = (PHI_PATIENT_NAME, *PHI_PATIENT_NAME.split("^"), PHI_PATIENT_ID, PHI_BIRTH_DATE)


def _assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret!r} leaked into {where}"


@pytest.fixture
def phi_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_dicom(root / "ct.dcm", rows=16, columns=16)
    write_dicom(root / "rle.dcm", rows=16, columns=16, frames=2, transfer_syntax=RLELossless)
    return root


def test_patient_hash_is_stable_and_salted() -> None:
    assert patient_hash("A") == patient_hash("A") != patient_hash("B")
    assert patient_hash("A", salt="site-1") != patient_hash("A", salt="site-2")
    assert patient_hash("") == ""
    assert len(patient_hash("A")) == 16


def test_patient_hash_is_hmac_sha256_keyed_by_the_salt(monkeypatch) -> None:
    expected = hmac.new(b"site-1", b"PAT-0001", hashlib.sha256).hexdigest()[:16]
    assert patient_hash("PAT-0001", salt="site-1") == expected
    monkeypatch.setenv("TORCHDICOM_SALT", "site-1")
    assert patient_hash("PAT-0001") == expected
    monkeypatch.delenv("TORCHDICOM_SALT")
    default = hmac.new(DEFAULT_SALT.encode(), b"PAT-0001", hashlib.sha256).hexdigest()[:16]
    assert patient_hash("PAT-0001") == default


def test_index_and_to_dataframe_hash_with_the_same_function(phi_dir) -> None:
    index = scan(phi_dir, progress=False)
    assert set(index.df["patient_hash"]) == {patient_hash(PHI_PATIENT_ID)}
    df = to_dataframe(phi_dir)
    assert set(df["PatientID"]) == {patient_hash(PHI_PATIENT_ID)}
    assert set(df["PatientName"]) == {patient_hash(PHI_PATIENT_NAME)}
    withheld = {k for k, how in IDENTIFYING_ELEMENTS.items() if how == "withhold"}
    assert "PatientBirthDate" in withheld and not withheld & set(df.columns)


def test_index_cache_made_with_another_salt_is_rebuilt(phi_dir, tmp_path, monkeypatch) -> None:
    # Hashes of one patient under two salts never match: reusing them would split the patient.
    cache = tmp_path / "index.parquet"
    monkeypatch.setenv("TORCHDICOM_SALT", "site-1")
    scan(phi_dir, cache=cache, progress=False)
    monkeypatch.setenv("TORCHDICOM_SALT", "site-2")
    with pytest.warns(UserWarning, match="another TORCHDICOM_SALT"):
        index = scan(phi_dir, cache=cache, progress=False)
    assert set(index.df["patient_hash"]) == {patient_hash(PHI_PATIENT_ID, "site-2")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten under site-2: reused silently now
        assert scan(phi_dir, cache=cache, progress=False).df.equals(index.df)


def test_index_caches_and_logs_hold_no_identifiers(phi_dir, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    index_cache = tmp_path / "index.parquet"
    frame_cache = tmp_path / "frames"
    index = scan(phi_dir, cache=index_cache, progress=False)
    assert len(index) == 2 and index.df["patient_hash"].str.len().eq(16).all()
    _assert_clean(index.df.to_csv(), "the index")
    _assert_clean(index.summary(), "the index summary")
    _assert_clean(index_cache.read_bytes(), "the parquet cache")
    ds = DicomDataset(index, cache=frame_cache)
    for i in range(len(ds)):
        item = ds[i]
        _assert_clean(repr({k: v for k, v in item.items() if k != "image"}), "a dataset item")
    frames = list(frame_cache.rglob("*.frame"))
    assert frames, "the frame cache was not used"
    for p in frames:
        _assert_clean(p.read_bytes(), f"frame cache entry {p.name}")
    _assert_clean(caplog.text, "DEBUG logs")


def test_cli_masks_identifiers_unless_show_phi(phi_dir, capsys):
    assert main(["scan", str(phi_dir), "--quiet"]) == 0
    out = capsys.readouterr()
    _assert_clean(out.out + out.err, "`torchdicom scan` output")
    assert main(["info", str(phi_dir / "ct.dcm")]) == 0
    out = capsys.readouterr()
    _assert_clean(out.out + out.err, "`torchdicom info` output")
    # The check above would see a leak: --show-phi prints them.
    assert main(["info", str(phi_dir / "ct.dcm"), "--show-phi"]) == 0
    assert PHI_PATIENT_ID in capsys.readouterr().out


# Damage that shifts or breaks the header around the patient module, so a
# parser error could quote the identifiers' bytes.
_DAMAGE = [[Mutation("truncate", where=w)] for w in (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.95)] + [
    [Mutation(op, where=w, arg=arg)]
    for op, arg in (("delete_header", 3), ("insert_header", b"\x07"), ("u32_header", 0xFFFF))
    for w in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
]


@pytest.mark.parametrize("damage", _DAMAGE, ids=_mutate.describe)
def test_error_messages_hold_no_identifiers(phi_dir, tmp_path, damage, caplog):
    caplog.set_level(logging.DEBUG)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(_mutate.apply((phi_dir / "ct.dcm").read_bytes(), damage))
    messages = []
    index = scan([bad], progress=False)
    messages += index.errors["reason"].tolist()
    try:
        read_frames(bad)
    except TorchDicomError as exc:
        messages.append(str(exc))
    _assert_clean("\n".join(messages), "error messages")
    _assert_clean(caplog.text, "DEBUG logs")


@pytest.mark.parametrize("damage", _DAMAGE, ids=_mutate.describe)
def test_cli_info_on_damaged_file_holds_no_identifiers(phi_dir, tmp_path, damage, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(_mutate.apply((phi_dir / "ct.dcm").read_bytes(), damage))
    main(["info", str(bad)])
    out = capsys.readouterr()
    _assert_clean(out.out + out.err, "`torchdicom info` on a damaged file")
