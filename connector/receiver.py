"""The HTTP side: Mimeeq's webhooks in, probes for the orchestrator.

A webhook is answered 202 only once its event is durably stored. Every refusal is a JSON
``{"error": ...}`` that says what is wrong, and stores nothing. Authentication is checked before
the body is even read, and an unknown tenant looks exactly like a wrong token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from connector.config import Tenant
from connector.observability import get_logger
from connector.payloads import CONTACT_EVENTS, OTHER_EVENTS, PAYLOAD_MODELS
from connector.store.base import NewEvent

if TYPE_CHECKING:
    from connector.service import Service

log = get_logger("connector.receiver")

_NO_TOKEN = b"\x00" * 32  # compared against when the tenant is unknown, to take the same time


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


class Receiver:
    """Request handlers bound to a running service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def webhook(self, request: web.Request) -> web.Response:
        tenant = self.service.config.tenants.get(request.match_info["tenant"])
        event = request.match_info["event"]
        response, outcome = await self._webhook(request, tenant, event)
        # Labels a caller cannot invent: a configured tenant, a Mimeeq event name.
        self.service.metrics.events.labels(
            tenant.slug if tenant else "unknown",
            event if event in CONTACT_EVENTS or event in OTHER_EVENTS else "unknown",
            outcome,
        ).inc()
        return response

    async def _webhook(
        self, request: web.Request, tenant: Tenant | None, event: str
    ) -> tuple[web.Response, str]:
        service = self.service
        if not authorized(tenant, request.headers):
            return error(401, "missing or invalid authentication header"), "unauthorized"
        assert tenant is not None
        if not service.accepting:
            return error(503, "the connector is shutting down; retry shortly"), "unavailable"
        if event in OTHER_EVENTS:
            return json_response(202, {"eventId": None, "status": "ignored"}), "ignored"
        op = CONTACT_EVENTS.get(event)
        if op is None:
            refusal = error(404, f"unknown event {event!r}", events=sorted(CONTACT_EVENTS))
            return refusal, "unknown_event"

        limit = service.config.server.max_body_bytes
        too_large = error(413, f"body is larger than {limit} bytes"), "too_large"
        if request.content_length is not None and request.content_length > limit:
            return too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._invalid(tenant, event, 400, f"body is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return self._invalid(
                tenant, event, 400, f"body must be a JSON object, got {_json_type(data)}"
            )
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
        tenant: Tenant, event: str, status: int, message: str, field: str | None = None
    ) -> tuple[web.Response, str]:
        """A payload Mimeeq should not have sent: refused, and worth a line in the log."""
        log.info("webhook refused", tenant=tenant.slug, event_type=event, status=status,
                 error=message)  # fmt: skip
        extra = {"field": field} if field else {}
        return error(status, message, **extra), "invalid"

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
    app.router.add_post("/webhooks/{tenant}/{event}", receiver.webhook)
    app.router.add_get("/healthz", receiver.healthz)
    app.router.add_get("/readyz", receiver.readyz)
    app.router.add_get("/metrics", receiver.metrics)
    # Anything else gets a JSON error too (routes, unlike a middleware, cost the hot path nothing).
    for path in ("/webhooks/{tenant}/{event}", "/healthz", "/readyz", "/metrics"):
        app.router.add_route("*", path, _method_not_allowed)
    app.router.add_route("*", "/{path:.*}", _not_found)
    return app


async def _method_not_allowed(request: web.Request) -> web.Response:
    return error(405, f"method {request.method} not allowed here")


async def _not_found(request: web.Request) -> web.Response:
    return error(404, "no such route")
