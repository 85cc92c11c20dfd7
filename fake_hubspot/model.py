"""The fake's vocabulary: HubSpot's constants, the call log entry, refusals and error bodies."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

MAX_INPUTS = 100  # HubSpot's batch limit (not in the spec)
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
SCOPES_MESSAGE = (
    "This app hasn't been granted all required scopes to make this call. Read more about "
    "required scopes here: https://developers.hubspot.com/scopes."
)

OBJECT_TYPES = {
    "contacts": "contacts",
    "contact": "contacts",
    "0-1": "contacts",
    "companies": "companies",
    "company": "companies",
    "0-2": "companies",
}
SINGULAR = {"contacts": "CONTACT", "companies": "COMPANY"}
MODIFIED = {"contacts": "lastmodifieddate", "companies": "hs_lastmodifieddate"}
DEFAULT_READ = {"contacts": ["email", "firstname", "lastname"], "companies": ["name", "domain"]}
# HubSpot-defined association types of the default (unlabelled) association
ASSOCIATION_TYPE = {("contacts", "companies"): 279, ("companies", "contacts"): 280}

PROPERTY_TYPES = {"string", "number", "date", "datetime", "enumeration", "bool"}
FIELD_TYPES = {
    "textarea",
    "text",
    "date",
    "file",
    "number",
    "select",
    "radio",
    "checkbox",
    "booleancheckbox",
    "calculation_equation",
    "phonenumber",
    "html",
}
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass
class Call:
    """One request as the fake saw it."""

    method: str
    path: str
    status: int  # 0 while running, and for a connection closed without an answer ("reset")
    at: float  # time.monotonic() at arrival
    inputs: int = 0  # len(body["inputs"]) for batch calls
    body: Any = None  # the parsed JSON body, None when absent or malformed
    query: dict[str, str] = field(default_factory=dict)
    gone: bool = False  # the client closed the connection before it had the whole answer


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def correlation_id() -> str:
    return str(uuid.uuid4())


# --- errors ---------------------------------------------------------------------------------------


class Refusal(Exception):
    """Answer the whole request with HubSpot's error body (status, message, correlationId, ...)."""

    def __init__(self, status: int, category: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"status": "error", "message": message, "correlationId": correlation_id()}
        self.body["category"] = category
        self.body.update(extra)

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status)


def bad_request(message: str, **extra: Any) -> Refusal:
    return Refusal(400, "VALIDATION_ERROR", message, **extra)


class InputFailure(Exception):
    """One input of a batch failed; the others go on (a 207), unless ``conflict`` makes it a 409."""

    def __init__(
        self,
        category: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        conflict: str | None = None,  # the id of the contact that already has this email
        email: str = "",
    ) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.details = details or []
        self.conflict = conflict
        self.email = email


def standard_error(
    category: str,
    message: str,
    context: dict[str, list[str]],
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An entry of a 207's ``errors``: the spec's StandardError, which the client requires whole."""
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "errors": details or [],
        "links": {},
    }


def invalid(name: str, message: str, code: str) -> dict[str, Any]:
    """HubSpot's per-property validation result, as it appears inside its error messages."""
    return {"isValid": False, "message": message, "error": code, "name": name}


def invalid_message(failures: list[dict[str, Any]]) -> str:
    return "Property values were not valid: " + json.dumps(failures, separators=(",", ":"))


def failure_details(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"message": f["message"], "code": f["error"], "context": {"propertyName": [f["name"]]}}
        for f in failures
    ]


# --- request body shapes (from the OpenAPI specs and the client's property models) ----------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RAW_BODY = web.RequestKey("raw_body", bytes)  # read once by the edge, parsed by the handler


def query_list(request: web.Request, name: str) -> list[str]:
    """A list query parameter: repeated (the client's "multi" format) or comma-separated."""
    return [v for value in request.query.getall(name, []) for v in value.split(",") if v]


def is_write(method: str, path: str) -> bool:
    """Whether a call goes to an endpoint that changes data."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    return not path.endswith(("/batch/read", "/search"))


def required_scope(method: str, path: str) -> str:
    obj_type = next((t for t in ("contacts", "companies") if t in path), "contacts")
    area = "schemas" if "/properties/" in path else "objects"
    access = "read" if method == "GET" or path.endswith("/batch/read") else "write"
    return f"crm.{area}.{obj_type}.{access}"
