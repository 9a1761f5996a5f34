"""The global database's decisions, as pure functions (no I/O, no clock): see DESIGN.md.

- `source_point`: from the primary storage's segment states, how far the replicator may ship
  (the primary VDL), under which epoch, owner and history, and which member to fetch each
  segment from.
- `dense_run`: the records fetched from every segment, in LSN order, checked to be the
  dense continuation of what was shipped (LSNs at or below a VDL are dense).
- `seed_needed`, `seed_sources`, `seed_segment_tail`: seeding an empty region from the primary's
  page images when the primary no longer holds the log from the start (DESIGN.md, "Seeding").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sixfold.volume.epochs import HistoryConflict, Truncation, merge_histories, record_is_current, record_is_valid
from sixfold.volume.membership import READ_QUORUM
from sixfold.volume.records import LogRecord


@dataclass(frozen=True)
class ReplicaView:
    """One primary replica's segment state, as GetSegmentState reported it."""

    address: str
    segment: int
    epoch: int
    owner: str
    history: tuple[Truncation, ...]
    scl: int
    vdl_hint: int
    vdl_hint_unix_s: float = 0.0
    records_gc_lsn: int = 0     # FetchRecords below it is TOO_OLD: the records were collected


@dataclass(frozen=True)
class SourcePoint:
    vdl: int                    # the primary's VDL: ship up to here, never further
    vdl_unix_s: float           # when the primary's storage first heard of it (0: unknown)
    epoch: int                  # the newest writer's epoch and owner: the mirror's appends carry them
    owner: str
    history: tuple[Truncation, ...]
    fetch_from: dict[int, tuple[str, int]] = field(default_factory=dict)   # segment -> (member, its SCL)
    warnings: tuple[str, ...] = ()


EMPTY_SOURCE = SourcePoint(0, 0.0, 0, "", ())   # the primary has written nothing yet


def source_point(views: list[ReplicaView]) -> SourcePoint:
    """Where the primary is, from the replicas that answered. Only replicas at the newest epoch
    are fetched from: an older one may still hold records its writer's successor truncated."""
    if not views:
        return EMPTY_SOURCE
    epoch, owner = max((v.epoch, v.owner) for v in views)
    newest = [v for v in views if v.epoch == epoch]
    warnings = []
    history: tuple[Truncation, ...] = ()
    for v in newest:
        try:
            history = merge_histories(history, v.history)
        except HistoryConflict as exc:   # never expected: the same epoch means the same history
            warnings.append(f"segment {v.segment} at {v.address}: {exc}")
    vdl = max(v.vdl_hint for v in views)
    stamps = [v.vdl_hint_unix_s for v in views if v.vdl_hint == vdl and v.vdl_hint_unix_s > 0]
    fetch_from: dict[int, tuple[str, int]] = {}
    for v in newest:
        best = fetch_from.get(v.segment)
        if best is None or (v.scl, v.address) > (best[1], best[0]):
            fetch_from[v.segment] = (v.address, v.scl)
    return SourcePoint(vdl, min(stamps, default=0.0), epoch, owner, history, fetch_from, tuple(warnings))


def dense_run(records: list[tuple[int, LogRecord, bytes]], after_lsn: int, up_to_lsn: int,
              history: tuple[Truncation, ...]) -> tuple[list[tuple[int, LogRecord, bytes]], str]:
    """(segment, record, encoded) triples -> the run after_lsn+1, after_lsn+2, ... (ascending,
    at most up_to_lsn) and why it stopped where it did ("" when it reached up_to_lsn).

    Records the history voids, or old copies it replaced, are left out (they leave a hole that
    a later round fills with the current copy). Two different records at one LSN stop the run."""
    usable = sorted((r for r in records
                     if after_lsn < r[1].lsn <= up_to_lsn
                     and record_is_valid(r[1].lsn, r[1].epoch, history)
                     and record_is_current(r[1].lsn, r[1].epoch, history)),
                    key=lambda r: r[1].lsn)
    run: list[tuple[int, LogRecord, bytes]] = []
    expected = after_lsn + 1
    for item in usable:
        lsn = item[1].lsn
        if lsn == expected - 1 and run:
            if run[-1][2] != item[2]:
                return run[:-1], f"two different records at LSN {lsn}"
            continue   # the same record twice
        if lsn != expected:
            return run, f"LSN {expected} is missing"
        run.append(item)
        expected += 1
    if expected <= up_to_lsn:
        return run, f"LSN {expected} is missing"
    return run, ""


def durable_tails(tails: dict[int, int], adopted: list[tuple[int, int]], vdl: int) -> dict[int, int]:
    """Each segment's last LSN at or below `vdl`, from the tails at the previous durable point
    and the records adopted since ((lsn, segment), ascending)."""
    out = dict(tails)
    for lsn, segment in adopted:
        if lsn > vdl:
            break
        out[segment] = lsn
    return out


# -------------------------------------------------------------------- seeding


def seed_needed(position_lsn: int, point: SourcePoint, views: list[ReplicaView]) -> bool:
    """Seed this region from page images instead of shipping from LSN 0: it holds nothing yet
    (no recorded position) and a member it would fetch from collected records from the start."""
    if position_lsn > 0:
        return False
    collected = {(v.address, v.segment): v.records_gc_lsn for v in views}
    return any(collected.get((member, segment), 0) > 1 for segment, (member, _) in point.fetch_from.items())


def seed_sources(views: list[ReplicaView]) -> tuple[dict[int, tuple[str, int]], str]:
    """Per segment, the member to seed from and its SCL, and "" (or why not).

    The member with the highest SCL among at least READ_QUORUM members at the newest epoch: once
    the primary's VDL reached an LSN, 4 of 6 members had their SCL past the segment's last record
    at or below it, so 3 answers taken after that include one of them."""
    if not views:
        return {}, "the primary's storage reported no segment"
    epoch = max(v.epoch for v in views)
    answers: dict[int, dict[str, int]] = {}
    for v in views:
        if v.epoch == epoch:
            answers.setdefault(v.segment, {})[v.address] = v.scl
    sources: dict[int, tuple[str, int]] = {}
    for segment, by_member in sorted(answers.items()):
        if len(by_member) < READ_QUORUM:
            return {}, (f"segment {segment}: {len(by_member)} member(s) of the primary at epoch {epoch} answered, "
                        f"{READ_QUORUM} are needed")
        member, scl = max(by_member.items(), key=lambda item: (item[1], item[0]))
        sources[segment] = (member, scl)
    return sources, ""


def seed_segment_tail(segment: int, at_lsn: int, up_to_lsn: int, records: list[LogRecord], member_scl: int,
                      quorum_scl: int) -> tuple[int, str]:
    """The segment's last LSN at or below up_to_lsn, and "" (or why these records cannot be trusted
    to be all of the segment's in (at_lsn, up_to_lsn]).

    at_lsn is a point the member materialised, which is always one of the segment's own LSNs (the
    page store's base moves only to a record of the chain), so the records must link back from it
    one by one. They are all there when the member's SCL (after the pages were taken) reached
    up_to_lsn, or the highest SCL a read quorum reported after the primary's VDL reached up_to_lsn
    (`seed_sources`): that SCL is past the segment's last record at or below up_to_lsn."""
    expected_prev = at_lsn
    for record in records:
        if not at_lsn < record.lsn <= up_to_lsn:
            return 0, f"segment {segment}: record {record.lsn} outside ({at_lsn}, {up_to_lsn}]"
        if record.prev_lsn != expected_prev:
            return 0, (f"segment {segment}: record {record.lsn} links back to {record.prev_lsn}, "
                       f"not {expected_prev}: a record is missing")
        expected_prev = record.lsn
    if member_scl < min(up_to_lsn, quorum_scl):
        return 0, (f"segment {segment}: the member's SCL {member_scl} is below {min(up_to_lsn, quorum_scl)}: "
                   f"it may lack records up to {up_to_lsn}")
    return expected_prev, ""
