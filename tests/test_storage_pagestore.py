"""The SQLite page store: materialising, reads at many LSNs, GC, voiding, reload."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sixfold.nodes.storage.log import LogPosition
from sixfold.nodes.storage.pagestore import PageStore, SegmentBatch, SegmentRow, StoreBatch, rows_for
from sixfold.nodes.storage.replica import Meta
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import apply_record, encode_record
from tests.storage_util import ChainBuilder, page_image

MEMBERS = ("a:1", "b:1")


def build_history(seed: int, count: int, pages: int = 4):
    """Records over a few pages (full images and deltas) and the expected image of every
    page after every LSN."""
    rng = random.Random(seed)
    b = ChainBuilder()
    records = []
    current: dict[int, bytes] = {}
    for lsn in range(1, count + 1):
        page = rng.randrange(pages)
        image = bytearray(current.get(page, page_image(page)))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(image) - 8)
            image[at : at + 8] = rng.randbytes(8)
        image = bytes(image)
        records.append(b.change(lsn, page, image))
        current[page] = image
    return records


def expected_image(records, page: int, lsn: int) -> bytes | None:
    image = None
    for r in records:
        if r.lsn > lsn:
            break
        if r.page == page:
            image = apply_record(image, r)
    return image


def commit(store, records, materialise, *, through=None, checkpoint=LogPosition(1, 0), void=(), meta=Meta(1, "w", (), MEMBERS)):
    through = through if through is not None else (materialise[-1].lsn if materialise else 0)
    row = SegmentRow("v", 0, meta, vdl_hint=through, materialised_lsn=through)
    batch = SegmentBatch(row, rows_for((r, encode_record(r)) for r in records), materialise, tuple(void))
    return store.commit(StoreBatch([batch], checkpoint))


def test_reads_at_every_lsn_match_a_replay(tmp_path):
    records = build_history(seed=7, count=120)
    store = PageStore(tmp_path / "p.db")
    # materialise in three uneven batches, as the background loop would
    for lo, hi in ((0, 10), (10, 77), (77, 120)):
        commit(store, records[lo:hi], records[lo:hi])
    for page in range(4):
        for lsn in range(0, 122):
            found = store.read_version("v", 0, page, lsn)
            want = expected_image(records, page, lsn)
            if want is None:
                assert found is None
            else:
                assert found is not None and found[1] == want, (page, lsn)
                assert found[0] == max(r.lsn for r in records if r.page == page and r.lsn <= lsn)
    store.close()


def test_gc_keeps_the_newest_version_at_or_below_the_horizon(tmp_path):
    records = build_history(seed=3, count=80)
    store = PageStore(tmp_path / "p.db")
    commit(store, records, records)
    before = {page: store.page_versions("v", 0, page) for page in range(4)}
    horizon = 50
    versions, dropped_records = store.gc("v", 0, horizon, records_floor_lsn=30)
    assert versions > 0 and dropped_records == 29
    for page in range(4):
        kept = store.page_versions("v", 0, page)
        newest_at_horizon = max(lsn for lsn in before[page] if lsn <= horizon)
        assert kept == [lsn for lsn in before[page] if lsn >= newest_at_horizon]
        for lsn in range(horizon, 82):  # every read at or above the horizon is unchanged
            assert store.read_version("v", 0, page, lsn)[1] == expected_image(records, page, lsn)
    assert [lsn for lsn, _ in store.read_records("v", 0, 0, 1000, 1000)] == list(range(30, 81))
    # GC again at the same horizon drops nothing more
    assert store.gc("v", 0, horizon, 30) == (0, 0)
    store.close()


def test_void_deletes_records_and_versions_of_older_epochs_above_start(tmp_path):
    records = build_history(seed=5, count=20)
    store = PageStore(tmp_path / "p.db")
    commit(store, records, records[:10], through=10)
    result = commit(store, [], [], through=10, void=[Truncation(2, 15)])
    assert result.versions_voided == {}
    assert [lsn for lsn, _ in store.read_records("v", 0, 0, 100, 100)] == list(range(1, 16))
    result = commit(store, [], [], through=10, void=[Truncation(3, 8)])
    assert result.versions_voided == {("v", 0): 2}  # the invariant broke: reported, not hidden
    store.close()


def test_a_baseline_deletes_the_rows_of_old_copies_above_the_materialised_point_only(tmp_path):
    records = build_history(seed=7, count=20)
    store = PageStore(tmp_path / "p.db")
    commit(store, records, records[:8], through=8)
    # a recovery at epoch 2 re-stamped (5, 15]: memory dropped the old copies 9..15 (8 and below
    # are page versions: kept); 16..20 are void
    result = commit(store, [], [], through=8, void=[Truncation(2, 15, 5)])
    assert result.versions_voided == {}
    assert [lsn for lsn, _ in store.read_records("v", 0, 0, 100, 100)] == list(range(1, 9))
    assert store.count("versions", "v", 0) == 8
    # re-stamped copies that come (gossip) in the batch that saves the truncation stay
    store.close()
    store = PageStore(tmp_path / "q.db")
    commit(store, records, records[:8], through=8)
    restamped = [dataclasses.replace(r, epoch=2) for r in records[8:15]]
    commit(store, restamped, [], through=8, void=[Truncation(2, 15, 5)])
    stored = store.read_records("v", 0, 0, 100, 100)
    assert [lsn for lsn, _ in stored] == list(range(1, 16))
    assert [data for _, data in stored[8:]] == [encode_record(r) for r in restamped]
    store.close()


def test_meta_without_baselines_reads_as_baseline_equal_to_start():
    from sixfold.nodes.storage.codec import CodecError, meta_from_json, meta_to_json

    old = {"epoch": 3, "owner": "rec", "history": [[2, 5], [3, 9]], "members": ["a:1"], "vdl_hint": 4}
    meta, vdl_hint, min_read_lsn = meta_from_json(old)
    assert meta.history == (Truncation(2, 5, 5), Truncation(3, 9, 9)) and (vdl_hint, min_read_lsn) == (4, 0)
    new = Meta(3, "rec", (Truncation(2, 5, 5), Truncation(3, 9, 0)), ("a:1",))
    doc = meta_to_json(new, 4, 0)
    assert doc["history"] == [[2, 5, 5], [3, 9, 0]] and meta_from_json(doc)[0] == new
    with pytest.raises(CodecError):
        meta_from_json({**old, "history": [[2, 5, 6]]})  # a baseline above the start


def test_load_returns_checkpoint_meta_and_split_records(tmp_path):
    records = build_history(seed=9, count=30)
    store = PageStore(tmp_path / "p.db")
    meta = Meta(4, "w", (Truncation(2, 0),), MEMBERS)
    commit(store, records, records[:20], checkpoint=LogPosition(3, 4096), meta=meta)
    store.gc("v", 0, 10, 5)
    store.close()
    store = PageStore(tmp_path / "p.db")
    checkpoint, loaded = store.load()
    assert checkpoint == LogPosition(3, 4096)
    [seg] = loaded
    assert seg.row.meta == meta and seg.row.materialised_lsn == 20
    assert seg.row.oldest_version_lsn == 10 and seg.row.records_gc_lsn == 5
    assert seg.unmaterialised == [encode_record(r) for r in records[20:]]
    assert seg.materialised[0] == list(range(5, 21))
    store.close()


def test_commits_are_idempotent(tmp_path):
    records = build_history(seed=11, count=10)
    store = PageStore(tmp_path / "p.db")
    commit(store, records, [], through=0)
    commit(store, records, [], through=0)  # a replayed log stores the same records again
    assert store.count("records", "v", 0) == 10
    store.close()


def test_versions_below_the_read_horizon_are_not_written(tmp_path):
    records = build_history(seed=13, count=100)
    store = PageStore(tmp_path / "p.db")
    row = SegmentRow("v", 0, Meta(1, "w", (), MEMBERS), vdl_hint=100, materialised_lsn=100)
    batch = SegmentBatch(row, rows_for((r, encode_record(r)) for r in records), records, (), skip_below_lsn=60)
    result = store.commit(StoreBatch([batch], LogPosition(1, 0)))
    assert result.versions_written < 60
    for page in range(4):
        newest_at_60 = max(r.lsn for r in records if r.page == page and r.lsn <= 60)
        assert store.page_versions("v", 0, page)[0] == newest_at_60
        for lsn in range(60, 101):
            assert store.read_version("v", 0, page, lsn)[1] == expected_image(records, page, lsn)
    store.close()
