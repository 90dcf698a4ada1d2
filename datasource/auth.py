"""Optional bearer-token authentication (``--token`` / ``$FLOWSCOPE_TOKEN`` / ``datasource.token``).

With a token set, every request but the liveness probe must carry ``Authorization: Bearer <token>``;
the comparison is constant-time so response timing does not reveal how much of a guess was right.
A refusal is HTTP 401 with DeepFlow's envelope and ``WWW-Authenticate: Bearer`` (RFC 6750 §3).
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

# Kubernetes/compose probes cannot send a secret; the probe says nothing about the data.
OPEN_PATHS = frozenset({"/healthz"})


def unauthorized_body(description: str) -> bytes:
    return json.dumps({"OPT_STATUS": "UNAUTHORIZED", "DESCRIPTION": description, "result": None, "debug": None},
                      separators=(",", ":")).encode()


def check(header: str | None, token: str) -> str | None:
    """None when ``header`` carries ``token``; otherwise what is wrong with it."""
    if not header:
        return "missing Authorization header: send 'Authorization: Bearer <token>'"
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "Authorization header is not 'Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "invalid bearer token"
    return None


class BearerAuth:
    """ASGI middleware refusing HTTP requests without the token (lifespan passes through)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        problem = check(header, self.token)
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = unauthorized_body(problem)
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="flowscope"')]})
        await send({"type": "http.response.body", "body": body})
