"""The leader's control loop: health checks, failover, repointing readers.

Runs on every replica; acts only while its replica is the raft leader. Health
counters are local to the leader (a new leader starts counting afresh).

Failover: the target is chosen by promotion tier, then least lag (highest VDL
in its Status). The failover is recorded in the catalog *before* Promote is
called; a leader that finds a failover "promoting" (its predecessor died in the
middle) finishes it with the same target (Promote is idempotent) or, if that
target is gone, abandons it and starts a new one. A double promotion is safe
anyway: each promotion runs recovery, which bumps the volume epoch and fences
every earlier writer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc

from sixfold.client import latency
from sixfold.nodes.coordinator.catalog import FENCED, READER, WRITER, Catalog
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc

log = logging.getLogger("sixfold.coordinator")

HEALTH_INTERVAL_S = 0.2
HEALTH_TIMEOUT_S = 0.5
FAILURES_TO_LOST = 3
WRITER_STALL_S = 5.0   # commits waiting this long with VDL not moving: cut off from the storage quorum
PROMOTE_TIMEOUT_S = 60.0
RAFT_WRITE_TIMEOUT_S = 5.0


class FailoverError(Exception):
    pass


def _stub(address: str):
    channel = latency.sync_channel(address, options=[("grpc.enable_retries", 0)])
    return channel, compute_pb2_grpc.ComputeStub(channel)


def compute_status(address: str, timeout_s: float = HEALTH_TIMEOUT_S) -> cpb.StatusResponse | None:
    channel, stub = _stub(address)
    try:
        return stub.Status(cpb.StatusRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return None
    finally:
        channel.close()


def stall_step(previous: tuple[int, float] | None, vdl: int, issued_lsn: int,
               now_s: float, storage_lacks_quorum: bool = False) -> tuple[tuple[int, float] | None, float]:
    """(the writer's stall state, seconds it has been stalled): records are waiting for a write
    quorum (issued > VDL) and VDL has not moved since. A writer that answers its health checks
    but cannot reach 4 of 6 copies is lost too; the new writer's recovery fences it.
    While the storage itself may lack a quorum nobody could commit, so the clock starts again
    when it is back: the writer gets the whole stall time to reconnect and catch up after a heal
    (counting the outage failed it over right after every long one)."""
    if issued_lsn <= vdl or storage_lacks_quorum:
        return None, 0.0
    if previous is None or previous[0] != vdl:
        return (vdl, now_s), 0.0
    return previous, now_s - previous[1]


STORAGE_DOWN_FOR_NO_QUORUM = 3   # 3 of a PG's 6 copies down: no write quorum (4 of 6) for anyone


def storage_may_lack_quorum(storage: dict[str, dict]) -> bool:
    """True when enough storage nodes are down (as the coordinators' storage checks see them) that
    some PG may have no write quorum. A writer stalled then is not cut off: no other instance
    could commit either, and failing it over would only fence it (conservative: with more than
    two nodes per AZ, three down nodes need not share a PG)."""
    down = [name for name, node in storage.items() if node.get("health") not in ("ok", "replaced")]
    return len(down) >= STORAGE_DOWN_FOR_NO_QUORUM


def choose_target(snap: dict, statuses: dict, exclude: str, wanted: str = "") -> str | None:
    """Promotion tier first, then least lag (highest VDL), then name; only healthy readers."""
    candidates = []
    for name, inst in snap["instances"].items():
        status = statuses.get(name)
        if name == exclude or status is None or status.role != READER or status.health != "ok":
            continue
        if wanted and name != wanted:
            continue
        candidates.append((inst.get("tier", 1), -status.vdl, name))
    return min(candidates)[2] if candidates else None


class Controller:
    def __init__(self, catalog: Catalog, seed_instances: list[dict], seed_writer: str) -> None:
        self.catalog = catalog
        self.seed_instances = seed_instances
        self.seed_writer = seed_writer
        self.failures: dict[str, int] = {}
        self.stall: tuple[int, float] | None = None   # (VDL, since) of the writer while commits wait
        self.statuses: dict[str, cpb.StatusResponse | None] = {}
        self.lock = threading.Lock()          # one failover at a time (health loop or planned)
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="health")
        self.was_leader = False
        self.failover_enabled = True   # off in a secondary region (its "writer" is the replicator)
        # global database: this region, the region-roles file and this region's replicator
        # ({name, az, tier, address}); the file decides failover_enabled (globaldb/roles.py)
        self.region = 0
        self.roles = None          # a RolesReader, or None in a one-region cluster
        self.replicator: dict | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="control", daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(HEALTH_INTERVAL_S):
            try:
                if self.catalog.is_leader():
                    if not self.was_leader:
                        log.info("this replica leads: health checks start")
                        self.failures.clear()
                    self.was_leader = True
                    self.tick()
                else:
                    self.was_leader = False
            except Exception:
                log.exception("control loop step failed")

    # ------------------------------------------------------------ one pass

    def tick(self) -> None:
        snap = self.catalog.snapshot()
        if not snap["instances"]:
            self._seed()
            return
        if self.roles is not None and self._apply_region_roles(snap):
            snap = self.catalog.snapshot()
        names = list(snap["instances"])
        results = list(self.pool.map(lambda n: compute_status(snap["instances"][n]["address"]), names))
        self.statuses = dict(zip(names, results))   # removed instances drop out
        for name, status in zip(names, results):
            self.failures[name] = 0 if status is not None else self.failures.get(name, 0) + 1
            inst = snap["instances"][name]
            if status is None:
                health = "unreachable" if self.failures[name] >= FAILURES_TO_LOST else inst["health"]
            else:
                health = status.health or "ok"
            if health != inst["health"]:
                self.catalog.set_health(name, health, status.vdl if status else inst.get("vdl", 0),
                                        status.epoch if status else 0, sync=True, timeout=RAFT_WRITE_TIMEOUT_S)
        f = snap["failover"]
        if f and f["state"] == "promoting":
            log.warning("a failover to %s was in progress under the previous leader: finishing it",
                        f["to_instance"])
            self._failover(snap["writer"], f["to_instance"], f["reason"], resume=f)
            return
        writer = snap["writer"]
        status = self.statuses.get(writer)
        lost = self.failures.get(writer, 0) >= FAILURES_TO_LOST
        fenced = status is not None and (status.health == "fenced" or status.role != WRITER)
        stalled_s = 0.0
        if status is not None and status.role == WRITER:
            self.stall, stalled_s = stall_step(self.stall, status.vdl, status.issued_lsn, time.monotonic(),
                                               storage_may_lack_quorum(snap.get("storage") or {}))
        isolated = stalled_s >= WRITER_STALL_S
        if (lost or fenced or isolated) and self.failover_enabled:
            if lost:
                reason = f"writer {writer} did not answer {FAILURES_TO_LOST} health checks"
            elif fenced:
                reason = f"writer {writer} reports {status.health} ({status.role})"
            else:
                reason = (f"writer {writer} has had commits waiting for a write quorum for {stalled_s:.1f} s "
                          f"(VDL {status.vdl}, issued {status.issued_lsn})")
            self.stall = None
            self._failover(writer, "", reason)
            return
        self._repoint(snap)

    def _apply_region_roles(self, snap: dict) -> bool:
        """Read the region roles first on every tick: a region that is not the steady primary never
        promotes (hazard 1 in globaldb/DESIGN.md); a newer record repoints the catalog's writer."""
        from sixfold.globaldb.roles import failover_allowed, region_writer

        roles = self.roles.get()
        self.failover_enabled = failover_allowed(roles, self.region)
        if roles.generation <= snap["regions"].get("generation", 0):
            return False
        writer = region_writer(roles, self.region, self.replicator["name"] if self.replicator else "")
        record = {"generation": roles.generation, "primary": 0 if roles.change else roles.primary,
                  "writer": roles.writer, "writer_endpoint": roles.writer_endpoint}
        log.warning("region roles #%d: primary region %s (%s), this region's writer: %s", roles.generation,
                    roles.primary, roles.change or "steady", writer)
        return bool(self.catalog.apply_region_roles(record, writer, self.replicator, sync=True,
                                                    timeout=RAFT_WRITE_TIMEOUT_S))

    def _seed(self) -> None:
        """The first leader loads the instance list. The catalog is not durable: if every
        replica restarted, the writer may have moved since the list was made, so the live
        writer (the one with the highest epoch that says it is one) wins over the flags."""
        instances = [dict(i) for i in self.seed_instances]
        statuses = list(self.pool.map(lambda i: compute_status(i["address"], timeout_s=1.0), instances))
        live = [(s.epoch, i["name"]) for i, s in zip(instances, statuses)
                if s is not None and s.role == WRITER and s.health == "ok"]
        writer = max(live)[1] if live else self.seed_writer
        for inst in instances:
            inst["role"] = WRITER if inst["name"] == writer else READER
        if writer != self.seed_writer:
            log.warning("the live writer is %s, not %s as configured", writer, self.seed_writer)
        self.catalog.seed(instances, writer, sync=True, timeout=RAFT_WRITE_TIMEOUT_S)

    def _repoint(self, snap: dict) -> None:
        """Readers follow the catalog's writer; a writer that is not the catalog's steps down."""
        writer = snap["instances"].get(snap["writer"])
        if writer is None or writer["health"] != "ok":
            return
        wstatus = self.statuses.get(snap["writer"])
        epoch = max(snap["epoch"], wstatus.epoch if wstatus else 0)
        for name, status in self.statuses.items():
            if status is None or name == snap["writer"]:
                continue
            stale_writer = status.role == WRITER
            lost_reader = status.role == READER and status.writer_address != writer["address"]
            if stale_writer or lost_reader:
                self._follow(name, snap["instances"][name]["address"], snap["writer"], writer["address"], epoch)
            if status.role == READER and snap["instances"][name]["role"] != READER:
                self.catalog.set_role(name, READER, sync=True, timeout=RAFT_WRITE_TIMEOUT_S)

    def _follow(self, name: str, address: str, writer: str, writer_address: str, epoch: int) -> None:
        channel, stub = _stub(address)
        try:
            reply = stub.Follow(cpb.FollowRequest(writer_address=writer_address, writer_id=writer, epoch=epoch),
                                timeout=2)
            if reply.outcome != "unchanged":
                log.info("%s: follow %s -> %s (%s)", name, writer, reply.outcome, reply.detail)
        except grpc.RpcError as exc:
            log.info("%s: Follow failed: %s", name, exc.code().name)
        finally:
            channel.close()

    # ------------------------------------------------------------ failover

    def planned_failover(self, target: str, min_epoch: int = 0) -> dict:
        snap = self.catalog.snapshot()
        if target and target not in snap["instances"]:
            raise FailoverError(f"no instance named {target}; instances: {', '.join(sorted(snap['instances']))}")
        if target == snap["writer"]:
            raise FailoverError(f"{target} already is the writer")
        for name, inst in snap["instances"].items():
            self.statuses[name] = compute_status(inst["address"], timeout_s=2.0)
        return self._failover(snap["writer"], target, "planned failover (sixfold failover)", planned=True,
                              min_epoch=min_epoch)

    def _failover(self, old: str, target: str, reason: str, resume: dict | None = None,
                  planned: bool = False, min_epoch: int = 0) -> dict:
        with self.lock:
            snap = self.catalog.snapshot()
            if not planned and resume is None and snap["writer"] != old:
                return snap["failover"]   # someone else already did it
            record = resume
            if record is not None and self.statuses.get(record["to_instance"]) is None:
                log.warning("the target %s of the unfinished failover is unreachable: abandoning it",
                            record["to_instance"])
                self.catalog.abandon_failover(record["id"], "target unreachable", sync=True,
                                              timeout=RAFT_WRITE_TIMEOUT_S)
                record, target = None, ""
            if record is None:
                chosen = choose_target(snap, self.statuses, exclude=old, wanted=target)
                if chosen is None:
                    if planned:
                        raise FailoverError(f"no healthy reader to promote{' named ' + target if target else ''}")
                    log.error("%s, and no healthy reader can be promoted; retrying", reason)
                    return snap["failover"]
                record = {"id": uuid.uuid4().hex[:12], "from_instance": old, "to_instance": chosen,
                          "reason": reason, "started_unix_s": time.time(), "finished_unix_s": 0.0, "epoch": 0,
                          "min_epoch": min_epoch}
                log.warning("failover %s: %s; promoting %s", record["id"], reason, chosen)
                record = self.catalog.begin_failover(record, sync=True, timeout=RAFT_WRITE_TIMEOUT_S)
            target_address = snap["instances"][record["to_instance"]]["address"]
            channel, stub = _stub(target_address)
            try:
                reply = stub.Promote(cpb.PromoteRequest(failover_id=record["id"], min_epoch=record.get("min_epoch", 0)),
                                     timeout=PROMOTE_TIMEOUT_S)
            except grpc.RpcError as exc:
                log.error("failover %s: Promote on %s failed: %s", record["id"], record["to_instance"],
                          exc.details())
                self.catalog.abandon_failover(record["id"], f"Promote failed: {exc.details()}", sync=True,
                                              timeout=RAFT_WRITE_TIMEOUT_S)
                if planned:
                    raise FailoverError(f"promoting {record['to_instance']} failed: {exc.details()}") from None
                return record
            finally:
                channel.close()
            self.catalog.finish_failover(record["id"], reply.epoch, time.time(), sync=True,
                                         timeout=RAFT_WRITE_TIMEOUT_S)
            self.failures.clear()
            log.warning("failover %s done: %s is the writer at epoch %d", record["id"], record["to_instance"],
                        reply.epoch)
            snap = self.catalog.snapshot()
            for name, inst in snap["instances"].items():
                if name != record["to_instance"] and self.statuses.get(name) is not None:
                    self._follow(name, inst["address"], record["to_instance"], target_address, reply.epoch)
            return snap["failover"]
