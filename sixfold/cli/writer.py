"""`sixfold writer add|remove`: peer writers on a running multi-writer cluster (MULTIWRITER.md)."""

from __future__ import annotations

from pathlib import Path

import click

from sixfold.cli.common import (CONTEXT, cluster_dir, data_dir_option, json_option, out, print_json,
                                progress_printer, reports_errors)
from sixfold.runtime import local


@click.group("writer", context_settings=CONTEXT)
def writer() -> None:
    """Add or remove a peer writer while a multi-writer cluster (`up --writers 2+`) runs."""


@writer.command("add", context_settings=CONTEXT)
@data_dir_option
@click.option("--az", type=click.IntRange(1), default=None, help="AZ of the new writer [default: the next in turn].")
@json_option
@reports_errors
def writer_add(data_dir: Path | None, az: int | None, as_json: bool) -> None:
    """Start a new peer writer (writer-N): it follows the primary's redo stream like a reader
    and takes writes, committing through the primary (first committer wins per page)."""
    result = local.add_replica(cluster_dir(data_dir), az, None, progress=progress_printer(not as_json),
                               takes_writes=True)
    if as_json:
        print_json(result)
    else:
        out.print(f"added peer writer [bold]{result['name']}[/bold] in AZ {result['az']} on {result['address']}")


@writer.command("remove", context_settings=CONTEXT)
@data_dir_option
@click.argument("name")
@json_option
@reports_errors
def writer_remove(data_dir: Path | None, name: str, as_json: bool) -> None:
    """Remove the peer writer NAME: out of the catalog first, then stopped. Its sessions end;
    a transaction it had sent to the primary commits (or not) as a whole. The primary
    cannot be removed: fail over first (`sixfold failover`)."""
    nodes = {n["name"]: n for n in local.status(cluster_dir(data_dir))["nodes"]}
    if nodes.get(name, {}).get("role") == "writer":
        raise local.UsageProblem(f"{name} is the primary writer; fail over first (`sixfold failover`)")
    result = local.remove_replica(cluster_dir(data_dir), name, progress=progress_printer(not as_json))
    if as_json:
        print_json(result)
    else:
        out.print(f"removed {name}")
