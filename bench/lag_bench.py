"""Replication lag at a fixed commit rate (issue 9): open-loop load on a two-region cluster.

The load is open loop: commit i is due at start + i / rate whatever happened to the commits
before it (a pacer hands due slots to a pool of sessions; a slot waits while every session is
busy). So the offered rate is fixed and the achieved rate says whether the cluster kept up;
a commit's latency is counted from when it was due, queueing included. The sessions are
spread over --procs client processes (one Python process cannot drive hundreds of commits/s
through the GIL on this machine).

Per run it reports offered vs achieved commits/s, commit latency p50/p99 (due -> acknowledged),
and the replication lag p50/p99/max two ways:
- end to end: a commit acknowledged at the writer -> its row visible through region 2's reader
  (a poller asks `SELECT max(id)` every 5 ms; ids are assigned in commit order by the one writer);
- as the replicator measures it: the primary's storage hearing of a VDL -> that VDL on a write
  quorum of region 2, from the samples replicator-2 took during the run (`Status` fields 330-331).
And where the CPU went: CPU seconds per second of run (cores busy) per kind of process
(writer, readers, primary and secondary storage, replicator-2, the rest, the client processes).

Runs, in one invocation on one cluster: the same offered rate at the default inter-region
latency (30 ms one way, regions 1 and 2) and, as the reference, at 0 ms; and a low rate
(--reference-rate) at the default latency. --closed N1,N2,... runs closed-loop sweeps instead
(N sessions committing as fast as they can): the maximum this machine sustains.

    python bench/lag_bench.py [--rate 500] [--seconds 20] [--sessions 32] [--procs 4]
                              [--closed 8,16,32,64] [--json bench/results/lag.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing as mp
import os
import queue
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
from bench.global_bench import (  # noqa: E402
    address,
    free_bench_ports,
    percentile,
    set_latency,
    wait_for_table,
)
from sixfold.client.latency import default_one_way_ms  # noqa: E402
from sixfold.rpc import compute_pb2 as cpb  # noqa: E402
from sixfold.rpc import compute_pb2_grpc  # noqa: E402
from sixfold.runtime import procs  # noqa: E402

console = Console(stderr=True)
POLL_INTERVAL_S = 0.005
DRAIN_S = 5.0          # after the run: slots still queued are dropped, in-flight commits finish


def client_process(writer: str, start_s: float, seconds: float, rate_per_s: float, proc: int, procs: int,
                   sessions: int, results) -> None:
    """One client process: `sessions` sessions. Open loop (rate > 0): the slots i with
    i % procs == proc, each due at start + i / rate. Closed loop (rate 0): every session commits
    again as soon as the last one was acknowledged. Sends back (due s, acked s, row id) per commit."""
    slots: queue.Queue = queue.Queue()
    done: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    end_s = start_s + seconds

    def pacer() -> None:
        i = proc
        while True:
            due_s = start_s + i / rate_per_s
            if due_s >= end_s:
                break
            time.sleep(max(0.0, due_s - time.monotonic()))
            slots.put(due_s)
            i += procs
        for _ in range(sessions):
            slots.put(None)

    def session() -> None:
        conn = sixfold.connect(writer, autocommit=True, timeout_s=10)
        cur = conn.cursor()
        try:
            while True:
                if rate_per_s > 0:
                    due_s = slots.get()
                    if due_s is None or time.monotonic() > end_s + DRAIN_S:
                        break
                else:
                    due_s = time.monotonic()
                    if due_s >= end_s:
                        break
                cur.execute("INSERT INTO t(v) VALUES ('lag')")
                acked_s = time.monotonic()
                with lock:
                    done.append((due_s, acked_s, cur.lastrowid))
        except sixfold.dbapi.Error as exc:
            with lock:
                errors.append(str(exc))
        finally:
            conn.close()

    time.sleep(max(0.0, start_s - time.monotonic()))
    cpu_at_start_s = time.process_time()   # start-up (imports, connecting) left out
    threads = [threading.Thread(target=session) for _ in range(sessions)]
    if rate_per_s > 0:
        threads.append(threading.Thread(target=pacer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left = [slots.get_nowait() for _ in range(slots.qsize())]   # due, never taken (and unused end marks)
    results.put((done, errors, sum(due_s is not None for due_s in left), time.process_time() - cpu_at_start_s))


def e2e_lags_ms(commits: list[tuple[float, float, int]], seen: list[tuple[float, int]]) -> tuple[list[float], int]:
    """Per commit (due s, acked s, row id): the first poll at or after its acknowledgement that
    saw its id, minus the acknowledgement. `seen` is (polled at s, highest id visible), in poll
    order; a reader's snapshot only moves forward, so the highest id never decreases. Returns
    the lags and how many commits no poll saw."""
    times, highs = [t for t, _ in seen], [h for _, h in seen]
    lags_ms, unseen = [], 0
    for _, acked_s, row_id in commits:
        i = max(bisect.bisect_left(highs, row_id), bisect.bisect_left(times, acked_s))
        if i < len(seen) and highs[i] >= row_id:
            lags_ms.append((times[i] - acked_s) * 1000)
        else:
            unseen += 1
    return lags_ms, unseen


def cluster_cpu_s(cluster: BenchCluster) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the cluster's processes, summed per kind:
    writer, reader, primary storage, secondary storage, replicator-2, the rest."""
    root = Path(cluster.data_dir).resolve()
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not procs.belongs_to(int(entry.name), root):
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        line = procs.cmdline(int(entry.name))
        name = line.split("--node-id ", 1)[1].split()[0] if "--node-id " in line else ""
        if name.startswith(("storage-", "reader-")):   # storage-<region>-..., reader-<i> (region 1), reader-2-<i>
            region = name.split("-")[1] if name.startswith("storage-") or name.count("-") == 2 else "1"
            kind = f"{name.split('-')[0]} r{region}"
        elif name in ("writer-1", "replicator-2"):
            kind = name
        else:
            kind = "other"   # coordinators, the standby replicator-1, the supervisor
        # utime and stime are fields 14 and 15 of stat; the split starts at field 3
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / ticks_per_s
    return totals


def replicator_status(cluster: BenchCluster) -> cpb.StatusResponse:
    with grpc.insecure_channel(address(cluster, "replicator-2")) as channel:
        return compute_pb2_grpc.ComputeStub(channel).Status(cpb.StatusRequest(), timeout=5)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(cluster: BenchCluster, label: str, seconds: float, rate_per_s: float, sessions: int, procs: int) -> dict:
    """One run: the load for `seconds`, a poller on region 2's reader, the figures."""
    writer, reader = address(cluster, "writer-1"), address(cluster, "reader-2-1")
    seen: list[tuple[float, int]] = []           # (polled at, highest id visible)
    stop = threading.Event()

    def poll() -> None:
        conn = sixfold.connect(reader, autocommit=True)
        cur = conn.cursor()
        while not stop.is_set():
            highest = cur.execute("SELECT max(id) FROM t").fetchall()[0][0] or 0
            seen.append((time.monotonic(), highest))
            time.sleep(POLL_INTERVAL_S)
        conn.close()

    load_before = load_average()
    samples_before = replicator_status(cluster).region_lag_samples_total
    cpu_before = cluster_cpu_s(cluster)
    poller = threading.Thread(target=poll)
    poller.start()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_s = time.monotonic() + 2.0   # every process started and connected
    per_proc = [sessions // procs + (1 if p < sessions % procs else 0) for p in range(procs)]
    children = [ctx.Process(target=client_process, args=(writer, start_s, seconds, rate_per_s, p, procs, n, results))
                for p, n in enumerate(per_proc)]
    for c in children:
        c.start()
    commits, errors, dropped, client_cpu_s = [], [], 0, 0.0
    for _ in children:
        done, errs, left, cpu_s = results.get(timeout=seconds + DRAIN_S + 60)
        commits += done
        errors += errs
        dropped += left
        client_cpu_s += cpu_s
    cpu_after = cluster_cpu_s(cluster)
    for c in children:
        c.join(timeout=10)
    time.sleep(3)   # the tail reaches region 2
    stop.set()
    poller.join()
    status = replicator_status(cluster)
    end_s = start_s + seconds
    in_window = [c for c in commits if c[1] <= end_s]
    lags_ms, unseen = e2e_lags_ms(commits, seen)
    latencies_ms = [(acked_s - due_s) * 1000 for due_s, acked_s, _ in commits]
    samples = status.region_lag_samples_total - samples_before
    rep = list(status.region_lag_ms_recent)[-samples:] if samples > 0 else []
    return {"test": label, "offered_per_s": rate_per_s or None, "sessions": sessions, "procs": procs,
            "seconds": seconds, "achieved_per_s": round(len(in_window) / seconds, 1), "commits": len(commits),
            "dropped_slots": dropped, "errors": len(errors), "first_error": errors[0] if errors else "",
            "commit_ms_p50": round(percentile(latencies_ms, 0.5), 1),
            "commit_ms_p99": round(percentile(latencies_ms, 0.99), 1),
            "e2e_lag_ms_p50": round(percentile(lags_ms, 0.5), 1), "e2e_lag_ms_p99": round(percentile(lags_ms, 0.99), 1),
            "e2e_lag_ms_max": round(max(lags_ms, default=float("nan")), 1), "e2e_unseen": unseen,
            "replicator_lag_ms_p50": round(percentile(rep, 0.5), 1),
            "replicator_lag_ms_p99": round(percentile(rep, 0.99), 1),
            "replicator_lag_ms_max": round(max(rep, default=float("nan")), 1), "replicator_samples": len(rep),
            "cpu_cores": {kind: round((cpu_after[kind] - cpu_before.get(kind, 0.0)) / seconds, 2)
                          for kind in sorted(cpu_after)} | {"clients": round(client_cpu_s / seconds, 2)},
            "load_before": load_before, "load_after": load_average()}


def lag_runs(cluster: BenchCluster, rate_per_s: float, reference_rate_per_s: float, seconds: float, sessions: int,
             procs: int, closed_sessions: list[int]) -> list[dict]:
    """The runs on a fresh two-region cluster: the offered rate at the default latency and at
    0 ms, and the low rate at the default latency; or closed-loop runs with these session counts."""
    default_ms = default_one_way_ms(1, 2)
    setup = sixfold.connect(address(cluster, "writer-1"), autocommit=True)
    setup.cursor().execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    setup.close()
    wait_for_table(address(cluster, "reader-2-1"))
    plan: list[tuple[str, int | None, float, int]] = [   # (label, one-way ms or None = default, rate, sessions)
        (f"{rate_per_s:.0f}/s offered, {default_ms} ms one way (default)", None, rate_per_s, sessions),
        (f"{rate_per_s:.0f}/s offered, 0 ms (reference)", 0, rate_per_s, sessions),
        (f"{reference_rate_per_s:.0f}/s offered, {default_ms} ms (reference)", None, reference_rate_per_s, sessions)]
    if closed_sessions:
        plan = [(f"closed loop, {n} sessions", None, 0.0, n) for n in closed_sessions]
    results = []
    for label, one_way_ms, rate, n in plan:
        set_latency(cluster, one_way_ms)
        console.print(f"{label} for {seconds:.0f} s (load {load_average()}) ...")
        results.append(run(cluster, label, seconds, rate, n, min(procs, n)))
    set_latency(cluster, None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="offered commits per second, in total")
    parser.add_argument("--reference-rate", type=float, default=50.0, help="the low-rate reference run")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sessions", type=int, default=32, help="sessions that take the due commits")
    parser.add_argument("--procs", type=int, default=4, help="client processes the sessions are spread over")
    parser.add_argument("--closed", default="", help="closed-loop runs instead: session counts, e.g. 8,16,32,64")
    parser.add_argument("--json", type=Path, default=Path("bench/results/lag.json"))
    args = parser.parse_args()
    default_ms = default_one_way_ms(1, 2)
    storage_port, compute_port = free_bench_ports()
    with BenchCluster(readers=1, regions=2, storage_port=storage_port, compute_port=compute_port) as cluster:
        results = lag_runs(cluster, args.rate, args.reference_rate, args.seconds, args.sessions, args.procs,
                           [int(n) for n in args.closed.split(",")] if args.closed else [])
    report(results, default_ms)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"inter_region_one_way_ms_default": default_ms, "results": results}, indent=2))
    console.print(f"wrote {args.json}")


def report(results: list[dict], default_ms: int) -> None:
    table = Table(title=f"replication lag region 1 -> 2 (default inter-region latency {default_ms} ms one way)")
    for col in ("run", "offered/s", "achieved/s", "commit p50/p99 ms", "e2e lag p50/p99/max ms",
                "replicator lag p50/p99/max ms", "CPU cores busy (of 2)", "load before/after"):
        table.add_column(col)
    for r in results:
        table.add_row(r["test"], str(r["offered_per_s"] or "closed"), str(r["achieved_per_s"]),
                      f"{r['commit_ms_p50']} / {r['commit_ms_p99']}",
                      f"{r['e2e_lag_ms_p50']} / {r['e2e_lag_ms_p99']} / {r['e2e_lag_ms_max']}",
                      f"{r['replicator_lag_ms_p50']} / {r['replicator_lag_ms_p99']} / {r['replicator_lag_ms_max']}",
                      ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_cores"].items(), key=lambda kv: -kv[1])),
                      f"{r['load_before']} / {r['load_after']}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
