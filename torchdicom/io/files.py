"""Finding DICOM files on disk.

PACS and scanner exports rarely use a ``.dcm`` extension (``IM000001``,
``1.2.840....``), so a file counts as DICOM when it has a ``.dcm``/``.dicom``
extension (any case) *or* carries the ``DICM`` magic at byte 128 of the
Part 10 preamble.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DICOM_EXTENSIONS", "get_dicom_files", "has_dicm_magic"]

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

# Part 10 files: a 128-byte preamble followed by the four bytes "DICM".
_MAGIC_OFFSET = 128
_MAGIC = b"DICM"


def has_dicm_magic(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` carries the ``DICM`` marker at byte 128.

    Reads 132 bytes at most; unreadable paths (directories, permission errors,
    vanished files) count as not DICOM.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_MAGIC_OFFSET + len(_MAGIC))
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == _MAGIC


def _is_candidate(entry: os.DirEntry[str]) -> bool:
    if entry.name.startswith("."):
        return False  # .DS_Store, editor swap files, hidden trees
    try:
        if not entry.is_file():
            return False
    except OSError:
        return False
    suffix = os.path.splitext(entry.name)[1].lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    if suffix == "":
        # Extensionless: PACS exports like IM000001 — sniff the magic.
        return has_dicm_magic(entry.path)
    # Any other extension (.txt, .png, .json, .csv …) is a decoy unless it is a
    # DICOM UID-style name such as 1.2.840.113619.2.55.3.1234 whose "extension"
    # is all digits.
    if suffix[1:].isdigit():
        return has_dicm_magic(entry.path)
    return False


def get_dicom_files(
    path: str | os.PathLike[str],
    recurse: bool = True,
    folders: Iterable[str] | str | None = None,
) -> list[Path]:
    """Find the DICOM files under ``path``, sorted.

    The fastai helper of the same name, extended to PACS-style exports: a file
    is taken when its extension is ``.dcm``/``.dicom`` (any case), or when it
    has no extension (or a numeric UID-style one) and carries the ``DICM``
    magic at byte 128. Hidden files and folders (leading ``.``) are skipped.

    Args:
        path: a directory (or a single file, returned as a one-element list
            when it is DICOM).
        recurse: descend into sub-folders.
        folders: when given, only these immediate sub-folder names of ``path``
            are walked, and files directly in ``path`` are included only when
            ``"."`` is among them (as in fastai's ``get_files(..., folders=...)``).
            With ``recurse=False`` the named folders are read one level deep.

    Returns:
        Sorted list of :class:`pathlib.Path`.

    Raises:
        DicomFileNotFoundError: ``path`` does not exist.
    """
    from torchdicom.errors import DicomFileNotFoundError

    root = Path(path)
    if not root.exists():
        raise DicomFileNotFoundError(root, "no such file or directory")
    if root.is_file():
        ok = root.suffix.lower() in DICOM_EXTENSIONS or has_dicm_magic(root)
        return [root] if ok else []
    if isinstance(folders, str):
        folders = [folders]
    wanted = None if folders is None else set(folders)

    found: list[Path] = []
    stack: list[tuple[str, int]] = [(os.fspath(root), 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue  # unreadable folder: skip it rather than abort the walk
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                if entry.name.startswith("."):
                    continue
                if depth == 0 and wanted is not None:
                    if entry.name in wanted:
                        stack.append((entry.path, depth + 1))
                elif recurse:
                    stack.append((entry.path, depth + 1))
            elif (depth > 0 or wanted is None or "." in wanted) and _is_candidate(entry):
                found.append(Path(entry.path))
    found.sort()
    return found
