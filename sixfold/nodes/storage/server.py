"""gRPC shell: translates protobuf to StorageNode calls and back.

Append is pipelined: a reader task checks, applies and queues each request on
the log as it arrives, while the handler sends acks in request order as the
log makes them durable. Consecutive durable batches are folded into one ack
(batch_seq is cumulative: "highest batch of this stream that is durable").
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field

import grpc

from sixfold.nodes.storage.log import LogFailed
from sixfold.nodes.storage.node import Key, Rejected, StorageNode, history_of
from sixfold.nodes.storage.replica import Code, Rejection, SegmentReplica, split_records
from sixfold.rpc import storage_pb2 as pb
from sixfold.rpc import storage_pb2_grpc as pb_grpc
from sixfold.rpc.health import add_health
from sixfold.volume.membership import Membership
from sixfold.volume.records import RecordError

log = logging.getLogger("sixfold.storage.server")

MESSAGE_MAX_BYTES = 16 * 1024 * 1024
STREAM_INFLIGHT_MAX = 1024  # batches of one stream queued but not yet acknowledged


def segment_state(replica: SegmentReplica, vdl_hint_unix_s: float = 0.0) -> pb.SegmentState:
    return pb.SegmentState(
        vdl_hint_unix_s=vdl_hint_unix_s,
        segment=replica.segment,
        volume_epoch=replica.epoch,
        epoch_owner=replica.meta.owner,
        scl=replica.durable_scl,
        highest_lsn=replica.chain.highest_lsn,
        vdl_hint=replica.vdl_hint,
        truncations=[pb.Truncation(epoch=t.epoch, start_lsn=t.start_lsn, baseline_lsn=t.baseline_lsn)
                     for t in replica.meta.history],
        members=list(replica.meta.members),
        record_count=replica.record_count,
        oldest_version_lsn=replica.oldest_version_lsn,
        membership_epoch=replica.meta.membership_epoch,
        next_members=list(replica.meta.next_members),
        materialised_lsn=replica.materialised_lsn,
        records_gc_lsn=replica.records_gc_lsn,
    )


@dataclass(slots=True)
class _Pending:
    batch_seq: int
    future: asyncio.Future | None
    keys: list[Key]
    rejected: Rejected | None = None

    def ready(self) -> bool:
        return self.future is None or self.future.done()


@dataclass(eq=False, slots=True)
class AppendStream:
    """The ack side of one Append stream."""

    node: StorageNode
    volume_id: str = ""
    epoch: int = 0  # the volume epoch of the writer on this stream (its last accepted request)
    touched: set[Key] = field(default_factory=set)
    pending: collections.deque = field(default_factory=collections.deque)
    pushed: set[Key] = field(default_factory=set)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    last_durable_seq: int = 0
    reader_done: bool = False

    def push_scl(self, key: Key) -> None:
        if self._newer_epoch(key):
            return  # a newer writer's SCL: an older writer must never count it
        self.pushed.add(key)
        self.wakeup.set()

    def _newer_epoch(self, key: Key) -> bool:
        return self.node.replicas[key].epoch > self.epoch

    def batch_durable(self) -> None:
        # called in the log's callback, just before the batch's future resolves: the ack side
        # runs one loop iteration sooner than through the future's done callback
        self.wakeup.set()

    def _wake(self, _future: asyncio.Future) -> None:
        self.wakeup.set()

    def add(self, item: _Pending) -> None:
        self.pending.append(item)
        if item.future is None:
            self.wakeup.set()  # a refusal: ready at once
        else:
            item.future.add_done_callback(self._wake)  # the ack side has nothing to do before (and
            # batch_durable usually wakes it first; this one also covers a log failure)

    def next_ack(self) -> pb.AppendAck | None:
        """The next ack to send, folding consecutive durable batches, or None."""
        keys: set[Key] = set()
        acked = False
        while self.pending and self.pending[0].ready():
            item = self.pending[0]
            failure = item.future.exception() if item.future is not None else None
            if item.rejected is not None or failure is not None:
                if acked:
                    break  # send the good ones first
                self.pending.popleft()
                return self._error_ack(item, failure)
            self.pending.popleft()
            self.last_durable_seq = max(self.last_durable_seq, item.batch_seq)
            keys.update(item.keys)
            acked = True
        if acked:
            self.room.set()
        if self.pushed:
            # the epoch may have moved since the push: check again
            keys.update(key for key in self.pushed if not self._newer_epoch(key))
            self.pushed.clear()
        if not acked and not keys:
            return None
        segments = []
        epoch = 0
        for key in sorted(keys):
            replica = self.node.replicas[key]
            segments.append(pb.SegmentAck(segment=key[1], scl=replica.durable_scl))
            epoch = max(epoch, replica.epoch)
        return pb.AppendAck(batch_seq=self.last_durable_seq, node_epoch=epoch, segments=segments)

    def _error_ack(self, item: _Pending, failure: BaseException | None) -> pb.AppendAck:
        self.room.set()
        if item.rejected is not None:
            r = item.rejected
            return pb.AppendAck(
                batch_seq=self.last_durable_seq, error=int(r.rejection.code),
                detail=f"batch {item.batch_seq}: {r.rejection.detail}", node_epoch=r.node_epoch,
            )
        return pb.AppendAck(batch_seq=self.last_durable_seq, error=int(Code.UNAVAILABLE),
                            detail=f"batch {item.batch_seq}: cannot persist: {failure}")


class StorageServicer(pb_grpc.StorageServicer):
    def __init__(self, node: StorageNode) -> None:
        self.node = node

    # ------------------------------------------------------------- Append

    async def Append(self, request_iterator, context):
        stream = AppendStream(self.node)
        reader = asyncio.create_task(self._read_appends(request_iterator, stream), name="append-reader")
        try:
            while True:
                stream.wakeup.clear()
                ack = stream.next_ack()
                if ack is not None:
                    await context.write(ack)
                    continue
                if stream.reader_done and not stream.pending:
                    return
                await stream.wakeup.wait()
        finally:
            # the client went away (or we are done): no task may outlive the call. Unregister
            # before awaiting: a second cancellation of this task (the call's own, then the
            # server's) can end the await below, and would leak the stream
            reader.cancel()  # it runs no more code until it sees the cancellation
            self.node.unregister_stream(stream, stream.touched)
            await asyncio.gather(reader, return_exceptions=True)

    async def _read_appends(self, request_iterator, stream: AppendStream) -> None:
        try:
            async for request in request_iterator:
                while len(stream.pending) >= STREAM_INFLIGHT_MAX:
                    stream.room.clear()
                    await stream.room.wait()
                try:
                    await self.node.log.wait_for_room()
                except LogFailed as e:
                    stream.add(_Pending(request.batch_seq, None, [], Rejected(Rejection(Code.UNAVAILABLE, str(e)))))
                    return
                if stream.volume_id and request.volume_id != stream.volume_id:
                    detail = f"stream is for volume {stream.volume_id!r}, not {request.volume_id!r}"
                    rejection = Rejection(Code.INVALID, detail)
                    stream.add(_Pending(request.batch_seq, None, [], Rejected(rejection)))
                    continue
                keys = [(request.volume_id, sa.segment) for sa in request.segments]
                new_keys = [key for key in keys if key not in stream.touched]
                try:
                    result = self.node.submit_append(request, stream, stream.touched)
                except LogFailed as e:
                    result = Rejected(Rejection(Code.UNAVAILABLE, str(e)))
                if isinstance(result, Rejected):
                    stream.add(_Pending(request.batch_seq, None, [], result))
                    continue
                stream.volume_id = request.volume_id
                stream.epoch = request.volume_epoch
                for key in new_keys:
                    if key in stream.touched:
                        self.node.register_stream(stream, key)
                stream.add(_Pending(request.batch_seq, result, keys))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Append stream reader failed")
        finally:
            stream.reader_done = True
            stream.wakeup.set()

    # --------------------------------------------------------------- reads

    async def GetPage(self, request, context):
        result = await self.node.get_page(
            request.volume_id, request.segment, request.page, request.read_lsn,
            request.volume_epoch, request.wait_ms,
            request.required_scl if request.HasField("required_scl") else None,
        )
        return pb.GetPageResponse(
            error=int(result.code), detail=result.detail, exists=result.exists,
            data=result.data, page_lsn=result.page_lsn, scl=result.scl,
        )

    async def GetSegmentState(self, request, context):
        if request.shipping_to:
            self.node.note_shipping(request.volume_id, request.shipping_to, request.shipped_lsn)
        wanted = set(request.segments)
        stamps = self.node.vdl_hint_unix_s
        states = [
            segment_state(replica, stamps.get(replica.key, 0.0))
            for (volume_id, segment), replica in sorted(self.node.replicas.items())
            if volume_id == request.volume_id and (not wanted or segment in wanted)
        ]
        return pb.SegmentStateResponse(node_id=self.node.config.node_id, segments=states)

    async def FetchRecords(self, request, context):
        result = await self.node.fetch_records(
            request.volume_id, request.segment, request.after_lsn, request.up_to_lsn,
            request.max_records, request.max_bytes,
        )
        return pb.FetchRecordsResponse(
            error=int(result.code), detail=result.detail, records=result.records, has_more=result.has_more,
            state=segment_state(result.replica, self.node.vdl_hint_unix_s.get(result.replica.key, 0.0))
            if result.replica is not None else None,
        )

    # ------------------------------------------------------------ fencing

    async def BumpEpoch(self, request, context):
        try:
            history = history_of(request.truncations)
        except ValueError as e:
            return self._state_reply(Rejection(Code.INVALID, str(e)), None)
        try:
            rejection, replica = await self.node.bump_epoch(
                request.volume_id, request.segment, request.new_epoch, request.owner,
                history, tuple(request.members),
            )
        except LogFailed as e:
            rejection, replica = Rejection(Code.UNAVAILABLE, str(e)), None
        return self._state_reply(rejection, replica)

    async def Truncate(self, request, context):
        try:
            rejection, replica = await self.node.truncate(
                request.volume_id, request.segment, request.epoch, request.owner, request.start_lsn,
                request.baseline_lsn if request.HasField("baseline_lsn") else None,
            )
        except LogFailed as e:
            rejection, replica = Rejection(Code.UNAVAILABLE, str(e)), None
        return self._state_reply(rejection, replica)

    # ---------------------------------------------------------- membership

    async def ChangeMembership(self, request, context):
        try:
            history = history_of(request.truncations)
            proposed = Membership(request.membership_epoch, tuple(request.members), tuple(request.next_members))
        except ValueError as e:
            return self._state_reply(Rejection(Code.INVALID, str(e)), None)
        try:
            rejection, replica = await self.node.change_membership(
                request.volume_id, request.segment, request.volume_epoch, request.owner, history, proposed)
        except LogFailed as e:
            rejection, replica = Rejection(Code.UNAVAILABLE, str(e)), None
        return self._state_reply(rejection, replica)

    async def FetchPages(self, request, context):
        code, detail, at_lsn, rows, has_more = await self.node.fetch_pages(
            request.volume_id, request.segment, request.at_lsn, request.from_page, request.max_bytes)
        replica = self.node.replicas.get((request.volume_id, request.segment))
        return pb.FetchPagesResponse(
            error=int(code), detail=detail, at_lsn=at_lsn, has_more=has_more,
            pages=[pb.PageImage(page=page, lsn=lsn, epoch=epoch, data=image) for page, lsn, epoch, image in rows],
            next_page=rows[-1][0] + 1 if rows else request.from_page,
            state=segment_state(replica) if replica is not None else None,
        )

    async def SeedReplica(self, request, context):
        try:
            history = history_of(request.truncations)
            incoming = split_records(request.records) if request.records else []
        except (ValueError, RecordError) as e:
            return self._state_reply(Rejection(Code.INVALID, str(e)), None)
        pages = [(p.page, p.lsn, p.epoch, p.data) for p in request.pages]
        try:
            rejection, replica = await self.node.seed_replica(
                request.volume_id, request.segment, request.volume_epoch, request.owner, history,
                tuple(request.members), request.at_lsn, request.up_to_lsn, pages, incoming)
        except LogFailed as e:
            rejection, replica = Rejection(Code.UNAVAILABLE, str(e)), None
        return self._state_reply(rejection, replica)

    @staticmethod
    def _state_reply(rejection: Rejection | None, replica: SegmentReplica | None) -> pb.SegmentStateReply:
        state = segment_state(replica) if replica is not None else None
        if rejection is None:
            return pb.SegmentStateReply(state=state)
        return pb.SegmentStateReply(error=int(rejection.code), detail=rejection.detail, state=state)

    async def Health(self, request, context):
        node = self.node
        config = node.config
        return pb.HealthResponse(
            node_id=config.node_id, region=config.region, az=config.az, address=config.address,
            status="SERVING", uptime_s=node.uptime_s(), segment_count=len(node.replicas),
            log_bytes=node.log.stats.live_bytes, fsync_count=node.log.stats.fsync_count,
            records_durable=node.records_durable,
        )


def build_server(node: StorageNode, listen: str) -> tuple[grpc.aio.Server, int]:
    """Binds (raising RuntimeError when the address cannot be bound); not yet started."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_MAX_BYTES),
            ("grpc.max_send_message_length", MESSAGE_MAX_BYTES),
            ("grpc.so_reuseport", 0),  # two nodes must never silently share a port
        ]
    )
    pb_grpc.add_StorageServicer_to_server(StorageServicer(node), server)
    add_health(server)
    port = server.add_insecure_port(listen)
    return server, port
