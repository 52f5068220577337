"""scan / DicomIndex: columns, cache reuse and invalidation, errors, workers, no PHI."""

from __future__ import annotations

import os
import typing
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydicom.uid import RLELossless

import torchdicom._indextable as index_module
from tests.dicom_factory import (
    PHI_BIRTH_DATE,
    PHI_PATIENT_ID,
    PHI_PATIENT_NAME,
    write_ct_series,
    write_dicom,
)
from torchdicom import DicomIndex, read_frames, scan, to_dataframe
from torchdicom._privacy import patient_hash
from torchdicom.io.header import header_row
from torchdicom.io.schema import (
    INDEX_COLUMNS,
    INDEX_SCHEMA,
    KIND_DTYPES,
    KIND_FILLS,
    PER_FRAME_COLUMNS,
    FloatArray,
    IndexRow,
    IntArray,
)

PHI_STRINGS = (PHI_PATIENT_NAME, PHI_PATIENT_ID, PHI_BIRTH_DATE, "Leakmouth", "Zebedee")

INT_COLUMNS = {
    "size",
    "mtime_ns",
    "rows",
    "columns",
    "frames",
    "samples_per_pixel",
    "planar_configuration",
    "bits_allocated",
    "bits_stored",
    "high_bit",
    "pixel_representation",
    "pixel_offset",
    "pixel_length",
    "instance_number",
}
BOOL_COLUMNS = {"encapsulated", "has_extended_offsets", "has_modality_lut"}
STR_COLUMNS = {
    "path",
    "etag",
    "sop_instance_uid",
    "sop_class_uid",
    "series_instance_uid",
    "study_instance_uid",
    "patient_hash",
    "modality",
    "photometric",
    "transfer_syntax",
    "pixel_keyword",
    "pixel_vr",
}


@pytest.fixture
def series(tmp_path: Path) -> Path:
    """Six CT slices, PACS-named, plus two bad files."""
    root = tmp_path / "series"
    write_ct_series(root, 6)
    (root / "IM000099").write_bytes(b"")  # extensionless and empty: not found as DICOM
    (root / "broken.dcm").write_bytes(b"not a dicom file at all" * 10)
    (root / "empty.dcm").write_bytes(b"")
    return root


class _CountingParser:
    """Wraps ``header_row`` in torchdicom._indextable to count the headers parsed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.paths: list[str] = []
        self._real = index_module.header_row
        monkeypatch.setattr(index_module, "header_row", self)

    def __call__(self, path, *args, **kwargs):
        self.paths.append(os.fspath(path))
        return self._real(path, *args, **kwargs)


def _scan(source, **kwargs) -> DicomIndex:
    return scan(source, workers=kwargs.pop("workers", 0), progress=False, **kwargs)


# --------------------------------------------------------------------------- columns
def test_columns_present_and_typed(series: Path) -> None:
    index = _scan(series)
    df = index.df
    assert list(df.columns) == list(INDEX_COLUMNS)
    assert len(df) == 6
    for column in INDEX_COLUMNS:
        dtype = df[column].dtype
        if column in INT_COLUMNS:
            assert dtype == np.int64, (column, dtype)
        elif column in BOOL_COLUMNS:
            assert dtype == np.dtype(bool), (column, dtype)
        elif column in STR_COLUMNS:
            assert dtype == np.dtype(object) and all(isinstance(v, str) for v in df[column]), column
        elif column in PER_FRAME_COLUMNS:  # per-frame arrays: empty for classic files
            assert dtype == np.dtype(object), column
            assert all(v.dtype == np.float64 and v.shape == (0,) for v in df[column]), column
        elif column in ("frame_offsets", "frame_lengths"):  # code-stream spans: native here
            assert dtype == np.dtype(object), column
            assert all(v.dtype == np.int64 and v.shape == (0,) for v in df[column]), column
        else:
            assert dtype == np.float64, (column, dtype)
    first = index.row(0)
    assert first["modality"] == "CT"
    assert (first["rows"], first["columns"], first["frames"]) == (8, 8, 1)
    assert (first["bits_allocated"], first["bits_stored"], first["pixel_representation"]) == (
        16,
        12,
        1,
    )
    assert (first["rescale_slope"], first["rescale_intercept"]) == (1.0, -1024.0)
    assert (first["window_center"], first["window_width"]) == (40.0, 400.0)
    assert (first["spacing_row"], first["spacing_col"], first["slice_thickness"]) == (
        0.5,
        0.5,
        1.0,
    )
    assert df["position_z"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert df["instance_number"].tolist() == [1, 2, 3, 4, 5, 6]
    assert first["pixel_offset"] > 128 and first["pixel_length"] == 8 * 8 * 2
    assert first["patient_hash"] == patient_hash(PHI_PATIENT_ID)
    assert df["path"].is_monotonic_increasing
    assert repr(index) == "DicomIndex(6 files, 6 frames, 2 errors)"
    assert "CT (6)" in index.summary()


def test_header_rows_are_index_rows(series: Path) -> None:
    # IndexRow is the one source: INDEX_SCHEMA follows its annotations, header_row fills them.
    hints = typing.get_type_hints(IndexRow)
    assert tuple(hints) == INDEX_COLUMNS == tuple(INDEX_SCHEMA)
    assert set(INDEX_SCHEMA.values()) == set(KIND_DTYPES) == set(KIND_FILLS)
    row = header_row(_scan(series).row(0)["path"])
    assert list(row) == list(INDEX_COLUMNS)
    for name, hint in hints.items():
        expected = np.ndarray if hint in (FloatArray, IntArray) else hint
        assert isinstance(row[name], expected), (name, type(row[name]))


def test_absent_values_are_nan_or_minus_one(tmp_path: Path) -> None:
    path = tmp_path / "bare.dcm"
    write_dicom(path, modality="OT")
    row = _scan([path]).row(0)
    assert np.isnan(row["rescale_slope"]) and np.isnan(row["window_center"])
    assert np.isnan(row["position_x"]) and np.isnan(row["spacing_row"])
    assert row["frames"] == 1


def test_rows_read_the_same_as_paths(series: Path) -> None:
    index = _scan(series)
    for row in index.rows():
        np.testing.assert_array_equal(read_frames(row).numpy(), read_frames(row["path"]).numpy())


# --------------------------------------------------------------------------- errors table
def test_errors_table_while_the_scan_continues(series: Path) -> None:
    files = sorted(series.iterdir())  # a list: every file is tried, decoys included
    index = _scan(files)
    assert len(index) == 6
    errors = index.errors
    assert list(errors.columns[:3]) == ["path", "error_type", "reason"]
    by_name = {Path(p).name: (t, r) for p, t, r in errors[["path", "error_type", "reason"]].values}
    assert set(by_name) == {"IM000099", "broken.dcm", "empty.dcm"}
    assert by_name["empty.dcm"][0] == "NotDicomError"
    assert "empty" in by_name["empty.dcm"][1]
    assert by_name["broken.dcm"][0] == "NotDicomError"
    assert "not a DICOM file" in by_name["broken.dcm"][1]
    for path, (_, reason) in zip(errors["path"], by_name.values()):
        assert str(path) in reason or reason.startswith(str(path))
    assert "NotDicomError" in index.summary()


# --------------------------------------------------------------------------- cache
def test_cache_reuse_parses_nothing(series: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache" / "index.parquet"
    files = sorted(series.iterdir())
    first = _scan(files, cache=cache)
    assert cache.exists()
    counter = _CountingParser(monkeypatch)
    mtime = cache.stat().st_mtime_ns
    second = _scan(files, cache=cache)
    assert counter.paths == []  # rows and failures both come from the cache
    pd.testing.assert_frame_equal(second.df, first.df)
    assert sorted(second.errors["path"]) == sorted(first.errors["path"])
    assert cache.stat().st_mtime_ns == mtime  # nothing changed: not rewritten


def test_cache_invalidation(series: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "index.parquet"
    _scan(series, cache=cache)
    counter = _CountingParser(monkeypatch)

    touched = series / "IM000002"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    _scan(series, cache=cache)
    assert counter.paths == [str(touched)]

    counter.paths.clear()
    rewritten = series / "IM000003"
    write_dicom(rewritten, rows=16, columns=16)
    index = _scan(series, cache=cache)
    assert counter.paths == [str(rewritten)]
    assert index.df.set_index("path").loc[str(rewritten), "rows"] == 16

    counter.paths.clear()
    deleted = series / "IM000004"
    deleted.unlink()
    index = _scan(series, cache=cache)
    assert counter.paths == []
    assert str(deleted) not in set(index.df["path"])
    assert len(index) == 5
    assert str(deleted) not in set(DicomIndex.read_parquet(cache).df["path"])


def test_cache_write_is_atomic_and_leaves_no_temp_files(series: Path, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    cache = folder / "index.parquet"
    _scan(series, cache=cache)
    write_dicom(series / "IM000010")
    _scan(series, cache=cache)
    assert sorted(p.name for p in folder.iterdir()) == ["index.parquet"]


def test_garbage_cache_warns_and_rebuilds(series: Path, tmp_path: Path) -> None:
    cache = tmp_path / "index.parquet"
    cache.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.warns(UserWarning, match="index cache ignored and rebuilt"):
        index = _scan(series, cache=cache)
    assert len(index) == 6
    assert len(DicomIndex.read_parquet(cache)) == 6


def test_cache_of_an_older_schema_is_rebuilt(series: Path, tmp_path: Path) -> None:
    # Version 2 caches hold salted-SHA-256 patient hashes; version 3 hashes are HMACs.
    cache = tmp_path / "index.parquet"
    _scan(series, cache=cache)
    table = pq.read_table(cache)
    old = table.to_pandas()
    old["patient_hash"] = old["patient_hash"].map(lambda h: "0" * 16 if h else h)
    meta = {**table.schema.metadata, b"torchdicom": b'{"schema_version": 2}'}
    pq.write_table(pa.Table.from_pandas(old).replace_schema_metadata(meta), cache)
    with pytest.warns(UserWarning, match="index cache ignored and rebuilt.*version 2"):
        index = _scan(series, cache=cache)
    assert "0" * 16 not in set(index.df["patient_hash"])
    assert set(DicomIndex.read_parquet(cache).df["patient_hash"]) == set(index.df["patient_hash"])


def test_foreign_parquet_is_not_an_index(tmp_path: Path, series: Path) -> None:
    cache = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(cache)
    with pytest.warns(UserWarning, match="not a torchdicom index"):
        index = _scan(series, cache=cache)
    assert len(index) == 6


def test_parquet_round_trip(series: Path, tmp_path: Path) -> None:
    index = _scan(sorted(series.iterdir()))
    index.to_parquet(tmp_path / "i.parquet")
    back = DicomIndex.read_parquet(tmp_path / "i.parquet")
    pd.testing.assert_frame_equal(back.df, index.df)
    assert back.errors[["path", "error_type", "reason"]].equals(
        index.errors[["path", "error_type", "reason"]]
    )


def test_frame_spans_survive_the_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rle.dcm"
    write_dicom(path, frames=3, transfer_syntax=RLELossless)
    index = _scan([path])
    spans = index.row(0)["frame_offsets"], index.row(0)["frame_lengths"]
    assert [len(s) for s in spans] == [3, 3] and all(s.dtype == np.int64 for s in spans)
    index.to_parquet(tmp_path / "i.parquet")
    back = DicomIndex.read_parquet(tmp_path / "i.parquet")
    pd.testing.assert_frame_equal(back.df, index.df)
    for column in ("frame_offsets", "frame_lengths"):
        assert back.row(0)[column].dtype == np.int64
        np.testing.assert_array_equal(back.row(0)[column], index.row(0)[column])
    np.testing.assert_array_equal(read_frames(back.row(0)).numpy(), read_frames(path).numpy())


# --------------------------------------------------------------------------- workers
def test_process_pool_gives_the_same_index(tmp_path: Path) -> None:
    root = tmp_path / "many"
    write_ct_series(root, 70, rows=4, columns=4)
    (root / "bad.dcm").write_bytes(b"garbage" * 40)
    serial = _scan(root, workers=0)
    pooled = _scan(root, workers=2)  # 71 files >= the pool threshold of 64
    assert len(pooled) == 70 and len(pooled.errors) == 1
    pd.testing.assert_frame_equal(pooled.df, serial.df)
    assert pooled.errors["error_type"].tolist() == ["NotDicomError"]


# --------------------------------------------------------------------------- no PHI
def test_no_patient_identifier_in_the_cache(series: Path, tmp_path: Path) -> None:
    cache = tmp_path / "index.parquet"
    _scan(sorted(series.iterdir()), cache=cache)
    raw = cache.read_bytes()
    table = pq.read_table(cache)
    cells = " ".join(str(v) for column in table.columns for v in column.to_pylist())
    schema = str(table.schema) + str(table.schema.metadata)
    for secret in PHI_STRINGS:
        assert secret.encode() not in raw, secret
        assert secret not in cells and secret not in schema, secret


def test_to_dataframe_hides_phi_by_default(series: Path) -> None:
    df = to_dataframe(sorted(series.glob("IM*"))[:2])
    text = df.to_csv()
    for secret in PHI_STRINGS:
        assert secret not in text, secret
    assert "PatientBirthDate" not in df.columns
    assert df.loc[0, "PatientID"] == patient_hash(PHI_PATIENT_ID)
    assert df.loc[0, "PatientName"] == patient_hash(PHI_PATIENT_NAME)
    shown = to_dataframe(sorted(series.glob("IM*"))[:1], show_phi=True)
    assert shown.loc[0, "PatientName"] == PHI_PATIENT_NAME
    assert shown.loc[0, "PatientBirthDate"] == PHI_BIRTH_DATE


def test_to_dataframe_multi_value_columns(series: Path) -> None:
    df = to_dataframe(series / "IM000003", px_summ=True)
    assert len(df) == 1
    row = df.iloc[0]
    assert [row["ImagePositionPatient"], row["ImagePositionPatient1"]] == [0.0, 0.0]
    assert row["ImagePositionPatient2"] == 2.0
    assert [
        row[f"ImageOrientationPatient{i}" if i else "ImageOrientationPatient"] for i in range(6)
    ] == [
        1.0,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
    ]
    assert "ImageOrientationPatient6" not in df.columns
    assert (row["PixelSpacing"], row["PixelSpacing1"]) == (0.5, 0.5)
    assert {"img_min", "img_max", "img_mean", "img_std", "fname"} <= set(df.columns)
    pixels = read_frames(series / "IM000003").numpy()
    assert row["img_max"] == pixels.max() and row["img_min"] == pixels.min()


def test_scan_missing_source(tmp_path: Path) -> None:
    from torchdicom.errors import DicomFileNotFoundError

    with pytest.raises(DicomFileNotFoundError, match="no such file"):
        _scan(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="Got: int"):
        _scan(3)


def test_unwritable_cache_warns_and_continues(series: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            index = _scan(series, cache=blocker / "index.parquet")
        except OSError:
            pytest.fail("an unwritable cache location must not abort the scan")
    assert len(index) == 6
    assert any("not written" in str(w.message) for w in caught)
