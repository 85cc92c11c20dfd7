"""The rate limiter: never above the limit in any window, and it listens to the target."""

from __future__ import annotations

import asyncio
import time

from connector.ratelimit import LocalRateLimiter, shared_limiter


def most_in_any_window(starts: list[float], window: float) -> int:
    return max(sum(1 for t in starts if s <= t < s + window) for s in starts)


async def test_never_more_than_the_limit_in_any_window() -> None:
    limiter = LocalRateLimiter(5, 0.2)
    starts: list[float] = []

    async def caller() -> None:
        for _ in range(4):
            await limiter.acquire()
            starts.append(time.monotonic())

    await asyncio.gather(*(caller() for _ in range(5)))
    assert len(starts) == 20
    assert most_in_any_window(starts, 0.2) <= 5
    # ...and it does not dawdle: 20 calls at 5 per window take three windows (about 0.8 s); one
    # window per call would be 5 s.
    assert starts[-1] - starts[0] < 4 * limiter.window + 1.0


async def test_hold_stops_everyone_for_a_while() -> None:
    limiter = LocalRateLimiter(100, 1)
    limiter.hold(0.2)
    start = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - start >= 0.19


async def test_a_budget_running_low_slows_down() -> None:
    limiter = LocalRateLimiter(100, 10)
    limiter.observe(remaining=50, limit=100, interval=1.0)
    assert await limiter.acquire() < 0.05  # plenty left: no wait (the limiter's own count)
    limiter.observe(remaining=0, limit=100, interval=1.0)  # someone else used it up
    start = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - start >= 0.04  # 5 in reserve at 10 ms each


async def test_targets_of_one_account_share_a_limiter() -> None:
    a = shared_limiter("https://api.hubapi.com/", "token-1", 100, 10)
    assert shared_limiter("https://api.hubapi.com", "token-1", 100, 10) is a
    assert shared_limiter("https://api.hubapi.com", "token-2", 100, 10) is not a


async def test_the_budget_in_use_counts_the_starts_of_the_window() -> None:
    limiter = LocalRateLimiter(10, 0.2)
    assert await limiter.in_window() == 0
    for _ in range(3):
        await limiter.acquire()
    assert await limiter.in_window() == 3
    await asyncio.sleep(limiter.window)
    assert await limiter.in_window() == 0
