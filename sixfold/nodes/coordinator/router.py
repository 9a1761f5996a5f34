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
- custom endpoints (named subsets in the catalog, each on its own port from
  `custom_port_base`) -> round-robin over their healthy members: of type "reader",
  only members that are readers now; of type "any", readers and the writer;
- when the writer changes, proxied writer connections to the old one are closed
  (a paused old writer would otherwise hold them open until the client times out);
- `writer-pg` / `reader-pg` / `NAME-pg` (a custom endpoint's twin): the same choice,
  forwarded to the instance's PostgreSQL port (its gRPC port + PG_PORT_OFFSET).

Bytes are forwarded by protocol callbacks (data_received -> the peer transport's
write), not by a coroutine per direction: a client round trip passes the router
twice, and a PostgreSQL transaction is about twenty of them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Callable

from sixfold.nodes.coordinator.catalog import CUSTOM_ENDPOINTS_MAX

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


def custom_targets(snap: dict, endpoint: str) -> list[str]:
    """A custom endpoint's members it may route to now ([] when none, or no such endpoint)."""
    custom = snap.get("custom", {}).get(endpoint)
    if custom is None:
        return []
    writer = writer_target(snap)
    out = []
    for name in custom["members"]:
        inst = snap["instances"].get(name)
        if inst is None:
            continue
        if inst["role"] == "reader" and inst["health"] == "ok":
            out.append(inst["address"])
        elif custom["type"] == "any" and name == snap["writer"] and inst["address"] == writer:
            out.append(inst["address"])
    return out


def custom_addresses(snap: dict, host: str, port_base: int | None) -> dict[str, str]:
    """Each custom endpoint's address, and its PostgreSQL twin's (NAME-pg, CUSTOM_ENDPOINTS_MAX ports up)."""
    if port_base is None:
        return {}
    out = {}
    for name, e in snap.get("custom", {}).items():
        out[name] = f"{host}:{port_base + e['port_slot']}"
        out[name + PG_SUFFIX] = f"{host}:{port_base + CUSTOM_ENDPOINTS_MAX + e['port_slot']}"
    return out


class Router:
    def __init__(self, snapshot: Callable[[], dict], endpoints: dict[str, str],
                 in_contact: Callable[[], bool] = lambda: True, custom_port_base: int | None = None) -> None:
        self.snapshot = snapshot
        self.endpoints = endpoints           # name ("writer"|"reader") -> HOST:PORT
        self.in_contact = in_contact         # this replica knows a raft leader
        self.custom_port_base = custom_port_base
        self.host = next(iter(endpoints.values())).rsplit(":", 1)[0] if endpoints else ""
        self._rr = itertools.count()
        self._conns: set[tuple[str, str, asyncio.Transport, asyncio.Transport]] = set()
        self.servers: dict[str, tuple[str, asyncio.AbstractServer]] = {}   # endpoint -> (address, server)
        self.listening = False
        self._bind_failures: dict[str, str] = {}

    def wanted(self, snap: dict) -> dict[str, str]:
        """Every endpoint this router should listen on: the cluster ones and the custom ones."""
        return {**self.endpoints, **custom_addresses(snap, self.host, self.custom_port_base)}

    def target(self, endpoint: str, unreachable: frozenset[str] = frozenset()) -> str | None:
        snap = self.snapshot()
        base = endpoint.removesuffix(PG_SUFFIX)
        if base not in ("writer", "reader"):
            members = [a for a in (protocol_address(endpoint, t) for t in custom_targets(snap, base))
                       if a not in unreachable]
            return members[next(self._rr) % len(members)] if members else None
        if base == "reader":
            # readers the catalog calls healthy but this connection could not reach (the
            # health checks lag a crash by a few probes) are skipped: then the writer
            readers = [a for a in (protocol_address(endpoint, r) for r in reader_targets(snap))
                       if a not in unreachable]
            if readers:
                return readers[next(self._rr) % len(readers)]
        return protocol_address(endpoint, writer_target(snap))

    async def start(self) -> None:
        self._last_contact = asyncio.get_running_loop().time()
        await self._sync_listeners(self.snapshot(), listen=True)
        asyncio.get_running_loop().create_task(self._maintain())

    async def _sync_listeners(self, snap: dict, listen: bool) -> None:
        """Listen on every wanted endpoint (all of them, or none while cut off from the group)."""
        self.listening = listen
        wanted = self.wanted(snap) if listen else {}
        for name, (address, server) in list(self.servers.items()):
            if wanted.get(name) != address:
                server.close()
                del self.servers[name]
                log.info("endpoint %s stopped listening on %s", name, address)
        for name, address in wanted.items():
            if name in self.servers:
                continue
            host, port = address.rsplit(":", 1)
            try:
                server = await asyncio.get_running_loop().create_server(
                    lambda n=name: _ClientSide(self, n), host, int(port), reuse_port=True, reuse_address=True)
            except OSError as exc:
                if name in self.endpoints:
                    raise
                if self._bind_failures.get(name) != address:   # retried every pass, logged once
                    log.error("custom endpoint %s cannot listen on %s: %s", name, address, exc)
                self._bind_failures[name] = address
                continue
            self._bind_failures.pop(name, None)
            self.servers[name] = (address, server)
            log.info("endpoint %s listening on %s", name, address)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            # A replica cut off from the group stops listening, so that the kernel hands new
            # connections to replicas that can still reach the writer; but only after
            # LEADERLESS_GRACE_S without a leader: an election after the leader died takes
            # about a second, and refusing connections meanwhile was an outage. (Routing to
            # the last known writer meanwhile is safe: a stale one is fenced by the epoch.)
            now = asyncio.get_running_loop().time()
            snap = self.snapshot()
            if self.in_contact():
                self._last_contact = now
                try:
                    await self._sync_listeners(snap, listen=True)
                except OSError as exc:
                    log.error("cannot listen on the endpoints again: %s", exc)
            elif self.listening and now - self._last_contact > LEADERLESS_GRACE_S:
                log.warning("no raft leader for %.0f s: endpoints stop listening on this replica",
                            LEADERLESS_GRACE_S)
                await self._sync_listeners(snap, listen=False)
            current = writer_target(snap)
            for conn in list(self._conns):
                endpoint, target, down, up = conn
                now_target = protocol_address(endpoint, current)
                base = endpoint.removesuffix(PG_SUFFIX)
                moved = base == "writer" and current is not None and target != now_target
                deleted = endpoint not in self.endpoints and base not in snap.get("custom", {})
                if moved or deleted:
                    log.info("closing a %s-endpoint connection to %s (%s)", endpoint, target,
                             f"the writer is now {now_target}" if moved else "the endpoint was deleted")
                    self._conns.discard(conn)
                    down.close()
                    up.close()

    async def connect_upstream(self, endpoint: str, client: "_ClientSide") -> None:
        """Finds the endpoint's target for a new client connection and joins the two."""
        if len(self._conns) >= CONNECTIONS_MAX:
            client.transport.close()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_WAIT_S
        unreachable: set[str] = set()
        while loop.time() < deadline and not client.closed:
            target = self.target(endpoint, frozenset(unreachable))
            if target is None:
                await asyncio.sleep(0.05)
                continue
            host, port = target.rsplit(":", 1)
            try:
                upstream, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: _Forward(client.transport), host, int(port)), CONNECT_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                unreachable.add(target)
                await asyncio.sleep(0.1)
                continue
            conn = (endpoint, target, client.transport, upstream)
            self._conns.add(conn)
            client.joined(upstream, lambda: self._conns.discard(conn))
            return
        if not client.closed:
            log.warning("endpoint %s: no target within %.0f s; closing the client connection", endpoint,
                        CONNECT_WAIT_S)
            client.transport.close()


class _Forward(asyncio.Protocol):
    """One side of a proxied connection: what arrives goes to the peer transport; when the
    peer's send buffer is full this side stops reading (and the other way round)."""

    def __init__(self, peer: asyncio.Transport | None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None:
            self.peer.close()   # (after sending what it holds) both directions end, as the client's did
        return False

    def pause_writing(self) -> None:   # our send buffer is full: the peer stops reading
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.close()


class _ClientSide(_Forward):
    """The client's side: holds what the client sends until the upstream connection exists."""

    def __init__(self, router: Router, endpoint: str) -> None:
        super().__init__(None)
        self.router, self.endpoint = router, endpoint
        self._early: list[bytes] = []
        self._forget = lambda: None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.router.connect_upstream(self.endpoint, self))

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
            if sum(map(len, self._early)) > BUFFER_BYTES:
                self.transport.pause_reading()   # until the upstream connection exists
            return
        self.peer.write(data)

    def joined(self, upstream: asyncio.Transport, forget) -> None:
        self.peer, self._forget = upstream, forget
        for data in self._early:
            upstream.write(data)
        self._early = []
        if self.closed:   # the client left while the upstream connection was made
            upstream.close()
            forget()
        else:
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self._forget()
