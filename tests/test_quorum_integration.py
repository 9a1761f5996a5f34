"""The quorum path with real storage-node processes: AZ loss, AZ+1 loss,
recovery after a writer is killed, fencing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from sixfold.client.errors import CommitTimeoutError, FencedError
from sixfold.client.quorum import ClientSettings, PageWrite, QuorumClient
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.records import PAGE_SIZE_BYTES
from tests.workers.writer_proc import PAIR_OFFSET, page_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PAGES_PER_SEGMENT = 64


def settings(**overrides) -> ClientSettings:
    return ClientSettings(volume_id="it", pages_per_segment=PAGES_PER_SEGMENT, **overrides)


def image(tag: int) -> bytes:
    return tag.to_bytes(8, "little") * (PAGE_SIZE_BYTES // 8)


async def commit_pairs(client: QuorumClient, start: int, count: int) -> dict[int, int]:
    """Commits transactions writing pages i and PAIR_OFFSET+i; returns i -> commit LSN."""
    acked = {}
    for i in range(start, start + count):
        acked[i] = await client.commit([PageWrite(i, image(i)), PageWrite(PAIR_OFFSET + i, image(i))])
    return acked


async def segment_scls(client: QuorumClient, address: str) -> dict[int, int]:
    # wait_for_ready: a node that just restarted may find the client's channel still in
    # its reconnect backoff (grpc fails fast then, though the node is up)
    reply = await client.pool.stub(address).GetSegmentState(pb.SegmentStateRequest(volume_id="it"), timeout=5,
                                                             wait_for_ready=True)
    return {s.segment: s.scl for s in reply.segments}


async def wait_until_caught_up(client: QuorumClient, addresses: list[str], timeout_s: float = 20.0) -> None:
    """Every listed node reaches, in every segment, the SCL the best member has."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = [await segment_scls(client, a) for a in addresses]
        best: dict[int, int] = {}
        for view in views:
            for seg, scl in view.items():
                best[seg] = max(best.get(seg, 0), scl)
        behind = [(a, seg) for a, view in zip(addresses, views) for seg, scl in best.items() if view.get(seg, 0) < scl]
        if not behind:
            return
        assert time.monotonic() < deadline, f"nodes still behind after {timeout_s} s: {behind[:6]}"
        await asyncio.sleep(0.1)


def test_writes_commit_with_one_az_down_and_reads_survive_az_plus_one(storage_cluster):
    cluster = storage_cluster

    async def scenario():
        client = QuorumClient(cluster.node_infos(), "w1", settings(commit_timeout_s=3.0))
        await client.open_writer()
        try:
            acked = await commit_pairs(client, 1, 30)
            az1 = [n for n in cluster.nodes if n.az == "1"]
            for node in az1:
                cluster.kill(node.node_id)
            acked.update(await commit_pairs(client, 31, 30))   # a whole AZ down: writes go on
            assert client.vdl >= max(acked.values())

            one_more = next(n for n in cluster.nodes if n.az == "2")
            cluster.kill(one_more.node_id)                        # AZ + 1: only 3 of 6 left
            read_lsn = client.vdl
            for i in acked:                                       # every committed page can be read
                assert await client.read_page(i, read_lsn) == image(i)
                assert await client.read_page(PAIR_OFFSET + i, read_lsn) == image(i)
            started = time.monotonic()
            with pytest.raises(CommitTimeoutError, match="need 4"):
                await client.commit([PageWrite(100, image(100)), PageWrite(PAIR_OFFSET + 100, image(100))])
            assert time.monotonic() - started >= 2.5              # it waited, then failed clearly

            for node in az1 + [one_more]:
                cluster.restart(node.node_id)
            acked.update(await commit_pairs(client, 101, 20))    # writes resume
            await wait_until_caught_up(client, [n.address for n in cluster.nodes])
            read_lsn = client.vdl
            # the timed-out transaction is all there or not at all
            halves = [await client.read_page(p, read_lsn) for p in (100, PAIR_OFFSET + 100)]
            assert halves in ([None, None], [image(100), image(100)])
            for i in acked:
                assert await client.read_page(PAIR_OFFSET + i, read_lsn) == image(i)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_writer_killed_mid_stream_loses_no_acknowledged_commit(storage_cluster, tmp_path):
    cluster = storage_cluster
    nodes_json = json.dumps([asdict(n) for n in cluster.node_infos()])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out_path = tmp_path / "writer.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.workers.writer_proc", "crash", "writer-a", nodes_json],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
        )
        try:
            deadline = time.monotonic() + 30
            while out_path.read_text().count("ACK") < 200:
                assert proc.poll() is None, out_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "writer made no progress"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    acked = [int(line.split()[1]) for line in out_path.read_text().splitlines() if line.startswith("ACK ")]
    assert len(acked) >= 200

    async def verify():
        client = QuorumClient(cluster.node_infos(), "writer-b",
                              ClientSettings(volume_id="crash", pages_per_segment=PAGES_PER_SEGMENT))
        recovered = await client.open_writer()
        try:
            assert recovered.epoch == 2
            vdl = recovered.vdl
            for i in acked:
                assert await client.read_page(i, vdl) == page_image(i), f"acknowledged transaction {i} lost"
                assert await client.read_page(PAIR_OFFSET + i, vdl) == page_image(i)
            # transactions after the last acknowledged one: each is whole or absent
            for i in range(max(acked) + 1, max(acked) + 40):
                pair = [await client.read_page(i, vdl), await client.read_page(PAIR_OFFSET + i, vdl)]
                assert pair in ([None, None], [page_image(i), page_image(i)]), f"transaction {i} half-applied"
            # the new writer goes on from VDL
            await client.commit([PageWrite(1, image(7))])
            assert await client.read_page(1, client.vdl) == image(7)
        finally:
            await client.close()

    asyncio.run(verify())


def test_old_writer_is_fenced_and_truncated_records_never_return(storage_cluster):
    cluster = storage_cluster

    async def scenario():
        old = QuorumClient(cluster.node_infos(), "old", settings(commit_timeout_s=2.0))
        await old.open_writer()
        acked = await commit_pairs(old, 1, 10)
        # a partial transaction of the old writer: one record, no consistency point,
        # placed directly on 4 members, so it is on a quorum but not committed
        from sixfold.volume.records import LogRecord, RecordKind, encode_record
        seg = 3000 // PAGES_PER_SEGMENT
        lsn = old.tracker.next_lsn
        partial = LogRecord(lsn, old.tracker.segment_tail(seg), old.epoch, 3000, RecordKind.FULL_PAGE, 0, image(666))
        members = [m for m in (n.address for n in cluster.node_infos())][:4]
        for m in members:
            call = old.pool.stub(m).Append()
            await call.write(pb.AppendRequest(batch_seq=1, volume_id="it", volume_epoch=old.epoch, writer_id="old",
                                              segments=[pb.SegmentAppend(segment=seg, records=encode_record(partial),
                                                                         members=[n.address for n in cluster.node_infos()])]))
            ack = await call.read()
            assert ack.error == pb.OK
            call.cancel()

        new = QuorumClient(cluster.node_infos(), "new", settings())
        recovered = await new.open_writer()
        try:
            assert recovered.epoch == old.epoch + 1
            assert recovered.vdl == max(acked.values())          # the partial record is above VDL
            with pytest.raises(FencedError):
                await old.commit([PageWrite(1, image(999))])
            await new.commit([PageWrite(1, image(5))])          # reuses the truncated LSN range
            await new.commit([PageWrite(2, image(6))])
            assert await new.read_page(3000, new.vdl) is None   # truncated, never back
            assert await new.read_page(1, new.vdl) == image(5)
            for i in acked:
                if i > 2:
                    assert await new.read_page(PAIR_OFFSET + i, new.vdl) == image(i)
        finally:
            await old.close()
            await new.close()

    asyncio.run(scenario())


def test_a_commit_waiting_for_quorum_completes_when_nodes_return(storage_cluster):
    """No later write is needed: the returning nodes get the records again (or by gossip)
    and tell the writer their SCL."""
    cluster = storage_cluster

    async def scenario():
        client = QuorumClient(cluster.node_infos(), "w1", settings(commit_timeout_s=20.0))
        await client.open_writer()
        try:
            await commit_pairs(client, 1, 5)
            down = [n for n in cluster.nodes if n.az == "1"] + [next(n for n in cluster.nodes if n.az == "2")]
            for node in down:
                cluster.kill(node.node_id)
            waiting = asyncio.ensure_future(
                client.commit([PageWrite(50, image(50)), PageWrite(PAIR_OFFSET + 50, image(50))]))
            await asyncio.sleep(1.0)
            assert not waiting.done()                              # 3 of 6: no write quorum
            for node in down:
                await asyncio.to_thread(cluster.restart, node.node_id)
            started = time.monotonic()
            lsn = await asyncio.wait_for(waiting, 10)
            assert time.monotonic() - started < 5, "the commit should complete soon after the nodes return"
            assert client.vdl >= lsn
            assert await client.read_page(PAIR_OFFSET + 50, client.vdl) == image(50)
        finally:
            await client.close()

    asyncio.run(scenario())
