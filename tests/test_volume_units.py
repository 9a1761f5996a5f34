"""Unit tests for the pure storage-protocol pieces in sixfold/volume/.

records (codec, CRC, deltas), chain (SCL from backlinks), epochs (truncation history),
placement (six copies over three AZs), quorum (VolumeTracker) and recovery decisions
(same_record, newest_copies, compute_recovery_point and its re-stamping). The
whole-protocol model is in test_volume_model.py.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sixfold.volume.chain import SegmentChain
from sixfold.volume.epochs import (
    HistoryConflict,
    Truncation,
    durable_floor,
    merge_histories,
    record_is_current,
    record_is_valid,
)
from sixfold.volume.placement import (
    PlacementError,
    StorageNodeInfo,
    check_topology,
    place_segment,
    segment_of_page,
)
from sixfold.volume.quorum import LALExceeded, VolumeTracker
from sixfold.volume.records import (
    EMPTY_PAGE,
    FLAG_CPL,
    HEADER,
    PAGE_SIZE_BYTES,
    PAYLOAD_MAX_BYTES,
    LogRecord,
    RecordError,
    RecordKind,
    apply_delta,
    apply_record,
    decode_one,
    decode_records,
    encode_record,
    encode_records,
    make_delta,
)
from sixfold.volume.recovery import (
    RecoveryInvariantError,
    compute_recovery_point,
    newest_copies,
    same_record,
)

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def page(seed: int) -> bytes:
    return random.Random(seed).randbytes(PAGE_SIZE_BYTES)


def delta_record(lsn=5, prev=3, epoch=2, page_no=17, flags=FLAG_CPL, payload=b"\x00\x00\x03\x00abc") -> LogRecord:
    return LogRecord(lsn, prev, epoch, page_no, RecordKind.PAGE_DELTA, flags, payload)


SAMPLE_RECORDS = [
    delta_record(),
    delta_record(lsn=1, prev=0, epoch=1, flags=0, payload=b""),
    LogRecord(9, 0, 7, 3, RecordKind.FULL_PAGE, 0, page(1)),
    LogRecord(2**40, 2**40 - 1, 2**33, 2**32 - 1, RecordKind.VOLUME_SIZE, FLAG_CPL, b""),
    delta_record(payload=bytes(range(256)) * 4),
]


# --- records: codec ----------------------------------------------------------------------


@pytest.mark.parametrize("record", SAMPLE_RECORDS, ids=lambda r: f"{r.kind.name}-{r.lsn}")
def test_record_round_trip(record):
    blob = record.encode()
    assert blob == encode_record(record)
    assert decode_records(blob) == [record]
    decoded, end = decode_one(memoryview(blob), 0)
    assert decoded == record and end == len(blob)
    assert decoded.is_cpl == bool(record.flags & FLAG_CPL)


def test_concatenated_records_round_trip_in_order():
    blob = encode_records(SAMPLE_RECORDS)
    assert decode_records(blob) == SAMPLE_RECORDS
    assert decode_records(memoryview(blob)) == SAMPLE_RECORDS
    assert decode_records(b"") == []


@given(
    lsn=st.integers(1, 2**63), gap=st.integers(1, 2**20), epoch=st.integers(1, 2**63),
    page_no=st.integers(0, 2**32 - 1), flags=st.integers(0, 255), payload=st.binary(max_size=300),
)
@FAST
def test_record_round_trip_any_fields(lsn, gap, epoch, page_no, flags, payload):
    record = LogRecord(lsn, max(0, lsn - gap), epoch, page_no, RecordKind.PAGE_DELTA, flags, payload)
    assert decode_records(encode_record(record)) == [record]


@pytest.mark.parametrize("record", SAMPLE_RECORDS[:3], ids=["delta", "empty-delta", "full-page"])
def test_every_single_bit_flip_is_rejected(record):
    blob = record.encode()
    for bit in range(len(blob) * 8):
        damaged = bytearray(blob)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RecordError):
            decode_records(bytes(damaged))


@pytest.mark.parametrize("record", SAMPLE_RECORDS[:3], ids=["delta", "empty-delta", "full-page"])
def test_every_truncation_is_rejected(record):
    blob = record.encode()
    for size in range(1, len(blob)):  # 0 bytes is an empty batch, not a damaged record
        with pytest.raises(RecordError):
            decode_records(blob[:size])
    # and a damaged record after a good one fails the whole batch
    good = SAMPLE_RECORDS[0].encode()
    for size in range(1, len(blob)):
        with pytest.raises(RecordError):
            decode_records(good + blob[:size])


def _raw_record(lsn, prev, epoch, page_no, kind, flags, payload: bytes, body_len=None) -> bytes:
    """A record with a valid CRC whatever its fields: checks that decode validates fields too."""
    fixed = HEADER.size - 8
    body = struct.pack("<QQQIBB", lsn, prev, epoch, page_no, kind, flags) + payload
    return struct.pack("<II", zlib.crc32(body), fixed + len(payload) if body_len is None else body_len) + body


@pytest.mark.parametrize("fields", [
    (5, 5, 1, 0, RecordKind.PAGE_DELTA, 0, b""),        # backlink not below the lsn
    (5, 9, 1, 0, RecordKind.PAGE_DELTA, 0, b""),
    (0, 0, 1, 0, RecordKind.PAGE_DELTA, 0, b""),        # lsn 0
    (5, 3, 0, 0, RecordKind.PAGE_DELTA, 0, b""),        # epoch 0
    (5, 3, 1, 0, 99, 0, b""),                           # unknown kind
    (5, 3, 1, 0, 0, 0, b""),
    (5, 3, 1, 0, RecordKind.FULL_PAGE, 0, b"short"),    # a full page must be a page
], ids=["prev=lsn", "prev>lsn", "lsn0", "epoch0", "kind99", "kind0", "short-full-page"])
def test_decode_rejects_bad_fields_even_with_a_good_crc(fields):
    with pytest.raises(RecordError):
        decode_records(_raw_record(*fields))


def test_decode_rejects_bad_lengths():
    fixed = HEADER.size - 8
    with pytest.raises(RecordError, match="length"):
        decode_records(_raw_record(5, 3, 1, 0, RecordKind.PAGE_DELTA, 0, b"", body_len=fixed - 1))
    with pytest.raises(RecordError, match="length"):
        decode_records(_raw_record(5, 3, 1, 0, RecordKind.PAGE_DELTA, 0, b"", body_len=fixed + PAYLOAD_MAX_BYTES + 1))


def test_decode_limits_records_per_batch():
    blob = encode_records([delta_record(lsn=i + 1, prev=i, flags=0, payload=b"") for i in range(5)])
    assert len(decode_records(blob, max_records=5)) == 5
    with pytest.raises(RecordError, match="more than 4"):
        decode_records(blob, max_records=4)


@pytest.mark.parametrize("record", [
    delta_record(lsn=0, prev=0),
    delta_record(lsn=4, prev=4),
    delta_record(epoch=0),
    LogRecord(5, 3, 1, 0, RecordKind.FULL_PAGE, 0, b"x" * 100),
    delta_record(payload=b"x" * (PAYLOAD_MAX_BYTES + 1)),
])
def test_encode_refuses_what_decode_would_refuse(record):
    with pytest.raises(RecordError):
        record.encode()


# --- records: deltas -----------------------------------------------------------------------


edits = st.lists(st.tuples(st.integers(0, PAGE_SIZE_BYTES - 1), st.binary(min_size=1, max_size=80)), max_size=40)


def edited(old: bytes, changes) -> bytes:
    new = bytearray(old)
    for offset, data in changes:
        data = data[: PAGE_SIZE_BYTES - offset]
        new[offset:offset + len(data)] = data
    return bytes(new)


@given(old_seed=st.integers(0, 2**32), changes=edits)
@FAST
def test_delta_round_trip_on_edited_pages(old_seed, changes):
    old = page(old_seed) if old_seed % 3 else EMPTY_PAGE
    new = edited(old, changes)
    delta = make_delta(old, new)
    if delta is not None:
        assert len(delta) < PAGE_SIZE_BYTES
        assert apply_delta(old, delta) == new
        record = LogRecord(2, 1, 1, 0, RecordKind.PAGE_DELTA, 0, delta)
        assert apply_record(old, decode_records(record.encode())[0]) == new


@given(old_seed=st.integers(0, 2**32), new_seed=st.integers(0, 2**32), stride=st.integers(1, 64))
@FAST
def test_delta_round_trip_on_unrelated_pages(old_seed, new_seed, stride):
    # every stride-th byte from an unrelated page: from sparse to total change
    old, other = page(old_seed), page(new_seed)
    new = bytes(o if i % stride else x for i, (o, x) in enumerate(zip(old, other)))
    delta = make_delta(old, new)
    if delta is None:
        return
    assert apply_delta(old, delta) == new


def test_delta_edges():
    old = page(7)
    assert make_delta(old, old) == b""
    assert apply_delta(old, b"") == old
    assert make_delta(old, page(8)) is None                   # all different: send the full page
    last = old[:-1] + bytes([old[-1] ^ 0xFF])
    assert apply_delta(old, make_delta(old, last)) == last    # a change in the last byte
    first = bytes([old[0] ^ 1]) + old[1:]
    assert apply_delta(old, make_delta(old, first)) == first
    # two changes closer than a patch header are bridged into one patch
    near = bytearray(old)
    near[100] ^= 1
    near[103] ^= 1
    assert len(make_delta(old, bytes(near))) == 4 + 4
    assert apply_delta(old, make_delta(old, bytes(near))) == bytes(near)


def test_apply_delta_rejects_damage():
    old = page(3)
    with pytest.raises(RecordError):
        apply_delta(old, b"\x00")                                     # truncated patch header
    with pytest.raises(RecordError):
        apply_delta(old, struct.pack("<HH", 4090, 10) + b"x" * 10)   # past the page end
    with pytest.raises(RecordError):
        apply_delta(old, struct.pack("<HH", 0, 10) + b"x" * 3)       # payload shorter than it says


def test_apply_record_kinds():
    image = page(4)
    assert apply_record(None, LogRecord(1, 0, 1, 0, RecordKind.FULL_PAGE, 0, image)) == image
    assert apply_record(image, LogRecord(2, 1, 1, 0, RecordKind.VOLUME_SIZE, 0, b"")) == image
    assert apply_record(None, LogRecord(2, 1, 1, 0, RecordKind.VOLUME_SIZE, 0, b"")) is None
    patched = apply_record(None, LogRecord(2, 1, 1, 0, RecordKind.PAGE_DELTA, 0, struct.pack("<HH", 1, 2) + b"hi"))
    assert patched == b"\x00hi" + bytes(PAGE_SIZE_BYTES - 3)


# --- chain -------------------------------------------------------------------------------


def test_chain_in_order():
    chain = SegmentChain()
    assert (chain.scl, chain.highest_lsn, chain.has_gap()) == (0, 0, False)
    assert chain.add(3, 0)
    assert chain.add(8, 3)
    assert (chain.scl, chain.highest_lsn, 8 in chain, 5 in chain) == (8, 8, True, False)


def test_chain_out_of_order_arrivals_and_gaps():
    chain = SegmentChain()
    assert not chain.add(8, 5)          # 5 is missing: a gap
    assert not chain.add(12, 8)
    assert (chain.scl, chain.highest_lsn, chain.has_gap()) == (0, 12, True)
    assert chain.add(2, 0)
    assert chain.scl == 2
    assert chain.add(5, 2)              # fills the gap: SCL runs to the end
    assert (chain.scl, chain.has_gap()) == (12, False)
    assert not chain.add(5, 2)          # a duplicate changes nothing
    assert chain.lsns_above(4) == [5, 8, 12]
    assert chain.lsns_above(12) == []


@given(data=st.data())
@FAST
def test_chain_scl_is_the_longest_complete_prefix(data):
    # a segment's records: increasing LSNs with backlinks; a replica receives any subset in any order
    lsns = sorted(data.draw(st.sets(st.integers(1, 200), min_size=1, max_size=40)))
    chain_of = dict(zip(lsns, [0] + lsns[:-1]))
    arrived = data.draw(st.permutations(lsns))[: data.draw(st.integers(0, len(lsns)))]
    chain = SegmentChain()
    held: set[int] = set()
    for lsn in arrived:
        chain.add(lsn, chain_of[lsn])
        held.add(lsn)
        expected = 0
        for candidate in lsns:
            if candidate not in held:
                break
            expected = candidate
        assert chain.scl == expected
        assert chain.highest_lsn == max(held)
        assert chain.has_gap() == (max(held) > expected)


def test_truncate_above_recomputes_scl():
    chain = SegmentChain()
    for lsn, prev in [(2, 0), (4, 2), (7, 4), (9, 7), (15, 12)]:
        chain.add(lsn, prev)
    assert chain.scl == 9
    assert chain.truncate_above(9) == [15]
    assert (chain.scl, chain.highest_lsn) == (9, 9)
    assert chain.truncate_above(3) == [4, 7, 9]
    assert (chain.scl, chain.highest_lsn, 4 in chain) == (2, 2, False)
    assert chain.truncate_above(3) == []
    assert chain.add(4, 2) and chain.scl == 4   # a record can come back (a newer epoch's copy)


def test_truncate_above_keeps_what_keep_says():
    chain = SegmentChain()
    for lsn, prev in [(2, 0), (4, 2), (7, 4), (9, 7)]:
        chain.add(lsn, prev)
    assert chain.truncate_above(2, keep=lambda lsn: lsn != 7) == [7]
    assert (chain.scl, chain.lsns_above(0)) == (4, [2, 4, 9])   # 9 stays, behind a gap now
    assert chain.add(7, 4) and chain.scl == 9


def test_rebase_at_a_chain_position():
    chain = SegmentChain()
    for lsn, prev in [(2, 0), (4, 2), (7, 4), (11, 9)]:
        chain.add(lsn, prev)
    chain.rebase(4)
    assert (chain.base_lsn, chain.scl, chain.lsns_above(0)) == (4, 7, [7, 11])
    assert 2 not in chain
    assert not chain.add(2, 0)          # at or below the base: already compacted
    assert chain.add(9, 7) and chain.scl == 11
    assert chain.truncate_above(7) == [9, 11]
    assert chain.scl == 7               # recomputed from the base
    chain.rebase(3)                     # below the base: nothing to do
    assert chain.base_lsn == 4
    with pytest.raises(AssertionError):
        chain.rebase(8)                 # above the SCL


def test_chain_with_a_base():
    chain = SegmentChain(base_lsn=10)
    assert (chain.scl, chain.highest_lsn) == (10, 10)
    assert not chain.add(9, 4)
    assert chain.add(12, 10) and chain.scl == 12


# --- epochs --------------------------------------------------------------------------------


def test_record_validity():
    history = (Truncation(2, 5),)
    assert record_is_valid(5, 1, history)       # at the truncation point: kept
    assert not record_is_valid(6, 1, history)   # above it, older epoch: void
    assert record_is_valid(6, 2, history)       # written under the truncating epoch
    assert record_is_valid(6, 3, history)
    assert record_is_valid(100, 1, ())
    # a replica that missed recoveries applies the whole history
    history = (Truncation(2, 5), Truncation(4, 9))
    assert record_is_valid(5, 1, history)
    assert not record_is_valid(6, 1, history)
    assert record_is_valid(9, 2, history) and record_is_valid(9, 3, history)
    assert not record_is_valid(10, 3, history)
    assert record_is_valid(10, 4, history)


def test_record_currency():
    history = (Truncation(3, 9, 4),)     # recovery 3 kept up to 9 and re-stamped (4, 9]
    assert record_is_current(4, 1, history)          # at or below the baseline: not re-stamped
    assert not record_is_current(5, 1, history)      # an old copy of a re-stamped record ...
    assert record_is_valid(5, 1, history)            # ... but not void
    assert record_is_current(5, 3, history) and record_is_current(9, 4, history)
    assert not record_is_current(10, 1, history) and not record_is_valid(10, 1, history)
    # current implies valid, for any history
    history = (Truncation(2, 5, 5), Truncation(4, 9, 2), Truncation(6, 12, 11))
    for lsn in range(15):
        for epoch in range(1, 8):
            assert not record_is_current(lsn, epoch, history) or record_is_valid(lsn, epoch, history)
    assert not record_is_current(3, 3, history) and record_is_current(3, 4, history)
    assert record_is_current(11, 4, history) and not record_is_current(12, 5, history)


def test_truncation_baseline_defaults_to_the_start_and_never_exceeds_it():
    assert Truncation(2, 5) == Truncation(2, 5, 5) == Truncation(2, 5, None)
    assert Truncation(2, 5).baseline_lsn == 5 and Truncation(2, 5, 0).baseline_lsn == 0
    assert all(record_is_current(lsn, 1, (Truncation(2, 5),)) == record_is_valid(lsn, 1, (Truncation(2, 5),))
               for lsn in range(10))   # no baseline: nothing is an old copy
    with pytest.raises(ValueError):
        Truncation(2, 5, 6)
    with pytest.raises(ValueError):
        Truncation(2, 5, -1)


def test_merge_histories():
    a = (Truncation(2, 5), Truncation(4, 9))
    b = [Truncation(3, 7), Truncation(2, 5)]
    merged = merge_histories(a, b)
    assert merged == (Truncation(2, 5), Truncation(3, 7), Truncation(4, 9))
    assert merge_histories(merged, a, b) == merged
    assert merge_histories() == ()
    assert merge_histories((), ()) == ()


def test_merge_conflict_is_refused():
    with pytest.raises(HistoryConflict, match="epoch 2"):
        merge_histories((Truncation(2, 5),), (Truncation(2, 6),))
    with pytest.raises(HistoryConflict):
        merge_histories([Truncation(3, 1), Truncation(3, 2)])
    with pytest.raises(HistoryConflict, match="baseline"):   # the same start, another baseline
        merge_histories((Truncation(2, 5, 1),), (Truncation(2, 5, 3),))
    with pytest.raises(HistoryConflict):                     # no baseline means baseline = start
        merge_histories((Truncation(2, 5),), (Truncation(2, 5, 0),))
    assert merge_histories((Truncation(2, 5, 1),), (Truncation(2, 5, 1),)) == (Truncation(2, 5, 1),)


def test_durable_floor():
    assert durable_floor(()) == 0
    assert durable_floor((Truncation(2, 5), Truncation(3, 9))) == 9


@given(st.lists(st.tuples(st.integers(1, 8), st.integers(0, 50)), max_size=8).map(
    lambda pairs: tuple(Truncation(e, s) for e, s in dict(pairs).items())))
@FAST
def test_merge_is_order_free(truncations):
    halves = truncations[::2], truncations[1::2]
    assert merge_histories(*halves) == merge_histories(*reversed(halves)) == tuple(sorted(truncations))


# --- placement ------------------------------------------------------------------------------


def nodes(per_az: dict[str, int]) -> list[StorageNodeInfo]:
    return [StorageNodeInfo(f"{az}-{i}", az, f"127.0.{k}.{i}:7000")
            for k, (az, n) in enumerate(per_az.items()) for i in range(n)]


@pytest.mark.parametrize("per_az", [2, 3, 4, 5])
def test_placement_two_per_az_six_distinct(per_az):
    cluster = nodes({"az1": per_az, "az2": per_az, "az3": per_az})
    for segment in range(30):
        members = place_segment(segment, cluster)
        assert len(members) == 6 and len({m.node_id for m in members}) == 6
        by_az: dict[str, int] = {}
        for m in members:
            by_az[m.az] = by_az.get(m.az, 0) + 1
        assert by_az == {"az1": 2, "az2": 2, "az3": 2}


def test_placement_is_deterministic_whatever_the_node_order():
    cluster = nodes({"a": 3, "b": 4, "c": 2})
    shuffled = list(cluster)
    random.Random(5).shuffle(shuffled)
    for segment in range(20):
        assert place_segment(segment, cluster) == place_segment(segment, shuffled)


def test_placement_spreads_segments():
    cluster = nodes({"a": 3, "b": 3, "c": 3})
    use = {n.node_id: 0 for n in cluster}
    placements = set()
    for segment in range(30):
        members = place_segment(segment, cluster)
        placements.add(tuple(m.node_id for m in members))
        for m in members:
            use[m.node_id] += 1
    assert len(placements) > 1
    assert min(use.values()) == max(use.values()) == 20   # 30 segments x 2 per AZ / 3 nodes per AZ
    uneven = nodes({"a": 4, "b": 5, "c": 2})
    use = {n.node_id: 0 for n in uneven}
    for segment in range(40):
        for m in place_segment(segment, uneven):
            use[m.node_id] += 1
    for az in "abc":
        counts = [v for k, v in use.items() if k.startswith(az)]
        assert max(counts) - min(counts) <= 2, (az, counts)


@pytest.mark.parametrize("per_az, match", [
    ({"a": 3, "b": 3}, "span 2 AZ"),
    ({"a": 6}, "span 1 AZ"),
    ({"a": 2, "b": 2, "c": 2, "d": 2}, "span 4 AZ"),
    ({"a": 2, "b": 1, "c": 2}, "AZ b has 1 storage node"),
    ({}, "span 0 AZ"),
])
def test_placement_errors_are_clear(per_az, match):
    with pytest.raises(PlacementError, match=match):
        place_segment(0, nodes(per_az))


def test_placement_refuses_duplicate_node_ids():
    cluster = nodes({"a": 2, "b": 2, "c": 2})
    cluster.append(StorageNodeInfo("a-0", "a", "127.0.9.9:7000"))
    with pytest.raises(PlacementError, match="unique"):
        check_topology(cluster)


def test_segment_of_page():
    assert [segment_of_page(p, 256) for p in (0, 255, 256, 1000)] == [0, 0, 1, 3]


# --- quorum: VolumeTracker ------------------------------------------------------------------

MEMBERS = {seg: tuple(f"s{seg}-{i}" for i in range(6)) for seg in range(3)}


def tracker(vdl=0, tails=None, lal=100) -> VolumeTracker:
    t = VolumeTracker(vdl, tails, lal_records=lal)
    for seg, members in MEMBERS.items():
        t.add_pg(seg, members)
    return t


def ack_all(t: VolumeTracker, seg: int, scl: int, members=range(6)) -> bool:
    moved = False
    for i in members:
        moved |= t.on_ack(seg, MEMBERS[seg][i], scl)
    return moved


def test_issue_allocates_dense_lsns_with_backlinks():
    t = tracker()
    first = t.issue_transaction([0, 1, 0])
    second = t.issue_transaction([1])
    assert [(r.lsn, r.prev_lsn, r.segment, r.is_cpl) for r in first + second] == [
        (1, 0, 0, False), (2, 0, 1, False), (3, 1, 0, True), (4, 2, 1, True),
    ]
    assert (t.segment_tail(0), t.segment_tail(1), t.segment_tail(2)) == (3, 4, 0)
    assert t.oldest_pending().lsn == 1


def test_tracker_after_recovery_continues_the_chains():
    t = tracker(vdl=10, tails={0: 9, 1: 4})
    assert (t.vdl, t.vcl, t.next_lsn) == (10, 10, 11)
    records = t.issue_transaction([1, 0, 2])
    assert [(r.lsn, r.prev_lsn) for r in records] == [(11, 4), (12, 9), (13, 0)]


def test_vdl_needs_four_of_six_and_ignores_order():
    t = tracker()
    t.issue_transaction([0])
    assert not ack_all(t, 0, 1, members=[5, 2, 0])
    assert (t.vdl, t.pg(0).pgcl) == (0, 0)
    assert t.on_ack(0, MEMBERS[0][3], 1)            # the 4th: durable
    assert (t.vdl, t.vcl, t.is_durable(1)) == (1, 1, True)
    assert not t.on_ack(0, MEMBERS[0][4], 1)        # a 5th changes nothing


def test_acks_out_of_order_across_pgs_and_within_a_transaction():
    t = tracker()
    t.issue_transaction([0, 1])        # 1 (seg 0), 2 (seg 1, CPL)
    t.issue_transaction([2])           # 3 (seg 2, CPL)
    assert not ack_all(t, 2, 3, members=range(4))   # 3 is complete, but 1 and 2 are not
    assert not ack_all(t, 1, 2, members=range(4))
    assert (t.vcl, t.vdl) == (0, 0)
    assert [pg.segment for pg in t.lagging_pgs()] == [0]
    assert ack_all(t, 0, 1, members=range(2, 6))    # now everything moves at once
    assert (t.vcl, t.vdl, t.oldest_pending(), t.lagging_pgs()) == (3, 3, None, [])


def test_vdl_stops_at_the_last_consistency_point():
    t = tracker()
    t.issue_transaction([0, 0, 0])     # 1, 2, 3 (CPL)
    ack_all(t, 0, 2, members=range(4))
    assert (t.vcl, t.vdl) == (2, 0)     # complete, but in the middle of a transaction
    ack_all(t, 0, 3, members=range(4))
    assert (t.vcl, t.vdl) == (3, 3)


def test_duplicate_stale_and_foreign_acks_count_for_nothing():
    t = tracker()
    t.issue_transaction([0])
    t.issue_transaction([0])
    for i in range(3):
        t.on_ack(0, MEMBERS[0][i], 2)
    assert not t.on_ack(0, MEMBERS[0][0], 2)        # duplicate
    assert not t.on_ack(0, MEMBERS[0][1], 1)        # stale: SCL only moves up
    assert t.pg(0).scl_by_member[MEMBERS[0][1]] == 2
    assert not t.on_ack(0, "intruder", 2)           # not a member
    assert not t.on_ack(7, MEMBERS[0][3], 2)        # unknown segment
    assert not t.on_ack(0, MEMBERS[1][0], 2)        # a member of another PG
    assert t.vdl == 0
    assert t.on_ack(0, MEMBERS[0][3], 2) and t.vdl == 2


def test_readable_members():
    t = tracker()
    t.issue_transaction([0])
    t.issue_transaction([0])
    t.on_ack(0, MEMBERS[0][0], 2)
    t.on_ack(0, MEMBERS[0][1], 1)
    assert t.readable_members(0, 1) == [MEMBERS[0][0], MEMBERS[0][1]]
    assert t.readable_members(0, 2) == [MEMBERS[0][0]]
    assert t.readable_members(9, 1) == []


def test_lal_back_pressure():
    t = tracker(lal=5)
    assert t.room() == 5
    t.issue_transaction([0, 1, 2])
    assert t.room() == 2
    with pytest.raises(LALExceeded):
        t.issue_transaction([0, 0, 0])
    assert (t.next_lsn, t.room(), t.segment_tail(0)) == (4, 2, 1)   # a refused transaction takes no LSN
    t.issue_transaction([0, 0])
    assert t.room() == 0
    with pytest.raises(LALExceeded):
        t.issue_transaction([1])
    for seg, scl in ((0, 5), (1, 2), (2, 3)):
        ack_all(t, seg, scl)
    assert t.vdl == 5 and t.room() == 5


def test_add_pg_is_idempotent_but_membership_cannot_drift():
    t = tracker()
    t.add_pg(0, MEMBERS[0])
    assert t.has_pg(0) and not t.has_pg(9)
    with pytest.raises(AssertionError):
        t.add_pg(0, MEMBERS[1])
    with pytest.raises(AssertionError):
        t.add_pg(9, ("a", "b", "c", "d", "e"))
    with pytest.raises(AssertionError):
        t.issue_transaction([9])


@given(data=st.data())
@FAST
def test_vdl_matches_a_brute_force_definition(data):
    """Random transactions, acks of monotone member SCLs delivered in any order with repeats."""
    t = tracker(lal=10_000)
    txns = data.draw(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=4), min_size=1, max_size=12))
    issued = [r for segs in txns for r in t.issue_transaction(segs)]
    by_seg = {seg: [r.lsn for r in issued if r.segment == seg] for seg in MEMBERS}
    acks = []
    for seg, lsns in by_seg.items():
        for i, member in enumerate(MEMBERS[seg]):
            # a member's chain grows in order: it acks some prefix of its segment's LSNs, step by step
            reached = data.draw(st.integers(0, len(lsns)), label=f"{seg}/{i} reached")
            acks.extend((seg, member, lsn) for lsn in lsns[:reached])
    acks = data.draw(st.permutations(acks))
    acks += data.draw(st.lists(st.sampled_from(acks), max_size=10)) if acks else []
    best: dict[tuple[int, str], int] = {}
    for seg, member, scl in acks:
        vdl_before = t.vdl
        moved = t.on_ack(seg, member, scl)
        best[(seg, member)] = max(best.get((seg, member), 0), scl)
        assert moved == (t.vdl != vdl_before)
        assert t.vdl >= vdl_before
    pgcl = {}
    for seg in MEMBERS:
        ranked = sorted((best.get((seg, m), 0) for m in MEMBERS[seg]), reverse=True)
        pgcl[seg] = ranked[3]
    vcl = 0
    for r in issued:
        if pgcl[r.segment] < r.lsn:
            break
        vcl = r.lsn
    vdl = max((r.lsn for r in issued if r.is_cpl and r.lsn <= vcl), default=0)
    assert (t.vcl, t.vdl) == (vcl, vdl)


# --- recovery: re-stamping the records it repairs ----------------------------------------------


def rec(lsn, prev, epoch=1, page_no=0, cpl=True, payload=None) -> LogRecord:
    payload = struct.pack("<HH", 0, 4) + struct.pack("<I", lsn) if payload is None else payload
    return LogRecord(lsn, prev, epoch, page_no, RecordKind.PAGE_DELTA, FLAG_CPL if cpl else 0, payload)


def test_same_record_ignores_only_the_epoch():
    a = rec(5, 3, epoch=2)
    assert same_record(a, a)
    assert same_record(a, dataclasses.replace(a, epoch=7)) and same_record(dataclasses.replace(a, epoch=7), a)
    for field, value in [("lsn", 6), ("prev_lsn", 2), ("page", 1), ("kind", RecordKind.FULL_PAGE),
                         ("flags", 0), ("payload", a.payload + b"x")]:
        other = dataclasses.replace(a, **{field: value})
        assert not same_record(a, other), field
        assert not same_record(a, dataclasses.replace(other, epoch=a.epoch + 1)), field


def test_newest_copies_keeps_the_highest_epoch_per_lsn_in_lsn_order():
    r1, r2, r3 = rec(1, 0), rec(2, 1, cpl=False), rec(3, 2)
    r2_e4, r2_e3, r3_e2 = (dataclasses.replace(r2, epoch=4), dataclasses.replace(r2, epoch=3),
                           dataclasses.replace(r3, epoch=2))
    assert newest_copies([]) == []
    assert newest_copies([r3, r2_e3, r1, r2_e4, r2, r3_e2, r1]) == [r1, r2_e4, r3_e2]
    assert newest_copies([r3_e2, r3, r3_e2]) == [r3_e2]   # duplicates are idempotent
    assert newest_copies([r2, r1]) == [r1, r2]


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), max_size=20))
@FAST
def test_newest_copies_is_order_free(copies):
    records = [dataclasses.replace(rec(lsn, lsn - 1), epoch=epoch) for lsn, epoch in copies]
    newest = newest_copies(records)
    assert newest == newest_copies(list(reversed(records)))
    assert [r.lsn for r in newest] == sorted({lsn for lsn, _ in copies})
    assert all(r.epoch == max(e for lsn, e in copies if lsn == r.lsn) for r in newest)


def test_newest_copies_refuses_two_records_at_one_lsn():
    a = rec(4, 3)
    with pytest.raises(RecoveryInvariantError, match="LSN 4"):
        newest_copies([a, dataclasses.replace(a, payload=b"other", epoch=2)])
    with pytest.raises(RecoveryInvariantError):  # even in the same epoch
        newest_copies([a, dataclasses.replace(a, prev_lsn=1)])


def test_recovery_point_restamps_the_repaired_records_with_the_new_epoch():
    # segment 0: 1 2(CPL) 4 5(CPL, e2) 7 ; segment 1: 3 6(CPL); 7 is an incomplete transaction
    seg0 = [rec(1, 0, cpl=False), rec(2, 1), rec(4, 2, cpl=False), rec(5, 4, epoch=2), rec(7, 5, cpl=False)]
    seg1 = [rec(3, 0, page_no=8, cpl=False), rec(6, 3, page_no=8)]
    point = compute_recovery_point(0, {0: seg0, 1: seg1}, {0: [2, 5], 1: [0, 6]}, new_epoch=5)
    assert (point.baseline, point.vcl, point.vdl, point.discarded_lsns) == (0, 7, 6, 1)
    assert point.segment_tails == {0: 5, 1: 6}
    assert point.repair == {
        0: tuple(dataclasses.replace(r, epoch=5) for r in seg0[:4]),
        1: tuple(dataclasses.replace(r, epoch=5) for r in seg1),
    }
    for seg, records in point.repair.items():  # only the epoch changed
        originals = {r.lsn: r for r in seg0 + seg1}
        assert all(same_record(r, originals[r.lsn]) and r.epoch == 5 for r in records)
    assert seg0[0].epoch == 1  # the records read are not touched (frozen; a copy is repaired)


def test_recovery_point_restamps_only_above_the_baseline():
    records = [rec(1, 0), rec(2, 1), rec(3, 2, cpl=False), rec(4, 3)]
    point = compute_recovery_point(2, {0: records}, {0: [2, 2, 4]}, new_epoch=3)
    assert (point.vcl, point.vdl) == (4, 4)
    assert point.repair == {0: (dataclasses.replace(records[2], epoch=3), dataclasses.replace(records[3], epoch=3))}
    # nothing above the baseline: nothing to repair, nothing re-stamped
    point = compute_recovery_point(4, {0: records}, {0: [4]}, new_epoch=3)
    assert (point.vdl, point.repair, point.segment_tails) == (4, {}, {0: 4})


def test_recovery_point_takes_copies_of_one_record_in_several_epochs():
    # a replica holds LSN 2 as written (e1), another as re-stamped by an earlier recovery (e3)
    one, two = rec(1, 0, cpl=False), rec(2, 1)
    copies = [one, two, dataclasses.replace(two, epoch=3), dataclasses.replace(one, epoch=2)]
    point = compute_recovery_point(0, {0: copies}, {0: [2, 2, 2]}, new_epoch=4)
    assert point.vdl == 2
    assert point.repair == {0: (dataclasses.replace(one, epoch=4), dataclasses.replace(two, epoch=4))}


def test_recovery_point_never_lowers_an_epoch():
    # a recoverer that a newer recovery (epoch 6) fenced out can read a copy that one re-stamped:
    # the copy keeps the higher epoch (storage then refuses it from the older epoch's Append)
    records = [rec(1, 0, epoch=6)]
    point = compute_recovery_point(0, {0: records}, {0: [1]}, new_epoch=4)
    assert point.repair == {0: (records[0],)}


def test_recovery_point_refuses_two_records_at_one_lsn():
    a = rec(3, 2)
    with pytest.raises(RecoveryInvariantError, match="LSN 3"):  # same segment, different contents
        compute_recovery_point(0, {0: [rec(1, 0), rec(2, 1), a, dataclasses.replace(a, payload=b"zz", epoch=2)]},
                               {0: [0]}, new_epoch=3)
    with pytest.raises(RecoveryInvariantError, match="segments"):  # one LSN in two segments
        compute_recovery_point(0, {0: [rec(1, 0)], 1: [rec(1, 0, page_no=8)]}, {0: [0], 1: [0]}, new_epoch=3)
    with pytest.raises(RecoveryInvariantError):  # even the same record: an LSN belongs to one segment
        compute_recovery_point(0, {0: [a], 1: [dataclasses.replace(a, epoch=2)]}, {}, new_epoch=3)
    # at or below the baseline nothing is compared: those LSNs are not read again
    point = compute_recovery_point(3, {0: [a, dataclasses.replace(a, payload=b"zz")]}, {0: [3]}, new_epoch=3)
    assert (point.vdl, point.repair) == (3, {})
