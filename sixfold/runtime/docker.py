"""The docker runtime: one container per node, one Docker network per region.

`sixfold up --runtime docker` runs the same node commands as the local runtime
(commands.py), each in a container of the project image (`sixfold image build`):

- region R is a user-defined bridge network with the subnet A.(B+R-1).0.0/16 (A.B from
  --docker-subnet, 10.201 by default); AZ N is the address block A.(B+R-1).N.0/24 and
  the container label org.sixfold.az=N. Inside a block the node numbers are the local
  runtime's (storage .1, .2; compute .100+; coordinators .200), so 127.1.2.101 locally
  is 10.201.2.101 here. On Linux the host reaches the bridge addresses directly, so
  the endpoints are the containers' own addresses.
- every coordinator's router serves the writer and reader endpoints on its own address
  (a container cannot share one with SO_REUSEPORT); `endpoints` and `sql` pick a
  coordinator that answers, and the PostgreSQL DSNs list all three (libpq tries each).
- storage data is bind-mounted from DATA_DIR/nodes/<name>/ (kept by `down`, removed by
  `down --purge`, like the local runtime); `down` removes the containers and networks
  and checks none is left (everything carries the label org.sixfold.cluster=ID).
- no supervisor process: Docker's restart policy `on-failure` restarts a node that
  crashes, and does not restart one that `docker kill` (chaos) stopped.

The data dir's cluster.json has "runtime": "docker"; the CLI picks this module for it
(runtimes.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
import time

from sixfold.runtime import image as images
from sixfold.runtime.commands import node_args
from sixfold.runtime.layout import FAILED, RUNNING, STARTING, STATE_FORMAT, STOPPED, ClusterDir
from sixfold.runtime.local import (NODE_READY_TIMEOUT_S, ChaosResult, DownResult, Progress, RuntimeFailure,
                                   UpResult, UsageProblem, _explicit_conflicts, check_data_dir, fill_probed_rows,
                                   load, node_specs, require, with_catalog)
from sixfold.runtime.probe import probe, ready
from sixfold.runtime.topology import (COMPUTE, COORDINATOR, READER, STORAGE, WRITER, ClusterSpec, Endpoint,
                                      NodeSpec, TopologyError, endpoints_of, nodes_of, pg_dsn)

RUNTIME = "docker"
SUBNET_DEFAULT = "10.201.0.0/16"
LABEL_CLUSTER = "org.sixfold.cluster"
LABEL_NODE = "org.sixfold.node"
LABEL_KIND = "org.sixfold.kind"
LABEL_REGION = "org.sixfold.region"
LABEL_AZ = "org.sixfold.az"
LABEL_DATA_DIR = "org.sixfold.data-dir"
NODE_MOUNT = "/var/lib/sixfold"   # DATA_DIR/nodes/<name> inside the container
DOCKER_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 25


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------ docker commands


def docker(*args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    try:
        run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"`docker {' '.join(args[:3])} ...` did not finish within {timeout_s:.0f} s; "
                             "is dockerd healthy?") from None
    except FileNotFoundError:
        raise UsageProblem("the docker command is not installed (Debian: apt-get install docker.io)") from None
    if check and run.returncode != 0:
        raise RuntimeFailure(f"`docker {' '.join(args[:4])} ...` failed: {run.stderr.strip()[:500]}")
    return run


def _ids(*args: str) -> list[str]:
    return [line for line in docker(*args).stdout.split() if line]


def cluster_containers(cluster_id: str) -> list[str]:
    return _ids("ps", "-aq", "--filter", f"label={LABEL_CLUSTER}={cluster_id}")


def cluster_networks(cluster_id: str) -> list[str]:
    return _ids("network", "ls", "-q", "--filter", f"label={LABEL_CLUSTER}={cluster_id}")


def container_name(cluster_id: str, node: str) -> str:
    return f"sixfold-{cluster_id}-{node}"


def network_name(cluster_id: str, region: int) -> str:
    return f"sixfold-{cluster_id}-region-{region}"


def inspect_states(names: list[str]) -> dict[str, dict]:
    """name -> {"status": running|paused|exited|restarting|..., "pid", "exit_code", "restarts"} for the
    containers that exist (restarts: by the restart policy, after a crash)."""
    if not names:
        return {}
    run = docker("inspect", "--format", "{{json .Name}} {{.RestartCount}} {{json .State}}", *names, check=False)
    out = {}
    for line in run.stdout.splitlines():
        name, restarts, state = line.split(" ", 2)
        state = json.loads(state)
        out[json.loads(name).lstrip("/")] = {"status": state.get("Status", ""), "pid": state.get("Pid") or None,
                                             "exit_code": state.get("ExitCode"), "restarts": int(restarts),
                                             "restarting": state.get("Restarting", False)}
    return out


def logs_tail(container: str, lines: int = LOG_TAIL_LINES) -> str:
    run = docker("logs", "--tail", str(lines), container, check=False)
    return (run.stdout + run.stderr).strip()


# ------------------------------------------------------------------ addresses


def region_subnet(subnet: str, region: int) -> ipaddress.IPv4Network:
    """Region R's /16: the second octet of --docker-subnet plus R - 1."""
    base = ipaddress.IPv4Network(subnet)
    return ipaddress.IPv4Network((int(base.network_address) + ((region - 1) << 16), 16))


def check_subnet(subnet: str) -> str:
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise UsageProblem(f"--docker-subnet {subnet}: {exc}; give an IPv4 /16 such as {SUBNET_DEFAULT}") from None
    if net.prefixlen != 16:
        raise UsageProblem(f"--docker-subnet {subnet}: give a /16 (region R gets the /16 R - 1 above it, AZ N "
                           f"its .N.0/24 block), such as {SUBNET_DEFAULT}")
    return str(net)


def docker_nodes(spec: ClusterSpec, subnet: str) -> list[NodeSpec]:
    """The topology's nodes with container addresses: 127.R.AZ.N -> A.(B+R-1).AZ.N."""
    out = []
    for n in nodes_of(spec):
        _, _, az_octet, node_octet = n.host.split(".")
        net = region_subnet(subnet, n.region)
        host = str(net.network_address + (int(az_octet) << 8) + int(node_octet))
        out.append(dataclasses.replace(n, host=host))
    return out


def gateway(subnet: str, region: int) -> str:
    return str(region_subnet(subnet, region).network_address + 1)


# ------------------------------------------------------------------ state


def is_docker(state: dict | None) -> bool:
    return bool(state) and state.get("runtime") == RUNTIME


def running(cdir: ClusterDir, state: dict) -> bool:
    """The cluster counts as running from `up` until `down`, while its containers exist."""
    return state.get("state") in (STARTING, RUNNING) and bool(cluster_containers(cdir.cluster_id))


def require_running(cdir: ClusterDir) -> dict:
    state = require(cdir)
    if not running(cdir, state):
        raise RuntimeFailure(f"the docker cluster in {cdir.root} is not running ({state.get('state')}); "
                             f"start it with `sixfold up --runtime docker --data-dir {cdir.root}`")
    return state


# ------------------------------------------------------------------ up


def _node_env(cdir: ClusterDir, node: NodeSpec) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if node.kind == COMPUTE:
        env["SIXFOLD_PG_PASSWORD"] = cdir.pg_password()   # a secret: in the environment, not the command line
    return env


def _run_container(cdir: ClusterDir, state: dict, node: NodeSpec, nodes: list[NodeSpec]) -> None:
    cid = cdir.cluster_id
    spec = ClusterSpec.from_dict(state["spec"])
    node_dir = cdir.node_dir(node.name)
    node_dir.mkdir(parents=True, exist_ok=True)
    args = node_args(node, nodes, spec, state.get("tuning", {}), f"{NODE_MOUNT}/data", shared_endpoint_address=False)
    env_flags = [flag for k, v in _node_env(cdir, node).items() for flag in ("-e", f"{k}={v}")]
    docker("run", "--detach", "--name", container_name(cid, node.name), "--hostname", node.name,
           "--network", network_name(cid, node.region), "--ip", node.host,
           "--label", f"{LABEL_CLUSTER}={cid}", "--label", f"{LABEL_NODE}={node.name}",
           "--label", f"{LABEL_KIND}={node.kind}", "--label", f"{LABEL_REGION}={node.region}",
           "--label", f"{LABEL_AZ}={node.az}", "--label", f"{LABEL_DATA_DIR}={cdir.root}",
           "--restart", "on-failure", "--init", "--user", f"{os.getuid()}:{os.getgid()}",
           "--stop-timeout", str(int(float(state.get("tuning", {}).get("stop_timeout_s", 10)))),
           "--volume", f"{node_dir}:{NODE_MOUNT}", *env_flags, state["docker"]["image"], "python", *args)


def _wait_ready(cdir: ClusterDir, nodes: list[NodeSpec], volume_id: str, deadline: float, label: str,
                progress: Progress) -> None:
    pending = list(nodes)
    names = {n.name: container_name(cdir.cluster_id, n.name) for n in nodes}
    while pending:
        states = inspect_states([names[n.name] for n in pending])
        for n in list(pending):
            status = states.get(names[n.name], {})
            if status.get("status") not in ("running", "restarting", "created"):
                raise RuntimeFailure(f"{n.name} stopped while starting (container {status.get('status', 'gone')}, "
                                     f"exit code {status.get('exit_code')}); its log:\n{logs_tail(names[n.name])}")
            if ready(n.kind, probe(n.kind, n.address, volume_id, 0.5)):
                pending.remove(n)
                progress(f"{label}: {len(nodes) - len(pending)}/{len(nodes)} ready")
        if pending and time.monotonic() > deadline:
            n = pending[0]
            raise RuntimeFailure(f"{n.name} did not become healthy in time; its log:\n{logs_tail(names[n.name])}")
        if pending:
            time.sleep(0.2)


def up(cdir: ClusterDir, spec: ClusterSpec, tuning: dict, explicit: set[str], *, image: str = "",
       subnet: str = SUBNET_DEFAULT, progress: Progress = _quiet) -> UpResult:
    """Starts the cluster's containers (or finds them running) and returns its endpoints once healthy."""
    t0 = time.monotonic()
    try:
        spec.validate()
    except TopologyError as exc:
        raise UsageProblem(str(exc)) from None
    if spec.regions > 1 or spec.writers > 1:
        # the replicator and peer writers have not been tried in containers (latency file, request files)
        raise UsageProblem("--regions and --writers above 1 are local-runtime features for now; "
                           "run them without --runtime docker")
    subnet = check_subnet(subnet)
    reason = images.docker_available()
    if reason:
        raise RuntimeFailure(f"the docker runtime needs a Docker engine: {reason}")
    image = image or images.current_image() or f"{images.IMAGE_REPOSITORY}:latest"
    if not images.image_exists(image):
        raise UsageProblem(f"no image {image}: build it with `sixfold image build` (or pass --image)")
    check_data_dir(cdir)
    notes: list[str] = []
    with cdir.cli_locked():
        state = load(cdir)
        if state is not None and not is_docker(state):
            raise UsageProblem(f"{cdir.root} holds a cluster of the {state.get('runtime', 'local')} runtime; use "
                               "another --data-dir for a docker cluster (or `sixfold down --purge` that one)")
        if state is not None and running(cdir, state):
            stored = ClusterSpec.from_dict(state["spec"])
            conflicts = _explicit_conflicts(stored, spec, explicit)
            if conflicts:
                raise UsageProblem(f"a cluster with another topology is already running in {cdir.root}: you asked "
                                   f"for {', '.join(conflicts)}. Stop it first (`sixfold down --data-dir {cdir.root}`)")
            nodes = node_specs(state)
            return UpResult(False, cdir.root, endpoints(cdir), nodes, [f"the cluster in {cdir.root} is already up"],
                            time.monotonic() - t0)
        if state is not None and state.get("ever_healthy"):
            stored = ClusterSpec.from_dict(state["spec"])
            conflicts = _explicit_conflicts(stored, spec, explicit - {"readers"})
            if conflicts:
                raise UsageProblem(f"{cdir.root} holds a cluster with another topology: you asked for "
                                   f"{', '.join(conflicts)}; start it as it is, or `sixfold down --purge` it")
            spec = ClusterSpec.from_dict({**stored.to_dict(), **({"readers": spec.readers}
                                                                 if "readers" in explicit else {})})
            if "docker_subnet" not in explicit:
                subnet = state.get("docker", {}).get("subnet", subnet)
            tuning = {**state.get("tuning", {}), **{k: v for k, v in tuning.items() if k in explicit}}
            notes.append(f"note: starting the stopped cluster in {cdir.root} again with its data")
        elif state is not None:
            notes.append("note: discarding an earlier start that never became healthy")
            shutil.rmtree(cdir.root / "nodes", ignore_errors=True)
            state = None
        for note in notes:
            progress(note)
        _remove_everything(cdir)   # leftovers of a start that was itself killed
        nodes = docker_nodes(spec, subnet)
        state = {
            "format": STATE_FORMAT, "runtime": RUNTIME, "data_dir": str(cdir.root), "cluster_id": cdir.cluster_id,
            "created_unix_s": (state or {}).get("created_unix_s") or time.time(),
            "ever_healthy": bool((state or {}).get("ever_healthy")),
            "spec": spec.to_dict(), "tuning": tuning, "state": STARTING, "phase": "creating the networks",
            "error": "", "supervisor_pid": None,
            "docker": {"image": image, "subnet": subnet},
            "nodes": [{**n.to_dict(), "container": container_name(cdir.cluster_id, n.name)} for n in nodes],
        }
        cdir.write_state(state)
        cdir.pg_password()
        try:
            _start(cdir, state, nodes, spec, float(tuning.get("start_timeout_s", 90.0)), progress)
        except BaseException as exc:
            progress("the start failed: removing its containers and networks")
            _save_logs(cdir, state)
            _remove_everything(cdir)
            state.update(state=FAILED, phase="start failed", error=str(exc))
            cdir.write_state(state)
            if isinstance(exc, RuntimeFailure):
                raise RuntimeFailure(f"the cluster did not start: {exc}") from None
            raise
        state.update(state=RUNNING, phase="running", ever_healthy=True, healthy_unix_s=time.time())
        cdir.write_state(state)
    return UpResult(True, cdir.root, endpoints(cdir), nodes, notes, time.monotonic() - t0)


def _start(cdir: ClusterDir, state: dict, nodes: list[NodeSpec], spec: ClusterSpec, timeout_s: float,
           progress: Progress) -> None:
    deadline = time.monotonic() + timeout_s
    cid = cdir.cluster_id
    subnet = state["docker"]["subnet"]
    for region in sorted({n.region for n in nodes}):
        net = region_subnet(subnet, region)
        progress(f"network {network_name(cid, region)} ({net})")
        docker("network", "create", "--driver", "bridge", "--subnet", str(net), "--gateway", gateway(subnet, region),
               "--label", f"{LABEL_CLUSTER}={cid}", "--label", f"{LABEL_REGION}={region}",
               network_name(cid, region))
    groups = [([n for n in nodes if n.kind == STORAGE], "storage nodes"),
              ([n for n in nodes if n.role == WRITER], "writer"),
              ([n for n in nodes if n.role == READER], "readers"),
              ([n for n in nodes if n.kind == COORDINATOR], "coordinators")]
    for group, label in groups:
        if not group:
            continue
        progress(f"{label}: starting {len(group)} container(s)")
        for n in group:
            _run_container(cdir, state, n, nodes)
        _wait_ready(cdir, group, spec.volume_id, deadline, label, progress)


# ------------------------------------------------------------------ down


def _save_logs(cdir: ClusterDir, state: dict) -> None:
    """Each container's output, appended to DATA_DIR/nodes/<name>/node.log before it is removed."""
    for entry in state.get("nodes", []):
        run = docker("logs", "--timestamps", entry["container"], check=False)
        if run.returncode == 0 and (run.stdout or run.stderr):
            path = cdir.node_log(entry["name"])
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(f"--- container {entry['container']} ---\n{run.stdout}{run.stderr}")


def _remove_everything(cdir: ClusterDir) -> None:
    containers = cluster_containers(cdir.cluster_id)
    if containers:
        docker("rm", "--force", "--volumes", *containers)
    networks = cluster_networks(cdir.cluster_id)
    if networks:
        docker("network", "rm", *networks)


def orphans(cdir: ClusterDir) -> list[str]:
    """Containers and networks labelled with this data dir's cluster id ([] when Docker does not answer)."""
    try:
        return leftovers(cdir.cluster_id)
    except RuntimeFailure:
        return []


def down(cdir: ClusterDir, purge: bool = False, progress: Progress = _quiet) -> DownResult:
    if not cdir.state_file.exists():
        left = orphans(cdir)
        if not left:
            return DownResult(False, [f"no cluster in {cdir.root}: nothing to stop"])
        _remove_everything(cdir)
        return DownResult(True, [f"no cluster.json in {cdir.root}, but removed {len(left)} container(s) and "
                                 "network(s) of a docker cluster that ran there"])
    messages = []
    with cdir.cli_locked():
        state = load(cdir)
        if state is None:
            return DownResult(False, [f"no cluster in {cdir.root}: nothing to stop"])
        was_running = running(cdir, state)
        timeout_s = float(state.get("tuning", {}).get("stop_timeout_s", 10.0))
        names = {e["name"]: e["container"] for e in state["nodes"]}
        if was_running:
            progress("stopping coordinators, readers, writer, then storage")
            existing = inspect_states(list(names.values()))
            paused = [c for c, s in existing.items() if s["status"] == "paused"]
            if paused:   # a paused container cannot act on SIGTERM
                docker("unpause", *paused, check=False)
            for role in (COORDINATOR, READER, WRITER, STORAGE):
                group = [names[e["name"]] for e in state["nodes"] if e["role"] == role and names[e["name"]] in existing]
                if group:
                    docker("stop", "--time", str(int(timeout_s)), *group, check=False,
                           timeout_s=timeout_s * 2 + DOCKER_TIMEOUT_S)
            messages.append(f"stopped the cluster in {cdir.root}")
        else:
            messages.append(f"the cluster in {cdir.root} is not running")
        _save_logs(cdir, state)
        _remove_everything(cdir)
        left = cluster_containers(cdir.cluster_id) + cluster_networks(cdir.cluster_id)
        if left:
            raise RuntimeFailure(f"could not remove Docker objects {', '.join(left)}; remove them by hand "
                                 f"(`docker rm -f` / `docker network rm`), then run `sixfold down` again")
        messages.append("removed its containers and networks")
        state.update(state=STOPPED if state.get("state") != FAILED else FAILED, phase="stopped")
        cdir.write_state(state)
        if purge:
            shutil.rmtree(cdir.root, ignore_errors=True)
            messages.append(f"deleted the cluster's data and logs in {cdir.root}")
        else:
            messages.append(f"data kept in {cdir.root} (`sixfold up --runtime docker` starts it again, "
                            "`sixfold down --purge` deletes it)")
    return DownResult(was_running, messages, purge)


# ------------------------------------------------------------------ status and endpoints


def status(cdir: ClusterDir, timeout_s: float = 1.0) -> dict:
    state = require(cdir)
    is_running = running(cdir, state)
    volume_id = state["spec"].get("volume_id", "vol-1")
    entries = state["nodes"]
    containers = inspect_states([e["container"] for e in entries]) if is_running else {}
    rows, to_probe = [], []
    for entry in entries:
        c = containers.get(entry["container"], {})
        row = {k: entry.get(k) for k in ("name", "kind", "role", "region", "az", "address")}
        row.update(pid=c.get("pid") if c.get("status") in ("running", "paused") else None, health="", epoch=None,
                   scl=None, vdl=None, replica_lag_ms_p50=None, replica_lag_ms_p99=None, detail="", restarts=c.get("restarts", 0),
                   partitioned_from=[], container=entry["container"])
        if not is_running:
            row["health"] = "stopped"
        elif c.get("status") == "paused":
            row.update(health="paused", detail="docker pause; `sixfold chaos resume` continues it")
        elif c.get("status") != "running":
            row.update(health="down", detail=f"container {c.get('status', 'gone')}"
                       + ("; `sixfold chaos restart` or `heal` brings it back" if c else ""))
        else:
            to_probe.append((len(rows), entry["kind"], entry["address"]))
        rows.append(row)
    fill_probed_rows(rows, entries, to_probe, volume_id, state.get("state") == STARTING, timeout_s)
    cluster = {"data_dir": str(cdir.root), "runtime": RUNTIME,
               "state": state.get("state") if is_running or state.get("state") in (STOPPED, FAILED) else "stale",
               "supervisor_pid": None, "supervisor_running": is_running, "volume_id": volume_id,
               "spec": state["spec"], "image": state["docker"]["image"],
               "networks": {str(r): network_name(cdir.cluster_id, r) for r in sorted({e["region"] for e in entries})},
               "message": "" if is_running else f"its containers are gone ({state.get('state')})"}
    return {"cluster": cluster, "nodes": rows}


def _live_coordinators(nodes: list[NodeSpec]) -> list[NodeSpec]:
    coordinators = [n for n in nodes if n.kind == COORDINATOR]
    answering = [n for n in coordinators if probe(COORDINATOR, n.address, "", 0.5).get("reachable")]
    return answering or coordinators


def endpoints(cdir: ClusterDir) -> list[Endpoint]:
    """As the local runtime's, but the writer and reader endpoints are on a coordinator that
    answers (each serves them on its own address), and their DSNs name all three."""
    nodes = node_specs(require(cdir))
    coordinators = _live_coordinators(nodes)
    routed = [dataclasses.replace(e, host=coordinators[0].host) if e.target == "router" else e
              for e in endpoints_of(nodes)]
    password = cdir.pg_password() if cdir.pg_password_file.exists() else ""
    hosts = [c.host for c in coordinators]
    # libpq (psql, psycopg) tries the hosts of a multi-host DSN in turn
    return [dataclasses.replace(e, dsn=pg_dsn(",".join(f"{h}:{e.pg_port}" for h in hosts[:-1]) + ("," if hosts[1:] else "")
                                              + hosts[-1], e.pg_port, password))
            if e.kind in (WRITER, READER) else e for e in with_catalog(cdir, nodes, routed)]


def resolve_endpoint(cdir: ClusterDir, name: str) -> tuple[str, str]:
    if ":" in name:
        return name, name
    state = require_running(cdir)
    nodes = node_specs(state)
    for e in endpoints(cdir):
        if e.name == name:
            what = f"{name} endpoint (router on {e.host})" if e.kind in ("writer", "reader", "custom") else \
                f"instance {name}"
            return e.address, what
    if any(n.name == name for n in nodes):
        raise UsageProblem(f"{name} is a storage node or coordinator; SQL goes to a compute endpoint")
    raise UsageProblem(f"no endpoint named {name!r}; see `sixfold endpoints`")


# ------------------------------------------------------------------ chaos

CHAOS_VERBS = {"kill": ("kill",), "pause": ("pause",), "resume": ("unpause",)}


def chaos(cdir: ClusterDir, action: str, targets: list[NodeSpec], *, others: list[NodeSpec] | None = None,
          wait: bool = True, timeout_s: float = NODE_READY_TIMEOUT_S) -> ChaosResult:
    """kill (docker kill: SIGKILL, stays down), pause/resume (docker pause/unpause: the cgroup freezer),
    restart and heal (docker start/unpause), aimed at the targets' containers; logged in chaos.log."""
    state = require_running(cdir)
    if action == "partition":
        cdir.append_chaos(action, [t.name for t in targets], {"error": "not in the docker runtime"}, ok=False)
        raise UsageProblem("partitions are not in the docker runtime yet (use the local runtime, as root)")
    container = {e["name"]: e["container"] for e in state["nodes"]}
    names = [t.name for t in targets]
    done, skipped = [], {}
    with cdir.cli_locked():
        states = inspect_states([container[n] for n in names])
        status = {n: states.get(container[n], {}).get("status", "gone") for n in names}
        if action in ("kill", "pause"):
            wanted = [n for n in names if status[n] == "running" or (action == "kill" and status[n] == "paused")]
        elif action == "resume":
            wanted = [n for n in names if status[n] == "paused"]
        elif action in ("restart", "heal"):
            wanted = names if action == "restart" else [n for n in names if status[n] != "running"]
        else:
            raise UsageProblem(f"unknown chaos action {action!r}")
        for n in names:
            if n not in wanted and action != "heal":   # heal touches only what chaos broke
                skipped[n] = f"container is {status[n]}"
        detail: dict = {"containers": {n: container[n] for n in wanted}}
        if action == "heal":
            detail.update(partition_rules_removed=0, resumed=[], restarted=[])
        if wanted:
            if action == "kill":
                docker("kill", "--signal", "KILL", *[container[n] for n in wanted])
            elif action == "pause":
                docker("pause", *[container[n] for n in wanted])
            elif action == "resume":
                docker("unpause", *[container[n] for n in wanted])
            else:
                paused = [container[n] for n in wanted if status[n] == "paused"]
                if paused:
                    docker("unpause", *paused)
                stopped = [container[n] for n in wanted if status[n] not in ("running", "paused")]
                running_now = [container[n] for n in wanted if status[n] == "running" and action == "restart"]
                if running_now:
                    docker("restart", "--time", "0", *running_now)
                if stopped:
                    docker("start", *stopped)
                if action == "heal":   # the shape the local runtime reports
                    detail.update(partition_rules_removed=0, resumed=[n for n in wanted if status[n] == "paused"],
                                  restarted=[n for n in wanted if status[n] not in ("running", "paused")])
            done = list(wanted)
        not_ready: list[str] = []
        if action in ("restart", "heal") and wait and done:
            not_ready = _wait_answering(state, [t for t in targets if t.name in done], timeout_s)
            if not_ready:
                detail["not_ready"] = not_ready
        entry = cdir.append_chaos(action, names, {**detail, "skipped": skipped} if skipped else detail)
    return ChaosResult(action, names, done, skipped, entry, not_ready)


def _wait_answering(state: dict, nodes: list[NodeSpec], timeout_s: float) -> list[str]:
    volume_id = state["spec"].get("volume_id", "vol-1")
    pending = list(nodes)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [n for n in pending if not probe(n.kind, n.address, volume_id, 0.5).get("reachable")]
        if pending:
            time.sleep(0.2)
    return [n.name for n in pending]


def leftovers(cluster_id: str) -> list[str]:
    """Containers and networks of the cluster that still exist (for tests and `down`)."""
    return cluster_containers(cluster_id) + cluster_networks(cluster_id)
