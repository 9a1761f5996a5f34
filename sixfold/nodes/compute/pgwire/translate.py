"""PostgreSQL SQL -> SQLite SQL, cached per statement shape. Pure (no I/O).

`translate(sql)` returns a `Plan`: what kind of statement it is (ordinary SQL
for SQLite, a transaction verb, SET/SHOW, COPY, a catalog query, a no-op) and,
for SQL, the SQLite text with `?N` placeholders. Parsing with sqlglot costs
~0.2 ms, so plans are cached: by exact text for statements with parameters
(extended protocol), and by *shape* for simple-query DML, whose literals are
lifted into parameters first (`UPDATE t SET a = a + 5 WHERE id = 7` and
`... + 9 WHERE id = 3` share a plan). Lifting is conservative: never in DDL,
never next to a `::` cast or a typed literal, never in ORDER/GROUP BY.

What SQLite cannot do is refused with SQLSTATE 0A000 (feature_not_supported),
never approximated into a different answer.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError, UnsupportedError

from sixfold.nodes.compute.pgwire import pgtypes as T
from sixfold.nodes.compute.pgwire.messages import PgError

CACHE_ENTRIES_MAX = 4096

# ------------------------------------------------------------------ splitting

_TOKEN = re.compile(r"""
    '(?:[^']|'')*'            # string
  | "(?:[^"]|"")*"            # quoted identifier
  | \$([A-Za-z_]\w*)?\$       # dollar-quote opener (closed below)
  | --[^\n]*                  # line comment
  | /\*.*?\*/                 # block comment
  | ;
""", re.X | re.S)


def split_statements(sql: str) -> list[str]:
    """Splits on top-level semicolons (not inside strings, identifiers, comments or $$ quotes)."""
    out, start, pos = [], 0, 0
    while True:
        m = _TOKEN.search(sql, pos)
        if m is None:
            break
        tok = m.group(0)
        if tok == ";":
            out.append(sql[start:m.start()])
            start = pos = m.end()
            continue
        if tok.startswith("$"):
            end = sql.find(tok, m.end())
            pos = len(sql) if end < 0 else end + len(tok)
            continue
        pos = m.end()
    out.append(sql[start:])
    return [s for s in (part.strip() for part in out) if s and not _only_comments(s)]


def _only_comments(s: str) -> bool:
    return not re.sub(r"--[^\n]*|/\*.*?\*/", "", s, flags=re.S).strip()


# ------------------------------------------------------------------ plans

@dataclass(frozen=True, slots=True)
class Plan:
    kind: str                 # sql | begin | commit | rollback | set | show | reset | copy | noop | catalog |
                              # discard | deallocate | empty
    tag: str = ""             # command tag verb: SELECT, INSERT, ..., or the no-op's tag
    sql: tuple[str, ...] = ()  # SQLite statements (kind sql: all run, the last one's rows are returned)
    param_count: int = 0
    returns_rows: bool = False
    writes: bool = False
    column_oids: tuple[int | None, ...] = ()   # static types of the result columns (None: unknown)
    tables: tuple[str, ...] = ()               # tables the statement reads (for column types)
    lifted: tuple = ()        # literals lifted out of a simple query, in ?N order after the client's
    info: dict = field(default_factory=dict)   # set/show/copy details
    pg_ast: object = None


def unsupported(what: str) -> PgError:
    return PgError("0A000", f"{what} is not supported by Sixfold", hint="see the README's PostgreSQL section")


_LEAD = re.compile(r"^\s*(\w+)(?:\s+(\w+))?(?:\s+(\w+))?", re.S)
_CATALOG_HINT = re.compile(
    r"\b(pg_catalog|information_schema)\s*\.|\bpg_(class|namespace|attribute|type|index|database|roles|"
    r"user|tables|indexes|settings|proc|constraint|am|description|stat_\w+|get_\w+|backend_pid|"
    r"encoding_to_char|table_is_visible|size_pretty|total_relation_size|relation_size|is_in_recovery)\b|"
    r"\b(version|current_database|current_schema|current_schemas|current_user|session_user|current_setting|"
    r"set_config|has_table_privilege|has_schema_privilege|obj_description|col_description|"
    r"format_type|inet_server_port|inet_server_addr)\b", re.I)

_NOOP_VERBS = {"vacuum": "VACUUM", "analyze": "ANALYZE", "analyse": "ANALYZE", "checkpoint": "CHECKPOINT",
               "lock": "LOCK TABLE", "cluster": "CLUSTER", "reindex": "REINDEX", "comment": "COMMENT"}
_UNSUPPORTED_VERBS = {"listen", "notify", "unlisten", "prepare", "execute", "grant", "revoke", "fetch",
                      "declare", "move", "security", "import", "load", "refresh", "call", "do", "copy_binary"}
_DML_VERBS = {"select": "SELECT", "insert": "INSERT", "update": "UPDATE", "delete": "DELETE", "with": "SELECT",
              "values": "SELECT", "table": "SELECT"}

_cache: OrderedDict[str, Plan] = OrderedDict()
_cache_lock = threading.Lock()
stats = {"hits": 0, "misses": 0}


def translate(sql: str, lift_literals: bool = False) -> tuple[Plan, tuple]:
    """(plan, lifted literal values). With lift_literals (simple query, no client parameters),
    DML literals become parameters so that statements of one shape share a plan."""
    text = sql.strip()
    lifted: tuple = ()
    key = text
    if lift_literals:
        shaped = _lift(text)
        if shaped is not None:
            key, lifted = shaped
    with _cache_lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            stats["hits"] += 1
            return plan, lifted
    plan = _plan(key)
    with _cache_lock:
        stats["misses"] += 1
        _cache[key] = plan
        if len(_cache) > CACHE_ENTRIES_MAX:
            _cache.popitem(last=False)
    return plan, lifted


# literals: a string (not E'', not typed like DATE '...'), or a number; not before '::'
_LITERAL = re.compile(r"""
    (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*")
  | (?P<cmt>--[^\n]*|/\*.*?\*/)
  | (?P<param>\$\d+)
  | (?P<word>[A-Za-z_][\w$]*)
  | (?P<num>(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.]))
""", re.X | re.S)
_TYPED_PREFIX = {"date", "time", "timestamp", "timestamptz", "interval", "e", "b", "x", "u&", "n", "json",
                 "jsonb", "uuid", "numeric", "bytea", "inet", "point", "array", "boolean", "int", "integer",
                 "bigint", "text", "varchar", "zone"}


def _lift(text: str):
    """(shape, literals) for DML with literals, or None when the statement is not liftable."""
    m = _LEAD.match(text)
    if not m or m.group(1).lower() not in ("select", "insert", "update", "delete"):
        return None
    low = text.lower()
    if "order by" in low or "group by" in low or "$" in text or "::" in text or ";" in text:
        return None
    parts: list[str] = []
    values: list = []
    pos = 0
    prev_word = ""
    for tok in _LITERAL.finditer(text):
        kind = tok.lastgroup
        if kind == "word":
            prev_word = tok.group().lower()
            continue
        if kind in ("qid", "cmt"):
            prev_word = ""
            continue
        if kind in ("str", "num"):
            if prev_word in _TYPED_PREFIX:
                prev_word = ""
                continue
            parts.append(text[pos:tok.start()])
            parts.append("$__")
            pos = tok.end()
            raw = tok.group()
            if kind == "str":
                values.append(raw[1:-1].replace("''", "'"))
            elif re.fullmatch(r"\d+", raw):
                values.append(int(raw))
            else:
                values.append(float(raw))
        prev_word = ""
    if not values:
        return None
    parts.append(text[pos:])
    shape = "".join(parts)
    # number the lifted literals as ordinary parameters $1..$n
    counter = iter(range(1, len(values) + 1))
    shape = re.sub(r"\$__", lambda _: f"${next(counter)}", shape)
    return shape, tuple(values)


def _plan(text: str) -> Plan:
    if not text or _only_comments(text):
        return Plan("empty")
    m = _LEAD.match(text)
    if not m:
        raise PgError("42601", f"syntax error at or near {text[:20]!r}")
    w1, w2, w3 = (g.lower() if g else "" for g in m.groups())
    if w1 in ("begin", "start"):
        if w1 == "start" and w2 != "transaction":
            raise PgError("42601", "syntax error: START must be followed by TRANSACTION")
        return Plan("begin", "BEGIN", info={"read_only": bool(re.search(r"\bread\s+only\b", text, re.I))})
    if w1 in ("commit", "end"):
        if w2 == "prepared":
            raise unsupported("COMMIT PREPARED (two-phase commit)")
        return Plan("commit", "COMMIT")
    if w1 in ("rollback", "abort"):
        if w2 == "prepared":
            raise unsupported("ROLLBACK PREPARED (two-phase commit)")
        if w2 == "to" or (w2 in ("work", "transaction") and w3 == "to"):
            name = re.sub(r"^\s*rollback\s+(work\s+|transaction\s+)?to\s+(savepoint\s+)?", "", text, flags=re.I)
            return Plan("sql", "ROLLBACK", sql=(f"ROLLBACK TO SAVEPOINT {_ident(name)}",))
        return Plan("rollback", "ROLLBACK")
    if w1 == "savepoint":
        return Plan("sql", "SAVEPOINT", sql=(f"SAVEPOINT {_ident(text.split(None, 1)[1])}",))
    if w1 == "release":
        name = re.sub(r"^\s*release\s+(savepoint\s+)?", "", text, flags=re.I)
        return Plan("sql", "RELEASE", sql=(f"RELEASE SAVEPOINT {_ident(name)}",))
    if w1 == "set":
        return _plan_set(text)
    if w1 == "reset":
        name = text.split(None, 1)[1].strip().lower() if len(text.split(None, 1)) > 1 else ""
        return Plan("reset", "RESET", info={"name": name})
    if w1 == "show":
        name = text.split(None, 1)[1].strip().strip(";").lower() if len(text.split(None, 1)) > 1 else ""
        return Plan("show", "SHOW", returns_rows=True, column_oids=(T.TEXT,), info={"name": name})
    if w1 == "copy":
        return _plan_copy(text)
    if w1 in _NOOP_VERBS:
        return Plan("noop", _NOOP_VERBS[w1])
    if w1 == "discard":
        return Plan("discard", f"DISCARD {w2.upper() or 'ALL'}")
    if w1 == "deallocate":
        name = w3 if w2 == "prepare" else w2
        return Plan("deallocate", "DEALLOCATE ALL" if name == "all" else "DEALLOCATE", info={"name": name})
    if w1 == "truncate":
        return _plan_truncate(text)
    if w1 in _UNSUPPORTED_VERBS:
        raise unsupported(w1.upper())
    if w1 == "create" and (w2 in ("extension", "sequence", "schema", "database", "role", "user", "function",
                                  "trigger", "type", "domain", "materialized", "publication", "subscription",
                                  "rule", "policy", "tablespace", "aggregate", "operator", "procedure",
                                  "unlogged", "or")):
        raise unsupported(f"CREATE {w2.upper()}")
    if w1 == "alter" and w2 != "table":
        raise unsupported(f"ALTER {w2.upper()}")
    if w1 in _DML_VERBS and _CATALOG_HINT.search(text):
        return _plan_catalog(text)
    return _plan_sql(text, w1)


def _ident(name: str) -> str:
    name = name.strip().strip(";").strip()
    if not re.fullmatch(r'[A-Za-z_][\w$]*|"(?:[^"]|"")+"', name):
        raise PgError("42601", f"syntax error at or near {name[:30]!r}")
    return name


_SET = re.compile(r"^\s*set\s+(?:(session|local)\s+)?(.*)$", re.I | re.S)


def _plan_set(text: str) -> Plan:
    m = _SET.match(text)
    assert m
    rest = m.group(2).strip().rstrip(";")
    low = rest.lower()
    if low.startswith("transaction") or low.startswith("session characteristics"):
        return Plan("noop", "SET")   # isolation levels: the single writer is serializable already
    if low.startswith("time zone"):
        return Plan("set", "SET", info={"name": "timezone", "value": _setting_value(rest[len("time zone"):])})
    if low.startswith("names"):
        return Plan("set", "SET", info={"name": "client_encoding", "value": _setting_value(rest[5:])})
    mm = re.match(r"([\w.]+)\s*(?:=|\bto\b)\s*(.*)$", rest, re.I | re.S)
    if not mm:
        raise PgError("42601", f"syntax error in SET: {rest[:40]!r}")
    return Plan("set", "SET", info={"name": mm.group(1).lower(), "value": _setting_value(mm.group(2))})


def _setting_value(raw: str) -> str | None:
    v = raw.strip()
    if v.lower() in ("default", "local"):
        return None
    items = [i.strip() for i in re.findall(r"'(?:[^']|'')*'|[^,]+", v)]
    return ", ".join(i[1:-1].replace("''", "'") if i.startswith("'") else i for i in items)


_COPY = re.compile(
    r"^\s*copy\s+(?P<target>\((?P<query>.*)\)|(?P<table>[\w.\"]+)\s*(?:\((?P<cols>[^)]*)\))?)\s+"
    r"(?P<dir>from|to)\s+(?P<where>stdin|stdout)\b(?P<opts>.*)$", re.I | re.S)


def _plan_copy(text: str) -> Plan:
    m = _COPY.match(text)
    if not m:
        raise unsupported("COPY to or from a file or program (only COPY ... FROM STDIN / TO STDOUT)")
    direction = m.group("dir").lower()
    if (direction, m.group("where").lower()) not in (("from", "stdin"), ("to", "stdout")):
        raise PgError("42601", "COPY FROM goes with STDIN and COPY TO with STDOUT")
    opts = m.group("opts").lower()
    fmt = "text"
    fm = re.search(r"\bformat\s+(\w+)|\b(csv|binary)\b", opts)
    if fm:
        fmt = (fm.group(1) or fm.group(2)).lower()
    if fmt not in ("text", "csv"):
        raise unsupported(f"COPY FORMAT {fmt.upper()}")
    delim = re.search(r"\bdelimiter\s+(?:as\s+)?'((?:[^']|'')*)'", opts)
    null = re.search(r"\bnull\s+(?:as\s+)?'((?:[^']|'')*)'", opts)
    header = bool(re.search(r"\bheader\b(?!\s+(false|off|0)\b)", opts))
    table = m.group("table")
    if table and not re.fullmatch(r'([A-Za-z_][\w$]*|"(?:[^"]|"")+")(\.([A-Za-z_][\w$]*|"(?:[^"]|"")+"))?', table):
        raise PgError("42601", f"syntax error at or near {table[:30]!r}")
    if table and table.lower().startswith("public."):
        table = table[7:]
    cols = [_ident(c) for c in m.group("cols").split(",")] if m.group("cols") else []
    info = {"direction": direction, "table": table, "columns": cols, "format": fmt,
            "delimiter": delim.group(1).replace("''", "'") if delim else ("," if fmt == "csv" else "\t"),
            "null": null.group(1).replace("''", "'") if null else ("" if fmt == "csv" else "\\N"),
            "header": header}
    if m.group("query"):
        info["query"] = m.group("query")
    return Plan("copy", "COPY", info=info)


def _plan_truncate(text: str) -> Plan:
    rest = re.sub(r"^\s*truncate\s+(table\s+)?(only\s+)?", "", text, flags=re.I)
    rest = re.sub(r"\b(restart|continue)\s+identity\b|\bcascade\b|\brestrict\b", "", rest, flags=re.I)
    tables = [_ident(t) for t in rest.strip().rstrip(";").split(",")]
    return Plan("sql", "TRUNCATE TABLE", sql=tuple(f"DELETE FROM {t}" for t in tables), writes=True)


def _plan_catalog(text: str) -> Plan:
    return Plan("catalog", "SELECT", returns_rows=True, info={"sql": text})


# ------------------------------------------------------------------ ordinary SQL via sqlglot

_CAST_TO_SQLITE = {
    # PG type (sqlglot DType name) -> SQLite cast type; types missing here keep their text
    "INT": "INTEGER", "BIGINT": "INTEGER", "SMALLINT": "INTEGER", "TINYINT": "INTEGER", "SERIAL": "INTEGER",
    "BIGSERIAL": "INTEGER", "DOUBLE": "REAL", "FLOAT": "REAL", "DECIMAL": "NUMERIC", "BIGDECIMAL": "NUMERIC",
    "TEXT": "TEXT", "VARCHAR": "TEXT", "CHAR": "TEXT", "NCHAR": "TEXT", "NVARCHAR": "TEXT", "NAME": "TEXT",
    "VARBINARY": "BLOB", "BINARY": "BLOB", "BLOB": "BLOB", "UUID": "TEXT", "JSON": "TEXT", "JSONB": "TEXT",
}
_TEXTUAL_TIME = {"DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIME", "DATETIME", "TIMESTAMPLTZ"}


def _column_type(kind: exp.DataType) -> str:
    """The declared type SQLite keeps for a PG column type (its name, so that its OID survives)."""
    name = kind.this.name if isinstance(kind.this, exp.DataType.Type) else str(kind.this)
    pg = kind.sql("postgres")
    if name in ("SERIAL", "BIGSERIAL", "SMALLSERIAL"):
        return "INTEGER"
    if name in ("INT", "INTEGER"):
        return "INTEGER"
    if kind.args.get("nested") or kind.this == exp.DataType.Type.ARRAY or pg.endswith("]"):
        raise unsupported(f"array column type {pg}")
    if name == "USERDEFINED":
        raise unsupported(f"column type {pg}")
    if name in ("TIMESTAMPTZ", "TIMESTAMPLTZ"):
        return "TIMESTAMPTZ"
    if name == "TIMESTAMP":
        return "TIMESTAMP"
    if name == "DOUBLE":
        return "DOUBLE PRECISION"
    return pg


def _fix_create_table(tree: exp.Create) -> None:
    schema = tree.this
    if not isinstance(schema, exp.Schema):
        return
    pk_cols = set()
    for c in schema.expressions:
        if isinstance(c, exp.PrimaryKey):
            pk_cols |= {e.name for e in c.expressions}
    for cd in schema.find_all(exp.ColumnDef):
        kind = cd.args.get("kind")
        if kind is None:
            continue
        is_serial = isinstance(kind, exp.DataType) and kind.this in (
            exp.DataType.Type.SERIAL, exp.DataType.Type.BIGSERIAL, exp.DataType.Type.SMALLSERIAL)
        inline_pk = any(isinstance(k.args.get("kind"), exp.PrimaryKeyColumnConstraint)
                        for k in cd.args.get("constraints") or [])
        if is_serial and not (inline_pk or cd.name in pk_cols and len(pk_cols) == 1):
            raise unsupported(f"a serial column that is not the table's single-column primary key ({cd.name})")
        cd.set("kind", exp.Var(this=_column_type(kind)))


def _fix(tree: exp.Expression) -> exp.Expression:
    if isinstance(tree, exp.Create) and tree.kind == "TABLE":
        _fix_create_table(tree)
    for node in list(tree.walk()):
        if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal):
            node.replace(exp.Var(this=f"?{node.this.name}"))
        elif isinstance(node, exp.ByteString):   # E'...': sqlglot has already undone the escapes
            node.replace(exp.Literal.string(node.this))
        elif isinstance(node, exp.Cast):
            to = node.args.get("to")
            tname = to.this.name if isinstance(to, exp.DataType) and isinstance(to.this, exp.DataType.Type) else ""
            if tname in ("VARBINARY", "BINARY", "BLOB"):
                node.replace(exp.Anonymous(this="pg_bytea", expressions=[node.this]))
            elif tname == "BOOLEAN":
                inner = node.this
                node.replace(exp.Anonymous(this="pg_bool", expressions=[inner]))
            elif tname in _TEXTUAL_TIME:
                node.replace(exp.Anonymous(this="pg_" + ("date" if tname == "DATE" else "ts"), expressions=[node.this]))
            elif tname in _CAST_TO_SQLITE:
                node.set("to", exp.DataType.build(_CAST_TO_SQLITE[tname]))
            else:
                raise unsupported(f"casting to {to.sql('postgres') if to else '?'}")
        elif isinstance(node, exp.Div):
            # SQLite answers NULL for x / 0 where PostgreSQL raises division_by_zero
            node.replace(exp.Anonymous(this="pg_div", expressions=[node.this, node.expression]))
        elif isinstance(node, exp.Ordered) and isinstance(tree, exp.Create):
            node.set("nulls_first", not node.args.get("desc"))   # SQLite's default; an index has no NULLS
        elif isinstance(node, exp.OnConflict):
            keys = node.args.get("conflict_keys") or []
            node.set("conflict_keys", [k.this if isinstance(k, exp.Ordered) else k for k in keys])
        elif isinstance(node, (exp.Array, exp.Explode)) or (isinstance(node, exp.DataType) and node.args.get("nested")):
            raise unsupported("arrays")
    return tree


_WRITE_TREES = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.Merge)


_PARAM_OR_STRING = re.compile(r"'(?:[^']|'')*'|\$\d+")


def pad_parameters(text: str) -> str:
    """`$1,$2` -> ` $1 , $2 `: sqlglot's tokenizer reads `$1,$` as the start of a dollar-quoted string."""
    return _PARAM_OR_STRING.sub(lambda m: m.group() if m.group()[0] == "'" else f" {m.group()} ", text)


def _plan_sql(text: str, verb: str) -> Plan:
    alter_pk = re.match(r"^\s*alter\s+table\s+(?:only\s+)?([\w.\"]+)\s+add\s+(?:constraint\s+(\S+)\s+)?"
                        r"primary\s+key\s*\(([^)]*)\)\s*;?\s*$", text, re.I)
    if alter_pk:
        # SQLite cannot add a primary key to a table; a unique index named like PG's is equivalent
        # for every statement (the columns are NOT NULL in the cases that matter, e.g. pgbench)
        table = _ident(alter_pk.group(1))
        name = alter_pk.group(2) or f"{table.strip(chr(34))}_pkey"
        cols = ", ".join(_ident(c) for c in alter_pk.group(3).split(","))
        return Plan("sql", "ALTER TABLE", sql=(f'CREATE UNIQUE INDEX "{name}" ON {table} ({cols})',), writes=True)
    try:
        trees = sqlglot.parse(pad_parameters(text), read="postgres")
    except (ParseError, TokenError) as exc:
        raise PgError("42601", f"syntax error: {str(exc).splitlines()[0][:200]}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise PgError("42601", "one statement expected")
    tree = trees[0]
    if isinstance(tree, exp.Command):
        raise unsupported(f"the statement {text.split(None, 1)[0].upper()}")
    statements: list[exp.Expression] = [tree]
    if isinstance(tree, exp.Drop) and len(tree.args.get("tables") or []) > 1:
        # SQLite drops one table per statement
        statements = []
        for t in tree.args["tables"]:
            one = tree.copy()
            one.set("tables", [t.copy()])
            statements.append(one)
    if isinstance(tree, exp.Drop) and tree.args.get("cascade"):
        raise unsupported("DROP ... CASCADE")
    if isinstance(tree, exp.Alter):
        for action in tree.args.get("actions") or []:
            if not isinstance(action, (exp.ColumnDef, exp.RenameColumn, exp.AlterRename, exp.Drop)):
                raise unsupported(f"ALTER TABLE {action.sql('postgres')[:60]}")
    pg_ast = tree.copy()
    try:
        out = tuple(_fix(s).sql(dialect="sqlite") for s in statements)
    except UnsupportedError as exc:
        raise unsupported(str(exc)) from None
    params = {int(p.this.name) for p in pg_ast.find_all(exp.Parameter) if isinstance(p.this, exp.Literal)
              and p.this.name.isdigit()}
    returns = isinstance(tree, (exp.Query, exp.Values)) or bool(tree.args.get("returning"))
    tag = _DML_VERBS.get(verb) or _ddl_tag(tree, text)
    if isinstance(tree, exp.Insert):
        tag = "INSERT"
    return Plan("sql", tag, sql=out, param_count=max(params, default=0), returns_rows=returns,
                writes=isinstance(tree, _WRITE_TREES), column_oids=static_types(tree),
                tables=tuple(sorted({t.name for t in pg_ast.find_all(exp.Table) if t.name})), pg_ast=pg_ast)


def _ddl_tag(tree: exp.Expression, text: str) -> str:
    words = text.split()
    if isinstance(tree, exp.Create):
        return f"CREATE {(tree.kind or words[1]).upper()}"
    if isinstance(tree, exp.Drop):
        return f"DROP {(tree.kind or words[1]).upper()}"
    if isinstance(tree, exp.Alter):
        return f"ALTER {(tree.kind or 'TABLE').upper()}"
    return words[0].upper()


# ------------------------------------------------------------------ static result types

_FUNC_TYPES: dict[type, int] = {
    exp.Count: T.INT8, exp.CurrentTimestamp: T.TIMESTAMPTZ, exp.CurrentDate: T.DATE, exp.CurrentTime: T.TIME,
    exp.Lower: T.TEXT, exp.Upper: T.TEXT, exp.Concat: T.TEXT, exp.DPipe: T.TEXT, exp.Substring: T.TEXT,
    exp.Trim: T.TEXT, exp.Length: T.INT4, exp.Rand: T.FLOAT8, exp.Avg: T.NUMERIC, exp.Sum: T.NUMERIC,
    exp.GroupConcat: T.TEXT, exp.Replace: T.TEXT, exp.Exists: T.BOOL, exp.Is: T.BOOL, exp.In: T.BOOL,
    exp.Like: T.BOOL, exp.ILike: T.BOOL, exp.Between: T.BOOL, exp.Not: T.BOOL, exp.And: T.BOOL, exp.Or: T.BOOL,
    exp.EQ: T.BOOL, exp.NEQ: T.BOOL, exp.GT: T.BOOL, exp.GTE: T.BOOL, exp.LT: T.BOOL, exp.LTE: T.BOOL,
    exp.Boolean: T.BOOL, exp.StrPosition: T.INT4, exp.Div: T.NUMERIC,
}


_NAMED_FUNC_TYPES = {"pg_is_in_recovery": T.BOOL, "pg_backend_pid": T.INT4, "has_table_privilege": T.BOOL,
                     "has_schema_privilege": T.BOOL, "has_database_privilege": T.BOOL, "pg_has_role": T.BOOL,
                     "pg_table_is_visible": T.BOOL, "pg_relation_size": T.INT8, "pg_total_relation_size": T.INT8,
                     "inet_server_port": T.INT4, "current_setting": T.TEXT, "set_config": T.TEXT, "md5": T.TEXT,
                     "gen_random_uuid": T.UUID, "format_type": T.TEXT, "to_regtype": T.OID}


def _expr_type(e: exp.Expression) -> int | None:
    if isinstance(e, exp.Alias):
        return _expr_type(e.this)
    if isinstance(e, exp.Anonymous):
        return _NAMED_FUNC_TYPES.get(e.name.lower())
    for cls, oid in _FUNC_TYPES.items():
        if isinstance(e, cls):
            return oid
    if isinstance(e, exp.Cast):
        to = e.args.get("to")
        return T.oid_of_decltype(to.sql("postgres")) if to is not None else None
    if isinstance(e, exp.Literal):
        if e.is_string:
            return T.TEXT
        return T.INT4 if re.fullmatch(r"\d+", e.name) and int(e.name) < 2**31 else (
            T.INT8 if re.fullmatch(r"\d+", e.name) else T.NUMERIC)
    if isinstance(e, exp.Neg):
        return _expr_type(e.this)
    if isinstance(e, (exp.Max, exp.Min, exp.Coalesce, exp.Paren, exp.Case, exp.If, exp.Abs, exp.Round)):
        for arg in [e.this, *e.expressions] if not isinstance(e, exp.Case) else [i.args.get("true") for i in e.args.get("ifs") or []]:
            if isinstance(arg, exp.Expression):
                t = _expr_type(arg)
                if t is not None:
                    return t
        return None
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul, exp.Mod)):
        a, b = _expr_type(e.this), _expr_type(e.expression)
        if a is None or b is None:
            return a or b if (a or b) in (T.NUMERIC, T.FLOAT8) else None
        if T.NUMERIC in (a, b) or T.FLOAT8 in (a, b):
            return T.FLOAT8 if T.FLOAT8 in (a, b) else T.NUMERIC
        return T.INT8 if T.INT8 in (a, b) else a
    return None


def static_types(tree: exp.Expression) -> tuple[int | None, ...]:
    if isinstance(tree, exp.Select):
        if any(isinstance(e, exp.Star) or isinstance(e, exp.Column) and isinstance(e.this, exp.Star)
               for e in tree.expressions):
            return ()
        return tuple(_expr_type(e) for e in tree.expressions)
    returning = tree.args.get("returning")
    if returning is not None:
        if any(isinstance(e, exp.Star) for e in returning.expressions):
            return ()
        return tuple(_expr_type(e) for e in returning.expressions)
    return ()


def column_refs(plan: Plan) -> list[str | None]:
    """For each result column that is an aggregate or expression over exactly one column: its name."""
    tree = plan.pg_ast
    exprs = []
    if isinstance(tree, exp.Select):
        exprs = tree.expressions
    elif tree is not None and tree.args.get("returning") is not None:
        exprs = tree.args["returning"].expressions
    out = []
    for e in exprs:
        inner = e.this if isinstance(e, exp.Alias) else e
        cols = list(inner.find_all(exp.Column)) if isinstance(inner, (exp.Max, exp.Min, exp.Coalesce, exp.Add,
                                                                      exp.Sub, exp.Mul, exp.Neg, exp.Abs,
                                                                      exp.Paren, exp.Sum)) else []
        out.append(cols[0].name if len(cols) == 1 else None)
    return out
