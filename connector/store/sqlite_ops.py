"""The SQLite store's operations: each a function of the connection, run by the single writer.

:class:`~connector.store.sqlite.SQLiteStore` queues them and runs a group of them in one
transaction (group commit); the operators' scans (``HEAVY``) run in a thread. Appends insert in
batches: the heads and tombstones of a whole group's contacts are read with one statement per
500 contacts. What the rows mean is decided in :mod:`connector.store.logic`, shared with the
PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from connector.store import logic
from connector.store import queries as q
from connector.store.base import (
    Accepted,
    Claim,
    ClaimedItem,
    DeadLetter,
    DeadLetterPick,
    NewEvent,
    Relink,
    Replayed,
    Result,
    SyncState,
    TargetStatus,
    Trace,
    TraceAttempt,
    TraceEvent,
    email_hash,
    event_digest,
)

T = TypeVar("T")
Operation = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
Settled = tuple["asyncio.Future[Any]", Any, BaseException | None]

# --- named queries -----------------------------------------------------------------------------


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
# The contact carried the address: it is found by it until retention forgets this event's row.
Q_SEEN_EMAIL = """
    INSERT INTO contact_emails (email_hash, tenant, contact_id, seen_at) VALUES (?, ?, ?, ?)"""
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
    UPDATE queue SET events = events - claim_events, {q.UNCLAIM}, attempts = 0, due_at = ?,
        full_write = 0,
        first_error = NULL, last_error = NULL, first_failed_at = NULL,
        head_at = COALESCE((SELECT received_at FROM events  -- only events since the claim
                            WHERE seq > ? AND tenant = ? AND contact_id = ? ORDER BY seq LIMIT 1),
                           head_at)
    WHERE target = ? AND contact_id = ?"""
Q_RETRY = f"""
    UPDATE queue SET {q.UNCLAIM},
        attempts = attempts + ?, due_at = ?, last_error = ?,
        first_error = COALESCE(first_error, ?), first_failed_at = COALESCE(first_failed_at, ?)
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
Q_ATTEMPT = """
    INSERT INTO attempts (target, contact_id, seq, at, outcome, detail, remote_id, mapping, fields)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
Q_COUNT_DELIVERED = """
    INSERT INTO targets (target, delivered, unchanged) VALUES (?, ?, ?)
    ON CONFLICT (target) DO UPDATE SET delivered = delivered + excluded.delivered,
        unchanged = unchanged + excluded.unchanged"""
Q_RECOVER = f"""
    UPDATE queue SET {q.UNCLAIM}, due_at = ?
    WHERE claim IS NOT NULL"""
# probe_write's row: deleted again in the same transaction, so no reader ever sees it.
Q_PROBE_WRITE = """
    INSERT INTO events (event_id, tenant, contact_id, event_type, op, payload, received_at, digest)
    VALUES ('', '', '', '', '', zeroblob(?), 0, 0)"""


def execute(conn: sqlite3.Connection, batch: list[Operation]) -> list[Settled]:
    """Run a group's operations in the open transaction; appends together in a few statements."""
    appends = [(args, fut) for fn, args, fut in batch if fn is append]
    results: list[Settled] = []
    if appends:  # args: event, id, now, window, and the store's e-mail key (the same for all)
        key = appends[0][0][4]
        accepted = append_many(conn, [args[:4] for args, _ in appends], key)
        results = [(fut, a, None) for (_, fut), a in zip(appends, accepted, strict=True)]
    results += [(fut, fn(conn, *args), None) for fn, args, fut in batch if fn is not append]
    return results


PROBE_BYTES = 64 * 1024  # more than a webhook needs: a probe that passes leaves room for one


def probe_write(conn: sqlite3.Connection, size: int) -> None:
    """Write a row of ``size`` bytes and delete it in the same transaction: nothing is left but
    a few free pages, which the next appends reuse."""
    seq = conn.execute(Q_PROBE_WRITE, (size,)).lastrowid
    conn.execute("DELETE FROM events WHERE seq = ?", (seq,))


def settle(results: list[Settled]) -> None:
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def scalar(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def row(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
    return row


def rowcount(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    return conn.execute(sql, params).rowcount


def append(
    conn: sqlite3.Connection,
    ev: NewEvent,
    event_id: str,
    now: float,
    window: float,
    email_key: bytes | None,
) -> Accepted:
    return append_many(conn, [(ev, event_id, now, window)], email_key)[0]


def append_many(
    conn: sqlite3.Connection,
    batch: Sequence[tuple[NewEvent, str, float, float]],
    email_key: bytes | None,
) -> list[Accepted]:
    """Store a group of events with a handful of statements, whatever the group's size.

    ``email_key``: the store's key of ``contact_emails`` (None before migration 4, when no event
    with addresses can be stored)."""
    heads = _heads(conn, [ev for ev, _, _, _ in batch])
    deleted = _tombstoned(conn, [ev for ev, _, _, _ in batch if ev.op == "upsert"])
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    events: list[tuple[Any, ...]] = []
    tombstones: list[tuple[Any, ...]] = []
    queued: list[tuple[Any, ...]] = []
    emails: list[tuple[Any, ...]] = []
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
        dropped = q.DROPPED_AFTER_DELETE if ev.op == "upsert" and key in deleted else None
        events.append(
            (seq, event_id, ev.tenant, ev.contact_id, ev.event_type, ev.op, ev.payload, now,
             dropped, digest)
        )  # fmt: skip
        if ev.emails:  # stored, dropped or not: the contact carried these addresses
            if email_key is None:
                raise RuntimeError("the store's schema predates contact_emails: migrate it")
            emails += [(email_hash(email_key, e), *key, now) for e in ev.emails]
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
    if emails:
        conn.executemany(Q_SEEN_EMAIL, emails)
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


def claim(
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
    for row in sorted(rows, key=lambda r: r[2]):
        state = states.get(row[0])
        remote_id = state.remote_id if state else None
        items.append(logic.claimed_item(row, events[row[2]], remote_id, state))
    return items


def complete(conn: sqlite3.Connection, claim: Claim, results: Sequence[Result], now: float) -> None:
    target = claim.target
    tenant = logic.tenant_of(target)
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
    p = logic.plan_completion(held, results, now)
    token = claim.token
    drop = [(target, c) for c in p.drop]
    keep_newer = [(now, seq, tenant, c, target, c) for c, seq in p.keep_newer]
    states = [(target, c, remote_id, seq, now, *rest) for c, remote_id, seq, *rest in p.states]
    seen = [(seq, now, target, c) for c, seq in p.seen]
    forget = [(target, c) for c in p.forget]
    dead = [(target, *row, now) for row in p.dead]
    retry = [(n, due, err, err, now, target, c, token) for c, n, due, err in p.retry]
    release = [(due, target, c, token) for c, due in p.release]
    attempts = [(target, c, seq, now, *rest) for c, seq, *rest in p.attempts]
    for sql, rows in (
        (Q_DROP_ROW, drop), (Q_KEEP_NEWER, keep_newer), (Q_STATE, states), (Q_STATE_SEEN, seen),
        (Q_FORGET, forget), (q.DEAD, dead), (Q_RETRY, retry), (q.RELEASE, release),
        (Q_ATTEMPT, attempts),
    ):  # fmt: skip
        if rows:
            conn.executemany(sql, rows)
    if p.delivered or p.unchanged:
        conn.execute(Q_COUNT_DELIVERED, (target, p.delivered, p.unchanged))


def status(conn: sqlite3.Connection) -> list[TargetStatus]:
    queued = {row[0]: row[1:] for row in conn.execute(q.STATUS_QUEUE)}
    dead = dict(conn.execute(q.STATUS_DEAD).fetchall())
    known = {row[0]: row[1:] for row in conn.execute(q.STATUS_TARGETS)}
    return logic.statuses(queued, dead, known)


# --- operators' tools: dead letters, replay, trace, retention ---------------------------------

# The latest state of each of some contacts of one tenant: its last event that was not dropped.
Q_LATEST_STATE = """
    SELECT e.contact_id, e.seq, e.op FROM events e
    WHERE e.seq IN (SELECT MAX(seq) FROM events WHERE tenant = ? AND dropped IS NULL
                    AND contact_id IN ({marks}) GROUP BY contact_id)"""
# Queued again as a full re-write; a contact already queued is only marked for one.
Q_REQUEUE = """
    INSERT INTO queue (target, contact_id, op, last_seq, head_at, events, due_at, full_write)
    SELECT ?, ?, op, seq, ?, 1, ?, ? FROM events WHERE seq = ?
    ON CONFLICT (target, contact_id) DO NOTHING"""
Q_MARK_FULL = "UPDATE queue SET full_write = 1 WHERE target = ? AND contact_id = ?"
# An event retention may delete: old, and not needed (see queries.NOT_NEEDED).
Q_PRUNE_EVENTS = f"""
    DELETE FROM events WHERE seq IN (
        SELECT e.seq FROM events e WHERE e.received_at < ? AND {q.NOT_NEEDED}
        ORDER BY e.seq LIMIT ?)"""


def dead_letters(
    conn: sqlite3.Connection,
    one: int | None,
    targets: Sequence[str] | None,
    limit: int,
    pick: DeadLetterPick | None = None,
) -> list[DeadLetter]:
    if one is not None:
        sql = q.DEAD_LETTERS.format(payload="e.payload")
        rows = conn.execute(f"{sql} WHERE d.id = ?", (one,)).fetchall()
    else:
        sql, params = q.dead_letter_list(targets, limit, pick)
        rows = conn.execute(sql, params).fetchall()
    return [DeadLetter(*row) for row in rows]


def replay(
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
    latest = {
        (tenant, contact_id): seq
        for tenant, contacts in logic.contacts_by_tenant(rows).items()
        for contact_id, (seq, _) in _latest(conn, tenant, contacts).items()
    }
    report = []
    for dead_id, target, contact_id, seq, action in logic.replay_plan(rows, targets, latest):
        if seq is not None:
            queued = _requeue(conn, target, contact_id, seq, now)
            action = "queued" if queued else "already queued"
            conn.execute(q.MARK_REPLAYED, (now, dead_id))
        assert action is not None
        report.append(Replayed(dead_id, target, contact_id, action))
    if not all_of:
        report += logic.not_found(missing)
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


def _requeue(
    conn: sqlite3.Connection, target: str, contact_id: str, seq: int, now: float, full: bool = True
) -> bool:
    """Queue a (full) write of a contact's state ``seq``; False if it was queued already (then
    the queued write becomes a full one if ``full``)."""
    if conn.execute(Q_REQUEUE, (target, contact_id, now, now, full, seq)).rowcount:
        return True
    if full:
        conn.execute(Q_MARK_FULL, (target, contact_id))
    return False


def resync(
    conn: sqlite3.Connection,
    target: str,
    contact_ids: Sequence[str] | None,
    now: float,
    full: bool = True,
) -> int:
    if contact_ids is None:
        sql = "SELECT contact_id FROM sync_state WHERE target = ?"
        contact_ids = [row[0] for row in conn.execute(sql, (target,))]
    latest = _latest(conn, logic.tenant_of(target), set(contact_ids))
    for contact_id, (seq, op) in latest.items():
        if op == "upsert":  # a deleted contact stays deleted
            _requeue(conn, target, contact_id, seq, now, full)
    return sum(1 for _, op in latest.values() if op == "upsert")


def relink(conn: sqlite3.Connection, target: str, links: Relink, now: float) -> int:
    for chunk in _chunks(list(links.deleted)):
        marks = ",".join("?" * len(chunk))
        conn.execute(
            "UPDATE sync_state SET company_remote_id = NULL "
            f"WHERE target = ? AND company_id IN ({marks})",
            [target, *chunk],
        )
    waiting: set[str] = set()
    if links.companies is None:
        waiting.update(row[0] for row in conn.execute(q.WAITING, (target,)))
    for column, ids in (("s.company_id", links.companies or ()), ("s.contact_id", links.contacts)):
        for chunk in _chunks(list(ids)):
            sql = f"{q.WAITING} AND {column} IN ({','.join('?' * len(chunk))})"
            waiting.update(row[0] for row in conn.execute(sql, [target, *chunk]))
    # Queued as they are, not as full re-writes: only the link is missing.
    return resync(conn, target, sorted(waiting), now, full=False) if waiting else 0


def purge(conn: sqlite3.Connection, pick: DeadLetterPick) -> int:
    where, params = pick.where()
    return conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount


def queued(conn: sqlite3.Connection, target: str, contact_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(contact_ids):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT contact_id FROM queue WHERE target = ? AND contact_id IN ({marks})"
        found.update(row[0] for row in conn.execute(sql, [target, *chunk]))
    return found


def trace(conn: sqlite3.Connection, contact_id: str) -> Trace:
    events = [TraceEvent(*row) for row in conn.execute(q.TRACE_EVENTS, (contact_id,))]
    attempts = [TraceAttempt(*row) for row in conn.execute(q.TRACE_ATTEMPTS, (contact_id,))]
    dead = [DeadLetter(*row) for row in conn.execute(q.TRACE_DEAD, (contact_id,))]
    pending = {row[0]: tuple(row[1:]) for row in conn.execute(q.TRACE_PENDING, (contact_id,))}
    remote_ids = dict(conn.execute(q.TRACE_REMOTE_IDS, (contact_id,)).fetchall())
    return Trace(events, attempts, dead, pending, remote_ids)


def contacts_by_email(conn: sqlite3.Connection, digest: bytes) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = conn.execute(q.CONTACTS_BY_EMAIL, (digest,)).fetchall()
    return rows


def email_key(conn: sqlite3.Connection) -> bytes | None:
    """The store's key of ``contact_emails``; None while the schema predates it."""
    try:
        key: bytes | None = scalar(conn, q.EMAIL_KEY, ())
        return key
    except sqlite3.OperationalError:  # no such table (yet)
        return None


def prune_slice(conn: sqlite3.Connection, cutoff: float, limit: int) -> tuple[int, int, int]:
    events = conn.execute(Q_PRUNE_EVENTS, (cutoff, limit)).rowcount
    attempts = conn.execute(q.PRUNE_ATTEMPTS, (cutoff, limit)).rowcount
    emails = conn.execute(q.PRUNE_EMAILS, (cutoff, limit)).rowcount
    return events, attempts, emails


# Operations that scan whole tables: run in a thread, so the event loop keeps serving meanwhile.
HEAVY: frozenset[Callable[..., Any]] = frozenset(
    {status, dead_letters, replay, resync, relink, purge, trace, prune_slice}
)
