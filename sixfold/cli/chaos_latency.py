"""`sixfold chaos latency`: show or change the RPC layer's inter-region latency table."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from sixfold.cli.common import CONTEXT, CliError, cluster_dir, data_dir_option, json_option, out, print_json, \
    reports_errors
from sixfold.client import latency
from sixfold.runtime import latency_chaos, local


@click.command("latency", context_settings=CONTEXT)
@data_dir_option
@click.option("--from", "from_region", type=click.IntRange(1), default=None, metavar="R", help="Calls from region R.")
@click.option("--to", "to_region", type=click.IntRange(1), default=None, metavar="R", help="... to region R.")
@click.option("--ms", type=click.IntRange(0, latency.ONE_WAY_MS_MAX), default=None, metavar="N",
              help="One-way delay in milliseconds.")
@click.option("--one-way", is_flag=True, help="Change only --from -> --to, not also the reverse direction.")
@click.option("--reset", is_flag=True, help="Drop every change: back to the defaults.")
@json_option
@reports_errors
def latency_cmd(data_dir: Path | None, from_region, to_region, ms, one_way, reset, as_json) -> None:
    """Show the one-way delay between every pair of the cluster's regions, or change one.

    `--from R --to S --ms N` sets the delay of calls from R to S (and S to R unless
    --one-way); R = S slows calls inside a region. `--reset` goes back to the defaults
    (`chaos heal` does too). Nodes pick a change up within 0.2 s.
    """
    cdir = cluster_dir(data_dir)
    state = local.require_running(cdir)
    regions = latency_chaos.regions_of(state)
    changing = (from_region, to_region, ms) != (None, None, None)
    if reset and changing:
        raise CliError("--reset takes no --from/--to/--ms", 2)
    if changing:
        if None in (from_region, to_region, ms):
            raise CliError("to change a delay give all of --from R --to R --ms N", 2)
        unknown = sorted({from_region, to_region} - set(regions))
        if unknown:
            raise CliError(f"no region {', '.join(map(str, unknown))}; the cluster has region(s) "
                           f"{', '.join(map(str, regions))}", 2)
        latency_chaos.set_pair(cdir, from_region, to_region, ms, both_ways=not one_way)
    elif reset:
        latency_chaos.reset(cdir)
    rows = latency_chaos.table(cdir).rows(regions)
    if as_json:
        print_json({"one_way_ms": rows})
        return
    table = Table(box=None, pad_edge=False)
    for col in ("from", "to", "one-way ms", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["from"]), str(r["to"]), str(r["ms"]), r["source"])
    out.print(table)
