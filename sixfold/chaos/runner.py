"""One chaos run: clients + nemesis for `time_s`, heal, wait for health, final read, check, report."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Callable

from sixfold import dbapi
from sixfold.chaos import nemesis as nemesis_mod
from sixfold.chaos import report
from sixfold.chaos.history import FAIL, INFO, INVOKE, History
from sixfold.chaos.workloads import WORKLOADS, Unknown
from sixfold.runtime import local
from sixfold.runtime.layout import ClusterDir

RECOVERY_TIMEOUT_S = 90.0
FINAL_READ_TIMEOUT_S = 30.0
CLOSE_RETRY_TIMEOUT_S = 1.0


def _quiet(_: str) -> None:
    pass


def run(cdir: ClusterDir, workload: str, faults: list, time_s: float, seed: int, concurrency: int,
        out_dir: Path, op_timeout_s: float = 5.0, schedule: str = "random", interval_s: float = 4.0,
        duration_s: float = 5.0, pin_writer_clients: int = 0, progress: Callable[[str], None] = _quiet) -> dict:
    """pin_writer_clients: that many of the `concurrency` clients send every op to the instance
    that is the writer now, by its own address (never through the router), and reconnect to that
    same address, whatever it becomes: so a writer that was failed over keeps clients."""
    out_dir.mkdir(parents=True, exist_ok=True)
    local.require_running(cdir)
    rng = random.Random(seed)
    suffix = f"{seed}_{int(time.time())}"
    w = WORKLOADS[workload](suffix, rng)
    addresses = {name: local.resolve_endpoint(cdir, name)[0] for name in ("writer", "reader")}
    pinned = None
    if pin_writer_clients:
        writer = nemesis_mod.current_writer(cdir)
        pinned, addresses[writer.name] = writer.name, writer.address
    history = History(out_dir / "history.jsonl")
    try:
        progress(f"setting up {w.name} (table suffix {suffix}) through the writer endpoint {addresses['writer']}")
        _retry(lambda: _with_conn(addresses["writer"], op_timeout_s, w.setup), 30.0)
        deadline = time.monotonic() + time_s
        nem = nemesis_mod.Nemesis(cdir, faults, history, seed, interval_s, duration_s, schedule)
        threads = [threading.Thread(target=_client, args=(w, history, addresses, p, concurrency, deadline,
                                                          op_timeout_s, pinned if p < pin_writer_clients else None),
                                    daemon=True, name=f"chaos-client-{p}")
                   for p in range(concurrency)]
        nem_thread = threading.Thread(target=nem.run, args=(deadline,), daemon=True, name="chaos-nemesis")
        if pinned:
            progress(f"{pin_writer_clients} client(s) pinned to {pinned} at {addresses[pinned]}")
        progress(f"running {concurrency} clients for {time_s:.0f} s; nemesis {','.join(f.name for f in faults)} "
                 f"({schedule}, seed {seed})")
        for t in threads + [nem_thread]:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + op_timeout_s * 3 + 5)
        nem.stop_event.set()
        nem_thread.join(nemesis_mod.HEAL_TIMEOUT_S + 10)
        progress(f"{nem.count} fault(s) done; healing everything and waiting for the cluster to be healthy")
        healed = nemesis_mod.heal_everything(cdir, history)
        recovery_s, unhealthy = _wait_healthy(cdir, addresses["writer"], op_timeout_s)
        progress("final read through the writer endpoint")
        final, final_error = None, None
        try:
            final = _retry(lambda: _with_conn(addresses["writer"], op_timeout_s, w.final_read), FINAL_READ_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - reported, and the run fails
            final_error = f"{type(exc).__name__}: {exc}"
    finally:
        history.close()
    ops = history.ops
    if final is not None:
        verdict = w.check(ops, final)
    else:
        verdict = {"valid": False, "anomaly_types": ["final-read-failed"], "counts": {"final-read-failed": 1},
                   "anomalies": {"final-read-failed": [final_error]}}
    results = {
        "workload": w.describe(), "nemesis": [f.name for f in faults], "schedule": schedule, "seed": seed,
        "time_s": time_s, "concurrency": concurrency, "valid": verdict["valid"] is True,
        "checker": verdict, "nemesis_errors": nem.errors, "faults": nem.count, "heal": healed,
        "recovery_s": recovery_s, "unhealthy_after_heal": unhealthy, "final_read": final,
        "endpoints": addresses, "out_dir": str(out_dir),
        "pinned": {"instance": pinned, "clients": pin_writer_clients} if pinned else None,
    }
    (out_dir / "verdicts.json").write_text(json.dumps(results, indent=2, default=str))
    results["summary"] = report.write(out_dir, ops, results)
    return results


def _with_conn(address: str, timeout_s: float, fn):
    conn = dbapi.connect(address, timeout_s=timeout_s)
    try:
        return fn(conn)
    finally:
        conn.close()


def _retry(fn, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except dbapi.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_healthy(cdir: ClusterDir, writer_address: str, timeout_s: float) -> tuple[float, list[str]]:
    """Until every node reports ok and the writer endpoint commits; (seconds taken, nodes not ok)."""
    start = time.monotonic()
    unhealthy: list[str] = []
    while time.monotonic() - start < RECOVERY_TIMEOUT_S:
        unhealthy = [n["name"] for n in local.status(cdir)["nodes"] if n["health"] != "ok"]
        if not unhealthy:
            try:
                _with_conn(writer_address, timeout_s, lambda c: c.execute("SELECT 1").fetchall())
                return round(time.monotonic() - start, 3), []
            except dbapi.Error:
                pass
        time.sleep(0.5)
    return round(time.monotonic() - start, 3), unhealthy


def _client(w, history: History, addresses: dict, process: int, concurrency: int, deadline: float,
            op_timeout_s: float, pinned_to: str | None = None) -> None:
    """One client thread. After an op of unknown outcome it continues as a new process (the old
    one may still be in flight, as Jepsen does), on a new connection. A pinned client sends
    every op to the instance `pinned_to`."""
    conns: dict[str, dbapi.Connection] = {}
    left_open: list[tuple[str, str]] = []   # (address, session id) of sessions a fault kept us from closing
    while time.monotonic() < deadline:
        # a session left open mid-transaction would hold the writer's lock on that node for good
        left_open = [s for s in left_open if not dbapi.close_session(*s, timeout_s=CLOSE_RETRY_TIMEOUT_S)]
        f, value = w.next_op()
        endpoint = pinned_to or w.endpoint_for(f, value)
        history.append(INVOKE, f, process, value, endpoint=endpoint)
        outcome, result, error = INFO, value, None
        try:
            if endpoint not in conns:
                conns[endpoint] = dbapi.connect(addresses[endpoint], timeout_s=op_timeout_s)
            outcome, result = w.apply(conns[endpoint], f, value)
        except Unknown as exc:
            error = str(exc)
        except dbapi.Error as exc:
            outcome, error = FAIL, f"{type(exc).__name__}: {exc}"   # before COMMIT: nothing applied
        except Exception as exc:  # noqa: BLE001 - a bug of ours: unknown, and recorded
            error = f"{type(exc).__name__}: {exc}"
        if outcome == INFO and w.is_read_only(f, value):
            outcome = FAIL    # a read changes nothing
        history.append(outcome, f, process, result if outcome != INFO else value, error=error)
        if error:
            conn = conns.pop(endpoint, None)
            if conn is not None:
                conn.close()
                if conn.session_left_open and pinned_to:   # (through the router it may reach another node)
                    left_open.append((conn.address, conn.session_id))
            if outcome == INFO:
                process += concurrency
            else:
                time.sleep(0.05)   # a refused op comes back at once: do not spin
    for conn in conns.values():
        conn.close()
