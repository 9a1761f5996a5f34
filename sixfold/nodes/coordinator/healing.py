"""Storage self-healing, run by the coordinator leader's control loop.

Every second the leader asks every storage node for its Health. A node that has not
answered for `replace_after_s` is replaced: the leader asks the writer
(`ReplaceStorageNode`) to move every PG that holds it to a healthy node of the same AZ
that is not a member (a membership change by quorum sets, driven by the writer:
sixfold/client/membership.py). The writer answers at once with its progress; the
leader asks again every few seconds while the node stays down, which also covers PGs
created later (placement still names the lost node) and a writer that changed in
between (the new one finishes changes left half-way).

The catalog keeps what `sixfold status` shows (health, how long down, replaced); the
PG memberships themselves live on the storage nodes, durably, with their epochs.
Down-timers live in the leader's memory: a new leader starts counting afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from sixfold.client import latency
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.rpc import storage_pb2 as spb
from sixfold.rpc import storage_pb2_grpc

log = logging.getLogger("sixfold.coordinator.healing")

CHECK_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 0.5
ASK_INTERVAL_S = 2.0
ASK_TIMEOUT_S = 5.0
REPLACE_AFTER_S_DEFAULT = 30.0
RAFT_WRITE_TIMEOUT_S = 5.0

OK, UNREACHABLE, REPLACING, REPLACED = "ok", "unreachable", "replacing", "replaced"


def storage_health(address: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    with latency.sync_channel(address, options=[("grpc.enable_retries", 0)]) as channel:
        try:
            reply = storage_pb2_grpc.StorageStub(channel).Health(spb.HealthRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == "SERVING"


def parse_storage_nodes(spec: str) -> list[dict]:
    """`ID@AZ=HOST:PORT,...` (the compute nodes' --storage-nodes) -> node dicts."""
    out = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        try:
            ident, address = item.split("=", 1)
            name, az = ident.split("@", 1)
        except ValueError:
            raise ValueError(f"{item!r}: expected ID@AZ=HOST:PORT") from None
        out.append({"name": name, "az": az, "address": address, "health": "unknown", "down_since_unix": 0.0,
                    "replaced": False, "detail": ""})
    return out


class StorageHealer:
    def __init__(self, catalog, nodes: list[dict], replace_after_s: float, pool: ThreadPoolExecutor) -> None:
        self.catalog = catalog
        self.nodes = nodes
        self.replace_after_s = replace_after_s
        self.pool = pool
        self.down_since: dict[str, float] = {}
        self.next_ask_s: dict[str, float] = {}
        # a global cluster: only the steady primary region's storage has a writer to replace nodes
        self.enabled = lambda: True

    def start(self, stop: threading.Event) -> None:
        """Its own thread: a dead node's health timeout must not slow the writer's failover checks."""
        if self.nodes:
            threading.Thread(target=self._run, args=(stop,), name="healing", daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        was_leader = False
        while not stop.wait(CHECK_INTERVAL_S):
            try:
                if not self.catalog.is_leader() or not self.enabled():
                    was_leader = False
                    continue
                if not was_leader:
                    self.down_since.clear()   # a new leader counts afresh
                    self.next_ask_s.clear()
                was_leader = True
                self.tick(self.catalog.snapshot())
            except Exception:
                log.exception("storage healing step failed")

    def tick(self, snap: dict) -> None:
        now = time.monotonic()
        if not snap.get("storage"):
            self.catalog.seed_storage(self.nodes, sync=True, timeout=RAFT_WRITE_TIMEOUT_S)
            return
        up = list(self.pool.map(lambda n: storage_health(n["address"]), self.nodes))
        healthy = {n["address"] for n, ok in zip(self.nodes, up) if ok}
        for node, ok in zip(self.nodes, up):
            name = node["name"]
            known = snap["storage"].get(name, {})
            if ok:
                self.down_since.pop(name, None)
                update = {"health": OK, "down_since_unix": 0.0}
            else:
                down_s = now - self.down_since.setdefault(name, now)
                update = {"health": REPLACING if down_s >= self.replace_after_s else UNREACHABLE,
                          "down_since_unix": known.get("down_since_unix") or time.time() - down_s}
                if down_s >= self.replace_after_s and now >= self.next_ask_s.get(name, 0.0):
                    self.next_ask_s[name] = now + ASK_INTERVAL_S
                    update.update(self._ask_writer(snap, node, healthy))
                    if update.get("replaced"):
                        update["health"] = REPLACED
                elif known.get("replaced"):
                    update["health"] = REPLACED
            if any(known.get(k) != v for k, v in update.items()):
                self.catalog.set_storage(name, update, sync=True, timeout=RAFT_WRITE_TIMEOUT_S)

    def _ask_writer(self, snap: dict, node: dict, healthy: set[str]) -> dict:
        writer = snap["instances"].get(snap["writer"])
        if writer is None or writer.get("health") != "ok":
            return {"detail": "waiting for a healthy writer"}
        with latency.sync_channel(writer["address"], options=[("grpc.enable_retries", 0)]) as channel:
            try:
                reply = compute_pb2_grpc.ComputeStub(channel).ReplaceStorageNode(
                    cpb.ReplaceStorageNodeRequest(old_address=node["address"], healthy_addresses=sorted(healthy)),
                    timeout=ASK_TIMEOUT_S)
            except grpc.RpcError as exc:
                return {"detail": f"the writer did not take the replacement: {exc.code().name} {exc.details()}"}
        done = reply.pgs_holding == 0 and reply.pgs_changing == 0
        detail = (f"replaced in every PG" if done else
                  f"{reply.pgs_holding} PG(s) still hold it, {reply.pgs_changing} change(s) running"
                  + (f", {reply.pgs_without_candidate} without a healthy node in AZ {node['az']}"
                     if reply.pgs_without_candidate else ""))
        if not done:
            log.warning("storage node %s down: %s", node["name"], detail)
        return {"detail": detail, "replaced": done}
