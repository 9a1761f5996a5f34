"""The compute node's gRPC services: SQL sessions and the redo stream.

A thin shell: SQL runs in worker threads (SQLite and the VFS block), the
gRPC server and the quorum client share the volume's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from sixfold.client import latency
from sixfold import unsafe
from sixfold.nodes.compute import forwarding
from sixfold.nodes.compute.engine import Engine, SqlError, INTERNAL
from sixfold.nodes.compute.multiwriter import PrimaryBackend, serve_commit
from sixfold.nodes.compute.redo import RedoHub, members_of, serve_redo
from sixfold.nodes.compute.values import from_pb, to_pb
from sixfold.nodes.compute.volume import ReaderVolume, WriterVolume
from sixfold.client.membership import MembershipFenced
from sixfold.client.quorum import ClientSettings
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.volume.placement import StorageNodeInfo
from sixfold.volume.records import RecordError, decode_records

log = logging.getLogger(__name__)

SESSIONS_MAX = 512
# A client that vanished in the middle of a transaction must not hold the one write lock
# for good (sessions are not tied to a connection: it may come back through the router).
IDLE_IN_TRANSACTION_TIMEOUT_S = 15.0
IDLE_SESSION_TIMEOUT_S = 600.0
EXPIRED_REMEMBERED_MAX = 1024
SQL_THREADS = 32
ROWS_MAX = 1_000_000


def start_writer_hub(volume: WriterVolume, node_id: str) -> RedoHub:
    """The writer's redo stream to readers, fed by the quorum client's listeners."""
    hub = RedoHub(node_id, volume.client.tracker.tails_snapshot, volume.client.members_snapshot)
    hub.epoch = volume.client.epoch
    hub.vdl = hub.issued_lsn = volume.read_lsn

    def read_floor() -> int:
        oldest_reader = hub.oldest_reader_lsn()
        own = volume.min_pinned_lsn()
        return own if oldest_reader is None else min(own, oldest_reader)

    volume.client.add_record_listener(hub.on_record)
    volume.client.add_vdl_listener(hub.on_vdl)
    volume.client.add_member_listener(hub.on_members)
    volume.client.read_floor_provider = read_floor
    return hub


@dataclass
class VolumeConfig:
    """What a reader needs to open the volume as writer when it is promoted."""
    nodes: list[StorageNodeInfo]
    settings: ClientSettings
    cache_pages: int
    fault_promote_delay_s: float = 0.0   # fault injection: wait before the promotion's recovery
    multi_writer: bool = False           # promoted, it becomes the multi-writer primary (MULTIWRITER.md)


class PromotionFailed(Exception):
    pass


class ComputeService(compute_pb2_grpc.ComputeServicer):
    def __init__(self, engine: Engine, node_id: str, role: str, region: str, az: str, address: str,
                 hub: RedoHub | None, config: VolumeConfig | None = None, writer_address: str = "",
                 on_step_down=lambda: None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.role = role
        self.region, self.az, self.address = region, az, address
        self.hub = hub
        self.config = config
        self.writer_address = writer_address   # reader: whom it follows
        self.follow_future = None               # reader: the follow_writer task
        self.on_step_down = on_step_down        # a fenced writer asks its process to exit (restart as reader)
        self.promoting = False
        self._ignored_epoch = 0                  # only with SIXFOLD_UNSAFE_IGNORE_FENCING: the last Follow ignored
        self._promotion: asyncio.Future | None = None   # the promotion in progress (or the last one)
        self.engine_on_connect = lambda conn: None   # set by the node: SQL functions of its front ends
        self.sessions: dict[str, object] = {}
        self.session_seen: dict[str, float] = {}    # session id -> monotonic time of its last call
        self.session_busy: dict[str, int] = {}      # session id -> calls in progress
        self.expired: dict[str, str] = {}           # session id -> why it was closed (for a clear error)
        self.executor = ThreadPoolExecutor(max_workers=SQL_THREADS, thread_name_prefix="sql")
        self.started = time.monotonic()
        # multi-writer (MULTIWRITER.md): the primary's adjudicator; a peer writer takes writes
        # while it follows the primary like a reader (role "reader" for the control plane)
        self.primary_backend: PrimaryBackend | None = None
        self.takes_writes = False

    # --- roles ------------------------------------------------------------------------
    def start_following(self, writer_address: str) -> None:
        """Reader: (re)subscribe to the writer at `writer_address`; call on the volume loop
        or before the server starts."""
        assert self.role == "reader"
        if self.follow_future is not None:
            self.follow_future.cancel()
        volume = self.engine.volume
        self.writer_address = writer_address
        self.follow_future = volume.loop.submit(follow_writer(volume, writer_address, self.node_id, asyncio.Event()))

    def fenced_reason(self) -> str | None:
        return self.engine.fenced or (self.engine.volume.client.fenced if self.role == "writer" else None)

    async def Promote(self, request, context):
        if self.role == "writer":
            reason = self.fenced_reason()
            if reason:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"this writer was fenced and cannot be promoted again: {reason}")
            volume = self.engine.volume
            return cpb.PromoteResponse(epoch=volume.client.epoch, vdl=volume.read_lsn, node_id=self.node_id)
        if self.config is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node cannot be promoted")
        # One promotion at a time, and it outlives the caller: if the coordinator that asked
        # dies, gRPC cancels this handler, but the promotion goes on and a new leader's
        # Promote joins it (a second recovery would fence this node's own first one).
        if self._promotion is None or self._promotion.done():
            self._promotion = asyncio.ensure_future(self._promote(request.failover_id, request.min_epoch))
        try:
            volume = await asyncio.shield(self._promotion)
        except PromotionFailed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return cpb.PromoteResponse(epoch=volume.client.epoch, vdl=volume.read_lsn, node_id=self.node_id)

    async def _promote(self, failover_id: str, min_epoch: int = 0) -> WriterVolume:
        log.warning("promotion requested (%s): stopping the redo stream, opening the volume as writer",
                    failover_id or "no failover id")
        self.promoting = True
        loop = asyncio.get_running_loop()
        old_engine, old_volume = self.engine, self.engine.volume
        cfg = self.config
        try:
            if cfg.fault_promote_delay_s:
                log.warning("fault injection: the promotion waits %.1f s", cfg.fault_promote_delay_s)
                await asyncio.sleep(cfg.fault_promote_delay_s)
            if self.follow_future is not None:
                self.follow_future.cancel()
                self.follow_future = None
            # recovery: a new volume epoch on a write quorum of every PG fences the old writer
            volume = await loop.run_in_executor(None, functools.partial(
                WriterVolume.open, cfg.nodes, self.node_id, cfg.settings, cfg.cache_pages, loop=old_volume.loop,
                min_epoch=min_epoch))
            hub = start_writer_hub(volume, self.node_id)
            backend = PrimaryBackend(volume) if cfg.multi_writer else None
            engine = await loop.run_in_executor(None, functools.partial(
                Engine, volume, True, on_connect=self.engine_on_connect, backend=backend))
        except Exception as exc:
            self.promoting = False
            log.error("promotion failed: %s; following %s again", exc, self.writer_address)
            if self.writer_address:
                self.start_following(self.writer_address)
            raise PromotionFailed(f"promotion failed: {type(exc).__name__}: {exc}") from exc
        old_sessions = list(self.sessions.values())
        self.sessions = {}
        self.engine, self.hub, self.role, self.writer_address = engine, hub, "writer", ""
        self.primary_backend, self.takes_writes = backend, False
        self.promoting = False
        log.warning("promoted: writer at epoch %d, VDL %d", volume.client.epoch, volume.read_lsn)
        try:
            for session in old_sessions:
                await self._in_thread(session.close)
            await old_volume.client.close()
            await self._in_thread(old_engine.close)
        except Exception:
            log.exception("closing the reader's engine after promotion failed")
        return volume

    async def Follow(self, request, context):
        if self.role == "reader":
            if self.promoting:
                return cpb.FollowResponse(outcome="refused", detail="this reader is being promoted")
            if request.writer_address == self.writer_address and self.engine.volume.subscribed.is_set():
                return cpb.FollowResponse(outcome="unchanged", detail=f"already following {self.writer_address}")
            log.info("following the writer %s at %s (epoch %d)", request.writer_id, request.writer_address,
                     request.epoch)
            self.start_following(request.writer_address)
            return cpb.FollowResponse(outcome="following", detail=request.writer_address)
        own_epoch = self.engine.volume.client.epoch
        if request.writer_id == self.node_id:
            return cpb.FollowResponse(outcome="unchanged", detail="this node is the writer")
        if request.epoch > own_epoch or self.fenced_reason():
            if unsafe.IGNORE_FENCING:   # the deliberate bug (sixfold/unsafe.py): a fenced writer stays on
                if request.epoch != self._ignored_epoch:   # the coordinators ask every tick: say it once
                    self._ignored_epoch = request.epoch
                    log.critical("UNSAFE: ignoring fencing: %s is the writer at epoch %d (this one: %d); not "
                                 "stepping down", request.writer_id, request.epoch, own_epoch)
                return cpb.FollowResponse(outcome="refused", detail="UNSAFE: this writer ignores fencing")
            # a newer writer exists: this one may never write again; step down and let the
            # supervisor start this instance again (as a reader: the coordinators say so)
            self.engine.fenced = self.fenced_reason() or (
                f"stepped down: {request.writer_id} is the writer at epoch {request.epoch} (this one: {own_epoch})")
            log.warning("stepping down: %s", self.engine.fenced)
            asyncio.get_running_loop().call_later(0.2, self.on_step_down)
            return cpb.FollowResponse(outcome="stepping-down", detail=self.engine.fenced)
        return cpb.FollowResponse(outcome="refused",
                                  detail=f"this writer's epoch {own_epoch} is not older than {request.epoch}")

    async def ReplaceStorageNode(self, request, context):
        """Coordinator -> writer: replace a lost storage node in every PG that holds it."""
        if self.role != "writer" or self.fenced_reason():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"only the writer changes PG membership; this node is a {self.role}")
        try:
            progress = self.engine.volume.client.membership.replace_node(
                request.old_address, set(request.healthy_addresses))
        except MembershipFenced as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return cpb.ReplaceStorageNodeResponse(**progress)

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def OpenSession(self, request, context):
        if len(self.sessions) >= SESSIONS_MAX:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this node already has {SESSIONS_MAX} sessions; close some and retry")
        session = self.engine.session()
        try:
            forwarding.set_consistency(session, request.replica_read_consistency)
        except ValueError as exc:
            await self._in_thread(session.close)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        session_id = uuid.uuid4().hex
        self.sessions[session_id] = session
        self.session_seen[session_id] = time.monotonic()
        return cpb.OpenSessionResponse(session_id=session_id, role=self.role, node_id=self.node_id,
                                       write_forwarding=self.engine.forwarder is not None)

    async def reap_idle_sessions(self, in_transaction_timeout_s: float = IDLE_IN_TRANSACTION_TIMEOUT_S) -> None:
        """Rolls back and closes sessions idle in a transaction (they hold the write lock or a
        snapshot) past in_transaction_timeout_s, and any session idle past IDLE_SESSION_TIMEOUT_S."""
        while True:
            await asyncio.sleep(min(1.0, in_transaction_timeout_s / 4))
            now = time.monotonic()
            for sid, session in list(self.sessions.items()):
                if self.session_busy.get(sid):
                    continue
                idle_s = now - self.session_seen.get(sid, now)
                in_transaction = session.in_transaction
                if idle_s < (in_transaction_timeout_s if in_transaction else IDLE_SESSION_TIMEOUT_S):
                    continue
                del self.sessions[sid]
                self.session_seen.pop(sid, None)
                why = (f"this session was idle in a transaction for {idle_s:.0f} s: its transaction was rolled "
                       "back and the session closed; open a new one" if in_transaction else
                       f"this session was idle for {idle_s:.0f} s and was closed; open a new one")
                log.warning("session %s: %s", sid[:8], why)
                self.expired[sid] = why
                while len(self.expired) > EXPIRED_REMEMBERED_MAX:
                    self.expired.pop(next(iter(self.expired)))
                try:
                    await self._in_thread(session.close)
                except Exception:
                    log.exception("closing an idle session failed")

    async def Execute(self, request, context):
        session = self.sessions.get(request.session_id)
        if session is None:
            return cpb.ExecuteResponse(error_code="no_session", error_message=self.expired.get(
                request.session_id, "unknown session (expired or closed); open a new one"))
        sid = request.session_id
        self.session_busy[sid] = self.session_busy.get(sid, 0) + 1
        try:
            return await self._execute(session, request)
        finally:
            self.session_seen[sid] = time.monotonic()
            self.session_busy[sid] -= 1
            if not self.session_busy[sid]:
                del self.session_busy[sid]

    async def _execute(self, session, request):
        consistency = forwarding.consistency_set_in(request.sql)
        if consistency is not None:   # a session setting (FORWARDING.md), not SQL for SQLite
            try:
                forwarding.set_consistency(session, consistency)
            except ValueError as exc:
                return cpb.ExecuteResponse(error_code="sql_error", error_message=str(exc),
                                           in_transaction=session.in_transaction)
            return cpb.ExecuteResponse(rowcount=-1, in_transaction=session.in_transaction)
        try:
            params = [from_pb(v) for v in request.params]
            result = await session.execute_async(request.sql, params, self._in_thread)
        except SqlError as exc:
            return cpb.ExecuteResponse(error_code=exc.code, error_message=exc.message,
                                       in_transaction=session.in_transaction)
        except Exception as exc:  # a bug must reach the client as an error, not kill the node
            log.exception("statement failed unexpectedly")
            return cpb.ExecuteResponse(error_code=INTERNAL, error_message=f"{type(exc).__name__}: {exc}")
        if len(result.rows) > ROWS_MAX:
            return cpb.ExecuteResponse(error_code="sql_error",
                                       error_message=f"result has more than {ROWS_MAX} rows; add a LIMIT")
        try:
            rows = [cpb.Row(values=[to_pb(v) for v in row]) for row in result.rows]
        except (TypeError, ValueError) as exc:
            return cpb.ExecuteResponse(error_code=INTERNAL, error_message=str(exc))
        return cpb.ExecuteResponse(
            columns=result.columns, rows=rows, rowcount=result.rowcount,
            lastrowid=result.lastrowid or 0, in_transaction=session.in_transaction,
            commit_lsn=result.commit_lsn or 0, forwarded=result.forwarded,
        )

    async def CloseSession(self, request, context):
        session = self.sessions.pop(request.session_id, None)
        self.session_seen.pop(request.session_id, None)
        if session is not None:
            await self._in_thread(session.close)
        return cpb.CloseSessionResponse()

    async def SubscribeRedo(self, request_iterator, context):
        if self.hub is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this node is not the writer; subscribe to the writer's redo stream")
        async for batch in serve_redo(self.hub, request_iterator):
            yield batch

    async def Status(self, request, context):
        volume = self.engine.volume
        lag = getattr(volume, "lag", None)
        health = "promoting" if self.promoting else ("fenced" if self.fenced_reason() else "ok")
        return cpb.StatusResponse(
            node_id=self.node_id, role=self.role, region=self.region, az=self.az, address=self.address,
            epoch=volume.client.epoch, vdl=volume.read_lsn,
            replica_lag_ms_p50=lag.percentile(0.5) if lag else 0.0,
            replica_lag_ms_p99=lag.percentile(0.99) if lag else 0.0,
            commits=volume.client.commits, cached_pages=len(volume.cache), health=health,
            sessions=len(self.sessions), writer_address=self.writer_address,
            issued_lsn=volume.client.tracker.next_lsn - 1 if self.role == "writer" else 0,
            takes_writes=self.takes_writes, multi_writer=self.primary_backend is not None,
        )

    async def MultiWriterCommit(self, request, context):
        backend = self.primary_backend
        if backend is None or self.role != "writer" or self.fenced_reason():
            return cpb.MultiWriterCommitResponse(
                error_code="not_primary",
                detail=f"{self.node_id} is not the multi-writer primary (role {self.role}); "
                       f"it follows {self.writer_address or 'nobody'}")
        return await serve_commit(backend, request, asyncio.get_running_loop())


async def follow_writer(volume: ReaderVolume, writer_address: str, reader_id: str, stop: asyncio.Event) -> None:
    """Reader side of the redo stream: resubscribes (with an empty cache) whenever it breaks."""
    from sixfold.client.channels import CHANNEL_OPTIONS

    while not stop.is_set():
        channel = latency.aio_channel(writer_address, options=CHANNEL_OPTIONS)
        stub = compute_pb2_grpc.ComputeStub(channel)
        outgoing: asyncio.Queue = asyncio.Queue()

        async def subscriptions():
            yield cpb.RedoSubscription(reader_id=reader_id, oldest_read_lsn=volume.min_pinned_lsn())
            while True:
                await asyncio.sleep(0.5)
                yield cpb.RedoSubscription(reader_id=reader_id, oldest_read_lsn=volume.min_pinned_lsn())

        try:
            call = stub.SubscribeRedo(subscriptions())
            first = True
            async for batch in call:
                if first:
                    volume.start_following(batch.first_lsn, batch.vdl, batch.epoch, batch.writer_id,
                                           dict(batch.segment_tails), members_of(batch))
                    first = False
                    continue
                if batch.segment_members:
                    volume.client.follow_members(members_of(batch))
                records = decode_records(batch.records) if batch.records else []
                volume.apply_batch(records, batch.vdl, batch.vdl_unix_s)
        except grpc.aio.AioRpcError as exc:
            log.info("redo stream from %s ended: %s; resubscribing", writer_address, exc.code().name)
        except RecordError as exc:
            log.error("redo stream from %s sent a damaged record (%s); resubscribing", writer_address, exc)
        finally:
            volume.subscribed.clear()
            await channel.close()
        await asyncio.sleep(0.2)
