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

Failover RTO/RPO are not measured: `sixfold region switchover|failover` is not built yet.

    python bench/global_bench.py [--seconds 20] [--rate 500] [--json bench/results/global.json]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=500.0, help="commits per second, in total")
    parser.add_argument("--json", type=Path, default=Path("bench/results/global.json"))
    args = parser.parse_args()
    results = []
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "rate_per_s": args.rate, "sessions": SESSIONS,
                                     "results": results}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
