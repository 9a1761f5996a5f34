"""PG membership and its changes by quorum sets: pure decisions, no I/O.

A PG's membership is its six members and a membership epoch. The placement
function (sixfold/volume/placement.py) gives the starting membership (epoch 0);
every change raises the epoch and is kept durably on the storage nodes, so the
highest epoch a writer or recoverer sees wins.

Replacing member F by G goes through a transitional membership (Aurora's quorum
sets): epoch k+1 = (ABCDEF, ABCDEG). While it holds, a write is durable only with
4/6 of BOTH sets and recovery reads 3/6 of BOTH. G catches up from its peers; once
the segment's records up to the tail at the switch (`catch_up_lsn`) are on a write
quorum of the new set, epoch k+2 = (ABCDEG) finalises the change and F is dropped.

Why this keeps every acknowledged commit:

- The transitional rule is stricter than the old one, so a record it calls durable
  is durable under the old one too: a recovery that still uses the old set finds it.
- A record counted under the old rule alone was issued before the switch, so it is at
  or below `catch_up_lsn`; finalising waits until 4 members of the new set hold the
  segment up to there (SCL >= catch_up_lsn). So after finalising, every committed
  record is on 4/6 of the new set.
- Each membership record is made durable on a write quorum of the old AND the new
  membership's quorum sets before the writer acts on it (`record_sets`). A recovery
  fences a write quorum of the sets it believes in, which meets every such quorum, so
  it sees any newer membership in the fence replies and starts again with it
  (highest epoch wins).
"""

from __future__ import annotations

from dataclasses import dataclass

COPIES = 6
WRITE_QUORUM = 4
READ_QUORUM = 3


class MembershipConflict(ValueError):
    """Two different memberships claim the same epoch: a broken invariant."""


@dataclass(frozen=True, slots=True)
class Membership:
    epoch: int
    members: tuple[str, ...]              # the current set
    next_members: tuple[str, ...] = ()    # the set being moved to; non-empty = transitional

    def __post_init__(self) -> None:
        for group in (self.members, self.next_members):
            if group and (len(group) != COPIES or len(set(group)) != COPIES):
                raise ValueError(f"a member set has {COPIES} distinct members: {group}")
        if self.epoch < 0:
            raise ValueError("membership epoch must be >= 0")

    @property
    def transitional(self) -> bool:
        return bool(self.next_members)

    def quorum_sets(self) -> tuple[tuple[str, ...], ...]:
        return (self.members, self.next_members) if self.next_members else (self.members,)

    def all_members(self) -> tuple[str, ...]:
        """Every node that gets writes: the current set, then the ones joining."""
        return self.members + tuple(m for m in self.next_members if m not in self.members)

    def joining(self) -> tuple[str, ...]:
        return tuple(m for m in self.next_members if m not in self.members)

    def leaving(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if self.next_members and m not in self.next_members)

    # ------------------------------------------------------------ changes

    def begin_replace(self, old: str, new: str) -> "Membership":
        """Epoch + 1: the transitional membership (current set, current set with old -> new)."""
        if self.transitional:
            raise ValueError(f"membership {self.epoch} is already changing: {self.leaving()} -> {self.joining()}")
        if old not in self.members:
            raise ValueError(f"{old} is not a member of {self.members}")
        if new in self.members:
            raise ValueError(f"{new} already is a member")
        return Membership(self.epoch + 1, self.members, tuple(new if m == old else m for m in self.members))

    def abort(self) -> "Membership":
        """Epoch + 1: back to the current set (when a joining member was lost). Always safe:
        what both sets made durable is on a write quorum of the current set."""
        if not self.transitional:
            raise ValueError(f"membership {self.epoch} is not changing")
        return Membership(self.epoch + 1, self.members)

    def finalise(self) -> "Membership":
        """Epoch + 1: the new set alone."""
        if not self.transitional:
            raise ValueError(f"membership {self.epoch} is not changing")
        return Membership(self.epoch + 1, self.next_members)


def has_quorum(membership: Membership, holders: set[str] | frozenset[str], size: int) -> bool:
    """`size` of every quorum set among `holders` (4: write quorum, 3: read quorum)."""
    return all(sum(1 for m in group if m in holders) >= size for group in membership.quorum_sets())


def has_write_quorum(membership: Membership, holders) -> bool:
    return has_quorum(membership, set(holders), WRITE_QUORUM)


def has_read_quorum(membership: Membership, holders) -> bool:
    return has_quorum(membership, set(holders), READ_QUORUM)


def record_sets(old: Membership, new: Membership) -> tuple[tuple[str, ...], ...]:
    """Where the record of `new` must be durable (write quorum of each) before anyone
    acts on it: every quorum set of the membership it replaces and of itself."""
    out: list[tuple[str, ...]] = []
    for group in old.quorum_sets() + new.quorum_sets():
        if group not in out:
            out.append(group)
    return tuple(out)


def recorded(old: Membership, new: Membership, holders) -> bool:
    held = set(holders)
    return all(sum(1 for m in group if m in held) >= WRITE_QUORUM for group in record_sets(old, new))


def complete_lsn(membership: Membership, scl_by_member: dict[str, int]) -> int:
    """The PG's complete LSN (PGCL) under its quorum sets: the highest LSN that a write
    quorum of EVERY set holds (the lowest of each set's 4th-highest SCL)."""
    out = None
    for group in membership.quorum_sets():
        ranked = sorted((scl_by_member.get(m, 0) for m in group), reverse=True)
        out = ranked[WRITE_QUORUM - 1] if out is None else min(out, ranked[WRITE_QUORUM - 1])
    return out or 0


def ready_to_finalise(membership: Membership, scl_by_member: dict[str, int], catch_up_lsn: int) -> bool:
    """Every joining member holds the segment up to catch_up_lsn (it has caught up), and
    so does a write quorum of the new set (what the old rule alone made durable is on
    4/6 of the new set: see the module docstring)."""
    if not membership.transitional:
        return False
    if any(scl_by_member.get(m, 0) < catch_up_lsn for m in membership.joining()):
        return False
    holders = sum(1 for m in membership.next_members if scl_by_member.get(m, 0) >= catch_up_lsn)
    return holders >= WRITE_QUORUM


def newest(memberships) -> Membership | None:
    """The highest epoch wins; the same epoch must mean the same sets."""
    best: Membership | None = None
    for m in memberships:
        if best is None or m.epoch > best.epoch:
            best = m
        elif m.epoch == best.epoch and m != best:
            raise MembershipConflict(f"membership epoch {m.epoch} is both {best} and {m}")
    return best


def check_change(current: Membership | None, proposed: Membership) -> str | None:
    """Whether a replica holding `current` may adopt `proposed`: None, or why not.
    A lower epoch is refused, the same epoch must be the same membership (a retry)."""
    if current is None:
        return None
    if proposed.epoch < current.epoch:
        return f"membership epoch {proposed.epoch} < current {current.epoch}"
    if proposed.epoch == current.epoch and proposed != current:
        return f"membership epoch {proposed.epoch} is already {current}, not {proposed}"
    return None


def choose_replacement(old: str, members: tuple[str, ...], az_of: dict[str, str], healthy: set[str],
                       load: dict[str, int]) -> str | None:
    """A healthy node in old's AZ that is not a member; the least loaded (fewest PGs), then by name."""
    az = az_of.get(old)
    candidates = [n for n, n_az in az_of.items()
                  if n_az == az and n != old and n not in members and n in healthy]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (load.get(n, 0), n))
