"""HubSpot target: contacts upserted in batches by a unique property, as a mirror of Mimeeq.

Writes
* Creates and updates go through ``batch/upsert`` keyed by ``id_property`` (a unique custom
  property filled with the Mimeeq id by the connector itself, or ``email``): no search-then-create,
  so two workers can never create the same contact twice.
* An upsert is a diff (see :mod:`connector.targets`): it sends the record's changes, ``""`` for
  each property in ``Record.cleared`` (HubSpot clears a property with ""), and the id property.
  A property neither changed nor cleared is not sent: what a HubSpot user set on properties the
  connector never wrote is never touched. If HubSpot answers ``"new": true`` to a partial write
  (someone deleted the contact in HubSpot), the whole record is written right after, in the same
  push, so the new contact is not left half-filled (if that fails, this process writes the whole
  record the next time).
* Outcomes are per record. In a 207 the accepted records are delivered, refused ones are dead with
  HubSpot's message, others retried. A 4xx that does not say which input is at fault is split in
  halves until the bad records stand alone.
* An e-mail that already belongs to a HubSpot contact ("Contact already exists. Existing ID: N")
  makes the connector adopt that contact: it is updated by id with the whole mapped record and the
  unique id property, so later upserts find it. Nothing is cleared on it: the connector never
  wrote that contact.
* With ``associate_company``, a contact is linked to the company whose ``company_id_property`` is
  its Mimeeq ``companyId``, and HubSpot is called only when that company changed (or was not in
  HubSpot yet): the old association is removed, the new one made. ``Delivered.company`` tells the
  worker what is linked now; a failed association retries the record.
* Deletes archive (by the remembered id, else looked up by the unique property), GDPR-delete, or
  are ignored, per ``on_delete``. A contact already gone counts as delivered.

Values: HubSpot takes strings only. A list (multiple checkboxes, e.g. tags) is written item by
item: each item stripped, a ``;`` inside an item replaced by ``,`` (HubSpot separates checkbox
values with ``;``: "eco; green" must stay one option), empty and repeated items dropped, joined
with ``;``. A text value of an ``auto_options`` property is split on ``;`` and cleaned the same
way; the connector adds an option to such a property for each new item (Mimeeq tags and statuses
are free text; HubSpot takes only values that are options).

Transport: one write at a time, really. hubspot-api-client builds every request (paths, auth
header, serialisation of bodies and models) but sends none: each API object's
``api_client.request`` is replaced by a function that returns what it is given, which the client
hands back as is (``_preload_content=False``). An ``httpx.AsyncClient`` sends it, so cancelling
a push (the worker's ``push_timeout``) closes the connection and nothing of that push is sent
afterwards: no thread carries on. Each request waits for the account's rate limiter, checks the
worker's claim (``check_claim``) and the daily budget, and must be answered in full within
``call_timeout`` (connect to last byte, however slowly it trickles). A 5xx or a connection that
could not be made is tried again a few times; a write that went out without an answer is not: it
may still land, so the records wait (``maybe_written``) and the next write of those contacts goes
after it. 429s are waited out without counting as failures; 401/403 pause the target until a probe
succeeds. The daily budget: once ``X-HubSpot-RateLimit-Daily-Remaining`` is at most
``rate_limit.daily_reserve``, or a 429 says the DAILY limit is reached, the target pauses until
midnight in the portal's time zone (when HubSpot resets it; read from the account-info API once a
day, UTC if it cannot be read).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import re
import time
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
import hubspot
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from connector.errors import DeliveryError, RetryableError, TargetPaused
from connector.observability import get_logger
from connector.ratelimit import LimiterFactory, RateLimiter, shared_limiter
from connector.targets import (
    Adapter,
    CompanyLink,
    Dead,
    Delivered,
    Outcome,
    Record,
    Retry,
    TargetContext,
    TargetReporter,
    TargetSettings,
    check_claim,
)

log = get_logger("adapters.hubspot")

MAX_INPUTS = 100  # HubSpot's batch limit (not in its spec: enforced here)
EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
AUTH_PROBE = 60.0  # seconds between probes of a target paused for its credentials
ZONE_TTL = 86_400.0  # the portal's time zone is read again after a day ...
ZONE_RETRY = 3_600.0  # ... or an hour after it could not be read
PLACEHOLDER = {"label": "(none yet)", "value": "mimeeq_none", "hidden": True, "displayOrder": 0}
STATUS_OPTIONS = [
    {"label": "Active", "value": "ACTIVE", "hidden": False, "displayOrder": 0},
    {"label": "Inactive", "value": "INACTIVE", "hidden": False, "displayOrder": 1},
]
OPTION_KEYS = ("label", "value", "description", "displayOrder", "hidden")


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(default=100, ge=1)
    per_seconds: float = Field(default=10.0, gt=0)
    daily_reserve: int = Field(
        default=0, ge=0, description="pause once the daily budget left is this or less"
    )


class HubSpotSettings(TargetSettings):
    access_token: SecretStr = Field(description="a private app's access token")
    base_url: str = Field(default="https://api.hubapi.com", pattern=r"^https?://")
    id_property: str = Field(default="mimeeq_contact_id", pattern=r"^[a-z0-9_]+$")
    on_delete: Literal["archive", "gdpr_delete", "ignore"] = "archive"
    rate_limit: RateLimit = RateLimit()
    associate_company: bool = False
    company_id_property: str = Field(default="mimeeq_company_id", pattern=r"^[a-z0-9_]+$")
    # Enumeration properties whose options the connector adds when a new value shows up
    # (Mimeeq tags and statuses are free text; HubSpot only takes values that are options).
    auto_options: list[str] = ["mimeeq_tags", "mimeeq_status"]
    property_group: str = Field(default="mimeeq", pattern=r"^[a-z0-9_]+$")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0, description="longest wait for one read (s)")
    call_timeout: float = Field(
        default=60.0, gt=0, description="bound on one request, connect to last byte (s)"
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("message") or self.body)
        return str(self.body or f"HTTP {self.status}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        found = self.body.get("errors") if isinstance(self.body, dict) else None
        return [e for e in found or [] if isinstance(e, dict)]

    @property
    def results(self) -> list[dict[str, Any]]:
        found = self.body.get("results") if isinstance(self.body, dict) else None
        return [r for r in found or [] if isinstance(r, dict)]


@dataclass(frozen=True, slots=True)
class Request:
    """One request as hubspot-api-client built it, to be sent by httpx."""

    method: str
    url: str
    params: list[tuple[str, Any]]
    headers: dict[str, str]
    body: Any  # JSON-ready (the client serialised the models), or None

    @property
    def writes(self) -> bool:
        return self.method != "GET" and not self.url.endswith("/batch/read")


def _capture(
    method: str,
    url: str,
    query_params: list[tuple[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    post_params: Any = None,
    body: Any = None,
    _preload_content: bool = True,
    _request_timeout: Any = None,
) -> Request:
    """Stands in for ``ApiClient.request``: keeps the request instead of sending it."""
    return Request(method.upper(), url, list(query_params or []), dict(headers or {}), body)


class _Transient(Exception):
    """A 5xx or a connection problem: worth another try within the same push."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    number = _number(text)
    return int(number) if number is not None else None


def next_midnight(zone: dt.tzinfo, now: float | None = None) -> float:
    """The next midnight in ``zone``, as a Unix time."""
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, zone).date()
    tomorrow = today + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(), tzinfo=zone).timestamp()


def portal_zone(body: Any) -> dt.tzinfo:
    """The time zone in an account-info answer: its IANA name, else its current UTC offset."""
    if not isinstance(body, dict):
        raise ValueError("no account details in the answer")
    name = body.get("timeZone")
    if isinstance(name, str) and name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass  # not in this machine's time zone database: the offset is close enough
    offset = body.get("utcOffsetMilliseconds")
    if isinstance(offset, int | float) and not isinstance(offset, bool):
        return dt.timezone(dt.timedelta(milliseconds=offset))
    raise ValueError(f"unknown time zone {name!r}")


class HubSpotApi:
    """The calls the adapter makes: built by hubspot-api-client, sent by httpx (see the module)."""

    transient_attempts = 3  # tries of one call on a 5xx or a connection error
    max_throttled = 5  # 429s waited out within one call before giving up for now

    def __init__(
        self,
        settings: HubSpotSettings,
        workers: int,
        report: TargetReporter | None = None,
        limiter: LimiterFactory = shared_limiter,
    ) -> None:
        self.settings = settings
        self.report = report or TargetReporter()
        token = settings.access_token.get_secret_value()
        client = hubspot.Client.create(access_token=token, host=settings.base_url.rstrip("/"))
        # Every property access builds a new API object: keep one of each.
        crm = client.crm
        self.contacts = crm.contacts.batch_api
        self.contacts_basic = crm.contacts.basic_api
        self.companies = crm.companies.batch_api
        self.associations = crm.associations.v4.batch_api
        self.properties = crm.properties.core_api
        self.groups = crm.properties.groups_api
        apis = (self.contacts, self.contacts_basic, self.companies, self.associations,
                self.properties, self.groups)  # fmt: skip
        for api in apis:
            api.api_client.request = _capture
        # The client has no account-info API: its generic call builds the request all the same.
        self.account_info = functools.partial(
            self.contacts.api_client.call_api,
            "/account-info/v3/details",
            "GET",
            header_params={"Accept": "application/json"},
            response_types_map={},
            auth_settings=["oauth2"],
        )
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
            follow_redirects=False,
        )
        self.limiter: RateLimiter = limiter(
            settings.base_url, token, settings.rate_limit.requests, settings.rate_limit.per_seconds
        )
        self.zone: dt.tzinfo = dt.UTC  # the portal's, once read
        self._zone_due = 0.0  # time.monotonic() when to read it (again)
        self._zone_warned = False
        self._paused: tuple[float, str] | None = None  # daily budget spent: (until, why)

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Answer:
        """One API call: 2xx/207 and 4xx answers are returned; the rest is handled here."""
        return await self._call(fn(*args, _preload_content=False), self.transient_attempts)

    async def _call(self, request: Request, attempts: int) -> Answer:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=0.5, max=4) + wait_random(0, 0.5),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    return await self._call_waiting_out_429(request)
        except _Transient as exc:
            raise RetryableError(str(exc), after=exc.after) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_waiting_out_429(self, request: Request) -> Answer:
        for _ in range(self.max_throttled):
            self.report.rate_wait(await self.limiter.acquire())
            answer = await self._send(request)
            if answer.status == 429:
                policy = answer.body.get("policyName") if isinstance(answer.body, dict) else None
                if policy == "DAILY":
                    raise TargetPaused(
                        f"HubSpot daily API limit reached: {answer.message}",
                        until=next_midnight(self.zone),
                    )
                self.limiter.hold(self._wait_after_429(answer))
                continue
            if answer.status in (401, 403):
                raise TargetPaused(
                    f"HubSpot refused the token (HTTP {answer.status}): {answer.message}",
                    until=time.time() + AUTH_PROBE,
                )
            if answer.status >= 500:
                after = _number(_header(answer.headers, "Retry-After"))
                raise _Transient(f"HubSpot HTTP {answer.status}: {answer.message}", after)
            return answer
        raise RetryableError(
            "HubSpot kept answering 429 (rate limit)",
            after=self._wait_after_429(answer),
            count_attempt=False,
        )

    def _wait_after_429(self, answer: Answer) -> float:
        retry_after = _number(_header(answer.headers, "Retry-After"))
        if retry_after is not None:
            return retry_after
        interval = _number(_header(answer.headers, "X-HubSpot-RateLimit-Interval-Milliseconds"))
        return interval / 1000 if interval else self.settings.rate_limit.per_seconds

    async def _send(self, request: Request) -> Answer:
        if self._paused is not None:
            until, why = self._paused
            if time.time() < until:
                raise TargetPaused(why, until=until)
            self._paused = None
        check_claim()
        sent = False

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            nonlocal sent
            sent = sent or ".send_request_headers." in event

        content = orjson.dumps(request.body) if request.body is not None else None
        started = time.monotonic()
        try:
            # httpx's timeouts bound each read; this bounds the whole answer.
            async with asyncio.timeout(self.settings.call_timeout):
                response = await self.http.request(
                    request.method,
                    request.url,
                    params=request.params,
                    headers=request.headers,
                    content=content,
                    extensions={"trace": trace},
                )
        except (httpx.TransportError, TimeoutError) as exc:
            self.report.request(0, time.monotonic() - started)
            if isinstance(exc, TimeoutError):
                what = f"no full answer within call_timeout ({self.settings.call_timeout:g} s)"
            else:
                what = f"{type(exc).__name__}: {exc}"
            if not sent:
                raise _Transient(f"cannot reach HubSpot: {what}") from None
            if not request.writes:
                raise _Transient(f"HubSpot did not answer: {what}") from None
            raise RetryableError(
                f"HubSpot did not answer a write ({what}): it may still land",
                maybe_written=True,
            ) from None
        self.report.request(response.status_code, time.monotonic() - started)
        answer = Answer(response.status_code, dict(response.headers), _json(response.content))
        self._observe(answer.headers)
        return answer

    def _observe(self, headers: dict[str, str]) -> None:
        self.limiter.observe(
            remaining=_int(_header(headers, "X-HubSpot-RateLimit-Remaining")),
            limit=_int(_header(headers, "X-HubSpot-RateLimit-Max")),
            interval=(_number(_header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")) or 0)
            / 1000,
        )
        left = _int(_header(headers, "X-HubSpot-RateLimit-Daily-Remaining"))
        reserve = self.settings.rate_limit.daily_reserve
        if left is not None and left <= reserve and self._paused is None:
            daily = _header(headers, "X-HubSpot-RateLimit-Daily") or "?"
            why = (
                f"HubSpot daily API budget: {left} of {daily} calls left, "
                f"rate_limit.daily_reserve is {reserve}"
            )
            self._paused = (next_midnight(self.zone), why)

    def zone_due(self) -> bool:
        return time.monotonic() >= self._zone_due

    async def read_zone(self) -> dt.tzinfo:
        """Read the portal's time zone (its daily limit resets at its midnight); UTC if unknown."""
        self._zone_due = time.monotonic() + ZONE_RETRY  # set first: one read at a time
        try:
            answer = await self._call(self.account_info(_preload_content=False), attempts=1)
            if answer.status != 200:
                raise ValueError(f"HTTP {answer.status}: {answer.message}")
            self.zone = portal_zone(answer.body)
        except (DeliveryError, ValueError) as exc:
            if not self._zone_warned:
                self._zone_warned = True
                log.warning(
                    "cannot read the HubSpot portal's time zone (when its daily limit resets)",
                    error=str(exc),
                    assumed=str(self.zone),
                )
            return self.zone
        self._zone_due = time.monotonic() + ZONE_TTL
        return self.zone


def _json(data: bytes) -> Any:
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


def hubspot_value(value: Any, *, options: bool = False) -> str:
    """HubSpot takes strings only: lists are multiple-checkbox values (see the module docstring),
    booleans true/false. ``options``: a text value of an enumeration, cleaned like a list."""
    if isinstance(value, list | tuple):
        return _options(value)
    if isinstance(value, str):
        return _options(value.split(";")) if options else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def _options(items: Iterable[Any]) -> str:
    cleaned = (hubspot_value(item).replace(";", ",").strip() for item in items)
    return ";".join(dict.fromkeys(item for item in cleaned if item))


@dataclass
class _Upsert:
    index: int
    record: Record
    key: str  # the id_property value HubSpot matches on
    properties: dict[str, str]
    partial: bool = False  # some mapped values were left out: HubSpot has them already
    new: bool = False  # HubSpot created the contact with this write


class HubSpotAdapter(Adapter):
    type = "hubspot"
    settings_model = HubSpotSettings
    max_batch_size = MAX_INPUTS
    default_concurrency = 4
    default_linger = 0.5  # calls are rationed: wait a little to send full batches

    settings: HubSpotSettings
    company_cache_ttl: ClassVar[float] = 600.0

    def __init__(self, settings: TargetSettings, context: TargetContext) -> None:
        if not isinstance(settings, HubSpotSettings):
            raise TypeError(f"HubSpotAdapter needs HubSpotSettings, got {type(settings).__name__}")
        super().__init__(settings, context)
        self.api = HubSpotApi(
            settings,
            workers=(settings.concurrency or 4) + 2,
            report=context.report,
            limiter=context.limiter,
        )
        self._options: dict[str, set[str] | None] = {}  # auto_options property -> known options
        self._options_lock = asyncio.Lock()
        self._companies: dict[str, tuple[str | None, float]] = {}  # company id -> (HubSpot id, at)
        self._half_filled: set[str] = set()  # contacts to write whole: see _upsert

    @property
    def associates_companies(self) -> bool:
        return self.settings.associate_company

    async def close(self) -> None:
        await self.api.close()

    # --- push --------------------------------------------------------------------------------

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        if self.api.zone_due():  # before the daily budget runs out, when it can still be read
            await self.api.read_zone()
        outcomes: dict[int, Outcome] = {}
        upserts = [(i, r) for i, r in enumerate(records) if r.op == "upsert"]
        deletes = [(i, r) for i, r in enumerate(records) if r.op == "delete"]
        for run, items in ((self._upsert, upserts), (self._delete, deletes)):
            if not items:
                continue
            try:
                outcomes.update(await run(items))
            except RetryableError as exc:  # this half of the batch waits; the other stands
                retry = Retry(str(exc), exc.after, exc.count_attempt, exc.maybe_written)
                outcomes.update({i: retry for i, _ in items if i not in outcomes})
        return [outcomes[i] for i in range(len(records))]

    # --- creates and updates -----------------------------------------------------------------

    def _encode(self, values: Mapping[str, Any]) -> dict[str, str]:
        enumerations = self.settings.auto_options
        return {name: hubspot_value(v, options=name in enumerations) for name, v in values.items()}

    def _whole(self, u: _Upsert) -> _Upsert:
        """The same contact with every mapped value, nothing cleared."""
        properties = self._encode(u.record.fields)
        if self.settings.id_property != "email":
            properties[self.settings.id_property] = u.key
        return dataclasses.replace(u, properties=properties, partial=False, new=False)

    async def _upsert(self, items: list[tuple[int, Record]]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        upserts: list[_Upsert] = []
        id_property = self.settings.id_property
        for index, record in items:
            whole = record.contact_id in self._half_filled
            properties = self._encode(record.fields if whole else record.changes)
            properties.update(dict.fromkeys(record.cleared, ""))
            if id_property == "email":
                key = hubspot_value(record.fields.get("email")).strip()
                if not key:
                    outcomes[index] = Dead("no e-mail address: this target upserts by email")
                    continue
            else:
                key = properties[id_property] = record.contact_id
            partial = bool(record.unchanged) and not whole
            upserts.append(_Upsert(index, record, key, properties, partial))
        if not upserts:
            return outcomes
        await self._write(upserts, outcomes)
        # HubSpot created a contact that got only the changes: someone deleted it in HubSpot.
        lost = [
            u for u in upserts if u.new and u.partial and isinstance(outcomes[u.index], Delivered)
        ]
        # Until the whole record is written, the next write of these contacts is whole.
        self._half_filled.update(u.record.contact_id for u in lost)
        if lost:
            await self._write([self._whole(u) for u in lost], outcomes)
            for u in lost:
                outcome = outcomes[u.index]
                if isinstance(outcome, Delivered):
                    note = "not in HubSpot any more: created again, with the whole record"
                    outcomes[u.index] = dataclasses.replace(outcome, note=note)
        self._half_filled.difference_update(
            u.record.contact_id for u in upserts if isinstance(outcomes.get(u.index), Delivered)
        )
        if self.settings.associate_company:
            delivered = [u for u in upserts if isinstance(outcomes.get(u.index), Delivered)]
            await self._associate(delivered, outcomes)
        return outcomes

    async def _write(self, upserts: list[_Upsert], outcomes: dict[int, Outcome]) -> None:
        await self._ensure_options(upserts)
        adopt: dict[int, str] = {}
        await self._upsert_batch(upserts, outcomes, adopt)
        if adopt:
            await self._adopt([u for u in upserts if u.index in adopt], adopt, outcomes)

    async def _upsert_batch(
        self, batch: list[_Upsert], outcomes: dict[int, Outcome], adopt: dict[int, str]
    ) -> None:
        body = {
            "inputs": [
                {"id": u.key, "idProperty": self.settings.id_property, "properties": u.properties}
                for u in batch
            ]
        }
        answer = await self.api.call(self.api.contacts.upsert, body)
        if answer.status == 409:
            await self._resolve_conflict(batch, answer, outcomes, adopt)
            return
        if answer.status >= 400:
            await self._split_or_fail(batch, answer, outcomes, adopt)
            return
        found = {
            self._norm(str((r.get("properties") or {}).get(self.settings.id_property, ""))): r
            for r in answer.results
        }
        failed = self._errors_by_key(answer)
        unexplained = []
        for u in batch:
            key = self._norm(u.key)
            if key in found:
                u.new = found[key].get("new") is True
                outcomes[u.index] = Delivered(remote_id=str(found[key].get("id")))
            elif key in failed:
                self._per_input_error(u, failed[key], outcomes, adopt)
            elif answer.status == 200 and not answer.errors:
                outcomes[u.index] = Delivered()  # accepted; its id is looked up if ever needed
            else:
                unexplained.append(u)
        if unexplained:
            # Errors HubSpot did not tie to an input: split until each bad one stands alone.
            await self._split_or_fail(unexplained, answer, outcomes, adopt)

    async def _split_or_fail(
        self,
        batch: list[_Upsert],
        answer: Answer,
        outcomes: dict[int, Outcome],
        adopt: dict[int, str],
    ) -> None:
        if len(batch) == 1:
            outcomes[batch[0].index] = Dead(f"HubSpot HTTP {answer.status}: {answer.message}")
            return
        middle = len(batch) // 2
        await self._upsert_batch(batch[:middle], outcomes, adopt)
        await self._upsert_batch(batch[middle:], outcomes, adopt)

    async def _resolve_conflict(
        self,
        batch: list[_Upsert],
        answer: Answer,
        outcomes: dict[int, Outcome],
        adopt: dict[int, str],
    ) -> None:
        """A whole-batch 409 names only the first existing contact: find whose e-mail it has."""
        existing = _existing_id(answer)
        culprit = None
        if existing and len(batch) == 1:
            culprit = batch[0]
        elif existing:
            read = await self.api.call(
                self.api.contacts.read,
                {
                    "inputs": [{"id": existing}],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
            )
            emails = {
                str((r.get("properties") or {}).get("email") or "").lower() for r in read.results
            }
            culprit = next(
                (u for u in batch if u.properties.get("email", "").lower() in emails - {""}), None
            )
        if existing is None or culprit is None:
            await self._split_or_fail(batch, answer, outcomes, adopt)
            return
        self._per_input_error(culprit, answer.body, outcomes, adopt)
        rest = [u for u in batch if u is not culprit]
        if rest:
            await self._upsert_batch(rest, outcomes, adopt)

    def _per_input_error(
        self,
        u: _Upsert,
        error: dict[str, Any],
        outcomes: dict[int, Outcome],
        adopt: dict[int, str],
    ) -> None:
        message = str(error.get("message") or error)
        category = str(error.get("category") or "")
        existing = _existing_id(Answer(409, {}, error))
        if existing and (category == "CONFLICT" or "already exists" in message):
            if u.record.remote_id and u.record.remote_id != existing:
                outcomes[u.index] = Dead(
                    f"HubSpot: the e-mail belongs to another contact ({existing}): {message}"
                )
            else:
                adopt[u.index] = existing
        elif category in ("RATE_LIMITS", "RATE_LIMIT") or str(error.get("status")).startswith("5"):
            outcomes[u.index] = Retry(f"HubSpot: {message}")
        else:
            outcomes[u.index] = Dead(f"HubSpot {category or 'error'}: {message}")

    async def _adopt(
        self, batch: list[_Upsert], adopt: dict[int, str], outcomes: dict[int, Outcome]
    ) -> None:
        """Update existing contacts by id, setting the unique id property so upserts find them.

        The contact is new to the connector: it gets the whole record and nothing is cleared.
        """
        by_id = {adopt[u.index]: self._whole(u) for u in batch}
        await self._ensure_options(list(by_id.values()))
        body = {"inputs": [{"id": hs_id, "properties": u.properties} for hs_id, u in by_id.items()]}
        answer = await self.api.call(self.api.contacts.update, body)
        if answer.status >= 400:
            for u in batch:
                outcomes[u.index] = Dead(f"HubSpot HTTP {answer.status}: {answer.message}")
            return
        updated = {str(r.get("id")) for r in answer.results}
        failed = {}
        for error in answer.errors:
            for hs_id in (error.get("context") or {}).get("ids") or []:
                failed[str(hs_id)] = error
        for hs_id, u in by_id.items():
            if hs_id in updated:
                outcomes[u.index] = Delivered(
                    remote_id=hs_id, note=f"adopted existing HubSpot contact {hs_id} (same e-mail)"
                )
            else:
                error = failed.get(hs_id, {"message": "no result for this contact"})
                outcomes[u.index] = Dead(f"HubSpot (adopting {hs_id}): {error.get('message')}")

    def _errors_by_key(self, answer: Answer) -> dict[str, dict[str, Any]]:
        failed: dict[str, dict[str, Any]] = {}
        for error in answer.errors:
            for key in (error.get("context") or {}).get("ids") or []:
                failed[self._norm(str(key))] = error
        return failed

    def _norm(self, key: str) -> str:
        return key.lower() if self.settings.id_property == "email" else key

    async def _ensure_options(self, upserts: list[_Upsert]) -> None:
        """Add the options that new values of ``auto_options`` properties need."""
        for name in self.settings.auto_options:
            wanted = {v for u in upserts for v in u.properties.get(name, "").split(";") if v}
            known = self._options.get(name, set())
            if not wanted or (known is not None and wanted <= known):
                continue
            async with self._options_lock:  # one read-modify-write of the options at a time
                # Read them afresh: options added in HubSpot meanwhile must not be dropped.
                answer = await self.api.call(self.api.properties.get_by_name, "contacts", name)
                if answer.status != 200 or not isinstance(answer.body, dict):
                    self._options[name] = None  # no such property: the upsert will say so
                    continue
                if answer.body.get("type") != "enumeration":
                    self._options[name] = None  # text takes any value
                    continue
                options = [o for o in answer.body.get("options") or [] if isinstance(o, dict)]
                current = {str(o.get("value")) for o in options}
                self._options[name] = current
                added = sorted(wanted - current)
                if not added:
                    continue
                answer = await self.api.call(
                    self.api.properties.update,
                    "contacts",
                    name,
                    {"options": _with_options(options, added)},
                )
                if answer.status == 200:
                    current.update(added)
                else:
                    log.warning("cannot add options", property=name, error=answer.message)

    # --- company associations ----------------------------------------------------------------

    async def _associate(self, upserts: list[_Upsert], outcomes: dict[int, Outcome]) -> None:
        """Link each delivered contact to its company, calling HubSpot only when that changed."""
        moving: list[tuple[_Upsert, str, CompanyLink | None]] = []  # (upsert, contact, old link)
        for u in upserts:
            delivered = outcomes[u.index]
            assert isinstance(delivered, Delivered)
            old, company = u.record.company, u.record.company_id
            if u.new or delivered.remote_id != u.record.remote_id:
                old = None  # HubSpot made the contact anew, or we adopted one: nothing is linked
            # Linked already (or no company at all), or no id to link: leave it as it is.
            done = old.remote_id is not None and old.company_id == company if old else not company
            if done or delivered.remote_id is None:
                outcomes[u.index] = dataclasses.replace(delivered, company=old)
            else:
                moving.append((u, delivered.remote_id, old))
        if not moving:
            return
        company_ids = await self._company_ids(
            {c for u, _, _ in moving if (c := u.record.company_id)}
        )
        failed: dict[int, str] = {}  # record index -> why
        removals = []  # (upsert, HubSpot contact id, HubSpot company id)
        additions = []
        for u, contact, old in moving:
            company = u.record.company_id
            new = company_ids.get(company) if company else None
            if old is not None and old.remote_id and old.remote_id != new:
                removals.append((u, contact, old.remote_id))
            if new and (old is None or old.remote_id != new):
                additions.append((u, contact, new))
        if removals:
            body: dict[str, Any] = {
                "inputs": [{"from": {"id": c}, "to": [{"id": old}]} for _, c, old in removals]
            }
            answer = await self.api.call(
                self.api.associations.archive, "contacts", "companies", body
            )
            if answer.status >= 300:
                for u, _, _ in removals:
                    failed[u.index] = f"removing the old company association: {_describe(answer)}"
        additions = [a for a in additions if a[0].index not in failed]
        if additions:
            body = {"inputs": [{"from": {"id": c}, "to": {"id": new}} for _, c, new in additions]}
            answer = await self.api.call(
                self.api.associations.create_default, "contacts", "companies", body
            )
            made = {
                (str((r.get("from") or {}).get("id")), str((r.get("to") or {}).get("id")))
                for r in answer.results
            }
            for u, c, new in additions:
                if (c, new) not in made:
                    failed[u.index] = f"associating the company: {_describe(answer)}"
        for u, _, _ in moving:
            delivered = outcomes[u.index]
            assert isinstance(delivered, Delivered)
            company = u.record.company_id
            if u.index in failed:
                outcomes[u.index] = Retry(failed[u.index])
            elif company is None:
                outcomes[u.index] = dataclasses.replace(
                    delivered, note=_join(delivered.note, "company association removed")
                )
            elif (new := company_ids.get(company)) is None:
                name = self.settings.company_id_property
                note = _join(delivered.note, f"company {company} not in HubSpot ({name})")
                link = CompanyLink(company, None)
                outcomes[u.index] = dataclasses.replace(delivered, note=note, company=link)
            else:
                note = _join(delivered.note, f"associated with company {new}")
                link = CompanyLink(company, new)
                outcomes[u.index] = dataclasses.replace(delivered, note=note, company=link)

    async def _company_ids(self, companies: set[str]) -> dict[str, str | None]:
        now = time.monotonic()
        found = {
            c: hit[0]
            for c in companies
            if (hit := self._companies.get(c)) and now - hit[1] < self.company_cache_ttl
        }
        missing = sorted(companies - set(found))
        for chunk in _chunks(missing, MAX_INPUTS):
            body = {
                "idProperty": self.settings.company_id_property,
                "inputs": [{"id": c} for c in chunk],
                "properties": [self.settings.company_id_property],
                "propertiesWithHistory": [],
            }
            answer = await self.api.call(self.api.companies.read, body)
            hits = {
                str((r.get("properties") or {}).get(self.settings.company_id_property)): str(
                    r.get("id")
                )
                for r in answer.results
            }
            for c in chunk:
                found[c] = hits.get(c)
                self._companies[c] = (found[c], now)
        return found

    # --- deletes -----------------------------------------------------------------------------

    async def _delete(self, items: list[tuple[int, Record]]) -> dict[int, Outcome]:
        mode = self.settings.on_delete
        if mode == "ignore":
            return {i: Delivered(note="on_delete is ignore: left in HubSpot") for i, _ in items}
        if mode == "gdpr_delete":
            return {i: await self._gdpr_delete(r) for i, r in items}
        outcomes: dict[int, Outcome] = {}
        hubspot_ids = await self._find(items, outcomes)
        if hubspot_ids:
            answer = await self.api.call(
                self.api.contacts.archive, {"inputs": [{"id": h} for h in hubspot_ids.values()]}
            )
            for i, hs_id in hubspot_ids.items():
                outcomes[i] = (
                    Delivered(remote_id=hs_id, note="archived")
                    if answer.status < 300
                    else Dead(_describe(answer))
                )
        return outcomes

    async def _find(
        self, items: list[tuple[int, Record]], outcomes: dict[int, Outcome]
    ) -> dict[int, str]:
        """HubSpot ids of the contacts to delete: remembered, else looked up by the id property."""
        found = {i: r.remote_id for i, r in items if r.remote_id}
        unknown = {}
        for i, record in items:
            if i in found:
                continue
            key = self._delete_key(record)
            if key is None:
                outcomes[i] = Delivered(note="no e-mail to find it by: nothing to delete")
            else:
                unknown[i] = key
        if unknown:
            answer = await self.api.call(
                self.api.contacts.read,
                {
                    "idProperty": self.settings.id_property,
                    "inputs": [{"id": key} for key in unknown.values()],
                    "properties": [self.settings.id_property],
                    "propertiesWithHistory": [],
                },
            )
            if answer.status >= 400 and answer.status != 404:
                raise RetryableError(_describe(answer))
            hits = {
                self._norm(str((r.get("properties") or {}).get(self.settings.id_property))): str(
                    r.get("id")
                )
                for r in answer.results
            }
            for i, key in unknown.items():
                if self._norm(key) in hits:
                    found[i] = hits[self._norm(key)]
                else:
                    outcomes[i] = Delivered(note="not in HubSpot: nothing to delete")
        return {i: hs_id for i, hs_id in found.items() if hs_id}

    def _delete_key(self, record: Record) -> str | None:
        if self.settings.id_property != "email":
            return record.contact_id
        emails = record.payload.get("emails") or []
        first = emails[0].get("mail") if emails and isinstance(emails[0], dict) else None
        return str(record.fields.get("email") or first or "") or None

    async def _gdpr_delete(self, record: Record) -> Outcome:
        if record.remote_id:
            body: dict[str, str] = {"objectId": record.remote_id}
        else:
            key = self._delete_key(record)
            if key is None:
                return Delivered(note="no e-mail to find it by: nothing to delete")
            body = {"objectId": key, "idProperty": self.settings.id_property}
        answer = await self.api.call(self.api.contacts_basic.purge, body)
        if answer.status < 300:
            return Delivered(remote_id=record.remote_id, note="GDPR-deleted")
        if answer.status == 404:
            return Delivered(note="not in HubSpot: nothing to delete")
        return Dead(_describe(answer))

    # --- set-up ------------------------------------------------------------------------------

    async def setup(self, say: Callable[[str], None] | None = None) -> list[str]:
        """Create the property group and the properties the connector needs; safe to repeat.

        Each line of the report goes to ``say`` as soon as it happens, so a failure midway (raised
        as a ``DeliveryError`` with HubSpot's message) still shows what was done.
        """
        lines: list[str] = []

        def report(line: str) -> None:
            lines.append(line)
            if say is not None:
                say(line)

        s = self.settings
        mapped = self.context.mapping.fields
        report(await self._create_group("contacts", s.property_group))
        if s.id_property != "email":
            await self._create_property(
                "contacts",
                {"name": s.id_property, "label": "Mimeeq contact ID", "type": "string",
                 "fieldType": "text", "groupName": s.property_group, "hasUniqueValue": True,
                 "description": "Set by mimeeq-connector: the contact's id in Mimeeq."},
                report,
            )  # fmt: skip
        for name in self._enumerations():
            await self._create_property("contacts", self._enumeration(name), report)
        if s.associate_company:
            report(await self._create_group("companies", s.property_group))
            await self._create_property(
                "companies",
                {"name": s.company_id_property, "label": "Mimeeq company ID",
                 "type": "string", "fieldType": "text", "groupName": s.property_group,
                 "hasUniqueValue": True},
                report,
            )  # fmt: skip
        answer = await self.api.call(self.api.properties.get_all, "contacts")
        existing = {str(p.get("name")) for p in answer.results}
        for name in mapped:
            if name not in existing and name not in self._enumerations():
                report(
                    f"WARNING: mapped property {name!r} is not in HubSpot: "
                    "create it or fix the mapping"
                )
        return lines

    def _enumerations(self) -> list[str]:
        """The mapped enumeration properties that setup creates, in the mapping's order."""
        ours = {*self.settings.auto_options, "mimeeq_tags", "mimeeq_status"}
        return [name for name in self.context.mapping.fields if name in ours]

    def _enumeration(self, name: str) -> dict[str, Any]:
        definition: dict[str, Any] = {
            "name": name, "label": name.replace("_", " ").capitalize(), "type": "enumeration",
            "fieldType": "checkbox", "groupName": self.settings.property_group, "options": [],
        }  # fmt: skip
        if name == "mimeeq_status":
            definition |= {"fieldType": "select", "options": STATUS_OPTIONS}
        return definition

    async def _create_group(self, object_type: str, name: str) -> str:
        answer = await self.api.call(
            self.api.groups.create,
            object_type,
            {"name": name, "label": "Mimeeq", "displayOrder": -1},
        )
        return self._setup_line(answer, f"{object_type} property group {name!r}")

    async def _create_property(
        self, object_type: str, definition: dict[str, Any], report: Callable[[str], None]
    ) -> None:
        name = definition["name"]
        what = f"{object_type} property {name!r}"
        answer = await self.api.call(self.api.properties.create, object_type, definition)
        if answer.status == 400 and definition.get("options") == []:
            # Some portals refuse an enumeration without options ("needs options").
            definition = {**definition, "options": [PLACEHOLDER]}
            answer = await self.api.call(self.api.properties.create, object_type, definition)
            if answer.status < 300:
                report(
                    f"created {what} (HubSpot wants at least one option: it has a hidden "
                    f"placeholder option {PLACEHOLDER['value']!r})"
                )
                return
        line = self._setup_line(answer, what)
        if answer.status != 409:
            report(line)
            return
        current = await self.api.call(self.api.properties.get_by_name, object_type, name)
        body = current.body if current.status == 200 and isinstance(current.body, dict) else {}
        if definition.get("hasUniqueValue") and body and not body.get("hasUniqueValue"):
            line += " — WARNING: it exists but is not unique; upserts by it will fail"
        report(line)
        options = [o for o in body.get("options") or [] if isinstance(o, dict)]
        have = {str(o.get("value")) for o in options}
        missing = [o["value"] for o in definition.get("options") or [] if o["value"] not in have]
        if body.get("type") == "enumeration" and missing:
            answer = await self.api.call(
                self.api.properties.update,
                object_type,
                name,
                {"options": _with_options(options, missing, definition["options"])},
            )
            if answer.status >= 300:
                raise RetryableError(f"cannot add options to {what}: {_describe(answer)}")
            report(f"changed {what}: added options {', '.join(missing)}")

    @staticmethod
    def _setup_line(answer: Answer, what: str) -> str:
        if answer.status < 300:
            return f"created {what}"
        if answer.status == 409:
            return f"found {what} (already exists)"
        raise RetryableError(f"cannot create {what}: {_describe(answer)}")


def _with_options(
    options: list[dict[str, Any]], added: Iterable[str], given: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The options to PATCH: HubSpot's own, kept as they are, then the added ones."""
    kept = [{k: o[k] for k in OPTION_KEYS if o.get(k) is not None} for o in options]
    defined = {str(o["value"]): o for o in given}
    order = max((int(o.get("displayOrder") or 0) for o in kept), default=-1) + 1
    for i, value in enumerate(added):
        option = {"label": value, "value": value, "hidden": False, **defined.get(value, {})}
        kept.append({**option, "displayOrder": order + i})
    return kept


def _describe(answer: Answer) -> str:
    return f"HubSpot HTTP {answer.status}: {answer.message}"


def _existing_id(answer: Answer) -> str | None:
    body = answer.body if isinstance(answer.body, dict) else {}
    profile = body.get("identityProfile")
    if isinstance(profile, dict) and profile.get("vid"):
        return str(profile["vid"])
    match = EXISTING_ID.search(str(body.get("message") or ""))
    return match.group(1) if match else None


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
