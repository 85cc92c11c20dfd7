"""A fake HubSpot: the parts of the CRM API that mimeeq-connector uses, in memory, for tests.

It follows HubSpot's OpenAPI specs (``reference/hubspot``: contacts and companies v3, associations
v4) for paths and bodies, rejects bodies they do not describe, and answers with every field the
models of the real ``hubspot-api-client`` require, so that client can be pointed at it::

    fake = FakeHubSpot(rate_limit=3, interval=1.0)
    url = await fake.start()
    client = hubspot.Client.create(access_token=fake.token, host=url)
    await asyncio.to_thread(client.crm.contacts.batch_api.upsert, {...})   # the client is sync

Tests read and arrange the state directly (``contacts``, ``archived``, ``properties``, ...) and
steer failures with ``fail_next``, ``failure_rate``, ``down``, ``conflict_mode``,
``validation_mode`` and ``enumeration_needs_options``, and slowness with ``latency`` (every
request), ``delay_next`` (chosen ones) and ``trickle`` (answers sent a byte at a time).

Like a real server, the fake finishes what it started: a request whose client gave up (a timeout,
a cancelled push) and closed the connection is still processed to the end, its write applied
(``Call.gone`` tells). A connector must cope with a write that lands after it stopped waiting.
``settled()`` waits until no request is being processed.

Layout: the edge (call log, failure injection, auth, rate limits, latency) is one middleware;
writes go through ``Session`` (staged, so a batch refused whole changes nothing); each endpoint is
one handler; request bodies are checked against the small shapes in ``SHAPES``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from zoneinfo import ZoneInfo

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


class Props:
    """A ``properties`` object: property name -> string (null is taken as "" and clears)."""


ASSOCIATION_FOR_OBJECT = {
    "to": {"id": str},
    "types": [{"associationCategory": str, "associationTypeId": int}],
}
OPTION = {"label": str, "value": str, "hidden?": bool, "displayOrder?": int, "description?": str}
PROPERTY_FIELDS = {
    "label": str,
    "type": str,
    "fieldType": str,
    "groupName": str,
    "description?": str,
    "options?": [OPTION],
    "displayOrder?": int,
    "hidden?": bool,
    "formField?": bool,
    "calculationFormula?": str,
}
SHAPES: dict[str, Any] = {
    "upsert": {
        "inputs": [{"id": str, "idProperty?": str, "objectWriteTraceId?": str, "properties": Props}]
    },
    "update": {
        "inputs": [{"id": str, "idProperty?": str, "objectWriteTraceId?": str, "properties": Props}]
    },
    # the spec marks ``associations`` required; HubSpot and the client's model do not
    "create": {
        "inputs": [
            {
                "properties": Props,
                "associations?": [ASSOCIATION_FOR_OBJECT],
                "objectWriteTraceId?": str,
            }
        ]
    },
    "read": {
        "inputs": [{"id": str}],
        "properties": [str],
        "propertiesWithHistory": [str],
        "idProperty?": str,
    },
    "archive": {"inputs": [{"id": str}]},
    "gdpr": {"objectId": str, "idProperty?": str},
    "create_one": {"properties": Props, "associations?": [ASSOCIATION_FOR_OBJECT]},
    "update_one": {"properties": Props},
    "associate": {"inputs": [{"from": {"id": str}, "to": {"id": str}}]},
    "association_archive": {"inputs": [{"from": {"id": str}, "to": [{"id": str}]}]},
    "property_create": {
        "name": str,
        **PROPERTY_FIELDS,
        "hasUniqueValue?": bool,
        "referencedObjectType?": str,
        "externalOptions?": bool,
    },
    "property_update": {f"{k.rstrip('?')}?": v for k, v in PROPERTY_FIELDS.items()},
    "group_create": {"name": str, "label": str, "displayOrder?": int},
}


def check_shape(value: Any, shape: Any, where: str) -> None:
    """Refuse (400) a body the spec does not describe: wrong types, unknown or missing fields."""
    if shape is Props:
        if not isinstance(value, dict):
            raise bad_request(f"Invalid input JSON: {where}: expected an object")
        for name, v in value.items():
            if v is not None and not isinstance(v, str):
                raise bad_request(
                    f"Invalid input JSON: {where}.{name}: property values must be strings"
                )
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise bad_request(f"Invalid input JSON: {where}: expected an array")
        for i, item in enumerate(value):
            check_shape(item, shape[0], f"{where}[{i}]")
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            raise bad_request(f"Invalid input JSON: {where or 'body'}: expected an object")
        fields = {k.rstrip("?"): (v, k.endswith("?")) for k, v in shape.items()}
        for name in value:
            if name not in fields:
                raise bad_request(
                    f'Invalid input JSON: {where or "body"}: unrecognized field "{name}"'
                )
        for name, (sub, optional) in fields.items():
            if value.get(name) is None:
                if not optional:
                    raise bad_request(
                        f'Invalid input JSON: {where or "body"}: missing required field "{name}"'
                    )
                continue
            check_shape(value[name], sub, f"{where}.{name}" if where else name)
    else:
        ok = isinstance(value, shape) and not (shape is int and isinstance(value, bool))
        if not ok:
            raise bad_request(f"Invalid input JSON: {where}: expected {shape.__name__}")


# --- property definitions -------------------------------------------------------------------------


def definition(
    name: str,
    label: str,
    *,
    type: str = "string",
    field_type: str = "text",
    group: str = "contactinformation",
    options: Iterable[tuple[str, str] | dict[str, Any]] = (),
    unique: bool = False,
    read_only: bool = False,
    hubspot_defined: bool = True,
    description: str = "",
) -> dict[str, Any]:
    """A property definition in the shape of the client's ``ModelProperty``."""
    now = now_iso()
    prop: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": type,
        "fieldType": field_type,
        "groupName": group,
        "description": description,
        "options": [option(o, i) for i, o in enumerate(options)],
        "displayOrder": -1,
        "hasUniqueValue": unique,
        "hidden": False,
        "formField": not read_only,
        "calculated": False,
        "externalOptions": False,
        "archived": False,
        "createdAt": now,
        "updatedAt": now,
        "modificationMetadata": {
            "archivable": not hubspot_defined,
            "readOnlyDefinition": hubspot_defined,
            "readOnlyValue": read_only,
            "readOnlyOptions": False,
        },
    }
    if hubspot_defined:
        prop["hubspotDefined"] = True
    return prop


def option(o: tuple[str, str] | dict[str, Any], order: int) -> dict[str, Any]:
    """An enumeration option; from (value, label) or from an OptionInput body."""
    if isinstance(o, tuple):
        o = {"value": o[0], "label": o[1]}
    return {
        "label": o.get("label", o["value"]),
        "value": o["value"],
        "displayOrder": o.get("displayOrder", order),
        "hidden": o.get("hidden", False),
        "description": o.get("description", ""),
    }


CONTACT_TEXT = {
    "email": "Email",
    "firstname": "First Name",
    "lastname": "Last Name",
    "address": "Street Address",
    "city": "City",
    "zip": "Postal Code",
    "state": "State/Region",
    "country": "Country/Region",
    "jobtitle": "Job Title",
    "company": "Company Name",
    "website": "Website URL",
}
LIFECYCLE_STAGES = [
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
]
LEAD_STATUSES = [
    ("NEW", "New"),
    ("OPEN", "Open"),
    ("IN_PROGRESS", "In Progress"),
    ("OPEN_DEAL", "Open Deal"),
    ("UNQUALIFIED", "Unqualified"),
    ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
    ("CONNECTED", "Connected"),
    ("BAD_TIMING", "Bad Timing"),
]


def complete(prop: dict[str, Any]) -> dict[str, Any]:
    """A definition written by hand in a test, with the fields the client's model requires."""
    name = prop["name"]
    base = definition(
        name,
        prop.get("label", name),
        type=prop.get("type", "string"),
        field_type=prop.get("fieldType", "text"),
        group=prop.get("groupName", ""),
        hubspot_defined=False,
    )
    options = [option(o, i) for i, o in enumerate(prop.get("options", []))]
    return {**base, **prop, "options": options}


def standard_properties() -> dict[str, dict[str, dict[str, Any]]]:
    """HubSpot's standard properties the connector may map to, and the read-only system ones."""
    contacts = [definition(name, label) for name, label in CONTACT_TEXT.items()]
    contacts += [
        definition("phone", "Phone Number", field_type="phonenumber"),
        definition("mobilephone", "Mobile Phone Number", field_type="phonenumber"),
        definition("lifecyclestage", "Lifecycle Stage", type="enumeration", field_type="radio",
                   options=LIFECYCLE_STAGES),
        definition("hs_lead_status", "Lead Status", type="enumeration", field_type="radio",
                   options=LEAD_STATUSES),
    ]  # fmt: skip
    group = "companyinformation"
    companies = [
        definition("name", "Company name", group=group),
        definition("domain", "Company Domain Name", group=group),
    ]
    result = {}
    for obj_type, props in [("contacts", contacts), ("companies", companies)]:
        group = props[0]["groupName"]
        system = dict(group=group, read_only=True)
        props += [
            definition("hs_object_id", "Record ID", type="number", field_type="number", **system),
            definition("createdate", "Create Date", type="datetime", field_type="date", **system),
            definition(MODIFIED[obj_type], "Last Modified Date", type="datetime",
                       field_type="date", **system),
        ]  # fmt: skip
        result[obj_type] = {p["name"]: p for p in props}
    return result


def value_failure(prop: dict[str, Any], name: str, value: str) -> dict[str, Any] | None:
    """Why HubSpot would refuse this value of this property (None when it is fine)."""
    if prop.get("modificationMetadata", {}).get("readOnlyValue"):
        return invalid(name, f'Property "{name}" is read-only', "READ_ONLY_VALUE")
    if value == "":
        return None  # "" clears any property
    if name == "email" and not EMAIL.fullmatch(value):
        return invalid(name, f"Email address {value} is invalid", "INVALID_EMAIL")
    kind = prop.get("type", "string")
    if kind == "enumeration":
        allowed = [o["value"] for o in prop.get("options", [])]
        values = value.split(";") if prop.get("fieldType") == "checkbox" else [value]
        for v in values:
            if v not in allowed:
                message = f"{v} was not one of the allowed options: [{', '.join(allowed)}]"
                return invalid(name, message, "INVALID_OPTION")
    elif kind == "number":
        try:
            float(value)
        except ValueError:
            return invalid(name, f"{value} is not a valid number", "INVALID_NUMBER")
    elif kind == "bool" and value.lower() not in ("true", "false"):
        return invalid(name, f"{value} is not a valid boolean (true or false)", "INVALID_BOOLEAN")
    elif kind == "date" and not is_midnight_date(value):
        message = (
            f"{value} is not a valid date: use YYYY-MM-DD or epoch milliseconds at midnight UTC"
        )
        return invalid(name, message, "INVALID_DATE")
    elif kind == "datetime" and not is_datetime(value):
        return invalid(name, f"{value} is not a valid datetime", "INVALID_DATETIME")
    return None


def is_midnight_date(value: str) -> bool:
    if value.isdigit():
        return int(value) % 86_400_000 == 0
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def is_datetime(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# --- objects, unique-value indexes and staged writes ----------------------------------------------


def normal(prop: str, value: str) -> str:
    return value.lower() if prop == "email" else value


class Tracked(dict[Any, Any]):
    """A dict that counts its direct edits: one count, ``Tracked.edits``, for all of them.

    The fake keeps its objects in these (the dicts of objects and each object's properties), so a
    test editing them by hand makes every unique-value index stale (rebuilt at its next use). The
    fake's own writes go round the count (``dict.__setitem__(d, ...)``, ``FakeHubSpot._store``)
    and keep the indexes up to date instead. Building one (``Tracked(mapping)``) is no edit.
    """

    __slots__ = ()
    edits = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        Tracked.edits += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        Tracked.edits += 1
        super().__delitem__(key)

    def __ior__(self, other: Any) -> Tracked:  # type: ignore[misc]
        Tracked.edits += 1
        return super().__ior__(other)

    def pop(self, *args: Any) -> Any:
        Tracked.edits += 1
        return super().pop(*args)

    def popitem(self) -> tuple[Any, Any]:
        Tracked.edits += 1
        return super().popitem()

    def clear(self) -> None:
        Tracked.edits += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        Tracked.edits += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        Tracked.edits += 1
        return super().setdefault(key, default)


class UniqueIndex:
    """``normal(value)`` -> id of the object that holds it, for one property of one dict of objects.

    Built in one pass over the objects; when values are shared (only edits by hand or
    ``add_contact`` can do that) the last object in dict order owns the value, as a scan would
    find it. ``fresh`` says whether the objects may have changed since without the index seeing it.
    """

    __slots__ = ("edits", "owners", "prop", "serial", "shared", "size", "source")

    def __init__(self, source: dict[str, dict[str, str]], prop: str, serial: int) -> None:
        self.source = source
        self.prop = prop
        self.owners: dict[str, str] = {}
        self.shared = False  # some value belongs to more than one object
        tracked = isinstance(source, Tracked)
        for oid, props in source.items():
            tracked = tracked and isinstance(props, Tracked)
            key = self.key(props)
            if key is not None:
                self.shared = self.shared or key in self.owners
                self.owners[key] = oid
        self.size = len(source)
        self.edits = Tracked.edits
        # objects put in by hand as plain dicts can change unseen: then trust this index only in
        # the session (request) that built it
        self.serial = None if tracked else serial

    def key(self, props: Mapping[str, str] | None) -> str | None:
        value = props.get(self.prop) if props is not None else None
        return normal(self.prop, value) if value else None

    def fresh(self, source: dict[str, dict[str, str]], serial: int | None) -> bool:
        return (
            self.source is source
            and self.size == len(source)
            and self.edits == Tracked.edits
            and self.serial in (None, serial)
        )

    def holds(self, oid: str, key: str) -> bool:
        """Whether object ``oid`` (still) has the value: a check of a hit against the object."""
        return self.key(self.source.get(oid)) == key

    def change(
        self, oid: str, old: Mapping[str, str] | None, new: Mapping[str, str] | None
    ) -> bool:
        """Follow object ``oid`` going from ``old`` to ``new`` (None: absent); a new object goes
        last in dict order. False when the index cannot follow (shared values): drop it."""
        before, after = self.key(old), self.key(new)
        if before == after:
            return True
        if before is not None and self.owners.get(before) == oid:
            if self.shared:  # another object may hold the value too
                return False
            del self.owners[before]
        if after is not None:
            holder = self.owners.get(after)
            if holder is not None and holder != oid:
                if old is not None:  # which one owns it depends on where each one is
                    return False
                self.shared = True  # the new object comes last: it owns the value
            self.owners[after] = oid
        return True


class Session:
    """The objects of one dict of ``FakeHubSpot`` (``contacts``, ``archived``, ...) as one request
    sees and changes them.

    Changes are staged and reach the live dict only on ``commit``, so a batch that fails whole
    (409, 400) changes nothing. Lookups by unique value go to the fake's persistent indexes (kept
    up to date by ``commit``), with the staged objects laid over them: staged changes are seen
    by this session only, and by the shared indexes only once committed.
    """

    def __init__(self, fake: FakeHubSpot, kind: str) -> None:
        self.fake = fake
        self.kind = kind
        self.live: dict[str, dict[str, str]] = getattr(fake, kind)
        self.serial = next(fake._serials)
        self.staged: dict[str, dict[str, str]] = {}
        self._staged_owners: dict[str, dict[str, str]] = {}  # prop -> normal(value) -> id

    def get(self, oid: str) -> dict[str, str] | None:
        return self.staged[oid] if oid in self.staged else self.live.get(oid)

    def owner(self, prop: str, value: str) -> str | None:
        """The id of the object whose ``prop`` is ``value`` (emails compare case-insensitively)."""
        if not value:
            return None
        if prop == "hs_object_id":
            return value if self.get(value) is not None else None
        key = normal(prop, value)
        oid = self._staged_index(prop).get(key)
        if oid is not None:
            return oid
        oid = self.fake._owner(self.kind, prop, key, self.serial)
        if oid is not None and oid in self.staged:
            return None  # its staged version has another value (or the staged index had it)
        return oid

    def _staged_index(self, prop: str) -> dict[str, str]:
        index = self._staged_owners.get(prop)
        if index is None:
            index = self._staged_owners[prop] = {}
            for oid, props in self.staged.items():
                if props.get(prop):
                    index[normal(prop, props[prop])] = oid
        return index

    def put(self, oid: str, props: dict[str, str]) -> None:
        old = self.staged.get(oid) or {}
        for prop, index in self._staged_owners.items():
            if old.get(prop) and index.get(normal(prop, old[prop])) == oid:
                del index[normal(prop, old[prop])]
            if props.get(prop):
                index[normal(prop, props[prop])] = oid
        self.staged[oid] = props

    def commit(self) -> None:
        changes = {oid: Tracked(props) for oid, props in self.staged.items()}
        self.fake._store(self.kind, changes, self.serial)
        self.staged.clear()
        self._staged_owners.clear()


@dataclass
class Input:
    """One object to write, whatever the endpoint."""

    ref: str | None  # what a 207 error names in context.ids (creates name no id)
    props: dict[str, str]  # the given values, "" clears
    id_prop: str | None = None  # find the object by this property's value (or hs_object_id) ...
    id_value: str = ""
    may_create: bool = True  # ... and create it when there is none
    trace: str | None = None  # objectWriteTraceId
    associations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Written:
    oid: str
    shown: dict[str, str]  # the properties the answer shows
    new: bool
    trace: str | None
    associations: list[dict[str, Any]] = field(default_factory=list)


# --- the fake -------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RAW_BODY = web.RequestKey("raw_body", bytes)  # read once by the edge, parsed by the handler


class FakeHubSpot:
    """One HubSpot portal with one private app (one token, one rate limit).

    Objects are found by unique value (email, case-insensitive, and ``hasUniqueValue``
    properties) through indexes kept across requests, one per dict of objects and property, so a
    batch costs the same against 10 contacts or 100,000. Requests and the helpers (``add_contact``,
    ``add_company``, archive, GDPR delete, property deletion) keep them up to date.

    Tests may still edit ``contacts``, ``companies``, ``archived`` and ``archived_companies``
    between requests, and the objects in them, with the dicts' own methods: ``d[k] = v``,
    ``del d[k]``, ``pop``, ``update``, ``setdefault``, ``clear``, ``|=``, ... . Every such edit is
    safe, whatever property it touches, unique or not: these dicts count their edits (they are
    ``Tracked`` dicts), and any edit makes the next lookup rebuild its index, once. Also safe:
    putting plain dicts in by hand (``fake.contacts["7"] = {"email": ...}``, or a whole new
    ``fake.contacts = {...}``), later edits of those included; lookups in a dict that holds any
    then scan it once per request, as the fake did before it kept indexes. As a further guard, a
    lookup checks what it finds against the object itself and rebuilds its index on a mismatch,
    and an index whose dict changed size unseen is rebuilt.

    Not seen: edits that go round those methods, such as ``dict.__setitem__(d, k, v)``. Call
    ``fake.reindex()`` after such unusual edits: it drops every index, and each is built again
    from the objects at its next use. Editing property definitions (``properties``) needs
    nothing: the indexes hold values, whatever is defined.
    """

    def __init__(
        self,
        *,
        token: str = "hs-test-token",
        rate_limit: int = 100,
        interval: float = 10.0,
        daily_limit: int | None = None,
        latency: float = 0.0,
        time_zone: str = "UTC",
    ) -> None:
        self.token = token
        self.rate_limit = rate_limit
        self.interval = interval
        self.daily_limit = daily_limit
        self.latency = latency  # seconds every processed request takes
        self.time_zone = time_zone  # the portal's (account-info); its daily limit resets there
        # state
        self.contacts: dict[str, dict[str, str]] = Tracked()
        self.archived: dict[str, dict[str, str]] = Tracked()
        self.companies: dict[str, dict[str, str]] = Tracked()
        self.archived_companies: dict[str, dict[str, str]] = Tracked()
        self.associations: set[tuple[str, str]] = set()  # (contact id, company id)
        self.properties = standard_properties()
        self.groups: dict[str, set[str]] = {
            "contacts": {"contactinformation"},
            "companies": {"companyinformation"},
        }
        self.group_labels: dict[tuple[str, str], str] = {
            ("contacts", "contactinformation"): "Contact information",
            ("companies", "companyinformation"): "Company information",
        }
        self.blocklist: set[str] = set()  # GDPR-deleted emails (lower case)
        self.calls: list[Call] = []
        # behaviour
        # answers for the next requests, in turn: a status, "reset", or None (no failure)
        self.fail_next: list[int | str | None] = []
        self.failure_rate = 0.0
        self.failure_statuses: list[int] = [503, 429]
        self.random = random.Random(1234)  # failure_rate draws from it: seeded, so repeatable
        self.down = False
        self.scopes_missing = False
        self.conflict_mode = "409"  # "409" | "207"
        self.conflict_body = "classic"  # "classic" | "identity" (newer 409 body, identityProfile)
        self.validation_mode = "207"  # "207" | "400"
        self.association_error_status = 207  # the spec only lists 200 for associate/default
        # Portals differ: some refuse to create an enumeration property without options.
        self.enumeration_needs_options = True
        self.delay_next: list[float] = []  # extra seconds for the next processed requests, in turn
        self.trickle = 0.0  # seconds between the bytes of every answer's body (0: all at once)
        self.overlaps = 0  # writes of one contact that were processed at the same time
        self.rate_refusals = 0  # 429s for the rolling window (not the injected ones)
        # internals
        self._ids = itertools.count(101)
        self._indexes: dict[tuple[str, str], UniqueIndex] = {}  # (dict of objects, property)
        self._serials = itertools.count(1)  # of sessions
        self._window: deque[float] = deque()
        self._daily_used = 0
        self._busy: Counter[str] = Counter()
        self._running = 0  # requests being processed
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = self.make_app()

    # --- lifecycle ---

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._edge])
        objects = r"/crm/v3/objects/{object_type:contacts|companies}"
        v4 = "/crm/v4/associations/{from_type}/{to_type}/batch"
        props = "/crm/v3/properties/{object_type}"
        app.router.add_routes(
            [
                web.post(objects + "/batch/upsert", self._batch_upsert),
                web.post(objects + "/batch/update", self._batch_update),
                web.post(objects + "/batch/create", self._batch_create),
                web.post(objects + "/batch/read", self._batch_read),
                web.post(objects + "/batch/archive", self._batch_archive),
                web.post("/crm/v3/objects/contacts/gdpr-delete", self._gdpr_delete),
                web.get(objects, self._get_page),
                web.post(objects, self._create_one),
                web.get(objects + "/{oid}", self._get_one),
                web.patch(objects + "/{oid}", self._update_one),
                web.delete(objects + "/{oid}", self._archive_one),
                web.post(v4 + "/associate/default", self._associate_batch),
                web.post(v4 + "/archive", self._archive_associations),
                web.put(
                    "/crm/v4/objects/{from_type}/{from_id}/associations/default/{to_type}/{to_id}",
                    self._associate_one,
                ),
                web.get(
                    "/crm/v4/objects/{from_type}/{from_id}/associations/{to_type}",
                    self._associations_of,
                ),
                web.get(props + "/groups", self._groups_list),
                web.post(props + "/groups", self._group_create),
                web.get(props + "/groups/{name}", self._group_get),
                web.get(props, self._properties_list),
                web.post(props, self._property_create),
                web.get(props + "/{name}", self._property_get),
                web.patch(props + "/{name}", self._property_update),
                web.delete(props + "/{name}", self._property_archive),
                web.get("/account-info/v3/details", self._account_info),
            ]
        )
        return app

    async def start(self, port: int = 0) -> str:
        """Serve on ``port`` (0: any free one; pass the old port to come back after a stop)."""
        if self.app.frozen:  # an aiohttp app serves once: a restart needs a new one
            self.app = self.make_app()
        # handler_cancellation=False: a request whose client went away is processed to the end
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=False, shutdown_timeout=1.0
        )  # a hanging answer ends the test
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- helpers for tests ---

    def add_contact(self, **properties: str) -> str:
        """A contact that exists before the test starts (no validation); returns its id."""
        return self._add("contacts", properties)

    def add_company(self, **properties: str) -> str:
        return self._add("companies", properties)

    def add_property(
        self,
        name: str,
        *,
        object_type: str = "contacts",
        type: str = "string",
        field_type: str = "text",
        unique: bool = False,
        options: Iterable[tuple[str, str]] = (),
        group: str | None = None,
    ) -> dict[str, Any]:
        """A custom property, as if created through the properties API."""
        group = group or next(iter(sorted(self.groups[object_type])))
        prop = definition(
            name,
            name,
            type=type,
            field_type=field_type,
            group=group,
            options=options,
            unique=unique,
            hubspot_defined=False,
        )
        self.properties[object_type][name] = prop
        return prop

    def find(self, prop: str, value: str) -> tuple[str, dict[str, str]] | None:
        """The live contact whose ``prop`` is ``value`` (email case-insensitive)."""
        for oid, props in self.contacts.items():
            if props.get(prop) is not None and normal(prop, props[prop]) == normal(prop, value):
                return oid, props
        return None

    def writes(self) -> list[Call]:
        """The calls made to endpoints that change data, whatever their answer."""
        return [c for c in self.calls if is_write(c.method, c.path)]

    def count(self, status: int) -> int:
        return sum(1 for c in self.calls if c.status == status)

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait until no request is being processed (those whose client gave up included)."""
        async with asyncio.timeout(timeout):
            while self._running:
                await asyncio.sleep(0.01)

    def reindex(self) -> None:
        """Forget the unique-value indexes: each is built again from the objects at its next use.

        Only needed after edits that go round the dicts' own methods (see the class docstring).
        """
        self._indexes.clear()

    def _add(self, obj_type: str, properties: dict[str, str]) -> str:
        oid = str(next(self._ids))
        now = now_iso()
        system = {"hs_object_id": oid, "createdate": now, MODIFIED[obj_type]: now}
        self._store(self._live_kind(obj_type), {oid: Tracked({**properties, **system})})
        return oid

    @staticmethod
    def _live_kind(obj_type: str) -> str:
        return "contacts" if obj_type == "contacts" else "companies"

    @staticmethod
    def _archive_kind(obj_type: str) -> str:
        return "archived" if obj_type == "contacts" else "archived_companies"

    def _live(self, obj_type: str) -> dict[str, dict[str, str]]:
        return self.contacts if obj_type == "contacts" else self.companies

    def _archive_of(self, obj_type: str) -> dict[str, dict[str, str]]:
        return self.archived if obj_type == "contacts" else self.archived_companies

    # --- unique-value indexes ---

    def _owner(self, kind: str, prop: str, key: str, serial: int) -> str | None:
        """The id of the object of ``getattr(self, kind)`` whose ``prop`` is ``key`` (normal)."""
        source: dict[str, dict[str, str]] = getattr(self, kind)
        index = self._indexes.get((kind, prop))
        if index is None or not index.fresh(source, serial):
            index = self._indexes[(kind, prop)] = UniqueIndex(source, prop, serial)
        oid = index.owners.get(key)
        if oid is not None and not index.holds(oid, key):  # changed unseen: start again
            index = self._indexes[(kind, prop)] = UniqueIndex(source, prop, serial)
            oid = index.owners.get(key)
        return oid

    def _store(
        self,
        kind: str,
        changes: Mapping[str, dict[str, str] | None],
        serial: int | None = None,
    ) -> None:
        """Put objects into ``getattr(self, kind)`` (None: take them out), and keep its indexes.

        An index that was not fresh before (or cannot follow a change) is dropped instead.
        """
        source: dict[str, dict[str, str]] = getattr(self, kind)
        indexes = []
        for (k, prop), index in list(self._indexes.items()):
            if k != kind:
                continue
            if index.fresh(source, serial):
                indexes.append(index)
            else:
                del self._indexes[(k, prop)]
        for oid, new in changes.items():
            old = source.get(oid)
            for index in list(indexes):
                if not index.change(oid, old, new):
                    indexes.remove(index)
                    del self._indexes[(kind, index.prop)]
            if new is None:
                dict.pop(source, oid, None)
            else:
                dict.__setitem__(source, oid, new)
        for index in indexes:
            index.size = len(source)

    # --- the edge: call log, failure injection, auth, rate limits, latency ---

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        request[RAW_BODY] = raw
        call = Call(request.method, request.path, 0, time.monotonic(), query=dict(request.query))
        try:
            call.body = json.loads(raw) if raw else None
        except ValueError:
            call.body = None
        if isinstance(call.body, dict) and isinstance(call.body.get("inputs"), list):
            call.inputs = len(call.body["inputs"])
        self.calls.append(call)
        self._running += 1
        try:
            injected = self._injected_failure()
            if injected == "reset":
                # close the connection without an answer, like a dropped proxy connection
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=599)
            if injected is not None:
                response = self._failure_response(int(injected))
            else:
                response = await self._admitted(request, handler, call)
            response.headers.update(self._rate_headers())
            call.status = response.status
            call.gone = request.transport is None or request.transport.is_closing()
            if self.trickle and response.body and not call.gone:
                return await self._trickled(request, response, call)
            return response
        finally:
            self._running -= 1

    async def _trickled(
        self, request: web.Request, response: web.Response, call: Call
    ) -> web.StreamResponse:
        """Send the answer's body a byte at a time, ``trickle`` seconds apart."""
        body = response.body
        assert isinstance(body, bytes)
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        try:
            for i in range(len(body)):
                await asyncio.sleep(self.trickle)
                await stream.write(body[i : i + 1])
            await stream.write_eof()
        except ConnectionResetError:
            call.gone = True
        return stream

    def _injected_failure(self) -> int | str | None:
        """Failures decided before anything is processed, so they never change data."""
        if self.fail_next and (injected := self.fail_next.pop(0)) is not None:
            return injected
        if self.down:
            return 503
        if self.failure_rate and self.random.random() < self.failure_rate:
            return self.random.choice(self.failure_statuses)
        return None

    def _failure_response(self, status: int) -> web.Response:
        if status == 429:
            return self._rate_limited(daily=False, retry_after=1)
        if status == 401:
            return Refusal(401, "INVALID_AUTHENTICATION", AUTH_MESSAGE).response()
        if status == 403:
            return self._missing_scopes("crm.objects.contacts.write")
        category = "INTERNAL_ERROR" if status >= 500 else "ERROR"
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return Refusal(status, category, phrase).response()

    async def _admitted(self, request: web.Request, handler: Handler, call: Call) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Refusal(401, "INVALID_AUTHENTICATION", AUTH_MESSAGE).response()
        if self.scopes_missing and not request.path.startswith("/account-info/"):
            return self._missing_scopes(required_scope(request.method, request.path))
        limited = self._count_request()
        if limited is not None:
            return limited
        delay = self.latency + (self.delay_next.pop(0) if self.delay_next else 0.0)
        # overlaps can only happen while a request takes time: this one, or one in flight
        touched = self._touched(request, call.body) if delay or self._busy else []
        self.overlaps += sum(1 for keys in touched if any(self._busy[k] for k in keys))
        for keys in touched:
            self._busy.update(keys)
        try:
            if delay:
                await asyncio.sleep(delay)
            response = await handler(request)
            assert isinstance(response, web.Response)
            return response
        except Refusal as refusal:
            return refusal.response()
        except web.HTTPException as exc:  # no route, or wrong method
            category = "OBJECT_NOT_FOUND" if exc.status == 404 else "VALIDATION_ERROR"
            return Refusal(exc.status, category, exc.reason).response()
        finally:
            for keys in touched:
                self._busy.subtract(keys)
            self._busy += Counter()  # drop zero counts

    def _missing_scopes(self, scope: str) -> web.Response:
        details = [
            {
                "message": "One or more of the following scopes are required.",
                "context": {"requiredGranularScopes": [scope]},
            }
        ]
        links = {"scopes": "https://developers.hubspot.com/scopes"}
        return Refusal(
            403, "MISSING_SCOPES", SCOPES_MESSAGE, errors=details, links=links
        ).response()

    def _count_request(self) -> web.Response | None:
        """Admit the request into the rolling window and the daily quota, or answer 429.

        Requests count at arrival; refused ones do not count (and change nothing).
        """
        now = time.monotonic()
        while self._window and self._window[0] <= now - self.interval:
            self._window.popleft()
        if self.daily_limit is not None and self._daily_used >= self.daily_limit:
            return self._rate_limited(daily=True)
        if len(self._window) >= self.rate_limit:
            self.rate_refusals += 1
            wait = self._window[0] + self.interval - now
            return self._rate_limited(daily=False, retry_after=max(1, math.ceil(wait)))
        self._window.append(now)
        self._daily_used += 1
        return None

    def _rate_limited(self, *, daily: bool, retry_after: int | None = None) -> web.Response:
        if daily:
            message, policy = "You have reached your daily limit.", "DAILY"
        else:
            message, policy = (
                "You have reached your ten_secondly_rolling limit.",
                "TEN_SECONDLY_ROLLING",
            )
        body = {
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
            "policyName": policy,
        }
        response = web.json_response(body, status=429)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def _rate_headers(self) -> dict[str, str]:
        now = time.monotonic()
        used = sum(1 for t in self._window if t > now - self.interval)
        headers = {
            "X-HubSpot-RateLimit-Max": str(self.rate_limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.rate_limit - used)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.interval * 1000)),
        }
        if self.daily_limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self.daily_limit)
            remaining = max(0, self.daily_limit - self._daily_used)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(remaining)
        return headers

    def _touched(self, request: web.Request, body: Any) -> list[set[str]]:
        """For overlap counting: per input of a contact write, the keys of the contact it touches.

        Keys are ``id:<HubSpot id>`` and ``<unique property>:<value>``, so two writes meet whether
        they name the contact by id, email or a unique property.
        """
        if not is_write(request.method, request.path):
            return []
        path = request.path
        info = request.match_info
        items: list[Any] = []
        if path.startswith("/crm/v3/objects/contacts"):
            if "oid" in info:
                idp = request.query.get("idProperty") or "hs_object_id"
                given = body if isinstance(body, dict) else {}
                items = [{**given, "id": info["oid"], "idProperty": idp}]
            elif path.endswith("/gdpr-delete") and isinstance(body, dict):
                items = [{"id": body.get("objectId"), "idProperty": body.get("idProperty")}]
            elif isinstance(body, dict):
                items = body.get("inputs") or ([body] if "properties" in body else [])
        elif path.startswith("/crm/v4/") and "contact" in path:
            side = "from" if OBJECT_TYPES.get(info.get("from_type", "")) == "contacts" else "to"
            if "from_id" in info:
                items = [{"id": info[f"{side}_id"]}]
            elif isinstance(body, dict):
                for i in body.get("inputs") or []:
                    named = i.get(side) if isinstance(i, dict) else None
                    named = named if isinstance(named, list) else [named]  # archive: a list
                    items += [{"id": n.get("id")} for n in named if isinstance(n, dict)]
        session = Session(self, "contacts")
        unique = ["email", *self._unique_custom("contacts")]
        touched = []
        for item in items:
            if not isinstance(item, dict):
                continue
            named = [(item.get("idProperty") or "hs_object_id", item.get("id"))]
            if isinstance(item.get("properties"), dict):
                named += [(p, item["properties"].get(p)) for p in unique]
            keys: set[str] = set()
            for prop, value in named:
                if not isinstance(value, str) or not value:
                    continue
                if prop == "hs_object_id":
                    keys.add(f"id:{value}")
                    continue
                keys.add(f"{prop}:{normal(prop, value)}")
                if prop in unique and (oid := session.owner(prop, value)) is not None:
                    keys.add(f"id:{oid}")
            touched.append(keys)
        return touched

    # --- request helpers ---

    def _body(self, request: web.Request, shape: str) -> dict[str, Any]:
        raw = request[RAW_BODY]
        if not raw:
            raise bad_request("Invalid input JSON: the request has no body")
        try:
            body: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"Invalid input JSON: {exc}") from None
        check_shape(body, SHAPES[shape], "")
        if isinstance(body.get("inputs"), list) and len(body["inputs"]) > MAX_INPUTS:
            raise bad_request(
                f"Too many inputs: {len(body['inputs'])}. A batch takes at most {MAX_INPUTS}."
            )
        return body

    def _object_type(self, name: str) -> str:
        obj_type = OBJECT_TYPES.get(name)
        if obj_type is None:
            raise bad_request(f"Unable to infer object type from: {name}")
        return obj_type

    def _unique_custom(self, obj_type: str) -> list[str]:
        return [n for n, p in self.properties[obj_type].items() if p.get("hasUniqueValue")]

    def _check_id_property(self, obj_type: str, id_prop: str) -> None:
        unique = {"hs_object_id", *self._unique_custom(obj_type)}
        if obj_type == "contacts":
            unique.add("email")
        if id_prop not in self.properties[obj_type]:
            raise bad_request(f'Property "{id_prop}" does not exist')
        if id_prop not in unique:
            raise bad_request(
                f'Property "{id_prop}" is not a unique property and cannot be an idProperty'
            )

    def _check_duplicates(self, inputs: list[dict[str, Any]]) -> None:
        seen: set[tuple[str, str]] = set()
        duplicates = []
        for inp in inputs:
            id_prop = inp.get("idProperty") or "hs_object_id"
            key = (id_prop, normal(id_prop, inp["id"]))
            if key in seen:
                duplicates.append(inp["id"])
            seen.add(key)
        if duplicates:
            raise bad_request(
                f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique"
            )

    def _public(
        self,
        obj_type: str,
        oid: str,
        props: Mapping[str, str | None],
        *,
        archived: bool = False,
        history: Iterable[str] = (),
    ) -> dict[str, Any]:
        """A SimplePublicObject with the given properties shown."""
        stored = self._live(obj_type).get(oid) or self._archive_of(obj_type).get(oid) or props
        updated = stored.get(MODIFIED[obj_type]) or now_iso()
        result: dict[str, Any] = {
            "id": oid,
            "properties": props,
            "createdAt": stored.get("createdate") or updated,
            "updatedAt": updated,
            "archived": archived,
        }
        if archived:
            result["archivedAt"] = updated
        history = list(history)
        if history:
            result["propertiesWithHistory"] = {
                name: [{"value": stored[name], "timestamp": updated, "sourceType": "API"}]
                if stored.get(name)
                else []
                for name in history
            }
        return result

    def _shown(self, obj_type: str, props: dict[str, str], wanted: list[str]) -> dict[str, Any]:
        """The properties a read shows: those asked for (null when unset) and the system ones."""
        known = self.properties[obj_type]
        names = [n for n in (wanted or DEFAULT_READ[obj_type]) if n in known]
        names += ["hs_object_id", "createdate", MODIFIED[obj_type]]
        return {n: props.get(n) for n in names}

    @staticmethod
    def _batch(results: list[Any], errors: list[dict[str, Any]], ok: int) -> web.Response:
        now = now_iso()
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "requestedAt": now,
            "startedAt": now,
            "completedAt": now,
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return web.json_response(body, status=207 if errors else ok)

    # --- writing objects (shared by upsert, update, create and the single-object endpoints) ---

    def _apply(
        self, obj_type: str, inputs: list[Input], *, conflict_mode: str, validation_mode: str
    ) -> tuple[list[Written], list[dict[str, Any]]]:
        """Validate then write each input; refuse the whole batch where HubSpot would."""
        failures = [self._failures(obj_type, inp) for inp in inputs]
        if validation_mode == "400" and any(failures):
            every = [f for fs in failures for f in fs]
            # HubSpot's whole-batch answer does not say which input is at fault
            raise bad_request(invalid_message(every), errors=failure_details(every))
        session = Session(self, self._live_kind(obj_type))
        written: list[Written] = []
        errors: list[dict[str, Any]] = []
        for inp, fails in zip(inputs, failures, strict=True):
            context: dict[str, list[str]] = {}
            if inp.trace is not None:
                context["objectWriteTraceId"] = [inp.trace]
            elif inp.ref is not None:
                context["ids"] = [inp.ref]
            if fails:
                details = failure_details(fails)
                message = invalid_message(fails)
                errors.append(standard_error("VALIDATION_ERROR", message, context, details))
                continue
            try:
                written.append(self._write(session, obj_type, inp))
            except InputFailure as failure:
                if failure.conflict is not None and conflict_mode == "409":
                    raise self._conflict(failure) from None
                errors.append(
                    standard_error(failure.category, failure.message, context, failure.details)
                )
        session.commit()
        for w in written:
            self._associate_new(obj_type, w)
        return written, errors

    def _failures(self, obj_type: str, inp: Input) -> list[dict[str, Any]]:
        """Property validation of one input (values and the id value), as HubSpot reports it."""
        known = self.properties[obj_type]
        values = dict(inp.props)
        if inp.id_prop not in (None, "hs_object_id") and inp.may_create:
            values.setdefault(inp.id_prop, inp.id_value)  # the id becomes the value on create
        failures = []
        for name, value in values.items():
            prop = known.get(name)
            if prop is None:
                message = f'Property "{name}" does not exist'
                failures.append(invalid(name, message, "PROPERTY_DOESNT_EXIST"))
            elif (failure := value_failure(prop, name, value)) is not None:
                failures.append(failure)
        return failures

    def _write(self, session: Session, obj_type: str, inp: Input) -> Written:
        oid = session.owner(inp.id_prop, inp.id_value) if inp.id_prop else None
        if (
            oid is None
            and inp.id_prop is not None
            and (not inp.may_create or inp.id_prop == "hs_object_id")
        ):
            raise InputFailure("OBJECT_NOT_FOUND", self._not_found_message(obj_type))
        created = oid is None
        old = session.get(oid) if oid is not None else {}
        assert old is not None
        given = dict(inp.props)
        if created and inp.id_prop not in (None, "hs_object_id"):
            given[inp.id_prop] = inp.id_value
        props = {k: v for k, v in {**old, **given}.items() if v != ""}
        self._check_identity(session, obj_type, oid, old, props)
        oid = oid or str(next(self._ids))
        now = now_iso()
        system = {"hs_object_id": oid, "createdate": old.get("createdate", now)}
        system[MODIFIED[obj_type]] = now
        session.put(oid, {**props, **system})
        return Written(oid, {**given, **system}, created, inp.trace, inp.associations)

    def _check_identity(
        self,
        session: Session,
        obj_type: str,
        oid: str | None,
        old: dict[str, str],
        new: dict[str, str],
    ) -> None:
        """Emails (contacts) and hasUniqueValue values may belong to one live object only."""
        singular = SINGULAR[obj_type].lower()
        email = new.get("email", "") if obj_type == "contacts" else ""
        if email and normal("email", email) != normal("email", old.get("email", "")):
            if oid is None and email.lower() in self.blocklist:
                message = (
                    f"Cannot create a contact with email {email}: a contact with this email was "
                    "permanently deleted (GDPR delete) and the email is blocklisted"
                )
                failure = invalid("email", message, "BLOCKLISTED_EMAIL")
                raise InputFailure(
                    "VALIDATION_ERROR", invalid_message([failure]), failure_details([failure])
                )
            owner = session.owner("email", email)
            if owner is not None and owner != oid:
                message = f"Contact already exists. Existing ID: {owner}"
                # a contact created earlier in this same batch does not exist until the batch
                # commits: a 409 naming it would name nothing, so only this input fails
                conflict = owner if owner in session.live else None
                raise InputFailure("CONFLICT", message, conflict=conflict, email=email)
        for prop in self._unique_custom(obj_type):
            value = new.get(prop)
            if value and value != old.get(prop):
                owner = session.owner(prop, value)
                if owner is not None and owner != oid:
                    message = (
                        f'The value "{value}" of unique property "{prop}" already belongs to '
                        f"{singular} {owner}"
                    )
                    failure = invalid(prop, message, "UNIQUE_VALUE_CONFLICT")
                    raise InputFailure(
                        "VALIDATION_ERROR", invalid_message([failure]), failure_details([failure])
                    )

    def _conflict(self, failure: InputFailure) -> Refusal:
        """The 409 a batch gets for its first email conflict (the id only in the message)."""
        if self.conflict_body != "identity":
            return Refusal(409, "CONFLICT", failure.message)
        # the newer body HubSpot sends on some portals
        profile = {
            "vid": int(failure.conflict or 0),
            "identity": [{"value": failure.email, "type": "EMAIL", "isPrimary": True}],
            "isContact": True,
        }
        details = [
            {
                "message": f"A contact with email {failure.email} already exists. "
                f"Existing ID: {failure.conflict}",
                "in": "email",
            }
        ]
        return Refusal(
            409,
            "OBJECT_ALREADY_EXISTS",
            failure.message,
            identityProfile=profile,
            errors=details,
            error="CONTACT_EXISTS",
        )

    def _associate_new(self, obj_type: str, written: Written) -> None:
        """Associations given with a create (contacts -> companies only)."""
        for association in written.associations:
            to = association["to"]["id"]
            if obj_type == "contacts" and to in self.companies:
                self.associations.add((written.oid, to))

    @staticmethod
    def _not_found_message(obj_type: str) -> str:
        return (
            f"Could not get some {SINGULAR[obj_type]} objects, they may be deleted or not exist. "
            "Check that ids are valid."
        )

    def _batch_inputs(
        self, obj_type: str, body: dict[str, Any], *, may_create: bool
    ) -> list[Input]:
        inputs = body["inputs"]
        for inp in inputs:
            if inp.get("idProperty"):
                self._check_id_property(obj_type, inp["idProperty"])
        self._check_duplicates(inputs)
        return [
            Input(
                ref=inp["id"],
                props={k: v or "" for k, v in inp["properties"].items()},
                id_prop=inp.get("idProperty") or "hs_object_id",
                id_value=inp["id"],
                may_create=may_create,
            )
            for inp in inputs
        ]

    # --- contacts and companies: batch endpoints ---

    async def _batch_upsert(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "upsert")
        inputs = self._batch_inputs(obj_type, body, may_create=True)
        written, errors = self._apply(
            obj_type,
            inputs,
            conflict_mode=self.conflict_mode,
            validation_mode=self.validation_mode,
        )
        results = [{**self._public(obj_type, w.oid, w.shown), "new": w.new} for w in written]
        return self._batch(results, errors, 200)

    async def _batch_update(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "update")
        inputs = self._batch_inputs(obj_type, body, may_create=False)
        # email conflicts of updates come back per input
        written, errors = self._apply(
            obj_type, inputs, conflict_mode="207", validation_mode=self.validation_mode
        )
        results = [self._public(obj_type, w.oid, w.shown) for w in written]
        return self._batch(results, errors, 200)

    async def _batch_create(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "create")
        inputs = [
            Input(
                ref=None,
                props={k: v or "" for k, v in inp["properties"].items()},
                trace=inp.get("objectWriteTraceId"),
                associations=inp.get("associations") or [],
            )
            for inp in body["inputs"]
        ]
        written, errors = self._apply(
            obj_type,
            inputs,
            conflict_mode=self.conflict_mode,
            validation_mode=self.validation_mode,
        )
        results = []
        for w in written:
            result = self._public(obj_type, w.oid, w.shown)
            if w.trace is not None:
                result["objectWriteTraceId"] = w.trace
            results.append(result)
        return self._batch(results, errors, 201)

    async def _batch_read(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "read")
        id_prop = body.get("idProperty") or "hs_object_id"
        self._check_id_property(obj_type, id_prop)
        archived = request.query.get("archived", "").lower() == "true"
        kind = self._archive_kind(obj_type) if archived else self._live_kind(obj_type)
        session = Session(self, kind)
        source = session.live
        results, missing = [], []
        for ident in dict.fromkeys(inp["id"] for inp in body["inputs"]):
            oid = session.owner(id_prop, ident)
            if oid is None:
                missing.append(ident)
                continue
            props = source[oid]
            shown = self._shown(obj_type, props, body["properties"])
            history = body["propertiesWithHistory"]
            results.append(self._public(obj_type, oid, shown, archived=archived, history=history))
        errors = []
        if missing:
            message = self._not_found_message(obj_type)
            errors.append(standard_error("OBJECT_NOT_FOUND", message, {"ids": missing}))
        return self._batch(results, errors, 200)

    async def _batch_archive(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "archive")
        for inp in body["inputs"]:
            self._archive(obj_type, inp["id"])  # unknown ids are ignored
        return web.Response(status=204)

    def _archive(self, obj_type: str, oid: str) -> None:
        props = self._live(obj_type).get(oid)
        if props is not None:
            self._store(self._live_kind(obj_type), {oid: None})
            dict.__setitem__(props, MODIFIED[obj_type], now_iso())  # not an edit by hand
            self._store(self._archive_kind(obj_type), {oid: props})

    async def _gdpr_delete(self, request: web.Request) -> web.Response:
        body = self._body(request, "gdpr")
        id_prop = body.get("idProperty") or "hs_object_id"
        self._check_id_property("contacts", id_prop)
        oid = Session(self, "contacts").owner(id_prop, body["objectId"])
        if oid is None and id_prop == "hs_object_id" and body["objectId"] in self.archived:
            oid = body["objectId"]
        if oid is None:
            raise Refusal(
                404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric."
            )
        kind = "contacts" if oid in self.contacts else "archived"
        props = getattr(self, kind)[oid]
        self._store(kind, {oid: None})
        if props.get("email"):
            self.blocklist.add(props["email"].lower())
        self.associations = {a for a in self.associations if a[0] != oid}
        return web.Response(status=204)

    # --- contacts and companies: single-object endpoints ---

    def _single(self, obj_type: str, inp: Input) -> Written:
        """A single-object write: validation failures are 400s and conflicts 409s."""
        written, errors = self._apply(obj_type, [inp], conflict_mode="409", validation_mode="400")
        if errors:
            error = errors[0]
            status = 404 if error["category"] == "OBJECT_NOT_FOUND" else 400
            raise Refusal(status, error["category"], error["message"], errors=error["errors"])
        return written[0]

    async def _create_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "create_one")
        props = {k: v or "" for k, v in body["properties"].items()}
        inp = Input(ref=None, props=props, associations=body.get("associations") or [])
        written = self._single(obj_type, inp)
        return web.json_response(self._public(obj_type, written.oid, written.shown), status=201)

    async def _update_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "update_one")
        id_prop = request.query.get("idProperty") or "hs_object_id"
        self._check_id_property(obj_type, id_prop)
        oid = request.match_info["oid"]
        props = {k: v or "" for k, v in body["properties"].items()}
        inp = Input(ref=oid, props=props, id_prop=id_prop, id_value=oid, may_create=False)
        written = self._single(obj_type, inp)
        return web.json_response(self._public(obj_type, written.oid, written.shown))

    async def _archive_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        self._archive(obj_type, request.match_info["oid"])
        return web.Response(status=204)

    async def _get_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        id_prop = request.query.get("idProperty") or "hs_object_id"
        self._check_id_property(obj_type, id_prop)
        archived = request.query.get("archived", "").lower() == "true"
        kind = self._archive_kind(obj_type) if archived else self._live_kind(obj_type)
        session = Session(self, kind)
        source = session.live
        oid = session.owner(id_prop, request.match_info["oid"])
        if oid is None:
            raise Refusal(
                404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric."
            )
        shown = self._shown(obj_type, source[oid], query_list(request, "properties"))
        history = query_list(request, "propertiesWithHistory")
        return web.json_response(
            self._public(obj_type, oid, shown, archived=archived, history=history)
        )

    async def _get_page(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        archived = request.query.get("archived", "").lower() == "true"
        source = self._archive_of(obj_type) if archived else self._live(obj_type)
        try:
            limit = min(int(request.query.get("limit", "10")), 100)
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise bad_request("limit and after must be integers") from None
        wanted = query_list(request, "properties")
        ids = sorted(source, key=int)
        page = [i for i in ids if int(i) > after][:limit]
        body: dict[str, Any] = {
            "results": [
                self._public(
                    obj_type, oid, self._shown(obj_type, source[oid], wanted), archived=archived
                )
                for oid in page
            ]
        }
        if page and page[-1] != ids[-1]:
            body["paging"] = {"next": {"after": page[-1]}}
        return web.json_response(body)

    # --- associations v4 ---

    def _association_types(self, request: web.Request) -> tuple[str, str]:
        from_type = self._object_type(request.match_info["from_type"])
        to_type = self._object_type(request.match_info["to_type"])
        if (from_type, to_type) not in ASSOCIATION_TYPE:
            raise bad_request(f"Associations from {from_type} to {to_type} are not supported here")
        return from_type, to_type

    def _associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> dict[str, Any]:
        pair = (from_id, to_id) if from_type == "contacts" else (to_id, from_id)
        self.associations.add(pair)
        return {
            "from": {"id": from_id},
            "to": {"id": to_id},
            "associationSpec": {
                "associationCategory": "HUBSPOT_DEFINED",
                "associationTypeId": ASSOCIATION_TYPE[(from_type, to_type)],
            },
        }

    async def _associate_batch(self, request: web.Request) -> web.Response:
        from_type, to_type = self._association_types(request)
        body = self._body(request, "associate")
        results, errors = [], []
        for inp in body["inputs"]:
            from_id, to_id = inp["from"]["id"], inp["to"]["id"]
            context = {}
            if from_id not in self._live(from_type):
                context["fromObjectId"] = [from_id]
            if to_id not in self._live(to_type):
                context["toObjectId"] = [to_id]
            if context:
                missing = [f"{SINGULAR[from_type]} {from_id}"] if "fromObjectId" in context else []
                missing += [f"{SINGULAR[to_type]} {to_id}"] if "toObjectId" in context else []
                message = f"No object exists for {' and '.join(missing)}"
                errors.append(standard_error("VALIDATION_ERROR", message, context))
            else:
                results.append(self._associate(from_type, from_id, to_type, to_id))
        now = now_iso()
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": now,
            "completedAt": now,
        }
        if errors:
            answer["errors"] = errors
            answer["numErrors"] = len(errors)
        status = self.association_error_status if errors else 200
        return web.json_response(answer, status=status)

    async def _archive_associations(self, request: web.Request) -> web.Response:
        from_type, _ = self._association_types(request)
        body = self._body(request, "association_archive")
        for inp in body["inputs"]:
            for to in inp["to"]:  # associations that do not exist are ignored
                pair = (inp["from"]["id"], to["id"])
                self.associations.discard(pair if from_type == "contacts" else pair[::-1])
        return web.Response(status=204)

    async def _associate_one(self, request: web.Request) -> web.Response:
        from_type, to_type = self._association_types(request)
        from_id, to_id = request.match_info["from_id"], request.match_info["to_id"]
        for obj_type, oid in [(from_type, from_id), (to_type, to_id)]:
            if oid not in self._live(obj_type):
                message = f"No {SINGULAR[obj_type]} with ID {oid} exists"
                raise Refusal(404, "OBJECT_NOT_FOUND", message)
        now = now_iso()
        result = self._associate(from_type, from_id, to_type, to_id)
        body = {"status": "COMPLETE", "results": [result], "startedAt": now, "completedAt": now}
        return web.json_response(body)

    async def _associations_of(self, request: web.Request) -> web.Response:
        from_type, to_type = self._association_types(request)
        oid = request.match_info["from_id"]
        if from_type == "contacts":
            others = sorted(c for k, c in self.associations if k == oid)
        else:
            others = sorted(k for k, c in self.associations if c == oid)
        kind = {"category": "HUBSPOT_DEFINED", "typeId": ASSOCIATION_TYPE[(from_type, to_type)]}
        results = [{"toObjectId": other, "associationTypes": [kind]} for other in others]
        return web.json_response({"results": results})

    # --- properties and property groups ---

    def _property_type(self, request: web.Request) -> str:
        return self._object_type(request.match_info["object_type"])

    def _property(self, obj_type: str, name: str) -> dict[str, Any]:
        """A definition (completed in place if a test wrote it by hand), or a 404."""
        prop = self.properties[obj_type].get(name)
        if prop is None:
            message = f"Unable to find property {name} for object type {obj_type}"
            raise Refusal(404, "OBJECT_NOT_FOUND", message)
        prop.update(complete(prop))
        return prop

    def _check_definition(self, obj_type: str, body: dict[str, Any]) -> None:
        if "type" in body and body["type"] not in PROPERTY_TYPES:
            raise bad_request(f"Invalid property type {body['type']!r}")
        if "fieldType" in body and body["fieldType"] not in FIELD_TYPES:
            raise bad_request(f"Invalid fieldType {body['fieldType']!r}")
        group = body.get("groupName")
        if group is not None and group not in self.groups[obj_type]:
            raise bad_request(f"Property group {group} does not exist")

    async def _properties_list(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        names = list(self.properties[obj_type])
        return web.json_response({"results": [self._property(obj_type, n) for n in names]})

    async def _property_get(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        return web.json_response(self._property(obj_type, request.match_info["name"]))

    async def _property_create(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        body = self._body(request, "property_create")
        name = body["name"]
        if name in self.properties[obj_type]:
            raise Refusal(
                409,
                "OBJECT_ALREADY_EXISTS",
                f"Property named '{name}' already exists.",
                subCategory="PropertyCreationErrorType.PROPERTY_EXISTS",
                context={"name": [name]},
            )
        if not PROPERTY_NAME.fullmatch(name):
            raise bad_request(
                f"Invalid property name {name!r}: use lower case letters, digits and underscores, "
                "starting with a letter"
            )
        self._check_definition(obj_type, body)
        needs_options = self.enumeration_needs_options and body["type"] == "enumeration"
        if needs_options and not body.get("options"):
            raise bad_request("An enumeration property needs options")
        if body.get("hasUniqueValue") and body["type"] not in ("string", "number"):
            raise bad_request("Only string and number properties can have unique values")
        prop = definition(
            name,
            body["label"],
            type=body["type"],
            field_type=body["fieldType"],
            group=body["groupName"],
            options=body.get("options") or [],
            unique=bool(body.get("hasUniqueValue")),
            hubspot_defined=False,
            description=body.get("description", ""),
        )
        for key in ("hidden", "formField", "displayOrder", "externalOptions"):
            if key in body:
                prop[key] = body[key]
        self.properties[obj_type][name] = prop
        return web.json_response(prop, status=201)

    async def _property_update(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        prop = self._property(obj_type, request.match_info["name"])
        body = self._body(request, "property_update")
        meta = prop["modificationMetadata"]
        # of a HubSpot-defined property only the options may change (e.g. hs_lead_status)
        changes = {k for k, v in body.items() if v is not None}
        if meta["readOnlyDefinition"] and (changes - {"options"} or meta["readOnlyOptions"]):
            raise bad_request(
                f"Property {prop['name']} is HubSpot-defined: only its options can change"
            )
        self._check_definition(obj_type, body)
        for key, value in body.items():
            if key == "options":
                prop["options"] = [option(o, i) for i, o in enumerate(value)]
            elif value is not None:
                prop[key] = value
        prop["updatedAt"] = now_iso()
        return web.json_response(prop)

    async def _property_archive(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        prop = self._property(obj_type, request.match_info["name"])
        if not prop["modificationMetadata"]["archivable"]:
            raise bad_request(f"Property {prop['name']} cannot be archived")
        del self.properties[obj_type][prop["name"]]
        for kind in (self._live_kind(obj_type), self._archive_kind(obj_type)):
            self._indexes.pop((kind, prop["name"]), None)  # the values stay, unindexed
        return web.Response(status=204)

    def _group(self, obj_type: str, name: str) -> dict[str, Any]:
        label = self.group_labels.get((obj_type, name), name)
        return {"name": name, "label": label, "displayOrder": -1, "archived": False}

    async def _groups_list(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        groups = [self._group(obj_type, name) for name in sorted(self.groups[obj_type])]
        return web.json_response({"results": groups})

    async def _group_get(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        name = request.match_info["name"]
        if name not in self.groups[obj_type]:
            raise Refusal(404, "OBJECT_NOT_FOUND", f"Unable to find property group {name}")
        return web.json_response(self._group(obj_type, name))

    async def _group_create(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        body = self._body(request, "group_create")
        name = body["name"]
        if name in self.groups[obj_type]:
            raise Refusal(
                409,
                "OBJECT_ALREADY_EXISTS",
                f"A property group named '{name}' already exists.",
                context={"name": [name]},
            )
        if not PROPERTY_NAME.fullmatch(name):
            raise bad_request(f"Invalid property group name {name!r}")
        self.groups[obj_type].add(name)
        self.group_labels[(obj_type, name)] = body["label"]
        group = self._group(obj_type, name)
        if "displayOrder" in body:
            group["displayOrder"] = body["displayOrder"]
        return web.json_response(group, status=201)

    # --- account ---

    async def _account_info(self, request: web.Request) -> web.Response:
        zone = ZoneInfo(self.time_zone)
        offset = datetime.now(zone).utcoffset() or timedelta()
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        body = {
            "portalId": 12345678,
            "accountType": "STANDARD",
            "timeZone": self.time_zone,
            "companyCurrency": "EUR",
            "additionalCurrencies": [],
            "utcOffset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
            "utcOffsetMilliseconds": minutes * 60_000,
            "uiDomain": "app.hubspot.com",
            "dataHostingLocation": "na1",
        }
        return web.json_response(body)


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
