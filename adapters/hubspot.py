"""HubSpot target: contacts upserted in batches by a unique property, through hubspot-api-client.

* Creates and updates go through ``batch/upsert`` keyed by ``id_property`` (a unique custom
  property filled with the Mimeeq id by the connector itself, or ``email``): no search-then-create,
  so two workers can never create the same contact twice. Only mapped properties are written.
* Outcomes are per record. In a 207 the accepted records are delivered, refused ones are dead with
  HubSpot's message, others retried. A 4xx that does not say which input is at fault is split in
  halves until the bad records stand alone.
* An e-mail that already belongs to a HubSpot contact ("Contact already exists. Existing ID: N")
  makes the connector adopt that contact: it is updated by id with the mapped properties and the
  unique id property, so later upserts find it.
* Deletes archive (by the remembered id, else looked up by the unique property), GDPR-delete, or
  are ignored, per ``on_delete``. A contact already gone counts as delivered.
* Every call waits for the account's rate limiter, has a timeout, and runs in a thread: the client
  is synchronous. 429s are waited out without counting as failures; a DAILY 429 pauses the target
  until midnight UTC; 401/403 pause it until a probe succeeds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import hubspot
import orjson
import urllib3
from hubspot.crm.associations.v4 import ApiException as AssociationsApiException
from hubspot.crm.companies import ApiException as CompaniesApiException
from hubspot.crm.contacts import ApiException as ContactsApiException
from hubspot.crm.properties import ApiException as PropertiesApiException
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from connector.errors import RetryableError, TargetPaused
from connector.observability import get_logger
from connector.ratelimit import LimiterFactory, RateLimiter, shared_limiter
from connector.targets import (
    Adapter,
    Dead,
    Delivered,
    Outcome,
    Record,
    Retry,
    TargetContext,
    TargetReporter,
    TargetSettings,
)

log = get_logger("adapters.hubspot")

API_EXCEPTIONS = (
    ContactsApiException,
    CompaniesApiException,
    AssociationsApiException,
    PropertiesApiException,
)
MAX_INPUTS = 100  # HubSpot's batch limit (not in its spec: enforced here)
EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
AUTH_PROBE = 60.0  # seconds between probes of a target paused for its credentials


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(default=100, ge=1)
    per_seconds: float = Field(default=10.0, gt=0)


class HubSpotSettings(TargetSettings):
    access_token: SecretStr = Field(description="a private app's access token")
    base_url: str = Field(default="https://api.hubapi.com", pattern=r"^https?://")
    id_property: str = Field(default="mimeeq_contact_id", pattern=r"^[a-z0-9_]+$")
    on_delete: Literal["archive", "gdpr_delete", "ignore"] = "archive"
    rate_limit: RateLimit = RateLimit()
    associate_company: bool = False
    company_id_property: str = Field(default="mimeeq_company_id", pattern=r"^[a-z0-9_]+$")
    # Multiple-checkbox properties whose options the connector adds when a new value shows up
    # (Mimeeq tags are free text; HubSpot only takes values that are options).
    auto_options: list[str] = ["mimeeq_tags"]
    property_group: str = Field(default="mimeeq", pattern=r"^[a-z0-9_]+$")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)


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


def _next_midnight_utc() -> float:
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(), tzinfo=dt.UTC).timestamp()


class HubSpotApi:
    """The calls the adapter makes, each rate-limited, timed out and run off the event loop."""

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
        # `retry=0`: urllib3 never retries on its own (POSTs are not idempotent to it anyway).
        client = hubspot.Client.create(
            access_token=token,
            host=settings.base_url.rstrip("/"),
            retry=urllib3.Retry(total=0, raise_on_status=False),
            connection_pool_maxsize=workers,
        )
        # Every property access builds a new API object and pool: keep one of each.
        crm = client.crm
        self.contacts = crm.contacts.batch_api
        self.contacts_basic = crm.contacts.basic_api
        self.companies = crm.companies.batch_api
        self.associations = crm.associations.v4.batch_api
        self.properties = crm.properties.core_api
        self.groups = crm.properties.groups_api
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self.limiter: RateLimiter = limiter(
            settings.base_url, token, settings.rate_limit.requests, settings.rate_limit.per_seconds
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hubspot")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Answer:
        """One API call: 2xx/207 and 4xx answers are returned; the rest is handled here."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.transient_attempts),
                wait=wait_exponential(multiplier=0.5, max=4) + wait_random(0, 0.5),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    return await self._call_waiting_out_429(fn, *args)
        except _Transient as exc:
            raise RetryableError(str(exc), after=exc.after) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_waiting_out_429(self, fn: Callable[..., Any], *args: Any) -> Answer:
        for _ in range(self.max_throttled):
            self.report.rate_wait(await self.limiter.acquire())
            answer = await self._send(fn, *args)
            if answer.status == 429:
                policy = answer.body.get("policyName") if isinstance(answer.body, dict) else None
                if policy == "DAILY":
                    raise TargetPaused(
                        f"HubSpot daily API limit reached: {answer.message}",
                        until=_next_midnight_utc(),
                    )
                self.limiter.hold(self._wait_after_429(answer))
                continue
            if answer.status in (401, 403):
                raise TargetPaused(
                    f"HubSpot refused the token (HTTP {answer.status}): {answer.message}",
                    until=time.time() + AUTH_PROBE,
                )
            if answer.status == 0 or answer.status >= 500:
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

    async def _send(self, fn: Callable[..., Any], *args: Any) -> Answer:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        answer = await loop.run_in_executor(self._executor, self._blocking_send, fn, args)
        self.report.request(answer.status, time.monotonic() - started)
        headers = answer.headers
        self.limiter.observe(
            remaining=_int(_header(headers, "X-HubSpot-RateLimit-Remaining")),
            limit=_int(_header(headers, "X-HubSpot-RateLimit-Max")),
            interval=(_number(_header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")) or 0)
            / 1000,
        )
        return answer

    def _blocking_send(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Answer:
        try:
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout)
        except API_EXCEPTIONS as exc:
            return Answer(exc.status or 0, dict(exc.headers or {}), _json(exc.body))
        except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out, ...
            return Answer(0, {}, f"cannot reach HubSpot: {type(exc).__name__}: {exc}")
        try:
            return Answer(response.status, dict(response.headers), _json(response.data))
        finally:
            response.release_conn()


def _int(text: str | None) -> int | None:
    number = _number(text)
    return int(number) if number is not None else None


def _json(data: Any) -> Any:
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def hubspot_value(value: Any) -> str:
    """HubSpot takes strings only: lists join with ';' (multiple checkboxes), booleans true/false"""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(hubspot_value(v) for v in value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


@dataclass
class _Upsert:
    index: int
    record: Record
    key: str  # the id_property value HubSpot matches on
    properties: dict[str, str]
    notes: list[str] = field(default_factory=list)


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

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)

    # --- push --------------------------------------------------------------------------------

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        outcomes: dict[int, Outcome] = {}
        upserts = [(i, r) for i, r in enumerate(records) if r.op == "upsert"]
        deletes = [(i, r) for i, r in enumerate(records) if r.op == "delete"]
        for run, items in ((self._upsert, upserts), (self._delete, deletes)):
            if not items:
                continue
            try:
                outcomes.update(await run(items))
            except RetryableError as exc:  # this half of the batch waits; the other stands
                retry = Retry(str(exc), exc.after, exc.count_attempt)
                outcomes.update({i: retry for i, _ in items if i not in outcomes})
        return [outcomes[i] for i in range(len(records))]

    # --- creates and updates -----------------------------------------------------------------

    async def _upsert(self, items: list[tuple[int, Record]]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        upserts: list[_Upsert] = []
        id_property = self.settings.id_property
        for index, record in items:
            properties = {name: hubspot_value(v) for name, v in record.fields.items()}
            if id_property == "email":
                key = properties.get("email", "").strip()
                if not key:
                    outcomes[index] = Dead("no e-mail address: this target upserts by email")
                    continue
            else:
                key = properties[id_property] = record.contact_id
            upserts.append(_Upsert(index, record, key, properties))
        if not upserts:
            return outcomes
        await self._ensure_options(upserts)
        adopt: dict[int, str] = {}
        await self._upsert_batch(upserts, outcomes, adopt)
        if adopt:
            await self._adopt([u for u in upserts if u.index in adopt], adopt, outcomes)
        if self.settings.associate_company:
            delivered = [u for u in upserts if isinstance(outcomes.get(u.index), Delivered)]
            await self._associate(delivered, outcomes)
        return outcomes

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
        """Update existing contacts by id, setting the unique id property so upserts find them."""
        by_id = {adopt[u.index]: u for u in batch}
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
                current = {str(o.get("value")) for o in answer.body.get("options") or []}
                self._options[name] = current
                if wanted <= current:
                    continue
                options = [
                    {"label": value, "value": value, "displayOrder": i, "hidden": False}
                    for i, value in enumerate(sorted(current | wanted))
                ]
                answer = await self.api.call(
                    self.api.properties.update, "contacts", name, {"options": options}
                )
                if answer.status == 200:
                    current.update(wanted)
                else:
                    log.warning("cannot add options", property=name, error=answer.message)

    # --- company associations ----------------------------------------------------------------

    async def _associate(self, upserts: list[_Upsert], outcomes: dict[int, Outcome]) -> None:
        wanted = {u.index: str(u.record.payload.get("companyId") or "") for u in upserts}
        company_ids = await self._company_ids({c for c in wanted.values() if c})
        pairs: list[tuple[_Upsert, Delivered, str]] = []
        for u in upserts:
            company = wanted[u.index]
            delivered = outcomes[u.index]
            assert isinstance(delivered, Delivered)
            hs_company = company_ids.get(company) if company else None
            if company and hs_company is None:
                note = f"company {company} not in HubSpot ({self.settings.company_id_property})"
                outcomes[u.index] = Delivered(delivered.remote_id, _join(delivered.note, note))
            elif hs_company and delivered.remote_id:
                pairs.append((u, delivered, hs_company))
        if not pairs:
            return
        body = {"inputs": [{"from": {"id": d.remote_id}, "to": {"id": c}} for _, d, c in pairs]}
        answer = await self.api.call(
            self.api.associations.create_default, "contacts", "companies", body
        )
        for u, delivered, company in pairs:
            note = (
                f"associated with company {company}"
                if answer.status < 300 and not answer.errors
                else f"company association failed: {answer.message}"
            )
            outcomes[u.index] = Delivered(delivered.remote_id, _join(delivered.note, note))

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
                    else Dead(f"HubSpot HTTP {answer.status}: {answer.message}")
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
                raise RetryableError(f"HubSpot HTTP {answer.status}: {answer.message}")
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
        return Dead(f"HubSpot HTTP {answer.status}: {answer.message}")

    # --- set-up ------------------------------------------------------------------------------

    async def setup(self) -> list[str]:
        """Create the property group and the properties the connector needs; safe to repeat."""
        report = []
        s = self.settings
        label = "Mimeeq"
        report.append(await self._create_group("contacts", s.property_group, label))
        if s.id_property != "email":
            report.append(
                await self._create_property(
                    "contacts",
                    {"name": s.id_property, "label": "Mimeeq contact ID", "type": "string",
                     "fieldType": "text", "groupName": s.property_group, "hasUniqueValue": True,
                     "description": "Set by mimeeq-connector: the contact's id in Mimeeq."},
                )
            )  # fmt: skip
        for name in s.auto_options:
            if name in self.context.mapping.fields:
                report.append(
                    await self._create_property(
                        "contacts",
                        {"name": name, "label": name.replace("_", " ").capitalize(),
                         "type": "enumeration", "fieldType": "checkbox",
                         "groupName": s.property_group, "options": []},
                    )
                )  # fmt: skip
        if s.associate_company:
            report.append(await self._create_group("companies", s.property_group, label))
            report.append(
                await self._create_property(
                    "companies",
                    {"name": s.company_id_property, "label": "Mimeeq company ID",
                     "type": "string", "fieldType": "text", "groupName": s.property_group,
                     "hasUniqueValue": True},
                )
            )  # fmt: skip
        report.extend(await self._check_mapped_properties())
        return report

    async def _create_group(self, object_type: str, name: str, label: str) -> str:
        answer = await self.api.call(
            self.api.groups.create, object_type, {"name": name, "label": label, "displayOrder": -1}
        )
        return self._setup_line(answer, f"{object_type} property group {name!r}")

    async def _create_property(self, object_type: str, definition: dict[str, Any]) -> str:
        answer = await self.api.call(self.api.properties.create, object_type, definition)
        line = self._setup_line(answer, f"{object_type} property {definition['name']!r}")
        if answer.status == 409 and definition.get("hasUniqueValue"):
            current = await self.api.call(
                self.api.properties.get_by_name, object_type, definition["name"]
            )
            if isinstance(current.body, dict) and not current.body.get("hasUniqueValue"):
                line += " — WARNING: it exists but is not unique; upserts by it will fail"
        return line

    @staticmethod
    def _setup_line(answer: Answer, what: str) -> str:
        if answer.status < 300:
            return f"created {what}"
        if answer.status == 409:
            return f"{what} already exists"
        raise RetryableError(
            f"cannot create {what}: HubSpot HTTP {answer.status}: {answer.message}"
        )

    async def _check_mapped_properties(self) -> list[str]:
        answer = await self.api.call(self.api.properties.get_all, "contacts")
        existing = {str(p.get("name")) for p in answer.results}
        return [
            f"WARNING: mapped property {name!r} is not in HubSpot: create it or fix the mapping"
            for name in self.context.mapping.fields
            if name not in existing and name not in self.settings.auto_options
        ]


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
