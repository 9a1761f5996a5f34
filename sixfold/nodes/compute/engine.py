"""SQL sessions over SQLite on the volume.

One writer connection per writer node (SQLite has one writer). A statement runs
one of three ways:

- A read outside a write transaction runs on a pool of snapshot connections
  that read at a pinned VDL: only durable data is ever visible to them, on the
  writer as on readers. A short SELECT runs right on the event loop; one that
  needs a page from storage or many steps runs again on a worker thread.
- A single INSERT/UPDATE/DELETE/REPLACE in autocommit mode joins a commit
  group (CommitGroups): the statements of many sessions run back to back in one
  SQLite transaction, published as one log transaction, made durable by one
  quorum round.
- Anything else on the writer (DDL, VACUUM, explicit transactions) holds the
  writer connection for the statement, or for the whole transaction.

A statement that ran on the writer connection in autocommit mode is answered
only when VDL has reached everything it could have seen: its commit LSN, or
the newest LSN issued when it committed nothing. The writer connection is free
again before that wait, so the next group runs while the previous one is on its
way to the quorum.

Multi-writer (MULTIWRITER.md): no commit groups (a lost page conflict would fail a
whole group); an autocommit statement that lost a conflict runs again; a peer
writer's commit returns durable, so its statements have nothing left to wait for.

The gRPC service calls `Session.execute_async` on the volume loop; the PostgreSQL
front end calls the blocking `Session.execute` from its connection threads: the
same paths (commit groups included) without the loop's read shortcut.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import apsw

from sixfold.client.errors import CommitTimeoutError, FencedError, ReadUnavailableError, StorageError
from sixfold.nodes.compute.multiwriter import SERIALIZATION_FAILURE, MultiWriterVFS, PeerBackend, WriteConflictError
from sixfold.nodes.compute.vfs import DB_NAME, SixfoldVFS, WriterFile
from sixfold.nodes.compute.volume import VolumeState

log = logging.getLogger(__name__)

READ_KEYWORDS = ("select", "with", "values", "explain")
LOOP_READ_KEYWORDS = ("select", "values")   # (WITH may write: those go to a thread)
LOOP_READ_STEPS_MAX = 5000                   # SQLite VM steps a read may take on the event loop
GROUPED_KEYWORDS = ("insert", "update", "delete", "replace")
GROUP_STATEMENTS_MAX = 1000
GROUP_HOLD_MAX_S = 0.05     # a group waits at most this long for the previous one to be durable
# then, with concurrent sessions, it lingers for the sessions the previous group answered:
GROUP_LINGER_FIRST_S = 0.005   # at most this long for the first of them,
GROUP_LINGER_IDLE_S = 0.002    # this long after each arrival,
GROUP_LINGER_MAX_S = 0.02      # and at most this long in all


class SqlError(Exception):
    """A statement failed; `code` is stable and says what kind of failure it was."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# codes: stable strings that the gRPC service and the DB-API client carry
SYNTAX = "sql_error"
CONSTRAINT = "constraint"
READ_ONLY = "read_only"
BUSY = "busy"
FENCED = "fenced"
COMMIT_UNKNOWN = "commit_unknown"
STORAGE_UNAVAILABLE = "storage_unavailable"
INTERNAL = "internal"
CANCELED = "canceled"
SESSION_CLOSED = "no_session"   # the same code the service uses for an unknown session
# SERIALIZATION_FAILURE (imported): multi-writer, lost a page conflict; retry (SQLSTATE 40001)
# an autocommit statement that lost a conflict runs again at a newer snapshot: nothing of it
# reached the client, so this is safe; bounded, with a short random back-off
AUTOCOMMIT_CONFLICT_ATTEMPTS = 8
CONFLICT_BACKOFF_MAX_S = 0.005
VOLUME_FAILURES = (FENCED, COMMIT_UNKNOWN, STORAGE_UNAVAILABLE)
# write forwarding (FORWARDING.md): the primary writer was lost before the forwarded transaction
# committed (nothing of it is committed: retry it); a read waited too long for this reader to
# apply what the session's consistency asks for
WRITER_LOST = "writer_lost"
REPLICA_WAIT_TIMEOUT = "replica_wait_timeout"


def map_error(exc: BaseException) -> SqlError:
    if isinstance(exc, SqlError):
        return exc
    if isinstance(exc, WriteConflictError):
        return SqlError(SERIALIZATION_FAILURE, str(exc))
    if isinstance(exc, FencedError):
        return SqlError(FENCED, str(exc))
    if isinstance(exc, CommitTimeoutError):
        return SqlError(COMMIT_UNKNOWN, str(exc))
    if isinstance(exc, ReadUnavailableError):
        return SqlError(STORAGE_UNAVAILABLE, str(exc))
    if isinstance(exc, StorageError):
        return SqlError(STORAGE_UNAVAILABLE, str(exc))
    if isinstance(exc, apsw.ReadOnlyError):
        return SqlError(READ_ONLY, "read-only: this connection cannot write (send writes to the writer endpoint)")
    if isinstance(exc, apsw.InterruptError):
        return SqlError(CANCELED, "canceling statement due to user request")
    if isinstance(exc, apsw.ConstraintError):
        return SqlError(CONSTRAINT, str(exc))
    if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
        return SqlError(BUSY, str(exc))
    if isinstance(exc, (apsw.SQLError, apsw.MismatchError, apsw.RangeError, apsw.BindingsError,
                        apsw.ExecutionCompleteError, apsw.IncompleteExecutionError)):
        return SqlError(SYNTAX, str(exc))
    return SqlError(INTERNAL, f"{type(exc).__name__}: {exc}")


@dataclass
class Result:
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    rowcount: int = -1
    lastrowid: int | None = None
    commit_lsn: int | None = None
    forwarded: bool = False   # ran on the primary writer (write forwarding)


# what a statement came to, and the LSN that must be durable before it is answered
Outcome = tuple["Result | SqlError", "int | None"]


def _first_word(sql: str) -> str:
    head = sql.lstrip().split(None, 1)
    return head[0].lower() if head else ""


def _is_read(sql: str) -> bool:
    return _first_word(sql) in READ_KEYWORDS


def _groupable(sql: str) -> bool:
    """One plain write statement: a second statement in the text could end the group's
    transaction, so any `;` before the end (even in a literal) keeps it out."""
    return _first_word(sql) in GROUPED_KEYWORDS and ";" not in sql.rstrip().rstrip(";")


def _run(conn: apsw.Connection, sql: str, params, many: bool = False) -> Result:
    cursor = conn.cursor()
    changes_before = conn.total_changes()
    if many:
        cursor.executemany(sql, params)
    else:
        cursor.execute(sql, params if params is not None else ())
    columns: list[str] = []
    rows = []
    try:
        columns = [d[0] for d in cursor.getdescription()]
    except apsw.ExecutionCompleteError:
        pass
    else:
        rows = [tuple(r) for r in cursor]
    result = Result(columns=columns, rows=rows)
    result.rowcount = conn.total_changes() - changes_before if not columns else -1
    result.lastrowid = conn.last_insert_rowid()
    return result


def describe_on(conn: apsw.Connection, sql: str, bindings_count: int) -> list[tuple[str, str | None]]:
    """Prepares `sql` on `conn` and stops before its first step: the result columns, nothing run."""
    described: list = []

    def stop_before_running(cursor, _sql, _bindings):
        described.append(cursor.getdescription())
        return False

    cursor = conn.cursor()
    cursor.exec_trace = stop_before_running
    try:
        cursor.execute(sql, [None] * bindings_count)
    except apsw.ExecTraceAbort:
        pass
    return list(described[0]) if described else []


class FifoLock:
    """The writer connection's lock, granted in arrival order: the commit-group thread
    takes it again and again and must not starve a session that writes on its own."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiting: collections.deque[object] = collections.deque()
        self._held = False

    def acquire(self, timeout_s: float) -> bool:
        with self._cond:
            if not self._held and not self._waiting:
                self._held = True
                return True
            token = object()
            self._waiting.append(token)
            deadline = time.monotonic() + timeout_s
            while self._held or self._waiting[0] is not token:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._waiting.remove(token)
                    self._cond.notify_all()   # whoever is first now may go
                    return False
                self._cond.wait(remaining)
            self._waiting.popleft()
            self._held = True
            return True

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def release(self) -> None:
        with self._cond:
            self._held = False
            if self._waiting:
                self._cond.notify_all()


class Engine:
    def __init__(self, volume: VolumeState, writer: bool, snapshot_connections: int = 4,
                 busy_timeout_s: float = 5.0, cache_size_pages: int = 2000,
                 on_connect=lambda conn: None, backend=None) -> None:
        self.volume = volume
        self.on_connect = on_connect   # e.g. the PostgreSQL front end's SQL functions
        self.is_writer = writer
        self.busy_timeout_s = busy_timeout_s
        self.fenced: str | None = None
        # multi-writer (MULTIWRITER.md): the writer connection reads a pinned snapshot and
        # commits through the adjudicator; None: the single writer
        self.backend = backend
        # a secondary reader with write forwarding: its sessions may forward writes (FORWARDING.md)
        self.forwarder = None
        self.vfs = MultiWriterVFS(volume, backend) if backend is not None else SixfoldVFS(volume, writer)
        # a peer writer's commit returns once it is durable and in this node's view
        # (PeerBackend.commit), and the peer reads durable data only: nothing left to wait for
        self._commits_return_durable = isinstance(backend, PeerBackend)
        self._write_lock = FifoLock()
        # who holds the write lock and since when: a BUSY error names it (what blocks you)
        self._writer_holder: Session | str | None = None
        self._writer_since = 0.0
        self._pool: queue.Queue[apsw.Connection] = queue.Queue()
        self._all: list[apsw.Connection] = []
        self.writer_conn: apsw.Connection | None = None
        self.writer_file: WriterFile | None = None
        self._cache_size_pages = cache_size_pages
        self.groups: CommitGroups | None = None
        self.reads_on_loop = 0
        self.reads_moved_to_thread = 0
        if writer:
            self._open_writer()
            if backend is None:
                # multi-writer has no commit groups: a lost page conflict would fail every
                # statement of the group, and a peer holds its lock across the commit RPC anyway
                self.groups = CommitGroups(self, volume.loop.loop)
        for _ in range(snapshot_connections):
            conn = apsw.Connection(DB_NAME, vfs=self.vfs.vfs_name, flags=apsw.SQLITE_OPEN_READONLY)
            conn.execute("PRAGMA query_only=ON")
            on_connect(conn)
            conn.set_progress_handler(volume.loop.is_current, LOOP_READ_STEPS_MAX)   # long reads leave the loop
            self._all.append(conn)
            self._pool.put(conn)
        self._stop = threading.Event()
        self._maintainer = threading.Thread(target=self._maintain, name="cache-maintenance", daemon=True)
        self._maintainer.start()

    def _open_writer(self) -> None:
        conn = apsw.Connection(DB_NAME, vfs=self.vfs.vfs_name,
                               flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        self.writer_file = self.vfs.writer_file
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=MEMORY")      # rule 3 (never OFF)
        # multi-writer: NORMAL, so that SQLite re-checks page 1 (and drops its cache when
        # another writer committed) at every transaction, and the VFS pins a snapshot there
        conn.execute("PRAGMA locking_mode=NORMAL" if self.backend is not None else "PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA synchronous=OFF")           # rule 2: we commit on PHASETWO
        conn.execute("PRAGMA cache_spill=OFF")            # rule 3
        conn.execute(f"PRAGMA cache_size={self._cache_size_pages}")
        self.on_connect(conn)
        self.writer_conn = conn
        self._all.append(conn)

    def _maintain(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.volume.maintain()
            except Exception:
                log.exception("cache maintenance failed")

    def session(self) -> "Session":
        return Session(self) if self.forwarder is None else self.forwarder.session(Session(self))

    def close(self) -> None:
        self._stop.set()
        if self.groups is not None:
            self.groups.stop()
        self._maintainer.join(timeout=2)
        for conn in self._all:
            try:
                conn.close(True)
            except Exception:
                pass

    # --- used by sessions -------------------------------------------------------
    def acquire_writer(self, session: "Session | None" = None) -> None:
        """session: who asks (named in BUSY errors); None: the commit-group thread."""
        if not self.is_writer:
            raise SqlError(READ_ONLY, "read-only: this is a reader instance; send writes to the writer endpoint")
        if self.fenced:
            raise SqlError(FENCED, self.fenced)
        if not self._write_lock.acquire(self.busy_timeout_s):
            raise SqlError(BUSY, f"another session held the write lock for {self.busy_timeout_s:.0f} s "
                                 f"({self.describe_writer_holder()}); retry")
        self._writer_holder, self._writer_since = session if session is not None else "a commit group", time.monotonic()

    def release_writer(self) -> None:
        self._writer_holder = None
        self._write_lock.release()

    def describe_writer_holder(self) -> str:
        holder, since = self._writer_holder, self._writer_since
        if holder is None:
            return "it was just released"
        now = time.monotonic()
        if isinstance(holder, str):
            return f"held for {now - since:.1f} s by {holder}"
        doing = (f"running {holder.last_sql[:60]!r} for {now - holder.running_since:.1f} s"
                 if holder.running_conn is not None else
                 f"idle in a transaction after {holder.last_sql[:60]!r}")
        return f"held for {now - since:.1f} s by a session {doing}"

    def acquire_snapshot(self) -> apsw.Connection:
        try:
            return self._pool.get(timeout=self.busy_timeout_s)
        except queue.Empty:
            raise SqlError(BUSY, "all snapshot connections are busy; retry") from None

    def release_snapshot(self, conn: apsw.Connection) -> None:
        self._pool.put(conn)

    def read_on_loop(self, sql: str, params) -> Result | None:
        """A short read run right on the event loop, saving two thread switches; None
        when it must run on a thread instead (a page to fetch, many steps, an error)."""
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            return None
        try:
            result = _run(conn, sql, params)
            self.reads_on_loop += 1
            return result
        except Exception:   # WouldBlock, apsw.InterruptError, or an error the thread reports the usual way
            self.reads_moved_to_thread += 1
            return None
        finally:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            self._pool.put(conn)

    def run_on_writer(self, sql: str, params, many: bool = False) -> Result:
        """One statement on the writer connection (the caller holds the write lock);
        result.commit_lsn is set when it committed a transaction."""
        conn, file = self.writer_conn, self.writer_file
        assert conn is not None and file is not None
        try:
            result = _run(conn, sql, params, many)
        except StorageError as exc:
            # a read or the publish failed (apsw re-raises what the VFS raised): SQLite may
            # believe a transaction committed that the volume never got; nothing was acknowledged
            file.take_commit_lsn()
            self.on_writer_failure(exc)
            raise
        except BaseException:
            file.take_commit_lsn()
            if conn.getautocommit():
                file.discard()
            raise
        result.commit_lsn = file.take_commit_lsn()
        if conn.getautocommit():
            file.discard()
        return result

    def on_writer_failure(self, exc: BaseException) -> None:
        """The writer's volume refused a publish: SQLite's cache may now be ahead of the volume."""
        if isinstance(exc, FencedError):
            self.fenced = str(exc)
        if isinstance(exc, WriteConflictError):
            log.debug("writer connection reset after a lost conflict: %s", exc)
            try:
                # the loser refreshes before anyone retries: its next snapshot has the winner's pages
                self.backend.refresh(exc.winner_lsn)
            except StorageError as refresh_failed:
                log.warning("could not refresh after a lost conflict: %s", refresh_failed)
        else:
            log.error("writer connection reset after a failed publish: %s", exc)
        assert self.writer_conn is not None
        self._all.remove(self.writer_conn)
        self.writer_conn.close(True)
        self.vfs.writer_file = None
        self._open_writer()

    async def durable(self, lsn: int) -> None:
        """Returns when VDL >= lsn (on the volume loop)."""
        client = self.volume.client
        if self._commits_return_durable:
            return
        if client.tracker.is_durable(lsn):
            await client.pass_commit_gate()   # (the global database's lease: no acknowledgement without it)
            return
        if client.fenced:
            raise FencedError(client.fenced)
        await client.wait_durable(lsn, commits=0)

    def wait_durable(self, lsn: int) -> None:
        """durable(), from a thread other than the volume loop's."""
        client = self.volume.client
        if self._commits_return_durable:
            return
        if client.tracker.is_durable(lsn):
            client.pass_commit_gate_from_thread()
            return
        if client.fenced:
            raise FencedError(client.fenced)
        client.wait_durable_from_thread(lsn)


@dataclass(slots=True, eq=False)
class _Queued:
    sql: str
    params: object
    future: asyncio.Future
    outcome: Result | SqlError | None = None


class _OpenGroup:
    """The statements of one group, in one open SQLite transaction on the writer connection."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self._applied: list[_Queued] = []   # ran in the open transaction (errors too: FAIL keeps changes)

    def run(self, items: list[_Queued]) -> None:
        todo = collections.deque(items)
        while todo:
            item = todo.popleft()
            if self.conn.getautocommit():
                self.conn.execute("BEGIN")
            try:
                item.outcome = _run(self.conn, item.sql, item.params)
            except StorageError:
                raise
            except Exception as exc:
                item.outcome = map_error(exc)
                if self.conn.getautocommit():
                    # SQLite rolled the whole transaction back: what ran before lost its effect
                    todo.extendleft(reversed(self._applied))
                    self._applied = []
                    continue
            self._applied.append(item)

    def commit(self) -> None:
        if not self.conn.getautocommit():   # (the last statement may have rolled everything back)
            self.conn.execute("COMMIT")


class CommitGroups:
    """Autocommit write statements of many sessions, committed together.

    A thread runs queued statements back to back in one SQLite transaction on the
    writer connection and keeps adding what arrives while the previous group is on
    its way to the quorum; then it commits, which publishes the group as one log
    transaction. Every statement gets its own outcome and the group's commit LSN.
    A failing statement is undone alone (SQLite's ABORT and FAIL behave as in
    autocommit mode); when SQLite rolls the whole transaction back (OR ROLLBACK,
    RAISE(ROLLBACK)) the statements before it run again. No statement is answered
    before its group is durable, so none can tell that it shared a transaction.
    """

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self._loop = loop
        self._queue: collections.deque[_Queued] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopped = False
        self._sleeping = False          # the thread waits for statements (only then does submit wake it)
        self._last_lsn = 0              # the newest group's commit LSN
        self._last_group_size = 0
        # how long a session takes from its answer to its next statement (moving average):
        # how long a group lingers for the sessions the previous group answered
        self._return_gap_s = 0.0
        self._awaiting_vdl = False      # the thread holds an open group until VDL passes _last_lsn
        self._waiting_groups: set[asyncio.Task] = set()
        self.submitted = 0              # statements queued so far (on the loop)
        self.groups = 0
        self.statements = 0
        engine.volume.client.add_vdl_listener(self._on_vdl)
        self._thread = threading.Thread(target=self._run, name="commit-groups", daemon=True)
        self._thread.start()

    def submit(self, sql: str, params, answered_at: float | None = None) -> asyncio.Future:
        """On the loop: the future resolves to the statement's Result or SqlError, once durable.
        answered_at: when the session's previous grouped statement was answered."""
        item = _Queued(sql, params, self._loop.create_future())
        self.submitted += 1
        if answered_at is not None:
            gap_s = time.monotonic() - answered_at
            if gap_s < GROUP_LINGER_MAX_S * 4:   # longer gaps are the client's own pauses
                self._return_gap_s += (gap_s - self._return_gap_s) / 16
        with self._cond:
            if self._stopped:
                item.future.set_result(SqlError(INTERNAL, "the SQL engine is closing"))
            else:
                self._queue.append(item)
                if self._sleeping:
                    self._sleeping = False   # one wake-up for a burst of statements
                    self._cond.notify()
        return item.future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _on_vdl(self, vdl: int) -> None:   # on the loop
        if self._awaiting_vdl and vdl >= self._last_lsn:
            with self._cond:
                self._awaiting_vdl = False
                self._cond.notify()

    def _previous_durable(self) -> bool:
        return self.engine.volume.client.tracker.vdl >= self._last_lsn

    def _take(self, limit: int, until: float, wake_on_durable: bool) -> list[_Queued] | None:
        """What is queued, up to limit; when nothing is, waits for a statement until
        `until` (monotonic s) or, with wake_on_durable, until the previous group is
        durable. None: stopping."""
        with self._cond:
            while not self._queue and not self._stopped:
                if wake_on_durable and self._previous_durable():
                    break
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._awaiting_vdl, self._sleeping = wake_on_durable, True
                self._cond.wait(remaining)
            self._awaiting_vdl = self._sleeping = False
            return None if self._stopped else self._pop(limit)

    def _wait_for_first(self) -> list[_Queued] | None:
        """Blocks until something is queued; None when stopping."""
        with self._cond:
            while not self._queue and not self._stopped:
                self._sleeping = True
                self._cond.wait()
            self._sleeping = False
            return None if self._stopped else self._pop(GROUP_STATEMENTS_MAX)

    def _pop(self, limit: int) -> list[_Queued]:
        batch = []
        while self._queue and len(batch) < limit:
            item = self._queue.popleft()
            if not item.future.cancelled():   # the client gave up before it ran
                batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._wait_for_first()
            if batch is None:
                break
            if not batch:
                continue
            try:
                durable_lsn = self._commit(batch)   # (more statements join batch on the way)
            except Exception as exc:  # a bug must reach the clients as an error, not end the thread
                log.exception("a commit group failed unexpectedly")
                durable_lsn = None
                for item in batch:
                    if not isinstance(item.outcome, SqlError):
                        item.outcome = map_error(exc)
            self.groups += 1
            self.statements += len(batch)
            self._post(batch, durable_lsn)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for item in left:
            item.outcome = SqlError(INTERNAL, "the SQL engine is closing")
        self._post(left, None)

    def _post(self, group: list[_Queued], durable_lsn: int | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._answer_when_durable, group, durable_lsn)
        except RuntimeError:
            pass   # the loop is closed: nobody waits any more

    def _answer_when_durable(self, group: list[_Queued], durable_lsn: int | None) -> None:
        """On the loop: one durability wait for the whole group, then every statement's answer."""
        client = self.engine.volume.client
        if durable_lsn is None or (client.tracker.is_durable(durable_lsn) and client.commit_gate_open()):
            self._answer(group)
        else:
            task = self._loop.create_task(self._wait_then_answer(group, durable_lsn))
            self._waiting_groups.add(task)   # the loop keeps only weak references to tasks
            task.add_done_callback(self._waiting_groups.discard)

    async def _wait_then_answer(self, group: list[_Queued], durable_lsn: int) -> None:
        try:
            await self.engine.durable(durable_lsn)
        except Exception as exc:
            error = map_error(exc)   # the commit's outcome is unknown (or the writer was fenced)
            for item in group:
                if isinstance(item.outcome, Result):
                    item.outcome = error
        self._answer(group)

    @staticmethod
    def _answer(group: list[_Queued]) -> None:
        for item in group:
            if not item.future.done():
                item.future.set_result(item.outcome)

    def _commit(self, batch: list[_Queued]) -> int | None:
        """Runs one group, adding what arrives meanwhile to batch; returns the LSN its
        statements wait for (None: the volume failed it, nothing to wait for)."""
        engine = self.engine
        try:
            engine.acquire_writer()
        except SqlError as exc:
            for item in batch:
                item.outcome = exc
            return None
        try:
            return self._run_group(batch)
        finally:
            engine.release_writer()

    def _gather(self, group: _OpenGroup, batch: list[_Queued]) -> None:
        """Adds statements to the open group while the previous group is not durable
        (at most GROUP_HOLD_MAX_S). Then, when sessions write concurrently, it lingers:
        first about as long as sessions take to send their next statement, then while
        statements keep arriving. The sessions the previous group answered join this
        group instead of forming the next one: fewer, larger groups cost less CPU per
        commit everywhere (writer, six storage nodes, readers). A lone session never waits."""
        hold_until = time.monotonic() + GROUP_HOLD_MAX_S
        linger_until = linger_end = None
        while len(batch) < GROUP_STATEMENTS_MAX:
            durable = self._previous_durable()
            if durable and linger_until is None:
                concurrent = len(batch) > 1 or self._last_group_size > 1
                now = time.monotonic()
                linger_end = now + (GROUP_LINGER_MAX_S if concurrent else 0.0)
                linger_until = min(now + min(self._return_gap_s, GROUP_LINGER_FIRST_S), linger_end)
            until = linger_until if durable else hold_until
            more = self._take(GROUP_STATEMENTS_MAX - len(batch), until, wake_on_durable=not durable)
            if more is None:
                return
            if more:
                batch += more
                group.run(more)
                if linger_until is not None:   # they are coming back: wait for the next one a little
                    linger_until = min(max(linger_until, time.monotonic() + GROUP_LINGER_IDLE_S), linger_end)
            elif time.monotonic() >= until:
                return
            # (else: woken because the previous group became durable; linger next)

    def _run_group(self, batch: list[_Queued]) -> int | None:
        engine = self.engine
        conn, file = engine.writer_conn, engine.writer_file
        assert conn is not None and file is not None
        group = _OpenGroup(conn)
        try:
            group.run(batch)
            self._gather(group, batch)
            group.commit()
        except StorageError as exc:
            # a read or the publish failed: SQLite may believe something committed that the
            # volume never got; nothing of the group was acknowledged
            file.take_commit_lsn()
            engine.on_writer_failure(exc)
            error = map_error(exc)
            for item in batch:
                if not isinstance(item.outcome, SqlError):
                    item.outcome = error
            return None
        except apsw.Error:
            # the COMMIT itself failed (a deferred constraint): no statement can be blamed,
            # so each one runs again as its own transaction
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            file.take_commit_lsn()
            file.discard()
            for item in batch:
                try:
                    item.outcome = engine.run_on_writer(item.sql, item.params)
                except Exception as exc:
                    item.outcome = map_error(exc)
            return engine.volume.issued_lsn
        commit_lsn = file.take_commit_lsn()
        file.discard()
        self._last_group_size = len(batch)
        if commit_lsn is None:
            return engine.volume.issued_lsn
        self._last_lsn = commit_lsn
        for item in batch:
            if isinstance(item.outcome, Result):
                item.outcome.commit_lsn = commit_lsn
        return commit_lsn


class Session:
    """One client session: statements, explicit transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._holding_writer = False
        self._snapshot: apsw.Connection | None = None   # bound during a read transaction
        self._answered_at: float | None = None           # when its last grouped statement was answered
        self.running_conn: apsw.Connection | None = None   # the connection a statement runs on (cancel)
        self.last_sql = ""            # for BUSY errors: what the holder of the write lock is doing
        self.running_since = 0.0
        # close() may come from another thread while a statement runs (a client that gave up
        # on it): the statement's own thread then ends the session when it returns, so a
        # write lock it gets after the close is given back (nobody could reap it later)
        self._state_lock = threading.Lock()
        self._running = 0
        self._closed = False

    @property
    def in_transaction(self) -> bool:
        return self._holding_writer or self._snapshot is not None

    def with_connection(self, fn):
        """fn(conn) on the connection this session sees: its transaction's, else a snapshot.
        For reads that are not statements of the client (schema lookups, describing)."""
        conn = self.engine.writer_conn if self._holding_writer else self._snapshot
        borrowed = conn is None
        if borrowed:
            conn = self.engine.acquire_snapshot()
        try:
            return fn(conn)
        except SqlError:
            raise
        except Exception as exc:
            raise map_error(exc) from exc
        finally:
            if borrowed:
                self.engine.release_snapshot(conn)

    def describe(self, sql: str, bindings_count: int) -> list[tuple[str, str | None]]:
        """(name, declared type) of each result column, from preparing `sql` without running it."""
        with self._statement():
            return self.with_connection(lambda conn: describe_on(conn, sql, bindings_count))

    @contextlib.contextmanager
    def _statement(self):
        with self._state_lock:
            if self._closed:
                raise SqlError(SESSION_CLOSED, "this session was closed; open a new one")
            self._running += 1
        try:
            yield
        finally:
            with self._state_lock:
                self._running -= 1
                end_now = self._closed and not self._running
            if end_now:
                self._end()

    def execute(self, sql: str, params=None) -> Result:
        """Blocking, from a thread other than the volume loop's (the PostgreSQL front end):
        runs one statement and returns when everything it wrote or saw on the writer is durable."""
        return self._execute_blocking(sql, params, many=False)

    def execute_many(self, sql: str, rows: list) -> Result:
        """One write statement for many parameter rows (COPY FROM); blocking, as execute."""
        return self._execute_blocking(sql, rows, many=True)

    def _execute_blocking(self, sql: str, params, many: bool) -> Result:
        engine = self.engine
        if not many and engine.groups is not None and not self.in_transaction and _groupable(sql):
            return self._answer(engine.volume.loop.run(self._grouped(sql, params)))
        outcome, durable_lsn = self._execute_now(sql, params, many)
        if durable_lsn is not None:
            try:
                self.engine.wait_durable(durable_lsn)
            except Exception as exc:
                if isinstance(outcome, Result):
                    outcome = map_error(exc)   # its commit's outcome is unknown (or it was fenced)
        return self._answer(outcome)

    async def execute_async(self, sql: str, params, in_thread) -> Result:
        """Runs one statement (on the volume loop; SQLite runs in threads: `in_thread(fn, *args)`)
        and returns when everything it wrote or saw on the writer is durable."""
        engine = self.engine
        if not self.in_transaction and _first_word(sql) in LOOP_READ_KEYWORDS:
            result = engine.read_on_loop(sql, params)
            if result is not None:
                return result
        if engine.groups is not None and not self.in_transaction and _groupable(sql):
            outcome = await self._grouped(sql, params)
        else:
            outcome, durable_lsn = await in_thread(self._execute_now, sql, params)
            if durable_lsn is not None:
                try:
                    await engine.durable(durable_lsn)
                except Exception as exc:
                    if isinstance(outcome, Result):
                        outcome = map_error(exc)   # its commit's outcome is unknown (or it was fenced)
        return self._answer(outcome)

    async def _grouped(self, sql: str, params) -> Result | SqlError:
        """On the volume loop: the statement's outcome in a commit group, once durable."""
        outcome = await self.engine.groups.submit(sql, params, self._answered_at)
        self._answered_at = time.monotonic()
        return outcome

    def _answer(self, outcome: Result | SqlError) -> Result:
        if isinstance(outcome, SqlError):
            raise outcome
        if outcome.commit_lsn is not None:
            self.engine.volume.client.commits += 1
        return outcome

    def _execute_now(self, sql: str, params, many: bool = False) -> Outcome:
        """In a worker thread: runs the statement, does not wait for durability."""
        try:
            with self._statement():
                return self._run_statement(sql, params, many)
        except SqlError as exc:   # the session was closed
            return exc, None

    def _run_statement(self, sql: str, params, many: bool) -> Outcome:
        ran_on_writer = False
        try:
            if self._holding_writer:
                ran_on_writer = True
                result = self._on_writer(sql, params, many)
            elif self._snapshot is not None:
                result = self._on_snapshot(sql, params, many)
            else:
                result = None
                if (_is_read(sql) and not many) or not self.engine.is_writer:
                    try:
                        result = self._on_snapshot(sql, params, many)
                    except SqlError as exc:
                        if exc.code != READ_ONLY or not self.engine.is_writer:
                            raise
                        # e.g. WITH ... INSERT: it writes after all; nothing was changed on the snapshot
                if result is None:
                    self.engine.acquire_writer(self)
                    self._holding_writer = ran_on_writer = True
                    result = self._autocommit_on_writer(sql, params, many)
            outcome: Result | SqlError = result
        except Exception as exc:
            outcome = map_error(exc)
        if not ran_on_writer or self._holding_writer:
            return outcome, None   # snapshots see durable data only; in a transaction, COMMIT waits
        if isinstance(outcome, SqlError) and outcome.code in VOLUME_FAILURES:
            return outcome, None   # nothing to wait for: the writer cannot commit now
        if isinstance(outcome, Result) and outcome.commit_lsn is not None:
            return outcome, outcome.commit_lsn
        return outcome, self.engine.volume.issued_lsn

    def _autocommit_on_writer(self, sql: str, params, many: bool) -> Result:
        """A statement outside a transaction, on the writer connection (held). Multi-writer:
        one that lost a conflict runs again, once this node has seen the winner
        (on_writer_failure refreshed its pages). A statement that opens a transaction (BEGIN)
        cannot conflict here: its commit comes with a later statement."""
        for attempt in range(AUTOCOMMIT_CONFLICT_ATTEMPTS):
            try:
                return self._on_writer(sql, params, many)
            except WriteConflictError:   # (only multi-writer backends raise it)
                if attempt == AUTOCOMMIT_CONFLICT_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, CONFLICT_BACKOFF_MAX_S))   # refreshed already (on_writer_failure)
                self.engine.acquire_writer(self)
                self._holding_writer = True
        raise AssertionError("unreachable")

    def _on_snapshot(self, sql: str, params, many: bool = False) -> Result:
        conn = self._snapshot or self.engine.acquire_snapshot()
        self.running_conn = conn
        try:
            result = _run(conn, sql, params, many)
        except BaseException:
            self.running_conn = None
            if self._snapshot is None and conn.getautocommit():
                self.engine.release_snapshot(conn)
            elif not conn.getautocommit() and self._snapshot is None:
                self._snapshot = conn
            raise
        if conn.getautocommit():
            self._snapshot = None
            self.engine.release_snapshot(conn)
        else:
            self._snapshot = conn   # BEGIN on a reader: the snapshot stays with the session
        self.running_conn = None
        return result

    def _on_writer(self, sql: str, params, many: bool = False) -> Result:
        engine = self.engine
        self.last_sql, self.running_since = sql, time.monotonic()
        self.running_conn = engine.writer_conn
        try:
            result = engine.run_on_writer(sql, params, many)
        except StorageError:
            self._release_writer()   # the writer connection was reset: its transaction is gone
            raise
        except BaseException:
            if engine.writer_conn is not None and engine.writer_conn.getautocommit():
                self._release_writer()
            raise
        finally:
            self.running_conn = None
        if engine.writer_conn is not None and engine.writer_conn.getautocommit():
            self._release_writer()
        return result

    def _release_writer(self) -> None:
        if self._holding_writer:
            self._holding_writer = False
            self.engine.release_writer()

    def close(self) -> None:
        """Rolls back an open transaction and gives its connection back; if a statement is
        running (on another thread), that statement's thread does it when it returns."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            if self._running:
                return
        self._end()

    def _end(self) -> None:
        if self._holding_writer:
            conn = self.engine.writer_conn
            try:
                if conn is not None and not conn.getautocommit():
                    conn.execute("ROLLBACK")
            except Exception as exc:   # a page read from storage may fail too: start the connection
                self.engine.on_writer_failure(exc)   # afresh, so no half-open transaction is handed on
            finally:
                if self.engine.writer_file is not None:
                    self.engine.writer_file.discard()
                self._release_writer()
        if self._snapshot is not None:
            try:
                if not self._snapshot.getautocommit():
                    self._snapshot.execute("ROLLBACK")
            except apsw.Error:
                pass
            self.engine.release_snapshot(self._snapshot)
            self._snapshot = None
