"""Write forwarding benchmark: a commit forwarded from a secondary region's reader vs a direct one.

In one invocation, on a two-region cluster (`sixfold up --regions 2 --write-forwarding`), three
sessions take turns (one commit each, so that all meet the same machine load) committing
single-row INSERTs (autocommit):
- direct: on the primary writer (the client sits in region 1: no inter-region hop);
- forwarded: on reader-2-1 with `eventual` consistency (the reader runs it on the primary writer,
  one inter-region round trip per statement, applied in the RPC layer: sixfold/client/latency.py);
- forwarded + read: `session` consistency, the INSERT then a SELECT of the row on the reader
  (it waits until the reader has applied the commit: read-after-write through the region's log
  shipping);
each with the default inter-region latency (regions 1 and 2: 30 ms one way) and with 0 ms (the
reference: what forwarding itself costs on this machine). Prints a table and writes JSON.

    python bench/forwarding_bench.py [--commits 200] [--json bench/results/forwarding.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sixfold  # noqa: E402
from bench.cluster import BenchCluster  # noqa: E402
from bench.global_bench import address, percentile, set_latency, wait_for_table  # noqa: E402
from sixfold.client.latency import default_one_way_ms  # noqa: E402

console = Console(stderr=True)
# ports of its own: another bench (default ports 17100/17200) may run at the same time
BENCH_STORAGE_PORT, BENCH_COMPUTE_PORT = 18300, 18400


def commit_once(conn, value: str, read_back: bool) -> float:
    """Milliseconds for one INSERT (and, read_back, a SELECT of it on the same connection)."""
    cur = conn.cursor()
    started = time.perf_counter()
    cur.execute("INSERT INTO t (v) VALUES (?)", (value,))
    if read_back:
        rows = cur.execute("SELECT count(*) FROM t WHERE v = ?", (value,)).fetchall()
        assert rows == [(1,)], f"session consistency: {value} not read back ({rows})"
    return (time.perf_counter() - started) * 1000


def run(cluster: BenchCluster, commits: int, latency_label: str) -> list[dict]:
    """The kinds take turns, one commit each, so that all of them meet the same machine load."""
    writer, reader = address(cluster, "writer-1"), address(cluster, "reader-2-1")
    kinds = (("direct commit (writer)", sixfold.connect(writer, autocommit=True), False),
             ("forwarded commit (eventual)",
              sixfold.connect(reader, autocommit=True, replica_read_consistency="eventual"), False),
             ("forwarded commit + read it back (session)",
              sixfold.connect(reader, autocommit=True, replica_read_consistency="session"), True))
    latencies_ms: dict[str, list[float]] = {kind: [] for kind, _, _ in kinds}
    try:
        for i in range(-10, commits):   # 10 rounds to warm up, not counted
            for kind, conn, read_back in kinds:
                elapsed_ms = commit_once(conn, f"{latency_label}-{kind}-{i}", read_back)
                if i >= 0:
                    latencies_ms[kind].append(elapsed_ms)
    finally:
        for _, conn, _ in kinds:
            conn.close()
    return [{"inter_region": latency_label, "kind": kind, "commits": commits,
             "p50_ms": round(percentile(values, 0.5), 1), "p99_ms": round(percentile(values, 0.99), 1)}
            for kind, values in latencies_ms.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=200, help="commits per kind and latency")
    parser.add_argument("--json", type=Path, default=Path("bench/results/forwarding.json"))
    args = parser.parse_args()
    results = []
    with BenchCluster(readers=1, regions=2, up_flags=("--write-forwarding",), storage_port=BENCH_STORAGE_PORT,
                      compute_port=BENCH_COMPUTE_PORT) as cluster:
        setup = sixfold.connect(address(cluster, "writer-1"), autocommit=True)
        setup.cursor().execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        setup.close()
        wait_for_table(address(cluster, "reader-2-1"))
        default_ms = default_one_way_ms(1, 2)
        console.print(f"{default_ms} ms one way between the regions (default):")
        results += run(cluster, args.commits, f"{default_ms} ms one way (default)")
        set_latency(cluster, 0)
        console.print("0 ms between the regions (reference):")
        results += run(cluster, args.commits, "0 ms (reference)")
        set_latency(cluster, None)
    table = Table(title=f"write forwarding, region 2 -> region 1, {args.commits} sequential commits per row")
    for col in ("inter-region latency", "what", "p50 ms", "p99 ms"):
        table.add_column(col)
    for r in results:
        table.add_row(r["inter_region"], r["kind"], str(r["p50_ms"]), str(r["p99_ms"]))
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"commits": args.commits, "results": results}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
