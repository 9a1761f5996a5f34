"""Multi-writer benchmark (sixfold/nodes/compute/MULTIWRITER.md).

In one invocation, on clusters started with `sixfold up --writers N --readers 0`:
- aggregate commits/s with 1, 2 and 3 writers, every writer on a table of its own
  (single-row UPDATEs of pre-loaded rows, autocommit), 4 sessions per writer;
  --writers 1 is the reference, so the figure is a ratio;
- the conflict rate on one shared hot table (10 rows, explicit transactions
  BEGIN/UPDATE/COMMIT from every writer): lost conflicts (40001) per attempt.
Prints a table and writes JSON.

    python bench/multimaster_bench.py [--seconds 5] [--json bench/results/multimaster.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sixfold  # noqa: E402
from bench.cluster import BenchCluster  # noqa: E402
from bench.compute_bench import percentile  # noqa: E402
from sixfold import dbapi  # noqa: E402

console = Console(stderr=True)
ROWS_PER_TABLE = 500
HOT_ROWS = 10
SESSIONS_PER_WRITER = 4


def writer_addresses(cluster: BenchCluster) -> list[str]:
    writers = sorted((n for n in cluster.nodes if n["kind"] == "compute"), key=lambda n: n["name"])
    return [n["address"] for n in writers if n["name"].startswith("writer-")]


def drive(addresses: list[str], seconds: float, op_for) -> dict:
    """SESSIONS_PER_WRITER threads per writer run op_for(writer_no, conn, rng) in a loop.
    op returns True (committed) or False (lost a conflict)."""
    lock = threading.Lock()
    totals = {"commits": 0, "conflicts": 0, "errors": 0}
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    def worker(writer_no: int, address: str, seed: int) -> None:
        rng = random.Random(seed)
        conn = sixfold.connect(address, autocommit=False)
        mine = {"commits": 0, "conflicts": 0, "errors": 0}
        lat = []
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                key = "commits" if op_for(writer_no, conn, rng) else "conflicts"
            except dbapi.SerializationFailure:
                key = "conflicts"
            except dbapi.Error as exc:
                console.print(f"[red]{type(exc).__name__}: {exc}[/]")
                key = "errors"
            mine[key] += 1
            if key == "commits":
                lat.append(time.perf_counter() - started)
        conn.close()
        with lock:
            for k, v in mine.items():
                totals[k] += v
            latencies.extend(lat)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w, a, w * 100 + s))
               for w, a in enumerate(addresses) for s in range(SESSIONS_PER_WRITER)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    attempts = totals["commits"] + totals["conflicts"]
    return {**totals, "commits_per_s": totals["commits"] / elapsed,
            "conflict_rate": totals["conflicts"] / attempts if attempts else 0.0,
            "latency_ms_p50": percentile(latencies, 0.5) * 1000, "latency_ms_p99": percentile(latencies, 0.99) * 1000}


def disjoint_update(writer_no: int, conn, rng) -> bool:
    conn.execute(f"UPDATE own_{writer_no} SET n = n + 1 WHERE id = ?", (rng.randrange(ROWS_PER_TABLE),))
    conn.commit()
    return True


def hot_update(writer_no: int, conn, rng) -> bool:
    conn.execute("UPDATE hot SET n = n + 1 WHERE id = ?", (rng.randrange(HOT_ROWS),))
    conn.commit()
    return True


def run_config(writers: int, seconds: float) -> list[dict]:
    console.print(f"cluster with {writers} writer(s) ...")
    with BenchCluster(readers=0, writers=writers) as cluster:
        addresses = writer_addresses(cluster)
        assert len(addresses) == writers, addresses
        setup = sixfold.connect(addresses[0], autocommit=True)
        for w in range(writers):
            setup.execute(f"CREATE TABLE own_{w} (id INTEGER PRIMARY KEY, n INTEGER)")
            setup.execute("BEGIN")
            for i in range(ROWS_PER_TABLE):
                setup.execute(f"INSERT INTO own_{w} VALUES (?, 0)", (i,))
            setup.execute("COMMIT")
        setup.execute("CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER)")
        for i in range(HOT_ROWS):
            setup.execute("INSERT INTO hot VALUES (?, 0)", (i,))
        lsn = setup.last_commit_lsn
        setup.close()
        for address in addresses:   # every writer has seen the setup before the clock starts
            probe = sixfold.connect(address, autocommit=True)
            while probe.execute("SELECT count(*) FROM hot").fetchone()[0] != HOT_ROWS:
                time.sleep(0.05)
            probe.close()
        console.print(f"  disjoint tables (setup LSN {lsn}) ...")
        disjoint = drive(addresses, seconds, disjoint_update)
        console.print("  one hot table ...")
        hot = drive(addresses, seconds, hot_update)
    return [{"writers": writers, "test": "disjoint tables", **disjoint},
            {"writers": writers, "test": "one hot table", **hot}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", default="1,2,3", help="comma-separated writer counts (1 is the reference)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/multimaster.json"))
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    for writers in [int(w) for w in args.writers.split(",")]:
        rows += run_config(writers, args.seconds)
    reference = {r["test"]: r["commits_per_s"] for r in rows if r["writers"] == 1}
    table = Table(title=f"multi-writer: commits/s (load average {load[0]:.2f} at start)")
    for col in ("test", "writers", "commits/s", "vs 1 writer", "conflict rate", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="right")
    for r in rows:
        ref = reference.get(r["test"])
        r["ratio_vs_1_writer"] = r["commits_per_s"] / ref if ref else None
        table.add_row(r["test"], str(r["writers"]), f"{r['commits_per_s']:.0f}",
                      f"{r['ratio_vs_1_writer']:.2f}x" if ref else "-", f"{r['conflict_rate']:.1%}",
                      f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p99']:.1f}", str(r["errors"]))
    Console(width=140).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"load_average": load, "seconds": args.seconds,
                                     "sessions_per_writer": SESSIONS_PER_WRITER, "rows": rows}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
