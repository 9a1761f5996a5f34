"""SQL sessions over SQLite on the volume.

One writer connection per writer node (SQLite has one writer): a session that
writes holds it for the statement, or for its whole explicit transaction.
Commits are published at COMMIT_PHASETWO; the session then releases the
writer connection *before* waiting for VDL to pass its commit LSN, so the next
transaction runs while the previous one is on its way to the quorum (group
commit with one SQLite writer). Reads outside a write transaction run on a
pool of snapshot connections that read at a pinned VDL: only durable data is
ever visible to them, on the writer as on readers.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import apsw

from sixfold.client.errors import CommitTimeoutError, FencedError, ReadUnavailableError, StorageError
from sixfold.nodes.compute.multiwriter import SERIALIZATION_FAILURE, MultiWriterVFS, WriteConflictError
from sixfold.nodes.compute.vfs import DB_NAME, SixfoldVFS, WriterFile
from sixfold.nodes.compute.volume import VolumeState

log = logging.getLogger(__name__)

READ_KEYWORDS = ("select", "with", "values", "explain")


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
# SERIALIZATION_FAILURE (imported): multi-writer, lost a page conflict; retry (SQLSTATE 40001)
# an autocommit statement that lost a conflict runs again at a newer snapshot: nothing of it
# reached the client, so this is safe; bounded, with a short random back-off
AUTOCOMMIT_CONFLICT_ATTEMPTS = 8
CONFLICT_BACKOFF_MAX_S = 0.005
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


def _is_read(sql: str) -> bool:
    head = sql.lstrip().split(None, 1)
    return bool(head) and head[0].lower() in READ_KEYWORDS


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
        # commits through the adjudicator; None: the single writer, unchanged
        self.backend = backend
        # a secondary reader with write forwarding: its sessions may forward writes (FORWARDING.md)
        self.forwarder = None
        self.vfs = MultiWriterVFS(volume, backend) if backend is not None else SixfoldVFS(volume, writer)
        self._write_lock = threading.Lock()
        self._pool: queue.Queue[apsw.Connection] = queue.Queue()
        self._all: list[apsw.Connection] = []
        self.writer_conn: apsw.Connection | None = None
        self.writer_file: WriterFile | None = None
        self._cache_size_pages = cache_size_pages
        if writer:
            self._open_writer()
        for _ in range(snapshot_connections):
            conn = apsw.Connection(DB_NAME, vfs=self.vfs.vfs_name, flags=apsw.SQLITE_OPEN_READONLY)
            conn.execute("PRAGMA query_only=ON")
            on_connect(conn)
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
        self._maintainer.join(timeout=2)
        for conn in self._all:
            try:
                conn.close(True)
            except Exception:
                pass

    # --- used by sessions -------------------------------------------------------
    def acquire_writer(self) -> None:
        if not self.is_writer:
            raise SqlError(READ_ONLY, "read-only: this is a reader instance; send writes to the writer endpoint")
        if self.fenced:
            raise SqlError(FENCED, self.fenced)
        if not self._write_lock.acquire(timeout=self.busy_timeout_s):
            raise SqlError(BUSY, f"another session held the write lock for {self.busy_timeout_s:.0f} s; retry")

    def release_writer(self) -> None:
        self._write_lock.release()

    def acquire_snapshot(self) -> apsw.Connection:
        try:
            return self._pool.get(timeout=self.busy_timeout_s)
        except queue.Empty:
            raise SqlError(BUSY, "all snapshot connections are busy; retry") from None

    def release_snapshot(self, conn: apsw.Connection) -> None:
        self._pool.put(conn)

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


class Session:
    """One client session: statements, explicit transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._holding_writer = False
        self._snapshot: apsw.Connection | None = None   # bound during a read transaction
        self.running_conn: apsw.Connection | None = None   # the connection a statement runs on (cancel)

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
        return self.with_connection(lambda conn: describe_on(conn, sql, bindings_count))

    def execute_many(self, sql: str, rows: list) -> Result:
        """One write statement for many parameter rows (COPY FROM)."""
        try:
            if not self._holding_writer:
                self.engine.acquire_writer()
                self._holding_writer = True
            return self._on_writer(sql, rows, many=True)
        except Exception as exc:
            raise map_error(exc) from exc

    def execute(self, sql: str, params=None) -> Result:
        try:
            if self._holding_writer:
                return self._on_writer(sql, params)
            if self._snapshot is not None:
                return self._on_snapshot(sql, params)
            if _is_read(sql) or not self.engine.is_writer:
                try:
                    return self._on_snapshot(sql, params)
                except SqlError as exc:
                    if exc.code != READ_ONLY or not self.engine.is_writer:
                        raise
                    # e.g. WITH ... INSERT: it writes after all; nothing was changed on the snapshot
            if self.engine.backend is not None:
                return self._autocommit_with_retries(sql, params)
            self.engine.acquire_writer()
            self._holding_writer = True
            return self._on_writer(sql, params)
        except Exception as exc:
            raise map_error(exc) from exc

    def _autocommit_with_retries(self, sql: str, params) -> Result:
        """Multi-writer: a statement outside a transaction that lost a conflict runs again, once
        this node has seen the winner (on_writer_failure refreshed its pages). A statement that
        opens a transaction (BEGIN) cannot conflict here: its commit comes with a later statement."""
        for attempt in range(AUTOCOMMIT_CONFLICT_ATTEMPTS):
            self.engine.acquire_writer()
            self._holding_writer = True
            try:
                return self._on_writer(sql, params)
            except WriteConflictError:
                if attempt == AUTOCOMMIT_CONFLICT_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, CONFLICT_BACKOFF_MAX_S))   # refreshed already (on_writer_failure)
        raise AssertionError("unreachable")

    def _on_snapshot(self, sql: str, params) -> Result:
        conn = self._snapshot or self.engine.acquire_snapshot()
        self.running_conn = conn
        try:
            result = _run(conn, sql, params)
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
        conn, file = engine.writer_conn, engine.writer_file
        assert conn is not None and file is not None
        self.running_conn = conn
        try:
            result = _run(conn, sql, params, many)
        except StorageError as exc:
            # the publish failed (apsw re-raises what the VFS raised): SQLite believes the
            # transaction committed, the volume never got it; nothing was acknowledged
            file.take_commit_lsn()
            engine.on_writer_failure(exc)
            self._release_writer()
            raise
        except BaseException:
            file.take_commit_lsn()
            if conn.getautocommit():
                file.discard()
                self._release_writer()
            raise
        finally:
            self.running_conn = None
        commit_lsn = file.take_commit_lsn()
        if conn.getautocommit():
            file.discard()
            self._release_writer()
            if commit_lsn is not None:
                # the write lock is free again: later transactions join the same boxcars
                (engine.backend or engine.volume).wait_durable(commit_lsn)
                result.commit_lsn = commit_lsn
        return result

    def _release_writer(self) -> None:
        if self._holding_writer:
            self._holding_writer = False
            self.engine.release_writer()

    def close(self) -> None:
        """Rolls back an open transaction and gives its connection back."""
        if self._holding_writer:
            conn = self.engine.writer_conn
            try:
                if conn is not None and not conn.getautocommit():
                    conn.execute("ROLLBACK")
            except apsw.Error:
                pass
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
