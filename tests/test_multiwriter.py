"""Several writers on one volume (sixfold/nodes/compute/MULTIWRITER.md), all real processes:
six storage nodes, a primary writer and peer writers."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest
from psycopg import errors

from sixfold import dbapi
from sixfold.chaos import history as H
from sixfold.chaos.workloads import Bank, ListAppend
from tests.multiwriter_cluster import MultiWriterCluster, assert_snapshot_isolation, run_workload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def writers(storage_cluster, tmp_path):
    """Three writers: writer-1 (the primary) and two peers."""
    cluster = MultiWriterCluster(tmp_path / "mw", storage_cluster, writers=3, pg=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def wait_rows(node, sql: str, expected, timeout_s: float = 10.0) -> None:
    """Until `node` sees `expected` (another writer's commit reaches it with the redo stream)."""
    conn = node.connect(autocommit=True)
    deadline = time.monotonic() + timeout_s
    while (seen := conn.execute(sql).fetchall()) != expected:
        assert time.monotonic() < deadline, (node.node_id, seen)
        time.sleep(0.02)
    conn.close()


def test_writers_on_disjoint_tables_all_commit(writers):
    rows_each = 40
    errors_seen: list[str] = []

    # each writer creates its table, one after the other: a schema change commits only when
    # nothing else committed since its snapshot (MULTIWRITER.md), so under concurrent writes it
    # would keep losing; the rows then go in from every writer at once
    for i, node in enumerate(writers.writers):
        conn = node.connect(autocommit=True)
        conn.execute(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, v TEXT)")
        conn.close()
    for node in writers.writers:
        wait_rows(node, "SELECT count(*) FROM sqlite_schema", [(len(writers.writers),)])

    def fill(node, table: str) -> None:
        try:
            conn = node.connect(autocommit=True)
            for i in range(rows_each):
                conn.execute(f"INSERT INTO {table} (id, v) VALUES (?, ?)", (i, f"{table}-{i}"))
            conn.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors_seen.append(f"{node.node_id}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=fill, args=(node, f"t{i}")) for i, node in enumerate(writers.writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors_seen, errors_seen   # autocommit statements that conflicted were retried by the server
    expected = [[(rows_each, f"t{i}-0", rows_each - 1)] for i in range(len(writers.writers))]
    for node in writers.writers:
        conn = node.connect(autocommit=True)
        deadline = time.monotonic() + 10   # other writers' last commits reach this node with the redo stream
        while True:
            seen = [conn.execute(f"SELECT count(*), min(v), max(id) FROM t{i}").fetchall()
                    for i in range(len(writers.writers))]
            if seen == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert seen == expected, (node.node_id, seen)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()


def test_the_same_row_from_two_writers_exactly_one_commits(writers):
    setup = writers.primary.connect(autocommit=True)
    setup.execute("CREATE TABLE hot (id INTEGER PRIMARY KEY, v INTEGER)")
    setup.execute("INSERT INTO hot VALUES (1, 0)")
    a_node, b_node = writers.writers[1], writers.writers[2]
    for round_no in range(5):
        for node in (a_node, b_node):   # both see the newest value before they start
            conn = node.connect(autocommit=True)
            deadline = time.monotonic() + 10
            while conn.execute("SELECT v FROM hot WHERE id = 1").fetchone()[0] != round_no:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            conn.close()
        a, b = a_node.connect(autocommit=False), b_node.connect(autocommit=False)
        a.execute("UPDATE hot SET v = v + 1 WHERE id = 1")
        b.execute("UPDATE hot SET v = v + 1 WHERE id = 1")
        outcomes: dict[str, str] = {}
        barrier = threading.Barrier(2)

        def commit(name: str, conn) -> None:
            barrier.wait()
            try:
                conn.commit()
                outcomes[name] = "committed"
            except dbapi.SerializationFailure as exc:
                assert exc.code == "serialization_failure"
                outcomes[name] = "40001"

        threads = [threading.Thread(target=commit, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes.values()) == ["40001", "committed"], outcomes
        assert not a.in_transaction and not b.in_transaction
        a.close()
        b.close()
    assert setup.execute("SELECT v FROM hot WHERE id = 1").fetchone()[0] == 5   # no lost update
    setup.close()


def test_a_lost_conflict_is_40001_over_the_postgresql_wire(writers):
    with psycopg.connect(writers.primary.pg_dsn(), autocommit=True, connect_timeout=10) as c:
        c.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INTEGER)")
        c.execute("INSERT INTO acct VALUES (1, 100)")
    peer = writers.writers[1]
    with psycopg.connect(writers.primary.pg_dsn(), connect_timeout=10) as first, \
            psycopg.connect(peer.pg_dsn(), connect_timeout=10) as second:
        deadline = time.monotonic() + 10
        while second.execute("SELECT count(*) FROM acct").fetchone()[0] != 1:   # the peer has the row
            second.rollback()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second.rollback()
        first.execute("UPDATE acct SET balance = balance - 10 WHERE id = 1")
        second.execute("UPDATE acct SET balance = balance - 20 WHERE id = 1")
        first.commit()
        with pytest.raises(errors.SerializationFailure):
            second.commit()
        # the loser retries and wins now (its pages were refreshed first)
        second.execute("UPDATE acct SET balance = balance - 20 WHERE id = 1")
        second.commit()
        assert second.execute("SELECT balance FROM acct WHERE id = 1").fetchone()[0] == 70


def test_schema_changes_are_serialised_against_concurrent_writes(writers):
    """CREATE INDEX reads the whole table and writes only new pages; an INSERT compiled before
    it writes only a table page: no page in common, yet both committing would leave the index
    without the row. Both orders must end in one 40001 and a consistent database."""
    a_node, b_node = writers.writers[1], writers.writers[2]
    setup = writers.primary.connect(autocommit=True)
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    for i in range(20):
        setup.execute("INSERT INTO t VALUES (?, ?)", (i, i))
    for node in (a_node, b_node):
        wait_rows(node, "SELECT count(*) FROM t", [(20,)])
    # the DDL's transaction first, a plain INSERT commits meanwhile: the DDL loses
    ddl = a_node.connect(autocommit=False)
    ddl.execute("CREATE INDEX t_v ON t(v)")
    insert = b_node.connect(autocommit=True)
    insert.execute("INSERT INTO t VALUES (100, 100)")
    with pytest.raises(dbapi.SerializationFailure):
        ddl.commit()
    # an INSERT's transaction first, the DDL commits meanwhile: the INSERT loses
    writer = b_node.connect(autocommit=False)
    writer.execute("INSERT INTO t VALUES (101, 101)")
    ddl.execute("CREATE INDEX t_v ON t(v)")
    ddl.commit()
    with pytest.raises(dbapi.SerializationFailure):
        writer.commit()
    writer.execute("INSERT INTO t VALUES (101, 101)")   # retried, under the new schema
    writer.commit()
    wait_rows(writers.primary, "SELECT count(*) FROM t", [(22,)])
    assert setup.execute("SELECT count(*) FROM t INDEXED BY t_v WHERE v >= 0").fetchall() == [(22,)]
    assert setup.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for conn in (ddl, insert, writer, setup):
        conn.close()


def test_run_transaction_retries_explicit_transactions_until_they_commit(writers):
    setup = writers.primary.connect(autocommit=True)
    setup.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)")
    setup.execute("INSERT INTO counter VALUES (1, 0)")
    increments_each = 15
    failures: list[str] = []

    def add(node) -> None:
        conn = node.connect(autocommit=False)
        try:
            for _ in range(increments_each):
                def body(c):
                    n = c.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
                    c.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))   # read-modify-write
                dbapi.run_transaction(conn, body, attempts=50)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{node.node_id}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=add, args=(node,)) for node in writers.writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert not failures, failures
    assert setup.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0] == increments_each * 3
    setup.close()


# ------------------------------------------------------------------ workloads and checkers


def test_bank_transfers_spread_over_every_writer_keep_the_total(writers):
    bank = Bank("mw", random.Random(7))
    ops = run_workload([node.address for node in writers.writers], bank, time_s=12)
    conn = writers.writers[2].connect(autocommit=False)
    final = bank.final_read(conn)
    conn.close()
    verdict = bank.check(ops, final)
    assert verdict["valid"] is True, verdict
    done = [o for o in ops if o["f"] == "transfer" and o["type"] == H.OK]
    lost = [o for o in ops if o["f"] == "transfer" and o["type"] == H.FAIL
            and "SerializationFailure" in (o.get("error") or "")]
    assert len(done) >= 20 and lost, (len(done), len(lost))   # real concurrency: some transfers conflicted


def test_list_append_finds_no_anomaly_while_peer_writers_are_killed(writers):
    workload = ListAppend("mw", random.Random(11))
    peers = writers.writers[1:]

    def kill_peers(deadline: float, history: H.History) -> None:
        rng = random.Random(3)
        fault = 0
        while time.monotonic() < deadline - 3:
            time.sleep(2.0)
            victim = rng.choice(peers)
            history.append(H.INFO, "start", H.NEMESIS, {"fault": "kill", "id": fault, "targets": [victim.node_id]})
            victim.kill()
            time.sleep(0.5)
            victim.spawn()
            victim.wait_healthy(30)
            history.append(H.INFO, "stop", H.NEMESIS, {"fault": "kill", "id": fault})
            fault += 1

    ops = run_workload([node.address for node in writers.writers], workload, time_s=15, nemesis=kill_peers)
    conn = writers.primary.connect(autocommit=False)
    final = workload.final_read(conn)
    conn.close()
    verdict = workload.check(ops, final)
    assert_snapshot_isolation(verdict)
    oks = [o for o in ops if o["f"] == "txn" and o["type"] == H.OK]
    assert len(oks) >= 30


def test_writers_killed_mid_transaction_end_all_or_nothing_and_the_others_go_on(writers):
    """Each transaction writes a row into two tables kept far apart (other pages, other PGs);
    writers are killed while they commit. Every transaction is in both tables or in neither,
    every acknowledged one is there, and the writers not killed keep committing."""
    setup = writers.primary.connect(autocommit=True)
    setup.execute("CREATE TABLE left_side (id TEXT PRIMARY KEY, pad BLOB)")
    setup.execute("CREATE TABLE right_side (id TEXT PRIMARY KEY, pad BLOB)")
    setup.execute("INSERT INTO right_side VALUES ('spacer', zeroblob(300000))")   # right_side's rows: other PGs
    setup.close()
    acknowledged: list[str] = []
    stop = threading.Event()

    def commit_loop(node) -> None:
        n = 0
        while not stop.is_set():
            key = f"{node.node_id}-{n}"
            n += 1
            try:
                conn = dbapi.connect(node.address, timeout_s=5)
            except dbapi.Error:
                time.sleep(0.1)
                continue
            try:
                def body(c):
                    c.execute("INSERT INTO left_side VALUES (?, randomblob(200))", (key,))
                    c.execute("INSERT INTO right_side VALUES (?, randomblob(200))", (key,))
                dbapi.run_transaction(conn, body, attempts=20)
                acknowledged.append(key)
            except dbapi.Error:
                pass
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    threads = [threading.Thread(target=commit_loop, args=(node,), daemon=True) for node in writers.writers]
    for t in threads:
        t.start()
    victim = writers.writers[2]
    for _ in range(3):
        time.sleep(1.5)
        before = len([k for k in acknowledged if not k.startswith(victim.node_id)])
        victim.kill()
        deadline = time.monotonic() + 20   # the other writers keep committing while it is down
        while len([k for k in acknowledged if not k.startswith(victim.node_id)]) < before + 5:
            assert time.monotonic() < deadline, "the other writers stopped committing while one was down"
            time.sleep(0.1)
        assert not victim.running
        victim.spawn()
        victim.wait_healthy(30)
    stop.set()
    for t in threads:
        t.join(60)
    conn = writers.primary.connect(autocommit=True)   # every acknowledged commit is at or below its VDL
    rows = conn.execute("SELECT 'l', id FROM left_side UNION ALL "
                        "SELECT 'r', id FROM right_side WHERE id != 'spacer'").fetchall()
    left = {r[1] for r in rows if r[0] == "l"}
    right = {r[1] for r in rows if r[0] == "r"}
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    assert left == right, (sorted(left - right)[:5], sorted(right - left)[:5])
    assert set(acknowledged) <= left
    assert any(k.startswith(victim.node_id) for k in left)
