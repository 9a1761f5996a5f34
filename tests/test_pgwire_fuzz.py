"""Random and malformed protocol messages never crash the server or disturb another session;
a commit whose outcome storage cannot decide ends the connection instead of answering.

A real cluster (writer with the PostgreSQL port, trust auth); a healthy psycopg
session holds an open transaction while hypothesis throws byte soup and
half-valid messages at fresh connections; afterwards that session's transaction
must still be intact and commit, and the server must still take new connections.
"""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.compute_cluster import ComputeCluster, started_cluster
from tests.storage_cluster import StorageCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pg_writer(tmp_path_factory):
    with started_cluster(tmp_path_factory.mktemp("pgfuzz"), readers=0, pg=True) as compute:
        yield compute.writer


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode("utf-8", "replace").replace(b"\0", b"") + b"\0"


STARTUP = (lambda body: struct.pack("!i", len(body) + 4) + body)(
    struct.pack("!i", 196608) + b"user\0sixfold\0database\0sixfold\0\0")

sql_text = st.sampled_from(["SELECT 1", "SELECT $1", "SELECT * FROM fz_t", "INSERT INTO fz_t VALUES ($1)",
                            "BEGIN", "COMMIT", "ROLLBACK", "SELEC", "", "COPY fz_t FROM STDIN",
                            "SELECT 1; SELECT 2", "SET x = 1", "SHOW x", "DROP TABLE fz_t"]) | st.text(max_size=40)
names = st.sampled_from(["", "s1", "p1"]) | st.text(max_size=5)
params = st.lists(st.none() | st.binary(max_size=12), max_size=4)

message = st.one_of(
    st.builds(lambda q: typed(b"Q", cstr(q)), sql_text),
    st.builds(lambda n, q, oids: typed(b"P", cstr(n) + cstr(q) + struct.pack("!h", len(oids))
                                       + b"".join(struct.pack("!I", o) for o in oids)),
              names, sql_text, st.lists(st.sampled_from([0, 16, 17, 20, 23, 25, 700, 1700, 99999]), max_size=3)),
    st.builds(lambda portal, stmt, fmts, ps, rf: typed(b"B", cstr(portal) + cstr(stmt) + struct.pack("!h", len(fmts))
                                                       + b"".join(struct.pack("!h", f) for f in fmts)
                                                       + struct.pack("!h", len(ps))
                                                       + b"".join(b"\xff\xff\xff\xff" if p is None else
                                                                  struct.pack("!i", len(p)) + p for p in ps)
                                                       + struct.pack("!h", len(rf))
                                                       + b"".join(struct.pack("!h", f) for f in rf)),
              names, names, st.lists(st.integers(0, 2), max_size=3), params, st.lists(st.integers(0, 1), max_size=2)),
    st.builds(lambda k, n: typed(b"D", k + cstr(n)), st.sampled_from([b"S", b"P", b"X"]), names),
    st.builds(lambda n, m: typed(b"E", cstr(n) + struct.pack("!i", m)), names, st.integers(-5, 5)),
    st.builds(lambda k, n: typed(b"C", k + cstr(n)), st.sampled_from([b"S", b"P"]), names),
    st.just(typed(b"S", b"")), st.just(typed(b"H", b"")),
    st.builds(lambda d: typed(b"d", d), st.binary(max_size=30)), st.just(typed(b"c", b"")),
    st.builds(lambda k, b: typed(k, b), st.binary(min_size=1, max_size=1), st.binary(max_size=20)),
    st.binary(max_size=20),                                            # raw garbage
    st.builds(lambda n: struct.pack("!i", n), st.integers(-2**31, 2**31 - 1)),   # a bare length
)


def exchange(host: str, port: int, payload: bytes, with_startup: bool) -> None:
    with socket.create_connection((host, port), timeout=5) as s:
        if with_startup:
            s.sendall(STARTUP)
            buf = b""
            while b"Z\x00\x00\x00\x05" not in buf:
                chunk = s.recv(65536)
                assert chunk, "the server closed a valid startup"
                buf += chunk
        try:
            s.sendall(payload)
            s.settimeout(0.3)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if not s.recv(65536):
                    break   # the server closed this connection: fine for garbage
        except (socket.timeout, ConnectionError):
            pass


@pytest.fixture(scope="module")
def bystander(pg_writer):
    with psycopg.connect(pg_writer.pg_dsn(), autocommit=True) as c:
        c.execute("CREATE TABLE fz_t (v int)")
        c.execute("CREATE TABLE fz_bystander (id int PRIMARY KEY, v text)")
    c = psycopg.connect(pg_writer.pg_dsn(), autocommit=True)
    yield c
    c.close()


@given(msgs=st.lists(message, min_size=1, max_size=8), with_startup=st.booleans())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_messages_do_not_disturb_the_server_or_other_sessions(pg_writer, bystander, msgs, with_startup):
    exchange(pg_writer.host, pg_writer.pg_port, b"".join(msgs), with_startup)
    assert pg_writer.running, f"the server died:\n{pg_writer.log_tail()}"
    assert bystander.execute("SELECT 41 + 1").fetchone() == (42,)


def test_a_bystander_transaction_survives_the_fuzzing(pg_writer):
    with psycopg.connect(pg_writer.pg_dsn()) as c:   # a transaction open across many fuzz connections
        c.execute("INSERT INTO fz_bystander VALUES (1, 'kept')")
        for i in range(40):
            exchange(pg_writer.host, pg_writer.pg_port, typed(b"Q", cstr("SELECT 1")) + b"\x00garbage" * i, True)
        c.commit()
        assert c.execute("SELECT v FROM fz_bystander WHERE id = 1").fetchone() == ("kept",)
    assert pg_writer.running


@pytest.mark.timeout(180)
def test_a_commit_without_a_write_quorum_is_a_connection_error_the_client_can_retry(tmp_path):
    """Storage loses its write quorum mid-transaction: COMMIT's outcome is unknown, so the
    session ends with a FATAL 08007 and a closed connection (never a silent success); once
    the nodes are back, a new connection works and the table holds the row or not, whole."""
    storage = StorageCluster(tmp_path / "storage")
    compute = ComputeCluster(tmp_path / "compute", storage, readers=0, pg=True,
                             extra_args=["--commit-timeout-s", "2"])
    try:
        storage.start()
        compute.start()
        writer = compute.writer
        with psycopg.connect(writer.pg_dsn(), autocommit=True) as c:
            c.execute("CREATE TABLE lost (id int PRIMARY KEY, v text)")
        c = psycopg.connect(writer.pg_dsn())
        c.execute("INSERT INTO lost VALUES (1, 'maybe')")
        stopped = [n.node_id for n in storage.nodes[:3]]   # 3 of 6 left: no write quorum
        for node_id in stopped:
            storage.kill(node_id)
        with pytest.raises(psycopg.OperationalError) as info:
            c.commit()
        assert info.value.sqlstate == "08007", info.value   # transaction_resolution_unknown
        assert c.closed or c.pgconn.status != psycopg.pq.ConnStatus.OK
        c.close()
        for node_id in stopped:
            storage.start_node(node_id)
        deadline = time.monotonic() + 60
        while True:   # the client's retry: reconnect and look
            try:
                with psycopg.connect(writer.pg_dsn(), autocommit=True, connect_timeout=5) as again:
                    rows = again.execute("SELECT id, v FROM lost").fetchall()
                    break
            except psycopg.Error:
                assert time.monotonic() < deadline, f"the writer never came back:\n{writer.log_tail()}"
                time.sleep(0.5)
        assert rows in ([], [(1, "maybe")])
    finally:
        compute.close()
        storage.close()
