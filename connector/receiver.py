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
* connections: deadlines, a cap and header limits, in :mod:`connector.http_server`.

When the event cannot be stored (the disk is full, the database unreachable or slow), the answer
is 503 with ``Retry-After``, never a 500, and never a 202: see ``Receiver._store_failed``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, Counter
from pydantic import ValidationError

from connector.adapter import object_type_of
from connector.config import ServerSettings, Tenant
from connector.health import StoreHealth
from connector.http_server import ReadTimeout, send_continue
from connector.logs import Throttled, get_logger
from connector.payloads import EVENTS, OTHER_EVENTS, PAYLOAD_SCHEMAS
from connector.responses import HEADERS, echo, error, first_line, json_response, unavailable
from connector.store.base import Accepted, NewEvent, payload_emails

log = get_logger("connector.receiver")

_NO_TOKEN = b"\x00" * 32  # compared against when the tenant is unknown, to take the same time
MAX_DEPTH = 32  # levels of nesting in a body; Mimeeq's payloads use 3
# Content types read as JSON (besides application/*+json): see unsupported_body.
_JSON_TYPES = frozenset({"application/json", "text/json", "text/plain", "application/octet-stream"})
STORE_RETRY_AFTER = 5  # seconds a sender is asked to wait when the store cannot write
DRAIN_RETRY_AFTER = 5  # ... and while this process shuts down (another one takes over)
STORE_TIMEOUT = 20.0  # seconds an event may take to be stored before the answer is 503


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
        return f"Content-Type {echo(mime)!r} is not accepted: send application/json"
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return f"charset {echo(charset)!r} is not accepted: JSON is UTF-8"
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
    return f"duplicate key {echo(repeated[0])!r}: its meaning is ambiguous" if repeated else None


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


@dataclass(frozen=True, slots=True)
class Intake:
    """What the receiver needs from the running service, and nothing more."""

    tenant: Callable[[str], Tenant | None]  # the tenant of a URL's slug, as the config says now
    limits: ServerSettings  # read once: server settings need a restart
    accepting: Callable[[], bool]  # False while starting or draining
    append: Callable[[NewEvent], Awaitable[Accepted]]  # store one event durably
    notify: Callable[[str], None]  # a tenant has new events: wake its workers
    store_health: StoreHealth
    events: Counter  # webhooks by tenant, event and outcome
    render_metrics: Callable[[], Awaitable[bytes]]
    readiness_problem: Callable[[], Awaitable[str | None]]


# Webhooks refused for their credentials are logged, so that a mistyped header in Mimeeq's admin
# shows in the log, not only in /metrics: a line per tenant and kind of refusal at most every 10 s
# (a flood must not flood the log), with how many it stands for. Never the value sent: it may be
# a real token with a typo, or someone else's.
REFUSALS_LOGGED_EVERY = 10.0


def _log_refusal(kind: str, occurrences: int, fields: dict[str, Any]) -> None:
    log.warning("webhook refused (401)", occurrences=occurrences, **fields)


def _refusal(request: web.Request, tenant: Tenant | None) -> tuple[str, dict[str, Any]]:
    """The kind of a 401 (tenant and reason), and what its log line says."""
    if tenant is None:
        slug, reason = "unknown", "unknown tenant"  # never the name a caller made up
    elif tenant.auth_header in request.headers:
        slug, reason = tenant.slug, f"wrong value in {tenant.auth_header}"
    else:
        slug, reason = tenant.slug, f"no {tenant.auth_header} header"
    return f"{slug}: {reason}", {"tenant": slug, "reason": reason, "remote": request.remote}


class Receiver:
    """The webhook and probe handlers, over an :class:`Intake`."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._deadlines = Deadlines(STORE_TIMEOUT)
        self._refusals = Throttled(_log_refusal, REFUSALS_LOGGED_EVERY)

    async def webhook(self, request: web.Request) -> web.Response:
        tenant = self.intake.tenant(request.match_info["tenant"])
        event = request.match_info["event"]
        response, outcome = await self._webhook(request, tenant, event)
        self._count(tenant, event, outcome)
        return response

    async def expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: a client waits for a go-ahead before sending the body, so a
        refusal that does not need the body is sent instead, and the body is never uploaded."""
        expectation = request.headers.get(hdrs.EXPECT, "")
        if expectation.lower() != "100-continue":
            return error(417, f"unknown expectation {echo(expectation)!r}")
        tenant = self.intake.tenant(request.match_info["tenant"])
        event = request.match_info["event"]
        refused = self._before_body(request, tenant, event)
        if refused is not None:
            response, outcome = refused
            self._count(tenant, event, outcome)
            return response
        await send_continue(request)
        return None

    def _count(self, tenant: Tenant | None, event: str, outcome: str) -> None:
        # Labels a caller cannot invent: a configured tenant, a Mimeeq event name.
        labels = (
            tenant.slug if tenant else "unknown",
            event if event in EVENTS or event in OTHER_EVENTS else "unknown",
            outcome,
        )
        counter = self._counters.get(labels)
        if counter is None:  # looked up once: labels() takes a lock and builds a key every time
            counter = self._counters[labels] = self.intake.events.labels(*labels)
        counter.inc()

    def _before_body(
        self, request: web.Request, tenant: Tenant | None, event: str
    ) -> tuple[web.Response, str] | None:
        """The answers that do not need the body, in order: auth, draining, event, type, size."""
        if not authorized(tenant, request.headers):
            kind, fields = _refusal(request, tenant)
            self._refusals(kind, **fields)
            return error(401, "missing or invalid authentication header"), "unauthorized"
        assert tenant is not None
        if not self.intake.accepting():
            message = "the connector is shutting down; retry shortly"
            return unavailable(message, DRAIN_RETRY_AFTER), "unavailable"
        if event in OTHER_EVENTS:
            return json_response(202, {"eventId": None, "status": "ignored"}), "ignored"
        if event not in EVENTS:
            refusal = error(404, f"unknown event {echo(event)!r}", events=sorted(EVENTS))
            return refusal, "unknown_event"
        if object_type_of(event) == "company" and not tenant.company_targets:
            reason = "no target of this tenant takes companies (company_mapping)"
            answer = {"eventId": None, "status": "ignored", "reason": reason}
            return json_response(202, answer), "ignored"
        unsupported = unsupported_body(request)
        if unsupported is not None:
            return self._invalid(tenant, event, 415, unsupported, outcome="unsupported")
        limit = self.intake.limits.max_body_bytes
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
        intake = self.intake
        settings = intake.limits
        op = EVENTS[event]
        try:
            body = await request.read()  # stops at client_max_size: never more in memory
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(settings.max_body_bytes)
        except ReadTimeout:  # the connection's deadline passed while the body was arriving
            message = f"the body did not arrive within {settings.read_timeout:g} s"
            return self._invalid(tenant, event, 408, message, outcome="timeout", close=True)
        except web.RequestPayloadError as exc:  # broken chunked encoding, a truncated body
            message = f"the body is malformed: {first_line(exc)}"
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
            payload = PAYLOAD_SCHEMAS[event].validate_python(data)
        except ValidationError as exc:
            field, summary = describe(exc)
            return self._invalid(tenant, event, 422, f"invalid {event} payload: {summary}", field)
        if payload["customerId"] != tenant.customer_id:
            message = "customerId is not this tenant's Mimeeq customer"
            return self._invalid(tenant, event, 422, message, "customerId")

        task = asyncio.current_task()
        if task is not None:
            self._deadlines.watch(task)
        try:
            accepted = await intake.append(
                NewEvent(
                    tenant.slug,
                    event,
                    payload["id"],
                    op,
                    body,
                    tenant.targets_for(object_type_of(event)),
                    payload_emails(payload) if object_type_of(event) == "contact" else (),
                )
            )
        except asyncio.CancelledError:
            if task is None or not self._deadlines.expired(task):
                raise
            return self._store_failed(TimeoutError(f"not stored within {STORE_TIMEOUT:g} s"))
        except Exception as exc:  # whatever the store raised: the event is not known to be stored
            return self._store_failed(exc)
        finally:
            if task is not None:
                self._deadlines.forget(task)
        if intake.store_health.failing is not None:
            intake.store_health.succeeded()
        if accepted.status == "queued":
            intake.notify(tenant.slug)
        log.debug(
            "webhook stored",
            tenant=tenant.slug,
            event_type=event,
            event_id=accepted.event_id,
            contact_id=payload["id"],
            status=accepted.status,
        )
        answer = {"eventId": accepted.event_id, "status": accepted.status}
        if accepted.reason:
            answer["reason"] = accepted.reason
        return json_response(202, answer), accepted.status

    def _store_failed(self, exc: Exception) -> tuple[web.Response, str]:
        """503 with Retry-After: the sender keeps the event and tries again later.

        Never a 500 (nothing is wrong with the request) and never a 202. An append that timed
        out may still commit: the redelivery is then answered ``duplicate``. The failure is
        logged a line per kind per second (:class:`connector.health.StoreHealth`), and
        ``/readyz`` answers 503 until the store writes again.
        """
        self.intake.store_health.failed(exc)
        message = "the event could not be stored; it was not accepted: retry later"
        return unavailable(message, STORE_RETRY_AFTER), "store_unavailable"

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
        body = await self.intake.render_metrics()
        return web.Response(body=body, headers={**HEADERS, "Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        problem = await self.intake.readiness_problem()
        if problem:
            return json_response(503, {"status": "not ready", "reason": problem})
        return json_response(200, {"status": "ready"})


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def create_app(intake: Intake) -> web.Application:
    receiver = Receiver(intake)
    app = web.Application(client_max_size=intake.limits.max_body_bytes)
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
    return error(405, f"method {echo(request.method)} not allowed here")


async def _not_found(request: web.Request) -> web.Response:
    return error(404, "no such route")


class Deadlines:
    """A deadline for each task in :meth:`watch`: past it, the task is cancelled, and
    :meth:`expired` tells that cancellation from any other.

    A store that hangs (a database that stopped answering, a disk that blocks) must not hold
    webhooks forever. ``asyncio.timeout`` costs a timer per request, a few per cent of a
    webhook's time; here there is one timer at a time, for the oldest task watched.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started: dict[asyncio.Task[Any], float] = {}  # oldest first (insertion order)
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any]) -> None:
        loop = task.get_loop()
        self._started[task] = now = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(now + self.seconds, self._check, loop)

    def forget(self, task: asyncio.Task[Any]) -> None:
        self._started.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` was cancelled for its deadline (then it is no longer cancelled)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._started:
            task, started = next(iter(self._started.items()))  # the oldest
            if now - started < self.seconds:  # the next check is at its deadline
                self._timer = loop.call_at(started + self.seconds, self._check, loop)
                return
            del self._started[task]
            self._expired.add(task)
            task.cancel()
