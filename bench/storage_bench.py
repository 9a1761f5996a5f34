"""Storage benchmark: quorum commits (4 of 6, fsync on) vs. fsync'd appends to one local file.

For 1, 8 and 32 concurrent committers it measures committed transactions per
second and commit latency p50/p99, first for the reference (each committer
appends a record to one local file and fsyncs it, as a single-node database
without group commit would), then for Sixfold's quorum path (six real
storage-node processes on loopback over three AZs, each commit a one-record
transaction that is acknowledged once VDL >= its LSN). Prints a table and
writes JSON.

    python bench/storage_bench.py [--seconds 5] [--committers 1,8,32] [--json bench/results/storage.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sixfold.client.quorum import ClientSettings, PageWrite, QuorumClient
from bench.cluster import BenchCluster
from sixfold.volume.records import PAGE_SIZE_BYTES, LogRecord, RecordKind, encode_record, make_delta

console = Console(stderr=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(name: str, committers: int, latencies_s: list[float], elapsed_s: float) -> dict:
    return {
        "system": name,
        "committers": committers,
        "commits": len(latencies_s),
        "commits_per_s": len(latencies_s) / elapsed_s,
        "latency_ms_p50": percentile(latencies_s, 0.50) * 1000,
        "latency_ms_p99": percentile(latencies_s, 0.99) * 1000,
    }


def _sample_record(lsn: int) -> bytes:
    """A record shaped like a single-row insert: a small delta on one page."""
    old = bytes(PAGE_SIZE_BYTES)
    new = bytearray(old)
    new[lsn % 3000: lsn % 3000 + 120] = os.urandom(120)
    delta = make_delta(old, bytes(new))
    return encode_record(LogRecord(lsn, lsn - 1, 1, lsn % 1000, RecordKind.PAGE_DELTA, 1, delta))


def run_reference(path: Path, committers: int, seconds: float) -> dict:
    """Plain fsync'd appends to one local file: write + fsync per commit, serialised."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lock = threading.Lock()
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    def committer(first_lsn: int) -> None:
        local: list[float] = []
        lsn = first_lsn
        while time.monotonic() < stop_at:
            lsn += 1
            record = _sample_record(lsn)
            started = time.perf_counter()
            with lock:
                os.write(fd, record)
                os.fsync(fd)
            local.append(time.perf_counter() - started)
        with lock:
            latencies.extend(local)

    started = time.monotonic()
    threads = [threading.Thread(target=committer, args=(i * 10_000_000,)) for i in range(committers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    os.close(fd)
    return summarize("reference: fsync'd appends, one file", committers, latencies, elapsed)


async def run_quorum(client: QuorumClient, committers: int, seconds: float, page_base: int) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def committer(i: int) -> None:
        nonlocal errors
        page = page_base + i * 37  # spread committers over pages and segments
        image = bytes(PAGE_SIZE_BYTES)
        while time.monotonic() < stop_at:
            new = bytearray(image)
            offset = (len(latencies) * 7) % 3000
            new[offset:offset + 120] = os.urandom(120)
            started = time.perf_counter()
            try:
                await client.commit([PageWrite(page, bytes(new), image)])
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            image = bytes(new)

    started = time.monotonic()
    await asyncio.gather(*(committer(i) for i in range(committers)))
    result = summarize("sixfold: quorum 4/6 over 3 AZs", committers, latencies, time.monotonic() - started)
    result["errors"] = errors
    return result


async def quorum_suite(cluster: BenchCluster, levels: list[int], seconds: float) -> list[dict]:
    # a volume of its own on the cluster's storage nodes: the cluster's writer is not involved
    client = QuorumClient(cluster.storage_infos(), writer_id="bench-writer", settings=ClientSettings(volume_id="bench"))
    await client.open_writer()
    results = []
    try:
        for n, committers in enumerate(levels):
            console.print(f"[bold]quorum[/] {committers} committer(s) for {seconds:.0f} s ...")
            results.append(await run_quorum(client, committers, seconds, page_base=n * 10_000))
    finally:
        await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--committers", default="1,8,32", help="comma-separated committer counts")
    parser.add_argument("--json", default="bench/results/storage.json", help="where to write the results")
    args = parser.parse_args()
    levels = [int(x) for x in args.committers.split(",")]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sixfold-bench-") as tmp:
        for committers in levels:
            console.print(f"[bold]reference[/] {committers} committer(s) for {args.seconds:.0f} s ...")
            results.append(run_reference(Path(tmp) / f"ref-{committers}.log", committers, args.seconds))
        console.print("sixfold up: 6 storage nodes over 3 AZs ...")
        with BenchCluster(readers=0) as cluster:
            results.extend(asyncio.run(quorum_suite(cluster, levels, args.seconds)))
    table = Table(title="Storage: committed transactions (one record each), fsync on")
    for col in ("system", "committers", "commits/s", "p50 ms", "p99 ms", "vs reference"):
        table.add_column(col, justify="right" if col != "system" else "left")
    reference = {r["committers"]: r for r in results if r["system"].startswith("reference")}
    for r in results:
        ratio = r["commits_per_s"] / reference[r["committers"]]["commits_per_s"]
        r["ratio_vs_reference"] = ratio
        table.add_row(r["system"], str(r["committers"]), f"{r['commits_per_s']:.0f}",
                      f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}", f"{ratio:.2f}x")
    Console().print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "storage", "seconds_per_run": args.seconds,
                               "cpu_count": os.cpu_count(), "results": results}, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
