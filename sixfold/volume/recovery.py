"""Crash recovery decisions: pure functions over what a read quorum reports.

The I/O shell (sixfold/client/recovery.py) runs the protocol:

1. Learn every segment's state from its members; choose epoch = highest seen + 1.
2. Fence: BumpEpoch on a write quorum (4/6) of every PG. From now on the old
   writer can get at most 2 acks in any PG, so it can never commit again.
3. Baseline B = the highest LSN known durable (a VDL the writer announced, or a
   previous recovery's truncation point). Fetch every record above B from the
   members that answered (at least a read quorum, 3/6, per PG). A record that
   reached 4 members is seen by any 3 (4 + 3 > 6).
4. VCL = the end of the dense run of LSNs B+1, B+2, ... found across all PGs;
   VDL = the highest consistency point <= VCL (no partial transaction).
5. Repair: write the records in (B, VDL] to every reachable member so that each
   reaches a write quorum; then truncate everything above VDL with the new
   epoch on a write quorum of every PG. Only then are new LSNs issued, from
   VDL + 1.

Repaired records are re-stamped with the new epoch. Why: a recovery that died
half-way may have left its truncation (E', S') on a replica this recovery
neither fenced nor read. If this recovery keeps a record above S' written
under an epoch below E', merging that stray truncation later would void it.
Stamped with an epoch above E', the record is out of its reach. (Records at
or below the baseline are not at risk: they were durable before any recovery
that could have voided them fenced its quorum, so that recovery saw them.)

Re-stamping protects the copies that got the new epoch, not the old copies on
members the repair missed. So the truncation carries the baseline: (E, VDL, B)
says (B, VDL] was re-stamped on a write quorum, and a replica that learns it
treats an older-epoch copy there as absent (sixfold/volume/epochs.py) before
the new writer can count an ack through it; gossip brings the re-stamped copy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sixfold.volume.epochs import Truncation, durable_floor, merge_histories
from sixfold.volume.membership import Membership, newest
from sixfold.volume.records import LogRecord


@dataclass(frozen=True, slots=True)
class MemberState:
    member: str
    segment: int
    epoch: int
    owner: str
    scl: int
    highest_lsn: int
    vdl_hint: int
    truncations: tuple[Truncation, ...]
    membership: Membership | None = None  # the PG membership this replica knows (None: none yet)


class RecoveryInvariantError(AssertionError):
    """Replicas disagree in a way the protocol rules out (e.g. one LSN in two segments)."""


def choose_epoch(states: list[MemberState]) -> int:
    return max((s.epoch for s in states), default=0) + 1


def current_membership(states: list[MemberState], placed: Membership) -> Membership:
    """The highest membership epoch any replica reports (the placement when none knows one)."""
    return newest(s.membership for s in states if s.membership is not None) or placed


def merged_history(states: list[MemberState]) -> tuple[Truncation, ...]:
    return merge_histories(*(s.truncations for s in states))


def baseline_lsn(states: list[MemberState]) -> int:
    """The highest LSN that is certainly durable on a write quorum in every PG."""
    hints = max((s.vdl_hint for s in states), default=0)
    return max(hints, durable_floor(merged_history(states)))


@dataclass(frozen=True, slots=True)
class RecoveryPoint:
    baseline: int
    vcl: int
    vdl: int
    segment_tails: dict[int, int]              # last LSN <= VDL of each segment (the next backlink)
    repair: dict[int, tuple[LogRecord, ...]]   # records in (baseline, VDL] per segment, to re-replicate
    discarded_lsns: int                        # records above VDL found (incomplete transactions or gaps)


def same_record(a: LogRecord, b: LogRecord) -> bool:
    """The same record, possibly re-stamped with a newer epoch by a recovery."""
    return (a.lsn, a.prev_lsn, a.page, a.kind, a.flags, a.payload) == (b.lsn, b.prev_lsn, b.page, b.kind, b.flags, b.payload)


def newest_copies(records: list[LogRecord]) -> list[LogRecord]:
    """One copy per LSN (the one with the highest epoch), in LSN order."""
    by_lsn: dict[int, LogRecord] = {}
    for record in records:
        seen = by_lsn.get(record.lsn)
        if seen is not None and not same_record(seen, record):
            raise RecoveryInvariantError(f"LSN {record.lsn} is held with different contents")
        if seen is None or record.epoch > seen.epoch:
            by_lsn[record.lsn] = record
    return [by_lsn[lsn] for lsn in sorted(by_lsn)]


def compute_recovery_point(
    baseline: int,
    records_by_segment: dict[int, list[LogRecord]],
    scls_by_segment: dict[int, list[int]],
    new_epoch: int,
) -> RecoveryPoint:
    """records_by_segment: the union of records above `baseline` the read set holds.

    The records to repair come back re-stamped with new_epoch (see above)."""
    by_lsn: dict[int, tuple[int, LogRecord]] = {}
    for segment, records in records_by_segment.items():
        for record in records:
            if record.lsn <= baseline:
                continue
            seen = by_lsn.get(record.lsn)
            if seen is not None and (seen[0] != segment or not same_record(seen[1], record)):
                raise RecoveryInvariantError(
                    f"LSN {record.lsn} held with different contents (segments {seen[0]} and {segment})"
                )
            if seen is None or record.epoch > seen[1].epoch:
                by_lsn[record.lsn] = (segment, record)
    vcl = baseline
    while vcl + 1 in by_lsn:
        vcl += 1
    vdl = baseline
    for lsn in range(baseline + 1, vcl + 1):
        if by_lsn[lsn][1].is_cpl:
            vdl = lsn
    tails: dict[int, int] = {}
    repair: dict[int, list[LogRecord]] = {}
    for segment in set(records_by_segment) | set(scls_by_segment):
        known = [scl for scl in scls_by_segment.get(segment, []) if scl <= vdl]
        for record in records_by_segment.get(segment, []):
            if record.lsn <= vdl:
                known.append(record.lsn)
            if record.prev_lsn <= vdl:
                known.append(record.prev_lsn)
        tails[segment] = max(known, default=0)
    for lsn in range(baseline + 1, vdl + 1):
        segment, record = by_lsn[lsn]
        repair.setdefault(segment, []).append(replace(record, epoch=max(record.epoch, new_epoch)))
    discarded = sum(1 for lsn in by_lsn if lsn > vdl)
    return RecoveryPoint(
        baseline=baseline,
        vcl=vcl,
        vdl=vdl,
        segment_tails=tails,
        repair={s: tuple(r) for s, r in repair.items()},
        discarded_lsns=discarded,
    )
