"""Shared fixtures: where the real DICOM files nobody here wrote live."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # tests never open windows

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_ddp_script(script: str, *args: str | Path, timeout: float) -> None:
    """Run ``tests/<script>`` (a two-rank DDP check: Lightning starts the second rank by
    re-running it) in a fresh interpreter that imports this checkout; fail with the tail of
    its output unless it exits 0."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / script), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """Default index caches (DicomDataModule without index_cache=) go to a temporary
    folder, not the user's ~/.cache, so tests leave nothing behind."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _pydicom_test_dir() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_data_dir() -> Path:
    # pydicom-data (import name data_store) ships the larger files; never call
    # pydicom.data.get_testdata_files("*"): it tries to download the rest.
    import data_store

    return Path(data_store.__file__).parent / "data"


PYDICOM_TEST_DIR = _pydicom_test_dir()
PYDICOM_DATA_DIR = _pydicom_data_dir()


def real_files() -> list[Path]:
    """Every file of pydicom's own test set and of pydicom-data, sorted."""
    out = []
    for root in (PYDICOM_DATA_DIR, PYDICOM_TEST_DIR):
        for dirpath, _dirs, files in os.walk(root):
            out.extend(Path(dirpath) / f for f in files)
    return sorted(out)


def real_file(name: str) -> Path:
    """One named real file from pydicom-data or pydicom's test files."""
    for root in (PYDICOM_DATA_DIR, PYDICOM_TEST_DIR):
        p = root / name
        if p.exists():
            return p
    raise FileNotFoundError(name)


@pytest.fixture
def ct_small() -> Path:
    return real_file("CT_small.dcm")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
