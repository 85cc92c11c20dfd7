"""Helpers the HTTP adapters (HubSpot, REST) share, written once.

The adapter kit's HTTP base: one timed exchange (``call_timeout`` bounds the whole answer, each
request reported with its status and time), one retry loop within a push (``Transient`` failures
tried again, remembering whether any attempt may have been written), ``Retry-After`` in both of
its forms, and the small helpers both adapters used to copy. Status classification stays with
each adapter: HubSpot's (429 policies, daily budget) and REST's (configured lists) differ.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from connector.adapter import TargetReporter

T = TypeVar("T")


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
