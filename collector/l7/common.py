"""Helpers several parsers share: trace context headers, HTTP endpoint normalisation, text clipping."""

from __future__ import annotations

import re

_HEX = re.compile(r"^[0-9a-fA-F]+$")
# Path segments that are identifiers, not routes: numbers, UUIDs, long hex, mixed digit tokens.
_ID_SEGMENT = re.compile(
    r"^(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|(?=[^/]*\d)[A-Za-z0-9_\-]{20,})$")


def http_endpoint(path: str, *, depth: int = 2, strip_ids: bool = True) -> str:
    """Aggregation key of an HTTP path: no query string or fragment, ids replaced by ``{id}``,
    at most ``depth`` segments (DeepFlow's endpoint "path prefix", configurable).

    >>> http_endpoint("/api/item/42?x=1")
    '/api/item'
    >>> http_endpoint("/api/item/42", depth=3)
    '/api/item/{id}'
    """
    p = path.split("?", 1)[0].split("#", 1)[0]
    if not p.startswith("/"):
        return p[:256]
    segs = [s for s in p.split("/") if s][:depth]
    if strip_ids:
        # under 16 characters only the all-digits form can match, so a segment that does not start
        # with a digit (most route words) skips the regex
        segs = [s if len(s) < 16 and not s[0].isdecimal() else "{id}" if _ID_SEGMENT.match(s) else s for s in segs]
    return "/" + "/".join(segs) if segs else "/"


def trace_context(headers: dict[str, str]) -> tuple[str, str, str]:
    """(trace_id, span_id, parent_span_id) from W3C traceparent, B3 (single and multi header) or
    Jaeger's uber-trace-id; header names lower-case. Empty strings when none is valid."""
    tp = headers.get("traceparent")
    if tp:
        ctx = w3c_context(tp)
        if ctx is not None:
            return ctx
    b3 = headers.get("b3")
    if b3 and b3 not in ("0", "1", "d"):
        parts = b3.strip().split("-")
        if len(parts) >= 2 and _HEX.match(parts[0]) and _HEX.match(parts[1]):
            return parts[0].lower(), parts[1].lower(), parts[3].lower() if len(parts) >= 4 else ""
    tid = headers.get("x-b3-traceid")
    if tid and _HEX.match(tid.strip()):
        return (tid.strip().lower(), headers.get("x-b3-spanid", "").strip().lower(),
                headers.get("x-b3-parentspanid", "").strip().lower())
    uber = headers.get("uber-trace-id")
    if uber:
        parts = uber.replace("%3A", ":").replace("%3a", ":").strip().split(":")
        if len(parts) == 4 and all(_HEX.match(x) for x in parts[:3]):
            parent = parts[2].lower()
            return parts[0].lower().zfill(16), parts[1].lower(), "" if parent == "0" else parent
    return "", "", ""


def w3c_context(tp: str) -> tuple[str, str, str] | None:
    """(trace_id, span_id, "") of a W3C traceparent value, None when it is not a valid one (the
    first rule of ``trace_context``; a parser that has only this header asks it alone)."""
    parts = tp.strip().split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16 and _HEX.match(parts[1] + parts[2]) \
            and parts[1] != _ZERO_TRACE:
        return parts[1].lower(), parts[2].lower(), ""
    return None


_ZERO_TRACE = "0" * 32


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def captured_text(b: bytes, complete: bool, limit: int) -> str:
    """Text of a value the capture may have cut (``complete``: all of it is here), clipped to
    ``limit``; "..." marks missing bytes."""
    s = b.decode("utf-8", "replace")
    if complete or len(s) > limit:
        return clip(s, limit)
    return s + "..." if len(s) + 3 <= limit else s[:max(0, limit - 3)] + "..."


def trace_names(trace_headers: tuple[str, ...]) -> set[str]:
    """The configured trace headers, lower-case; B3's span headers come with ``x-b3-traceid``."""
    names = {h.lower() for h in trace_headers}
    if "x-b3-traceid" in names:
        names |= {"x-b3-spanid", "x-b3-parentspanid"}
    return names
