"""Volume epochs and the truncation history: which records are valid, and which are current.

A recovery at epoch E that found the volume durable up to B (its baseline: a VDL a
writer announced, or an earlier recovery's truncation point) and kept the records up
to S (its VDL) writes the truncation (E, S, B). Before it writes it anywhere, it has
re-stamped every record it keeps in (B, S] with epoch E (or kept the higher epoch it
read) and confirmed those copies on a write quorum of every PG
(sixfold/volume/recovery.py). Records are stamped with the epoch they were written
(or re-stamped) under, so a replica that missed some recoveries can apply the whole
history when it learns it. For a held copy of LSN `lsn` stamped with epoch `e`:

- VOID iff some entry t has t.epoch > e and lsn > t.start_lsn: recovery t (or the
  history it built on) did not keep it. A void copy is dropped, wherever it is.
- CURRENT iff no entry t has t.epoch > e and lsn > t.baseline_lsn. A copy that is
  valid but not current (t.baseline_lsn < lsn <= t.start_lsn, e < t.epoch) is an old
  copy of a record that recovery t kept and re-stamped with an epoch >= t.epoch on a
  write quorum. (Or of a record that is void under an entry this replica has not
  learned yet; dropping it is right either way.) A replica treats such a copy as
  absent: it is a gap in the chain (the SCL cannot pass it), it is never materialised,
  served or counted, and an incoming copy like it is not stored (an idempotent skip,
  not an error: an older writer or peer still has it). Gossip refills the gap with the
  re-stamped copy. Why not keep it: a stray truncation (E', S') of an older recovery
  that never finished (e < E' < t.epoch, S' < lsn) voids it when it arrives, so an
  SCL acknowledged through it would go backwards, and a page version made from it
  would be deleted under a replica that still reports the LSN as held.

Current implies valid (baseline_lsn <= start_lsn). Entries without a baseline (written
before baselines existed) behave as baseline = start_lsn: they make nothing
non-current. Never 0: that would declare every old copy below the start re-stamped,
which that recovery did not do.

Page versions already made from a record are not dropped for being non-current, only
for being void (see sixfold/nodes/storage/DESIGN.md, "Epoch upgrade").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Truncation:
    epoch: int
    start_lsn: int
    # the recovery's baseline; (baseline_lsn, start_lsn] was re-stamped on a write quorum.
    # None (not known: an entry from before baselines existed) becomes start_lsn
    baseline_lsn: int = None  # type: ignore[assignment]  # always an int after __init__

    def __post_init__(self) -> None:
        if self.baseline_lsn is None:
            object.__setattr__(self, "baseline_lsn", self.start_lsn)
        if not 0 <= self.baseline_lsn <= self.start_lsn:
            raise ValueError(f"truncation at epoch {self.epoch}: baseline {self.baseline_lsn} "
                             f"must be in [0, start {self.start_lsn}]")


class HistoryConflict(ValueError):
    """Two different truncations claim the same epoch: a broken invariant."""


def record_is_valid(lsn: int, record_epoch: int, history: tuple[Truncation, ...]) -> bool:
    """Not void: no recovery with a newer epoch cut this LSN off."""
    return all(not (t.epoch > record_epoch and lsn > t.start_lsn) for t in history)


def record_is_current(lsn: int, record_epoch: int, history: tuple[Truncation, ...]) -> bool:
    """Valid, and not an old copy of a record a newer recovery re-stamped (see above)."""
    return all(not (t.epoch > record_epoch and lsn > t.baseline_lsn) for t in history)


def merge_histories(*histories: tuple[Truncation, ...] | list[Truncation]) -> tuple[Truncation, ...]:
    """Union of histories, sorted by epoch; the same epoch must mean the same start and baseline."""
    by_epoch: dict[int, Truncation] = {}
    for history in histories:
        for t in history:
            known = by_epoch.setdefault(t.epoch, t)
            if known != t:
                raise HistoryConflict(
                    f"epoch {t.epoch} truncated at {known.start_lsn} (baseline {known.baseline_lsn}) "
                    f"and at {t.start_lsn} (baseline {t.baseline_lsn})"
                )
    return tuple(by_epoch[e] for e in sorted(by_epoch))


def durable_floor(history: tuple[Truncation, ...]) -> int:
    """Every recovery declared its start point durable on a write quorum."""
    return max((t.start_lsn for t in history), default=0)
