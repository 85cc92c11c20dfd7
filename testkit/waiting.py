"""Waiting for what a test asserts, never for a fixed time.

State written by another task, thread or process (a worker committing a completion, a server
rewriting a CSV file, a replica taking over a lease) shows up *eventually*. A test polls the very
condition it asserts until it holds, with a deadline generous enough for a loaded machine: a slow
run takes longer, it does not fail. A fixed sleep followed by an assertion fails on a busy machine;
waiting for one signal and then asserting another fails whenever the two are written apart.

A condition is a callable (plain or ``async``) that returns a truthy value once met, or raises
``AssertionError`` while it is not: the last assertion's message is what a timeout reports.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE = 30.0  # seconds: generous, since a condition that holds ends the wait at once
INTERVAL = 0.01


async def eventually(condition: Callable[[], T | Awaitable[T]], timeout: float = DEADLINE) -> T:
    """Poll ``condition`` until it holds; return its value. Fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last: AssertionError | None = None
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise _timeout(condition, timeout, last)
        await asyncio.sleep(INTERVAL)


def eventually_blocking(condition: Callable[[], T], timeout: float = DEADLINE) -> T:
    """:func:`eventually` for code without an event loop (threads, synchronous tests)."""
    deadline = time.monotonic() + timeout
    while True:
        last: AssertionError | None = None
        try:
            value = condition()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise _timeout(condition, timeout, last)
        time.sleep(INTERVAL * 2)


def _timeout(condition: Callable[..., object], timeout: float, last: Exception | None) -> Exception:
    name = getattr(condition, "__qualname__", repr(condition))
    try:
        source = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        source = name
    message = f"not met within {timeout:g} s: {source}"
    if last is not None and str(last):
        message += f"\n  last: {last}"
    error = AssertionError(message)
    error.__cause__ = last
    return error
