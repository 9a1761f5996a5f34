"""`sixfold chaos kill|pause|resume|restart|partition|heal|log|run`: faults aimed at nodes, AZs or sets.

Every action is appended to <data-dir>/chaos.log as a JSON line (ts, unix_s,
action, targets, ok, detail), which the chaos harness reads.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from sixfold.cli.chaos_run import run_cmd
from sixfold.cli.common import (CONTEXT, CliError, cluster_dir, data_dir_option, json_option, out, print_json,
                                reports_errors)
from sixfold.runtime import local
from sixfold.runtime.topology import NodeSpec, TopologyError, select_nodes

TARGET_HELP = "say which nodes: --node NAME, --az N, --writer, --readers, --storage or --all"


def target_options(fn):
    for decorator in reversed([
        click.option("--node", "node_names", multiple=True, metavar="NAME",
                     help="A node by name (repeatable); `sixfold status` lists them."),
        click.option("--az", "azs", multiple=True, type=int, metavar="N", help="Every node in AZ N (repeatable)."),
        click.option("--region", type=int, default=None, metavar="R",
                     help="Every node in region R (only region 1 exists for now)."),
        click.option("--writer", is_flag=True, help="The writer instance."),
        click.option("--readers", is_flag=True, help="Every reader instance."),
        click.option("--storage", is_flag=True, help="Every storage node."),
        click.option("--all", "all_nodes", is_flag=True, help="Every node."),
    ]):
        fn = decorator(fn)
    return fn


def resolve_targets(cdir, node_names, azs, region, writer, readers, storage, all_nodes,
                    default_all: bool = False) -> list[NodeSpec]:
    state = local.require(cdir)
    nodes = local.node_specs(state)
    if writer or readers:
        nodes = local.with_live_roles(nodes)   # --writer: the writer now (failovers move it)
    if region is not None:
        regions = sorted({n.region for n in nodes})
        if region not in regions:
            raise CliError(f"no region {region}; the cluster has region(s) {', '.join(map(str, regions))}", 2)
        all_nodes = True
    if not (node_names or azs or writer or readers or storage or all_nodes):
        if not default_all:
            raise CliError(f"no target given: {TARGET_HELP}", 2)
        all_nodes = True
    try:
        return select_nodes(nodes, names=tuple(node_names), azs=tuple(azs), writer=writer, readers=readers,
                            storage=storage, all_nodes=all_nodes)
    except TopologyError as exc:
        raise CliError(str(exc), 2) from None


def report(result: local.ChaosResult, as_json: bool, cdir) -> None:
    if as_json:
        print_json({**result.entry, "done": result.done, "skipped": result.skipped})
    else:
        verb = {"kill": "killed", "pause": "paused", "resume": "resumed", "restart": "restarted",
                "partition": "partitioned", "heal": "healed"}[result.action]
        detail = result.entry["detail"]
        if result.action == "partition":
            out.print(f"partitioned {', '.join(result.done)} from {', '.join(detail['from'])} "
                      f"({detail['rules']} iptables rules in chain {detail['chain']})")
        elif result.action == "heal":
            out.print(f"healed: {detail['partition_rules_removed']} partition rule(s) removed; resumed "
                      f"{', '.join(detail['resumed']) or 'none'}; restarted {', '.join(detail['restarted']) or 'none'}")
        else:
            pids = detail.get("pids", {})
            done = [f"{n} (pid {pids[n]})" if n in pids else n for n in result.done]
            out.print(f"{verb}: {', '.join(done) or 'nothing'}")
        for name, why in result.skipped.items():
            out.print(f"[yellow]skipped {name}: {why}[/yellow]")
        out.print(f"[dim]logged in {cdir.chaos_log}[/dim]")
    if result.not_ready:
        raise CliError(f"{', '.join(result.not_ready)} did not come back within the wait; see "
                       f"`sixfold status` and {cdir.root}/nodes/<name>/node.log", 1)


@click.group("chaos", context_settings=CONTEXT)
def chaos() -> None:
    """Break the local cluster on purpose: kill, pause, partition, and heal.

    Aim with --node NAME (repeatable), --az N, --writer, --readers, --storage or --all.
    Every action is logged with a timestamp in <data-dir>/chaos.log.
    """


def _action(name: str, help_text: str, waits: bool = False, default_all: bool = False):
    @click.command(name, context_settings=CONTEXT, help=help_text)
    @data_dir_option
    @target_options
    @json_option
    @reports_errors
    def command(data_dir: Path | None, node_names, azs, region, writer, readers, storage, all_nodes,
                as_json: bool, wait: bool = True, timeout_s: float = local.NODE_READY_TIMEOUT_S) -> None:
        cdir = cluster_dir(data_dir)
        targets = resolve_targets(cdir, node_names, azs, region, writer, readers, storage, all_nodes, default_all)
        report(local.chaos(cdir, name, targets, wait=wait, timeout_s=timeout_s), as_json, cdir)

    if waits:
        command = click.option("--timeout-s", type=click.FloatRange(1), default=local.NODE_READY_TIMEOUT_S,
                               show_default=True, help="How long to wait for the nodes to answer again.")(command)
        command = click.option("--wait/--no-wait", default=True, show_default=True,
                               help="Wait until the nodes answer again.")(command)
    return command


chaos.add_command(_action("kill", "SIGKILL the nodes; the supervisor leaves them down until restart/heal."))
chaos.add_command(_action("pause", "SIGSTOP the nodes (they hold their connections but answer nothing)."))
chaos.add_command(_action("resume", "SIGCONT paused nodes."))
chaos.add_command(_action("restart", "Start the nodes again (a running node is killed first); waits until they "
                                     "answer.", waits=True))
chaos.add_command(_action("heal", "Undo all chaos: remove partitions, resume paused nodes, restart killed ones "
                                  "(every node unless targets are given).", waits=True, default_all=True))


@chaos.command("partition", context_settings=CONTEXT)
@data_dir_option
@target_options
@click.option("--from", "from_names", multiple=True, metavar="NAME",
              help="The other side: these nodes (repeatable) [default: every node not targeted].")
@click.option("--from-az", "from_azs", multiple=True, type=int, metavar="N", help="The other side: AZ N's nodes.")
@json_option
@reports_errors
def partition_cmd(data_dir, node_names, azs, region, writer, readers, storage, all_nodes, from_names, from_azs,
                  as_json) -> None:
    """Cut traffic both ways between the targets and the rest (or --from/--from-az).

    Uses iptables DROP rules in a chain of this cluster's own, matching each node by
    its cgroup (every loopback connection leaves from 127.0.0.1, so addresses alone
    cannot tell senders apart). Needs root and iptables; says so and exits 2 otherwise.
    `sixfold chaos heal` removes the rules.
    """
    cdir = cluster_dir(data_dir)
    targets = resolve_targets(cdir, node_names, azs, region, writer, readers, storage, all_nodes)
    others = None
    if from_names or from_azs:
        try:
            others = select_nodes(local.node_specs(local.require(cdir)), names=tuple(from_names),
                                  azs=tuple(from_azs))
        except TopologyError as exc:
            raise CliError(str(exc), 2) from None
    report(local.chaos(cdir, "partition", targets, others=others), as_json, cdir)


@chaos.command("log", context_settings=CONTEXT)
@data_dir_option
@click.option("--last", type=click.IntRange(1), default=None, help="Only the last N actions.")
@json_option
def log_cmd(data_dir, last, as_json) -> None:
    """Show the chaos log: every action with its time, targets and outcome."""
    entries = cluster_dir(data_dir).read_chaos()
    if last:
        entries = entries[-last:]
    if as_json:
        print_json(entries)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("time (UTC)", "action", "ok", "targets", "detail"):
        table.add_column(col, no_wrap=col != "detail")
    for e in entries:
        detail = ", ".join(f"{k}={v}" for k, v in e.get("detail", {}).items())
        table.add_row(e["ts"], e["action"], "yes" if e.get("ok") else "[red]no[/red]", ", ".join(e["targets"]),
                      detail.replace("[", "\\["))
    out.print(table)


chaos.add_command(run_cmd)
