"""Writing a file so that readers see the old content or the new, never half of it.

One helper for every file torchdicom (and its benchmarks) replace in place: the index
parquet, decoded-frame cache entries, the sample-set manifest, benchmark results. The
content goes to a temporary file in the target's directory (so the final rename never
crosses a filesystem), is flushed (and, when ``durable``, fsync-ed), then renamed over the
target with :func:`os.replace`, which is atomic on POSIX and Windows. On any failure,
``KeyboardInterrupt`` included, the temporary file is removed and the target is untouched.
A process killed outright (SIGKILL, power loss) can leave a temporary file behind, never a
torn target: temporaries are named ``.<target name>.<random>.tmp``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "write_text_atomic"]

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _open_temporary(target: Path, mode: int) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``target``: (descriptor, path)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, mode), tmp
        except FileExistsError:  # 48 random bits: practically never
            continue


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, durable: bool = True, mode: int = 0o666
) -> Iterator[BinaryIO]:
    """Open a binary file whose content replaces ``path`` when the block ends without error.

    Args:
        path: the file to write; its directory must exist.
        durable: fsync the content before the rename, so that after a power loss the
            target holds the old or the new content (not an empty file). Costs a disk
            flush per call: cache entries, whose checksum catches the rare torn entry,
            skip it.
        mode: permissions of the new file, before the process umask applies (the
            default gives what :func:`open` gives; ``0o600``: owner only).

    Yields:
        The temporary file, opened for binary writing.

    Raises:
        OSError: the temporary file cannot be created, written or renamed; the target
            is then unchanged and the temporary removed.

    Example:
        >>> with atomic_write(path) as f:  # doctest: +SKIP
        ...     f.write(b"all or nothing")
    """
    target = Path(path)
    fd, tmp = _open_temporary(target, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, durable: bool = True, mode: int = 0o666
) -> None:
    """:func:`atomic_write` of ``text``, encoded as UTF-8; arguments as there."""
    with atomic_write(path, durable=durable, mode=mode) as f:
        f.write(text.encode("utf-8"))
