"""PostgreSQL functions and casts that the SQL translation calls, registered on every
SQLite connection of the engine (the writer's and the snapshots')."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import uuid

import apsw

from sixfold.nodes.compute.pgwire.messages import PgError
from sixfold.nodes.compute.pgwire.pgtypes import decode_bytea_text


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _regexp(pattern, value):
    # SQLite calls regexp(pattern, value) for `value REGEXP pattern` (PostgreSQL's ~)
    if pattern is None or value is None:
        return None
    try:
        return int(_compiled(str(pattern)).search(str(value)) is not None)
    except re.error as exc:
        raise apsw.SQLError(f"invalid regular expression: {exc}") from None


def _bool(value):
    """value::boolean as PostgreSQL accepts it, stored as 0/1."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value != 0)
    text = str(value).strip().lower()
    if text in ("t", "true", "y", "yes", "on", "1"):
        return 1
    if text in ("f", "false", "n", "no", "off", "0"):
        return 0
    raise apsw.SQLError(f'invalid input syntax for type boolean: "{value}"')


def _timestamp(value):
    """value::timestamp: ISO text (what timestamp columns hold)."""
    if value is None:
        return None
    text = str(value).strip()
    low = text.lower()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if low in ("now", "today", "epoch"):
        return {"now": now.isoformat(" "), "today": now.date().isoformat() + " 00:00:00",
                "epoch": "1970-01-01 00:00:00"}[low]
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise apsw.SQLError(f'invalid input syntax for type timestamp: "{value}"') from None
    return parsed.isoformat(" ")


def _date(value):
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(str(value).strip()[:10]).isoformat()
    except ValueError:
        raise apsw.SQLError(f'invalid input syntax for type date: "{value}"') from None


def _bytea(value):
    """value::bytea: PostgreSQL's hex ('\\x00ff') or escape input format."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return decode_bytea_text(str(value))
    except PgError as exc:
        raise apsw.SQLError(exc.message) from None


def _div(a, b):
    """a / b with PostgreSQL's rules: an error for a zero divisor, integer division truncates."""
    if a is None or b is None:
        return None
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        a, b = _number(a), _number(b)
    if b == 0:
        raise apsw.SQLError("division by zero")
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    return a / b


def _number(v):
    if isinstance(v, (int, float)):
        return v
    try:
        text = v.decode() if isinstance(v, bytes) else v
        return int(text) if re.fullmatch(r"\s*[+-]?\d+\s*", text) else float(text)
    except ValueError:
        raise apsw.SQLError(f'invalid input syntax for type numeric: "{v}"') from None


def register(conn: apsw.Connection) -> None:
    conn.create_scalar_function("pg_div", _div, 2, deterministic=True)
    conn.create_scalar_function("pg_bytea", _bytea, 1, deterministic=True)
    conn.create_scalar_function("regexp", _regexp, 2, deterministic=True)
    conn.create_scalar_function("pg_bool", _bool, 1, deterministic=True)
    conn.create_scalar_function("pg_ts", _timestamp, 1, deterministic=False)
    conn.create_scalar_function("pg_date", _date, 1, deterministic=True)
    conn.create_scalar_function("uuid", lambda: str(uuid.uuid4()), 0, deterministic=False)
    conn.create_scalar_function("gen_random_uuid", lambda: str(uuid.uuid4()), 0, deterministic=False)
    conn.create_scalar_function("md5", lambda v: None if v is None else hashlib.md5(
        v if isinstance(v, bytes) else str(v).encode()).hexdigest(), 1, deterministic=True)
