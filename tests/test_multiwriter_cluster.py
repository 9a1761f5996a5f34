"""`sixfold up --writers 3`: peer writers through the CLI, and the primary's failover."""

from __future__ import annotations

import random
import threading
import time

import pytest

from sixfold import dbapi
from sixfold.chaos import history as H
from sixfold.chaos.workloads import ListAppend
from tests.test_cli import Cluster, all_healthy, force_teardown, free_ports
from tests.multiwriter_cluster import assert_snapshot_isolation, run_workload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def cluster(tmp_path):
    data_dir = tmp_path / "cluster"
    storage_port, compute_port = free_ports(readers=0, writers=3)
    c = Cluster(data_dir, storage_port, compute_port)
    try:
        c.up_json = c.json("up", "--writers", 3, "--readers", 0, "--storage-port", storage_port,
                           "--compute-port", compute_port, "--commit-timeout-s", 3)
        yield c
    finally:
        force_teardown(data_dir)


def test_the_primary_killed_under_load_fails_over_and_every_transaction_is_all_or_nothing(cluster):
    endpoints = {e["name"]: e["address"] for e in cluster.up_json["endpoints"]}
    assert {"writer-1", "writer-2", "writer-3"} <= set(endpoints)
    cluster.sql("CREATE TABLE left_side (id TEXT PRIMARY KEY)",
                "CREATE TABLE right_side (id TEXT PRIMARY KEY, pad BLOB)",
                "INSERT INTO right_side VALUES ('spacer', zeroblob(300000))", endpoint="writer-2")
    acknowledged: dict[str, list[str]] = {name: [] for name in ("writer-1", "writer-2", "writer-3")}
    stop = threading.Event()

    def commit_loop(name: str) -> None:
        n = 0
        while not stop.is_set():
            key = f"{name}-{n}"
            n += 1
            try:
                conn = dbapi.connect(endpoints[name], timeout_s=5)
            except dbapi.Error:
                time.sleep(0.2)
                continue
            try:
                def body(c):
                    c.execute("INSERT INTO left_side VALUES (?)", (key,))
                    c.execute("INSERT INTO right_side VALUES (?, randomblob(100))", (key,))
                dbapi.run_transaction(conn, body, attempts=20)
                acknowledged[name].append(key)
            except dbapi.Error:
                time.sleep(0.1)
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    threads = [threading.Thread(target=commit_loop, args=(name,), daemon=True) for name in acknowledged]
    for t in threads:
        t.start()
    time.sleep(2)
    cluster.ok("chaos", "kill", "--node", "writer-1")
    nodes = cluster.wait_status(lambda ns: ns["writer-2"]["role"] == "writer" or ns["writer-3"]["role"] == "writer",
                                timeout_s=60)
    promoted = "writer-2" if nodes["writer-2"]["role"] == "writer" else "writer-3"
    other = "writer-3" if promoted == "writer-2" else "writer-2"
    before = {name: len(keys) for name, keys in acknowledged.items()}
    deadline = time.monotonic() + 30
    while not all(len(acknowledged[n]) > before[n] + 3 for n in (promoted, other)):
        assert time.monotonic() < deadline, "the surviving writers did not resume committing"
        time.sleep(0.2)
    cluster.ok("chaos", "restart", "--node", "writer-1")   # comes back as a peer of the new primary
    cluster.wait_status(all_healthy, timeout_s=60)
    deadline = time.monotonic() + 30
    before_1 = len(acknowledged["writer-1"])
    while len(acknowledged["writer-1"]) <= before_1:
        assert time.monotonic() < deadline, "writer-1 did not take writes again after its restart"
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    # on the primary: every acknowledged commit is durable, so at or below its VDL (a peer's view
    # may lag by its redo stream); both tables in one statement: one snapshot
    rows = cluster.sql("SELECT 'l', id FROM left_side UNION ALL SELECT 'r', id FROM right_side WHERE id != 'spacer'",
                       endpoint=promoted)[0]["rows"]
    left = {r[1] for r in rows if r[0] == "l"}
    right = {r[1] for r in rows if r[0] == "r"}
    assert left == right, (sorted(left - right)[:5], sorted(right - left)[:5])
    for name, keys in acknowledged.items():
        assert set(keys) <= left, f"{name}: acknowledged commits lost: {sorted(set(keys) - left)[:5]}"


def test_a_peer_writer_is_added_and_removed_while_the_cluster_runs(cluster):
    cluster.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, by TEXT)", endpoint="writer-3")
    added = cluster.json("writer", "add")
    assert added["name"] == "writer-4"
    nodes = cluster.wait_status(lambda ns: ns.get("writer-4", {}).get("health") == "ok")
    assert "peer writer" in nodes["writer-4"]["detail"]
    cluster.sql("INSERT INTO t (by) VALUES ('writer-4')", endpoint="writer-4")
    assert cluster.sql("SELECT by FROM t", endpoint="writer-4")[0]["rows"] == [["writer-4"]]   # its own write
    refused = cluster.cli("writer", "remove", "writer-1")
    assert refused.returncode == 2 and "primary" in refused.stdout + refused.stderr
    cluster.ok("writer", "remove", "writer-3")
    nodes = cluster.status()
    assert "writer-3" not in nodes or nodes["writer-3"]["health"] != "ok"
    cluster.sql("INSERT INTO t (by) VALUES ('writer-2')", endpoint="writer-2")
    # another writer's commit reaches writer-4 with its redo stream (milliseconds): wait for it
    deadline = time.monotonic() + 10
    while len(cluster.sql("SELECT by FROM t", endpoint="writer-4")[0]["rows"]) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_list_append_over_every_writer_finds_no_anomaly_when_the_primary_is_killed(cluster):
    endpoints = {e["name"]: e["address"] for e in cluster.up_json["endpoints"]}
    workload = ListAppend("primary_kill", random.Random(5))

    def kill_the_primary(deadline: float, history: H.History) -> None:
        time.sleep(3)
        history.append(H.INFO, "start", H.NEMESIS, {"fault": "kill", "id": 0, "targets": ["writer-1"]})
        cluster.ok("chaos", "kill", "--node", "writer-1")
        cluster.wait_status(lambda ns: any(ns[n]["role"] == "writer" for n in ("writer-2", "writer-3")),
                            timeout_s=60)
        time.sleep(2)
        cluster.ok("chaos", "restart", "--node", "writer-1")
        history.append(H.INFO, "stop", H.NEMESIS, {"fault": "kill", "id": 0})

    ops = run_workload([endpoints[n] for n in ("writer-1", "writer-2", "writer-3")], workload, time_s=16,
                       nemesis=kill_the_primary)
    nodes = cluster.wait_status(all_healthy, timeout_s=60)
    primary = next(n for n in ("writer-1", "writer-2", "writer-3") if nodes[n]["role"] == "writer")
    conn = dbapi.connect(endpoints[primary])   # every acknowledged commit is at or below its VDL
    final = workload.final_read(conn)
    conn.close()
    verdict = workload.check(ops, final)
    assert_snapshot_isolation(verdict)
    oks = [o for o in ops if o["f"] == "txn" and o["type"] == H.OK]
    assert len(oks) >= 30
