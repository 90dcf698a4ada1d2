"""The datasource HTTP API (Starlette): DeepFlow's ``POST /v1/query/`` plus health and
Prometheus self-metrics. Built by ``create_app`` with everything it needs passed in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from datasource.engine import QueryEngine, envelope


async def _form_or_json(request: Request) -> dict:
    """DeepFlow reads form fields first and falls back to a JSON body when db and sql are empty."""
    ctype = request.headers.get("content-type", "")
    data: dict = {}
    if "json" not in ctype:
        form = await request.form()
        data = {k: form.get(k) for k in ("db", "sql", "data_precision", "datasource")}
    if not data.get("sql") and not data.get("db"):
        body = await request.body()
        if body:
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict):
                    data = {**data, **{k: parsed.get(k) for k in ("db", "sql", "data_precision")}}
            except ValueError:
                pass
    return data


def create_app(engine: QueryEngine, *, metrics: Callable[[], bytes] | None = None,
               health: Callable[[], dict] | None = None) -> Starlette:
    async def query(request: Request) -> Response:
        data = await _form_or_json(request)
        sql = (data.get("sql") or "").strip()
        if not sql:
            return JSONResponse(envelope(status="INVALID_POST_DATA", description="sql is required"), 400)
        debug = request.query_params.get("debug", "").lower() == "true"
        status, body = await asyncio.to_thread(engine.query, sql, data.get("db") or None,
                                               data.get("data_precision") or None, debug=debug)
        return JSONResponse(body, status)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", **(health() if health else {})})

    async def prom(request: Request) -> Response:
        body = metrics() if metrics else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[
        Route("/v1/query/", query, methods=["POST"]),
        Route("/v1/query", query, methods=["POST"]),
        Route("/v1/health/", healthz, methods=["GET"]),
        Route("/metrics", prom, methods=["GET"]),
    ])
