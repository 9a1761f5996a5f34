"""Write forwarding on a two-region cluster of real processes (`up --regions 2 --write-forwarding`):
a session on region 2's reader sends writes that run on region 1's writer, through psycopg and
through `sixfold.connect`. The writer is killed in the last test (the cluster fails over)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

import sixfold
from tests.test_cli import force_teardown, free_ports
from tests.test_global_regions import address_of, cli, rows_in, wait_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
READ_OWN_WRITE_ROUNDS = 40
FAILOVER_WITHIN_S = 90.0


def pg_dsn(data_dir: Path, address: str) -> str:
    """The instance's own PostgreSQL port (compute port + 1000)."""
    host, port = address.rsplit(":", 1)
    password = (data_dir / "pg_password").read_text().strip()
    return f"host={host} port={int(port) + 1000} user=sixfold password={password} dbname=sixfold connect_timeout=10"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("forwarding") / "cluster"
    storage_port, compute_port = free_ports(regions=2)
    try:
        cli("up", "--data-dir", data_dir, "--regions", 2, "--readers", 1, "--storage-port", storage_port,
            "--compute-port", compute_port, "--write-forwarding", "--json")
        writer = sixfold.connect(address_of(data_dir, "writer-1"), autocommit=True)
        writer.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        writer.close()
        secondary = address_of(data_dir, "reader-2-1")
        wait_rows(secondary, "SELECT count(*) FROM t", [(0,)], timeout_s=60)
        yield data_dir, secondary
    finally:
        force_teardown(data_dir)


def test_session_consistency_reads_its_own_forwarded_write_every_time_through_psycopg(cluster):
    data_dir, secondary = cluster
    with psycopg.connect(pg_dsn(data_dir, secondary), autocommit=True) as conn:
        conn.execute("SET sixfold.replica_read_consistency = 'session'")
        assert conn.execute("SHOW sixfold.replica_read_consistency").fetchall() == [("session",)]
        for i in range(READ_OWN_WRITE_ROUNDS):
            inserted = conn.execute("INSERT INTO t (v) VALUES (%s) RETURNING id", (f"pg-{i}",)).fetchone()[0]
            # the very next read, on this reader in region 2, sees the write made in region 1
            assert conn.execute("SELECT v FROM t WHERE id = %s", (inserted,)).fetchall() == [(f"pg-{i}",)]
    # it was committed on the primary writer
    assert rows_in(address_of(data_dir, "writer-1"), "SELECT count(*) FROM t WHERE v LIKE 'pg-%'") == \
        [(READ_OWN_WRITE_ROUNDS,)]


def test_session_consistency_reads_its_own_forwarded_write_every_time_through_sixfold_connect(cluster):
    _, secondary = cluster
    conn = sixfold.connect(secondary, autocommit=True, replica_read_consistency="session")
    try:
        assert conn.role == "reader" and conn.write_forwarding
        cur = conn.cursor()
        last_lsn = 0
        for i in range(READ_OWN_WRITE_ROUNDS):
            cur.execute("INSERT INTO t (v) VALUES (?)", (f"db-{i}",))
            assert conn.last_forwarded and conn.last_commit_lsn > last_lsn   # the writer's commit LSN
            last_lsn = conn.last_commit_lsn
            assert cur.execute("SELECT count(*) FROM t WHERE v = ?", (f"db-{i}",)).fetchall() == [(1,)]
            assert not conn.last_forwarded   # the read ran here
    finally:
        conn.close()


def test_global_consistency_sees_every_commit_made_on_the_primary_before_the_read(cluster):
    data_dir, secondary = cluster
    writer = sixfold.connect(address_of(data_dir, "writer-1"), autocommit=True)
    reader = sixfold.connect(secondary, autocommit=True)
    try:
        reader.cursor().execute("SET sixfold.replica_read_consistency = 'global'")
        for i in range(10):
            writer.cursor().execute("INSERT INTO t (v) VALUES (?)", (f"global-{i}",))
            assert reader.cursor().execute("SELECT count(*) FROM t WHERE v = ?", (f"global-{i}",)).fetchall() == [(1,)]
    finally:
        writer.close()
        reader.close()


def test_without_forwarding_a_write_on_a_reader_is_refused_with_25006(cluster):
    data_dir, secondary = cluster
    # the session did not opt in
    with psycopg.connect(pg_dsn(data_dir, secondary), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO t (v) VALUES ('refused-1')")
        conn.execute("SET sixfold.replica_read_consistency = 'session'")
        conn.execute("RESET sixfold.replica_read_consistency")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO t (v) VALUES ('refused-2')")
    # a reader without write forwarding (region 1's) ignores the setting
    with psycopg.connect(pg_dsn(data_dir, address_of(data_dir, "reader-1")), autocommit=True) as conn:
        conn.execute("SET sixfold.replica_read_consistency = 'session'")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO t (v) VALUES ('refused-3')")
    conn = sixfold.connect(secondary, autocommit=True)
    try:
        with pytest.raises(sixfold.dbapi.ReadOnlyError):
            conn.cursor().execute("INSERT INTO t (v) VALUES ('refused-4')")
    finally:
        conn.close()
    with pytest.raises(sixfold.dbapi.ProgrammingError, match="strong"):
        sixfold.connect(secondary, replica_read_consistency="strong")
    assert rows_in(address_of(data_dir, "writer-1"), "SELECT count(*) FROM t WHERE v LIKE 'refused-%'") == [(0,)]


def test_a_constraint_error_on_the_primary_comes_back_with_its_sqlstate(cluster):
    data_dir, secondary = cluster
    with psycopg.connect(pg_dsn(data_dir, secondary), autocommit=True,
                         options="-c sixfold.replica_read_consistency=eventual") as conn:
        conn.execute("INSERT INTO t (v) VALUES ('unique-1')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO t (v) VALUES ('unique-1')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.transaction():   # inside a forwarded transaction: it fails, the client rolls back
                conn.execute("INSERT INTO t (v) VALUES ('unique-2')")
                conn.execute("INSERT INTO t (v) VALUES ('unique-1')")
    conn = sixfold.connect(secondary, autocommit=True, replica_read_consistency="eventual")
    try:
        with pytest.raises(sixfold.dbapi.IntegrityError):
            conn.cursor().execute("INSERT INTO t (v) VALUES ('unique-1')")
    finally:
        conn.close()
    assert rows_in(address_of(data_dir, "writer-1"), "SELECT v FROM t WHERE v LIKE 'unique-%'") == [("unique-1",)]


def test_an_explicit_transaction_is_forwarded_as_a_whole(cluster):
    data_dir, secondary = cluster
    writer = address_of(data_dir, "writer-1")
    # global: this reader's snapshot holds every commit made before the read, so the reads the move
    # re-runs on the primary give the same answers (nobody else writes meanwhile)
    with psycopg.connect(pg_dsn(data_dir, secondary), options="-c sixfold.replica_read_consistency=global") as conn:
        with conn.transaction():
            before = conn.execute("SELECT count(*) FROM t").fetchone()[0]   # here, at this reader's snapshot
            conn.execute("INSERT INTO t (v) VALUES ('txn-a')")              # the transaction moves to the primary
            conn.execute("INSERT INTO t (v) VALUES ('txn-b')")
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == before + 2   # sees its own writes
            assert rows_in(writer, "SELECT count(*) FROM t WHERE v LIKE 'txn-%'") == [(0,)]   # not committed yet
        assert conn.execute("SELECT v FROM t WHERE v LIKE 'txn-%' ORDER BY v").fetchall() == [("txn-a",), ("txn-b",)]
        conn.commit()
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO t (v) VALUES ('txn-rolled-back')")
        assert conn.execute("SELECT count(*) FROM t WHERE v = 'txn-rolled-back'").fetchone() == (0,)
        conn.commit()
        # a value read here changes on the primary before the transaction's first write: the
        # transaction cannot be what it read, and fails with 40001 instead of writing over it
        conn.execute("INSERT INTO t (id, v) VALUES (1000000, 'old')")
        conn.commit()
        other = sixfold.connect(writer, autocommit=True)
        try:
            with pytest.raises(psycopg.errors.SerializationFailure):
                with conn.transaction():
                    assert conn.execute("SELECT v FROM t WHERE id = 1000000").fetchone() == ("old",)
                    other.cursor().execute("UPDATE t SET v = 'new' WHERE id = 1000000")
                    conn.execute("UPDATE t SET v = 'old-plus-one' WHERE id = 1000000")
        finally:
            other.close()
        assert rows_in(writer, "SELECT v FROM t WHERE id = 1000000") == [("new",)]


def test_copy_and_a_dbapi_transaction_through_a_forwarding_reader(cluster):
    data_dir, secondary = cluster
    with psycopg.connect(pg_dsn(data_dir, secondary), options="-c sixfold.replica_read_consistency=session") as conn:
        with conn.cursor().copy("COPY t (v) FROM STDIN") as copy:
            for i in range(2_000):
                copy.write_row((f"copy-{i}",))
        conn.commit()
        assert conn.execute("SELECT count(*) FROM t WHERE v LIKE 'copy-%'").fetchone() == (2_000,)
    conn = sixfold.connect(secondary, replica_read_consistency="session")   # autocommit off: BEGIN first
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO t (v) VALUES ('dbapi-txn-1')")
        cur.execute("INSERT INTO t (v) VALUES ('dbapi-txn-2')")
        assert cur.execute("SELECT count(*) FROM t WHERE v LIKE 'dbapi-txn-%'").fetchall() == [(2,)]
        assert conn.last_forwarded and conn.in_transaction
        conn.commit()
        assert conn.last_commit_lsn > 0 and not conn.in_transaction
        assert cur.execute("SELECT count(*) FROM t WHERE v LIKE 'dbapi-txn-%'").fetchall() == [(2,)]
        conn.rollback()
    finally:
        conn.close()


def test_the_writer_killed_mid_forwarded_transaction_is_a_retryable_error_and_commits_nothing(cluster):
    """Last in this module: the primary region fails over to reader-1, and forwarding follows it."""
    data_dir, secondary = cluster
    dsn = pg_dsn(data_dir, secondary)
    conn = psycopg.connect(dsn, options="-c sixfold.replica_read_consistency=session")
    try:
        conn.execute("INSERT INTO t (v) VALUES ('lost-1')")
        conn.execute("INSERT INTO t (v) VALUES ('lost-2')")
        cli("chaos", "kill", "--data-dir", data_dir, "--writer", "--json")
        with pytest.raises(psycopg.OperationalError) as failed:
            conn.execute("INSERT INTO t (v) VALUES ('lost-3')")
            conn.commit()
        assert failed.value.sqlstate == "08006", failed.value   # a connection error: reconnect and retry
        assert conn.closed
    finally:
        conn.close()
    # the client retries the whole transaction on a new connection; forwarding finds the new writer
    deadline = time.monotonic() + FAILOVER_WITHIN_S
    while True:
        try:
            with psycopg.connect(dsn, options="-c sixfold.replica_read_consistency=session") as retry:
                retry.execute("INSERT INTO t (v) VALUES ('retried-1')")
                retry.execute("INSERT INTO t (v) VALUES ('retried-2')")
                retry.commit()
                rows = retry.execute("SELECT v FROM t WHERE v LIKE 'lost-%' OR v LIKE 'retried-%' ORDER BY v")
                assert rows.fetchall() == [("retried-1",), ("retried-2",)]
            break
        except psycopg.OperationalError as exc:
            assert exc.sqlstate in ("08006", "08007", None), exc
            assert exc.sqlstate != "08007", f"a forwarded statement before COMMIT cannot have an unknown outcome: {exc}"
            assert time.monotonic() < deadline, f"no writer to forward to within {FAILOVER_WITHIN_S} s: {exc}"
            time.sleep(0.5)
    new_writer = next(n["address"] for n in cli("status", "--data-dir", data_dir, "--json")
                      if n["kind"] == "compute" and n["role"] == "writer" and n["health"] == "ok")
    assert new_writer != address_of(data_dir, "writer-1")
    assert rows_in(new_writer, "SELECT v FROM t WHERE v LIKE 'lost-%' OR v LIKE 'retried-%' ORDER BY v") == [
        ("retried-1",), ("retried-2",)]
