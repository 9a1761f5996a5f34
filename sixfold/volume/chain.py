"""The segment chain: which LSNs a replica holds, and its SCL.

Each record carries a backlink to the previous LSN of its segment. The segment
complete LSN (SCL) is the highest LSN reachable from the chain's base without a
gap. Pure data structure, shared by the storage node and the tests.
"""

from __future__ import annotations

import bisect


class SegmentChain:
    def __init__(self, base_lsn: int = 0) -> None:
        # base_lsn: an LSN known to be in the chain with everything below it
        # present (0 for a new segment, or the chain position at a compaction point).
        self.base_lsn = base_lsn
        self.scl = base_lsn
        self._next_by_prev: dict[int, int] = {}   # backlink -> lsn, for records above the base
        self._lsns: list[int] = []                # sorted LSNs above the base

    @property
    def highest_lsn(self) -> int:
        return self._lsns[-1] if self._lsns else self.scl

    def __contains__(self, lsn: int) -> bool:
        i = bisect.bisect_left(self._lsns, lsn)
        return i < len(self._lsns) and self._lsns[i] == lsn

    def lsns_above(self, lsn: int) -> list[int]:
        return self._lsns[bisect.bisect_right(self._lsns, lsn):]

    def add(self, lsn: int, prev_lsn: int) -> bool:
        """Adds a record; returns True when the SCL moved."""
        lsns = self._lsns
        if lsns and lsn <= lsns[-1]:
            if lsn in self:
                return False
            bisect.insort(lsns, lsn)
        elif lsn <= self.base_lsn:
            return False
        else:
            lsns.append(lsn)  # the common case: above everything held
        self._next_by_prev[prev_lsn] = lsn
        return self._advance()

    def _advance(self) -> bool:
        moved = False
        while self.scl in self._next_by_prev:
            self.scl = self._next_by_prev[self.scl]
            moved = True
        return moved

    def has_gap(self) -> bool:
        return self.highest_lsn > self.scl

    def truncate_above(self, start_lsn: int, keep: "callable[[int], bool]" = lambda lsn: False) -> list[int]:
        """Drops LSNs above start_lsn unless keep(lsn); returns the dropped LSNs."""
        dropped = [lsn for lsn in self.lsns_above(start_lsn) if not keep(lsn)]
        if not dropped:
            return []
        gone = set(dropped)
        self._lsns = [lsn for lsn in self._lsns if lsn not in gone]
        self._next_by_prev = {p: n for p, n in self._next_by_prev.items() if n not in gone}
        # recompute the SCL from the base: the chain may have lost its tail
        self.scl = self.base_lsn
        self._advance()
        return dropped

    def rebase(self, lsn: int) -> None:
        """Forgets chain entries at or below lsn (<= SCL): they were compacted away.

        lsn must be the base or an LSN in the chain: the new base is where the chain
        continues from (the next record's backlink points at it), so it cannot fall
        between two records. Below the base there is nothing to do."""
        assert lsn <= self.scl, f"rebase to {lsn} above SCL {self.scl}"
        if lsn <= self.base_lsn:
            return
        assert lsn in self, f"rebase to {lsn}: neither the base {self.base_lsn} nor an LSN in the chain"
        cut = bisect.bisect_right(self._lsns, lsn)
        gone = set(self._lsns[:cut])
        self._lsns = self._lsns[cut:]
        self._next_by_prev = {p: n for p, n in self._next_by_prev.items() if n not in gone}
        self.base_lsn = lsn
