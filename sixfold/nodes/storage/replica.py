"""One segment replica on a storage node: a pure state machine, no I/O.

The shell (node.py) calls a `check_*` method, then the matching apply method
with no await in between, persists the returned `Changes` through the log and
acknowledges once they are durable. State held here is the *accepted* state
(it may be ahead of the disk by one group commit); `durable_scl` is what the
log has made durable, and is the only SCL ever reported to a writer.

Records live here from the moment they are accepted until the materialiser has
turned them into page versions; after that only (lsn, crc, epoch) is kept, so that
a retransmitted record can still be recognised as a duplicate (or as an upgrade).

Epoch upgrade: a recovery re-replicates the records it keeps re-stamped with its
own epoch (sixfold/volume/recovery.py). A copy of a record this replica already
holds (in memory or materialised) that is `same_record` as the held one with a
higher epoch replaces the held copy: in memory at once, in the log as a RECORDS
frame, and in the page store (records row and the page version made from it) by
the materialiser's next batch (`restamp`). Chain and SCL do not change. A copy
with the same or a lower epoch is a duplicate; different contents are refused.

Old copies: a truncation (E, S, B) says its recovery re-stamped what it kept in
(B, S] on a write quorum, so a held copy there with an epoch below E is not current
(sixfold/volume/epochs.py). It is dropped like a void one (a gap: the SCL cannot pass
it; gossip refills it with the re-stamped copy), and an incoming one is skipped.
Materialised records are the exception: they stay unless void (DESIGN.md).
Invariant: every held record is current under the replica's history.
"""

from __future__ import annotations

import bisect
import enum
import struct
from array import array
from dataclasses import dataclass, field, replace

from sixfold.volume.chain import SegmentChain
from sixfold.volume.epochs import (
    HistoryConflict,
    Truncation,
    durable_floor,
    merge_histories,
    record_is_current,
    record_is_valid,
)
from sixfold.volume.records import (
    LogRecord,
    RecordError,
    RecordKind,
    decode_one,
    encode_record,
)
from sixfold.volume.membership import COPIES, Membership, check_change
from sixfold.volume.recovery import same_record

MEMBERS_MAX = 16
NAME_MAX_CHARS = 256


class Code(enum.IntEnum):
    """Mirrors sixfold.v1.ErrorCode (a test checks the numbers match)."""

    OK = 0
    STALE_EPOCH = 1
    NOT_EPOCH_OWNER = 2
    NOT_AVAILABLE = 3
    TOO_OLD = 4
    UNKNOWN_SEGMENT = 5
    INVALID = 6
    UNAVAILABLE = 7


@dataclass(frozen=True, slots=True)
class Rejection:
    code: Code
    detail: str


@dataclass(frozen=True, slots=True)
class Meta:
    """What must survive a restart before a request touching it is acknowledged."""

    epoch: int = 0
    owner: str = ""
    history: tuple[Truncation, ...] = ()
    members: tuple[str, ...] = ()
    # the PG membership (sixfold/volume/membership.py): epoch 0 is the set the replica was
    # created with; only a ChangeMembership (or a peer/log with a higher epoch) changes it
    membership_epoch: int = 0
    next_members: tuple[str, ...] = ()

    def all_members(self) -> tuple[str, ...]:
        """Every member that gets writes: the current set and, while it changes, the joining ones."""
        return self.members + tuple(m for m in self.next_members if m not in self.members)


@dataclass(slots=True)
class Held:
    record: LogRecord
    encoded: bytes
    in_store: bool = False  # already copied into the page store's record table


Incoming = tuple[LogRecord, bytes]  # a decoded record and its exact encoded bytes


def split_records(blob: bytes, max_records: int = 100_000) -> list[Incoming]:
    """Decodes a concatenation of records, keeping each one's bytes; checks ascending LSNs."""
    view = memoryview(blob)
    out: list[Incoming] = []
    offset = 0
    prev_lsn = 0
    while offset < len(view):
        record, end = decode_one(view, offset)
        if record.lsn <= prev_lsn:
            raise RecordError(f"record lsn={record.lsn} after lsn={prev_lsn}: LSNs must ascend")
        prev_lsn = record.lsn
        out.append((record, bytes(view[offset:end])))
        offset = end
        if len(out) > max_records:
            raise RecordError(f"more than {max_records} records in one segment batch")
    return out


_CRC = struct.Struct("<I")


def record_crc(encoded: bytes) -> int:
    """The CRC a record carries in its first four bytes (covers all the rest)."""
    return _CRC.unpack_from(encoded, 0)[0]


_EPOCH = struct.Struct("<Q")
_EPOCH_OFFSET = 24  # crc u32, body u32, lsn u64, prev u64 (sixfold/volume/records.py)


def record_epoch(encoded: bytes) -> int:
    """The epoch field of an encoded record (its CRC was checked when it was stored)."""
    return _EPOCH.unpack_from(encoded, _EPOCH_OFFSET)[0]


@dataclass(frozen=True, slots=True)
class AppendPlan:
    meta: Meta | None          # the meta to adopt (None: unchanged)
    fresh: list[Incoming]      # records to add
    duplicates: int
    upgrades: list[Incoming] = field(default_factory=list)  # held records to re-stamp with a higher epoch
    stale: int = 0             # old copies skipped: not current under the history (not an error)

    @property
    def to_log(self) -> list[Incoming]:
        """fresh + upgrades, in LSN order (both are subsequences of the ascending request)."""
        if not self.upgrades:
            return self.fresh
        return sorted(self.fresh + self.upgrades, key=lambda item: item[0].lsn)


@dataclass(slots=True)
class Changes:
    """What one operation did to one replica: persist `meta` and `records`.

    `records` (ascending) holds the records added and the upgraded copies of
    records already held; `upgraded` names the LSNs of the latter."""

    meta: Meta | None = None
    records: list[Incoming] = field(default_factory=list)
    upgraded: list[int] = field(default_factory=list)
    voided: list[int] = field(default_factory=list)      # held records dropped: void
    dropped_stale: list[int] = field(default_factory=list)  # held records dropped: not current (old copies)
    duplicates: int = 0
    skipped: int = 0            # gossip/replay records ignored (void, too new, conflicting)
    stale: int = 0              # incoming old copies ignored: not current under the history
    warnings: list[str] = field(default_factory=list)
    scl_after: int = 0

    @property
    def persist(self) -> bool:
        return self.meta is not None or bool(self.records)


def check_members(members: tuple[str, ...] | list[str]) -> str | None:
    if len(members) > MEMBERS_MAX:
        return f"{len(members)} members; at most {MEMBERS_MAX}"
    for m in members:
        if not m or len(m) > NAME_MAX_CHARS:
            return f"bad member address {m[:40]!r}"
    if len(set(members)) != len(members):
        return "duplicate member addresses"
    return None


class SegmentReplica:
    def __init__(
        self,
        volume_id: str,
        segment: int,
        meta: Meta = Meta(),
        *,
        materialised_lsn: int = 0,
        vdl_hint: int = 0,
        min_read_lsn: int = 0,
        records_gc_lsn: int = 0,
        oldest_version_lsn: int = 0,
        materialised: tuple[list[int], list[int], list[int]] = ([], [], []),
    ) -> None:
        self.volume_id = volume_id
        self.segment = segment
        self.meta = meta
        self.chain = SegmentChain(materialised_lsn)
        self.held: dict[int, Held] = {}
        self.page_lsns: dict[int, list[int]] = {}   # page -> held LSNs touching it, ascending
        self.unstored: list[int] = []               # held LSNs not yet in the page store
        self.durable_scl = materialised_lsn
        # Dropping held records (void, or old copies) lowers the SCL in memory at once, before
        # the change is durable: until it is, durable_scl may not exceed the SCL after the drop,
        # or a read (or an ack) would count records memory no longer has (see on_durable)
        self.drop_seq = 0
        self.scl_cap: int | None = None
        self.vdl_hint = vdl_hint
        self.min_read_lsn = min_read_lsn
        self.records_gc_lsn = records_gc_lsn        # every record below it is gone from the store
        self.oldest_version_lsn = oldest_version_lsn  # reads below it are TOO_OLD
        self.meta_version = 1                       # bumps on each meta change; 0 = saved never
        self.stored_meta_version = 0
        self.peer_scl: dict[str, tuple[int, float]] = {}  # member -> (scl, when learned, monotonic s)
        # materialised records above records_gc_lsn: enough to recognise a duplicate or an upgrade
        self._mat_lsns = array("Q", materialised[0])
        self._mat_crcs = array("I", materialised[1])
        self._mat_epochs = array("Q", materialised[2])
        assert len(self._mat_lsns) == len(self._mat_crcs) == len(self._mat_epochs)
        assert all(a < b for a, b in zip(self._mat_lsns, self._mat_lsns[1:]))
        # upgraded copies the page store does not have yet (lsn -> the copy); the
        # materialiser writes them and forgets an entry once it is committed
        self.restamp: dict[int, Incoming] = {}

    # ------------------------------------------------------------ properties

    @property
    def key(self) -> tuple[str, int]:
        return (self.volume_id, self.segment)

    @property
    def epoch(self) -> int:
        return self.meta.epoch

    @property
    def materialised_lsn(self) -> int:
        return self.chain.base_lsn

    @property
    def scl(self) -> int:
        return self.chain.scl

    @property
    def record_count(self) -> int:
        return len(self.held) + len(self._mat_lsns)

    # ------------------------------------------------------- writer requests

    def check_append(
        self,
        epoch: int,
        writer_id: str,
        history: tuple[Truncation, ...],
        incoming: list[Incoming],
        members: tuple[str, ...],
    ) -> AppendPlan | Rejection:
        if epoch <= 0:
            return Rejection(Code.INVALID, "volume_epoch must be positive")
        if not writer_id or len(writer_id) > NAME_MAX_CHARS:
            return Rejection(Code.INVALID, "writer_id must be 1..256 characters")
        if epoch < self.meta.epoch:
            return Rejection(Code.STALE_EPOCH, f"request epoch {epoch} < segment epoch {self.meta.epoch}")
        if epoch == self.meta.epoch and writer_id != self.meta.owner:
            return Rejection(Code.NOT_EPOCH_OWNER, f"epoch {epoch} is owned by {self.meta.owner!r}")
        merged = self._merge(history, epoch)
        if isinstance(merged, Rejection):
            return merged
        if (problem := check_members(members)) is not None:
            return Rejection(Code.INVALID, problem)
        if not members and not self.meta.members:
            return Rejection(Code.INVALID, f"segment {self.segment}: members are required on the first append")
        # held records the merged history drops (apply_append drops them): not held any more
        gone = self._dropped_under(merged) if merged != self.meta.history else set()
        fresh: list[Incoming] = []
        upgrades: list[Incoming] = []
        duplicates = 0
        stale = 0
        # only an entry with a newer epoch than a record's can void it or make it an old copy
        newest_entry_epoch = merged[-1].epoch if merged else 0
        materialised_lsn = self.materialised_lsn
        held_records = self.held
        for item in incoming:
            record = item[0]
            if record.epoch > epoch:
                return Rejection(Code.INVALID, f"record lsn={record.lsn} epoch {record.epoch} > request epoch {epoch}")
            if record.epoch < newest_entry_epoch:
                if not record_is_valid(record.lsn, record.epoch, merged):
                    return Rejection(
                        Code.INVALID, f"record lsn={record.lsn} epoch {record.epoch} is void under the history"
                    )
                if not record_is_current(record.lsn, record.epoch, merged):
                    stale += 1  # an old copy of a record a recovery re-stamped: the same record, not stored
                    continue
            held = held_records.get(record.lsn)
            if held is None and record.lsn > materialised_lsn:
                fresh.append(item)  # the common case: a new record
                continue
            encoded = item[1]
            if held is not None and record.lsn not in gone:
                match = _compare(held.record, held.encoded, record, encoded)
                if match == "different":
                    return Rejection(Code.INVALID, f"lsn {record.lsn} is already held with different bytes")
                if match == "upgrade":
                    upgrades.append((record, encoded))
                else:
                    duplicates += 1
                continue
            if record.lsn <= materialised_lsn:
                match = self._materialised_match(record, encoded)
                if match == "different":
                    return Rejection(Code.INVALID, f"lsn {record.lsn} was materialised with different bytes")
                if match == "absent":
                    return Rejection(Code.INVALID, f"lsn {record.lsn} is below the materialised point and not held")
                if match == "upgrade":
                    upgrades.append((record, encoded))
                else:
                    duplicates += 1
                continue
            fresh.append(item)  # held, but dropped by the merged history: it comes back
        m = self.meta  # a request's member list only creates the replica: membership changes have epochs
        meta = Meta(epoch, writer_id, merged, m.members or tuple(members), m.membership_epoch, m.next_members)
        return AppendPlan(None if meta == self.meta else meta, fresh, duplicates, upgrades, stale)

    def apply_append(self, plan: AppendPlan) -> Changes:
        changes = Changes(duplicates=plan.duplicates, stale=plan.stale)
        if plan.meta is not None:
            self._set_meta(plan.meta, changes)
        self._add_many(plan.fresh)
        for record, encoded in plan.upgrades:
            self._upgrade(record, encoded)
        changes.records = plan.to_log
        changes.upgraded = [record.lsn for record, _ in plan.upgrades]
        changes.scl_after = self.chain.scl
        return changes

    def bump_epoch(
        self, new_epoch: int, owner: str, history: tuple[Truncation, ...], members: tuple[str, ...]
    ) -> Changes | Rejection:
        if new_epoch <= 0 or not owner or len(owner) > NAME_MAX_CHARS:
            return Rejection(Code.INVALID, "new_epoch must be positive and owner 1..256 characters")
        if new_epoch < self.meta.epoch or (new_epoch == self.meta.epoch and owner != self.meta.owner):
            return Rejection(
                Code.STALE_EPOCH,
                f"segment is at epoch {self.meta.epoch} owned by {self.meta.owner!r}; "
                f"cannot move to {new_epoch} for {owner!r}",
            )
        merged = self._merge(history, new_epoch)
        if isinstance(merged, Rejection):
            return merged
        if (problem := check_members(members)) is not None:
            return Rejection(Code.INVALID, problem)
        if not members and not self.meta.members:
            return Rejection(Code.INVALID, f"segment {self.segment}: members are required to create a replica")
        changes = Changes()
        # persisted even when unchanged: a retry must not be answered before the
        # first attempt's frame is durable
        m = self.meta
        self._set_meta(Meta(new_epoch, owner, merged, m.members or tuple(members), m.membership_epoch,
                            m.next_members), changes)
        changes.scl_after = self.chain.scl
        return changes

    def truncate(self, epoch: int, owner: str, start_lsn: int, baseline_lsn: int | None = None) -> Changes | Rejection:
        """baseline_lsn: the recovery's baseline (None: unknown, taken as start_lsn)."""
        if baseline_lsn is not None and not 0 <= baseline_lsn <= start_lsn:
            return Rejection(Code.INVALID, f"baseline_lsn {baseline_lsn} above start_lsn {start_lsn}")
        if epoch < self.meta.epoch:
            return Rejection(Code.STALE_EPOCH, f"request epoch {epoch} < segment epoch {self.meta.epoch}")
        if epoch > self.meta.epoch:
            return Rejection(Code.INVALID, f"segment epoch {self.meta.epoch} < request epoch {epoch}: BumpEpoch first")
        if owner != self.meta.owner:
            return Rejection(Code.NOT_EPOCH_OWNER, f"epoch {epoch} is owned by {self.meta.owner!r}")
        merged = self._merge((Truncation(epoch, start_lsn, baseline_lsn),), epoch)
        if isinstance(merged, Rejection):
            return merged
        changes = Changes()
        self._set_meta(replace(self.meta, history=merged), changes)
        changes.scl_after = self.chain.scl
        return changes

    def change_membership(self, epoch: int, owner: str, history: tuple[Truncation, ...],
                          proposed: Membership) -> Changes | Rejection:
        """The writer (owner of the current volume epoch, or of a newer one) records a new
        PG membership. Persisted even when unchanged: a retry must not be answered before
        the first attempt's frame is durable."""
        if epoch <= 0 or not owner or len(owner) > NAME_MAX_CHARS:
            return Rejection(Code.INVALID, "volume_epoch must be positive and owner 1..256 characters")
        if epoch < self.meta.epoch:
            return Rejection(Code.STALE_EPOCH, f"request epoch {epoch} < segment epoch {self.meta.epoch}")
        if epoch == self.meta.epoch and owner != self.meta.owner:
            return Rejection(Code.NOT_EPOCH_OWNER, f"epoch {epoch} is owned by {self.meta.owner!r}")
        merged = self._merge(history, epoch)
        if isinstance(merged, Rejection):
            return merged
        if (problem := check_members(proposed.all_members())) is not None:
            return Rejection(Code.INVALID, problem)
        current = None
        if len(self.meta.members) == len(set(self.meta.members)) == COPIES:
            current = Membership(self.meta.membership_epoch, self.meta.members, self.meta.next_members)
        if (problem := check_change(current, proposed)) is not None:
            return Rejection(Code.INVALID, problem)
        changes = Changes()
        self._set_meta(Meta(epoch, owner, merged, proposed.members, proposed.epoch, proposed.next_members), changes)
        changes.scl_after = self.chain.scl
        return changes

    def check_seed(self, epoch: int, owner: str, history: tuple[Truncation, ...], at_lsn: int, up_to_lsn: int,
                   incoming: list[Incoming]) -> bool | Rejection:
        """A secondary region's seed (page images as of at_lsn, the records (at_lsn, up_to_lsn]):
        True to install it, False when this replica already is a copy of the same log at or past
        at_lsn holding nothing above up_to_lsn (a retry whose reply was lost: only the records
        are taken). Anything else held at or above at_lsn is refused: it is not this log's."""
        if epoch <= 0 or not owner or len(owner) > NAME_MAX_CHARS:
            return Rejection(Code.INVALID, "volume_epoch must be positive and owner 1..256 characters")
        if up_to_lsn < at_lsn:
            return Rejection(Code.INVALID, f"up_to_lsn {up_to_lsn} below at_lsn {at_lsn}")
        if epoch < self.meta.epoch:
            return Rejection(Code.STALE_EPOCH, f"seed epoch {epoch} < segment epoch {self.meta.epoch}")
        if epoch == self.meta.epoch and owner != self.meta.owner:
            return Rejection(Code.NOT_EPOCH_OWNER, f"epoch {epoch} is owned by {self.meta.owner!r}")
        merged = self._merge(history, epoch)
        if isinstance(merged, Rejection):
            return merged
        for record, _ in incoming:
            if not at_lsn < record.lsn <= up_to_lsn:
                return Rejection(Code.INVALID, f"record lsn={record.lsn} outside the seed's ({at_lsn}, {up_to_lsn}]")
            if record.epoch > epoch or not record_is_current(record.lsn, record.epoch, merged):
                return Rejection(Code.INVALID, f"record lsn={record.lsn} epoch {record.epoch} is not current "
                                               f"under the seed's epoch {epoch} and history")
        held_top = max(self.chain.highest_lsn, self.materialised_lsn)
        if held_top == 0 or held_top < at_lsn:
            return True
        if (epoch, owner) == (self.meta.epoch, self.meta.owner) and self.materialised_lsn >= at_lsn \
                and held_top <= up_to_lsn:
            return False
        return Rejection(Code.INVALID, (
            f"segment {self.segment} already holds LSNs up to {held_top} (materialised {self.materialised_lsn}, "
            f"epoch {self.meta.epoch} of {self.meta.owner!r}), at or above the seed point {at_lsn}: a seed goes "
            f"only into an empty replica (discard this region's storage first: `sixfold region resync`)"))

    def install_snapshot(self, base_lsn: int, oldest_version_lsn: int) -> None:
        """The page store now holds a peer's page images as of base_lsn, a point that peer
        had materialised (so nothing at or below it can ever be truncated): that is this
        replica's new base. Held records at or below it are in the images; records at or
        below it that arrive later are taken as duplicates (as if collected)."""
        assert base_lsn > self.materialised_lsn, (base_lsn, self.materialised_lsn)
        for lsn in [lsn for lsn in self.held if lsn <= base_lsn]:
            self.restamp.pop(lsn, None)
            self._unindex_page(self.held.pop(lsn).record)
        self.chain = SegmentChain(base_lsn)
        for lsn in sorted(self.held):
            self.chain.add(lsn, self.held[lsn].record.prev_lsn)
        self.unstored = [lsn for lsn in self.unstored if lsn > base_lsn]
        self._mat_lsns, self._mat_crcs, self._mat_epochs = array("Q"), array("I"), array("Q")
        self.records_gc_lsn = base_lsn + 1
        self.oldest_version_lsn = max(oldest_version_lsn, self.oldest_version_lsn)
        # only what is in the store is known durable; the log's next callback raises it
        self.durable_scl = base_lsn
        self.scl_cap = None

    def on_durable(self, scl_after: int, drop_seq: int) -> bool:
        """A logged change is durable: it left the SCL at scl_after, after `drop_seq` drops.
        Returns True when durable_scl moved. Called in log order."""
        scl = scl_after
        if self.scl_cap is not None:
            if drop_seq >= self.drop_seq:
                self.scl_cap = None  # the latest drop is durable with this change
            else:
                scl = min(scl, self.scl_cap)
        scl = max(scl, self.materialised_lsn)  # in the store: durable (a snapshot may have moved the base)
        moved = scl != self.durable_scl
        self.durable_scl = scl
        return moved

    def note_hints(self, vdl_hint: int, min_read_lsn: int) -> bool:
        """Both only move up; returns True when either moved."""
        moved = vdl_hint > self.vdl_hint or min_read_lsn > self.min_read_lsn
        self.vdl_hint = max(self.vdl_hint, vdl_hint)
        self.min_read_lsn = max(self.min_read_lsn, min_read_lsn)
        return moved

    # ------------------------------------------------- gossip and log replay

    def learn(self, meta: Meta, *, from_log: bool = False) -> Changes:
        """Adopts a newer epoch and merges a history seen at a peer (or in the log).

        Epochs are only ever created by a writer or a recoverer, so a higher one
        seen anywhere is legitimate and fences the older owner here too."""
        changes = Changes()
        epoch, owner = self.meta.epoch, self.meta.owner
        if meta.epoch > epoch or (from_log and meta.epoch == epoch):
            epoch, owner = meta.epoch, meta.owner
        membership = (self.meta.membership_epoch, self.meta.members, self.meta.next_members)
        if meta.members and (meta.membership_epoch > membership[0] or from_log or not membership[1]):
            membership = (meta.membership_epoch, meta.members, meta.next_members)  # the highest epoch wins
        try:
            history = merge_histories(self.meta.history, meta.history)
        except HistoryConflict as e:
            changes.warnings.append(f"segment {self.segment}: ignoring a conflicting history: {e}")
            history = self.meta.history
        new = Meta(epoch, owner, history, membership[1], membership[0], membership[2])
        if new != self.meta:
            self._set_meta(new, changes)
        changes.scl_after = self.chain.scl
        return changes

    def ingest(self, incoming: list[Incoming]) -> Changes:
        """Adds records a peer (or the log) holds; silently skips what is not valid here,
        and old copies that are not current (counted in `stale`)."""
        changes = Changes()
        history = self.meta.history
        for record, encoded in incoming:
            if not record_is_current(record.lsn, record.epoch, history) and record_is_valid(
                record.lsn, record.epoch, history
            ):
                changes.stale += 1  # an old copy of a record a recovery re-stamped: as if absent
                continue
            held = self.held.get(record.lsn)
            if held is not None:
                match = _compare(held.record, held.encoded, record, encoded)
            elif record.lsn <= self.materialised_lsn:
                # "absent"/"collected": nothing to compare with; taken as a duplicate as before
                match = self._materialised_match(record, encoded)
            else:
                match = "fresh"
            if match == "different":
                changes.skipped += 1
                changes.warnings.append(f"segment {self.segment}: lsn {record.lsn} differs from the held record")
                continue
            if match not in ("fresh", "upgrade"):
                changes.duplicates += 1
                continue
            if record.epoch > self.meta.epoch or not record_is_valid(record.lsn, record.epoch, history):
                changes.skipped += 1
                continue
            if match == "upgrade":
                self._upgrade(record, encoded)
                changes.upgraded.append(record.lsn)
            else:
                self._add(record, encoded)
            changes.records.append((record, encoded))
        changes.scl_after = self.chain.scl
        return changes

    # ----------------------------------------------------------------- reads

    def page_records(self, page: int, up_to_lsn: int) -> list[LogRecord]:
        """Held records of `page` with lsn <= up_to_lsn, ascending (all above the materialised point)."""
        lsns = self.page_lsns.get(page)
        if not lsns:
            return []
        return [self.held[lsn].record for lsn in lsns[: bisect.bisect_right(lsns, up_to_lsn)]]

    def held_in_range(self, after_lsn: int, up_to_lsn: int) -> list[Held]:
        lsns = self.chain.lsns_above(after_lsn)
        lsns = lsns[: bisect.bisect_right(lsns, up_to_lsn)]
        return [self.held[lsn] for lsn in lsns]

    # ---------------------------------------------------------- materialiser

    def materialise_limit(self) -> int:
        """Records up to here can never be voided: they are at or below the VDL
        (or a recovery's durable point) and inside the durable, gap-free chain.

        A truncation's start is only safe because the chain holds current copies only:
        in (baseline, start] of the newest truncation every held copy is the re-stamped
        one (an old copy there was dropped, so the SCL stops below it)."""
        safe_lsn = max(self.vdl_hint, durable_floor(self.meta.history))
        return min(self.durable_scl, self.chain.scl, safe_lsn)

    def to_materialise(self, max_records: int) -> list[Held]:
        limit = self.materialise_limit()
        lsns = self.chain.lsns_above(self.materialised_lsn)
        lsns = lsns[: min(max_records, bisect.bisect_right(lsns, limit))]
        out = [self.held[lsn] for lsn in lsns]
        history = self.meta.history
        newest_entry_epoch = max((t.epoch for t in history), default=0)
        for held in out:  # never a page version from an old copy (see materialise_limit)
            assert held.record.epoch >= newest_entry_epoch or record_is_current(
                held.record.lsn, held.record.epoch, history), (
                f"segment {self.segment}: materialising lsn {held.record.lsn} epoch {held.record.epoch}, "
                f"not current under {history}")
        return out

    def take_unstored(self) -> list[Held]:
        out = [held for held in map(self.held.get, self.unstored) if held is not None and not held.in_store]
        self.unstored = []
        return out

    def on_stored(self, stored: list[Held]) -> None:
        """Marks the copies the store now holds. A copy dropped while the store wrote (voided,
        then refilled at a newer epoch) is another Held: it stays unstored, or its log
        frame would be checkpointed away with no copy in the store."""
        for copy in stored:
            if self.held.get(copy.record.lsn) is copy:
                copy.in_store = True

    def take_restamp(self) -> list[Incoming]:
        """Upgraded copies to write to the store; they stay pending until on_restamped."""
        return [self.restamp[lsn] for lsn in sorted(self.restamp)]

    def on_restamped(self, written: list[Incoming]) -> None:
        for item in written:
            lsn = item[0].lsn
            if self.restamp.get(lsn) is item:  # not upgraded again (or dropped) meanwhile
                del self.restamp[lsn]

    def on_materialised(self, through_lsn: int) -> list[str]:
        """The page store now holds versions for every record up to through_lsn."""
        if through_lsn <= self.materialised_lsn:
            return []
        if through_lsn > self.chain.scl or through_lsn not in self.chain:
            # the chain moves its base only to one of its own LSNs (see SegmentChain.rebase)
            return [(f"segment {self.segment}: materialised through {through_lsn}, which is not in the chain "
                     f"up to SCL {self.chain.scl} (voided?)")]
        lsns = self.chain.lsns_above(self.materialised_lsn)
        lsns = lsns[: bisect.bisect_right(lsns, through_lsn)]
        per_page: dict[int, int] = {}
        for lsn in lsns:
            held = self.held.pop(lsn)
            assert held.in_store, f"lsn {lsn} materialised before it was stored"
            record = held.record
            if record.kind is not RecordKind.VOLUME_SIZE:
                per_page[record.page] = per_page.get(record.page, 0) + 1
            self._mat_crcs.append(record_crc(held.encoded))
            self._mat_epochs.append(record.epoch)
        self._mat_lsns.extend(lsns)
        # every held LSN up to through_lsn went: on each page, the lowest ones of its list
        for page, count in per_page.items():
            page_lsns = self.page_lsns[page]
            assert page_lsns[count - 1] <= through_lsn and (count == len(page_lsns) or page_lsns[count] > through_lsn)
            if count == len(page_lsns):
                del self.page_lsns[page]
            else:
                del page_lsns[:count]
        self.chain.rebase(through_lsn)
        return []

    def materialised_crc(self, lsn: int) -> int | None:
        """The CRC of the copy of a materialised record that counts (None: not known here)."""
        i = bisect.bisect_left(self._mat_lsns, lsn)
        if i < len(self._mat_lsns) and self._mat_lsns[i] == lsn:
            return self._mat_crcs[i]
        return None

    def versions_gc_horizon(self) -> int:
        """Page versions older than the newest one at or below this can go."""
        return min(self.min_read_lsn, self.vdl_hint, self.materialised_lsn)

    def records_gc_floor(self, self_address: str, now_s: float, fresh_s: float) -> int:
        """Records below every peer's SCL and the oldest read point are needed by nobody."""
        lowest = self.min_read_lsn
        for member in self.meta.all_members():  # a joining member needs records too
            if member == self_address:
                continue
            known = self.peer_scl.get(member)
            if known is None or now_s - known[1] > fresh_s:
                return 0  # a peer we have not heard from lately may still need anything
            lowest = min(lowest, known[0])
        return min(lowest, self.materialised_lsn)

    def on_records_gc(self, floor_lsn: int) -> None:
        if floor_lsn <= self.records_gc_lsn:
            return
        cut = bisect.bisect_left(self._mat_lsns, floor_lsn)
        del self._mat_lsns[:cut]
        del self._mat_crcs[:cut]
        del self._mat_epochs[:cut]
        self.records_gc_lsn = floor_lsn

    # -------------------------------------------------------------- internal

    def _merge(self, history: tuple[Truncation, ...], epoch: int) -> tuple[Truncation, ...] | Rejection:
        try:
            merged = merge_histories(self.meta.history, history)
        except HistoryConflict as e:
            return Rejection(Code.INVALID, f"history conflict: {e}")
        if merged and merged[-1].epoch > epoch:
            return Rejection(Code.INVALID, f"history names epoch {merged[-1].epoch} above request epoch {epoch}")
        return merged

    def _dropped_under(self, history: tuple[Truncation, ...]) -> dict[int, bool]:
        """Held LSNs whose copy is void (True) or valid but not current (False) under `history`."""
        lowest = min((t.baseline_lsn for t in history), default=None)
        if lowest is None:
            return {}
        out: dict[int, bool] = {}
        for lsn in self.chain.lsns_above(lowest):
            epoch = self.held[lsn].record.epoch
            if not record_is_current(lsn, epoch, history):
                out[lsn] = not record_is_valid(lsn, epoch, history)
        return out

    def _set_meta(self, meta: Meta, changes: Changes) -> None:
        if meta.history != self.meta.history:
            gone = self._dropped_under(meta.history)
            if gone:
                self._drop(set(gone))
                changes.voided = sorted(lsn for lsn, void in gone.items() if void)
                changes.dropped_stale = sorted(lsn for lsn, void in gone.items() if not void)
            for t in meta.history:
                if t.start_lsn < self.materialised_lsn and t not in self.meta.history:
                    void_materialised = self._materialised_void_under(t)
                    if void_materialised or t.start_lsn < self.records_gc_lsn:
                        changes.warnings.append(
                            f"segment {self.segment}: truncation {t} below the materialised point "
                            f"{self.materialised_lsn}: materialised records may be void "
                            f"({void_materialised} known to be) (broken invariant)"
                        )
        self.meta = meta
        self.meta_version += 1
        changes.meta = meta

    def _materialised_void_under(self, t: Truncation) -> int:
        """How many materialised records still known here (above records_gc_lsn) t voids."""
        start = bisect.bisect_right(self._mat_lsns, t.start_lsn)
        return sum(1 for epoch in self._mat_epochs[start:] if epoch < t.epoch)

    def _add(self, record: LogRecord, encoded: bytes) -> None:
        self._add_many(((record, encoded),))

    def _add_many(self, items: list[Incoming] | tuple[Incoming, ...]) -> None:
        """Holds new records (one loop for a whole batch: this runs for every record)."""
        base_lsn = self.chain.base_lsn
        held = self.held
        restamp = self.restamp
        unstored = self.unstored
        page_lsns = self.page_lsns
        for record, encoded in items:
            lsn = record.lsn
            assert lsn > base_lsn and lsn not in held
            if restamp:
                restamp.pop(lsn, None)
            held[lsn] = Held(record, encoded)
            unstored.append(lsn)
            if record.kind is not RecordKind.VOLUME_SIZE:
                lsns = page_lsns.get(record.page)
                if lsns is None:
                    page_lsns[record.page] = [lsn]
                elif lsn > lsns[-1]:
                    lsns.append(lsn)  # records mostly come in LSN order
                else:
                    bisect.insort(lsns, lsn)
        self.chain.add_many([(record.lsn, record.prev_lsn) for record, _ in items])

    def _upgrade(self, record: LogRecord, encoded: bytes) -> None:
        """Replaces the held copy of record.lsn (checked: same_record, lower epoch) by this one."""
        held = self.held.get(record.lsn)
        if held is not None:
            assert same_record(held.record, record) and record.epoch > held.record.epoch
            # in place: readers holding the Held (FetchRecords) see the new copy
            held.record, held.encoded = record, encoded
        else:
            i = bisect.bisect_left(self._mat_lsns, record.lsn)
            assert i < len(self._mat_lsns) and self._mat_lsns[i] == record.lsn and record.epoch > self._mat_epochs[i]
            self._mat_crcs[i] = record_crc(encoded)
            self._mat_epochs[i] = record.epoch
        # the store may hold (or be writing) the old copy: the next batch rewrites it
        self.restamp[record.lsn] = (record, encoded)

    def _drop(self, lsns: set[int]) -> None:
        for lsn in lsns:
            self.restamp.pop(lsn, None)  # the store's void (same batch or later) removes any copy
            self._unindex_page(self.held.pop(lsn).record)
        self.chain.truncate_above(min(lsns) - 1, keep=lambda lsn: lsn not in lsns)
        self.drop_seq += 1
        self.scl_cap = self.chain.scl if self.scl_cap is None else min(self.scl_cap, self.chain.scl)
        self.durable_scl = min(self.durable_scl, self.chain.scl)

    def _unindex_page(self, record: LogRecord) -> None:
        if record.kind is RecordKind.VOLUME_SIZE:
            return
        lsns = self.page_lsns[record.page]
        lsns.remove(record.lsn)
        if not lsns:
            del self.page_lsns[record.page]

    def _materialised_match(self, record: LogRecord, encoded: bytes) -> str:
        """same: the materialised copy has these bytes (its CRC). upgrade / older: it is the
        same record with a lower / higher epoch. different: other contents.
        collected: garbage-collected, so nobody can tell (taken as a duplicate: records are
        only collected once every peer and reader is past them). absent: never held."""
        lsn = record.lsn
        i = bisect.bisect_left(self._mat_lsns, lsn)
        if i < len(self._mat_lsns) and self._mat_lsns[i] == lsn:
            crc, epoch = self._mat_crcs[i], self._mat_epochs[i]
            if crc == record_crc(encoded):
                return "same"
            if record.epoch == epoch:
                return "different"
            # only (crc, epoch) is kept: the same record under the held epoch has the held CRC
            if record_crc(encode_record(replace(record, epoch=epoch))) != crc:
                return "different"
            return "upgrade" if record.epoch > epoch else "older"
        return "collected" if lsn < self.records_gc_lsn else "absent"

    def check_invariants(self) -> None:
        """For tests: the indexes agree with each other."""
        assert sorted(self.held) == self.chain.lsns_above(self.materialised_lsn)
        assert all(lsn > self.materialised_lsn for lsn in self.held)
        indexed = sorted(lsn for lsns in self.page_lsns.values() for lsn in lsns)
        assert indexed == sorted(lsn for lsn, h in self.held.items() if h.record.kind is not RecordKind.VOLUME_SIZE)
        assert self.chain.scl >= self.materialised_lsn
        for lsn, held in self.held.items():
            assert record_is_current(lsn, held.record.epoch, self.meta.history)  # (so valid too)
            assert held.record.lsn == lsn
        assert len(self._mat_lsns) == len(self._mat_crcs) == len(self._mat_epochs)
        for lsn, (record, encoded) in self.restamp.items():
            if lsn in self.held:
                assert self.held[lsn].encoded is encoded
            else:  # materialised (its (lsn, crc) may be collected already)
                assert lsn <= self.materialised_lsn
                assert self.materialised_crc(lsn) in (None, record_crc(encoded))


def _compare(held: LogRecord, held_encoded: bytes, record: LogRecord, encoded: bytes) -> str:
    """same: identical bytes. upgrade / older: the same record with a higher / lower (or
    equal: cannot differ then) epoch than the held copy. different: other contents."""
    if held_encoded == encoded:
        return "same"
    if not same_record(held, record):
        return "different"
    return "upgrade" if record.epoch > held.epoch else "older"
