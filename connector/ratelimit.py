"""Request budgets for targets with rate limits (HubSpot: 100 requests per 10 s per private app).

A :class:`RateLimiter` lets at most ``requests`` calls start in any window of ``per_seconds``
(a sliding log of start times, so a burst never exceeds the limit at any instant). Callers tell it
what the target said: :meth:`RateLimiter.observe` slows down when the target reports its budget
running low (someone else uses the same account), :meth:`RateLimiter.hold` stops everyone for a
while after a 429.

Targets that share an account share a limiter. Adapters get theirs from
``TargetContext.limiter``: in one process that is :func:`shared_limiter`; replicas on PostgreSQL
get one whose window lives in the database, so together they stay under the account's limit.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable


class RateLimiter(ABC):
    """A request budget: ``acquire`` before each request."""

    requests: int

    @abstractmethod
    async def acquire(self) -> float:
        """Wait for a free slot, then take it; return the seconds waited."""

    @abstractmethod
    def hold(self, seconds: float) -> None:
        """Nobody starts a request for ``seconds`` (after a 429, or a budget running dry)."""

    @abstractmethod
    async def in_window(self) -> int:
        """How many of the ``requests`` the current window has used (the console shows it)."""

    def observe(self, remaining: int | None, limit: int | None, interval: float | None) -> None:
        """Take the target's own count into account (``X-…-Remaining``, ``-Max``, interval s).

        When fewer than a twentieth of the requests are left (and at least one is kept in
        reserve), wait as long as the missing ones take to free up at the target's pace.
        """
        if remaining is None or not limit or not interval:
            return
        reserve = max(1, limit // 20)
        if remaining < reserve:
            self.hold(interval / limit * (reserve - remaining))


def window_with_margin(per_seconds: float) -> float:
    """A little longer than the target's window: its clock starts when a request ARRIVES, some
    milliseconds (more on a busy machine) after this side let it go."""
    return per_seconds * 1.02 + 0.05


LimiterFactory = Callable[[str, str, int, float], RateLimiter]
"""``(base_url, credential, requests, per_seconds)`` -> the account's limiter."""


def account_key(base_url: str, secret: str) -> str:
    """Names an account without carrying its credential: a digest of URL and secret."""
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{secret}".encode()).hexdigest()


class LocalRateLimiter(RateLimiter):
    """The window in this process's memory."""

    def __init__(self, requests: int, per_seconds: float) -> None:
        self.requests = requests
        self.window = window_with_margin(per_seconds)
        self._starts: collections.deque[float] = collections.deque()
        self._held_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait for a free slot in the window, then take it; return the seconds waited.

        Waiters are served in order.
        """
        started = time.monotonic()
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._starts and self._starts[0] <= now - self.window:
                    self._starts.popleft()
                wait = self._held_until - now
                if len(self._starts) >= self.requests:
                    wait = max(wait, self._starts[0] + self.window - now)
                if wait <= 0:
                    self._starts.append(now)
                    return now - started
                await asyncio.sleep(wait)

    def hold(self, seconds: float) -> None:
        self._held_until = max(self._held_until, time.monotonic() + seconds)

    async def in_window(self) -> int:
        since = time.monotonic() - self.window
        return sum(1 for at in self._starts if at > since)


_Key = tuple[str, int, float]
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, RateLimiter]] = (
    weakref.WeakKeyDictionary()
)


def shared_limiter(base_url: str, secret: str, requests: int, per_seconds: float) -> RateLimiter:
    """One limiter per account in this process: same URL, credential and limit, same limiter."""
    key = (account_key(base_url, secret), requests, per_seconds)
    limiters = _shared.setdefault(asyncio.get_running_loop(), {})
    if key not in limiters:
        limiters[key] = LocalRateLimiter(requests, per_seconds)
    return limiters[key]
