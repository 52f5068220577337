"""First contact: what ``import torchdicom`` and the header-only commands load, and how they end.

No timings here (they belong to ``benchmarks/startup.py``): each check runs a fresh interpreter
and asserts which modules it imported.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import torchdicom
from torchdicom import cli

ROOT = Path(__file__).resolve().parent.parent
# Top-level packages that only the features using them may load.
HEAVY = (
    "torch",
    "pytorch_lightning",
    "lightning",
    "matplotlib",
    "kornia",
    "albumentations",
    "numba",
)


def _loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the HEAVY packages it left in ``sys.modules``."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli_probe(argv: list[str]) -> str:
    """Code that runs the command line in-process (output discarded) and keeps going."""
    return (
        "import contextlib, io\nfrom torchdicom.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        rc = main({argv!r})\n    except SystemExit as exc:\n        rc = exc.code\n"
        "assert rc == 0, rc"
    )


def test_import_loads_nothing_heavy():
    assert _loaded_after("import torchdicom") == []


def test_names_load_only_what_they_need():
    assert _loaded_after("from torchdicom import dcmread, scan, get_dicom_files") == []
    # Datasets and windowing need torch, but not Lightning, matplotlib, kornia or numba.
    assert _loaded_after("from torchdicom import DicomDataset, windowed, transforms") == ["torch"]
    assert "pytorch_lightning" in _loaded_after("from torchdicom import DicomDataModule")


def test_public_api_complete():
    for name in torchdicom.__all__:
        assert getattr(torchdicom, name) is not None, name
    assert set(torchdicom.__all__) <= set(dir(torchdicom))
    from torchdicom import DicomDataModule, TorchDicomError, errors, windowed  # noqa: F401

    assert TorchDicomError is errors.TorchDicomError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        torchdicom.nope  # noqa: B018
    with pytest.raises(ImportError):
        from torchdicom import nope  # noqa: F401


def test_io_header_without_torch():
    assert _loaded_after("import torchdicom.io.header, torchdicom.io.files") == []


def test_header_only_commands_do_not_import_torch(ct_small, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(ct_small, folder / "IM1")
    for argv in (
        ["info", str(ct_small)],
        ["scan", str(folder), "--quiet", "--workers", "0"],
        ["--help"],
        ["scan", "--help"],
        ["info", "--help"],
    ):
        assert _loaded_after(_cli_probe(argv)) == [], argv


def test_info_into_a_closed_pipe_exits_quietly(ct_small):
    # The reader is gone before anything is written: the first write fails (EPIPE).
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchdicom", "info", str(ct_small)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == ""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("head") is None, reason="no bash")
def test_info_piped_to_head(ct_small):
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'set -o pipefail; "{sys.executable}" -m torchdicom info "{ct_small}" | head -1',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.startswith("file: ")
    assert "BrokenPipeError" not in out.stderr and "Exception ignored" not in out.stderr


def test_package_never_imports_benchmarks():
    for path in (ROOT / "torchdicom").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "benchmarks" for n in names), path


def test_bench_runs_the_checkouts_benchmarks(capfd):
    # An unknown section makes `python -m benchmarks` stop at its argument check (exit 2):
    # enough to see that the command ran there, without running a benchmark.
    assert cli.main(["bench", "--quick", "--only", "no-such-section"]) == 2
    err = capfd.readouterr().err
    assert "python -m benchmarks --quick --only no-such-section" in err
    assert "invalid choice" in err
    assert "benchmarks" not in sys.modules


def test_bench_outside_a_checkout_says_how(monkeypatch):
    monkeypatch.setattr(cli, "_checkout", lambda: None)
    with pytest.raises(SystemExit, match="python -m benchmarks --quick"):
        cli.main(["bench", "--quick"])


def test_other_commands_reject_extra_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", "x.dcm", "--nope"])
    assert exc.value.code == 2 and "unrecognized arguments: --nope" in capsys.readouterr().err
