"""`sixfold up | down | status | endpoints | endpoint | failover | settings`: the local cluster's life cycle."""

from __future__ import annotations

import functools
from pathlib import Path

import click
from click.core import ParameterSource
from rich.table import Table

from sixfold.cli.common import (CONTEXT, CliError, cluster_dir, data_dir_option, err, json_option, out,
                                print_json, progress_printer, reports_errors)
from sixfold.runtime import local, runtimes
from sixfold.runtime.settings import SETTINGS, click_options, values_of
from sixfold.runtime.topology import ClusterSpec, Endpoint

UP_SETTINGS = [s.name for s in SETTINGS if s.name != "data_dir"]


def endpoints_table(endpoints: list[Endpoint]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("endpoint", "kind", "address", "postgresql", "instance"):
        table.add_column(col)
    for e in endpoints:
        kind = f"custom {e.type} ({','.join(e.members)})" if e.kind == "custom" else e.kind
        table.add_row(e.name, kind, e.address, e.pg_address or "-", e.target)
    return table


@click.command("up", context_settings=CONTEXT)
@data_dir_option
@click_options(*UP_SETTINGS)
@json_option
@click.pass_context
@reports_errors
def up(ctx: click.Context, data_dir: Path | None, as_json: bool, **params) -> None:
    """Start a local cluster and wait until it is healthy.

    Storage nodes (six copies over three AZs), the writer and the readers run as
    processes on this machine, each on its own loopback address 127.<region>.<az>.<n>,
    watched by a supervisor that restarts a node that dies. Prints the endpoints and
    returns; the cluster keeps running until `sixfold down`. Logs are under the data
    dir (nodes/<name>/node.log, supervisor.log).

    Running `up` on a running cluster is fine (it says so); on a stopped one it
    starts it again with its data.

    --runtime docker runs each node in a container of the image `sixfold image build`
    makes, one Docker network per region (AZ N = the address block .N.0/24 and the
    container label org.sixfold.az=N); status, endpoints, sql, chaos and down work the same.
    """
    runtime = params.pop("runtime")
    container_options = values_of("docker", params)
    explicit = {name for name in params if ctx.get_parameter_source(name) not in
                (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}
    spec = ClusterSpec.from_dict(values_of("cluster", params))
    tuning = values_of("tuning", params)
    cdir = cluster_dir(data_dir)
    if runtime == "docker":
        from sixfold.runtime import docker

        start = functools.partial(docker.up, image=container_options["image"],
                                  subnet=container_options["docker_subnet"])
    else:
        if runtimes.of(cdir) is not local:
            raise CliError(f"{cdir.root} holds a docker cluster: use `sixfold up --runtime docker`, or another "
                           "--data-dir for a local one", 2)
        if explicit & set(container_options):
            raise CliError(f"{', '.join(sorted('--' + n.replace('_', '-') for n in explicit & set(container_options)))}"
                           " only apply with --runtime docker", 2)
        start = local.up
    if err.is_terminal and not as_json:
        with err.status("starting the cluster") as spinner:
            def progress(message: str) -> None:
                if message.startswith("note:"):
                    err.print(f"[yellow]{message}[/yellow]")
                else:
                    spinner.update(f"starting the cluster: {message}")

            result = start(cdir, spec, tuning, explicit, progress=progress)
    else:
        result = start(cdir, spec, tuning, explicit, progress=progress_printer(not as_json))
    if as_json:
        print_json({"started": result.started, "data_dir": str(result.data_dir),
                    "elapsed_s": round(result.elapsed_s, 2), "notes": result.notes,
                    "endpoints": [e.to_dict() for e in result.endpoints],
                    "nodes": [n.to_dict() for n in result.nodes]})
        return
    if not result.started:
        out.print(f"the cluster in {result.data_dir} is already up")
    else:
        out.print(f"[bold green]cluster up[/bold green] in {result.elapsed_s:.1f} s: "
                  f"{sum(n.kind == 'storage' for n in result.nodes)} storage nodes over 3 AZs, "
                  f"{sum(n.kind == 'compute' for n in result.nodes)} compute instance(s); data in {result.data_dir}")
    out.print(endpoints_table(result.endpoints))
    dd = "" if data_dir is None else f" --data-dir {result.data_dir}"
    out.print(f"next: [bold]sixfold sql{dd} -c 'SELECT 1'[/bold], [bold]sixfold status{dd}[/bold], "
              f"[bold]sixfold down{dd}[/bold]")


@click.command("down", context_settings=CONTEXT)
@data_dir_option
@click.option("--purge", is_flag=True, help="Also delete the cluster's data and logs.")
@click.option("--keep-data", is_flag=True, help="Keep the data (the default; for scripts that say so).")
@json_option
@reports_errors
def down(data_dir: Path | None, purge: bool, keep_data: bool, as_json: bool) -> None:
    """Stop the cluster: readers, the writer, then storage; verify no process is left.

    The data stays (a later `sixfold up` starts the same cluster again) unless --purge.
    Running it when nothing runs is fine.
    """
    if purge and keep_data:
        raise CliError("--purge and --keep-data contradict each other; pick one", 2)
    cdir = cluster_dir(data_dir)
    result = runtimes.of(cdir).down(cdir, purge=purge, progress=progress_printer(not as_json))
    if as_json:
        print_json({"was_running": result.was_running, "purged": result.purged, "messages": result.messages})
        return
    for message in result.messages:
        out.print(message)


HEALTH_STYLE = {"ok": "green", "down": "red", "paused": "yellow", "stopped": "dim", "unreachable": "red",
                "starting": "cyan", "fenced": "magenta"}


def _fmt(value, suffix: str = "") -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{suffix}"
    return f"{value}{suffix}"


@click.command("status", context_settings=CONTEXT)
@data_dir_option
@json_option
@reports_errors
def status(data_dir: Path | None, as_json: bool) -> None:
    """Every node: role, AZ, address, pid, health, epoch, SCL/VDL, replica lag.

    Exit code 0 while the cluster runs (whatever the nodes' health), 1 when it is
    stopped or there is none. --json prints a list of node objects.
    """
    cdir = cluster_dir(data_dir)
    report = runtimes.of(cdir).status(cdir)
    cluster, nodes = report["cluster"], report["nodes"]
    if as_json:
        print_json(nodes)
    else:
        head = f"cluster [bold]{cluster['state']}[/bold] in {cluster['data_dir']} (volume {cluster['volume_id']}"
        if cluster.get("runtime") == "docker":
            head += f", docker image {cluster['image']})"
        else:
            head += f", supervisor pid {cluster['supervisor_pid']})" if cluster["supervisor_running"] else ")"
        out.print(head)
        if cluster["message"]:
            out.print(f"[yellow]{cluster['message']}[/yellow]; `sixfold up` starts it, `sixfold down` cleans up")
        table = Table(box=None, pad_edge=False)
        for col in ("node", "role", "az", "address", "pid", "health", "epoch", "scl/vdl", "lag p50/p99 ms",
                    "detail"):
            table.add_column(col, no_wrap=col != "detail")
        for n in nodes:
            style = HEALTH_STYLE.get(n["health"], "white")
            position = n["scl"] if n["kind"] == "storage" else n["vdl"]
            lag = (f"{_fmt(n['replica_lag_ms_p50'])}/{_fmt(n['replica_lag_ms_p99'])}"
                   if n["replica_lag_ms_p50"] is not None else "-")
            segments = n.get("segments")
            detail = n.get("detail") or ("" if segments is None else
                                         f"{segments} segment{'s' if segments != 1 else ''}")
            if n.get("restarts"):
                detail = f"{detail}; restarts {n['restarts']}".lstrip("; ")
            table.add_row(n["name"], n["role"], str(n["az"]), n["address"], _fmt(n["pid"]),
                          f"[{style}]{n['health']}[/{style}]", _fmt(n["epoch"]), _fmt(position), lag, detail)
        out.print(table)
        for r in cluster.get("regions", []):
            if r["role"] == "primary":
                out.print(f"region {r['region']}: primary, VDL {_fmt(r['vdl'])}")
            elif r["role"] == "needs-resync":
                out.print(f"region {r['region']}: failed over from; needs a resync (`sixfold region resync "
                          f"{r['region']}`) before it rejoins")
            elif r["role"] == "joining":
                out.print(f"region {r['region']}: joining (being seeded or catching up), replicator "
                          f"{r.get('health', 'unknown')}, VDL {_fmt(r.get('vdl'))}")
            elif r.get("primary_vdl") is None:
                out.print(f"region {r['region']}: secondary, replicator {r.get('health', 'unknown')}")
            else:
                silent = r["primary_unheard_s"]
                out.print(f"region {r['region']}: secondary, VDL {r['vdl']} ({r['behind_lsns']} LSNs behind the "
                          f"primary's {r['primary_vdl']}"
                          + (f", last heard {silent} s ago" if silent is None or silent > local.PRIMARY_SILENT_S
                             else "")
                          + f"); replication lag last {_fmt(r['lag_ms_last'])} ms, "
                          f"p50 {_fmt(r['lag_ms_p50'])} ms, p99 {_fmt(r['lag_ms_p99'])} ms")
    if not cluster["supervisor_running"]:
        raise SystemExit(1)


@click.command("endpoints", context_settings=CONTEXT)
@data_dir_option
@json_option
@reports_errors
def endpoints(data_dir: Path | None, as_json: bool) -> None:
    """Writer, reader and instance endpoints with host:port.

    The writer and reader endpoints are the coordinators' router on the region's
    endpoint address (127.<region>.0.200): the writer endpoint forwards to the current
    writer (a client that reconnects after a failover reaches the new one), the reader
    endpoint round-robins over healthy readers (the writer when there are none). Custom
    endpoints (`sixfold endpoint create`) round-robin over their members. The instance
    column shows where they point now. The postgresql column is the same endpoint for
    PostgreSQL clients (psql, psycopg, pgbench, ...); --json adds a ready-to-use `dsn`
    with the cluster's password (kept in DATA_DIR/pg_password).
    """
    cdir = cluster_dir(data_dir)
    eps = runtimes.of(cdir).endpoints(cdir)
    if as_json:
        print_json([e.to_dict() for e in eps])
    else:
        out.print(endpoints_table(eps))


@click.group("endpoint", context_settings=CONTEXT)
def endpoint() -> None:
    """Custom endpoints: a named subset of the instances on its own router address."""


@endpoint.command("create", context_settings=CONTEXT)
@data_dir_option
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(["reader", "any"]), default="reader", show_default=True,
              help="reader: route only to members that are readers now; any: readers and the writer.")
@click.option("--members", required=True, help="Instance names, comma-separated (see `sixfold endpoints`).")
@json_option
@reports_errors
def endpoint_create(data_dir: Path | None, name: str, kind: str, members: str, as_json: bool) -> None:
    """Create the custom endpoint NAME over --members.

    Every coordinator replica's router listens on it (127.<region>.0.200, a port from
    compute port + 210) and on its PostgreSQL twin NAME-pg (16 ports up); new connections
    are balanced over the members that are healthy and of the right role. A member
    promoted to writer leaves a `reader` endpoint.
    """
    names = [m.strip() for m in members.split(",") if m.strip()]
    e = local.create_endpoint(cluster_dir(data_dir), name, kind, names)
    if as_json:
        print_json(e.to_dict())
    else:
        out.print(f"custom endpoint [bold]{e.name}[/bold] ({e.type}: {', '.join(e.members)}) on {e.address}")


@endpoint.command("delete", context_settings=CONTEXT)
@data_dir_option
@click.argument("name")
@json_option
@reports_errors
def endpoint_delete(data_dir: Path | None, name: str, as_json: bool) -> None:
    """Delete the custom endpoint NAME (its open connections are closed)."""
    local.delete_endpoint(cluster_dir(data_dir), name)
    if as_json:
        print_json({"deleted": name})
    else:
        out.print(f"deleted the custom endpoint {name}")


@click.group("replica", context_settings=CONTEXT)
def replica() -> None:
    """Add or remove a reader (a replica) while the cluster runs."""


@replica.command("add", context_settings=CONTEXT)
@data_dir_option
@click.option("--az", type=click.IntRange(1), default=None, help="AZ of the new reader [default: the next in turn].")
@click.option("--tier", type=click.IntRange(0, 15), default=None,
              help="Promotion tier 0-15, lower is promoted first [default: its reader number].")
@json_option
@reports_errors
def replica_add(data_dir: Path | None, az: int | None, tier: int | None, as_json: bool) -> None:
    """Start a new reader and add it to the coordinators' catalog.

    It follows the current writer at once; the reader endpoint balances over it as
    soon as its health checks pass. Readers hold no data: it reads the shared volume.
    """
    result = local.add_replica(cluster_dir(data_dir), az, tier, progress=progress_printer(not as_json))
    if as_json:
        print_json(result)
    else:
        out.print(f"added [bold]{result['name']}[/bold] in AZ {result['az']} on {result['address']} "
                  f"(promotion tier {result['tier']})")


@replica.command("remove", context_settings=CONTEXT)
@data_dir_option
@click.argument("name")
@json_option
@reports_errors
def replica_remove(data_dir: Path | None, name: str, as_json: bool) -> None:
    """Remove the reader NAME: out of the catalog and the endpoints first, then stopped.

    The writer cannot be removed: fail over first (`sixfold failover`).
    """
    result = local.remove_replica(cluster_dir(data_dir), name, progress=progress_printer(not as_json))
    if as_json:
        print_json(result)
    else:
        out.print(f"removed {name}")


@click.command("failover", context_settings=CONTEXT)
@data_dir_option
@click.option("--target", default="", help="Instance to promote [default: by promotion tier, then least lag].")
@json_option
@reports_errors
def failover(data_dir: Path | None, target: str, as_json: bool) -> None:
    """Planned failover: promote a reader to writer (no acknowledged write is lost).

    The coordinator leader records the failover in its catalog, promotes the target
    (it runs recovery: a new volume epoch fences the old writer), repoints the writer
    endpoint and the other readers; the old writer steps down and comes back as a reader
    (the command returns once it serves reads again).
    """
    result = local.failover(cluster_dir(data_dir), target)
    if as_json:
        print_json(result)
    else:
        out.print(f"failover {result['id']}: {result['from']} -> [bold]{result['to']}[/bold] is the writer "
                  f"at epoch {result['epoch']} ({result['state']}, {result['duration_s']:.2f} s)")


@click.command("settings", context_settings=CONTEXT)
@json_option
def settings(as_json: bool) -> None:
    """The settings table: each setting's flag, environment variable and default."""
    rows = [s.to_dict() for s in SETTINGS]
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("flag", "environment", "default", "help"):
        table.add_column(col, no_wrap=col != "help")
    for r in rows:
        table.add_row(r["flag"], r["env"], r["default"] or "-", r["help"])
    out.print(table)
