"""The compute node's gRPC services: SQL sessions and the redo stream.

A thin shell: SQL runs in worker threads (SQLite and the VFS block), the
gRPC server and the quorum client share the volume's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc

from sixfold.nodes.compute.engine import Engine, SqlError, INTERNAL
from sixfold.nodes.compute.redo import RedoHub
from sixfold.nodes.compute.values import from_pb, to_pb
from sixfold.nodes.compute.volume import ReaderVolume, WriterVolume
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.volume.records import RecordError, decode_records

log = logging.getLogger(__name__)

SESSIONS_MAX = 512
SQL_THREADS = 32
ROWS_MAX = 1_000_000


class ComputeService(compute_pb2_grpc.ComputeServicer):
    def __init__(self, engine: Engine, node_id: str, role: str, region: str, az: str, address: str,
                 hub: RedoHub | None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.role = role
        self.region, self.az, self.address = region, az, address
        self.hub = hub
        self.sessions: dict[str, object] = {}
        self.executor = ThreadPoolExecutor(max_workers=SQL_THREADS, thread_name_prefix="sql")
        self.started = time.monotonic()

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def OpenSession(self, request, context):
        if len(self.sessions) >= SESSIONS_MAX:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this node already has {SESSIONS_MAX} sessions; close some and retry")
        session_id = uuid.uuid4().hex
        self.sessions[session_id] = self.engine.session()
        return cpb.OpenSessionResponse(session_id=session_id, role=self.role, node_id=self.node_id)

    async def Execute(self, request, context):
        session = self.sessions.get(request.session_id)
        if session is None:
            return cpb.ExecuteResponse(error_code="no_session",
                                       error_message="unknown session (expired or closed); open a new one")
        try:
            params = [from_pb(v) for v in request.params]
            result = await self._in_thread(session.execute, request.sql, params)
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
            commit_lsn=result.commit_lsn or 0,
        )

    async def CloseSession(self, request, context):
        session = self.sessions.pop(request.session_id, None)
        if session is not None:
            await self._in_thread(session.close)
        return cpb.CloseSessionResponse()

    async def SubscribeRedo(self, request_iterator, context):
        if self.hub is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this node is not the writer; subscribe to the writer's redo stream")
        queue = self.hub.subscribe()
        reader_id = None

        async def read_subscriptions():
            nonlocal reader_id
            async for sub in request_iterator:
                reader_id = sub.reader_id
                self.hub.reader_read_lsns[sub.reader_id] = sub.oldest_read_lsn

        listener = asyncio.ensure_future(read_subscriptions())
        try:
            while True:
                batch = await queue.get()
                if batch is None:
                    return  # dropped for falling behind; the reader resubscribes
                yield batch
        finally:
            listener.cancel()
            self.hub.unsubscribe(queue)
            if reader_id:
                self.hub.reader_read_lsns.pop(reader_id, None)

    async def Status(self, request, context):
        volume = self.engine.volume
        lag = getattr(volume, "lag", None)
        health = "fenced" if self.engine.fenced else "ok"
        return cpb.StatusResponse(
            node_id=self.node_id, role=self.role, region=self.region, az=self.az, address=self.address,
            epoch=volume.client.epoch, vdl=volume.read_lsn,
            replica_lag_ms_p50=lag.percentile(0.5) if lag else 0.0,
            replica_lag_ms_p99=lag.percentile(0.99) if lag else 0.0,
            commits=volume.client.commits, cached_pages=len(volume.cache), health=health,
            sessions=len(self.sessions),
        )


async def follow_writer(volume: ReaderVolume, writer_address: str, reader_id: str, stop: asyncio.Event) -> None:
    """Reader side of the redo stream: resubscribes (with an empty cache) whenever it breaks."""
    from sixfold.client.channels import CHANNEL_OPTIONS

    while not stop.is_set():
        channel = grpc.aio.insecure_channel(writer_address, options=CHANNEL_OPTIONS)
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
                                           dict(batch.segment_tails))
                    first = False
                    continue
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
