"""The region catalog, replicated by pysyncobj (raft) over the three coordinators.

What it holds: the instances (role, AZ, promotion tier, address, health), the
current writer and its volume epoch, and the last failover (recorded *before*
the promotion starts, so that a new leader finishes it instead of starting a
second one). Any replica reads its own copy; @replicated changes are forwarded
to the leader by pysyncobj.

Safety never rests on this catalog: pysyncobj's journal is not durable and its
term/vote are not persisted. Only the storage volume epoch decides which writer
may write; a wrong catalog costs availability, never data.
"""

from __future__ import annotations

import copy
import time

from pysyncobj import SyncObj, SyncObjConf, replicated

WRITER, READER, FENCED = "writer", "reader", "fenced"
CUSTOM_TYPES = ("reader", "any")
CUSTOM_ENDPOINTS_MAX = 16
RESERVED_ENDPOINT_NAMES = ("writer", "reader")


def check_custom_endpoint(instances: dict, custom: dict, name: str, kind: str, members: list[str]) -> str:
    """Why this custom endpoint cannot be created ("" when it can)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        return f"endpoint name {name!r}: use letters, digits, '-' and '_'"
    if name.endswith("-pg"):
        return f"endpoint name {name!r}: the -pg suffix is kept for the PostgreSQL twin of each endpoint"
    if name in RESERVED_ENDPOINT_NAMES or name in instances:
        return f"{name!r} is already the name of {'a cluster endpoint' if name in RESERVED_ENDPOINT_NAMES else 'an instance'}"
    if name in custom:
        return f"a custom endpoint named {name!r} already exists (delete it first)"
    if kind not in CUSTOM_TYPES:
        return f"endpoint type {kind!r}: use one of {', '.join(CUSTOM_TYPES)}"
    if not members:
        return "a custom endpoint needs at least one member instance"
    unknown = sorted(set(members) - set(instances))
    if unknown:
        return f"no instance named {', '.join(unknown)}; the instances are: {', '.join(sorted(instances))}"
    if len(custom) >= CUSTOM_ENDPOINTS_MAX:
        return f"a region has at most {CUSTOM_ENDPOINTS_MAX} custom endpoints"
    return ""


def raft_conf(bind_address: str) -> SyncObjConf:
    # appendEntriesUseBatch=False: with batching a synchronous write waits for the 100 ms send period.
    # bindAddress: pysyncobj listens on 0.0.0.0 otherwise, and the three replicas share a port
    return SyncObjConf(bindAddress=bind_address, appendEntriesUseBatch=False, dynamicMembershipChange=False,
                       raftMinTimeout=0.4, raftMaxTimeout=1.0, connectionRetryTime=0.5,
                       commandsWaitLeader=True)


class Catalog(SyncObj):
    def __init__(self, self_raft: str, partner_rafts: list[str]) -> None:
        super().__init__(self_raft, partner_rafts, conf=raft_conf(self_raft))
        self.instances: dict[str, dict] = {}
        self.writer = ""
        self.epoch = 0
        self.failover: dict | None = None
        self.failovers = 0
        self.custom: dict[str, dict] = {}   # custom endpoints: name -> {type, members, port_slot}
        self.storage: dict[str, dict] = {}   # storage node name -> health, down since, replaced (healing.py)
        self.regions: dict = {"generation": 0}   # the region roles last applied (globaldb/roles.py)

    # ------------------------------------------------------------ changes (through the leader)

    @replicated
    def seed(self, instances: list[dict], writer: str) -> bool:
        """The first leader loads the instance list it was started with (once)."""
        if self.instances:
            return False
        self.instances = {i["name"]: dict(i) for i in instances}
        self.writer = writer
        return True

    @replicated
    def set_health(self, name: str, health: str, vdl: int, epoch: int) -> None:
        inst = self.instances.get(name)
        if inst is None:
            return
        inst["health"], inst["vdl"] = health, vdl
        if name == self.writer and epoch > self.epoch:
            self.epoch = epoch

    @replicated
    def set_role(self, name: str, role: str) -> None:
        if name in self.instances and name != self.writer:
            self.instances[name]["role"] = role

    @replicated
    def begin_failover(self, record: dict) -> dict:
        """Recorded before the promotion. Refused while another one is in progress."""
        if self.failover and self.failover["state"] == "promoting" and self.failover["id"] != record["id"]:
            return self.failover
        self.failover = dict(record, state="promoting")
        return self.failover

    @replicated
    def finish_failover(self, failover_id: str, epoch: int, finished_unix_s: float) -> bool:
        f = self.failover
        if not f or f["id"] != failover_id or f["state"] != "promoting":
            return False
        old, new = f["from_instance"], f["to_instance"]
        if old in self.instances and old != new:
            self.instances[old]["role"] = FENCED
        self.instances[new]["role"] = WRITER
        self.instances[new]["health"] = "ok"
        self.writer = new
        self.epoch = max(self.epoch, epoch)
        f.update(state="done", epoch=epoch, finished_unix_s=finished_unix_s)
        self.failovers += 1
        return True

    @replicated
    def abandon_failover(self, failover_id: str, reason: str) -> None:
        f = self.failover
        if f and f["id"] == failover_id and f["state"] == "promoting":
            f.update(state="failed", reason=f"{f['reason']}; failed: {reason}", finished_unix_s=time.time())

    @replicated
    def create_endpoint(self, name: str, kind: str, members: list[str]) -> str:
        """Checked here, at apply time, so that every replica decides the same. Returns "" or why not."""
        problem = check_custom_endpoint(self.instances, self.custom, name, kind, members)
        if problem:
            return problem
        used = {e["port_slot"] for e in self.custom.values()}
        slot = min(set(range(CUSTOM_ENDPOINTS_MAX)) - used)
        self.custom[name] = {"type": kind, "members": sorted(set(members)), "port_slot": slot}
        return ""

    @replicated
    def delete_endpoint(self, name: str) -> bool:
        return self.custom.pop(name, None) is not None

    @replicated
    def add_instance(self, inst: dict) -> str:
        """A new reader (already running). Returns "" or why not."""
        if inst["name"] in self.instances or inst["name"] in self.custom:
            return f"an instance or endpoint named {inst['name']!r} already exists"
        if any(i["address"] == inst["address"] for i in self.instances.values()):
            return f"another instance already has the address {inst['address']}"
        self.instances[inst["name"]] = dict(inst, role=READER, health="unknown", vdl=0)
        return ""

    @replicated
    def remove_instance(self, name: str) -> str:
        """A reader leaves the catalog (and the custom endpoints it was in). Returns "" or why not."""
        if name not in self.instances:
            return f"no instance named {name!r}; the instances are: {', '.join(sorted(self.instances))}"
        if name == self.writer:
            return f"{name} is the writer: fail over first (`sixfold failover`), then remove it"
        if self.failover and self.failover["state"] == "promoting" and self.failover["to_instance"] == name:
            return f"{name} is being promoted right now; retry when the failover has finished"
        del self.instances[name]
        for custom in self.custom.values():
            if name in custom["members"]:
                custom["members"].remove(name)
        return ""

    @replicated
    def seed_storage(self, nodes: list[dict]) -> bool:
        if self.storage:
            return False
        self.storage = {n["name"]: dict(n) for n in nodes}
        return True

    @replicated
    def set_storage(self, name: str, fields: dict) -> None:
        if name in self.storage:
            self.storage[name].update(fields)

    @replicated
    def apply_region_roles(self, roles: dict, writer: str, replicator: dict | None) -> bool:
        """A newer region-roles record (regions.json): `writer` is who this region's catalog names as
        its writer (the primary's writer, or this region's replicator, added if missing). A region
        that became the primary keeps the writer its promotion recorded and drops its replicator."""
        if roles["generation"] <= self.regions.get("generation", 0):
            return False
        self.regions = dict(roles)
        if replicator is not None and writer == replicator["name"] and writer not in self.instances:
            self.instances[writer] = dict(replicator, role=WRITER, health="unknown", vdl=0)
        if writer in self.instances and writer != self.writer:
            if self.writer in self.instances:
                self.instances[self.writer]["role"] = FENCED
            self.instances[writer]["role"] = WRITER
            self.writer = writer
        if replicator is not None and replicator["name"] != self.writer:
            self.instances.pop(replicator["name"], None)
        return True

    # ------------------------------------------------------------ reads (this replica's copy)

    def snapshot(self) -> dict:
        return {"instances": copy.deepcopy(self.instances), "writer": self.writer, "epoch": self.epoch,
                "failover": copy.deepcopy(self.failover), "failovers": self.failovers,
                "custom": copy.deepcopy(self.custom),
                "storage": copy.deepcopy(self.storage), "regions": copy.deepcopy(self.regions)}

    def leader_address(self) -> str:
        leader = self._getLeader()
        return leader.address if leader is not None else ""

    def is_leader(self) -> bool:
        return self._isLeader()
