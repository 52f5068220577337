"""The index's table, below :mod:`torchdicom.index` and :mod:`torchdicom._dask_scan`.

The schema version, the typed frame of rows and the errors table, parquet I/O (one file
holding rows and errors, written atomically, its torchdicom metadata checked) and the
header scan that builds rows and error tuples from a list of paths, reusing an earlier
index file's rows of unchanged files (:func:`_scan_paths`). :mod:`torchdicom.index` wraps
them into a :class:`~torchdicom.DicomIndex`; :mod:`torchdicom._dask_scan` runs the scan per
partition and writes its parts with :func:`_rows_table`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from torchdicom._atomic import atomic_write
from torchdicom._privacy import salt_fingerprint
from torchdicom.errors import DicomFileNotFoundError, TorchDicomError
from torchdicom.io.dicomfile import _short
from torchdicom.io.header import header_row
from torchdicom.io.schema import INDEX_COLUMNS, INDEX_SCHEMA, KIND_DTYPES, KIND_FILLS, IndexRow

log = logging.getLogger("torchdicom.index")


# 2: the per-frame "floats" columns of enhanced multi-frame objects.
# 3: patient_hash is HMAC-SHA256 keyed by the salt (was a salted SHA-256): older caches
#    hold hashes that no longer match, so they are rebuilt.
# 4: frame_offsets / frame_lengths ("ints"): each compressed frame's code-stream span.
_SCHEMA_VERSION = 5
_ERROR_COLUMNS = ("path", "error_type", "reason")
# The errors table of a scan: the file, its TorchDicomError class and the one-line reason,
# and the (size, mtime) it had, which revalidate a cached failure.
_ERROR_DTYPES = {
    "path": object,
    "error_type": object,
    "reason": object,
    "size": "int64",
    "mtime_ns": "int64",
}
# Below this many files a process pool costs more than it saves.
_MIN_FILES_FOR_POOL = 64


def _empty_frame() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in INDEX_COLUMNS}))


def _typed(df: pd.DataFrame, fill_missing: bool = False) -> pd.DataFrame:
    """Cast every index column to its schema dtype, first filling gaps when asked."""
    for c, kind in INDEX_SCHEMA.items():
        col = df[c]
        if kind in ("floats", "ints"):
            df[c] = col.map(_ARRAY_CELLS[kind]).astype(object)
            continue
        if fill_missing:
            if kind in ("int", "float"):
                col = pd.to_numeric(col, errors="coerce")
            col = col.fillna(KIND_FILLS[kind])
        df[c] = col.astype(KIND_DTYPES[kind])
    return df


def _float_array(value: Any) -> np.ndarray:
    """A "floats" cell as a float64 array; None / NaN (a missing cell) as the empty one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return KIND_FILLS["floats"]
    return np.asarray(value, dtype=np.float64)


def _int_array(value: Any) -> np.ndarray:
    """An "ints" cell as an int64 array; None / NaN (a missing cell) as the empty one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return KIND_FILLS["ints"]
    return np.asarray(value, dtype=np.int64)


_ARRAY_CELLS = {"floats": _float_array, "ints": _int_array}


# --------------------------------------------------------------------------- parquet I/O
def _combined_table(
    df: pd.DataFrame,
    errors: pd.DataFrame,
    salt: str | None = None,
    extra: dict[str, Any] | None = None,
):
    import pyarrow as pa

    good = df.copy()
    good["error_type"] = None
    good["error"] = None
    bad = pd.DataFrame({c: [None] * len(errors) for c in INDEX_COLUMNS})
    if len(errors):
        bad["path"] = errors["path"].to_numpy()
        bad["error_type"] = errors["error_type"].to_numpy()
        bad["error"] = errors["reason"].to_numpy()
        # Keep size/mtime of failed files so a cached failure is also revalidated.
        for c in ("size", "mtime_ns"):
            bad[c] = errors[c].to_numpy() if c in errors else -1
    else:
        bad["error_type"] = []
        bad["error"] = []
    bad = _typed(bad, fill_missing=True)
    frames = [f for f in (good, bad) if len(f)]
    both = pd.concat(frames, ignore_index=True) if frames else good
    table = pa.Table.from_pandas(both, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    info = {"schema_version": _SCHEMA_VERSION, "salt": salt_fingerprint(salt), **(extra or {})}
    meta[b"torchdicom"] = json.dumps(info).encode()
    return table.replace_schema_metadata(meta)


def _arrow_type(kind: str):
    import pyarrow as pa

    return {
        "str": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "floats": pa.list_(pa.float64()),
        "ints": pa.list_(pa.int64()),
    }[kind]


def _rows_table(
    rows: list[IndexRow],
    errors: list[tuple[str, str, str, int, int]],
    salt: str | None = None,
    extra: dict[str, Any] | None = None,
):
    """Rows and error tuples as the table :func:`_combined_table` makes of a DataFrame
    (read back by :func:`_split_table` alike), built column by column with no DataFrame:
    a Dask partition writes its part this way, as pandas costs tens of ms per partition
    in fixed overheads. The schema is fixed, so every part has the same one."""
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: r["path"])
    errors = sorted(errors)
    n_err = len(errors)
    arrays = []
    fields = []
    for name, kind in INDEX_SCHEMA.items():
        values: list[Any] = [row[name] for row in rows]
        if name == "path":
            values += [e[0] for e in errors]
        elif name == "size":
            values += [e[3] for e in errors]
        elif name == "mtime_ns":
            values += [e[4] for e in errors]
        else:
            # The fills of a failed file's cells, as _combined_table's _typed(fill_missing).
            values += [KIND_FILLS[kind]] * n_err
        arrays.append(pa.array(values, type=_arrow_type(kind)))
        fields.append(pa.field(name, _arrow_type(kind)))
    arrays.append(pa.array([None] * len(rows) + [e[1] for e in errors], type=pa.string()))
    arrays.append(pa.array([None] * len(rows) + [e[2] for e in errors], type=pa.string()))
    fields += [pa.field("error_type", pa.string()), pa.field("error", pa.string())]
    info = {"schema_version": _SCHEMA_VERSION, "salt": salt_fingerprint(salt), **(extra or {})}
    schema = pa.schema(fields, metadata={b"torchdicom": json.dumps(info).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_table_atomic(table, path: Path) -> None:
    """A parquet table to ``path``, atomically, owner-only."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode=0o600) as f:
        pq.write_table(table, f)


def _write_parquet_atomic(
    df: pd.DataFrame,
    errors: pd.DataFrame,
    path: Path,
    salt: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Rows and errors as one parquet file; ``salt`` is the one the patient hashes were made
    with (its fingerprint is stored), ``extra`` more entries of the torchdicom metadata."""
    # Owner-only, as the index has always been written.
    _write_table_atomic(_combined_table(df, errors, salt, extra), path)


def _read_parquet(path: Path, salt: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows and errors of an index file; with ``salt`` (a :func:`salt_fingerprint`),
    only when its patient hashes were made with that salt."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DicomFileNotFoundError(path, "index file not found") from None
    except Exception as exc:
        raise TorchDicomError(
            path, f"index file is damaged or not parquet: {_short(exc)}"
        ) from None
    info = _index_info(path, table.schema.metadata)
    if salt is not None and info.get("salt") != salt:
        raise TorchDicomError(path, "patient hashes made with another TORCHDICOM_SALT: rescan")
    return _split_table(table)


def _index_info(path: Path, metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The torchdicom entry of a parquet file's metadata, checked for the schema version."""
    info = (metadata or {}).get(b"torchdicom")
    if info is None:
        raise TorchDicomError(path, "not a torchdicom index (no torchdicom metadata)")
    parsed = json.loads(info)
    version = parsed.get("schema_version")
    if version != _SCHEMA_VERSION:
        raise TorchDicomError(
            path, f"index schema version {version} is not {_SCHEMA_VERSION}: rescan"
        )
    return parsed


def _split_table(table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An index table (rows and errors in one, see :func:`_combined_table`) as typed rows
    and errors, both sorted by path."""
    both = table.to_pandas()
    failed = both["error"].notna() & (both["error"] != "")
    df = _typed(both.loc[~failed, list(INDEX_COLUMNS)].copy())
    err = both.loc[failed, ["path", "error_type", "error", "size", "mtime_ns"]].rename(
        columns={"error": "reason"}
    )
    err = _typed_errors(err).sort_values("path")
    return df.sort_values("path").reset_index(drop=True), err.reset_index(drop=True)


# --------------------------------------------------------------------------- scanning
def _scan_one(
    path: str, salt: str | None = None
) -> tuple[str, IndexRow | None, tuple[str, str, int, int] | None]:
    """Worker: parse one header, patient hashes keyed by ``salt``. Never raises for a bad file."""
    try:
        # pydicom's warnings reach torchdicom's logger, values withheld (header_row).
        return path, header_row(path, salt), None
    except TorchDicomError as exc:
        size, mtime = _stat(path)
        return path, None, (type(exc).__name__, str(exc), size, mtime)
    except Exception as exc:  # belt and braces: a scan never dies on one file
        size, mtime = _stat(path)
        return path, None, ("CorruptDicomError", f"{path}: {_short(exc)}", size, mtime)


def _scan_chunk(
    paths: list[str], salt: str | None = None
) -> list[tuple[str, IndexRow | None, tuple[str, str, int, int] | None]]:
    return [_scan_one(p, salt) for p in paths]


def _stat(path: str) -> tuple[int, int]:
    if "://" in path:
        from torchdicom.sources.remote import info, is_remote

        if is_remote(path):
            try:
                return info(path)[0], -1
            except TorchDicomError:
                return -1, -1
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _remote_meta(urls: list[str], n_workers: int) -> dict[str, tuple[int, str | None]]:
    """``(size, etag)`` of each remote object, ``(-1, None)`` when it cannot be stat'ed."""
    from torchdicom.sources.remote import info

    def one(url: str) -> tuple[int, str | None]:
        try:
            return info(url)
        except TorchDicomError:
            return -1, None

    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=max(4, 4 * n_workers)) as threads:
        return dict(zip(urls, threads.map(one, urls)))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _scan_paths(
    paths: list[str],
    *,
    workers: int,
    cached_from: Path | None,
    progress: bool,
    salt: str,
) -> tuple[list[IndexRow], list[tuple[str, str, str, int, int]], bool]:
    """Parse the headers of ``paths``, reusing the rows of an earlier index file whose (size, mtime) — or,
    remote, (size, ETag) — still hold.

    Args:
        paths: the files (absolute paths or URLs), listed already.
        workers: processes (threads for URLs); 0 or 1: parse in this process.
        cached_from: an index file (may be missing) whose unchanged rows are reused;
            ignored, with a warning, when damaged or made with another salt.
        progress: show a tqdm bar.
        salt: the key of the patient hashes.

    Returns:
        The rows, the ``(path, error_type, reason, size, mtime_ns)`` errors (both in no
        particular order), and whether they differ from ``cached_from`` (a file was
        parsed, or one it held is gone), i.e. whether a cache should be rewritten.
    """
    from tqdm.auto import tqdm

    from torchdicom.sources.remote import is_remote

    cached: dict[str, IndexRow] = {}
    cached_errors: dict[str, tuple[str, str, int, int]] = {}
    if cached_from is not None and cached_from.exists():
        try:
            old, old_err = _read_parquet(cached_from, salt=salt_fingerprint(salt))
            cached = {r["path"]: cast(IndexRow, r) for r in old.to_dict("records")}
            cached_errors = {
                r["path"]: (r["error_type"], r["reason"], int(r["size"]), int(r["mtime_ns"]))
                for r in old_err.to_dict("records")
            }
        except TorchDicomError as exc:
            warnings.warn(f"index cache ignored and rebuilt: {exc}", stacklevel=3)

    rows: list[IndexRow] = []
    errors: list[tuple[str, str, str, int, int]] = []
    todo: list[str] = []
    # A remote object's (size, etag): one info request each, many in flight, and only for
    # the objects the cache holds (the others are parsed anyway).
    remote_meta = _remote_meta(
        [p for p in paths if is_remote(p) and (p in cached or p in cached_errors)], workers
    )
    for p in paths:
        if p not in cached and p not in cached_errors:
            todo.append(p)
            continue
        if p in remote_meta:
            size, etag = remote_meta[p]
            mtime = -1
        else:
            size, mtime = _stat(p)
            etag = None
        hit = cached.get(p)
        if (
            hit is not None
            and hit["size"] == size
            and hit["mtime_ns"] == mtime
            and (not is_remote(p) or etag == hit.get("etag"))
        ):
            rows.append(hit)
            continue
        err = cached_errors.get(p)
        # A remote failure is parsed again: the errors table keeps no ETag, and an object
        # replaced by one of the same size (fixed, re-uploaded) must not stay a failure.
        if err is not None and err[2] == size and err[3] == mtime and p not in remote_meta:
            errors.append((p, err[0], err[1], size, mtime))
            continue
        todo.append(p)

    # No bar when every header is in the cache: an empty bar on every run is noise.
    bar = tqdm(
        total=len(todo), desc="scanning DICOM headers", unit="file", disable=not (progress and todo)
    )
    try:
        if any(is_remote(p) for p in todo):
            # Remote headers wait on the network, not the CPU: threads, many in flight.
            with ThreadPoolExecutor(max_workers=max(4, 4 * workers)) as threads:
                for item in threads.map(_scan_one, todo, [salt] * len(todo)):
                    _take(item, rows, errors)
                    bar.update(1)
        elif workers <= 1 or len(todo) < _MIN_FILES_FOR_POOL:
            for p in todo:
                _take(_scan_one(p, salt), rows, errors)
                bar.update(1)
        else:
            chunk = max(8, min(256, math.ceil(len(todo) / (workers * 8))))
            chunks = list(_chunks(todo, chunk))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # Chunks keep per-task overhead low; results stream back so the
                # parent keeps rows (plain dicts), never pydicom objects.
                for batch in pool.map(_scan_chunk, chunks, [salt] * len(chunks)):
                    for item in batch:
                        _take(item, rows, errors)
                    bar.update(len(batch))
    finally:
        bar.close()

    for e in errors:
        log.debug("not indexed: %s", e[2])
    changed = bool(todo) or len(cached) + len(cached_errors) != len(paths)
    return rows, errors, changed


def _frame_of(rows: list[IndexRow]) -> pd.DataFrame:
    """Rows as a typed frame, built column by column: each column is made once in its
    schema dtype, where a frame of row dicts is made as objects and then cast
    (about a third of the cost of the frame, measured in benchmarks/scan_dask.py)."""
    columns: dict[str, pd.Series] = {}
    for name, kind in INDEX_SCHEMA.items():
        values = [row[name] for row in rows]
        if kind in ("floats", "ints"):
            cell = _ARRAY_CELLS[kind]
            # One cell at a time: np.array(list of equal-length arrays) would stack them.
            cells = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                cells[i] = cell(value)
            columns[name] = pd.Series(cells, dtype=object, copy=False)
        else:
            columns[name] = pd.Series(values, dtype=KIND_DTYPES[kind])
    return pd.DataFrame(columns, copy=False)


def _typed_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """The errors table in one set of dtypes whether it came from tuples or from parquet,
    empty or not (pandas 3 would infer its string dtype from some of those, object from
    others): text as object, like the index's str columns."""
    return errors.astype(_ERROR_DTYPES)


def _take(item, rows: list[IndexRow], errors: list[tuple[str, str, str, int, int]]) -> None:
    path, row, err = item
    if row is not None:
        rows.append(row)
    else:
        assert err is not None
        errors.append((path, err[0], err[1], err[2], err[3]))
