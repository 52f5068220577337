"""scan(executor="dask" | Client): the partitioned index equals scan(), row for row.

The collection mixes the generated sample sets (CT series, chest radiographs, an
ultrasound cine), factory files in several transfer syntaxes, every real file of pydicom's
test set and pydicom-data (linked, the damaged ones included) and a few broken files, in
nested folders. Runs on the synchronous scheduler, a 2-process LocalCluster (real worker
processes: the salt and the retries cross a process boundary) and, for memory:// URLs
(one process's store), the synchronous scheduler too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dask
import fsspec
import pandas as pd
import pytest
from distributed import Client, LocalCluster, WorkerPlugin
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

from tests.conftest import REPO, real_file, real_files
from tests.dicom_factory import write_ct_series, write_dicom
from torchdicom import DicomIndex, scan
from torchdicom._dask_scan import MANIFEST, list_partitions
from torchdicom.errors import TorchDicomError
from torchdicom.samples import ct_like, siim_like, us_cine_like


def _same(a: DicomIndex, b: DicomIndex) -> None:
    pd.testing.assert_frame_equal(a.df, b.df)
    pd.testing.assert_frame_equal(a.errors, b.errors)


def _broken_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ct = real_file("CT_small.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(ct[:400])  # cut inside the header
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "garbage.dcm").write_bytes(bytes(range(256)) * 4)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested folders, 3 levels and more: generated, factory, real and broken files."""
    root = tmp_path_factory.mktemp("collection")
    ct_like(root / "generated" / "ct", n_series=4, slices=3, size=32)
    siim_like(root / "generated" / "siim", n=4, size=32)
    us_cine_like(root / "generated" / "us", n=1, frames=3, size=32)
    for k, syntax in enumerate((ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless)):
        write_dicom(root / "factory" / f"syntax{k}" / f"f{k}.dcm", transfer_syntax=syntax, seed=k)
    write_ct_series(root / "factory" / "pacs", 5)
    _broken_files(root / "broken")
    for k, path in enumerate(real_files()):
        # Linked, not copied (60 MB); a folder per source folder keeps the names unique.
        target = root / "real" / f"{path.parent.name}-{k // 50}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path)
    write_dicom(root / "top_level.dcm")  # a file directly in the root: the root's own partition
    return root


@pytest.fixture(scope="module")
def local(collection: Path) -> DicomIndex:
    index = scan(collection, workers=0, progress=False)
    assert len(index) > 150 and len(index.errors) >= 3
    return index


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each (what scan(executor='dask') starts itself)."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cl,
        Client(cl) as client,
    ):
        yield client


# --------------------------------------------------------------------------- equality
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_synchronous_scheduler_equals_scan_at_every_depth(collection, local, tmp_path, depth):
    with dask.config.set(scheduler="synchronous"):
        far = scan(
            collection,
            executor="dask",
            cache=tmp_path / "idx",
            partition_depth=depth,
            progress=False,
        )
    _same(far, local)
    assert len(json.loads((tmp_path / "idx" / MANIFEST).read_text())["partitions"]) == len(
        list_partitions(collection, depth)
    )


def test_list_source_in_slices_equals_scan(collection, local, tmp_path):
    files = list(local.df["path"]) + list(local.errors["path"])
    with dask.config.set(scheduler="synchronous"):
        far = scan(files[::-1], executor="dask", partition_files=37, progress=False)
    _same(far, local)


def test_process_cluster_equals_scan(collection, local, cluster, tmp_path):
    far = scan(collection, executor=cluster, cache=tmp_path / "idx", progress=False)
    _same(far, local)
    _same(DicomIndex.read(tmp_path / "idx"), local)
    # "dask" finds the running client: the same parts, all valid, left as they were.
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx").glob("part-*")}
    again = scan(collection, executor="dask", cache=tmp_path / "idx", progress=False)
    _same(again, local)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx").glob("part-*")} == stamps


def test_partitionings_give_one_index_and_drop_stale_parts(collection, local, tmp_path):
    out = tmp_path / "idx"
    with dask.config.set(scheduler="synchronous"):
        deep = scan(collection, executor="dask", cache=out, partition_depth=3, progress=False)
        shallow = scan(collection, executor="dask", cache=out, partition_depth=0, progress=False)
    _same(deep, shallow)
    _same(shallow, local)
    # One partition now: the parts of the deeper partitioning are gone.
    assert len(list(out.glob("part-*.parquet"))) == 1


def test_read_has_the_dtypes_of_a_local_scan(collection, local, tmp_path):
    local.to_parquet(tmp_path / "one.parquet")
    _same(DicomIndex.read(tmp_path / "one.parquet"), local)
    _same(DicomIndex.read_parquet(tmp_path / "one.parquet"), local)
    with dask.config.set(scheduler="synchronous"):
        scan(collection, executor="dask", cache=tmp_path / "idx", progress=False)
    back = DicomIndex.read(tmp_path / "idx")
    assert dict(back.df.dtypes) == dict(local.df.dtypes)
    _same(back, local)


def test_read_of_an_unfinished_index_says_so(tmp_path):
    (tmp_path / "idx").mkdir()
    with pytest.raises(TorchDicomError, match="did not finish"):
        DicomIndex.read(tmp_path / "idx")


# --------------------------------------------------------------------------- re-runs
def _copy_set(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for name in ("a", "b", "c"):
        write_ct_series(root / name / "series", 3)
    return root


def test_rerun_skips_valid_partitions_and_rescans_a_changed_one(tmp_path):
    root = _copy_set(tmp_path)
    out = tmp_path / "idx"
    with dask.config.set(scheduler="synchronous"):
        first = scan(root, executor="dask", cache=out, progress=False)
        stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
        again = scan(root, executor="dask", cache=out, progress=False)
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == stamps
        _same(again, first)

        # One file of folder b rewritten (another instance number): b's part alone is rewritten.
        changed = next((root / "b").rglob("IM*"))
        write_dicom(changed, extra={"InstanceNumber": 99})
        third = scan(root, executor="dask", cache=out, progress=False)
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    rewritten = {name for name in now if now[name] != stamps[name]}
    b_part = next(p for p in list_partitions(root) if p.location.endswith(os.sep + "b"))
    assert rewritten == {b_part.part_name}
    _same(third, scan(root, workers=0, progress=False))
    assert third.df.set_index("path").loc[str(changed), "instance_number"] == 99


def test_a_new_file_and_a_new_folder_are_picked_up(tmp_path):
    root = _copy_set(tmp_path)
    out = tmp_path / "idx"
    with dask.config.set(scheduler="synchronous"):
        scan(root, executor="dask", cache=out, progress=False)
        write_ct_series(root / "a" / "series2", 2)
        write_ct_series(root / "d", 2)
        shutil.rmtree(root / "c")
        after = scan(root, executor="dask", cache=out, progress=False)
    _same(after, scan(root, workers=0, progress=False))


# --------------------------------------------------------------------------- salt
def _set_salt(value: str | None) -> None:
    if value is None:
        os.environ.pop("TORCHDICOM_SALT", None)
    else:
        os.environ["TORCHDICOM_SALT"] = value


def test_salt_reaches_worker_processes(cluster, tmp_path, monkeypatch):
    root = tmp_path / "ct"
    ct_like(root, n_series=4, slices=2, size=16)
    # The workers' environment says otherwise: the client's salt must win.
    cluster.run(_set_salt, "a-worker-salt")
    try:
        monkeypatch.setenv("TORCHDICOM_SALT", "the-site-salt")
        here = scan(root, workers=0, progress=False)
        far = scan(root, executor=cluster, cache=tmp_path / "idx", progress=False)
        _same(far, here)
        explicit = scan(root, executor=cluster, salt="another", progress=False)
        _same(explicit, scan(root, workers=0, salt="another", progress=False))
        assert set(explicit.df["patient_hash"]).isdisjoint(here.df["patient_hash"])
        # A cache folder made with another salt is rescanned, not mixed.
        monkeypatch.setenv("TORCHDICOM_SALT", "a-new-site-salt")
        rescanned = scan(root, executor=cluster, cache=tmp_path / "idx", progress=False)
        _same(rescanned, scan(root, workers=0, progress=False))
    finally:
        cluster.run(_set_salt, None)


# --------------------------------------------------------------------------- failures
class KillOnce(WorkerPlugin):
    """Kills its worker process (SIGKILL) at the second header of a partition, once: the
    marker file says it happened."""

    def __init__(self, marker: str):
        self.marker = marker

    def setup(self, worker) -> None:
        from torchdicom import _indextable

        original = _indextable._scan_one
        calls = [0]
        marker = self.marker

        def scan_one(path: str, salt: str | None = None):
            calls[0] += 1
            if calls[0] == 2 and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, salt)

        _indextable._scan_one = scan_one


def test_a_killed_worker_partition_is_retried(tmp_path):
    root = _copy_set(tmp_path)
    _broken_files(root / "a" / "broken")
    marker = tmp_path / "killed"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cl,
        Client(cl) as client,
    ):
        client.register_plugin(KillOnce(str(marker)))
        far = scan(root, executor=client, cache=tmp_path / "idx", retries=1, progress=False)
    assert marker.exists()  # a worker did die mid-partition
    _same(far, scan(root, workers=0, progress=False))
    assert len(far.errors) == 3


class KillAlways(WorkerPlugin):
    """Kills its worker process at the first header it parses, every time."""

    def setup(self, worker) -> None:
        from torchdicom import _indextable

        def scan_one(path: str, salt: str | None = None):
            os.kill(os.getpid(), signal.SIGKILL)

        _indextable._scan_one = scan_one


def test_a_partition_that_kills_every_worker_names_itself(tmp_path):
    root = _copy_set(tmp_path)
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cl,
        Client(cl) as client,
    ):
        client.register_plugin(KillAlways())
        with pytest.raises(TorchDicomError, match=r"partition \w+ \((tree|flat) .*KilledWorker"):
            scan(root, executor=client, cache=tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx" / MANIFEST).exists()  # no index claims to be complete


def test_the_client_lists_folders_not_files(collection):
    parts = list_partitions(collection, 2)
    assert {p.kind for p in parts} == {"flat", "tree"}
    assert all(p.files == () for p in parts)
    assert len(parts) < 40


def test_bad_files_land_in_errors(tmp_path):
    root = tmp_path / "set"
    write_ct_series(root / "good", 2)
    _broken_files(root / "bad")
    with dask.config.set(scheduler="synchronous"):
        far = scan(root, executor="dask", progress=False)
    assert len(far) == 2
    assert sorted(Path(p).name for p in far.errors["path"]) == [
        "empty.dcm",
        "garbage.dcm",
        "truncated.dcm",
    ]
    assert all(far.errors["error_type"] != "") and all(far.errors["reason"] != "")


def test_a_part_that_cannot_be_written_names_its_partition(tmp_path):
    if os.geteuid() == 0:
        out = tmp_path / "not-a-folder"
        out.write_text("x")
        with (
            dask.config.set(scheduler="synchronous"),
            pytest.raises(TorchDicomError, match="must be a folder"),
        ):
            scan(_copy_set(tmp_path), executor="dask", cache=out, progress=False)
        return
    root = _copy_set(tmp_path)
    out = tmp_path / "idx"
    out.mkdir()
    out.chmod(0o500)
    with (
        dask.config.set(scheduler="synchronous"),
        pytest.raises(TorchDicomError, match=r"partition .* not written"),
    ):
        scan(root, executor="dask", cache=out, progress=False)


def test_arguments_are_checked(tmp_path, cluster):
    with pytest.raises(ValueError, match="executor must be"):
        scan(tmp_path, executor="spark", progress=False)
    with pytest.raises(ValueError, match="workers="):
        scan(tmp_path, executor=cluster, workers=2, progress=False)
    with pytest.raises(ValueError, match="partition_depth"):
        scan(tmp_path, executor=cluster, partition_depth=-1, progress=False)


# --------------------------------------------------------------------------- remote
def test_memory_url_partitions_equal_scan(tmp_path):
    fs = fsspec.filesystem("memory")
    files = [real_file("CT_small.dcm"), real_file("MR_small.dcm"), real_file("rtplan.dcm")]
    try:
        for k, f in enumerate(files):
            fs.pipe(f"memory://td-dask/set/s{k % 2}/deep/{k}_{f.name}", f.read_bytes())
        fs.pipe("memory://td-dask/set/top.dcm", files[0].read_bytes())
        fs.pipe("memory://td-dask/set/s0/notes.txt", b"not dicom")
        here = scan("memory://td-dask/set", progress=False)
        assert len(here) + len(here.errors) == 4
        with dask.config.set(scheduler="synchronous"):
            for depth in (0, 1, 2):
                far = scan(
                    "memory://td-dask/set",
                    executor="dask",
                    partition_depth=depth,
                    cache=tmp_path / f"idx{depth}",
                    progress=False,
                )
                _same(far, here)
    finally:
        fs.rm("/td-dask", recursive=True)


# --------------------------------------------------------------------------- import cost
def test_import_torchdicom_does_not_load_dask():
    probe = "import sys, torchdicom; print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
