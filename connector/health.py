"""Whether the store takes writes: what the receiver's appends find out, and ``/readyz`` says."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import asyncpg

from connector.logs import Throttled, get_logger
from connector.store.base import Store

log = get_logger("connector.service")

# What the infrastructure raises when the store cannot write (disk full, database gone): said in
# one line, without a traceback. Anything else is a bug, and its traceback is worth logging.
STORE_ERRORS = (sqlite3.Error, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def describe_error(exc: BaseException) -> str:
    """An exception on one line: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, TimeoutError) and not lines:
        lines = ["no answer in time"]
    text = lines[0] if lines else "no details"
    return f"{type(exc).__name__}: {text[:300]}"


class StoreHealth:
    """Whether the store takes writes, as the receiver's appends find out.

    A failed append marks the store as failing: ``/readyz`` answers 503 naming the problem, and
    the next append that succeeds clears it. While it fails, ``/readyz`` also tries a write of
    its own (``Store.probe_write``, which leaves nothing behind) at most once a second, so that a
    replica its orchestrator took out of rotation, and which therefore gets no webhooks, still
    notices when the store writes again. Failures are logged a line per kind (exception type)
    per second, with how many webhooks were refused, never a traceback per request.
    """

    probe_every = 1.0  # seconds between two write probes while failing

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failing: str | None = None  # the last problem, while failing
        self._since = 0.0
        self._refused = 0  # webhooks refused since the store started failing
        self._probed_at = -self.probe_every
        self._lines = Throttled(self._log_failure)

    def failed(self, exc: BaseException) -> None:
        problem = describe_error(exc)
        if self.failing is None:
            self._since, self._refused = time.monotonic(), 0
        self.failing = problem
        self._refused += 1
        details = {} if isinstance(exc, STORE_ERRORS) else {"exc_info": exc}
        self._lines(type(exc).__name__, error=problem, **details)

    @staticmethod
    def _log_failure(kind: str, count: int, fields: dict[str, Any]) -> None:
        log.error("webhooks refused: the store cannot write", refused=count, **fields)

    def succeeded(self) -> None:
        if self.failing is None:
            return
        self._lines.flush()
        log.warning("the store writes again", refused=self._refused,
                    seconds=round(time.monotonic() - self._since, 1))  # fmt: skip
        self.failing = None

    async def problem(self) -> str | None:
        """Why the store cannot write, or None; probes it while it fails."""
        if self.failing is None:
            return None
        now = time.monotonic()
        if now - self._probed_at >= self.probe_every:
            self._probed_at = now
            try:
                async with asyncio.timeout(2):
                    await self.store.probe_write()
            except Exception as exc:
                self.failing = describe_error(exc)
            else:
                self.succeeded()
                return None
        return f"the store cannot write: {self.failing}"
