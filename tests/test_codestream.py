"""Code-stream headers checked before decoding, the pinned decoding plugins, excess frames.

Issue 11: with python-gdcm installed, pydicom hands GDCM every JPEG family
frame first, and GDCM aborts the interpreter on a code-stream that disagrees
with the header. torchdicom pins its own plugin per transfer syntax and
checks each frame's code-stream header first; these tests write the lying
files the issue names and check the error, in-process and in a subprocess
(an abort would kill the test session otherwise).
"""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests.conftest import real_file, real_files
from tests.dicom_factory import write_dicom
from torchdicom import scan
from torchdicom.errors import CorruptDicomError
from torchdicom.io import frames as frames_module
from torchdicom.io.codestream import (
    CodestreamHeader,
    check_frame,
    codestream_family,
    encapsulated_frames_held,
    frame_spans,
    join_fragments,
    parse_j2k,
    parse_jpeg,
    parse_rle,
)
from torchdicom.io.frames import decoding_plugin, read_frames

try:
    import gdcm  # noqa: F401

    HAVE_GDCM = True
except ImportError:
    HAVE_GDCM = False


def _dataset(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _frames(ds: pydicom.Dataset) -> list[bytes]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=n))


def _first_frame(name: str) -> bytes:
    return _frames(_dataset(real_file(name)))[0]


# --------------------------------------------------------------------------- parsers
class TestParseJpeg:
    def test_jpeg_ls_sof55(self) -> None:
        info = parse_jpeg(_first_frame("MR_small_jpeg_ls_lossless.dcm"), "JPEG-LS")
        assert info == CodestreamHeader("JPEG-LS", 64, 64, 1, 16)

    def test_lossless_sof3(self) -> None:
        assert parse_jpeg(_first_frame("JPEG-LL.dcm")) == CodestreamHeader("JPEG", 1024, 256, 1, 16)

    def test_baseline_colour(self) -> None:
        assert parse_jpeg(_first_frame("SC_rgb_jpeg.dcm")) == CodestreamHeader(
            "JPEG", 256, 256, 3, 8
        )

    @staticmethod
    def _stream(lines: int, trailer: bytes = b"") -> bytes:
        app0 = b"\xff\xe0\x00\x04ab"
        sof0 = b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", lines, 7) + b"\x01\x01\x11\x00"
        sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        # Fill bytes before a marker are allowed (T.81 B.1.1.2).
        return b"\xff\xd8" + app0 + b"\xff\xff" + sof0 + sos + b"\x12\xff\x00\x34" + trailer

    def test_fill_bytes_and_segments_are_skipped(self) -> None:
        assert parse_jpeg(self._stream(5)) == CodestreamHeader("JPEG", 5, 7, 1, 8)

    def test_zero_lines_read_from_dnl(self) -> None:
        stream = self._stream(0, b"\xff\xdc\x00\x04\x00\x09\xff\xd9")
        assert parse_jpeg(stream).rows == 9

    def test_zero_lines_without_dnl(self) -> None:
        with pytest.raises(ValueError, match="0 lines and no DNL"):
            parse_jpeg(self._stream(0, b"\xff\xd9"))

    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (b"", "does not start with an SOI"),
            (b"\x00\xd8\xff\xc0", "does not start with an SOI"),
            (b"\xff\xd8\xff\xda\x00\x02", "no start-of-frame"),
            (b"\xff\xd8\xff\xd9", "no start-of-frame"),
            (b"\xff\xd8\xff\xc0\x00\x11\x08", "ends inside its SOF"),
            (b"\xff\xd8\xff\xe0\x00", "ends inside a marker segment"),
            (b"\xff\xd8\x12", "no marker at byte 2"),
            (b"\xff\xd8\xff\xe0\x00\x01", "length 1"),
        ],
    )
    def test_malformed(self, data: bytes, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            parse_jpeg(data)


class TestParseJ2k:
    def test_raw_codestream(self) -> None:
        info = parse_j2k(_first_frame("MR_small_jp2klossless.dcm"))
        assert info == CodestreamHeader("JPEG 2000", 64, 64, 1, 16)

    def test_jp2_wrapper(self) -> None:
        stream = _first_frame("US1_J2KR.dcm")
        jp2 = (
            b"\x00\x00\x00\x0cjP  \r\n\x87\n"
            + struct.pack(">I4s", 20, b"ftyp")
            + b"jp2 \x00\x00\x00\x00jp2 "
            + struct.pack(">I4s", 1, b"jp2c")
            + struct.pack(">Q", 16 + len(stream))
            + stream
        )
        assert parse_j2k(jp2) == parse_j2k(stream) == CodestreamHeader("JPEG 2000", 480, 640, 3, 8)

    def test_image_offset_is_subtracted(self) -> None:
        siz = (
            struct.pack(">HHIIIIIIIIH", 41, 0, 110, 60, 10, 20, 110, 60, 0, 0, 1) + b"\x8b\x01\x01"
        )
        info = parse_j2k(b"\xff\x4f\xff\x51" + siz)
        assert (info.rows, info.columns, info.samples, info.precision) == (40, 100, 1, 12)

    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (b"\xff\xd8\xff\xc0", "neither SOC"),
            (b"\xff\x4f\xff\x51\x00", "ends inside its SIZ"),
            (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x08ftyp", "no contiguous"),
        ],
    )
    def test_malformed(self, data: bytes, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            parse_j2k(data)


class TestParseRle:
    def test_offsets(self) -> None:
        assert parse_rle(_first_frame("SC_rgb_rle.dcm")) == [64, 264, 464]

    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (b"\x01\x00\x00\x00", "shorter than its 64-byte header"),
            (struct.pack("<16I", 0, *[0] * 15), "lists 0 segments"),
            (struct.pack("<16I", 16, *[0] * 15), "lists 16 segments"),
        ],
    )
    def test_malformed(self, data: bytes, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            parse_rle(data)


# --------------------------------------------------------------------------- no false rejections
def _compressed_real_files() -> list[Path]:
    out = []
    for path in real_files():
        try:
            ds = _dataset(path)
        except Exception:
            continue
        meta = getattr(ds, "file_meta", None)
        uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if codestream_family(uid) and "PixelData" in ds:
            out.append(path)
    return out


COMPRESSED = _compressed_real_files()
# pydicom cannot decode it either: a sequence delimiter inside the code-stream.
_BROKEN = {"JPEG2000-embedded-sequence-delimiter.dcm"}


def test_real_compressed_files_are_present() -> None:
    families = {codestream_family(str(_dataset(p).file_meta.TransferSyntaxUID)) for p in COMPRESSED}
    assert families == {"JPEG", "JPEG-LS", "JPEG 2000", "RLE"}
    assert len(COMPRESSED) >= 50


@pytest.mark.parametrize("path", COMPRESSED, ids=[p.name for p in COMPRESSED])
def test_every_frame_of_every_real_file_passes(path: Path) -> None:
    ds = _dataset(path)
    uid = str(ds.file_meta.TransferSyntaxUID)
    for k, frame in enumerate(_frames(ds)):
        kwargs = {
            "rows": ds.Rows,
            "columns": ds.Columns,
            "samples_per_pixel": ds.SamplesPerPixel,
            "bits_allocated": ds.BitsAllocated,
            "path": str(path),
            "index": k,
        }
        if path.name in _BROKEN:
            with pytest.raises(CorruptDicomError, match="Columns is 256 but"):
                check_frame(frame, uid, **kwargs)
        else:
            check_frame(frame, uid, **kwargs)


def test_other_syntaxes_pass_unchecked() -> None:
    check_frame(
        b"",
        ExplicitVRLittleEndian,
        rows=1,
        columns=1,
        samples_per_pixel=1,
        bits_allocated=8,
        path="x",
        index=0,
    )


# --------------------------------------------------------------------------- lying headers
def _lie(tmp_path: Path, name: str, **changes: object) -> Path:
    ds = _dataset(real_file(name))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = tmp_path / f"{Path(name).stem}-{'-'.join(changes)}.dcm"
    ds.save_as(out)
    return out


def _rle_with_bad_second_frame(tmp_path: Path) -> Path:
    path = tmp_path / "rle3.dcm"
    write_dicom(path, frames=3, transfer_syntax=RLELossless)
    ds = _dataset(path)
    frames = _frames(ds)
    frames[1] = struct.pack("<I", 2) + frames[1][4:]  # 2 segments for 16-bit: ok...
    frames[1] = struct.pack("<I", 3) + frames[1][4:]  # ...3 is not
    ds.PixelData = encapsulate(frames)
    ds.save_as(path)
    return path


# (file, changes, frame, message parts): the header lies the issue names.
LIES = {
    "jpeg-ls-rows": (
        "MR_small_jpeg_ls_lossless.dcm",
        {"Rows": 128},
        0,
        "(0028,0010) Rows is 128 but the JPEG-LS code-stream says 64",
    ),
    "jpeg-ls-rows-fewer": (
        "MR_small_jpeg_ls_lossless.dcm",
        {"Rows": 32},
        0,
        "(0028,0010) Rows is 32 but the JPEG-LS code-stream says 64",
    ),
    "jpeg-ls-samples": (
        "SC_rgb_jls_lossy_line.dcm",
        {"SamplesPerPixel": 1},
        0,
        "(0028,0002) Samples per Pixel is 1 but the JPEG-LS code-stream says 3",
    ),
    "jpeg-lossless-bits-allocated": (
        "JPEG-LL.dcm",
        {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
        0,
        "(0028,0100) Bits Allocated is 8 but the JPEG code-stream holds 16-bit samples",
    ),
    "jpeg-baseline-columns": (
        "SC_rgb_jpeg_dcmtk.dcm",
        {"Columns": 255},
        0,
        "(0028,0011) Columns is 255 but the JPEG code-stream says 100",
    ),
    "j2k-columns": (
        "MR_small_jp2klossless.dcm",
        {"Columns": 32},
        0,
        "(0028,0011) Columns is 32 but the JPEG 2000 code-stream says 64",
    ),
    "j2k-bits-allocated": (
        "MR2_J2KR.dcm",
        {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
        0,
        "(0028,0100) Bits Allocated is 8 but the JPEG 2000 code-stream holds 12-bit samples",
    ),
    "rle-segments": (
        "MR_small_RLE.dcm",
        {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
        0,
        "make 6 RLE segments, but the RLE header says 2",
    ),
}


def _lie_path(case: str, tmp_path: Path) -> tuple[Path, int, str]:
    if case == "rle-second-frame":
        return (
            _rle_with_bad_second_frame(tmp_path),
            1,
            "make 2 RLE segments, but the RLE header says 3",
        )
    name, changes, frame, message = LIES[case]
    return _lie(tmp_path, name, **changes), frame, message


CASES = [*LIES, "rle-second-frame"]


@pytest.mark.parametrize("case", CASES)
def test_lying_header_is_named(case: str, tmp_path: Path) -> None:
    path, frame, message = _lie_path(case, tmp_path)
    for source in (path, scan([path], workers=0, progress=False).row(0)):
        with pytest.raises(CorruptDicomError) as info:
            read_frames(source)
        assert info.value.path == str(path.absolute()) or info.value.path == str(path)
        assert info.value.frame == frame
        assert message in info.value.reason
        assert str(path) in str(info.value) and f"frame {frame}" in str(info.value)


@pytest.mark.parametrize("case", ["jpeg-ls-rows", "j2k-columns", "rle-segments"])
def test_dataset_route_checks_too(case: str, tmp_path: Path) -> None:
    # The route for deflated / defined-length / extended-offset files.
    path, frame, message = _lie_path(case, tmp_path)
    row = frames_module.row_for_path(path)
    with pytest.raises(CorruptDicomError, match=message.replace("(", r"\(").replace(")", r"\)")):
        frames_module._read_via_dataset(row, [frame], None, True)


def test_unparseable_code_stream_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    write_dicom(path, frames=2, transfer_syntax=JPEGLSLossless)
    ds = _dataset(path)
    frames = _frames(ds)
    ds.PixelData = encapsulate([frames[0], b"\x00" * 32])
    ds.save_as(path)
    with pytest.raises(CorruptDicomError, match="does not start with an SOI") as info:
        read_frames(path)
    assert info.value.frame == 1
    np.testing.assert_array_equal(read_frames(path, 0).numpy(), read_frames(path, [0]).numpy())


_CHILD = """
import sys, torchdicom
for path in sys.argv[1:]:
    try:
        torchdicom.read_frames(path)
        print("read", path)
    except torchdicom.TorchDicomError as exc:
        print(type(exc).__name__, exc.reason)
"""


def test_no_abort_in_a_fresh_process(tmp_path: Path) -> None:
    """Every lying file, read in a fresh interpreter with GDCM importable: errors, no abort."""
    paths = []
    for case in CASES:
        (tmp_path / case).mkdir()
        paths.append(str(_lie_path(case, tmp_path / case)[0]))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(paths)
    assert all(line.startswith("CorruptDicomError ") for line in lines), lines


@pytest.mark.skipif(not HAVE_GDCM, reason="python-gdcm not installed")
def test_the_hazard_is_real_pydicom_default_order_aborts(tmp_path: Path) -> None:
    """pydicom's first-available order (GDCM) aborts on the JPEG-LS Rows lie: what is avoided."""
    path, _, _ = _lie_path("jpeg-ls-rows", tmp_path)
    child = f"import pydicom; pydicom.dcmread({str(path)!r}).pixel_array"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode < 0, (done.returncode, done.stderr[-500:])


def test_eight_bit_jpeg_in_sixteen_bit_storage(tmp_path: Path) -> None:
    # Legal (Bits Stored 8 in Bits Allocated 16); pydicom's pylibjpeg route
    # fails on it, GDCM reads it: torchdicom gives GDCM's values.
    path = _lie(tmp_path, "JPGLosslessP14SV1_1s_1f_8b.dcm", BitsAllocated=16)
    out = read_frames(path)
    assert out.dtype == torch.uint16
    ds = _dataset(path)
    ref = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(
        ds, decoding_plugin="pylibjpeg", bits_allocated=8, bits_stored=8
    )[0]
    np.testing.assert_array_equal(out.numpy()[0, 0], ref.astype(np.uint16))


# --------------------------------------------------------------------------- plugin choice
def test_gdcm_only_where_nothing_else_decodes() -> None:
    for uid in frames_module._PLUGIN_PREFERENCE:
        available = get_decoder(uid).available_plugins
        chosen = decoding_plugin(uid)
        if set(available) - {"gdcm"}:
            assert chosen != "gdcm", uid
        assert chosen in available or not available, uid


def test_table_choices() -> None:
    assert decoding_plugin(JPEGLSLossless) == "pyjpegls"
    assert decoding_plugin(JPEG2000Lossless) == "pylibjpeg"
    assert decoding_plugin(RLELossless) == "pylibjpeg"
    assert decoding_plugin(pydicom.uid.JPEGBaseline8Bit) == "pillow"
    assert decoding_plugin(JPEGExtended12Bit, 8) == "pillow"
    assert decoding_plugin(JPEGExtended12Bit, 12) == "pylibjpeg"
    assert decoding_plugin(ExplicitVRLittleEndian) == ""
    assert decoding_plugin("1.2.3.4") == ""


@pytest.mark.skipif(not HAVE_GDCM, reason="python-gdcm not installed")
def test_baseline_jpeg_equals_gdcm() -> None:
    """Pillow was chosen for baseline JPEG because it gives GDCM's values exactly."""
    for name in ("SC_rgb_jpeg.dcm", "examples_ybr_color.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm"):
        path = real_file(name)
        ref = pydicom.pixels.pixel_array(_dataset(path), decoding_plugin="gdcm")
        ref = ref if ref.ndim == 4 else ref[None]
        np.testing.assert_array_equal(np.moveaxis(read_frames(path).numpy(), 1, -1), ref)


# --------------------------------------------------------------------------- excess frames
def _without_frame_count(path: Path, number_of_frames: int | None = None) -> None:
    ds = _dataset(path)
    del ds.NumberOfFrames
    if number_of_frames is not None:
        ds.NumberOfFrames = number_of_frames
    ds.save_as(path)


def _pixel_array_fchw(path: Path) -> np.ndarray:
    """pydicom's default pixel_array (excess frames included) as (F, C, H, W)."""
    ds = _dataset(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plugin = decoding_plugin(str(ds.file_meta.TransferSyntaxUID))
        arr = pydicom.pixels.pixel_array(ds, **({"decoding_plugin": plugin} if plugin else {}))
    spp = int(ds.SamplesPerPixel)
    if arr.ndim == (2 if spp == 1 else 3):
        arr = arr[None]
    return arr[:, None] if spp == 1 else np.moveaxis(arr, -1, 1)


EXCESS_SYNTAXES = {
    "native": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}


@pytest.mark.parametrize("declared", [None, 2], ids=["missing", "two"])
@pytest.mark.parametrize("syntax", EXCESS_SYNTAXES)
def test_excess_frames_are_read_and_logged(
    syntax: str, declared: int | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / f"{syntax}.dcm"
    size = {"rows": 32, "columns": 32} if syntax == "j2k" else {}
    meant = write_dicom(path, frames=3, transfer_syntax=EXCESS_SYNTAXES[syntax], **size)
    _without_frame_count(path, declared)
    ref = _pixel_array_fchw(path)
    assert ref.shape[0] == 3  # pydicom returns the frames the data holds
    np.testing.assert_array_equal(ref, meant)
    with caplog.at_level(logging.WARNING, logger="torchdicom.io"):
        row = scan([path], workers=0, progress=False).row(0)
    assert row["frames"] == 3
    np.testing.assert_array_equal(read_frames(path).numpy(), ref)
    np.testing.assert_array_equal(read_frames(row, [2, 0]).numpy(), ref[[2, 0]])
    said = "absent" if declared is None else str(declared)
    messages = [r.getMessage() for r in caplog.records if r.name == "torchdicom.io"]
    assert any(
        str(path) in m and "holds 3 frames" in m and f"Number of Frames is {said}" in m
        for m in messages
    ), messages


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls"])
def test_joined_fragments_are_logged(
    syntax: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No offset table, no frame count: pydicom joins the fragments into one frame; so
    does torchdicom, but not silently."""
    path = tmp_path / f"{syntax}.dcm"
    write_dicom(path, frames=3, transfer_syntax=EXCESS_SYNTAXES[syntax])
    ds = _dataset(path)
    ds.PixelData = encapsulate(_frames(ds), has_bot=False)
    del ds.NumberOfFrames
    ds.save_as(path)
    ref = _pixel_array_fchw(path)
    assert ref.shape[0] == 1
    with caplog.at_level(logging.WARNING, logger="torchdicom.io"):
        out = read_frames(scan([path], workers=0, progress=False).row(0))
    np.testing.assert_array_equal(out.numpy(), ref)
    messages = [r.getMessage() for r in caplog.records if r.name == "torchdicom.io"]
    assert any(str(path) in m and "3 fragments each end an image" in m for m in messages)


def test_declared_frames_unchanged_without_excess(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ok.dcm"
    write_dicom(path, frames=3, transfer_syntax=RLELossless)
    with caplog.at_level(logging.WARNING, logger="torchdicom.io"):
        assert scan([path], workers=0, progress=False).row(0)["frames"] == 3
    assert not [r for r in caplog.records if r.name == "torchdicom.io"]


class TestEncapsulatedFramesHeld:
    """The scan-time count never trusts a length the file cannot back."""

    @staticmethod
    def _count(data: bytes, declared: int) -> tuple[int, int]:
        return encapsulated_frames_held(lambda at, n: data[at : at + n], 0, len(data), declared)

    @staticmethod
    def _item(payload: bytes) -> bytes:
        return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(payload)) + payload

    def test_offset_table_longer_than_the_file(self) -> None:
        data = b"\xfe\xff\x00\xe0" + struct.pack("<I", 0xFFFFFFFC) + b"\x00" * 16
        assert self._count(data, 1) == (1, 1)

    def test_more_offsets_than_fragments(self) -> None:
        # Five offsets, two fragments: pydicom yields two frames, not five.
        table = self._item(struct.pack("<5I", 0, 12, 24, 36, 48))
        data = table + self._item(b"\xff\xd8\xff\xd9") + self._item(b"\xff\xd8\xff\xd9")
        assert self._count(data, 1) == (2, 2)

    def test_fragments_split_at_end_markers(self) -> None:
        image = self._item(b"\xff\xd8ab") + self._item(b"cd\xff\xd9")
        data = self._item(b"") + image * 3
        assert self._count(data, 2) == (3, 3)  # 6 fragments, 3 images
        assert self._count(data, 1) == (1, 3)  # joined into one frame, as pydicom does
        assert self._count(data, 3) == (3, 3)


class TestFrameSpans:
    """Frame spans are recorded only where pydicom's get_frame finds the same bytes."""

    _END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

    @staticmethod
    def _item(payload: bytes) -> bytes:
        return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(payload)) + payload

    def _spans(self, data: bytes, frames: int) -> tuple[list[int], list[int]] | None:
        return frame_spans(lambda at, n: data[at : at + n], 0, len(data), frames)

    def _frames(self, data: bytes, frames: int) -> list[bytes]:
        spans = self._spans(data, frames)
        assert spans is not None
        return [join_fragments(data[o : o + n]) for o, n in zip(*spans, strict=True)]

    def _reference(self, data: bytes, frames: int) -> list[bytes]:
        return [pydicom.encaps.get_frame(data, k, number_of_frames=frames) for k in range(frames)]

    def test_offset_table_with_multi_fragment_frames(self) -> None:
        a, b, c = self._item(b"\xff\xd8ab"), self._item(b"cd\xff\xd9"), self._item(b"\xff\xd8ef")
        table = self._item(struct.pack("<2I", 0, len(a) + len(b)))
        data = table + a + b + c + self._END
        assert (
            self._frames(data, 2)
            == self._reference(data, 2)
            == [b"\xff\xd8abcd\xff\xd9", b"\xff\xd8ef"]
        )

    def test_one_fragment_per_frame_and_one_frame_of_many(self) -> None:
        body = self._item(b"\xff\xd8a\xff\xd9") + self._item(b"\xff\xd8bb\xff\xd9")
        data = self._item(b"") + body + self._END
        assert self._frames(data, 2) == self._reference(data, 2)
        assert self._frames(data, 1) == self._reference(data, 1)

    def test_ambiguous_or_damaged_layouts_are_not_recorded(self) -> None:
        frag = self._item(b"\xff\xd8ab\xff\xd9")
        # More fragments than several frames (split at end markers by pydicom).
        assert self._spans(self._item(b"") + frag * 3 + self._END, 2) is None
        # An offset that does not start a fragment.
        assert self._spans(self._item(struct.pack("<2I", 0, 5)) + frag * 2 + self._END, 2) is None
        # Fewer offsets than frames, and no sequence delimiter (truncated).
        assert self._spans(self._item(struct.pack("<I", 0)) + frag * 2 + self._END, 2) is None
        assert self._spans(self._item(b"") + frag * 2, 2) is None

    def test_join_refuses_a_span_that_is_not_items(self) -> None:
        with pytest.raises(ValueError, match="fragment"):
            join_fragments(b"\xfe\xff\x00\xe0\xff\x00\x00\x00abc")


def test_lying_rows_is_refused_before_the_output_is_allocated(tmp_path: Path) -> None:
    # Found by the 10 000-input fuzz run: a 30-frame JPEG cine whose Rows was set to 4097
    # made the by-span route allocate 118 MB for a 225 kB file before any frame's
    # code-stream was checked. The first frame is now checked before the allocation.
    import tracemalloc

    from torchdicom.io.frames import read_frames_numpy

    src = real_file("examples_ybr_color.dcm")
    ds = pydicom.dcmread(src)
    ds.Rows = 4097
    path = tmp_path / "rows4097.dcm"
    ds.save_as(path)
    read_frames_numpy(src, [0])  # warm up: modules and colour tables load outside the count
    tracemalloc.start()
    try:
        with pytest.raises(
            CorruptDicomError, match=r"Rows is 4097 but the JPEG code-stream says 240"
        ):
            read_frames_numpy(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * path.stat().st_size
