"""Helpers the HTTP adapters (HubSpot, REST) share, written once.

The adapter kit's HTTP base: one timed exchange (``call_timeout`` bounds the whole answer, each
request reported with its status and time), one retry loop within a push (``Transient`` failures
tried again, remembering whether any attempt may have been written), ``Retry-After`` in both of
its forms, the rate-limit wait, the classification of answers (:class:`StatusRules`: HubSpot uses
the defaults, REST the lists its config gives), and the small helpers both adapters used to copy.
What a 429 means beyond "wait" stays with the adapter (HubSpot's daily budget pauses the target).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Annotated, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from connector.adapter import TargetReporter
from connector.ratelimit import RateLimiter

T = TypeVar("T")

# A status code (``404``) or a class of them (``"4xx"``), and what an answer with it means.
StatusCode = Annotated[int, Field(ge=100, le=599)] | Annotated[str, Field(pattern=r"^[1-5]xx$")]
StatusKind = Literal["success", "retry", "dead", "pause"]


class StatusRules:
    """What each HTTP status means for the records sent: written (success), worth another try
    (retry), refused for good (dead), or the whole target refused (pause, e.g. a revoked token).

    A code listed by itself beats a class (``429`` in ``retry`` beats ``4xx`` in ``dead``); a code
    or class in two lists is an error; a status nobody listed (3xx, ...) is dead.
    """

    # The lists are named as the REST target's config keys name them.
    def __init__(
        self,
        success: Sequence[int | str] = ("2xx",),
        retry_on: Sequence[int | str] = (408, 425, 429, "5xx"),
        dead_on: Sequence[int | str] = ("4xx",),
        pause_on: Sequence[int | str] = (401, 403),
    ) -> None:
        self._kinds: dict[int, StatusKind] = {}
        lists: dict[str, tuple[StatusKind, Sequence[int | str]]] = {
            "success": ("success", success), "pause_on": ("pause", pause_on),
            "retry_on": ("retry", retry_on), "dead_on": ("dead", dead_on),
        }  # fmt: skip
        for exact in (True, False):
            claimed: dict[int, str] = {}
            for name, (_, codes) in lists.items():
                for code in codes:
                    if isinstance(code, int) != exact:
                        continue
                    first = code if isinstance(code, int) else int(code[0]) * 100
                    for status in range(first, first + (1 if exact else 100)):
                        if claimed.setdefault(status, name) != name:
                            raise ValueError(
                                f"status {code} is in both {claimed[status]} and {name}"
                            )
            for status, name in claimed.items():
                self._kinds.setdefault(status, lists[name][0])

    def kind(self, status: int) -> StatusKind:
        return self._kinds.get(status, "dead")


async def wait_turn(limiter: RateLimiter | None, report: TargetReporter) -> None:
    """Wait for the request budget (``rate_limit``) before a request, reporting the wait."""
    if limiter is not None:
        report.rate_wait(await limiter.acquire())


class RateLimit(BaseModel):
    """A target's request budget (``rate_limit:``): ``requests`` per ``per_seconds``."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(ge=1)
    per_seconds: float = Field(gt=0)


class Transient(Exception):
    """Worth another try within the same push (a 5xx, a connection problem).

    ``after``: seconds the target asked to wait (``Retry-After``). ``maybe_written``: the request
    went out and no answer came back, so the target may still act on it.
    """

    def __init__(
        self, message: str, *, after: float | None = None, maybe_written: bool = False
    ) -> None:
        super().__init__(message)
        self.after = after
        self.maybe_written = maybe_written


async def with_retries(send: Callable[[], Awaitable[T]], attempts: int, wait: wait_base) -> T:
    """``send()`` tried up to ``attempts`` times while it raises :class:`Transient`.

    The last ``Transient`` is raised when all fail, marked ``maybe_written`` if any attempt may
    have been written: a later refused connection does not undo an earlier unanswered write.
    """
    maybe_written = False
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait,
            retry=retry_if_exception_type(Transient),
            reraise=True,
        ):
            with attempt:
                try:
                    return await send()
                except Transient as exc:
                    maybe_written |= exc.maybe_written
                    raise
    except Transient as exc:
        raise Transient(str(exc), after=exc.after, maybe_written=maybe_written) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def timed_send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    call_timeout: float,
    report: TargetReporter,
    no_answer: int | str,
    failures: tuple[type[Exception], ...] = (httpx.TransportError,),
) -> httpx.Response:
    """Send ``request`` and read its whole answer within ``call_timeout`` (httpx's own timeouts
    bound each read, not a server trickling its answer), reporting status and time.

    A failure (``TimeoutError`` for the deadline, one of ``failures`` otherwise) is reported as
    ``no_answer`` and raised as is: what it means differs per target.
    """
    caught: tuple[type[Exception], ...] = (*failures, TimeoutError)
    started = time.monotonic()
    try:
        async with asyncio.timeout(call_timeout):
            response = await client.send(request)
    except caught:
        report.request(no_answer, time.monotonic() - started)
        raise
    report.request(response.status_code, time.monotonic() - started)
    return response


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date (RFC 9110 allows both)."""
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


def join_notes(first: str | None, second: str) -> str:
    """Two notes of one outcome as one line (``first`` may be missing)."""
    return f"{first}; {second}" if first else second


def chunks(items: list[str], size: int) -> Iterable[list[str]]:
    """``items`` in lists of at most ``size`` (a target's batch limit)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
