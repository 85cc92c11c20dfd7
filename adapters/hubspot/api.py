"""HubSpot's API as the adapter sees it: settings, requests and answers, the rate-limited client."""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import hubspot
import orjson
from pydantic import Field, SecretStr
from tenacity import (
    wait_exponential,
    wait_random,
)

from adapters import http
from adapters.http import StatusRules, Transient, retry_after, timed_send, wait_turn, with_retries
from connector.adapter import (
    Record,
    RequestPreview,
    TargetReporter,
    TargetSettings,
    check_claim,
)
from connector.errors import DeliveryError, TargetPaused
from connector.logs import get_logger
from connector.outcomes import Retry, Undelivered
from connector.ratelimit import LimiterFactory, RateLimiter, shared_limiter

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

# HubSpot's answers mean what HTTP says: 401/403 a refused token, 408/425/5xx a retry; a 429 is
# waited out (or pauses the target for the day), and other 4xx name the inputs HubSpot refused.
ANSWERS = StatusRules()


class RateLimit(http.RateLimit):
    """HubSpot's budget has defaults (a private app's 100 per 10 s) and a daily part."""

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

    def preview(self, note: str | None = None) -> RequestPreview:
        """This request as ``map --request`` shows it: the URL as httpx sends it, no token."""
        url = str(httpx.URL(self.url, params=self.params)) if self.params else self.url
        headers = {
            k: "Bearer ***" if k.lower() == "authorization" else v for k, v in self.headers.items()
        }
        return RequestPreview(self.method, url, headers, self.body, note=note)


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
        return await self._call(self.build(fn, *args), self.transient_attempts)

    @staticmethod
    def build(fn: Callable[..., Any], *args: Any) -> Request:
        """The request of one API call, as the client builds it (``_capture``): not sent."""
        request: Request = fn(*args, _preload_content=False)
        return request

    async def _call(self, request: Request, attempts: int) -> Answer:
        wait = wait_exponential(multiplier=0.5, max=4) + wait_random(0, 0.5)
        try:
            return await with_retries(lambda: self._call_waiting_out_429(request), attempts, wait)
        except Transient as exc:
            raise Undelivered(Retry(str(exc), after=exc.after)) from None

    async def _call_waiting_out_429(self, request: Request) -> Answer:
        for _ in range(self.max_throttled):
            await wait_turn(self.limiter, self.report)
            answer = await self._send(request)
            kind = ANSWERS.kind(answer.status)
            if answer.status == 429:
                policy = answer.body.get("policyName") if isinstance(answer.body, dict) else None
                if policy == "DAILY":
                    raise TargetPaused(
                        f"HubSpot daily API limit reached: {answer.message}",
                        until=next_midnight(self.zone),
                    )
                self.limiter.hold(self._wait_after_429(answer))
                continue
            if kind == "pause":
                raise TargetPaused(
                    f"HubSpot refused the token (HTTP {answer.status}): {answer.message}",
                    until=time.time() + AUTH_PROBE,
                )
            if kind == "retry":
                after = retry_after(_header(answer.headers, "Retry-After"))
                raise Transient(f"HubSpot HTTP {answer.status}: {answer.message}", after=after)
            return answer  # written, or refused: the caller reads which input HubSpot refused
        raise Undelivered(
            Retry(
                "HubSpot kept answering 429 (rate limit)",
                after=self._wait_after_429(answer),
                count_attempt=False,
            )
        )

    def _wait_after_429(self, answer: Answer) -> float:
        after = retry_after(_header(answer.headers, "Retry-After"))
        if after is not None:
            return after
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
        built = self.http.build_request(
            request.method,
            request.url,
            params=request.params,
            headers=request.headers,
            content=content,
            extensions={"trace": trace},
        )
        try:
            response = await timed_send(
                self.http,
                built,
                call_timeout=self.settings.call_timeout,
                report=self.report,
                no_answer=0,
            )
        except (httpx.TransportError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                what = f"no full answer within call_timeout ({self.settings.call_timeout:g} s)"
            else:
                what = f"{type(exc).__name__}: {exc}"
            if not sent:
                raise Transient(f"cannot reach HubSpot: {what}") from None
            if not request.writes:
                raise Transient(f"HubSpot did not answer: {what}") from None
            raise Undelivered(
                Retry(
                    f"HubSpot did not answer a write ({what}): it may still land",
                    maybe_written=True,
                )
            ) from None
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
