"""Failover benchmark: SIGKILL of the writer under a steady write load through the writer endpoint.

A local cluster (`sixfold up`: six storage nodes, a writer, two readers, three
coordinators, the supervisor) runs a workload that inserts unique ids through the
router's writer endpoint, one at a time, reconnecting on any error. Each trial
SIGKILLs the current writer (the supervisor brings it back, as a reader) and
measures the time from the kill to the first committed write after it (Aurora's
definition of failover time, seen by a client), then checks that every
acknowledged write is there (lost must be 0). Prints a table with p50/p99 and
writes JSON.

    python bench/failover_bench.py [--trials 10] [--settle-s 3] [--json bench/results/failover.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
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

RECOVERY_WAIT_S_MAX = 60.0


def _status(data_dir: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "sixfold.cli", "status", "--data-dir", data_dir, "--json"],
                          capture_output=True, text=True)
    return json.loads(done.stdout)


class Load:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.acked: list[int] = []
        self.ack_times: list[tuple[float, float]] = []   # (sent, acknowledged)
        self.next_id = 1
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = sixfold.connect(self.endpoint, autocommit=True, timeout_s=10)
                row_id, self.next_id = self.next_id, self.next_id + 1
                started = time.monotonic()
                conn.execute("INSERT INTO acked (id) VALUES (?)", (row_id,))
                self.acked.append(row_id)
                self.ack_times.append((started, time.monotonic()))
            except sixfold.dbapi.Error:
                conn = None
                time.sleep(0.01)

    def first_ack_after(self, t: float) -> float | None:
        """Seconds from t to the first acknowledgement of a write *sent* after t (an ack of an
        earlier write can still arrive from the old writer's socket buffer after a SIGKILL)."""
        deadline = time.monotonic() + RECOVERY_WAIT_S_MAX
        while time.monotonic() < deadline:
            later = [acked for started, acked in self.ack_times[-1000:] if started > t]
            if later:
                return later[0] - t
            time.sleep(0.01)
        return None


def lost_writes(endpoint: str, acked: list[int]) -> int:
    with sixfold.connect(endpoint, autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM acked").fetchall()}
    return len(set(acked) - present)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--settle-s", type=float, default=3.0, help="steady load before each kill")
    parser.add_argument("--json", default="bench/results/failover.json", help="where to write the results")
    args = parser.parse_args()
    console = Console()
    trials = []
    with BenchCluster(readers=2) as cluster:
        endpoints = json.loads(subprocess.run([sys.executable, "-m", "sixfold.cli", "endpoints", "--data-dir",
                                               cluster.data_dir, "--json"], capture_output=True, text=True).stdout)
        writer_endpoint = next(e["address"] for e in endpoints if e["name"] == "writer")
        with sixfold.connect(writer_endpoint, autocommit=True) as conn:
            conn.execute("CREATE TABLE acked (id INTEGER PRIMARY KEY)")
        load = Load(writer_endpoint)
        load.thread.start()
        for trial in range(1, args.trials + 1):
            # wait until every instance is back and healthy, then a steady load
            deadline = time.monotonic() + RECOVERY_WAIT_S_MAX
            while True:
                nodes = _status(cluster.data_dir)
                compute = [n for n in nodes if n["kind"] == "compute"]
                if all(n["health"] == "ok" for n in compute) and sum(n["role"] == "writer" for n in compute) == 1:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"trial {trial}: the cluster did not heal: {compute}")
                time.sleep(0.2)
            time.sleep(args.settle_s)
            writer = next(n for n in compute if n["role"] == "writer")
            acked_before = len(load.acked)
            killed_at = time.monotonic()
            os.kill(writer["pid"], signal.SIGKILL)
            recovery_s = load.first_ack_after(killed_at)
            if recovery_s is None:
                raise SystemExit(f"trial {trial}: no write committed within {RECOVERY_WAIT_S_MAX} s of the kill")
            time.sleep(0.5)
            lost = lost_writes(writer_endpoint, list(load.acked))
            trials.append({"trial": trial, "killed": writer["name"], "failover_s": round(recovery_s, 3),
                           "acked_before_kill": acked_before, "lost": lost})
            console.print(f"trial {trial}: killed {writer['name']}, first committed write after "
                          f"{recovery_s:.2f} s, lost {lost}")
        load.stop.set()
        load.thread.join(15)
    times = [t["failover_s"] for t in trials]
    summary = {"trials": len(trials), "failover_s_p50": round(percentile(times, 0.5), 3),
               "failover_s_p99": round(percentile(times, 0.99), 3), "failover_s_mean": round(statistics.mean(times), 3),
               "lost_total": sum(t["lost"] for t in trials), "acked_total": len(load.acked)}
    table = Table(title="writer SIGKILL under load: kill -> first committed write through the writer endpoint")
    for col in ("trials", "p50 s", "p99 s", "mean s", "acked writes", "lost"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["trials"]), f"{summary['failover_s_p50']:.2f}", f"{summary['failover_s_p99']:.2f}",
                  f"{summary['failover_s_mean']:.2f}", str(summary["acked_total"]), str(summary["lost_total"]))
    console.print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "failover", "summary": summary, "trials": trials}, indent=2) + "\n")
    console.print(f"wrote {out}")
    if summary["lost_total"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
