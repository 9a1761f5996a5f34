"""The global database's decisions, as pure functions (no I/O, no clock): see DESIGN.md.

- `source_point`: from the primary storage's segment states, how far the replicator may ship
  (the primary VDL), under which epoch, owner and history, and which member to fetch each
  segment from.
- `dense_run`: the records fetched from every segment, in LSN order, checked to be the
  dense continuation of what was shipped (LSNs at or below a VDL are dense).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sixfold.volume.epochs import HistoryConflict, Truncation, merge_histories, record_is_current, record_is_valid
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
