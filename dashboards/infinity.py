"""Grafana Infinity queries that post DeepFlow's form to flowscope's ``/v1/query/?format=records``.

One query is one DeepFlow statement (``db``, ``data_precision``, ``sql``) plus the columns Infinity
turns into a data frame. The form travels as a *raw* ``application/x-www-form-urlencoded`` body
(``url_options.data``), not as Infinity's ``body_form`` list: Grafana interpolates dashboard
variables in ``data`` and Infinity's backend applies its time macros (``${__timeFrom:date:seconds}``)
to ``data`` but not to ``body_form`` (grafana-infinity-datasource pkg/models/macros.go
``ApplyMacros``), and alert rules only ever see the backend macros. So the body is the url-encoded form
with the SQL's ``${…}`` / ``$name`` references left as they are, for Grafana and Infinity to replace.

The ``backend`` parser (server-side, so alert rules evaluate) reads the records array as rows; an
empty root selector is the whole array.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants

INFINITY_TYPE = "yesoreyeram-infinity-datasource"
INFINITY_UID = "flowscope-infinity"
JAEGER_TYPE = "jaeger"
JAEGER_UID = "flowscope-jaeger"
QUERY_URL = "/v1/query/?format=records"
PARSER = "backend"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Grafana template references: ${name}, ${name:format}, $name, [[name]] (kept unencoded in the body).
# Only what form decoding changes is percent-encoded (%, &, +, and control characters), so the SQL
# stays readable in Grafana's query editor.
FORM_SAFE = " !\"#'()*,/:;<=>?@[]^`{|}$"
TEMPLATE_REF = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]\w*|\[\[[^\]]*\]\]")

# Infinity column types used here (grafana-integration.md §3a).
STRING, NUMBER, EPOCH_S = "string", "number", "timestamp_epoch_s"


@dataclass(frozen=True)
class Column:
    """One field of the frame: ``name`` is the record key (the SQL alias) and the field name."""

    name: str
    type: str = STRING

    def to_json(self) -> dict[str, str]:
        return {"selector": self.name, "text": self.name, "type": self.type}


def form_body(db: str, sql: str, precision: str | None) -> str:
    """DeepFlow's form (``db``, ``data_precision``, ``sql``) url-encoded, template references kept."""
    fields = [("db", db)] + ([("data_precision", precision)] if precision else []) + [("sql", sql)]
    return "&".join(f"{k}={_encode_keeping_refs(v)}" for k, v in fields)


def _encode_keeping_refs(text: str) -> str:
    out, pos = [], 0
    for m in TEMPLATE_REF.finditer(text):
        out.append(quote(text[pos:m.start()], safe=FORM_SAFE))
        out.append(m.group(0))
        pos = m.end()
    out.append(quote(text[pos:], safe=FORM_SAFE))
    return "".join(out)


def datasource_ref() -> dict[str, str]:
    return {"type": INFINITY_TYPE, "uid": INFINITY_UID}


def model(ref_id: str, db: str, sql: str, columns: tuple[Column, ...], *, precision: str | None = "1m",
          fmt: str = "table") -> dict[str, Any]:
    """The Infinity query model (grafana-infinity-datasource src/types/query.types.ts)."""
    return {
        "refId": ref_id,
        "datasource": datasource_ref(),
        "type": "json",
        "source": "url",
        "parser": PARSER,
        "format": fmt,
        "root_selector": "",
        "url": QUERY_URL,
        "url_options": {
            "method": "POST",
            "body_type": "raw",
            "body_content_type": FORM_CONTENT_TYPE,
            "data": form_body(db, sql, precision),
            "params": [],
            "headers": [],
        },
        "columns": [c.to_json() for c in columns],
        "filters": [],
    }


TRACING_URL = "/v1/stats/querier/L7FlowTracing"
JSON_CONTENT_TYPE = "application/json"


def tracing_model(ref_id: str, trace_id: str, columns: tuple[Column, ...]) -> dict[str, Any]:
    """DeepFlow's L7FlowTracing as an Infinity query: the JSON body deepflow-app takes (the trace id
    a JSON string through Grafana's ``json`` format, the range from Infinity's backend macros), the
    spans read from ``DATA.tracing`` (one root selector for the gjson and JSONata parsers)."""
    body = ('{"DATABASE": "flow_log", "TABLE": "l7_flow_log", "MAX_ITERATION": 30, '
            f'"trace_id": {trace_id}, "TIME_START": ${{__timeFrom:date:seconds}}, '
            '"TIME_END": ${__timeTo:date:seconds}}')
    return {
        "refId": ref_id, "datasource": datasource_ref(), "type": "json", "source": "url", "parser": PARSER,
        "format": "table", "root_selector": "DATA.tracing", "url": TRACING_URL,
        "url_options": {"method": "POST", "body_type": "raw", "body_content_type": JSON_CONTENT_TYPE,
                        "data": body, "params": [], "headers": []},
        "columns": [c.to_json() for c in columns], "filters": [],
    }


def variable_query(db: str, sql: str, *, value: str = "display_name", text: str = "display_name") -> dict[str, Any]:
    """An Infinity variable query: DeepFlow's ``value`` / ``display_name`` rows become Grafana's
    ``__value`` / ``__text`` (Infinity ≥1.4 reads those field names)."""
    q = model("variable", db, sql, (), precision=None)
    q["columns"] = [{"selector": value, "text": "__value", "type": STRING},
                    {"selector": text, "text": "__text", "type": STRING}]
    return {"queryType": "infinity", "infinityQuery": q, "refId": "variable"}


class InfinityQuery(cogvariants.Dataquery):
    """A panel target for the foundation SDK: the Infinity model as a plain dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_json(self) -> dict[str, Any]:
        return self.data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(dict(data))


class Query(cogbuilder.Builder[InfinityQuery]):
    def __init__(self, data: dict[str, Any]) -> None:
        self._internal = InfinityQuery(data)

    def build(self) -> InfinityQuery:
        return self._internal


class JaegerQuery(InfinityQuery):
    """A target of Grafana's built-in Jaeger datasource (no query type: a trace by id)."""


def jaeger_target(ref_id: str, trace_id: str) -> Query:
    return Query({"refId": ref_id, "datasource": {"type": JAEGER_TYPE, "uid": JAEGER_UID}, "query": trace_id})


def register() -> None:
    """Let the SDK's ``from_json`` rebuild our targets (Panel.from_json picks a variant by datasource type)."""
    cogruntime.Runtime().register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=INFINITY_TYPE, from_json_hook=InfinityQuery.from_json))
    cogruntime.Runtime().register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=JAEGER_TYPE, from_json_hook=JaegerQuery.from_json))
