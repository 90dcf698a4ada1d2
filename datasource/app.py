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
import re
import time
import uuid
from binascii import a2b_qp
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
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
QUERY_PATHS = ("/v1/query/", "/v1/query")      # DeepFlow's, and without the slash
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


def _envelope_bytes(description: str, code: str = "INVALID_POST_DATA") -> bytes:
    return _json_bytes(envelope(status=code, description=description))


def _envelope_response(status: int, description: str, code: str = "INVALID_POST_DATA") -> Response:
    return Response(_envelope_bytes(description, code), status, media_type="application/json")


async def read_bounded(request: Request, limit: int, error: Callable[[str, int], Exception]) -> bytes:
    """The whole body, refusing (``error(message, 413)``) past ``limit`` bytes before reading more
    than that: a Content-Length over it, or a stream that goes past it."""
    return await receive_bounded(request.receive, request.headers.get("content-length", ""), limit, error)


async def receive_bounded(receive: Receive, content_length: str, limit: int,
                          error: Callable[[str, int], Exception]) -> bytes:
    """``read_bounded`` on the ASGI ``receive`` itself. Raises ClientDisconnect if the client left."""
    if content_length.isdigit() and int(content_length) > limit:
        raise error(f"request body is {int(content_length)} bytes, the limit is {limit}", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise error(f"request body is over {limit} bytes, the limit", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _read_body(request: Request) -> bytes:
    return await read_bounded(request, MAX_BODY_BYTES, BadRequest)


async def _form(scope: Scope, content_type: str, body: bytes) -> dict[str, list[str]]:
    """Form fields (url-encoded or multipart) of an already read body, each a list of values."""
    if content_type.startswith(URLENCODED):
        return _urlencoded(body)

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=0, max_fields=MAX_FORM_FIELDS,
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
    as UTF-8). Url-encoded is what Grafana and DeepFlow's clients send: a plain ASCII body with
    well-formed escapes has its %XX undone by binascii's quoted-printable decoder (C; ``=`` escaped
    first), ~3x faster than urllib's per-escape loop for a dashboard query's ~250 escapes; anything
    else (raw non-ASCII bytes, a broken escape) goes through urllib's parse_qsl, as before."""
    if body.isascii() and _BROKEN_ESCAPE.search(body) is None:
        if body.count(b"&") >= MAX_FORM_FIELDS:        # as parse_qsl counts them
            raise BadRequest("malformed form body: Max number of fields exceeded")
        pairs = [pair.partition(b"=")[::2] for pair in body.split(b"&") if pair]
        decoded = ((_unquote_plus(k), _unquote_plus(v)) for k, v in pairs)
    else:
        try:
            decoded = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError as e:
            raise BadRequest(f"malformed form body: {e}") from e
    fields: dict[str, list[str]] = {}
    for key, value in decoded:
        fields.setdefault(key, []).append(value)
    return fields


_BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _unquote_plus(raw: bytes) -> str:
    """+ → space and %XX → byte, then UTF-8 (bad sequences replaced), for ASCII with valid escapes."""
    if b"%" not in raw and b"+" not in raw:
        return raw.decode("ascii")
    return a2b_qp(raw.replace(b"+", b" ").replace(b"=", b"=3D").replace(b"%", b"=")).decode("utf-8", "replace")


async def _query_fields(scope: Scope, content_type: str, body: bytes) -> dict[str, str | None]:
    """DeepFlow reads form fields first and falls back to a JSON body when db and sql are empty."""
    data: dict[str, str | None] = dict.fromkeys(QUERY_FIELDS)
    if "json" not in content_type and body:
        form = await _form(scope, content_type, body)
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


class QueryLane:
    """``POST /v1/query/`` (and ``/v1/query``) straight to its handler, everything else to the
    Starlette app: the query endpoint is what every Grafana panel calls on each refresh, and
    Starlette's router and middleware stack cost it ~0.05 ms of the loop thread. Auth and request
    metrics wrap the lane, so both paths pass through them."""

    PATHS = frozenset(QUERY_PATHS)

    def __init__(self, app: ASGIApp, query: ASGIApp) -> None:
        self.app = app
        self.query = query

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.PATHS:
            await self.query(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _headers(scope: Scope, names: tuple[bytes, ...]) -> dict[bytes, str]:
    """The first value of each of ``names`` (lower case) in the request's headers, "" if absent."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        key = key.lower()
        if key in names and key not in found:
            found[key] = value.decode("latin-1")
    return {name: found.get(name, "") for name in names}


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON response as two ASGI messages, with the headers Starlette's Response would send."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"), *extra]})
    await send({"type": "http.response.body", "body": body})


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
               routes: Sequence[Route] = ()) -> ASGIApp:
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
        """POST /v1/query/ on the ASGI messages themselves (QueryLane sends it here past Starlette's
        router and middleware stack): with Starlette's Request, form parser and Response it cost
        ~0.5 ms of the loop thread a request here, a tenth of a small dashboard query."""
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        headers = _headers(scope, (b"content-type", b"content-length", b"x-language"))
        try:
            try:
                fmt = params.get("format", "")
                if fmt not in ("", "records"):
                    raise BadRequest(f"format: 'records' or leave it out (the DeepFlow envelope), got {fmt!r}")
                body = await receive_bounded(receive, headers[b"content-length"], MAX_BODY_BYTES, BadRequest)
                data = await _query_fields(scope, headers[b"content-type"], body)
                sql = (data["sql"] or "").strip()
                if not sql:
                    raise BadRequest("sql is required")
            except BadRequest as e:
                api.errors.labels("refused").inc()
                return await _send_json(send, e.status, _envelope_bytes(str(e)))
            status, payload, kind = await WORKERS.run(
                run_query, sql, data["db"] or None, data["data_precision"] or None,
                raw=params.get("simple_sql", "").lower() == "true", debug=params.get("debug", "").lower() == "true",
                language=_language(headers[b"x-language"]), records=fmt == "records")
        except ClientDisconnect:
            return
        except WorkersBusy as e:
            api.errors.labels("busy").inc()
            return await _send_json(send, 503, _envelope_bytes(str(e), "SERVER_ERROR"), [(b"retry-after", b"1")])
        except Exception as e:      # a bug here must still answer with the envelope, as the worker's do
            log.exception("query request failed unexpectedly")
            api.errors.labels("internal").inc()
            return await _send_json(send, 500, _envelope_bytes(f"internal error: {type(e).__name__}: {e}", "FAIL"))
        if kind:
            api.errors.labels(kind).inc()
        await _send_json(send, status, payload)

    async def grafana_topology(request: Request) -> Response:
        try:
            params: dict[str, list[str]] = {}
            for k, v in request.query_params.multi_items():
                params.setdefault(k, []).append(v)
            if request.method == "POST":
                form = await _form(request.scope, request.headers.get("content-type", ""), await _read_body(request))
                for k, v in form.items():
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

    web = Starlette(routes=[
        # QueryLane answers POST before the router; the routes list the endpoint (405 for other
        # methods, /openapi.json)
        *(Route(path, AsgiEndpoint(query), methods=["POST"]) for path in QUERY_PATHS),
        Route("/v1/grafana/topology", grafana_topology, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/health/", healthz, methods=["GET"]),
        Route("/metrics", prom, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *routes,
    ], exception_handlers={HTTPException: not_routed, WorkersBusy: busy})
    app: ASGIApp = QueryLane(web, query)
    if token:
        app = BearerAuth(app, token=token)
    return RequestMetrics(app, api, endpoints)
