"""The HTTP server under the receiver: connections from the internet, kept on a short leash.

A request must arrive whole within ``read_timeout`` of its first byte (the connection is closed
while the head is incomplete, 408 once the body is late); idle connections close after
``keepalive_timeout``; at most ``max_connections`` are open, beyond which the longest-idle
keep-alive connection is closed to make room, or the newcomer gets a 503; the request line and
each header are at most ``max_header_bytes`` and there are at most ``max_headers`` (431).
Malformed HTTP gets a JSON 400 too (at once, even when a chunked body breaks after the head),
and a one-line log rather than a traceback; so does whatever aiohttp itself would answer in plain
text (a request target that is not a path: ``CONNECT host:443``, ``OPTIONS *``).

aiohttp's public options do most of this: the header limits, ``keepalive_timeout`` and
``auto_decompress`` are keyword arguments of its ``RequestHandler``, the drain on shutdown is
``AppRunner(shutdown_timeout=...)``, the body limit ``Application(client_max_size=...)``. What it
has no option for is here, and only here: a deadline for a whole request (its own timeouts are
per read, so a sender trickling a byte a second holds a connection forever), a cap on open
connections (it accepts without limit), JSON instead of its plain-text errors, and the
``100 Continue`` of a custom expect handler. These use aiohttp internals (``RequestHandler``'s
message queue, ``BaseSite``'s ``_server``/``_runner``/``_backlog``, ``Server.request_handler``),
so ``pyproject.toml`` pins aiohttp to the minor release the tests run against; a new release is
taken by raising that bound once ``tests/`` pass on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.http_parser import RawRequestMessage

from connector.config import ServerSettings
from connector.logs import Throttled, get_logger
from connector.responses import SERVER, error, first_line

log = get_logger("connector.http")


class ReadTimeout(TimeoutError):
    """A request did not arrive whole within ``read_timeout``: raised by its body's reads."""


async def send_continue(request: web.BaseRequest) -> None:
    """The go-ahead an ``Expect: 100-continue`` client waits for before sending its body.

    aiohttp sends it only from its default expect handler; a custom one (which may refuse
    before the upload) must write it itself, the same way.
    """
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started (as aiohttp does)


# --- Connections ------------------------------------------------------------------------------

_BUSY_BODY = orjson.dumps({"error": "too many connections; retry shortly"})
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nServer: %s\r\nConnection: close\r\n\r\n%s"
) % (len(_BUSY_BODY), SERVER.encode(), _BUSY_BODY)
_BUSY_LINGER = 1.0  # seconds a refused connection may finish sending before it is closed
_REFUSALS_LOGGED_EVERY = 1.0  # seconds between two log lines about refused connections


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
        request = self._request
        if self._timer is None and request is None:  # the first byte of a request
            self._arm()
        super().data_received(data)
        if request is not None and self._messages and not request.content.is_eof():
            self._body_broke(request)

    def _body_broke(self, request: web.BaseRequest) -> None:
        """A body that broke after the head (a malformed chunk): tell the handler now.

        aiohttp's C parser reports it as an error *message*, queued behind the request being
        handled, while that request's handler waits for the rest of a body that will never come
        (until the read timeout: 408). The error belongs to this body: it is handed to the
        body's reader instead, so the handler answers 400 at once, and the connection closes.
        """
        message, _ = self._messages[-1]
        problem = getattr(message, "exc", None)
        if isinstance(message, RawRequestMessage) or not isinstance(problem, BaseException):
            return
        self._messages.pop()
        request.content.set_exception(web.RequestPayloadError(first_line(problem)))

    def request_started(self, request: web.BaseRequest) -> None:
        """The head is in and the handler runs; the body is due by the same deadline."""
        self._request, self.idle_since = request, None  # (a pipelined request sent no new byte)

    def request_done(self) -> None:
        request, self._request = self._request, None
        if request is not None and request.content.exception() is not None:
            # A broken or late body is over: aiohttp would linger reading it (the connection
            # closes after the answer anyway) and log its error again, as unhandled.
            request.content.feed_eof()
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
        if status >= 500:  # a bug: its traceback, but not one per request
            kind = type(exc).__name__ if exc is not None else str(status)
            self._site.failures(kind, status=status, peer=peer, exc_info=exc)
            text = "internal error" if status == 500 else "the request could not be completed"
        else:
            if isinstance(exc, LineTooLong):
                status = 431
                text = f"the request line or a header is longer than {longest} bytes"
            elif isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received":
                status = 431
                text = f"more than {limits.max_headers} headers"
            else:
                text = f"malformed HTTP request: {first_line(exc or Exception(message or ''))}"
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
        # uvloop's transports write like asyncio's but are not its WriteTransport subclasses.
        writer = cast(asyncio.Transport, transport)
        writer.write(_BUSY)
        # What the client is still sending is read and dropped for a moment, so that closing
        # does not reset the connection before the client has read the answer.
        self._timer = self._loop.call_later(_BUSY_LINGER, writer.close)

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

    __slots__ = (
        "_host", "_on_refused", "_port", "_refusals", "connections", "failures", "settings"
    )  # fmt: skip

    def __init__(
        self,
        runner: web.BaseRunner,
        settings: ServerSettings,
        host: str,
        port: int,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        # At least 128: a burst of connections over a small max_connections still reaches the
        # server and gets its 503 at once, instead of waiting for the client's SYN retries.
        super().__init__(runner, backlog=min(max(settings.max_connections, 128), 1024))
        self.settings = settings
        self.connections: set[Connection] = set()
        self._host, self._port = host, port
        self._on_refused = on_refused  # counts them (a metric)
        # A flood of refusals is a line a second, with the count.
        self._refusals = Throttled(self._log_refusals, _REFUSALS_LOGGED_EVERY)
        self.failures = Throttled(_log_failures)  # requests that failed with a 500

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
        if self._on_refused is not None:
            self._on_refused()
        self._refusals("max_connections")

    def _log_refusals(self, kind: str, count: int, fields: dict[str, Any]) -> None:
        log.warning("connections refused: max_connections reached", refused=count,
                    max_connections=self.settings.max_connections)  # fmt: skip

    async def stop(self) -> None:
        self._refusals.flush()
        self.failures.flush()
        await super().stop()


def _log_failures(kind: str, count: int, fields: dict[str, Any]) -> None:
    log.error("request failed", requests=count, **fields)


_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _track_requests(server: web.Server) -> None:
    """Tell each :class:`Connection` when its request's handler starts and ends."""
    handle: _Handler = server.request_handler
    if getattr(handle, "tracks_requests", False):
        return

    async def tracked(request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, Connection):
            connection.request_started(request)
        try:
            return await handle(request)
        except web.HTTPException as exc:  # aiohttp's own answer, in plain text: JSON instead
            return _as_json(exc)
        finally:
            if isinstance(connection, Connection):
                connection.request_done()

    tracked.tracks_requests = True  # type: ignore[attr-defined]
    server.request_handler = tracked


def _as_json(exc: web.HTTPException) -> web.StreamResponse:
    """What aiohttp answers by itself (its router: a request target that is not a path, such as
    ``CONNECT host:443`` or ``OPTIONS *``) as a JSON error like every other."""
    if exc.status == 404:
        text = "no such route"
    elif exc.status == 405:
        text = "method not allowed here"
    else:
        text = exc.reason.lower() if exc.reason else "request refused"
    response = error(exc.status, text)
    for name in ("Allow", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response
