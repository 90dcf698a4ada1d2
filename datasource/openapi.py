"""The OpenAPI 3.1 description served at ``GET /openapi.json`` — written by hand, kept honest by
tests/test_api.py (every route is described, every described path answers)."""

from __future__ import annotations

from collections.abc import Sequence

from datasource import topology
from datasource.guard import MAX_SQL_BYTES

_ENVELOPE = {
    "type": "object",
    "description": "DeepFlow's querier envelope. Errors keep the same shape with result and debug null "
                   "(debug carries the ClickHouse SQL when ClickHouse itself failed).",
    "required": ["OPT_STATUS", "DESCRIPTION", "result", "debug"],
    "properties": {
        "OPT_STATUS": {"type": "string", "enum": ["SUCCESS", "FAIL", "INVALID_POST_DATA", "UNAUTHORIZED",
                                                 "RESOURCE_NOT_FOUND"]},
        "DESCRIPTION": {"type": "string", "description": "empty on success, else what went wrong"},
        "result": {
            "type": ["object", "null"],
            "properties": {
                "columns": {"type": "array", "items": {"type": "string"}},
                "values": {"type": ["array", "null"], "items": {"type": "array"},
                           "description": "rows; null when there are none"},
                "schemas": {"type": "array", "items": {"type": "object", "properties": {
                    "unit": {"type": "string"}, "type": {"type": "integer", "description": "0 tag, 1 metric"},
                    "value_type": {"type": "string", "description": "ClickHouse type"},
                    "pre_as": {"type": "string"}, "label_type": {"type": "string"}}}},
            },
        },
        "debug": {
            "type": ["object", "null"],
            "properties": {"query_sqls": {"type": "array", "items": {"type": "object", "properties": {
                "IP": {"type": "string"}, "Sql": {"type": "string", "description": "the ClickHouse SQL that ran"},
                "QueryTime": {"type": "string", "example": "0.012345678s"}, "QueryUUID": {"type": "string"},
                "Error": {"type": "string"}}}}},
        },
    },
}

_QUERY_FORM = {
    "type": "object",
    "required": ["sql"],
    "properties": {
        "db": {"type": "string", "enum": ["flow_log", "flow_metrics", "flow_tag"],
               "description": "database of unqualified table names"},
        "sql": {"type": "string", "maxLength": MAX_SQL_BYTES,
                "description": f"one DeepFlow SQL statement (ClickHouse SQL with simple_sql=true); at most "
                               f"{MAX_SQL_BYTES} bytes and 32 levels of brackets"},
        "data_precision": {"type": "string", "enum": ["1s", "1m"],
                           "description": "flow_metrics tables: network → network.1m (default 1m)"},
    },
}

_ERRORS = {
    "400": {"description": "refused (INVALID_POST_DATA): not allowed, too large, bad parameter",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
    "401": {"description": "a token is configured and the request did not carry it (UNAUTHORIZED)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
    "500": {"description": "the SQL does not parse or translate, or ClickHouse failed it (FAIL)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
}


def _param(name: str, description: str, schema: dict | None = None, where: str = "query") -> dict:
    return {"name": name, "in": where, "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_TOPOLOGY_PARAMS = [
    _param("table", "which map: network_map (L4: mainStat bytes/s, errors = flows closed in error / closed "
                    "flows) or application_map (L7: mainStat requests/s, errors = (error + timeout) / requests)",
           {"type": "string", "enum": list(topology.TABLES), "default": "network_map"}),
    _param("group", "resource level of the nodes; ends without that resource are left out (ip, auto_* never)",
           {"type": "string", "enum": list(topology.RESOURCES), "default": "pod"}),
    _param("from", "start, epoch seconds (values above 1e11 are read as milliseconds); default to - 3600",
           {"type": "integer"}),
    _param("to", "end, epoch seconds (or milliseconds); default now", {"type": "integer"}),
    _param("data_precision", "1s or 1m table", {"type": "string", "enum": list(topology.PRECISIONS),
                                                "default": "1m"}),
    _param("limit", "at most this many edges, largest first", {"type": "integer", "minimum": 1,
                                                               "maximum": topology.MAX_LIMIT,
                                                               "default": topology.DEFAULT_LIMIT}),
    _param("secondary", "secondaryStat: average latency in ms (rtt or rrt) or the error ratio",
           {"type": "string", "enum": list(topology.SECONDARY), "default": "latency"}),
    _param("debug", "true: add debug.query_sqls with the ClickHouse SQL", {"type": "boolean"}),
    *(_param(f"{tag}{side}", f"only ends whose {tag} has one of these names (comma-separated or repeated); "
                              f"{'either end' if not side else 'client end' if side == '_0' else 'server end'}")
      for tag in topology.NAME_FILTERS for side in ("", "_0", "_1")),
    *(_param(f"ip{side}", "only these IP addresses (comma-separated or repeated)") for side in ("", "_0", "_1")),
    _param("observation_point", "only these observation points (c, s, rest, local, c-nd, …)"),
    _param("protocol", "IP protocol numbers or names (tcp, udp, icmp)"),
    _param("server_port", "server ports"),
    _param("l7_protocol", "application_map: L7 protocol numbers or names (HTTP, DNS, Redis, …)"),
]

_NODE = {"type": "object", "properties": {
    "id": {"type": "string", "example": "pod:4"}, "title": {"type": "string", "description": "resource name"},
    "subTitle": {"type": "string", "description": "namespace, cluster or resource kind"},
    "mainStat": {"type": "number", "description": "bytes/s or requests/s of every edge touching the node"},
    "secondaryStat": {"type": "number", "description": "latency of its answers in ms, or its error ratio"},
    "arc__errors": {"type": "number"}, "arc__ok": {"type": "number", "description": "arc__errors + arc__ok = 1"},
    "color": {"type": "string", "enum": ["green", "orange", "red"]},
    "detail__errors": {"type": "integer"}, "detail__error_ratio": {"type": "number"}}}
_EDGE = {"type": "object", "properties": {
    "id": {"type": "string", "example": "pod:1->pod:4"}, "source": {"type": "string"}, "target": {"type": "string"},
    "mainStat": {"type": "number", "description": "bytes/s (network_map) or requests/s (application_map)"},
    "secondaryStat": {"type": "number", "description": "average latency in ms, or the error ratio"},
    "detail__bytes": {"type": "integer"}, "detail__requests": {"type": "integer"},
    "detail__latency_ms": {"type": "number"}, "detail__errors": {"type": "integer"},
    "detail__error_ratio": {"type": "number"}, "detail__observation_point": {"type": "string"}}}

_TOPOLOGY_OP = {
    "summary": "Grafana Node Graph (Infinity formats node-graph-nodes / node-graph-edges, roots .nodes / .edges)",
    "parameters": _TOPOLOGY_PARAMS,
    "responses": {
        "200": {"description": "nodes and edges in Grafana's Node Graph field names",
                "content": {"application/json": {"schema": {"type": "object", "required": ["nodes", "edges"],
                                                             "properties": {
                                                                 "nodes": {"type": "array", "items": _NODE},
                                                                 "edges": {"type": "array", "items": _EDGE}}}}}},
        **_ERRORS,
    },
}


def document(extra: Sequence[tuple[str, list[str], str]] = ()) -> dict:
    """The description; ``extra``: (path, methods, docstring) of routes mounted beside the API."""
    query_op = {
        "summary": "DeepFlow querier: run one query",
        "description": "Form fields first (x-www-form-urlencoded or multipart); a JSON body {db, sql, "
                       "data_precision} when the form has neither db nor sql.",
        "parameters": [
            _param("debug", "true: include debug.query_sqls (the ClickHouse SQL, time, uuid)", {"type": "boolean"}),
            _param("format", "records: answer a JSON array of {column: value} objects (Grafana Infinity "
                             "backend parsers, root .[]); errors keep the envelope and status",
                   {"type": "string", "enum": ["records"]}),
            _param("simple_sql", "true: sql is plain ClickHouse SQL (one guarded SELECT over flowscope's "
                                 "tables) instead of DeepFlow SQL", {"type": "boolean"}),
            _param("X-Language", "en or zh: language of enum and display names", where="header"),
        ],
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": _QUERY_FORM},
            "multipart/form-data": {"schema": _QUERY_FORM},
            "application/json": {"schema": _QUERY_FORM}}},
        "responses": {
            "200": {"description": "the envelope, or records with format=records", "content": {"application/json": {
                "schema": {"oneOf": [{"$ref": "#/components/schemas/Envelope"},
                                     {"type": "array", "items": {"type": "object"}}]}}}},
            "413": {"description": "request body too large (INVALID_POST_DATA)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
            **_ERRORS,
        },
    }
    health = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}},
              "additionalProperties": True}
    paths = _paths(query_op, health)
    for path, methods, doc in extra:
        summary, _, description = doc.partition("\n")
        paths[path] = {m.lower(): {"summary": summary.strip(), "description": description.strip(),
                                   "responses": {"200": {"description": "see the description"},
                                                 "401": _ERRORS["401"]}} for m in methods}
    return {
        "openapi": "3.1.0",
        "info": {"title": "flowscope datasource", "version": "1",
                 "description": "DeepFlow-compatible querier API plus Grafana helpers. With a token configured "
                                "(--token, $FLOWSCOPE_TOKEN, datasource.token) every path but /healthz needs "
                                "Authorization: Bearer <token>."},
        "components": {
            "schemas": {"Envelope": _ENVELOPE},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


def _paths(query_op: dict, health: dict) -> dict:
    return {
        "/v1/query/": {"post": query_op},
        "/v1/query": {"post": {**query_op, "summary": "the same as /v1/query/"}},
        "/v1/grafana/topology": {"get": _TOPOLOGY_OP, "post": {
            **_TOPOLOGY_OP, "requestBody": {"content": {"application/x-www-form-urlencoded": {
                "schema": {"type": "object", "description": "the same parameters as the query string"}}}}}},
        "/healthz": {"get": {"summary": "liveness (never needs the token)", "security": [{}],
                             "responses": {"200": {"description": "alive", "content": {
                                 "application/json": {"schema": health}}}}}},
        "/v1/health/": {"get": {"summary": "liveness, DeepFlow's path", "responses": {
            "200": {"description": "alive", "content": {"application/json": {"schema": health}}},
            "401": _ERRORS["401"]}}},
        "/metrics": {"get": {"summary": "Prometheus metrics of the datasource (and the collector in "
                                        "`flowscope up`)", "responses": {
            "200": {"description": "Prometheus text format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": _ERRORS["401"]}}},
        "/openapi.json": {"get": {"summary": "this document", "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": {"type": "object"}}}},
            "401": _ERRORS["401"]}}},
    }
