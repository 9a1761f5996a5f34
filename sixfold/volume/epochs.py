"""Volume epochs and the truncation history: which records are valid.

A recovery at epoch E that found the volume durable up to S writes the
truncation (E, S): every record above S written under an epoch below E is void.
Records are stamped with the epoch they were written under, so a replica that
missed some recoveries can apply the whole history when it learns it and end up
with exactly the records that survived every recovery.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Truncation:
    epoch: int
    start_lsn: int


class HistoryConflict(ValueError):
    """Two different truncations claim the same epoch: a broken invariant."""


def record_is_valid(lsn: int, record_epoch: int, history: tuple[Truncation, ...]) -> bool:
    return all(not (t.epoch > record_epoch and lsn > t.start_lsn) for t in history)


def merge_histories(*histories: tuple[Truncation, ...] | list[Truncation]) -> tuple[Truncation, ...]:
    """Union of histories, sorted by epoch; the same epoch must mean the same start."""
    by_epoch: dict[int, int] = {}
    for history in histories:
        for t in history:
            known = by_epoch.setdefault(t.epoch, t.start_lsn)
            if known != t.start_lsn:
                raise HistoryConflict(f"epoch {t.epoch} truncated at {known} and at {t.start_lsn}")
    return tuple(Truncation(e, s) for e, s in sorted(by_epoch.items()))


def durable_floor(history: tuple[Truncation, ...]) -> int:
    """Every recovery declared its start point durable on a write quorum."""
    return max((t.start_lsn for t in history), default=0)
