"""Commit groups: autocommit writes of many sessions share one SQLite transaction.

The engine runs in this process on a real volume (six storage node processes).
Holding the writer lock from the test makes statements queue up behind it, so the
test, not timing, decides what forms one group.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sixfold.client.quorum import ClientSettings
from sixfold.nodes.compute.engine import CONSTRAINT, Engine, FifoLock, Result, SqlError, _groupable
from sixfold.nodes.compute.multiwriter import SERIALIZATION_FAILURE, PrimaryBackend
from sixfold.nodes.compute.volume import WriterVolume
from sixfold.volume.multiwriter import CommitRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def engine(storage_cluster):
    volume = WriterVolume.open(storage_cluster.node_infos(), "writer-test", ClientSettings(pages_per_segment=64))
    engine = Engine(volume, writer=True)
    try:
        yield engine
    finally:
        engine.close()
        volume.close()


def submit(engine: Engine, sql: str, params=()):
    """One statement on a new session, run the way the gRPC service runs it."""
    session = engine.session()

    async def run():
        loop = asyncio.get_running_loop()
        return await session.execute_async(sql, params, lambda fn, *args: loop.run_in_executor(None, fn, *args))

    return asyncio.run_coroutine_threadsafe(run(), engine.volume.loop.loop)


def outcome(future) -> Result | SqlError:
    try:
        return future.result(30)
    except SqlError as exc:
        return exc


def execute(engine: Engine, sql: str, params=()) -> Result:
    result = outcome(submit(engine, sql, params))
    assert isinstance(result, Result), result
    return result


def queued_behind_lock(engine: Engine, statements: list[tuple[str, tuple]]) -> list[Result | SqlError]:
    """Queues the statements while the test holds the writer lock, then lets them run."""
    submitted = engine.groups.submitted
    engine.acquire_writer()
    try:
        futures = [submit(engine, sql, params) for sql, params in statements]
        deadline = time.monotonic() + 10
        while engine.groups.submitted < submitted + len(statements):
            assert time.monotonic() < deadline, "the statements never reached the commit groups"
            time.sleep(0.005)
        assert not any(f.done() for f in futures), "a statement ran while the writer lock was held"
    finally:
        engine.release_writer()
    return [outcome(f) for f in futures]


def one_group(engine: Engine, statements: list[tuple[str, tuple]]) -> list[Result | SqlError]:
    """queued_behind_lock, asserting that one group ran them all."""
    groups_before = engine.groups.groups
    outcomes = queued_behind_lock(engine, statements)
    assert engine.groups.groups == groups_before + 1, "the queued statements did not commit as one group"
    lsns = {o.commit_lsn for o in outcomes if isinstance(o, Result)}
    assert len(lsns) == 1 and None not in lsns, f"one group has one commit LSN, got {lsns}"
    return outcomes


def rows(engine: Engine, sql: str) -> list[tuple]:
    return execute(engine, sql).rows


def test_each_statement_of_a_group_has_its_own_outcome(engine):
    execute(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    execute(engine, "INSERT INTO t VALUES (1, 'a')")
    insert_2, duplicate, null, update, returning = one_group(engine, [
        ("INSERT INTO t VALUES (2, 'b')", ()),
        ("INSERT INTO t VALUES (1, 'dup')", ()),
        ("INSERT INTO t VALUES (?, NULL)", (3,)),
        ("UPDATE t SET v = v || '2' WHERE id = 1", ()),
        ("INSERT INTO t VALUES (4, 'd') RETURNING id", ()),
    ])
    assert isinstance(insert_2, Result) and insert_2.rowcount == 1 and insert_2.lastrowid == 2
    assert isinstance(duplicate, SqlError) and duplicate.code == CONSTRAINT
    assert isinstance(null, SqlError) and null.code == CONSTRAINT
    assert isinstance(update, Result) and update.rowcount == 1
    assert isinstance(returning, Result) and returning.rows == [(4,)]
    assert rows(engine, "SELECT id, v FROM t ORDER BY id") == [(1, "a2"), (2, "b"), (4, "d")]
    assert rows(engine, "PRAGMA integrity_check") == [("ok",)]


def test_a_statement_that_rolls_back_the_transaction_fails_alone(engine):
    execute(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    execute(engine, "INSERT INTO t VALUES (1, 'a')")
    insert_10, append, rollback, insert_11 = one_group(engine, [
        ("INSERT INTO t VALUES (10, 'j')", ()),
        ("UPDATE t SET v = v || '+' WHERE id = 10", ()),
        ("INSERT OR ROLLBACK INTO t VALUES (1, 'x')", ()),   # SQLite rolls back the whole transaction
        ("INSERT INTO t VALUES (11, 'k')", ()),
    ])
    assert isinstance(rollback, SqlError) and rollback.code == CONSTRAINT
    assert all(isinstance(o, Result) for o in (insert_10, append, insert_11))
    # the statements before it ran again, each exactly once
    assert rows(engine, "SELECT id, v FROM t ORDER BY id") == [(1, "a"), (10, "j+"), (11, "k")]


def test_a_failing_commit_makes_every_statement_run_on_its_own(engine):
    execute(engine, "PRAGMA foreign_keys=ON")
    execute(engine, "CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    execute(engine, "CREATE TABLE child(id INTEGER PRIMARY KEY, "
                    "parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    execute(engine, "INSERT INTO parent VALUES (1)")
    # parent 99 does not exist: only the group's COMMIT finds out
    first, orphan, third = queued_behind_lock(engine, [
        ("INSERT INTO child VALUES (?, ?)", (child, parent)) for child, parent in ((1, 1), (2, 99), (3, 1))])
    assert isinstance(orphan, SqlError) and orphan.code == CONSTRAINT
    assert isinstance(first, Result) and isinstance(third, Result)
    assert rows(engine, "SELECT id FROM child ORDER BY id") == [(1,), (3,)]


def test_writer_lock_is_granted_in_arrival_order():
    lock = FifoLock()
    assert lock.acquire(1)
    order: list[str] = []

    def waiter(name: str) -> None:
        assert lock.acquire(10)
        order.append(name)
        lock.release()

    threads = []
    for name in ("first", "second"):
        threads.append(threading.Thread(target=waiter, args=(name,)))
        threads[-1].start()
        deadline = time.monotonic() + 5
        while lock.waiting < len(threads):
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lock.release()
    assert not lock.acquire(0), "a newcomer must not overtake the sessions already waiting"
    for thread in threads:
        thread.join(10)
    assert order == ["first", "second"]
    assert lock.waiting == 0 and lock.acquire(0)


@pytest.mark.parametrize("sql, groupable", [
    ("INSERT INTO t VALUES (1)", True),
    ("  update t SET v = 2;  ", True),
    ("REPLACE INTO t VALUES (1)", True),
    ("DELETE FROM t", True),
    ("INSERT INTO t VALUES (1); DELETE FROM t", False),     # a second statement could end the group
    ("INSERT INTO t VALUES (';')", False),                  # (a `;` anywhere keeps it out: no parsing)
    ("SELECT 1", False),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
    ("CREATE TABLE u(a)", False),
    ("BEGIN", False),
    ("", False),
])
def test_which_statements_join_groups(sql, groupable):
    assert _groupable(sql) is groupable


def test_a_group_is_answered_only_once_a_write_quorum_has_it(engine, storage_cluster):
    execute(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    paused = [node.node_id for node in storage_cluster.nodes[:3]]   # 3 of 6 left: no write quorum
    for node_id in paused:
        storage_cluster.pause(node_id)
    try:
        futures = [submit(engine, "INSERT INTO t VALUES (?)", (i,)) for i in range(5)]
        time.sleep(1.0)
        assert not any(f.done() for f in futures), "a commit was acknowledged below a write quorum"
    finally:
        for node_id in paused:
            storage_cluster.resume(node_id)
    outcomes = [outcome(f) for f in futures]
    assert all(isinstance(o, Result) and o.commit_lsn for o in outcomes), outcomes
    assert engine.volume.client.tracker.vdl >= max(o.commit_lsn for o in outcomes)


def test_concurrent_sessions_share_groups(engine):
    """Eight sessions that each wait for their last statement: while one group is on its
    way to the quorum the others queue, so they cannot all commit alone."""
    execute(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY, session INTEGER)")
    groups_before, statements_before = engine.groups.groups, engine.groups.statements

    def session(no: int) -> None:
        for i in range(20):
            assert isinstance(outcome(submit(engine, "INSERT INTO t VALUES (?, ?)", (no * 100 + i, no))), Result)

    threads = [threading.Thread(target=session, args=(no,)) for no in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statements = engine.groups.statements - statements_before
    groups = engine.groups.groups - groups_before
    assert statements == 160
    assert groups <= statements // 2, f"{statements} statements in {groups} groups"
    assert rows(engine, "SELECT count(*) FROM t") == [(160,)]


def test_short_reads_run_on_the_loop_and_the_rest_move_to_a_thread(engine):
    execute(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    session = engine.session()   # one explicit transaction fills the table

    def run(sql, params=()):
        async def go():
            loop = asyncio.get_running_loop()
            return await session.execute_async(sql, params, lambda fn, *args: loop.run_in_executor(None, fn, *args))
        return outcome(asyncio.run_coroutine_threadsafe(go(), engine.volume.loop.loop))

    run("BEGIN")
    for i in range(3000):
        run("INSERT INTO t VALUES (?, ?)", (i, f"v{i}"))
    run("COMMIT")
    on_loop, moved = engine.reads_on_loop, engine.reads_moved_to_thread
    assert rows(engine, "SELECT v FROM t WHERE id = 1234") == [("v1234",)]
    assert (engine.reads_on_loop, engine.reads_moved_to_thread) == (on_loop + 1, moved)
    # a scan takes more steps than the loop allows; an error is reported from the thread
    assert rows(engine, "SELECT count(v), sum(length(v)) FROM t") == [(3000, sum(len(f"v{i}") for i in range(3000)))]
    missing = outcome(submit(engine, "SELECT * FROM missing"))
    assert isinstance(missing, SqlError) and "missing" in missing.message
    assert engine.reads_moved_to_thread == moved + 2
    # a page that is not cached is fetched from storage, on a thread
    volume = engine.volume
    with volume.lock:
        volume.cache.reset(volume.read_lsn)
    assert rows(engine, "SELECT v FROM t WHERE id = 2999") == [("v2999",)]
    assert engine.reads_moved_to_thread == moved + 3


class AnotherWriter:
    """Commits a change to one page through the primary's adjudicator, as a peer writer's
    commit would arrive, from inside a statement of the primary (a SQLite function), so
    that the primary's transaction loses the conflict every time it is armed."""

    def __init__(self, backend: PrimaryBackend) -> None:
        self.backend = backend
        self.armed = 0
        self.commits = 0

    def register(self, conn) -> None:
        conn.create_scalar_function("another_writer_commits", self._commit_page, 1)

    def _commit_page(self, page: int) -> int:
        if self.armed:
            self.armed -= 1
            backend = self.backend
            at_lsn = backend.volume.issued_lsn
            image = bytearray(backend.read(page, at_lsn))
            # a byte of the page's unallocated space (between the cell pointers and the
            # cells): a new image of the page that SQLite reads exactly as before
            cells = int.from_bytes(image[3:5], "big")
            content_start = int.from_bytes(image[5:7], "big") or 65536
            offset = 8 + 2 * cells + 16
            assert image[0] == 0x0D and offset < content_start, "a table leaf with free space"
            image[offset] ^= 0xFF
            assert backend.commit(CommitRequest(at_lsn, {page: bytes(image)}, backend.read(0, at_lsn), None))
            self.commits += 1
        return 0


@pytest.fixture
def primary(storage_cluster):
    """A multi-writer primary's engine (MULTIWRITER.md) and the other writer it races."""
    volume = WriterVolume.open(storage_cluster.node_infos(), "writer-test", ClientSettings(pages_per_segment=64))
    backend = PrimaryBackend(volume)
    other = AnotherWriter(backend)
    engine = Engine(volume, writer=True, on_connect=other.register, backend=backend)
    try:
        yield engine, other
    finally:
        engine.close()
        volume.close()


def test_multi_writer_has_no_commit_groups_and_a_lost_conflict_is_one_40001(primary):
    """A conflict fails one transaction, never a group: autocommit statements that lose run
    again (gRPC and PostgreSQL paths), an explicit transaction that loses gets one 40001."""
    engine, other = primary
    assert engine.groups is None
    execute(engine, "CREATE TABLE hot (id INTEGER PRIMARY KEY, v INTEGER)")
    execute(engine, "INSERT INTO hot VALUES (1, 0)")
    page = rows(engine, "SELECT rootpage - 1 FROM sqlite_schema WHERE name = 'hot'")[0][0]
    bump = "UPDATE hot SET v = v + 1 + another_writer_commits(?) WHERE id = 1"
    conflicts = engine.backend.adjudicator.conflicts

    other.armed = 1
    assert execute(engine, bump, (page,)).rowcount == 1   # the gRPC service's path
    other.armed = 1
    session = engine.session()
    assert session.execute(bump, (page,)).rowcount == 1   # the PostgreSQL front end's path
    assert (other.commits, engine.backend.adjudicator.conflicts) == (2, conflicts + 2)

    other.armed = 1
    session.execute("BEGIN")
    session.execute(bump, (page,))
    with pytest.raises(SqlError) as lost:
        session.execute("COMMIT")
    assert lost.value.code == SERIALIZATION_FAILURE
    assert not session.in_transaction
    assert engine.backend.adjudicator.conflicts == conflicts + 3
    session.execute("BEGIN")   # the loser retries (its node has the winner's pages) and wins
    session.execute(bump, (page,))
    session.execute("COMMIT")
    session.close()
    assert rows(engine, "SELECT v FROM hot") == [(3,)]
    assert rows(engine, "PRAGMA integrity_check") == [("ok",)]
