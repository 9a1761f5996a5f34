"""Inter-region latency injected in the RPC layer (DESIGN.md section 7: this kernel has no netem).

The table is data: one-way delays in milliseconds per (from region, to region). The region of
each end of a call comes from its address, `127.<region>.<az>.<n>` (topology.py). A call from
region A to region B waits `one_way_ms(A, B)` before each request message leaves and
`one_way_ms(B, A)` before each response message is handed to the caller, so a unary call costs
one round trip and a stream keeps its pipelining (each message is late, the stream is not slower).

Default one-way delays, rounded to 5 ms, read as these AWS regions (approximate medians of
public inter-region ping tables, e.g. cloudping.co; halved round trips, not measurements of ours):

| region | stands for      | to 1 | to 2 | to 3 | to 4 |
|--------|-----------------|------|------|------|------|
| 1      | us-east-1       | -    | 30   | 75   | 35   |
| 2      | us-west-2       | 30   | -    | 50   | 65   |
| 3      | ap-northeast-1  | 75   | 50   | -    | 105  |
| 4      | eu-west-1       | 35   | 65   | 105  | -    |

Other pairs of different regions: OTHER_PAIR_MS_DEFAULT. The same region: 0 (loopback; a real
cross-AZ hop is under a millisecond).

Run-time changes (`sixfold chaos latency`) are overrides in a JSON file whose path a process
gets in SIXFOLD_LATENCY_FILE (a knob passed in from outside, like the unsafe knobs: the local
supervisor sets it, a container would mount it); its own region comes in SIXFOLD_LATENCY_REGION.
A process without SIXFOLD_LATENCY_REGION (the CLI, tests, applications) adds no delay and its
channels carry no interceptor. The file is looked at again at most every RELOAD_INTERVAL_S.

Channels inside the process's own region carry no interceptor either unless
SIXFOLD_LATENCY_IN_REGION=1 (`sixfold up --latency-in-region true`): a grpc.aio interceptor
costs about 40 us of CPU per stream message even at 0 ms (measured with an echo stream: ~200 us
per message without, ~240 with), and the writer's Append streams are the commit path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

LATENCY_FILE_ENV = "SIXFOLD_LATENCY_FILE"
LATENCY_REGION_ENV = "SIXFOLD_LATENCY_REGION"
LATENCY_IN_REGION_ENV = "SIXFOLD_LATENCY_IN_REGION"
RELOAD_INTERVAL_S = 0.2
ONE_WAY_MS_MAX = 10_000           # a bound: a typo must not stall a process for hours
OTHER_PAIR_MS_DEFAULT = 80
STREAM_QUEUE_MAX = 4096           # messages in flight inside one delayed stream

_DEFAULT_ONE_WAY_MS = {
    (1, 2): 30, (1, 3): 75, (1, 4): 35,
    (2, 3): 50, (2, 4): 65,
    (3, 4): 105,
}


# ---------------------------------------------------------------- pure: the table


def region_of(address: str) -> int | None:
    """`127.2.1.5:7100` -> 2; None for anything that is not a Sixfold loopback address."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    if host.startswith("ipv4:"):
        host = host[5:]
    parts = host.split(".")
    if len(parts) != 4 or parts[0] != "127" or not parts[1].isdigit():
        return None
    region = int(parts[1])
    return region if region >= 1 else None


def default_one_way_ms(from_region: int, to_region: int) -> int:
    if from_region == to_region:
        return 0
    key = (min(from_region, to_region), max(from_region, to_region))
    return _DEFAULT_ONE_WAY_MS.get(key, OTHER_PAIR_MS_DEFAULT)


@dataclass(frozen=True)
class LatencyTable:
    """The defaults plus overrides {(from, to): one-way ms}; immutable, replaced as a whole."""

    overrides: dict[tuple[int, int], int] = field(default_factory=dict)

    def one_way_ms(self, from_region: int, to_region: int) -> int:
        found = self.overrides.get((from_region, to_region))
        return default_one_way_ms(from_region, to_region) if found is None else found

    def with_override(self, from_region: int, to_region: int, ms: int, both_ways: bool = True) -> "LatencyTable":
        check_pair(from_region, to_region, ms)
        changed = dict(self.overrides)
        changed[(from_region, to_region)] = ms
        if both_ways:
            changed[(to_region, from_region)] = ms
        return LatencyTable(changed)

    def rows(self, regions: list[int]) -> list[dict]:
        """Every ordered pair of `regions` with its delay and where it comes from."""
        return [{"from": a, "to": b, "ms": self.one_way_ms(a, b),
                 "source": "override" if (a, b) in self.overrides else "default"}
                for a in regions for b in regions]

    def to_json(self) -> str:
        return json.dumps({"overrides": [{"from": a, "to": b, "ms": ms}
                                         for (a, b), ms in sorted(self.overrides.items())]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        data = json.loads(text)
        overrides = {}
        for row in data.get("overrides", []):
            a, b, ms = int(row["from"]), int(row["to"]), int(row["ms"])
            check_pair(a, b, ms)
            overrides[(a, b)] = ms
        return cls(overrides)


def check_pair(from_region: int, to_region: int, ms: int) -> None:
    if from_region < 1 or to_region < 1:
        raise ValueError(f"regions are numbered from 1 (got {from_region} -> {to_region})")
    if not 0 <= ms <= ONE_WAY_MS_MAX:
        raise ValueError(f"a one-way delay is 0..{ONE_WAY_MS_MAX} ms (got {ms})")


# ---------------------------------------------------------------- the file, as a process sees it


def write_table(path: Path, table: LatencyTable) -> None:
    """Atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table.to_json())
    os.replace(tmp, path)


def read_table(path: Path) -> LatencyTable:
    try:
        return LatencyTable.from_json(path.read_text())
    except FileNotFoundError:
        return LatencyTable()


class _Watched:
    """This process's region and the table, re-read when the file changes (checked lazily)."""

    def __init__(self) -> None:
        region = os.environ.get(LATENCY_REGION_ENV, "")
        self.region: int | None = int(region) if region.isdigit() and int(region) >= 1 else None
        file = os.environ.get(LATENCY_FILE_ENV, "")
        self.path: Path | None = Path(file) if file else None
        self.in_region = os.environ.get(LATENCY_IN_REGION_ENV) == "1"
        self.table = LatencyTable()
        self._seen: tuple[int, int] | None = None
        self._checked_s = -RELOAD_INTERVAL_S

    def current(self) -> LatencyTable:
        now_s = time.monotonic()
        if self.path is None or now_s - self._checked_s < RELOAD_INTERVAL_S:
            return self.table
        self._checked_s = now_s
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._seen = seen
            try:
                self.table = read_table(self.path) if seen else LatencyTable()
                log.info("latency overrides now %s", self.table.overrides or "none (defaults)")
            except (ValueError, KeyError, json.JSONDecodeError) as exc:   # keep the last good table
                log.warning("ignoring %s: %s", self.path, exc)
        return self.table


_watched: _Watched | None = None


def _state() -> _Watched:
    global _watched
    if _watched is None:
        _watched = _Watched()
    return _watched


def reset_for_tests() -> None:
    """Forget the environment read at first use (tests set it per case)."""
    global _watched
    _watched = None


@dataclass(frozen=True)
class _Pair:
    here: int
    there: int

    def out_s(self) -> float:
        return _state().current().one_way_ms(self.here, self.there) / 1000

    def back_s(self) -> float:
        return _state().current().one_way_ms(self.there, self.here) / 1000


def _pair_for(address: str) -> _Pair | None:
    state = _state()
    here, there = state.region, region_of(address)
    if here is None or there is None or (here == there and not state.in_region):
        return None
    return _Pair(here, there)


# ---------------------------------------------------------------- grpc.aio


async def _delayed(source, delay_s) -> object:
    """Yield `source`'s messages, each no earlier than `delay_s()` after it arrived.

    A pump takes messages as they come (time-stamped), so delays overlap: a stream is
    late, never throttled. Errors and the end of `source` come through in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(STREAM_QUEUE_MAX)
    end = object()

    async def pump():
        try:
            async for message in source:
                await queue.put((loop.time(), message, None))
            await queue.put((loop.time(), end, None))
        except Exception as exc:   # noqa: BLE001 - the stream's error, handed to the consumer in order
            await queue.put((loop.time(), end, exc))

    task = loop.create_task(pump())
    try:
        while True:
            arrived, message, error = await queue.get()
            wait_s = arrived + delay_s() - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if message is end:
                if error is not None:
                    raise error
                return
            yield message
    finally:
        task.cancel()


class _AioDelay:
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


# grpc.aio files each interceptor under one kind only (the first it is an instance of): one class per kind
class _AioUnaryUnary(_AioDelay, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        await self._sleep(self.pair.out_s())
        call = await continuation(details, request)
        response = await call
        await self._sleep(self.pair.back_s())
        return response


class _AioUnaryStream(_AioDelay, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        await self._sleep(self.pair.out_s())
        call = await continuation(details, request)
        return _delayed(call, self.pair.back_s)


class _AioStreamUnary(_AioDelay, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        call = await continuation(details, _delayed(request_iterator, self.pair.out_s))
        response = await call
        await self._sleep(self.pair.back_s())
        return response


class _AioStreamStream(_AioDelay, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        call = await continuation(details, _delayed(request_iterator, self.pair.out_s))
        return _delayed(call, self.pair.back_s)


def aio_channel(address: str, options=None) -> grpc.aio.Channel:
    """`grpc.aio.insecure_channel`, delayed by the latency table when this process has a region."""
    pair = _pair_for(address)
    interceptors = None if pair is None else [kind(pair) for kind in (_AioUnaryUnary, _AioUnaryStream,
                                                                     _AioStreamUnary, _AioStreamStream)]
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


# ---------------------------------------------------------------- blocking grpc


def _delayed_iter(source, delay_s):
    """Blocking streams: each message waits its delay in turn (good enough for control calls)."""
    for message in source:
        seconds = delay_s()
        if seconds > 0:
            time.sleep(seconds)
        yield message


class _SyncInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def intercept_unary_unary(self, continuation, details, request):
        self._sleep(self.pair.out_s())
        outcome = continuation(details, request)   # blocking: the answer (or error) is in
        self._sleep(self.pair.back_s())
        return outcome

    def intercept_unary_stream(self, continuation, details, request):
        self._sleep(self.pair.out_s())
        return _DelayedStream(continuation(details, request), self.pair.back_s)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        outcome = continuation(details, _delayed_iter(request_iterator, self.pair.out_s))
        self._sleep(self.pair.back_s())
        return outcome

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return _DelayedStream(continuation(details, _delayed_iter(request_iterator, self.pair.out_s)),
                              self.pair.back_s)


class _DelayedStream:
    """A blocking response stream whose messages each arrive `delay_s()` late; the rest is the call's."""

    def __init__(self, call, delay_s) -> None:
        self._call, self._delay_s = call, delay_s

    def __iter__(self):
        return self

    def __next__(self):
        message = next(self._call)
        seconds = self._delay_s()
        if seconds > 0:
            time.sleep(seconds)
        return message

    def __getattr__(self, name):
        return getattr(self._call, name)


def sync_channel(address: str, options=None) -> grpc.Channel:
    """`grpc.insecure_channel`, delayed by the latency table when this process has a region."""
    channel = grpc.insecure_channel(address, options=options)
    pair = _pair_for(address)
    return grpc.intercept_channel(channel, _SyncInterceptor(pair)) if pair is not None else channel
