"""The storage node's core: replicas + log + page store, without gRPC.

Control flow for a write: check every segment of the request against its
replica (pure), apply them all, queue the resulting frames on the log -- with
no await in between, so log order is acceptance order -- and hand back a
future that resolves once the frames are durable. The log's on_durable
callback publishes the new durable SCLs (and wakes readers and streams).

Background: the materialiser copies held records into the page store, turns
the ones that can never be voided into page versions, checkpoints the log
position in the same transaction and deletes log files before it; GC drops
versions and records nobody can need any more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from sixfold.nodes.storage import codec
from sixfold.nodes.storage.codec import FrameType
from sixfold.nodes.storage.log import GroupCommitLog, LogPosition, scan_log
from sixfold.nodes.storage.pagestore import (
    LSN_MAX,
    PageStore,
    SegmentBatch,
    SegmentRow,
    StoreBatch,
    rows_for,
)
from sixfold.nodes.storage.replica import (
    Changes,
    Code,
    Held,
    Incoming,
    Meta,
    Rejection,
    SegmentReplica,
    check_members,
    record_crc,
    record_epoch,
    split_records,
)
from sixfold.volume.epochs import Truncation, record_is_current
from sixfold.volume.membership import Membership
from sixfold.volume.records import PAGE_SIZE_BYTES, RecordError, RecordKind, apply_record

log = logging.getLogger("sixfold.storage.node")

# A secondary region's replicator keeps asking (sixfold/globaldb); records it has not shipped are
# kept while it asked within this long (a region cut off for longer needs a resync from pages;
# `--shipping-retain-s`)
SHIPPING_RETAIN_S = 600.0
SHIPPING_REPLICATORS_MAX = 64

Key = tuple[str, int]
SEGMENT_MAX = 2**32 - 1


@dataclass(slots=True)
class NodeConfig:
    node_id: str
    region: str
    az: str
    address: str                    # how PG member lists name this node (host:port)
    data_dir: Path
    gossip_interval_ms: int = 100
    log_file_size_bytes: int = 64 * 1024 * 1024
    log_queue_limit_bytes: int = 32 * 1024 * 1024
    materialise_interval_ms: int = 100  # each round is a SQLite commit (WAL fsync) and a new version of every hot page
    materialise_batch_records: int = 20_000
    gc_interval_ms: int = 1_000
    peer_scl_fresh_ms: int = 5_000  # records GC trusts peer SCLs no older than this
    page_wait_cap_ms: int = 2_000
    fetch_max_records_cap: int = 10_000
    fetch_max_bytes_cap: int = 8 * 1024 * 1024
    shipping_retain_s: float = SHIPPING_RETAIN_S


class StreamSink(Protocol):
    """An open Append stream: told when a segment it touched moved its SCL, and when one of
    its own batches is durable (its futures resolve right after)."""

    def push_scl(self, key: Key) -> None: ...

    def batch_durable(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    rejection: Rejection
    node_epoch: int = 0


@dataclass(slots=True)
class PageResult:
    code: Code
    detail: str = ""
    exists: bool = False
    data: bytes = b""
    page_lsn: int = 0
    scl: int = 0


@dataclass(slots=True)
class FetchResult:
    code: Code
    detail: str = ""
    records: bytes = b""
    has_more: bool = False
    replica: SegmentReplica | None = None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def bad_volume_id(volume_id: str) -> str | None:
    if not volume_id or len(volume_id.encode()) > 256:
        return "volume_id must be 1..256 bytes"
    return None


def bad_segment(segment: int) -> str | None:
    return None if 0 <= segment <= SEGMENT_MAX else f"segment {segment} out of range"


def history_of(truncations) -> tuple[Truncation, ...]:
    """Protobuf Truncation entries -> history. An entry without baseline_lsn (from a node
    that predates it) has baseline = start (sixfold/volume/epochs.py). Raises ValueError
    for a baseline above the start."""
    return tuple(
        Truncation(t.epoch, t.start_lsn, t.baseline_lsn if t.HasField("baseline_lsn") else None)
        for t in truncations
    )


class StorageNode:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.replicas: dict[Key, SegmentReplica] = {}
        self.vdl_hint_unix_s: dict[Key, float] = {}   # when each replica's vdl_hint last moved (wall clock)
        # secondary regions' replicators: (volume, replicator) -> (shipped LSN, when heard, monotonic s)
        self.shipping: dict[tuple[str, str], tuple[int, float]] = {}
        self.log: GroupCommitLog | None = None
        self.store: PageStore | None = None
        self.started_s = time.monotonic()
        self.records_durable = 0
        self._scl_events: dict[Key, asyncio.Event] = {}
        self._streams: dict[Key, set[StreamSink]] = {}
        self._dirty: set[Key] = set()
        self._stored_history: dict[Key, tuple[Truncation, ...]] = {}
        self._stored_checkpoint: LogPosition | None = None
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader_pool = ThreadPoolExecutor(2, thread_name_prefix="store-reader")
        self._background: asyncio.Task | None = None
        self._closing = asyncio.Event()
        # held by materialise/GC rounds and by installing a snapshot: each writes the segment row
        self._store_lock = asyncio.Lock()
        self._tick: asyncio.Future | None = None  # the background loop's sleep; close() ends it

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = PageStore(data_dir / "pages.sqlite3")
        checkpoint, loaded = await self._in_writer(self.store.load)
        for seg in loaded:
            self._load_segment(seg)
        end = await asyncio.to_thread(scan_log, data_dir / "log", checkpoint, self._replay_frame)
        for replica in self.replicas.values():
            replica.durable_scl = replica.chain.scl  # everything replayed is on disk
            replica.scl_cap = None
            self._dirty.add(replica.key)
        self._stored_checkpoint = checkpoint
        self.log = GroupCommitLog(
            data_dir / "log",
            end,
            file_size_limit_bytes=self.config.log_file_size_bytes,
            queue_limit_bytes=self.config.log_queue_limit_bytes,
        )
        self.log.start()
        self._background = asyncio.create_task(self._background_loop(), name="materialiser")
        log.info(
            "opened %s: %d segment replica(s), log replayed from %s to %s",
            data_dir, len(self.replicas), checkpoint, end,
        )

    async def close(self) -> None:
        """Finishes what is in flight: queued frames are fsynced, then one last
        materialise round, then the store is closed."""
        self._closing.set()
        if self._tick is not None and not self._tick.done():
            self._tick.set_result(None)
        if self._background is not None:
            await self._background
        if self.log is not None:
            await self.log.close()
            if self.log.failure is None:
                try:
                    await self._materialise_once()
                except Exception:
                    log.exception("final materialise failed (the log still holds everything)")
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()

    def _load_segment(self, seg) -> None:
        row = seg.row
        replica = SegmentReplica(
            row.volume_id, row.segment, row.meta,
            materialised_lsn=row.materialised_lsn, vdl_hint=row.vdl_hint, min_read_lsn=row.min_read_lsn,
            records_gc_lsn=row.records_gc_lsn, oldest_version_lsn=row.oldest_version_lsn,
            materialised=seg.materialised,
        )
        replica.stored_meta_version = replica.meta_version
        incoming = split_records(b"".join(seg.unmaterialised))  # CRCs checked again on the way back
        changes = replica.ingest(incoming)
        if changes.skipped:
            log.warning("segment %s/%d: %d stored record(s) are no longer valid", *replica.key, changes.skipped)
        if changes.stale:
            log.info("segment %s/%d: %d stored old copy(ies) are not current (re-stamped elsewhere)",
                     *replica.key, changes.stale)
        replica.on_stored([held for held in map(replica.held.get, (r.lsn for r, _ in incoming)) if held is not None])
        replica.unstored = []
        self.replicas[replica.key] = replica
        self._stored_history[replica.key] = row.meta.history

    def _replay_frame(self, position: LogPosition, frame_type: int, payload: bytes) -> None:
        try:
            if frame_type == FrameType.SEGMENT_META:
                volume_id, segment, meta, vdl_hint, min_read_lsn = codec.decode_meta(payload)
                replica = self.replicas.get((volume_id, segment))
                if replica is None:
                    replica = self.replicas[(volume_id, segment)] = SegmentReplica(volume_id, segment)
                self._log_warnings(replica.learn(meta, from_log=True))
                replica.note_hints(vdl_hint, min_read_lsn)
            elif frame_type == FrameType.RECORDS:
                volume_id, segment, blob = codec.decode_records(payload)
                replica = self.replicas.get((volume_id, segment))
                if replica is None:
                    log.error("log %s: records for unknown segment %s/%d", position, volume_id, segment)
                    return
                self._log_warnings(replica.ingest(split_records(blob)))
            else:
                log.error("log %s: unknown frame type %d skipped", position, frame_type)
        except (codec.CodecError, RecordError) as e:
            # the frame CRC matched, so this is a bug, not a torn write: keep going
            log.error("log %s: undecodable frame skipped: %s", position, e)

    # ---------------------------------------------------------- write path

    def submit_append(self, req, stream: StreamSink | None, touched: set[Key]) -> asyncio.Future | Rejected:
        """Checks and applies one AppendRequest; the future resolves when it is durable.
        Must be called without awaiting in between (see the module docstring)."""
        if (problem := bad_volume_id(req.volume_id)) is not None:
            return Rejected(Rejection(Code.INVALID, problem))
        if len(req.truncations) > 1024 or len(req.segments) > 4096:
            return Rejected(Rejection(Code.INVALID, "too many truncations or segments in one request"))
        try:
            history = history_of(req.truncations)
        except ValueError as e:
            return Rejected(Rejection(Code.INVALID, str(e)))
        decoded: list[tuple[object, list[Incoming]]] = []
        seen: set[int] = set()
        for sa in req.segments:
            if (problem := bad_segment(sa.segment)) is not None or sa.segment in seen:
                return Rejected(Rejection(Code.INVALID, problem or f"segment {sa.segment} twice in one request"))
            seen.add(sa.segment)
            try:
                decoded.append((sa, split_records(sa.records)))
            except RecordError as e:
                return Rejected(Rejection(Code.INVALID, f"segment {sa.segment}: {e}"))
        plans = []
        for sa, incoming in decoded:
            key = (req.volume_id, sa.segment)
            replica = self.replicas.get(key) or SegmentReplica(req.volume_id, sa.segment)
            plan = replica.check_append(
                req.volume_epoch, req.writer_id, history, incoming, tuple(sa.members)
            )
            if isinstance(plan, Rejection):
                return Rejected(Rejection(plan.code, f"segment {sa.segment}: {plan.detail}"), replica.epoch)
            plans.append((replica, plan, sa, incoming))
        if not plans:
            return self._heartbeat(req, stream, touched)
        # -- from here on nothing may fail or await: every check has passed
        work = []
        for replica, plan, sa, incoming in plans:
            if replica.key not in self.replicas:
                self.replicas[replica.key] = replica
                log.info("created replica %s/%d members=%s", replica.volume_id, replica.segment, list(sa.members))
            changes = replica.apply_append(plan)
            if replica.note_hints(req.vdl_hint, req.min_read_lsn):
                self.vdl_hint_unix_s[replica.key] = time.time()   # replication lag is measured from it
            touched.add(replica.key)
            # the writer's bytes as they came when nothing was filtered out: no re-join
            blob = sa.records if len(plan.fresh) + len(plan.upgrades) == len(incoming) else None
            work.append((replica, changes, blob))
        return self._persist(work, stream)

    def _heartbeat(self, req, stream: StreamSink | None, touched: set[Key]) -> asyncio.Future | Rejected:
        """A request naming no segment: carries vdl_hint/min_read_lsn for the stream's segments."""
        replicas = [self.replicas[k] for k in touched if k[0] == req.volume_id]
        for replica in replicas:
            if req.volume_epoch < replica.epoch:
                return Rejected(Rejection(Code.STALE_EPOCH, f"segment {replica.segment} is at epoch {replica.epoch}"),
                                replica.epoch)
        for replica in replicas:
            if replica.epoch == req.volume_epoch and replica.meta.owner == req.writer_id:
                if replica.note_hints(req.vdl_hint, req.min_read_lsn):
                    self._dirty.add(replica.key)
                    self.vdl_hint_unix_s[replica.key] = time.time()
        return self._persist([], stream)

    def _persist(
        self, work: list[tuple[SegmentReplica, Changes, bytes | None]], origin: StreamSink | None
    ) -> asyncio.Future:
        assert self.log is not None
        frames: list[tuple[int, bytes]] = []
        updates: list[tuple[SegmentReplica, int, int, int]] = []  # (replica, SCL after, drops, records)
        for replica, changes, blob in work:
            self._log_warnings(changes)
            if changes.upgraded:
                log.info("segment %s/%d: %d record(s) re-stamped with a higher epoch (%d..%d)",
                         replica.volume_id, replica.segment, len(changes.upgraded),
                         changes.upgraded[0], changes.upgraded[-1])
            if changes.dropped_stale:
                log.info("segment %s/%d: %d old copy(ies) dropped, re-stamped elsewhere by a recovery "
                         "(%d..%d); gossip refills them", replica.volume_id, replica.segment,
                         len(changes.dropped_stale), changes.dropped_stale[0], changes.dropped_stale[-1])
            if changes.meta is not None:
                payload = codec.encode_meta(replica.volume_id, replica.segment, changes.meta,
                                            replica.vdl_hint, replica.min_read_lsn)
                frames.append((FrameType.SEGMENT_META, payload))
            if changes.records:
                if blob is None:
                    blob = b"".join(encoded for _, encoded in changes.records)
                frames.append((FrameType.RECORDS, codec.encode_records(replica.volume_id, replica.segment, blob)))
            updates.append((replica, changes.scl_after, replica.drop_seq, len(changes.records) - len(changes.upgraded)))
            self._dirty.add(replica.key)

        def on_durable() -> None:
            for replica, scl_after, drop_seq, count in updates:
                self.records_durable += count
                if replica.on_durable(scl_after, drop_seq):
                    # the materialise limit moved: a round that ran before this fsync could not
                    # materialise these records, and nothing else may mark the replica again
                    self._dirty.add(replica.key)
                    self._scl_moved(replica.key, origin)
            if origin is not None:
                origin.batch_durable()

        return self.log.append(frames, on_durable)

    def _scl_moved(self, key: Key, origin: StreamSink | None) -> None:
        event = self._scl_events.pop(key, None)
        if event is not None:
            event.set()
        for stream in self._streams.get(key, ()):
            if stream is not origin:
                stream.push_scl(key)

    def register_stream(self, stream: StreamSink, key: Key) -> None:
        self._streams.setdefault(key, set()).add(stream)

    def unregister_stream(self, stream: StreamSink, keys: set[Key]) -> None:
        for key in keys:
            streams = self._streams.get(key)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[key]

    async def bump_epoch(
        self, volume_id: str, segment: int, new_epoch: int, owner: str,
        history: tuple[Truncation, ...], members: tuple[str, ...],
    ) -> tuple[Rejection | None, SegmentReplica | None]:
        problem = bad_volume_id(volume_id) or bad_segment(segment)
        if problem is not None:
            return Rejection(Code.INVALID, problem), None
        await self.log.wait_for_room()
        replica = self.replicas.get((volume_id, segment)) or SegmentReplica(volume_id, segment)
        result = replica.bump_epoch(new_epoch, owner, history, members)
        if isinstance(result, Rejection):
            return result, replica if replica.key in self.replicas else None
        if replica.key not in self.replicas:
            self.replicas[replica.key] = replica
            log.info("created replica %s/%d by BumpEpoch members=%s", volume_id, segment, list(members))
        log.info("segment %s/%d: epoch %d owner %r", volume_id, segment, new_epoch, owner)
        await self._persist([(replica, result, None)], None)
        return None, replica

    async def truncate(self, volume_id: str, segment: int, epoch: int, owner: str, start_lsn: int,
                       baseline_lsn: int | None = None) -> tuple[Rejection | None, SegmentReplica | None]:
        """baseline_lsn: the recovery's baseline (None: not sent, taken as start_lsn)."""
        replica = self.replicas.get((volume_id, segment))
        if replica is None:
            return Rejection(Code.UNKNOWN_SEGMENT, f"no replica of {volume_id}/{segment}"), None
        await self.log.wait_for_room()
        result = replica.truncate(epoch, owner, start_lsn, baseline_lsn)
        if isinstance(result, Rejection):
            return result, replica
        if result.voided:
            log.info("segment %s/%d: truncation (%d, %d) voided %d record(s)",
                     volume_id, segment, epoch, start_lsn, len(result.voided))
        await self._persist([(replica, result, None)], None)
        return None, replica

    async def ingest_from_peer(self, replica: SegmentReplica, meta: Meta, incoming: list[Incoming]) -> Changes:
        """Gossip: learn a peer's epoch/history, then add the records valid here."""
        await self.log.wait_for_room()
        learned = replica.learn(meta)
        added = replica.ingest(incoming)
        work = []
        if learned.meta is not None:
            log.info("segment %s/%d: learned epoch %d / history %s from a peer (%d record(s) voided)",
                     replica.volume_id, replica.segment, replica.epoch, list(replica.meta.history),
                     len(learned.voided))
            work.append((replica, learned, None))
        if added.records:
            work.append((replica, added, None))
        if learned.meta is None:
            self._log_warnings(learned)  # (_persist logs the warnings of what it persists)
        if not added.records:
            self._log_warnings(added)
        if work:
            await self._persist(work, None)
        return added

    def note_hints(self, replica: SegmentReplica, vdl_hint: int, min_read_lsn: int) -> None:
        if replica.note_hints(vdl_hint, min_read_lsn):
            self._dirty.add(replica.key)  # the materialiser may have more to do

    def _log_warnings(self, changes: Changes) -> None:
        for warning in changes.warnings:
            log.warning("%s", warning)

    # ----------------------------------------------------------- read path

    async def get_page(self, volume_id: str, segment: int, page: int, read_lsn: int,
                       volume_epoch: int, wait_ms: int, required_scl: int | None = None) -> PageResult:
        replica = self.replicas.get((volume_id, segment))
        if replica is None:
            return PageResult(Code.UNKNOWN_SEGMENT, f"no replica of {volume_id}/{segment}")
        if volume_epoch < replica.epoch:
            return PageResult(Code.STALE_EPOCH, f"request epoch {volume_epoch} < segment epoch {replica.epoch}",
                              scl=replica.durable_scl)
        # the caller names the segment's last LSN at or below read_lsn (required_scl):
        # this replica holds every record the read needs once its SCL reaches it
        needed = read_lsn if required_scl is None else min(required_scl, read_lsn)
        if replica.durable_scl < needed:
            await self._wait_scl(replica, needed, min(wait_ms, self.config.page_wait_cap_ms))
            if replica.durable_scl < needed:
                return PageResult(Code.NOT_AVAILABLE, f"SCL {replica.durable_scl} < {needed} needed for read_lsn {read_lsn}",
                                  scl=replica.durable_scl)
        if read_lsn < replica.oldest_version_lsn:
            return PageResult(Code.TOO_OLD, f"read_lsn {read_lsn} < oldest version {replica.oldest_version_lsn}",
                              scl=replica.durable_scl)
        # Memory first, then the store: a record the materialiser moves in between is
        # then in the store's newest version (records at or below it are skipped below).
        records = replica.page_records(page, read_lsn)
        full = [i for i, r in enumerate(records) if r.kind is RecordKind.FULL_PAGE]
        image: bytes | None = None
        base_lsn = 0
        if full:
            records = records[full[-1]:]
        elif replica.materialised_lsn > 0:
            found = await self._in_reader(self.store.read_version, volume_id, segment, page, read_lsn)
            if read_lsn < replica.oldest_version_lsn:  # GC raised the horizon while we read
                return PageResult(Code.TOO_OLD, f"read_lsn {read_lsn} < oldest version {replica.oldest_version_lsn}",
                                  scl=replica.durable_scl)
            if found is not None:
                base_lsn, image = found
        page_lsn = base_lsn
        for record in records:
            if record.lsn > base_lsn:
                image = apply_record(image, record)
                page_lsn = record.lsn
        if image is None:
            return PageResult(Code.OK, exists=False, scl=replica.durable_scl)
        return PageResult(Code.OK, exists=True, data=image, page_lsn=page_lsn, scl=replica.durable_scl)

    async def _wait_scl(self, replica: SegmentReplica, lsn: int, wait_ms: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while replica.durable_scl < lsn:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                return
            event = self._scl_events.setdefault(replica.key, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining_s)
            except TimeoutError:
                return

    async def fetch_records(self, volume_id: str, segment: int, after_lsn: int, up_to_lsn: int,
                            max_records: int, max_bytes: int) -> FetchResult:
        replica = self.replicas.get((volume_id, segment))
        if replica is None:
            return FetchResult(Code.UNKNOWN_SEGMENT, f"no replica of {volume_id}/{segment}")
        max_records = min(max_records or 1000, self.config.fetch_max_records_cap)
        max_bytes = min(max_bytes or 4 * 1024 * 1024, self.config.fetch_max_bytes_cap)
        up_to_lsn = up_to_lsn or LSN_MAX
        if after_lsn + 1 < replica.records_gc_lsn:
            return FetchResult(Code.TOO_OLD, f"records below {replica.records_gc_lsn} were collected", replica=replica)
        # memory first (see get_page); held records are exactly those above the materialised point
        held = replica.held_in_range(after_lsn, up_to_lsn)
        materialised_lsn = replica.materialised_lsn
        # Never an old copy (sixfold/volume/epochs.py): materialised ones may be in the store,
        # and a held one may have been dropped by a history learned during an await below.
        found: list[tuple[int, bytes]] = []
        store_full = False
        cursor = after_lsn
        while cursor < materialised_lsn:
            rows = await self._read_records(replica, cursor, min(up_to_lsn, materialised_lsn), max_records)
            store_full = len(rows) == max_records
            history = replica.meta.history
            found += [(lsn, data) for lsn, data in rows if record_is_current(lsn, record_epoch(data), history)]
            if found or not store_full:
                break
            cursor = rows[-1][0]  # a whole page of old copies: read on, or the answer looks complete
        if not store_full:
            # read after the await: a held record upgraded meanwhile is replaced in place
            history = replica.meta.history
            found += [(h.record.lsn, h.encoded) for h in held
                      if record_is_current(h.record.lsn, h.record.epoch, history)]
        out: list[bytes] = []
        size_bytes = 0
        has_more = store_full
        for _, encoded in found:
            if len(out) >= max_records or (out and size_bytes + len(encoded) > max_bytes):
                has_more = True
                break
            out.append(encoded)
            size_bytes += len(encoded)
        return FetchResult(Code.OK, records=b"".join(out), has_more=has_more, replica=replica)

    async def _read_records(self, replica: SegmentReplica, after_lsn: int, up_to_lsn: int,
                            max_records: int) -> list[tuple[int, bytes]]:
        """Stored records, with the copies that count: an upgrade the store has not got yet
        comes from memory; a row older than what memory knows (its upgrade was committed
        while we read) means reading again."""
        rows: list[tuple[int, bytes]] = []
        for _ in range(3):
            rows = await self._in_reader(self.store.read_records, replica.volume_id, replica.segment,
                                         after_lsn, up_to_lsn, max_records)
            stale = False
            for i, (lsn, data) in enumerate(rows):
                pending = replica.restamp.get(lsn)
                if pending is not None:
                    rows[i] = (lsn, pending[1])
                    continue
                known = replica.materialised_crc(lsn)
                if known is not None and known != record_crc(data):
                    stale = True
            if not stale:
                break
        return rows

    # ---------------------------------------------------------- background

    async def _background_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_gc_s = loop.time() + self.config.gc_interval_ms / 1000
        while not self._closing.is_set():
            # a plain timer, not wait_for(closing.wait()): this runs 20 times a second
            self._tick = loop.create_future()
            timer = loop.call_later(self.config.materialise_interval_ms / 1000, _resolve, self._tick)
            try:
                await self._tick
            finally:
                timer.cancel()
            if self._closing.is_set():
                return
            try:
                async with self._store_lock:
                    await self._materialise_once()
                    if loop.time() >= next_gc_s:
                        next_gc_s = loop.time() + self.config.gc_interval_ms / 1000
                        await self._gc_once()
            except Exception:
                # the log still holds everything; keep serving and retry later
                log.exception("materialise/GC round failed")
                await asyncio.sleep(1.0)

    async def _materialise_once(self) -> None:
        checkpoint = self.log.durable_position
        if not self._dirty and checkpoint == self._stored_checkpoint:
            return
        budget = self.config.materialise_batch_records
        batches: list[SegmentBatch] = []
        post: list[tuple[SegmentReplica, list[Held], int, int, tuple[Truncation, ...], list[Incoming]]] = []
        dirty, self._dirty = self._dirty, set()
        for key in sorted(dirty):
            replica = self.replicas[key]
            unstored = replica.take_unstored()
            want = max(budget, 0)
            materialise = replica.to_materialise(want)
            budget -= len(materialise)
            through = materialise[-1].record.lsn if materialise else replica.materialised_lsn
            if len(materialise) == want and replica.materialise_limit() > through:
                self._dirty.add(key)  # the batch budget ran out: more next round
            stored_history = self._stored_history.get(key, ())
            void = tuple(t for t in replica.meta.history if t not in stored_history)
            # Reads below the GC horizon are refused from now on (readers re-check after their
            # store read), so versions that GC would drop at once need not be written at all.
            skip_below_lsn = min(replica.min_read_lsn, replica.vdl_hint, through)
            replica.oldest_version_lsn = max(replica.oldest_version_lsn, skip_below_lsn)
            row = SegmentRow(
                replica.volume_id, replica.segment, replica.meta, replica.vdl_hint, replica.min_read_lsn,
                through, replica.records_gc_lsn, replica.oldest_version_lsn,
            )
            restamp = replica.take_restamp()
            batches.append(SegmentBatch(row, rows_for((h.record, h.encoded) for h in unstored),
                                        [h.record for h in materialise], void, skip_below_lsn,
                                        rows_for(restamp)))
            post.append((replica, unstored, through, replica.meta_version, replica.meta.history, restamp))
        try:
            result = await self._in_writer(self.store.commit, StoreBatch(batches, checkpoint))
        except BaseException:
            for replica, stored, *_ in post:  # nothing was stored: try again next round
                replica.unstored[:0] = [h.record.lsn for h in stored]
                self._dirty.add(replica.key)
            raise
        for key, count in result.versions_voided.items():
            log.error("segment %s/%d: a truncation voided %d materialised page version(s)", *key, count)
        for replica, stored, through, meta_version, history, restamp in post:
            replica.on_stored(stored)
            replica.on_restamped(restamp)
            for warning in replica.on_materialised(through):
                log.error("%s", warning)
            replica.stored_meta_version = max(replica.stored_meta_version, meta_version)
            self._stored_history[replica.key] = history
        self._stored_checkpoint = checkpoint
        deleted = self.log.delete_before(checkpoint.file_no)
        if deleted:
            log.info("deleted %d log file(s) below %s: their contents are in the page store", deleted, checkpoint)

    def note_shipping(self, volume_id: str, replicator: str, shipped_lsn: int) -> None:
        if len(self.shipping) < SHIPPING_REPLICATORS_MAX or (volume_id, replicator) in self.shipping:
            self.shipping[(volume_id, replicator)] = (shipped_lsn, time.monotonic())

    def shipping_floor(self, volume_id: str, now_s: float) -> int | None:
        """The lowest LSN a secondary region still needs records above (None: none asked lately)."""
        floors = [lsn for (volume, _), (lsn, heard_s) in self.shipping.items()
                  if volume == volume_id and now_s - heard_s <= self.config.shipping_retain_s]
        return min(floors, default=None)

    async def _gc_once(self) -> None:
        now_s = time.monotonic()
        fresh_s = self.config.peer_scl_fresh_ms / 1000
        for replica in list(self.replicas.values()):
            horizon = replica.versions_gc_horizon()
            floor = replica.records_gc_floor(self.config.address, now_s, fresh_s)
            shipped = self.shipping_floor(replica.volume_id, now_s)
            if shipped is not None:   # a secondary region resumes from there: keep what is above it
                floor = min(floor, shipped + 1)
            if horizon <= replica.oldest_version_lsn and floor <= replica.records_gc_lsn:
                continue
            horizon = max(horizon, replica.oldest_version_lsn)
            floor = max(floor, replica.records_gc_lsn)
            # raise the read horizon before deleting: a reader re-checks it after its store read
            replica.oldest_version_lsn = horizon
            versions, records = await self._in_writer(self.store.gc, replica.volume_id, replica.segment, horizon, floor)
            replica.on_records_gc(floor)
            log.debug("GC %s/%d: horizon %d floor %d: %d version(s), %d record(s) dropped",
                      replica.volume_id, replica.segment, horizon, floor, versions, records)

    # ----------------------------------------------------------- membership

    async def change_membership(self, volume_id: str, segment: int, epoch: int, owner: str,
                                history: tuple[Truncation, ...], proposed: Membership
                                ) -> tuple[Rejection | None, SegmentReplica | None]:
        problem = bad_volume_id(volume_id) or bad_segment(segment)
        if problem is not None:
            return Rejection(Code.INVALID, problem), None
        await self.log.wait_for_room()
        replica = self.replicas.get((volume_id, segment)) or SegmentReplica(volume_id, segment)
        result = replica.change_membership(epoch, owner, history, proposed)
        if isinstance(result, Rejection):
            return result, replica if replica.key in self.replicas else None
        if replica.key not in self.replicas:
            self.replicas[replica.key] = replica
            log.info("created replica %s/%d by a membership change (joining)", volume_id, segment)
        log.info("segment %s/%d: membership %d: %s%s", volume_id, segment, proposed.epoch, list(proposed.members),
                 f" -> {list(proposed.next_members)}" if proposed.transitional else "")
        await self._persist([(replica, result, None)], None)
        return None, replica

    async def fetch_pages(self, volume_id: str, segment: int, at_lsn: int, from_page: int,
                          max_bytes: int) -> tuple[Code, str, int, list[tuple[int, int, int, bytes]], bool]:
        """(code, detail, at_lsn, pages, has_more): the newest version <= at_lsn of each page,
        at_lsn 0 meaning this replica's materialised point (never truncated)."""
        replica = self.replicas.get((volume_id, segment))
        if replica is None:
            return Code.UNKNOWN_SEGMENT, f"no replica of {volume_id}/{segment}", 0, [], False
        at_lsn = at_lsn or replica.materialised_lsn
        if at_lsn > replica.materialised_lsn:
            return Code.NOT_AVAILABLE, f"materialised only up to {replica.materialised_lsn}", at_lsn, [], False
        max_pages = max(1, min(max_bytes or 4 << 20, self.config.fetch_max_bytes_cap) // PAGE_SIZE_BYTES)
        for _ in range(2):
            if at_lsn < replica.oldest_version_lsn:
                break
            rows = await self._in_reader(self.store.read_pages_at, volume_id, segment, at_lsn, from_page,
                                         max_pages + 1)
            if at_lsn >= replica.oldest_version_lsn:  # GC may have raised it while we read
                return Code.OK, "", at_lsn, rows[:max_pages], len(rows) > max_pages
        return Code.TOO_OLD, f"versions below {replica.oldest_version_lsn} were collected", at_lsn, [], False

    async def install_snapshot(self, replica: SegmentReplica, at_lsn: int,
                               pages: list[tuple[int, int, int, bytes]], source: str = "a peer") -> bool:
        """Seeds a replica that joined late (its peers collected the records it lacks) with a
        peer's page images as of at_lsn, a point that peer materialised; gossip then fetches
        the records above it (and a secondary region's seed, `seed_replica`, from the primary's).
        False when there is nothing to do (the replica is past it)."""
        async with self._store_lock:
            if at_lsn <= replica.materialised_lsn or self.replicas.get(replica.key) is not replica:
                return False
            row = SegmentRow(replica.volume_id, replica.segment, replica.meta, replica.vdl_hint,
                             replica.min_read_lsn, at_lsn, at_lsn + 1, max(at_lsn, replica.oldest_version_lsn))
            await self._in_writer(self.store.install_snapshot, row, pages)
            replica.install_snapshot(at_lsn, row.oldest_version_lsn)
            self._stored_history[replica.key] = row.meta.history
            self._dirty.add(replica.key)
        log.info("segment %s/%d: seeded with %d page image(s) as of LSN %d from %s; SCL %d",
                 replica.volume_id, replica.segment, len(pages), at_lsn, source, replica.chain.scl)
        # a meta frame after everything accepted so far: once durable, durable_scl covers the chain
        changes = Changes(meta=replica.meta, scl_after=replica.chain.scl)
        await self._persist([(replica, changes, None)], None)
        return True

    async def seed_replica(self, volume_id: str, segment: int, epoch: int, owner: str,
                           history: tuple[Truncation, ...], members: tuple[str, ...], at_lsn: int, up_to_lsn: int,
                           pages: list[tuple[int, int, int, bytes]], incoming: list[Incoming]
                           ) -> tuple[Rejection | None, SegmentReplica | None]:
        """A secondary region's replicator seeds this replica from the primary's page images as of
        at_lsn and the records (at_lsn, up_to_lsn] (sixfold/globaldb/DESIGN.md, "Seeding"); the
        replica takes the primary's epoch, owner and history. Durable before it returns."""
        problem = (bad_volume_id(volume_id) or bad_segment(segment) or check_members(members)
                   or (None if members else "members are required: this region's placement of the segment")
                   or next((f"page {page}: version lsn={lsn} epoch {page_epoch} ({len(data)} bytes) is not a "
                            f"{PAGE_SIZE_BYTES}-byte image at or below the seed point {at_lsn} and epoch {epoch}"
                            for page, lsn, page_epoch, data in pages
                            if not 0 < lsn <= at_lsn or page_epoch > epoch or len(data) != PAGE_SIZE_BYTES), None))
        if problem is not None:
            return Rejection(Code.INVALID, problem), None
        await self.log.wait_for_room()
        key = (volume_id, segment)
        replica = self.replicas.get(key) or SegmentReplica(volume_id, segment)
        verdict = replica.check_seed(epoch, owner, history, at_lsn, up_to_lsn, incoming)
        if isinstance(verdict, Rejection):
            return verdict, replica if key in self.replicas else None
        # -- no await from the check to here: the replica is as checked
        if key not in self.replicas:
            self.replicas[key] = replica
            log.info("created replica %s/%d by a seed from the primary region", volume_id, segment)
        learned = replica.learn(Meta(epoch, owner, history, members))
        self.note_hints(replica, up_to_lsn, 0)   # (at or below the primary's VDL: never truncated)
        if verdict and at_lsn > replica.materialised_lsn:
            await self.install_snapshot(replica, at_lsn, pages, "the primary region")
        added = replica.ingest(incoming)
        # a meta frame at least: once durable, everything accepted so far is (the log is in order)
        work = [(replica, learned if learned.meta is not None else Changes(meta=replica.meta), None)]
        if added.records:
            work.append((replica, added, None))
        work[0][1].scl_after = replica.chain.scl
        await self._persist(work, None)
        log.info("segment %s/%d: %d record(s) of the primary region's seed up to LSN %d%s; SCL %d", volume_id,
                 segment, len(added.records), up_to_lsn, "" if verdict else " (the seed again: pages kept)",
                 replica.durable_scl)
        return None, replica

    # -------------------------------------------------------------- helpers

    async def _in_writer(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn, *args)

    async def _in_reader(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, *args)

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_s

