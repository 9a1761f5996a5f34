"""One PostgreSQL connection as a state machine: frontend messages in, backend bytes out.

No sockets here: the asyncio shell (server.py) feeds `receive()` the messages of
one read and writes what it returns; TLS, SSLRequest and CancelRequest are the
shell's. The SQL itself runs on an engine session (`sixfold.nodes.compute.engine`),
which blocks, so the shell calls `receive()` in a worker thread.

States: startup -> (sasl_first -> sasl_final | password) -> ready <-> copy_in; closed.
Extended-query errors skip to the next Sync, as PostgreSQL does. A failed explicit
transaction refuses statements (25P02) until ROLLBACK, as PostgreSQL does, although
SQLite would let it go on.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field

from sixfold.nodes.compute import engine as E
from sixfold.nodes.compute import forwarding
from sixfold.nodes.compute.pgwire import messages as M
from sixfold.nodes.compute.pgwire import pgtypes as T
from sixfold.nodes.compute.pgwire.catalog import SERVER_VERSION, Catalog, SessionContext
from sixfold.nodes.compute.pgwire.scram import MECHANISM, ScramExchange, ScramFailed, ScramVerifier
from sixfold.nodes.compute.pgwire.translate import Plan, column_refs, split_statements, translate

log = logging.getLogger(__name__)

STATEMENTS_MAX = 10_000        # prepared statements per connection
PORTALS_MAX = 1_000
COPY_BATCH_ROWS = 5_000

DEFAULT_SETTINGS = {
    "server_version": SERVER_VERSION, "server_version_num": "150000", "server_encoding": "UTF8",
    "client_encoding": "UTF8", "datestyle": "ISO, MDY", "timezone": "UTC", "intervalstyle": "postgres",
    "integer_datetimes": "on", "standard_conforming_strings": "on", "is_superuser": "on",
    "application_name": "", "search_path": '"$user", public', "transaction_isolation": "serializable",
    "default_transaction_isolation": "serializable", "transaction_read_only": "off",
    "default_transaction_read_only": "off", "statement_timeout": "0", "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0", "extra_float_digits": "1", "max_identifier_length": "63",
    "lc_messages": "C", "lc_monetary": "C", "lc_numeric": "C", "lc_time": "C", "bytea_output": "hex",
    "client_min_messages": "notice", "synchronous_commit": "on", "max_connections": "512",
    "default_transaction_deferrable": "off", "row_security": "on", "jit": "off", "work_mem": "4MB",
    forwarding.CONSISTENCY_SETTING: forwarding.OFF,
}
REPORTED = ("server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
            "integer_datetimes", "standard_conforming_strings", "is_superuser", "application_name",
            "session_authorization", "default_transaction_read_only", "in_hot_standby")


@dataclass
class Config:
    user: str = "sixfold"
    verifier: ScramVerifier | None = None     # None: trust (no password asked)
    database: str = "sixfold"
    port: int = 0


@dataclass
class Statement:
    sql: str
    plan: Plan | None
    lifted: tuple
    param_oids: list[int]
    fields: list[M.Field] | None = None   # None until described
    sent_oids: list[int] | None = None    # the column types a Describe told the client


@dataclass
class Portal:
    statement: Statement
    params: list
    result_formats: tuple[int, ...]
    rows: list | None = None          # fetched rows not yet sent (Execute with a row limit)
    oids: list[int] | None = None
    sent_oids: list[int] | None = None   # the column types a Describe of this portal told the client
    sent: int = 0
    tag: str = ""


@dataclass
class CopyIn:
    table: str
    columns: list[str]
    oids: list[int]
    info: dict
    buffer: bytearray = field(default_factory=bytearray)
    rows: list = field(default_factory=list)
    count: int = 0
    implicit_txn: bool = False
    extended: bool = False
    header_skipped: bool = False


class ConnectionLost(Exception):
    """The session cannot go on (writer lost, instance changed role): FATAL and close."""


_SQLITE_ERRORS = [
    (re.compile(r"no such table|no such view"), "42P01"), (re.compile(r"no such column"), "42703"),
    (re.compile(r"no such function|wrong number of arguments"), "42883"),
    (re.compile(r"already exists"), "42P07"), (re.compile(r"syntax error|incomplete input|unrecognized token"), "42601"),
    (re.compile(r"datatype mismatch"), "42804"), (re.compile(r"ambiguous column"), "42702"),
    (re.compile(r"cannot start a transaction within a transaction"), "25001"),
    (re.compile(r"no transaction is active"), "25P01"), (re.compile(r"no such savepoint"), "3B001"),
    (re.compile(r"integer overflow"), "22003"), (re.compile(r"invalid regular expression|invalid input syntax"), "22P02"),
    (re.compile(r"division by zero"), "22012"),
]
_CONSTRAINT_ERRORS = [("UNIQUE", "23505"), ("PRIMARY KEY", "23505"), ("NOT NULL", "23502"),
                      ("FOREIGN KEY", "23503"), ("CHECK", "23514")]


def pg_error_of(exc: E.SqlError) -> M.PgError:
    msg = exc.message
    if exc.code == E.SYNTAX:
        for rx, code in _SQLITE_ERRORS:
            if rx.search(msg):
                return M.PgError(code, msg)
        return M.PgError("42000", msg)
    if exc.code == E.CONSTRAINT:
        code = next((c for k, c in _CONSTRAINT_ERRORS if k in msg), "23000")
        return M.PgError(code, msg)
    if exc.code == E.READ_ONLY:
        return M.PgError("25006", "cannot execute a write in a read-only transaction: this is a reader "
                                  "instance; send writes to the writer endpoint")
    if exc.code == E.BUSY:
        return M.PgError("40001", f"could not serialize access: {msg}", hint="retry the transaction")
    if exc.code == E.SERIALIZATION_FAILURE:
        return M.PgError("40001", msg, hint="another writer committed a change to the same page first; "
                                            "retry the transaction")
    if exc.code == E.CANCELED:
        return M.PgError("57014", "canceling statement due to user request")
    if exc.code == E.REPLICA_WAIT_TIMEOUT:
        return M.PgError("57014", msg)
    if exc.code == E.WRITER_LOST:
        return M.PgError("08006", msg, severity="FATAL", hint="reconnect and retry the transaction")
    if exc.code in (E.FENCED, E.COMMIT_UNKNOWN, E.STORAGE_UNAVAILABLE):
        code = "08007" if exc.code == E.COMMIT_UNKNOWN else "08006"
        return M.PgError(code, f"the writer was lost: {msg}", severity="FATAL",
                         hint="reconnect (through the writer endpoint) and retry the transaction")
    return M.PgError("XX000", msg)


class PgSession:
    def __init__(self, config: Config, engine, catalog: Catalog, pid: int, secret: int,
                 is_reader: bool = False) -> None:
        self.config = config
        self.engine = engine
        self.catalog = catalog
        self.pid, self.secret = pid, secret
        self.is_reader = is_reader
        self.db: E.Session | None = None
        self.state = "startup"
        self.user = ""
        self.database = ""
        self.settings: dict[str, str] = dict(DEFAULT_SETTINGS)
        self.statements: dict[str, Statement] = {}
        self.portals: dict[str, Portal] = {}
        self.failed = False            # an explicit transaction hit an error (PostgreSQL's 'E')
        self.skip_to_sync = False      # an extended-query error: ignore until Sync
        self.copy: CopyIn | None = None
        self._scram: ScramExchange | None = None
        self._out: list[bytes] = []

    # ---------------------------------------------------------------- entry point
    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def receive(self, msgs: list) -> bytes:
        out = self._out = []
        i = 0
        try:
            while i < len(msgs) and self.state != "closed":
                msg = msgs[i]
                nxt = msgs[i + 1] if i + 1 < len(msgs) else None
                if self._handle(msg, nxt):
                    i += 1   # the next message was handled together with this one
                i += 1
        except M.ProtocolViolation as exc:
            self._fatal(M.PgError("08P01", f"protocol violation: {exc}", severity="FATAL"))
        except ConnectionLost as exc:
            self._fatal(exc.args[0])
        return b"".join(out)

    def _fatal(self, err: M.PgError) -> None:
        err.severity = "FATAL"
        self._out.append(M.error_response(err))
        self.close()

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except Exception:
                log.exception("closing an engine session failed")
            self.db = None
        self.state = "closed"

    def status(self) -> str:
        if self.failed:
            return "E"
        return "T" if self.db is not None and self.db.in_transaction else "I"

    def _handle(self, msg, nxt) -> bool:
        """Handles one message; True if it consumed `nxt` as well."""
        if isinstance(msg, M.Terminate):
            self.close()
            return False
        if self.state == "startup":
            if not isinstance(msg, M.Startup):
                raise M.ProtocolViolation(f"expected a startup message, got {type(msg).__name__}")
            self._startup(msg)
        elif self.state in ("sasl_first", "sasl_final"):
            if not isinstance(msg, M.AuthResponse):
                raise M.ProtocolViolation(f"expected an authentication response, got {type(msg).__name__}")
            self._auth(msg)
        elif self.state == "copy_in":
            self._copy_message(msg)
        elif isinstance(msg, M.Query):
            if not self.skip_to_sync:
                self._simple_query(msg.sql)
        elif isinstance(msg, M.Sync):
            self.skip_to_sync = False
            self._ready()
        elif isinstance(msg, M.Flush):
            pass
        elif isinstance(msg, (M.Parse, M.Bind, M.Describe, M.Execute, M.Close)):
            if self.skip_to_sync:
                return False
            try:
                return self._extended(msg, nxt)
            except M.PgError as err:
                self._error(err)
                self.skip_to_sync = True
        elif isinstance(msg, (M.CopyData, M.CopyDone, M.CopyFail)):
            pass   # after a failed COPY the client may still send these; PostgreSQL ignores them
        else:
            raise M.ProtocolViolation(f"unexpected {type(msg).__name__} message")
        return False

    def _ready(self) -> None:
        self._out.append(M.ready_for_query(self.status()))

    def _error(self, err: M.PgError) -> None:
        if err.fatal:
            raise ConnectionLost(err)
        if self.db is not None and self.db.in_transaction:
            self.failed = True
        self._out.append(M.error_response(err))

    def _notice(self, code: str, message: str, severity: str = "WARNING") -> None:
        self._out.append(M.notice_response(M.PgError(code, message, severity=severity)))

    # ---------------------------------------------------------------- startup and auth
    def _startup(self, msg: M.Startup) -> None:
        self.user = msg.params.get("user", "")
        self.database = msg.params.get("database") or self.user
        if msg.params.get("application_name"):
            self.settings["application_name"] = msg.params["application_name"]
        for key, value in msg.params.items():
            if key == "options":
                for name, val in re.findall(r"-c\s*([\w.]+)=(\S+)", value):
                    self.settings[name.lower()] = val
            elif key not in ("user", "database", "replication"):
                self.settings[key.lower()] = value
        if msg.params.get("replication") not in (None, "false", "0", "off", "no"):
            raise ConnectionLost(M.PgError("0A000", "replication connections are not supported"))
        if not self.user:
            raise ConnectionLost(M.PgError("28000", "no user name given in the startup message"))
        if self.user != self.config.user:
            raise ConnectionLost(M.PgError("28000", f'role "{self.user}" does not exist'))
        if self.config.verifier is None:
            self._authenticated()
        else:
            self._out.append(M.authentication_sasl([MECHANISM]))
            self.state = "sasl_first"

    def _auth(self, msg: M.AuthResponse) -> None:
        assert self.config.verifier is not None
        try:
            if self.state == "sasl_first":
                r = M.Reader(msg.data)
                mechanism = r.cstr()
                n = r.int32()
                data = r.rest()
                if mechanism != MECHANISM:
                    raise ScramFailed(f"mechanism {mechanism!r} is not offered")
                if n != len(data):
                    raise M.ProtocolViolation("SASLInitialResponse length mismatch")
                self._scram = ScramExchange(self.config.verifier)
                self._out.append(M.authentication_sasl_continue(self._scram.server_first(data)))
                self.state = "sasl_final"
            else:
                assert self._scram is not None
                final = self._scram.server_final(msg.data)
                self._out.append(M.authentication_sasl_final(final))
                self._authenticated()
        except ScramFailed as exc:
            log.info("authentication of %r failed: %s", self.user, exc)
            raise ConnectionLost(M.PgError("28P01", f'password authentication failed for user "{self.user}"'))

    def _authenticated(self) -> None:
        self._out.append(M.authentication_ok())
        values = {"server_version": SERVER_VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8",
                  "DateStyle": "ISO, MDY", "TimeZone": "UTC", "IntervalStyle": "postgres",
                  "integer_datetimes": "on", "standard_conforming_strings": "on", "is_superuser": "on",
                  "application_name": self.settings.get("application_name", ""),
                  "session_authorization": self.user, "default_transaction_read_only": "off",
                  "in_hot_standby": "on" if self.is_reader else "off"}
        for name in REPORTED:
            self._out.append(M.parameter_status(name, values[name]))
        self._out.append(M.backend_key_data(self.pid, self.secret))
        self.db = self.engine.session()
        if self.settings[forwarding.CONSISTENCY_SETTING] != forwarding.OFF:   # options=-c sixfold.replica_...
            try:
                forwarding.set_consistency(self.db, self.settings[forwarding.CONSISTENCY_SETTING])
            except ValueError as exc:
                raise ConnectionLost(M.PgError("22023", str(exc))) from None
        self.state = "ready"
        self._ready()

    # ---------------------------------------------------------------- simple query
    def _simple_query(self, sql: str) -> None:
        parts = split_statements(sql)
        if not parts:
            self._out.append(M.empty_query_response())
            self._ready()
            return
        plans = []
        try:
            for part in parts:
                plans.append((part, *translate(part, lift_literals=True)))
        except M.PgError as err:
            self._error(err)
            self._ready()
            return
        # several statements in one Query run as one transaction, as in PostgreSQL
        implicit = (len(plans) > 1 and self.status() == "I"
                    and not any(p.kind in ("begin", "commit", "rollback", "copy") for _, p, _ in plans))
        try:
            if implicit:
                self._run_sql_text("BEGIN")
            for text, plan, lifted in plans:
                if plan.kind == "copy":
                    self._start_copy(plan, extended=False)
                    if self.state == "copy_in":
                        return   # ReadyForQuery comes after the COPY ends
                    continue
                portal = Portal(Statement(text, plan, lifted, []), [], ())
                self._run_portal(portal, rows_max=0, describe=True)
            if implicit:
                self._run_sql_text("COMMIT")
        except M.PgError as err:
            if implicit and self.db is not None and self.db.in_transaction:
                self._rollback_quietly()
            self._error(err)
        self._ready()

    def _run_sql_text(self, sql: str) -> E.Result:
        try:
            return self.db.execute(sql)
        except E.SqlError as exc:
            raise pg_error_of(exc) from None

    def _rollback_quietly(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except E.SqlError as exc:
            err = pg_error_of(exc)
            if err.fatal:
                raise ConnectionLost(err)

    # ---------------------------------------------------------------- extended query
    def _extended(self, msg, nxt) -> bool:
        if isinstance(msg, M.Parse):
            if msg.name and msg.name in self.statements:
                raise M.PgError("42P05", f'prepared statement "{msg.name}" already exists')
            if len(self.statements) >= STATEMENTS_MAX:
                raise M.PgError("53400", f"at most {STATEMENTS_MAX} prepared statements per connection")
            parts = split_statements(msg.sql)
            if len(parts) > 1:
                raise M.PgError("42601", "cannot insert multiple commands into a prepared statement")
            plan, lifted = translate(parts[0]) if parts else (Plan("empty"), ())
            oids = list(msg.param_oids) + [0] * max(0, plan.param_count - len(msg.param_oids))
            self.statements[msg.name] = Statement(msg.sql, plan, lifted, oids)
            self._out.append(M.parse_complete())
            return False
        if isinstance(msg, M.Bind):
            st = self.statements.get(msg.statement)
            if st is None:
                raise M.PgError("26000", f'prepared statement "{msg.statement}" does not exist')
            if len(msg.params) != len(st.param_oids):
                raise M.PgError("08P01", f"bind message supplies {len(msg.params)} parameters, but prepared "
                                         f"statement \"{msg.statement}\" requires {len(st.param_oids)}")
            formats = msg.param_formats
            if len(formats) not in (0, 1, len(msg.params)):
                raise M.PgError("08P01", "wrong number of parameter format codes")
            params = []
            for i, raw in enumerate(msg.params):
                fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
                params.append(T.decode_param(st.param_oids[i], fmt, raw))
            if msg.portal and msg.portal in self.portals:
                raise M.PgError("42P03", f'portal "{msg.portal}" already exists')
            if len(self.portals) >= PORTALS_MAX:
                raise M.PgError("53400", f"at most {PORTALS_MAX} portals per connection")
            self.portals[msg.portal] = Portal(st, params, msg.result_formats)
            self._out.append(M.bind_complete())
            return False
        if isinstance(msg, M.Describe):
            if msg.kind == "S":
                st = self.statements.get(msg.name)
                if st is None:
                    raise M.PgError("26000", f'prepared statement "{msg.name}" does not exist')
                self._out.append(M.parameter_description([o or T.TEXT for o in st.param_oids]))
                fields = self._describe(st)
                if fields is None:
                    self._out.append(M.no_data())
                else:
                    fields = [M.Field(f.name, f.type_oid or T.TEXT, T.type_size(f.type_oid or T.TEXT))
                              for f in fields]
                    st.sent_oids = [f.type_oid for f in fields]
                    self._out.append(M.row_description(fields))
                return False
            portal = self.portals.get(msg.name)
            if portal is None:
                raise M.PgError("34000", f'portal "{msg.name}" does not exist')
            fields = self._describe(portal.statement)
            if (fields is not None and any(f.type_oid == 0 for f in fields) and isinstance(nxt, M.Execute)
                    and nxt.portal == msg.name):
                # the types of some columns show only in their values, and the client executes this
                # portal next: run that Execute (not this Describe) first and describe from its rows
                self._run_portal(portal, nxt.rows_max, describe=True)
                return True
            if fields is None:
                self._out.append(M.no_data())
            else:
                fields = self._with_formats(fields, portal)
                portal.sent_oids = [f.type_oid for f in fields]
                self._out.append(M.row_description(fields))
            return False
        if isinstance(msg, M.Execute):
            portal = self.portals.get(msg.portal)
            if portal is None:
                raise M.PgError("34000", f'portal "{msg.portal}" does not exist')
            self._run_portal(portal, msg.rows_max, describe=False)
            if not msg.portal:
                pass   # the unnamed portal lives until the next Bind or Sync
            return False
        if isinstance(msg, M.Close):
            (self.statements if msg.kind == "S" else self.portals).pop(msg.name, None)
            self._out.append(M.close_complete())
            return False
        raise AssertionError(msg)

    def _with_formats(self, fields: list[M.Field], portal: Portal) -> list[M.Field]:
        fmts = portal.result_formats
        out = []
        for i, f in enumerate(fields):
            fmt = fmts[i] if len(fmts) > 1 else (fmts[0] if fmts else 0)
            oid = f.type_oid or T.TEXT
            out.append(M.Field(f.name, oid, T.type_size(oid), f.type_modifier, fmt))
        return out

    # ---------------------------------------------------------------- describing
    def _describe(self, st: Statement) -> list[M.Field] | None:
        """Result columns without running the statement (None: no rows). OID 0 = known only from values."""
        if st.fields is not None:
            return st.fields or None
        plan = st.plan
        if plan.kind == "show":
            fields = [M.Field(plan.info["name"] or "setting", T.TEXT)]
        elif plan.kind == "catalog":
            names, oids = self.catalog.describe(plan.info["sql"])
            fields = [M.Field(_pg_column_name(n), o or 0) for n, o in zip(names, oids)]
        elif plan.kind == "sql" and plan.returns_rows:
            try:
                described = self.db.describe(plan.sql[-1], plan.param_count + len(st.lifted))
            except E.SqlError as exc:
                raise pg_error_of(exc) from None
            fields = self._fields(plan, [d[0] for d in described], [d[1] for d in described])
        else:
            fields = []
        if all(f.type_oid for f in fields):
            st.fields = fields
        return fields or None

    def _fields(self, plan: Plan, names: list[str], decltypes: list[str | None]) -> list[M.Field]:
        refs = column_refs(plan)
        fields = []
        for i, (name, decl) in enumerate(zip(names, decltypes)):
            oid = T.oid_of_decltype(decl)
            if oid is None and i < len(plan.column_oids):
                oid = plan.column_oids[i]
            if oid is None and i < len(refs) and refs[i]:
                oid = self._column_oid(plan.tables, refs[i])
            fields.append(M.Field(_pg_column_name(name), oid or 0, -1, -1, 0))
        return fields

    def _column_oid(self, tables: tuple[str, ...], column: str) -> int | None:
        found = set()
        for table in tables:
            for decl in self.catalog.column_types(self.db, table).get(column.lower(), ()):
                found.add(T.oid_of_decltype(decl))
        return found.pop() if len(found) == 1 else None

    # ---------------------------------------------------------------- running
    def _run_portal(self, portal: Portal, rows_max: int, describe: bool) -> None:
        """Runs (or continues) a portal: [RowDescription] DataRow* (CommandComplete | PortalSuspended)."""
        plan = portal.statement.plan
        if plan.kind == "copy":
            self._start_copy(plan, extended=True)
            return
        if portal.rows is None:
            self._check_failed(plan)
            columns, oids, rows, tag = self._execute(portal, plan)
            if columns is None:
                self._out.append(M.command_complete(tag) if tag else M.empty_query_response())
                portal.rows = []
                portal.tag = ""
                return
            told = portal.sent_oids or (portal.statement.sent_oids if not describe else None)
            if told is not None and len(told) == len(oids):
                oids = list(told)   # the client decodes by what a Describe told it
            # a column whose type shows only in its values: the first non-null value decides
            for i, oid in enumerate(oids):
                if not oid:
                    sample = next((r[i] for r in rows if r[i] is not None), None)
                    oids[i] = T.oid_of_value(sample) if sample is not None else T.TEXT
            portal.rows, portal.oids, portal.tag = rows, oids, tag
            if describe:
                self._out.append(M.row_description(self._with_formats(
                    [M.Field(c, o) for c, o in zip(columns, oids)], portal)))
        elif not portal.tag:
            self._out.append(M.command_complete(portal.statement.plan.tag))
            return
        fmts = portal.result_formats
        end = len(portal.rows) if rows_max <= 0 else min(len(portal.rows), portal.sent + rows_max)
        oids = portal.oids
        encoders = []
        for i, oid in enumerate(oids):
            fmt = fmts[i] if len(fmts) > 1 else (fmts[0] if fmts else 0)
            encoders.append(T.result_encoder(oid, binary=fmt == 1))
        out = self._out
        out.append(M.data_rows(portal.rows[portal.sent:end] if portal.sent or end < len(portal.rows)
                               else portal.rows, encoders))
        portal.sent = end
        if rows_max > 0 and end < len(portal.rows):
            out.append(M.portal_suspended())
            return
        out.append(M.command_complete(portal.tag))
        portal.tag = ""

    def _check_failed(self, plan: Plan) -> None:
        if self.failed and plan.kind not in ("rollback", "commit") and not (
                plan.kind == "sql" and plan.tag == "ROLLBACK"):
            raise M.PgError("25P02", "current transaction is aborted, commands ignored until end of "
                                     "transaction block")

    def _execute(self, portal: Portal, plan: Plan):
        """(columns or None, oids, rows, tag) of one statement."""
        db = self.db
        if plan.kind == "empty":
            return None, [], [], ""
        if plan.kind == "begin":
            if db.in_transaction:
                self._notice("25001", "there is already a transaction in progress")
            else:
                self._run_sql_text("BEGIN")
            return None, [], [], "BEGIN"
        if plan.kind == "commit":
            if self.failed:
                self._rollback_quietly()
                self.failed = False
                return None, [], [], "ROLLBACK"
            if not db.in_transaction:
                self._notice("25P01", "there is no transaction in progress")
            else:
                self._run_sql_text("COMMIT")
            return None, [], [], "COMMIT"
        if plan.kind == "rollback":
            self.failed = False
            if not db.in_transaction:
                self._notice("25P01", "there is no transaction in progress")
            else:
                self._rollback_quietly()
            return None, [], [], "ROLLBACK"
        if plan.kind == "set":
            name, value = plan.info["name"], plan.info["value"]
            if name == forwarding.CONSISTENCY_SETTING:
                value = self._set_consistency(value)
            if value is None:
                self.settings[name] = DEFAULT_SETTINGS.get(name, "")
            else:
                self.settings[name] = value
            if name in ("application_name", "client_encoding", "timezone", "datestyle"):
                shown = {"timezone": "TimeZone", "datestyle": "DateStyle"}.get(name, name)
                self._out.append(M.parameter_status(shown, self.settings[name]))
            return None, [], [], "SET"
        if plan.kind == "reset":
            name = plan.info["name"]
            if name in ("all", forwarding.CONSISTENCY_SETTING):
                self._set_consistency(None)
            if name == "all":
                self.settings = dict(DEFAULT_SETTINGS)
            else:
                self.settings[name] = DEFAULT_SETTINGS.get(name, "")
            return None, [], [], "RESET"
        if plan.kind == "show":
            name = plan.info["name"]
            if name == "all":
                return ["name", "setting"], [T.TEXT, T.TEXT], sorted(self.settings.items()), "SHOW"
            key = {"transaction isolation level": "transaction_isolation"}.get(name, name)
            if key not in self.settings:
                raise M.PgError("42704", f'unrecognized configuration parameter "{name}"')
            return [name.split(".")[-1]], [T.TEXT], [(self.settings[key],)], "SHOW"
        if plan.kind == "noop":
            return None, [], [], plan.tag
        if plan.kind == "discard":
            self.statements.clear()
            self.portals = {"": portal} if "" in self.portals else {}
            self.settings = dict(DEFAULT_SETTINGS)
            self._set_consistency(None)
            return None, [], [], plan.tag
        if plan.kind == "deallocate":
            name = plan.info["name"]
            if name == "all":
                self.statements.clear()
            elif self.statements.pop(name, None) is None:
                raise M.PgError("26000", f'prepared statement "{name}" does not exist')
            return None, [], [], plan.tag
        if plan.kind == "catalog":
            params = list(portal.params) + list(portal.statement.lifted)
            columns, oids, rows = self.catalog.query(plan.info["sql"], params, db, self._context())
            return [_pg_column_name(c) for c in columns], oids, rows, f"SELECT {len(rows)}"
        assert plan.kind == "sql", plan.kind
        params = list(portal.params) + list(portal.statement.lifted)
        result = None
        try:
            for sql in plan.sql:
                result = db.execute(sql, params if sql is plan.sql[-1] else None)
        except E.SqlError as exc:
            raise pg_error_of(exc) from None
        if plan.tag == "ROLLBACK":
            self.failed = False   # ROLLBACK TO SAVEPOINT ends the failed state, as in PostgreSQL
        if plan.returns_rows:
            described = portal.statement.fields
            if described is not None and len(described) == len(result.columns):
                oids = [f.type_oid for f in described]
            else:
                try:
                    decl = db.describe(plan.sql[-1], len(params)) if result.columns else []
                except E.SqlError:
                    decl = []
                decltypes = [d[1] for d in decl] if len(decl) == len(result.columns) else [None] * len(result.columns)
                oids = [f.type_oid for f in self._fields(plan, result.columns, decltypes)]
            verb = plan.tag
            count = len(result.rows)
            tag = f"INSERT 0 {count}" if verb == "INSERT" else f"{verb} {count}"
            return [_pg_column_name(c) for c in result.columns], oids, result.rows, tag
        count = max(result.rowcount, 0) if result is not None else 0
        if plan.tag == "INSERT":
            return None, [], [], f"INSERT 0 {count}"
        if plan.tag in ("UPDATE", "DELETE"):
            return None, [], [], f"{plan.tag} {count}"
        return None, [], [], plan.tag

    def _set_consistency(self, value: str | None) -> str:
        """Write forwarding's per-session switch (on a node without forwarding: accepted, no effect)."""
        try:
            return forwarding.set_consistency(self.db, value)
        except ValueError as exc:
            raise M.PgError("22023", str(exc)) from None

    def _context(self) -> SessionContext:
        return SessionContext(self.user, self.database, self.pid, self.settings, self.is_reader, self.config.port)

    # ---------------------------------------------------------------- COPY
    def _start_copy(self, plan: Plan, extended: bool) -> None:
        info = plan.info
        self._check_failed(plan)
        if info["direction"] == "to":
            self._copy_out(info)
            return
        table = info["table"]
        if not table:
            raise M.PgError("42601", "COPY FROM needs a table")
        types = self.catalog.column_types(self.db, table.strip('"'))
        if not types:
            raise M.PgError("42P01", f'relation "{table}" does not exist')
        ordered = self.catalog.column_order(self.db, table.strip('"'))
        columns = [c.strip('"') for c in info["columns"]] or ordered
        unknown = [c for c in columns if c.lower() not in types]
        if unknown:
            raise M.PgError("42703", f'column "{unknown[0]}" of relation "{table}" does not exist')
        oids = [T.oid_of_decltype(types[c.lower()][0]) or T.TEXT for c in columns]
        implicit = not self.db.in_transaction
        if implicit:
            self._run_sql_text("BEGIN")
        self.copy = CopyIn(table, columns, oids, info, implicit_txn=implicit, extended=extended)
        self.state = "copy_in"
        self._out.append(M.copy_in_response(len(columns)))

    def _copy_message(self, msg) -> None:
        copy = self.copy
        assert copy is not None
        try:
            if isinstance(msg, M.CopyData):
                copy.buffer += msg.data
                self._copy_parse(final=False)
                return
            if isinstance(msg, (M.Flush, M.Sync)):
                return   # allowed (and ignored) during COPY IN
            if isinstance(msg, M.CopyFail):
                raise M.PgError("57014", f"COPY from stdin failed: {msg.message}")
            if not isinstance(msg, M.CopyDone):
                raise M.PgError("08P01", f"unexpected message type {type(msg).__name__} during COPY from stdin")
            self._copy_parse(final=True)
            self._copy_flush()
            if copy.implicit_txn:
                self._run_sql_text("COMMIT")
            self.state, self.copy = "ready", None
            self._out.append(M.command_complete(f"COPY {copy.count}"))
            if not copy.extended:
                self._ready()
        except M.PgError as err:
            self.state, self.copy = "ready", None
            if copy.implicit_txn:
                self._rollback_quietly()
            self._error(err)
            if copy.extended:
                self.skip_to_sync = True
            else:
                self._ready()

    def _copy_parse(self, final: bool) -> None:
        copy = self.copy
        buf = copy.buffer
        end = len(buf) if final else buf.rfind(b"\n") + 1
        if end <= 0:
            return
        chunk = bytes(buf[:end])
        del buf[:end]
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise M.PgError("22021", "invalid byte sequence for encoding UTF8 in COPY data") from None
        info = copy.info
        if info["format"] == "csv":
            records = list(csv.reader(io.StringIO(text), delimiter=info["delimiter"]))
        else:
            records = []
            for line in text.split("\n"):
                if line.endswith("\r"):
                    line = line[:-1]
                if line == "\\.":
                    break
                if line == "" and not copy.columns:
                    continue
                if line == "":
                    continue
                records.append([None if f == info["null"] else _copy_unescape(f)
                                for f in line.split(info["delimiter"])])
        for record in records:
            if info["header"] and not copy.header_skipped:
                copy.header_skipped = True
                continue
            if info["format"] == "csv":
                record = [None if f == info["null"] else f for f in record]
            if len(record) != len(copy.columns):
                raise M.PgError("22P04", f"COPY row has {len(record)} columns, the table {len(copy.columns)}")
            copy.rows.append([T.decode_param(oid, 0, None if v is None else v.encode("utf-8"))
                              for oid, v in zip(copy.oids, record)])
            if len(copy.rows) >= COPY_BATCH_ROWS:
                self._copy_flush()

    def _copy_flush(self) -> None:
        copy = self.copy
        if not copy.rows:
            return
        cols = ", ".join(f'"{c}"' for c in copy.columns)
        sql = f"INSERT INTO {copy.table} ({cols}) VALUES ({', '.join('?' * len(copy.columns))})"
        try:
            self.db.execute_many(sql, copy.rows)
        except E.SqlError as exc:
            raise pg_error_of(exc) from None
        copy.count += len(copy.rows)
        copy.rows = []

    def _copy_out(self, info: dict) -> None:
        if info.get("query"):
            plan, lifted = translate(info["query"])
            if plan.kind not in ("sql", "catalog") or not plan.returns_rows:
                raise M.PgError("0A000", "COPY (query) TO needs a SELECT")
        else:
            cols = ", ".join(info["columns"]) or "*"
            plan, lifted = translate(f"SELECT {cols} FROM {info['table']}")
        portal = Portal(Statement("", plan, lifted, []), [], ())
        columns, oids, rows, _tag = self._execute(portal, plan)
        self._out.append(M.copy_out_response(len(columns)))
        delim = info["delimiter"]
        out = self._out
        if info["header"]:
            out.append(M.copy_data((delim.join(columns) + "\n").encode()))
        for row in rows:
            fields = []
            for oid, v in zip(oids, row):
                raw = T.encode_text(oid or T.oid_of_value(v), v)
                if raw is None:
                    fields.append(info["null"])
                elif info["format"] == "csv":
                    s = raw.decode("utf-8")
                    fields.append('"' + s.replace('"', '""') + '"' if re.search(r'[",\n\r]', s) or s == ""
                                  else s)
                else:
                    fields.append(_copy_escape(raw.decode("utf-8")))
            out.append(M.copy_data((delim.join(fields) + "\n").encode("utf-8")))
        out.append(M.copy_done())
        out.append(M.command_complete(f"COPY {len(rows)}"))


_UNESCAPE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _copy_unescape(field_text: str) -> str:
    if "\\" not in field_text:
        return field_text

    def sub(m: re.Match) -> str:
        s = m.group(1)
        if s in _UNESCAPE:
            return _UNESCAPE[s]
        if s[0] == "x":
            return chr(int(s[1:], 16))
        if s[0].isdigit():
            return chr(int(s, 8))
        return s

    return re.sub(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", sub, field_text)


def _copy_escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


def _pg_column_name(name: str) -> str:
    """SQLite names an expression column by its text; PostgreSQL calls it ?column? or the function."""
    if name.lower() in ("true", "false"):
        return "bool"
    if re.fullmatch(r"[A-Za-z_][\w$]*", name):
        return name
    m = re.fullmatch(r"([A-Za-z_]\w*)\s*\(.*\)", name, re.S)
    if m:
        return m.group(1).lower()
    return "?column?"


def cancel_running(session: PgSession) -> None:
    """CancelRequest: interrupts the statement the session runs now (if any)."""
    db = session.db
    conn = db.running_conn if db is not None else None
    if conn is not None:
        conn.interrupt()


