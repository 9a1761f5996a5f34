"""PostgreSQL protocol v3 messages: a pure codec (bytes in, messages out; messages in, bytes out).

The frontend parser is incremental: `feed()` takes whatever the socket gave and
returns the complete messages. Anything malformed raises `ProtocolViolation`,
which the session turns into a FATAL error and a closed connection; nothing in
here trusts a length field beyond `MESSAGE_BYTES_MAX`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_V3 = 196608            # 3.0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
STARTUP_BYTES_MAX = 10_000      # a startup packet is small; a huge one is an attack or garbage
MESSAGE_BYTES_MAX = 64 << 20    # one message (a COPY chunk, a huge query) at most 64 MiB


class ProtocolViolation(Exception):
    """The client sent something that is not protocol v3; SQLSTATE 08P01."""


# ---------------------------------------------------------------- frontend messages

@dataclass(frozen=True, slots=True)
class Startup:
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSEncRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class Query:
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str   # 'S' statement, 'P' portal
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    rows_max: int   # 0: all


@dataclass(frozen=True, slots=True)
class Close:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class Terminate:
    pass


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    pass


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """'p': a password, SASLInitialResponse or SASLResponse; its meaning depends on the auth step."""
    data: bytes


class Reader:
    """Reads fields from one message body; running past its end is a protocol violation."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolViolation("message shorter than its fields")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return struct.unpack("!h", self._take(2))[0]

    def uint16(self) -> int:
        return struct.unpack("!H", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack("!i", self._take(4))[0]

    def uint32(self) -> int:
        return struct.unpack("!I", self._take(4))[0]

    def byte(self) -> str:
        return self._take(1).decode("latin-1")

    def cstr(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation("string not terminated")
        raw = self.buf[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("string is not valid UTF-8") from None

    def rest(self) -> bytes:
        out = self.buf[self.pos:]
        self.pos = len(self.buf)
        return out

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolViolation("message longer than its fields")


def _parse_typed(kind: str, body: bytes):
    r = Reader(body)
    if kind == "Q":
        msg = Query(r.cstr())
    elif kind == "P":
        name, sql = r.cstr(), r.cstr()
        msg = Parse(name, sql, tuple(r.uint32() for _ in range(r.uint16())))
    elif kind == "B":
        portal, statement = r.cstr(), r.cstr()
        formats = tuple(r.int16() for _ in range(r.uint16()))
        params = []
        for _ in range(r.uint16()):
            n = r.int32()
            params.append(None if n == -1 else r._take(n))
        result_formats = tuple(r.int16() for _ in range(r.uint16()))
        if any(f not in (0, 1) for f in formats + result_formats):
            raise ProtocolViolation("format codes are 0 (text) or 1 (binary)")
        msg = Bind(portal, statement, formats, tuple(params), result_formats)
    elif kind in ("D", "C"):
        which = r.byte()
        if which not in ("S", "P"):
            raise ProtocolViolation(f"{'Describe' if kind == 'D' else 'Close'} of {which!r}: expected S or P")
        msg = (Describe if kind == "D" else Close)(which, r.cstr())
    elif kind == "E":
        msg = Execute(r.cstr(), r.int32())
    elif kind == "S":
        msg = Sync()
    elif kind == "H":
        msg = Flush()
    elif kind == "X":
        msg = Terminate()
    elif kind == "d":
        msg = CopyData(r.rest())
    elif kind == "c":
        msg = CopyDone()
    elif kind == "f":
        msg = CopyFail(r.cstr())
    elif kind == "p":
        msg = AuthResponse(r.rest())
    else:
        raise ProtocolViolation(f"unknown message type {kind!r}")
    r.done()
    return msg


def _parse_startup(body: bytes):
    r = Reader(body)
    code = r.uint32()
    if code == SSL_REQUEST_CODE:
        msg = SSLRequest()
    elif code == GSSENC_REQUEST_CODE:
        msg = GSSEncRequest()
    elif code == CANCEL_REQUEST_CODE:
        msg = CancelRequest(r.uint32(), r.uint32())
    elif code == PROTOCOL_V3:
        params: dict[str, str] = {}
        while True:
            key = r.cstr()
            if not key:
                break
            params[key] = r.cstr()
        msg = Startup(params)
    elif code >> 16 == 3:
        raise ProtocolViolation(f"unsupported protocol 3.{code & 0xFFFF}: this server speaks 3.0")
    else:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    r.done()
    return msg


class FrontendParser:
    """Splits the client's byte stream into messages. Starts in the startup phase
    (untyped packets); `expect_typed()` switches to typed messages after startup."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.startup_phase = True

    def expect_typed(self) -> None:
        self.startup_phase = False

    def feed(self, data: bytes) -> list:
        self._buf += data
        out = []
        while True:
            msg = self._next()
            if msg is None:
                return out
            out.append(msg)
            if isinstance(msg, Startup | CancelRequest | SSLRequest | GSSEncRequest):
                # what follows depends on the answer (TLS bytes, or typed messages):
                # the caller feeds the rest again after acting on this one
                return out

    def take_buffered(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def _next(self):
        buf = self._buf
        if self.startup_phase:
            if len(buf) < 4:
                return None
            length = struct.unpack_from("!i", buf, 0)[0]
            if not 8 <= length <= STARTUP_BYTES_MAX:
                raise ProtocolViolation(f"invalid startup packet length {length}")
            if len(buf) < length:
                return None
            body = bytes(buf[4:length])
            del buf[:length]
            return _parse_startup(body)
        if len(buf) < 5:
            return None
        kind = chr(buf[0])
        length = struct.unpack_from("!i", buf, 1)[0]
        if not 4 <= length <= MESSAGE_BYTES_MAX:
            raise ProtocolViolation(f"invalid message length {length}")
        if len(buf) < 1 + length:
            return None
        body = bytes(buf[5:1 + length])
        del buf[:1 + length]
        return _parse_typed(kind, body)


# ---------------------------------------------------------------- backend messages

def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode("utf-8").replace(b"\0", b"") + b"\0"


def authentication_ok() -> bytes:
    return _msg(b"R", struct.pack("!i", 0))


def authentication_cleartext() -> bytes:
    return _msg(b"R", struct.pack("!i", 3))


def authentication_sasl(mechanisms: list[str]) -> bytes:
    return _msg(b"R", struct.pack("!i", 10) + b"".join(_cstr(m) for m in mechanisms) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", struct.pack("!i", 11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", struct.pack("!i", 12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack("!II", pid, secret))


def ready_for_query(status: str) -> bytes:
    assert status in ("I", "T", "E")
    return _msg(b"Z", status.encode())


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type_oid: int
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0
    table_oid: int = 0
    column_no: int = 0


def row_description(fields: list[Field]) -> bytes:
    body = struct.pack("!h", len(fields)) + b"".join(
        _cstr(f.name) + struct.pack("!ihihih", f.table_oid, f.column_no, f.type_oid, f.type_size,
                                    f.type_modifier, f.format)
        for f in fields)
    return _msg(b"T", body)


_pack_int16 = struct.Struct("!h").pack
_pack_int32 = struct.Struct("!i").pack


def data_row(values: list[bytes | None]) -> bytes:
    return data_rows([values], [_as_is] * len(values))


def _as_is(value: bytes | None) -> bytes | None:
    return value


def data_rows(rows, encoders: list) -> bytes:
    """DataRow messages for rows of values; encoders[i](value) -> bytes or None (NULL)."""
    count = _pack_int16(len(encoders))
    pack, null = _pack_int32, b"\xff\xff\xff\xff"
    out = []
    for row in rows:
        parts = [count]
        for encode, value in zip(encoders, row):
            raw = encode(value)
            if raw is None:
                parts.append(null)
            else:
                parts.append(pack(len(raw)))
                parts.append(raw)
        body = b"".join(parts)
        out.append(b"D" + pack(len(body) + 4) + body)
    return b"".join(out)


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def empty_query_response() -> bytes:
    return _msg(b"I")


def parse_complete() -> bytes:
    return _msg(b"1")


def bind_complete() -> bytes:
    return _msg(b"2")


def close_complete() -> bytes:
    return _msg(b"3")


def no_data() -> bytes:
    return _msg(b"n")


def portal_suspended() -> bytes:
    return _msg(b"s")


def parameter_description(oids: list[int]) -> bytes:
    return _msg(b"t", struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def copy_in_response(columns: int, binary: bool = False) -> bytes:
    fmt = 1 if binary else 0
    return _msg(b"G", struct.pack("!bh", fmt, columns) + struct.pack("!h", fmt) * columns)


def copy_out_response(columns: int, binary: bool = False) -> bytes:
    fmt = 1 if binary else 0
    return _msg(b"H", struct.pack("!bh", fmt, columns) + struct.pack("!h", fmt) * columns)


def copy_data(data: bytes) -> bytes:
    return _msg(b"d", data)


def copy_done() -> bytes:
    return _msg(b"c")


@dataclass
class PgError(Exception):
    """An error (or notice) for the client: SQLSTATE code, message and optional fields."""
    code: str
    message: str
    severity: str = "ERROR"
    detail: str = ""
    hint: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def fatal(self) -> bool:
        return self.severity in ("FATAL", "PANIC")


def _fields(e: PgError) -> bytes:
    parts = [b"S" + _cstr(e.severity), b"V" + _cstr(e.severity), b"C" + _cstr(e.code), b"M" + _cstr(e.message)]
    if e.detail:
        parts.append(b"D" + _cstr(e.detail))
    if e.hint:
        parts.append(b"H" + _cstr(e.hint))
    for k, v in e.extra.items():
        parts.append(k.encode()[:1] + _cstr(v))
    return b"".join(parts) + b"\0"


def error_response(e: PgError) -> bytes:
    return _msg(b"E", _fields(e))


def notice_response(e: PgError) -> bytes:
    return _msg(b"N", _fields(e))
