"""Global database benchmark: replication lag from the primary region to a secondary region.

In one invocation, on a two-region cluster (`sixfold up --regions 2`):
- commits paced at --rate per second (single-row INSERTs over 16 sessions on the writer) for
  --seconds, with the default inter-region latency (regions 1 and 2: 30 ms one way, applied
  in the RPC layer; sixfold/client/latency.py);
- the same with the inter-region latency set to 0 ms (the reference: what the shipping
  itself costs on this machine).
Lag is measured two ways: end to end by the client (a commit's acknowledgement at the writer
-> the row visible through a reader of region 2, polled every 5 ms), and by the replicator
itself (the primary's storage hearing of a VDL -> that VDL on a write quorum of region 2).
Prints a table and writes JSON.

Failover RTO and RPO over --trials trials, each on a fresh two-region cluster (the region failed
over from needs a resync, which is not built): a paced writer commits to region 1 (--failover-rate
commits/s); the whole primary region is SIGKILLed (`chaos kill --region 1`); at once
`sixfold region failover --to 2 --allow-data-loss`; a client retries an INSERT through region 2's
writer endpoint until one commits. RTO = primary region killed (the chaos log's time, once its
processes are gone) -> that first commit, the failover command's own start-up included (the
operator's reaction time is taken as 0: detection is not part of it). RPO = the acknowledged
commits region 2 does not have (client side), and what the failover reported (LSNs behind the
primary VDL its replicator last heard of, and its last lag).

    python bench/global_bench.py [--seconds 20] [--rate 500] [--trials 5] [--skip-lag] [--skip-failover]
                                 [--json bench/results/global.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sixfold  # noqa: E402
from bench.cluster import BenchCluster  # noqa: E402
from sixfold.client.latency import default_one_way_ms  # noqa: E402
from sixfold.rpc import compute_pb2 as cpb  # noqa: E402
from sixfold.rpc import compute_pb2_grpc  # noqa: E402

console = Console(stderr=True)
SESSIONS = 16
POLL_INTERVAL_S = 0.005
SAMPLE_EVERY = 5          # every 5th commit's visibility is timed


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


def lag_run(cluster: BenchCluster, rate_per_s: float, seconds: float, label: str) -> dict:
    """Paced commits on the writer; a poller on region 2's reader notes when each id shows up."""
    writer, reader = address(cluster, "writer-1"), address(cluster, "reader-2-1")
    interval_s = SESSIONS / rate_per_s
    acked: list[tuple[int, float]] = []          # (row id, acknowledged at, monotonic s)
    seen: list[tuple[float, int]] = []           # (polled at, highest id visible)
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    def paced(offset_s: float) -> None:
        conn = sixfold.connect(writer, autocommit=True)
        cur = conn.cursor()
        next_at = started + offset_s
        n = 0
        while time.monotonic() - started < seconds:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval_s
            cur.execute("INSERT INTO t(v) VALUES ('lag')")
            n += 1
            if n % SAMPLE_EVERY == 0:
                with lock:
                    acked.append((cur.lastrowid, time.monotonic()))
        conn.close()

    def poll() -> None:
        conn = sixfold.connect(reader, autocommit=True)
        cur = conn.cursor()
        while not stop.is_set():
            highest = cur.execute("SELECT max(id) FROM t").fetchall()[0][0] or 0
            seen.append((time.monotonic(), highest))
            time.sleep(POLL_INTERVAL_S)
        conn.close()

    poller = threading.Thread(target=poll)
    poller.start()
    threads = [threading.Thread(target=paced, args=(i * interval_s / SESSIONS,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed_s = time.monotonic() - started
    time.sleep(3)   # the tail reaches region 2
    stop.set()
    poller.join()
    # a reader's snapshot only moves forward: the highest id seen never decreases
    times, highs = [t for t, _ in seen], [h for _, h in seen]
    lags_ms = []
    for row_id, acked_s in acked:
        i = max(bisect.bisect_left(highs, row_id), bisect.bisect_left(times, acked_s))
        if i < len(seen) and highs[i] >= row_id:
            lags_ms.append((times[i] - acked_s) * 1000)
    with grpc.insecure_channel(address(cluster, "replicator-2")) as channel:
        status = compute_pb2_grpc.ComputeStub(channel).Status(cpb.StatusRequest(), timeout=5)
    commits = len(acked) * SAMPLE_EVERY
    return {"test": label, "commits_per_s": round(commits / elapsed_s, 1), "samples": len(lags_ms),
            "unseen": len(acked) - len(lags_ms),
            "e2e_lag_ms_p50": round(percentile(lags_ms, 0.5), 1), "e2e_lag_ms_p99": round(percentile(lags_ms, 0.99), 1),
            "replicator_lag_ms_p50": round(status.replica_lag_ms_p50, 1),
            "replicator_lag_ms_p99": round(status.replica_lag_ms_p99, 1)}


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
    parser.add_argument("--rate", type=float, default=500.0, help="commits per second, in total")
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
    with BenchCluster(readers=1, regions=2) as cluster:
        setup = sixfold.connect(address(cluster, "writer-1"), autocommit=True)
        setup.cursor().execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        setup.close()
        wait_for_table(address(cluster, "reader-2-1"))
        default_ms = default_one_way_ms(1, 2)
        console.print(f"lag at {args.rate:.0f} commits/s, {default_ms} ms one way between the regions ...")
        results.append(lag_run(cluster, args.rate, args.seconds, f"{default_ms} ms one way (default)"))
        set_latency(cluster, 0)
        console.print(f"lag at {args.rate:.0f} commits/s, 0 ms between the regions (reference) ...")
        # the replicator's own window still holds the first run's samples: its figures are not
        # reported for this run (the client's end-to-end figures are)
        reference = lag_run(cluster, args.rate, args.seconds, "0 ms (reference)")
        reference["replicator_lag_ms_p50"] = reference["replicator_lag_ms_p99"] = None
        results.append(reference)
        set_latency(cluster, None)
    table = Table(title=f"replication lag, region 1 -> region 2, {args.rate:.0f} commits/s for {args.seconds:.0f} s")
    for col in ("inter-region latency", "commits/s", "e2e lag p50 ms", "e2e lag p99 ms", "replicator p50 ms",
                "replicator p99 ms", "samples"):
        table.add_column(col)
    for r in results:
        table.add_row(r["test"], str(r["commits_per_s"]), str(r["e2e_lag_ms_p50"]), str(r["e2e_lag_ms_p99"]),
                      str(r["replicator_lag_ms_p50"]), str(r["replicator_lag_ms_p99"]),
                      f"{r['samples']} ({r['unseen']} unseen)")
    Console().print(table)
    report_failovers(failovers, failover_summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "rate_per_s": args.rate, "sessions": SESSIONS,
                                     "results": results,
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
