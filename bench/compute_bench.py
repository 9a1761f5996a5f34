"""Compute benchmark: SQLite on the Sixfold volume vs SQLite on a local file.

In one invocation:
- single-row INSERT commits/s and latency with 1, 8 and 32 sessions, through the
  compute node's SQL service (real gRPC sessions), vs SQLite on a local file with
  journal_mode=WAL, synchronous=FULL (one connection per session, in-process);
- point SELECTs/s on the writer and on a reader (8 sessions), vs the local file;
- replica lag (writer durable -> visible on the reader) p50/p99 at a fixed
  500 commits/s.
Prints a table and writes JSON.

    python bench/compute_bench.py [--seconds 5] [--json bench/results/compute.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sixfold  # noqa: E402
from bench.cluster import BENCH_COMPUTE_PORT, BENCH_STORAGE_PORT, BenchCluster  # noqa: E402
from sixfold.rpc import compute_pb2 as cpb  # noqa: E402
from sixfold.rpc import compute_pb2_grpc  # noqa: E402

console = Console(stderr=True)
ROWS = 10_000


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_threads(sessions: int, seconds: float, make_op) -> tuple[int, list[float], float]:
    """Runs make_op(i)() in a loop on `sessions` threads; returns (ops, latencies_s, elapsed_s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors = [0]
    stop_at = time.monotonic() + seconds
    ops = [make_op(i) for i in range(sessions)]

    def worker(op) -> None:
        local = []
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                op()
            except Exception:
                errors[0] += 1
                continue
            local.append(time.perf_counter() - started)
        with lock:
            latencies.extend(local)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(op,)) for op in ops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors[0]:
        console.print(f"[red]{errors[0]} operations failed[/]")
    return len(latencies), latencies, time.monotonic() - started


def row(system: str, test: str, sessions: int, ops: int, latencies: list[float], elapsed: float) -> dict:
    return {"system": system, "test": test, "sessions": sessions, "ops": ops, "ops_per_s": ops / elapsed,
            "latency_ms_p50": percentile(latencies, 0.5) * 1000, "latency_ms_p99": percentile(latencies, 0.99) * 1000}


def local_suite(path: Path, levels: list[int], seconds: float) -> list[dict]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    setup = connect()
    setup.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    setup.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT)")
    setup.execute("BEGIN")
    setup.executemany("INSERT INTO r VALUES (?, ?)", [(i, f"row-{i}") for i in range(ROWS)])
    setup.execute("COMMIT")
    results = []
    for sessions in levels:
        conns = [connect() for _ in range(sessions)]
        n, lat, el = run_threads(sessions, seconds, lambda i: (lambda c=conns[i]: c.execute("INSERT INTO t(v) VALUES ('x')")))
        results.append(row("sqlite local file (WAL, synchronous=FULL)", "insert", sessions, n, lat, el))
    conns = [connect() for _ in range(8)]
    counter = [0]

    def select_op(i):
        c = conns[i]

        def op():
            counter[0] += 7919
            c.execute("SELECT v FROM r WHERE id = ?", (counter[0] % ROWS,)).fetchall()
        return op
    n, lat, el = run_threads(8, seconds, select_op)
    results.append(row("sqlite local file (WAL, synchronous=FULL)", "point select", 8, n, lat, el))
    return results


def sixfold_suite(cluster: BenchCluster, levels: list[int], seconds: float) -> list[dict]:
    writer, reader = cluster.compute_address("writer"), cluster.compute_address("reader")
    setup = sixfold.connect(writer, autocommit=True)
    cur = setup.cursor()
    cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    cur.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT)")
    cur.execute("BEGIN")
    for i in range(ROWS):
        cur.execute("INSERT INTO r VALUES (?, ?)", (i, f"row-{i}"))
    cur.execute("COMMIT")
    results = []
    for sessions in levels:
        console.print(f"sixfold insert, {sessions} session(s) ...")
        conns = [sixfold.connect(writer, autocommit=True) for _ in range(sessions)]
        n, lat, el = run_threads(sessions, seconds,
                                 lambda i: (lambda c=conns[i].cursor(): c.execute("INSERT INTO t(v) VALUES ('x')")))
        results.append(row("sixfold writer (4/6 quorum)", "insert", sessions, n, lat, el))
        for c in conns:
            c.close()
    counter = [0]
    for address, name in ((writer, "sixfold writer"), (reader, "sixfold reader")):
        console.print(f"{name} point selects ...")
        conns = [sixfold.connect(address, autocommit=True) for _ in range(8)]

        def select_op(i, conns=conns):
            c = conns[i].cursor()

            def op():
                counter[0] += 7919
                c.execute("SELECT v FROM r WHERE id = ?", (counter[0] % ROWS,)).fetchall()
            return op
        n, lat, el = run_threads(8, seconds, select_op)
        results.append(row(name, "point select", 8, n, lat, el))
    return results


def replica_lag(cluster: BenchCluster, rate_per_s: float, seconds: float, sessions: int = 16) -> dict:
    """Commits paced at rate_per_s in total over `sessions` sessions (one session cannot
    commit 500 times a second: each commit waits for its quorum); lag percentiles come
    from the reader's own measurement (writer durable -> visible on the reader)."""
    writer = cluster.compute_address("writer")
    reader_stub = compute_pb2_grpc.ComputeStub(grpc.insecure_channel(cluster.compute_address("reader")))
    interval_s = sessions / rate_per_s
    commits = [0]
    lock = threading.Lock()
    started = time.monotonic()

    def paced(offset_s: float) -> None:
        cur = sixfold.connect(writer, autocommit=True).cursor()
        next_at = started + offset_s
        while time.monotonic() - started < seconds:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval_s
            cur.execute("INSERT INTO t(v) VALUES ('lag')")
            with lock:
                commits[0] += 1

    threads = [threading.Thread(target=paced, args=(i * interval_s / sessions,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    status = reader_stub.Status(cpb.StatusRequest(), timeout=5)
    return {"system": "sixfold reader", "test": f"replica lag at {rate_per_s:.0f} commits/s",
            "commits_per_s_achieved": commits[0] / elapsed,
            "lag_ms_p50": status.replica_lag_ms_p50, "lag_ms_p99": status.replica_lag_ms_p99}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sessions", default="1,8,32")
    parser.add_argument("--json", default="bench/results/compute.json")
    parser.add_argument("--storage-port", type=int, default=BENCH_STORAGE_PORT,
                        help="storage port of the bench cluster (another bench may hold the default)")
    parser.add_argument("--compute-port", type=int, default=BENCH_COMPUTE_PORT)
    args = parser.parse_args()
    levels = [int(x) for x in args.sessions.split(",")]
    load_before = os.getloadavg()[0]   # other work on the machine moves both columns
    with tempfile.TemporaryDirectory(prefix="sixfold-bench-") as tmp:
        console.print("reference: SQLite on a local file ...")
        results = local_suite(Path(tmp) / "local.db", levels, args.seconds)
        console.print("sixfold up: 6 storage nodes, a writer and a reader ...")
        with BenchCluster(readers=1, storage_port=args.storage_port, compute_port=args.compute_port) as cluster:
            results += sixfold_suite(cluster, levels, args.seconds)
            console.print("replica lag at 500 commits/s ...")
            lag = replica_lag(cluster, 500, max(args.seconds, 5))
    load_after = os.getloadavg()[0]
    table = Table(title=f"Compute: SQL through the compute node vs SQLite on a local file "
                        f"(load {load_before:.1f} before, {load_after:.1f} after)")
    for col in ("system", "test", "sessions", "ops/s", "p50 ms", "p99 ms", "vs local"):
        table.add_column(col, justify="left" if col in ("system", "test") else "right")
    reference = {(r["test"], r["sessions"]): r for r in results if r["system"].startswith("sqlite")}
    for r in results:
        ref = reference.get((r["test"], r["sessions"]))
        r["ratio_vs_local"] = r["ops_per_s"] / ref["ops_per_s"] if ref else None
        table.add_row(r["system"], r["test"], str(r["sessions"]), f"{r['ops_per_s']:.0f}",
                      f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
                      f"{r['ratio_vs_local']:.2f}x" if r["ratio_vs_local"] else "")
    Console().print(table)
    Console().print(f"replica lag at {lag['commits_per_s_achieved']:.0f} commits/s: "
                    f"p50 {lag['lag_ms_p50']:.2f} ms, p99 {lag['lag_ms_p99']:.2f} ms")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "compute", "seconds_per_run": args.seconds, "cpu_count": os.cpu_count(),
                               "load_average_before": load_before, "load_average_after": load_after,
                               "results": results, "replica_lag": lag}, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
