"""The embedded store: one SQLite file in WAL mode, written with group commit.

Every operation is a function of the connection. One writer task takes whatever operations queued
up while the previous commit was syncing and runs them all in ONE transaction, so a hundred
concurrent webhooks share one fsync instead of paying one each; a caller's future resolves only
after the commit is on disk (``synchronous=FULL``).

The statements of a group run on the event loop: they take microseconds, and a thread would spend
more than that waiting for the GIL after every SQLite call. Only what waits on the disk runs in
a thread: the commit (an fsync), and the operators' scans (``HEAVY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from connector.errors import ConfigError
from connector.store.base import (
    Accepted,
    Claim,
    ClaimedItem,
    DeadLetter,
    NewEvent,
    Replayed,
    Result,
    SchemaPolicy,
    Store,
    SyncState,
    TargetState,
    TargetStatus,
    Trace,
    TraceAttempt,
    TraceEvent,
    event_digest,
    new_event_id,
    schema_problem,
)

T = TypeVar("T")
Operation = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
Settled = tuple["asyncio.Future[Any]", Any, BaseException | None]

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        event_id    TEXT NOT NULL,  -- random: no index needed to keep it unique
        tenant      TEXT NOT NULL,
        contact_id  TEXT NOT NULL,
        event_type  TEXT NOT NULL,
        op          TEXT NOT NULL,
        payload     BLOB NOT NULL,
        received_at REAL NOT NULL,
        dropped     TEXT,
        digest      INTEGER NOT NULL
    );
    CREATE INDEX events_by_digest ON events (digest);

    -- Rows live in insertion order (id), so the oldest rows claimed together share pages.
    CREATE TABLE queue (
        id              INTEGER PRIMARY KEY,
        target          TEXT NOT NULL,
        contact_id      TEXT NOT NULL,
        op              TEXT NOT NULL,
        last_seq        INTEGER NOT NULL,
        head_at         REAL NOT NULL,
        events          INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        due_at          REAL NOT NULL,
        claim           INTEGER,
        claim_seq       INTEGER,
        claim_events    INTEGER,
        claim_op        TEXT,
        first_error     TEXT,
        last_error      TEXT,
        first_failed_at REAL
    );
    -- Contact first: it also finds every target's row of one contact (prune, trace, replay).
    CREATE UNIQUE INDEX queue_by_contact ON queue (contact_id, target);
    CREATE INDEX queue_by_due ON queue (target, due_at);

    CREATE TABLE links (
        target     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        remote_id  TEXT,
        seq        INTEGER NOT NULL,
        at         REAL NOT NULL,
        PRIMARY KEY (target, contact_id)
    ) WITHOUT ROWID;

    CREATE TABLE dead_letters (
        id              INTEGER PRIMARY KEY,
        target          TEXT NOT NULL,
        contact_id      TEXT NOT NULL,
        op              TEXT NOT NULL,
        seq             INTEGER NOT NULL,
        events          INTEGER NOT NULL,
        attempts        INTEGER NOT NULL,
        first_error     TEXT,
        error           TEXT NOT NULL,
        first_failed_at REAL,
        failed_at       REAL NOT NULL,
        replayed_at     REAL
    );
    CREATE INDEX dead_letters_by_target ON dead_letters (target, id);
    CREATE INDEX dead_letters_by_seq ON dead_letters (seq);

    CREATE TABLE tombstones (
        tenant     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        deleted_at REAL NOT NULL,
        PRIMARY KEY (tenant, contact_id)
    ) WITHOUT ROWID;

    CREATE TABLE targets (
        target        TEXT PRIMARY KEY,
        delivered     INTEGER NOT NULL DEFAULT 0,
        paused_reason TEXT,
        paused_until  REAL,
        paused_at     REAL,
        paused_by     TEXT
    );

    CREATE TABLE attempts (
        id         INTEGER PRIMARY KEY,
        target     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        at         REAL NOT NULL,
        outcome    TEXT NOT NULL,
        detail     TEXT,
        remote_id  TEXT,
        mapping    TEXT
    );
    """,
    # 2: the target as a mirror. Per target × contact, what it holds (``links`` becomes
    # ``sync_state``: digests of the values written, the associated company); dedupe compares an
    # event with its contact's latest one (found by contact, not by digest); forced re-writes.
    """
    DROP INDEX events_by_digest;
    CREATE INDEX events_by_contact ON events (tenant, contact_id, seq);
    ALTER TABLE links RENAME TO sync_state;
    ALTER TABLE sync_state ADD COLUMN digests TEXT;  -- JSON {field: digest}; NULL: unknown
    ALTER TABLE sync_state ADD COLUMN company_id TEXT;
    ALTER TABLE sync_state ADD COLUMN company_remote_id TEXT;
    ALTER TABLE queue ADD COLUMN full_write INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE targets ADD COLUMN unchanged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN fields TEXT;
    """,
]

# --- named queries -----------------------------------------------------------------------------

# Hand a row back: no claim holds it any more.
UNCLAIM = "claim = NULL, claim_seq = NULL, claim_events = NULL, claim_op = NULL"

DROPPED_AFTER_DELETE = "contact was deleted earlier; a late create or update cannot bring it back"

Q_INSERT_EVENT = """
    INSERT INTO events (seq, event_id, tenant, contact_id, event_type, op, payload, received_at,
                        dropped, digest)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# The latest event of each of some contacts of one tenant (by the events_by_contact index).
Q_HEADS = """
    SELECT contact_id, seq, event_id, event_type, digest, received_at FROM events
    WHERE seq IN (SELECT MAX(seq) FROM events WHERE tenant = ? AND contact_id IN ({marks})
                  GROUP BY contact_id)"""
Q_INSERT_TOMBSTONE = """
    INSERT OR IGNORE INTO tombstones (tenant, contact_id, seq, deleted_at) VALUES (?, ?, ?, ?)"""
# A new event folds into the contact's row: its state becomes the one to push. ``due_at`` is
# kept, so a row in backoff (or leased) stays where it is.
Q_ENQUEUE = """
    INSERT INTO queue (target, contact_id, op, last_seq, head_at, events, due_at)
    VALUES (?, ?, ?, ?, ?, 1, ?)
    ON CONFLICT (target, contact_id) DO UPDATE SET
        op = excluded.op, last_seq = excluded.last_seq, events = queue.events + 1"""
Q_CLAIM = """
    UPDATE queue SET claim = ?, claim_seq = last_seq, claim_events = events, claim_op = op,
        due_at = ?
    WHERE id IN (SELECT id FROM queue WHERE target = ? AND due_at <= ? ORDER BY due_at LIMIT ?)
    RETURNING contact_id, op, last_seq, attempts, events, full_write"""
Q_STATES = """
    SELECT contact_id, remote_id, digests, company_id, company_remote_id FROM sync_state
    WHERE target = ? AND contact_id IN ({marks})"""
Q_CLAIMED_ROWS = """
    SELECT contact_id, claim_seq, claim_events, last_seq, claim_op, attempts, first_error,
        first_failed_at
    FROM queue WHERE target = ? AND claim = ?"""
Q_DROP_ROW = "DELETE FROM queue WHERE target = ? AND contact_id = ?"
# Events that arrived during the push stay queued, ready at once.
Q_KEEP_NEWER = f"""
    UPDATE queue SET events = events - claim_events, {UNCLAIM}, attempts = 0, due_at = ?,
        full_write = 0,
        first_error = NULL, last_error = NULL, first_failed_at = NULL,
        head_at = COALESCE((SELECT received_at FROM events  -- only events since the claim
                            WHERE seq > ? AND tenant = ? AND contact_id = ? ORDER BY seq LIMIT 1),
                           head_at)
    WHERE target = ? AND contact_id = ?"""
Q_RETRY = f"""
    UPDATE queue SET {UNCLAIM},
        attempts = attempts + ?, due_at = ?, last_error = ?,
        first_error = COALESCE(first_error, ?), first_failed_at = COALESCE(first_failed_at, ?)
    WHERE target = ? AND contact_id = ? AND claim = ?"""
Q_RELEASE = f"""
    UPDATE queue SET {UNCLAIM}, due_at = ?
    WHERE target = ? AND contact_id = ? AND claim = ?"""
# What the target confirmed holding. A write that returned no id keeps the known one.
Q_STATE = """
    INSERT INTO sync_state (target, contact_id, remote_id, seq, at, digests, company_id,
                            company_remote_id)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (target, contact_id) DO UPDATE SET
        remote_id = COALESCE(excluded.remote_id, sync_state.remote_id), seq = excluded.seq,
        at = excluded.at, digests = excluded.digests, company_id = excluded.company_id,
        company_remote_id = excluded.company_remote_id"""
Q_STATE_SEEN = "UPDATE sync_state SET seq = ?, at = ? WHERE target = ? AND contact_id = ?"
Q_FORGET = "DELETE FROM sync_state WHERE target = ? AND contact_id = ?"
Q_DEAD = """
    INSERT INTO dead_letters (target, contact_id, op, seq, events, attempts, first_error, error,
                              first_failed_at, failed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
Q_ATTEMPT = """
    INSERT INTO attempts (target, contact_id, seq, at, outcome, detail, remote_id, mapping, fields)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
Q_COUNT_DELIVERED = """
    INSERT INTO targets (target, delivered, unchanged) VALUES (?, ?, ?)
    ON CONFLICT (target) DO UPDATE SET delivered = delivered + excluded.delivered,
        unchanged = unchanged + excluded.unchanged"""
Q_RENEW = "UPDATE queue SET due_at = ? WHERE target = ? AND claim = ?"
Q_NEXT_DUE = "SELECT MIN(due_at) FROM queue WHERE target = ?"
Q_RECOVER = f"""
    UPDATE queue SET {UNCLAIM}, due_at = ?
    WHERE claim IS NOT NULL"""
Q_SET_PAUSED = """
    INSERT INTO targets (target, paused_reason, paused_until, paused_at, paused_by)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (target) DO UPDATE SET paused_reason = excluded.paused_reason,
        paused_until = excluded.paused_until, paused_at = excluded.paused_at,
        paused_by = excluded.paused_by"""
Q_TARGET_STATE = "SELECT paused_reason, paused_until, paused_by FROM targets WHERE target = ?"
Q_STATUS_QUEUE = """
    SELECT target, COUNT(*), SUM(events), MIN(head_at) FROM queue GROUP BY target"""
Q_STATUS_DEAD = """
    SELECT target, COUNT(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY target"""
Q_STATUS_TARGETS = "SELECT target, delivered, paused_reason, paused_until, unchanged FROM targets"
# probe_write's row: deleted again in the same transaction, so no reader ever sees it.
Q_PROBE_WRITE = """
    INSERT INTO events (event_id, tenant, contact_id, event_type, op, payload, received_at, digest)
    VALUES ('', '', '', '', '', zeroblob(?), 0, 0)"""


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


def sqlite_path(url: str, base_dir: Path | None = None) -> Path:
    """``sqlite:///relative/file.db`` (against ``base_dir``) or ``sqlite:////absolute/file.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix:
        raise ConfigError(f"store.url: expected sqlite:///path/to/file.db, got {url!r}")
    path = Path(url[len(prefix) :])
    return path if path.is_absolute() or base_dir is None else base_dir / path


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

    # --- plumbing --------------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.exclusive:
            self._take_lock()
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._disk, self._connect)
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
                return _migrate(conn, self.path)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

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
            _settle(await self._run_group(batch))
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
            if any(fn in HEAVY for fn, _, _ in batch):
                results = await loop.run_in_executor(self._disk, _execute, conn, batch)
            else:
                results = _execute(conn, batch)
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
        return await self._call(_append, event, new_event_id(), time.time(), self.dedupe_window)

    async def append_many(self, events: Sequence[NewEvent]) -> list[Accepted]:
        now, window = time.time(), self.dedupe_window
        batch = [(event, new_event_id(), now, window) for event in events]
        return await self._call(_append_many, batch)

    async def claim(self, target: str, limit: int, lease: float) -> Claim:
        token = secrets.randbits(62)
        items = await self._call(_claim, target, token, limit, lease, time.time())
        return Claim(target=target, token=token, items=items)

    async def complete(self, claim: Claim, results: Sequence[Result]) -> None:
        await self._call(_complete, claim, results, time.time())

    def watch(self, queued: Callable[[str, int], None]) -> None:
        """One process uses the file: its receiver wakes its workers directly."""

    async def renew(self, claim: Claim, lease: float) -> bool:
        params = (time.time() + lease, claim.target, claim.token)
        return await self._call(_rowcount, Q_RENEW, params) > 0

    async def next_due(self, target: str) -> float | None:
        return await self._call(_scalar, Q_NEXT_DUE, (target,))

    async def recover(self) -> int:
        return await self._call(_rowcount, Q_RECOVER, (time.time(),))

    async def set_paused(
        self,
        target: str,
        reason: str | None,
        until: float | None,
        by: Literal["target", "operator"] = "target",
    ) -> None:
        at, who = (time.time(), by) if reason else (None, None)
        await self._call(_rowcount, Q_SET_PAUSED, (target, reason, until, at, who))

    async def target_state(self, target: str) -> TargetState:
        row = await self._call(_row, Q_TARGET_STATE, (target,))
        return TargetState(*row) if row else TargetState(None, None, None)

    async def dead_letters(
        self, targets: Sequence[str] | None = None, limit: int = 1000
    ) -> list[DeadLetter]:
        return await self._call(_dead_letters, None, targets, limit)

    async def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        found = await self._call(_dead_letters, dead_letter_id, None, 1)
        return found[0] if found else None

    async def replay(
        self, ids: Sequence[int] | None, targets: Sequence[str], *, all_of: bool = False
    ) -> list[Replayed]:
        return await self._call(_replay, ids, targets, all_of, time.time())

    async def purge(
        self,
        ids: Sequence[int] | None,
        targets: Sequence[str] | None,
        older_than: float | None = None,
    ) -> int:
        return await self._call(_purge, ids, targets, older_than)

    async def resync(self, target: str, contact_ids: Sequence[str] | None) -> int:
        return await self._call(_resync, target, contact_ids, time.time())

    async def queued(self, target: str, contact_ids: Sequence[str]) -> set[str]:
        return await self._call(_queued, target, list(contact_ids))

    async def trace(self, contact_id: str) -> Trace:
        return await self._call(_trace, contact_id)

    async def prune(self, retention: float) -> dict[str, int]:
        cutoff = time.time() - retention
        pruned = {"events": 0, "attempts": 0}
        # In slices, so webhooks arriving meanwhile never wait long for the writer.
        while True:
            events, attempts = await self._call(_prune_slice, cutoff, self.prune_slice)
            pruned["events"] += events
            pruned["attempts"] += attempts
            if events < self.prune_slice and attempts < self.prune_slice:
                return pruned

    async def status(self) -> list[TargetStatus]:
        return await self._call(_status)

    async def ping(self) -> None:
        await self._call(_scalar, "SELECT 1", ())

    async def probe_write(self) -> None:
        # A commit that needs fresh pages, as an append does: fails while the disk (or
        # max_size_mb) is full. Plain SELECT 1 still works then.
        await self._call(_probe_write, PROBE_BYTES)


def _execute(conn: sqlite3.Connection, batch: list[Operation]) -> list[Settled]:
    """Run a group's operations in the open transaction; appends together in a few statements."""
    appends = [(args, fut) for fn, args, fut in batch if fn is _append]
    results: list[Settled] = []
    if appends:
        accepted = _append_many(conn, [args for args, _ in appends])
        results = [(fut, a, None) for (_, fut), a in zip(appends, accepted, strict=True)]
    results += [(fut, fn(conn, *args), None) for fn, args, fut in batch if fn is not _append]
    return results


PROBE_BYTES = 64 * 1024  # more than a webhook needs: a probe that passes leaves room for one


def _probe_write(conn: sqlite3.Connection, size: int) -> None:
    """Write a row of ``size`` bytes and delete it in the same transaction: nothing is left but
    a few free pages, which the next appends reuse."""
    seq = conn.execute(Q_PROBE_WRITE, (size,)).lastrowid
    conn.execute("DELETE FROM events WHERE seq = ?", (seq,))


def _settle(results: list[Settled]) -> None:
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _scalar(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _row(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
    return row


def _rowcount(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    return conn.execute(sql, params).rowcount


def _append(
    conn: sqlite3.Connection, ev: NewEvent, event_id: str, now: float, window: float
) -> Accepted:
    return _append_many(conn, [(ev, event_id, now, window)])[0]


def _append_many(
    conn: sqlite3.Connection, batch: Sequence[tuple[NewEvent, str, float, float]]
) -> list[Accepted]:
    """Store a group of events with a handful of statements, whatever the group's size."""
    heads = _heads(conn, [ev for ev, _, _, _ in batch])
    deleted = _tombstoned(conn, [ev for ev, _, _, _ in batch if ev.op == "upsert"])
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    events: list[tuple[Any, ...]] = []
    tombstones: list[tuple[Any, ...]] = []
    queued: list[tuple[Any, ...]] = []
    answers: list[Accepted] = []
    for ev, event_id, now, window in batch:
        key = (ev.tenant, ev.contact_id)
        digest = event_digest(ev)
        head = heads.get(key)
        if head is not None and head.repeats(ev, digest, now - window, conn):
            answers.append(Accepted(head.event_id, "duplicate", "already received"))
            continue
        seq += 1
        heads[key] = Head(seq, event_id, ev.event_type, digest, now, ev.payload)
        dropped = DROPPED_AFTER_DELETE if ev.op == "upsert" and key in deleted else None
        events.append(
            (seq, event_id, ev.tenant, ev.contact_id, ev.event_type, ev.op, ev.payload, now,
             dropped, digest)
        )  # fmt: skip
        if dropped:
            answers.append(Accepted(event_id, "dropped", dropped))
            continue
        if ev.op == "delete":
            deleted.add(key)
            tombstones.append((ev.tenant, ev.contact_id, seq, now))
        queued.extend((target, ev.contact_id, ev.op, seq, now, now) for target in ev.targets)
        answers.append(Accepted(event_id, "queued"))
    conn.executemany(Q_INSERT_EVENT, events)
    conn.executemany(Q_INSERT_TOMBSTONE, tombstones)
    conn.executemany(Q_ENQUEUE, queued)
    return answers


@dataclass(slots=True)
class Head:
    """A contact's latest accepted event: a new one that repeats it is a redelivery."""

    seq: int
    event_id: str
    event_type: str
    digest: int
    received_at: float
    payload: bytes | None = None  # read only when the digests match

    def repeats(self, ev: NewEvent, digest: int, since: float, conn: sqlite3.Connection) -> bool:
        if (self.digest, self.event_type) != (digest, ev.event_type) or self.received_at < since:
            return False
        if self.payload is None:
            row = conn.execute("SELECT payload FROM events WHERE seq = ?", (self.seq,)).fetchone()
            self.payload = row[0] if row else b""
        return self.payload == ev.payload


def _heads(conn: sqlite3.Connection, events: list[NewEvent]) -> dict[tuple[str, str], Head]:
    """The latest stored event of each contact these events are about."""
    found: dict[tuple[str, str], Head] = {}
    for tenant in {ev.tenant for ev in events}:
        ids = list({ev.contact_id for ev in events if ev.tenant == tenant})
        for chunk in _chunks(ids):
            sql = Q_HEADS.format(marks=",".join("?" * len(chunk)))
            for contact_id, *head in conn.execute(sql, [tenant, *chunk]):
                found[(tenant, contact_id)] = Head(*head)
    return found


def _tombstoned(conn: sqlite3.Connection, events: list[NewEvent]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for tenant in {ev.tenant for ev in events}:
        ids = list({ev.contact_id for ev in events if ev.tenant == tenant})
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT contact_id FROM tombstones WHERE tenant = ? AND contact_id IN ({marks})"
            found.update((tenant, row[0]) for row in conn.execute(sql, [tenant, *chunk]))
    return found


def _chunks(items: list[T], size: int = 500) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _claim(
    conn: sqlite3.Connection, target: str, token: int, limit: int, lease: float, now: float
) -> list[ClaimedItem]:
    rows = conn.execute(Q_CLAIM, (token, now + lease, target, now, limit)).fetchall()
    if not rows:
        return []
    seqs = [row[2] for row in rows]
    marks = ",".join("?" * len(rows))
    events = {
        seq: (event_id, event_type, payload)
        for seq, event_id, event_type, payload in conn.execute(
            f"SELECT seq, event_id, event_type, payload FROM events WHERE seq IN ({marks})",
            seqs,
        )
    }
    states = {
        row[0]: SyncState.from_row(*row[1:])
        for row in conn.execute(
            Q_STATES.format(marks=marks), [target, *(row[0] for row in rows)]
        ).fetchall()
    }
    items = []
    for contact_id, op, seq, attempts, count, full in sorted(rows, key=lambda r: r[2]):
        event_id, event_type, payload = events[seq]
        state = states.get(contact_id)
        items.append(
            ClaimedItem(
                contact_id=contact_id,
                op=op,
                seq=seq,
                event_id=event_id,
                event_type=event_type,
                payload=payload,
                remote_id=state.remote_id if state else None,
                attempts=attempts,
                events=count,
                state=state,
                full=bool(full),
            )
        )
    return items


def _complete(
    conn: sqlite3.Connection, claim: Claim, results: Sequence[Result], now: float
) -> None:
    target = claim.target
    tenant = target.split("/", 1)[0]
    # Rows this claim still holds: a row whose lease ran out belongs to someone else now.
    held: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks([res.contact_id for res in results]):
        marks = ",".join("?" * len(chunk))
        held.update(
            (row[0], row[1:])
            for row in conn.execute(
                f"{Q_CLAIMED_ROWS} AND contact_id IN ({marks})", [target, claim.token, *chunk]
            )
        )
    drop: list[tuple[Any, ...]] = []
    keep_newer: list[tuple[Any, ...]] = []
    states: list[tuple[Any, ...]] = []
    seen: list[tuple[Any, ...]] = []
    forget: list[tuple[Any, ...]] = []
    dead: list[tuple[Any, ...]] = []
    retry: list[tuple[Any, ...]] = []
    release: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    delivered = unchanged = 0
    for res in results:
        if res.contact_id not in held:
            continue
        claim_seq, claim_events, last_seq, op, tries, first_error, first_failed_at = held[
            res.contact_id
        ]
        key = (target, res.contact_id)
        if res.kind in ("delivered", "unchanged", "dead"):
            if last_seq == claim_seq:
                drop.append(key)
            else:  # events that arrived during the push stay queued
                keep_newer.append((now, claim_seq, tenant, res.contact_id, *key))
        if res.kind == "delivered":
            delivered += claim_events
            if op == "delete":
                forget.append(key)
            else:
                state = res.state or SyncState(remote_id=res.remote_id)
                states.append(
                    (*key, state.remote_id, claim_seq, now, state.digests_json(),
                     state.company_id, state.company_remote_id)
                )  # fmt: skip
        elif res.kind == "unchanged":
            unchanged += claim_events
            seen.append((claim_seq, now, *key))
        elif res.kind == "dead":
            dead.append(
                (*key, op, claim_seq, claim_events, tries + 1, first_error or res.error,
                 res.error or "", first_failed_at or now, now)
            )  # fmt: skip
        elif res.kind == "retry":
            retry.append(
                (int(res.count_attempt), res.due_at or now, res.error, res.error, now, *key,
                 claim.token)
            )  # fmt: skip
        else:
            release.append((res.due_at or now, *key, claim.token))
            continue
        attempts.append(
            (*key, claim_seq, now, res.kind, res.error or res.note, res.remote_id, res.mapping,
             res.fields)
        )  # fmt: skip
    for sql, rows in (
        (Q_DROP_ROW, drop), (Q_KEEP_NEWER, keep_newer), (Q_STATE, states), (Q_STATE_SEEN, seen),
        (Q_FORGET, forget), (Q_DEAD, dead), (Q_RETRY, retry), (Q_RELEASE, release),
        (Q_ATTEMPT, attempts),
    ):  # fmt: skip
        if rows:
            conn.executemany(sql, rows)
    if delivered or unchanged:
        conn.execute(Q_COUNT_DELIVERED, (target, delivered, unchanged))


def _status(conn: sqlite3.Connection) -> list[TargetStatus]:
    queued = {row[0]: row[1:] for row in conn.execute(Q_STATUS_QUEUE)}
    dead = dict(conn.execute(Q_STATUS_DEAD).fetchall())
    known = {row[0]: row[1:] for row in conn.execute(Q_STATUS_TARGETS)}
    out = []
    for target in sorted(set(queued) | set(dead) | set(known)):
        contacts, pending, oldest = queued.get(target, (0, 0, None))
        delivered, reason, until, unchanged = known.get(target, (0, None, None, 0))
        out.append(
            TargetStatus(
                target,
                pending or 0,
                contacts,
                dead.get(target, 0),
                delivered,
                oldest,
                reason,
                until,
                unchanged,
            )
        )
    return out


# --- operators' tools: dead letters, replay, trace, retention ---------------------------------

Q_DEAD_LETTERS = """
    SELECT d.id, d.target, d.contact_id, d.op, d.seq, e.event_id, e.event_type, e.received_at,
        d.events, d.attempts, d.first_error, d.error, d.first_failed_at, d.failed_at,
        d.replayed_at, {payload}
    FROM dead_letters d LEFT JOIN events e ON e.seq = d.seq"""
# The latest state of each of some contacts of one tenant: its last event that was not dropped.
Q_LATEST_STATE = """
    SELECT e.contact_id, e.seq, e.op FROM events e
    WHERE e.seq IN (SELECT MAX(seq) FROM events WHERE tenant = ? AND dropped IS NULL
                    AND contact_id IN ({marks}) GROUP BY contact_id)"""
# Queued again as a full re-write; a contact already queued is only marked for one.
Q_REQUEUE = """
    INSERT INTO queue (target, contact_id, op, last_seq, head_at, events, due_at, full_write)
    SELECT ?, ?, op, seq, ?, 1, ?, 1 FROM events WHERE seq = ?
    ON CONFLICT (target, contact_id) DO NOTHING"""
Q_MARK_FULL = "UPDATE queue SET full_write = 1 WHERE target = ? AND contact_id = ?"
# An event retention may delete: old, needed by no queued row and no dead letter, and not the
# latest state of a live contact (kept, so that a forced re-write can map it again).
Q_PRUNE_EVENTS = """
    DELETE FROM events WHERE seq IN (
        SELECT e.seq FROM events e WHERE e.received_at < ?
        AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.contact_id = e.contact_id
                        AND q.last_seq = e.seq)
        AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = e.seq AND d.replayed_at IS NULL)
        AND (e.dropped IS NOT NULL OR e.op = 'delete'
             OR EXISTS (SELECT 1 FROM events n WHERE n.tenant = e.tenant
                        AND n.contact_id = e.contact_id AND n.seq > e.seq AND n.dropped IS NULL)
             OR EXISTS (SELECT 1 FROM tombstones t WHERE t.tenant = e.tenant
                        AND t.contact_id = e.contact_id))
        ORDER BY e.seq LIMIT ?)"""
Q_PRUNE_ATTEMPTS = """
    DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < ? ORDER BY id LIMIT ?)"""


def _dead_letters(
    conn: sqlite3.Connection, one: int | None, targets: Sequence[str] | None, limit: int
) -> list[DeadLetter]:
    if one is not None:
        sql = Q_DEAD_LETTERS.format(payload="e.payload")
        rows = conn.execute(f"{sql} WHERE d.id = ?", (one,)).fetchall()
    else:
        where = "d.replayed_at IS NULL"
        params: list[Any] = []
        if targets is not None:
            where += f" AND d.target IN ({','.join('?' * len(targets))})"
            params += targets
        sql = Q_DEAD_LETTERS.format(payload="NULL")
        rows = conn.execute(
            f"{sql} WHERE {where} ORDER BY d.id LIMIT ?", [*params, limit]
        ).fetchall()
    return [DeadLetter(*row) for row in rows]


def _replay(
    conn: sqlite3.Connection,
    ids: Sequence[int] | None,
    targets: Sequence[str],
    all_of: bool,
    now: float,
) -> list[Replayed]:
    if all_of:
        marks = ",".join("?" * len(targets))
        rows = conn.execute(
            "SELECT id, target, contact_id FROM dead_letters"
            f" WHERE replayed_at IS NULL AND target IN ({marks}) ORDER BY id",
            list(targets),
        ).fetchall()
    else:
        wanted = list(ids or [])
        rows = []
        for chunk in _chunks(wanted):
            rows += conn.execute(
                "SELECT id, target, contact_id FROM dead_letters"
                f" WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        missing = set(wanted) - {row[0] for row in rows}
    # The latest state of each contact: newer events may have arrived since it went dead.
    by_tenant: dict[str, set[str]] = {}
    for _, target, contact_id in rows:
        by_tenant.setdefault(target.split("/", 1)[0], set()).add(contact_id)
    latest = {
        (tenant, contact_id): seq
        for tenant, contacts in by_tenant.items()
        for contact_id, (seq, _) in _latest(conn, tenant, contacts).items()
    }
    report = []
    for dead_id, target, contact_id in rows:
        seq = latest.get((target.split("/", 1)[0], contact_id))
        if target not in targets:
            action = "unknown target"
        elif seq is None:
            action = "not found"  # its events were pruned: nothing to send
        else:
            action = "queued" if _requeue(conn, target, contact_id, seq, now) else "already queued"
            conn.execute("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", (now, dead_id))
        report.append(Replayed(dead_id, target, contact_id, action))  # type: ignore[arg-type]
    if not all_of:
        report += [Replayed(i, "", "", "not found") for i in sorted(missing)]
    return report


def _latest(
    conn: sqlite3.Connection, tenant: str, contacts: Collection[str]
) -> dict[str, tuple[int, str]]:
    """contact -> (seq, op) of its latest state (not dropped), for those that have one."""
    found: dict[str, tuple[int, str]] = {}
    for some in _chunks(sorted(contacts)):
        sql = Q_LATEST_STATE.format(marks=",".join("?" * len(some)))
        for contact_id, seq, op in conn.execute(sql, [tenant, *some]):
            found[contact_id] = (seq, op)
    return found


def _requeue(conn: sqlite3.Connection, target: str, contact_id: str, seq: int, now: float) -> bool:
    """Queue a full re-write of a contact's state ``seq``; False if it was queued already (then
    the queued write becomes a full one)."""
    if conn.execute(Q_REQUEUE, (target, contact_id, now, now, seq)).rowcount:
        return True
    conn.execute(Q_MARK_FULL, (target, contact_id))
    return False


def _resync(
    conn: sqlite3.Connection, target: str, contact_ids: Sequence[str] | None, now: float
) -> int:
    if contact_ids is None:
        sql = "SELECT contact_id FROM sync_state WHERE target = ?"
        contact_ids = [row[0] for row in conn.execute(sql, (target,))]
    latest = _latest(conn, target.split("/", 1)[0], set(contact_ids))
    for contact_id, (seq, op) in latest.items():
        if op == "upsert":  # a deleted contact stays deleted
            _requeue(conn, target, contact_id, seq, now)
    return sum(1 for _, op in latest.values() if op == "upsert")


def _purge(
    conn: sqlite3.Connection,
    ids: Sequence[int] | None,
    targets: Sequence[str] | None,
    older_than: float | None,
) -> int:
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if ids is not None:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params += list(ids)
    if targets is not None:
        where.append(f"target IN ({','.join('?' * len(targets))})")
        params += list(targets)
    if older_than is not None:
        where.append("failed_at < ?")
        params.append(older_than)
    return conn.execute(f"DELETE FROM dead_letters WHERE {' AND '.join(where)}", params).rowcount


def _queued(conn: sqlite3.Connection, target: str, contact_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(contact_ids):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT contact_id FROM queue WHERE target = ? AND contact_id IN ({marks})"
        found.update(row[0] for row in conn.execute(sql, [target, *chunk]))
    return found


def _trace(conn: sqlite3.Connection, contact_id: str) -> Trace:
    # Scans: tracing is rare, and an index on contact ids would cost every webhook a write.
    events = [
        TraceEvent(*row)
        for row in conn.execute(
            "SELECT seq, event_id, tenant, event_type, op, received_at, dropped, payload"
            " FROM events WHERE contact_id = ? ORDER BY seq",
            (contact_id,),
        )
    ]
    attempts = [
        TraceAttempt(*row)
        for row in conn.execute(
            "SELECT target, seq, at, outcome, detail, remote_id, mapping, fields FROM attempts"
            " WHERE contact_id = ? ORDER BY id",
            (contact_id,),
        )
    ]
    sql = Q_DEAD_LETTERS.format(payload="NULL")
    dead = [
        DeadLetter(*row)
        for row in conn.execute(f"{sql} WHERE d.contact_id = ? ORDER BY d.id", (contact_id,))
    ]
    pending = {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            "SELECT target, op, attempts, due_at, last_error FROM queue WHERE contact_id = ?",
            (contact_id,),
        )
    }
    remote_ids = dict(
        conn.execute(
            "SELECT target, remote_id FROM sync_state"
            " WHERE contact_id = ? AND remote_id IS NOT NULL",
            (contact_id,),
        ).fetchall()
    )
    return Trace(events, attempts, dead, pending, remote_ids)


def _prune_slice(conn: sqlite3.Connection, cutoff: float, limit: int) -> tuple[int, int]:
    events = conn.execute(Q_PRUNE_EVENTS, (cutoff, limit)).rowcount
    attempts = conn.execute(Q_PRUNE_ATTEMPTS, (cutoff, limit)).rowcount
    return events, attempts


# Operations that scan whole tables: run in a thread, so the event loop keeps serving meanwhile.
HEAVY: frozenset[Callable[..., Any]] = frozenset(
    {_status, _dead_letters, _replay, _resync, _purge, _trace, _prune_slice}
)


def remove_database(path: Path) -> None:
    """Delete a SQLite database and its WAL side files (tests, benchmarks)."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
