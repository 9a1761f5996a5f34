"""PostgreSQL types as SQLite stores them: OIDs, declared-type mapping, and the text and
binary encodings of parameters (client -> SQLite values) and results (SQLite -> client).

SQLite keeps the PostgreSQL type name as the column's declared type (the DDL
translation writes it so, e.g. `TIMESTAMPTZ`, `BOOLEAN`, `VARCHAR(10)`), so a
result column's OID comes from its declared type; booleans are stored as 0/1,
timestamps and dates as ISO text, numeric as SQLite numbers, bytea as blobs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import struct
import uuid

from sixfold.nodes.compute.pgwire.messages import PgError

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 114, 700, 701, 705, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, JSONB = 1082, 1083, 1114, 1184, 1186, 1700, 2950, 3802
REGCLASS, REGTYPE, INT2VECTOR, OIDVECTOR, TEXT_ARRAY, INT4_ARRAY, CHAR_ARRAY = 2205, 2206, 22, 30, 1009, 1007, 1002

# name, size, category (for pg_type)
TYPES: dict[int, tuple[str, int, str]] = {
    BOOL: ("bool", 1, "B"), BYTEA: ("bytea", -1, "U"), CHAR: ("char", 1, "Z"), NAME: ("name", 64, "S"),
    INT8: ("int8", 8, "N"), INT2: ("int2", 2, "N"), INT4: ("int4", 4, "N"), TEXT: ("text", -1, "S"),
    OID: ("oid", 4, "N"), JSON: ("json", -1, "U"), FLOAT4: ("float4", 4, "N"), FLOAT8: ("float8", 8, "N"),
    UNKNOWN: ("unknown", -2, "X"), BPCHAR: ("bpchar", -1, "S"), VARCHAR: ("varchar", -1, "S"),
    DATE: ("date", 4, "D"), TIME: ("time", 8, "D"), TIMESTAMP: ("timestamp", 8, "D"),
    TIMESTAMPTZ: ("timestamptz", 8, "D"), INTERVAL: ("interval", 16, "T"), NUMERIC: ("numeric", -1, "N"),
    UUID: ("uuid", 16, "U"), JSONB: ("jsonb", -1, "U"), REGCLASS: ("regclass", 4, "N"),
    REGTYPE: ("regtype", 4, "N"), INT2VECTOR: ("int2vector", -1, "A"), OIDVECTOR: ("oidvector", -1, "A"),
    TEXT_ARRAY: ("_text", -1, "A"), INT4_ARRAY: ("_int4", -1, "A"), CHAR_ARRAY: ("_char", -1, "A"),
}
ARRAY_ELEMENT = {TEXT_ARRAY: TEXT, INT4_ARRAY: INT4, CHAR_ARRAY: CHAR}

# what format_type() shows for each OID
DISPLAY = {BOOL: "boolean", INT8: "bigint", INT2: "smallint", INT4: "integer", FLOAT4: "real",
           FLOAT8: "double precision", BPCHAR: "character", VARCHAR: "character varying",
           TIMESTAMP: "timestamp without time zone", TIMESTAMPTZ: "timestamp with time zone",
           TIME: "time without time zone"}

_DECL_RULES: list[tuple[str, int]] = [
    # (regex on the lower-cased declared type, OID); first match wins
    (r"^(bigint|int8|bigserial|serial8)\b", INT8),
    (r"^(smallint|int2|smallserial|serial2)\b", INT2),
    (r"^(integer|int|int4|serial|serial4|mediumint|tinyint)\b", INT4),
    (r"^(boolean|bool)\b", BOOL),
    (r"^(double precision|double|float8|float)\b", FLOAT8),
    (r"^(real|float4)\b", FLOAT4),
    (r"^(numeric|decimal)\b", NUMERIC),
    (r"^(character varying|varchar)\b", VARCHAR),
    (r"^(character|char|bpchar|nchar)\b", BPCHAR),
    (r"^(text|clob|string)\b", TEXT),
    (r"^(bytea|blob)\b", BYTEA),
    (r"^(timestamptz|timestamp with time zone|timestamp\(\d\) with time zone)", TIMESTAMPTZ),
    (r"^(timestamp|datetime)\b", TIMESTAMP),
    (r"^date\b", DATE),
    (r"^(time|time without time zone)\b", TIME),
    (r"^jsonb\b", JSONB),
    (r"^json\b", JSON),
    (r"^uuid\b", UUID),
    (r"^interval\b", INTERVAL),
    (r"^name\b", NAME),
    (r"^oid\b", OID),
]
_DECL_COMPILED = [(re.compile(p), oid) for p, oid in _DECL_RULES]


def oid_of_decltype(decltype: str | None) -> int | None:
    """A column's OID from its SQLite declared type; None when it has none (an expression)."""
    if not decltype:
        return None
    d = decltype.strip().lower()
    for rx, oid in _DECL_COMPILED:
        if rx.match(d):
            return oid
    # SQLite's own affinity rules for names we do not know
    if "int" in d:
        return INT8
    if "char" in d or "clob" in d or "text" in d:
        return TEXT
    if "real" in d or "floa" in d or "doub" in d:
        return FLOAT8
    return TEXT


def oid_of_value(value) -> int:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT8
    if isinstance(value, float):
        return FLOAT8
    if isinstance(value, bytes):
        return BYTEA
    return TEXT


def type_size(oid: int) -> int:
    return TYPES.get(oid, ("", -1, ""))[1]


# ---------------------------------------------------------------- parameters

_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_DATE = dt.date(2000, 1, 1)


def _bad_param(oid: int, raw, why: str = "") -> PgError:
    name = TYPES.get(oid, (str(oid),))[0]
    return PgError("22P02", f"invalid input syntax for type {name}: {raw[:60]!r}{(' (' + why + ')') if why else ''}")


def _numeric_text(text: str):
    """numeric text -> int when integral, else float (SQLite has no decimal type)."""
    t = text.strip()
    if t.lower() == "nan":
        return math.nan
    try:
        d = decimal.Decimal(t)
    except decimal.InvalidOperation:
        raise _bad_param(NUMERIC, text) from None
    if d == d.to_integral_value() and "e" not in t.lower() and "." not in t:
        return int(d)
    return float(d)


def _bool_text(text: str) -> int:
    t = text.strip().lower()
    if t in ("t", "true", "y", "yes", "on", "1"):
        return 1
    if t in ("f", "false", "n", "no", "off", "0"):
        return 0
    raise _bad_param(BOOL, text)


def decode_param(oid: int, fmt: int, raw: bytes | None):
    """One Bind parameter -> the value SQLite binds. Unknown types in text stay text
    (SQLite's column affinity converts them where a column has a numeric type)."""
    if raw is None:
        return None
    if fmt == 0:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PgError("22021", "invalid byte sequence for encoding UTF8 in a parameter") from None
        if oid in (INT2, INT4, INT8, OID):
            try:
                return int(text.strip())
            except ValueError:
                raise _bad_param(oid, text) from None
        if oid in (FLOAT4, FLOAT8):
            try:
                return float(text)
            except ValueError:
                raise _bad_param(oid, text) from None
        if oid == NUMERIC:
            return _numeric_text(text)
        if oid == BOOL:
            return _bool_text(text)
        if oid == BYTEA:
            return decode_bytea_text(text)
        return text
    # binary
    try:
        if oid == INT2:
            return struct.unpack("!h", raw)[0]
        if oid in (INT4,):
            return struct.unpack("!i", raw)[0]
        if oid == OID:
            return struct.unpack("!I", raw)[0]
        if oid == INT8:
            return struct.unpack("!q", raw)[0]
        if oid == FLOAT4:
            return struct.unpack("!f", raw)[0]
        if oid == FLOAT8:
            return struct.unpack("!d", raw)[0]
        if oid == BOOL:
            if len(raw) != 1:
                raise _bad_param(oid, raw, "binary bool is one byte")
            return 1 if raw[0] else 0
        if oid == BYTEA:
            return bytes(raw)
        if oid in (TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, JSON, CHAR):
            return raw.decode("utf-8")
        if oid == JSONB:
            if not raw or raw[0] != 1:
                raise _bad_param(oid, raw, "jsonb binary version 1 expected")
            return raw[1:].decode("utf-8")
        if oid == NUMERIC:
            return _numeric_binary_decode(raw)
        if oid == TIMESTAMP:
            return (_PG_EPOCH + dt.timedelta(microseconds=struct.unpack("!q", raw)[0])).isoformat(" ")
        if oid == TIMESTAMPTZ:
            return (_PG_EPOCH + dt.timedelta(microseconds=struct.unpack("!q", raw)[0])).isoformat(" ") + "+00"
        if oid == DATE:
            return (_PG_EPOCH_DATE + dt.timedelta(days=struct.unpack("!i", raw)[0])).isoformat()
        if oid == UUID:
            return str(uuid.UUID(bytes=bytes(raw)))
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise _bad_param(oid, raw, str(exc)) from None
    raise PgError("0A000", f"binary parameters of type {TYPES.get(oid, (str(oid),))[0]} are not supported; "
                           "send this parameter as text")


def decode_bytea_text(text: str) -> bytes:
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise _bad_param(BYTEA, text) from None
    # escape format: backslash-octal and doubled backslashes
    out = bytearray()
    i = 0
    raw = text.encode("utf-8")
    while i < len(raw):
        c = raw[i]
        if c == 0x5C:
            if raw[i + 1:i + 2] == b"\\":
                out.append(0x5C)
                i += 2
                continue
            octal = raw[i + 1:i + 4]
            if len(octal) == 3 and all(0x30 <= b <= 0x37 for b in octal):
                out.append(int(octal, 8))
                i += 4
                continue
            raise _bad_param(BYTEA, text)
        out.append(c)
        i += 1
    return bytes(out)


def _numeric_binary_decode(raw: bytes):
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHH", raw, 0)
    if sign == 0xC000:
        return math.nan
    digits = struct.unpack_from(f"!{ndigits}H", raw, 8)
    value = decimal.Decimal(0)
    for i, d in enumerate(digits):
        value += decimal.Decimal(d) * (decimal.Decimal(10000) ** (weight - i))
    if sign == 0x4000:
        value = -value
    if dscale == 0 and value == value.to_integral_value():
        return int(value)
    return float(value)


def _numeric_binary_encode(value) -> bytes:
    if isinstance(value, float) and math.isnan(value):
        return struct.pack("!hhHH", 0, 0, 0xC000, 0)
    d = decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
    sign = 0x4000 if d < 0 else 0
    int_text, _, frac_text = format(abs(d), "f").partition(".")
    int_text = int_text.lstrip("0")
    dscale = len(frac_text)
    int_text = "0" * ((-len(int_text)) % 4) + int_text
    frac_text = frac_text + "0" * ((-len(frac_text)) % 4)
    int_groups = [int(int_text[i:i + 4]) for i in range(0, len(int_text), 4)]
    groups = int_groups + [int(frac_text[i:i + 4]) for i in range(0, len(frac_text), 4)]
    weight = len(int_groups) - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHH{len(groups)}H", len(groups), weight, sign, dscale, *groups)


# ---------------------------------------------------------------- results

def _text_of(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _truthy(value) -> bool:
    if isinstance(value, str):
        return _bool_text(value) == 1
    return bool(value)


def encode_text(oid: int, value) -> bytes | None:
    if value is None:
        return None
    if oid == BOOL:
        try:
            return b"t" if _truthy(value) else b"f"
        except PgError:
            return _text_of(value).encode()
    if oid == BYTEA:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, bytes):
            return b"\\x" + value.hex().encode()
    if oid == TIMESTAMPTZ and isinstance(value, str) and not re.search(r"([+-]\d\d(:?\d\d)?|Z)$", value):
        return (value + "+00").encode()
    if oid in (INT2, INT4, INT8) and isinstance(value, float) and value.is_integer():
        return str(int(value)).encode()
    if oid == NUMERIC and isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)).encode()
    return _text_of(value).encode("utf-8")


_PLAIN_TEXT_OIDS = frozenset((TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, CHAR, JSON))
_INT_OIDS = frozenset((INT2, INT4, INT8))


def result_encoder(oid: int, binary: bool):
    """encode_text or encode_binary for one result column, common cases first (a result
    has many rows): a str in a text-like column, an int in an integer column."""
    if binary:
        return _binary_result_encoder(oid)
    if oid in _PLAIN_TEXT_OIDS:
        return lambda value: value.encode("utf-8") if type(value) is str else encode_text(oid, value)
    if oid in _INT_OIDS:
        return lambda value: str(value).encode() if type(value) is int else encode_text(oid, value)
    return lambda value: encode_text(oid, value)


_INT_PACKERS = {INT2: struct.Struct("!h").pack, INT4: struct.Struct("!i").pack, INT8: struct.Struct("!q").pack}


def _binary_result_encoder(oid: int):
    """encode_binary for one column with the common cases first: a text-like column's binary
    form is its UTF-8 text; an int in an integer column is packed (out of range: the error
    encode_binary gives)."""
    if oid in _PLAIN_TEXT_OIDS:
        return lambda value: value.encode("utf-8") if type(value) is str else encode_binary(oid, value)
    pack = _INT_PACKERS.get(oid)
    if pack is None:
        return lambda value: encode_binary(oid, value)

    def encode_int(value):
        if type(value) is int:
            try:
                return pack(value)
            except struct.error:
                pass
        return encode_binary(oid, value)
    return encode_int


def _parse_timestamp(text: str) -> dt.datetime:
    t = text.strip().replace("T", " ")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    m = re.search(r"([+-]\d\d)(:?(\d\d))?$", t)
    if m and len(t) > 10:
        t = t[:m.start()] + f"{m.group(1)}:{m.group(3) or '00'}"
    value = dt.datetime.fromisoformat(t)
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def encode_binary(oid: int, value) -> bytes | None:
    if value is None:
        return None
    try:
        if oid == INT2:
            return struct.pack("!h", int(value))
        if oid == INT4:
            return struct.pack("!i", int(value))
        if oid == INT8:
            return struct.pack("!q", int(value))
        if oid == OID:
            return struct.pack("!I", int(value))
        if oid == FLOAT4:
            return struct.pack("!f", float(value))
        if oid == FLOAT8:
            return struct.pack("!d", float(value))
        if oid == BOOL:
            return b"\x01" if _truthy(value) else b"\x00"
        if oid == BYTEA:
            return value if isinstance(value, bytes) else str(value).encode("utf-8")
        if oid == NUMERIC:
            if isinstance(value, str):
                value = decimal.Decimal(value)
            return _numeric_binary_encode(value)
        if oid in (TIMESTAMP, TIMESTAMPTZ):
            delta = _parse_timestamp(str(value)) - _PG_EPOCH
            return struct.pack("!q", (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
        if oid == DATE:
            return struct.pack("!i", (dt.date.fromisoformat(str(value)[:10]) - _PG_EPOCH_DATE).days)
        if oid == UUID:
            return uuid.UUID(str(value)).bytes
        if oid == JSONB:
            return b"\x01" + _text_of(value).encode("utf-8")
        if oid in (TEXT, VARCHAR, BPCHAR, NAME, JSON, UNKNOWN, CHAR):
            return _text_of(value).encode("utf-8")
    except (ValueError, TypeError, struct.error, decimal.InvalidOperation, OverflowError) as exc:
        raise PgError("22P03", f"cannot send {value!r} as binary {TYPES.get(oid, (str(oid),))[0]}: {exc}") from None
    raise PgError("0A000", f"binary results of type {TYPES.get(oid, (str(oid),))[0]} are not supported; "
                           "ask for text results")


def json_text(value) -> str:
    return json.dumps(value)
