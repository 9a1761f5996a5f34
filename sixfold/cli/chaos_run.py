"""`sixfold chaos run`: a workload with a recorded history under a nemesis, then the checkers."""

from __future__ import annotations

import time
from pathlib import Path

import click

from sixfold.chaos import nemesis
from sixfold.chaos.workloads import WORKLOADS
from sixfold.cli.common import CONTEXT, CliError, cluster_dir, data_dir_option, json_option, out, print_json, \
    progress_printer, reports_errors

FAULT_LIST = "; ".join(f"{f.name}: {f.help}" for f in nemesis.FAULTS.values())


@click.command("run", context_settings=CONTEXT, epilog=f"Nemeses — {FAULT_LIST}. "
               f"Not available: {'; '.join(f'{k}: {v}' for k, v in nemesis.NOT_AVAILABLE.items())}.")
@data_dir_option
@click.option("--workload", type=click.Choice(sorted(WORKLOADS)), required=True,
              help="list-append: transactions of appends and reads (serializability); bank: transfers with a "
                   "fixed total (half the reads on the reader endpoint); register: read/write/cas "
                   "(linearizability).")
@click.option("--nemesis", "nemesis_names", required=True, metavar="NAME[,NAME]",
              help="Faults to inject, comma-separated (see below).")
@click.option("--time", "time_s", type=click.FloatRange(1), required=True, metavar="S",
              help="How long the clients run, in seconds (the heal, recovery and checks come after).")
@click.option("--seed", type=int, default=None, help="Seed for ops, targets and timing [default: random, printed].")
@click.option("--concurrency", type=click.IntRange(1, 64), default=5, show_default=True,
              help="Client processes (threads), each with its own connections.")
@click.option("--pin-writer-clients", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="N of the clients send every op to the instance that is the writer when the run starts, by "
                   "its own address (not through the router, which drops a former writer's clients), and "
                   "reconnect to that same address: they keep talking to it after a failover, when it is fenced "
                   "or has become a reader. Their ops name that instance as their endpoint in the history. "
                   "(register: a pinned client that ends up on a reader reads stale values, which is not "
                   "linearizable.)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Report folder [default: <data-dir>/chaos-runs/<workload>-<time>].")
@click.option("--schedule", type=click.Choice(["random", "fixed"]), default="random", show_default=True,
              help="random: seeded random fault, gap and duration each round; fixed: the nemeses in the "
                   "given order with exact --interval-s gaps and --fault-s faults.")
@click.option("--interval-s", type=click.FloatRange(0.5), default=4.0, show_default=True,
              help="Quiet time before each fault.")
@click.option("--fault-s", "duration_s", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="How long each fault lasts before its heal.")
@click.option("--op-timeout-s", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="Client RPC timeout; an op that times out at COMMIT is recorded as info (possibly applied).")
@json_option
@reports_errors
def run_cmd(data_dir, workload, nemesis_names, time_s, seed, concurrency, pin_writer_clients, out_dir, schedule,
            interval_s, duration_s, op_timeout_s, as_json) -> None:
    """Run a workload against the running cluster while a nemesis breaks it, then check it.

    Clients send SQL through the writer endpoint (and, for bank reads, the reader endpoint;
    with --pin-writer-clients, some straight to the first writer instance) and record every
    op in a history; the nemesis injects faults through the same operations as `sixfold
    chaos` and heals each one. At the end everything is healed, the run waits for
    the cluster to be healthy, reads the final state and checks the history. The report
    folder holds history.jsonl, verdicts.json, plot.png and summary.txt.

    Exit codes: 0 no violation found; 1 a violation (or the cluster did not recover); 2 usage.
    """
    from sixfold.chaos import runner

    try:
        faults = nemesis.parse(nemesis_names)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if pin_writer_clients > concurrency:
        raise CliError(f"--pin-writer-clients {pin_writer_clients} is more than --concurrency {concurrency}", 2)
    cdir = cluster_dir(data_dir)
    seed = seed if seed is not None else int(time.time() * 1000) % 1_000_000
    out_dir = out_dir or cdir.root / "chaos-runs" / f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
    results = runner.run(cdir, workload, faults, time_s, seed, concurrency, out_dir, op_timeout_s=op_timeout_s,
                         schedule=schedule, interval_s=interval_s, duration_s=duration_s,
                         pin_writer_clients=pin_writer_clients, progress=progress_printer(not as_json))
    if as_json:
        print_json({k: v for k, v in results.items() if k != "summary"})
    else:
        out.print(results["summary"], markup=False, highlight=False)
        out.print(f"report: {out_dir}")
    if not results["valid"]:
        raise CliError(f"violation found: {', '.join(results['checker'].get('anomaly_types', []))}; "
                       f"see {out_dir}/summary.txt", 1)
