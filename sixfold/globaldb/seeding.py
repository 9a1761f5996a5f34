"""Seeding an empty secondary region from the primary's page images (DESIGN.md, "Seeding").

The replicator's shell around the pure decisions (`seed_sources`, `seed_segment_tail`): a region
whose storage holds nothing (no recorded position) and whose primary has collected its log from
the start cannot be shipped into from LSN 0. Instead, per segment:

1. the member to seed from: the highest SCL among a read quorum of the primary at its newest
   epoch (the replicator's first poll already asked the primary to keep its records from now on);
2. that member's page images as of X_s, the point it materialised (never truncated; FetchPages,
   paged); P0 = max X_s, a point the primary's VDL had reached;
3. a new poll (taken after the primary's VDL reached P0), then the records (X_s, P0] from the same
   member, checked to be all of the segment's (`seed_segment_tail`);
4. pages and records into every member of this region's placement of the segment (SeedReplica:
   durable before the reply, refused by a replica that holds a log of its own), until a write
   quorum of every PG has taken them; gossip in the region seeds the others from their peers.

The caller records P0 and the segment tails as its durable position and ships from there.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from sixfold.client.convert import truncations_to_pb
from sixfold.globaldb.decisions import seed_segment_tail, seed_sources
from sixfold.nodes.storage.replica import split_records
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.epochs import Truncation
from sixfold.volume.membership import WRITE_QUORUM
from sixfold.volume.placement import StorageNodeInfo, place_segment
from sixfold.volume.records import RecordError

if TYPE_CHECKING:
    from sixfold.globaldb.replicator import Replicator

log = logging.getLogger("sixfold.replicator")

SEED_RPC_TIMEOUT_S = 10.0         # one FetchPages / FetchRecords / SeedReplica call
SEED_FETCH_MAX_BYTES = 4 * 1024 * 1024
SEED_REQUEST_MAX_BYTES = 12 * 1024 * 1024   # one segment's pages and records in one SeedReplica
SEED_QUORUM_TIMEOUT_S = 30.0      # a write quorum of each PG takes the seed within this
SEED_PAGES_TOO_OLD_RETRIES = 10   # a segment's pages fetched again (at a newer point) before giving up


class SeedFailed(Exception):
    """This attempt cannot go on; `refused`: this region's storage refused the seed."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Seeded:
    lsn: int                        # P0: this region holds everything up to here
    tails: dict[int, int]           # each segment's last LSN at or below P0
    epoch: int
    owner: str
    history: tuple[Truncation, ...]


async def seed_region(rep: Replicator, nodes: list[StorageNodeInfo]) -> Seeded:
    """One attempt; raises SeedFailed. `rep` gives the primary's last poll and a channel pool."""
    point = rep.point
    sources, problem = seed_sources(rep.views)
    if problem:
        raise SeedFailed(f"seeding: {problem}")
    epoch, owner, history = point.epoch, point.owner, point.history
    volume_id = rep.mirror.settings.volume_id

    pages_of = dict(zip(sorted(sources), await asyncio.gather(
        *(_fetch_pages(rep, volume_id, segment, member, epoch) for segment, (member, _) in sorted(sources.items())))))
    p0 = max((at_lsn for at_lsn, _ in pages_of.values()), default=0)

    polled_s = rep.polled_s
    await rep.poll_source()   # every answer now comes after the primary's VDL reached P0
    if rep.polled_s == polled_s:
        raise SeedFailed("seeding: the primary's storage did not answer")
    quorum, problem = seed_sources(rep.views)
    if problem or rep.point.epoch != epoch:
        raise SeedFailed(f"seeding: {problem or 'the primary recovered meanwhile'}")
    if set(quorum) != set(sources):   # a new segment may hold records at or below P0: not in the pages
        raise SeedFailed(f"seeding: segment(s) {sorted(set(quorum) ^ set(sources))} appeared meanwhile")
    records_of: dict[int, bytes] = {}
    tails: dict[int, int] = {}
    for segment, (member, _) in sorted(sources.items()):
        at_lsn = pages_of[segment][0]
        blob, records, member_scl = await _fetch_range(rep, volume_id, segment, member, at_lsn, p0, epoch)
        tail, problem = seed_segment_tail(segment, at_lsn, p0, records, member_scl, quorum[segment][1])
        if problem:
            raise SeedFailed(f"seeding: {problem}")
        records_of[segment] = blob
        if tail:
            tails[segment] = tail

    await asyncio.gather(*(_install(rep, volume_id, segment, nodes, epoch, owner, history, pages_of[segment],
                                    records_of[segment], p0) for segment in sorted(sources)))
    return Seeded(p0, tails, epoch, owner, history)


async def _fetch_pages(rep: Replicator, volume_id: str, segment: int, member: str, epoch: int
                       ) -> tuple[int, list[pb.PageImage]]:
    """The member's page images of a segment as of its materialised point (at_lsn, pages)."""
    at_lsn, from_page, pages, too_old = 0, 0, [], 0
    while True:
        reply = await _call(rep, member, "FetchPages", pb.FetchPagesRequest(
            volume_id=volume_id, segment=segment, at_lsn=at_lsn, from_page=from_page,
            max_bytes=SEED_FETCH_MAX_BYTES))
        if reply.error == pb.TOO_OLD and too_old < SEED_PAGES_TOO_OLD_RETRIES:
            # versions collected between two pages, or a materialise round moving the member's
            # horizon before its base: from its new materialised point, from the first page
            too_old += 1
            at_lsn, from_page, pages = 0, 0, []
            await asyncio.sleep(0.1)
            continue
        if reply.error != pb.OK:
            raise SeedFailed(f"seeding: pages of segment {segment} from {member}: "
                             f"{pb.ErrorCode.Name(reply.error)} {reply.detail}")
        if reply.state.volume_epoch != epoch:
            raise SeedFailed(f"seeding: {member} moved to epoch {reply.state.volume_epoch} meanwhile")
        at_lsn = reply.at_lsn
        pages += reply.pages
        if not reply.has_more:
            return at_lsn, pages
        from_page = reply.next_page


async def _fetch_range(rep: Replicator, volume_id: str, segment: int, member: str, after_lsn: int, up_to_lsn: int,
                       epoch: int) -> tuple[bytes, list, int]:
    """The member's records of a segment in (after_lsn, up_to_lsn] (as they are, and decoded), and
    its SCL once they were all read."""
    if after_lsn >= up_to_lsn:   # nothing above the pages (a member's SCL is at or past its materialised point)
        return b"", [], after_lsn
    blobs, records, cursor, scl = [], [], after_lsn, 0
    while True:
        reply = await _call(rep, member, "FetchRecords", pb.FetchRecordsRequest(
            volume_id=volume_id, segment=segment, after_lsn=cursor, up_to_lsn=up_to_lsn,
            max_bytes=SEED_FETCH_MAX_BYTES))
        if reply.error != pb.OK:
            raise SeedFailed(f"seeding: records of segment {segment} from {member}: "
                             f"{pb.ErrorCode.Name(reply.error)} {reply.detail}")
        if reply.state.volume_epoch != epoch:
            raise SeedFailed(f"seeding: {member} moved to epoch {reply.state.volume_epoch} meanwhile")
        try:
            batch = split_records(reply.records) if reply.records else []
        except RecordError as exc:
            raise SeedFailed(f"seeding: a damaged record of segment {segment} from {member}: {exc}") from None
        scl = reply.state.scl
        blobs.append(reply.records)
        records += [record for record, _ in batch]
        if not reply.has_more or not batch:
            return b"".join(blobs), records, scl
        cursor = batch[-1][0].lsn


async def _install(rep: Replicator, volume_id: str, segment: int, nodes: list[StorageNodeInfo], epoch: int,
                   owner: str, history: tuple[Truncation, ...], pages: tuple[int, list[pb.PageImage]],
                   records: bytes, up_to_lsn: int) -> None:
    """Into every member of this region's placement of the segment, until a write quorum took it."""
    at_lsn, images = pages
    members = [n.address for n in place_segment(segment, nodes)]
    request = pb.SeedReplicaRequest(
        volume_id=volume_id, segment=segment, volume_epoch=epoch, owner=owner, truncations=truncations_to_pb(history),
        members=members, at_lsn=at_lsn, pages=images, records=records, up_to_lsn=up_to_lsn)
    if request.ByteSize() > SEED_REQUEST_MAX_BYTES:
        raise SeedFailed(f"seeding: segment {segment} needs {request.ByteSize()} bytes in one SeedReplica "
                         f"(at most {SEED_REQUEST_MAX_BYTES}): the primary's records above its materialised "
                         f"point are too many; try again once it materialised them")
    taken: set[str] = set()
    deadline = asyncio.get_running_loop().time() + SEED_QUORUM_TIMEOUT_S
    last = ""
    while True:
        pending = [m for m in members if m not in taken]
        replies = await asyncio.gather(*(_call(rep, m, "SeedReplica", request, quiet=True) for m in pending))
        for member, reply in zip(pending, replies):
            if reply is None:
                last = f"{member} did not answer"
            elif reply.error == pb.OK:
                taken.add(member)
            else:
                raise SeedFailed(f"needs-resync: {member} refused the seed of segment {segment}: "
                                 f"{pb.ErrorCode.Name(reply.error)} {reply.detail}", refused=True)
        if len(taken) >= WRITE_QUORUM:
            if len(taken) < len(members):
                log.info("segment %d: %d of %d members took the seed; gossip seeds the others from them",
                         segment, len(taken), len(members))
            return
        if asyncio.get_running_loop().time() > deadline:
            raise SeedFailed(f"seeding: only {len(taken)} member(s) of segment {segment} took the seed "
                             f"within {SEED_QUORUM_TIMEOUT_S:.0f} s ({last})")
        await asyncio.sleep(0.5)


async def _call(rep: Replicator, address: str, method: str, request, quiet: bool = False):
    try:
        return await getattr(rep.pool.stub(address), method)(request, timeout=SEED_RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if quiet:
            return None
        raise SeedFailed(f"seeding: {method} to {address}: {exc.code().name}") from None
