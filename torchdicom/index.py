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

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from torchdicom._indextable import (
    _ERROR_COLUMNS,
    _ERROR_DTYPES,
    _empty_frame,
    _frame_of,
    _read_parquet,
    _scan_paths,
    _typed_errors,
    _write_parquet_atomic,
)
from torchdicom._privacy import (
    IDENTIFYING_ELEMENTS,
    patient_hash,
    resolve_salt,
    salt_fingerprint,
)
from torchdicom.errors import DicomFileNotFoundError, TorchDicomError
from torchdicom.io.dicomfile import dcmread
from torchdicom.io.files import get_dicom_files
from torchdicom.io.schema import IndexRow

__all__ = ["DicomIndex", "scan", "to_dataframe"]


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

            return cls(*read_partitioned(p))
        return cls.read_parquet(p)


def _counts(series: pd.Series) -> str:
    vc = series.value_counts()
    return ", ".join(f"{k} ({v})" for k, v in vc.items())


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

        return DicomIndex(
            *dask_scan(
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


def _index_of(rows: list[IndexRow], errors: list[tuple[str, str, str, int, int]]) -> DicomIndex:
    """Rows and error tuples as a :class:`DicomIndex`, both sorted by path (one typed frame)."""
    df = _frame_of(rows) if rows else _empty_frame()
    df = df.sort_values("path").reset_index(drop=True)
    err_df = pd.DataFrame(errors, columns=list(_ERROR_DTYPES))
    err_df = _typed_errors(err_df).sort_values("path").reset_index(drop=True)
    return DicomIndex(df, err_df)


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
