"""The per-segment replica state machine: epochs, truncation, duplicates, histories."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sixfold.nodes.storage.replica import (
    AppendPlan,
    Code,
    Meta,
    Rejection,
    SegmentReplica,
    record_crc,
    split_records,
)
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import RecordError, encode_record, encode_records
from tests.storage_util import ChainBuilder, page_image

MEMBERS = ("a:1", "b:1", "c:1", "d:1", "e:1", "f:1")


def incoming(records):
    return split_records(encode_records(records))


def append(replica, records, *, epoch=1, writer="w1", history=(), members=MEMBERS):
    plan = replica.check_append(epoch, writer, tuple(history), incoming(records), tuple(members))
    if isinstance(plan, Rejection):
        return plan
    changes = replica.apply_append(plan)
    replica.durable_scl = changes.scl_after  # as the log's on_durable would
    replica.check_invariants()
    return changes


def chain_records(lsns, epoch=1, page=0):
    b = ChainBuilder(epoch)
    return [b.full(lsn, page + i % 3, page_image(lsn)) for i, lsn in enumerate(lsns)]


def test_error_codes_match_the_proto():
    for code in Code:
        assert pb.ErrorCode.Value(code.name) == code.value


def test_first_append_adopts_epoch_and_owner_and_is_persisted():
    r = SegmentReplica("v", 0)
    changes = append(r, chain_records([1, 2, 3]), epoch=2)
    assert changes.meta == Meta(2, "w1", (), MEMBERS)
    assert [rec.lsn for rec, _ in changes.records] == [1, 2, 3]
    assert r.scl == 3 and r.epoch == 2


def test_members_required_to_create():
    r = SegmentReplica("v", 0)
    result = append(r, chain_records([1]), members=())
    assert isinstance(result, Rejection) and result.code == Code.INVALID


def test_stale_epoch_and_not_owner_store_nothing():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1]), epoch=3)
    records = ChainBuilder(2)
    stale = append(r, [records.full(5, 0, page_image(5))], epoch=2)
    assert isinstance(stale, Rejection) and stale.code == Code.STALE_EPOCH
    other = append(r, chain_records([5], epoch=3), epoch=3, writer="w2")
    assert isinstance(other, Rejection) and other.code == Code.NOT_EPOCH_OWNER
    assert sorted(r.held) == [1]


def test_higher_epoch_is_adopted_after_applying_its_history():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2, 3, 4]), epoch=1)
    # recovery at epoch 2 truncated everything above 2; the new writer continues at 3
    b = ChainBuilder(2)
    b.prev_lsn = 2
    changes = append(r, [b.full(3, 0, page_image(33))], epoch=2, writer="w2", history=[Truncation(2, 2)])
    assert not isinstance(changes, Rejection)
    assert changes.voided == [3, 4]
    assert r.meta.owner == "w2" and r.meta.history == (Truncation(2, 2),)
    assert r.held[3].record.epoch == 2 and 4 not in r.held
    assert r.scl == 3


def test_record_epoch_above_request_or_void_is_invalid():
    r = SegmentReplica("v", 0)
    too_new = append(r, chain_records([1], epoch=2), epoch=1)
    assert isinstance(too_new, Rejection) and too_new.code == Code.INVALID
    void = append(r, chain_records([5], epoch=1), epoch=2, history=[Truncation(2, 3)])
    assert isinstance(void, Rejection) and void.code == Code.INVALID
    assert not r.held and r.epoch == 0  # nothing adopted either


def test_history_with_a_future_epoch_or_conflict_is_invalid():
    r = SegmentReplica("v", 0)
    future = append(r, chain_records([1]), epoch=1, history=[Truncation(2, 0)])
    assert isinstance(future, Rejection) and future.code == Code.INVALID
    assert not isinstance(append(r, chain_records([1]), epoch=3, history=[Truncation(2, 1)]), Rejection)
    conflict = append(r, [], epoch=3, history=[Truncation(2, 7)])
    assert isinstance(conflict, Rejection) and "conflict" in conflict.detail


def test_duplicates_identical_are_idempotent_different_are_invalid():
    r = SegmentReplica("v", 0)
    records = chain_records([1, 2, 3])
    append(r, records)
    again = append(r, records)
    assert again.duplicates == 3 and not again.records and again.meta is None
    forged = ChainBuilder(1)
    forged.prev_lsn = 1
    bad = append(r, [forged.full(2, 0, page_image(99))])
    assert isinstance(bad, Rejection) and bad.code == Code.INVALID
    assert r.held[2].record.payload == page_image(2)


def test_a_rejected_batch_stores_nothing_even_its_good_records():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2]))
    b = ChainBuilder(1)
    b.prev_lsn = 2
    good = b.full(3, 0, page_image(3))
    b2 = ChainBuilder(1)
    b2.prev_lsn = 1
    conflicting = b2.full(2, 0, page_image(42))
    result = r.check_append(1, "w1", (), [(good, encode_record(good)), (conflicting, encode_record(conflicting))], MEMBERS)
    assert isinstance(result, Rejection)
    assert 3 not in r.held


def test_gap_holds_records_until_filled():
    r = SegmentReplica("v", 0)
    records = chain_records([1, 2, 3, 4, 5])
    append(r, records[:2])
    append(r, records[3:])
    assert r.scl == 2 and r.chain.has_gap() and r.chain.highest_lsn == 5
    changes = append(r, [records[2]])
    assert changes.scl_after == 5 and not r.chain.has_gap()


def test_bump_epoch_rules():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2, 3]), epoch=1)
    assert isinstance(r.bump_epoch(1, "other", (), ()), Rejection)
    same = r.bump_epoch(1, "w1", (), ())
    assert not isinstance(same, Rejection) and same.meta is not None  # idempotent, still persisted
    up = r.bump_epoch(4, "rec", (Truncation(4, 2),), ())
    assert not isinstance(up, Rejection) and up.voided == [3]
    assert r.epoch == 4 and r.meta.owner == "rec" and r.meta.members == MEMBERS
    retry = r.bump_epoch(4, "rec", (Truncation(4, 2),), ())
    assert not isinstance(retry, Rejection) and retry.voided == []
    lower = r.bump_epoch(3, "x", (), ())
    assert isinstance(lower, Rejection) and lower.code == Code.STALE_EPOCH
    fresh = SegmentReplica("v", 1)
    assert isinstance(fresh.bump_epoch(1, "rec", (), ()), Rejection)  # no members: cannot create
    assert not isinstance(fresh.bump_epoch(1, "rec", (), MEMBERS), Rejection)


def test_truncate_voids_older_epochs_above_start_only():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2, 3, 4]), epoch=1)
    r.bump_epoch(2, "rec", (), ())
    assert isinstance(r.truncate(1, "rec", 2), Rejection)
    assert r.truncate(2, "x", 2).code == Code.NOT_EPOCH_OWNER
    assert r.truncate(3, "rec", 2).code == Code.INVALID  # ahead of the node: BumpEpoch first
    changes = r.truncate(2, "rec", 2)
    assert changes.voided == [3, 4] and r.meta.history == (Truncation(2, 2),)
    assert r.scl == 2
    again = r.truncate(2, "rec", 2)
    assert not isinstance(again, Rejection) and again.voided == [] and again.meta is not None
    conflict = r.truncate(2, "rec", 1)
    assert isinstance(conflict, Rejection) and conflict.code == Code.INVALID
    r.check_invariants()


def test_truncate_keeps_records_of_the_truncating_epoch():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2]), epoch=1)
    b = ChainBuilder(2)
    b.prev_lsn = 2
    append(r, [b.full(3, 0, page_image(3))], epoch=2)
    changes = r.truncate(2, "w1", 1)
    assert changes.voided == [2]
    assert sorted(r.held) == [1, 3] and r.scl == 1  # 3's backlink points at a void record


def test_learn_adopts_higher_epoch_and_merges_history_but_not_lower():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2, 3]), epoch=2)
    lower = r.learn(Meta(1, "old", (), ()))
    assert lower.meta is None and r.epoch == 2
    higher = r.learn(Meta(5, "rec", (Truncation(5, 1),), ()))
    assert higher.meta is not None and r.epoch == 5 and r.meta.owner == "rec"
    assert higher.voided == [2, 3] and r.meta.members == MEMBERS
    conflict = r.learn(Meta(5, "rec", (Truncation(5, 2),), ()))
    assert conflict.meta is None and conflict.warnings


def test_ingest_skips_void_too_new_and_conflicting_records():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1]), epoch=2, history=[Truncation(2, 1)])
    b = ChainBuilder(1)
    b.prev_lsn = 1
    void = b.full(2, 0, page_image(2))        # epoch 1 above the epoch-2 truncation
    newer = ChainBuilder(3).full(4, 0, page_image(4))
    c = ChainBuilder(2)
    c.prev_lsn = 1
    good = c.full(3, 0, page_image(3))
    dup = chain_records([1])[0]
    changes = r.ingest([(x, encode_record(x)) for x in (dup, void, good, newer)])
    assert [x.lsn for x, _ in changes.records] == [3]
    assert changes.skipped == 2 and changes.duplicates == 1
    r.check_invariants()


def test_hints_only_move_up():
    r = SegmentReplica("v", 0)
    assert r.note_hints(10, 5)
    assert not r.note_hints(3, 2)
    assert (r.vdl_hint, r.min_read_lsn) == (10, 5)


def test_materialise_stays_below_vdl_and_durable_scl_and_dedups_afterwards():
    r = SegmentReplica("v", 0)
    records = chain_records([1, 2, 3, 4, 5, 6])
    append(r, records)
    r.durable_scl = 5
    r.note_hints(4, 0)
    assert [h.record.lsn for h in r.to_materialise(100)] == [1, 2, 3, 4]
    assert [h.record.lsn for h in r.to_materialise(2)] == [1, 2]
    r.on_stored(r.take_unstored())
    r.on_materialised(4)
    r.check_invariants()
    assert sorted(r.held) == [5, 6] and r.materialised_lsn == 4 and r.record_count == 6
    again = append(r, records[:3])
    assert not isinstance(again, Rejection) and again.duplicates == 3
    forged = ChainBuilder(1)
    forged.prev_lsn = 1
    bad = append(r, [forged.full(2, 0, page_image(77))])
    assert isinstance(bad, Rejection) and "materialised" in bad.detail
    stranger = ChainBuilder(1).full(3, 9, page_image(1))
    # lsn 3 is materialised here with other bytes: refused
    assert isinstance(append(r, [stranger]), Rejection)
    r.on_records_gc(3)
    assert not isinstance(append(r, records[:2]), Rejection)  # collected: cannot tell, taken as duplicates


def test_durable_floor_allows_materialising_up_to_a_recovery_point():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2]), epoch=2, history=[Truncation(2, 2)])
    b = ChainBuilder(2)
    b.prev_lsn = 2
    append(r, [b.full(3, 0, page_image(3))], epoch=2)
    assert r.scl == 3 and r.materialise_limit() == 2  # 3 is above every known durable point


def test_records_gc_floor_needs_every_peer():
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2, 3, 4]))
    r.note_hints(4, 4)
    r.on_stored(r.take_unstored())
    r.on_materialised(4)
    now = 100.0
    assert r.records_gc_floor("a:1", now, 5.0) == 0
    for i, m in enumerate(MEMBERS[1:]):
        r.peer_scl[m] = (3 + i, now)
    assert r.records_gc_floor("a:1", now, 5.0) == 3
    r.peer_scl["b:1"] = (3, now - 10)
    assert r.records_gc_floor("a:1", now, 5.0) == 0


def test_split_records_checks_crc_and_order():
    records = chain_records([1, 2])
    blob = bytearray(encode_records(records))
    blob[30] ^= 0xFF
    with pytest.raises(RecordError):
        split_records(bytes(blob))
    with pytest.raises(RecordError):
        split_records(encode_records(list(reversed(records))))
    with pytest.raises(RecordError):
        split_records(encode_records(records)[:-1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 40))
def test_random_arrival_order_reaches_the_same_scl(seed, count):
    rng = random.Random(seed)
    lsns = sorted(rng.sample(range(1, 200), count))
    records = chain_records(lsns)
    r = SegmentReplica("v", 0)
    order = records[:]
    rng.shuffle(order)
    for record in order:
        result = append(r, [record])
        assert not isinstance(result, Rejection)
        present = set(r.held)
        expected = 0
        for lsn in lsns:
            if lsn not in present:
                break
            expected = lsn
        assert r.scl == expected
    assert r.scl == lsns[-1]
    # a random truncation at a new epoch leaves exactly the valid prefix
    start = rng.choice([0, *lsns])
    r.bump_epoch(2, "rec", (Truncation(2, start),), ())
    assert sorted(r.held) == [lsn for lsn in lsns if lsn <= start]
    assert r.scl == start
    r.check_invariants()


def test_plan_is_pure():
    r = SegmentReplica("v", 0)
    plan = r.check_append(1, "w1", (), incoming(chain_records([1, 2])), MEMBERS)
    assert isinstance(plan, AppendPlan) and not r.held and r.epoch == 0


# ------------------------------------------------------------------ epoch upgrade


def restamped(records, epoch):
    """Copies of records as a recovery re-replicates them (sixfold/volume/recovery.py)."""
    return [dataclasses.replace(r, epoch=epoch) for r in records]


def recovered_replica(records, *, repair=None, epoch=3):
    """A replica holding `records` (epoch 1) that a recovery at `epoch` fenced and, when
    `repair` is given, re-replicated those records to, re-stamped."""
    r = SegmentReplica("v", 0)
    append(r, records, epoch=1)
    r.bump_epoch(epoch, "rec", (), ())
    if repair is not None:
        changes = append(r, restamped(repair, epoch), epoch=epoch, writer="rec")
        assert not isinstance(changes, Rejection), changes
        return r, changes
    return r, None


def test_epoch_upgrade_replaces_the_held_copy_without_moving_the_chain():
    records = chain_records([1, 2, 3, 4, 5])
    r, changes = recovered_replica(records, repair=records[2:4])
    assert changes.upgraded == [3, 4] and changes.duplicates == 0
    assert [(x.lsn, x.epoch) for x, _ in changes.records] == [(3, 3), (4, 3)]  # logged like new records
    assert changes.persist and changes.scl_after == 5 and r.scl == 5
    assert [r.held[lsn].record.epoch for lsn in range(1, 6)] == [1, 1, 3, 3, 1]
    assert r.held[3].encoded == encode_record(restamped(records[2:3], 3)[0])
    assert sorted(r.restamp) == [3, 4]  # the store still has (or may be writing) the old copies
    r.check_invariants()


def test_upgraded_record_survives_a_stray_truncation_and_an_old_copy_does_not():
    records = chain_records([1, 2, 3, 4, 5])
    upgraded, _ = recovered_replica(records, repair=records[2:5])
    missed, _ = recovered_replica(records)  # a member the repair did not reach
    stray = Meta(3, "rec", (Truncation(2, 2),), ())  # left by a recovery at epoch 2 that died
    kept = upgraded.learn(stray)
    assert kept.meta is not None and kept.voided == [] and upgraded.scl == 5
    voided = missed.learn(stray)
    assert voided.voided == [3, 4, 5] and missed.scl == 2
    # gossip: the member that lost its old copies gets the upgraded ones back
    fetched = [(h.record, h.encoded) for h in upgraded.held_in_range(missed.scl, 10)]
    refilled = missed.ingest(fetched)
    assert [x.lsn for x, _ in refilled.records] == [3, 4, 5] and refilled.upgraded == []
    assert missed.scl == 5 and all(missed.held[lsn].record.epoch == 3 for lsn in (3, 4, 5))
    for r in (upgraded, missed):
        r.check_invariants()


def test_gossip_ingest_upgrades_an_old_copy_and_ignores_older_ones():
    records = chain_records([1, 2, 3, 4])
    r, _ = recovered_replica(records)
    new = restamped(records[1:], 3)
    changes = r.ingest([(x, encode_record(x)) for x in new])
    assert changes.upgraded == [2, 3, 4] and [x.lsn for x, _ in changes.records] == [2, 3, 4]
    assert r.scl == 4 and r.held[2].record.epoch == 3
    again = r.ingest([(x, encode_record(x)) for x in records + new])  # older and equal copies
    assert again.duplicates == 7 and not again.records and not again.upgraded and not again.warnings
    assert r.held[2].record.epoch == 3
    r.check_invariants()


def test_after_an_upgrade_a_lower_epoch_copy_is_a_duplicate_and_other_contents_are_refused():
    records = chain_records([1, 2, 3])
    r, _ = recovered_replica(records, repair=records)
    old = append(r, records, epoch=3, writer="rec")
    assert not isinstance(old, Rejection)
    assert old.duplicates == 3 and not old.records and not old.upgraded
    assert all(r.held[lsn].record.epoch == 3 for lsn in (1, 2, 3))
    forged = ChainBuilder(3)
    forged.prev_lsn = 1
    other = forged.full(2, 0, page_image(99))  # same LSN and backlink, other contents, higher epoch
    bad = append(r, [other], epoch=3, writer="rec")
    assert isinstance(bad, Rejection) and bad.code == Code.INVALID
    skipped = r.ingest([(other, encode_record(other))])
    assert skipped.skipped == 1 and skipped.warnings and not skipped.records
    assert r.held[2].record.payload == page_image(2)


def materialised_replica(records):
    r = SegmentReplica("v", 0)
    append(r, records, epoch=1)
    r.note_hints(records[-1].lsn, 0)
    r.on_stored(r.take_unstored())
    r.on_materialised(records[-1].lsn)
    assert not r.held
    r.bump_epoch(3, "rec", (), ())
    return r


def test_epoch_upgrade_of_a_materialised_record():
    records = chain_records([1, 2, 3, 4])
    r = materialised_replica(records)
    changes = append(r, restamped(records[2:], 3), epoch=3, writer="rec")
    assert not isinstance(changes, Rejection)
    assert changes.upgraded == [3, 4] and [x.epoch for x, _ in changes.records] == [3, 3]
    assert r.scl == 4 and not r.held
    assert r.materialised_crc(3) == record_crc(encode_record(restamped(records[2:3], 3)[0]))
    assert [x.epoch for x, _ in r.take_restamp()] == [3, 3]
    older = append(r, records, epoch=3, writer="rec")
    assert not isinstance(older, Rejection) and older.duplicates == 4 and not older.records
    assert r.materialised_crc(3) == record_crc(encode_record(restamped(records[2:3], 3)[0]))
    mixed = append(r, restamped(records, 3), epoch=3, writer="rec")  # 1, 2 upgrade; 3, 4 equal
    assert not isinstance(mixed, Rejection) and mixed.upgraded == [1, 2] and mixed.duplicates == 2
    assert r.materialised_crc(1) == record_crc(encode_record(restamped(records[:1], 3)[0]))
    assert r.materialised_crc(3) == record_crc(encode_record(restamped(records[2:3], 3)[0]))
    forged = ChainBuilder(3)
    forged.prev_lsn = 2
    bad = append(r, [forged.full(3, 0, page_image(77))], epoch=3, writer="rec")
    assert isinstance(bad, Rejection) and "materialised" in bad.detail
    # other contents under a higher epoch are no upgrade either (only crc and epoch are kept)
    r.bump_epoch(4, "rec4", (), ())
    forged = ChainBuilder(4)
    forged.prev_lsn = 2
    bad = append(r, [forged.full(3, records[2].page, page_image(77))], epoch=4, writer="rec4")
    assert isinstance(bad, Rejection) and "materialised" in bad.detail
    skipped = r.ingest(incoming([forged.full(4, records[3].page, page_image(78))]))
    assert skipped.skipped == 1 and skipped.warnings
    # a stray truncation below them voids no materialised record: no broken-invariant warning
    kept = r.learn(Meta(4, "rec4", (Truncation(2, 0),), ()))
    assert kept.meta is not None and not kept.warnings
    r.on_restamped(r.take_restamp())
    assert not r.restamp
    r.check_invariants()


def test_a_stray_truncation_over_an_old_materialised_copy_is_reported():
    r = materialised_replica(chain_records([1, 2, 3]))
    changes = r.learn(Meta(3, "rec", (Truncation(2, 1),), ()))
    assert any("2 known to be" in w for w in changes.warnings)


def test_restamp_entries_go_when_the_record_is_voided_or_written_again():
    records = chain_records([1, 2, 3])
    r, _ = recovered_replica(records, repair=records[1:])
    pending = r.take_restamp()
    r.bump_epoch(5, "rec5", (Truncation(5, 2),), ())  # a later recovery voids lsn 3 (epoch 3)
    assert sorted(r.restamp) == [2]
    newer = ChainBuilder(5)
    newer.prev_lsn = 2
    append(r, [newer.full(3, 0, page_image(55))], epoch=5, writer="rec5")
    assert sorted(r.restamp) == [2] and r.held[3].record.epoch == 5
    upgraded_again = restamped(records[1:2], 5)
    append(r, upgraded_again, epoch=5, writer="rec5")
    r.on_restamped(pending)  # the batch that wrote the epoch-3 copies commits late
    assert r.restamp[2][0].epoch == 5  # still pending: a newer copy came meanwhile
    r.check_invariants()


# ------------------------------------------------------------ baselines: old copies


def test_a_truncation_with_a_baseline_drops_old_copies_and_they_are_refilled_re_stamped():
    records = chain_records([1, 2, 3, 4, 5])
    r, _ = recovered_replica(records)  # fenced at 3, but the repair of (2, 4] missed it
    changes = r.truncate(3, "rec", 4, 2)
    assert not isinstance(changes, Rejection)
    assert changes.voided == [5] and changes.dropped_stale == [3, 4] and changes.scl_after == 2
    assert r.meta.history == (Truncation(3, 4, 2),) and sorted(r.held) == [1, 2]
    r.check_invariants()
    # the old copies again (an older writer's resend, or a peer that has not learned the
    # truncation): the same records, skipped, not an error
    old = append(r, records[2:4], epoch=3, writer="rec")
    assert not isinstance(old, Rejection) and old.stale == 2 and not old.records and r.scl == 2
    gossip = r.ingest(incoming(records[2:4]))
    assert gossip.stale == 2 and not gossip.records and not gossip.warnings and r.scl == 2
    # the re-stamped copies (gossip from a repaired member) fill the gap
    refill = r.ingest(incoming(restamped(records[2:4], 3)))
    assert [x.lsn for x, _ in refill.records] == [3, 4] and r.scl == 4
    assert [r.held[lsn].record.epoch for lsn in (1, 2, 3, 4)] == [1, 1, 3, 3]
    r.check_invariants()


def test_a_baseline_above_the_start_or_a_different_baseline_is_refused():
    records = chain_records([1, 2, 3])
    r, _ = recovered_replica(records)
    bad = r.truncate(3, "rec", 2, 3)
    assert isinstance(bad, Rejection) and bad.code == Code.INVALID and sorted(r.held) == [1, 2, 3]
    assert not isinstance(r.truncate(3, "rec", 2, 1), Rejection)
    assert isinstance(r.truncate(3, "rec", 2, 0), Rejection)          # the same epoch, another baseline
    assert isinstance(r.truncate(3, "rec", 2), Rejection)             # no baseline: 2, not 1
    conflict = append(r, [], epoch=3, writer="rec", history=[Truncation(3, 2, 2)])
    assert isinstance(conflict, Rejection) and "conflict" in conflict.detail
    learned = r.learn(Meta(3, "rec", (Truncation(3, 2, 0),), ()))
    assert learned.warnings and r.meta.history == (Truncation(3, 2, 1),)


def test_an_entry_without_a_baseline_drops_no_old_copy():
    records = chain_records([1, 2, 3, 4])
    r, _ = recovered_replica(records)
    changes = r.truncate(3, "rec", 3)   # as from a recoverer that sends no baseline
    assert changes.voided == [4] and changes.dropped_stale == [] and r.scl == 3
    assert r.meta.history == (Truncation(3, 3, 3),)


def test_materialised_old_copies_stay_but_are_never_materialised_from_memory():
    records = chain_records([1, 2, 3, 4, 5, 6])
    r = SegmentReplica("v", 0)
    append(r, records, epoch=1)
    r.note_hints(3, 0)
    assert [h.record.lsn for h in r.to_materialise(100)] == [1, 2, 3]
    r.on_stored(r.take_unstored())
    r.on_materialised(3)
    # a recovery at epoch 3 (baseline 1, VDL 5) re-stamped (1, 5] elsewhere; this replica learns it
    learned = r.learn(Meta(3, "rec", (Truncation(3, 5, 1),), MEMBERS))
    assert learned.dropped_stale == [4, 5] and learned.voided == [6] and not learned.warnings
    assert r.scl == 3 and r.materialised_crc(2) is not None   # 2, 3: page versions, kept
    # the truncation start (5) lets 4, 5 become versions only as their re-stamped copies
    assert r.materialise_limit() == 3
    r.durable_scl = r.ingest(incoming(restamped(records[3:5], 3))).scl_after
    assert r.materialise_limit() == 5 and [h.record.epoch for h in r.to_materialise(100)] == [3, 3]
    r.check_invariants()


def test_durable_scl_never_counts_records_dropped_before_the_drop_is_durable():
    """Drops lower the SCL in memory at once; a change logged earlier that becomes durable
    afterwards must not raise durable_scl past what memory still holds (a read would build a
    page without the dropped records, an ack would count them)."""
    records = chain_records([1, 2, 3, 4, 5, 6])
    r = SegmentReplica("v", 0)
    plan = r.check_append(1, "w1", (), incoming(records), MEMBERS)
    first = r.apply_append(plan)                 # logged, its fsync still running
    assert first.scl_after == 6 and r.durable_scl == 0
    r.bump_epoch(3, "rec", (), ())
    dropped = r.truncate(3, "rec", 5, 2)          # old copies 3..5, void 6: SCL 2 in memory
    assert dropped.scl_after == 2 and r.durable_scl == 0
    drop_seq = r.drop_seq
    refill = r.ingest(incoming(restamped(records[2:4], 3)))   # gossip refills 3, 4 (not durable yet)
    assert refill.scl_after == 4
    assert r.on_durable(first.scl_after, drop_seq - 1) and r.durable_scl == 2  # capped, not 6
    assert not r.on_durable(dropped.scl_after, drop_seq)   # the truncation is durable: the cap goes
    assert r.durable_scl == 2 and r.scl_cap is None
    assert r.on_durable(refill.scl_after, drop_seq) and r.durable_scl == 4
    r.check_invariants()


def test_a_copy_refilled_while_the_store_wrote_its_voided_predecessor_stays_unstored():
    """The materialiser's round takes copies, a stray truncation voids them and gossip refills
    the same LSNs at a newer epoch before the round ends: only the copies the round wrote are
    in the store, so the refilled ones must go in the next round (or a restart loses them)."""
    r = SegmentReplica("v", 0)
    append(r, chain_records([1, 2, 3, 4, 5, 6]))
    taken = r.take_unstored()  # the round's store write starts
    r.learn(Meta(3, "rec", (Truncation(2, 3),), ()))
    assert sorted(r.held) == [1, 2, 3]
    refilled = r.ingest(incoming(chain_records([1, 2, 3, 4, 5, 6], epoch=3)[3:]))
    assert [rec.lsn for rec, _ in refilled.records] == [4, 5, 6]
    r.on_stored(taken)  # the round ends
    assert [h.record.lsn for h in r.take_unstored()] == [4, 5, 6]
    assert all(r.held[lsn].in_store for lsn in (1, 2, 3))
