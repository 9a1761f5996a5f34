"""The endpoint router: a protocol-agnostic asyncio TCP proxy on stable addresses.

Every coordinator replica runs it, each from its own copy of the catalog, and
all replicas listen on the *same* endpoint addresses with SO_REUSEPORT: the
kernel spreads new connections over the live replicas, so an endpoint address
survives the loss of any replica (a leader-only router would have to move its
address at every leader change). A follower's catalog trails the leader's by
a raft round trip; routing to a stale writer is safe (it is fenced by the volume
epoch) and only costs a retry.

- writer endpoint -> the current writer; while a failover is in progress, a new
  connection waits (up to CONNECT_WAIT_S) for the new writer instead of failing;
- reader endpoint -> round-robin over healthy readers, the writer when none;
- when the writer changes, proxied writer connections to the old one are closed
  (a paused old writer would otherwise hold them open until the client times out);
- `writer-pg` / `reader-pg`: the same choice, forwarded to the instance's PostgreSQL port
  (its gRPC port + PG_PORT_OFFSET) instead of its gRPC port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Callable

log = logging.getLogger("sixfold.router")

CONNECT_WAIT_S = 20.0
CONNECT_TIMEOUT_S = 2.0
BUFFER_BYTES = 64 * 1024
CONNECTIONS_MAX = 4096
LEADERLESS_GRACE_S = 3.0
PG_SUFFIX = "-pg"
PG_PORT_OFFSET = 1000   # sixfold.runtime.topology.PG_PORT_OFFSET (the router stays free of the runtime)


def protocol_address(endpoint: str, grpc_address: str | None) -> str | None:
    """The address an endpoint forwards to: the instance's gRPC address, or its PostgreSQL one."""
    if grpc_address is None or not endpoint.endswith(PG_SUFFIX):
        return grpc_address
    host, port = grpc_address.rsplit(":", 1)
    return f"{host}:{int(port) + PG_PORT_OFFSET}"


def writer_target(snap: dict) -> str | None:
    f = snap["failover"]
    if f and f["state"] == "promoting":
        return None
    inst = snap["instances"].get(snap["writer"])
    if inst is None or inst["health"] not in ("ok", "unknown"):
        return None
    return inst["address"]


def reader_targets(snap: dict) -> list[str]:
    return [i["address"] for name, i in sorted(snap["instances"].items())
            if i["role"] == "reader" and i["health"] == "ok"]


class Router:
    def __init__(self, snapshot: Callable[[], dict], endpoints: dict[str, str],
                 in_contact: Callable[[], bool] = lambda: True) -> None:
        self.snapshot = snapshot
        self.endpoints = endpoints           # name ("writer"|"reader") -> HOST:PORT
        self.in_contact = in_contact         # this replica knows a raft leader
        self._rr = itertools.count()
        self._conns: set[tuple[str, str, asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.servers: list[asyncio.AbstractServer] = []

    def target(self, endpoint: str, unreachable: frozenset[str] = frozenset()) -> str | None:
        snap = self.snapshot()
        if endpoint.removesuffix(PG_SUFFIX) == "reader":
            # readers the catalog calls healthy but this connection could not reach (the
            # health checks lag a crash by a few probes) are skipped: then the writer
            readers = [a for a in (protocol_address(endpoint, r) for r in reader_targets(snap))
                       if a not in unreachable]
            if readers:
                return readers[next(self._rr) % len(readers)]
        return protocol_address(endpoint, writer_target(snap))

    async def start(self) -> None:
        self._last_contact = asyncio.get_running_loop().time()
        await self._listen()
        asyncio.get_running_loop().create_task(self._close_stale())

    async def _listen(self) -> None:
        for name, address in self.endpoints.items():
            host, port = address.rsplit(":", 1)
            server = await asyncio.start_server(lambda r, w, n=name: self._serve(n, r, w), host, int(port),
                                                reuse_port=True, reuse_address=True)
            self.servers.append(server)
            log.info("endpoint %s listening on %s", name, address)

    async def _close_stale(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            # A replica cut off from the group stops listening, so that the kernel hands new
            # connections to replicas that can still reach the writer; but only after
            # LEADERLESS_GRACE_S without a leader: an election after the leader died takes
            # about a second, and refusing connections meanwhile was an outage. (Routing to
            # the last known writer meanwhile is safe: a stale one is fenced by the epoch.)
            now = asyncio.get_running_loop().time()
            if self.in_contact():
                self._last_contact = now
                if not self.servers and self.endpoints:
                    try:
                        await self._listen()
                    except OSError as exc:
                        log.error("cannot listen on the endpoints again: %s", exc)
            elif self.servers and now - self._last_contact > LEADERLESS_GRACE_S:
                log.warning("no raft leader for %.0f s: endpoints stop listening on this replica",
                            LEADERLESS_GRACE_S)
                for server in self.servers:
                    server.close()
                self.servers = []
            current = writer_target(self.snapshot())
            for conn in list(self._conns):
                endpoint, target, down, up = conn
                now_target = protocol_address(endpoint, current)
                if endpoint.removesuffix(PG_SUFFIX) == "writer" and current is not None and target != now_target:
                    log.info("closing a writer-endpoint connection to %s (the writer is now %s)", target, now_target)
                    self._conns.discard(conn)
                    down.close()
                    up.close()

    async def _serve(self, endpoint: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= CONNECTIONS_MAX:
            writer.close()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_WAIT_S
        upstream = None
        target = None
        unreachable: set[str] = set()
        while upstream is None and loop.time() < deadline:
            target = self.target(endpoint, frozenset(unreachable))
            if target is None:
                await asyncio.sleep(0.05)
                continue
            host, port = target.rsplit(":", 1)
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                unreachable.add(target)
                await asyncio.sleep(0.1)
        if upstream is None:
            log.warning("endpoint %s: no target within %.0f s; closing the client connection", endpoint,
                        CONNECT_WAIT_S)
            writer.close()
            return
        up_reader, up_writer = upstream
        conn = (endpoint, target, writer, up_writer)
        self._conns.add(conn)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._conns.discard(conn)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(BUFFER_BYTES):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                dst.close()
            except Exception:
                pass
