"""Write forwarding: a secondary region's reader runs a session's writes on the primary writer.

Design and limits: FORWARDING.md next to this file. In short: a session opts in with a read
consistency (`eventual`, `session`, `global`); its writes, and every statement of an explicit
transaction once it writes, run in one session of its own on the primary region's writer
(the same gRPC SQL service any client uses); reads run here, after waiting for what the
consistency asks. The routing decisions are pure functions (`classify`, `route`); the sessions
are a thin shell over the local engine session and the writer's gRPC service.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time

import grpc

from sixfold.client import latency
from sixfold.client.channels import CLIENT_CHANNEL_OPTIONS
from sixfold.nodes.compute import engine as E
from sixfold.nodes.compute.multiwriter import SERIALIZATION_FAILURE
from sixfold.nodes.compute.values import from_pb, to_pb
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc

log = logging.getLogger(__name__)

CONSISTENCY_SETTING = "sixfold.replica_read_consistency"
OFF, EVENTUAL, SESSION, GLOBAL = "off", "eventual", "session", "global"
CONSISTENCIES = (OFF, EVENTUAL, SESSION, GLOBAL)

REPLICA_WAIT_S = 30.0          # a read waits at most this long for this reader to apply what it must see (a loaded
                               # machine has shown replication lag p99 of 7 s)
EXECUTE_TIMEOUT_S = 60.0       # one forwarded statement (the writer's commit itself waits up to its commit timeout)
CONNECT_TIMEOUT_S = 2.0        # reaching the primary writer before a statement is sent
LOOKUP_ATTEMPTS = 8            # a statement not sent yet follows a failover in the primary region:
LOOKUP_BACKOFF_S = 0.5         # look the writer up again, this many times, this long apart
REPLAYED_STATEMENTS_MAX = 256  # a local transaction's statements kept to re-run on the primary
PARAMS_PER_STATEMENT_MAX = 30_000   # SQLite allows 32766 host parameters per statement

# statement kinds
BEGIN, COMMIT, ROLLBACK, SAVEPOINT, READ, WRITE = "begin", "commit", "rollback", "savepoint", "read", "write"
# session states and routes
IDLE, LOCAL_TRANSACTION, REMOTE_TRANSACTION = "idle", "local-transaction", "remote-transaction"
LOCAL, REMOTE, MOVE = "local", "remote", "move"

_ROLLBACK_TO = re.compile(r"^\s*rollback(\s+transaction)?\s+to\b", re.I)
_SET = re.compile(r"^\s*set\s+(?:session\s+)?sixfold\.replica_read_consistency\s*(?:=|\bto\b)\s*(.*?)\s*;?\s*$",
                  re.I | re.S)
_VALUES_GROUP = re.compile(r"^(?P<head>.*\bvalues\s*)(?P<group>\((?:\s*\?\s*,)*\s*\?\s*\))\s*;?\s*$", re.I | re.S)


# ---------------------------------------------------------------- pure: the decisions


def parse_consistency(value: str | None) -> str:
    """A consistency name ("" and "off" both mean off); ValueError for anything else."""
    level = (value or "").strip().strip("'\"").strip().lower()
    if level == "":
        return OFF
    if level not in CONSISTENCIES:
        raise ValueError(f"invalid value for {CONSISTENCY_SETTING}: {value!r} (use one of {', '.join(CONSISTENCIES)})")
    return level


def consistency_set_in(sql: str) -> str | None:
    """The value of `SET sixfold.replica_read_consistency = ...` (None: not such a statement)."""
    m = _SET.match(sql)
    return None if m is None else m.group(1)


def classify(sql: str) -> str:
    """What a statement (SQLite text) is to the router."""
    words = sql.lstrip().split(None, 1)
    first = words[0].lower().rstrip(";") if words else ""
    if first == "begin":
        return BEGIN
    if first in ("commit", "end"):
        return COMMIT
    if first == "rollback":
        return SAVEPOINT if _ROLLBACK_TO.match(sql) else ROLLBACK
    if first in ("savepoint", "release"):
        return SAVEPOINT
    return READ if first in E.READ_KEYWORDS else WRITE


def route(state: str, kind: str) -> str:
    """Where a statement runs. A transaction on the primary stays there to its end; a write
    outside one runs there on its own; a write in a local (read) transaction moves it there."""
    if state == REMOTE_TRANSACTION:
        return REMOTE
    if kind == WRITE:
        return MOVE if state == LOCAL_TRANSACTION else REMOTE
    return LOCAL


def outcome_unknown(kind: str, in_transaction: bool) -> bool:
    """A forwarded statement whose reply was lost: may it have committed?"""
    return kind == COMMIT or (kind == WRITE and not in_transaction)


def multi_row_statements(sql: str, rows: list) -> list[tuple[str, list]]:
    """`INSERT ... VALUES (?, ?)` for many rows as few statements (one round trip each across
    regions); any other statement once per row."""
    m = _VALUES_GROUP.match(sql)
    if m is None or not rows:
        return [(sql, list(row)) for row in rows]
    width = m.group("group").count("?")
    per_statement = max(1, PARAMS_PER_STATEMENT_MAX // width)
    out = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        out.append((m.group("head") + ", ".join([m.group("group")] * len(chunk)),
                    [value for row in chunk for value in row]))
    return out


def result_digest(result: E.Result) -> str:
    return hashlib.sha256(repr((result.columns, result.rows)).encode()).hexdigest()


# ---------------------------------------------------------------- the primary writer


def primary_writer_address(coordinators: str) -> str | None:
    """HOST:PORT of the primary region's writer. The one place that knows where the primary is.
    `coordinators`: the primary region's at start, then this node's region's. A catalog of the
    primary region names its writer (a writer being promoted counts: it is the one to reach);
    any other region's names the primary region's writer endpoint (region roles, after a
    switchover or failover); None while a region role change is in progress."""
    from sixfold.nodes.compute.main import ask_catalog   # main imports this module

    catalog = ask_catalog(coordinators)
    return primary_writer_in(catalog) if catalog is not None else None


def primary_writer_in(catalog) -> str | None:
    """Where a region's catalog says the primary writer is (see primary_writer_address)."""
    from sixfold.nodes.compute.main import writer_of

    if catalog.primary_region and catalog.primary_region != catalog.region:
        return catalog.primary_writer_endpoint or None
    if catalog.regions_generation and not catalog.primary_region:
        return None   # the primary is changing region
    found = writer_of(catalog)
    return found[1] if found and found[1] else None


def _connected(channel: grpc.Channel) -> bool:
    """The channel has a connection now. grpc's public way (channel_ready_future) starts a thread
    per call (~0.9 ms under load, on every forwarded statement); this asks the core directly
    (through the latency interceptor's wrapper), and says False when it cannot."""
    inner = channel
    for _ in range(3):
        if hasattr(inner, "check_connectivity_state"):
            try:
                return inner.check_connectivity_state(False) == grpc.ChannelConnectivity.READY.value[0]
            except Exception:   # noqa: BLE001 - a grpc internal changed: take the public way
                return False
        inner = getattr(inner, "_channel", None)
    return False


class _NotSent(Exception):
    """The statement never left this node (no writer found or reachable): safe to try again."""


class Forwarder:
    """One per forwarding reader: finds the primary writer, keeps a channel to it."""

    def __init__(self, volume, primary_coordinators: str, lookup=primary_writer_address) -> None:
        self.volume = volume
        self.primary_coordinators = primary_coordinators
        self._lookup = lookup
        self._lock = threading.Lock()
        self._address: str | None = None
        self._channels: dict[str, tuple[grpc.Channel, compute_pb2_grpc.ComputeStub]] = {}

    def session(self, local: E.Session) -> "ForwardingSession":
        return ForwardingSession(local, self)

    def writer(self) -> tuple[str, grpc.Channel, compute_pb2_grpc.ComputeStub]:
        with self._lock:
            address = self._address
        if address is None:
            address = self._lookup(self.primary_coordinators)
            if address is None:
                raise _NotSent("the primary region's coordinators name no writer")
            with self._lock:
                self._address = address
        with self._lock:
            if address not in self._channels:
                channel = latency.sync_channel(address, options=CLIENT_CHANNEL_OPTIONS)
                self._channels[address] = (channel, compute_pb2_grpc.ComputeStub(channel))
            channel, stub = self._channels[address]
        return address, channel, stub

    def forget(self, address: str) -> None:
        """`address` is not the writer (any more): look it up again next time. Its channel stays
        (other sessions may be in calls on it; the addresses are the primary region's few instances)."""
        with self._lock:
            if self._address == address:
                self._address = None

    def primary_vdl(self) -> int:
        for _ in range(LOOKUP_ATTEMPTS):
            try:
                address, channel, stub = self.writer()
                status = stub.Status(cpb.StatusRequest(), timeout=CONNECT_TIMEOUT_S)
            except _NotSent:
                time.sleep(LOOKUP_BACKOFF_S)
                continue
            except grpc.RpcError:
                self.forget(address)
                time.sleep(LOOKUP_BACKOFF_S)
                continue
            if status.role == "writer" and status.health == "ok":
                return status.vdl
            self.forget(address)
        raise E.SqlError(E.REPLICA_WAIT_TIMEOUT, "global read consistency: the primary writer's VDL cannot be "
                                                 "learned (the primary writer is unreachable); retry")

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel, _ in channels:
            channel.close()


class RemoteSession:
    """This session's own session on the primary writer, over its gRPC SQL service."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.address = ""
        self.session_id = ""
        self.channel: grpc.Channel | None = None
        self.stub: compute_pb2_grpc.ComputeStub | None = None
        self.in_transaction = False

    def execute(self, sql: str, params) -> E.Result:
        kind = classify(sql)
        values = [to_pb(v) for v in (params or ())]
        for attempt in range(LOOKUP_ATTEMPTS):
            was_in_transaction = self.in_transaction
            try:
                if not self.session_id:
                    if was_in_transaction:
                        raise AssertionError("a remote transaction without a session")
                    self._open()
                elif not was_in_transaction:
                    self._check_reachable()
            except _NotSent as exc:
                self._drop()
                if attempt == LOOKUP_ATTEMPTS - 1:
                    raise E.SqlError(E.WRITER_LOST, f"write forwarding: the primary writer is unreachable ({exc}); "
                                                    "nothing was sent: retry") from None
                time.sleep(LOOKUP_BACKOFF_S)
                continue
            try:
                response = self.stub.Execute(cpb.ExecuteRequest(session_id=self.session_id, sql=sql, params=values),
                                             timeout=EXECUTE_TIMEOUT_S)
            except grpc.RpcError as exc:
                address = self.address
                self.close()   # best effort: rolls the remote transaction back if the writer still has it
                self.forwarder.forget(address)
                if outcome_unknown(kind, was_in_transaction):
                    raise E.SqlError(E.COMMIT_UNKNOWN, f"write forwarding: lost the primary writer at {address} "
                                                       f"({exc.code().name}) before it answered; the commit may or "
                                                       "may not have happened") from None
                raise E.SqlError(E.WRITER_LOST, f"write forwarding: lost the primary writer at {address} "
                                                f"({exc.code().name}); the transaction did not commit: retry it") from None
            if response.error_code == "no_session" and not was_in_transaction:
                self._drop()   # the writer restarted or expired the session; the statement did not run
                continue
            if response.error_code == E.READ_ONLY and not was_in_transaction:
                self.forwarder.forget(self.address)   # it is not the writer any more; the statement did not run
                self._drop()
                continue
            if response.error_code == E.FENCED:
                self.forwarder.forget(self.address)   # a newer writer exists: the next session looks it up
            self.in_transaction = response.in_transaction
            if response.error_code == "no_session":
                self._drop()
                raise E.SqlError(E.WRITER_LOST, "write forwarding: the primary writer no longer has this "
                                                f"transaction's session ({response.error_message}); it did not "
                                                "commit: retry it")
            if response.error_code:
                raise E.SqlError(response.error_code, response.error_message)
            return E.Result(columns=list(response.columns),
                            rows=[tuple(from_pb(v) for v in row.values) for row in response.rows],
                            rowcount=response.rowcount, lastrowid=response.lastrowid or None,
                            commit_lsn=response.commit_lsn or None, forwarded=True)
        raise E.SqlError(E.WRITER_LOST, "write forwarding: the primary writer kept changing; nothing was run: retry")

    def _open(self) -> None:
        address, channel, stub = self.forwarder.writer()
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
            opened = stub.OpenSession(cpb.OpenSessionRequest(client_name="sixfold.forwarding"),
                                      timeout=CONNECT_TIMEOUT_S)
        except (grpc.FutureTimeoutError, grpc.RpcError) as exc:
            self.forwarder.forget(address)
            raise _NotSent(f"{address} does not answer: {type(exc).__name__}") from None
        if opened.role != "writer":
            self.forwarder.forget(address)
            self._close_quietly(stub, opened.session_id)
            raise _NotSent(f"{address} is a {opened.role} now")
        self.address, self.channel, self.stub, self.session_id = address, channel, stub, opened.session_id

    def _check_reachable(self) -> None:
        """Outside a transaction: a writer gone since the last statement is found before the
        statement is sent (then it is safe to look the writer up again and send it there)."""
        if _connected(self.channel):
            return
        try:
            grpc.channel_ready_future(self.channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            self.forwarder.forget(self.address)
            raise _NotSent(f"{self.address} does not answer") from None

    def _drop(self) -> None:
        self.session_id, self.channel, self.stub, self.in_transaction = "", None, None, False

    @staticmethod
    def _close_quietly(stub, session_id: str) -> None:
        try:
            stub.CloseSession(cpb.CloseSessionRequest(session_id=session_id), timeout=CONNECT_TIMEOUT_S)
        except grpc.RpcError:
            pass   # the writer rolls it back when it expires

    def close(self) -> None:
        if self.session_id and self.stub is not None:
            self._close_quietly(self.stub, self.session_id)
        self._drop()


class ForwardingSession:
    """An engine session on a forwarding reader: the same interface as `engine.Session`."""

    def __init__(self, local: E.Session, forwarder: Forwarder) -> None:
        self.local = local
        self.forwarder = forwarder
        self.consistency = OFF
        self.remote = RemoteSession(forwarder)
        self.forwarded_commit_lsn = 0       # the newest commit this session forwarded
        self._replay: list[tuple[str, object, str | None]] = []   # the local transaction so far
        self._replay_overflow = False
        self._transaction_read = False      # the local transaction has pinned its snapshot

    # --- what the front ends use of a session -------------------------------------------
    @property
    def engine(self):
        return self.local.engine

    @property
    def running_conn(self):
        return self.local.running_conn

    @property
    def in_transaction(self) -> bool:
        return self.remote.in_transaction or self.local.in_transaction

    def with_connection(self, fn):
        return self.local.with_connection(fn)

    def describe(self, sql: str, bindings_count: int):
        return self.local.describe(sql, bindings_count)

    def state(self) -> str:
        if self.remote.in_transaction:
            return REMOTE_TRANSACTION
        return LOCAL_TRANSACTION if self.local.in_transaction else IDLE

    def execute(self, sql: str, params=None) -> E.Result:
        if self.consistency == OFF and not self.remote.in_transaction:
            return self.local.execute(sql, params)   # writes are refused here (read_only, 25006)
        kind, state = classify(sql), self.state()
        where = route(state, kind)
        if where == LOCAL:
            try:
                return self._local(sql, params, kind, state)
            except E.SqlError as exc:
                if exc.code != E.READ_ONLY:
                    raise
                where = route(state, WRITE)   # e.g. WITH ... INSERT: it writes after all; nothing ran
        if where == MOVE:
            self._move_to_primary()
        return self._forward(sql, params)

    async def execute_async(self, sql: str, params, in_thread) -> E.Result:
        """The gRPC service's entry point. Not forwarding: the local session's own (its short
        reads run on the event loop). Forwarding blocks on RPCs to the primary and on replica
        waits, so the statement runs on a worker thread."""
        if self.consistency == OFF and not self.remote.in_transaction:
            return await self.local.execute_async(sql, params, in_thread)
        return await in_thread(self.execute, sql, params)

    def execute_many(self, sql: str, rows: list) -> E.Result:
        if self.consistency == OFF and not self.remote.in_transaction:
            return self.local.execute_many(sql, rows)
        state = self.state()
        if route(state, WRITE) == MOVE:
            self._move_to_primary()
        statements = multi_row_statements(sql, rows)
        own_transaction = state == IDLE and len(statements) > 1   # atomic, as one statement would be
        if own_transaction:
            self._forward("BEGIN", None)
        total = 0
        try:
            for text, params in statements:
                total += max(self._forward(text, params).rowcount, 0)
        except E.SqlError:
            if own_transaction and self.remote.in_transaction:
                self._forward("ROLLBACK", None)
            raise
        result = self._forward("COMMIT", None) if own_transaction else E.Result(forwarded=True)
        result.rowcount = total
        return result

    def close(self) -> None:
        self.remote.close()   # rolls back a forwarded transaction still open
        self.local.close()

    # --- routes ------------------------------------------------------------------------
    def _local(self, sql: str, params, kind: str, state: str) -> E.Result:
        if kind == READ and not (state == LOCAL_TRANSACTION and self._transaction_read):
            self._wait_for_consistency()   # the statement (or transaction) pins its snapshot now
        result = self.local.execute(sql, params)
        if not self.local.in_transaction:
            return result
        if state == IDLE:   # this statement opened a transaction here
            self._replay, self._replay_overflow, self._transaction_read = [], False, False
        if kind == READ:
            self._transaction_read = True
        if len(self._replay) >= REPLAYED_STATEMENTS_MAX:
            self._replay_overflow = True
        else:
            self._replay.append((sql, params, result_digest(result) if kind == READ else None))
        return result

    def _forward(self, sql: str, params) -> E.Result:
        result = self.remote.execute(sql, params)
        if result.commit_lsn:
            self.forwarded_commit_lsn = max(self.forwarded_commit_lsn, result.commit_lsn)
        return result

    def _move_to_primary(self) -> None:
        """The local transaction writes: run it again on the primary, where it goes on. Its reads
        must give there what they gave here, else it fails with 40001 (and stays open here: the
        client rolls it back). Then it is as if it had run on the primary from its start."""
        if self._replay_overflow:
            raise E.SqlError(SERIALIZATION_FAILURE, f"write forwarding: this transaction ran more than "
                                                    f"{REPLAYED_STATEMENTS_MAX} statements on the reader before "
                                                    "its first write; roll it back and start it with the write")
        try:
            for sql, params, digest in self._replay:
                result = self._forward(sql, params)
                if digest is not None and result_digest(result) != digest:
                    raise E.SqlError(SERIALIZATION_FAILURE, "write forwarding: a read of this transaction gives "
                                                            "another answer on the primary writer than it gave on "
                                                            "this reader; roll back and retry the transaction")
        except E.SqlError:
            self.remote.close()   # rolls back what was re-run there
            raise
        self._replay = []
        self.local.execute("ROLLBACK")   # the snapshot here is not needed any more

    def _wait_for_consistency(self) -> None:
        if self.consistency == SESSION:
            target = self.forwarded_commit_lsn
        elif self.consistency == GLOBAL:
            target = self.forwarder.primary_vdl()
        else:
            return
        if target and not self.local.engine.volume.wait_read_lsn(target, REPLICA_WAIT_S):
            raise E.SqlError(E.REPLICA_WAIT_TIMEOUT,
                             f"{self.consistency} read consistency: this reader has applied LSN "
                             f"{self.local.engine.volume.read_lsn}, not yet {target}, after {REPLICA_WAIT_S:.0f} s; "
                             "retry (or read with eventual consistency)")


def set_consistency(session, value: str | None) -> str:
    """`SET sixfold.replica_read_consistency`: any session accepts it (a writer's, or a reader's
    without forwarding, ignore it, as Aurora's writer does); ValueError for a bad value."""
    level = parse_consistency(value)
    if isinstance(session, ForwardingSession):
        session.consistency = level
    return level
