"""The multi-writer decisions (sixfold/volume/multiwriter.py) against a brute-force oracle."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sixfold.volume.multiwriter import (HEADER_BYTES, Adjudicator, CommitRequest, Conflict, ConflictTable,
                                        merge_page1)

PAGE = 4096
FIELDS = (28, 32, 36, 40, 60)   # size, freelist trunk, freelist count, schema cookie, user version


def page0(fields: dict[int, int], body: int, counter: int = 0) -> bytes:
    image = bytearray(PAGE)
    image[:16] = b"SQLite format 3\x00"
    for offset, value in fields.items():
        struct.pack_into(">I", image, offset, value)
    struct.pack_into(">I", image, 24, counter)
    struct.pack_into(">I", image, 92, counter)
    struct.pack_into(">I", image, HEADER_BYTES, body)
    return bytes(image)


def fields_of(image: bytes) -> dict[int, int]:
    return {o: struct.unpack_from(">I", image, o)[0] for o in FIELDS}


def body_of(image: bytes) -> int:
    return struct.unpack_from(">I", image, HEADER_BYTES)[0]


@dataclass
class Txn:
    read_at: int          # index into the committed states (0 = the start)
    pages: frozenset[int]
    fields: tuple[int, ...]   # header fields it changes
    body: bool                # changes the schema table


txns = st.lists(st.builds(
    Txn,
    read_at=st.integers(0, 40),
    pages=st.frozensets(st.integers(1, 8), max_size=4),
    fields=st.lists(st.sampled_from(FIELDS), max_size=2, unique=True).map(tuple),
    body=st.booleans(),
), min_size=1, max_size=40)


def run_schedule(schedule: list[Txn], pages_max: int):
    """Runs the schedule through the Adjudicator; returns (decisions, committed, oracle decisions)."""
    adjudicator = Adjudicator(floor_lsn=1, pages_max=pages_max)
    states = [(1, page0({o: 1 for o in FIELDS}, body=1))]   # (LSN, page 0) after each commit
    committed = []   # (lsn, read_lsn, pages, fields, body)
    next_value = 2   # every written header value is new: value equality == version equality
    next_lsn = 2
    decisions, oracle = [], []
    for txn in schedule:
        read_lsn, base = states[min(txn.read_at, len(states) - 1)]
        fields = fields_of(base)
        for offset in txn.fields:
            fields[offset] = next_value
            next_value += 1
        body = next_value if txn.body else body_of(base)
        next_value += 1
        mine = page0(fields, body)
        written_fields = set(txn.fields)
        if not txn.fields and not txn.body and txn.read_at % 2:
            mine = None   # page 1 untouched but for the change counter: the file sends none
        expected_conflict = any(
            lsn > read_lsn and (pages & txn.pages or f & written_fields or (b and txn.body)
                                or 40 in f      # the schema cookie is read by every writing transaction
                                or 40 in written_fields)   # a schema change: nothing may have committed since
            for lsn, _, pages, f, b in committed)
        oracle.append(expected_conflict)
        decision = adjudicator.decide(CommitRequest(read_lsn, {p: b"" for p in txn.pages}, base, mine),
                                      states[-1][1])
        decisions.append(decision)
        if isinstance(decision, Conflict):
            assert decision.winner_lsn > read_lsn, "the loser waits for a commit it has not seen"
            continue
        lsn = next_lsn
        next_lsn += len(txn.pages) + 1
        adjudicator.accepted(lsn, txn.pages)
        if decision is None:
            assert mine is None
            decision = states[-1][1]
        assert fields_of(decision) == {**fields_of(states[-1][1]), **{o: fields[o] for o in txn.fields}}
        assert body_of(decision) == (body if txn.body else body_of(states[-1][1]))
        states.append((lsn, decision))
        committed.append((lsn, read_lsn, txn.pages, written_fields, txn.body))
    return decisions, committed, oracle


def assert_first_committer_wins(committed) -> None:
    """The invariant in MULTIWRITER.md: no committed T' between T's read point and T's
    commit wrote what T wrote, or changed the schema, and a schema change had nobody between."""
    for lsn, read_lsn, pages, fields, body in committed:
        for other_lsn, _, other_pages, other_fields, other_body in committed:
            if read_lsn < other_lsn < lsn:
                assert not pages & other_pages
                assert not fields & other_fields
                assert not (body and other_body)
                assert 40 not in other_fields and 40 not in fields


@settings(max_examples=300, deadline=None)
@given(txns)
def test_decisions_equal_the_oracle_and_keep_first_committer_wins(schedule):
    decisions, committed, oracle = run_schedule(schedule, pages_max=1000)
    assert [isinstance(d, Conflict) for d in decisions] == oracle
    assert_first_committer_wins(committed)


@settings(max_examples=300, deadline=None)
@given(txns)
def test_a_pruned_table_conflicts_more_never_less(schedule):
    decisions, committed, oracle = run_schedule(schedule, pages_max=2)
    for decided, expected in zip(decisions, oracle):
        if expected:
            assert isinstance(decided, Conflict)
    assert_first_committer_wins(committed)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 5)), max_size=60), st.integers(2, 8))
def test_table_never_forgets_a_write_above_its_floor(writes, pages_max):
    table = ConflictTable(floor_lsn=0, pages_max=pages_max)
    truth: dict[int, int] = {}
    for lsn, (page, _) in enumerate(writes, start=1):
        table.record(lsn, [page])
        truth[page] = lsn
        for p, last in truth.items():
            assert table.last_write(p) >= last if last > table.floor_lsn else True
            if last > table.floor_lsn:
                assert table.last_write(p) == last
        assert len(table) <= pages_max


def test_header_merge_takes_both_sides_when_fields_differ():
    base = page0({28: 10, 32: 0, 36: 0, 40: 1, 60: 0}, body=1, counter=5)
    current = page0({28: 10, 32: 0, 36: 0, 40: 1, 60: 7}, body=1, counter=6)   # someone set user_version
    mine = page0({28: 11, 32: 0, 36: 0, 40: 1, 60: 0}, body=1, counter=99)     # we grew the file
    merged = merge_page1(current, base, mine)
    assert isinstance(merged, bytes)
    assert fields_of(merged) == {28: 11, 32: 0, 36: 0, 40: 1, 60: 7}
    assert struct.unpack_from(">I", merged, 24)[0] == 6, "the change counter is the adjudicator's, not ours"


def test_two_writers_growing_the_file_conflict():
    base = page0({28: 10, 32: 0, 36: 0, 40: 1, 60: 0}, body=1)
    current = page0({28: 11, 32: 0, 36: 0, 40: 1, 60: 0}, body=1)
    mine = page0({28: 11, 32: 0, 36: 0, 40: 1, 60: 0}, body=1)
    assert isinstance(merge_page1(current, base, mine), str)


def test_a_statement_compiled_before_a_schema_change_conflicts():
    base = page0({28: 10, 32: 0, 36: 0, 40: 1, 60: 0}, body=1)
    current = page0({28: 10, 32: 0, 36: 0, 40: 2, 60: 0}, body=2)
    assert "schema" in merge_page1(current, base, base)


def test_creating_the_database_twice_conflicts():
    adjudicator = Adjudicator(floor_lsn=0)
    created = page0({28: 1, 32: 0, 36: 0, 40: 1, 60: 0}, body=1)
    first = adjudicator.decide(CommitRequest(0, {}, None, created), None)
    assert first == created
    adjudicator.accepted(1, [])
    second = adjudicator.decide(CommitRequest(0, {}, None, created), created)
    assert isinstance(second, Conflict) and second.winner_lsn == 1
