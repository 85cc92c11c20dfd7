"""The request budget replicas on PostgreSQL share: its sliding window lives in the database.

:class:`~connector.ratelimit.RateLimiter` keeps one process's window in memory; this one keeps the
request starts (``rate_starts``) and the holds after a 429 (``rate_holds``) in tables, so every
replica draws from one budget. It lives in the store package because it needs the store's
connection pool, and :mod:`connector.ratelimit` must not import the store (the store imports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from connector.ratelimit import RateLimiter, window_with_margin

# A string: asyncpg's classes are not subscriptable at run time.
Transaction = Callable[[], "AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]"]

# A slot in the account's window now, or the seconds to wait for one (taken when <= 0). Runs
# after Q_RATE_LOCK, in its own statement: its snapshot then sees every slot taken before.
Q_RATE_LOCK = "SELECT pg_advisory_xact_lock($1)"
Q_RATE_TAKE = """
    WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::DOUBLE PRECISION AS now),
    expired AS (DELETE FROM rate_starts WHERE account = $1 AND at <= (SELECT now FROM clock) - $2),
    window_ AS (SELECT count(*) AS n, min(at) AS oldest FROM rate_starts
                WHERE account = $1 AND at > (SELECT now FROM clock) - $2),
    held AS (SELECT COALESCE(max(until), 0) AS until FROM rate_holds WHERE account = $1),
    wait AS (SELECT GREATEST(held.until - clock.now,
                             CASE WHEN window_.n >= $3 THEN window_.oldest + $2 - clock.now
                                  ELSE 0 END) AS seconds, clock.now
             FROM clock, window_, held),
    taken AS (INSERT INTO rate_starts (account, at) SELECT $1, now FROM wait WHERE seconds <= 0)
    SELECT seconds FROM wait"""
Q_RATE_IN_WINDOW = """
    SELECT count(*) FROM rate_starts
    WHERE account = $1 AND at > extract(epoch FROM clock_timestamp()) - $2"""
Q_RATE_HOLD = """
    INSERT INTO rate_holds (account, until)
    VALUES ($1, extract(epoch FROM clock_timestamp()) + $2)
    ON CONFLICT (account) DO UPDATE SET until = GREATEST(rate_holds.until, excluded.until)"""


class PostgresRateLimiter(RateLimiter):
    """A sliding window of request starts kept in PostgreSQL, so all replicas share one limit.

    Each ``acquire`` is one short transaction serialised by an advisory lock on the account, and
    uses the database's clock, so the replicas' own clocks do not matter.
    """

    def __init__(
        self,
        transaction: Transaction,
        lock: int,
        account: str,
        requests: int,
        per_seconds: float,
    ) -> None:
        # The store's transaction and the account's lock key are passed in: importing the store
        # here would make a cycle (the store builds its limiters).
        self._transaction, self._lock = transaction, lock
        self.account, self.requests = account, requests
        self.window = window_with_margin(per_seconds)
        self._held_until = 0.0  # a hold this replica knows of, spared a round trip
        self._holds: set[asyncio.Task[None]] = set()

    async def acquire(self) -> float:
        started = time.monotonic()
        while True:
            wait = max(self._held_until - time.monotonic(), 0.0)
            if wait == 0:
                async with self._transaction() as conn:
                    await conn.execute(Q_RATE_LOCK, self._lock)
                    wait = await conn.fetchval(
                        Q_RATE_TAKE, self.account, self.window, self.requests
                    )
                if wait <= 0:
                    return time.monotonic() - started
            await asyncio.sleep(wait)

    def hold(self, seconds: float) -> None:
        self._held_until = max(self._held_until, time.monotonic() + seconds)
        task = asyncio.create_task(self._hold(seconds))  # the other replicas wait too
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    async def in_window(self) -> int:
        async with self._transaction() as conn:
            return int(await conn.fetchval(Q_RATE_IN_WINDOW, self.account, self.window))

    async def _hold(self, seconds: float) -> None:
        with contextlib.suppress(Exception):  # best effort: this replica holds regardless
            async with self._transaction() as conn:
                await conn.execute(Q_RATE_HOLD, self.account, seconds)
