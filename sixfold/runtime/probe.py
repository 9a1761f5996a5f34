"""Asking a node how it is: Storage.Health + GetSegmentState, Compute.Status.

Each probe returns a plain dict (the fields `sixfold status --json` documents)
and never raises for an unreachable node: it answers `{"reachable": False, ...}`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.rpc import coordinator_pb2 as copb
from sixfold.rpc import coordinator_pb2_grpc
from sixfold.rpc import storage_pb2 as spb
from sixfold.rpc import storage_pb2_grpc

PROBE_THREADS_MAX = 16
STEPPED_DOWN_TIMEOUT_S = 60.0   # a writer told to step down exits and comes back as a reader within this
_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.enable_retries", 0)]


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name.lower() if code is not None else type(exc).__name__


def probe_storage(address: str, volume_id: str, timeout_s: float = 1.0) -> dict:
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        stub = storage_pb2_grpc.StorageStub(channel)
        try:
            health = stub.Health(spb.HealthRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return {"reachable": False, "error": _describe(exc)}
        out = {"reachable": True, "serving": health.status == "SERVING", "uptime_s": round(health.uptime_s, 1),
               "segments": health.segment_count, "records_durable": health.records_durable,
               "epoch": None, "scl": None, "scl_min": None}
        try:
            state = stub.GetSegmentState(spb.SegmentStateRequest(volume_id=volume_id), timeout=timeout_s)
        except grpc.RpcError as exc:
            out["error"] = f"segment state: {_describe(exc)}"
            return out
        if state.segments:
            scls = [s.scl for s in state.segments]
            out.update(epoch=max(s.volume_epoch for s in state.segments), scl=max(scls), scl_min=min(scls),
                       segments=len(state.segments))
        out["pgs"] = pg_roles(health.address or address, state.segments)
        return out


def pg_roles(address: str, segments) -> dict:
    """How many PGs this node serves as a member, joins (being caught up), leaves (being
    replaced), or holds only an old copy of (replaced: no longer a member)."""
    roles = {"member": 0, "joining": 0, "leaving": 0, "removed": 0}
    for s in segments:
        current, changing = address in s.members, bool(s.next_members)
        if current and changing and address not in s.next_members:
            roles["leaving"] += 1
        elif current:
            roles["member"] += 1
        elif address in s.next_members:
            roles["joining"] += 1
        else:
            roles["removed"] += 1
    return roles


def probe_compute(address: str, timeout_s: float = 1.0) -> dict:
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        try:
            status = compute_pb2_grpc.ComputeStub(channel).Status(cpb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return {"reachable": False, "error": _describe(exc)}
        return {"reachable": True, "role": status.role, "health": status.health or "ok", "epoch": status.epoch,
                "vdl": status.vdl, "replica_lag_ms_p50": round(status.replica_lag_ms_p50, 2),
                "replica_lag_ms_p99": round(status.replica_lag_ms_p99, 2), "commits": status.commits,
                "sessions": status.sessions, "cached_pages": status.cached_pages,
                "takes_writes": status.takes_writes, "multi_writer": status.multi_writer,
                "writer_address": status.writer_address,
                "source_vdl": status.source_vdl, "region_lag_ms_last": round(status.region_lag_ms_last, 2),
                "source_seen_unix_s": status.source_seen_unix_s, "seeded_lsn": status.seeded_lsn}


def probe_coordinator(address: str, timeout_s: float = 1.0) -> dict:
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        try:
            cat = coordinator_pb2_grpc.CoordinatorStub(channel).GetCatalog(copb.CatalogRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return {"reachable": False, "error": _describe(exc)}
        return {"reachable": True, "is_leader": cat.is_leader, "leader": cat.leader, "writer": cat.writer,
                "epoch": cat.epoch, "failovers": cat.failovers,
                "instances": {i.name: {"role": i.role, "health": i.health, "promotion_tier": i.promotion_tier}
                              for i in cat.instances},
                "endpoints": [{"name": e.name, "kind": e.kind, "address": e.address, "targets": list(e.targets),
                               "type": e.type, "members": list(e.members), "pg_address": e.pg_address}
                              for e in cat.endpoints],
                "failover": {"id": cat.failover.id, "from": cat.failover.from_instance,
                             "to": cat.failover.to_instance, "state": cat.failover.state,
                             "reason": cat.failover.reason, "epoch": cat.failover.epoch}
                if cat.HasField("failover") else None,
                "storage": {n.name: {"health": n.health, "down_s": round(n.down_s, 1), "detail": n.detail}
                            for n in cat.storage}}


def probe(kind: str, address: str, volume_id: str, timeout_s: float = 1.0) -> dict:
    if kind == "storage":
        return probe_storage(address, volume_id, timeout_s)
    if kind == "coordinator":
        return probe_coordinator(address, timeout_s)
    return probe_compute(address, timeout_s)


def probe_many(targets: list[tuple[str, str]], volume_id: str, timeout_s: float = 1.0) -> list[dict]:
    """[(kind, address)] -> probe results in the same order, all at once."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS_MAX, len(targets))) as pool:
        return list(pool.map(lambda t: probe(t[0], t[1], volume_id, timeout_s), targets))


def ready(kind: str, result: dict) -> bool:
    """A probed node is ready for the next start step: it answers, a storage node serves, a
    coordinator knows the writer (its catalog is loaded)."""
    return bool(result.get("reachable") and (kind != "storage" or result.get("serving"))
                and (kind != "coordinator" or result.get("writer")))


def answering_as_writer(instances: list[tuple[str, str]], timeout_s: float = 1.0) -> list[tuple[str, str]]:
    """The (name, address) instances whose Status says they are the writer now."""
    return [(name, address) for name, address in instances
            if probe_compute(address, timeout_s).get("role") == "writer"]


def wait_serving_as_readers(instances: list[tuple[str, str]], timeout_s: float = STEPPED_DOWN_TIMEOUT_S) -> list[str]:
    """Waits until every instance answers as a healthy reader (a writer that stepped down exits
    and is started again as a reader: a client of it sees a short outage in between); the names
    of those that do, all of them unless timeout_s passed first."""
    deadline = time.monotonic() + timeout_s
    while True:
        reading = [name for name, address in instances
                   if (p := probe_compute(address)).get("role") == "reader" and p.get("health") == "ok"]
        if len(reading) == len(instances) or time.monotonic() > deadline:
            return reading
        time.sleep(0.1)
