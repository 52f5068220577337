"""GPU decoding (nvImageCodec) behind read_frames(device=...).

The CPU tests pin the routing only: which rows the GPU decodes, the clear error without
CUDA, and what happens to a frame the GPU decoder fails on (its decoder is replaced by a
stand-in for routing, never for values). The values are checked by the ``cuda`` tests,
which run where a CUDA device and nvImageCodec are present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

import torchdicom.io.frames as frames_module
from tests.conftest import real_file
from tests.dicom_factory import write_dicom
from torchdicom import scan
from torchdicom.errors import CorruptDicomError
from torchdicom.io.frames import gpu_decodable, read_frames
from torchdicom.samples import us_cine_like


@pytest.fixture(scope="module")
def cine_row(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sample = us_cine_like(tmp_path_factory.mktemp("cine"), n=1, frames=4, size=48, jpeg=True)
    return scan(sample.files, workers=0, progress=False).row(0)


def _row(path: Path, **kwargs) -> dict:
    write_dicom(path, **kwargs)
    return scan([path], workers=0, progress=False).row(0)


def test_which_rows_the_gpu_decodes(cine_row: dict, tmp_path: Path) -> None:
    assert gpu_decodable(cine_row)  # JPEG baseline YBR_FULL_422
    j2k = _row(tmp_path / "j2k.dcm", rows=32, columns=32, transfer_syntax=JPEG2000Lossless)
    assert gpu_decodable(j2k)
    signed = _row(
        tmp_path / "s.dcm", rows=32, columns=32, signed=True, transfer_syntax=JPEG2000Lossless
    )
    assert not gpu_decodable(signed)  # signed samples: the CPU routes
    for name, syntax in (("ls.dcm", JPEGLSLossless), ("rle.dcm", RLELossless)):
        assert not gpu_decodable(_row(tmp_path / name, transfer_syntax=syntax))
    assert not gpu_decodable(_row(tmp_path / "native.dcm"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(cine_row: dict) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        read_frames(cine_row, device="cuda")
    with pytest.raises(ValueError, match="decode_fallback"):
        read_frames(cine_row, device="cpu", decode_fallback="gpu")
    # device="cpu" is the CPU read.
    assert torch.equal(read_frames(cine_row, device="cpu"), read_frames(cine_row))


def test_a_frame_the_gpu_fails_on_falls_back_or_names_the_frame(
    cine_row: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = read_frames(cine_row, [1, 3])
    calls = []

    def stand_in(row, streams, as_rgb, device):  # routing only: frame 3 "fails"
        calls.append(len(streams))
        return [expected[0].permute(1, 2, 0), None]

    monkeypatch.setattr(frames_module, "_gpu_decode", stand_in)
    cpu = torch.device("cpu")
    got = frames_module._read_gpu(cine_row, [1, 3], True, cpu, fallback=True)
    assert calls == [2]  # one batch for both frames
    assert torch.equal(got, expected)
    with pytest.raises(CorruptDicomError, match="GPU decoder") as info:
        frames_module._read_gpu(cine_row, [1, 3], True, cpu, fallback=False)
    assert info.value.frame == 3 and str(cine_row["path"]) in str(info.value)


def test_the_code_stream_check_runs_before_the_gpu_decoder(
    cine_row: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    lying = {**cine_row, "rows": int(cine_row["rows"]) + 2}

    def never(*args):
        raise AssertionError("the GPU decoder saw a frame that disagrees with the header")

    monkeypatch.setattr(frames_module, "_gpu_decode", never)
    with pytest.raises(CorruptDicomError, match="Rows"):
        frames_module._read_gpu(lying, [0], True, torch.device("cpu"), fallback=True)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "name",
    ["RG1_J2KR.dcm", "US1_J2KR.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_jpeg_gdcm.dcm"],
)
def test_gpu_values_equal_the_cpu_routes_on_lossless_files(name: str) -> None:
    pytest.importorskip("nvidia.nvimgcodec")
    row = scan([real_file(name)], workers=0, progress=False).row(0)
    if not gpu_decodable(row):
        pytest.skip(f"{name} is not decoded on the GPU")
    got = read_frames(row, device="cuda", decode_fallback=None)
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), read_frames(row).numpy())


@pytest.mark.cuda
def test_gpu_jpeg_baseline_is_close_to_the_cpu_route(cine_row: dict) -> None:
    pytest.importorskip("nvidia.nvimgcodec")
    got = read_frames(cine_row, device="cuda", decode_fallback=None).cpu().int()
    expected = read_frames(cine_row).int()
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 9  # lossy: nvJPEG's IDCT and upsampling
