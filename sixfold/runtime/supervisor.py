"""The local cluster's supervisor: `python -m sixfold.runtime.supervisor --data-dir D`.

`sixfold up` starts it in a session of its own (so it outlives the CLI). It:

1. takes `supervisor.lock` for its lifetime (the CLI's "is it running?" test);
2. starts the nodes listed in cluster.json: every storage node at once, then
   waits until each answers Health; then the writer (it runs recovery), waits
   for its Status; then the readers; then the three coordinators (they load the
   instance list into their catalog; compute nodes get their addresses, so that
   a restarted instance asks them whether it is still the writer). Any node that exits or does not become
   healthy in time fails the start: the supervisor records why (with the tail of
   that node's log), stops everything it started, and exits 1;
3. then watches: a node that exits unexpectedly is started again after a
   bounded backoff (0.5 s doubling to 10 s; the count resets once it has run
   for 30 s), unless chaos marked it down (`nodes/<name>/chaos-down`) — it stays
   down until the marker is removed, then it starts at once. A
   `nodes/<name>/restart-requested` marker restarts a node now (SIGKILL first
   if it is running); a replicator whose command line changed (the region roles
   moved the primary: it ships from the new primary's storage) is restarted
   (SIGTERM: it records its position); `sixfold region add|remove` ask for a
   whole region's nodes to start or stop (requests `add-region`, `remove-region`);
4. on SIGTERM/SIGINT stops the coordinators, then readers, then the writer, then storage (SIGCONT in
   case chaos paused them, SIGTERM, SIGKILL after --stop-timeout-s), records
   the cluster as stopped and exits 0.

Every node is started through `sixfold.runtime.launch`, which gives it a
parent-death signal: if the supervisor itself is killed, so are its nodes.
cluster.json is written only by the supervisor while it runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from sixfold.client import latency
from sixfold.runtime import partition
from sixfold.runtime.layout import (CLUSTER_ENV, FAILED, MARKER_DOWN, MARKER_RESTART, RUNNING, STARTING, STOPPED,
                                    STOPPING, ClusterDir, hold_lock, tail)
from sixfold.runtime.probe import probe, ready
from sixfold.globaldb.roles import RolesReader, replicator_runs, roles_path, save_roles
from sixfold.runtime.commands import default_roles, node_args
from sixfold.runtime.topology import (COMPUTE, COORDINATOR, READER, REPLICATOR, STORAGE, WRITER, ClusterSpec,
                                      NodeSpec)

log = logging.getLogger("sixfold.supervisor")


LOOP_INTERVAL_S = 0.1
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # a node that ran this long starts over at the first backoff step
EXIT_ALREADY_RUNNING = 3


@dataclass(eq=False)
class Managed:
    spec: NodeSpec
    proc: subprocess.Popen | None = None
    state: str = "stopped"  # starting | running | down (chaos) | backoff | stopped | failed
    restarts: int = 0
    failures_in_row: int = 0
    started_monotonic: float = 0.0
    started_unix_s: float | None = None
    next_start_monotonic: float | None = None
    last_exit_code: int | None = None
    history: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)   # what it was started with

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class StartFailed(Exception):
    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class Supervisor:
    def __init__(self, cdir: ClusterDir) -> None:
        self.cdir = cdir
        self.state = cdir.read_state()
        if self.state is None:
            raise click.ClickException(f"no cluster.json in {cdir.root}; start clusters with `sixfold up`")
        self.spec = ClusterSpec.from_dict(self.state["spec"])
        self.tuning = self.state.get("tuning", {})
        self.python = self.state.get("python") or sys.executable
        self.nodes = [Managed(NodeSpec.from_dict(n)) for n in self.state["nodes"]]
        self.stop_requested = threading.Event()
        # partitions need each node in its own cgroup and the connection-marking chain (see partition.py)
        self.partition_reason = partition.unavailable_reason()
        self.cgroups = self.partition_reason is None
        # which region takes writes: node flags follow it, the primary's replicator stands by
        self.roles = RolesReader(roles_path(cdir.root), default_roles([m.spec for m in self.nodes]))
        if self.spec.regions > 1 and not roles_path(cdir.root).exists():
            # the first record (generation 1): every region's coordinators learn the primary writer's address
            save_roles(roles_path(cdir.root), replace(self.roles.default, generation=1))

    # ------------------------------------------------------------ commands

    def node_command(self, node: NodeSpec) -> list[str]:
        return [self.python, *node_args(node, [m.spec for m in self.nodes], self.spec, self.tuning,
                                        str(self.cdir.node_data(node.name)), roles=self.roles.get(),
                                        roles_file=str(roles_path(self.cdir.root)))]

    def standing_by(self, m: Managed) -> bool:
        """A replicator whose region is the primary (or is being failed over to) is not run."""
        return m.spec.kind == REPLICATOR and not replicator_runs(self.roles.get(), m.spec.region)

    def child_env(self, node: NodeSpec | None = None) -> dict[str, str]:
        # the nodes read their flags from SIXFOLD_* variables too: none of the user's may leak in,
        # except the chaos tests' fault-injection knobs (sixfold/unsafe.py)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIXFOLD_") or k.startswith("SIXFOLD_UNSAFE_")}
        env[CLUSTER_ENV] = str(self.cdir.root)
        env["PYTHONUNBUFFERED"] = "1"
        if node is not None:   # the RPC layer's latency table (sixfold/client/latency.py)
            env[latency.LATENCY_FILE_ENV] = str(self.cdir.latency_file)
            env[latency.LATENCY_REGION_ENV] = str(node.region)
            if self.tuning.get("latency_in_region"):
                env[latency.LATENCY_IN_REGION_ENV] = "1"
        if node is not None and node.kind == COMPUTE:
            env["SIXFOLD_PG_PASSWORD"] = self.cdir.pg_password()   # a secret: not on the command line
        return env

    def spawn(self, m: Managed, why: str) -> None:
        assert not m.running, f"{m.name} is already running"
        node_log = self.cdir.node_log(m.name)
        node_log.parent.mkdir(parents=True, exist_ok=True)
        launcher = [self.python, "-m", "sixfold.runtime.launch", "--parent", str(os.getpid())]
        if self.cgroups:
            procs = partition.prepare_node_cgroup(self.cdir.cluster_id, m.name)
            if procs is not None:
                launcher += ["--cgroup-procs", str(procs)]
        with open(node_log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: starting {m.name} ({why}) ---\n"
                      .encode())
            out.flush()
            m.command = self.node_command(m.spec)
            m.proc = subprocess.Popen([*launcher, "--", *m.command], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=out, env=self.child_env(m.spec), close_fds=True)
        m.state = "starting" if why == "start" else "running"
        m.started_monotonic = time.monotonic()
        m.started_unix_s = time.time()
        m.next_start_monotonic = None
        log.info("started %s (pid %d, %s) on %s", m.name, m.proc.pid, why, m.spec.address)

    # ------------------------------------------------------------ state file

    def publish(self, state: str | None = None, phase: str | None = None, error: str | None = None,
                failed_node: str | None = None) -> None:
        s = self.state
        if state is not None:
            s["state"] = state
        if phase is not None:
            s["phase"] = phase
        if error is not None:
            s["error"] = error
            s["failed_node"] = failed_node
        s["supervisor_pid"] = os.getpid() if s["state"] not in (STOPPED, FAILED) else None
        s["partitions"] = {"available": self.partition_reason is None, "reason": self.partition_reason or ""}
        by_name = {m.name: m for m in self.nodes}
        for entry in s["nodes"]:
            m = by_name[entry["name"]]
            entry.update(pid=m.proc.pid if m.running else None, state=m.state, restarts=m.restarts,
                         started_unix_s=m.started_unix_s if m.running else None, last_exit_code=m.last_exit_code)
        self.cdir.write_state(s)

    # ------------------------------------------------------------ start

    def wait_healthy(self, group: list[Managed], label: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(group)
        healthy = 0
        while pending:
            if self.stop_requested.is_set():
                raise StartFailed("", "stopped by request while starting")
            for m in list(pending):
                if not m.running:
                    code = m.proc.returncode if m.proc else None
                    m.last_exit_code = code
                    m.state = "failed"
                    raise StartFailed(m.name, f"{m.name} exited with code {code} while starting")
                if ready(m.spec.kind, probe(m.spec.kind, m.spec.address, self.spec.volume_id, timeout_s=0.5)):
                    pending.remove(m)
                    m.state = "running"
                    healthy += 1
                    self.publish(phase=f"{label}: {healthy}/{len(group)} healthy")
            if pending and time.monotonic() > deadline:
                m = pending[0]
                m.state = "failed"
                raise StartFailed(m.name, f"{m.name} did not become healthy within {timeout_s:.0f} s")
            if pending:
                time.sleep(0.1)

    def start_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        writer = self.roles.get().writer if self.spec.regions > 1 else ""
        is_writer = (lambda m: m.name == writer) if writer else (lambda m: m.spec.role == WRITER)
        for m in self.nodes:
            if self.standing_by(m):
                m.state = "standby"
        groups = [
            ([m for m in self.nodes if m.spec.kind == STORAGE], "storage nodes"),
            ([m for m in self.nodes if m.spec.kind == COMPUTE and is_writer(m)], "writer"),
            ([m for m in self.nodes if m.spec.kind == REPLICATOR and not self.standing_by(m)], "replicators"),
            ([m for m in self.nodes if m.spec.kind == COMPUTE and not is_writer(m)], "readers"),
            ([m for m in self.nodes if m.spec.kind == COORDINATOR], "coordinators"),
        ]
        for group, label in groups:
            if not group:
                continue
            self.publish(phase=f"{label}: starting {len(group)}")
            for m in group:
                self.spawn(m, "start")
            self.publish()
            self.wait_healthy(group, label, max(1.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ watch

    def backoff_s(self, m: Managed) -> float:
        ran_s = time.monotonic() - m.started_monotonic
        m.failures_in_row = 1 if ran_s >= STABLE_AFTER_S else m.failures_in_row + 1
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (m.failures_in_row - 1))

    # ------------------------------------------------------------ nodes added and removed

    def handle_requests(self) -> bool:
        """`sixfold replica add|remove` ask through request files; True when the node set changed."""
        changed = False
        for path in sorted(self.cdir.requests_dir.glob("*.json")) if self.cdir.requests_dir.exists() else []:
            try:
                request = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.error("ignoring the unreadable request %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            path.unlink(missing_ok=True)
            by_name = {m.name: m for m in self.nodes}
            if request.get("action") == "add-node":
                node = NodeSpec.from_dict(request["node"])
                if node.name in by_name:
                    log.error("add %s: a node with that name exists", node.name)
                    continue
                m = Managed(node)
                self.nodes.append(m)
                self.state["nodes"].append({**node.to_dict(), "pid": None, "state": "stopped", "restarts": 0})
                self.remark()
                self.spawn(m, "added by sixfold replica add")
            elif request.get("action") == "remove-node" and request.get("name") in by_name:
                m = by_name[request["name"]]
                self.stop_node(m, float(self.tuning.get("stop_timeout_s", 10.0)))
                self.nodes.remove(m)
                self.state["nodes"] = [n for n in self.state["nodes"] if n["name"] != m.name]
                self.remark()
                log.info("removed %s (sixfold replica remove)", m.name)
            elif request.get("action") in ("add-region", "remove-region"):
                self.change_region(request, by_name)
                changed = True
                continue
            else:
                log.error("ignoring the request %s: %s", path.name, request)
                continue
            self.state["spec"]["readers"] = sum(1 for m in self.nodes if m.spec.kind == COMPUTE) - 1
            changed = True
        return changed

    def change_region(self, request: dict, by_name: dict[str, Managed]) -> None:
        """`sixfold region add|remove`: a whole region's nodes start (storage first) or stop, and the
        cluster's spec (its region numbers) changes with them, so a later `up` brings back the same."""
        if request["action"] == "add-region":
            added = [Managed(NodeSpec.from_dict(n)) for n in request["nodes"] if n["name"] not in by_name]
            self.nodes += added
            self.state["nodes"] += [{**m.spec.to_dict(), "pid": None, "state": "stopped", "restarts": 0}
                                    for m in added]
        else:
            names = set(request["names"])
            stop_timeout_s = float(self.tuning.get("stop_timeout_s", 10.0))
            for m in [by_name[name] for name in request["names"] if name in by_name]:
                self.stop_node(m, stop_timeout_s)
                self.nodes.remove(m)
            self.state["nodes"] = [n for n in self.state["nodes"] if n["name"] not in names]
            added = []
        self.state["spec"] = request["spec"]
        self.spec = ClusterSpec.from_dict(request["spec"])
        self.remark()
        for m in added:
            self.spawn(m, "added by sixfold region add")
        log.info("%s: %s", request["action"], ", ".join(request.get("names") or [m.name for m in added]))

    def remark(self) -> None:
        """Node numbers for partitions follow the node list (the CLI refuses while a partition is on)."""
        if self.cgroups:
            try:
                partition.install_marks(self.cdir.cluster_id, [(i + 1, m.name) for i, m in enumerate(self.nodes)])
            except (partition.PartitionError, OSError, subprocess.SubprocessError) as exc:
                log.warning("partitions will not be possible: %s", exc)
                self.partition_reason = f"re-installing the connection-marking rules failed: {exc}"
                self.cgroups = False

    def stop_node(self, m: Managed, timeout_s: float) -> None:
        if m.running:
            m.proc.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM: SIGKILL", m.name, timeout_s)
                m.proc.kill()
                m.proc.wait()
            m.last_exit_code = m.proc.returncode
        m.state = "stopped"

    def tick(self) -> bool:
        """One pass over the nodes; True when cluster.json needs rewriting."""
        changed = self.handle_requests()
        now = time.monotonic()
        for m in self.nodes:
            if self.standing_by(m):
                if m.running:
                    # at once: a failover waits for it to be gone (it must grant no more leases);
                    # its durable position is written atomically, nothing is lost by a kill
                    log.info("%s stands by: its region is the primary now (or is being failed over to)", m.name)
                    m.proc.send_signal(signal.SIGCONT)
                    m.proc.kill()
                    m.proc.wait()
                if m.state != "standby":
                    m.state, m.proc, m.next_start_monotonic = "standby", None, None
                    changed = True
                continue
            if m.state == "standby":   # its region became a secondary: it ships from the new primary
                if self.cdir.has_marker(m.name, MARKER_DOWN):
                    m.state = "down"     # (chaos killed its region meanwhile: it waits like the rest)
                else:
                    self.spawn(m, "its region is a secondary now")
                changed = True
                continue
            if m.spec.kind == REPLICATOR and m.running and self.node_command(m.spec) != m.command:
                # the primary moved (a switchover): it ships from the new primary's storage now,
                # from its durable position (SIGTERM: it records that position on the way out)
                log.info("%s: the primary region changed: restarting it with the new source", m.name)
                self.stop_node(m, float(self.tuning.get("stop_timeout_s", 10.0)))
                self.spawn(m, "the primary region changed")
                changed = True
                continue
            restart_marker = self.cdir.marker(m.name, MARKER_RESTART)
            if restart_marker.exists():
                if m.running:
                    log.info("restart of %s requested: killing pid %d", m.name, m.proc.pid)
                    m.proc.send_signal(signal.SIGCONT)
                    m.proc.kill()
                    m.proc.wait()
                restart_marker.unlink(missing_ok=True)
                m.restarts += 1
                m.failures_in_row = 0
                self.spawn(m, "restart requested")
                changed = True
                continue
            if m.running:
                continue
            if m.proc is not None:  # it just exited
                m.last_exit_code = m.proc.returncode
                m.proc = None
                chaos = self.cdir.has_marker(m.name, MARKER_DOWN)
                log.log(logging.INFO if chaos else logging.WARNING, "%s exited with code %s%s", m.name,
                        m.last_exit_code, " (chaos: stays down)" if chaos else "")
                m.state = "down" if chaos else "backoff"
                m.next_start_monotonic = None if chaos else now + self.backoff_s(m)
                changed = True
                continue
            if self.cdir.has_marker(m.name, MARKER_DOWN):
                if m.state != "down":
                    m.state, m.next_start_monotonic = "down", None
                    changed = True
                continue
            if m.state == "down":  # the chaos marker is gone: back now
                m.restarts += 1
                m.failures_in_row = 0
                self.spawn(m, "chaos marker removed")
                changed = True
            elif m.next_start_monotonic is not None and now >= m.next_start_monotonic:
                m.restarts += 1
                self.spawn(m, f"restart #{m.restarts} after exit code {m.last_exit_code}")
                changed = True
        return changed

    def watch(self) -> None:
        while not self.stop_requested.wait(LOOP_INTERVAL_S):
            if self.tick():
                self.publish()

    # ------------------------------------------------------------ stop

    def stop_all(self) -> None:
        timeout_s = float(self.tuning.get("stop_timeout_s", 10.0))
        # coordinators first: they would take stopping compute nodes for failures
        for role in (COORDINATOR, READER, REPLICATOR, WRITER, STORAGE):
            group = [m for m in self.nodes if m.spec.role == role and m.running]
            for m in group:
                m.proc.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
                m.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for m in group:
                self.stop_node(m, max(0.0, deadline - time.monotonic()))
                log.info("stopped %s (exit code %s)", m.name, m.last_exit_code)
        for m in self.nodes:  # anything left (e.g. started during the stop)
            if m.running:
                m.proc.kill()
                m.proc.wait()
            m.state = "stopped"

    # ------------------------------------------------------------ main

    def run(self) -> int:
        start_timeout_s = float(self.tuning.get("start_timeout_s", 90.0))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_requested.set())
        self.state["started_unix_s"] = time.time()
        if self.cgroups:
            try:
                for m in self.nodes:  # the cgroup match needs the cgroups to exist
                    if partition.prepare_node_cgroup(self.cdir.cluster_id, m.name) is None:
                        raise partition.PartitionError(f"could not create the cgroup of {m.name}")
                partition.install_marks(self.cdir.cluster_id, [(i + 1, m.name) for i, m in enumerate(self.nodes)])
            except (partition.PartitionError, OSError, subprocess.SubprocessError) as exc:
                log.warning("partitions will not be possible: %s", exc)
                self.partition_reason = f"installing the connection-marking rules failed: {exc}"
                self.cgroups = False
        self.publish(state=STARTING, phase="starting", error="")
        try:
            self.start_all(start_timeout_s)
        except StartFailed as exc:
            node_tail = tail(self.cdir.node_log(exc.node), 25) if exc.node else ""
            message = str(exc) + (f"\n--- last lines of {self.cdir.node_log(exc.node)} ---\n{node_tail}"
                                  if node_tail else "")
            log.error("start failed: %s", exc)
            self.publish(state=STOPPING, phase="start failed: stopping", error=message, failed_node=exc.node)
            self.stop_all()
            self.publish(state=FAILED, phase="start failed")
            return 1
        self.state["ever_healthy"] = True
        self.state["healthy_unix_s"] = time.time()
        self.publish(state=RUNNING, phase="running")
        log.info("cluster healthy: %d nodes", len(self.nodes))
        self.watch()
        log.info("stop requested")
        self.publish(state=STOPPING, phase="stopping")
        self.stop_all()
        self.publish(state=STOPPED, phase="stopped")
        log.info("all nodes stopped")
        return 0


@click.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def main(data_dir: Path) -> None:
    """Supervise the local cluster in DATA_DIR (started by `sixfold up`)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s supervisor: %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
    cdir = ClusterDir.at(data_dir)
    lock_fd = hold_lock(cdir.supervisor_lock)
    if lock_fd is None:
        log.error("another supervisor holds %s", cdir.supervisor_lock)
        sys.exit(EXIT_ALREADY_RUNNING)
    os.environ[CLUSTER_ENV] = str(cdir.root)
    code = Supervisor(cdir).run()
    os.close(lock_fd)
    sys.exit(code)


if __name__ == "__main__":
    main()
