"""`sixfold region switchover|failover`: move the primary role to another region (sixfold/globaldb)."""

from __future__ import annotations

from pathlib import Path

import click

from sixfold.cli.common import CONTEXT, cluster_dir, data_dir_option, json_option, out, print_json, progress_printer
from sixfold.cli.common import reports_errors
from sixfold.runtime import local


@click.group("region", context_settings=CONTEXT)
def region() -> None:
    """Region roles of a global database (`sixfold up --regions N`)."""


def _run(data_dir: Path | None, kind: str, to_region: int, as_json: bool) -> None:
    from sixfold.globaldb import switch

    cdir = cluster_dir(data_dir)
    # progress goes to stderr even with --json: a role change takes seconds
    with cdir.cli_locked():
        state = local.require_running(cdir)
        local.refuse_in_docker(state, f"region {kind}")
        nodes = local.node_specs(state)
        try:
            report = getattr(switch, kind)(cdir, state, nodes, to_region, progress_printer(True))
        except ValueError as exc:
            raise local.UsageProblem(str(exc)) from None
        except switch.SwitchFailed as exc:
            raise local.RuntimeFailure(f"the {kind} stopped: {exc}") from None
    if as_json:
        print_json(report)
        return
    line = (f"{kind} {report['id']}: region {report['from_region']} -> region {report['to_region']}; "
            f"[bold]{report['new_writer']}[/bold] is the writer at epoch {report['epoch']} "
            f"({report['duration_s']:.2f} s)")
    if kind == "failover":
        rpo = ("unknown (the replicator did not answer)" if report["rpo_lsns"] is None
               else f"{report['rpo_lsns']} LSN(s), lag {report['rpo_lag_s']:.3f} s")
        regions = ", ".join(map(str, report["needs_resync"]))
        line += f"; RPO {rpo}; region(s) {regions} need a resync before they rejoin (`sixfold region resync`)"
    else:
        line += f"; RPO 0 (fenced at LSN {report['fence_vdl']})"
        if report.get("followers"):
            line += f"; region(s) {', '.join(map(str, report['followers']))} follow the new primary"
    out.print(line)


@region.command("switchover", context_settings=CONTEXT)
@data_dir_option
@click.option("--to", "to_region", type=click.IntRange(1), required=True, help="The region to promote.")
@json_option
@reports_errors
def switchover(data_dir: Path | None, to_region: int, as_json: bool) -> None:
    """Planned: make region TO the primary with no acknowledged commit lost (RPO 0).

    Fences the old primary's storage with a higher epoch, waits until TO's replicator has
    shipped everything up to the fence, promotes a reader of TO, and makes the old primary
    a secondary region replicating from TO (its writer restarts as a reader; the command
    returns once it serves reads)."""
    _run(data_dir, "switchover", to_region, as_json)


@region.command("failover", context_settings=CONTEXT)
@data_dir_option
@click.option("--to", "to_region", type=click.IntRange(1), required=True, help="The region to promote.")
@click.option("--allow-data-loss", is_flag=True,
              help="Required: commits the primary made that TO had not received yet are lost (the RPO).")
@json_option
@reports_errors
def failover(data_dir: Path | None, to_region: int, allow_data_loss: bool, as_json: bool) -> None:
    """Unplanned: the primary region is gone or cut off; promote region TO at its last complete LSN.

    Stops TO's replicator (the old primary's writer holds a lease from it and can acknowledge
    nothing once that lease runs out), waits out the lease, promotes a reader of TO, reports the
    RPO (LSNs and seconds) and the time taken. The old primary region needs a resync before it
    rejoins."""
    if not allow_data_loss:
        raise local.UsageProblem("a failover may lose commits: pass --allow-data-loss (or use switchover)")
    _run(data_dir, "failover", to_region, as_json)


@region.command("add", context_settings=CONTEXT)
@data_dir_option
@json_option
@reports_errors
def add(data_dir: Path | None, as_json: bool) -> None:
    """Add a secondary region (the next number) to a running global cluster.

    Starts its storage nodes, coordinators, readers and replicator; the replicator seeds the
    empty storage from the primary and ships its log. The region joins (the primary writer then
    needs its lease, and it can be switched or failed over to) once it has caught up with the
    primary's VDL of the moment the add began."""
    from sixfold.runtime import regions

    report = regions.add_region(cluster_dir(data_dir), progress_printer(True))
    if as_json:
        print_json(report)
        return
    out.print(f"region {report['region']} has joined: {len(report['nodes'])} nodes, VDL {report['vdl']} "
              f"({report['duration_s']:.2f} s)")


@region.command("remove", context_settings=CONTEXT)
@data_dir_option
@click.argument("region_no", metavar="REGION", type=click.IntRange(1))
@json_option
@reports_errors
def remove(data_dir: Path | None, region_no: int, as_json: bool) -> None:
    """Take secondary region REGION out of a running global cluster and delete its copies.

    The primary writer stops needing its lease first, then its nodes stop. The primary region
    cannot be removed: switch over to another region first."""
    from sixfold.runtime import regions

    report = regions.remove_region(cluster_dir(data_dir), region_no, progress_printer(True))
    if as_json:
        print_json(report)
        return
    out.print(f"region {report['region']} is removed: {len(report['removed'])} nodes stopped, copies deleted "
              f"({report['duration_s']:.2f} s)")


@region.command("resync", context_settings=CONTEXT)
@data_dir_option
@click.argument("region_number", metavar="R", type=click.IntRange(1))
@json_option
@reports_errors
def resync(data_dir: Path | None, region_number: int, as_json: bool) -> None:
    """Rejoin region R (failed over from, or cut off for longer than the primary keeps its
    records: its replicator reports needs-resync) as a secondary: discard its storage and seed it again.

    Stops R's instances, storage nodes and replicator, discards R's storage (the divergent tail
    its old writer left goes with it), records R as joining (the primary's writer owes it no
    lease meanwhile), starts them again: R's replicator seeds the empty storage from the
    primary's page images and ships from there. Done when R holds the primary's VDL of the
    start; then R is an ordinary secondary (and can be switched over to)."""
    from sixfold.globaldb import resync as resync_module
    from sixfold.globaldb.switch import SwitchFailed

    cdir = cluster_dir(data_dir)
    with cdir.cli_locked():
        state = local.require_running(cdir)
        local.refuse_in_docker(state, "region resync")
        try:
            report = resync_module.resync(cdir, state, local.node_specs(state), region_number, progress_printer(True))
        except ValueError as exc:
            raise local.UsageProblem(str(exc)) from None
        except SwitchFailed as exc:
            raise local.RuntimeFailure(f"the resync stopped: {exc}") from None
    if as_json:
        print_json(report)
        return
    seeded = (f"seeded at LSN {report['seeded_lsn']}" if report["seeded_lsn"]
              else "shipped from the start (the primary still held its whole log)")
    out.print(f"resync: region {report['region']} is a secondary of region {report['primary']} again; {seeded}, "
              f"now at LSN {report['vdl']} ({report['duration_s']:.2f} s)")
