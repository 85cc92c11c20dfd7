"""The REST adapter: single and batch writes, deletes, lookups, status classification."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import orjson
from tenacity import (
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from adapters.http import (
    Transient,
    join_notes,
    retry_after,
    timed_send,
    wait_turn,
    with_retries,
)
from adapters.rest.settings import (
    BasicAuth,
    BatchRequest,
    BearerAuth,
    Endpoint,
    HeaderAuth,
    Operations,
    Request,
    RestSettings,
    UpdateRequest,
)
from adapters.rest.templates import (
    _SKIP,
    GONE,
    SNIPPET,
    Missing,
    Values,
    _remote_id,
    _search,
    _segment,
    _text,
    log,
    render_body,
)
from connector.adapter import (
    Adapter,
    ObjectType,
    Record,
    RequestPreview,
    TargetContext,
    check_claim,
)
from connector.errors import TargetPaused
from connector.outcomes import Dead, Delivered, Outcome, Retry, Undelivered
from connector.ratelimit import RateLimiter


@dataclass(frozen=True, slots=True)
class _Pause:
    reason: str


_Result = Outcome | _Pause


class _Failed(Exception):
    """A request ended without success: ``outcome`` is what the record gets."""

    def __init__(self, outcome: _Result) -> None:
        super().__init__(outcome)
        self.outcome = outcome


# Exceptions of a request that got no answer (others are bugs, and propagate).
_NO_ANSWER = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# What builds requests: the adapter's client, or a throwaway one for ``map --request``.
_Client = httpx.AsyncClient | httpx.Client
# ``map --request``: the remote id a lookup would find, known only at run time.
_FOUND = "{remote_id}"


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def _snippet(response: httpx.Response) -> str:
    text = response.content[:SNIPPET].decode("utf-8", "replace")
    return text or response.reason_phrase


class RestAdapter(Adapter[RestSettings]):
    type = "rest"
    settings_model = RestSettings
    max_batch_size = 1000  # batch mode's largest max_size; single requests default to 100
    default_concurrency = 4
    takes_companies = True

    # Between tries of one request within a push (tests make it instant).
    call_wait: ClassVar[wait_base] = wait_exponential(multiplier=0.2, max=2) + wait_random(0, 0.2)

    def __init__(self, settings: RestSettings, context: TargetContext) -> None:
        super().__init__(settings, context)
        self._client: httpx.AsyncClient | None = None
        self._limiter: RateLimiter | None = None
        # Bounds requests in flight across all of this target's pushes (and so the pool).
        self._slots = asyncio.Semaphore(settings.max_connections)
        for ops, mapped in (
            (settings, context.fields),
            (settings.companies, context.company_fields),
        ):
            names = ops.placeholders() if ops else set()
            fields = {n.removeprefix("fields.") for n in names if "." in n}
            if unknown := fields - set(mapped):
                log.warning(
                    "placeholders name fields the mapping does not have",
                    target=context.key,
                    fields=sorted(unknown),
                    companies=ops is settings.companies,
                )

    def _client_options(self) -> tuple[dict[str, str], httpx.Auth | None, str]:
        """The headers every request carries, the auth, and the secret (the account's)."""
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
        return headers, auth, secret

    async def open(self) -> None:
        s = self.settings
        headers, auth, secret = self._client_options()
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
        # Upserts go in batches where their kind's requests have a `batch`, one kind per batch.
        batched: dict[ObjectType, tuple[BatchRequest, list[int]]] = {}
        singles: list[int] = []
        for i, r in enumerate(records):
            ops = self.settings.operations(r.object_type)
            if ops is not None and ops.batch and r.op == "upsert":
                batched.setdefault(r.object_type, (ops.batch, []))[1].append(i)
            else:
                singles.append(i)

        async def single(i: int) -> None:
            results[i] = await self._single(records[i])

        async def many(batch: BatchRequest, indexes: list[int]) -> None:
            outcomes = await self._batch(batch, [records[i] for i in indexes])
            for i, outcome in zip(indexes, outcomes, strict=True):
                results[i] = outcome

        # A task group: when one fails (or the push is cancelled), the others are cancelled and
        # waited for, so that no request of this push is still running when it ends.
        async with asyncio.TaskGroup() as group:
            for i in singles:
                group.create_task(single(i))
            for batch, indexes in batched.values():
                for k in range(0, len(indexes), batch.max_size):
                    group.create_task(many(batch, indexes[k : k + batch.max_size]))
        done = [r for r in results if r is not None]
        pauses = [r for r in done if isinstance(r, _Pause)]
        if pauses and not any(isinstance(r, Delivered) for r in done):
            raise TargetPaused(f"the target refused the credentials: {pauses[0].reason}")
        # Some requests went through, so the credentials work: the refused ones just wait.
        return [Retry(r.reason, count_attempt=False) if isinstance(r, _Pause) else r for r in done]

    async def _single(self, record: Record) -> _Result:
        ops = self.settings.operations(record.object_type)
        if ops is None:  # config refuses company_mapping without `companies:`
            return Dead("this target has no `companies:` requests: companies are not sent")
        try:
            if record.op == "delete":
                return await self._delete(ops, record)
            return await self._write(ops, record)
        except _Failed as exc:
            return exc.outcome

    async def _write(self, s: Operations, record: Record) -> Outcome:
        if s.upsert is not None:
            answer = await self._call("upsert", s.upsert, record, record.remote_id)
            return self._delivered(s.upsert, answer, record.remote_id)
        assert s.create is not None and s.update is not None
        remote_id = record.remote_id
        if self._creates(s, record):
            if s.lookup is not None:
                remote_id = await self._lookup(s, record)
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

    @staticmethod
    def _creates(s: Operations, record: Record) -> bool:
        """Whether a create (after the lookup, if any) comes first, not an update."""
        assert s.update is not None
        return record.remote_id is None and (s.update.needs_remote_id or record.kind == "created")

    async def _delete(self, s: Operations, record: Record) -> Outcome:
        if s.delete is None:
            return Delivered(note="no `delete` configured: left in the target")
        remote_id = record.remote_id
        if remote_id is None and s.delete.needs_remote_id:
            if s.lookup is None:
                return Delivered(note="no remote id: nothing to delete")
            remote_id = await self._lookup(s, record)
            if remote_id is None:
                return Delivered(note="not found by lookup: nothing to delete")
        answer = await self._call(
            "delete", s.delete, record, remote_id, gone_ok=s.delete.missing_ok
        )
        if self._gone(answer):
            return Delivered(remote_id, note=f"already gone (HTTP {answer.status_code})")
        return Delivered(remote_id, note="deleted")

    async def _lookup(self, s: Operations, record: Record) -> str | None:
        lookup = s.lookup
        assert lookup is not None
        request = self._lookup_request(lookup, record)
        if request is None:
            return None
        answer = await self._send("lookup", request, gone_ok=True)
        return None if self._gone(answer) else _remote_id(_search(lookup._id, _json(answer)))

    def _lookup_request(
        self, lookup: Request, record: Record, client: _Client | None = None
    ) -> httpx.Request | None:
        try:
            return self._build(lookup, Values(self.context.tenant, record), None, client)
        except Missing:
            return None  # nothing to look it up by (say, no e-mail): not found

    def _gone(self, answer: httpx.Response) -> bool:
        """404/410 let through by ``gone_ok``: the contact (or company) is not in the target."""
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
            note = join_notes(note, f"no id at {request.id_from_response!r} in the answer")
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
        built = self._prepare(name, request, record, remote_id, key_suffix)
        return await self._send(name, built, gone_ok=gone_ok)

    def _prepare(
        self,
        name: str,
        request: Request,
        record: Record,
        remote_id: str | None,
        key_suffix: str = "",
        client: _Client | None = None,
    ) -> httpx.Request:
        partial = isinstance(request, UpdateRequest) and request.send == "changes"
        values = Values(self.context.tenant, record, remote_id, self._sent(record, partial))
        try:
            return self._build(request, values, record.event_id + key_suffix, client)
        except Missing as exc:
            reason = (
                f"{name}: the request needs {{{exc.name}}}, "
                f"which this {record.object_type} has no value for"
            )
            raise _Failed(Dead(reason)) from None

    def _sent(self, record: Record, partial: bool) -> dict[str, Any]:
        """The fields a write sends: what changed, or everything; and the cleared ones."""
        fields = record.changes if partial else dict(record.fields)
        if self.settings.cleared_fields == "send_null":
            fields.update(dict.fromkeys(record.cleared))
        return fields

    def _build(
        self, endpoint: Endpoint, values: Values, key: str | None, client: _Client | None = None
    ) -> httpx.Request:
        body = render_body(endpoint._body, values) if isinstance(endpoint, Request) else None
        return self._request(endpoint, values, body, key, client)

    def _request(
        self,
        endpoint: Endpoint,
        values: Values,
        body: Any,
        key: str | None,
        client: _Client | None = None,
    ) -> httpx.Request:
        headers = {}
        content = None
        if body is not None and body is not _SKIP:
            content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
            headers["Content-Type"] = "application/json"
        name = self.settings.idempotency_header
        if name and key and endpoint.method != "GET":
            headers[name] = key
        return (client or self.client).build_request(
            endpoint.method,
            endpoint._path.render(values, _segment),
            params={k: t.render(values) for k, t in endpoint._query.items()} or None,
            content=content,
            headers=headers,
        )

    # --- batch mode ----------------------------------------------------------------------------

    def _batch_request(
        self, batch: BatchRequest, records: list[Record], client: _Client | None = None
    ) -> httpx.Request:
        tenant = self.context.tenant
        items = [
            render_body(batch._item, Values(tenant, r, r.remote_id, self._sent(r, partial=False)))
            for r in records
        ]
        # Stable across retries of the same batch; single requests use the event id itself.
        key = hashlib.sha256("\n".join(r.event_id for r in records).encode()).hexdigest()[:32]
        body = {batch.key: items} if batch.key else items
        return self._request(batch, Values(tenant), body, f"batch-{key}", client)

    async def _batch(self, batch: BatchRequest, records: list[Record]) -> list[_Result]:
        try:
            answer = await self._send("batch", self._batch_request(batch, records))
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
                results[i] if i < len(results) else None for i in range(len(records))
            ]
        else:
            by_id = {_remote_id(batch.search("match_by", x)): x for x in results}
            matched = [by_id.get(r.contact_id) for r in records]
        return [
            self._batch_item(batch, r, result) for r, result in zip(records, matched, strict=True)
        ]

    def _batch_item(self, batch: BatchRequest, record: Record, result: Any) -> Outcome:
        if result is None:
            return Retry(f"batch: the answer has no result for this {record.object_type}")
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

    # --- map --request --------------------------------------------------------------------------

    def describe_request(self, record: Record) -> list[RequestPreview]:
        """The requests of ``push`` for this record alone, built by the same code with a client
        configured like the adapter's (never sending), secrets masked."""
        ops = self.settings.operations(record.object_type)
        if ops is None:
            return [RequestPreview(note="this target has no `companies:` requests")]
        headers, auth, _ = self._client_options()
        with httpx.Client(base_url=self.settings.base_url, headers=headers) as client:
            try:
                steps = self._steps(ops, record, client)
            except _Failed as exc:  # a placeholder without a value: the record goes dead
                assert isinstance(exc.outcome, Dead)
                return [RequestPreview(note=exc.outcome.reason)]
        return [
            RequestPreview(note=note) if r is None else self._preview(r, auth, note)
            for r, note in steps
        ]

    def _steps(
        self, s: Operations, record: Record, client: httpx.Client
    ) -> list[tuple[httpx.Request | None, str | None]]:
        """The requests (None: just a note) in the order ``_single``/``_batch`` make them."""
        remote_id = record.remote_id
        if record.op == "delete":
            if s.delete is None:
                return [(None, "no `delete` configured: left in the target")]
            steps: list[tuple[httpx.Request | None, str | None]] = []
            if remote_id is None and s.delete.needs_remote_id:
                lookup = self._lookup_request(s.lookup, record, client) if s.lookup else None
                if lookup is None:
                    return [(None, "no remote id and no lookup: nothing to delete")]
                steps.append((lookup, "find its remote id"))
                remote_id = _FOUND
            request = self._prepare("delete", s.delete, record, remote_id, client=client)
            return [*steps, (request, "if found" if steps else None)]
        if s.batch is not None:
            return [(self._batch_request(s.batch, [record], client), None)]
        if s.upsert is not None:
            return [(self._prepare("upsert", s.upsert, record, remote_id, client=client), None)]
        assert s.create is not None and s.update is not None
        if self._creates(s, record):
            lookup = self._lookup_request(s.lookup, record, client) if s.lookup else None
            create = self._prepare("create", s.create, record, None, client=client)
            if lookup is None:
                return [(create, None)]
            return [
                (lookup, "find its remote id"),
                (create, "if not found (if found: the update, with the id found)"),
            ]
        update = self._prepare("update", s.update, record, remote_id, client=client)
        if not s.update.create_if_missing:
            return [(update, None)]
        create = self._prepare("create", s.create, record, None, ":create", client)
        return [(update, None), (create, "if the update answers 404/410")]

    def _preview(
        self, request: httpx.Request, auth: httpx.Auth | None, note: str | None
    ) -> RequestPreview:
        if auth is not None:  # basic auth: httpx adds its header as it sends
            request = next(auth.sync_auth_flow(request))
        s = self.settings
        secret = {name.lower() for name in s.headers} | {"authorization"}
        if isinstance(s.auth, HeaderAuth):
            secret.add(s.auth.name.lower())
        headers = {}
        for raw, value in request.headers.raw:
            name = raw.decode("latin-1")
            text = value.decode("latin-1")
            if name.lower() in secret:  # keep the scheme (Bearer, Basic), never the secret
                scheme = text.split(" ", 1)[0] if name.lower() == "authorization" else ""
                text = f"{scheme} ***" if " " in text and scheme else "***"
            headers[name] = text
        # The placeholder is a value like any other, percent-encoded: shown as written.
        url = str(request.url).replace(quote(_FOUND, safe=""), _FOUND)
        body = orjson.loads(request.content) if request.content else None
        return RequestPreview(request.method, url, headers, body, note=note)

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
        except Transient as exc:
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
        return await with_retries(
            lambda: self._exchange(request, allow), self.settings.call_attempts, self.call_wait
        )

    async def _exchange(self, request: httpx.Request, allow: Collection[int]) -> httpx.Response:
        report = self.context.report
        async with self._slots:
            await wait_turn(self._limiter, report)
            if request.method != "GET":
                try:
                    check_claim()
                except Undelivered as exc:
                    raise _Failed(Retry(str(exc))) from None
            try:
                answer = await timed_send(
                    self.client,
                    request,
                    call_timeout=self.settings.call_timeout,
                    report=report,
                    no_answer="error",
                    failures=_NO_ANSWER,
                )
            except TimeoutError:
                limit = self.settings.call_timeout
                message = f"no answer within call_timeout ({limit:g} s)"
                raise Transient(message, maybe_written=True) from None
            except _NO_ANSWER as exc:
                # Refused, or no connection in time: nothing went out. Anything else may have.
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                                      | httpx.PoolTimeout)  # fmt: skip
                message = f"{type(exc).__name__}: {exc}".rstrip(": ")
                raise Transient(message, maybe_written=sent) from None
        status = answer.status_code
        # Try again at once unless the target said when (Retry-After) or to slow down (429).
        if (
            status not in allow
            and self.settings.status_kind(status) == "retry"
            and status != 429
            and "Retry-After" not in answer.headers
        ):
            raise Transient(f"HTTP {status}: {_snippet(answer)}")
        return answer
