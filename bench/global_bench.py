"""Global database benchmark: replication lag from the primary region to a secondary region.

Replication lag at --rate commits/s: the runs of bench/lag_bench.py (open-loop load: the
offered rate is fixed; offered vs achieved commits/s, commit latency, lag end to end and as the
replicator measures it, CPU per kind of process) on one two-region cluster: at the default
inter-region latency (30 ms one way between regions 1 and 2), at 0 ms (the reference), and at
--reference-rate. Prints a table and writes JSON.

Failover RTO and RPO over --trials trials, each on a fresh two-region cluster (the region failed
over from would need a `region resync` first): a paced writer commits to region 1 (--failover-rate
commits/s); the whole primary region is SIGKILLed (`chaos kill --region 1`); at once
`sixfold region failover --to 2 --allow-data-loss`; a client retries an INSERT through region 2's
writer endpoint until one commits. RTO = primary region killed (the chaos log's time, once its
processes are gone) -> that first commit, the failover command's own start-up included (the
operator's reaction time is taken as 0: detection is not part of it). RPO = the acknowledged
commits region 2 does not have (client side), and what the failover reported (LSNs behind the
primary VDL its replicator last heard of, and its last lag).

    python bench/global_bench.py [--seconds 20] [--rate 500] [--reference-rate 50] [--sessions 32] [--procs 4]
                                 [--trials 5] [--skip-lag] [--skip-failover]
                                 [--json bench/results/global.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sixfold  # noqa: E402
from bench.cluster import BenchCluster  # noqa: E402
from sixfold.client.latency import default_one_way_ms  # noqa: E402

console = Console(stderr=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def address(cluster: BenchCluster, name: str) -> str:
    return next(n["address"] for n in cluster.nodes if n["name"] == name)


def set_latency(cluster: BenchCluster, ms: int | None) -> None:
    args = ["--reset"] if ms is None else ["--from", "1", "--to", "2", "--ms", str(ms)]
    subprocess.run([sys.executable, "-m", "sixfold.cli", "chaos", "latency", "--data-dir", cluster.data_dir, *args],
                   check=True, capture_output=True)
    time.sleep(0.5)   # nodes re-read the table every 0.2 s


def wait_for_table(reader: str, timeout_s: float = 60.0) -> None:
    """Until region 2 has the table (it was created a moment ago in region 1)."""
    conn = sixfold.connect(reader, autocommit=True)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                conn.cursor().execute("SELECT count(*) FROM t").fetchall()
                return
            except sixfold.dbapi.ProgrammingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        conn.close()


FAILOVER_LOAD_S = 3.0     # the paced writer runs this long before the primary region is killed


def free_bench_ports(regions: int = 2) -> tuple[int, int]:
    """Ports no other cluster on this machine uses (other benchmarks and tests may run meanwhile)."""
    import random

    from sixfold.runtime import procs
    from sixfold.runtime.topology import ClusterSpec, listen_addresses, nodes_of

    for _ in range(100):
        base = random.randrange(40_000, 55_000, 2)
        spec = ClusterSpec(storage_port=base, compute_port=base + 1, regions=regions)
        if not any(procs.port_taken(host, port) for host, port in listen_addresses(nodes_of(spec))):
            return base, base + 1
    raise RuntimeError("no free ports")


def failover_trial(rate_per_s: float) -> dict:
    storage_port, compute_port = free_bench_ports()
    with BenchCluster(readers=1, regions=2, storage_port=storage_port, compute_port=compute_port) as cluster:
        setup = sixfold.connect(address(cluster, "writer-1"), autocommit=True)
        setup.cursor().execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        setup.close()
        wait_for_table(address(cluster, "reader-2-1"))
        region2_writer = f"127.2.0.200:{compute_port + 200}"   # region 2's writer endpoint (its router)
        acked: list[tuple[int, float]] = []
        stop = threading.Event()

        def paced(offset_s: float, sessions: int) -> None:
            try:
                conn = sixfold.connect(address(cluster, "writer-1"), autocommit=True, timeout_s=2)
                cur = conn.cursor()
                next_at = time.monotonic() + offset_s
                while not stop.is_set():
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += sessions / rate_per_s
                    cur.execute("INSERT INTO t(v) VALUES ('rpo')")
                    acked.append((cur.lastrowid, time.monotonic()))
            except sixfold.dbapi.Error:
                return   # the region is gone

        sessions = 4
        threads = [threading.Thread(target=paced, args=(i / rate_per_s, sessions), daemon=True)
                   for i in range(sessions)]
        for t in threads:
            t.start()
        time.sleep(FAILOVER_LOAD_S)
        lost_at = time.monotonic()
        kill = json.loads(_cli(cluster, "chaos", "kill", "--region", "1", "--json"))
        killed_s = time.monotonic()
        killed_unix_s = kill["unix_s"]   # logged once every process of the region is gone
        stop.set()
        report = json.loads(_cli(cluster, "region", "failover", "--to", "2", "--allow-data-loss", "--json"))
        failed_over_s = time.monotonic()
        first_commit_s = None
        while first_commit_s is None:
            try:
                conn = sixfold.connect(region2_writer, autocommit=True, timeout_s=5)
                try:
                    conn.cursor().execute("INSERT INTO t(v) VALUES ('after')")
                    first_commit_s, first_commit_unix_s = time.monotonic(), time.time()
                finally:
                    conn.close()
            except sixfold.dbapi.Error:
                time.sleep(0.02)
        acked_ids = dict(acked)   # every acknowledgement came before the region was gone
        conn = sixfold.connect(region2_writer, autocommit=True)
        present = {row_id for (row_id,) in conn.cursor().execute("SELECT id FROM t WHERE v = 'rpo'").fetchall()}
        conn.close()
        lost = sorted(set(acked_ids) - present)
        # the span of acknowledgements that were lost: from the first lost one to the last one
        lost_s = (max(acked_ids.values()) - min(acked_ids[row_id] for row_id in lost)) if lost else 0.0
        return {"rto_s": round(first_commit_unix_s - killed_unix_s, 3), "failover_command_s": report["duration_s"],
                "kill_s": round(killed_s - lost_at, 3), "failover_cli_s": round(failed_over_s - killed_s, 3),
                "first_commit_after_s": round(first_commit_s - failed_over_s, 3), "phases": report["phases"],
                "acked_commits": len(acked_ids), "lost_acked_commits": len(lost), "lost_window_s": round(lost_s, 3),
                "rpo_lsns_reported": report["rpo_lsns"], "rpo_lag_s_reported": report["rpo_lag_s"]}


def _cli(cluster: BenchCluster, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sixfold.cli", *args, "--data-dir", cluster.data_dir],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"sixfold {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def failover_runs(trials: int, rate_per_s: float) -> tuple[list[dict], dict]:
    rows = []
    for i in range(trials):
        console.print(f"failover trial {i + 1}/{trials} (a fresh two-region cluster) ...")
        rows.append(failover_trial(rate_per_s))
        console.print(f"  RTO {rows[-1]['rto_s']:.2f} s, lost {rows[-1]['lost_acked_commits']} acknowledged "
                      f"commit(s) ({rows[-1]['lost_window_s']:.3f} s)")
    rtos = [r["rto_s"] for r in rows]
    summary = {"trials": trials, "rto_s_p50": round(percentile(rtos, 0.5), 3), "rto_s_max": round(max(rtos), 3),
               "lost_acked_commits_p50": percentile([r["lost_acked_commits"] for r in rows], 0.5),
               "lost_window_s_max": max(r["lost_window_s"] for r in rows)}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=500.0, help="offered commits per second, in total")
    parser.add_argument("--reference-rate", type=float, default=50.0, help="the low-rate reference run")
    parser.add_argument("--sessions", type=int, default=32, help="sessions that take the due commits")
    parser.add_argument("--procs", type=int, default=4, help="client processes the sessions are spread over")
    parser.add_argument("--json", type=Path, default=Path("bench/results/global.json"))
    parser.add_argument("--trials", type=int, default=5, help="failover trials (each on a fresh cluster)")
    parser.add_argument("--failover-rate", type=float, default=200.0, help="commits/s while the primary is lost")
    parser.add_argument("--skip-lag", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    args = parser.parse_args()
    results = []
    failovers, failover_summary = ([], {}) if args.skip_failover else failover_runs(args.trials, args.failover_rate)
    if args.skip_lag:
        report_failovers(failovers, failover_summary)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"failover": {"summary": failover_summary, "trials": failovers}}, indent=2))
        console.print(f"wrote {args.json}")
        return
    from bench import lag_bench  # here: lag_bench imports this module's helpers

    storage_port, compute_port = free_bench_ports()
    with BenchCluster(readers=1, regions=2, storage_port=storage_port, compute_port=compute_port) as cluster:
        results = lag_bench.lag_runs(cluster, args.rate, args.reference_rate, args.seconds, args.sessions, args.procs, [])
    lag_bench.report(results, default_one_way_ms(1, 2))
    report_failovers(failovers, failover_summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "rate_per_s": args.rate, "sessions": args.sessions,
                                     "inter_region_one_way_ms_default": default_one_way_ms(1, 2), "results": results,
                                     "failover": {"summary": failover_summary, "trials": failovers}}, indent=2))
    console.print(f"wrote {args.json}")


def report_failovers(rows: list[dict], summary: dict) -> None:
    if not rows:
        return
    table = Table(title=f"failover to region 2 after region 1 is killed, {summary['trials']} trials: RTO p50 "
                        f"{summary['rto_s_p50']:.2f} s, max {summary['rto_s_max']:.2f} s")
    for col in ("trial", "RTO s", "failover command s", "acked commits", "lost (acked)", "lost window s",
                "RPO LSNs (reported)", "lag s (reported)"):
        table.add_column(col)
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), f"{r['rto_s']:.2f}", f"{r['failover_command_s']:.2f}", str(r["acked_commits"]),
                      str(r["lost_acked_commits"]), f"{r['lost_window_s']:.3f}", str(r["rpo_lsns_reported"]),
                      f"{r['rpo_lag_s_reported']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
