"""Membership changes with real storage-node processes and an in-process quorum client:
a late joiner is seeded from a peer's page images (the peers collected the records it
lacks), catches up while writes go on, and a new writer's recovery finds the new
membership (highest epoch wins) instead of the placement."""

from __future__ import annotations

import asyncio
import time

import pytest

from sixfold.client.quorum import ClientSettings, PageWrite, QuorumClient
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.placement import place_segment
from sixfold.volume.records import PAGE_SIZE_BYTES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PAGES = 32   # all in segment 0


def settings() -> ClientSettings:
    return ClientSettings(volume_id="mv", pages_per_segment=64)


def image(page: int, version: int) -> bytes:
    return (page * 1_000_000 + version).to_bytes(8, "little") * (PAGE_SIZE_BYTES // 8)


async def states(client: QuorumClient, address: str) -> dict[int, pb.SegmentState]:
    reply = await client.pool.stub(address).GetSegmentState(pb.SegmentStateRequest(volume_id="mv"), timeout=5)
    return {s.segment: s for s in reply.segments}


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(0.1)


def test_a_late_joiner_is_seeded_from_page_images_and_recovery_finds_the_new_membership(storage_cluster_factory):
    storage = storage_cluster_factory(per_az=3)

    async def run() -> None:
        writer = QuorumClient(storage.node_infos(), "w1", settings())
        await writer.open_writer()
        latest: dict[int, int] = {}
        version = 0

        async def write_round(rounds: int) -> None:
            nonlocal version
            for _ in range(rounds):
                version += 1
                await writer.commit([PageWrite(p, image(p, version)) for p in range(version % 4, PAGES, 4)])
                for p in range(version % 4, PAGES, 4):
                    latest[p] = version

        placed = [n.address for n in place_segment(0, storage.node_infos())]
        await write_round(40)

        async def collected() -> bool:   # every member materialised and dropped old records
            await write_round(2)
            views = [(await states(writer, a)).get(0) for a in placed]
            return all(v is not None and v.records_gc_lsn > 1 for v in views)

        await until(collected, 30, "record GC on the members")

        old = placed[0]
        storage.kill(next(n.node_id for n in storage.nodes if n.address == old))
        healthy = {n.address for n in storage.nodes if n.running}
        progress = writer.membership.replace_node(old, healthy)
        assert progress["pgs_holding"] == 1 and progress["pgs_changing"] == 1, progress

        async def recorded() -> bool:   # the transitional membership is durable, then in effect
            return writer.membership.membership(0).epoch == 1

        await until(recorded, 20, "transitional membership")
        membership = writer.membership.membership(0)
        new = next(m for m in membership.next_members if m not in membership.members)
        assert new != old and new.startswith(old.rsplit(".", 1)[0])   # the same AZ (127.1.<az>.x)

        async def finalised() -> bool:
            await write_round(1)   # writes go on during the change
            return not writer.membership.running()

        await until(finalised, 60, "finalised membership change")
        final = writer.membership.membership(0)
        assert not final.transitional and old not in final.members and new in final.members
        assert final.epoch == membership.epoch + 1
        joiner = next(n for n in storage.nodes if n.address == new)
        assert "seeded with" in joiner.log_text(), joiner.log_tail()

        async def equal_scls() -> bool:
            scls = {a: (await states(writer, a))[0].scl for a in final.members}
            return len(set(scls.values())) == 1

        await until(equal_scls, 20, "equal SCLs on the six members")
        # the joiner serves every page at the VDL, from its seeded images plus records
        tail = writer.tracker.segment_tail(0)
        for page in range(PAGES):
            reply = await writer.pool.stub(new).GetPage(pb.GetPageRequest(
                volume_id="mv", segment=0, page=page, read_lsn=writer.vdl, volume_epoch=writer.epoch,
                wait_ms=1000, required_scl=tail), timeout=5)
            assert reply.error == pb.OK and reply.data == image(page, latest[page]), (page, reply.error)
        await writer.close()

        # a new writer: recovery finds membership 2 on the nodes, not the placement
        successor = QuorumClient(storage.node_infos(), "w2", settings())
        await successor.open_writer()
        assert successor.tracker.pg(0).membership == final
        for page in range(PAGES):
            assert await successor.read_page(page, successor.vdl) == image(page, latest[page])
        await successor.commit([PageWrite(0, image(0, 999))])
        await successor.close()

    asyncio.run(run())
    assert not storage.errors(), storage.errors()[:10]
