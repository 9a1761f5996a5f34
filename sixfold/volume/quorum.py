"""Writer-side quorum bookkeeping: LSN allocation, PGCL, VCL and VDL.

Pure state machine: events in (records issued, acks with a member's SCL), facts
out (VDL moved). No I/O and no clock, so it can be driven by any interleaving
in property tests.

- A PG is complete at LSN L when 4 of its 6 members report SCL >= L (PGCL).
- LSNs are dense: every LSN is used by exactly one record of one segment, so
  VCL is the highest LSN with every record at or below it complete in its PG.
- A transaction's last record is a consistency point (CPL); VDL is the highest
  CPL <= VCL. A commit is durable when VDL >= its commit LSN.
- LAL: at most `lal_records` LSNs may be outstanding above VDL (back-pressure).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sixfold.volume.membership import Membership, complete_lsn
from sixfold.volume.tails import SegmentTails

COPIES = 6
WRITE_QUORUM = 4
READ_QUORUM = 3
LAL_RECORDS_DEFAULT = 100_000


@dataclass(slots=True)
class PGTracker:
    segment: int
    members: tuple[str, ...]          # every member that gets writes (both sets while one is replaced)
    scl_by_member: dict[str, int] = field(default_factory=dict)
    pgcl: int = 0
    membership: Membership | None = None  # None: the six `members`, never changed

    def on_ack(self, member: str, scl: int) -> bool:
        """Records a member's durable SCL; returns True when PGCL moved."""
        if member not in self.members:
            return False  # an ack from a node that is no longer a member counts for nothing
        if scl <= self.scl_by_member.get(member, 0):
            return False  # SCL only moves up; a late ack carries nothing new
        self.scl_by_member[member] = scl
        if self.membership is not None and self.membership.transitional:
            pgcl = complete_lsn(self.membership, self.scl_by_member)  # 4/6 of both quorum sets
        else:
            ranked = sorted(self.scl_by_member.values(), reverse=True)
            pgcl = ranked[WRITE_QUORUM - 1] if len(ranked) >= WRITE_QUORUM else 0
        if pgcl > self.pgcl:
            self.pgcl = pgcl
            return True
        return False

    def members_at_or_above(self, lsn: int) -> list[str]:
        return [m for m in self.members if self.scl_by_member.get(m, 0) >= lsn]


@dataclass(slots=True)  # not frozen: built per record on the commit path (see LogRecord)
class IssuedRecord:
    lsn: int
    prev_lsn: int
    segment: int
    is_cpl: bool


class LALExceeded(RuntimeError):
    """More LSNs outstanding above VDL than the LAL allows: wait for acks."""


class VolumeTracker:
    def __init__(
        self,
        vdl: int = 0,
        segment_tails: dict[int, int] | None = None,
        lal_records: int = LAL_RECORDS_DEFAULT,
    ) -> None:
        # vdl: the durable point recovery found; new LSNs start right above it.
        self.vdl = vdl
        self.vcl = vdl
        self.next_lsn = vdl + 1
        self.lal_records = lal_records
        self._tails = SegmentTails(segment_tails)
        self._pgs: dict[int, PGTracker] = {}
        self._pending: deque[IssuedRecord] = deque()  # issued, not yet below VCL, in LSN order

    # --- PGs -------------------------------------------------------------
    def add_pg(self, segment: int, members: tuple[str, ...]) -> None:
        assert len(members) == COPIES and len(set(members)) == COPIES, members
        known = self._pgs.get(segment)
        if known is None:
            self._pgs[segment] = PGTracker(segment, members)
        else:
            assert known.members == members, f"segment {segment} members changed without a membership change"

    def set_membership(self, segment: int, membership: Membership) -> None:
        """A membership change (sixfold/volume/membership.py), in effect from now on: the
        stricter transitional rule for every PGCL computed from here, or the new set alone
        once finalised. PGCL never moves back: what was complete stays complete."""
        pg = self._pgs[segment]
        pg.membership = membership
        pg.members = membership.all_members()
        pg.scl_by_member = {m: scl for m, scl in pg.scl_by_member.items() if m in pg.members}

    def pg(self, segment: int) -> PGTracker:
        return self._pgs[segment]

    def has_pg(self, segment: int) -> bool:
        return segment in self._pgs

    @property
    def pgs(self) -> dict[int, PGTracker]:
        return self._pgs

    # --- issuing records ------------------------------------------------------
    def room(self) -> int:
        """How many more LSNs may be issued before the LAL is reached."""
        return self.vdl + self.lal_records - (self.next_lsn - 1)

    def issue_transaction(self, segments: list[int]) -> list[IssuedRecord]:
        """Allocates one LSN per record (in order); the last one is the CPL."""
        assert segments, "a transaction has at least one record"
        if len(segments) > self.room():
            raise LALExceeded(f"{len(segments)} records would pass LAL (VDL {self.vdl} + {self.lal_records})")
        issued = []
        for i, segment in enumerate(segments):
            assert segment in self._pgs, f"segment {segment} has no PG yet"
            lsn = self.next_lsn
            self.next_lsn += 1
            record = IssuedRecord(lsn, self._tails.latest(segment), segment, i == len(segments) - 1)
            self._tails.add(segment, lsn)
            issued.append(record)
            self._pending.append(record)
        return issued

    def segment_tail(self, segment: int) -> int:
        return self._tails.latest(segment)

    def tail_at(self, segment: int, read_lsn: int) -> int:
        """What a replica's SCL must reach to serve a read of this segment at read_lsn."""
        return self._tails.at(segment, read_lsn)

    def tails_snapshot(self) -> dict[int, int]:
        return self._tails.snapshot()

    # --- acks -----------------------------------------------------------------
    def on_ack(self, segment: int, member: str, scl: int) -> bool:
        """A member's SCL for a segment; returns True when VDL moved."""
        pg = self._pgs.get(segment)
        if pg is None or not pg.on_ack(member, scl):
            return False
        return self._advance()

    def _advance(self) -> bool:
        vdl_before = self.vdl
        pending = self._pending
        while pending and self._pgs[pending[0].segment].pgcl >= pending[0].lsn:
            record = pending.popleft()
            self.vcl = record.lsn
            if record.is_cpl:
                self.vdl = record.lsn
        return self.vdl != vdl_before

    def is_durable(self, lsn: int) -> bool:
        return self.vdl >= lsn

    def oldest_pending(self) -> IssuedRecord | None:
        return self._pending[0] if self._pending else None

    def readable_members(self, segment: int, read_lsn: int) -> list[str]:
        """Members known (from acks) to hold the segment at read_lsn: a read needs only one."""
        pg = self._pgs.get(segment)
        return pg.members_at_or_above(read_lsn) if pg else []

    def pending_segments(self) -> set[int]:
        """Segments with records issued but not yet complete on a write quorum."""
        return {record.segment for record in self._pending}

    def pg_segments_of(self, member: str) -> list[int]:
        return [segment for segment, pg in self._pgs.items() if member in pg.members]

    def lagging_pgs(self) -> list[PGTracker]:
        """PGs holding back VCL: the first pending record's PG, with too few members."""
        first = self.oldest_pending()
        return [self._pgs[first.segment]] if first else []
