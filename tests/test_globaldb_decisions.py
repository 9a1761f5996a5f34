"""The global database's pure decisions (sixfold/globaldb/decisions.py) and the tracker's adopt."""

from __future__ import annotations

import pytest

from sixfold.globaldb.decisions import (EMPTY_SOURCE, ReplicaView, dense_run, durable_tails, seed_needed, seed_segment_tail,
                                        seed_sources, source_point)
from sixfold.volume.epochs import Truncation
from sixfold.volume.quorum import VolumeTracker
from sixfold.volume.records import FLAG_CPL, LogRecord, RecordKind, encode_record


def rec(lsn: int, prev: int, epoch: int = 1, page: int = 0, cpl: bool = True, byte: int = 0):
    record = LogRecord(lsn, prev, epoch, page, RecordKind.PAGE_DELTA, FLAG_CPL if cpl else 0, bytes([byte]))
    return record


def item(segment: int, record: LogRecord):
    return (segment, record, encode_record(record))


def view(address, segment, scl, vdl_hint, epoch=1, owner="writer-1", history=(), stamp=0.0):
    return ReplicaView(address, segment, epoch, owner, history, scl, vdl_hint, stamp)


def test_source_point_takes_the_highest_vdl_the_newest_epoch_and_the_fullest_member_per_segment():
    h2 = (Truncation(2, 10, 8),)
    views = [
        view("a", 0, scl=12, vdl_hint=11, stamp=5.0),
        view("b", 0, scl=14, vdl_hint=13, epoch=2, owner="writer-2", history=h2, stamp=7.0),
        view("c", 0, scl=20, vdl_hint=9),                   # fullest, but an old epoch: never fetched from
        view("d", 0, scl=13, vdl_hint=13, epoch=2, owner="writer-2", history=h2, stamp=6.5),
        view("b", 1, scl=3, vdl_hint=13, epoch=2, owner="writer-2", history=h2, stamp=7.5),
    ]
    point = source_point(views)
    assert (point.vdl, point.epoch, point.owner, point.history) == (13, 2, "writer-2", h2)
    assert point.vdl_unix_s == 6.5          # the first replica that heard of VDL 13
    assert point.fetch_from == {0: ("b", 14), 1: ("b", 3)}
    assert source_point([]) == EMPTY_SOURCE


def test_dense_run_is_the_gapless_continuation_in_lsn_order():
    segment_a = [item(0, rec(3, 0)), item(0, rec(5, 3)), item(0, rec(6, 5))]
    segment_b = [item(1, rec(4, 0)), item(1, rec(7, 4))]
    run, why = dense_run(segment_b + segment_a, after_lsn=2, up_to_lsn=7, history=())
    assert [r[1].lsn for r in run] == [3, 4, 5, 6, 7] and why == ""
    run, why = dense_run(segment_a, after_lsn=2, up_to_lsn=7, history=())   # segment b not fetched: a hole
    assert [r[1].lsn for r in run] == [3] and why == "LSN 4 is missing"
    run, _ = dense_run(segment_b + segment_a, after_lsn=2, up_to_lsn=5, history=())   # never past up_to
    assert [r[1].lsn for r in run] == [3, 4, 5]
    run, why = dense_run(segment_a + segment_b, after_lsn=4, up_to_lsn=7, history=())
    assert [r[1].lsn for r in run] == [5, 6, 7] and why == ""


def test_dense_run_leaves_out_void_records_and_old_copies_and_stops_at_a_conflict():
    history = (Truncation(2, 4, 3),)   # epoch 2 cut everything above 4 and re-stamped (3, 4]
    records = [item(0, rec(3, 0)), item(0, rec(4, 3)), item(0, rec(5, 4)),       # epoch 1: 4 is an old copy,
               item(0, rec(4, 3, epoch=2))]                                      # 5 is void
    run, why = dense_run(records, after_lsn=2, up_to_lsn=5, history=history)
    assert [(r[1].lsn, r[1].epoch) for r in run] == [(3, 1), (4, 2)] and why == "LSN 5 is missing"
    twice = [item(0, rec(3, 0)), item(1, rec(3, 0))]
    run, _ = dense_run(twice, after_lsn=2, up_to_lsn=3, history=())
    assert [r[1].lsn for r in run] == [3]                       # the same record twice is one record
    conflict = [item(0, rec(3, 0)), item(0, rec(3, 0, byte=1))]
    run, why = dense_run(conflict, after_lsn=2, up_to_lsn=3, history=())
    assert run == [] and "two different records at LSN 3" in why


def test_durable_tails_move_only_up_to_the_vdl():
    assert durable_tails({0: 2}, [(3, 1), (4, 0), (5, 1)], vdl=4) == {0: 4, 1: 3}
    assert durable_tails({0: 2}, [(3, 1)], vdl=2) == {0: 2}


def test_the_tracker_adopts_only_the_next_lsn_with_the_right_backlink():
    tracker = VolumeTracker(vdl=4, segment_tails={0: 4, 1: 2})
    for segment in (0, 1):
        tracker.add_pg(segment, tuple(f"n{i}" for i in range(6)))
    tracker.adopt_record(1, 5, 2, is_cpl=False)
    tracker.adopt_record(0, 6, 4, is_cpl=True)
    with pytest.raises(ValueError, match="expected 7"):
        tracker.adopt_record(0, 8, 6, is_cpl=True)
    with pytest.raises(ValueError, match="links back to 5"):
        tracker.adopt_record(0, 7, 5, is_cpl=True)
    for member in ("n0", "n1", "n2", "n3"):
        tracker.on_ack(1, member, 5)
        tracker.on_ack(0, member, 6)
    assert tracker.vdl == 6 and tracker.tail_at(1, 6) == 5


def test_the_replicator_position_round_trips_through_its_file(tmp_path):
    from sixfold.globaldb.replicator import POSITION_FILE, Position, load_position, save_position

    assert load_position(tmp_path) == Position(tails={})   # a new region starts at LSN 0
    position = Position(41, {0: 41, 3: 17}, 2, "reader-1", (Truncation(1, 0, 0), Truncation(2, 30, 28)))
    save_position(tmp_path, position)
    assert load_position(tmp_path) == position
    assert not (tmp_path / POSITION_FILE).with_suffix(".tmp").exists()


def test_the_position_keeps_the_seeded_lsn_and_reads_a_file_written_before_it(tmp_path):
    from sixfold.globaldb.replicator import POSITION_FILE, Position, load_position, save_position

    position = Position(50, {0: 50}, 3, "reader-2-1", (), seeded_lsn=44)
    save_position(tmp_path, position)
    assert load_position(tmp_path) == position
    (tmp_path / POSITION_FILE).write_text('{"vdl": 7, "tails": {}, "epoch": 1, "owner": "w", "history": []}')
    assert load_position(tmp_path).seeded_lsn == 0


def gc_view(address, segment, scl, records_gc_lsn, epoch=1):
    return ReplicaView(address, segment, epoch, "writer-1", (), scl, 20, 0.0, records_gc_lsn)


def test_a_region_is_seeded_only_when_it_holds_nothing_and_its_source_member_collected_records():
    views = [gc_view("a", 0, 20, 15), gc_view("b", 0, 18, 0), gc_view("a", 1, 9, 0), gc_view("c", 1, 7, 5)]
    point = source_point(views)
    assert point.fetch_from == {0: ("a", 20), 1: ("a", 9)}
    assert seed_needed(0, point, views)                 # "a" collected segment 0 from the start
    assert not seed_needed(12, point, views)            # a region with a position ships from it
    untouched = [gc_view("a", 0, 20, 1), gc_view("b", 0, 18, 30), gc_view("a", 1, 9, 0)]
    assert not seed_needed(0, source_point(untouched), untouched)   # the member fetched from has all of it


def test_seed_sources_need_a_read_quorum_at_the_newest_epoch_and_take_the_highest_scl():
    views = [gc_view(m, 0, scl, 0) for m, scl in (("a", 10), ("b", 12), ("c", 11))]
    views += [gc_view("d", 0, 30, 0, epoch=0)]       # an older epoch's replica: never a source
    views += [gc_view("a", 1, 4, 0), gc_view("b", 1, 4, 0), gc_view("c", 1, 4, 0)]
    assert seed_sources(views) == ({0: ("b", 12), 1: ("c", 4)}, "")
    sources, problem = seed_sources(views[:2] + views[4:])
    assert sources == {} and "segment 0: 2 member(s)" in problem
    assert seed_sources([])[1]


def test_the_seed_tail_needs_records_linked_from_the_materialised_point_and_a_member_that_had_them_all():
    records = [rec(12, 10), rec(15, 12), rec(19, 15)]
    assert seed_segment_tail(0, 10, 20, records, member_scl=19, quorum_scl=19) == (19, "")
    assert seed_segment_tail(0, 10, 20, [], member_scl=10, quorum_scl=10) == (10, "")   # nothing above the pages
    assert seed_segment_tail(0, 10, 20, records, member_scl=25, quorum_scl=30) == (19, "")   # past P0: all of it
    tail, problem = seed_segment_tail(0, 10, 20, [rec(12, 10), rec(19, 15)], member_scl=19, quorum_scl=19)
    assert tail == 0 and "links back to 15, not 12" in problem
    tail, problem = seed_segment_tail(0, 10, 20, records, member_scl=19, quorum_scl=23)
    assert tail == 0 and "may lack records" in problem   # a quorum member is past it: 20 may be this segment's
    assert "outside" in seed_segment_tail(0, 10, 18, records, member_scl=19, quorum_scl=19)[1]
