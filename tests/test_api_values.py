"""The answer's values and bytes on the fast paths: results are converted column by column (columns
of text and integer types pass through untouched) and encoded with orjson — the same JSON values
as the row-by-row conversion and the json module give, for every ClickHouse type a query can return."""

from __future__ import annotations

import json

import pytest

from datasource.app import _json_bytes
from datasource.engine import QueryEngine, _value, envelope

# One row of every kind of value: text and integers pass through; floats (NaN/inf → 0), times
# (UTC ISO), addresses, fixed strings, arrays, maps and tuples are converted.
TYPED = ("SELECT 'héllo' AS s, toLowCardinality('lc') AS lc, CAST(NULL, 'Nullable(String)') AS ns, "
         "toInt64(-5) AS i64, toUInt64(18446744073709551615) AS u64, true AS b, "
         "CAST('a', 'Enum8(''a'' = 1, ''b'' = 2)') AS e, nan AS fnan, -inf AS finf, toFloat32(1.5) AS f32, "
         "CAST(NULL, 'Nullable(Float64)') AS nf, toNullable(2.25) AS nf2, toDateTime('2026-01-02 03:04:05', 'UTC') AS dt, "
         "toDate('2026-01-02') AS d, toDateTime64('2026-01-02 03:04:05.123456', 6, 'UTC') AS dt64, "
         "toIPv4('10.1.2.3') AS ip4, toIPv6('2001:db8::1') AS ip6, toFixedString('ab', 3) AS fs, "
         "[1.5, nan] AS arr, map('k', 1.5) AS m, tuple(1, 'x') AS tp, unhex('ff41') AS bad_utf8, "
         "toInt128(5) AS i128")


def reference(client, sql: str) -> list[list]:
    """The row-by-row conversion the columnar one replaces."""
    return [[_value(v) for v in row] for row in client.query(sql).result_rows]


@pytest.fixture
def engine(chdb):
    return QueryEngine(chdb)


def test_typed_values_match_the_row_by_row_conversion(engine, chdb):
    status, body = engine.query_raw(TYPED, None)
    assert status == 200, body
    values = body["result"]["values"]
    assert values == reference(chdb, TYPED)
    row = dict(zip(body["result"]["columns"], values[0], strict=True))
    assert (row["fnan"], row["finf"], row["nf"], row["dt"], row["ip6"], row["arr"], row["u64"]) == (
        0, 0, None, "2026-01-02T03:04:05Z", "2001:db8::1", [1.5, 0], 18446744073709551615)
    assert all(type(r) is list for r in values)


def test_many_rows_keep_their_order(engine, chdb):
    sql = ("SELECT n, toString(n) AS s, n / 4 AS f, toDateTime(n, 'UTC') AS t "
           "FROM (SELECT arrayJoin(range(2500)) AS n)")
    status, body = engine.query_raw(sql, None)
    assert status == 200
    assert body["result"]["values"] == reference(chdb, sql)
    assert body["result"]["values"][1234][:3] == [1234, "1234", 308.5]


def test_empty_answer(engine):
    status, body = engine.query_raw("SELECT arrayJoin(range(0)) AS n", None)
    assert status == 200 and body["result"]["values"] is None


def stdlib(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def test_json_bytes_as_the_json_module_writes_them(engine):
    status, body = engine.query_raw(TYPED.replace(", toInt128(5) AS i128", ""), None, debug=True)
    assert status == 200
    out = _json_bytes(body)
    assert json.loads(out) == json.loads(stdlib(body))
    # text, integers, null and booleans come out byte for byte as before (floats may differ in
    # notation only, e.g. 1e16 vs 1e+16)
    plain = envelope({"columns": ["a", "b"], "values": [["héllo \"q\" \\ \n\t/", 18446744073709551615],
                                                        [None, True], [-3, "中文"]], "schemas": []})
    assert _json_bytes(plain) == stdlib(plain)


def test_json_bytes_falls_back_for_what_orjson_refuses(engine):
    status, body = engine.query_raw("SELECT toInt128('170141183460469231731687303715884105727') AS big", None)
    assert status == 200
    assert _json_bytes(body) == stdlib(body)      # past 64 bits: the json module writes it
    assert json.loads(_json_bytes(body))["result"]["values"] == [[2 ** 127 - 1]]
    assert _json_bytes({1: "a"}) == b'{"1":"a"}'
