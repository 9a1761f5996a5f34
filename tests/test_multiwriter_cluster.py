"""`sixfold up --writers 3`: peer writers through the CLI, and the primary's failover."""

from __future__ import annotations

import threading
import time

import pytest

from sixfold import dbapi
from tests.test_cli import Cluster, all_healthy, force_teardown, free_ports

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
    rows = cluster.sql("SELECT id FROM left_side", endpoint="writer-1")[0]["rows"]
    left = {r[0] for r in rows}
    rows = cluster.sql("SELECT id FROM right_side WHERE id != 'spacer'", endpoint=other)[0]["rows"]
    right = {r[0] for r in rows}
    assert left == right, (sorted(left - right)[:5], sorted(right - left)[:5])
    for name, keys in acknowledged.items():
        assert set(keys) <= left, f"{name}: acknowledged commits lost: {sorted(set(keys) - left)[:5]}"
