"""The secondary region's side of log shipping: a quorum client that adopts the primary's records.

A `MirrorClient` is the writer's `QuorumClient` with two differences: it never recovers
(a secondary replica mirrors the primary's epoch, owner and history, so recovering would
fence the primary's own mirror), and it appends records it did not make, with their own
LSNs, bytes and epochs (`adopt`). Everything else is the writer's: one Append stream per
storage node of this region, boxcars, acks with SCLs, and the tracker that turns 4-of-6
acks into a VDL, which here is the secondary VDL.
"""

from __future__ import annotations

import asyncio
import logging

from sixfold.client.quorum import QuorumClient, _MemberStream
from sixfold.volume.epochs import Truncation
from sixfold.volume.quorum import VolumeTracker
from sixfold.volume.records import LogRecord

log = logging.getLogger(__name__)


class MirrorClient(QuorumClient):
    def open_mirror(self, position_lsn: int, tails: dict[int, int], epoch: int, owner: str,
                    history: tuple[Truncation, ...]) -> None:
        """Start at a durable position (its VDL and the segment tails there). On the loop."""
        self._loop = asyncio.get_running_loop()
        self.epoch, self.writer_id, self.history = epoch, owner, history
        self.tracker = VolumeTracker(position_lsn, tails, self.settings.lal_records)
        self._start_streams()
        log.info("mirror open at LSN %d, epoch %d of %s", position_lsn, epoch, owner)

    def _start_streams(self) -> None:
        for node in self.nodes:
            stream = self._streams[node.address] = _MemberStream(self, node)
            stream.start()

    async def remirror(self, epoch: int, owner: str, history: tuple[Truncation, ...]) -> None:
        """The primary has a new writer (or history): new streams, whose first request carries it."""
        if (epoch, owner, history) == (self.epoch, self.writer_id, self.history):
            return
        for stream in self._streams.values():
            await stream.stop()
        unsent = {address: stream.pending + [item for _, items in stream._unacked for item in items]
                  for address, stream in self._streams.items()}
        self.epoch, self.writer_id, self.history = epoch, owner, history
        self.fenced = None
        self._start_streams()
        for address, items in unsent.items():   # what the old streams had not got acknowledged
            for item in items:
                self._streams[address].push(item, len(item[1]))
        log.info("mirror now at epoch %d of %s (%d truncation(s))", epoch, owner, len(history))

    def adopt(self, run: list[tuple[int, LogRecord, bytes]]) -> None:
        """Append the primary's records (ascending, dense from the next LSN). On the loop."""
        with self._cond:
            for segment, record, _ in run:
                self._segment_members(segment)
                self.tracker.adopt_record(segment, record.lsn, record.prev_lsn, record.is_cpl)
        self._push_issued(run)

    def resend(self, items: list[tuple[int, LogRecord, bytes]]) -> None:
        """Current copies of records already adopted (a primary recovery re-stamped them, and this
        region's replicas dropped the old copies when they learned its history): sent again,
        not counted again. On the loop."""
        with self._cond:   # (right after a restart the tracker has not placed these segments yet)
            for segment, _, _ in items:
                self._segment_members(segment)
        self._push_issued(items)

    @property
    def backlog_records(self) -> int:
        """Adopted records not yet on a write quorum of this region."""
        return self.tracker.next_lsn - 1 - self.tracker.vdl
