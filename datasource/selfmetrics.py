"""The datasource's own Prometheus metrics: requests by endpoint and status, request latency,
errors by kind and time spent in ClickHouse. One registry per app (no global state); ``text()``
is what ``GET /metrics`` serves, followed by the collector's metrics when both run in one process.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Why a request failed; every kind is exported from the start (at 0) so alert rules can use rate().
ERROR_KINDS = (
    "syntax",       # the SQL does not parse or translate (500 FAIL, ClickHouse not asked)
    "refused",      # the guard or a limit refused the request (4xx INVALID_POST_DATA)
    "clickhouse",   # ClickHouse failed the query (500 FAIL with the SQL that ran)
    "auth",         # missing or wrong bearer token (401)
    "internal",     # a bug: an exception the handlers did not expect (500 FAIL)
    "busy",         # too many requests already waiting for the worker threads (503)
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("flowscope_datasource_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("flowscope_datasource_request_seconds", "Time to answer an HTTP request",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("flowscope_datasource_errors", "Failed requests by kind", ["kind"],
                              registry=self.registry)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.clickhouse = Histogram("flowscope_datasource_clickhouse_seconds",
                                    "Time ClickHouse took per query the datasource sent",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def timed(self, client):
        """``client`` with its ``query`` calls timed into this registry's ClickHouse histogram (an
        already timed client gains this histogram: apps sharing an engine all see its queries)."""
        if client is None:
            return None
        if isinstance(client, TimedClient):
            if self.clickhouse not in client.histograms:
                client.histograms.append(self.clickhouse)
            return client
        return TimedClient(client, [self.clickhouse])


class TimedClient:
    """A pass-through to a clickhouse-connect client that observes how long each ``query`` takes."""

    def __init__(self, client, histograms: list[Histogram]) -> None:
        self._client = client
        self.histograms = histograms

    def query(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._client.query(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            for h in self.histograms:
                h.observe(elapsed)

    def __getattr__(self, name):
        return getattr(self._client, name)


def error_kind(status: int, body: dict) -> str | None:
    """Which ERROR_KINDS a /v1/query/ answer is, from its status and envelope (None: success)."""
    if status < 400:
        return None
    if status == 401:
        return "auth"
    if status < 500:
        return "refused"
    sqls = ((body or {}).get("debug") or {}).get("query_sqls") or []
    if any(q.get("Error") for q in sqls):
        return "clickhouse"
    return "syntax"
