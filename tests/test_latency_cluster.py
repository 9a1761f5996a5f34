"""`sixfold chaos latency` and the latency nemesis on a real one-region cluster."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import sixfold
from tests.test_chaos_runs import chaos_run, start_cluster
from tests.test_cli import CLI, clean_env, force_teardown

pytestmark = pytest.mark.timeout(240)


def cli(*args) -> dict:
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout) if "--json" in args else {}


def writer_address(data_dir) -> str:
    nodes = cli("status", "--data-dir", data_dir, "--json")
    return next(n["address"] for n in nodes if n["kind"] == "compute" and n["role"] == "writer")


def commit_s(conn, value: int) -> float:
    """Median of 5 single-row commits (each waits for 4 of 6 storage acks)."""
    cur = conn.cursor()
    took = []
    for i in range(5):
        started = time.monotonic()
        cur.execute("INSERT INTO t VALUES (?)", (value * 10 + i,))
        took.append(time.monotonic() - started)
    return sorted(took)[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("latency") / "cluster"
    try:
        start_cluster(data_dir, {"SIXFOLD_LATENCY_IN_REGION": "true"})
        yield data_dir
    finally:
        force_teardown(data_dir)


def test_chaos_latency_slows_commits_at_run_time_and_reset_undoes_it(cluster):
    shown = cli("chaos", "latency", "--data-dir", cluster, "--json")["one_way_ms"]
    assert shown == [{"from": 1, "to": 1, "ms": 0, "source": "default"}]
    conn = sixfold.connect(writer_address(cluster), autocommit=True)
    try:
        conn.cursor().execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        before_s = commit_s(conn, 1)
        shown = cli("chaos", "latency", "--data-dir", cluster, "--from", 1, "--to", 1, "--ms", 150, "--json")
        assert shown["one_way_ms"] == [{"from": 1, "to": 1, "ms": 150, "source": "override"}]
        time.sleep(0.5)   # the nodes re-read the table every 0.2 s
        slow_s = commit_s(conn, 2)
        assert slow_s >= 0.300 > before_s, (before_s, slow_s)   # the Append out and its ack back
        cli("chaos", "latency", "--data-dir", cluster, "--reset", "--json")
        time.sleep(0.5)
        assert commit_s(conn, 3) < 0.300
        rows = conn.cursor().execute("SELECT count(*) FROM t").fetchall()
        assert rows == [(15,)]
    finally:
        conn.close()
    log = [e for e in cli("chaos", "log", "--data-dir", cluster, "--json") if e["action"] == "latency"]
    assert [e["detail"].get("one_way_ms") for e in log[-2:]] == [150, None]


@pytest.mark.slow
def test_the_latency_nemesis_runs_and_finds_no_violation(cluster, tmp_path):
    code, results = chaos_run(cluster, tmp_path / "report", "--workload", "bank", "--nemesis", "latency",
                              "--time", 12, "--seed", 31, "--schedule", "fixed", "--interval-s", 2, "--fault-s", 4)
    assert results["valid"], json.dumps(results["checker"], indent=1)[:4000]
    assert code == 0 and results["faults"] >= 1 and not results["nemesis_errors"]
    history = [json.loads(line) for line in (tmp_path / "report" / "history.jsonl").read_text().splitlines()]
    starts = [op["value"] for op in history if op["process"] == "nemesis" and op["f"] == "start"
              and op["value"]["fault"] == "latency"]
    assert starts and starts[0]["regions"] == [1] and starts[0]["one_way_ms"] in (50, 100, 200, 400)
    assert not (cluster / "latency.json").exists()   # healed: back to the defaults


def test_the_latency_nemesis_needs_the_in_region_layer_on_one_region(tmp_path):
    data_dir = tmp_path / "cluster"
    try:
        start_cluster(data_dir)
        result = subprocess.run([*CLI, "chaos", "run", "--data-dir", str(data_dir), "--workload", "bank",
                                 "--nemesis", "latency", "--time", "5"], capture_output=True, text=True,
                                timeout=60, env=clean_env())
        assert result.returncode == 2 and "--latency-in-region true" in result.stderr, result.stderr
    finally:
        force_teardown(data_dir)
