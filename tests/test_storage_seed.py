"""SeedReplica (a secondary region seeded from the primary's page images, sixfold/globaldb/seeding.py):
the storage node over real gRPC and a real page store: what it installs, what survives a restart,
and what it refuses."""

from __future__ import annotations

import asyncio

import pytest

from sixfold.client.convert import truncations_to_pb
from sixfold.nodes.storage.node import NodeConfig, StorageNode
from sixfold.nodes.storage.server import build_server
from sixfold.rpc import storage_pb2 as pb
from sixfold.rpc import storage_pb2_grpc as pb_grpc
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import encode_records
from tests.storage_util import VOLUME, ChainBuilder, append_request, page_image

pytestmark = pytest.mark.timeout(60)
MEMBERS = [f"127.0.0.1:{port}" for port in range(1, 7)]
HISTORY = (Truncation(2, 8, 8),)
AT_LSN, UP_TO_LSN = 10, 16


def seed_request(epoch: int = 3, owner: str = "reader-2-1", at_lsn: int = AT_LSN, up_to_lsn: int = UP_TO_LSN,
                 records=None) -> pb.SeedReplicaRequest:
    """Pages 0 and 1 as of LSN 10 (segment 0's record at 10 wrote page 1), then records 12, 16."""
    if records is None:
        chain = ChainBuilder(epoch=epoch)
        chain.prev_lsn = at_lsn
        records = [chain.full(12, 0, page_image(12)), chain.full(16, 2, page_image(16), cpl=True)]
    return pb.SeedReplicaRequest(
        volume_id=VOLUME, segment=0, volume_epoch=epoch, owner=owner, truncations=truncations_to_pb(HISTORY),
        members=MEMBERS, at_lsn=at_lsn, up_to_lsn=up_to_lsn, records=encode_records(records),
        pages=[pb.PageImage(page=0, lsn=4, epoch=1, data=page_image(4)),
               pb.PageImage(page=1, lsn=10, epoch=2, data=page_image(10))])


async def start(data_dir):
    node = StorageNode(NodeConfig("n1", "2", "az1", MEMBERS[0], data_dir))
    server, port = build_server(node, "127.0.0.1:0")
    await node.open()
    await server.start()
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return node, server, channel, pb_grpc.StorageStub(channel)


async def stop(node, server, channel):
    await channel.close()
    await server.stop(None)
    await node.close()


async def page(stub, number: int, read_lsn: int, epoch: int = 3) -> bytes:
    reply = await stub.GetPage(pb.GetPageRequest(volume_id=VOLUME, segment=0, page=number, read_lsn=read_lsn,
                                                 volume_epoch=epoch, wait_ms=1000))
    assert reply.error == pb.OK, reply.detail
    return reply.data


def test_a_seed_installs_pages_and_records_durably_and_a_retry_is_answered(tmp_path):
    async def run():
        node, server, channel, stub = await start(tmp_path / "data")
        try:
            reply = await stub.SeedReplica(seed_request())
            assert reply.error == pb.OK, reply.detail
            s = reply.state
            assert (s.volume_epoch, s.epoch_owner, s.scl, s.vdl_hint) == (3, "reader-2-1", 16, 16)
            assert list(s.members) == MEMBERS and [(t.epoch, t.start_lsn) for t in s.truncations] == [(2, 8)]
            assert s.records_gc_lsn == AT_LSN + 1   # below the seed point there are only pages
            assert await page(stub, 1, 16) == page_image(10) and await page(stub, 2, 16) == page_image(16)
            again = await stub.SeedReplica(seed_request())   # its first reply was lost: the same answer
            assert again.error == pb.OK and again.state.scl == 16
        finally:
            await stop(node, server, channel)
        node, server, channel, stub = await start(tmp_path / "data")   # a restart keeps all of it
        try:
            [s] = (await stub.GetSegmentState(pb.SegmentStateRequest(volume_id=VOLUME))).segments
            assert (s.volume_epoch, s.scl) == (3, 16)
            assert await page(stub, 0, 16) == page_image(12) and await page(stub, 1, 16) == page_image(10)
            # the mirror appends on from there: the next record links back to the seed's last
            chain = ChainBuilder(epoch=3)
            chain.prev_lsn = 16
            acks = [ack async for ack in stub.Append(iter([append_request(
                1, {0: [chain.full(17, 1, page_image(17), cpl=True)]}, epoch=3, writer="reader-2-1",
                members=MEMBERS, truncations=HISTORY)]))]
            assert acks[-1].error == pb.OK and acks[-1].segments[0].scl == 17
        finally:
            await stop(node, server, channel)

    asyncio.run(run())


def test_a_replica_holding_a_log_of_its_own_refuses_the_seed(tmp_path):
    async def run():
        node, server, channel, stub = await start(tmp_path / "data")
        try:
            # the old primary's divergent tail: records up to 12 under epoch 2 of another writer
            chain = ChainBuilder(epoch=2)
            records = [chain.full(lsn, lsn % 3, page_image(lsn)) for lsn in (9, 11, 12)]
            acks = [ack async for ack in stub.Append(iter([append_request(
                1, {0: records}, epoch=2, writer="writer-1", members=MEMBERS, truncations=HISTORY)]))]
            assert acks[-1].error == pb.OK
            refused = await stub.SeedReplica(seed_request())
            assert refused.error == pb.INVALID
            assert "already holds LSNs up to 12" in refused.detail and "region resync" in refused.detail
            assert refused.state.scl == 12 and refused.state.epoch_owner == "writer-1"   # untouched
            below = await stub.SeedReplica(seed_request(at_lsn=12, up_to_lsn=12, records=[]))
            assert below.error == pb.INVALID   # at the seed point is not below it
        finally:
            await stop(node, server, channel)

    asyncio.run(run())


def test_a_seed_from_an_older_epoch_or_with_records_it_does_not_cover_is_refused(tmp_path):
    async def run():
        node, server, channel, stub = await start(tmp_path / "data")
        try:
            assert (await stub.BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=0, new_epoch=5, owner="rec",
                                                             members=MEMBERS))).error == pb.OK
            stale = await stub.SeedReplica(seed_request())
            assert stale.error == pb.STALE_EPOCH and "seed epoch 3 < segment epoch 5" in stale.detail
            chain = ChainBuilder(epoch=6)
            chain.prev_lsn = AT_LSN
            outside = await stub.SeedReplica(seed_request(epoch=6, records=[chain.full(17, 0, page_image(17))]))
            assert outside.error == pb.INVALID and "outside the seed's (10, 16]" in outside.detail
            chain = ChainBuilder(epoch=7)
            chain.prev_lsn = AT_LSN
            newer = await stub.SeedReplica(seed_request(epoch=6, records=[chain.full(12, 0, page_image(12))]))
            assert newer.error == pb.INVALID and "not current" in newer.detail
            other_owner = await stub.SeedReplica(seed_request(epoch=5, owner="someone-else", records=[]))
            assert other_owner.error == pb.NOT_EPOCH_OWNER
            bad = seed_request(epoch=6)
            bad.members.append(MEMBERS[0])
            assert (await stub.SeedReplica(bad)).error == pb.INVALID
            del bad.members[:]
            assert "members are required" in (await stub.SeedReplica(bad)).detail
            above = seed_request(epoch=6)
            above.pages[1].lsn = AT_LSN + 1   # a page version above the seed point is not of that point
            refused = await stub.SeedReplica(above)
            assert refused.error == pb.INVALID and "at or below the seed point" in refused.detail
            [s] = (await stub.GetSegmentState(pb.SegmentStateRequest(volume_id=VOLUME))).segments
            assert (s.volume_epoch, s.scl, s.materialised_lsn) == (5, 0, 0)   # none of them changed anything
        finally:
            await stop(node, server, channel)

    asyncio.run(run())


def test_gossip_seeds_the_members_that_missed_the_seed_from_those_that_took_it(storage_cluster):
    """The replicator stops at a write quorum (4 of 6); the mirror's next append creates the segment
    on the other two, whose peers collected the records below the seed point: gossip seeds them
    from a peer's page images and fetches the rest (real processes, real gossip)."""
    import time

    members = storage_cluster.addresses
    request = seed_request()
    del request.members[:]
    request.members.extend(members)
    for node in storage_cluster.nodes[:4]:
        reply = node.stub().SeedReplica(request, timeout=10)
        assert reply.error == pb.OK, reply.detail
    chain = ChainBuilder(epoch=3)
    chain.prev_lsn = UP_TO_LSN
    append = append_request(1, {0: [chain.full(17, 1, page_image(17), cpl=True)]}, epoch=3, writer="reader-2-1",
                            members=members, truncations=HISTORY, vdl_hint=17)
    for node in storage_cluster.nodes:
        acks = list(node.stub().Append(iter([append]), timeout=10))
        assert acks[-1].error == pb.OK, acks[-1].detail
    deadline = time.monotonic() + 30
    for node in storage_cluster.nodes[4:]:
        while True:
            [s] = node.stub().GetSegmentState(pb.SegmentStateRequest(volume_id=VOLUME), timeout=5).segments
            if s.scl == 17:
                break
            assert time.monotonic() < deadline, f"{node.node_id} was not seeded by gossip: SCL {s.scl}\n" \
                                                f"{node.log_tail()}"
            time.sleep(0.2)
        for number, image in ((0, page_image(12)), (1, page_image(17)), (2, page_image(16))):
            reply = node.stub().GetPage(pb.GetPageRequest(volume_id=VOLUME, segment=0, page=number, read_lsn=17,
                                                        volume_epoch=3, wait_ms=1000), timeout=5)
            assert reply.error == pb.OK and reply.data == image, (number, reply.detail)
