"""PostgreSQL clients against Sixfold and against PostgreSQL 15 with a synchronous standby.

    python bench/pg_bench.py [--seconds 20] [--json bench/results/pg.json]

In one invocation, on this machine: a PostgreSQL 15 primary with one synchronous
standby (the setup a user would otherwise pick for "no acknowledged commit lost";
Debian's postgresql-15, started as the `postgres` user), and a Sixfold cluster
(`sixfold up`: six storage nodes over three AZs, a writer, a reader) reached through
its PostgreSQL writer endpoint. Each gets the same runs:

- `sysbench oltp_read_write` (pgsql driver, 1 table of 10k rows) with 1 and 4 threads;
- `pgbench -i -s 1`, then `pgbench -M prepared` (TPC-B-like) with 1 client.

Both are reached over plain TCP (PGSSLMODE=disable): the reference has ssl off, and
libpq's default (prefer) would otherwise give Sixfold, which offers TLS, the extra
cost of encryption alone. Reported: TPS, p95 latency, and Sixfold / PostgreSQL as a ratio. Needs root (to run
PostgreSQL as `postgres`) and the Debian packages postgresql-15 and sysbench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.cluster import BenchCluster, _sixfold  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PRIMARY_PORT = 17432
PG_STANDBY_PORT = 17433
PG_BENCH_STORAGE_PORT = 23100
PG_BENCH_COMPUTE_PORT = 23200
console = Console(stderr=True)
CLIENT_ENV = {"PGSSLMODE": "disable"}   # the same transport for both (see the docstring)


def as_postgres(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


class PostgresWithStandby:
    """A primary and one synchronous standby (streaming replication) in a temporary directory."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sixfold-pgref-"))
        shutil.chown(self.tmp, "postgres")
        self.primary, self.standby = self.tmp / "primary", self.tmp / "standby"

    def __enter__(self) -> "PostgresWithStandby":
        try:
            as_postgres(str(PG_BIN / "initdb"), "-D", str(self.primary), "-A", "trust", "-U", "postgres")
            with open(self.primary / "postgresql.conf", "a") as conf:
                conf.write(f"port = {PG_PRIMARY_PORT}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = "
                           f"'{self.tmp}'\nwal_level = replica\nmax_wal_senders = 4\n"
                           "synchronous_standby_names = 'standby1'\nsynchronous_commit = on\n")
            with open(self.primary / "pg_hba.conf", "a") as hba:
                hba.write("host replication all 127.0.0.1/32 trust\n")
            as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.primary), "-l", str(self.tmp / "primary.log"),
                        "-w", "start")
            as_postgres(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(PG_PRIMARY_PORT), "-U",
                        "postgres", "-D", str(self.standby), "-R", "-X", "stream")
            with open(self.standby / "postgresql.auto.conf", "a") as conf:
                conf.write(f"primary_conninfo = 'host=127.0.0.1 port={PG_PRIMARY_PORT} user=postgres "
                           f"application_name=standby1'\nport = {PG_STANDBY_PORT}\n")
            as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.standby), "-l", str(self.tmp / "standby.log"),
                        "-w", "start")
            deadline = time.monotonic() + 30
            while "sync" not in self.psql("SELECT sync_state FROM pg_stat_replication"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the standby never became synchronous")
                time.sleep(0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def psql(self, query: str) -> str:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(PG_PRIMARY_PORT), "-U", "postgres", "-At",
                               "-c", query], capture_output=True, text=True, timeout=30).stdout

    def __exit__(self, *exc) -> None:
        for data in (self.standby, self.primary):
            if (data / "postmaster.pid").exists():
                subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data),
                                "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)

    target = property(lambda self: {"host": "127.0.0.1", "port": PG_PRIMARY_PORT, "user": "postgres",
                                    "password": "", "db": "postgres"})


def run(args: list[str], env: dict | None = None, timeout_s: float = 600) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **CLIENT_ENV, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def sysbench(target: dict, threads: int, seconds: float) -> dict:
    base = ["sysbench", "oltp_read_write", "--db-driver=pgsql", f"--pgsql-host={target['host']}",
            f"--pgsql-port={target['port']}", f"--pgsql-user={target['user']}",
            f"--pgsql-password={target['password']}", f"--pgsql-db={target['db']}", "--tables=1",
            "--table-size=10000"]
    run(base + ["cleanup"])
    run(base + ["prepare"])
    out = run(base + [f"--threads={threads}", f"--time={seconds:.0f}", "--percentile=95", "--report-interval=0",
                      "run"])
    run(base + ["cleanup"])
    tps = float(re.search(r"transactions:\s+\d+\s+\(([\d.]+) per sec", out).group(1))
    p95 = float(re.search(r"95th percentile:\s+([\d.]+)", out).group(1))
    errors = int(re.search(r"errors:\s+(\d+)", out).group(1))
    return {"test": f"sysbench oltp_read_write x{threads}", "tps": tps, "latency_ms_p95": p95,
            "errors": errors}


def pgbench(target: dict, seconds: float) -> dict:
    env = {"PGPASSWORD": target["password"]}
    base = [str(PG_BIN / "pgbench"), "-h", target["host"], "-p", str(target["port"]), "-U", target["user"]]
    run(base + ["-i", "-s", "1", "-q", target["db"]], env=env)
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as logdir:
        out = run(base + ["-M", "prepared", "-c", "1", "-T", f"{seconds:.0f}", "-l", "--log-prefix",
                          f"{logdir}/tx", target["db"]], env=env)
        latencies_us = [int(line.split()[2]) for f in Path(logdir).iterdir() for line in f.read_text().splitlines()]
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    p95 = statistics.quantiles(latencies_us, n=20)[18] / 1000 if len(latencies_us) >= 20 else float("nan")
    return {"test": "pgbench -M prepared x1", "tps": tps, "latency_ms_p95": p95, "errors": 0}


def suite(target: dict, seconds: float) -> list[dict]:
    return [sysbench(target, 1, seconds), sysbench(target, 4, seconds), pgbench(target, seconds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", default="bench/results/pg.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    console.print("reference: PostgreSQL 15, primary + one synchronous standby ...")
    with PostgresWithStandby() as pg:
        reference = suite(pg.target, args.seconds)
    console.print("sixfold up: 6 storage nodes over 3 AZs, a writer and a reader ...")
    # ports of its own: the PostgreSQL ports (compute port + 1000..1201) of the other benches' clusters
    # would collide with a cluster on 17200 + 1000
    with BenchCluster(readers=1, storage_port=PG_BENCH_STORAGE_PORT, compute_port=PG_BENCH_COMPUTE_PORT) as cluster:
        writer = next(e for e in json.loads(_sixfold("endpoints", "--data-dir", cluster.data_dir, "--json"))
                      if e["name"] == "writer")
        password = (Path(cluster.data_dir) / "pg_password").read_text().strip()
        target = {"host": writer["host"], "port": writer["pg_port"], "user": "sixfold", "password": password,
                  "db": "sixfold"}
        ours = suite(target, args.seconds)
    table = Table(title=f"PostgreSQL clients: Sixfold (writer endpoint) vs PostgreSQL 15 + sync standby "
                        f"({args.seconds:.0f} s per run, load {load_before:.1f})")
    for col in ("test", "PG TPS", "PG p95 ms", "Sixfold TPS", "Sixfold p95 ms", "TPS ratio"):
        table.add_column(col, justify="left" if col == "test" else "right")
    rows = []
    for ref, got in zip(reference, ours):
        ratio = got["tps"] / ref["tps"] if ref["tps"] else float("nan")
        rows.append({"test": ref["test"], "postgres": ref, "sixfold": got, "tps_ratio": ratio})
        table.add_row(ref["test"], f"{ref['tps']:.0f}", f"{ref['latency_ms_p95']:.1f}", f"{got['tps']:.0f}",
                      f"{got['latency_ms_p95']:.1f}", f"{ratio:.2f}x")
    Console().print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "postgresql clients", "seconds_per_run": args.seconds,
                               "cpu_count": os.cpu_count(), "load_average_before": load_before, "results": rows},
                              indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
