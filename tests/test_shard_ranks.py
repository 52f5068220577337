"""DDP ranks that read different data fail loudly in ``DicomDataModule.setup``.

Ranks reading different shard manifests (a stale copy on a node, an export rewritten
while the job starts) would compute different epoch lengths and hang at a collective;
``setup`` gathers every rank's shard fingerprint and items per rank (for ``data=``: the
split's digest and counts) and every rank raises :class:`RankMismatchError` instead.
The comparison is tested on its own and through ``setup`` with a stand-in
``all_gather_object``; a real 2-rank gloo fit (tests/ddp_shards_mismatch.py) shows both
ranks raising, and the equal case training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import run_ddp_script
from torchdicom import scan
from torchdicom.datamodule import DicomDataModule, _rank_mismatch
from torchdicom.errors import RankMismatchError, TorchDicomError
from torchdicom.export import entry_checksum, to_webdataset
from torchdicom.samples import ct_like


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[str, str]:
    """A labelled export of 24 files in 5 shards (5, 5, 5, 5, 4), and a copy of its manifest one shard short
    (beside it, so that its shard names resolve)."""
    root = tmp_path_factory.mktemp("shard_ranks")
    ct_like(root / "src", n_series=2, slices=6, size=16)
    index = scan(root / "src", progress=False)
    labels = {r["path"]: k % 2 for k, r in enumerate(index.rows())}
    (root / "shards").mkdir()
    report = to_webdataset(index, str(root / "shards" / "%06d.tar"), maxcount=5, labels=labels)
    manifest = json.loads(Path(report.manifest).read_text())
    assert [s["frames"] for s in manifest["shards"]] == [5, 5, 5, 5, 4]
    manifest["shards"] = manifest["shards"][:-1]
    manifest["crc32"] = entry_checksum(manifest)  # a consistent, older export
    stale = root / "shards" / "stale_manifest.json"
    stale.write_text(json.dumps(manifest))
    return str(report.manifest), str(stale)


# --------------------------------------------------------------------------- comparison
def test_equal_summaries_agree():
    assert _rank_mismatch("m.json", "shard manifests", ["a"]) is None
    assert _rank_mismatch("m.json", "shard manifests", ["a", "a", "a"]) is None


def test_a_disagreeing_rank_is_named_with_the_manifest_and_both_summaries():
    error = _rank_mismatch("/data/manifest.json", "shard manifests", ["a", "b", "a", "a"])
    assert isinstance(error, RankMismatchError)
    assert isinstance(error, TorchDicomError) and isinstance(error, RuntimeError)
    assert error.path == "/data/manifest.json"
    message = str(error)
    assert message.startswith("/data/manifest.json: the ranks read different shard manifests")
    assert "rank 1 disagrees with rank 0" in message
    assert message.endswith("ranks 0, 2, 3: a; rank 1: b")


def test_several_groups_list_every_disagreeing_rank():
    message = str(_rank_mismatch("idx", "indexes", ["x", "y", "z", "y"]))
    assert "ranks 1, 2, 3 disagree with rank 0" in message
    assert message.endswith("rank 0: x; ranks 1, 3: y; rank 2: z")


def test_a_url_source_is_redacted():
    error = _rank_mismatch("s3://key:secret@bucket/m.json", "shard manifests", ["a", "b"])
    assert "secret" not in str(error)


# --------------------------------------------------------------------------- setup
class _FakeGroup:
    """torch.distributed as rank 0 of two sees it; at gather number ``on_call`` the other
    rank sends ``theirs`` (otherwise, and when None, the same summary as this rank)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, theirs: str | None = None, on_call: int = 1
    ):
        self.theirs, self.on_call, self.calls = theirs, on_call, 0
        dist = torch.distributed
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(dist, "all_gather_object", self.all_gather_object)

    def all_gather_object(self, gathered: list[Any], mine: Any, group: Any = None) -> None:
        self.calls += 1
        differs = self.theirs is not None and self.calls == self.on_call
        gathered[:] = [mine, self.theirs if differs else mine]


def test_setup_with_equal_shards_passes(manifests, monkeypatch):
    group = _FakeGroup(monkeypatch)
    dm = DicomDataModule(shards=manifests[0], val_shards=manifests[1], batch_size=2)
    dm.setup("fit")
    assert group.calls == 2  # train and val shards, once each
    dm.setup("validate")
    assert group.calls == 2
    assert len(dm.train_set) == 12  # 24 items over 2 ranks


def test_setup_with_other_shards_on_a_rank_raises(manifests, monkeypatch):
    _FakeGroup(monkeypatch, theirs="fingerprint 00000000, 10 items per rank")
    dm = DicomDataModule(shards=manifests[0], batch_size=2)
    with pytest.raises(RankMismatchError, match="rank 1 disagrees with rank 0") as caught:
        dm.setup("fit")
    assert str(caught.value).startswith(manifests[0])
    assert "rank 0: fingerprint" in str(caught.value) and "12 items per rank" in str(caught.value)
    assert dm.train_set is None  # nothing half set up


def test_setup_names_the_validation_manifest(manifests, monkeypatch):
    _FakeGroup(monkeypatch, theirs="other", on_call=2)  # train agrees, val does not
    dm = DicomDataModule(shards=manifests[0], val_shards=manifests[1], batch_size=2)
    with pytest.raises(RankMismatchError) as caught:
        dm.setup("fit")
    assert str(caught.value).startswith(manifests[1] + ":")
    assert "rank 0: fingerprint " in str(caught.value)  # the stale manifest's: 10 items
    assert str(caught.value).endswith(", 10 items per rank; rank 1: other")


def test_setup_of_data_compares_the_split(tmp_path, monkeypatch):
    ct_like(tmp_path / "ct", n_series=3, slices=2, size=16)
    group = _FakeGroup(monkeypatch)
    dm = DicomDataModule(data=tmp_path / "ct", index_cache=tmp_path / "index.parquet")
    dm.setup("fit")
    assert group.calls == 1
    _FakeGroup(monkeypatch, theirs="split 0123456789abcdef, train/val/test items 5/1/0")
    dm = DicomDataModule(data=tmp_path / "ct", index_cache=tmp_path / "index.parquet")
    with pytest.raises(RankMismatchError, match="different indexes") as caught:
        dm.setup("fit")
    assert str(caught.value).startswith(str(tmp_path / "ct") + ":")
    assert "rank 1: split 0123456789abcdef" in str(caught.value)


# --------------------------------------------------------------------------- real DDP
def test_two_gloo_ranks_with_different_manifests_both_raise(manifests, tmp_path):
    out = tmp_path / "out"
    # Exits non-zero (run_ddp_script's AssertionError) well within the timeout: a hang
    # would raise subprocess.TimeoutExpired instead.
    with pytest.raises(AssertionError) as caught:
        run_ddp_script("ddp_shards_mismatch.py", *manifests, out, timeout=120)
    assert "RankMismatchError" in str(caught.value)
    assert "rank 1 disagrees with rank 0" in str(caught.value)
    for rank in (0, 1):
        message = (out / f"rank{rank}_error.txt").read_text()
        assert message.startswith(manifests[rank] + ":")  # the manifest that rank read
        assert "rank 0: fingerprint" in message and "rank 1: fingerprint" in message
        assert "12 items per rank" in message and "10 items per rank" in message  # 24 vs 20
        assert not (out / f"rank{rank}_trained.json").exists()  # no step was taken


def test_two_gloo_ranks_with_the_same_manifest_train(manifests, tmp_path):
    out = tmp_path / "out"
    run_ddp_script("ddp_shards_mismatch.py", manifests[0], manifests[0], out, timeout=120)
    batches = [json.loads((out / f"rank{r}_trained.json").read_text()) for r in (0, 1)]
    assert batches == [6, 6]  # 24 items, 2 ranks, batches of 2
    assert not list(out.glob("*_error.txt"))
