"""`sixfold chaos run` against real clusters: a short seeded run per workload finds no
violation, and a build with a deliberate bug (sixfold/unsafe.py) is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sixfold.runtime import partition
from sixfold.runtime.layout import ClusterDir
from tests.test_cli import CLI, clean_env, force_teardown, free_ports

RUN_TIMEOUT_S = 170   # 20 s of clients, heals, at most 90 s of recovery, the final read


def start_cluster(data_dir: Path, extra_env: dict | None = None) -> None:
    storage_port, compute_port = free_ports()
    result = subprocess.run([*CLI, "up", "--data-dir", str(data_dir), "--readers", "1", "--storage-port",
                             str(storage_port), "--compute-port", str(compute_port), "--commit-timeout-s", "3",
                             "--json"], capture_output=True, text=True, timeout=120,
                            env={**clean_env(), **(extra_env or {})})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def chaos_run(data_dir: Path, out: Path, *args) -> tuple[int, dict]:
    result = subprocess.run([*CLI, "chaos", "run", "--data-dir", str(data_dir), "--out", str(out), "--json",
                             *map(str, args)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=clean_env())
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("chaos") / "cluster"
    try:
        start_cluster(data_dir)
        yield data_dir
    finally:
        force_teardown(data_dir)


@pytest.mark.slow
@pytest.mark.timeout(220)
@pytest.mark.parametrize("workload, nemesis, seed", [
    ("list-append", "writer,kill", 11),
    ("bank", "pause-writer,az", 12),
    ("register", "az-plus-one,writer", 13),
])
def test_a_short_seeded_run_finds_no_violation(cluster, tmp_path, workload, nemesis, seed):
    code, results = chaos_run(cluster, tmp_path / "report", "--workload", workload, "--nemesis", nemesis,
                              "--time", 25, "--seed", seed, "--schedule", "fixed", "--interval-s", 3, "--fault-s", 4)
    assert results["valid"], json.dumps(results["checker"], indent=1)[:4000]
    assert code == 0
    assert results["faults"] >= 1 and not results["nemesis_errors"]   # heals wait longer on a loaded machine
    assert not results["unhealthy_after_heal"]
    assert results["checker"]["stats"]
    for name in ("history.jsonl", "verdicts.json", "plot.png", "summary.txt"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    history = [json.loads(line) for line in (tmp_path / "report" / "history.jsonl").read_text().splitlines()]
    assert sum(1 for op in history if op["type"] == "ok") > 50
    assert [op["f"] for op in history if op["process"] == "nemesis"][:2] == ["start", "stop"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_acknowledging_before_quorum_is_caught(tmp_path):
    """A writer cut off from storage acknowledges commits it never made durable; the
    coordinators fail it over, and those acknowledged appends are gone."""
    if partition.unavailable_reason():
        pytest.skip(f"partitions are not possible here: {partition.unavailable_reason()}")
    data_dir = tmp_path / "cluster"
    try:
        start_cluster(data_dir, {"SIXFOLD_UNSAFE_ACK_BEFORE_QUORUM": "1"})
        code, results = chaos_run(data_dir, tmp_path / "report", "--workload", "list-append", "--nemesis",
                                  "partition-writer", "--time", 20, "--seed", 21, "--schedule", "fixed",
                                  "--interval-s", 3, "--fault-s", 12)
    finally:
        force_teardown(data_dir)
    assert code == 1
    assert not results["valid"]
    assert "lost-append" in results["checker"]["anomaly_types"], results["checker"]["anomaly_types"]


def pinned_run(data_dir: Path, out: Path) -> tuple[int, dict, list[dict]]:
    """list-append with every client pinned to the first writer; it is paused long enough for
    the coordinators to fail over, then resumed: fenced, it meets its clients again. One fault
    only (a second would pause the new writer): 3 + 7 s, then 9 s of clients. (No client goes
    through the router: one that did, cut off mid-transaction, would leave a session holding
    the old writer's write lock, which no CloseSession through the router can reach.)"""
    code, results = chaos_run(data_dir, out, "--workload", "list-append", "--nemesis", "pause-writer",
                              "--concurrency", 3, "--pin-writer-clients", 3, "--time", 19, "--seed", 31,
                              "--schedule", "fixed", "--interval-s", 3, "--fault-s", 7)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return code, results, history


def pinned_after_resume(results: dict, history: list[dict]) -> list[dict]:
    """The pinned clients' completions after the paused writer was resumed."""
    resumed_ns = next(op["time_ns"] for op in history if op["process"] == "nemesis" and op["f"] == "stop")
    endpoint = {op["process"]: op.get("endpoint") for op in history if op["type"] == "invoke"}
    return [op for op in history if op["type"] != "invoke" and op["process"] != "nemesis"
            and endpoint.get(op["process"]) == results["pinned"]["instance"] and op["time_ns"] > resumed_ns]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_fenced_writer_that_keeps_acknowledging_is_caught(tmp_path):
    """With SIXFOLD_UNSAFE_IGNORE_FENCING the paused writer, fenced by the new one, neither
    steps down nor refuses: its pinned clients get acknowledgements for appends that no
    storage node took, and the final read through the new writer lacks them."""
    data_dir = tmp_path / "cluster"
    try:
        start_cluster(data_dir, {"SIXFOLD_UNSAFE_IGNORE_FENCING": "1"})
        code, results, history = pinned_run(data_dir, tmp_path / "report")
        writer_log = ClusterDir.at(data_dir).node_log(results["pinned"]["instance"]).read_text()
    finally:
        force_teardown(data_dir)
    assert "UNSAFE fault injection is on: SIXFOLD_UNSAFE_IGNORE_FENCING" in writer_log
    assert "UNSAFE: writer" in writer_log and "ignores it" in writer_log    # it was fenced, and went on
    assert any(op["type"] == "ok" for op in pinned_after_resume(results, history))
    assert code == 1
    assert not results["valid"]
    assert "lost-append" in results["checker"]["anomaly_types"], results["checker"]["anomaly_types"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_fenced_writer_acknowledges_nothing_to_its_pinned_clients(tmp_path):
    """The same run on a correct build: the old writer, fenced, refuses or steps down; its
    pinned clients get errors, and nothing acknowledged is lost."""
    data_dir = tmp_path / "cluster"
    try:
        start_cluster(data_dir)
        code, results, history = pinned_run(data_dir, tmp_path / "report")
        writer_log = ClusterDir.at(data_dir).node_log(results["pinned"]["instance"]).read_text()
    finally:
        force_teardown(data_dir)
    assert "UNSAFE" not in writer_log
    assert results["valid"], json.dumps(results["checker"], indent=1)[:4000]
    assert code == 0
    assert results["faults"] == 1 and not results["nemesis_errors"]
    after = pinned_after_resume(results, history)
    assert any(op.get("error") for op in after), after[:5]
    assert sum(1 for op in history if op["type"] == "ok") > 50
