"""The fake portal: state, the app and its edge (call log, failures, auth, rate limits, latency)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from fake_hubspot.model import (
    AUTH_MESSAGE,
    MODIFIED,
    RAW_BODY,
    SCOPES_MESSAGE,
    Call,
    Handler,
    Refusal,
    correlation_id,
    is_write,
    now_iso,
    required_scope,
)
from fake_hubspot.objects import ObjectRoutes
from fake_hubspot.properties import definition, normal, standard_properties
from fake_hubspot.schema import SchemaRoutes
from fake_hubspot.store import Tracked, UniqueIndex


class FakeHubSpot(ObjectRoutes, SchemaRoutes):
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
        token: str = "hs-test-token",  # noqa: S107 - a fake portal's token
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

    async def settled(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until no request is being processed (those whose client gave up included)."""
        async with asyncio.timeout(timeout):
            while self._running:  # noqa: ASYNC110 - a test helper, polling is enough
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
