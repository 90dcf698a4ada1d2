"""A contract-test Kubernetes API server: the wire protocol of list and watch, nothing else.

No real API server (nor kind/minikube/etcd) can run on the build machine, so the tests of
``flowscope.metadata.kube`` drive the real ``kubernetes`` client against this stand-in. It speaks
what the client sees from kube-apiserver for the collection paths the watcher uses
(``/api/v1/{nodes,namespaces,pods,services}``, ``/apis/apps/v1/{replicasets,deployments,
statefulsets,daemonsets}``, ``/apis/batch/v1/{jobs,cronjobs}``,
``/apis/discovery.k8s.io/v1/endpointslices``) and reproduces these wire details:

* HTTP/1.1 with keep-alive; lists as ``{"kind": "PodList", "apiVersion": "v1", "metadata":
  {"resourceVersion": "…", "continue": "…", "remainingItemCount": n}, "items": [...]}`` with
  items in key order and without their own kind/apiVersion (as the real server returns them);
  ``limit`` / ``continue`` paging over a consistent snapshot, opaque base64 continue tokens, and
  410 ``Expired`` for a token older than the compacted history;
* one global, increasing resourceVersion (etcd's revision) shared by all resources, stamped on
  each object at every change;
* ``?watch=true`` (or ``1``) as a ``Transfer-Encoding: chunked`` stream, one JSON event
  ``{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": {...}}`` plus newline per chunk;
  ``resourceVersion`` resumes after that revision (unset or "0": synthetic ADDED events for the
  current state first), ``allowWatchBookmarks`` enables BOOKMARK events (an object of the
  watched kind holding only ``metadata.resourceVersion``), ``timeoutSeconds`` ends the stream
  cleanly with the terminating chunk;
* a resume from a compacted revision gets ``{"type": "ERROR", "object": {"kind": "Status",
  "code": 410, "reason": "Expired", "message": "too old resource version: X (Y)", …}}`` and
  the end of the stream, as the real server answers; ``fail_next`` answers a list or watch with
  an HTTP error status and a ``Status`` body instead (e.g. HTTP 410);
* an unknown path gets a 404 ``Status`` NotFound.

Test hooks: ``add`` / ``modify`` / ``delete`` change the state and push events to open watches,
``push_raw`` sends an arbitrary line (malformed events), ``expire_history`` compacts (the next
resume gets 410), ``bookmark`` sends BOOKMARKs at a newer revision, ``drop_connections`` cuts
open watches without the terminating chunk, ``stop`` / ``start`` take the server down and up on
the same port, and ``requests`` records (method, path, query) of every request received.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

CLUSTER_JSON = Path(__file__).parent / "data" / "k8s" / "cluster.json"


class Resource(NamedTuple):
    path: str
    kind: str
    api_version: str


RESOURCES = {
    "nodes": Resource("/api/v1/nodes", "Node", "v1"),
    "namespaces": Resource("/api/v1/namespaces", "Namespace", "v1"),
    "pods": Resource("/api/v1/pods", "Pod", "v1"),
    "services": Resource("/api/v1/services", "Service", "v1"),
    "replicasets": Resource("/apis/apps/v1/replicasets", "ReplicaSet", "apps/v1"),
    "deployments": Resource("/apis/apps/v1/deployments", "Deployment", "apps/v1"),
    "statefulsets": Resource("/apis/apps/v1/statefulsets", "StatefulSet", "apps/v1"),
    "daemonsets": Resource("/apis/apps/v1/daemonsets", "DaemonSet", "apps/v1"),
    "jobs": Resource("/apis/batch/v1/jobs", "Job", "batch/v1"),
    "cronjobs": Resource("/apis/batch/v1/cronjobs", "CronJob", "batch/v1"),
    "endpointslices": Resource("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice",
                               "discovery.k8s.io/v1"),
}
_BY_PATH = {r.path: name for name, r in RESOURCES.items()}
_BY_KIND = {r.kind: name for name, r in RESOURCES.items()}
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start "
    "a new list without the continue parameter, or use the continue token in this response to "
    "retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the first "
    "chunk was returned and now may show up in the list.")


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]

    @property
    def resource(self) -> str | None:
        return _BY_PATH.get(self.path)

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


def load_cluster(path: Path = CLUSTER_JSON) -> dict[str, list[dict]]:
    """The recorded objects, keyed by resource (tests/data/k8s/cluster.json)."""
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k in RESOURCES}


def status(code: int, reason: str, message: str) -> dict:
    """A ``Status`` object as the API server sends it with errors."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass(eq=False)
class _Watch:
    resource: str
    bookmarks: bool
    events: queue.Queue = field(default_factory=queue.Queue)


def _key(obj: Any, fallback: str) -> str:
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(md, dict) and isinstance(md.get("name"), str):
        ns = md.get("namespace")
        return f"{ns}/{md['name']}" if isinstance(ns, str) and ns else md["name"]
    return fallback


class KubeAPIServer:
    """The stand-in API server; see the module docstring. ``objects`` seed the state (resource
    name → list of objects), e.g. ``load_cluster()``."""

    def __init__(self, objects: dict[str, list[Any]] | None = None, *, first_rv: int = 1000) -> None:
        self._lock = threading.RLock()
        self._rv = first_rv
        self._objects: dict[str, dict[str, Any]] = {name: {} for name in RESOURCES}
        self._history: list[tuple[int, str, str, Any]] = []   # (rv, resource, type, object)
        self._snapshots: dict[int, dict[str, list[Any]]] = {}  # list rv → resource → items
        self._watches: set[_Watch] = set()
        self._fail: list[tuple[str, bool | None, int]] = []
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.requests: list[Request] = []
        for resource, items in (objects or {}).items():
            for obj in items:
                self._store(self._name(resource), obj, notify=False)
        self._compacted = self._rv      # history before the seeded state is gone

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubeAPIServer:
        """Listens on 127.0.0.1 (a random port the first time, the same port after a stop)."""
        api = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128    # many watches reconnect at once; 5 drops SYNs (1 s retry)

            def process_request(self, request: Any, client_address: Any) -> None:
                with api._lock:
                    api._conns.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with api._lock:
                    api._conns.discard(request)
                super().shutdown_request(request)

        class Handler(_Handler):
            server_api = api

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"k8s-api-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Takes the server down: no listener, every connection (watches included) cut."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self.drop_connections()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state changes (test hooks) ---------------------------------------------------------

    @staticmethod
    def _name(resource: str) -> str:
        return resource if resource in RESOURCES else _BY_KIND[resource]

    @property
    def resource_version(self) -> int:
        return self._rv

    def add(self, resource: str, obj: Any) -> int:
        """Creates (or replaces) an object and sends ADDED; returns its resourceVersion."""
        return self._store(self._name(resource), obj, "ADDED")

    def modify(self, resource: str, obj: Any) -> int:
        """Replaces an object and sends MODIFIED; returns its resourceVersion."""
        return self._store(self._name(resource), obj, "MODIFIED")

    def delete(self, resource: str, name: str, namespace: str = "", *,
               deletion_timestamp: str | None = None) -> int:
        """Removes an object and sends DELETED with its last state at a new resourceVersion
        (``deletion_timestamp`` sets metadata.deletionTimestamp, as a graceful delete does)."""
        resource = self._name(resource)
        with self._lock:
            obj = self._objects[resource].pop(f"{namespace}/{name}" if namespace else name)
            if deletion_timestamp is not None:
                obj["metadata"]["deletionTimestamp"] = deletion_timestamp
                obj["metadata"].setdefault("deletionGracePeriodSeconds", 0)
            return self._event(resource, "DELETED", obj)

    def get(self, resource: str, name: str, namespace: str = "") -> Any:
        """A copy of a stored object (to modify and send back)."""
        with self._lock:
            obj = self._objects[self._name(resource)][f"{namespace}/{name}" if namespace else name]
            return copy.deepcopy(obj)

    def push_raw(self, resource: str, line: str | bytes) -> None:
        """Sends one line as-is to the open watches of ``resource`` (for malformed events)."""
        data = line.encode() if isinstance(line, str) else line
        with self._lock:
            for w in self._watches:
                if w.resource == self._name(resource):
                    w.events.put(("raw", data))

    def expire_history(self) -> int:
        """Compacts history: watches resuming from any revision seen so far get 410 Expired (the
        revision moves on, as other writes would move it, so a fresh list can be watched)."""
        with self._lock:
            self._rv += 1
            self._compacted = self._rv
            self._history.clear()
            self._snapshots.clear()
            return self._rv

    def bookmark(self) -> int:
        """Sends a BOOKMARK at a new revision to every open watch that allowed bookmarks."""
        with self._lock:
            self._rv += 1
            for w in self._watches:
                if w.bookmarks:
                    r = RESOURCES[w.resource]
                    w.events.put(("event", {"type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": r.api_version,
                        "metadata": {"resourceVersion": str(self._rv)}}}))
            return self._rv

    def drop_connections(self) -> None:
        """Cuts every open watch mid-stream (no terminating chunk), as a dying proxy would."""
        with self._lock:
            for w in self._watches:
                w.events.put(("drop", None))

    def fail_next(self, resource: str, code: int = 410, *, watch: bool | None = None, times: int = 1) -> None:
        """Answers the next ``times`` lists (watch=False), watches (True) or either (None) of
        ``resource`` with HTTP ``code`` and a Status body."""
        with self._lock:
            self._fail += [(self._name(resource), watch, code)] * times

    def open_watches(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(1 for w in self._watches if resource is None or w.resource == resource)

    def requests_for(self, resource: str, *, watch: bool | None = None) -> list[Request]:
        return [r for r in list(self.requests)
                if r.resource == resource and (watch is None or r.watch == watch)]

    # -- internals --------------------------------------------------------------------------

    def _store(self, resource: str, obj: Any, kind: str = "ADDED", *, notify: bool = True) -> int:
        obj = copy.deepcopy(obj)
        with self._lock:
            self._rv += 1
            if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
                obj["metadata"]["resourceVersion"] = str(self._rv)
            self._objects[resource][_key(obj, f"~malformed-{self._rv}")] = obj
            if notify:
                self._history.append((self._rv, resource, kind, obj))
                self._push(resource, kind, obj)
            return self._rv

    def _event(self, resource: str, kind: str, obj: Any) -> int:
        self._rv += 1
        if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
            obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append((self._rv, resource, kind, obj))
        self._push(resource, kind, obj)
        return self._rv

    def _push(self, resource: str, kind: str, obj: Any) -> None:
        for w in self._watches:
            if w.resource == resource:
                w.events.put(("event", {"type": kind, "object": self._with_kind(resource, obj)}))

    @staticmethod
    def _with_kind(resource: str, obj: Any) -> Any:
        """Watch events carry kind/apiVersion on the object; list items do not."""
        obj = copy.deepcopy(obj)
        if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
            r = RESOURCES[resource]
            obj = {"kind": r.kind, "apiVersion": r.api_version, **obj}
        return obj

    def _take_failure(self, resource: str, watch: bool) -> int | None:
        with self._lock:
            for i, (res, w, code) in enumerate(self._fail):
                if res == resource and (w is None or w == watch):
                    del self._fail[i]
                    return code
        return None

    def _list(self, resource: str, query: dict[str, str]) -> tuple[int, dict]:
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        r = RESOURCES[resource]
        with self._lock:
            if token:
                try:
                    pos = json.loads(base64.b64decode(token))
                    list_rv, start = int(pos["rv"]), int(pos["start"])
                except (ValueError, KeyError, TypeError):
                    return 400, status(400, "BadRequest", "continue key is not valid")
                items = self._snapshots.get(list_rv, {}).get(resource)
                if list_rv < self._compacted or items is None:
                    return 410, status(410, "Expired", _CONTINUE_EXPIRED)
            else:
                list_rv, start = self._rv, 0
                items = [self._list_item(self._objects[resource][k]) for k in sorted(self._objects[resource])]
                if limit and len(items) > limit:
                    self._snapshots.setdefault(list_rv, {})[resource] = items
            end = start + limit if limit else len(items)
            meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
            if end < len(items):
                meta["continue"] = base64.b64encode(json.dumps({"rv": list_rv, "start": end}).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            return 200, {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": meta,
                         "items": items[start:end]}

    @staticmethod
    def _list_item(obj: Any) -> Any:
        obj = copy.deepcopy(obj)
        if isinstance(obj, dict):
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        return obj

    def _open_watch(self, resource: str, query: dict[str, str]) -> tuple[_Watch, list[dict], bool]:
        """Registers a watch; returns it, the events due before live ones, and whether the
        stream ends after them (410)."""
        w = _Watch(resource, query.get("allowWatchBookmarks") in ("true", "1"))
        rv = query.get("resourceVersion")
        with self._lock:
            if rv in (None, "", "0"):
                backlog = [{"type": "ADDED", "object": self._with_kind(resource, self._objects[resource][k])}
                           for k in sorted(self._objects[resource])]
            elif int(rv) < self._compacted:
                msg = f"too old resource version: {rv} ({self._compacted})"
                return w, [{"type": "ERROR", "object": status(410, "Expired", msg)}], True
            else:
                backlog = [{"type": t, "object": self._with_kind(resource, o)}
                           for v, res, t, o in self._history if res == resource and v > int(rv)]
            self._watches.add(w)
        return w, backlog, False

    def _close_watch(self, w: _Watch) -> None:
        with self._lock:
            self._watches.discard(w)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_api: KubeAPIServer

    def log_message(self, format: str, *args: Any) -> None:   # quiet test output
        pass

    def _json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        api = self.server_api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        req = Request("GET", url.path, query)
        api.requests.append(req)
        resource = req.resource
        if resource is None:
            self._json(404, status(404, "NotFound", f"the server could not find the requested resource "
                                                    f"({url.path})"))
            return
        code = api._take_failure(resource, req.watch)
        if code is not None:
            reason = {410: "Expired", 500: "InternalError", 503: "ServiceUnavailable",
                      403: "Forbidden", 429: "TooManyRequests"}.get(code, "Unknown")
            self._json(code, status(code, reason, f"injected {code} for {url.path}"))
            return
        if req.watch:
            self._watch(resource, query)
        else:
            self._json(*api._list(resource, query))

    def _watch(self, resource: str, query: dict[str, str]) -> None:
        api = self.server_api
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout = 1800.0
        w, backlog, ends = api._open_watch(resource, query)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for ev in backlog:
                self._chunk(json.dumps(ev).encode() + b"\n")
            if not ends and not self._stream(w, timeout):
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:          # the client went away
            self.close_connection = True
        finally:
            api._close_watch(w)

    def _stream(self, w: _Watch, timeout: float) -> bool:
        """Sends live events until ``timeout``; False when the connection was cut."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                what, payload = w.events.get(timeout=left)
            except queue.Empty:
                break
            if what == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return False
            data = payload if what == "raw" else json.dumps(payload).encode()
            self._chunk(data.rstrip(b"\n") + b"\n")
        return True
