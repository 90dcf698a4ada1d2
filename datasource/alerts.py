"""Alert notifications from Grafana: ``POST /v1/alerts/webhook`` stores them, ``GET /v1/alerts`` lists them.

Grafana's webhook contact point (provisioned by ``flowscope dashboards build``) posts one JSON
document per notification: ``{receiver, status, alerts: [{status, labels, annotations, startsAt,
endsAt, values, fingerprint, generatorURL, …}], groupLabels, commonLabels, groupKey, title, …}``.
Each is kept as received, with the time it arrived, in a bounded store: the newest ``max_items`` in
memory and, when a file is given, in an append-only JSON-lines file compacted back to the newest
``max_items`` when it grows past twice that (so a restart keeps the history and the disk use stays
bounded).

``routes(store)`` returns the Starlette routes; ``create_app`` mounts them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20          # Grafana truncates large groups (truncatedAlerts); 1 MiB is plenty
DEFAULT_MAX_ITEMS = 1000
ALERT_FIELDS = ("status", "labels", "annotations", "startsAt", "endsAt", "values", "valueString",
                "fingerprint", "generatorURL", "dashboardURL", "panelURL", "silenceURL")
NOTIFICATION_FIELDS = ("receiver", "status", "groupKey", "groupLabels", "commonLabels", "commonAnnotations",
                       "externalURL", "title", "state", "message", "truncatedAlerts", "orgId")


class InvalidNotification(ValueError):
    """The body is not a Grafana/Alertmanager webhook notification; the message says why."""


def parse_notification(body: bytes) -> dict[str, Any]:
    """The stored form of one webhook body: its known fields, each alert's known fields."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidNotification(f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidNotification(f"a JSON object expected, got {type(doc).__name__}")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise InvalidNotification("'alerts' must be a list of objects (Grafana's webhook payload)")
    status = doc.get("status")
    if status not in ("firing", "resolved"):
        raise InvalidNotification(f"'status' must be 'firing' or 'resolved', got {status!r}")
    out = {k: doc[k] for k in NOTIFICATION_FIELDS if k in doc}
    out["alerts"] = [{k: a[k] for k in ALERT_FIELDS if k in a} for a in alerts]
    return out


class AlertStore:
    """The newest ``max_items`` notifications, optionally persisted to ``path`` (JSON lines)."""

    def __init__(self, path: Path | str | None = None, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.path = Path(path) if path else None
        self.max_items = max_items
        self._items: deque[dict] = deque(maxlen=max_items)
        self._lines_on_disk = 0
        self._next_id = 1
        self._lock = threading.Lock()
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        skipped = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                skipped += 1         # a line cut by a crash mid-write: the rest is still good
                continue
            if isinstance(item, dict):
                self._items.append(item)
                self._next_id = max(self._next_id, int(item.get("id", 0)) + 1)
            self._lines_on_disk += 1
        if skipped:
            log.warning("alert store %s: skipped %d unreadable lines", self.path, skipped)

    def add(self, notification: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        with self._lock:
            item = {"id": self._next_id, "received_at": round(time.time() if now is None else now, 3),
                    **notification}
            self._next_id += 1
            self._items.append(item)
            if self.path is not None:
                self._append(item)
            return item

    def _append(self, item: dict) -> None:
        line = json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self._lines_on_disk + 1 > 2 * self.max_items:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(json.dumps(i, ensure_ascii=False, separators=(",", ":")) + "\n"
                                   for i in self._items), encoding="utf-8")
            tmp.replace(self.path)
            self._lines_on_disk = len(self._items)
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
        self._lines_on_disk += 1

    def list(self, *, limit: int = 100, status: str | None = None, alertname: str | None = None) -> list[dict]:
        """Newest first; ``status`` and ``alertname`` keep notifications with a matching alert."""
        with self._lock:
            items = list(self._items)
        out = []
        for item in reversed(items):
            if status and item.get("status") != status:
                continue
            if alertname and not any(a.get("labels", {}).get("alertname") == alertname
                                     for a in item.get("alerts", [])):
                continue
            out.append(item)
            if len(out) >= limit:
                break
        return out

    def __len__(self) -> int:
        return len(self._items)


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse({"OPT_STATUS": "INVALID_POST_DATA", "DESCRIPTION": description, "result": None,
                         "debug": None}, status)


def routes(store: AlertStore) -> list[Route]:
    """``POST /v1/alerts/webhook`` and ``GET /v1/alerts`` over ``store``."""

    async def webhook(request: Request) -> JSONResponse:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, f"notification is {int(length)} bytes, the limit is {MAX_BODY_BYTES}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _error(413, f"notification is over {MAX_BODY_BYTES} bytes, the limit")
        try:
            item = store.add(parse_notification(body))
        except InvalidNotification as e:
            return _error(400, str(e))
        return JSONResponse({"OPT_STATUS": "SUCCESS", "DESCRIPTION": "", "result": {"id": item["id"]}})

    async def listing(request: Request) -> JSONResponse:
        params = request.query_params
        limit = params.get("limit", str(min(100, store.max_items)))
        if not limit.isdigit() or not 1 <= int(limit) <= store.max_items:
            return _error(400, f"limit: an integer from 1 to {store.max_items}, got {limit!r}")
        status = params.get("status") or None
        if status not in (None, "firing", "resolved"):
            return _error(400, f"status: 'firing' or 'resolved', got {status!r}")
        items = store.list(limit=int(limit), status=status, alertname=params.get("alertname") or None)
        return JSONResponse({"OPT_STATUS": "SUCCESS", "DESCRIPTION": "",
                             "result": {"notifications": items, "total": len(store)}})

    return [Route("/v1/alerts/webhook", webhook, methods=["POST"]),
            Route("/v1/alerts", listing, methods=["GET"])]
