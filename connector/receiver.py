"""The HTTP side: Mimeeq's webhooks in, probes for the orchestrator.

A webhook is answered 202 only once its event is durably stored. Every refusal is a JSON
``{"error": ...}`` that says what is wrong, and stores nothing. Authentication is checked before
the body is even read, and an unknown tenant looks exactly like a wrong token.

The receiver faces the internet, so every byte is treated as hostile:

* bodies (``Receiver``): read as JSON unless labelled as something else, UTF-8, never compressed
  (415 otherwise, see ``unsupported_body``); at most ``max_body_bytes`` (413, counted as the body
  arrives, chunked or not); strict JSON (orjson: no NaN, no invalid UTF-8, no trailing data), an
  object, at most ``MAX_DEPTH`` levels deep and without duplicate keys (400, see
  ``body_problem``); then the payload schema (422, naming the field). A client that sends
  ``Expect: 100-continue`` gets any refusal that does not need the body before it uploads it.
* connections (``WebhookSite``, ``Connection``): a request must arrive whole within
  ``read_timeout`` of its first byte (the connection is closed while the head is incomplete, 408
  once the body is late); idle connections close after ``keepalive_timeout``; at most
  ``max_connections`` are open, beyond which the longest-idle keep-alive connection is closed to
  make room, or the newcomer gets a 503; the request line and each header are at most
  ``max_header_bytes`` and there are at most ``max_headers`` (431). Malformed HTTP gets a JSON 400
  too, and a one-line log rather than a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from connector.config import ServerSettings, Tenant
from connector.observability import get_logger
from connector.payloads import CONTACT_EVENTS, OTHER_EVENTS, PAYLOAD_MODELS
from connector.store.base import NewEvent

if TYPE_CHECKING:
    from connector.service import Service

log = get_logger("connector.receiver")

_NO_TOKEN = b"\x00" * 32  # compared against when the tenant is unknown, to take the same time
MAX_DEPTH = 32  # levels of nesting in a body; Mimeeq's payloads use 3
_ECHO = 100  # characters of a caller's text quoted back in an error, at most
# Content types read as JSON (besides application/*+json): see unsupported_body.
_JSON_TYPES = frozenset({"application/json", "text/json", "text/plain", "application/octet-stream"})


def json_response(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response(status, {"error": message, **extra})


def authorized(tenant: Tenant | None, headers: Mapping[str, str]) -> bool:
    """Constant-time check of the tenant's auth header against every accepted value."""
    if tenant is None:
        hmac.compare_digest(_NO_TOKEN, _NO_TOKEN)
        return False
    sent = headers.get(tenant.auth_header, "").encode("utf-8", "surrogateescape")
    ok = False
    for token in tenant.tokens:  # no early exit: every value costs the same comparison
        ok |= hmac.compare_digest(sent, token)
    return ok


def describe(exc: ValidationError, limit: int = 5) -> tuple[str, str]:
    """The first invalid field and a readable summary of the (first few) problems."""
    errors = exc.errors(include_input=False, include_url=False)
    parts = []
    for err in errors[:limit]:
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        msg = "required field is missing" if err["type"] == "missing" else err["msg"]
        parts.append(f"{field}: {msg}")
    first = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
    return first, "; ".join(parts)


def unsupported_body(request: web.BaseRequest) -> str | None:
    """Why the body's declared type or encoding is refused (415), or None.

    Mimeeq does not document the Content-Type of its webhooks, and senders vary, so a body is read
    as JSON unless it is labelled as something else: accepted are ``application/json``, any
    ``application/*+json``, ``text/json``, and the labels that say nothing in particular
    (``text/plain``, ``application/octet-stream``, none at all). A form, multipart, XML, HTML...
    is refused with a clear message rather than failing later as "not valid JSON", and a charset,
    if given, must be UTF-8. Compressed bodies are refused: the connector never inflates what a
    stranger sends.
    """
    headers = request.headers
    encoding = headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and encoding.strip().lower() != "identity":
        return "compressed bodies (Content-Encoding) are not accepted: send the JSON as it is"
    declared = headers.get(hdrs.CONTENT_TYPE)
    if not declared or declared == "application/json":  # the usual cases, without parsing
        return None
    mime = request.content_type  # parsed: lower case, without parameters
    if mime not in _JSON_TYPES and not (mime.startswith("application/") and mime.endswith("+json")):
        return f"Content-Type {_echo(mime)!r} is not accepted: send application/json"
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return f"charset {_echo(charset)!r} is not accepted: JSON is UTF-8"
    return None


def body_problem(body: bytes, data: dict[str, Any]) -> str | None:
    """Why a parsed JSON object is refused (400) although it is valid JSON, or None.

    Too deep: nothing downstream needs more than a few levels, and serialisers stop at some
    depth (orjson's at 255). Duplicate keys: parsers disagree on which value wins (orjson and most
    others keep the last, some the first), so a body whose meaning depends on the reader is
    refused. Finding them costs the usual body about as much as parsing it: in valid JSON, each
    ``:`` outside a string introduces one member, so if the body holds no more colons than the
    parsed objects hold members, no key was repeated. Only a body with colons inside its strings
    (or a repeated key) is parsed a second time, by the standard library, to name the key.
    """
    try:
        members = _members(data, 1)
    except _TooDeep:
        return f"body nests deeper than {MAX_DEPTH} levels"
    if body.count(b":") == members:
        return None
    repeated: list[str] = []

    def check(pairs: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen and not repeated:
                repeated.append(key)
            seen.add(key)

    try:
        json.loads(body, object_pairs_hook=check, parse_int=_ignore, parse_float=_ignore)
    except ValueError as exc:  # orjson took it, so this should not happen: refuse all the same
        return f"body is not valid JSON: {exc}"
    return f"duplicate key {_echo(repeated[0])!r}: its meaning is ambiguous" if repeated else None


class _TooDeep(Exception):
    pass


def _members(node: dict[str, Any] | list[Any], depth: int) -> int:
    """Members of the objects in ``node``, at any depth (recursion is bounded by MAX_DEPTH)."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    count = 0
    values: Iterable[Any] = node
    if type(node) is dict:
        count, values = len(node), node.values()
    for value in values:
        kind = type(value)
        if kind is dict or kind is list:
            count += _members(value, depth + 1)
    return count


def _ignore(text: str) -> None:
    """Numbers are not looked at when searching for duplicate keys."""


def _echo(text: str) -> str:
    return text if len(text) <= _ECHO else text[:_ECHO] + "…"


class Receiver:
    """Request handlers bound to a running service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def webhook(self, request: web.Request) -> web.Response:
        tenant = self.service.config.tenants.get(request.match_info["tenant"])
        event = request.match_info["event"]
        response, outcome = await self._webhook(request, tenant, event)
        self._count(tenant, event, outcome)
        return response

    async def expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: a client waits for a go-ahead before sending the body, so a
        refusal that does not need the body is sent instead, and the body is never uploaded."""
        expectation = request.headers.get(hdrs.EXPECT, "")
        if expectation.lower() != "100-continue":
            return error(417, f"unknown expectation {_echo(expectation)!r}")
        tenant = self.service.config.tenants.get(request.match_info["tenant"])
        event = request.match_info["event"]
        refused = self._before_body(request, tenant, event)
        if refused is not None:
            response, outcome = refused
            self._count(tenant, event, outcome)
            return response
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started (as aiohttp does)
        return None

    def _count(self, tenant: Tenant | None, event: str, outcome: str) -> None:
        # Labels a caller cannot invent: a configured tenant, a Mimeeq event name.
        self.service.metrics.events.labels(
            tenant.slug if tenant else "unknown",
            event if event in CONTACT_EVENTS or event in OTHER_EVENTS else "unknown",
            outcome,
        ).inc()

    def _before_body(
        self, request: web.Request, tenant: Tenant | None, event: str
    ) -> tuple[web.Response, str] | None:
        """The answers that do not need the body, in order: auth, draining, event, type, size."""
        if not authorized(tenant, request.headers):
            return error(401, "missing or invalid authentication header"), "unauthorized"
        assert tenant is not None
        if not self.service.accepting:
            return error(503, "the connector is shutting down; retry shortly"), "unavailable"
        if event in OTHER_EVENTS:
            return json_response(202, {"eventId": None, "status": "ignored"}), "ignored"
        if event not in CONTACT_EVENTS:
            refusal = error(404, f"unknown event {_echo(event)!r}", events=sorted(CONTACT_EVENTS))
            return refusal, "unknown_event"
        unsupported = unsupported_body(request)
        if unsupported is not None:
            return self._invalid(tenant, event, 415, unsupported, outcome="unsupported")
        limit = self.service.config.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large(limit)
        return None

    @staticmethod
    def _too_large(limit: int) -> tuple[web.Response, str]:
        response = error(413, f"body is larger than {limit} bytes")
        response.force_close()  # the rest of the body is not worth waiting for
        return response, "too_large"

    async def _webhook(
        self, request: web.Request, tenant: Tenant | None, event: str
    ) -> tuple[web.Response, str]:
        refused = self._before_body(request, tenant, event)
        if refused is not None:
            return refused
        assert tenant is not None
        service = self.service
        settings = service.config.server
        op = CONTACT_EVENTS[event]
        try:
            body = await request.read()  # stops at client_max_size: never more in memory
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(settings.max_body_bytes)
        except ReadTimeout:  # the connection's deadline passed while the body was arriving
            message = f"the body did not arrive within {settings.read_timeout:g} s"
            return self._invalid(tenant, event, 408, message, outcome="timeout", close=True)
        except web.RequestPayloadError as exc:  # broken chunked encoding, a truncated body
            message = f"the body is malformed: {_first_line(exc)}"
            return self._invalid(tenant, event, 400, message, outcome="malformed", close=True)
        except ConnectionError:  # the client went away mid-body: nobody reads the answer
            return error(400, "the connection was closed before the body ended"), "aborted"
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._invalid(tenant, event, 400, f"body is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return self._invalid(
                tenant, event, 400, f"body must be a JSON object, got {_json_type(data)}"
            )
        problem = body_problem(body, data)
        if problem is not None:
            return self._invalid(tenant, event, 400, problem)
        try:
            payload = PAYLOAD_MODELS[event].model_validate(data)
        except ValidationError as exc:
            field, summary = describe(exc)
            return self._invalid(tenant, event, 422, f"invalid {event} payload: {summary}", field)
        if payload.customerId != tenant.customer_id:
            message = "customerId is not this tenant's Mimeeq customer"
            return self._invalid(tenant, event, 422, message, "customerId")

        targets = tuple(t.key for t in tenant.targets.values() if t.settings.enabled)
        accepted = await service.store.append(
            NewEvent(tenant.slug, event, payload.id, op, body, targets)
        )
        if accepted.status == "queued":
            service.notify(tenant.slug)
        log.debug(
            "webhook stored",
            tenant=tenant.slug,
            event_type=event,
            event_id=accepted.event_id,
            contact_id=payload.id,
            status=accepted.status,
        )
        answer = {"eventId": accepted.event_id, "status": accepted.status}
        if accepted.reason:
            answer["reason"] = accepted.reason
        return json_response(202, answer), accepted.status

    @staticmethod
    def _invalid(
        tenant: Tenant,
        event: str,
        status: int,
        message: str,
        field: str | None = None,
        *,
        outcome: str = "invalid",
        close: bool = False,
    ) -> tuple[web.Response, str]:
        """A payload Mimeeq should not have sent: refused, and worth a line in the log."""
        log.info("webhook refused", tenant=tenant.slug, event_type=event, status=status,
                 error=message)  # fmt: skip
        extra = {"field": field} if field else {}
        response = error(status, message, **extra)
        if close:  # what is left of the body is not worth waiting for
            response.force_close()
        return response, outcome

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.service.render_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        problem = await self.service.readiness_problem()
        if problem:
            return json_response(503, {"status": "not ready", "reason": problem})
        return json_response(200, {"status": "ready"})


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def create_app(service: Service) -> web.Application:
    receiver = Receiver(service)
    app = web.Application(client_max_size=service.config.server.max_body_bytes)
    app.router.add_post(
        "/webhooks/{tenant}/{event}", receiver.webhook, expect_handler=receiver.expect
    )
    app.router.add_get("/healthz", receiver.healthz)
    app.router.add_get("/readyz", receiver.readyz)
    app.router.add_get("/metrics", receiver.metrics)
    # Anything else gets a JSON error too (routes, unlike a middleware, cost the hot path nothing).
    for path in ("/webhooks/{tenant}/{event}", "/healthz", "/readyz", "/metrics"):
        app.router.add_route("*", path, _method_not_allowed)
    app.router.add_route("*", "/{path:.*}", _not_found)
    return app


async def _method_not_allowed(request: web.Request) -> web.Response:
    return error(405, f"method {_echo(request.method)} not allowed here")


async def _not_found(request: web.Request) -> web.Response:
    return error(404, "no such route")


def _first_line(exc: BaseException) -> str:
    """aiohttp's message for a malformed request, on one line (its own spans several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].endswith(", message:"):  # "400, message:" then the message
        lines = lines[1:]
    return _echo(lines[0].rstrip(":")) if lines else "unreadable"


# --- Connections ------------------------------------------------------------------------------

_BUSY_BODY = orjson.dumps({"error": "too many connections; retry shortly"})
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)
_BUSY_LINGER = 1.0  # seconds a refused connection may finish sending before it is closed
_REFUSALS_LOGGED_EVERY = 10.0  # seconds between two log lines about refused connections


class ReadTimeout(TimeoutError):
    """A request did not arrive whole within ``read_timeout``: raised by its body's reads."""


class Connection(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol, plus a deadline for every request and JSON errors.

    A request must arrive whole within ``read_timeout`` of its first byte (for the first request,
    of the connection opening). One timer per request does it: if the head is still incomplete
    at the deadline the connection is closed; if the handler is still waiting for the body, its
    reads raise :class:`ReadTimeout` (the webhook handler answers 408). Between requests, aiohttp
    closes a connection that stays idle for ``keepalive_timeout``.
    """

    __slots__ = ("_clock", "_request", "_site", "_timer", "idle_since")

    def __init__(
        self, site: WebhookSite, manager: web.Server, loop: asyncio.AbstractEventLoop
    ) -> None:
        settings = site.settings
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=settings.keepalive_timeout,
            access_log=None,  # type: ignore[arg-type]  # None turns it off, as in AppRunner
            max_line_size=settings.max_header_bytes,
            max_field_size=settings.max_header_bytes,
            max_headers=settings.max_headers,
            auto_decompress=False,  # compressed bodies are refused (415), never inflated
        )
        self._site = site
        self._clock = loop
        self._timer: asyncio.TimerHandle | None = None
        self._request: web.BaseRequest | None = None  # the one being handled
        self.idle_since: float | None = None  # set between requests, while nothing arrives

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._site.connections.add(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._site.connections.discard(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._timer is None and self._request is None:  # the first byte of a request
            self._arm()
        super().data_received(data)

    def request_started(self, request: web.BaseRequest) -> None:
        """The head is in and the handler runs; the body is due by the same deadline."""
        self._request, self.idle_since = request, None  # (a pipelined request sent no new byte)

    def request_done(self) -> None:
        self._request = None
        self._disarm()
        self.idle_since = self._clock.time()

    def _arm(self) -> None:
        self.idle_since = None
        deadline = self._clock.time() + self._site.settings.read_timeout
        self._timer = self._clock.call_at(deadline, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        request, timeout = self._request, self._site.settings.read_timeout
        if request is None:
            log.info("connection closed: no complete request within the read timeout",
                     peer=_peer(self.transport))  # fmt: skip
            self.force_close()
        elif not request.content.is_eof():
            request.content.set_exception(ReadTimeout(f"no complete request within {timeout:g} s"))

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (or a handler's crash): a JSON answer, one log line."""
        limits = self._site.settings
        longest = limits.max_header_bytes
        peer = _peer(self.transport)
        if status >= 500:
            log.error("request failed", status=status, peer=peer, exc_info=exc)
            text = "internal error" if status == 500 else "the request could not be completed"
        else:
            if isinstance(exc, LineTooLong):
                status = 431
                text = f"the request line or a header is longer than {longest} bytes"
            elif isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received":
                status = 431
                text = f"more than {limits.max_headers} headers"
            else:
                text = f"malformed HTTP request: {_first_line(exc or Exception(message or ''))}"
            # Port scanners and TLS sent to the plain port are everyday noise on the internet.
            quiet = isinstance(exc, BadHttpMethod)
            (log.debug if quiet else log.info)("malformed request refused", status=status,
                                               error=text, peer=peer)  # fmt: skip
        if request.writer.output_size > 0:  # part of an answer is out: nothing more can be said
            raise ConnectionError("response already started; cannot send the error")
        response = error(status, text)
        response.force_close()
        return response


def _peer(transport: asyncio.BaseTransport | None) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None


class _Busy(asyncio.Protocol):
    """A connection over ``max_connections``: answered 503 at once, closed soon after."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        # What the client is still sending is read and dropped for a moment, so that closing
        # does not reset the connection before the client has read the answer.
        self._timer = self._loop.call_later(_BUSY_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class WebhookSite(web.BaseSite):
    """A TCP site whose connections are :class:`Connection`, at most ``max_connections`` of them.

    When every slot is taken, the connection idle for longest (a keep-alive connection between
    requests) is closed to make room; when none is idle, the newcomer is answered 503 and closed
    rather than queued. The listen backlog (connections the kernel holds before they are
    accepted) is bounded too.
    """

    __slots__ = ("_host", "_port", "_refusals_logged_at", "_refused", "connections", "settings")

    def __init__(
        self, runner: web.BaseRunner, settings: ServerSettings, host: str, port: int
    ) -> None:
        super().__init__(runner, backlog=min(settings.max_connections, 1024))
        self.settings = settings
        self.connections: set[Connection] = set()
        self._host, self._port = host, port
        self._refused = 0
        self._refusals_logged_at = 0.0

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        _track_requests(server)

        def connection() -> asyncio.Protocol:
            if len(self.connections) >= self.settings.max_connections and not self._make_room():
                self._refuse()
                return _Busy(loop)
            return Connection(self, server, loop)

        self._server = await loop.create_server(
            connection, self._host, self._port, backlog=self._backlog
        )

    def _make_room(self) -> bool:
        idle = [c for c in self.connections if c.idle_since is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since or 0.0)
        self.connections.discard(oldest)
        oldest.force_close()
        return True

    def _refuse(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= _REFUSALS_LOGGED_EVERY:
            log.warning("connections refused: max_connections reached", refused=self._refused,
                        max_connections=self.settings.max_connections)  # fmt: skip
            self._refused, self._refusals_logged_at = 0, now


_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _track_requests(server: web.Server) -> None:
    """Tell each :class:`Connection` when its request's handler starts and ends."""
    handle: _Handler = server.request_handler
    if getattr(handle, "tracks_requests", False):
        return

    async def tracked(request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        if not isinstance(connection, Connection):
            return await handle(request)
        connection.request_started(request)
        try:
            return await handle(request)
        finally:
            connection.request_done()

    tracked.tracks_requests = True  # type: ignore[attr-defined]
    server.request_handler = tracked
