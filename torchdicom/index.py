"""Scan once, read many: the header index of a DICOM collection.

:func:`scan` parses every header (never the pixel data) in parallel worker
processes into a :class:`DicomIndex`: one row per file with geometry, UIDs,
rescale/window parameters and the byte offset of native pixel data, so
training reads pixels by offset without parsing headers again. Files that
fail are listed in :attr:`DicomIndex.errors` with a one-line reason; one bad
file never stops a scan.

The parquet cache is written atomically (:func:`torchdicom._atomic.atomic_write`) and
revalidated per file by (size, mtime), so an interrupted write never leaves a
torn cache and an edited file is always re-parsed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from torchdicom._atomic import atomic_write
from torchdicom._privacy import (
    IDENTIFYING_ELEMENTS,
    patient_hash,
    resolve_salt,
    salt_fingerprint,
)
from torchdicom.errors import DicomFileNotFoundError, TorchDicomError
from torchdicom.io.dicomfile import _short, dcmread
from torchdicom.io.files import get_dicom_files
from torchdicom.io.header import header_row
from torchdicom.io.schema import INDEX_COLUMNS, INDEX_SCHEMA, KIND_DTYPES, KIND_FILLS, IndexRow

__all__ = ["DicomIndex", "scan", "to_dataframe"]

log = logging.getLogger(__name__)

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


class DicomIndex:
    """The parsed headers of a DICOM collection.

    Attributes:
        df: one row per readable file (columns: see
            :class:`~torchdicom.io.schema.IndexRow` — path, size, mtime_ns, UIDs,
            ``patient_hash``, modality, rows, columns, frames,
            samples_per_pixel, photometric, bits_*, pixel_representation,
            transfer_syntax, pixel_offset, rescale_slope/intercept,
            window_center/width, position_*, orientation_*, spacing_*,
            slice_thickness, instance_number — frame 0's values — and, for
            enhanced multi-frame files, every frame's in the ``frame_*`` array
            columns: see ``PER_FRAME_COLUMNS`` and
            :func:`~torchdicom.io.header.frame_row`). Sorted by path.
        errors: one row per file that could not be indexed: ``path``,
            ``error_type`` (the :class:`TorchDicomError` subclass name) and
            ``reason``.
    """

    def __init__(self, df: pd.DataFrame, errors: pd.DataFrame | None = None):
        self.df = df.reset_index(drop=True)
        self.errors = (
            errors.reset_index(drop=True)
            if errors is not None
            else pd.DataFrame({c: pd.Series([], dtype=object) for c in _ERROR_COLUMNS})
        )

    # ----------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return f"DicomIndex({len(self.df)} files, {int(self.df['frames'].sum()) if len(self.df) else 0} frames, {len(self.errors)} errors)"

    def row(self, i: int) -> IndexRow:
        """Row ``i`` as a plain dict (what :func:`~torchdicom.read_frames` takes)."""
        return cast(IndexRow, self.df.iloc[i].to_dict())

    def rows(self) -> list[IndexRow]:
        """All rows as plain dicts, cheap to index in a hot loop."""
        return cast(list[IndexRow], self.df.to_dict("records"))

    @property
    def total_frames(self) -> int:
        return int(self.df["frames"].sum()) if len(self.df) else 0

    # ----------------------------------------------------------------- summary
    def summary(self) -> str:
        """A human-readable summary: counts per modality, transfer syntax, size, frames, errors."""
        from pydicom.uid import UID

        lines = [
            f"{len(self.df)} DICOM files, {self.total_frames} frames, {len(self.errors)} errors"
        ]
        if len(self.df):
            lines.append("modality:        " + _counts(self.df["modality"].replace("", "?")))
            names = self.df["transfer_syntax"].map(lambda u: UID(u).name if u else "?")
            lines.append("transfer syntax: " + _counts(names))
            sizes = self.df["rows"].astype(str) + "x" + self.df["columns"].astype(str)
            lines.append("image size:      " + _counts(sizes))
            photo = self.df["photometric"].replace("", "?")
            lines.append("photometric:     " + _counts(photo))
            multi = self.df[self.df["frames"] > 1]
            if len(multi):
                lines.append(
                    f"multi-frame:     {len(multi)} files, {int(multi['frames'].min())}-{int(multi['frames'].max())} frames each"
                )
            lines.append(
                f"patients:        {self.df['patient_hash'].replace('', np.nan).nunique()} (hashed IDs);"
                f" series: {self.df['series_instance_uid'].replace('', np.nan).nunique()}"
            )
        if len(self.errors):
            lines.append("errors:")
            for _, e in self.errors.head(10).iterrows():
                lines.append(f"  {e['error_type']}: {e['reason']}")
            if len(self.errors) > 10:
                lines.append(f"  … and {len(self.errors) - 10} more (see DicomIndex.errors)")
        return "\n".join(lines)

    # ----------------------------------------------------------------- parquet
    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the index (rows and errors) to one parquet file, atomically."""
        _write_parquet_atomic(self.df, self.errors, Path(path))

    @classmethod
    def read_parquet(cls, path: str | os.PathLike[str]) -> DicomIndex:
        """Read an index written by :meth:`to_parquet`.

        Raises:
            TorchDicomError: the file is not a torchdicom index or is damaged.
        """
        df, errors = _read_parquet(Path(path))
        return cls(df, errors)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DicomIndex:
        """Read an index: one parquet file (:meth:`to_parquet`, ``scan(cache=file)``) or a
        partitioned index directory (``scan(executor="dask", cache=directory)``).

        Both give the dtypes of a local :func:`scan`, rows and errors sorted by path.

        Raises:
            TorchDicomError: not a torchdicom index, damaged, of another schema version,
                or a directory whose manifest is missing or names a missing part.
        """
        p = Path(path)
        if p.is_dir():
            from torchdicom._dask_scan import read_partitioned

            return read_partitioned(p)
        return cls.read_parquet(p)


def _counts(series: pd.Series) -> str:
    vc = series.value_counts()
    return ", ".join(f"{k} ({v})" for k, v in vc.items())


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


def _collect_paths(source: Any, progress: bool = False) -> list[str]:
    from torchdicom.sources.remote import find, is_remote, local_path, looks_like_dicom

    if isinstance(source, str) and is_remote(source):
        return looks_like_dicom(find(source, progress=progress))
    if isinstance(source, str):
        source = local_path(source)
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            return [os.path.abspath(f) for f in get_dicom_files(p)]
        if not p.exists():
            raise DicomFileNotFoundError(p, "no such file or directory")
        return [os.path.abspath(p)]
    if isinstance(source, Iterable):
        return [f if is_remote(f) else os.path.abspath(local_path(os.fspath(f))) for f in source]
    raise TypeError(
        f"scan() takes a directory, a file or a list of files. Got: {type(source).__name__}"
    )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def scan(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    salt: str | None = None,
    executor: str | Any | None = None,
    partition_depth: int = 1,
    partition_files: int = 4096,
    retries: int = 2,
) -> DicomIndex:
    """Index DICOM headers (pixel data is never read).

    Args:
        source: a directory (searched with :func:`get_dicom_files`), one file,
            or a list of files; or an fsspec URL (``s3://bucket/prefix``, ``gs://…``,
            ``memory://…``): the objects under it are listed where they are
            (``fs.find``) and only their header bytes are fetched, by range
            (see :mod:`torchdicom.sources.remote`). Remote rows keep the URL as
            ``path``, the object's ``size`` and ``etag``; ``mtime_ns`` is -1.
        workers: worker processes (default: CPU count; 0 or 1 parse in this
            process). Small collections are parsed in-process regardless. With
            ``executor="dask"`` and no client running: the size of the LocalCluster
            started for this call.
        cache: a parquet file. Rows of files whose (size, mtime) are unchanged
            are reused; the rest are parsed; the file is rewritten atomically.
            A cache whose patient hashes were made with another salt is rebuilt.
            A damaged cache is rebuilt (with a warning); an unwritable cache
            location is skipped with one warning. With an ``executor``: a directory,
            the partitioned index (one parquet part per partition and a manifest,
            see :mod:`torchdicom._dask_scan`); it must be reachable by every worker.
            With a :class:`~torchdicom.DicomWebSource`: the index is written there, and
            the rows of instances the server still lists are reused, without asking for
            their metadata again (the listing is always asked for).
        progress: show a tqdm progress bar.
        storage_options: fsspec options of the URLs' protocol (credentials,
            ``endpoint_url``, ``client_kwargs`` …), registered for this process
            (:func:`torchdicom.sources.configure`), and for each Dask task; never logged.
        salt: the key of ``patient_hash`` (default: ``TORCHDICOM_SALT``, see
            :func:`torchdicom._privacy.resolve_salt`), resolved here and handed to every
            worker, so hashes are the same on every node.
        executor: ``None`` (this machine's processes), ``"dask"`` (a local scheduler
            set in ``dask.config``, e.g. ``"synchronous"``; else the current
            ``distributed`` client; else a LocalCluster of ``workers`` processes for
            this call) or a ``distributed.Client``. Partitions are listed by the workers, parsed there
            and written as parquet parts; the client holds only their names.
        partition_depth: Dask only: directory levels the client lists to form
            partitions (each folder at that depth is one partition, walked whole by a
            worker; the files directly in a shallower folder are one partition of it).
        partition_files: Dask only: files per partition when ``source`` is a list.
        retries: ``distributed`` only: how often a partition whose task raised is run
            again (a worker that dies is replaced and its partition rescheduled by the
            scheduler); dask's local schedulers run each partition once.

    Returns:
        :class:`DicomIndex` with ``df`` (one row per readable file, sorted by
        path) and ``errors`` (path, error_type, reason per failed file).

    Example:
        >>> import pydicom.data
        >>> index = scan(pydicom.data.get_testdata_file("CT_small.dcm"), progress=False)
        >>> len(index), index.df.loc[0, "modality"]
        (1, 'CT')
    """
    from torchdicom.sources.remote import bucket_root, configure, is_remote

    index_rows = getattr(source, "index_rows", None)
    if callable(index_rows):
        if executor is not None:
            raise ValueError(
                "a source with index_rows() (DICOMweb) indexes itself; executor= does not"
                f" apply to it. Got: executor={executor!r}"
            )
        # A source that indexes itself (a DICOMweb server: QIDO-RS + WADO-RS metadata):
        # there are no files to list or stat; it returns rows and (path, error_type,
        # reason, size, mtime_ns) error tuples. With a cache, the rows of instances it
        # still lists are reused (a SOP Instance UID names fixed content: the listing is
        # the validity key, see DicomWebSource.index_rows) and the index is written there.
        known: dict[str, IndexRow] = {}
        if cache is not None and Path(cache).exists():
            try:
                old, _ = _read_parquet(Path(cache), salt=salt_fingerprint(resolve_salt(salt)))
                known = {r["path"]: cast(IndexRow, r) for r in old.to_dict("records")}
            except TorchDicomError as exc:
                warnings.warn(f"index cache ignored and rebuilt: {exc}", stacklevel=2)
        rows, errors = index_rows(
            progress=progress, workers=workers, salt=resolve_salt(salt), known=known
        )
        index = _index_of(list(rows), list(errors))
        if cache is not None:
            try:
                _write_parquet_atomic(index.df, index.errors, Path(cache), resolve_salt(salt))
            except OSError as exc:
                warnings.warn(f"index cache {cache} not written ({exc.strerror})", stacklevel=2)
        return index

    if executor is not None:
        from torchdicom._dask_scan import dask_scan

        return dask_scan(
            source,
            executor=executor,
            out=cache,
            workers=workers,
            progress=progress,
            storage_options=storage_options,
            salt=resolve_salt(salt),
            partition_depth=partition_depth,
            partition_files=partition_files,
            retries=retries,
        )

    if storage_options is not None:
        if not isinstance(source, str | os.PathLike):
            source = [os.fspath(s) for s in source]  # a generator is read once, here
        urls = [os.fspath(source)] if isinstance(source, str | os.PathLike) else source
        for bucket in {bucket_root(u) for u in urls if is_remote(u)}:
            configure(bucket, storage_options)  # that bucket's options, and the protocol's
    paths = _collect_paths(source, progress)
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    rows, errors, changed = _scan_paths(
        paths,
        workers=n_workers,
        cached_from=None if cache is None else Path(cache),
        progress=progress,
        salt=resolve_salt(salt),
    )
    index = _index_of(rows, errors)
    if cache is not None and changed:
        try:
            _write_parquet_atomic(index.df, index.errors, Path(cache), resolve_salt(salt))
        except OSError as exc:
            warnings.warn(
                f"index cache {cache} not written ({exc.strerror}); continuing without cache",
                stacklevel=2,
            )
    return index


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


def _index_of(rows: list[IndexRow], errors: list[tuple[str, str, str, int, int]]) -> DicomIndex:
    """Rows and error tuples as a :class:`DicomIndex`, both sorted by path (one typed frame)."""
    df = _frame_of(rows) if rows else _empty_frame()
    df = df.sort_values("path").reset_index(drop=True)
    err_df = pd.DataFrame(errors, columns=list(_ERROR_DTYPES))
    err_df = _typed_errors(err_df).sort_values("path").reset_index(drop=True)
    return DicomIndex(df, err_df)


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


# --------------------------------------------------------------------------- exploration
def _flatten(ds, show_phi: bool, salt: str | None) -> dict[str, Any]:
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x7FE0 or elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue  # pixel data, sequences and binary blobs do not fit a table cell
        key = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        value = elem.value
        masking = None if show_phi else IDENTIFYING_ELEMENTS.get(key)
        if masking == "withhold":
            continue
        if masking == "hash":
            out[key] = patient_hash(str(value), salt) if value not in (None, "") else ""
            continue
        if isinstance(value, MultiValue | list):
            items = list(value)
            if not items:
                out[key] = None
                continue
            # fastai's as_dict naming: first value under the keyword, the rest as keyword1, keyword2 …
            out[key] = _cell(items[0])
            for i, v in enumerate(items[1:], start=1):
                out[f"{key}{i}"] = _cell(v)
        elif isinstance(value, PersonName):
            out[key] = str(value)
        else:
            out[key] = _cell(value)
    return out


def _cell(v: Any) -> Any:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    try:
        if hasattr(v, "real") and float(v) == v:  # DSfloat / IS
            return float(v) if not isinstance(v, int) else int(v)
    except (TypeError, ValueError):
        pass
    return str(v)


def to_dataframe(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    px_summ: bool = False,
    show_phi: bool = False,
    salt: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Every header element of every file, one row per file (fastai ``DataFrame.from_dicoms``).

    Multi-valued elements are split into ``Keyword``, ``Keyword1``, ``Keyword2``
    … columns; sequences and binary elements are left out. Patient identifiers
    ((0010,0020) *Patient ID*, (0010,0010) *Patient's Name* …) are replaced by
    their keyed hash and birth dates, addresses and staff names are dropped,
    unless ``show_phi=True`` (the list: ``torchdicom._privacy.IDENTIFYING_ELEMENTS``).

    Args:
        files: files, or a directory.
        px_summ: add ``img_min``, ``img_max``, ``img_mean``, ``img_std`` of
            the stored values of the first frame (reads pixels).
        show_phi: keep identifying elements verbatim (never use for logs).
        salt: key of the identifier hashes (see :func:`torchdicom.io.patient_hash`).
        progress: show a progress bar.

    Returns:
        DataFrame with a ``fname`` column and one column per element.
    """
    from tqdm.auto import tqdm

    from torchdicom.io.frames import read_frames_numpy

    paths = _collect_paths(files)
    records = []
    for p in tqdm(paths, desc="reading headers", disable=not progress):
        ds = dcmread(p, stop_before_pixels=True)
        rec: dict[str, Any] = {"fname": p}
        rec.update(_flatten(ds, show_phi, salt))
        if px_summ:
            px = read_frames_numpy(p, 0).astype(np.float64)
            rec.update(img_min=px.min(), img_max=px.max(), img_mean=px.mean(), img_std=px.std())
        records.append(rec)
    return pd.DataFrame.from_records(records)
