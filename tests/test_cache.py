"""FrameCache: decoded JPEG frames on disk, checksummed, size-bounded, off when unwritable."""

from __future__ import annotations

import errno
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import torchdicom._atomic as atomic_module
from torchdicom.cache import FrameCache
from torchdicom.data import DicomDataset
from torchdicom.io.frames import read_frames, row_for_path
from torchdicom.samples import us_cine_like


@pytest.fixture(scope="module")
def jpeg_row(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Index row of a 12-frame JPEG baseline YBR_FULL_422 cine (32x32)."""
    s = us_cine_like(tmp_path_factory.mktemp("us"), n=1, frames=12, size=32)
    row = row_for_path(s.files[0])
    assert bool(row["encapsulated"])
    return row


def _entries(cache: FrameCache) -> list[Path]:
    return sorted(cache.directory.glob("*/*.frame"))


def test_miss_then_hit_same_values_as_read_frames(jpeg_row, tmp_path):
    cache = FrameCache(tmp_path / "c")
    first = cache.read(jpeg_row, [0, 3])
    assert (cache.hits, cache.misses) == (0, 2)
    again = cache.read(jpeg_row, [3, 0, 5])
    assert (cache.hits, cache.misses) == (2, 3)
    expected = read_frames(jpeg_row, [3, 0, 5]).numpy()
    assert again.dtype == expected.dtype and np.array_equal(again, expected)
    assert np.array_equal(first, read_frames(jpeg_row, [0, 3]).numpy())
    assert len(_entries(cache)) == 3
    # YCbCr and RGB decodes are different entries.
    ybr = cache.read(jpeg_row, 0, as_rgb=False)
    assert np.array_equal(ybr, read_frames(jpeg_row, 0, as_rgb=False).numpy())
    assert cache.misses == 4


def test_other_process_sees_entries(jpeg_row, tmp_path):
    FrameCache(tmp_path / "c").read(jpeg_row, 1)
    fresh = FrameCache(tmp_path / "c")  # like a DataLoader worker or another rank
    fresh.read(jpeg_row, 1)
    assert (fresh.hits, fresh.misses) == (1, 0)


@pytest.mark.parametrize("damage", ["flip_payload_byte", "truncate", "garbage"])
def test_corrupted_entry_detected_and_decoded_again(jpeg_row, tmp_path, caplog, damage):
    cache = FrameCache(tmp_path / "c")
    cache.read(jpeg_row, 2)
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    if damage == "flip_payload_byte":
        data[-10] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a cache entry at all")
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="torchdicom.cache"):
        out = cache.read(jpeg_row, 2)
    assert "damaged" in caplog.text
    assert np.array_equal(out, read_frames(jpeg_row, 2).numpy())
    assert (cache.hits, cache.misses) == (0, 2)
    # The damaged entry was replaced by a good one.
    assert cache.read(jpeg_row, 2) is not None and cache.hits == 1


def test_unwritable_directory_warns_once_and_works(jpeg_row, tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod 0o555 does not stop writes, so the
    # read-only filesystem is simulated where the cache creates its files.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic_module, "_open_temporary", read_only)
    cache = FrameCache(tmp_path / "c")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [cache.read(jpeg_row, k) for k in (0, 1, 0, 2)]
    relevant = [w for w in caught if "cache" in str(w.message)]
    assert len(relevant) == 1 and issubclass(relevant[0].category, RuntimeWarning)
    assert "Read-only file system" in str(relevant[0].message)
    assert not cache.enabled
    expected = read_frames(jpeg_row, [0, 1, 0, 2]).numpy()
    assert np.array_equal(np.concatenate(outs), expected)


def test_directory_that_cannot_be_created_warns_and_works(jpeg_row, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder's parent should be")
    with pytest.warns(RuntimeWarning, match="disabled"):
        cache = FrameCache(blocker / "c")
    assert not cache.enabled
    assert np.array_equal(cache.read(jpeg_row, 4), read_frames(jpeg_row, 4).numpy())


def test_eviction_keeps_size_bounded(jpeg_row, tmp_path):
    frame_bytes = 3 * 32 * 32  # uint8 RGB; each entry adds a small header
    cache = FrameCache(tmp_path / "c", max_bytes=4 * frame_bytes)
    for k in range(12):
        cache.read(jpeg_row, k)
        assert cache.size_bytes() <= cache.max_bytes + 2 * (frame_bytes + 256)
    assert cache.size_bytes() <= cache.max_bytes
    assert 0 < len(_entries(cache)) < 12
    # The newest entries survive: the last frame read is still a hit.
    cache.read(jpeg_row, 11)
    assert cache.hits == 1
    cache.clear()
    assert cache.size_bytes() == 0


def test_dataset_with_cache_equals_without(jpeg_row, tmp_path):
    path = jpeg_row["path"]
    plain = DicomDataset(path)
    cached = DicomDataset(path, cache=tmp_path / "c")
    assert isinstance(cached.cache, FrameCache)
    for _ in range(2):  # miss, then hit
        for i in range(0, len(plain), 3):
            assert torch.equal(cached[i]["image"], plain[i]["image"])
    assert cached.cache.hits == cached.cache.misses == 4
