"""The quorum client: how a compute node reads and writes the shared volume.

I/O shell around sixfold.volume.quorum.VolumeTracker. One bidirectional Append
stream per storage node; records of concurrent transactions wait in a
per-node boxcar while that node has MAX_INFLIGHT_BATCHES batches unacked, so
under load each gRPC message carries many transactions (group commit). Acks
carry each segment's SCL; VDL advances by bookkeeping only.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass

import grpc

from sixfold import unsafe
from sixfold.client.channels import ChannelPool
from sixfold.client.convert import truncations_to_pb
from sixfold.client.membership import MembershipChanger
from sixfold.client.errors import CommitTimeoutError, FencedError, ReadUnavailableError, StorageError
from sixfold.client.recovery import RecoveredVolume, recover_volume
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.placement import StorageNodeInfo, place_segment, segment_of_page
from sixfold.volume.quorum import LAL_RECORDS_DEFAULT, VolumeTracker, proves_segment_empty
from sixfold.volume.records import LogRecord, RecordKind, FLAG_CPL, encode_record, make_delta

log = logging.getLogger(__name__)

MAX_INFLIGHT_BATCHES = 2
BATCH_MAX_BYTES = 4 * 1024 * 1024
PENDING_MAX_BYTES = 64 * 1024 * 1024   # a node this far behind is dropped from the stream; gossip heals it
RECONNECT_DELAY_S = 0.2


@dataclass(frozen=True, slots=True)
class PageWrite:
    page: int
    image: bytes              # the page after the transaction
    base: bytes | None = None  # the page before it, when known: lets the record be a delta


@dataclass
class ClientSettings:
    volume_id: str = "vol-1"
    pages_per_segment: int = 256
    commit_timeout_s: float = 10.0
    lal_records: int = LAL_RECORDS_DEFAULT
    read_hedge_ms: float = 30.0
    read_timeout_s: float = 5.0
    rpc_timeout_s: float = 2.0
    local_az: str | None = None
    # > 0: a stream with nothing to send still tells its node a new VDL this long after the
    # last batch (an empty batch), so that storage's vdl_hint does not stay one transaction
    # behind when the writer goes quiet; a secondary region ships up to it (sixfold/globaldb)
    vdl_hint_interval_s: float = 0.0
    # global database: called with the commit's deadline before a durable commit is acknowledged;
    # raises when the writer holds no lease from every secondary region (sixfold/globaldb/lease.py)
    commit_gate: object = None


def _payload(write: PageWrite) -> tuple[RecordKind, bytes]:
    """A delta against the previous image where that is smaller, else the full page."""
    delta = make_delta(write.base, write.image) if write.base is not None else None
    if delta is not None:
        return RecordKind.PAGE_DELTA, delta
    return RecordKind.FULL_PAGE, write.image


class _MemberStream:
    """The Append stream to one storage node, reconnecting when it breaks."""

    def __init__(self, client: "QuorumClient", node: StorageNodeInfo) -> None:
        self.client = client
        self.node = node
        self.pending: list[tuple[int, bytes]] = []   # (segment, encoded record)
        self.pending_bytes = 0
        self.sent_seq = 0
        self.acked_seq = 0
        self.connected = False
        self.dropped_records = 0
        self._wakeup = asyncio.Event()
        self._announced: set[int] = set()
        self._task: asyncio.Task | None = None
        # batches sent on this stream and not yet acknowledged: resent on the next stream
        self._unacked: collections.deque[tuple[int, list[tuple[int, bytes]]]] = collections.deque()
        self._must_announce = False
        self.hinted_vdl = 0          # the vdl_hint of the last batch sent
        self.last_sent_s = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"stream-{self.node.node_id}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def push(self, item: tuple[int, bytes], size_bytes: int) -> None:
        """item: (segment, encoded record), shared by the PG's six streams."""
        if self.pending_bytes + size_bytes > PENDING_MAX_BYTES:
            # never let a slow node hold the writer's memory: it catches up by gossip
            self.dropped_records += len(self.pending) + 1
            self.pending.clear()
            self.pending_bytes = 0
            return
        self.pending.append(item)
        self.pending_bytes += size_bytes
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def _run(self) -> None:
        while not self.client.closed:
            try:
                await self._stream_once()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.debug("stream to %s broke: %s", self.node.address, exc.code())
            except asyncio.InvalidStateError:
                log.debug("stream to %s finished under us", self.node.address)
            except Exception:  # a bug here must not end the writer: log it and reconnect
                log.exception("stream to %s failed", self.node.address)
            self.connected = False
            self._requeue_unacked()
            self._announced.clear()
            await asyncio.sleep(RECONNECT_DELAY_S)

    def _requeue_unacked(self) -> None:
        """What the broken stream did not acknowledge goes out again on the next one
        (the node drops duplicates); past the memory bound the node heals by gossip."""
        resend = [item for _, items in self._unacked for item in items]
        self._unacked.clear()
        self.pending[:0] = resend
        self.pending_bytes = sum(len(encoded) for _, encoded in self.pending)
        if self.pending_bytes > PENDING_MAX_BYTES:
            self.dropped_records += len(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
        # a restarted node must learn again which segments this writer waits on, so that
        # it pushes their SCL as gossip fills them in (even if nothing new is sent)
        self._must_announce = True

    async def _stream_once(self) -> None:
        stub = self.client.pool.stub(self.node.address)
        call = stub.Append()
        self.sent_seq = self.acked_seq = 0
        reader = asyncio.get_running_loop().create_task(self._read_acks(call))
        reader.add_done_callback(self._wake)  # one event for "work to send" and "the stream ended"
        first = True
        try:
            while True:
                if reader.done():
                    reader.result()  # raises the stream error
                    return
                idle = not self.pending and not self._must_announce
                hint_wait_s = self._hint_wait_s() if idle else None
                if hint_wait_s is not None and hint_wait_s <= 0:
                    idle = False   # an empty batch: it carries the new VDL
                if idle or self.sent_seq - self.acked_seq >= MAX_INFLIGHT_BATCHES:
                    self._wakeup.clear()
                    if hint_wait_s is None:
                        await self._wakeup.wait()
                    else:
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), hint_wait_s)
                        except asyncio.TimeoutError:
                            pass
                    continue
                self.sent_seq += 1
                request = self._take_batch(first, self.sent_seq)
                first = False
                await call.write(request)
        finally:
            reader.cancel()
            call.cancel()

    def _hint_wait_s(self) -> float | None:
        """Seconds until a VDL-only batch is due (<= 0: now), None when none is."""
        interval_s = self.client.settings.vdl_hint_interval_s
        if not interval_s or self.client.tracker.vdl <= self.hinted_vdl:
            return None
        return interval_s - (time.monotonic() - self.last_sent_s)

    def _wake(self, _task: asyncio.Task) -> None:
        self._wakeup.set()

    def _take_batch(self, first: bool, batch_seq: int) -> pb.AppendRequest:
        client = self.client
        if self.pending_bytes <= BATCH_MAX_BYTES:
            taken, self.pending = self.pending, []  # the usual case: everything fits
            self.pending_bytes = 0
        else:
            size = count = 0
            for _, encoded in self.pending:
                if size + len(encoded) > BATCH_MAX_BYTES and count:
                    break
                size += len(encoded)
                count += 1
            taken = self.pending[:count]
            del self.pending[:count]
            self.pending_bytes -= size
        self._unacked.append((batch_seq, taken))
        by_segment: dict[int, list[bytes]] = {}
        for segment, encoded in taken:
            records = by_segment.get(segment)
            if records is None:
                by_segment[segment] = [encoded]
            else:
                records.append(encoded)
        if self._must_announce:
            self._must_announce = False
            mine = set(client.tracker.pg_segments_of(self.node.address))
            for segment in client.tracker.pending_segments() & mine:
                by_segment.setdefault(segment, [])
        segments = []
        for segment, records in by_segment.items():
            announce = segment not in self._announced
            self._announced.add(segment)
            segments.append(pb.SegmentAppend(
                segment=segment, records=b"".join(records),
                members=list(client.tracker.pg(segment).members) if announce else [],
            ))
        self.hinted_vdl = client.tracker.vdl
        if client.settings.vdl_hint_interval_s:
            self.last_sent_s = time.monotonic()
        return pb.AppendRequest(
            batch_seq=batch_seq,
            volume_id=client.settings.volume_id, volume_epoch=client.epoch, writer_id=client.writer_id,
            vdl_hint=client.tracker.vdl, min_read_lsn=client.min_read_lsn(),
            truncations=truncations_to_pb(client.history) if first else [],
            segments=segments,
        )

    async def _read_acks(self, call) -> None:
        async for ack in call:
            self.connected = True
            if ack.error in (pb.STALE_EPOCH, pb.NOT_EPOCH_OWNER) or ack.node_epoch > self.client.epoch:
                # a newer epoch: another writer recovered the volume. The SCLs in this ack may
                # count *its* records (same LSNs, newer epoch), so they must never move our VDL
                # (an ack of one of our own batches reports the segment's SCL as it is now)
                self.client._on_fenced(self.node, ack)
                return
            if ack.error != pb.OK:
                log.warning("node %s refused a batch: %s %s", self.node.address, pb.ErrorCode.Name(ack.error), ack.detail)
                raise StorageError(ack.detail)
            self.acked_seq = max(self.acked_seq, ack.batch_seq)
            while self._unacked and self._unacked[0][0] <= self.acked_seq:
                self._unacked.popleft()
            self.client._on_ack(self.node, ack)
            if self.pending or self._must_announce:
                self._wakeup.set()  # room in the window for what waits (else push wakes the sender)
            elif self.client.settings.vdl_hint_interval_s and self.client.tracker.vdl > self.hinted_vdl:
                self._wakeup.set()  # the VDL moved: a VDL-only batch may become due


class QuorumClient:
    """Writer (and reader) access to the volume. Use from one asyncio loop."""

    def __init__(self, nodes: list[StorageNodeInfo], writer_id: str, settings: ClientSettings | None = None) -> None:
        self.nodes = list(nodes)
        self.writer_id = writer_id
        self.settings = settings or ClientSettings()
        self.pool = ChannelPool()
        self.tracker = VolumeTracker(lal_records=self.settings.lal_records)
        self.epoch = 0
        self.history: tuple = ()
        self.closed = False
        self.fenced: str | None = None
        self.fencing_ignored = False   # only with SIXFOLD_UNSAFE_IGNORE_FENCING (see sixfold/unsafe.py)
        if unsafe.enabled():
            log.critical("UNSAFE fault injection is on: %s (see sixfold/unsafe.py)", ", ".join(unsafe.enabled()))
        self.recovered: RecoveredVolume | None = None
        self._streams: dict[str, _MemberStream] = {}
        self._node_by_address = {n.address: n for n in self.nodes}
        self._waiters: list[tuple[int, int, asyncio.Future]] = []          # by LSN
        self._deadlines: list[tuple[float, int, int, asyncio.Future]] = []  # by deadline (monotonic s)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_at = 0.0
        self._waiter_ids = itertools.count()
        self._room = asyncio.Event()
        self.commits = 0
        self._record_listeners: list = []
        # guards the tracker for callers on other threads (the SQLite writer issues and
        # waits from its own threads); the loop takes it only for short bookkeeping
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.read_floor_provider = None   # callable -> the compute node's oldest pinned read LSN
        self._vdl_listeners: list = []
        self._member_listeners: list = []
        # a reader: the PG members its writer announced (a node replaced at the PG's creation
        # or by a membership change); the placement's members otherwise
        self.followed_members: dict[int, tuple[str, ...]] = {}
        self.records_sent = 0
        self.membership = MembershipChanger(self)   # replaces storage nodes when the coordinator asks

    # --- life cycle ---------------------------------------------------------------
    async def open_writer(self, min_epoch: int = 0) -> RecoveredVolume:
        """Runs recovery (fencing any earlier writer), then accepts commits."""
        recovered = await recover_volume(
            self.pool, self.settings.volume_id, self.nodes, self.writer_id, self.settings.rpc_timeout_s,
            min_epoch=min_epoch,
        )
        self.recovered = recovered
        self._loop = asyncio.get_running_loop()
        self.epoch = recovered.epoch
        self.history = recovered.history
        self.tracker = VolumeTracker(recovered.vdl, recovered.segment_tails, self.settings.lal_records)
        for segment, membership in recovered.segment_memberships.items():
            self.tracker.add_pg(segment, membership.members)
            self.tracker.set_membership(segment, membership)  # the placement was only the start
        for node in self.nodes:
            stream = self._streams[node.address] = _MemberStream(self, node)
            stream.start()
        log.info("writer %s open at epoch %d, VDL %d (recovery %.3f s)",
                 self.writer_id, self.epoch, recovered.vdl, recovered.duration_s)
        return recovered

    async def close(self) -> None:
        self.closed = True
        with self._cond:
            self._cond.notify_all()
        await self.membership.close()
        for stream in self._streams.values():
            await stream.stop()
        self._fail_waiters(StorageError("the quorum client was closed"))
        await self.pool.close()

    # --- writes -------------------------------------------------------------------
    @property
    def vdl(self) -> int:
        return self.tracker.vdl

    def _segment_members(self, segment: int) -> tuple[str, ...]:
        followed = self.followed_members.get(segment)
        if followed is not None:
            return followed
        with self._cond:   # re-entrant use from issue_from_thread is fine: Condition wraps an RLock
            if not self.tracker.has_pg(segment):
                placed = tuple(n.address for n in place_segment(segment, self.nodes))
                members = self.membership.initial_members(placed)
                self.tracker.add_pg(segment, members)
                if members != placed:
                    self.announce_members(segment, members)
            return self.tracker.pg(segment).members

    # --- PG members for readers (the redo stream carries them) ----------------------
    def add_member_listener(self, listener) -> None:
        """listener(segment, members) runs on the loop whenever a PG's members stop being its
        placement's: readers must read from the members the writer writes to."""
        self._member_listeners.append(listener)

    def announce_members(self, segment: int, members: tuple[str, ...]) -> None:
        """Any thread (a new PG is made on the SQLite thread, a membership change on the loop)."""
        if self._loop is not None:
            for listener in self._member_listeners:
                self._loop.call_soon_threadsafe(listener, segment, tuple(members))

    def members_snapshot(self) -> dict[int, tuple[str, ...]]:
        """Every PG's members now (a new redo subscriber starts from it)."""
        with self._cond:
            return {segment: pg.members for segment, pg in self.tracker.pgs.items()}

    def follow_members(self, members_by_segment: dict[int, tuple[str, ...]]) -> None:
        """A reader: read these PGs from the members its writer announced."""
        self.followed_members.update(members_by_segment)

    async def commit(self, writes: list[PageWrite]) -> int:
        """Makes one transaction durable; returns its commit LSN once VDL >= it."""
        deadline = time.monotonic() + self.settings.commit_timeout_s
        commit_lsn = await self.issue(writes, deadline)
        await self.wait_durable(commit_lsn, deadline)
        return commit_lsn

    async def issue(self, writes: list[PageWrite], deadline: float | None = None) -> int:
        """Sends one transaction's records (waiting only for LAL room); returns its commit LSN.

        The caller may release its own locks here and wait for durability with
        wait_durable(): that is how one SQLite writer still gets group commit.
        """
        if self.fenced:
            raise FencedError(self.fenced)
        if self.closed or not self._streams:
            raise StorageError("the volume is not open for writing")
        assert writes, "a transaction writes at least one page"
        if deadline is None:
            deadline = time.monotonic() + self.settings.commit_timeout_s
        segments = [segment_of_page(w.page, self.settings.pages_per_segment) for w in writes]
        for segment in set(segments):
            self._segment_members(segment)
        while self._room_for(len(writes)) is False:
            self._room.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommitTimeoutError(self._quorum_report(f"the LAL is reached (VDL {self.tracker.vdl})"))
            try:
                await asyncio.wait_for(self._room.wait(), remaining)
            except asyncio.TimeoutError:
                pass
            if self.fenced:
                raise FencedError(self.fenced)
        payloads = [_payload(w) for w in writes]
        with self._cond:
            issued = self.tracker.issue_transaction(segments)
        self._push_issued(self._encode(writes, payloads, issued))
        return issued[-1].lsn

    def issue_from_thread(self, writes: list[PageWrite]) -> int:
        """issue() for a caller on another thread (the SQLite writer): LSNs are allocated
        and records encoded right here, without waiting for the loop; the loop gets them
        in LSN order. Waits only while the LAL is reached."""
        if self.fenced:
            raise FencedError(self.fenced)
        if self.closed or self._loop is None:
            raise StorageError("the volume is not open for writing")
        assert writes, "a transaction writes at least one page"
        deadline = time.monotonic() + self.settings.commit_timeout_s
        segments = [segment_of_page(w.page, self.settings.pages_per_segment) for w in writes]
        payloads = [_payload(w) for w in writes]   # deltas need no LSN: outside the lock
        with self._cond:
            for segment in set(segments):
                self._segment_members(segment)
            while self.tracker.room() < len(writes):
                remaining = deadline - time.monotonic()
                if self.fenced:
                    raise FencedError(self.fenced)
                if remaining <= 0:
                    raise CommitTimeoutError(self._quorum_report(f"the LAL is reached (VDL {self.tracker.vdl})"))
                self._cond.wait(remaining)
            issued = self.tracker.issue_transaction(segments)
            encoded = self._encode(writes, payloads, issued)
            # scheduled under the lock: the loop pushes transactions in LSN order
            self._loop.call_soon_threadsafe(self._push_issued, encoded)
        return issued[-1].lsn

    def wait_durable_from_thread(self, lsn: int) -> None:
        """Blocks the calling (non-loop) thread until VDL >= lsn. The ack that moves VDL
        notifies the condition: no loop wake-up and no task per wait."""
        deadline = time.monotonic() + self.settings.commit_timeout_s
        with self._cond:
            while self.tracker.vdl < lsn and not self._unsafe_ack():
                if self.fenced:
                    raise FencedError(self.fenced)
                if self.closed:
                    raise StorageError("the quorum client was closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommitTimeoutError(self._quorum_report(
                        f"commit LSN {lsn} is not durable after {self.settings.commit_timeout_s:.1f} s"))
                self._cond.wait(remaining)
        self.pass_commit_gate_from_thread(deadline)

    # --- the commit gate (global database: the primary writer's lease, sixfold/globaldb/lease.py) --
    def commit_gate_open(self) -> bool:
        """True when a durable commit may be acknowledged right now."""
        gate = self.settings.commit_gate
        if gate is None:
            return True
        held = getattr(gate, "held", None)
        return held is not None and held()

    def pass_commit_gate_from_thread(self, deadline: float | None = None) -> None:
        """Blocks until a durable commit may be acknowledged; raises at `deadline`."""
        if not self.commit_gate_open():
            self.settings.commit_gate(deadline if deadline is not None
                                      else time.monotonic() + self.settings.commit_timeout_s)

    async def pass_commit_gate(self, deadline: float | None = None) -> None:
        """pass_commit_gate_from_thread() for the loop: the wait for a lease runs in a thread."""
        if not self.commit_gate_open():
            await asyncio.get_running_loop().run_in_executor(None, self.pass_commit_gate_from_thread, deadline)

    def _room_for(self, count: int) -> bool:
        with self._cond:
            return self.tracker.room() >= count

    def _encode(self, writes, payloads, issued) -> list[tuple[int, LogRecord, bytes]]:
        out = []
        for write, (kind, payload), rec in zip(writes, payloads, issued):
            record = LogRecord(lsn=rec.lsn, prev_lsn=rec.prev_lsn, epoch=self.epoch, page=write.page,
                               kind=kind, flags=FLAG_CPL if rec.is_cpl else 0, payload=payload)
            out.append((rec.segment, record, encode_record(record)))
        return out

    def _push_issued(self, encoded: list[tuple[int, LogRecord, bytes]]) -> None:
        """On the loop: into every member's boxcar, and to the redo listeners."""
        streams = self._streams
        for segment, record, blob in encoded:
            item = (segment, blob)
            for member in self.tracker.pg(segment).members:
                streams[member].push(item, len(blob))
            for listener in self._record_listeners:
                listener(record)
        self.records_sent += len(encoded)

    def add_record_listener(self, listener) -> None:
        """listener(record) is called for every record issued (the redo stream to readers)."""
        self._record_listeners.append(listener)

    async def wait_durable(self, lsn: int, deadline: float | None = None, commits: int = 1) -> None:
        """Returns when VDL >= lsn; `commits`: how many acknowledged commits that makes."""
        if deadline is None:
            deadline = time.monotonic() + self.settings.commit_timeout_s
        await self._wait_durable(lsn, deadline)
        await self.pass_commit_gate(deadline)
        self.commits += commits

    def _unsafe_ack(self) -> bool:
        """A test build's deliberate bug (sixfold/unsafe.py): commits acknowledged without a quorum."""
        return unsafe.ACK_BEFORE_QUORUM or self.fencing_ignored

    async def _wait_durable(self, lsn: int, deadline: float) -> None:
        if self.tracker.is_durable(lsn) or self._unsafe_ack():
            return
        future = asyncio.get_running_loop().create_future()
        waiter_id = next(self._waiter_ids)
        heapq.heappush(self._waiters, (lsn, waiter_id, future))
        # no timer per commit: one timer for the earliest deadline (_expire_waiters)
        deadlines = self._deadlines
        while deadlines and deadlines[0][3].done():
            heapq.heappop(deadlines)  # resolved long ago: keeps the heap at about the waiters in flight
        heapq.heappush(deadlines, (deadline, waiter_id, lsn, future))
        if self._deadline_timer is None or deadline < self._deadline_timer_at:
            self._arm_deadline_timer(deadline)
        await future

    def _arm_deadline_timer(self, deadline: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer_at = deadline
        self._deadline_timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), self._expire_waiters)

    def _expire_waiters(self) -> None:
        """Fails the waiters whose deadline passed; re-arms the timer for the next one."""
        self._deadline_timer = None
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines:
            deadline, _, lsn, future = deadlines[0]
            if not future.done() and deadline > now:
                self._arm_deadline_timer(deadline)
                return
            heapq.heappop(deadlines)
            if future.done():
                continue
            if self.fenced:
                future.set_exception(FencedError(self.fenced))
            else:
                future.set_exception(CommitTimeoutError(self._quorum_report(
                    f"commit LSN {lsn} is not durable after {self.settings.commit_timeout_s:.1f} s")))

    def _quorum_report(self, what: str) -> str:
        lines = [what + "; its outcome is unknown until a write quorum returns."]
        for pg in self.tracker.lagging_pgs():
            first = self.tracker.oldest_pending()
            holding = pg.members_at_or_above(first.lsn)
            missing = [m for m in pg.members if m not in holding]
            lines.append(f"segment {pg.segment}: {len(holding)} of 6 members hold LSN {first.lsn} (need 4); "
                         f"waiting for {', '.join(missing)}")
        return " ".join(lines)

    def _on_ack(self, node: StorageNodeInfo, ack: pb.AppendAck) -> None:
        moved = False
        with self._cond:
            for seg_ack in ack.segments:
                moved |= self.tracker.on_ack(seg_ack.segment, node.address, seg_ack.scl)
            if moved:
                self._cond.notify_all()
        if moved:
            vdl = self.tracker.vdl
            while self._waiters and self._waiters[0][0] <= vdl:
                _, _, future = heapq.heappop(self._waiters)
                if not future.done():
                    future.set_result(vdl)
            self._room.set()
            for listener in self._vdl_listeners:
                listener(vdl)

    def add_vdl_listener(self, listener) -> None:
        """listener(vdl) is called whenever VDL moves."""
        self._vdl_listeners.append(listener)

    def _on_fenced(self, node: StorageNodeInfo, ack: pb.AppendAck) -> None:
        if unsafe.IGNORE_FENCING:
            if not self.fencing_ignored:
                log.critical("UNSAFE: writer %s at epoch %d was fenced (node %s is at epoch %d) and ignores it: "
                             "from now on it acknowledges commits that storage refused",
                             self.writer_id, self.epoch, node.address, ack.node_epoch)
            self.fencing_ignored = True
            with self._cond:
                self._cond.notify_all()
            while self._waiters:
                future = heapq.heappop(self._waiters)[2]
                if not future.done():
                    future.set_result(self.tracker.vdl)
            return
        if self.fenced:
            return
        self.fenced = (f"writer {self.writer_id} at epoch {self.epoch} was fenced: node {node.address} is at "
                       f"epoch {ack.node_epoch}. Another writer took over; this one must stop writing.")
        log.error(self.fenced)
        with self._cond:
            self._cond.notify_all()
        self._fail_waiters(FencedError(self.fenced))
        self._room.set()

    def _fail_waiters(self, exc: Exception) -> None:
        self._deadlines.clear()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: the committer may already have timed out

    # --- read points --------------------------------------------------------------
    def min_read_lsn(self) -> int:
        """The oldest read point any user of the volume holds (sent to storage for GC)."""
        floor = self.tracker.vdl
        if self.read_floor_provider is not None:
            floor = min(floor, self.read_floor_provider())
        return floor

    # --- reads --------------------------------------------------------------------
    async def read_page(self, page: int, read_lsn: int, required_scl: int | None = None) -> bytes | None:
        """The page image at read_lsn (None: never written). One member suffices.

        required_scl: the segment's last LSN <= read_lsn; the writer knows it from
        what it issued, a reader passes what the redo stream told it."""
        segment = segment_of_page(page, self.settings.pages_per_segment)
        members = self._segment_members(segment)
        if required_scl is None and self._streams:
            required_scl = self.tracker.tail_at(segment, read_lsn)   # the writer knows its tails
        candidates = self._read_order(segment, members, read_lsn if required_scl is None else required_scl)
        request = pb.GetPageRequest(
            volume_id=self.settings.volume_id, segment=segment, page=page, read_lsn=read_lsn,
            volume_epoch=self.epoch, wait_ms=200, required_scl=required_scl,
        )
        deadline = time.monotonic() + self.settings.read_timeout_s
        errors: list[str] = []
        unknown_by: set[str] = set()
        tasks: dict[asyncio.Task, str] = {}
        queue = list(candidates)
        try:
            while time.monotonic() < deadline:
                if queue and (not tasks or len(tasks) < 2):
                    member = queue.pop(0)
                    tasks[asyncio.ensure_future(self._get_page(member, request))] = member
                if not tasks:
                    if not queue:
                        queue = list(candidates)  # every member said no: try the round again
                        await asyncio.sleep(0.05)
                    continue
                done, _ = await asyncio.wait(tasks, timeout=self.settings.read_hedge_ms / 1000,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    member = tasks.pop(task)
                    reply = task.result()
                    if isinstance(reply, str):
                        errors.append(f"{member}: {reply}")
                        continue
                    if reply.error == pb.OK:
                        return reply.data if reply.exists else None
                    if reply.error == pb.UNKNOWN_SEGMENT:
                        unknown_by.add(member)
                        if proves_segment_empty(len(unknown_by), len(members)):
                            return None
                    if reply.error == pb.STALE_EPOCH:
                        raise FencedError(f"reads at epoch {self.epoch} are fenced: {reply.detail}")
                    errors.append(f"{member}: {pb.ErrorCode.Name(reply.error)} {reply.detail}")
        finally:
            for task in tasks:
                task.cancel()
        raise ReadUnavailableError(
            f"page {page} (segment {segment}) at LSN {read_lsn}: no member answered within "
            f"{self.settings.read_timeout_s:.1f} s; last errors: {'; '.join(errors[-6:]) or 'none'}"
        )

    def _read_order(self, segment: int, members: tuple[str, ...], read_lsn: int) -> list[str]:
        """Members known to hold read_lsn first, nearest AZ first; then the rest."""
        holding = set(self.tracker.readable_members(segment, read_lsn))
        local = self.settings.local_az

        def rank(member: str) -> tuple[int, int]:
            node = self._node_by_address.get(member)
            return (0 if member in holding else 1, 0 if node and node.az == local else 1)

        return sorted(members, key=rank)

    async def _get_page(self, member: str, request: pb.GetPageRequest):
        try:
            return await self.pool.stub(member).GetPage(request, timeout=self.settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}"
