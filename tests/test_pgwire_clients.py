"""Real PostgreSQL clients against a real cluster: psql, psycopg 3, pgbench, sysbench.

One cluster per module (six storage nodes, a writer and a reader, each compute node
serving the PostgreSQL protocol with SCRAM-SHA-256 and TLS); each test uses its own
tables. psql, pgbench and sysbench come from Debian (.ci/run installs them).
"""

from __future__ import annotations

import datetime as dt
import decimal
import shutil
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors, sql

from tests.compute_cluster import started_cluster

PASSWORD = "correct horse battery staple"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory):
    with started_cluster(tmp_path_factory.mktemp("pgwire"), readers=1, pg=True, pg_password=PASSWORD) as compute:
        yield compute


@pytest.fixture
def writer_dsn(pg_cluster) -> str:
    return pg_cluster.writer.pg_dsn()


@pytest.fixture
def conn(writer_dsn):
    with psycopg.connect(writer_dsn, autocommit=True, connect_timeout=10) as c:
        yield c


def run_tool(args: list[str], timeout_s: float = 120, env: dict | None = None) -> str:
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} is not installed (.ci/run installs it from Debian)")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    assert proc.returncode == 0, f"{' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------- psycopg


def test_psycopg_parameters_types_and_returning(conn):
    conn.execute("CREATE TABLE pp_items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), "
                 "qty bigint, ok boolean, at timestamptz, raw bytea, meta json, score double precision)")
    at = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    row = conn.execute(
        "INSERT INTO pp_items (name, price, qty, ok, at, raw, meta, score) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "RETURNING id, name", ("widget", decimal.Decimal("12.50"), 2**40, True, at, b"\x00\xffbin", '{"a": 1}', 0.25),
    ).fetchone()
    assert row == (1, "widget")
    got = conn.execute("SELECT name, price, qty, ok, at, raw, meta, score FROM pp_items WHERE id = %s",
                       (1,)).fetchone()
    assert got[0] == "widget" and got[1] == decimal.Decimal("12.5") and got[2] == 2**40 and got[3] is True
    assert got[4] == at and got[5] == b"\x00\xffbin" and got[6] == {"a": 1} and got[7] == 0.25
    assert conn.execute("SELECT count(*), max(qty), sum(qty) FROM pp_items").fetchone() == (1, 2**40, 2**40)
    # NULLs both ways
    conn.execute("INSERT INTO pp_items (name, price) VALUES (%s, %s)", ("empty", None))
    assert conn.execute("SELECT price, ok FROM pp_items WHERE name = %s", ("empty",)).fetchone() == (None, None)


def test_psycopg_parameters_never_inject_sql(conn):
    conn.execute("CREATE TABLE pp_inject (id int PRIMARY KEY, v text)")
    evil = "x'); DROP TABLE pp_inject; --"
    conn.execute("INSERT INTO pp_inject VALUES (%s, %s)", (1, evil))
    assert conn.execute("SELECT v FROM pp_inject WHERE v = %s", (evil,)).fetchone() == (evil,)
    assert conn.execute("SELECT count(*) FROM pp_inject WHERE v = %s", ("' OR '1'='1",)).fetchone() == (0,)
    # the same through psql-style simple queries with literals lifted into parameters
    conn.execute(sql.SQL("INSERT INTO pp_inject VALUES (2, {})").format(sql.Literal("a'; DELETE FROM pp_inject; --")))
    assert conn.execute("SELECT count(*) FROM pp_inject").fetchone() == (2,)


def test_psycopg_on_conflict_and_prepared_statements(conn):
    conn.execute("CREATE TABLE pp_kv (k text PRIMARY KEY, v int NOT NULL)")
    upsert = "INSERT INTO pp_kv (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = pp_kv.v + EXCLUDED.v"
    for _ in range(7):
        conn.execute(upsert, ("a", 1), prepare=True)   # a server-side prepared statement after the first
    assert conn.execute("SELECT v FROM pp_kv WHERE k = %s", ("a",), prepare=True).fetchone() == (7,)
    conn.execute("INSERT INTO pp_kv VALUES ('b', 1) ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO pp_kv VALUES ('b', 2) ON CONFLICT DO NOTHING")
    assert conn.execute("SELECT v FROM pp_kv WHERE k = 'b'").fetchone() == (1,)
    with pytest.raises(errors.UniqueViolation):
        conn.execute("INSERT INTO pp_kv VALUES ('b', 3)")
    with pytest.raises(errors.UndefinedTable):
        conn.execute("SELECT * FROM pp_no_such_table")
    with pytest.raises(errors.SyntaxError):
        conn.execute("SELEC 1")


def test_psycopg_transactions(writer_dsn):
    with psycopg.connect(writer_dsn) as c:   # autocommit off: psycopg sends BEGIN
        c.execute("CREATE TABLE pp_tx (id int PRIMARY KEY, v int)")
        c.commit()
        c.execute("INSERT INTO pp_tx VALUES (1, 10)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        c.rollback()
        assert c.execute("SELECT count(*) FROM pp_tx").fetchone() == (0,)
        c.execute("INSERT INTO pp_tx VALUES (1, 10)")
        c.commit()
        # an error aborts the transaction until ROLLBACK, as in PostgreSQL
        c.execute("INSERT INTO pp_tx VALUES (2, 20)")
        with pytest.raises(errors.UniqueViolation):
            c.execute("INSERT INTO pp_tx VALUES (1, 11)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        c.rollback()
        assert c.execute("SELECT id, v FROM pp_tx ORDER BY id").fetchall() == [(1, 10)]
        c.commit()
        with c.transaction():
            c.execute("UPDATE pp_tx SET v = v + 1 WHERE id = 1")
            with pytest.raises(errors.DivisionByZero):
                with c.transaction():   # a savepoint
                    c.execute("INSERT INTO pp_tx VALUES (3, 30)")
                    c.execute("SELECT 1 / 0")
        assert c.execute("SELECT id, v FROM pp_tx ORDER BY id").fetchall() == [(1, 11)]


def test_psycopg_copy_in_and_out(conn):
    conn.execute("CREATE TABLE pp_copy (id int PRIMARY KEY, name text, note text)")
    rows = [(i, f"name {i}", None if i % 3 == 0 else "tab\there\nnewline \\ back") for i in range(2000)]
    with conn.cursor() as cur:
        with cur.copy("COPY pp_copy (id, name, note) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
    assert conn.execute("SELECT count(*), count(note) FROM pp_copy").fetchone() == (2000, 2000 - 667)
    out = []
    with conn.cursor() as cur:
        with cur.copy("COPY pp_copy TO STDOUT") as copy:
            for r in copy.rows():
                out.append((int(r[0]), r[1], r[2]))
    assert sorted(out) == rows
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, name FROM pp_copy WHERE id < 3 ORDER BY id) TO STDOUT WITH (FORMAT csv)") as copy:
            text = b"".join(bytes(chunk) for chunk in copy).decode()
    assert text == "0,name 0\n1,name 1\n2,name 2\n"


def test_psycopg_binary_results_and_parameters(writer_dsn):
    with psycopg.connect(writer_dsn, autocommit=True) as c:
        c.execute("CREATE TABLE pp_bin (id bigint PRIMARY KEY, f double precision, n numeric, b boolean, t text, "
                  "ts timestamp, d date, raw bytea)")
        ts = dt.datetime(2023, 1, 2, 3, 4, 5, 600000)
        with c.cursor(binary=True) as cur:
            cur.execute("INSERT INTO pp_bin VALUES (%b, %b, %b, %b, %b, %b, %b, %b)",
                        (5, 1.5, decimal.Decimal("-123.0045"), False, "héllo", ts, dt.date(2020, 2, 29), b"\x01\x02"))
            cur.execute("SELECT id, f, n, b, t, ts, d, raw FROM pp_bin WHERE id = %b", (5,))
            assert cur.fetchone() == (5, 1.5, decimal.Decimal("-123.0045"), False, "héllo", ts, dt.date(2020, 2, 29),
                                      b"\x01\x02")


def test_reader_refuses_writes_with_25006(pg_cluster):
    with psycopg.connect(pg_cluster.writer.pg_dsn(), autocommit=True) as w:
        w.execute("CREATE TABLE pp_ro (id int PRIMARY KEY)")
        w.execute("INSERT INTO pp_ro VALUES (1)")
    reader = pg_cluster.readers[0]
    with psycopg.connect(reader.pg_dsn(), autocommit=True) as r:
        deadline = time.monotonic() + 10
        while r.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'pp_ro'").fetchone() != (1,):
            assert time.monotonic() < deadline, "the reader never saw the table"
            time.sleep(0.05)
        with pytest.raises(errors.ReadOnlySqlTransaction) as info:
            r.execute("INSERT INTO pp_ro VALUES (2)")
        assert info.value.sqlstate == "25006"


def test_wrong_password_and_unknown_user_are_refused(pg_cluster):
    w = pg_cluster.writer
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"host={w.host} port={w.pg_port} user=sixfold dbname=x password=wrong", connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(f"host={w.host} port={w.pg_port} user=mallory dbname=x password='{PASSWORD}'",
                        connect_timeout=10)


def test_tls_is_offered(pg_cluster):
    with psycopg.connect(pg_cluster.writer.pg_dsn(sslmode="require"), autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_cancel_request_interrupts_a_running_query(conn, writer_dsn):
    conn.execute("CREATE TABLE pp_cancel (id int PRIMARY KEY)")
    conn.execute("INSERT INTO pp_cancel VALUES (1), (2), (3)")
    with psycopg.connect(writer_dsn, autocommit=True) as c:
        slow = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000000) "
                "SELECT count(*) FROM r")
        timer = threading.Timer(0.5, c.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            c.execute(slow)
        timer.join()
        assert time.monotonic() - t0 < 30
        assert c.execute("SELECT count(*) FROM pp_cancel").fetchone() == (3,)   # the session goes on


def test_set_show_and_unsupported_features(conn):
    conn.execute("SET application_name = 'pp-test'")
    assert conn.execute("SHOW application_name").fetchone() == ("pp-test",)
    assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("pp-test",)
    assert conn.execute("SHOW server_version").fetchone()[0].startswith("15")
    with pytest.raises(errors.FeatureNotSupported):
        conn.execute("LISTEN channel")
    with pytest.raises(errors.FeatureNotSupported):
        conn.execute("CREATE TABLE pp_arr (a int[])")
    with pytest.raises(errors.FeatureNotSupported):
        conn.execute("SELECT ARRAY[1, 2]")


# ---------------------------------------------------------------- psql


def psql(dsn: str, *commands: str) -> str:
    args = ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1"]
    for c in commands:
        args += ["-c", c]
    return run_tool(args, timeout_s=60, env={"PATH": "/usr/bin:/bin", "PGPASSWORD": PASSWORD,
                                             "PGCONNECT_TIMEOUT": "10"})


def test_psql_queries_and_the_d_family(pg_cluster):
    w = pg_cluster.writer
    dsn = f"postgresql://sixfold@{w.host}:{w.pg_port}/sixfold"
    out = psql(dsn, "CREATE TABLE ps_orders (id serial PRIMARY KEY, customer varchar(40) NOT NULL, "
                    "total numeric(12,2), paid boolean DEFAULT false, placed timestamptz)",
               "CREATE INDEX ps_orders_customer ON ps_orders (customer)",
               "INSERT INTO ps_orders (customer, total, paid) VALUES ('ann', 10.5, true), ('bob', 3, false)",
               "SELECT customer, total, paid FROM ps_orders ORDER BY id")
    assert "INSERT 0 2" in out and " ann      |  10.5 | t" in out and "(2 rows)" in out
    listing = psql(dsn, r"\dt")
    assert "ps_orders" in listing and "table" in listing
    described = psql(dsn, r"\d ps_orders")
    for expected in ('Table "public.ps_orders"', "customer", "character varying(40)", "not null",
                     "numeric(12,2)", "boolean", "timestamp with time zone", '"ps_orders_pkey" PRIMARY KEY, btree (id)',
                     '"ps_orders_customer" btree (customer)'):
        assert expected in described, f"{expected!r} missing from:\n{described}"
    assert "Access method: heap" in psql(dsn, r"\d+ ps_orders")
    assert "sixfold" in psql(dsn, r"\l") and "Superuser" in psql(dsn, r"\du")
    assert "ps_orders" in psql(dsn, r"\d")
    # ON_ERROR_STOP: a failing statement makes psql exit non-zero with the server's message
    proc = subprocess.run(["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM ps_missing"],
                          capture_output=True, text=True, timeout=60, env={"PGPASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and 'relation "ps_missing" does not exist' in proc.stderr or \
        "no such table" in proc.stderr


# ---------------------------------------------------------------- pgbench and sysbench


def test_pgbench_init_and_run(pg_cluster):
    w = pg_cluster.writer
    env = {"PGPASSWORD": PASSWORD, "PATH": "/usr/bin:/bin:/usr/lib/postgresql/15/bin"}
    base = ["pgbench", "-h", w.host, "-p", str(w.pg_port), "-U", "sixfold"]
    out = run_tool(base + ["-i", "-s", "1", "sixfold"], timeout_s=180, env=env)
    assert "done in" in out
    for mode in ("simple", "prepared"):
        out = run_tool(base + ["-M", mode, "-c", "2", "-t", "30", "sixfold"], timeout_s=180, env=env)
        assert "number of transactions actually processed: 60/60" in out, out
        assert "number of failed transactions: 0" in out
    with psycopg.connect(w.pg_dsn(), autocommit=True) as c:
        # every transaction moved the same delta through accounts, tellers and branches
        a, t, b = (c.execute(f"SELECT sum({col}) FROM pgbench_{table}").fetchone()[0]
                   for table, col in (("accounts", "abalance"), ("tellers", "tbalance"), ("branches", "bbalance")))
        assert a == t == b
        assert c.execute("SELECT count(*) FROM pgbench_history").fetchone() == (60,)


def test_sysbench_oltp_read_write(pg_cluster):
    w = pg_cluster.writer
    base = ["sysbench", "oltp_read_write", "--db-driver=pgsql", f"--pgsql-host={w.host}",
            f"--pgsql-port={w.pg_port}", "--pgsql-user=sixfold", f"--pgsql-password={PASSWORD}",
            "--pgsql-db=sixfold", "--tables=1", "--table-size=1000"]
    run_tool(base + ["prepare"], timeout_s=180)
    out = run_tool(base + ["--threads=2", "--time=5", "--report-interval=0", "run"], timeout_s=180)
    assert "transactions:" in out
    transactions = int(out.split("transactions:")[1].split()[0])
    errors_count = int(out.split("errors:")[1].split()[0])
    assert transactions > 0 and errors_count == 0, out
    run_tool(base + ["cleanup"], timeout_s=120)
    with psycopg.connect(w.pg_dsn(), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'sbtest1'").fetchone() == (0,)
