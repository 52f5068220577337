"""torchdicom.keys names every key the datasets write, and Collate batches each group as it says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchdicom.keys as K
from torchdicom.data import Collate, DicomClipDataset, DicomDataset, DicomVolumeDataset
from torchdicom.samples import ct_like, us_cine_like

NAMED = {getattr(K, name) for name in K.__all__ if isinstance(getattr(K, name), str)}


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory):
    return ct_like(tmp_path_factory.mktemp("ct"), n_series=2, slices=3, size=16)


@pytest.fixture(scope="module")
def us(tmp_path_factory: pytest.TempPathFactory):
    return us_cine_like(tmp_path_factory.mktemp("us"), n=1, frames=4, size=16)


def test_the_module_imports_nothing_of_the_package():
    # Both data and transforms stand on it, and they never import each other.
    source = Path(K.__file__).read_text()
    assert "import torchdicom" not in source and "from torchdicom" not in source


def test_groups_are_named_keys_and_disjoint():
    groups = (K.PIXEL_KEYS, K.FLOAT_KEYS, K.BOOL_KEYS, K.INT_KEYS)
    keys = [key for group in groups for key in group]
    assert len(keys) == len(set(keys)) and set(keys) <= NAMED


def test_every_item_key_is_named(ct, us):
    frame = DicomDataset(ct.root, masks=ct.masks_dir, labels=lambda path: 1, size=(8, 8))[0]
    clip = DicomClipDataset(us.root, clip_len=2)[0]
    volume = DicomVolumeDataset(ct.root)[0]
    for item in (frame, clip, volume):
        assert set(item) <= NAMED, sorted(set(item) - NAMED)


def test_collate_batches_each_group_in_its_dtype(ct):
    dataset = DicomDataset(ct.root, masks=ct.masks_dir, labels=lambda path: 1)
    batch = Collate()([dataset[0], dataset[1]])
    assert batch[K.IMAGE].dim() == 4 and batch[K.MASK].dim() == 4
    assert all(batch[key].dtype == torch.float32 for key in K.FLOAT_KEYS)
    assert all(batch[key].dtype == torch.bool for key in K.BOOL_KEYS if key in batch)
    assert all(batch[key].dtype == torch.int64 for key in K.INT_KEYS)
    assert batch[K.PATH] == [dataset[0][K.PATH], dataset[1][K.PATH]]
