"""The PostgreSQL front end's pure parts: message codec, SCRAM, types, SQL translation."""

from __future__ import annotations

import base64
import decimal
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sixfold.nodes.compute.pgwire import messages as M
from sixfold.nodes.compute.pgwire import pgtypes as T
from sixfold.nodes.compute.pgwire.scram import ScramExchange, ScramFailed, ScramVerifier
from sixfold.nodes.compute.pgwire.translate import split_statements, translate


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def startup(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", M.PROTOCOL_V3) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                                       for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


# ---------------------------------------------------------------- codec


def test_parser_splits_a_stream_fed_byte_by_byte():
    p = M.FrontendParser()
    data = startup({"user": "u", "database": "d"})
    got = []
    for i in range(len(data)):
        got += p.feed(data[i:i + 1])
    assert got == [M.Startup({"user": "u", "database": "d"})]
    p.expect_typed()
    stream = (typed(b"Q", b"SELECT 1\0") + typed(b"P", b"s1\0SELECT $1\0" + struct.pack("!hI", 1, 23))
              + typed(b"B", b"\0s1\0" + struct.pack("!hh", 1, 1) + struct.pack("!hi", 1, 4) + struct.pack("!i", 7)
                      + struct.pack("!hh", 1, 1))
              + typed(b"D", b"P\0") + typed(b"E", b"\0" + struct.pack("!i", 0)) + typed(b"S", b""))
    got = []
    for i in range(0, len(stream), 3):
        got += p.feed(stream[i:i + 3])
    assert got == [M.Query("SELECT 1"), M.Parse("s1", "SELECT $1", (23,)),
                   M.Bind("", "s1", (1,), (struct.pack("!i", 7),), (1,)), M.Describe("P", ""),
                   M.Execute("", 0), M.Sync()]


def test_parser_rejects_malformed_messages():
    p = M.FrontendParser()
    with pytest.raises(M.ProtocolViolation):
        p.feed(struct.pack("!ii", 8, 1234))                    # unknown protocol
    p = M.FrontendParser()
    with pytest.raises(M.ProtocolViolation):
        p.feed(struct.pack("!i", 2**30))                        # absurd startup length
    p = M.FrontendParser()
    p.expect_typed()
    with pytest.raises(M.ProtocolViolation):
        p.feed(typed(b"Q", b"no terminator"))
    p = M.FrontendParser()
    p.expect_typed()
    with pytest.raises(M.ProtocolViolation):
        p.feed(typed(b"Z", b""))                                # a backend message type
    p = M.FrontendParser()
    p.expect_typed()
    with pytest.raises(M.ProtocolViolation):
        p.feed(typed(b"B", b"\0\0" + struct.pack("!hh", 1, 7)))  # format code 7


@given(st.binary(max_size=300), st.booleans())
@settings(max_examples=400, deadline=None)
def test_parser_never_fails_otherwise_on_random_bytes(data, typed_phase):
    p = M.FrontendParser()
    if typed_phase:
        p.expect_typed()
    try:
        for i in range(0, len(data), 7):
            p.feed(data[i:i + 7])
    except M.ProtocolViolation:
        pass


def test_backend_messages_have_correct_lengths():
    for msg in (M.ready_for_query("I"), M.command_complete("SELECT 1"),
                M.row_description([M.Field("a", T.INT4, 4)]), M.data_row([b"1", None]),
                M.error_response(M.PgError("42P01", "no such table", detail="d"))):
        assert struct.unpack("!i", msg[1:5])[0] == len(msg) - 1


# ---------------------------------------------------------------- SCRAM


def test_scram_rfc7677_vector():
    # RFC 7677 section 3: user "user", password "pencil"
    verifier = ScramVerifier.from_password("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    exchange = ScramExchange(verifier, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = exchange.server_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = exchange.server_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                  b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_refuses_a_wrong_proof_and_channel_binding():
    verifier = ScramVerifier.from_password("pencil")
    exchange = ScramExchange(verifier)
    first = exchange.server_first(b"n,,n=,r=abc").decode()
    nonce = first.split(",")[0][2:]
    with pytest.raises(ScramFailed):
        exchange.server_final(f"c=biws,r={nonce},p={base64.b64encode(b'x' * 32).decode()}".encode())
    with pytest.raises(ScramFailed):
        ScramExchange(verifier).server_first(b"p=tls-server-end-point,,n=,r=abc")


# ---------------------------------------------------------------- types


@pytest.mark.parametrize("value", ["0", "1", "-3.25", "12345678901234567890.000001", "0.0001", "100000000"])
def test_numeric_binary_round_trip(value):
    encoded = T.encode_binary(T.NUMERIC, decimal.Decimal(value))
    decoded = T.decode_param(T.NUMERIC, 1, encoded)
    assert decimal.Decimal(str(decoded)) == decimal.Decimal(value) or abs(decoded - float(value)) < 1e-6


def test_parameters_decode_by_type():
    assert T.decode_param(T.INT4, 0, b"42") == 42
    assert T.decode_param(T.BOOL, 0, b"t") == 1 and T.decode_param(T.BOOL, 1, b"\x00") == 0
    assert T.decode_param(T.BYTEA, 0, b"\\x00ff") == b"\x00\xff"
    assert T.decode_param(T.TEXT, 0, b"'; DROP TABLE x; --") == "'; DROP TABLE x; --"
    assert T.decode_param(T.INT8, 1, struct.pack("!q", -5)) == -5
    with pytest.raises(M.PgError) as info:
        T.decode_param(T.INT4, 0, b"abc")
    assert info.value.code == "22P02"


def test_results_encode_by_type():
    assert T.encode_text(T.BOOL, 1) == b"t" and T.encode_text(T.BYTEA, b"\x01") == b"\\x01"
    assert T.encode_text(T.TIMESTAMPTZ, "2024-01-02 03:04:05") == b"2024-01-02 03:04:05+00"
    assert T.encode_binary(T.INT4, 7) == struct.pack("!i", 7)
    assert T.encode_text(T.INT4, None) is None


@pytest.mark.parametrize("oid, values", [
    (T.BPCHAR, ["abc", "", "\u00e9\u4e2d", 7, 2.5, b"raw", None]),
    (T.TEXT, ["x", 12, None]),
    (T.INT2, [0, -32768, 32767, "12", 3.0, None]),
    (T.INT4, [0, -2**31, 2**31 - 1, "5", None]),
    (T.INT8, [2**63 - 1, -2**63, 7, None]),
    (T.FLOAT8, [1.5, 3, None]),
])
def test_binary_result_encoders_give_what_encode_binary_gives(oid, values):
    encode = T.result_encoder(oid, binary=True)
    for value in values:
        assert encode(value) == T.encode_binary(oid, value), value


@pytest.mark.parametrize("oid, value", [(T.INT2, 2**15), (T.INT4, 2**31), (T.INT8, -2**63 - 1), (T.INT4, "x")])
def test_binary_result_encoders_refuse_what_encode_binary_refuses(oid, value):
    with pytest.raises(M.PgError) as fast:
        T.result_encoder(oid, binary=True)(value)
    with pytest.raises(M.PgError) as reference:
        T.encode_binary(oid, value)
    assert (fast.value.code, str(fast.value)) == (reference.value.code, str(reference.value)) == ("22P03", str(reference.value))


# ---------------------------------------------------------------- translation


def test_split_statements_respects_quotes_and_comments():
    assert split_statements("SELECT ';'; SELECT $$a;b$$ -- x;\n; /* ; */ SELECT \"a;\"") == [
        "SELECT ';'", "SELECT $$a;b$$ -- x;", "/* ; */ SELECT \"a;\""]
    assert split_statements(" ; -- only a comment") == []


def test_same_shape_statements_share_one_plan():
    plan1, lifted1 = translate("UPDATE acc SET bal = bal + 5 WHERE id = 7", lift_literals=True)
    plan2, lifted2 = translate("UPDATE acc SET bal = bal + 9 WHERE id = 3", lift_literals=True)
    assert plan1 is plan2 and lifted1 == (5, 7) and lifted2 == (9, 3)
    # a literal never becomes SQL text, whatever it holds
    plan3, lifted3 = translate("SELECT * FROM acc WHERE name = 'x'' OR ''1''=''1 -- DELETE'", lift_literals=True)
    assert plan3.sql == ("SELECT * FROM acc WHERE name = ?1",) and lifted3 == ("x' OR '1'='1 -- DELETE",)


def test_translation_of_ddl_keeps_postgres_types():
    plan, _ = translate("CREATE TABLE t (id bigserial PRIMARY KEY, ok boolean, at timestamptz, n numeric(5,2), "
                        "name varchar(10)) WITH (fillfactor=100)")
    assert plan.sql == ("CREATE TABLE t (id INTEGER PRIMARY KEY, ok BOOLEAN, at TIMESTAMPTZ, n DECIMAL(5, 2), "
                        "name VARCHAR(10))",)
    plan, _ = translate("drop table if exists a, b")
    assert plan.sql == ("DROP TABLE IF EXISTS a", "DROP TABLE IF EXISTS b")
    plan, _ = translate("alter table pgbench_accounts add primary key (aid)")
    assert plan.sql == ('CREATE UNIQUE INDEX "pgbench_accounts_pkey" ON pgbench_accounts (aid)',)


@pytest.mark.parametrize("sql", ["LISTEN x", "CREATE TABLE t (a int[])", "SELECT ARRAY[1]", "CREATE EXTENSION x",
                                 "CREATE TABLE t (a serial, b int PRIMARY KEY)", "COPY t TO '/etc/passwd'",
                                 "SELECT x::inet", "DROP TABLE t CASCADE"])
def test_unsupported_statements_are_refused_with_0A000(sql):
    with pytest.raises(M.PgError) as info:
        translate(sql)
    assert info.value.code == "0A000"
