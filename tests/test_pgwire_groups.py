"""Autocommit writes over the PostgreSQL protocol join the commit groups.

Real processes: six storage nodes and a writer serving the PostgreSQL protocol;
psycopg sessions in threads. A group is one SQLite transaction for statements of
many sessions, so each session must still get its own outcome, and nothing may be
acknowledged that a crash or a lost write quorum could take back.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors

from tests.compute_cluster import started_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SESSIONS = 8


@pytest.fixture
def cluster(tmp_path):
    with started_cluster(tmp_path, readers=0, pg=True, extra_args=["--commit-timeout-s", "2"]) as compute:
        yield compute


def connect(cluster, **kwargs) -> psycopg.Connection:
    return psycopg.connect(cluster.writer.pg_dsn(), autocommit=True, connect_timeout=10, **kwargs)


def test_concurrent_autocommit_writes_each_get_their_own_outcome(cluster):
    """Sessions insert at the same time, every third id one another session already took:
    exactly the duplicates fail (23505, in the session that sent them), the rest is there."""
    with connect(cluster) as c:
        c.execute("CREATE TABLE g_items (id int PRIMARY KEY, session int NOT NULL)")
        c.cursor().executemany("INSERT INTO g_items VALUES (%s, -1)", [(i * 3,) for i in range(1, 101)])
    outcomes: dict[int, list[tuple[int, str, str]]] = {s: [] for s in range(SESSIONS)}

    def session(no: int) -> None:
        with connect(cluster) as c:
            for n in range(1, 61):
                seeded = n % 3 == 0
                row_id = n * 3 if seeded else (no + 1) * 1000 + n
                try:
                    c.execute("INSERT INTO g_items VALUES (%s, %s)", (row_id, no))
                    got = "ok"
                except errors.UniqueViolation:
                    got = "duplicate"
                outcomes[no].append((row_id, "duplicate" if seeded else "ok", got))

    threads = [threading.Thread(target=session, args=(no,)) for no in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with connect(cluster) as c:
        rows = dict(c.execute("SELECT id, session FROM g_items WHERE session >= 0").fetchall())
    for no, got in outcomes.items():
        assert len(got) == 60
        for row_id, expected, outcome in got:
            assert outcome == expected, (no, row_id)
            if expected == "ok":
                assert rows.get(row_id) == no, (no, row_id)
    assert len(rows) == SESSIONS * 40


def test_acknowledged_autocommit_writes_survive_a_writer_kill(cluster):
    """SIGKILL the writer while sessions insert: after its restart every acknowledged row is there."""
    with connect(cluster) as c:
        c.execute("CREATE TABLE g_events (id bigint PRIMARY KEY, session int)")
    acked: list[int] = []
    failed: list[str] = []

    def session(no: int) -> None:
        try:
            with connect(cluster) as c:
                for n in range(1, 10**6):
                    c.execute("INSERT INTO g_events VALUES (%s, %s)", (no * 10**6 + n, no))
                    acked.append(no * 10**6 + n)
        except psycopg.Error as exc:
            failed.append(repr(exc))

    threads = [threading.Thread(target=session, args=(no,)) for no in range(1, SESSIONS + 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 300:
        assert time.monotonic() < deadline and not failed, failed[:3]
        time.sleep(0.02)
    cluster.writer.kill()
    for t in threads:
        t.join(30)
    assert len(failed) == SESSIONS, "every session must see the writer go away"
    cluster.writer.start(30)
    with connect(cluster) as c:
        present = {row[0] for row in c.execute("SELECT id FROM g_events").fetchall()}
    missing = [e for e in acked if e not in present]
    assert not missing, f"acknowledged inserts lost: {missing[:10]}"


def test_an_autocommit_write_without_a_write_quorum_is_a_connection_error(cluster):
    """Storage loses its write quorum: the grouped INSERT's outcome is unknown, so the session
    ends with FATAL 08007 instead of an answer; once storage is back the row is whole or absent."""
    storage = cluster.storage
    with connect(cluster) as c:
        c.execute("CREATE TABLE g_lost (id int PRIMARY KEY, v text)")
    c = connect(cluster)
    stopped = [n.node_id for n in storage.nodes[:3]]   # 3 of 6 left: no write quorum
    for node_id in stopped:
        storage.kill(node_id)
    with pytest.raises(psycopg.OperationalError) as info:
        c.execute("INSERT INTO g_lost VALUES (1, 'maybe')")
    assert info.value.sqlstate == "08007", info.value
    c.close()
    for node_id in stopped:
        storage.start_node(node_id)
    deadline = time.monotonic() + 60
    while True:
        try:
            with connect(cluster) as again:
                rows = again.execute("SELECT id, v FROM g_lost").fetchall()
                break
        except psycopg.Error:
            assert time.monotonic() < deadline, f"the writer never came back:\n{cluster.writer.log_tail()}"
            time.sleep(0.5)
    assert rows in ([], [(1, "maybe")])
