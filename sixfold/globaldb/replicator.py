"""A secondary region's replicator: pulls the primary's log from the primary's storage and
writes it into this region's storage, then feeds this region's readers (DESIGN.md).

The shell around `decisions.py`: one round = ask every primary storage node for its segment
states, pick the point and members, fetch each segment's new records, adopt the dense run
into the `MirrorClient`. It serves the Compute service's `Status` and `SubscribeRedo` (the
region's readers follow it as they would follow a writer) and nothing else. A region with no
recorded position whose primary collected its log from the start is first seeded from the
primary's page images (`seeding.py`), and shipping starts at the seed point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import grpc

from sixfold.client.channels import ChannelPool
from sixfold.client.convert import truncations_from_pb
from sixfold.globaldb.decisions import ReplicaView, SourcePoint, dense_run, durable_tails, seed_needed, source_point
from sixfold.globaldb.seeding import SeedFailed, seed_region
from sixfold.globaldb.mirror import MirrorClient
from sixfold.nodes.compute.redo import LagWindow, RedoHub, serve_redo
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.epochs import Truncation, record_is_current
from sixfold.nodes.storage.replica import split_records
from sixfold.volume.placement import StorageNodeInfo
from sixfold.volume.records import RecordError

log = logging.getLogger("sixfold.replicator")

ROUND_IDLE_S = 0.01               # between rounds that found nothing new to ship
SOURCE_TIMEOUT_S = 2.0            # one RPC to the primary region
POLL_INTERVAL_S = 0.5             # every primary node's segment states, at least this often
SHIP_WINDOW_RECORDS = 20_000      # adopted records waiting for this region's write quorum, at most
FETCH_MAX_BYTES = 4 * 1024 * 1024  # per segment per round
POSITION_SAVE_INTERVAL_S = 0.5
POSITION_FILE = "position.json"
MARKS_MAX = 10_000                # primary VDL marks waiting to be reached (for the lag)


@dataclass(frozen=True)
class Position:
    """A durable point of this region: every record at or below `vdl` is on a write quorum here."""

    vdl: int = 0
    tails: dict[int, int] = None  # type: ignore[assignment]
    epoch: int = 0
    owner: str = ""
    history: tuple[Truncation, ...] = ()
    seeded_lsn: int = 0   # this region's storage was seeded from the primary's pages at this LSN (0: never)

    def to_json(self) -> str:
        return json.dumps({"vdl": self.vdl, "tails": {str(k): v for k, v in sorted((self.tails or {}).items())},
                           "epoch": self.epoch, "owner": self.owner,
                           "history": [[t.epoch, t.start_lsn, t.baseline_lsn] for t in self.history],
                           "seeded_lsn": self.seeded_lsn})

    @classmethod
    def from_json(cls, text: str) -> "Position":
        data = json.loads(text)
        return cls(int(data["vdl"]), {int(k): int(v) for k, v in data["tails"].items()}, int(data["epoch"]),
                   str(data["owner"]), tuple(Truncation(*t) for t in data["history"]),
                   int(data.get("seeded_lsn", 0)))


def load_position(data_dir: Path) -> Position:
    path = data_dir / POSITION_FILE
    if not path.exists():
        return Position(tails={})
    return Position.from_json(path.read_text())


def save_position(data_dir: Path, position: Position) -> None:
    """Atomic and durable: a torn or lost file would only make the replicator ship again."""
    path = data_dir / POSITION_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(position.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Replicator:
    def __init__(self, node_id: str, source: list[StorageNodeInfo], mirror: MirrorClient, data_dir: Path) -> None:
        self.node_id = node_id
        self.source = source
        self.mirror = mirror
        self.data_dir = data_dir
        self.pool = ChannelPool()
        self.hub = RedoHub(node_id, lambda: self.mirror.tracker.tails_snapshot())   # (open_mirror replaces it)
        self.lag = LagWindow()
        self.lag_ms_last = 0.0
        self.lag_samples_total = 0
        self.point: SourcePoint | None = None
        self.source_seen_unix_s = 0.0
        self.started = asyncio.Event()
        self.problem = ""                          # why shipping stopped, for the log and Status
        self._marks: deque[tuple[int, float]] = deque()   # (primary VDL, its stamp), ascending
        self._durable = Position(tails={})
        self._adopted: deque[tuple[int, int]] = deque()   # (lsn, segment) above the durable point
        self._saved_vdl = -1
        self._vdl_moved = asyncio.Event()
        self.polled_s = 0.0
        self.source_vdl = 0   # the highest primary VDL heard of
        self._resumed = False   # the start-up check of the recorded position against the source is done
        self._poll_now = True
        self.views: list[ReplicaView] = []   # the last poll's answers
        self.seeding = False                  # seeding this region from the primary's pages now

    # ------------------------------------------------------------ life cycle

    async def run(self, stop: asyncio.Event) -> None:
        self._durable = load_position(self.data_dir)
        self._saved_vdl = self._durable.vdl
        while not stop.is_set() and self.point is None:
            await self.poll_source()
            if self.point is None:
                await asyncio.sleep(0.2)
        if stop.is_set():
            return
        if self._durable.vdl == 0:
            # the first poll asked the primary to keep its records from here on; a collection that
            # was already under way when it came shows by the next poll
            await asyncio.sleep(POLL_INTERVAL_S)
            await self.poll_source()
            if seed_needed(0, self.point, self.views):
                seeded = await self._seed(stop)
                if seeded is None:
                    return
                self._durable = seeded
                self._save_now()
                while self._marks and self._marks[0][0] <= seeded.vdl:   # they would time the region's
                    self._marks.popleft()                                # absence, not its lag
        d, p = self._durable, self.point
        # the primary's newest epoch and history, not the recorded ones: they may have moved on
        self.mirror.open_mirror(d.vdl, d.tails or {}, p.epoch, p.owner, p.history)
        # ... and a recovery may have re-stamped records at or below the recorded position (a
        # switchover's fence, when this replicator follows the new primary from there): this
        # region's storage drops its old copies when it learns that history, so send the current ones
        restamped = [t.baseline_lsn for t in p.history if t not in d.history and t.baseline_lsn < d.vdl]
        if restamped:
            await self._resend_current(p, min(restamped), d.vdl)
        self._resumed = True
        self.hub.epoch, self.hub.vdl, self.hub.issued_lsn = p.epoch, d.vdl, d.vdl
        self.mirror.add_record_listener(self.hub.on_record)
        self.mirror.add_vdl_listener(self._on_vdl)
        self.mirror.read_floor_provider = lambda: min(self.hub.reader_read_lsns.values(), default=self.mirror.vdl)
        self.started.set()
        saver = asyncio.get_running_loop().create_task(self._save_positions(stop))
        try:
            while not stop.is_set():
                shipped = await self.round()
                if not shipped:
                    await asyncio.sleep(ROUND_IDLE_S)
        finally:
            saver.cancel()
            self._save_now()

    async def _seed(self, stop: asyncio.Event) -> Position | None:
        """Seeds this empty region from the primary's page images (seeding.py); tries again until
        it is done or the replicator stops (None). A refusal by this region's storage (it holds a
        log that is not the primary's) is reported as needs-resync and tried again slowly."""
        self.seeding = True
        log.info("this region holds nothing and the primary collected its log from the start: seeding from pages")
        try:
            while not stop.is_set():
                try:
                    seeded = await seed_region(self, self.mirror.nodes)
                except SeedFailed as exc:
                    self.problem = str(exc)
                    log.warning("%s; trying again", exc)
                    await asyncio.sleep(5.0 if exc.refused else 1.0)
                    await self.poll_source()
                    continue
                self.problem = ""
                log.info("seeded this region at LSN %d (the primary at epoch %d of %s); shipping from there",
                         seeded.lsn, seeded.epoch, seeded.owner)
                return Position(seeded.lsn, seeded.tails, seeded.epoch, seeded.owner, seeded.history, seeded.lsn)
            return None
        finally:
            self.seeding = False

    async def close(self) -> None:
        await self.mirror.close()
        await self.pool.close()

    # ------------------------------------------------------------ one round

    async def round(self) -> bool:
        """Ships what the primary has and this region lacks; True if it adopted something.

        One round trip across regions per round: every segment is fetched from the member the
        last poll chose, without an upper bound, and the replies' own states say how far the
        primary's VDL has gone. The states of every primary node are polled only now and then,
        and at once when a round finds a hole or a newer epoch (a new segment, a lagging member,
        a recovery in the primary)."""
        if self._poll_now or time.monotonic() - self.polled_s >= POLL_INTERVAL_S:
            await self.poll_source()
        point = self.point
        if point is None:
            return False
        if self.mirror.fenced:
            self.problem = f"this region's storage has a newer epoch than the primary's: {self.mirror.fenced}"
            return False
        issued = self.mirror.tracker.next_lsn - 1
        restamped = [t.baseline_lsn for t in point.history if t not in self.mirror.history and t.baseline_lsn < issued]
        await self.mirror.remirror(point.epoch, point.owner, point.history)
        if restamped:
            await self._resend_current(point, min(restamped), issued)
        if self.hub.epoch != point.epoch:   # readers read at the epoch their stream started with
            self.hub.epoch = point.epoch
            self.hub.drop_subscribers()
        if self.mirror.backlog_records >= SHIP_WINDOW_RECORDS:   # back-pressure: this region is behind
            self._vdl_moved.clear()
            try:
                await asyncio.wait_for(self._vdl_moved.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            return False
        after = self.mirror.tracker.next_lsn - 1
        fetched = await asyncio.gather(*(self._fetch(segment, member, after, 0)
                                         for segment, (member, _) in sorted(point.fetch_from.items())))
        replies = [state for _, state in fetched if state is not None]
        vdl = max([point.vdl] + [r.vdl_hint for r in replies])
        if replies:
            self.source_vdl = max(self.source_vdl, vdl)
            self.source_seen_unix_s = time.time()
        stamps = [r.vdl_hint_unix_s for r in replies if r.vdl_hint == vdl and r.vdl_hint_unix_s > 0]
        self._note_mark(vdl, min(stamps, default=0.0))
        if any(r.volume_epoch != point.epoch for r in replies):
            self._poll_now = True   # the primary recovered: learn its epoch and history first
            return False
        up_to = min(vdl, after + SHIP_WINDOW_RECORDS - self.mirror.backlog_records)
        if up_to <= after:
            return False
        records = [item for batch, _ in fetched for item in batch]
        run, why = dense_run(records, after, up_to, point.history)
        self._poll_now = bool(why)
        if run:
            self.mirror.adopt(run)
            self._adopted.extend((record.lsn, segment) for segment, record, _ in run)
        if run:
            self.problem = ""
        elif not self.problem.startswith("needs-resync"):
            self.problem = why
        return bool(run)

    async def _resend_current(self, point: SourcePoint, baseline: int, issued: int) -> None:
        """A primary recovery re-stamped (baseline, ...] and this region now drops the old copies
        it holds there: send the current copies of what was already adopted in that range."""
        fetched = await asyncio.gather(*(self._fetch(segment, member, baseline, issued)
                                         for segment, (member, _) in sorted(point.fetch_from.items())))
        current = [item for batch, _ in fetched for item in batch
                   if record_is_current(item[1].lsn, item[1].epoch, point.history)]
        log.info("a primary recovery re-stamped records above LSN %d: sending %d current copies again",
                 baseline, len(current))
        self.mirror.resend(sorted(current, key=lambda item: item[1].lsn))

    async def poll_source(self) -> None:
        async def states(node: StorageNodeInfo):
            try:
                return node, await self.pool.stub(node.address).GetSegmentState(
                    pb.SegmentStateRequest(volume_id=self.mirror.settings.volume_id, shipping_to=self.node_id,
                                           # where a restart resumes; until its start-up resend
                                           # is done, everything (it may need records below that)
                                           shipped_lsn=max(0, self._saved_vdl) if self._resumed else 0),
                    timeout=SOURCE_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                return node, None

        answers = [(node, reply) for node, reply in await asyncio.gather(*(states(n) for n in self.source))
                   if reply is not None and reply.error == pb.OK]
        if not answers:
            return   # the primary region is out of reach: nothing moves (the lag grows)
        views = []
        for node, reply in answers:
            for s in reply.segments:
                try:
                    history = truncations_from_pb(s.truncations)
                except ValueError:
                    continue
                views.append(ReplicaView(node.address, s.segment, s.volume_epoch, s.epoch_owner, history, s.scl,
                                         s.vdl_hint, s.vdl_hint_unix_s, s.records_gc_lsn))
        self.views = views
        point = source_point(views)
        for warning in point.warnings:
            log.warning("%s", warning)
        self.source_seen_unix_s = time.time()
        self.polled_s = time.monotonic()
        self._poll_now = False
        self._note_mark(point.vdl, point.vdl_unix_s)
        self.point = point
        self.source_vdl = max(self.source_vdl, point.vdl)

    def _note_mark(self, vdl: int, stamp_unix_s: float) -> None:
        """A primary VDL not reached here yet, and when the primary's storage heard of it
        (unstamped ones are left out: timing them from here would leave out the way here)."""
        reached = self.mirror.vdl if self.started.is_set() else self._durable.vdl
        if stamp_unix_s > 0 and vdl > max(reached, self._marks[-1][0] if self._marks else 0):
            if len(self._marks) >= MARKS_MAX:
                self._marks.popleft()
            self._marks.append((vdl, stamp_unix_s))

    async def _fetch(self, segment: int, member: str, after: int, up_to: int) -> list:
        try:
            reply = await self.pool.stub(member).FetchRecords(pb.FetchRecordsRequest(
                volume_id=self.mirror.settings.volume_id, segment=segment, after_lsn=after, up_to_lsn=up_to,
                max_bytes=FETCH_MAX_BYTES), timeout=SOURCE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.info("fetching segment %d from %s: %s", segment, member, exc.code().name)
            return [], None
        if reply.error == pb.TOO_OLD:   # the primary no longer has the log this region needs
            self.problem = (f"needs-resync: segment {segment} at {member}: {reply.detail} (this region is "
                            f"at LSN {after}; only an empty region is seeded from pages: `sixfold region resync`)")
            log.error("%s", self.problem)
            return [], None
        if reply.error != pb.OK:
            log.info("fetching segment %d from %s: %s %s", segment, member, pb.ErrorCode.Name(reply.error),
                     reply.detail)
            return [], None
        state = reply.state if reply.HasField("state") else None
        try:
            records = split_records(reply.records) if reply.records else []   # the primary's bytes, as they are
        except RecordError as exc:
            log.error("segment %d from %s: a damaged record (%s); fetching again next round", segment, member, exc)
            return [], state
        return [(segment, record, encoded) for record, encoded in records], state

    @property
    def seeded_lsn(self) -> int:
        """The LSN this region's storage was seeded at from the primary's pages (0: never)."""
        return self._durable.seeded_lsn

    def health(self) -> str:
        """seeding | catching-up | needs-resync | fenced | ok (Status and the metrics say it)."""
        if self.seeding:
            return "needs-resync" if self.problem.startswith("needs-resync") else "seeding"
        if not self.started.is_set():
            return "catching-up"
        if self.problem.startswith("needs-resync"):
            return "needs-resync"
        if self.problem.startswith("this region"):
            return "fenced"
        return "ok"

    # ------------------------------------------------------------ this region's VDL

    def _on_vdl(self, vdl: int) -> None:
        self.hub.on_vdl(vdl)
        now_s = time.time()
        while self._marks and self._marks[0][0] <= vdl:
            _, stamp = self._marks.popleft()
            self.lag_ms_last = max(0.0, (now_s - stamp) * 1000)
            self.lag.add(self.lag_ms_last)
            self.lag_samples_total += 1
        adopted = []
        while self._adopted and self._adopted[0][0] <= vdl:
            adopted.append(self._adopted.popleft())
        d = self._durable
        self._durable = Position(vdl, durable_tails(d.tails or {}, adopted, vdl), self.mirror.epoch,
                                 self.mirror.writer_id, self.mirror.history, d.seeded_lsn)
        self._vdl_moved.set()

    async def _save_positions(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(POSITION_SAVE_INTERVAL_S)
            await asyncio.get_running_loop().run_in_executor(None, self._save_now)

    def _save_now(self) -> None:
        position = self._durable
        if position.vdl != self._saved_vdl:
            save_position(self.data_dir, position)
            self._saved_vdl = position.vdl


class ReplicatorService(compute_pb2_grpc.ComputeServicer):
    """What a replicator answers of the Compute service: Status, SubscribeRedo, Follow."""

    def __init__(self, replicator: Replicator, node_id: str, region: str, az: str, address: str) -> None:
        self.r = replicator
        self.node_id, self.region, self.az, self.address = node_id, region, az, address

    async def OpenSession(self, request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"{self.node_id} ships the primary's log into region {self.region} and runs no SQL; "
                            f"read through the region-{self.region}-reader endpoint, write through the writer endpoint")

    async def SubscribeRedo(self, request_iterator, context):
        if not self.r.started.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the replicator has not reached the primary yet")
        async for batch in serve_redo(self.r.hub, request_iterator):
            yield batch

    async def Follow(self, request, context):
        return cpb.FollowResponse(outcome="unchanged", detail="a replicator follows the primary region's storage")

    async def Status(self, request, context):
        r = self.r
        granted, refused = False, ""
        if request.lease_epoch:   # the primary writer's lease (lease.py): refused to an older epoch
            known = max(r.point.epoch if r.point else 0, r.mirror.epoch)
            granted = request.lease_epoch >= known
            refused = "" if granted else f"epoch {request.lease_epoch} is older than {known}, known here"
        health = r.health()
        return cpb.StatusResponse(
            node_id=self.node_id, role="replicator", region=self.region, az=self.az, address=self.address,
            epoch=r.mirror.epoch, vdl=r.mirror.vdl,
            replica_lag_ms_p50=r.lag.percentile(0.5), replica_lag_ms_p99=r.lag.percentile(0.99),
            health=health, sessions=len(r.hub.reader_read_lsns),
            issued_lsn=r.mirror.tracker.next_lsn - 1 if r.started.is_set() else 0,
            source_vdl=r.source_vdl, region_lag_ms_last=r.lag_ms_last,
            source_seen_unix_s=r.source_seen_unix_s, lease_granted=granted, lease_refused=refused,
            region_lag_samples_total=r.lag_samples_total,
            region_lag_ms_recent=[] if request.lease_epoch else r.lag.samples_ms,   # lease replies stay small
            seeded_lsn=r.seeded_lsn,
        )
