"""get_dicom_files on a PACS-like tree: extensionless files, odd cases, decoys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom_factory import write_dicom
from torchdicom.errors import DicomFileNotFoundError
from torchdicom.io.files import get_dicom_files, has_dicm_magic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder as hospitals export it.

    root/
      root.dcm                          .dcm at the root
      notes.txt, scan.png, README       decoys (README: extensionless, not DICOM)
      .hidden.dcm                       hidden file
      .cache/inside.dcm                 hidden folder
      a/IM000001, a/IM000002            PACS-style, no extension
      a/UPPER.DCM                       upper-case extension
      a/deep/1.2.840.113619.2.55.3.7    UID-style name
      a/deep/short                      extensionless, shorter than the preamble
      b/x.dicom
      b/fake.dcm.txt                    decoy
    """
    write_dicom(tmp_path / "root.dcm")
    (tmp_path / "notes.txt").write_text("not dicom\n" * 50)
    (tmp_path / "scan.png").write_bytes(PNG_MAGIC)
    (tmp_path / "README").write_bytes(b"x" * 300)
    write_dicom(tmp_path / ".hidden.dcm")
    write_dicom(tmp_path / ".cache" / "inside.dcm")
    write_dicom(tmp_path / "a" / "IM000001")
    write_dicom(tmp_path / "a" / "IM000002")
    write_dicom(tmp_path / "a" / "UPPER.DCM")
    write_dicom(tmp_path / "a" / "deep" / "1.2.840.113619.2.55.3.7")
    (tmp_path / "a" / "deep" / "short").write_bytes(b"DICM")
    write_dicom(tmp_path / "b" / "x.dicom")
    (tmp_path / "b" / "fake.dcm.txt").write_text("decoy")
    return tmp_path


def _names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_finds_every_dicom_and_no_decoy(tree: Path) -> None:
    found = get_dicom_files(tree)
    assert _names(found, tree) == [
        "a/IM000001",
        "a/IM000002",
        "a/UPPER.DCM",
        "a/deep/1.2.840.113619.2.55.3.7",
        "b/x.dicom",
        "root.dcm",
    ]
    assert all(isinstance(p, Path) for p in found)


def test_recurse_false_keeps_root_files_only(tree: Path) -> None:
    assert _names(get_dicom_files(tree, recurse=False), tree) == ["root.dcm"]


def test_folders_limits_the_walk_to_named_subfolders(tree: Path) -> None:
    # fastai semantics: only the named immediate sub-folders, no root files ...
    assert _names(get_dicom_files(tree, folders=["a"]), tree) == [
        "a/IM000001",
        "a/IM000002",
        "a/UPPER.DCM",
        "a/deep/1.2.840.113619.2.55.3.7",
    ]
    assert _names(get_dicom_files(tree, folders="b"), tree) == ["b/x.dicom"]
    # ... unless "." is among them.
    assert _names(get_dicom_files(tree, folders=[".", "b"]), tree) == ["b/x.dicom", "root.dcm"]
    assert get_dicom_files(tree, folders=["missing"]) == []


def test_folders_without_recurse_reads_named_folders_one_level(tree: Path) -> None:
    assert _names(get_dicom_files(tree, recurse=False, folders=["a"]), tree) == [
        "a/IM000001",
        "a/IM000002",
        "a/UPPER.DCM",
    ]


def test_single_file_and_missing_path(tree: Path) -> None:
    assert get_dicom_files(tree / "a" / "IM000001") == [tree / "a" / "IM000001"]
    assert get_dicom_files(tree / "notes.txt") == []
    with pytest.raises(DicomFileNotFoundError, match="no such file") as info:
        get_dicom_files(tree / "nope")
    assert str(tree / "nope") in str(info.value)


def test_has_dicm_magic(tree: Path) -> None:
    assert has_dicm_magic(tree / "a" / "IM000001")
    assert not has_dicm_magic(tree / "README")
    assert not has_dicm_magic(tree / "a" / "deep" / "short")
    assert not has_dicm_magic(tree / "a")  # a directory is not DICOM
    assert not has_dicm_magic(tree / "vanished")
