"""REST target: contacts into any HTTP JSON API, by configuration alone (httpx, async).

* Each operation is a request template: ``upsert``, or ``create`` + ``update``; ``delete``;
  optionally ``lookup`` (find a contact whose remote id the connector does not know) and ``batch``
  (several upserts per call). Placeholders (``{contact_id}``, ``{tenant}``, ``{remote_id}``,
  ``{event}``, ``{event_id}``, ``{fields.NAME}``) are filled by this module, never by
  ``str.format``, and every value placed in a path is percent-encoded as one segment.
* The remote id read from an answer (``id_from_response``, JMESPath) is remembered by the worker
  and comes back as ``Record.remote_id``. ``update`` without a known id follows ``lookup`` then
  ``create``; an ``update`` answered 404/410 creates the contact again.
* Writes are diffs: ``update`` sends what changed since the last confirmed write (``update.send:
  all`` sends the whole record); ``create``, ``upsert`` and ``batch`` send the whole record. A field
  the connector wrote before and whose mapped value is now missing is cleared: sent as ``null``,
  or left out (``cleared_fields``). A field it never wrote is never sent.
* Every write carries an ``Idempotency-Key`` (the event id, stable across retries). Answers are
  classified by the target's ``success`` / ``retry_on`` / ``dead_on`` / ``pause_on`` lists;
  timeouts, connection errors and retryable statuses without ``Retry-After`` are retried briefly
  within the call (tenacity), then the record waits (``Retry``), honouring ``Retry-After``.
* One write at a time: requests are asynchronous and cancellable (a push cut by the worker's
  ``push_timeout`` leaves nothing running), each has a total deadline (``call_timeout``: a server
  trickling its answer cannot hold a call forever), and a write that went out without an answer
  is reported ``maybe_written``, so the contact's next write waits for it. A write is not sent
  once the push's claim may have passed to another replica (``check_claim``).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import re
import ssl
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import quote

import httpx
import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from connector.errors import RetryableError, TargetPaused
from connector.observability import get_logger
from connector.ratelimit import RateLimiter
from connector.targets import (
    Adapter,
    ConfigPath,
    Dead,
    Delivered,
    Outcome,
    Record,
    Retry,
    TargetContext,
    TargetSettings,
    check_claim,
)

log = get_logger("adapters.rest")

RECORD, PAYLOAD = "$record", "$payload"  # body leaves standing for the whole mapped record/payload
NAMES = ("contact_id", "tenant", "remote_id", "event", "event_id")  # and fields.NAME
GONE = frozenset({404, 410})
SNIPPET = 1024  # bytes of an answer's body kept in a reason
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


# --- templates -----------------------------------------------------------------------------


class Missing(Exception):
    """A placeholder has no value for this record."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Whole:
    what: Literal["record", "payload"]


@dataclass(frozen=True, slots=True)
class Text:
    """A config string with ``{placeholder}``s, parsed once; ``{{`` and ``}}`` are braces."""

    parts: tuple[str | Var, ...]

    @classmethod
    def parse(cls, text: str) -> Text:
        parts: list[str | Var] = []
        pos = 0
        for match in [*_TOKEN.finditer(text), None]:
            literal = text[pos : match.start() if match else len(text)]
            if "{" in literal or "}" in literal:
                raise ValueError(f"unmatched brace in {text!r} (write {{{{ or }}}} for one)")
            parts.append(literal)
            if match:
                name = match.group(1)
                parts.append(match.group(0)[0] if name is None else Var(_known(name.strip())))
                pos = match.end()
        return cls(tuple(p for p in parts if p != ""))

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.parts if isinstance(p, Var)}

    @property
    def single(self) -> Var | None:
        """The placeholder when it is the whole string: its value keeps its JSON type."""
        return self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], Var) else None

    def render(
        self, values: Values, encode: Callable[[str], str] | None = None, *, url: bool = True
    ) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                text = _text(values.get(part.name, url=url))
                out.append(encode(text) if encode else text)
        return "".join(out)


def _known(name: str) -> str:
    if name in NAMES or (name.startswith("fields.") and len(name) > len("fields.")):
        return name
    known = ", ".join(f"{{{n}}}" for n in NAMES)
    raise ValueError(f"unknown placeholder {{{name}}} (known: {known}, {{fields.NAME}})")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _segment(text: str) -> str:
    """A value in a path stays one segment: ``/ ? # %`` are encoded, ``.``/``..`` too."""
    encoded = quote(text, safe="")
    return encoded.replace(".", "%2E") if set(text) <= {"."} else encoded


def compile_body(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(key): compile_body(value) for key, value in node.items()}
    if isinstance(node, list):
        return [compile_body(value) for value in node]
    if node in (RECORD, PAYLOAD) and isinstance(node, str):
        return Whole("record" if node == RECORD else "payload")
    return Text.parse(node) if isinstance(node, str) else node


_SKIP = object()


def render_body(node: Any, values: Values) -> Any:
    """The JSON body; a leaf whose placeholder has no value is left out, like a missing field."""
    if isinstance(node, dict):
        rendered = {k: render_body(v, values) for k, v in node.items()}
        return {k: v for k, v in rendered.items() if v is not _SKIP}
    if isinstance(node, list):
        return [v for v in (render_body(item, values) for item in node) if v is not _SKIP]
    if isinstance(node, Whole):
        return values.whole(node.what)
    if isinstance(node, Text):
        try:
            if node.single:
                return values.get(node.single.name, url=False)
            return node.render(values, url=False)
        except Missing:
            return _SKIP
    return node


def _body_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict | list):
        for item in node.values() if isinstance(node, dict) else node:
            yield from _body_names(item)
    elif isinstance(node, Text):
        yield from node.names


@dataclass(frozen=True, slots=True)
class Values:
    """What placeholders read: the tenant, and the record (absent for a batch's own URL) with the
    fields this request sends (``fields``; the whole mapped record when None)."""

    tenant: str
    record: Record | None = None
    remote_id: str | None = None
    fields: Mapping[str, Any] | None = None

    def get(self, name: str, *, url: bool = True) -> Any:
        """The value, or Missing. A mapped field set to null or "" is a value in a body (it
        clears the attribute), never in a URL."""
        is_field = name.startswith("fields.")
        if is_field:
            fields = self.sent
            value = fields.get(name.removeprefix("fields."), _SKIP)
        elif name == "tenant":
            value = self.tenant
        elif name == "remote_id":
            value = self.remote_id
        else:
            value = getattr(self.record, name, None)
        blank = value is None or value == ""
        if value is _SKIP or (blank and (url or not is_field)):
            raise Missing(name)
        return value

    @property
    def sent(self) -> Mapping[str, Any]:
        if self.fields is not None:
            return self.fields
        return self.record.fields if self.record else {}

    def whole(self, what: str) -> Any:
        assert self.record is not None
        return dict(self.sent) if what == "record" else self.record.payload


# --- settings ------------------------------------------------------------------------------


def _template(value: str) -> str:
    Text.parse(value)
    return value


def _jmespath(value: str) -> str:
    try:
        jmespath.compile(value)
    except JMESPathError as exc:
        raise ValueError(f"invalid JMESPath {value!r}: {exc}") from None
    return value


def _body(value: Any) -> Any:
    compile_body(value)
    return value


Template = Annotated[str, AfterValidator(_template)]
JMESPath = Annotated[str, AfterValidator(_jmespath)]
BodyTemplate = Annotated[Any, AfterValidator(_body)]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
StatusCode = Annotated[int, Field(ge=100, le=599)] | Annotated[str, Field(pattern=r"^[1-5]xx$")]
StatusKind = Literal["success", "retry", "dead", "pause"]


def _search(expression: ParsedResult | None, data: Any) -> Any:
    return expression.search(data) if expression is not None and data is not None else None


def _remote_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    return str(value) if isinstance(value, str | int) else None


class Endpoint(BaseModel):
    """Where a request goes: method, path below ``base_url``, query."""

    model_config = ConfigDict(extra="forbid")
    method: Method = "POST"
    path: Template = Field(pattern=r"^/[^?#]*$", description="no query here: use `query`")
    query: dict[str, Template] = {}

    _path: Text = PrivateAttr()
    _query: dict[str, Text] = PrivateAttr()

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _compile_url(self) -> Self:
        self._path = Text.parse(self.path)
        self._query = {name: Text.parse(value) for name, value in self.query.items()}
        return self

    @property
    def url_names(self) -> set[str]:
        """Placeholders of the path and query: each needs a value, or the request cannot go."""
        return self._path.names.union(*(t.names for t in self._query.values()))


class Request(Endpoint):
    body: BodyTemplate = Field(default=RECORD, description='"$record", null, or a template')
    id_from_response: JMESPath | None = None

    _body: Any = PrivateAttr()
    _id: ParsedResult | None = PrivateAttr()

    @model_validator(mode="after")
    def _compile_body(self) -> Self:
        self._body = compile_body(self.body)
        self._id = jmespath.compile(self.id_from_response) if self.id_from_response else None
        return self

    @property
    def needs_remote_id(self) -> bool:
        return "remote_id" in self.url_names or "remote_id" in set(_body_names(self._body))


class UpdateRequest(Request):
    method: Method = "PATCH"
    create_if_missing: bool = Field(default=True, description="404/410: create the contact")
    send: Literal["changes", "all"] = Field(
        default="changes", description="what changed (and the cleared fields), or everything"
    )


class UpsertRequest(Request):
    method: Method = "PUT"


class DeleteRequest(Request):
    method: Method = "DELETE"
    body: BodyTemplate = None
    missing_ok: bool = Field(default=True, description="404/410 count as delivered")


class LookupRequest(Request):
    method: Method = "GET"
    body: BodyTemplate = None
    id_from_response: JMESPath = Field(description="the remote id; null or [] when not found")


class BatchRequest(Endpoint):
    key: str | None = Field(default="records", description="the list goes under it; null: bare")
    item: BodyTemplate = RECORD
    max_size: int = Field(default=100, ge=1, le=1000)
    results: JMESPath | None = Field(default=None, description="the per-item results' list")
    match_by: JMESPath | None = Field(default=None, description="Mimeeq id in a result; else order")
    id_from_result: JMESPath | None = None
    status_from_result: JMESPath | None = None
    error_from_result: JMESPath | None = None

    _item: Any = PrivateAttr()
    _compiled: dict[str, ParsedResult | None] = PrivateAttr()

    @model_validator(mode="after")
    def _compile_results(self) -> Self:
        self._item = compile_body(self.item)
        self._compiled = {}
        for name in ("results", "match_by", "id_from_result", "status_from_result",
                     "error_from_result"):  # fmt: skip
            expression = getattr(self, name)
            self._compiled[name] = jmespath.compile(expression) if expression else None
        return self

    def search(self, name: str, data: Any) -> Any:
        return _search(self._compiled[name], data)


class BearerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer"]
    token: SecretStr


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"]
    username: str
    password: SecretStr


class HeaderAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["header"]
    name: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    value: SecretStr


class NoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["none"] = "none"


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(ge=1)
    per_seconds: float = Field(gt=0)


class RestSettings(TargetSettings):
    base_url: str = Field(pattern=r"^https?://[^?#]+$")
    auth: BearerAuth | BasicAuth | HeaderAuth | NoAuth = Field(
        default=NoAuth(), discriminator="type"
    )
    headers: dict[str, SecretStr] = Field(default={}, description="sent with every request")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    call_timeout: float = Field(default=60.0, gt=0, description="total bound on one request")
    cleared_fields: Literal["send_null", "leave_out"] = Field(
        default="send_null", description="how a field emptied in Mimeeq is cleared"
    )
    verify: bool = Field(default=True, description="check the server's TLS certificate")
    ca_bundle: ConfigPath | None = Field(default=None, description="PEM file of trusted CAs")
    max_connections: int = Field(default=8, ge=1, le=100, description="requests in flight")
    call_attempts: int = Field(default=3, ge=1, le=10, description="tries within one push")
    rate_limit: RateLimit | None = None
    idempotency_header: str | None = Field(default="Idempotency-Key", min_length=1)

    upsert: UpsertRequest | None = None
    create: Request | None = None
    update: UpdateRequest | None = None
    delete: DeleteRequest | None = None
    lookup: LookupRequest | None = None
    batch: BatchRequest | None = None

    success: list[StatusCode] = ["2xx"]
    retry_on: list[StatusCode] = [408, 425, 429, "5xx"]
    dead_on: list[StatusCode] = ["4xx"]
    pause_on: list[StatusCode] = [401, 403]

    _status: dict[int, StatusKind] = PrivateAttr()

    @field_validator("ca_bundle")
    @classmethod
    def _readable(cls, value: ConfigPath | None) -> ConfigPath | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if sum(x is not None for x in (self.batch, self.upsert, self.create)) != 1 or (
            (self.create is None) != (self.update is None)
        ):
            raise ValueError(
                "creates and updates need exactly one of: `upsert`, `create` with `update`, "
                "or `batch`"
            )
        for name in ("upsert", "create", "lookup"):
            request: Endpoint | None = getattr(self, name)
            if request and "remote_id" in request.url_names:
                raise ValueError(f"{name}: {{remote_id}} is not known yet when {name} is used")
        if self.batch and self.batch.url_names - {"tenant"}:
            raise ValueError("batch: its path and query can only use {tenant}")
        if self.batch and self.batch.results is None and any(self.batch._compiled.values()):
            raise ValueError("batch: match_by and the *_from_result expressions need `results`")
        gives_ids = (
            self.lookup
            or any(r and r.id_from_response for r in (self.create, self.upsert))
            or (self.batch and self.batch.id_from_result)
        )
        for name, needs in (("update", self.update), ("delete", self.delete)):
            if needs and needs.needs_remote_id and not gives_ids:
                raise ValueError(
                    f"{name} uses {{remote_id}}, but nothing gives one: set `id_from_response` "
                    "on create (or upsert), or a `lookup`"
                )
        if self.ca_bundle and not self.verify:
            raise ValueError("ca_bundle needs verify: true")
        self._status = _status_table(
            {"success": self.success, "pause_on": self.pause_on, "retry_on": self.retry_on,
             "dead_on": self.dead_on}
        )  # fmt: skip
        if self.batch_size is None:  # single requests: a push stays well inside push_timeout
            self.batch_size = self.batch.max_size if self.batch else 100
        return self

    def status_kind(self, status: int) -> StatusKind:
        return self._status.get(status, "dead")  # a status nobody listed (3xx, ...) is dead

    def placeholders(self) -> set[str]:
        names: set[str] = set()
        for request in (self.upsert, self.create, self.update, self.delete, self.lookup):
            if request is not None:
                names |= request.url_names | set(_body_names(request._body))
        if self.batch:
            names |= set(_body_names(self.batch._item))
        return names


_KINDS: dict[str, StatusKind] = {
    "success": "success", "pause_on": "pause", "retry_on": "retry", "dead_on": "dead"
}  # fmt: skip


def _status_table(lists: dict[str, list[int | str]]) -> dict[int, StatusKind]:
    """Status code → kind. A code listed by itself beats a ``4xx``-style class; a code (or a
    class) in two lists is an error."""
    table: dict[int, StatusKind] = {}
    for exact in (True, False):
        claimed: dict[int, str] = {}
        for key, codes in lists.items():
            for code in codes:
                if isinstance(code, int) != exact:
                    continue
                first = code if isinstance(code, int) else int(code[0]) * 100
                for status in range(first, first + (1 if exact else 100)):
                    if claimed.setdefault(status, key) != key:
                        raise ValueError(f"status {code} is in both {claimed[status]} and {key}")
        for status, key in claimed.items():
            table.setdefault(status, _KINDS[key])
    return table


# --- the adapter ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pause:
    reason: str


_Result = Outcome | _Pause


class _Failed(Exception):
    """A request ended without success: ``outcome`` is what the record gets."""

    def __init__(self, outcome: _Result) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Transient(Exception):
    """Worth another try within the same push. ``maybe_written``: the request went out and no
    answer came back, so the CRM may still act on it."""

    def __init__(self, message: str, maybe_written: bool = False) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def _snippet(response: httpx.Response) -> str:
    text = response.content[:SNIPPET].decode("utf-8", "replace")
    return text or response.reason_phrase


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


class RestAdapter(Adapter):
    type = "rest"
    settings_model = RestSettings
    max_batch_size = 1000  # batch mode's largest max_size; single requests default to 100
    default_concurrency = 4

    settings: RestSettings
    # Between tries of one request within a push (tests make it instant).
    call_wait: ClassVar[wait_base] = wait_exponential(multiplier=0.2, max=2) + wait_random(0, 0.2)

    def __init__(self, settings: TargetSettings, context: TargetContext) -> None:
        if not isinstance(settings, RestSettings):
            raise TypeError(f"RestAdapter needs RestSettings, got {type(settings).__name__}")
        super().__init__(settings, context)
        self._client: httpx.AsyncClient | None = None
        self._limiter: RateLimiter | None = None
        # Bounds requests in flight across all of this target's pushes (and so the pool).
        self._slots = asyncio.Semaphore(settings.max_connections)
        fields = {n.removeprefix("fields.") for n in settings.placeholders() if "." in n}
        if unknown := fields - set(context.mapping.fields):
            log.warning(
                "placeholders name fields the mapping does not have",
                target=context.key,
                fields=sorted(unknown),
            )

    async def open(self) -> None:
        s = self.settings
        headers = {"User-Agent": "mimeeq-connector", "Accept": "application/json"}
        headers |= {name: value.get_secret_value() for name, value in s.headers.items()}
        auth: httpx.Auth | None = None
        secret = ""
        if isinstance(s.auth, BearerAuth):
            secret = s.auth.token.get_secret_value()
            headers["Authorization"] = f"Bearer {secret}"
        elif isinstance(s.auth, BasicAuth):
            secret = s.auth.password.get_secret_value()
            auth = httpx.BasicAuth(s.auth.username, secret)
        elif isinstance(s.auth, HeaderAuth):
            secret = headers[s.auth.name] = s.auth.value.get_secret_value()
        verify: ssl.SSLContext | bool = s.verify
        if s.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(s.ca_bundle))
        self._client = httpx.AsyncClient(
            base_url=s.base_url,
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout),
            verify=verify,
            limits=httpx.Limits(max_connections=s.max_connections),
            follow_redirects=False,  # a redirect is a config problem: reported, not followed
        )
        if s.rate_limit is not None:
            self._limiter = self.context.limiter(
                s.base_url, secret, s.rate_limit.requests, s.rate_limit.per_seconds
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("RestAdapter.open() was not called")
        return self._client

    # --- push --------------------------------------------------------------------------------

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        results: list[_Result | None] = [None] * len(records)
        batch = self.settings.batch
        batched = [i for i, r in enumerate(records) if batch and r.op == "upsert"]
        singles = set(range(len(records))) - set(batched)

        async def single(i: int) -> None:
            results[i] = await self._single(records[i])

        async def many(indexes: list[int]) -> None:
            outcomes = await self._batch([records[i] for i in indexes])
            for i, outcome in zip(indexes, outcomes, strict=True):
                results[i] = outcome

        size = batch.max_size if batch else 1
        # A task group: when one fails (or the push is cancelled), the others are cancelled and
        # waited for, so that no request of this push is still running when it ends.
        async with asyncio.TaskGroup() as group:
            for i in sorted(singles):
                group.create_task(single(i))
            for k in range(0, len(batched), size):
                group.create_task(many(batched[k : k + size]))
        done = [r for r in results if r is not None]
        pauses = [r for r in done if isinstance(r, _Pause)]
        if pauses and not any(isinstance(r, Delivered) for r in done):
            raise TargetPaused(f"the target refused the credentials: {pauses[0].reason}")
        # Some requests went through, so the credentials work: the refused ones just wait.
        return [Retry(r.reason, count_attempt=False) if isinstance(r, _Pause) else r for r in done]

    async def _single(self, record: Record) -> _Result:
        try:
            if record.op == "delete":
                return await self._delete(record)
            return await self._write(record)
        except _Failed as exc:
            return exc.outcome

    async def _write(self, record: Record) -> Outcome:
        s = self.settings
        if s.upsert is not None:
            answer = await self._call("upsert", s.upsert, record, record.remote_id)
            return self._delivered(s.upsert, answer, record.remote_id)
        assert s.create is not None and s.update is not None
        remote_id = record.remote_id
        if remote_id is None and (s.update.needs_remote_id or record.event == "contact-created"):
            if s.lookup is not None:
                remote_id = await self._lookup(record)
            if remote_id is None:
                created = await self._call("create", s.create, record)
                return self._delivered(s.create, created, None)
        answer = await self._call(
            "update", s.update, record, remote_id, gone_ok=s.update.create_if_missing
        )
        if self._gone(answer):
            # Not (or no longer) in the target: create it. Its own idempotency key, since the
            # event's key went with the update.
            created = await self._call("create", s.create, record, key_suffix=":create")
            note = f"update answered HTTP {answer.status_code}: created it"
            return self._delivered(s.create, created, None, note)
        return self._delivered(s.update, answer, remote_id)

    async def _delete(self, record: Record) -> Outcome:
        s = self.settings
        if s.delete is None:
            return Delivered(note="no `delete` configured: left in the target")
        remote_id = record.remote_id
        if remote_id is None and s.delete.needs_remote_id:
            if s.lookup is None:
                return Delivered(note="no remote id: nothing to delete")
            remote_id = await self._lookup(record)
            if remote_id is None:
                return Delivered(note="not found by lookup: nothing to delete")
        answer = await self._call(
            "delete", s.delete, record, remote_id, gone_ok=s.delete.missing_ok
        )
        if self._gone(answer):
            return Delivered(remote_id, note=f"already gone (HTTP {answer.status_code})")
        return Delivered(remote_id, note="deleted")

    async def _lookup(self, record: Record) -> str | None:
        lookup = self.settings.lookup
        assert lookup is not None
        try:
            request = self._build(lookup, Values(self.context.tenant, record), None)
        except Missing:
            return None  # nothing to look it up by (say, no e-mail): not found
        answer = await self._send("lookup", request, gone_ok=True)
        return None if self._gone(answer) else _remote_id(_search(lookup._id, _json(answer)))

    def _gone(self, answer: httpx.Response) -> bool:
        """404/410 let through by ``gone_ok``: the contact is not in the target."""
        return (
            answer.status_code in GONE
            and self.settings.status_kind(answer.status_code) != "success"
        )

    def _delivered(
        self, request: Request, answer: httpx.Response, known: str | None, note: str | None = None
    ) -> Delivered:
        if request._id is None:
            return Delivered(known, note)
        found = _remote_id(_search(request._id, _json(answer)))
        if found is None:
            log.warning(
                "no remote id in the answer", target=self.context.key, at=request.id_from_response
            )
            note = _join(note, f"no id at {request.id_from_response!r} in the answer")
        return Delivered(found or known, note)

    async def _call(
        self,
        name: str,
        request: Request,
        record: Record,
        remote_id: str | None = None,
        *,
        gone_ok: bool = False,
        key_suffix: str = "",
    ) -> httpx.Response:
        partial = isinstance(request, UpdateRequest) and request.send == "changes"
        values = Values(self.context.tenant, record, remote_id, self._sent(record, partial))
        try:
            built = self._build(request, values, record.event_id + key_suffix)
        except Missing as exc:
            reason = (
                f"{name}: the request needs {{{exc.name}}}, which this contact has no value for"
            )
            raise _Failed(Dead(reason)) from None
        return await self._send(name, built, gone_ok=gone_ok)

    def _sent(self, record: Record, partial: bool) -> dict[str, Any]:
        """The fields a write sends: what changed, or everything; and the cleared ones."""
        fields = record.changes if partial else dict(record.fields)
        if self.settings.cleared_fields == "send_null":
            fields.update(dict.fromkeys(record.cleared))
        return fields

    def _build(self, endpoint: Endpoint, values: Values, key: str | None) -> httpx.Request:
        body = render_body(endpoint._body, values) if isinstance(endpoint, Request) else None
        return self._request(endpoint, values, body, key)

    def _request(
        self, endpoint: Endpoint, values: Values, body: Any, key: str | None
    ) -> httpx.Request:
        headers = {}
        content = None
        if body is not None and body is not _SKIP:
            content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
            headers["Content-Type"] = "application/json"
        name = self.settings.idempotency_header
        if name and key and endpoint.method != "GET":
            headers[name] = key
        return self.client.build_request(
            endpoint.method,
            endpoint._path.render(values, _segment),
            params={k: t.render(values) for k, t in endpoint._query.items()} or None,
            content=content,
            headers=headers,
        )

    # --- batch mode ----------------------------------------------------------------------------

    async def _batch(self, records: list[Record]) -> list[_Result]:
        batch = self.settings.batch
        assert batch is not None
        tenant = self.context.tenant
        items = [
            render_body(batch._item, Values(tenant, r, r.remote_id, self._sent(r, partial=False)))
            for r in records
        ]
        # Stable across retries of the same batch; single requests use the event id itself.
        key = hashlib.sha256("\n".join(r.event_id for r in records).encode()).hexdigest()[:32]
        body = {batch.key: items} if batch.key else items
        try:
            request = self._request(batch, Values(tenant), body, f"batch-{key}")
            answer = await self._send("batch", request)
        except _Failed as exc:
            return [exc.outcome] * len(records)  # the whole request failed: all of it
        if batch.results is None:
            return [Delivered(r.remote_id) for r in records]
        results = batch.search("results", _json(answer))
        if not isinstance(results, list):
            note = f"no list at {batch.results!r} in the answer"
            return [Delivered(r.remote_id, note) for r in records]
        if batch.match_by is None:
            matched: list[Any] = [
                results[i] if i < len(results) else None for i in range(len(items))
            ]
        else:
            by_id = {_remote_id(batch.search("match_by", x)): x for x in results}
            matched = [by_id.get(r.contact_id) for r in records]
        return [self._batch_item(r, result) for r, result in zip(records, matched, strict=True)]

    def _batch_item(self, record: Record, result: Any) -> Outcome:
        batch = self.settings.batch
        assert batch is not None
        if result is None:
            return Retry("batch: the answer has no result for this contact")
        status = batch.search("status_from_result", result)
        error = batch.search("error_from_result", result)
        if isinstance(status, int | str) and str(status).isdigit():
            kind = self.settings.status_kind(int(status))
        else:
            status, kind = None, "dead" if error else "success"
        if kind == "success":
            return Delivered(_remote_id(batch.search("id_from_result", result)) or record.remote_id)
        detail = _text(error if error is not None else result)[:SNIPPET]
        reason = f"batch item: HTTP {status}: {detail}" if status else f"batch item: {detail}"
        return Dead(reason) if kind == "dead" else Retry(reason)

    # --- sending -------------------------------------------------------------------------------

    async def _send(
        self, name: str, request: httpx.Request, *, gone_ok: bool = False
    ) -> httpx.Response:
        """One request, retried briefly. A success (or 404/410 when ``gone_ok``) is returned;
        any other answer is raised as the record's outcome."""
        s = self.settings
        allow = GONE if gone_ok else frozenset()
        try:
            answer = await self._attempts(request, allow)
        except _Transient as exc:
            raise _Failed(Retry(f"{name}: {exc}", maybe_written=exc.maybe_written)) from None
        status = answer.status_code
        kind = s.status_kind(status)
        if status in allow or kind == "success":
            return answer
        reason = f"{name}: HTTP {status}: {_snippet(answer)}"
        if kind == "pause":
            raise _Failed(_Pause(reason))
        if kind == "retry":
            after = retry_after(answer.headers.get("Retry-After"))
            if status == 429 and after and self._limiter:
                self._limiter.hold(after)  # everyone using this account waits
            # A rate limit is a wait, not a failure: it does not count towards max_attempts.
            raise _Failed(Retry(reason, after, count_attempt=status != 429))
        raise _Failed(Dead(reason))

    async def _attempts(self, request: httpx.Request, allow: Collection[int]) -> httpx.Response:
        maybe_written = False  # by any attempt: a later refused connection does not undo it
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.call_attempts),
                wait=self.call_wait,
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    try:
                        return await self._exchange(request, allow)
                    except _Transient as exc:
                        maybe_written |= exc.maybe_written
                        raise
        except _Transient as exc:
            raise _Transient(str(exc), maybe_written) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, request: httpx.Request, allow: Collection[int]) -> httpx.Response:
        report = self.context.report
        async with self._slots:
            if self._limiter is not None:
                report.rate_wait(await self._limiter.acquire())
            if request.method != "GET":
                try:
                    check_claim()
                except RetryableError as exc:
                    raise _Failed(Retry(str(exc))) from None
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.settings.call_timeout):
                    answer = await self.client.send(request)
            except TimeoutError:
                report.request("error", time.monotonic() - started)
                limit = self.settings.call_timeout
                raise _Transient(f"no answer within call_timeout ({limit:g} s)", True) from None
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                report.request("error", time.monotonic() - started)
                # Refused, or no connection in time: nothing went out. Anything else may have.
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                                      | httpx.PoolTimeout)  # fmt: skip
                raise _Transient(f"{type(exc).__name__}: {exc}".rstrip(": "), sent) from None
        status = answer.status_code
        report.request(status, time.monotonic() - started)
        # Try again at once unless the target said when (Retry-After) or to slow down (429).
        if (
            status not in allow
            and self.settings.status_kind(status) == "retry"
            and status != 429
            and "Retry-After" not in answer.headers
        ):
            raise _Transient(f"HTTP {status}: {_snippet(answer)}")
        return answer
