"""The embedded store: one SQLite file in WAL mode, written with group commit.

Every operation is a function of the connection. One writer task takes whatever operations queued
up while the previous commit was syncing and runs them all in ONE transaction, so a hundred
concurrent webhooks share one fsync instead of paying one each; a caller's future resolves only
after the commit is on disk (``synchronous=FULL``).

The statements of a group run on the event loop: they take microseconds, and a thread would spend
more than that waiting for the GIL after every SQLite call. Only what waits on the disk runs in
a thread: the commit (an fsync), and the operators' scans (``HEAVY``). The operations themselves,
functions of the connection, are in :mod:`connector.store.sqlite_ops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random

from connector.errors import ConfigError
from connector.store import queries as q
from connector.store import sqlite_ops as ops
from connector.store.base import (
    Accepted,
    Claim,
    DeadLetter,
    DeadLetterPick,
    NewEvent,
    PauseRow,
    Relink,
    Replayed,
    Result,
    SchemaPolicy,
    Store,
    TargetStatus,
    Trace,
    email_hash,
    new_event_id,
    normal_email,
    schema_problem,
)
from connector.store.schema import SQLITE_MIGRATIONS
from connector.store.sqlite_ops import PROBE_BYTES, Q_RECOVER, Operation, Settled

T = TypeVar("T")

MIGRATIONS = SQLITE_MIGRATIONS  # see connector.store.schema


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _while_locked(setup: Callable[[], T]) -> Callable[[], T]:
    """``setup`` (opening, migrating) tried again while another process opening the same file
    holds it: switching to WAL and the first look at a database another connection is recovering
    can answer "database is locked" at once, without waiting for the busy timeout."""
    return Retrying(
        retry=retry_if_exception(_locked),
        stop=stop_after_delay(30),
        wait=wait_random(0.01, 0.1),
        reraise=True,
    ).wraps(setup)


def _migrate(conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
    """Bring the schema to the latest version (PRAGMA user_version), one migration at a time.

    Each migration is one transaction under the write lock. When another process applied it
    meanwhile, ours fails and rolls back; the version then says it is done, and we go on.
    """
    before = version = conn.execute("PRAGMA user_version").fetchone()[0]
    while version < len(MIGRATIONS):
        number = version + 1
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[version]}; PRAGMA user_version = {number}; COMMIT;"
            )
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if conn.execute("PRAGMA user_version").fetchone()[0] < number:
                raise
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    problem = schema_problem(str(path), version, len(MIGRATIONS))
    if problem:
        raise ConfigError(problem)
    return before, version


class SQLiteStore(Store):
    """The store on one SQLite file. ``exclusive`` takes a lock so only one server uses it."""

    max_group = 1000  # operations per transaction at most

    prune_slice = 2000  # rows deleted per transaction by prune()
    checkpoint_every = 0.5  # seconds between two WAL checkpoints of a serving process
    wal_limit_mb = 64  # past this the WAL is brought back to its start (and its file trimmed)
    cache_mb = 64  # SQLite's page cache of the writer connection

    def __init__(
        self,
        path: Path,
        *,
        exclusive: bool = False,
        dedupe_window: float = 86_400.0,
        schema: SchemaPolicy = "migrate",
        max_size_mb: float | None = None,
    ) -> None:
        self.path = path
        self.exclusive = exclusive
        self.max_size_mb = max_size_mb  # the file's size cap (store.max_size_mb): then "full"
        self.dedupe_window = dedupe_window
        self.schema = schema
        self._ops: asyncio.Queue[Operation | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._disk: ThreadPoolExecutor | None = None  # commits and scans: they wait on the disk
        self._lock_file: IO[bytes] | None = None
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._email_key: bytes | None = None  # contact_emails' key, read once at open/migrate

    # --- plumbing --------------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.exclusive:
            self._take_lock()
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._disk, _while_locked(self._connect))
        except BaseException:
            await self.close()
            raise
        self._ops = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_forever(), name=f"sqlite:{self.path.name}")
        if self.exclusive:  # the serving process keeps the WAL short, off the commit path
            self._checkpointer = threading.Thread(
                target=self._checkpoint_forever, name=f"sqlite-checkpoint:{self.path.name}",
                daemon=True,
            )  # fmt: skip
            self._checkpointer.start()

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_file = lock_path.open("ab")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise ConfigError(
                f"{self.path} is in use by another connector process "
                "(several replicas need a PostgreSQL store)"
            ) from None

    async def close(self) -> None:
        if self._writer is not None and self._ops is not None:
            self._ops.put_nowait(None)  # after everything queued before it
            await self._writer
            self._writer = None
        if self._checkpointer is not None:
            self._closing.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._disk is not None:
            self._disk.shutdown()
            self._disk = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def migrate(self) -> tuple[int, int]:
        """Apply pending migrations on a connection of its own (the writer's is busy grouping)."""

        def run() -> tuple[int, int]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                versions = _migrate(conn, self.path)
                self._email_key = ops.email_key(conn)
                return versions
            finally:
                conn.close()

        return await asyncio.to_thread(_while_locked(run))

    def _checkpoint_forever(self) -> None:
        """Copy the WAL into the database now and then, so commits never wait for that copy.

        PASSIVE never blocks the writer, but under steady writes it never catches up with the
        WAL's end either, and the WAL only starts over once it has. So when the WAL has grown
        past ``wal_limit_mb``, a RESTART pass holds the writer back for the few frames PASSIVE
        left, and the next commit starts the WAL over (``journal_size_limit`` then trims the
        file).
        """
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 10000")
        wal = Path(f"{self.path}-wal")
        try:
            while not self._closing.wait(self.checkpoint_every):
                with contextlib.suppress(sqlite3.OperationalError, OSError):  # busy: next time
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if wal.stat().st_size > self.wal_limit_mb * 2**20:
                        conn.execute("PRAGMA wal_checkpoint(RESTART)")
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk before the 202
        conn.execute("PRAGMA foreign_keys = OFF")
        # Index pages of random keys (contacts, digests) stay in memory instead of being read
        # back from the file at every webhook.
        conn.execute(f"PRAGMA cache_size = -{self.cache_mb * 1024}")
        if self.max_size_mb is not None:  # writes past it fail as on a full disk (SQLITE_FULL)
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(int(self.max_size_mb * 2**20 // page), 1)}")
        if self.exclusive:  # the checkpoint thread copies the WAL back; commits do not
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit_mb * 2**20}")
        try:
            if self.schema == "migrate":
                _migrate(conn, self.path)
            elif self.schema == "verify":
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                problem = schema_problem(str(self.path), version, len(MIGRATIONS))
                if problem:
                    raise ConfigError(problem)
            self._email_key = ops.email_key(conn)
        except BaseException:
            conn.close()
            raise
        # From here on a busy database (another process writing) is waited for asynchronously.
        conn.execute("PRAGMA busy_timeout = 0")
        return conn

    async def _write_forever(self) -> None:
        assert self._ops is not None
        while True:
            first = await self._ops.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_group and not self._ops.empty():
                op = self._ops.get_nowait()
                if op is None:
                    stop = True  # finish this group, then stop
                    break
                batch.append(op)
            ops.settle(await self._run_group(batch))
            if stop:
                return

    async def _run_group(self, batch: list[Operation]) -> list[Settled]:
        try:
            return await self._transaction(batch)
        except Exception:  # noqa: S110 - retried one by one below
            pass
        # One operation failed: run each alone so the others still commit.
        settled: list[Settled] = []
        for op in batch:
            try:
                settled += await self._transaction([op])
            except Exception as exc:
                settled.append((op[2], None, exc))
        return settled

    async def _transaction(self, batch: list[Operation]) -> list[Settled]:
        conn, loop = self._conn, asyncio.get_running_loop()
        assert conn is not None
        await self._begin(conn)
        try:
            if any(fn in ops.HEAVY for fn, _, _ in batch):
                results = await loop.run_in_executor(self._disk, ops.execute, conn, batch)
            else:
                results = ops.execute(conn, batch)
            await loop.run_in_executor(self._disk, conn.execute, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    async def _begin(conn: sqlite3.Connection) -> None:
        """Take the write lock; while another process holds it, wait without blocking the loop."""
        delay = 0.001
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in the next group transaction."""
        if self._ops is None or self._writer is None:
            raise RuntimeError("store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.put_nowait((fn, args, fut))
        return await fut

    # --- operations ------------------------------------------------------------------------------

    async def append(self, event: NewEvent) -> Accepted:
        return await self._call(
            ops.append, event, new_event_id(), time.time(), self.dedupe_window, self._email_key
        )

    async def append_many(self, events: Sequence[NewEvent]) -> list[Accepted]:
        now, window = time.time(), self.dedupe_window
        batch = [(event, new_event_id(), now, window) for event in events]
        return await self._call(ops.append_many, batch, self._email_key)

    async def claim(self, target: str, limit: int, lease: float) -> Claim:
        token = secrets.randbits(62)
        items = await self._call(ops.claim, target, token, limit, lease, time.time())
        return Claim(target=target, token=token, items=items)

    async def complete(self, claim: Claim, results: Sequence[Result]) -> None:
        await self._call(ops.complete, claim, results, time.time())

    def watch(self, queued: Callable[[str, int], None]) -> None:
        """One process uses the file: its receiver wakes its workers directly."""

    async def renew(self, claim: Claim, lease: float) -> bool:
        params = (time.time() + lease, claim.target, claim.token)
        return await self._call(ops.rowcount, q.RENEW, params) > 0

    async def next_due(self, target: str) -> float | None:
        return await self._call(ops.scalar, q.NEXT_DUE, (target,))

    async def recover(self) -> int:
        return await self._call(ops.rowcount, Q_RECOVER, (time.time(),))

    async def _write_pause(self, row: PauseRow) -> None:
        await self._call(ops.rowcount, q.SET_PAUSED, row)

    async def _pause_row(self, target: str) -> Sequence[Any] | None:
        return await self._call(ops.row, q.TARGET_STATE, (target,))

    async def dead_letters(
        self,
        targets: Sequence[str] | None = None,
        limit: int = 1000,
        *,
        pick: DeadLetterPick | None = None,
    ) -> list[DeadLetter]:
        return await self._call(ops.dead_letters, None, targets, limit, pick)

    async def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        found = await self._call(ops.dead_letters, dead_letter_id, None, 1)
        return found[0] if found else None

    async def replay(
        self, ids: Sequence[int] | None, targets: Sequence[str], *, all_of: bool = False
    ) -> list[Replayed]:
        return await self._call(ops.replay, ids, targets, all_of, time.time())

    async def purge(self, pick: DeadLetterPick) -> int:
        return await self._call(ops.purge, pick)

    async def resync(self, target: str, contact_ids: Sequence[str] | None) -> int:
        return await self._call(ops.resync, target, contact_ids, time.time())

    async def relink(self, target: str, links: Relink) -> int:
        return await self._call(ops.relink, target, links, time.time())

    async def queued(self, target: str, contact_ids: Sequence[str]) -> set[str]:
        return await self._call(ops.queued, target, list(contact_ids))

    async def trace(self, contact_id: str) -> Trace:
        return await self._call(ops.trace, contact_id)

    async def contacts_by_email(self, email: str) -> list[tuple[str, str]]:
        if not normal_email(email) or self._email_key is None:
            return []
        return await self._call(ops.contacts_by_email, email_hash(self._email_key, email))

    async def prune(self, retention: float) -> dict[str, int]:
        cutoff = time.time() - retention
        pruned = {"events": 0, "attempts": 0, "contact_emails": 0}
        # In slices, so webhooks arriving meanwhile never wait long for the writer.
        while True:
            counts = await self._call(ops.prune_slice, cutoff, self.prune_slice)
            for name, count in zip(pruned, counts, strict=True):
                pruned[name] += count
            if max(counts) < self.prune_slice:
                return pruned

    async def status(self) -> list[TargetStatus]:
        return await self._call(ops.status)

    async def ping(self) -> None:
        await self._call(ops.scalar, "SELECT 1", ())

    async def probe_write(self) -> None:
        # A commit that needs fresh pages, as an append does: fails while the disk (or
        # max_size_mb) is full. Plain SELECT 1 still works then.
        await self._call(ops.probe_write, PROBE_BYTES)
