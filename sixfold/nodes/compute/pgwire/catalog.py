"""Enough of `pg_catalog` and `information_schema` for psql's \\d family and drivers.

The catalog is a small in-memory SQLite database whose tables have PostgreSQL's
names and columns (pg_class, pg_attribute, pg_type, ...), filled from the real
schema (sqlite_master and the table_info pragmas of a snapshot) and rebuilt when
SQLite's schema version changes. A catalog query is translated like any other
(PostgreSQL -> SQLite with sqlglot) and runs there, with PostgreSQL's catalog
functions (format_type, pg_get_indexdef, regclass casts, ...) as Python
functions. Catalog tables that are always empty here (policies, publications,
inheritance, extended statistics) answer with no rows when their query uses
PostgreSQL features SQLite lacks.
"""

from __future__ import annotations

import functools
import re
import threading
import zlib
from dataclasses import dataclass

import apsw
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError, UnsupportedError

from sixfold.nodes.compute.engine import describe_on
from sixfold.nodes.compute.pgwire import pgtypes as T
from sixfold.nodes.compute.pgwire.messages import PgError
from sixfold.nodes.compute.pgwire.translate import pad_parameters, static_types

SERVER_VERSION = "15.0"
VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} (Sixfold: SQLite on a six-way quorum volume)"
PUBLIC_NS, CATALOG_NS, INFO_NS = 2200, 11, 13000
OWNER_OID = 10
HEAP_AM, BTREE_AM = 2, 403

_DDL = """
CREATE TABLE pg_namespace(oid OID, nspname NAME, nspowner OID, nspacl TEXT);
CREATE TABLE pg_class(oid OID, relname NAME, relnamespace OID, relkind "char", relowner OID, relam OID,
  reltuples REAL, relpages INT4, relhasindex BOOL, relchecks INT2, relhasrules BOOL, relhastriggers BOOL,
  relrowsecurity BOOL, relforcerowsecurity BOOL, relispartition BOOL, reltablespace OID, reloftype OID,
  relpersistence "char", relreplident "char", reltoastrelid OID, reloptions TEXT, relacl TEXT,
  relpartbound TEXT, relnatts INT2, relisshared BOOL, reltype OID);
CREATE TABLE pg_attribute(attrelid OID, attname NAME, atttypid OID, atttypmod INT4, attnum INT2, attnotnull BOOL,
  atthasdef BOOL, attisdropped BOOL, attcollation OID, attidentity "char", attgenerated "char", attstorage "char",
  attcompression "char", attstattarget INT4, attlen INT2, attislocal BOOL, attinhcount INT4);
CREATE TABLE pg_attrdef(oid OID, adrelid OID, adnum INT2, adbin TEXT);
CREATE TABLE pg_type(oid OID, typname NAME, typnamespace OID, typowner OID, typlen INT2, typtype "char",
  typcategory "char", typelem OID, typarray OID, typrelid OID, typbasetype OID, typcollation OID,
  typdelim "char", typnotnull BOOL, typinput TEXT, typoutput TEXT, typreceive TEXT, typsend TEXT,
  typisdefined BOOL, typtypmod INT4, typndims INT4);
CREATE TABLE pg_index(indexrelid OID, indrelid OID, indnatts INT2, indisprimary BOOL, indisunique BOOL,
  indisclustered BOOL, indisvalid BOOL, indisreplident BOOL, indkey TEXT, indisready BOOL, indislive BOOL);
CREATE TABLE pg_constraint(oid OID, conname NAME, connamespace OID, contype "char", condeferrable BOOL,
  condeferred BOOL, convalidated BOOL, conrelid OID, contypid OID, conindid OID, confrelid OID, conkey TEXT,
  consrc TEXT, conparentid OID, conislocal BOOL);
CREATE TABLE pg_am(oid OID, amname NAME, amtype "char");
CREATE TABLE pg_roles(oid OID, rolname NAME, rolsuper BOOL, rolinherit BOOL, rolcreaterole BOOL, rolcreatedb BOOL,
  rolcanlogin BOOL, rolreplication BOOL, rolconnlimit INT4, rolpassword TEXT, rolvaliduntil TIMESTAMPTZ,
  rolbypassrls BOOL, rolconfig TEXT);
CREATE TABLE pg_user(usename NAME, usesysid OID, usecreatedb BOOL, usesuper BOOL, userepl BOOL, usebypassrls BOOL,
  passwd TEXT, valuntil TIMESTAMPTZ, useconfig TEXT);
CREATE TABLE pg_auth_members(roleid OID, member OID, grantor OID, admin_option BOOL);
CREATE TABLE pg_database(oid OID, datname NAME, datdba OID, encoding INT4, datlocprovider "char",
  datistemplate BOOL, datallowconn BOOL, datconnlimit INT4, datcollate TEXT, datctype TEXT, daticulocale TEXT,
  datacl TEXT, dattablespace OID);
CREATE TABLE pg_collation(oid OID, collname NAME, collnamespace OID);
CREATE TABLE pg_description(objoid OID, classoid OID, objsubid INT4, description TEXT);
CREATE TABLE pg_tablespace(oid OID, spcname NAME);
CREATE TABLE pg_settings(name TEXT, setting TEXT, unit TEXT, category TEXT, short_desc TEXT, vartype TEXT,
  source TEXT);
CREATE TABLE pg_tables(schemaname NAME, tablename NAME, tableowner NAME, tablespace NAME, hasindexes BOOL,
  hasrules BOOL, hastriggers BOOL, rowsecurity BOOL);
CREATE TABLE pg_indexes(schemaname NAME, tablename NAME, indexname NAME, tablespace NAME, indexdef TEXT);
CREATE TABLE pg_views(schemaname NAME, viewname NAME, viewowner NAME, definition TEXT);
CREATE TABLE pg_proc(oid OID, proname NAME, pronamespace OID, prorettype OID, prokind "char");
CREATE TABLE pg_enum(oid OID, enumtypid OID, enumsortorder REAL, enumlabel NAME);
CREATE TABLE pg_range(rngtypid OID, rngsubtype OID);
CREATE TABLE pg_extension(oid OID, extname NAME, extversion TEXT);
CREATE TABLE pg_policy(oid OID, polname NAME, polrelid OID, polcmd "char", polpermissive BOOL, polroles TEXT,
  polqual TEXT, polwithcheck TEXT);
CREATE TABLE pg_statistic_ext(oid OID, stxrelid OID, stxname NAME, stxnamespace OID, stxkind TEXT,
  stxstattarget INT4);
CREATE TABLE pg_publication(oid OID, pubname NAME, puballtables BOOL);
CREATE TABLE pg_publication_namespace(oid OID, pnpubid OID, pnnspid OID);
CREATE TABLE pg_publication_rel(oid OID, prpubid OID, prrelid OID, prqual TEXT, prattrs TEXT);
CREATE TABLE pg_inherits(inhrelid OID, inhparent OID, inhseqno INT4, inhdetachpending BOOL);
CREATE TABLE pg_partitioned_table(partrelid OID, partstrat "char");
CREATE TABLE pg_trigger(oid OID, tgrelid OID, tgname NAME, tgisinternal BOOL, tgenabled "char");
CREATE TABLE pg_rewrite(oid OID, ev_class OID, rulename NAME);
CREATE TABLE pg_foreign_table(ftrelid OID);
CREATE TABLE pg_sequence(seqrelid OID);
CREATE TABLE pg_stat_activity(datname NAME, pid INT4, usename NAME, application_name TEXT, state TEXT,
  query TEXT);
CREATE TABLE information_schema_schemata(catalog_name TEXT, schema_name TEXT, schema_owner TEXT);
CREATE TABLE information_schema_tables(table_catalog TEXT, table_schema TEXT, table_name TEXT, table_type TEXT);
CREATE TABLE information_schema_views(table_catalog TEXT, table_schema TEXT, table_name TEXT,
  view_definition TEXT);
CREATE TABLE information_schema_columns(table_catalog TEXT, table_schema TEXT, table_name TEXT, column_name TEXT,
  ordinal_position INT4, column_default TEXT, is_nullable TEXT, data_type TEXT, character_maximum_length INT4,
  numeric_precision INT4, numeric_scale INT4, udt_name TEXT);
CREATE TABLE information_schema_table_constraints(constraint_catalog TEXT, constraint_schema TEXT,
  constraint_name TEXT, table_schema TEXT, table_name TEXT, constraint_type TEXT);
CREATE TABLE information_schema_key_column_usage(constraint_schema TEXT, constraint_name TEXT, table_schema TEXT,
  table_name TEXT, column_name TEXT, ordinal_position INT4);
"""
ALWAYS_EMPTY = {"pg_policy", "pg_statistic_ext", "pg_publication", "pg_publication_namespace",
                "pg_publication_rel", "pg_inherits", "pg_partitioned_table", "pg_trigger", "pg_rewrite",
                "pg_foreign_table", "pg_sequence", "pg_enum", "pg_range", "pg_extension"}


def stable_oid(kind: str, name: str) -> int:
    """An OID for a user object that stays the same across catalog rebuilds."""
    return 16384 + (zlib.crc32(f"{kind}:{name}".encode()) & 0x3FFFFFF)


@dataclass
class SessionContext:
    """What the session-dependent catalog functions read (current_setting, pg_backend_pid, ...)."""
    user: str
    database: str
    pid: int
    settings: dict
    is_reader: bool
    port: int


def _typmod(decltype: str) -> int:
    m = re.search(r"\((\d+)(?:\s*,\s*(\d+))?\)", decltype or "")
    if not m:
        return -1
    if (decltype or "").lower().startswith(("numeric", "decimal")):
        return ((int(m.group(1)) << 16) | int(m.group(2) or 0)) + 4
    return int(m.group(1)) + 4


def format_type(oid, typmod=-1) -> str | None:
    if oid is None:
        return None
    oid = int(oid)
    name = T.DISPLAY.get(oid) or T.TYPES.get(oid, (f"oid {oid}",))[0]
    typmod = -1 if typmod is None else int(typmod)
    if typmod >= 4:
        if oid == T.NUMERIC:
            return f"numeric({(typmod - 4) >> 16},{(typmod - 4) & 0xFFFF})"
        if oid in (T.VARCHAR, T.BPCHAR):
            return f"{name}({typmod - 4})"
    return name


class Catalog:
    """One per compute node; rebuilt from a snapshot connection when the schema changes."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._db = apsw.Connection(":memory:")
        self._db.execute(_DDL)
        self._schema_version: int | None = None
        self._index_defs: dict[int, str] = {}
        self._constraint_defs: dict[int, str] = {}
        self._relnames: dict[int, str] = {}
        self.context: SessionContext | None = None
        self._columns: dict[tuple[int, str], list[tuple[str, str]]] = {}
        self._register()
        self._static_rows()

    # ---------------------------------------------------------------- functions
    def _register(self) -> None:
        db = self._db
        ctx = lambda: self.context  # noqa: E731

        def fn(name, f, n):
            db.create_scalar_function(name, f, n, deterministic=False)

        fn("regexp", lambda pattern, value: None if pattern is None or value is None
           else int(re.search(pattern, str(value)) is not None), 2)
        fn("pg_get_userbyid", lambda oid: ctx().user if ctx() else "sixfold", 1)
        fn("pg_table_is_visible", lambda oid: 1, 1)
        fn("pg_type_is_visible", lambda oid: 1, 1)
        fn("format_type", format_type, 2)
        fn("pg_get_expr", lambda expr, rel, pretty=None: expr, 2)
        fn("pg_get_expr", lambda expr, rel, pretty=None: expr, 3)
        fn("pg_get_indexdef", lambda oid, col=0, pretty=None: self._index_defs.get(int(oid or 0)), 1)
        fn("pg_get_indexdef", lambda oid, col=0, pretty=None: self._index_defs.get(int(oid or 0)), 3)
        fn("pg_get_constraintdef", lambda oid, pretty=None: self._constraint_defs.get(int(oid or 0)), 1)
        fn("pg_get_constraintdef", lambda oid, pretty=None: self._constraint_defs.get(int(oid or 0)), 2)
        fn("array_to_string", lambda value, sep, null=None: value, 2)
        fn("array_to_string", lambda value, sep, null=None: value, 3)
        fn("pg_encoding_to_char", lambda n: "UTF8", 1)
        fn("version", lambda: VERSION_TEXT, 0)
        fn("current_database", lambda: ctx().database if ctx() else "sixfold", 0)
        fn("current_schema", lambda: "public", 0)
        fn("current_user", lambda: ctx().user if ctx() else "sixfold", 0)
        fn("session_user", lambda: ctx().user if ctx() else "sixfold", 0)
        fn("col_description", lambda rel, n: None, 2)
        fn("obj_description", lambda oid, cat=None: None, 1)
        fn("obj_description", lambda oid, cat=None: None, 2)
        fn("shobj_description", lambda oid, cat: None, 2)
        fn("pg_relation_size", lambda oid, fork=None: 0, 1)
        fn("pg_total_relation_size", lambda oid: 0, 1)
        fn("pg_table_size", lambda oid: 0, 1)
        fn("pg_size_pretty", lambda n: f"{int(n or 0)} bytes", 1)
        fn("pg_backend_pid", lambda: ctx().pid if ctx() else 0, 0)
        fn("pg_is_in_recovery", lambda: int(bool(ctx() and ctx().is_reader)), 0)
        fn("has_table_privilege", lambda *a: 1, -1)
        fn("has_schema_privilege", lambda *a: 1, -1)
        fn("has_database_privilege", lambda *a: 1, -1)
        fn("pg_has_role", lambda *a: 1, -1)
        fn("inet_server_port", lambda: ctx().port if ctx() else 0, 0)
        fn("inet_server_addr", lambda: None, 0)
        fn("current_setting", self._current_setting, 1)
        fn("current_setting", self._current_setting, 2)
        fn("set_config", self._set_config, 3)
        fn("regclass", self._regclass, 1)
        fn("regtype", lambda oid: None if oid is None else (format_type(oid) if str(oid).isdigit() else
                                                            self._to_regtype(oid)), 1)
        fn("regnamespace", lambda oid: {PUBLIC_NS: "public", CATALOG_NS: "pg_catalog",
                                        INFO_NS: "information_schema"}.get(int(oid or 0)), 1)
        fn("to_regtype", self._to_regtype, 1)
        fn("to_regclass", self._regclass, 1)
        fn("quote_ident", lambda s: s if re.fullmatch(r"[a-z_][a-z0-9_]*", s or "") else
           '"' + str(s).replace('"', '""') + '"', 1)
        fn("pg_get_viewdef", lambda oid, pretty=None: None, 1)
        fn("pg_get_viewdef", lambda oid, pretty=None: None, 2)
        fn("pg_get_userbyid", lambda oid: ctx().user if ctx() else "sixfold", 1)
        fn("pg_bool", lambda v: None if v is None else int(T._truthy(v)), 1)

    def _current_setting(self, name, missing_ok=None):
        settings = self.context.settings if self.context else {}
        key = str(name).lower()
        if key not in settings:
            if missing_ok:
                return None
            raise PgError("42704", f'unrecognized configuration parameter "{name}"')
        return settings[key]

    def _set_config(self, name, value, is_local):
        if self.context is not None:
            self.context.settings[str(name).lower()] = value
        return value

    def _regclass(self, value):
        if value is None:
            return None
        if isinstance(value, int) or str(value).isdigit():
            return self._relnames.get(int(value), str(value))
        name = str(value).split(".")[-1].strip('"')
        row = list(self._db.execute("SELECT oid FROM pg_class WHERE relname = ?", (name,)))
        if not row:
            raise PgError("42P01", f'relation "{value}" does not exist')
        return row[0][0]

    def _to_regtype(self, name):
        if name is None:
            return None
        n = str(name).strip().lower().removeprefix("pg_catalog.")
        by_display = {v: k for k, v in T.DISPLAY.items()}
        if n in by_display:
            return by_display[n]
        for oid, (tname, _, _) in T.TYPES.items():
            if tname == n:
                return oid
        aliases = {"int": T.INT4, "integer": T.INT4, "bigint": T.INT8, "smallint": T.INT2, "varchar": T.VARCHAR,
                   "timestamp": T.TIMESTAMP, "timestamptz": T.TIMESTAMPTZ, "decimal": T.NUMERIC,
                   "double": T.FLOAT8, "float": T.FLOAT8, "real": T.FLOAT4, "boolean": T.BOOL}
        return aliases.get(n)

    # ---------------------------------------------------------------- contents
    def _static_rows(self) -> None:
        db = self._db
        db.executemany("INSERT INTO pg_namespace VALUES (?, ?, ?, NULL)",
                       [(CATALOG_NS, "pg_catalog", OWNER_OID), (PUBLIC_NS, "public", OWNER_OID),
                        (INFO_NS, "information_schema", OWNER_OID)])
        db.executemany("INSERT INTO pg_am VALUES (?, ?, ?)", [(HEAP_AM, "heap", "t"), (BTREE_AM, "btree", "i")])
        rows = []
        for oid, (name, size, category) in T.TYPES.items():
            element = T.ARRAY_ELEMENT.get(oid, 0)
            array = next((a for a, e in T.ARRAY_ELEMENT.items() if e == oid), 0)
            rows.append((oid, name, CATALOG_NS, OWNER_OID, size, "b", category, element, array, 0, 0,
                         100 if category == "S" else 0, ",", 0, f"{name}in", f"{name}out", f"{name}recv",
                         f"{name}send", 1, -1, 0))
        db.executemany(f"INSERT INTO pg_type VALUES ({','.join('?' * 21)})", rows)
        db.execute("INSERT INTO pg_collation VALUES (100, 'default', 11)")
        db.execute("INSERT INTO pg_tablespace VALUES (1663, 'pg_default')")

    def refresh(self, source: apsw.Connection, schema_version: int, user: str, database: str) -> None:
        """Rebuilds the user part of the catalog from `source` if the schema changed."""
        if schema_version == self._schema_version:
            return
        objects = list(source.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"))
        db = self._db
        db.execute("SAVEPOINT refresh")
        for table in ("pg_class", "pg_attribute", "pg_attrdef", "pg_index", "pg_constraint", "pg_roles", "pg_user",
                      "pg_database", "pg_tables", "pg_indexes", "pg_views", "information_schema_schemata",
                      "information_schema_tables", "information_schema_columns", "information_schema_views",
                      "information_schema_table_constraints", "information_schema_key_column_usage",
                      "pg_auth_members"):
            db.execute(f"DELETE FROM {table}")
        self._index_defs, self._constraint_defs, self._relnames = {}, {}, {}
        db.execute("INSERT INTO pg_roles VALUES (?, ?, 1, 1, 1, 1, 1, 0, -1, '********', NULL, 0, NULL)",
                   (OWNER_OID, user))
        db.execute("INSERT INTO pg_user VALUES (?, ?, 1, 1, 0, 0, '********', NULL, NULL)", (user, OWNER_OID))
        db.execute("INSERT INTO pg_database VALUES (?, ?, ?, 6, 'c', 0, 1, -1, 'C.UTF-8', 'C.UTF-8', NULL, NULL, 1663)",
                   (16383, database, OWNER_OID))
        db.executemany("INSERT INTO information_schema_schemata VALUES (?, ?, ?)",
                       [(database, s, user) for s in ("information_schema", "pg_catalog", "public")])
        for kind, name, tbl_name, sql in objects:
            if kind in ("table", "view"):
                self._add_relation(source, kind, name, sql or "", user, database)
        for kind, name, tbl_name, sql in objects:
            if kind == "index":
                self._add_index(source, name, tbl_name, sql, user)
        db.execute("RELEASE refresh")
        self._schema_version = schema_version

    def _add_relation(self, source, kind: str, name: str, sql: str, user: str, database: str) -> None:
        db = self._db
        oid = stable_oid("rel", name)
        self._relnames[oid] = name
        columns = list(source.execute(f"PRAGMA table_info(\"{name.replace(chr(34), chr(34) * 2)}\")"))
        db.execute(f"INSERT INTO pg_class VALUES ({','.join('?' * 26)})",
                   (oid, name, PUBLIC_NS, "r" if kind == "table" else "v", OWNER_OID,
                    HEAP_AM if kind == "table" else 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "p", "d", 0,
                    None, None, None, len(columns), 0, 0))
        if kind == "table":
            db.execute("INSERT INTO pg_tables VALUES ('public', ?, ?, NULL, 0, 0, 0, 0)", (name, user))
            db.execute("INSERT INTO information_schema_tables VALUES (?, 'public', ?, 'BASE TABLE')", (database, name))
        else:
            db.execute("INSERT INTO pg_views VALUES ('public', ?, ?, ?)", (name, user, sql))
            db.execute("INSERT INTO information_schema_tables VALUES (?, 'public', ?, 'VIEW')", (database, name))
        pk = sorted((c for c in columns if c[5]), key=lambda c: c[5])
        for cid, cname, decltype, notnull, default, pk_no in columns:
            type_oid = T.oid_of_decltype(decltype) or T.TEXT
            typmod = _typmod(decltype)
            is_rowid = len(pk) == 1 and pk_no and (decltype or "").upper() == "INTEGER"
            if is_rowid and default is None:
                default = f"nextval('{name}_{cname}_seq'::regclass)"
            notnull = notnull or bool(pk_no)
            db.execute(f"INSERT INTO pg_attribute VALUES ({','.join('?' * 17)})",
                       (oid, cname, type_oid, typmod, cid + 1, int(bool(notnull)), int(default is not None), 0,
                        100 if type_oid in (T.TEXT, T.VARCHAR, T.BPCHAR) else 0, "", "", "p", "", -1,
                        T.type_size(type_oid), 1, 0))
            if default is not None:
                db.execute("INSERT INTO pg_attrdef VALUES (?, ?, ?, ?)",
                           (stable_oid("def", f"{name}.{cname}"), oid, cid + 1, str(default)))
            db.execute(f"INSERT INTO information_schema_columns VALUES ({','.join('?' * 12)})",
                       (database, "public", name, cname, cid + 1, default, "NO" if notnull else "YES",
                        format_type(type_oid), typmod - 4 if typmod > 4 and type_oid != T.NUMERIC else None,
                        None, None, T.TYPES.get(type_oid, ("text",))[0]))
        if pk and kind == "table":
            # an INTEGER PRIMARY KEY is SQLite's rowid and has no index of its own; show it as PG would
            index_name = f"{name}_pkey"
            sqlite_auto = next((r[1] for r in source.execute(
                f"PRAGMA index_list(\"{name.replace(chr(34), chr(34) * 2)}\")") if r[3] == "pk"), None)
            cols = [c[1] for c in pk]
            self._add_index_rows(index_name, name, cols, unique=True, primary=True, user=user,
                                 replaces=sqlite_auto)

    def _add_index(self, source, name: str, table: str, sql: str | None, user: str) -> None:
        info = list(source.execute(f"PRAGMA index_info(\"{name.replace(chr(34), chr(34) * 2)}\")"))
        unique = bool(sql and re.match(r"\s*create\s+unique", sql, re.I)) or sql is None
        if sql is None:
            return   # autoindexes: the primary key was shown already; UNIQUE column constraints below
        cols = [r[2] for r in info]
        primary = name.endswith("_pkey") and unique and not self._has_pk(table)
        self._add_index_rows(name, table, cols, unique=unique, primary=primary, user=user)

    def _has_pk(self, table: str) -> bool:
        return bool(list(self._db.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname = ? AND indisprimary",
            (table,))))

    def _add_index_rows(self, name: str, table: str, cols: list[str], unique: bool, primary: bool, user: str,
                        replaces: str | None = None) -> None:
        db = self._db
        oid = stable_oid("rel", name)
        table_oid = stable_oid("rel", table)
        self._relnames[oid] = name
        attnums = {r[0]: r[1] for r in db.execute("SELECT attname, attnum FROM pg_attribute WHERE attrelid = ?",
                                                  (table_oid,))}
        db.execute(f"INSERT INTO pg_class VALUES ({','.join('?' * 26)})",
                   (oid, name, PUBLIC_NS, "i", OWNER_OID, BTREE_AM, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "p", "n", 0,
                    None, None, None, len(cols), 0, 0))
        db.execute("UPDATE pg_class SET relhasindex = 1 WHERE oid = ?", (table_oid,))
        collist = ", ".join(cols)
        definition = f"CREATE {'UNIQUE ' if unique else ''}INDEX {name} ON public.{table} USING btree ({collist})"
        self._index_defs[oid] = definition
        db.execute(f"INSERT INTO pg_index VALUES ({','.join('?' * 11)})",
                   (oid, table_oid, len(cols), int(primary), int(unique), 0, 1, 0,
                    " ".join(str(attnums.get(c, 0)) for c in cols), 1, 1))
        db.execute("INSERT INTO pg_indexes VALUES ('public', ?, ?, NULL, ?)", (table, name, definition))
        if primary or unique and name.endswith(("_pkey", "_key")):
            con_oid = stable_oid("con", name)
            contype = "p" if primary else "u"
            self._constraint_defs[con_oid] = f"{'PRIMARY KEY' if primary else 'UNIQUE'} ({collist})"
            db.execute(f"INSERT INTO pg_constraint VALUES ({','.join('?' * 15)})",
                       (con_oid, name, PUBLIC_NS, contype, 0, 0, 1, table_oid, 0, oid, 0,
                        "{" + ",".join(str(attnums.get(c, 0)) for c in cols) + "}", None, 0, 1))
            db.execute("INSERT INTO information_schema_table_constraints VALUES (NULL, 'public', ?, 'public', ?, ?)",
                       (name, table, "PRIMARY KEY" if primary else "UNIQUE"))
            for i, c in enumerate(cols):
                db.execute("INSERT INTO information_schema_key_column_usage VALUES ('public', ?, 'public', ?, ?, ?)",
                           (name, table, c, i + 1))

    # ---------------------------------------------------------------- schema lookups
    def column_types(self, db, table: str) -> dict[str, list[str]]:
        """{lower-cased column name: [declared type]} of a user table, as the session sees it."""
        def read(conn):
            version = next(iter(conn.execute("PRAGMA schema_version")))[0]
            key = (version, table)
            cached = self._columns.get(key)
            if cached is None:
                cached = [(r[1], r[2]) for r in conn.execute(
                    f"PRAGMA table_info(\"{table.replace(chr(34), chr(34) * 2)}\")")]
                if len(self._columns) > 1000:
                    self._columns.clear()
                self._columns[key] = cached
            return cached

        out: dict[str, list[str]] = {}
        for name, decl in db.with_connection(read):
            out.setdefault(name.lower(), []).append(decl)
        return out

    def column_order(self, db, table: str) -> list[str]:
        return db.with_connection(lambda conn: [r[1] for r in conn.execute(
            f"PRAGMA table_info(\"{table.replace(chr(34), chr(34) * 2)}\")")])

    # ---------------------------------------------------------------- queries
    def describe(self, pg_sql: str) -> tuple[list[str], list[int | None]]:
        sqlite_sql, names, empty_fallback, static = _translate_catalog(pg_sql)
        if sqlite_sql is None:
            return names, [None] * len(names)
        with self._lock:
            try:
                described = describe_on(self._db, sqlite_sql, sqlite_sql.count("?"))
            except apsw.Error as exc:
                if empty_fallback:
                    return names, [None] * len(names)
                raise PgError("0A000", f"this catalog query is not supported by Sixfold: {exc}") from None
        return [d[0] for d in described], _types(described, static)

    def query(self, pg_sql: str, params: list, db, context: SessionContext):
        """(column names, OIDs or None, rows) of a catalog query, on a catalog as fresh as `db`'s schema."""
        def refresh(conn):
            version = next(iter(conn.execute("PRAGMA schema_version")))[0]
            with self._lock:
                self.refresh(conn, version, context.user, context.database)

        db.with_connection(refresh)
        probe = _PGBENCH_PARTITION_PROBE.search(pg_sql)
        if probe:
            # pgbench asks whether its accounts table is partitioned with a LATERAL over
            # current_schemas(); the answer here is always "in public, not partitioned"
            with self._lock:
                found = list(self._db.execute("SELECT 1 FROM pg_class WHERE relname = ? AND relkind = 'r'",
                                              (probe.group(1),)))
            return ["n", "partstrat", "count"], [T.INT4, T.CHAR, T.INT8], [(1, None, 0)] if found else []
        return self.run(pg_sql, params, context)

    def run(self, pg_sql: str, params: list, context: SessionContext) -> tuple[list[str], list[int | None], list]:
        """(column names, column OIDs or None, rows) of a catalog query."""
        sqlite_sql, names, empty_fallback, static = _translate_catalog(pg_sql)
        with self._lock:
            self.context = context
            try:
                if sqlite_sql is None:
                    return names, [None] * len(names), []
                cursor = self._db.cursor()
                try:
                    cursor.execute(sqlite_sql, params)
                    try:
                        desc = cursor.getdescription()
                    except apsw.ExecutionCompleteError:
                        return names, [None] * len(names), []
                    rows = [tuple(r) for r in cursor]
                except PgError:
                    raise
                except apsw.Error as exc:
                    if empty_fallback:
                        return names, [None] * len(names), []
                    raise PgError("0A000", f"this catalog query is not supported by Sixfold: {exc}") from None
                return [d[0] for d in desc], _types(desc, static), rows
            finally:
                self.context = None


def _types(description, static: tuple) -> list[int | None]:
    """Declared types of the catalog's columns, else what the expression's shape says."""
    return [T.oid_of_decltype(d[1]) or (static[i] if i < len(static) else None) for i, d in enumerate(description)]


_PGBENCH_PARTITION_PROBE = re.compile(
    r"array_position\(pg_catalog\.current_schemas\(true\), n\.nspname\)\) as o\(n\).*"
    r"where c\.relname = '(\w+)' and o\.n is not null", re.S)
_PREFIXES = re.compile(r"\bpg_catalog\s*\.\s*|\bOPERATOR\s*\(\s*(?:pg_catalog\.)?([~!=<>*]+)\s*\)|"
                       r"\s+COLLATE\s+(?:pg_catalog\.)?\"?\w+\"?", re.I)
_CAST_FUNCS = {"REGCLASS": "regclass", "REGTYPE": "regtype", "REGNAMESPACE": "regnamespace",
               "REGPROC": "regclass", "REGPROCEDURE": "regclass", "REGROLE": "pg_get_userbyid"}


def translate_catalog(pg_sql: str) -> tuple[str | None, list[str], bool]:
    """(SQLite SQL or None for 'no rows', output column names, may answer empty on failure)."""
    return _translate_catalog(pg_sql)[:3]


@functools.lru_cache(maxsize=512)
def _translate_catalog(pg_sql: str) -> tuple[str | None, list[str], bool, tuple]:
    """translate_catalog, plus the static types of the result columns (cached: psql repeats itself)."""
    text = _PREFIXES.sub(lambda m: f" {m.group(1)} " if m.group(1) else ("" if "COLLATE" not in m.group(0).upper()
                                                                         else ""), pg_sql)
    text = re.sub(r"\binformation_schema\s*\.\s*(\w+)", r"information_schema_\1", text, flags=re.I)
    text = re.sub(r"\b(current_user|session_user|current_schema|current_catalog)\b(?!\s*\()", r"\1()", text,
                  flags=re.I)
    text = re.sub(r"\bcurrent_catalog\(\)", "current_database()", text, flags=re.I)
    try:
        tree = sqlglot.parse_one(pad_parameters(text), read="postgres")
    except (ParseError, TokenError) as exc:
        raise PgError("42601", f"syntax error: {str(exc).splitlines()[0][:200]}") from None
    names = [e.alias_or_name or "?column?" for e in tree.expressions] if isinstance(tree, exp.Select) else []
    if isinstance(tree, exp.Union):
        left = tree
        while isinstance(left, exp.Union):
            left = left.this
        names = [e.alias_or_name or "?column?" for e in left.expressions]
    tables = {t.name for t in tree.find_all(exp.Table)}
    empty_fallback = bool(tables & ALWAYS_EMPTY)
    static = static_types(tree)
    for node in list(tree.find_all(exp.Array)):
        node.replace(exp.Null())   # reloptions, role memberships: none exist here
    # sqlglot renders these for SQLite ('main', sqlite_version()); this catalog answers as PostgreSQL
    for cls, name in (("CurrentSchema", "current_schema"), ("CurrentUser", "current_user"),
                      ("SessionUser", "session_user"), ("CurrentVersion", "version"), ("Version", "version")):
        node_cls = getattr(exp, cls, None)
        if node_cls is not None:
            for node in list(tree.find_all(node_cls)):
                node.replace(exp.Anonymous(this=name, expressions=[]))
    try:
        for node in list(tree.walk()):
            if isinstance(node, exp.Cast):
                to = node.args.get("to")
                tname = to.sql("postgres").upper().strip('"') if to is not None else ""
                if tname in _CAST_FUNCS:
                    node.replace(exp.Anonymous(this=_CAST_FUNCS[tname], expressions=[node.this]))
                elif tname in ("OID", "INT", "INT2", "INT4", "INT8", "SMALLINT", "BIGINT", "INTEGER"):
                    node.set("to", exp.DataType.build("INTEGER"))
                elif tname in ("TEXT", "NAME", "VARCHAR", "CHAR", '"CHAR"', "BPCHAR"):
                    node.set("to", exp.DataType.build("TEXT"))
                elif tname in ("BOOL", "BOOLEAN"):
                    node.replace(exp.Anonymous(this="pg_bool", expressions=[node.this]))
                else:
                    raise UnsupportedError(f"cast to {tname}")
            elif isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal):
                node.replace(exp.Var(this=f"?{node.this.name}"))
            elif isinstance(node, exp.ByteString):
                node.replace(exp.Literal.string(node.this))
            elif isinstance(node, (exp.Any, exp.Lateral, exp.Unnest, exp.Bracket)):
                raise UnsupportedError(type(node).__name__)
        sql = re.sub(r"\bSQLITE_VERSION\(\)", "VERSION()", tree.sql(dialect="sqlite"))
    except UnsupportedError as exc:
        if empty_fallback:
            return None, names, True, static
        raise PgError("0A000", f"this catalog query is not supported by Sixfold ({exc})") from None
    return sql, names, empty_fallback, static
