"""The nemesis: faults through the same operations as `sixfold chaos`, each with its heal.

A fault picks its targets when it starts (the writer and the coordinator leader are
looked up at that moment: failovers move them), and the heal undoes exactly that
(`chaos heal` on those targets: resume, restart, remove partitions). Both ends are
recorded in the history as nemesis ops: {"process": "nemesis", "type": "info",
"f": "start"|"stop", "value": {"fault", "id", "targets", ...}}.

Latency is not offered: the RPC layer has no latency injection yet (DESIGN.md §7).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from sixfold.chaos.history import INFO, NEMESIS, History
from sixfold.runtime import local, partition
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.probe import probe_coordinator
from sixfold.runtime.topology import COMPUTE, COORDINATOR, STORAGE, WRITER, NodeSpec

HEAL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Fault:
    name: str
    help: str
    action: str                       # kill | pause | partition
    pick: Callable                    # (nodes, rng, cdir) -> (targets, others or None)
    needs_partitions: bool = False


def _nodes(cdir: ClusterDir) -> list[NodeSpec]:
    return local.with_live_roles(local.node_specs(local.require(cdir)))


def _storage(nodes):
    return [n for n in nodes if n.kind == STORAGE]


def current_writer(cdir: ClusterDir) -> NodeSpec:
    """The writer instance as the coordinators' catalog has it now."""
    return _writer(_nodes(cdir))


def _writer(nodes):
    writers = [n for n in nodes if n.kind == COMPUTE and n.role == WRITER]
    if not writers:
        raise local.RuntimeFailure("no writer is known right now")
    return writers[0]


def _az(nodes, rng):
    return rng.choice(sorted({n.az for n in nodes}))


def _pick_leader(nodes, rng, cdir):
    for n in nodes:
        if n.kind == COORDINATOR and probe_coordinator(n.address, 1.0).get("is_leader"):
            return [n], None
    raise local.RuntimeFailure("no coordinator leads right now")


def _pick_az_plus_one(nodes, rng, cdir):
    az = _az(nodes, rng)
    extra = rng.choice([n for n in _storage(nodes) if n.az != az])
    return [n for n in nodes if n.az == az] + [extra], None


FAULTS = {f.name: f for f in [
    Fault("kill", "SIGKILL one random storage node", "kill",
          lambda nodes, rng, cdir: ([rng.choice(_storage(nodes))], None)),
    Fault("pause", "SIGSTOP one random storage node", "pause",
          lambda nodes, rng, cdir: ([rng.choice(_storage(nodes))], None)),
    Fault("partition", "cut one random AZ off from the rest (iptables; root)", "partition",
          lambda nodes, rng, cdir: ((lambda az: ([n for n in nodes if n.az == az], None))(_az(nodes, rng))),
          needs_partitions=True),
    Fault("az", "SIGKILL every node of one random AZ", "kill",
          lambda nodes, rng, cdir: ((lambda az: ([n for n in nodes if n.az == az], None))(_az(nodes, rng)))),
    Fault("az-plus-one", "SIGKILL an AZ plus one storage node elsewhere (3 of 6 left: writes stop)", "kill",
          _pick_az_plus_one),
    Fault("leader", "SIGKILL the coordinator leader", "kill", _pick_leader),
    Fault("writer", "SIGKILL the writer instance", "kill", lambda nodes, rng, cdir: ([_writer(nodes)], None)),
    Fault("pause-writer", "SIGSTOP the writer instance", "pause",
          lambda nodes, rng, cdir: ([_writer(nodes)], None)),
    Fault("partition-writer", "cut the writer off from every storage node (iptables; root)", "partition",
          lambda nodes, rng, cdir: ([_writer(nodes)], _storage(nodes)), needs_partitions=True),
]}

NOT_AVAILABLE = {"latency": "latency injection is not in the RPC layer yet (DESIGN.md §7); use pause instead"}


def parse(names: str) -> list[Fault]:
    """'kill,pause' -> faults; a ValueError says what is wrong."""
    out = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name in NOT_AVAILABLE:
            raise ValueError(f"nemesis {name!r}: {NOT_AVAILABLE[name]}")
        if name not in FAULTS:
            raise ValueError(f"no nemesis {name!r}; choose from {', '.join(FAULTS)}")
        if FAULTS[name].needs_partitions and partition.unavailable_reason():
            raise ValueError(f"nemesis {name!r} needs partitions: {partition.unavailable_reason()}")
        out.append(FAULTS[name])
    if not out:
        raise ValueError("name at least one nemesis")
    return out


class Nemesis:
    """Runs faults one at a time until `deadline` (monotonic): a quiet gap, a fault, its heal.

    schedule "random": each round a seeded random fault, gap and duration; "fixed": the faults
    in the order given, round after round, with exactly `interval_s` gaps and `duration_s` faults."""

    def __init__(self, cdir: ClusterDir, faults: list[Fault], history: History, seed: int,
                 interval_s: float = 4.0, duration_s: float = 5.0, schedule: str = "random") -> None:
        self.cdir, self.faults, self.history = cdir, faults, history
        self.rng = random.Random(seed)
        self.interval_s, self.duration_s, self.schedule = interval_s, duration_s, schedule
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.count = 0

    def run(self, deadline: float) -> None:
        round_ = 0
        while not self.stop_event.is_set():
            fixed = self.schedule == "fixed"
            fault = self.faults[round_ % len(self.faults)] if fixed else self.rng.choice(self.faults)
            gap = self.interval_s if fixed else self.interval_s * self.rng.uniform(0.5, 1.5)
            hold = self.duration_s if fixed else self.duration_s * self.rng.uniform(0.6, 1.4)
            if time.monotonic() + gap + hold > deadline or self.stop_event.wait(gap):
                return
            self.strike(fault, hold, round_)
            round_ += 1

    def strike(self, fault: Fault, hold_s: float, fault_id: int) -> None:
        try:
            targets, others = fault.pick(_nodes(self.cdir), self.rng, self.cdir)
        except local.RuntimeFailure as exc:
            self.errors.append(f"{fault.name}: {exc}")
            self.history.append(INFO, "skip", NEMESIS, {"fault": fault.name, "id": fault_id, "why": str(exc)})
            return
        value = {"fault": fault.name, "id": fault_id, "targets": [t.name for t in targets]}
        if others is not None:
            value["from"] = [o.name for o in others]
        self.history.append(INFO, "start", NEMESIS, value)
        try:
            local.chaos(self.cdir, fault.action, targets, others=others)
        except local.RuntimeFailure as exc:
            self.errors.append(f"{fault.name}: {exc}")
        self.count += 1
        self.stop_event.wait(hold_s)
        self.heal(targets, value)

    def heal(self, targets: list[NodeSpec], value: dict) -> None:
        try:
            result = local.chaos(self.cdir, "heal", targets, timeout_s=HEAL_TIMEOUT_S)
            detail = {"not_ready": result.not_ready}
        except local.RuntimeFailure as exc:
            self.errors.append(f"heal after {value['fault']}: {exc}")
            detail = {"error": str(exc)}
        self.history.append(INFO, "stop", NEMESIS, {**value, **detail})


def heal_everything(cdir: ClusterDir, history: History) -> dict:
    """`chaos heal` on every node (partitions, pauses, kills), recorded in the history."""
    nodes = local.node_specs(local.require(cdir))
    history.append(INFO, "start", NEMESIS, {"fault": "final-heal", "id": "final-heal", "targets": []})
    result = local.chaos(cdir, "heal", nodes, timeout_s=HEAL_TIMEOUT_S)
    history.append(INFO, "stop", NEMESIS, {"fault": "final-heal", "id": "final-heal", "targets": result.done,
                                           "not_ready": result.not_ready})
    return {"healed": result.done, "not_ready": result.not_ready, "root": os.geteuid() == 0}
