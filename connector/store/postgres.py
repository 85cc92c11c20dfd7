"""The shared store: PostgreSQL, for several replicas that share one queue.

The model and the semantics are those of :mod:`connector.store.sqlite` (see
:mod:`connector.store.base`); what changes is that several processes write at once:

* Appends of one contact are serialised by a transaction-scoped advisory lock on the contact
  (tenant, contact id), taken before anything is read. A delete and a late update arriving at two
  replicas therefore run one after the other, and the second sees the first's tombstone (or queue
  row); two identical redeliveries (same body, so same contact) run one after the other, and the
  second finds the first by its digest. Each append is ONE round trip: a PL/pgSQL function takes
  the locks, then each of its statements reads a fresh snapshot (READ COMMITTED), so what the lock
  waited for is seen. Concurrent appends of one process share that round trip and its commit:
  a few writers each send whatever appends are waiting as one batch (as SQLite's group commit
  does; a batch that fails is sent again one event at a time, so one bad event fails alone).
* Claims take rows with ``FOR UPDATE SKIP LOCKED``: two replicas claiming together never get the
  same contact. A claimed row's ``due_at`` is its lease expiry, so the rows of a replica that died
  come back when their leases run out; ``complete`` ignores results whose claim token no longer
  matches (the row was claimed again meanwhile). A claim is one round trip too: a function whose
  second statement reads the claimed states (see ``connector_claim`` for why a second one).
* ``complete`` takes the same contact locks (sorted, as appends take theirs, so the two never
  deadlock), then locks the claimed rows and decides, as SQLite does, whether newer events arrived
  during the push.
* New work wakes idle replicas at once: after an append commits, the process announces how many
  events it queued per tenant (``pg_notify`` on a channel of the schema; announcements made while
  one is being sent go out together as the next one), and every other replica LISTENs on a
  connection of its own. While that connection is down, workers fall back to polling.
* Migrations run under a session advisory lock on the schema: replicas starting together apply
  them once. The version is the highest row of ``schema_migrations``.

``store.url`` is a libpq-style URL, ``postgresql://user:password@host:5432/database``. Its query
may set the connection pool's sizes (``pool_min_size``, ``pool_max_size``); any other parameter is
a server setting for every connection (``?search_path=connector`` keeps the tables in a schema of
their own). Times are the replicas' clocks (seconds since the epoch), as with SQLite: keep the
replicas' clocks in sync (NTP); a lease is renewed every few seconds and a write stops
4 seconds before it would run out, so keep the skew under that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from connector.errors import ConfigError
from connector.ratelimit import RateLimiter
from connector.store import logic
from connector.store import queries as q
from connector.store.base import (
    Accepted,
    Claim,
    NewEvent,
    Result,
    SchemaPolicy,
    Store,
    SyncState,
    email_hash,
    event_digest,
    new_event_id,
    schema_problem,
)
from connector.store.postgres_ops import PostgresOperations
from connector.store.postgres_sql import (
    Q_APPEND,
    Q_APPEND_EMAILS,
    Q_ATTEMPTS,
    Q_CLAIM,
    Q_CLAIMED_ROWS,
    Q_COUNT_DELIVERED,
    Q_DEAD,
    Q_DROP_ROWS,
    Q_EMAIL_KEY,
    Q_FORGET,
    Q_KEEP_NEWER,
    Q_LOCK_CONTACTS,
    Q_MIGRATED,
    Q_NEXT_DUE,
    Q_NOTIFY,
    Q_RECOVER,
    Q_RELEASE,
    Q_RENEW,
    Q_RETRY,
    Q_STATES,
    Q_STATES_SEEN,
    Q_VERSION,
    Q_VERSION_TABLE,
    contact_lock,
    lock_key,
    lock_keys,
    migration_lock,
    rowcount,
)
from connector.store.ratelimit import PostgresRateLimiter
from connector.store.schema import POSTGRES_MIGRATIONS
from connector.store.url import PostgresUrl, parse_store_url, redacted

TARGET_SEPARATOR = "\x1f"  # joins an event's target keys into one array element

MIGRATIONS = POSTGRES_MIGRATIONS  # see connector.store.schema


class PostgresStore(PostgresOperations, Store):
    """The store on a PostgreSQL database, shared by any number of replicas."""

    writers = 4  # appends sent at once (each a batch of those waiting) by one process
    max_group = 200  # appends per batch at most

    def __init__(
        self,
        url: str,
        *,
        dedupe_window: float = 86_400.0,
        schema: SchemaPolicy = "migrate",
    ) -> None:
        self.url = url
        self.dedupe_window = dedupe_window
        self.schema = schema
        parsed = parse_store_url(url)
        if not isinstance(parsed, PostgresUrl):
            raise ValueError("expected postgresql://user:password@host:5432/database")
        self._dsn = parsed.dsn
        self.pool_min_size, self.pool_max_size = parsed.pool_min_size, parsed.pool_max_size
        self._pool: asyncpg.Pool | None = None
        # Appends waiting for a writer, and the writers sending them (each a batch at a time).
        self._waiting: list[tuple[NewEvent, asyncio.Future[Accepted]]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._sending = 0  # writers at work
        self._limiters: dict[tuple[str, int, float], RateLimiter] = {}
        # New work, announced to the other replicas (see the module's docstring).
        self._instance = secrets.token_hex(8)  # to tell our own announcements apart
        self._channel = ""  # named after the schema at open: schemas sharing a database differ
        self._unannounced: dict[str, int] = {}  # events queued per tenant, not announced yet
        self._announcer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._email_key: bytes | None = None  # contact_emails' key, read once at open/migrate

    def __repr__(self) -> str:
        return f"PostgresStore({redacted(self.url)!r})"

    # --- plumbing --------------------------------------------------------------------------------

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=self.pool_min_size, max_size=self.pool_max_size
        )
        try:
            if self.schema == "migrate":
                await self.migrate()
            elif self.schema == "verify":
                async with self._pool.acquire() as conn:
                    version = await self._version(conn)
                problem = schema_problem(redacted(self.url), version, len(MIGRATIONS))
                if problem:
                    raise ConfigError(problem)
            async with self._pool.acquire() as conn:
                schema = await conn.fetchval("SELECT current_schema()")
                self._email_key = await self._read_email_key(conn)
            digest = hashlib.sha256(str(schema).encode()).hexdigest()[:16]
            self._channel = f"mimeeq_connector_{digest}"  # identifiers stop at 63 bytes
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for task in (self._listener, self._announcer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writers:  # appends accepted before close are stored first
            await asyncio.gather(*self._writers, return_exceptions=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _version(conn: PoolConnectionProxy[asyncpg.Record]) -> int:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return 0
        version: int = await conn.fetchval(Q_VERSION)
        return version

    @staticmethod
    async def _read_email_key(conn: PoolConnectionProxy[asyncpg.Record]) -> bytes | None:
        """The key of ``contact_emails``; None while the schema predates it."""
        if await conn.fetchval("SELECT to_regclass('email_key')") is None:
            return None
        key: bytes = await conn.fetchval(Q_EMAIL_KEY)
        return key

    async def migrate(self) -> tuple[int, int]:
        async with self.pool.acquire() as conn:
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise ConfigError(
                    f"{redacted(self.url)}: no schema to create the tables in "
                    "(does the search_path name one that exists?)"
                )
            # Replicas starting together: one migrates, the others wait here, then find it done.
            key = migration_lock(schema)
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            try:
                await conn.execute(Q_VERSION_TABLE)
                before = version = await self._version(conn)
                while version < len(MIGRATIONS):
                    async with conn.transaction():
                        await conn.execute(MIGRATIONS[version])
                        await conn.execute(Q_MIGRATED, version + 1, time.time())
                    version += 1
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
            self._email_key = await self._read_email_key(conn)
        problem = schema_problem(redacted(self.url), version, len(MIGRATIONS))
        if problem:
            raise ConfigError(problem)
        return before, version

    # --- operations ------------------------------------------------------------------------------

    async def append(self, event: NewEvent) -> Accepted:
        """Store one event; concurrent appends of this process share a transaction.

        A few writers each send whatever appends are waiting as one batch (one round trip, one
        commit). A lone append goes at once; under load, batches grow by themselves.
        """
        fut: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, fut))
        if self._sending < self.writers:
            self._sending += 1
            task = asyncio.create_task(self._write_waiting(), name="postgres-append")
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)
        return await fut

    async def _write_waiting(self) -> None:
        try:
            await self._write_batches()
        finally:
            self._sending -= 1  # right when nothing waits: no await between the two

    async def _write_batches(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_group]
            del self._waiting[: self.max_group]
            try:
                answers: list[Accepted | BaseException] = list(
                    await self._append([event for event, _ in batch])
                )
            except asyncio.CancelledError:
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception:
                # One event failed the batch: send each alone, so that the others are stored.
                answers = []
                for event, _ in batch:
                    try:
                        answers += await self._append([event])
                    except Exception as exc:
                        answers.append(exc)
            for (_, fut), answer in zip(batch, answers, strict=True):
                if fut.done():  # the caller went away
                    continue
                if isinstance(answer, BaseException):
                    fut.set_exception(answer)
                else:
                    fut.set_result(answer)

    async def append_many(self, events: Sequence[NewEvent]) -> list[Accepted]:
        return await self._append(events)

    async def _append(self, events: Sequence[NewEvent]) -> list[Accepted]:
        if not events:
            return []
        now = time.time()
        # Events carrying addresses record them in the same statement; others pay nothing.
        emails: list[Any] = []
        if any(ev.emails for ev in events):
            key = self._email_key
            if key is None:
                raise RuntimeError("the store's schema predates contact_emails: migrate it")
            pairs = [(email_hash(key, e), n) for n, ev in enumerate(events, 1) for e in ev.emails]
            emails = [[digest for digest, _ in pairs], [n for _, n in pairs]]
        rows = await self.pool.fetch(
            Q_APPEND_EMAILS if emails else Q_APPEND,
            [new_event_id() for _ in events],
            [ev.tenant for ev in events],
            [ev.contact_id for ev in events],
            [ev.event_type for ev in events],
            [ev.op for ev in events],
            [ev.payload for ev in events],
            [event_digest(ev) for ev in events],
            [TARGET_SEPARATOR.join(ev.targets) for ev in events],
            sorted({contact_lock(ev.tenant, ev.contact_id) for ev in events}),
            now,
            now - self.dedupe_window,
            q.DROPPED_AFTER_DELETE,
            *emails,
        )
        accepted = [_accepted(status, event_id) for status, event_id in rows]
        for event, answer in zip(events, accepted, strict=True):
            if answer.status == "queued":
                self._unannounced[event.tenant] = self._unannounced.get(event.tenant, 0) + 1
        if self._unannounced and (self._announcer is None or self._announcer.done()):
            self._announcer = asyncio.create_task(self._announce(), name="postgres-announce")
        return accepted

    async def _announce(self) -> None:
        """Tell the other replicas what was queued; what is queued meanwhile goes next."""
        while self._unannounced and self._channel:
            counts, self._unannounced = self._unannounced, {}
            payloads = [orjson.dumps([self._instance, t, n]).decode() for t, n in counts.items()]
            try:
                await self.pool.execute(Q_NOTIFY, self._channel, payloads)
            except Exception:  # the others find the events when they poll
                return

    def watch(self, queued: Callable[[str, int], None]) -> None:
        self._listener = asyncio.create_task(self._listen(queued), name="postgres-listen")

    async def _listen(self, queued: Callable[[str, int], None]) -> None:
        """LISTEN on a connection of its own, connected again whenever it drops."""

        def heard(conn: object, pid: int, channel: str, payload: object) -> None:
            try:
                instance, tenant, events = orjson.loads(str(payload))
            except (orjson.JSONDecodeError, ValueError):
                return
            if instance != self._instance:
                queued(str(tenant), int(events))

        pause = 1.0
        while True:
            conn: asyncpg.Connection[asyncpg.Record] | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(self._channel, heard)
                pause = 1.0
                await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass  # not reachable now: workers poll meanwhile
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)

    async def claim(self, target: str, limit: int, lease: float) -> Claim:
        token = secrets.randbits(62)
        now = time.time()
        rows = await self.pool.fetch(Q_CLAIM, target, token, now + lease, now, limit)
        items = []
        for row in sorted(rows, key=lambda row: row[2]):
            synced, remote_id = row[9:11]
            state = SyncState.from_row(*row[10:]) if synced else None
            items.append(logic.claimed_item(row[:6], row[6:9], remote_id, state))
        return Claim(target=target, token=token, items=items)

    async def complete(self, claim: Claim, results: Sequence[Result]) -> None:
        if not results:
            return
        target, now = claim.target, time.time()
        tenant = logic.tenant_of(target)
        contacts = list({res.contact_id for res in results})
        async with self._transaction() as conn:
            # Appends of these contacts wait until the outcome is recorded (and we for theirs).
            await conn.execute(Q_LOCK_CONTACTS, lock_keys(tenant, contacts))
            # Rows this claim still holds: a row whose lease ran out belongs to someone else.
            held = {
                row[0]: tuple(row[1:])
                for row in await conn.fetch(Q_CLAIMED_ROWS, target, claim.token, contacts)
            }
            p = logic.plan_completion(held, results, now)
            token = claim.token
            drop, states, seen, forget, attempts = p.drop, p.states, p.seen, p.forget, p.attempts
            keep_newer = [(now, seq, tenant, c, target) for c, seq in p.keep_newer]
            dead = [(target, *row, now) for row in p.dead]
            retry = [(n, due, err, now, target, c, token) for c, n, due, err in p.retry]
            release = [(due, target, c, token) for c, due in p.release]
            if drop:
                await conn.execute(Q_DROP_ROWS, target, drop)
            for sql, rows in (
                (Q_KEEP_NEWER, keep_newer), (Q_DEAD, dead), (Q_RETRY, retry),
                (Q_RELEASE, release),
            ):  # fmt: skip
                if rows:
                    await conn.executemany(sql, rows)
            if states:
                await conn.execute(Q_STATES, target, now, *map(list, zip(*states, strict=True)))
            if seen:
                await conn.execute(Q_STATES_SEEN, target, now, *map(list, zip(*seen, strict=True)))
            if forget:
                await conn.execute(Q_FORGET, target, forget)
            if attempts:
                await conn.execute(Q_ATTEMPTS, target, now, *map(list, zip(*attempts, strict=True)))
            if p.delivered or p.unchanged:
                await conn.execute(Q_COUNT_DELIVERED, target, p.delivered, p.unchanged)

    async def renew(self, claim: Claim, lease: float) -> bool:
        status = await self.pool.execute(Q_RENEW, time.time() + lease, claim.target, claim.token)
        return rowcount(status) > 0

    async def next_due(self, target: str) -> float | None:
        due: float | None = await self.pool.fetchval(Q_NEXT_DUE, target)
        return due

    async def recover(self) -> int:
        """Clear claims whose lease ran out (they were claimable anyway); live ones stay.

        Other replicas may be pushing right now: their claims are theirs until their leases end.
        """
        return rowcount(await self.pool.execute(Q_RECOVER, time.time()))

    def rate_limiter(self, account: str, requests: int, per_seconds: float) -> RateLimiter:
        """A request budget every replica draws from: its window lives in the database."""
        key = (account, requests, per_seconds)
        if key not in self._limiters:
            self._limiters[key] = PostgresRateLimiter(
                self._transaction, lock_key("rate", account), account, requests, per_seconds
            )
        return self._limiters[key]

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")


def _accepted(status: str, event_id: str) -> Accepted:
    if status == "duplicate":
        return Accepted(event_id, "duplicate", "already received")
    if status == "dropped":
        return Accepted(event_id, "dropped", q.DROPPED_AFTER_DELETE)
    return Accepted(event_id, "queued")
