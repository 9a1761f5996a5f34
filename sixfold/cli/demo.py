"""`sixfold demo`: the whole story in about a minute, on one machine.

1. bring up a cluster (six storage nodes over three AZs, a writer in AZ 1,
   readers in AZs 2 and 3) in a fresh data dir, on free ports;
2. run a workload: writer threads insert rows (each an autocommit transaction),
   reader threads read from the readers; a live display shows commits/s, reads/s,
   errors, replica lag and how many nodes are up;
3. kill AZ 3 (its two storage nodes and its reader): writes go on (4 of 6 copies
   is a write quorum) and reads go on;
4. kill one more storage node (AZ 2): writes stop (3 of 6 is no write quorum,
   as it must be) but reads go on (a read needs one copy that is complete);
5. heal (the killed nodes restart and catch up by gossip): writes resume;
6. check that every acknowledged write is there, print a report, tear down.

The cluster is always torn down, even on Ctrl-C or a failure.
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

import sixfold
from sixfold.cli.common import CONTEXT, CliError, err, json_option, out, print_json
from sixfold.dbapi import CommitUnknownError, Error as DbError, OperationalError
from sixfold.runtime import local, procs
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.probe import probe_compute
from sixfold.runtime.settings import BY_NAME
from sixfold.runtime.topology import COMPUTE, READER, STORAGE, WRITER, ClusterSpec, NodeSpec, listen_addresses, nodes_of

WRITER_THREADS = 2
READER_THREADS = 2
PORT_TRIES_MAX = 20
OP_TIMEOUT_S = 5.0
EVENTS_SHOWN = 8


def pick_ports(spec: ClusterSpec) -> ClusterSpec:
    """The default ports if free (a cluster started by `sixfold up` may hold them), else random free ones."""
    rng = random.Random()
    candidate = spec
    for _ in range(PORT_TRIES_MAX):
        if not any(procs.port_taken(host, port) for host, port in listen_addresses(nodes_of(candidate))):
            return candidate
        base = rng.randrange(20_000, 40_000, 2)
        candidate = ClusterSpec.from_dict({**spec.to_dict(), "storage_port": base, "compute_port": base + 1})
    raise CliError(f"could not find free ports for the demo after {PORT_TRIES_MAX} tries; "
                   "stop other clusters (`sixfold down`) and try again")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phase:
    name: str
    what: str
    started: float
    ended: float | None = None
    commits: int = 0
    write_errors: int = 0
    reads: int = 0
    read_errors: int = 0
    commit_times: list[float] = field(default_factory=list)
    lag_p99_ms: list[float] = field(default_factory=list)

    def duration_s(self, now: float) -> float:
        return (self.ended or now) - self.started

    def longest_write_gap_s(self, now: float) -> float:
        """The longest time in this phase with no commit acknowledged (edges count)."""
        points = [self.started, *self.commit_times, self.ended or now]
        return max(b - a for a, b in zip(points, points[1:]))


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phases: list[Phase] = []
        self.acked: set[tuple[int, int]] = set()
        self.unknown: set[tuple[int, int]] = set()
        self.error_kinds: dict[str, int] = {}
        self.read_error_kinds: dict[str, int] = {}
        self.lag_p50_ms: float | None = None
        self.lag_p99_ms: float | None = None
        self.last_commit: float | None = None
        self.events: list[tuple[float, str]] = []
        self.on_event = None  # called with each event line (the plain display prints them)
        self.t0 = time.monotonic()

    @property
    def phase(self) -> Phase:
        return self.phases[-1]

    def begin(self, name: str, what: str) -> None:
        with self.lock:
            now = time.monotonic()
            if self.phases:
                self.phases[-1].ended = now
            self.phases.append(Phase(name, what, now))
            self.event(f"phase: {name} — {what}")

    def end(self) -> None:
        with self.lock:
            if self.phases and self.phases[-1].ended is None:
                self.phases[-1].ended = time.monotonic()

    def event(self, text: str) -> None:
        at = time.monotonic() - self.t0
        self.events.append((at, text))
        if self.on_event is not None:
            self.on_event(f"{at:6.1f} s  {text}")

    def commit(self, key: tuple[int, int]) -> None:
        now = time.monotonic()
        with self.lock:
            self.acked.add(key)
            self.last_commit = now
            if self.phases:
                self.phase.commits += 1
                self.phase.commit_times.append(now)

    def write_error(self, key: tuple[int, int] | None, kind: str) -> None:
        with self.lock:
            if key is not None:
                self.unknown.add(key)
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
            if self.phases:
                self.phase.write_errors += 1

    def read(self, error_kind: str | None = None) -> None:
        with self.lock:
            if error_kind is not None:
                self.read_error_kinds[error_kind] = self.read_error_kinds.get(error_kind, 0) + 1
            if self.phases:
                if error_kind is None:
                    self.phase.reads += 1
                else:
                    self.phase.read_errors += 1

    def rate(self, attr: str, window_s: float = 2.0) -> float:
        """Events per second in the current phase over the last window (commits only are timed)."""
        if not self.phases:
            return 0.0
        now = time.monotonic()
        if attr == "commits":
            times = self.phase.commit_times
            recent = 0
            for t in reversed(times):
                if now - t > window_s:
                    break
                recent += 1
            return recent / min(window_s, max(0.1, now - self.phase.started))
        return getattr(self.phase, attr) / max(0.1, now - self.phase.started)


class Workload:
    def __init__(self, writer: NodeSpec, readers: list[NodeSpec], stats: Stats) -> None:
        self.writer, self.readers, self.stats = writer, readers, stats
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(WRITER_THREADS):
            self.threads.append(threading.Thread(target=self._write_loop, args=(i,), daemon=True, name=f"w{i}"))
        for i in range(READER_THREADS):
            self.threads.append(threading.Thread(target=self._read_loop, args=(i,), daemon=True, name=f"r{i}"))
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(OP_TIMEOUT_S + 2)

    def _connect(self, address: str):
        return sixfold.connect(address, autocommit=True, timeout_s=OP_TIMEOUT_S)

    def _write_loop(self, thread_no: int) -> None:
        conn = None
        seq = 0
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = self._connect(self.writer.address)
                except DbError:
                    self.stats.write_error(None, "connect")
                    self.stop.wait(0.2)
                    continue
            seq += 1
            key = (thread_no, seq)
            try:
                conn.execute("INSERT INTO demo_events(thread, seq, unix_s) VALUES (?, ?, ?)",
                             (thread_no, seq, time.time()))
                self.stats.commit(key)
            except CommitUnknownError:
                self.stats.write_error(key, "commit_unknown")
            except OperationalError as exc:
                self.stats.write_error(key, getattr(exc, "code", "") or "connection")
                conn.close()
                conn = None
                self.stop.wait(0.2)
            except DbError as exc:
                self.stats.write_error(key, getattr(exc, "code", "") or type(exc).__name__)
                self.stop.wait(0.05)
        if conn is not None:
            conn.close()

    def _read_loop(self, thread_no: int) -> None:
        targets = [r.address for r in self.readers] or [self.writer.address]
        index = thread_no % len(targets)
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self._connect(targets[index])
                conn.execute("SELECT max(id), count(*) FROM demo_events WHERE id > "
                             "(SELECT coalesce(max(id), 0) - 100 FROM demo_events)").fetchall()
                self.stats.read()
            except DbError as exc:
                self.stats.read(getattr(exc, "code", "") or type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                index = (index + 1) % len(targets)  # the reader endpoint would move us: do it by hand
                self.stop.wait(0.1)
        if conn is not None:
            conn.close()


class Monitor(threading.Thread):
    """Polls the readers' replica lag and counts live nodes, twice a second."""

    def __init__(self, cdir: ClusterDir, nodes: list[NodeSpec], stats: Stats) -> None:
        super().__init__(daemon=True, name="monitor")
        self.cdir, self.nodes, self.stats = cdir, nodes, stats
        self.stop = threading.Event()
        self.up_counts = (0, 0, 0, 0)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            state = local.load(self.cdir) or {"nodes": []}
            live = {n["name"] for n in state["nodes"] if procs.belongs_to(n.get("pid"), self.cdir.root)}
            storage = [n for n in self.nodes if n.kind == STORAGE]
            compute = [n for n in self.nodes if n.kind == COMPUTE]
            self.up_counts = (sum(n.name in live for n in storage), len(storage),
                              sum(n.name in live for n in compute), len(compute))
            lags = [probe_compute(n.address, 0.4) for n in self.nodes if n.role == READER and n.name in live]
            lags = [r for r in lags if r.get("reachable")]
            if lags:
                self.stats.lag_p50_ms = max(r["replica_lag_ms_p50"] for r in lags)
                self.stats.lag_p99_ms = max(r["replica_lag_ms_p99"] for r in lags)
                with self.stats.lock:
                    if self.stats.phases:
                        self.stats.phase.lag_p99_ms.append(self.stats.lag_p99_ms)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(stats: Stats, monitor: Monitor, step: str) -> Group:
    now = time.monotonic()
    phase = stats.phases[-1] if stats.phases else None
    s_up, s_all, c_up, c_all = monitor.up_counts
    since = "-" if stats.last_commit is None else f"{now - stats.last_commit:.1f} s ago"
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("step", f"{step}  [dim](t = {now - stats.t0:.0f} s)[/dim]")
    if phase:
        table.add_row("writes", f"{phase.commits} commits, {stats.rate('commits'):.0f}/s now, "
                                f"{phase.write_errors} errors; last commit {since}")
        table.add_row("reads", f"{phase.reads} reads, {stats.rate('reads'):.0f}/s, {phase.read_errors} errors")
    table.add_row("replica lag", f"p50 {_fmt_ms(stats.lag_p50_ms)} ms, p99 {_fmt_ms(stats.lag_p99_ms)} ms")
    table.add_row("nodes up", f"storage {s_up}/{s_all} (a write needs 4 of 6 copies), compute {c_up}/{c_all}")
    events = Text("\n".join(f"{t:6.1f} s  {text}" for t, text in stats.events[-EVENTS_SHOWN:]), style="dim")
    return Group(table, events)


def _longest_gap_s(stats: Stats, now: float) -> float:
    """The longest time with no commit acknowledged, over the whole run."""
    if not stats.phases:
        return 0.0
    points = [stats.phases[0].started] + [t for p in stats.phases for t in p.commit_times]
    points.append(stats.phases[-1].ended or now)
    return max(b - a for a, b in zip(points, points[1:]))


def report_of(stats: Stats, verify: dict, spec: ClusterSpec, heal_to_first_commit_s: float | None) -> dict:
    now = time.monotonic()
    phases = []
    for p in stats.phases:
        duration = p.duration_s(now)
        phases.append({
            "name": p.name, "what": p.what, "duration_s": round(duration, 2), "commits": p.commits,
            "commits_per_s": round(p.commits / max(duration, 1e-9), 1), "write_errors": p.write_errors,
            "reads": p.reads, "reads_per_s": round(p.reads / max(duration, 1e-9), 1), "read_errors": p.read_errors,
            "longest_write_gap_s": round(p.longest_write_gap_s(now), 3),
            "replica_lag_ms_p99": _percentile(p.lag_p99_ms, 0.5),
        })
    by_name = {p["name"]: p for p in phases}
    az_down = by_name.get("az-down", {})
    az_plus_one = by_name.get("az-plus-one-down", {})
    checks = {
        "writes_went_on_with_an_az_down": az_down.get("commits", 0) > 0 and az_down.get("longest_write_gap_s", 99) < 5,
        "reads_went_on_with_an_az_and_one_more_node_down": az_plus_one.get("reads", 0) > 0,
        "writes_stopped_without_a_write_quorum": az_plus_one.get("longest_write_gap_s", 0) > 1,
        "writes_resumed_after_heal": by_name.get("healed", {}).get("commits", 0) > 0,
        "no_acknowledged_write_lost": verify.get("acknowledged_missing", 1) == 0,
    }
    return {
        "cluster": {"storage_nodes": spec.azs * spec.storage_per_az, "azs": spec.azs, "readers": spec.readers},
        "phases": phases,
        "commits": sum(p["commits"] for p in phases),
        "write_errors": sum(p["write_errors"] for p in phases),
        "write_errors_by_kind": dict(stats.error_kinds),
        "reads": sum(p["reads"] for p in phases),
        "read_errors": sum(p["read_errors"] for p in phases),
        "read_errors_by_kind": dict(stats.read_error_kinds),
        "replica_lag_ms_p50": stats.lag_p50_ms, "replica_lag_ms_p99": stats.lag_p99_ms,
        "time_without_writes_s": round(_longest_gap_s(stats, now), 2),
        "heal_to_first_commit_s": None if heal_to_first_commit_s is None else round(heal_to_first_commit_s, 2),
        "verify": verify,
        "checks": checks,
        "ok": all(checks.values()),
    }


def print_report(report: dict) -> None:
    table = Table(title="Sixfold demo report", title_justify="left", pad_edge=False)
    for col in ("phase", "what", "s", "commits", "commits/s", "write errors", "reads", "read errors",
                "longest write gap s", "lag p99 ms"):
        table.add_column(col, justify="left" if col in ("phase", "what") else "right")
    for p in report["phases"]:
        table.add_row(p["name"], p["what"], f"{p['duration_s']:.1f}", str(p["commits"]), f"{p['commits_per_s']:.0f}",
                      str(p["write_errors"]), str(p["reads"]), str(p["read_errors"]),
                      f"{p['longest_write_gap_s']:.2f}", _fmt_ms(p["replica_lag_ms_p99"]))
    out.print(table)
    v = report["verify"]
    out.print(f"commits {report['commits']}, write errors {report['write_errors']} "
              f"{report['write_errors_by_kind'] or ''}, reads {report['reads']}, read errors {report['read_errors']} "
              f"{report['read_errors_by_kind'] or ''}")
    resumed = report["heal_to_first_commit_s"]
    out.print(f"time without writes: {report['time_without_writes_s']:.1f} s (from the loss of the write quorum "
              f"until writes resumed, {'-' if resumed is None else f'{resumed:.1f}'} s after the heal began)")
    out.print(f"acknowledged writes checked: {v.get('acknowledged', 0)}, missing: {v.get('acknowledged_missing')}; "
              f"unknown outcomes: {v.get('unknown', 0)} ({v.get('unknown_present', 0)} committed after all)")
    for name, ok in report["checks"].items():
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        out.print(f" {mark} {name.replace('_', ' ')}")


def wait_for_table(reader: NodeSpec, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    conn = sixfold.connect(reader.address, autocommit=True, timeout_s=OP_TIMEOUT_S)
    try:
        while True:
            try:
                conn.execute("SELECT count(*) FROM demo_events")
                return
            except DbError:
                if time.monotonic() > deadline:
                    raise CliError(f"{reader.name} did not see the demo table within {timeout_s:.0f} s; "
                                   "is it following the writer? (see its node.log)") from None
                time.sleep(0.05)
    finally:
        conn.close()


def verify_writes(writer: NodeSpec, stats: Stats) -> dict:
    conn = sixfold.connect(writer.address, autocommit=True, timeout_s=30)
    try:
        rows = conn.execute("SELECT thread, seq FROM demo_events").fetchall()
    finally:
        conn.close()
    present = {(t, s) for t, s in rows}
    missing = stats.acked - present
    return {"acknowledged": len(stats.acked), "acknowledged_missing": len(missing),
            "missing_sample": sorted(missing)[:10], "rows": len(present), "unknown": len(stats.unknown),
            "unknown_present": len(stats.unknown & present)}


@click.command("demo", context_settings=CONTEXT)
@click.option("--data-dir", type=BY_NAME["data_dir"].type, default=None,
              help="Run the demo cluster here (kept afterwards) [default: a temporary dir, deleted afterwards].")
@click.option("--phase-s", type=click.FloatRange(2, 600), default=8.0, show_default=True,
              help="Seconds each phase runs.")
@json_option
def demo(data_dir: Path | None, phase_s: float, as_json: bool) -> None:
    """The story in one command: up, workload, lose an AZ, lose one more node, heal, report, down.

    Takes about a minute. Exit code 0 when every check holds (writes go on with an
    AZ down, reads go on with an AZ and one more node down, no acknowledged write is
    lost), 1 otherwise. --json prints the report as JSON on stdout.
    """
    temporary = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="sixfold-demo-")) if temporary else data_dir
    cdir = ClusterDir.at(root)
    if not temporary and cdir.state_file.exists():
        raise CliError(f"{cdir.root} already holds a cluster; the demo needs a fresh --data-dir "
                       "(or none, for a temporary one)", 2)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = _run(cdir, phase_s, as_json)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: tearing the cluster down[/yellow]")
        raise SystemExit(130)
    except local.RuntimeFailure as exc:
        raise CliError(f"the demo failed: {exc}", exc.exit_code) from None
    except DbError as exc:
        raise CliError(f"the demo failed: a statement it needed failed: {exc}") from None
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        try:
            local.down(cdir, purge=temporary)
        except local.RuntimeFailure as exc:
            err.print(f"[red]teardown: {exc}[/red]")
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        print_json(report)
    else:
        print_report(report)
        out.print("[dim]cluster stopped" + ("" if temporary else f"; data kept in {cdir.root}") + "[/dim]")
    if not report["ok"]:
        raise SystemExit(1)


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def _run(cdir: ClusterDir, phase_s: float, as_json: bool) -> dict:
    spec = pick_ports(ClusterSpec(readers=2))
    tuning = {"commit_timeout_s": 2.0, "start_timeout_s": 90.0, "stop_timeout_s": 10.0, "gossip_interval_ms": 100}
    stats = Stats()
    if not err.is_terminal:
        stats.on_event = err.print
    step = ["starting the cluster"]
    with err.status("starting the cluster: 6 storage nodes over 3 AZs, a writer, 2 readers") as spinner:
        result = local.up(cdir, spec, tuning, explicit=set(),
                          progress=lambda m: spinner.update(f"starting the cluster: {m}"))
    stats.event(f"cluster up in {result.elapsed_s:.1f} s ({cdir.root})")
    nodes = result.nodes
    writer = next(n for n in nodes if n.role == WRITER)
    readers = [n for n in nodes if n.role == READER]
    conn = sixfold.connect(writer.address, autocommit=True, timeout_s=30)
    conn.execute("CREATE TABLE IF NOT EXISTS demo_events(id INTEGER PRIMARY KEY, thread INTEGER NOT NULL, "
                 "seq INTEGER NOT NULL, unix_s REAL NOT NULL)")
    conn.close()
    for reader in readers:  # the table must have reached every reader before reads start
        wait_for_table(reader)
    workload = Workload(writer, readers, stats)
    monitor = Monitor(cdir, nodes, stats)
    az3 = [n for n in nodes if n.az == 3]
    extra = next(n for n in nodes if n.kind == STORAGE and n.az == 2)
    heal_to_first_commit_s = None

    def set_step(text: str) -> None:
        step[0] = text

    live = Live(render(stats, monitor, step[0]), console=err, refresh_per_second=4, transient=False,
                get_renderable=lambda: render(stats, monitor, step[0])) if err.is_terminal else None
    ticker_stop = threading.Event()

    def ticker() -> None:  # for pipes and logs: a plain line every two seconds
        while not ticker_stop.wait(2.0):
            p = stats.phases[-1] if stats.phases else None
            if p:
                err.print(f"{time.monotonic() - stats.t0:6.1f} s  {p.name:18} commits {p.commits:6} "
                          f"({stats.rate('commits'):.0f}/s) write errors {p.write_errors:4}  reads {p.reads:6} "
                          f"read errors {p.read_errors:4}  lag p99 {_fmt_ms(stats.lag_p99_ms)} ms  "
                          f"storage up {monitor.up_counts[0]}/{monitor.up_counts[1]}")

    ticker_thread = threading.Thread(target=ticker, daemon=True) if live is None else None
    try:
        if live:
            live.start()
        elif ticker_thread:
            ticker_thread.start()
        monitor.start()
        workload.start()
        stats.begin("baseline", f"all {len(nodes)} nodes up")
        set_step("baseline: every node up")
        time.sleep(phase_s)

        set_step("killing AZ 3")
        stats.begin("az-down", "AZ 3 down: 4 of 6 copies")
        local.chaos(cdir, "kill", az3)
        stats.event(f"killed AZ 3: {', '.join(n.name for n in az3)}")
        set_step("AZ 3 down: writes must go on (4 of 6 copies is a write quorum)")
        time.sleep(phase_s + 2)

        set_step(f"killing {extra.name}")
        stats.begin("az-plus-one-down", f"AZ 3 + {extra.name} down: 3 of 6")
        local.chaos(cdir, "kill", [extra])
        stats.event(f"killed {extra.name}: 3 of 6 copies left")
        set_step("AZ 3 + 1 down: no write quorum, so writes stop; reads must go on")
        time.sleep(phase_s)

        set_step("healing: restarting the killed nodes")
        heal_started = time.monotonic()
        stats.begin("healed", "nodes restarted, catching up")
        local.chaos(cdir, "heal", nodes, timeout_s=60)
        stats.event(f"healed in {time.monotonic() - heal_started:.1f} s: every node back")
        set_step("healed: writes resume")
        time.sleep(phase_s)
        stats.end()
        first = next((t for t in stats.phases[-1].commit_times), None)
        heal_to_first_commit_s = None if first is None else first - heal_started
    finally:
        workload.close()
        monitor.stop.set()
        ticker_stop.set()
        if live:
            live.update(render(stats, monitor, "stopping the workload"))
            live.stop()
    set_step("verifying")
    verify = verify_writes(writer, stats)
    return report_of(stats, verify, spec, heal_to_first_commit_s)
