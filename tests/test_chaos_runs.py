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
