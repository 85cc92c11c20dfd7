"""Request budgets for targets with rate limits (HubSpot: 100 requests per 10 s per private app).

A :class:`RateLimiter` lets at most ``requests`` calls start in any window of ``per_seconds``
(a sliding log of start times, so a burst never exceeds the limit at any instant). Callers tell it
what the target said: :meth:`RateLimiter.observe` slows down when the target reports its budget
running low (someone else uses the same account), :meth:`RateLimiter.hold` stops everyone for a
while after a 429. Targets that share an account share a limiter: :func:`shared_limiter`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
import weakref


class RateLimiter:
    def __init__(self, requests: int, per_seconds: float, *, margin: float = 0.02) -> None:
        self.requests = requests
        # A little longer than the target's window: its clock starts when a request arrives.
        self.window = per_seconds * (1 + margin)
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
        """Nobody starts a request for ``seconds`` (after a 429, or a budget running dry)."""
        self._held_until = max(self._held_until, time.monotonic() + seconds)

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


_Key = tuple[str, str, int, float]
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, RateLimiter]] = (
    weakref.WeakKeyDictionary()
)


def shared_limiter(base_url: str, secret: str, requests: int, per_seconds: float) -> RateLimiter:
    """One limiter per account: targets with the same URL, credential and limit share it."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    key = (base_url.rstrip("/"), digest, requests, per_seconds)
    limiters = _shared.setdefault(asyncio.get_running_loop(), {})
    if key not in limiters:
        limiters[key] = RateLimiter(requests, per_seconds)
    return limiters[key]
