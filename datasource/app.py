"""The datasource HTTP API (Starlette), built by ``create_app`` with everything it needs passed in.

* ``POST /v1/query/`` — DeepFlow's querier: form ``db``/``sql``/``data_precision`` (JSON body as a
  fallback), ``?debug=true``, ``X-Language``; ``?format=records`` answers ``[{column: value}, …]``
  for Grafana Infinity's backend parsers; ``?simple_sql=true`` runs guarded ClickHouse SQL.
* ``GET|POST /v1/grafana/topology`` — Grafana Node Graph nodes and edges (datasource/topology.py).
* ``GET /healthz`` (and DeepFlow's ``/v1/health/``), ``GET /metrics``, ``GET /openapi.json``.

Optional bearer-token auth wraps everything but ``/healthz`` (datasource/auth.py).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datasource import openapi, topology
from datasource.auth import BearerAuth
from datasource.engine import envelope
from datasource.guard import MAX_SQL_BYTES, QueryRejected, check_input
from datasource.selfmetrics import ApiMetrics, error_kind
from datasource.worker import WORKERS, WorkersBusy

log = logging.getLogger(__name__)

# Form encoding can triple a query's size (%XX), plus the other fields.
MAX_BODY_BYTES = 3 * MAX_SQL_BYTES + (16 << 10)
QUERY_FIELDS = ("db", "sql", "data_precision")
MAX_FORM_FIELDS = 256
URLENCODED = "application/x-www-form-urlencoded"
ENDPOINTS = {"/v1/query/": "/v1/query/", "/v1/query": "/v1/query/", "/v1/grafana/topology": "/v1/grafana/topology",
             "/healthz": "/healthz", "/v1/health/": "/v1/health/", "/metrics": "/metrics",
             "/openapi.json": "/openapi.json"}


class BadRequest(Exception):
    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.status = status


def _json_bytes(obj) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse writes it, done in the worker thread. orjson
    encodes a 1000-row answer ~10x faster than the json module (~0.15 ms instead of ~2 ms); what it
    refuses (integers past 64 bits, non-text keys) goes through the json module."""
    try:
        return orjson.dumps(obj)
    except TypeError:       # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def _envelope_response(status: int, description: str, code: str = "INVALID_POST_DATA") -> Response:
    return Response(_json_bytes(envelope(status=code, description=description)), status,
                    media_type="application/json")


async def read_bounded(request: Request, limit: int, error: Callable[[str, int], Exception]) -> bytes:
    """The whole body, refusing (``error(message, 413)``) past ``limit`` bytes before reading more
    than that: a Content-Length over it, or a stream that goes past it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise error(f"request body is {int(length)} bytes, the limit is {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise error(f"request body is over {limit} bytes, the limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_body(request: Request) -> bytes:
    return await read_bounded(request, MAX_BODY_BYTES, BadRequest)


async def _form(request: Request, body: bytes) -> dict[str, list[str]]:
    """Form fields (url-encoded or multipart) of an already read body, each a list of values."""
    if request.headers.get("content-type", "").startswith(URLENCODED):
        return _urlencoded(body)

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=0, max_fields=MAX_FORM_FIELDS,
                                                         max_part_size=MAX_BODY_BYTES)
    except Exception as e:      # python-multipart and Starlette raise several types for bad bodies
        raise BadRequest(f"malformed form body: {e}") from e
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            raise BadRequest(f"form field {key!r}: files are not accepted")
        fields.setdefault(key, []).append(value)
    return fields


def _urlencoded(body: bytes) -> dict[str, list[str]]:
    """An url-encoded form's fields as Starlette reads them (bytes as latin-1, then + and %XX undone
    as UTF-8), split by urllib: a third of the time of Starlette's streaming parser for a dashboard
    query. Url-encoded is what Grafana and DeepFlow's clients send."""
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as e:
        raise BadRequest(f"malformed form body: {e}") from e
    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        fields.setdefault(key, []).append(value)
    return fields


async def _query_fields(request: Request, body: bytes) -> dict[str, str | None]:
    """DeepFlow reads form fields first and falls back to a JSON body when db and sql are empty."""
    data: dict[str, str | None] = dict.fromkeys(QUERY_FIELDS)
    if "json" not in request.headers.get("content-type", "") and body:
        form = await _form(request, body)
        data.update({k: form[k][0] for k in QUERY_FIELDS if form.get(k)})
    if not data["sql"] and not data["db"] and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            for k in QUERY_FIELDS:
                v = parsed.get(k)
                if v is not None and not isinstance(v, str):
                    raise BadRequest(f"{k} must be a string, got {type(v).__name__}")
                data[k] = v if v is not None else data[k]
    return data


def _language(header: str | None) -> str:
    """X-Language: zh* (DeepFlow also says ch) → zh, anything else → en."""
    h = (header or "").strip().lower()
    return "zh" if h.startswith(("zh", "ch")) else "en"


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _records(body: dict) -> list[dict]:
    res = body.get("result") or {}
    columns = res.get("columns") or []
    return [dict(zip(columns, row, strict=False)) for row in res.get("values") or []]


class AsgiEndpoint:
    """A bare ASGI function as a Route's endpoint: Starlette calls objects as they are and wraps only
    functions in its Request/Response adapter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class RequestMetrics:
    """Counts every HTTP request by endpoint and status and times it; 401s count as auth errors."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, endpoints: dict[str, str] = ENDPOINTS) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints      # path → label; anything else is "other" (bounded label values)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.endpoints.get(scope["path"], "other")
        status = 500
        t0 = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status == 401:
                self.metrics.errors.labels("auth").inc()


def create_app(engine, *, metrics: Callable[[], bytes] | None = None, health: Callable[[], dict] | None = None,
               token: str | None = None, api_metrics: ApiMetrics | None = None,
               routes: Sequence[Route] = ()) -> Starlette:
    """``engine``: a datasource.engine.QueryEngine (``query`` = DeepFlow SQL, ``query_raw`` = guarded
    ClickHouse SQL when it has one). ``metrics``: more Prometheus text for /metrics (the collector's
    in ``flowscope up``). ``token``: require ``Authorization: Bearer <token>``. ``routes``: more
    endpoints to serve (e.g. datasource.alerts.routes), behind the same auth and metrics and listed
    in /openapi.json. The engine's client is wrapped to time its queries into the ClickHouse histogram."""
    api = api_metrics or ApiMetrics()
    endpoints = {**ENDPOINTS, **{r.path: r.path for r in routes}}
    if getattr(engine, "client", None) is not None:
        engine.client = api.timed(engine.client)
    query_dialect = engine.query
    query_raw = getattr(engine, "query_raw", None) or engine.query   # an engine with one (guarded) path
    with_language = _accepts(query_dialect, "language")

    def run_query(sql: str, db: str | None, precision: str | None, *, raw: bool, debug: bool, language: str,
                  records: bool) -> tuple[int, bytes, str | None]:
        """In a worker thread: check, translate, execute, encode. (status, JSON bytes, error kind)."""
        try:
            check_input(sql)
            if raw:
                status, body = query_raw(sql, db, precision, debug=debug)
            elif with_language:
                status, body = query_dialect(sql, db, precision, debug=debug, language=language)
            else:
                status, body = query_dialect(sql, db, precision, debug=debug)
        except QueryRejected as e:
            status, body = 400, envelope(status="INVALID_POST_DATA", description=str(e))
        except RecursionError:
            status, body = 400, envelope(status="INVALID_POST_DATA", description="sql is nested too deeply to parse")
        except Exception as e:
            log.exception("query failed unexpectedly: %.200s", sql)
            body = envelope(status="FAIL", description=f"internal error: {type(e).__name__}: {e}")
            return 500, _json_bytes(body), "internal"
        out = _records(body) if records and status == 200 else body
        return status, _json_bytes(out), error_kind(status, body)

    async def query(scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/query/ as a bare ASGI app, outside Starlette's request/response wrapper (with
        Starlette's form parser, ~0.4 ms a request here: a tenth of a small dashboard query)."""
        request = Request(scope, receive)
        params = request.query_params
        try:
            fmt = params.get("format", "")
            if fmt not in ("", "records"):
                raise BadRequest(f"format: 'records' or leave it out (the DeepFlow envelope), got {fmt!r}")
            data = await _query_fields(request, await _read_body(request))
        except BadRequest as e:
            api.errors.labels("refused").inc()
            await _envelope_response(e.status, str(e))(scope, receive, send)
            return
        sql = (data["sql"] or "").strip()
        if not sql:
            api.errors.labels("refused").inc()
            await _envelope_response(400, "sql is required")(scope, receive, send)
            return
        status, payload, kind = await WORKERS.run(
            run_query, sql, data["db"] or None, data["data_precision"] or None,
            raw=params.get("simple_sql", "").lower() == "true", debug=params.get("debug", "").lower() == "true",
            language=_language(request.headers.get("x-language")), records=fmt == "records")
        if kind:
            api.errors.labels(kind).inc()
        await Response(payload, status, media_type="application/json")(scope, receive, send)

    async def grafana_topology(request: Request) -> Response:
        try:
            params: dict[str, list[str]] = {}
            for k, v in request.query_params.multi_items():
                params.setdefault(k, []).append(v)
            if request.method == "POST":
                for k, v in (await _form(request, await _read_body(request))).items():
                    params.setdefault(k, []).extend(v)
            debug = any(v.lower() == "true" for v in params.get("debug", ()))
            req = topology.parse(params)
        except (BadRequest, topology.TopologyError) as e:
            api.errors.labels("refused").inc()
            return _envelope_response(getattr(e, "status", 400), str(e))

        def work() -> tuple[int, bytes]:
            sql = topology.build_sql(req)
            t0 = time.perf_counter()
            entry = {"IP": "", "Sql": sql, "QueryTime": "", "QueryUUID": str(uuid.uuid4()), "Error": "",
                     "parameters": req.parameters}
            try:
                rows = topology.run(engine, req, sql)
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                entry.update(QueryTime=f"{time.perf_counter() - t0:.9f}s", Error=msg)
                return 500, _json_bytes(envelope(status="FAIL", description=msg, debug={"query_sqls": [entry]}))
            entry["QueryTime"] = f"{time.perf_counter() - t0:.9f}s"
            out = topology.shape(req, rows)
            if debug:
                out["debug"] = {"query_sqls": [entry]}
            return 200, _json_bytes(out)

        status, payload = await WORKERS.run(work)
        if status != 200:
            api.errors.labels("clickhouse").inc()
        return Response(payload, status, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", **(health() if health else {})})

    async def prom(request: Request) -> Response:
        body = api.text() + (metrics() if metrics else b"")
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    extra_paths = [(r.path, sorted((r.methods or set()) - {"HEAD"}), inspect.getdoc(r.endpoint) or r.path)
                   for r in routes]

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi.document(extra_paths))

    async def not_routed(request: Request, exc: HTTPException) -> Response:
        """Unknown paths and methods answer with the envelope too, not Starlette's plain text."""
        if exc.status_code == 404:
            return _envelope_response(404, f"no such endpoint: {request.url.path} (see /openapi.json)",
                                      "RESOURCE_NOT_FOUND")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return _envelope_response(405, f"method {request.method} is not allowed on {request.url.path} "
                                           f"(allowed: {allowed})")
        return _envelope_response(exc.status_code, str(exc.detail))

    async def busy(request: Request, exc: Exception) -> Response:
        """The worker pool is full (datasource.worker.MAX_PENDING): refuse now instead of queueing."""
        api.errors.labels("busy").inc()
        response = _envelope_response(503, str(exc), "SERVER_ERROR")
        response.headers["Retry-After"] = "1"
        return response

    middleware = [Middleware(RequestMetrics, metrics=api, endpoints=endpoints)]
    if token:
        middleware.append(Middleware(BearerAuth, token=token))
    return Starlette(routes=[
        Route("/v1/query/", AsgiEndpoint(query), methods=["POST"]),
        Route("/v1/query", AsgiEndpoint(query), methods=["POST"]),
        Route("/v1/grafana/topology", grafana_topology, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/health/", healthz, methods=["GET"]),
        Route("/metrics", prom, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *routes,
    ], middleware=middleware, exception_handlers={HTTPException: not_routed, WorkersBusy: busy})
