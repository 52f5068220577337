"""The demo end to end (tiny sample sets) and the command line, by their output."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from torchdicom.cli import main
from torchdicom.demo import run_demo
from torchdicom.samples import demo_data

_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    return demo_data(tmp_path_factory.mktemp("samples"), small=True)


def test_demo_small_end_to_end(samples, tmp_path, capsys):
    report = run_demo(
        small=True, samples_root=samples.root, epochs=1, num_workers=0, out=tmp_path / "out"
    )
    names = {p.name for p in report.figures}
    assert names == {"ct_windows.png", "ct_histogram.png", "us_frames.png"}
    for p in report.figures:
        assert p.parent == tmp_path / "out" and p.read_bytes()[:8] == _PNG
    assert "val_acc" in report.val_metrics and 0.0 <= report.val_metrics["val_acc"] <= 1.0
    assert report.train_items + report.val_items == len(samples.siim.files)
    assert report.val_items > 0 and math.isfinite(report.images_per_s)
    out = capsys.readouterr().out
    assert "sample data reused" in out  # the fixture generated them
    assert "images/s" in out and "validation:" in out


def test_cli_scan_prints_counts_per_modality(samples, tmp_path, capsys):
    index_file = tmp_path / "index.parquet"
    assert main(["scan", str(samples.ct.root), "--quiet", "--out", str(index_file)]) == 0
    out = capsys.readouterr().out
    n = len(samples.ct.files)
    # Images (CT) and their lesion masks (Secondary Capture, OT) live in one tree.
    assert f"{2 * n} DICOM files" in out
    assert f"CT ({n})" in out and f"OT ({n})" in out
    assert index_file.exists() and "index written" in out


def test_cli_info_masks_phi_unless_asked(samples, capsys):
    import pydicom

    path = samples.ct.files[0]
    header = pydicom.dcmread(path, stop_before_pixels=True)
    name, patient_id = str(header.PatientName), str(header.PatientID)
    assert main(["info", str(path)]) == 0
    # ct_like names folders by PatientID, so the "file:" line shows it: that is
    # the path the user typed, not a header value.
    masked = "\n".join(capsys.readouterr().out.splitlines()[1:])
    assert name not in masked and patient_id not in masked
    assert str(header.PatientBirthDate) not in masked
    assert "PatientName" in masked and "<masked" in masked
    assert "Rows" in masked and "RescaleIntercept" in masked and "stored min" in masked
    assert main(["info", str(path), "--show-phi"]) == 0
    shown = capsys.readouterr().out
    assert name in shown and patient_id in shown


def test_cli_show_writes_png(samples, tmp_path, capsys):
    out = tmp_path / "slice.png"
    assert main(["show", str(samples.ct.files[0]), "-o", str(out), "--window", "lungs"]) == 0
    assert out.read_bytes()[:8] == _PNG
    assert str(out) in capsys.readouterr().out
    cine = tmp_path / "cine.png"
    assert main(["show", str(samples.us.files[0]), "--frame", "2", "-o", str(cine)]) == 0
    assert cine.read_bytes()[:8] == _PNG


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{missing}"],
        ["show", "{missing}", "-o", "{tmp}/x.png"],
        ["info", "{ct}", "--frame", "5"],  # a one-frame file has no frame 5
    ],
)
def test_cli_errors_exit_1_with_one_line(samples, tmp_path, capsys, argv):
    subs = {
        "missing": str(tmp_path / "nope.dcm"),
        "tmp": str(tmp_path),
        "ct": str(samples.ct.files[0]),
    }
    assert main([a.format(**subs) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("torchdicom: error: ")
    assert Path(subs["missing"]).name in err[0] or subs["ct"] in err[0]


def test_cli_info_pixel_statistics_match_scaled_px(samples, capsys):
    # info computes them with numpy (it does not load torch); they must equal the tensors'.
    from torchdicom import read_frames, scaled_px

    path = samples.us.files[0]
    assert main(["info", str(path), "--frame", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    stored = read_frames(path, 1).double()
    values = scaled_px(path, 1).double()
    expected = (
        f"pixels (frame 1 of {read_frames(path).shape[0]}): stored min {stored.min().item():g}"
        f" max {stored.max().item():g} mean {stored.mean().item():.2f};"
        f" scaled min {values.min().item():g} max {values.max().item():g}"
        f" mean {values.mean().item():.2f} std {values.std().item():.2f}"
    )
    assert line == expected
