"""The RPC layer's latency table and interceptors: the table is pure; the delays are measured on real gRPC."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from sixfold.client import latency
from sixfold.client.latency import LatencyTable, default_one_way_ms, region_of


def test_region_of_reads_the_second_octet_of_sixfold_addresses():
    assert region_of("127.2.1.5:7100") == 2
    assert region_of("ipv4:127.3.0.200:7400") == 3
    assert region_of("127.1.1.100") == 1
    assert region_of("127.0.0.1:80") is None          # not a region
    assert region_of("localhost:7100") is None
    assert region_of("10.1.2.3:7100") is None


def test_defaults_are_symmetric_and_zero_inside_a_region():
    assert default_one_way_ms(1, 1) == 0
    assert default_one_way_ms(1, 2) == default_one_way_ms(2, 1) == 30
    assert default_one_way_ms(1, 3) == 75
    assert default_one_way_ms(7, 9) == latency.OTHER_PAIR_MS_DEFAULT


def test_overrides_win_and_round_trip_through_json():
    table = LatencyTable().with_override(1, 2, 200).with_override(3, 1, 5, both_ways=False)
    assert table.one_way_ms(1, 2) == table.one_way_ms(2, 1) == 200
    assert table.one_way_ms(3, 1) == 5 and table.one_way_ms(1, 3) == 75
    assert LatencyTable.from_json(table.to_json()) == table
    rows = {(r["from"], r["to"]): r for r in table.rows([1, 2])}
    assert rows[(1, 2)] == {"from": 1, "to": 2, "ms": 200, "source": "override"}
    assert rows[(1, 1)]["source"] == "default"
    with pytest.raises(ValueError):
        table.with_override(1, 2, latency.ONE_WAY_MS_MAX + 1)
    with pytest.raises(ValueError):
        LatencyTable.from_json('{"overrides": [{"from": 0, "to": 1, "ms": 5}]}')


@pytest.fixture
def region_1(tmp_path, monkeypatch):
    """This test process plays a node of region 1 reading its overrides from a file."""
    path = tmp_path / "latency.json"
    monkeypatch.setenv(latency.LATENCY_FILE_ENV, str(path))
    monkeypatch.setenv(latency.LATENCY_REGION_ENV, "1")
    latency.reset_for_tests()
    yield path
    latency.reset_for_tests()


def _echo_handler():
    async def unary(request: bytes, context) -> bytes:
        return request

    async def stream(requests, context):
        async for request in requests:
            yield request

    return grpc.method_handlers_generic_handler("echo.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    })


async def _serve(host: str) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    return server, f"{host}:{port}"


CALLS_PER_MEASURE = 5   # the fastest of a few calls: a loaded machine only ever adds time


async def _unary_s(channel) -> float:
    call = channel.unary_unary("/echo.Echo/Unary")
    fastest_s = float("inf")
    for _ in range(CALLS_PER_MEASURE):
        started = time.monotonic()
        assert await call(b"ping", timeout=10) == b"ping"
        fastest_s = min(fastest_s, time.monotonic() - started)
    return fastest_s


def _sync_unary_s(call) -> float:
    fastest_s = float("inf")
    for _ in range(CALLS_PER_MEASURE):
        started = time.monotonic()
        assert call(b"x", timeout=10) == b"x"
        fastest_s = min(fastest_s, time.monotonic() - started)
    return fastest_s


@pytest.mark.timeout(60)
def test_aio_calls_pay_the_table_and_follow_changes_at_run_time(region_1):
    async def main():
        far, far_address = await _serve("127.2.1.250")
        near, near_address = await _serve("127.1.1.250")
        try:
            async with latency.aio_channel(far_address) as to_far, latency.aio_channel(near_address) as to_near:
                await _unary_s(to_far)   # connect first: the handshake is not what we measure
                await _unary_s(to_near)
                assert 0.060 <= await _unary_s(to_far) < 0.060 + 0.050        # 30 ms each way
                assert await _unary_s(to_near) < 0.030                         # same region: none

                latency.write_table(region_1, LatencyTable().with_override(1, 2, 100))
                await asyncio.sleep(latency.RELOAD_INTERVAL_S + 0.05)
                assert 0.200 <= await _unary_s(to_far) < 0.200 + 0.060

                # a stream stays pipelined: 20 messages in flight at once cost one round trip, not 20
                call = to_far.stream_stream("/echo.Echo/Stream")(timeout=10)
                started = time.monotonic()
                for i in range(20):
                    await call.write(str(i).encode())
                replies = [await call.read() for _ in range(20)]
                elapsed_s = time.monotonic() - started
                await call.done_writing()
                assert replies == [str(i).encode() for i in range(20)]
                assert 0.200 <= elapsed_s < 1.0    # one round trip; one per message would be 4 s

                region_1.unlink()   # back to the defaults
                await asyncio.sleep(latency.RELOAD_INTERVAL_S + 0.05)
                assert 0.060 <= await _unary_s(to_far) < 0.060 + 0.050
        finally:
            await far.stop(None)
            await near.stop(None)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_blocking_channels_pay_it_too_and_processes_without_a_region_pay_nothing(region_1, monkeypatch):
    async def serve_and_wait(ready, stop):
        server, address = await _serve("127.2.1.250")
        ready.append(address)
        while not stop:
            await asyncio.sleep(0.01)
        await server.stop(None)

    import threading

    ready: list[str] = []
    stop: list[bool] = []
    thread = threading.Thread(target=asyncio.run, args=(serve_and_wait(ready, stop),))
    thread.start()
    try:
        while not ready:
            time.sleep(0.01)
        with latency.sync_channel(ready[0]) as channel:
            call = channel.unary_unary("/echo.Echo/Unary")
            call(b"x", timeout=10)
            assert 0.060 <= _sync_unary_s(call) < 0.060 + 0.050
        monkeypatch.delenv(latency.LATENCY_REGION_ENV)
        latency.reset_for_tests()
        with latency.sync_channel(ready[0]) as channel:
            assert not isinstance(channel, grpc._interceptor._Channel)   # no interceptor at all
            call = channel.unary_unary("/echo.Echo/Unary")
            call(b"x", timeout=10)
            assert _sync_unary_s(call) < 0.030
    finally:
        stop.append(True)
        thread.join(10)


@pytest.mark.timeout(60)
def test_calls_inside_the_region_pass_the_layer_only_when_switched_on(region_1, monkeypatch):
    monkeypatch.setenv(latency.LATENCY_IN_REGION_ENV, "1")
    latency.reset_for_tests()
    latency.write_table(region_1, LatencyTable().with_override(1, 1, 50))

    async def main():
        near, near_address = await _serve("127.1.1.250")
        try:
            async with latency.aio_channel(near_address) as to_near:
                await _unary_s(to_near)
                assert 0.100 <= await _unary_s(to_near) < 0.100 + 0.050
        finally:
            await near.stop(None)

    asyncio.run(main())
