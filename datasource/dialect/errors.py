"""The one error type of the dialect: what DeepFlow answers as ``FAIL`` (HTTP 500: syntax, unknown
function or tag) or ``INVALID_POST_DATA`` (HTTP 400: refused, e.g. a table that is not stored)."""

from __future__ import annotations


class DialectError(ValueError):
    """Bad or unsupported DeepFlow SQL; the message names the token and its position."""

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
        self.opt_status = "FAIL" if status >= 500 else "INVALID_POST_DATA"
