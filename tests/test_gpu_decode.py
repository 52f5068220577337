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
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless
from torch.utils.data import DataLoader

import torchdicom.io.frames as frames_module
from tests.conftest import real_file
from tests.dicom_factory import write_dicom
from torchdicom import DicomClipDataset, DicomDataModule, DicomDataset, scan
from torchdicom.data import collate
from torchdicom.errors import CorruptDicomError
from torchdicom.io.frames import gpu_decodable, read_frames
from torchdicom.keys import IMAGE, PENDING
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


# --------------------------------------------------------------------------- datasets
# DicomDataset / DicomClipDataset(decode_device=...): the workers leave the frames the GPU
# decodes undecoded ("pending"), decode_batch decodes them in the main process. The CPU
# tests pin which rows are pending and the batch plumbing; the GPU decoder is replaced by
# the CPU read for routing only (the values are the cuda tests').


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    """Three 32x32 uint16 files: JPEG 2000 (GPU), native and RLE (CPU), 2 frames each."""
    for name, syntax in (
        ("a_j2k.dcm", JPEG2000Lossless),
        ("b_native.dcm", ExplicitVRLittleEndian),
        ("c_rle.dcm", RLELossless),
    ):
        write_dicom(tmp_path / name, rows=32, columns=32, frames=2, transfer_syntax=syntax)
    return tmp_path


def _gpu_dataset(cls, source, monkeypatch: pytest.MonkeyPatch, calls: list, **kwargs):
    """A dataset built with decode_device="cuda" whose 'device' is the CPU and whose GPU
    decoder is the CPU read (routing and shapes only), recording what it is asked for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ds = cls(source, decode_device="cuda", **kwargs)
    monkeypatch.undo()
    ds._decode_target = torch.device("cpu")

    def stand_in(row, idx, as_rgb, device, fallback):
        calls.append((Path(row["path"]).name, list(idx), fallback))
        return read_frames(row, idx, as_rgb=as_rgb)

    monkeypatch.setattr(frames_module, "_read_gpu", stand_in)
    return ds


def test_dataset_routes_gpu_rows_to_decode_batch(
    mixed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list = []
    ds = _gpu_dataset(DicomDataset, mixed_dir, monkeypatch, calls)
    plain = DicomDataset(mixed_dir)
    assert len(ds) == 6
    pending = [ds[i][PENDING] for i in range(len(ds))]
    assert pending == [True, True, False, False, False, False]  # only the J2K file's frames
    item = ds[1]
    assert item[IMAGE].shape == (1, 32, 32) and item[IMAGE].dtype == ds.dtype
    assert item[IMAGE].stride() == (0, 0, 0)  # a placeholder: no pixels read or sent
    assert calls == []  # nothing decoded in the item path

    for workers in (0, 1):
        calls.clear()
        loader = DataLoader(ds, batch_size=6, num_workers=workers, collate_fn=collate)
        batch = next(iter(loader))
        assert batch[PENDING].tolist() == pending
        assert batch[IMAGE].shape == (6, 1, 32, 32)
        decoded = ds.decode_batch(batch)
        assert PENDING not in decoded
        # One call per pending file, all its batch frames; the CPU rows are not decoded again.
        assert calls == [("a_j2k.dcm", [0, 1], True)]
        expected = collate([plain[i] for i in range(6)])[IMAGE]
        assert decoded[IMAGE].dtype == plain.dtype
        assert torch.equal(decoded[IMAGE], expected)
    # The batch path (__getitems__ / predecode) leaves the pending rows alone too.
    calls.clear()
    batch = collate(ds.__getitems__([0, 2, 4, 1]))
    assert batch[PENDING].tolist() == [True, False, False, True]
    assert torch.equal(
        ds.decode_batch(batch)[IMAGE], collate(plain.__getitems__([0, 2, 4, 1]))[IMAGE]
    )


def test_clip_dataset_routes_gpu_clips(cine_row: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    path = Path(cine_row["path"])
    ds = _gpu_dataset(DicomClipDataset, [path], monkeypatch, calls, clip_len=2)
    plain = DicomClipDataset([path], clip_len=2)
    items = [ds[i] for i in range(len(ds))]
    assert [it[PENDING] for it in items] == [True, True]
    batch = collate(items)
    assert batch[IMAGE].shape == (2, 2, 3, 48, 48)
    decoded = ds.decode_batch(batch)
    assert calls == [(path.name, [0, 1, 2, 3], True)]
    assert torch.equal(decoded[IMAGE], collate([plain[0], plain[1]])[IMAGE])


def test_no_pending_rows_without_a_cuda_decode_device(mixed_dir: Path) -> None:
    ds = DicomDataset(mixed_dir, decode_device="cpu", decode_fallback=None)
    batch = collate([ds[i] for i in range(len(ds))])
    assert PENDING not in batch
    assert ds.decode_batch(batch) is batch
    assert torch.equal(batch[IMAGE], collate([DicomDataset(mixed_dir)[i] for i in range(6)])[IMAGE])


def test_decode_argument_errors(mixed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("gpu", "cuda:x", "mps", 0):
        with pytest.raises(ValueError, match="decode_device must be"):
            DicomDataset(mixed_dir, decode_device=bad)
    with pytest.raises(ValueError, match="decode_fallback must be"):
        DicomDataset(mixed_dir, decode_fallback="gpu")
    with pytest.raises(ValueError, match="decode_fallback must be"):
        DicomClipDataset(mixed_dir, clip_len=1, decode_fallback="cuda")
    with pytest.raises(ValueError, match="decode_device must be"):
        DicomDataModule(mixed_dir, decode_device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="size="):
        DicomDataset(mixed_dir, decode_device="cuda", size=16)
    with pytest.raises(ValueError, match="transform="):
        DicomClipDataset(mixed_dir, clip_len=1, decode_device="cuda:0", transform=lambda x: x)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_decode_device_without_cuda_is_a_clear_error(mixed_dir: Path) -> None:
    for make in (
        lambda: DicomDataset(mixed_dir, decode_device="cuda"),
        lambda: DicomClipDataset(mixed_dir, clip_len=1, decode_device="cuda:0"),
        lambda: DicomDataModule(mixed_dir, decode_device="cuda"),  # at construction
    ):
        with pytest.raises(ValueError, match=r"decode_device='cuda.*CUDA is not available"):
            make()


def test_datamodule_decodes_pending_rows_in_transfer(
    mixed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dm = DicomDataModule(
        mixed_dir,
        frames="all",
        decode_device="cuda",
        decode_fallback=None,
        index_cache=mixed_dir / "index.parquet",
        pin_memory=False,
        val_fraction=0.0,
        batch_size=6,
    )
    dm.prepare_data()
    dm.setup("predict")
    monkeypatch.undo()
    assert dm.dataset is not None and dm.dataset.decode_fallback is None
    calls: list = []
    dm.dataset._decode_target = torch.device("cpu")

    def stand_in(row, idx, as_rgb, device, fallback):
        calls.append(Path(row["path"]).name)
        return read_frames(row, idx, as_rgb=as_rgb)

    monkeypatch.setattr(frames_module, "_read_gpu", stand_in)
    batch = next(iter(dm.predict_dataloader()))
    assert batch[PENDING].sum() == 2
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert PENDING not in moved and calls == ["a_j2k.dcm"]
    plain = DicomDataset(mixed_dir)
    order = [int(i) for i in batch["index"]]
    assert torch.equal(moved[IMAGE], collate([plain[i] for i in order])[IMAGE])


@pytest.mark.cuda
def test_gpu_dataset_batches_equal_the_cpu_read(mixed_dir: Path) -> None:
    pytest.importorskip("nvidia.nvimgcodec")
    ds = DicomDataset(mixed_dir, decode_device="cuda", decode_fallback=None)
    plain = DicomDataset(mixed_dir)
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=6, num_workers=workers, collate_fn=collate)
        batch = ds.decode_batch(next(iter(loader)))
        assert batch[IMAGE].device.type == "cuda" and batch[IMAGE].dtype == plain.dtype
        expected = collate([plain[i] for i in range(6)])[IMAGE]
        assert torch.equal(batch[IMAGE].cpu(), expected)


@pytest.mark.cuda
def test_gpu_clip_batches_are_close_to_the_cpu_read(cine_row: dict) -> None:
    pytest.importorskip("nvidia.nvimgcodec")
    path = Path(cine_row["path"])
    ds = DicomClipDataset([path], clip_len=2, decode_device="cuda", decode_fallback=None)
    plain = DicomClipDataset([path], clip_len=2)
    batch = ds.decode_batch(collate([ds[0], ds[1]]))
    assert batch[IMAGE].device.type == "cuda"
    expected = collate([plain[0], plain[1]])[IMAGE]
    assert batch[IMAGE].shape == expected.shape
    assert (batch[IMAGE].cpu().int() - expected.int()).abs().max() <= 9  # lossy JPEG


def test_a_substitute_for_a_failed_item_is_read_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dicom(tmp_path / "a_bad.dcm", rows=32, columns=32)
    write_dicom(tmp_path / "b_j2k.dcm", rows=32, columns=32, transfer_syntax=JPEG2000Lossless)
    calls: list = []
    ds = _gpu_dataset(DicomDataset, tmp_path, monkeypatch, calls, on_error="skip")
    with open(tmp_path / "a_bad.dcm", "r+b") as f:
        f.truncate(200)  # the index no longer matches: the item fails in the worker
    batch = collate([ds[0], ds[1]])
    assert batch["substituted"].tolist() == [True, False]
    assert batch[PENDING].tolist() == [False, True]  # index 0 names the failed file
    decoded = ds.decode_batch(batch)
    assert calls == [("b_j2k.dcm", [0], True)]
    expected = read_frames(tmp_path / "b_j2k.dcm")[0]
    assert torch.equal(decoded[IMAGE][0], expected) and torch.equal(decoded[IMAGE][1], expected)
