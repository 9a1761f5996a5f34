"""The local runtime: a whole cluster as processes on this machine.

The operations behind `sixfold up|down|status|endpoints|chaos`. They return
plain data and raise `RuntimeFailure` (exit code 1) or `UsageProblem` (exit
code 2) with a message that says what to do next; the CLI only formats.

The processes themselves are started and watched by the supervisor
(supervisor.py); this module starts the supervisor, waits for it, stops it, and
sends chaos signals. See layout.py for the data dir.
"""

from __future__ import annotations

import dataclasses

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sixfold.runtime import latency_chaos, partition, procs
from sixfold.runtime.layout import (CLUSTER_ENV, FAILED, MARKER_DOWN, MARKER_PAUSED, MARKER_RESTART, MARKERS,
                                    RUNNING, STARTING, STATE_FORMAT, STOPPED, STOPPING, ClusterDir, StateError, tail)
from sixfold.runtime.commands import default_roles
from sixfold.runtime.probe import answering_as_writer, probe, probe_many, wait_serving_as_readers
from sixfold.runtime.topology import (PEER_WRITER_OCTET_BASE, WRITERS_MAX)
from sixfold.runtime.topology import (COMPUTE, COMPUTE_OCTET_BASE, COORDINATOR, PRIMARY_REGION, READER, READERS_MAX,
                                      REPLICATOR, STORAGE, in_region,
                                      TIER_MAX, WRITER, ClusterSpec, Endpoint, NodeSpec, reader_az,
                                      extra_listen_addresses, raft_address, router_addresses,
                                      TopologyError, endpoints_of, nodes_of, pg_dsn)

Progress = Callable[[str], None]

PRIMARY_SILENT_S = 2.0   # a replicator that heard nothing from the primary's storage this long says so
SUPERVISOR_EXTRA_WAIT_S = 15.0  # beyond start_timeout_s: the supervisor's own start-up and stop
NODE_READY_TIMEOUT_S = 60.0


class RuntimeFailure(Exception):
    exit_code = 1


class UsageProblem(RuntimeFailure):
    exit_code = 2


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------ reading the cluster


def load(cdir: ClusterDir) -> dict | None:
    try:
        return cdir.read_state()
    except StateError as exc:
        raise RuntimeFailure(str(exc)) from None


def require(cdir: ClusterDir) -> dict:
    state = load(cdir)
    if state is None:
        raise RuntimeFailure(f"no cluster in {cdir.root}: start one with `sixfold up --data-dir {cdir.root}` "
                             "(or pass the --data-dir of an existing one)")
    return state


def require_running(cdir: ClusterDir) -> dict:
    state = require(cdir)
    if state.get("runtime") == "docker":   # no supervisor: its containers tell (failover, endpoints work alike)
        from sixfold.runtime import docker

        return docker.require_running(cdir)
    if not cdir.supervisor_running():
        raise RuntimeFailure(f"the cluster in {cdir.root} is not running ({describe_not_running(cdir, state)}); "
                             f"start it with `sixfold up --data-dir {cdir.root}`")
    return state


def node_specs(state: dict) -> list[NodeSpec]:
    return [NodeSpec.from_dict(n) for n in state["nodes"]]


def recorded_pids(state: dict) -> list[int]:
    pids = [state.get("supervisor_pid")] + [n.get("pid") for n in state["nodes"]]
    return [p for p in pids if p]


def live_pids(cdir: ClusterDir, state: dict) -> list[int]:
    return [p for p in recorded_pids(state) if procs.belongs_to(p, cdir.root)]


def describe_not_running(cdir: ClusterDir, state: dict) -> str:
    if state.get("state") in (STARTING, RUNNING, STOPPING):
        return (f"stale state: cluster.json says {state['state']!r} but its supervisor "
                f"(pid {state.get('supervisor_pid')}) is gone")
    if state.get("state") == FAILED:
        return "its last start failed"
    return "stopped, data kept"


# ------------------------------------------------------------------ up


@dataclass
class UpResult:
    started: bool  # False: it was already running
    data_dir: Path
    endpoints: list[Endpoint]
    nodes: list[NodeSpec]
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def check_data_dir(cdir: ClusterDir) -> None:
    root = cdir.root
    if root.exists() and not root.is_dir():
        raise UsageProblem(f"--data-dir {root} is a file, not a directory; pass a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe_file = root / ".write-probe"
        probe_file.write_text("ok")
        probe_file.unlink()
    except OSError as exc:
        raise UsageProblem(f"cannot use {root} as the data dir ({exc.strerror}); pass --data-dir with a "
                           "directory you can write") from None
    if (state_file := cdir.state_file).exists():
        return
    unknown = [p.name for p in root.iterdir() if p.name not in
               {"nodes", "cli.lock", "supervisor.lock", "supervisor.log", "chaos.log", "partitions.json",
                "pg_password"}]
    if unknown:
        raise UsageProblem(f"{root} is not empty and holds no cluster ({state_file.name} missing; found "
                           f"{', '.join(sorted(unknown)[:5])}); pass an empty or new --data-dir")


def check_ports(nodes: list[NodeSpec]) -> None:
    unusable = sorted({n.host for n in nodes if not procs.address_usable(n.host)})
    if unusable:
        raise RuntimeFailure(f"this machine cannot bind {', '.join(unusable[:3])}: the local runtime gives every "
                             "node its own 127.x.y.z address, which Linux routes on loopback by default "
                             "(on macOS add aliases with `ifconfig lo0 alias ADDRESS`)")
    taken = []
    for address, what in [(n.address, n.name) for n in nodes] + extra_listen_addresses(nodes):
        host, port = address.rsplit(":", 1)
        if procs.port_taken(host, int(port)):
            holder = procs.port_holder(host, int(port))
            taken.append(f"{address} ({what})" + (f", held by {holder}" if holder else ""))
    if taken:
        raise RuntimeFailure(
            f"{len(taken)} address(es) the cluster needs are already in use: " + "; ".join(taken[:4])
            + ("; ..." if len(taken) > 4 else "")
            + ". Another cluster may be running there: stop it with `sixfold down --data-dir ITS_DIR`, "
              "or choose other ports with --storage-port/--compute-port. Nothing was started.")


def _explicit_conflicts(stored: ClusterSpec, wanted: ClusterSpec, explicit: set[str],
                        fields: tuple[str, ...] = ClusterSpec.SHAPE_FIELDS) -> list[str]:
    """The flags the user gave that disagree with the stored cluster (defaults never conflict)."""
    return [f"--{name.replace('_', '-')} {getattr(wanted, name)} (the cluster has {getattr(stored, name)})"
            for name in fields if name in explicit and getattr(stored, name) != getattr(wanted, name)]


def _purge_nodes(cdir: ClusterDir) -> None:
    shutil.rmtree(cdir.root / "nodes", ignore_errors=True)


def up(cdir: ClusterDir, spec: ClusterSpec, tuning: dict, explicit: set[str], progress: Progress = _quiet,
       python: str = sys.executable) -> UpResult:
    """Starts the cluster (or finds it running) and returns its endpoints once it is healthy."""
    t0 = time.monotonic()
    try:
        spec.validate()
    except TopologyError as exc:
        raise UsageProblem(str(exc)) from None
    check_data_dir(cdir)
    notes: list[str] = []
    with cdir.cli_locked():
        state = load(cdir)
        if state is not None:
            stored = ClusterSpec.from_dict(state["spec"])
            if cdir.supervisor_running():
                conflicts = _explicit_conflicts(stored, spec, explicit,
                                                ClusterSpec.SHAPE_FIELDS + ("storage_port", "compute_port"))
                if conflicts:
                    raise UsageProblem(
                        f"a cluster with another topology or other ports is already running in {cdir.root}: you asked for "
                        f"{', '.join(conflicts)}. Stop it first (`sixfold down --data-dir {cdir.root}`) "
                        "or use another --data-dir.")
                if state.get("state") == STARTING:
                    progress("another `sixfold up` started this cluster; waiting for it")
                    state = _wait_started(cdir, None, float(state.get("tuning", {}).get("start_timeout_s", 90)),
                                          progress)
                nodes = node_specs(state)
                return UpResult(False, cdir.root, with_pg_password(cdir, endpoints_of(nodes)), nodes,
                                [f"the cluster in {cdir.root} is already up"], time.monotonic() - t0)
            leftovers = live_pids(cdir, state)
            if leftovers:
                raise RuntimeFailure(
                    f"{describe_not_running(cdir, state)}, yet {len(leftovers)} of its processes are still "
                    f"alive (pids {', '.join(map(str, leftovers))}). Run `sixfold down --data-dir {cdir.root}` "
                    "to stop them, then `sixfold up` again.")
            if state.get("state") in (STARTING, RUNNING, STOPPING):
                notes.append(f"note: found {describe_not_running(cdir, state)} and none of its processes alive "
                             "(a reboot or a kill); starting the cluster again with its data")
            if not state.get("ever_healthy"):
                if state.get("state") in (FAILED, STARTING, STOPPING):
                    notes.append("note: discarding an earlier start that never became healthy")
                _purge_nodes(cdir)
                state = None
            else:
                # readers hold no data: a stopped cluster may come back with more or fewer
                conflicts = _explicit_conflicts(stored, spec, explicit - {"readers"})
                if conflicts:
                    raise UsageProblem(
                        f"{cdir.root} holds a cluster with another topology: you asked for {', '.join(conflicts)}. "
                        f"Start it as it is (`sixfold up --data-dir {cdir.root}` without those flags), delete it "
                        f"with `sixfold down --purge --data-dir {cdir.root}`, or use another --data-dir.")
                overrides = {k: getattr(spec, k) for k in ("storage_port", "compute_port", "readers") if k in explicit}
                spec = ClusterSpec.from_dict({**stored.to_dict(), **overrides})
                tuning = {**state.get("tuning", {}), **{k: v for k, v in tuning.items() if k in explicit}}
        for note in notes:
            progress(note)
        nodes = nodes_of(spec)
        check_ports(nodes)
        for n in nodes:
            for marker in MARKERS:
                cdir.clear_marker(n.name, marker)
        new_state = {
            "format": STATE_FORMAT,
            "data_dir": str(cdir.root),
            "cluster_id": cdir.cluster_id,
            "created_unix_s": (state or {}).get("created_unix_s") or time.time(),
            "ever_healthy": bool((state or {}).get("ever_healthy")),
            "spec": spec.to_dict(),
            "tuning": tuning,
            "python": python,
            "state": STARTING,
            "phase": "starting the supervisor",
            "error": "",
            "failed_node": None,
            "supervisor_pid": None,
            "nodes": [{**n.to_dict(), "pid": None, "state": "stopped", "restarts": 0} for n in nodes],
        }
        cdir.write_state(new_state)
        cdir.pg_password()   # made once; the compute nodes get it in their environment
        supervisor = _spawn_supervisor(cdir, python)
        try:
            state = _wait_started(cdir, supervisor, float(tuning.get("start_timeout_s", 90.0)), progress)
        except BaseException:
            _teardown_after_failed_start(cdir, supervisor)
            raise
    nodes = node_specs(state)
    return UpResult(True, cdir.root, with_pg_password(cdir, endpoints_of(nodes)), nodes, notes,
                    time.monotonic() - t0)


def _spawn_supervisor(cdir: ClusterDir, python: str) -> subprocess.Popen:
    env = {**os.environ, CLUSTER_ENV: str(cdir.root), "PYTHONUNBUFFERED": "1"}
    with open(cdir.supervisor_log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} sixfold up: starting the supervisor ---\n".encode())
        out.flush()
        return subprocess.Popen(
            [python, "-m", "sixfold.runtime.supervisor", "--data-dir", str(cdir.root)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True, cwd="/",
            close_fds=True,
        )


def _wait_started(cdir: ClusterDir, supervisor: subprocess.Popen | None, start_timeout_s: float,
                  progress: Progress) -> dict:
    deadline = time.monotonic() + start_timeout_s + SUPERVISOR_EXTRA_WAIT_S
    last_phase = None
    while True:
        state = load(cdir) or {}
        phase = state.get("phase")
        if phase != last_phase and phase:
            progress(phase)
            last_phase = phase
        if state.get("state") == RUNNING:
            return state
        gone = supervisor.poll() is not None if supervisor is not None else not cdir.supervisor_running()
        if state.get("state") == FAILED or (gone and state.get("state") != RUNNING):
            error = state.get("error") or (
                f"the supervisor exited with code {supervisor.returncode if supervisor else '?'} before the "
                f"cluster was healthy; its log:\n{tail(cdir.supervisor_log, 20)}")
            raise RuntimeFailure(f"the cluster did not start: {error}")
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"the cluster was not healthy within {start_timeout_s:.0f} s "
                                 f"(last step: {phase}); see {cdir.supervisor_log} and {cdir.root / 'nodes'}/*/node.log")
        time.sleep(0.1)


def _teardown_after_failed_start(cdir: ClusterDir, supervisor: subprocess.Popen) -> None:
    """Never leave a half-started cluster: stop the supervisor, then kill whatever is left."""
    if supervisor.poll() is None:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
    state = load(cdir)
    pids = recorded_pids(state) if state else []
    procs.kill_group_leftovers(pids + procs.cluster_processes(cdir.root), cdir.root)
    if os.geteuid() == 0:
        partition.remove_all(cdir.cluster_id)
    partition.remove_cgroups(cdir.cluster_id)
    if state is not None:
        state["state"] = FAILED
        state["supervisor_pid"] = None
        for n in state["nodes"]:
            n["pid"] = None
        cdir.write_state(state)


# ------------------------------------------------------------------ down


@dataclass
class DownResult:
    was_running: bool
    messages: list[str]
    purged: bool = False


PURGEABLE = ("cluster.json", "nodes", "supervisor.log", "supervisor.lock", "chaos.log", "partitions.json")


def down(cdir: ClusterDir, purge: bool = False, progress: Progress = _quiet) -> DownResult:
    if not cdir.state_file.exists():
        leftovers = procs.cluster_processes(cdir.root) if cdir.root.exists() else []
        if leftovers:
            procs.kill_group_leftovers(leftovers, cdir.root)
            return DownResult(False, [f"no cluster.json in {cdir.root}, but killed {len(leftovers)} leftover "
                                      "process(es) of a cluster there"])
        return DownResult(False, [f"no cluster in {cdir.root}: nothing to stop"])
    messages = []
    with cdir.cli_locked():
        state = load(cdir)
        if state is None:
            return DownResult(False, [f"no cluster in {cdir.root}: nothing to stop"])
        was_running = cdir.supervisor_running()
        timeout_s = float(state.get("tuning", {}).get("stop_timeout_s", 10.0))
        if was_running:
            sup = state.get("supervisor_pid")
            progress("stopping coordinators, readers, writer, then storage")
            if sup and procs.signal_ours(sup, signal.SIGTERM, cdir.root):
                if procs.wait_gone([sup], timeout_s * 3 + 10):
                    messages.append(f"the supervisor (pid {sup}) did not stop in time: killed it")
                    procs.signal_ours(sup, signal.SIGKILL, cdir.root)
            state = load(cdir) or state
            messages.append(f"stopped the cluster in {cdir.root}")
        else:
            leftovers = live_pids(cdir, state)
            if state.get("state") in (STARTING, RUNNING, STOPPING):
                messages.append(f"found {describe_not_running(cdir, state)}; "
                                + (f"killing its {len(leftovers)} leftover process(es)" if leftovers
                                   else "none of its processes is alive"))
            elif leftovers:
                messages.append(f"killing {len(leftovers)} leftover process(es)")
            else:
                messages.append(f"the cluster in {cdir.root} is not running")
        stubborn = procs.kill_group_leftovers(recorded_pids(state) + procs.cluster_processes(cdir.root), cdir.root)
        if stubborn:
            raise RuntimeFailure(f"could not stop pids {', '.join(map(str, stubborn))}; kill them by hand "
                                 "(`kill -9 PID`), then run `sixfold down` again")
        if os.geteuid() == 0 and partition.iptables_path():
            removed = partition.remove_all(cdir.cluster_id)
            if removed:
                messages.append(f"removed {removed} partition rule(s)")
        (cdir.root / "partitions.json").unlink(missing_ok=True)
        partition.remove_cgroups(cdir.cluster_id)
        for n in state["nodes"]:
            for marker in MARKERS:
                cdir.clear_marker(n["name"], marker)
            n["pid"] = None
            n["state"] = "stopped"
        state["state"] = STOPPED if state.get("state") != FAILED else FAILED
        state["phase"] = "stopped"
        state["supervisor_pid"] = None
        cdir.write_state(state)
        if purge:
            for name in PURGEABLE:
                path = cdir.root / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            messages.append(f"deleted the cluster's data and logs in {cdir.root}")
        else:
            messages.append(f"data kept in {cdir.root} (`sixfold up` starts it again, "
                            "`sixfold down --purge` deletes it)")
    if purge:
        cdir.cli_lock.unlink(missing_ok=True)
        try:
            cdir.root.rmdir()
        except OSError:
            pass
    return DownResult(was_running, messages, purge)


# ------------------------------------------------------------------ status and endpoints


def status(cdir: ClusterDir, timeout_s: float = 1.0) -> dict:
    """The cluster and every node: {"cluster": {...}, "nodes": [node objects]}."""
    state = require(cdir)
    running = cdir.supervisor_running()
    volume_id = state["spec"].get("volume_id", "vol-1")
    entries = state["nodes"]
    partitioned = _partitioned_from(cdir)
    to_probe, rows = [], []
    for entry in entries:
        pid = entry.get("pid")
        alive = bool(pid) and procs.belongs_to(pid, cdir.root)
        is_paused = alive and (procs.paused(pid) or cdir.has_marker(entry["name"], MARKER_PAUSED))
        row = {k: entry.get(k) for k in ("name", "kind", "role", "region", "az", "address")}
        row.update(pid=pid if alive else None, health="", epoch=None, scl=None, vdl=None,
                   replica_lag_ms_p50=None, replica_lag_ms_p99=None, detail="", restarts=entry.get("restarts", 0),
                   partitioned_from=sorted(partitioned.get(entry["name"], ())))
        if not alive:
            if not running:
                row["health"] = "stopped"
            elif entry.get("state") == "standby":
                row.update(health="standby", detail="a replicator of the primary region (or of a region that needs a "
                                                    "resync) does not run")
            elif cdir.has_marker(entry["name"], MARKER_DOWN):
                row.update(health="down", detail="killed by chaos; `sixfold chaos restart` or `heal` brings it back")
            else:
                row.update(health="down", detail="restarting" if entry.get("state") in ("backoff", "running")
                           else entry.get("state", ""))
        elif is_paused:
            row.update(health="paused", detail="SIGSTOP; `sixfold chaos resume` continues it")
        else:
            to_probe.append((len(rows), entry["kind"], entry["address"]))
        rows.append(row)
    fill_probed_rows(rows, entries, to_probe, volume_id, state.get("state") == STARTING, timeout_s)
    recorded = state.get("state")
    cluster = {
        "data_dir": str(cdir.root),
        "state": recorded if running or recorded in (STOPPED, FAILED) else "stale",
        "supervisor_pid": state.get("supervisor_pid") if running else None,
        "supervisor_running": running, "volume_id": volume_id, "spec": state["spec"],
        "message": "" if running else describe_not_running(cdir, state),
    }
    regions = sorted({int(r["region"]) for r in rows})
    if len(regions) > 1:
        primary = primary_region(node_specs(state)) if running else PRIMARY_REGION
        cluster["regions"] = [region_summary(r, rows, primary) for r in regions]
        from sixfold.globaldb.roles import load_roles, roles_path

        roles = load_roles(roles_path(cdir.root), default_roles(node_specs(state)))
        for summary in cluster["regions"]:
            if summary["region"] in roles.needs_resync and summary["region"] != primary:
                summary["role"] = "needs-resync"
            elif summary["region"] in roles.joining and summary["region"] != primary:
                summary["role"] = "joining"
    return {"cluster": cluster, "nodes": rows}


def fill_probed_rows(rows: list[dict], entries: list[dict], to_probe: list[tuple[int, str, str]], volume_id: str,
                     cluster_starting: bool, timeout_s: float) -> None:
    """Asks the nodes in `to_probe` ((row index, kind, address)) how they are and fills in their rows.

    Every runtime decides itself which nodes run (processes, containers); this part is shared.
    """
    results = probe_many([(k, a) for _, k, a in to_probe], volume_id, timeout_s)
    for (i, kind, _), result in zip(to_probe, results):
        row = rows[i]
        if not result.get("reachable"):
            starting = entries[i].get("state") == "starting" or cluster_starting
            row.update(health="starting" if starting else "unreachable", detail=result.get("error", ""))
            continue
        if kind == COORDINATOR:
            role = "leader" if result["is_leader"] else ("follower" if result["leader"] else "no-leader")
            healing = ", ".join(f"{name} {s['health']}" for name, s in sorted(result.get("storage", {}).items())
                                if s["health"] not in ("ok", "unknown"))
            row.update(health="ok", role=role, epoch=result["epoch"],
                       detail=f"catalog: writer {result['writer'] or '?'}, {result['failovers']} failover(s)"
                              + (f"; storage: {healing}" if healing else ""))
        elif kind == STORAGE:
            pgs = result.get("pgs") or {}
            row.update(health="ok" if result.get("serving") else "not-serving", epoch=result.get("epoch"),
                       scl=result.get("scl"), segments=result.get("segments"), scl_min=result.get("scl_min"),
                       uptime_s=result.get("uptime_s"), pgs=pgs,
                       detail=", ".join(f"{n} PG(s) {role}" if role != "member" else f"member of {n} PG(s)"
                                        for role, n in pgs.items() if n))
        else:
            row["role"] = result["role"] or row["role"]   # the live role: failovers move the writer
            lagging = row["role"] in (READER, REPLICATOR)   # a replicator: primary -> this region
            row.update(health=result["health"], epoch=result["epoch"], vdl=result["vdl"],
                       replica_lag_ms_p50=result["replica_lag_ms_p50"] if lagging else None,
                       replica_lag_ms_p99=result["replica_lag_ms_p99"] if lagging else None,
                       commits=result["commits"], sessions=result["sessions"])
            if result.get("takes_writes"):
                row["detail"] = f"peer writer: takes writes, commits through {result.get('writer_address')}"
            elif result.get("multi_writer"):
                row["detail"] = "multi-writer primary: decides every writer's commits"
            if kind == REPLICATOR:
                seen = result["source_seen_unix_s"]
                unheard_s = round(time.time() - seen, 1) if seen else None
                seeded = result.get("seeded_lsn", 0)
                row.update(source_vdl=result["source_vdl"], region_lag_ms_last=result["region_lag_ms_last"],
                           primary_unheard_s=unheard_s, seeded_lsn=seeded,
                           detail=f"primary VDL {result['source_vdl']}, region {row['region']} VDL {result['vdl']}"
                                  f" ({max(0, result['source_vdl'] - result['vdl'])} behind)"
                                  + (f"; seeded from pages at {seeded}" if seeded else "")
                                  + (f"; primary storage silent for {unheard_s} s"
                                     if unheard_s is None or unheard_s > PRIMARY_SILENT_S else ""))
        if row["partitioned_from"]:
            row["detail"] = f"cut off from {len(row['partitioned_from'])} node(s) (chaos partition)"


def region_summary(region: int, rows: list[dict], primary: int = PRIMARY_REGION) -> dict:
    """A region's role and, for a secondary, its replication: VDL, how far behind, lag."""
    if region == primary:
        writer = next((r for r in rows if r["kind"] == COMPUTE and r["role"] == WRITER), None)
        return {"region": region, "role": "primary", "vdl": writer["vdl"] if writer else None}
    rep = next((r for r in rows if r["kind"] == REPLICATOR and int(r["region"]) == region), None)
    if rep is None or rep.get("vdl") is None:
        return {"region": region, "role": "secondary", "vdl": None, "health": rep["health"] if rep else "unknown"}
    return {"region": region, "role": "secondary", "health": rep["health"], "vdl": rep["vdl"],
            "primary_vdl": rep["source_vdl"], "behind_lsns": max(0, rep["source_vdl"] - rep["vdl"]),
            "primary_unheard_s": rep["primary_unheard_s"],
            "lag_ms_last": rep["region_lag_ms_last"], "lag_ms_p50": rep["replica_lag_ms_p50"],
            "lag_ms_p99": rep["replica_lag_ms_p99"]}


def endpoints(cdir: ClusterDir) -> list[Endpoint]:
    """The router's writer and reader endpoints (their target is the current writer or the
    readers, when a coordinator answers), the custom endpoints, then one per instance."""
    nodes = node_specs(require(cdir))
    return with_catalog(cdir, nodes, primary_endpoints(nodes, endpoints_of(nodes)))


def primary_endpoints(nodes: list[NodeSpec], out: list[Endpoint]) -> list[Endpoint]:
    """After a region switchover or failover the writer and reader endpoints are the new primary
    region's router (the one-region addresses otherwise)."""
    primary = primary_region(nodes)
    if primary == PRIMARY_REGION:
        return out
    routed = router_addresses(in_region(nodes, primary))
    moved = []
    for e in out:
        if e.name in ("writer", "reader"):
            host, port = routed[e.name].rsplit(":", 1)
            pg_port = int(routed[f"{e.name}-pg"].rsplit(":", 1)[1])
            e = dataclasses.replace(e, host=host, port=int(port), pg_port=pg_port, dsn=pg_dsn(host, pg_port))
        moved.append(e)
    return moved


def with_catalog(cdir: ClusterDir, nodes: list[NodeSpec], out: list[Endpoint]) -> list[Endpoint]:
    """The endpoints with their live targets and the custom endpoints, when a coordinator answers."""
    catalog = _catalog(nodes)
    if catalog is not None:
        targets = {e["name"]: ",".join(e["targets"]) for e in catalog["endpoints"]}
        out = [dataclasses.replace(e, target=targets.get(e.name) or e.target) if e.name in ("writer", "reader")
               else e for e in out]
        out[2:2] = [_custom_endpoint(e) for e in catalog["endpoints"] if e["kind"] == "custom"]
    return with_pg_password(cdir, out)


def _custom_endpoint(e: dict) -> Endpoint:
    host, port = e["address"].rsplit(":", 1)
    pg_port = int(e["pg_address"].rsplit(":", 1)[1]) if e.get("pg_address") else 0
    return Endpoint(e["name"], "custom", host, int(port), ",".join(e["targets"]), pg_port=pg_port, type=e["type"],
                    members=tuple(e["members"]))


def primary_region(nodes: list[NodeSpec]) -> int:
    """The region that takes writes: region 1 until a `sixfold region switchover|failover` moved it
    (the coordinators know it from the region roles; globaldb/roles.py)."""
    regions = sorted({n.region for n in nodes})
    if len(regions) < 2:
        return PRIMARY_REGION
    import grpc

    from sixfold.rpc import coordinator_pb2 as copb
    from sixfold.rpc import coordinator_pb2_grpc

    for n in sorted((n for n in nodes if n.kind == COORDINATOR), key=lambda n: (n.region != PRIMARY_REGION, n.name)):
        with grpc.insecure_channel(n.address) as channel:
            try:
                catalog = coordinator_pb2_grpc.CoordinatorStub(channel).GetCatalog(copb.CatalogRequest(), timeout=1.0)
            except grpc.RpcError:
                continue
        if catalog.primary_region:
            return catalog.primary_region
    return PRIMARY_REGION


def _coordinator_call(nodes: list[NodeSpec], call, what: str):
    """`call(stub)` on the first coordinator that answers; usage errors from it become UsageProblem."""
    import grpc

    from sixfold.rpc import coordinator_pb2_grpc

    last_error = "no coordinator is configured" if not any(n.kind == COORDINATOR for n in nodes) else ""
    for n in in_region(nodes, primary_region(nodes)):   # the primary's catalog (a secondary's has no writer)
        if n.kind != COORDINATOR:
            continue
        with grpc.insecure_channel(n.address) as channel:
            try:
                return call(coordinator_pb2_grpc.CoordinatorStub(channel))
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.NOT_FOUND):
                    raise UsageProblem(exc.details()) from None
                last_error = f"{n.name}: {exc.code().name} {exc.details()}"
    raise RuntimeFailure(f"{what} did not run: {last_error}; check `sixfold status`")


def create_endpoint(cdir: ClusterDir, name: str, kind: str, members: list[str]) -> Endpoint:
    """A custom endpoint: a named subset of the instances on its own router address."""
    from sixfold.rpc import coordinator_pb2 as copb

    nodes = node_specs(require_running(cdir))
    request = copb.CreateEndpointRequest(name=name, type=kind, members=members)
    e = _coordinator_call(nodes, lambda stub: stub.CreateEndpoint(request, timeout=10), "creating the endpoint")
    return with_pg_password(cdir, [_custom_endpoint({
        "name": e.name, "address": e.address, "targets": list(e.targets), "type": e.type, "members": list(e.members),
        "pg_address": e.pg_address})])[0]


def delete_endpoint(cdir: ClusterDir, name: str) -> None:
    from sixfold.rpc import coordinator_pb2 as copb

    nodes = node_specs(require_running(cdir))
    _coordinator_call(nodes, lambda stub: stub.DeleteEndpoint(copb.DeleteEndpointRequest(name=name), timeout=10),
                      "deleting the endpoint")


def with_pg_password(cdir: ClusterDir, eps: list[Endpoint]) -> list[Endpoint]:
    """The endpoints with DSNs that carry the cluster's PostgreSQL password (when it exists)."""
    if not cdir.pg_password_file.exists():
        return eps
    password = cdir.pg_password()
    return [dataclasses.replace(e, dsn=pg_dsn(e.host, e.pg_port, password)) if e.pg_port else e for e in eps]


def with_live_roles(nodes: list[NodeSpec]) -> list[NodeSpec]:
    """The compute instances' roles as the coordinators' catalog has them now (a former
    writer is a reader after a failover); unchanged when no coordinator answers."""
    catalog = _catalog(nodes)
    if catalog is None:
        return nodes
    live = {name: (WRITER if i["role"] == WRITER else READER) for name, i in catalog["instances"].items()}
    return [dataclasses.replace(n, role=live.get(n.name, n.role)) if n.kind == COMPUTE else n for n in nodes]


def _catalog(nodes: list[NodeSpec], timeout_s: float = 1.0) -> dict | None:
    """The primary region's catalog, from the first of its coordinators that answers."""
    from sixfold.runtime.probe import probe_coordinator

    for n in in_region(nodes, primary_region(nodes)):
        if n.kind == COORDINATOR:
            result = probe_coordinator(n.address, timeout_s)
            if result.get("reachable"):
                return result
    return None


def failover(cdir: ClusterDir, target: str = "", timeout_s: float = 120.0) -> dict:
    """Planned failover: a coordinator (the leader) promotes `target` (or the best reader)."""
    from sixfold.rpc import coordinator_pb2 as copb

    nodes = node_specs(require_running(cdir))
    compute = {n.name for n in nodes if n.kind == COMPUTE}
    if target and target not in compute:
        raise UsageProblem(f"no instance named {target!r}; the instances are: {', '.join(sorted(compute))}")
    old_writers = answering_as_writer([(n.name, n.address) for n in nodes if n.kind == COMPUTE])
    reply = _coordinator_call(nodes, lambda stub: stub.Failover(copb.FailoverRequest(target=target),
                                                                 timeout=timeout_s), "the failover")
    f = reply.failover
    # the old writer steps down and comes back as a reader: done when it serves reads again
    stepped_down = [(name, address) for name, address in old_writers if name == f.from_instance]
    reading = wait_serving_as_readers(stepped_down) if f.state == "done" else []
    return {"id": f.id, "from": f.from_instance, "to": f.to_instance, "state": f.state, "epoch": f.epoch,
            "duration_s": round(max(0.0, f.finished_unix_s - f.started_unix_s), 3), "old_writers_reading": reading}


# ------------------------------------------------------------------ replicas

REPLICA_CHANGE_TIMEOUT_S = 60.0


def add_replica(cdir: ClusterDir, az: int | None = None, tier: int | None = None,
                progress: Progress = _quiet, takes_writes: bool = False) -> dict:
    """A new reader: the supervisor starts it, then it joins the coordinators' catalog.
    takes_writes: a peer writer instead (writer-2, ...; the cluster must have been started
    with --writers 2 or more, so that its primary runs the adjudicator: MULTIWRITER.md)."""
    from sixfold.rpc import coordinator_pb2 as copb

    with cdir.cli_locked():
        state = require_running(cdir)
        refuse_in_docker(state, "adding a replica")
        spec = ClusterSpec.from_dict(state["spec"])
        nodes = node_specs(state)
        refuse_while_partitioned(cdir)
        if spec.regions > 1:   # --readers is per region there; adding to one region is not built
            raise UsageProblem("replica add is not available on a cluster with secondary regions yet; "
                               "start it with the --readers you need")
        compute = [n for n in nodes if n.kind == COMPUTE]
        if len(compute) - 1 >= READERS_MAX:
            raise UsageProblem(f"the cluster already has {READERS_MAX} readers (Aurora's limit); remove one first")
        if az is not None and not 1 <= az <= spec.azs:
            raise UsageProblem(f"--az {az}: the AZs are 1..{spec.azs}")
        if tier is not None and not 0 <= tier <= TIER_MAX:
            raise UsageProblem(f"--tier {tier}: a promotion tier is 0..{TIER_MAX}")
        used = {n.name for n in compute}
        if takes_writes:
            if spec.writers < 2:
                raise UsageProblem("this cluster has one writer (single-writer mode); a cluster takes peer "
                                   "writers only when started with --writers 2 or more")
            number = next((k for k in range(2, WRITERS_MAX + 1) if f"writer-{k}" not in used), None)
            if number is None:
                raise UsageProblem(f"the cluster already has {WRITERS_MAX} writers; remove one first")
            az = az or (number - 1) % spec.azs + 1
            node = NodeSpec(name=f"writer-{number}", kind=COMPUTE, role=READER, region=1, az=az,
                            host=f"127.1.{az}.{PEER_WRITER_OCTET_BASE + number}", port=spec.compute_port,
                            tier=number if tier is None else tier, takes_writes=True)
        else:
            number = next(k for k in range(1, READERS_MAX + 2) if f"reader-{k}" not in used)
            az = az or reader_az(number, spec.azs)
            node = NodeSpec(name=f"reader-{number}", kind=COMPUTE, role=READER, region=1, az=az,
                            host=f"127.1.{az}.{COMPUTE_OCTET_BASE + number}", port=spec.compute_port,
                            tier=number if tier is None else tier)
        if procs.port_taken(node.host, node.port):
            raise UsageProblem(f"{node.address} is taken by another process; free it and retry")
        progress(f"starting {node.name} in AZ {az} on {node.address}")
        cdir.post_request({"action": "add-node", "node": node.to_dict()})
        wait_for(cdir, lambda: node.name in node_entries(cdir), f"the supervisor to start {node.name}")
        if wait_ready(cdir, [node.name], REPLICA_CHANGE_TIMEOUT_S):
            cdir.post_request({"action": "remove-node", "name": node.name})
            raise RuntimeFailure(f"{node.name} did not become healthy within {REPLICA_CHANGE_TIMEOUT_S:.0f} s; "
                                 f"removed it again. Its log: {cdir.node_log(node.name)}")
        progress(f"{node.name} is up; adding it to the coordinators' catalog")
        instance = copb.Instance(name=node.name, az=str(az), promotion_tier=node.tier, address=node.address)
        try:
            _coordinator_call(nodes, lambda stub: stub.AddInstance(copb.AddInstanceRequest(instance=instance),
                                                                   timeout=10), "adding the replica")
        except RuntimeFailure:
            cdir.post_request({"action": "remove-node", "name": node.name})
            raise
    return {"name": node.name, "az": az, "tier": node.tier, "address": node.address}


def remove_replica(cdir: ClusterDir, name: str, progress: Progress = _quiet) -> dict:
    """A reader leaves the catalog (so no endpoint routes to it), then the supervisor stops it."""
    from sixfold.rpc import coordinator_pb2 as copb

    with cdir.cli_locked():
        state = require_running(cdir)
        refuse_in_docker(state, "removing a replica")
        nodes = node_specs(state)
        by_name = {n.name: n for n in nodes}
        if by_name.get(name) is None or by_name[name].kind != COMPUTE:
            readers = sorted(n.name for n in nodes if n.kind == COMPUTE)
            raise UsageProblem(f"no compute instance named {name!r}; the instances are: {', '.join(readers)}")
        refuse_while_partitioned(cdir)
        progress(f"removing {name} from the coordinators' catalog")
        _coordinator_call(nodes, lambda stub: stub.RemoveInstance(copb.RemoveInstanceRequest(name=name),
                                                                  timeout=10), "removing the replica")
        progress(f"stopping {name}")
        cdir.post_request({"action": "remove-node", "name": name})
        wait_for(cdir, lambda: name not in node_entries(cdir), f"the supervisor to stop {name}")
    return {"name": name, "removed": True}


def refuse_in_docker(state: dict, what: str) -> None:
    if state.get("runtime") == "docker":
        raise UsageProblem(f"{what} is not in the docker runtime yet (the local runtime has it)")


def refuse_while_partitioned(cdir: ClusterDir) -> None:
    if partition.unavailable_reason() is None and partition.rules(cdir.cluster_id):
        raise UsageProblem("a chaos partition is in force (node numbers would move under it); "
                           "`sixfold chaos heal` first")


def wait_for(cdir: ClusterDir, predicate: Callable[[], bool], what: str,
             timeout_s: float = REPLICA_CHANGE_TIMEOUT_S) -> None:
    """Polls `predicate` until it holds; RuntimeFailure naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"timed out after {timeout_s:.0f} s waiting for {what}; see {cdir.supervisor_log}")
        time.sleep(0.1)


def resolve_endpoint(cdir: ClusterDir, name: str) -> tuple[str, str]:
    """An endpoint or instance name (or HOST:PORT) -> (address, what it is)."""
    if ":" in name:
        return name, name
    state = require_running(cdir)
    nodes = node_specs(state)
    compute = [n for n in nodes if n.kind == COMPUTE]
    routed = router_addresses(in_region(nodes, primary_region(nodes)))
    if name in ("writer", "reader") and routed:
        return routed[name], f"{name} endpoint (router)"
    if name == "writer":
        writer = next(n for n in compute if n.role == WRITER)
        return writer.address, f"writer endpoint ({writer.name})"
    if name == "reader":
        # no endpoint router yet: pick a reader that is up, else fall back to the writer
        by_name = {n["name"]: n for n in state["nodes"]}
        up = [n for n in compute if n.role == READER and procs.belongs_to(by_name[n.name].get("pid"), cdir.root)
              and not cdir.has_marker(n.name, MARKER_PAUSED)]
        if up:
            chosen = random.choice(up)
            return chosen.address, f"reader endpoint ({chosen.name})"
        writer = next(n for n in compute if n.role == WRITER)
        return writer.address, f"reader endpoint (no reader is up: the writer, {writer.name})"
    for n in compute:
        if n.name == name:
            return n.address, f"instance {n.name}"
    regional = {f"region-{r}-reader": router_addresses(in_region(nodes, r)).get("reader")
                for r in sorted({n.region for n in nodes}) if r != PRIMARY_REGION}
    if regional.get(name):
        return regional[name], f"{name} endpoint (region {name.split('-')[1]}'s router)"
    catalog = _catalog(nodes)
    custom = {e["name"]: e for e in catalog["endpoints"] if e["kind"] == "custom"} if catalog else {}
    if name in custom:
        return custom[name]["address"], f"custom endpoint {name} (router)"
    names = ", ".join(["writer", "reader"] + sorted(regional) + sorted(custom) + [n.name for n in compute])
    if any(n.name == name for n in nodes):
        raise UsageProblem(f"{name} is a storage node; SQL goes to a compute endpoint: {names}")
    raise UsageProblem(f"no endpoint named {name!r}; the endpoints are: {names}")


# ------------------------------------------------------------------ chaos


def _side(nodes: list[NodeSpec], number: dict[str, int]) -> list[tuple[int, str, int]]:
    """(mark number, host, port) of every port a node serves: a coordinator has its raft port too."""
    out = []
    for n in nodes:
        out.append((number[n.name], n.host, n.port))
        if n.kind == COORDINATOR:
            out.append((number[n.name], n.host, int(raft_address(n).rsplit(":", 1)[1])))
    return out


def _partitioned_from(cdir: ClusterDir) -> dict[str, set[str]]:
    """node -> the nodes chaos cut it off from."""
    out: dict[str, set[str]] = {}
    for p in read_partitions(cdir):
        for a in p.get("a", []):
            for b in p.get("b", []):
                out.setdefault(a, set()).add(b)
                out.setdefault(b, set()).add(a)
    return out


def read_partitions(cdir: ClusterDir) -> list[dict]:
    try:
        return json.loads((cdir.root / "partitions.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def node_entries(cdir: ClusterDir) -> dict[str, dict]:
    """The supervisor's state of every node it runs now, by name."""
    return {n["name"]: n for n in (load(cdir) or {"nodes": []})["nodes"]}


def _live_pid(cdir: ClusterDir, name: str) -> int | None:
    pid = node_entries(cdir).get(name, {}).get("pid")
    return pid if procs.belongs_to(pid, cdir.root) else None


def wait_ready(cdir: ClusterDir, names: list[str], timeout_s: float = NODE_READY_TIMEOUT_S,
               previous_pids: dict[str, int | None] | None = None) -> list[str]:
    """Waits until each named node runs (with a new pid, if given) and answers; returns those that did not."""
    state = require(cdir)
    volume_id = state["spec"].get("volume_id", "vol-1")
    specs = {n.name: n for n in node_specs(state)}
    pending = list(names)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        current = node_entries(cdir)
        for name in list(pending):
            pid = current.get(name, {}).get("pid")
            if not procs.belongs_to(pid, cdir.root) or procs.paused(pid):
                continue
            if previous_pids and previous_pids.get(name) and pid == previous_pids[name]:
                continue
            if probe(specs[name].kind, specs[name].address, volume_id, 0.5).get("reachable"):
                pending.remove(name)
        if pending:
            time.sleep(0.1)
    return pending


@dataclass
class ChaosResult:
    action: str
    targets: list[str]
    done: list[str]
    skipped: dict[str, str]
    entry: dict
    not_ready: list[str] = field(default_factory=list)


def chaos(cdir: ClusterDir, action: str, targets: list[NodeSpec], *, others: list[NodeSpec] | None = None,
          wait: bool = True, timeout_s: float = NODE_READY_TIMEOUT_S) -> ChaosResult:
    """kill | pause | resume | restart | partition | heal, aimed at `targets`; logged in chaos.log."""
    state = require_running(cdir)
    if action == "partition":
        reason = partition.unavailable_reason()
        if reason:
            cdir.append_chaos(action, [t.name for t in targets], {"error": reason}, ok=False)
            raise UsageProblem(f"cannot partition: {reason}")
    names = [t.name for t in targets]
    done: list[str] = []
    skipped: dict[str, str] = {}
    detail: dict = {}
    not_ready: list[str] = []
    with cdir.cli_locked():
        if action == "kill":
            pids = {}
            for t in targets:
                cdir.set_marker(t.name, MARKER_DOWN, "kill")  # before the signal: the supervisor must not restart it
                cdir.clear_marker(t.name, MARKER_PAUSED)
                pid = _live_pid(cdir, t.name)
                if pid and procs.signal_ours(pid, signal.SIGKILL, cdir.root):
                    pids[t.name] = pid
                    done.append(t.name)
                else:
                    skipped[t.name] = "was not running"
            left = procs.wait_gone(list(pids.values()), 5.0)
            detail = {"signal": "SIGKILL", "pids": pids, "still_alive": left}
        elif action == "pause":
            pids = {}
            for t in targets:
                pid = _live_pid(cdir, t.name)
                if pid and procs.signal_ours(pid, signal.SIGSTOP, cdir.root):
                    cdir.set_marker(t.name, MARKER_PAUSED, f"pid {pid}")
                    pids[t.name] = pid
                    done.append(t.name)
                else:
                    skipped[t.name] = "is not running"
            detail = {"signal": "SIGSTOP", "pids": pids}
        elif action == "resume":
            pids = {}
            for t in targets:
                pid = _live_pid(cdir, t.name)
                was_paused = cdir.clear_marker(t.name, MARKER_PAUSED) or (pid and procs.paused(pid))
                if not (pid and procs.signal_ours(pid, signal.SIGCONT, cdir.root)):
                    skipped[t.name] = "is not running"
                elif was_paused:
                    pids[t.name] = pid
                    done.append(t.name)
                else:
                    skipped[t.name] = "was not paused"
            detail = {"signal": "SIGCONT", "pids": pids}
        elif action == "restart":
            previous = {}
            for t in targets:
                pid = _live_pid(cdir, t.name)
                previous[t.name] = pid
                cdir.set_marker(t.name, MARKER_RESTART, "chaos restart")  # first: see supervisor.tick
                cdir.clear_marker(t.name, MARKER_DOWN)
                cdir.clear_marker(t.name, MARKER_PAUSED)
                if pid:
                    procs.signal_ours(pid, signal.SIGCONT, cdir.root)
                done.append(t.name)
            detail = {"previous_pids": previous}
            if wait:
                not_ready = wait_ready(cdir, names, timeout_s, previous_pids=previous)
        elif action == "partition":
            availability = state.get("partitions", {})
            if not availability.get("available"):
                raise UsageProblem("this cluster was started without what partitions need "
                                   f"({availability.get('reason') or 'unknown'}); fix that, then "
                                   "`sixfold down` and `sixfold up` again")
            side_b = others if others is not None else [n for n in node_specs(state) if n.name not in names]
            overlap = sorted(set(names) & {n.name for n in side_b})
            if overlap:
                raise UsageProblem(f"a node cannot be on both sides of a partition: {', '.join(overlap)}")
            if not targets or not side_b:
                raise UsageProblem("a partition needs nodes on both sides")
            number = {n["name"]: i + 1 for i, n in enumerate(state["nodes"])}  # as the supervisor marks them
            try:
                added = partition.add_partition(cdir.cluster_id, _side(targets, number), _side(side_b, number))
            except partition.PartitionError as exc:
                cdir.append_chaos(action, names, {"error": str(exc)}, ok=False)
                raise RuntimeFailure(f"could not add the partition: {exc}") from None
            parts = read_partitions(cdir) + [{"a": names, "b": [n.name for n in side_b], "unix_s": time.time()}]
            (cdir.root / "partitions.json").write_text(json.dumps(parts, indent=2))
            done = names
            detail = {"from": [n.name for n in side_b], "rules": added,
                      "chain": partition.partition_chain_name(cdir.cluster_id)}
        elif action == "heal":
            removed = partition.heal_all(cdir.cluster_id) if os.geteuid() == 0 else 0
            latency_reset = latency_chaos.reset_unlocked(cdir)   # like partitions: all of it
            had_partitions = bool(read_partitions(cdir))
            (cdir.root / "partitions.json").unlink(missing_ok=True)
            resumed, restarted = [], []
            for t in targets:
                pid = _live_pid(cdir, t.name)
                if cdir.clear_marker(t.name, MARKER_PAUSED) or (pid and procs.paused(pid)):
                    if pid:
                        procs.signal_ours(pid, signal.SIGCONT, cdir.root)
                    resumed.append(t.name)
                if cdir.clear_marker(t.name, MARKER_DOWN):
                    restarted.append(t.name)
            done = sorted(set(resumed + restarted))
            detail = {"partition_rules_removed": removed, "resumed": resumed, "restarted": restarted,
                      "latency_reset": latency_reset}
            if had_partitions and os.geteuid() != 0:
                detail["warning"] = "partitions were recorded but removing iptables rules needs root"
            if wait and (resumed or restarted):
                not_ready = wait_ready(cdir, resumed + restarted, timeout_s)
        else:
            raise UsageProblem(f"unknown chaos action {action!r}")
        if not_ready:
            detail["not_ready"] = not_ready
        entry = cdir.append_chaos(action, names, {**detail, "skipped": skipped} if skipped else detail)
    return ChaosResult(action, names, done, skipped, entry, not_ready)
