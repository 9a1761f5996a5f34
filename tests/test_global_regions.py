"""A two-region cluster on real processes: the primary's log shipped to region 2's storage,
read there, resumed after a replicator restart, and stopped (not corrupted) by a partition."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

import sixfold
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.runtime import partition
from tests.test_cli import CLI, clean_env, force_teardown, free_ports

pytestmark = pytest.mark.timeout(300)
SHIPPED_WITHIN_S = 10.0


def cli(*args, timeout: float = 120) -> dict | list:
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=clean_env())
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout) if "--json" in args else {}


def address_of(data_dir: Path, name: str) -> str:
    return next(n["address"] for n in cli("status", "--data-dir", data_dir, "--json") if n["name"] == name)


def replicator_row(data_dir: Path) -> dict:
    return next(n for n in cli("status", "--data-dir", data_dir, "--json") if n["name"] == "replicator-2")


def rows_in(address: str, sql: str) -> list:
    conn = sixfold.connect(address, autocommit=True)
    try:
        return conn.cursor().execute(sql).fetchall()
    finally:
        conn.close()


def wait_rows(address: str, sql: str, expected: list, timeout_s: float = SHIPPED_WITHIN_S) -> float:
    """Seconds until `sql` at `address` returns `expected` (fails after timeout_s)."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout_s:
        try:
            last = rows_in(address, sql)
        except sixfold.dbapi.ProgrammingError as exc:
            if "no such table" not in str(exc):
                raise
            last = str(exc)   # the CREATE TABLE itself has not been shipped yet
        if last == expected:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{address}: {sql} gave {last}, not {expected}, after {timeout_s} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("regions") / "cluster"
    storage_port, compute_port = free_ports(regions=2)
    try:
        # a long lease: the primary keeps committing through the partition test's few seconds of
        # partition (with the default 2 s its commits would wait for the partition to heal)
        cli("up", "--data-dir", data_dir, "--regions", 2, "--readers", 1, "--storage-port", storage_port,
            "--compute-port", compute_port, "--lease-s", 60, "--json")
        writer = sixfold.connect(address_of(data_dir, "writer-1"), autocommit=True)
        writer.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        yield data_dir, writer
        writer.close()
    finally:
        force_teardown(data_dir)


def test_commits_reach_the_secondary_region_and_the_lag_is_reported(cluster):
    data_dir, writer = cluster
    cur = writer.cursor()
    for i in range(50):
        cur.execute("INSERT INTO t (v) VALUES (?)", (i,))
    # the last commit before the writer goes quiet is shipped too (storage learns its VDL
    # from a VDL-only batch, not only from the next commit)
    wait_rows(address_of(data_dir, "reader-2-1"), "SELECT count(*), sum(v) FROM t", [(50, sum(range(50)))])
    row = replicator_row(data_dir)
    assert row["health"] == "ok" and row["role"] == "replicator"
    assert row["vdl"] == row["source_vdl"] > 0
    assert 0 < row["replica_lag_ms_p50"] <= row["replica_lag_ms_p99"] < 5_000
    endpoints = {e["name"]: e for e in cli("endpoints", "--data-dir", data_dir, "--json")}
    assert endpoints["region-2-reader"]["host"] == "127.2.0.200"
    result = subprocess.run([*CLI, "sql", "--data-dir", str(data_dir), "--endpoint", "region-2-reader", "--json",
                             "-c", "SELECT count(*) FROM t"], capture_output=True, text=True, timeout=60,
                            env=clean_env())
    assert result.returncode == 0 and json.loads(result.stdout)[0]["rows"] == [[50]], result.stdout + result.stderr
    # the same lag and position as Prometheus metrics, from the replicator's /metrics
    host, port = row["address"].rsplit(":", 1)
    with urllib.request.urlopen(f"http://{host}:{int(port) + 1}/metrics", timeout=10) as reply:
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in reply.read().decode().splitlines() if line and not line.startswith("#")}
    assert metrics['sixfold_region_vdl{region="2"}'] >= row["vdl"]
    assert metrics['sixfold_replication_lag_ms{region="2",stat="p99"}'] > 0
    assert metrics['sixfold_replicator_health{health="ok",region="2"}'] == 1
    # region 2's storage holds its own six copies: one of them alone can be the only one left
    storage = [n for n in cli("status", "--data-dir", data_dir, "--json") if n["kind"] == "storage"]
    assert {n["region"] for n in storage} == {1, 2}
    assert all(n["scl"] and n["scl"] > 0 for n in storage if n["region"] == 2)


def test_the_replicator_sends_its_lag_samples_but_not_in_lease_replies(cluster):
    """A bench takes the samples of its own run (those after a count it read before) instead
    of the window's percentiles, which mix in whatever ran before."""
    data_dir, writer = cluster
    with grpc.insecure_channel(address_of(data_dir, "replicator-2")) as channel:
        stub = compute_pb2_grpc.ComputeStub(channel)
        before = stub.Status(cpb.StatusRequest(), timeout=10)
        cur = writer.cursor()
        for i in range(20):
            cur.execute("INSERT INTO t (v) VALUES (?)", (-1 - i,))
        deadline = time.monotonic() + SHIPPED_WITHIN_S
        after = before
        while after.region_lag_samples_total == before.region_lag_samples_total and time.monotonic() < deadline:
            time.sleep(0.05)
            after = stub.Status(cpb.StatusRequest(), timeout=10)
        assert after.region_lag_samples_total > before.region_lag_samples_total
        recent = sorted(after.region_lag_ms_recent)
        assert 0 < len(recent) <= after.region_lag_samples_total
        assert recent[int(0.5 * len(recent))] == pytest.approx(after.replica_lag_ms_p50, rel=1e-5)
        assert recent[min(len(recent) - 1, int(0.99 * len(recent)))] == pytest.approx(after.replica_lag_ms_p99,
                                                                                      rel=1e-5)
        lease = stub.Status(cpb.StatusRequest(lease_epoch=1), timeout=10)
        assert lease.region_lag_samples_total >= after.region_lag_samples_total
        assert list(lease.region_lag_ms_recent) == []


def test_a_restarted_replicator_resumes_from_its_recorded_position(cluster):
    data_dir, writer = cluster
    before = replicator_row(data_dir)["vdl"]
    position = json.loads((data_dir / "nodes" / "replicator-2" / "data" / "position.json").read_text())
    assert 0 < position["vdl"] <= before and position["tails"]
    cli("chaos", "restart", "--data-dir", data_dir, "--node", "replicator-2", "--json")
    cur = writer.cursor()
    cur.execute("INSERT INTO t (v) VALUES (1000)")
    wait_rows(address_of(data_dir, "reader-2-1"), "SELECT count(*) FROM t WHERE v = 1000", [(1,)])
    log = (data_dir / "nodes" / "replicator-2" / "node.log").read_text()
    opened = [line for line in log.splitlines() if "mirror open at LSN" in line]
    assert len(opened) == 2 and int(opened[-1].split("mirror open at LSN ")[1].split(",")[0]) >= position["vdl"]


@pytest.mark.skipif(partition.unavailable_reason() is not None, reason=f"{partition.unavailable_reason()}")
def test_a_partition_between_regions_stops_the_lag_from_advancing_and_heals(cluster):
    data_dir, writer = cluster
    cur = writer.cursor()
    reader = address_of(data_dir, "reader-2-1")
    count = rows_in(address_of(data_dir, "writer-1"), "SELECT count(*) FROM t")[0][0]
    wait_rows(reader, "SELECT count(*) FROM t", [(count,)])
    try:
        cli("chaos", "partition", "--data-dir", data_dir, "--region", 2, "--json")
        frozen = replicator_row(data_dir)["vdl"]
        for i in range(30):   # the primary goes on committing
            cur.execute("INSERT INTO t (v) VALUES (?)", (2000 + i,))
        time.sleep(2)
        row = replicator_row(data_dir)
        assert row["vdl"] == frozen   # nothing crosses: the region's VDL stands still
        assert row["primary_unheard_s"] is not None and row["primary_unheard_s"] > 1.0   # and status says why
        assert rows_in(reader, "SELECT count(*) FROM t") == [(count,)]   # and its snapshot stays whole
    finally:
        cli("chaos", "heal", "--data-dir", data_dir, "--json")
    wait_rows(reader, "SELECT count(*), sum(v) FROM t WHERE v >= 2000",
              [(30, sum(range(2000, 2030)))], timeout_s=30)
    primary = rows_in(address_of(data_dir, "writer-1"), "SELECT id, v FROM t ORDER BY id")
    assert rows_in(reader, "SELECT id, v FROM t ORDER BY id") == primary   # the same rows, no corruption


def live_writer(data_dir: Path) -> str:
    return next(n["address"] for n in cli("status", "--data-dir", data_dir, "--json")
                if n["kind"] == "compute" and n["role"] == "writer" and n["health"] == "ok")


def test_a_failover_inside_the_primary_region_is_followed_by_the_secondary(cluster):
    """The new writer's recovery bumps the epoch and re-stamps the records above its baseline:
    region 2 mirrors the new epoch and history, and ends with exactly the primary's rows."""
    data_dir, writer = cluster
    old_epoch = replicator_row(data_dir)["epoch"]
    cli("chaos", "kill", "--data-dir", data_dir, "--writer", "--json")
    try:
        deadline = time.monotonic() + 90
        while True:   # the coordinators promote reader-1
            try:
                address = live_writer(data_dir)
                if address != address_of(data_dir, "writer-1"):
                    break
            except StopIteration:
                pass
            assert time.monotonic() < deadline, "no failover within 90 s"
            time.sleep(0.5)
        conn = sixfold.connect(address, autocommit=True)
        try:
            for i in range(20):
                conn.cursor().execute("INSERT INTO t (v) VALUES (?)", (3000 + i,))
        finally:
            conn.close()
    finally:
        cli("chaos", "heal", "--data-dir", data_dir, "--json")
    primary = rows_in(live_writer(data_dir), "SELECT id, v FROM t ORDER BY id")
    wait_rows(address_of(data_dir, "reader-2-1"), "SELECT id, v FROM t ORDER BY id", primary, timeout_s=30)
    row = replicator_row(data_dir)
    assert row["epoch"] > old_epoch and row["health"] == "ok"
