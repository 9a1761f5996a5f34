"""A Python DB-API 2.0 (PEP 249) client for Sixfold's compute nodes.

    import sixfold
    conn = sixfold.connect("127.1.1.10:7200", autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT balance FROM accounts WHERE id = ?", (7,))

Parameters use SQLite's styles (`?` or `:name`); paramstyle is "qmark". With
autocommit=False (the PEP 249 default) the first statement opens a
transaction and commit()/rollback() end it.
"""

from __future__ import annotations

import random
import time

import grpc

from sixfold.client.channels import CLIENT_CHANNEL_OPTIONS
from sixfold.nodes.compute.values import from_pb, to_pb
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"


class Warning(Exception):  # noqa: A001 - PEP 249 name
    pass


class Error(Exception):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


class ReadOnlyError(OperationalError):
    """A write was sent to a reader (or a read-only connection)."""


class FencedError(OperationalError):
    """The writer was fenced by a newer one: reconnect to the writer endpoint."""


class CommitUnknownError(OperationalError):
    """The commit did not reach a write quorum in time: it may or may not be durable."""


class WriterLostError(OperationalError):
    """Write forwarding: the primary writer was lost before the forwarded transaction committed;
    nothing of it is committed. Retry the transaction."""


class SerializationFailure(OperationalError):
    """Multi-writer: the transaction lost a page conflict to a concurrent commit and was
    rolled back; retry it (see run_transaction)."""


_ERRORS = {
    "sql_error": ProgrammingError,
    "constraint": IntegrityError,
    "read_only": ReadOnlyError,
    "busy": OperationalError,
    "fenced": FencedError,
    "commit_unknown": CommitUnknownError,
    "serialization_failure": SerializationFailure,
    "storage_unavailable": OperationalError,
    "no_session": InterfaceError,
    "writer_lost": WriterLostError,
    "replica_wait_timeout": OperationalError,
    "internal": InternalError,
}


def _raise_for(response) -> None:
    if response.error_code:
        raise _ERRORS.get(response.error_code, DatabaseError)(response.error_message, response.error_code)


class Connection:
    def __init__(self, address: str, autocommit: bool = False, timeout_s: float = 30.0,
                 replica_read_consistency: str = "") -> None:
        self.address = address
        self.autocommit = autocommit
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)
        self._stub = compute_pb2_grpc.ComputeStub(self._channel)
        try:
            opened = self._stub.OpenSession(cpb.OpenSessionRequest(
                client_name="sixfold.dbapi", replica_read_consistency=replica_read_consistency), timeout=timeout_s)
        except grpc.RpcError as exc:
            self._channel.close()
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ProgrammingError(exc.details()) from None
            raise OperationalError(f"cannot reach the compute node at {address}: {exc.code().name}") from None
        self.session_id = opened.session_id
        self.role = opened.role
        self.node_id = opened.node_id
        self.write_forwarding = opened.write_forwarding   # a reader that forwards writes (when asked to)
        self.last_forwarded = False                        # the last statement ran on the primary writer
        self.in_transaction = False
        self.last_commit_lsn = 0
        self.session_left_open = False
        self._closed = False

    def _execute(self, sql: str, params) -> cpb.ExecuteResponse:
        if self._closed:
            raise InterfaceError("the connection is closed")
        try:
            values = [to_pb(v) for v in (params or ())]
        except (TypeError, ValueError) as exc:
            raise ProgrammingError(str(exc)) from None
        try:
            response = self._stub.Execute(cpb.ExecuteRequest(session_id=self.session_id, sql=sql, params=values),
                                          timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise OperationalError(f"lost the compute node at {self.address}: {exc.code().name}; "
                                   "the outcome of the last statement is unknown") from None
        self.in_transaction = response.in_transaction
        self.last_forwarded = response.forwarded
        if response.commit_lsn:
            self.last_commit_lsn = response.commit_lsn
        _raise_for(response)
        return response

    def cursor(self) -> "Cursor":
        return Cursor(self)

    def execute(self, sql: str, params=()) -> "Cursor":
        cursor = self.cursor()
        cursor.execute(sql, params)
        return cursor

    def commit(self) -> None:
        if self.in_transaction:
            self._execute("COMMIT", ())

    def rollback(self) -> None:
        if self.in_transaction:
            self._execute("ROLLBACK", ())

    def close(self) -> None:
        """Closes the connection. If the node cannot be told, its session (and any transaction
        the session had open, with its locks) stays there: `session_left_open` says so, and
        close_session() can end it later."""
        if self._closed:
            return
        try:
            self._stub.CloseSession(cpb.CloseSessionRequest(session_id=self.session_id), timeout=5)
        except grpc.RpcError:
            self.session_left_open = True
        self._channel.close()
        self._closed = True

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            try:
                self.rollback()
            except Error:
                pass
        self.close()


class Cursor:
    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.description = None
        self.rowcount = -1
        self.lastrowid = None
        self._rows: list[tuple] = []
        self._pos = 0

    def execute(self, sql: str, params=()) -> "Cursor":
        conn = self.connection
        if not conn.autocommit and not conn.in_transaction and not sql.lstrip().lower().startswith(
                ("begin", "commit", "rollback", "end", "pragma")):
            conn._execute("BEGIN", ())
        response = conn._execute(sql, params)
        self.description = [(name, None, None, None, None, None, None) for name in response.columns] or None
        self._rows = [tuple(from_pb(v) for v in row.values) for row in response.rows]
        self._pos = 0
        self.rowcount = response.rowcount if not response.columns else len(self._rows)
        self.lastrowid = response.lastrowid or None
        return self

    def executemany(self, sql: str, seq_of_params) -> "Cursor":
        total = 0
        for params in seq_of_params:
            self.execute(sql, params)
            total += max(self.rowcount, 0)
        self.rowcount = total
        return self

    def fetchone(self):
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: int | None = None):
        size = size or self.arraysize
        rows = self._rows[self._pos:self._pos + size]
        self._pos += len(rows)
        return rows

    def fetchall(self):
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    def __iter__(self):
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        self._rows = []

    def setinputsizes(self, sizes) -> None:
        pass

    def setoutputsize(self, size, column=None) -> None:
        pass


def close_session(address: str, session_id: str, timeout_s: float = 5.0) -> bool:
    """Ends a session a closed connection left open on an unreachable node (rolling back its
    transaction); True once the node has it closed."""
    with grpc.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS) as channel:
        try:
            compute_pb2_grpc.ComputeStub(channel).CloseSession(cpb.CloseSessionRequest(session_id=session_id),
                                                               timeout=timeout_s)
            return True
        except grpc.RpcError:
            return False


def connect(address: str, autocommit: bool = False, timeout_s: float = 30.0,
            replica_read_consistency: str = "") -> Connection:
    """Opens a session on a compute node (HOST:PORT). On a reader with write forwarding,
    replica_read_consistency ("eventual", "session" or "global") lets the session send writes
    (they run on the primary writer); "" or "off": writes are refused (ReadOnlyError)."""
    return Connection(address, autocommit=autocommit, timeout_s=timeout_s,
                      replica_read_consistency=replica_read_consistency)


def run_transaction(connection: Connection, fn, attempts: int = 10, backoff_max_s: float = 0.02):
    """Runs `fn(connection)` as one explicit transaction and commits it; when the transaction
    loses a multi-writer conflict (SerializationFailure) it is run again from the start, up
    to `attempts` times, with a growing random back-off. `fn` must have no effects outside
    the database (it may run several times). Returns what the committed run of `fn` returned."""
    if connection.autocommit:
        raise InterfaceError("run_transaction needs a connection with autocommit off")
    for attempt in range(attempts):
        try:
            result = fn(connection)
            connection.commit()
            return result
        except SerializationFailure:
            if connection.in_transaction:
                connection.rollback()
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, backoff_max_s * (attempt + 1)))
    raise AssertionError("unreachable")
