"""The PostgreSQL store's operator side: status, pauses, dead letters, replay, resync, trace,
retention.

A mixin of :class:`~connector.store.postgres.PostgresStore`, which provides the pool and its
transactions. Replays and resyncs go in slices, each one transaction that takes the advisory
locks of its contacts first (as appends and completions do), so they never interleave with a
push of the same contact; retention deletes in slices too, each a short transaction. What the
rows mean is decided in :mod:`connector.store.logic`, shared with the SQLite store.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from connector.store import logic
from connector.store import queries as q
from connector.store.base import (
    DeadLetter,
    DeadLetterPick,
    OperatorStore,
    PauseRow,
    Relink,
    Replayed,
    TargetStatus,
    Trace,
    TraceAttempt,
    TraceEvent,
    email_hash,
    normal_email,
)
from connector.store.postgres_sql import (
    Q_CONTACTS_BY_EMAIL,
    Q_DEAD_BY_ID,
    Q_DEAD_LETTERS,
    Q_LATEST_STATE,
    Q_LOCK_CONTACTS,
    Q_MARK_REPLAYED,
    Q_PRUNE_ATTEMPTS,
    Q_PRUNE_CANDIDATES,
    Q_PRUNE_EMAILS,
    Q_PRUNE_EVENTS,
    Q_REPLAYABLE,
    Q_SET_PAUSED,
    Q_STATUS_DEAD,
    Q_STATUS_QUEUE,
    Q_STATUS_TARGETS,
    Q_SYNCED,
    Q_TARGET_STATE,
    Q_TRACE_ATTEMPTS,
    Q_TRACE_DEAD,
    Q_TRACE_EVENTS,
    Q_TRACE_PENDING,
    Q_TRACE_REMOTE_IDS,
    chunks,
    contact_lock,
    lock_keys,
    requeue,
    rowcount,
)
from connector.store.queries import numbered

Q_UNLINK = (
    "UPDATE sync_state SET company_remote_id = NULL WHERE target = $1 AND company_id = ANY($2)"
)
Q_WAITING = numbered(q.WAITING)
Q_WAITING_FOR = f"{Q_WAITING} AND s.company_id = ANY($2::TEXT[])"
Q_WAITING_AMONG = f"{Q_WAITING} AND s.contact_id = ANY($2::TEXT[])"


class PostgresOperations(OperatorStore):
    prune_slice = 2000  # rows deleted per transaction by prune()
    replay_slice = 500  # dead letters replayed per transaction (each locks its contact)
    _email_key: bytes | None = None  # contact_emails' key (the store reads it at open)

    @property
    @abstractmethod
    def pool(self) -> asyncpg.Pool: ...

    @abstractmethod
    def _transaction(
        self,
    ) -> AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]: ...

    async def _write_pause(self, row: PauseRow) -> None:
        await self.pool.execute(Q_SET_PAUSED, *row)

    async def _pause_row(self, target: str) -> Sequence[Any] | None:
        row = await self.pool.fetchrow(Q_TARGET_STATE, target)
        return tuple(row) if row else None

    async def status(self) -> list[TargetStatus]:
        async with self.pool.acquire() as conn:
            queued = {row[0]: tuple(row[1:]) for row in await conn.fetch(Q_STATUS_QUEUE)}
            dead = {row[0]: row[1] for row in await conn.fetch(Q_STATUS_DEAD)}
            known = {row[0]: tuple(row[1:]) for row in await conn.fetch(Q_STATUS_TARGETS)}
        return logic.statuses(queued, dead, known)

    async def dead_letters(
        self,
        targets: Sequence[str] | None = None,
        limit: int = 1000,
        *,
        pick: DeadLetterPick | None = None,
    ) -> list[DeadLetter]:
        sql, params = q.dead_letter_list(targets, limit, pick)
        return [DeadLetter(*row) for row in await self.pool.fetch(numbered(sql), *params)]

    async def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        sql = Q_DEAD_LETTERS.format(payload="e.payload")
        row = await self.pool.fetchrow(f"{sql} WHERE d.id = $1", dead_letter_id)
        return DeadLetter(*row) if row else None

    async def replay(
        self, ids: Sequence[int] | None, targets: Sequence[str], *, all_of: bool = False
    ) -> list[Replayed]:
        missing: set[int] = set()
        if all_of:
            rows = [tuple(r) for r in await self.pool.fetch(Q_REPLAYABLE, list(targets))]
        else:
            wanted = list(ids or [])
            rows = [tuple(r) for r in await self.pool.fetch(Q_DEAD_BY_ID, wanted)]
            missing = set(wanted) - {row[0] for row in rows}
        report: list[Replayed] = []
        for some in chunks(rows, self.replay_slice):
            report += await self._replay_slice(some, targets)
        if not all_of:
            report += logic.not_found(missing)
        return report

    async def _replay_slice(
        self, rows: list[tuple[Any, ...]], targets: Sequence[str]
    ) -> list[Replayed]:
        now = time.time()
        by_tenant = logic.contacts_by_tenant(rows)
        keys = sorted(
            {contact_lock(tenant, c) for tenant, contacts in by_tenant.items() for c in contacts}
        )
        report = []
        async with self._transaction() as conn:
            await conn.execute(Q_LOCK_CONTACTS, keys)
            # The latest state of each contact: newer events may have arrived since it went dead.
            latest: dict[tuple[str, str], int] = {}
            for tenant, contacts in by_tenant.items():
                for contact_id, seq, _ in await conn.fetch(
                    Q_LATEST_STATE, tenant, sorted(contacts)
                ):
                    latest[(tenant, contact_id)] = seq
            for dead_id, target, contact_id, seq, action in logic.replay_plan(
                rows, targets, latest
            ):
                if seq is not None:
                    queued = await requeue(conn, target, contact_id, seq, now)
                    action = "queued" if queued else "already queued"
                    await conn.execute(Q_MARK_REPLAYED, now, dead_id)
                assert action is not None
                report.append(Replayed(dead_id, target, contact_id, action))
        return report

    async def resync(self, target: str, contact_ids: Sequence[str] | None) -> int:
        if contact_ids is None:
            contact_ids = [row[0] for row in await self.pool.fetch(Q_SYNCED, target)]
        return await self._requeue_latest(target, contact_ids, full=True)

    async def _requeue_latest(self, target: str, contact_ids: Sequence[str], full: bool) -> int:
        tenant = logic.tenant_of(target)
        queued = 0
        for some in chunks(sorted(set(contact_ids)), self.replay_slice):
            now = time.time()
            async with self._transaction() as conn:
                # Appends and completions of these contacts wait (and we for theirs).
                await conn.execute(Q_LOCK_CONTACTS, lock_keys(tenant, some))
                for contact_id, seq, op in await conn.fetch(Q_LATEST_STATE, tenant, some):
                    if op == "upsert":  # a deleted contact stays deleted
                        await requeue(conn, target, contact_id, seq, now, full)
                        queued += 1
        return queued

    async def relink(self, target: str, links: Relink) -> int:
        if links.deleted:
            await self.pool.execute(Q_UNLINK, target, list(links.deleted))
        waiting: set[str] = set()
        if links.companies is None:
            waiting.update(row[0] for row in await self.pool.fetch(Q_WAITING, target))
        for query, ids in (
            (Q_WAITING_FOR, links.companies or ()),
            (Q_WAITING_AMONG, links.contacts),
        ):
            if ids:
                waiting.update(row[0] for row in await self.pool.fetch(query, target, list(ids)))
        # Queued as they are, not as full re-writes: only the link is missing. Each under its
        # lock; one linked meanwhile is only written again.
        return await self._requeue_latest(target, sorted(waiting), full=False) if waiting else 0

    async def purge(self, pick: DeadLetterPick) -> int:
        where, params = pick.where()
        sql = numbered(f"DELETE FROM dead_letters WHERE {where}")
        return rowcount(await self.pool.execute(sql, *params))

    async def queued(self, target: str, contact_ids: Sequence[str]) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT contact_id FROM queue WHERE target = $1 AND contact_id = ANY($2::TEXT[])",
            target,
            list(contact_ids),
        )
        return {row[0] for row in rows}

    async def trace(self, contact_id: str) -> Trace:
        # Scans: tracing is rare, and an index on contact ids would cost every webhook a write.
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            events = [TraceEvent(*row) for row in await conn.fetch(Q_TRACE_EVENTS, contact_id)]
            attempts = [
                TraceAttempt(*row) for row in await conn.fetch(Q_TRACE_ATTEMPTS, contact_id)
            ]
            dead = [DeadLetter(*row) for row in await conn.fetch(Q_TRACE_DEAD, contact_id)]
            pending = {
                row[0]: tuple(row[1:]) for row in await conn.fetch(Q_TRACE_PENDING, contact_id)
            }
            remote_ids = {
                row[0]: row[1] for row in await conn.fetch(Q_TRACE_REMOTE_IDS, contact_id)
            }
        return Trace(events, attempts, dead, pending, remote_ids)

    async def contacts_by_email(self, email: str) -> list[tuple[str, str]]:
        if not normal_email(email) or self._email_key is None:
            return []
        rows = await self.pool.fetch(Q_CONTACTS_BY_EMAIL, email_hash(self._email_key, email))
        return [(row[0], row[1]) for row in rows]

    async def prune(self, retention: float) -> dict[str, int]:
        cutoff = time.time() - retention
        pruned = {"events": 0, "attempts": 0, "contact_emails": 0}
        # In slices, each its own short transaction.
        while True:
            async with self._transaction() as conn:
                candidates = [
                    row[0] for row in await conn.fetch(Q_PRUNE_CANDIDATES, cutoff, self.prune_slice)
                ]
                events = rowcount(await conn.execute(Q_PRUNE_EVENTS, candidates))
            attempts = rowcount(await self.pool.execute(Q_PRUNE_ATTEMPTS, cutoff, self.prune_slice))
            emails = rowcount(await self.pool.execute(Q_PRUNE_EMAILS, cutoff, self.prune_slice))
            pruned["events"] += events
            pruned["attempts"] += attempts
            pruned["contact_emails"] += emails
            if max(events, attempts, emails) < self.prune_slice:
                return pruned
