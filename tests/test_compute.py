"""Compute nodes with real processes: SQLite on the volume, a writer and readers."""

from __future__ import annotations

import random
import threading
import time

import pytest

import sixfold
from sixfold.dbapi import ReadOnlyError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ACCOUNTS = 40
START_BALANCE = 1000
TOTAL = ACCOUNTS * START_BALANCE


def create_bank(conn) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    cur.execute("CREATE TABLE transfers(id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER)")
    cur.execute("BEGIN")
    for i in range(ACCOUNTS):
        cur.execute("INSERT INTO accounts VALUES (?, ?)", (i, START_BALANCE))
    cur.execute("COMMIT")


def transfer(cur, transfer_id: int, rng: random.Random) -> None:
    src, dst = rng.sample(range(ACCOUNTS), 2)
    amount = rng.randint(1, 50)
    cur.execute("BEGIN")
    cur.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
    cur.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))
    cur.execute("INSERT INTO transfers VALUES (?, ?, ?, ?)", (transfer_id, src, dst, amount))
    cur.execute("COMMIT")


def check_bank(conn) -> None:
    cur = conn.cursor()
    balances = dict(cur.execute("SELECT id, balance FROM accounts").fetchall())
    assert sum(balances.values()) == TOTAL
    expected = {i: START_BALANCE for i in range(ACCOUNTS)}
    for _, src, dst, amount in cur.execute("SELECT * FROM transfers").fetchall():
        expected[src] -= amount
        expected[dst] += amount
    assert balances == expected, "balances disagree with the transfer log: a transfer was half-applied"
    assert cur.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


TRANSFERS_MIN = 150


def test_bank_transfers_while_readers_sum(compute_cluster):
    cluster = compute_cluster
    create_bank(cluster.writer.connect())
    stop = threading.Event()
    failures: list[str] = []
    sums = [0]
    done = [0]
    next_id = iter(range(1, 10**9))
    id_lock = threading.Lock()

    def writer_loop(seed: int) -> None:
        conn = cluster.writer.connect()
        cur = conn.cursor()
        rng = random.Random(seed)
        while not stop.is_set():
            with id_lock:
                tid = next(next_id)
            try:
                transfer(cur, tid, rng)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failures.append(f"transfer {tid}: {exc!r}")
                return
            done[0] += 1

    def summer(node) -> None:
        conn = node.connect()
        cur = conn.cursor()
        while not stop.is_set():
            total = cur.execute("SELECT sum(balance) FROM accounts").fetchall()[0][0]
            sums[0] += 1
            if total != TOTAL:
                failures.append(f"{node.node_id} saw sum {total}")

    threads = [threading.Thread(target=writer_loop, args=(s,)) for s in range(4)]
    threads += [threading.Thread(target=summer, args=(n,)) for n in cluster.nodes for _ in range(2)]
    for t in threads:
        t.start()
    # a number of operations, not a rate: a loaded machine only takes longer (the cap is a hang guard)
    deadline = time.monotonic() + 90
    while (done[0] < TRANSFERS_MIN or sums[0] < TRANSFERS_MIN) and not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)
    assert not failures, failures[:5]
    assert done[0] >= TRANSFERS_MIN and sums[0] >= TRANSFERS_MIN, (done[0], sums[0])
    writer = cluster.writer.connect()
    transfers = writer.cursor().execute("SELECT count(*) FROM transfers").fetchall()[0][0]
    assert transfers == done[0]
    check_bank(writer)
    # readers converge on the writer's state
    deadline = time.monotonic() + 10
    for reader in cluster.readers:
        conn = reader.connect()
        while conn.cursor().execute("SELECT count(*) FROM transfers").fetchall()[0][0] != transfers:
            assert time.monotonic() < deadline, f"{reader.node_id} did not catch up"
            time.sleep(0.05)
        check_bank(conn)
        status = reader.status()
        assert status.replica_lag_ms_p99 < 1000


def test_writer_killed_mid_stream_keeps_every_acknowledged_transfer(compute_cluster):
    cluster = compute_cluster
    create_bank(cluster.writer.connect())
    acked: list[int] = []
    errors: list[str] = []

    def client() -> None:
        conn = cluster.writer.connect()
        cur = conn.cursor()
        rng = random.Random(7)
        tid = 0
        while True:
            tid += 1
            try:
                transfer(cur, tid, rng)
            except sixfold.dbapi.Error as exc:
                errors.append(repr(exc))
                return
            acked.append(tid)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 100:
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.02)
    cluster.writer.kill()                      # SIGKILL in the middle of a stream of commits
    thread.join(30)
    assert errors, "the client must see the writer go away"
    cluster.writer.start(30)                   # recovery, then the database opens
    conn = cluster.writer.connect()
    present = {row[0] for row in conn.cursor().execute("SELECT id FROM transfers").fetchall()}
    missing = [t for t in acked if t not in present]
    assert not missing, f"acknowledged transfers lost: {missing[:10]}"
    check_bank(conn)
    # the writer goes on
    transfer(conn.cursor(), 10**6, random.Random(1))
    check_bank(conn)


def test_grouped_autocommit_writes_survive_a_writer_kill(compute_cluster):
    """Single-statement writes of many sessions commit in shared groups: after SIGKILL
    every acknowledged one is there, and every money move is whole."""
    cluster = compute_cluster
    create_bank(cluster.writer.connect())
    cluster.writer.connect().cursor().execute("CREATE TABLE events(id INTEGER PRIMARY KEY, session INTEGER)")
    acked: list[int] = []
    errors: list[str] = []

    def client(session_no: int) -> None:
        cur = cluster.writer.connect().cursor()
        rng = random.Random(session_no)
        for n in range(1, 10**6):
            src, dst = rng.sample(range(ACCOUNTS), 2)
            try:
                cur.execute("INSERT INTO events VALUES (?, ?)", (session_no * 10**6 + n, session_no))
                acked.append(session_no * 10**6 + n)
                cur.execute("UPDATE accounts SET balance = balance + CASE id WHEN ? THEN -1 ELSE 1 END "
                            "WHERE id IN (?, ?)", (src, src, dst))
            except sixfold.dbapi.Error as exc:
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=client, args=(s,)) for s in range(1, 9)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 300:
        assert time.monotonic() < deadline and any(t.is_alive() for t in threads), errors[:3]
        time.sleep(0.02)
    cluster.writer.kill()
    for t in threads:
        t.join(30)
    assert len(errors) == len(threads), "every client must see the writer go away"
    cluster.writer.start(30)
    cur = cluster.writer.connect().cursor()
    present = {row[0] for row in cur.execute("SELECT id FROM events").fetchall()}
    missing = [e for e in acked if e not in present]
    assert not missing, f"acknowledged inserts lost: {missing[:10]}"
    assert cur.execute("SELECT sum(balance) FROM accounts").fetchall() == [(TOTAL,)]
    assert cur.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_reader_restarted_under_load_catches_up(compute_cluster):
    cluster = compute_cluster
    create_bank(cluster.writer.connect())
    stop = threading.Event()
    done = [0]

    def load() -> None:
        cur = cluster.writer.connect().cursor()
        rng = random.Random(3)
        tid = 0
        while not stop.is_set():
            tid += 1
            transfer(cur, tid, rng)
            done[0] = tid

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1)
        reader = cluster.readers[0]
        reader.kill()
        time.sleep(1)
        reader.start(30)
        time.sleep(1)
    finally:
        stop.set()
        thread.join(30)
    final = done[0]
    conn = reader.connect()
    deadline = time.monotonic() + 10
    while conn.cursor().execute("SELECT count(*) FROM transfers").fetchall()[0][0] != final:
        assert time.monotonic() < deadline, "the restarted reader did not catch up"
        time.sleep(0.05)
    check_bank(conn)


def test_large_transactions_vacuum_and_schema_changes_reach_readers(compute_cluster):
    cluster = compute_cluster
    conn = cluster.writer.connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, payload BLOB)")
    blob = bytes(range(256)) * 16
    # more pages than the writer's page cache (2000 pages): about 3000 pages of rows
    cur.execute("BEGIN")
    for i in range(3000):
        cur.execute("INSERT INTO big VALUES (?, ?)", (i, blob))
    cur.execute("ROLLBACK")
    assert cur.execute("SELECT count(*) FROM big").fetchall() == [(0,)]
    assert cur.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    cur.execute("BEGIN")
    for i in range(3000):
        cur.execute("INSERT INTO big VALUES (?, ?)", (i, blob))
    cur.execute("COMMIT")
    assert cur.execute("SELECT count(*), sum(length(payload)) FROM big").fetchall() == [(3000, 3000 * len(blob))]
    cur.execute("DELETE FROM big WHERE id >= 100")
    cur.execute("VACUUM")
    cur.execute("ALTER TABLE big ADD COLUMN note TEXT DEFAULT 'n'")
    cur.execute("CREATE INDEX big_note ON big(note)")
    assert cur.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    pages = cur.execute("PRAGMA page_count").fetchall()[0][0]
    assert pages < 400, f"VACUUM should have shrunk the database, it has {pages} pages"
    for reader in cluster.readers:
        rconn = reader.connect()
        rcur = rconn.cursor()
        deadline = time.monotonic() + 10
        while True:
            try:
                rows = rcur.execute("SELECT count(*), min(note) FROM big").fetchall()
                if rows == [(100, "n")]:
                    break
            except sixfold.dbapi.ProgrammingError:
                pass  # the reader has not seen the new column yet
            assert time.monotonic() < deadline, f"{reader.node_id} never saw the VACUUM and schema change"
            time.sleep(0.05)
        assert rcur.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert rcur.execute("PRAGMA page_count").fetchall() == [(pages,)]


def test_reader_refuses_writes_and_sessions_behave(compute_cluster):
    cluster = compute_cluster
    wconn = cluster.writer.connect()
    wcur = wconn.cursor()
    wcur.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER)")
    wcur.execute("INSERT INTO kv VALUES ('a', 1)")
    reader = cluster.readers[0].connect()
    with pytest.raises(ReadOnlyError, match="read-only"):
        reader.cursor().execute("INSERT INTO kv VALUES ('b', 2)")
    with pytest.raises(sixfold.dbapi.ProgrammingError):
        wcur.execute("SELEC nonsense")
    with pytest.raises(sixfold.dbapi.IntegrityError):
        wcur.execute("INSERT INTO kv VALUES ('a', 2)")
    # a session in a write transaction: another session's reads go on on snapshots,
    # and do not see the uncommitted row
    other = cluster.writer.connect()
    wcur.execute("BEGIN")
    wcur.execute("INSERT INTO kv VALUES ('c', 3)")
    assert other.cursor().execute("SELECT count(*) FROM kv").fetchall() == [(1,)]
    wcur.execute("COMMIT")
    assert other.cursor().execute("SELECT count(*) FROM kv").fetchall() == [(2,)]
    # a read transaction on a reader keeps its snapshot
    rcur = reader.cursor()
    deadline = time.monotonic() + 5
    while rcur.execute("SELECT count(*) FROM kv").fetchall() != [(2,)]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rcur.execute("BEGIN")
    assert rcur.execute("SELECT count(*) FROM kv").fetchall() == [(2,)]
    wcur.execute("INSERT INTO kv VALUES ('d', 4)")
    time.sleep(0.3)
    assert rcur.execute("SELECT count(*) FROM kv").fetchall() == [(2,)]
    rcur.execute("COMMIT")
    deadline = time.monotonic() + 5
    while rcur.execute("SELECT count(*) FROM kv").fetchall() != [(3,)]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_storage_garbage_collects_behind_a_compute_writer_and_reader(compute_cluster):
    """The read points compute nodes report must move, or storage keeps every version forever
    (a connection that read the header before locking once pinned LSN 0 for good)."""
    import grpc

    from sixfold.rpc import storage_pb2 as pb

    cluster = compute_cluster
    conn = cluster.writer.connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE gc (id INTEGER PRIMARY KEY, v TEXT)")
    for reader in cluster.readers:   # readers open sessions too: their snapshot connections count
        reader.connect().cursor().execute("SELECT 1").fetchall()
    first_lsn = None
    deadline = time.monotonic() + 60
    while True:
        cur.execute("INSERT INTO gc (v) VALUES (?)", ("x" * 100,))
        first_lsn = first_lsn or conn.last_commit_lsn
        floors = []
        for node in cluster.storage.nodes:
            try:
                reply = node.stub().GetSegmentState(pb.SegmentStateRequest(volume_id="vol-1"), timeout=2)
            except grpc.RpcError:
                continue
            floors += [s.oldest_version_lsn for s in reply.segments if s.segment == 0]
        if floors and min(floors) > first_lsn:
            break
        assert time.monotonic() < deadline, f"storage never collected old versions: oldest_version_lsn {floors}"
        time.sleep(0.05)


@pytest.fixture
def writer_with_table_t(storage_cluster, tmp_path):
    """A writer alone (idle-in-transaction timeout 2 s) with an empty table t (id)."""
    from tests.compute_cluster import ComputeCluster

    cluster = ComputeCluster(tmp_path / "compute", storage_cluster, readers=0,
                             extra_args=["--idle-in-transaction-timeout-s", "2"])
    try:
        cluster.start()
        cluster.writer.connect().cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        yield cluster
    finally:
        cluster.close()


def test_a_session_abandoned_in_a_transaction_gives_the_write_lock_back(writer_with_table_t):
    """A client that vanishes after BEGIN and a write must not block every other writer for good."""
    cluster = writer_with_table_t
    abandoned = cluster.writer.connect()
    abandoned.autocommit = False
    abandoned.cursor().execute("INSERT INTO t VALUES (1)")   # BEGIN + a write: it holds the write lock
    other = cluster.writer.connect()
    other.autocommit = True
    deadline = time.monotonic() + 30
    while True:   # busy until the idle session is rolled back (after about 2 s), then it commits
        try:
            other.cursor().execute("INSERT INTO t VALUES (2)")
            break
        except sixfold.dbapi.OperationalError as exc:
            assert "write lock" in str(exc), exc
            assert time.monotonic() < deadline, "the abandoned transaction kept the write lock"
    with pytest.raises(sixfold.dbapi.Error, match="idle in a transaction"):
        abandoned.cursor().execute("INSERT INTO t VALUES (3)")
    rows = other.cursor().execute("SELECT id FROM t ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(2,)]   # the abandoned write was rolled back


def test_a_session_closed_while_its_begin_waits_for_the_write_lock_gives_it_back(writer_with_table_t):
    """The race behind a chaos-run hang: a client gives up on a BEGIN that waits for the write
    lock and closes its session; the BEGIN, still waiting on the node, later gets the lock. A
    closed session must give it back at once, not hold it for good (no reaper knows it any more)."""
    cluster = writer_with_table_t
    holder = cluster.writer.connect(autocommit=False)
    holder.cursor().execute("INSERT INTO t VALUES (1)")          # holds the write lock
    impatient = sixfold.connect(cluster.writer.address, autocommit=False, timeout_s=1.0)
    with pytest.raises(sixfold.dbapi.OperationalError):
        impatient.cursor().execute("INSERT INTO t VALUES (2)")   # BEGIN waits (busy timeout 5 s); we don't
    impatient.close()                                            # the node closes the session meanwhile
    assert not impatient.session_left_open
    holder.commit()                                              # now the waiting BEGIN gets the lock
    other = cluster.writer.connect()
    other.cursor().execute("INSERT INTO t VALUES (3)")           # busy timeout 5 s: BUSY if the lock leaked
    rows = other.cursor().execute("SELECT id FROM t ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(1,), (3,)]

