"""What every HTTP answer of the connector looks like: JSON, ``{"error": ...}`` for refusals, and
a ``Server`` header that names the product without its software versions. The receiver's routes
and the connection layer (:mod:`connector.http_server`, for what aiohttp would answer by itself)
both answer through these helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

SERVER = "mimeeq-connector"  # the Server header: aiohttp's default names Python and its version
HEADERS: Mapping[str, str] = {"Server": SERVER}
_ECHO = 100  # characters of a caller's text quoted back in an error, at most


def json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] = HEADERS
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response(status, {"error": message, **extra})


def unavailable(message: str, retry_after: int) -> web.Response:
    """503: nothing was stored; the sender should try again after ``retry_after`` seconds."""
    return json_response(503, {"error": message}, {**HEADERS, "Retry-After": str(retry_after)})


def echo(text: str) -> str:
    """A caller's text quoted back in an error, cut short."""
    return text if len(text) <= _ECHO else text[:_ECHO] + "…"


def first_line(exc: BaseException) -> str:
    """aiohttp's message for a malformed request, on one line (its own spans several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].endswith(", message:"):  # "400, message:" then the message
        lines = lines[1:]
    return echo(lines[0].rstrip(":")) if lines else "unreadable"
