"""Each segment's last LSN at or below a read point: what a replica must hold
(its SCL) to serve that read. A segment with no record between its tail and
the read point needs nothing newer, so reads do not wait for records of other
segments.

Pure. Old entries are trimmed; a query below the trimmed range answers with
the oldest retained bound, which can only be too high (the read then waits for
more than it needs), never too low.
"""

from __future__ import annotations

import bisect

ENTRIES_PER_SEGMENT_MAX = 256


class SegmentTails:
    def __init__(self, tails: dict[int, int] | None = None) -> None:
        self._lsns: dict[int, list[int]] = {seg: [lsn] for seg, lsn in (tails or {}).items() if lsn > 0}

    def add(self, segment: int, lsn: int) -> None:
        lsns = self._lsns.setdefault(segment, [])
        assert not lsns or lsn > lsns[-1], f"segment {segment}: LSN {lsn} after {lsns[-1]}"
        lsns.append(lsn)
        if len(lsns) > ENTRIES_PER_SEGMENT_MAX:
            del lsns[: len(lsns) // 2]

    def latest(self, segment: int) -> int:
        lsns = self._lsns.get(segment)
        return lsns[-1] if lsns else 0

    def at(self, segment: int, read_lsn: int) -> int:
        """The segment's last LSN <= read_lsn (an upper bound when that is no longer known)."""
        lsns = self._lsns.get(segment)
        if not lsns:
            return 0
        i = bisect.bisect_right(lsns, read_lsn)
        return lsns[i - 1] if i > 0 else lsns[0]

    def snapshot(self) -> dict[int, int]:
        return {seg: lsns[-1] for seg, lsns in self._lsns.items()}
