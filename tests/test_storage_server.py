"""The gRPC shell in-process: stream pipelining, ack folding, no leaked tasks."""

from __future__ import annotations

import asyncio

import grpc

from sixfold.nodes.storage.node import NodeConfig, StorageNode
from sixfold.nodes.storage.server import build_server
from sixfold.rpc import storage_pb2 as pb
from sixfold.rpc import storage_pb2_grpc as pb_grpc
from tests.storage_util import ChainBuilder, append_request, page_image

MEMBERS = ["127.0.0.1:1", "127.0.0.1:2"]


async def start(tmp_path):
    node = StorageNode(NodeConfig("n1", "1", "az1", MEMBERS[0], tmp_path / "data"))
    server, port = build_server(node, "127.0.0.1:0")
    await node.open()
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return node, server, channel, pb_grpc.StorageStub(channel)


async def stop(node, server, channel):
    await channel.close()
    await server.stop(None)
    await node.close()


def batches(count: int, per_batch: int = 5):
    chain = ChainBuilder()
    lsn = 0
    out = []
    for seq in range(1, count + 1):
        records = []
        for _ in range(per_batch):
            lsn += 1
            records.append(chain.full(lsn, lsn % 7, page_image(lsn)))
        out.append(append_request(seq, {0: records}, members=MEMBERS))
    return out


def test_pipelined_batches_are_acked_in_order_and_folded(tmp_path):
    async def run():
        node, server, channel, stub = await start(tmp_path)
        call = stub.Append()
        requests = batches(200)
        for request in requests:
            await call.write(request)
        acks = []
        while not acks or acks[-1].batch_seq < 200:
            acks.append(await call.read())
        await call.done_writing()
        seqs = [a.batch_seq for a in acks]
        assert seqs == sorted(seqs) and len(acks) <= 200
        assert acks[-1].segments[0].scl == 1000 and all(a.error == pb.OK for a in acks)
        await stop(node, server, channel)

    asyncio.run(run())


def test_streams_that_disconnect_leave_no_tasks_behind(tmp_path):
    async def run():
        node, server, channel, stub = await start(tmp_path)
        await stub.Health(pb.HealthRequest())
        baseline = len(asyncio.all_tasks())
        requests = batches(30)
        for i in range(10):
            call = stub.Append()
            await call.write(requests[i * 3])
            await call.write(requests[i * 3 + 1])
            if i % 2:
                await call.read()
            call.cancel()  # mid-stream, with a batch possibly still in flight
        # the server notices each cancellation and ends its handler and reader task
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(asyncio.all_tasks()) <= baseline:
                break
        leftover = [t.get_name() for t in asyncio.all_tasks() if "append" in t.get_name()]
        assert leftover == [] and len(asyncio.all_tasks()) <= baseline
        assert not any(node._streams.values())  # every stream unregistered itself
        await stop(node, server, channel)

    asyncio.run(run())


def test_truncation_baselines_cross_the_wire_with_presence():
    """0 is a real baseline, so `baseline_lsn` is optional: unset means baseline = start."""
    import pytest

    from sixfold.client.convert import truncations_from_pb, truncations_to_pb
    from sixfold.nodes.storage.node import history_of
    from sixfold.volume.epochs import Truncation

    history = (Truncation(2, 5, 0), Truncation(3, 9, 9), Truncation(4, 12, 7))
    wire = pb.SegmentState(truncations=truncations_to_pb(history)).SerializeToString()
    parsed = pb.SegmentState.FromString(wire).truncations
    assert all(t.HasField("baseline_lsn") for t in parsed)
    assert truncations_from_pb(parsed) == history_of(parsed) == history
    old = pb.SegmentState.FromString(pb.SegmentState(truncations=[pb.Truncation(epoch=2, start_lsn=5)])
                                     .SerializeToString()).truncations  # from a node before baselines
    assert truncations_from_pb(old) == history_of(old) == (Truncation(2, 5, 5),)
    with pytest.raises(ValueError):
        history_of([pb.Truncation(epoch=2, start_lsn=5, baseline_lsn=6)])


def test_bad_baselines_are_refused_over_grpc(tmp_path):
    async def run():
        node, server, channel, stub = await start(tmp_path)
        try:
            acks = [ack async for ack in stub.Append(iter(batches(1)))]
            assert acks[-1].error == pb.OK
            bump = await stub.BumpEpoch(pb.BumpEpochRequest(
                volume_id="vol-test", segment=0, new_epoch=2, owner="rec",
                truncations=[pb.Truncation(epoch=2, start_lsn=3, baseline_lsn=4)]))
            assert bump.error == pb.INVALID and "baseline" in bump.detail
            assert (await stub.BumpEpoch(pb.BumpEpochRequest(volume_id="vol-test", segment=0, new_epoch=2,
                                                             owner="rec"))).error == pb.OK
            bad = await stub.Truncate(pb.TruncateRequest(volume_id="vol-test", segment=0, epoch=2, owner="rec",
                                                         start_lsn=3, baseline_lsn=4))
            assert bad.error == pb.INVALID
            good = await stub.Truncate(pb.TruncateRequest(volume_id="vol-test", segment=0, epoch=2, owner="rec",
                                                          start_lsn=3, baseline_lsn=0))
            assert good.error == pb.OK and good.state.scl == 0  # 1..3 (epoch 1) are old copies now
            [t] = good.state.truncations
            assert (t.epoch, t.start_lsn, t.baseline_lsn) == (2, 3, 0) and t.HasField("baseline_lsn")
            append = append_request(9, {}, epoch=2, writer="rec", members=MEMBERS)
            append.truncations.append(pb.Truncation(epoch=2, start_lsn=3, baseline_lsn=5))
            refused = [ack async for ack in stub.Append(iter([append]))]
            assert refused[-1].error == pb.INVALID
        finally:
            await stop(node, server, channel)

    asyncio.run(run())


def test_scl_moves_are_not_pushed_to_a_stream_of_an_older_epoch(tmp_path):
    """A newer writer's SCL counts its own records; the fenced writer's stream must not get it."""
    async def run():
        node, server, channel, stub = await start(tmp_path)
        try:
            old_chain = ChainBuilder(epoch=1)
            old = stub.Append()
            await old.write(append_request(1, {0: [old_chain.full(lsn, 1, page_image(lsn)) for lsn in range(1, 6)]},
                                           members=MEMBERS))
            ack = await old.read()
            assert ack.error == pb.OK and ack.segments[0].scl == 5
            bump = await stub.BumpEpoch(pb.BumpEpochRequest(volume_id="vol-test", segment=0, new_epoch=2,
                                                            owner="writer-2"))
            assert bump.error == pb.OK
            new_chain = ChainBuilder(epoch=2)
            new_chain.prev_lsn = 5
            new = stub.Append()
            await new.write(append_request(1, {0: [new_chain.full(lsn, 1, page_image(lsn)) for lsn in range(6, 11)]},
                                           epoch=2, writer="writer-2"))
            ack = await new.read()
            assert ack.error == pb.OK and ack.segments[0].scl == 10  # durable: the SCL move was announced
            # the old writer tries once more: its stream's next message is the refusal, no SCL 10 before it
            await old.write(append_request(2, {0: [old_chain.full(11, 1, page_image(11))]}))
            ack = await old.read()
            assert ack.error == pb.STALE_EPOCH and not ack.segments, ack
            old.cancel()
            new.cancel()
        finally:
            await stop(node, server, channel)

    asyncio.run(run())
