"""read_frames == pydicom's pixel_array, on every real file and every synthetic layout.

pydicom is the reference: a file pydicom decodes and torchdicom does not is a
failure (never a skip). Files pydicom cannot decode must make torchdicom
raise a :class:`TorchDicomError` (or be read: doing better is allowed).
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

import torchdicom.io.frames as frames_module
from tests.conftest import real_file, real_files
from tests.dicom_factory import pixel_array_fchw, write_dicom
from torchdicom import scaled_px, scan
from torchdicom.errors import MissingPixelDataError, TorchDicomError
from torchdicom.io import imagecodecs_plugin
from torchdicom.io.frames import ROUTES, decoding_plugin, native_layout, read_frames, route_for

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
REAL = real_files()


# Decoding every frame of the few big compressed multi-frame files (a 120-frame
# 640x480 JPEG cine) costs seconds in pydicom and again in torchdicom; above
# this many decoded bytes a multi-frame file is compared on a seeded frame
# subset plus its first and last frames, with pydicom decoding those frames.
_ALL_FRAMES_BUDGET = 32 * 2**20


def _dataset(path: Path) -> tuple[pydicom.Dataset | None, str]:
    """The data set if it has pixel data, else None with the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            return None, f"unreadable: {exc!r}"
    if not any(k in ds for k in PIXEL_KEYWORDS):
        return None, "no pixel data"
    return ds, ""


def _int(ds: pydicom.Dataset, keyword: str) -> int:
    """An integer element, 0 when absent or malformed (badVR.dcm has IS '1A')."""
    try:
        return int(ds.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


def _plugin(ds: pydicom.Dataset) -> dict[str, str]:
    """The decoding plugin torchdicom pins for this file, for pydicom to use too.

    pydicom's own choice depends on what is installed (GDCM first when
    python-gdcm is); lossy JPEG decoders differ by a few levels, so the
    reference decodes with the same plugin (lossless ones agree anyway).
    """
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    plugin = decoding_plugin(uid, _int(ds, "BitsStored")) if uid else ""
    return {"decoding_plugin": plugin} if plugin else {}


def _reference_frames(ds: pydicom.Dataset, frames: list[int] | None) -> np.ndarray:
    """pydicom's pixels as (F, C, H, W): all frames, or the listed ones one by one."""
    pinned = _plugin(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if frames is None:
            ds.pixel_array_options(**pinned)
            return pixel_array_fchw(ds)
        arrays = []
        for k in frames:
            arr = pydicom.pixels.pixel_array(ds, index=k, **pinned)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
            arrays.append(arr[None] if spp == 1 else np.moveaxis(arr, -1, 0))
        out = np.stack(arrays)
        return out.astype(out.dtype.newbyteorder("="), copy=False)


@pytest.fixture(scope="module")
def real_rows() -> dict[str, dict]:
    """Every real file scanned once, in-process: path -> index row."""
    index = scan(REAL, workers=0, progress=False)
    return {r["path"]: r for r in index.rows()}


def _frame_subset(path: Path, n_frames: int) -> list[int]:
    # Seeded by the file name so a failure reproduces; unsorted with a repeat
    # so the run-grouping of the native path is exercised too.
    rng = random.Random(path.name)
    k = min(n_frames, 3)
    picked = rng.sample(range(n_frames), k)
    return [*picked, picked[0]]


def _assert_torchdicom_error_or_tensor(path: Path, why: str) -> None:
    """pydicom cannot give pixels: torchdicom must raise its own error (or read)."""
    try:
        out = read_frames(path)
    except TorchDicomError as exc:
        if why == "no pixel data":
            assert type(exc) is MissingPixelDataError, str(exc)
        assert str(path) in str(exc)
        return
    # pydicom failed where torchdicom reads: allowed, but it must be a tensor.
    assert why != "no pixel data"
    assert out.ndim == 4


@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_file_matches_pixel_array(path: Path, real_rows: dict[str, dict]) -> None:
    ds, why = _dataset(path)
    if ds is None:
        _assert_torchdicom_error_or_tensor(path, why)
        return
    n_frames = max(_int(ds, "NumberOfFrames"), 1)
    subset = _frame_subset(path, n_frames)
    decoded_bytes = n_frames * _int(ds, "Rows") * _int(ds, "Columns") * 3 * 2
    picked = None
    if n_frames > 1 and decoded_bytes > _ALL_FRAMES_BUDGET:
        picked = sorted({0, n_frames - 1, *subset})
    try:
        ref = _reference_frames(ds, picked)
    except Exception as exc:
        _assert_torchdicom_error_or_tensor(path, f"undecodable: {exc!r}")
        return

    # pydicom decodes it, so torchdicom must: indexed, and read the same.
    row = real_rows.get(str(path.absolute()))
    assert row is not None, f"{path.name} decodes with pydicom but was not indexed"
    if picked is not None:
        np.testing.assert_array_equal(read_frames(path, picked).numpy(), ref)
        np.testing.assert_array_equal(
            read_frames(row, subset).numpy(), ref[[picked.index(k) for k in subset]]
        )
        return
    # All frames through the index row (no header parse) ...
    out = read_frames(row)
    assert out.dtype == torch.from_numpy(ref[:0]).dtype, (out.dtype, ref.dtype)
    assert tuple(out.shape) == ref.shape
    np.testing.assert_array_equal(out.numpy(), ref)
    # ... and a seeded random subset of frames, by path (header parsed and cached).
    np.testing.assert_array_equal(read_frames(path, subset).numpy(), ref[subset])


# --------------------------------------------------------------------------- synthetic layouts
LAYOUTS = {
    "1bit": dict(bits_allocated=1),
    "1bit-unaligned-frames": dict(bits_allocated=1, rows=5, columns=7, frames=3),
    "u8": dict(bits_allocated=8),
    "i8": dict(bits_allocated=8, signed=True),
    "u16": dict(bits_allocated=16),
    "i16": dict(bits_allocated=16, signed=True),
    "u12in16-garbage": dict(bits_allocated=16, bits_stored=12, garbage_high_bits=True),
    "i12in16-garbage": dict(bits_allocated=16, bits_stored=12, signed=True, garbage_high_bits=True),
    "i12in16-clean": dict(bits_allocated=16, bits_stored=12, signed=True),
    "u32": dict(bits_allocated=32),
    "i32": dict(bits_allocated=32, signed=True),
    "i24in32-garbage": dict(bits_allocated=32, bits_stored=24, signed=True, garbage_high_bits=True),
    "f32": dict(pixel_keyword="FloatPixelData"),
    "f64": dict(pixel_keyword="DoubleFloatPixelData"),
    "rgb8-interleaved": dict(bits_allocated=8, samples_per_pixel=3),
    "rgb8-planar": dict(bits_allocated=8, samples_per_pixel=3, planar_configuration=1),
    "rgb16-interleaved": dict(bits_allocated=16, samples_per_pixel=3),
}
SYNTAXES = {
    "explicitLE": ExplicitVRLittleEndian,
    "implicitLE": ImplicitVRLittleEndian,
    "bigendian": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
}
# What pydicom's encoders cannot produce (RLE: at most 16 bits here, no
# float pixel data; 1-bit is native-only in DICOM).
_UNENCODABLE = {
    ("1bit", "rle"),
    ("1bit-unaligned-frames", "rle"),
    ("u32", "rle"),
    ("i32", "rle"),
    ("i24in32-garbage", "rle"),
    ("f32", "rle"),
    ("f64", "rle"),
}
CASES = [
    pytest.param(layout, syntax, id=f"{layout}-{syntax}")
    for layout in LAYOUTS
    for syntax in SYNTAXES
    if (layout, syntax) not in _UNENCODABLE
]


@pytest.mark.parametrize(("layout", "syntax"), CASES)
def test_synthetic_layout_matches_pixel_array(layout: str, syntax: str, tmp_path: Path) -> None:
    kwargs = {"rows": 6, "columns": 10, "frames": 3, **LAYOUTS[layout]}
    path = tmp_path / "f.dcm"
    meant = write_dicom(path, transfer_syntax=SYNTAXES[syntax], seed=len(layout), **kwargs)
    ref = pixel_array_fchw(pydicom.dcmread(path))
    # The factory wrote what it meant (pydicom agrees), so this file really
    # exercises the layout it is named after.
    np.testing.assert_array_equal(ref, meant)

    out = read_frames(path)
    assert out.dtype == torch.from_numpy(ref[:0]).dtype
    np.testing.assert_array_equal(out.numpy(), ref)
    row = scan([path], workers=0, progress=False).row(0)
    np.testing.assert_array_equal(read_frames(row, [2, 0]).numpy(), ref[[2, 0]])
    np.testing.assert_array_equal(read_frames(row, slice(1, None)).numpy(), ref[1:])
    assert read_frames(row, []).shape == (0, *ref.shape[1:])
    # The route table picks the route this layout and syntax are meant for, and
    # native_layout describes exactly what the native route returns.
    assert route_for(row).name == _expected_route(layout, syntax), (layout, syntax)
    native = native_layout(row)
    if route_for(row).name == "native":
        assert native == (out.numpy().dtype, tuple(ref.shape[1:]))
    else:
        assert native is None


def _expected_route(layout: str, syntax: str) -> str:
    little_endian = syntax in ("explicitLE", "implicitLE")
    if layout.startswith("1bit"):
        # 6 x 10 frames start mid-byte: only the packed-bits route reads them by offset.
        return "packed bits" if little_endian else "pydicom data set"
    if little_endian:
        return "native"
    return {
        "bigendian": "native via pydicom",
        "rle": "code-streams by span",
        "deflated": "pydicom data set",
    }[syntax]


def test_route_table_is_ordered_and_total() -> None:
    names = [route.name for route in ROUTES]
    assert names[0] == "native"  # the hot path is asked first
    assert len(set(names)) == len(names)
    assert ROUTES[-1].accepts({})  # the last route takes every row


def test_jpeg2000_synthetic_matches_pixel_array(tmp_path: Path) -> None:
    # OpenJPEG refuses tiles this small below 32x32; one layout is enough here,
    # the real JPEG 2000 files cover the rest.
    path = tmp_path / "j2k.dcm"
    write_dicom(
        path, rows=32, columns=32, frames=2, bits_stored=12, transfer_syntax=JPEG2000Lossless
    )
    ref = pixel_array_fchw(pydicom.dcmread(path))
    np.testing.assert_array_equal(read_frames(path, [1]).numpy(), ref[[1]])


def test_no_preamble_raw_dataset(tmp_path: Path) -> None:
    path = tmp_path / "raw"
    meant = write_dicom(path, preamble=False, transfer_syntax=ImplicitVRLittleEndian)
    np.testing.assert_array_equal(read_frames(path).numpy(), meant)


# --------------------------------------------------------------------------- scaled_px
def _fastai_scaled_px(path: Path) -> torch.Tensor:
    """fastai.medical.imaging: pixels as float32 tensor * slope + intercept."""
    ds = pydicom.dcmread(path)
    img = torch.from_numpy(ds.pixel_array.astype(np.float32))
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return torch.from_numpy(np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float32))
    if hasattr(ds, "RescaleSlope") and hasattr(ds, "RescaleIntercept"):
        return img * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return img


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "mlut_18.dcm", "emri_small.dcm"])
def test_scaled_px_matches_fastai(name: str) -> None:
    path = real_file(name)
    expected = _fastai_scaled_px(path)
    got = scaled_px(path)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_scaled_px_ct_is_hounsfield() -> None:
    path = real_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) != 0 or float(ds.RescaleSlope) != 1
    hu = scaled_px(scan([path], workers=0, progress=False).row(0))
    ref = ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(
        ds.RescaleIntercept
    )
    np.testing.assert_array_equal(hu.numpy(), ref)


def test_scaled_px_one_frame_of_multiframe(tmp_path: Path) -> None:
    path = tmp_path / "mf.dcm"
    meant = write_dicom(path, frames=4, rescale_slope=2.5, rescale_intercept=-100.0)
    got = scaled_px(path, frame=2)
    np.testing.assert_allclose(got.numpy(), meant[2, 0].astype(np.float32) * 2.5 - 100.0)
    assert scaled_px(path).shape == (4, *meant.shape[2:])


# --------------------------------------------------------------------------- compressed routes
_SPAN_ROUTES = (
    "JPEG 8-bit by span (Pillow)",
    "JPEG lossless by span (imagecodecs)",
    "JPEG 2000 by span (openjpeg)",
    "code-streams by span",
)


@pytest.mark.parametrize("as_rgb", [True, False], ids=["rgb", "ybr"])
def test_span_routes_equal_the_offset_route(as_rgb: bool, real_rows: dict[str, dict]) -> None:
    # Every real compressed file has its frame spans indexed, and the span routes give what
    # the fragment walk + pinned plugin gave before them, frame for frame, or the same error.
    taken = set()
    for path, row in sorted(real_rows.items()):
        if not row["encapsulated"]:
            continue
        route = route_for(row)
        assert route.name in _SPAN_ROUTES, (path, route.name)
        taken.add(route.name)
        frames = list(range(int(row["frames"])))
        try:
            expected = frames_module._read_codestreams(row, frames, None, as_rgb)
        except TorchDicomError as exc:
            with pytest.raises(type(exc)):
                read_frames(row, as_rgb=as_rgb)
            continue
        got = read_frames(row, as_rgb=as_rgb).numpy()
        assert got.dtype == expected.dtype, path
        np.testing.assert_array_equal(got, expected, err_msg=path)
    expected = set(_SPAN_ROUTES)
    if not imagecodecs_plugin.register():  # the optional codec (torchdicom[codecs])
        expected.discard("JPEG lossless by span (imagecodecs)")
    assert taken == expected


def test_jpeg_baseline_goes_through_pillow_not_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchdicom.samples import us_cine_like

    sample = us_cine_like(tmp_path, n=1, frames=6, size=48, jpeg=True)
    row = scan(sample.files, workers=0, progress=False).row(0)
    assert route_for(row).name == "JPEG 8-bit by span (Pillow)"
    reference = pixel_array_fchw(pydicom.dcmread(sample.files[0]))
    raw = frames_module._read_codestreams(row, list(range(6)), None, False)

    def no_pydicom(row: dict) -> None:
        raise AssertionError("pydicom's decoder was used")

    monkeypatch.setattr(frames_module, "_decoder_for", no_pydicom)
    np.testing.assert_array_equal(read_frames(row).numpy(), reference)
    np.testing.assert_array_equal(read_frames(row, [4, 1]).numpy(), reference[[4, 1]])
    np.testing.assert_array_equal(read_frames(row, as_rgb=False).numpy(), raw)
    out = np.zeros(reference[:2].shape, reference.dtype)
    assert frames_module.read_frames_numpy(row, [0, 5], out=out) is out
    np.testing.assert_array_equal(out, reference[[0, 5]])


def test_ybr_to_rgb_tables_equal_pydicom() -> None:
    from pydicom.pixels.processing import convert_color_space

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (61, 37, 3), dtype=np.uint8)
    frame[0, :3] = [[0, 0, 0], [255, 255, 255], [0, 255, 0]]  # the clipping corners
    got = np.empty((3, 61, 37), dtype=np.uint8)
    frames_module._ybr_to_rgb(frame, got)
    assert frames_module._YBR is not None and frames_module._YBR.exact
    expected = convert_color_space(frame.copy(), "YBR_FULL", "RGB")
    np.testing.assert_array_equal(got, expected.transpose(2, 0, 1))
    strided = np.empty((3, 61, 74), dtype=np.uint8)[..., ::2]  # not contiguous
    frames_module._ybr_to_rgb(frame, strided)
    np.testing.assert_array_equal(strided, expected.transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PlanarConfiguration", 1), ("PhotometricInterpretation", "PALETTE COLOR")],
)
def test_jpeg_layouts_pydicom_lays_out_its_own_way_take_the_pinned_plugin(
    keyword: str, value: object, tmp_path: Path
) -> None:
    # Found by the long fuzz run: a baseline RGB/YBR JPEG whose header says planar
    # configuration 1 or a palette is laid out by pydicom's rules, not Pillow's.
    from torchdicom.samples import us_cine_like

    source = us_cine_like(tmp_path / "src", n=1, frames=3, size=32, jpeg=True).files[0]
    ds = pydicom.dcmread(source)
    setattr(ds, keyword, value)
    path = tmp_path / "relabelled.dcm"
    ds.save_as(path)
    row = scan([path], workers=0, progress=False).row(0)
    assert route_for(row).name == "code-streams by span"
    try:
        reference = _reference_frames(pydicom.dcmread(path), None)
    except Exception:
        with pytest.raises(TorchDicomError):
            read_frames(row)
        return
    np.testing.assert_array_equal(read_frames(row).numpy(), reference)


def test_jpeg_lossless_plugin_equals_pylibjpeg_on_real_files(real_rows: dict[str, dict]) -> None:
    # torchdicom's imagecodecs plugin (libjpeg-turbo 3) is pinned for JPEG lossless when
    # installed; on intact code-streams it must give pylibjpeg-libjpeg's values exactly.
    if not imagecodecs_plugin.register():
        pytest.skip("imagecodecs (torchdicom[codecs]) is not installed")
    lossless = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
    checked = 0
    for path, row in sorted(real_rows.items()):
        if row["transfer_syntax"] not in lossless:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = pydicom.pixels.pixel_array(path, decoding_plugin="pylibjpeg")
        except Exception:
            continue
        got = read_frames(row).numpy()
        spp = int(row["samples_per_pixel"])
        expected = expected.reshape(got.shape[0], *expected.shape[-(2 if spp == 1 else 3) :])
        expected = expected[:, None] if spp == 1 else np.moveaxis(expected, -1, 1)
        np.testing.assert_array_equal(got, expected, err_msg=path)
        checked += 1
    assert checked >= 4


def test_scaled_px_of_double_float_pixel_data_stays_float64(tmp_path: Path) -> None:
    # float32 cannot hold (7FE0,0009) Double Float Pixel Data's range: rounding it there
    # would return wrong values (found by fuzzing), so scaled_px keeps float64 for it.
    meant = write_dicom(tmp_path / "f64.dcm", pixel_keyword="DoubleFloatPixelData")
    got = scaled_px(tmp_path / "f64.dcm")
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), meant[0, 0])
    write_dicom(tmp_path / "f32.dcm", pixel_keyword="FloatPixelData")
    assert scaled_px(tmp_path / "f32.dcm").dtype == torch.float32
