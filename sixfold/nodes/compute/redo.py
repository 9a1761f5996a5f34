"""The redo stream: the writer publishes every record it issues and every VDL
advance; readers apply records to the pages they cache and move their read
point to the VDL they receive.

Both ends run on the compute node's volume loop. A subscriber that falls
behind by more than SUBSCRIBER_QUEUE_MAX batches is dropped: it resubscribes
and starts again from an empty cache, instead of holding the writer's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from sixfold.rpc import compute_pb2 as cpb
from sixfold.volume.records import LogRecord, encode_record

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_MAX = 10_000


def members_pb(members_by_segment: dict[int, tuple[str, ...]]) -> dict[int, cpb.SegmentMembers]:
    return {segment: cpb.SegmentMembers(addresses=members) for segment, members in members_by_segment.items()}


def members_of(batch: cpb.RedoBatch) -> dict[int, tuple[str, ...]]:
    return {segment: tuple(m.addresses) for segment, m in batch.segment_members.items()}


class RedoHub:
    """Writer side: fans records and VDL advances out to subscribed readers."""

    def __init__(self, writer_id: str, tails_snapshot=lambda: {}, members_snapshot=lambda: {}) -> None:
        self.writer_id = writer_id
        self._tails_snapshot = tails_snapshot
        self._members_snapshot = members_snapshot
        self.epoch = 0
        self.vdl = 0
        self.issued_lsn = 0
        self._pending: list[bytes] = []
        self._subscribers: set[asyncio.Queue] = set()
        self.reader_read_lsns: dict[str, int] = {}

    def on_record(self, record: LogRecord) -> None:
        self.issued_lsn = record.lsn
        if self._subscribers:
            self._pending.append(encode_record(record))

    def on_vdl(self, vdl: int) -> None:
        self.vdl = vdl
        if not self._subscribers:
            return
        batch = cpb.RedoBatch(records=b"".join(self._pending), vdl=vdl, vdl_unix_s=time.time(),
                              epoch=self.epoch, writer_id=self.writer_id)
        self._pending.clear()
        self._fan_out(batch)

    def on_members(self, segment: int, members: tuple[str, ...]) -> None:
        """A PG's members changed: subscribers hear it now, in a batch without records (the
        records issued meanwhile follow with the next VDL, as always)."""
        if self._subscribers:
            self._fan_out(cpb.RedoBatch(vdl=self.vdl, vdl_unix_s=time.time(), epoch=self.epoch,
                                        writer_id=self.writer_id,
                                        segment_members=members_pb({segment: members})))

    def _fan_out(self, batch: cpb.RedoBatch) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_QUEUE_MAX:
                log.warning("dropping a redo subscriber that is %d batches behind", queue.qsize())
                self._subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(batch)

    def subscribe(self) -> asyncio.Queue:
        """A new subscriber gets everything issued after `issued_lsn`, starting now."""
        # records issued before now but not yet flushed will reach this subscriber in
        # the next batch; its history starts at first_lsn, so it skips them
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(cpb.RedoBatch(vdl=self.vdl, vdl_unix_s=time.time(), epoch=self.epoch,
                                       writer_id=self.writer_id, first_lsn=self.issued_lsn,
                                       segment_tails=self._tails_snapshot(),
                                       segment_members=members_pb(self._members_snapshot())))
        self._subscribers.add(queue)
        return queue

    def drop_subscribers(self) -> None:
        """Every subscriber starts again (a secondary region's replicator: the primary's epoch moved)."""
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def oldest_reader_lsn(self) -> int | None:
        return min(self.reader_read_lsns.values(), default=None)


async def serve_redo(hub: RedoHub, request_iterator):
    """One subscriber's SubscribeRedo stream: the hub's batches out, its read points in."""
    queue = hub.subscribe()
    reader_id = None

    async def read_subscriptions():
        nonlocal reader_id
        async for sub in request_iterator:
            reader_id = sub.reader_id
            hub.reader_read_lsns[sub.reader_id] = sub.oldest_read_lsn

    listener = asyncio.ensure_future(read_subscriptions())
    try:
        while True:
            batch = await queue.get()
            if batch is None:
                return  # dropped for falling behind; the reader resubscribes
            yield batch
    finally:
        listener.cancel()
        hub.unsubscribe(queue)
        if reader_id:
            hub.reader_read_lsns.pop(reader_id, None)


class LagWindow:
    """Recent replica-lag samples (ms) for p50/p99."""

    def __init__(self, size: int = 2000) -> None:
        self.samples_ms: deque[float] = deque(maxlen=size)

    def add(self, lag_ms: float) -> None:
        self.samples_ms.append(lag_ms)

    def percentile(self, q: float) -> float:
        if not self.samples_ms:
            return 0.0
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
