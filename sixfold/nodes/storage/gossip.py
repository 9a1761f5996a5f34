"""Gossip: a replica that is missing records pulls them from its PG peers.

Two loops. Every ~0.5 s the node asks each peer for the state of the segments
they share (GetSegmentState: SCL, highest LSN, epoch, history). Every ~100 ms
it picks the replicas that have a gap, or whose peers report a higher SCL or
highest LSN, and calls FetchRecords(after_lsn = our SCL) on the best peer.
What comes back is ingested under the same validity rules as an Append, after
learning the peer's epoch and truncation history. Learning a truncation can
drop old copies (a recovery re-stamped them elsewhere; sixfold/volume/epochs.py):
the gap that leaves is what makes the next round fetch the re-stamped copies,
and old copies a peer still serves are skipped. A replica that joined a PG late
(a membership change) and finds its peers have collected the records it lacks
(FetchRecords answers TOO_OLD) is seeded from a peer's page images at a point
that peer materialised (FetchPages), then fetches the records above it.
Everything is bounded:
replicas per round, concurrent RPCs, records per fetch, pages per fetch, and
every RPC has a timeout. A dead peer is skipped quietly for a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from sixfold.nodes.storage.node import Key, StorageNode, history_of
from sixfold.nodes.storage.replica import Code, Meta, SegmentReplica, split_records
from sixfold.nodes.storage.server import MESSAGE_MAX_BYTES
from sixfold.rpc import storage_pb2 as pb
from sixfold.rpc import storage_pb2_grpc as pb_grpc
from sixfold.volume.records import RecordError

log = logging.getLogger("sixfold.storage.gossip")


@dataclass(slots=True)
class GossipConfig:
    interval_ms: int = 100
    state_interval_ms: int = 500
    rpc_timeout_ms: int = 1_000
    concurrency: int = 4
    replicas_per_round: int = 256
    fetch_max_records: int = 2_000
    fetch_max_bytes: int = 4 * 1024 * 1024
    fetch_pages_max: int = 8          # FetchRecords calls per replica per round (has_more)
    dead_peer_backoff_ms: int = 1_000
    # Under a live write stream a replica is briefly "behind" all the time (acks race
    # across nodes); pulling then only duplicates what the writer is about to send.
    behind_grace_ms: int = 200


@dataclass(slots=True)
class PeerView:
    scl: int
    highest_lsn: int


def meta_of(state: pb.SegmentState, history) -> Meta:
    """A peer's segment state as the Meta to learn from (epoch, history, membership)."""
    return Meta(state.volume_epoch, state.epoch_owner, history, tuple(state.members),
                state.membership_epoch, tuple(state.next_members))


class Gossiper:
    def __init__(self, node: StorageNode, config: GossipConfig) -> None:
        self.node = node
        self.config = config
        self.self_address = node.config.address
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.StorageStub] = {}
        self._views: dict[tuple[Key, str], PeerView] = {}
        self._best_view: dict[Key, PeerView] = {}  # the highest SCL / highest LSN any peer ever reported
        self._down_until_s: dict[str, float] = {}
        self._round_robin = 0
        self._behind_since_s: dict[Key, float] = {}
        self._limit = asyncio.Semaphore(config.concurrency)
        self._seeding: set[Key] = set()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.poll_states, self.config.state_interval_ms), name="gossip-state"),
            asyncio.create_task(self._loop(self.fetch_round, self.config.interval_ms), name="gossip-fetch"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    async def _loop(self, step, interval_ms: int) -> None:
        while True:
            started = time.monotonic()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gossip step %s failed", step.__name__)
            elapsed_s = time.monotonic() - started
            await asyncio.sleep(max(interval_ms / 1000 - elapsed_s, interval_ms / 4000))

    # --------------------------------------------------------------- peers

    def _stub(self, address: str) -> pb_grpc.StorageStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_receive_message_length", MESSAGE_MAX_BYTES),
                    ("grpc.max_send_message_length", MESSAGE_MAX_BYTES),
                ],
            )
            stub = self._stubs[address] = pb_grpc.StorageStub(channel)
        return stub

    def _peers(self, replica: SegmentReplica) -> list[str]:
        now_s = time.monotonic()
        return [
            m for m in replica.meta.all_members()
            if m != self.self_address and self._down_until_s.get(m, 0.0) <= now_s
        ]

    def _peer_failed(self, peer: str, error: BaseException) -> None:
        log.debug("peer %s unreachable: %s", peer, error)
        self._down_until_s[peer] = time.monotonic() + self.config.dead_peer_backoff_ms / 1000

    async def _call(self, peer: str, method: str, request):
        async with self._limit:
            try:
                return await getattr(self._stub(peer), method)(request, timeout=self.config.rpc_timeout_ms / 1000)
            except grpc.aio.AioRpcError as e:
                self._peer_failed(peer, e)
                return None

    # -------------------------------------------------------- state polling

    async def poll_states(self) -> None:
        wanted: dict[tuple[str, str], list[int]] = {}  # (volume, peer) -> segments
        for (volume_id, segment), replica in list(self.node.replicas.items()):
            for peer in self._peers(replica):
                wanted.setdefault((volume_id, peer), []).append(segment)
        await asyncio.gather(*(
            self._poll_one(volume_id, peer, segments) for (volume_id, peer), segments in wanted.items()
        ))

    async def _poll_one(self, volume_id: str, peer: str, segments: list[int]) -> None:
        request = pb.SegmentStateRequest(volume_id=volume_id, segments=segments)
        response = await self._call(peer, "GetSegmentState", request)
        if response is None or response.error != Code.OK:
            return
        for state in response.segments:
            replica = self.node.replicas.get((volume_id, state.segment))
            if replica is not None:
                self._note(replica, peer, state)
                if not self._nothing_new(replica, state):
                    await self._learn(replica, peer, state)

    @staticmethod
    def _nothing_new(replica: SegmentReplica, state: pb.SegmentState) -> bool:
        """The usual case, decided without building the peer's history: no newer epoch, and
        every truncation it reports is one we hold."""
        if state.volume_epoch > replica.epoch:
            return False
        known = {(t.epoch, t.start_lsn, t.baseline_lsn) for t in replica.meta.history}
        return all((t.epoch, t.start_lsn, t.baseline_lsn if t.HasField("baseline_lsn") else t.start_lsn) in known
                   for t in state.truncations)

    async def _learn(self, replica: SegmentReplica, peer: str, state: pb.SegmentState) -> None:
        try:
            history = history_of(state.truncations)
        except ValueError as e:
            log.warning("segment %s/%d: peer %s reports a bad history: %s", *replica.key, peer, e)
            return
        if (state.volume_epoch > replica.epoch or not set(history) <= set(replica.meta.history)
                or state.membership_epoch > replica.meta.membership_epoch):
            await self.node.ingest_from_peer(replica, meta_of(state, history), [])

    def _note(self, replica: SegmentReplica, peer: str, state: pb.SegmentState) -> None:
        self._views[(replica.key, peer)] = PeerView(state.scl, state.highest_lsn)
        best = self._best_view.get(replica.key)
        if best is None or state.scl > best.scl or state.highest_lsn > best.highest_lsn:
            self._best_view[replica.key] = PeerView(max(state.scl, best.scl if best else 0),
                                                    max(state.highest_lsn, best.highest_lsn if best else 0))
        replica.peer_scl[peer] = (state.scl, time.monotonic())
        # the VDL is a fact about the volume: records at or below it can never be voided,
        # so a replica fed only by gossip may still turn them into pages
        self.node.note_hints(replica, state.vdl_hint, 0)

    # ------------------------------------------------------------ fetching

    async def fetch_round(self) -> None:
        work = []
        now_s = time.monotonic()
        for replica in list(self.node.replicas.values()):
            best = self._best_view.get(replica.key)
            chain = replica.chain
            if not chain.has_gap() and (best is None or (best.scl <= chain.scl and best.highest_lsn <= chain.highest_lsn)):
                peer = None  # no peer ever reported more than we hold: nothing to pick from
            else:
                peer = self._pick_peer(replica)
            if peer is None:
                self._behind_since_s.pop(replica.key, None)
                continue
            since_s = self._behind_since_s.setdefault(replica.key, now_s)
            if now_s - since_s >= self.config.behind_grace_ms / 1000:
                work.append(self._fetch(replica, peer))
            if len(work) >= self.config.replicas_per_round:
                break
        await asyncio.gather(*work)

    async def _seed(self, replica: SegmentReplica, peer: str) -> None:
        at_lsn, from_page, pages = 0, 0, []
        while True:
            response = await self._call(peer, "FetchPages", pb.FetchPagesRequest(
                volume_id=replica.volume_id, segment=replica.segment, at_lsn=at_lsn, from_page=from_page,
                max_bytes=self.config.fetch_max_bytes,
            ))
            if response is None or response.error != Code.OK:
                if response is not None:
                    log.info("seeding %s/%d from %s: %s %s (next round tries again)", *replica.key, peer,
                             pb.ErrorCode.Name(response.error), response.detail)
                return
            at_lsn = response.at_lsn
            pages += [(p.page, p.lsn, p.epoch, p.data) for p in response.pages]
            if not response.has_more:
                break
            from_page = response.next_page
        try:
            history = history_of(response.state.truncations)
        except ValueError as e:
            log.warning("segment %s/%d: peer %s reports a bad history: %s", *replica.key, peer, e)
            return
        await self.node.ingest_from_peer(replica, meta_of(response.state, history), [])
        await self.node.install_snapshot(replica, at_lsn, pages)

    def _pick_peer(self, replica: SegmentReplica) -> str | None:
        """The peer with the most to give, or (with a gap and nothing known) any peer."""
        if self.self_address not in replica.meta.all_members():
            return None  # no longer a member (replaced): nobody needs this copy to grow
        best, best_view = None, PeerView(replica.chain.scl, replica.chain.highest_lsn)
        unknown = []
        for peer in self._peers(replica):
            view = self._views.get((replica.key, peer))
            if view is None:
                unknown.append(peer)
            elif view.scl > best_view.scl or (view.scl == best_view.scl and view.highest_lsn > best_view.highest_lsn):
                best, best_view = peer, view
        if best is None and unknown and replica.chain.has_gap():
            self._round_robin += 1
            best = unknown[self._round_robin % len(unknown)]
        return best

    async def _fetch(self, replica: SegmentReplica, peer: str) -> None:
        for _ in range(self.config.fetch_pages_max):
            after_lsn = replica.chain.scl
            response = await self._call(peer, "FetchRecords", pb.FetchRecordsRequest(
                volume_id=replica.volume_id, segment=replica.segment, after_lsn=after_lsn,
                max_records=self.config.fetch_max_records, max_bytes=self.config.fetch_max_bytes,
            ))
            if response is None:
                return
            if response.error == Code.TOO_OLD and replica.key not in self._seeding:
                # the peer collected records this replica lacks (it joined late): seed it
                # from the peer's page images, then fetch the records above them
                self._seeding.add(replica.key)
                try:
                    await self._seed(replica, peer)
                finally:
                    self._seeding.discard(replica.key)
                return
            if response.error != Code.OK:
                log.debug("FetchRecords %s/%d from %s: %s %s", *replica.key, peer, response.error, response.detail)
                return
            try:
                incoming = split_records(response.records)
            except RecordError as e:
                log.warning("FetchRecords %s/%d from %s returned damaged records: %s", *replica.key, peer, e)
                return
            state = response.state
            self._note(replica, peer, state)
            try:
                history = history_of(state.truncations)
            except ValueError as e:
                log.warning("segment %s/%d: peer %s reports a bad history: %s", *replica.key, peer, e)
                return
            added = await self.node.ingest_from_peer(replica, meta_of(state, history), incoming)
            if added.records:
                log.debug("gossip %s/%d: %d record(s) from %s, SCL now %d",
                          *replica.key, len(added.records), peer, replica.chain.scl)
            if not response.has_more or replica.chain.scl == after_lsn:
                return  # done, or the next page would start at the same place
