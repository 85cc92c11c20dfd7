"""The PostgreSQL store's SQL and keys: its named queries, its URLs, its advisory lock keys.

The queries both stores share are written once in :mod:`connector.store.queries` and numbered for
asyncpg here; the rest are PostgreSQL's own: set-based batches over ``unnest``, ``FOR UPDATE SKIP
LOCKED``, the append and claim functions of :mod:`connector.store.schema`. Lock keys are 64-bit
digests of what they lock, so every replica derives the same key for the same contact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from connector.store import queries as q
from connector.store.queries import numbered

# --- named queries -----------------------------------------------------------------------------

# The queries both stores share, numbered for asyncpg.
(
    Q_RELEASE,
    Q_DEAD,
    Q_RENEW,
    Q_NEXT_DUE,
    Q_SET_PAUSED,
    Q_TARGET_STATE,
    Q_STATUS_QUEUE,
    Q_STATUS_DEAD,
    Q_STATUS_TARGETS,
    Q_DEAD_LETTERS,
    Q_PRUNE_ATTEMPTS,
    Q_MARK_REPLAYED,
    Q_EMAIL_KEY,
    Q_CONTACTS_BY_EMAIL,
    Q_PRUNE_EMAILS,
) = (
    numbered(q.RELEASE),
    numbered(q.DEAD),
    numbered(q.RENEW),
    numbered(q.NEXT_DUE),
    numbered(q.SET_PAUSED),
    numbered(q.TARGET_STATE),
    numbered(q.STATUS_QUEUE),
    numbered(q.STATUS_DEAD),
    numbered(q.STATUS_TARGETS),
    numbered(q.DEAD_LETTERS),
    numbered(q.PRUNE_ATTEMPTS),
    numbered(q.MARK_REPLAYED),
    numbered(q.EMAIL_KEY),
    numbered(q.CONTACTS_BY_EMAIL),
    numbered(q.PRUNE_EMAILS),
)
(Q_TRACE_EVENTS, Q_TRACE_ATTEMPTS, Q_TRACE_DEAD, Q_TRACE_PENDING, Q_TRACE_REMOTE_IDS) = (
    numbered(q.TRACE_EVENTS),
    numbered(q.TRACE_ATTEMPTS),
    numbered(q.TRACE_DEAD),
    numbered(q.TRACE_PENDING),
    numbered(q.TRACE_REMOTE_IDS),
)

Q_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    INTEGER PRIMARY KEY,
        applied_at DOUBLE PRECISION NOT NULL
    )"""
Q_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
Q_MIGRATED = "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)"

Q_APPEND = """
    SELECT out_status, out_event_id
    FROM connector_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"""
# The append of events carrying addresses, in the same round trip: the keyed hash of each address
# ($13), with the number of its event in the batch ($14), is recorded for the events stored
# (queued or dropped).
Q_APPEND_EMAILS = """
    WITH appended AS (
        SELECT a.out_status, a.out_event_id, a.n
        FROM connector_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            WITH ORDINALITY AS a (out_status, out_event_id, n)
    ), seen AS (
        INSERT INTO contact_emails (email_hash, tenant, contact_id, seen_at)
        SELECT m.email_hash, ($2::TEXT[])[m.n], ($3::TEXT[])[m.n], $10::DOUBLE PRECISION
        FROM unnest($13::BIGINT[], $14::BIGINT[]) AS m (email_hash, n)
        JOIN appended a ON a.n = m.n AND a.out_status <> 'duplicate'
    )
    SELECT out_status, out_event_id FROM appended ORDER BY n"""
# The contacts' advisory locks, in the order given (sorted by the caller).
Q_LOCK_CONTACTS = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::BIGINT[]) AS k"


Q_CLAIM = "SELECT * FROM connector_claim($1, $2, $3, $4, $5)"
Q_CLAIMED_ROWS = """
    SELECT contact_id, claim_seq, claim_events, last_seq, claim_op, attempts, first_error,
        first_failed_at
    FROM queue WHERE target = $1 AND claim = $2 AND contact_id = ANY($3::TEXT[])
    FOR UPDATE"""
# Set-based where a batch has one row per item (one statement instead of one per item).
Q_DROP_ROWS = "DELETE FROM queue WHERE target = $1 AND contact_id = ANY($2::TEXT[])"
# Events that arrived during the push stay queued, ready at once.
Q_KEEP_NEWER = f"""
    UPDATE queue SET events = events - claim_events, {q.UNCLAIM}, attempts = 0, due_at = $1,
        full_write = FALSE,
        first_error = NULL, last_error = NULL, first_failed_at = NULL,
        head_at = COALESCE((SELECT received_at FROM events  -- only events since the claim
                            WHERE seq > $2 AND tenant = $3 AND contact_id = $4
                            ORDER BY seq LIMIT 1),
                           head_at)
    WHERE target = $5 AND contact_id = $4"""
Q_RETRY = f"""
    UPDATE queue SET {q.UNCLAIM},
        attempts = attempts + $1, due_at = $2, last_error = $3,
        first_error = COALESCE(first_error, $3), first_failed_at = COALESCE(first_failed_at, $4)
    WHERE target = $5 AND contact_id = $6 AND claim = $7"""
# What the target confirmed holding. A write that returned no id keeps the known one.
Q_STATES = """
    INSERT INTO sync_state AS s (target, contact_id, remote_id, seq, at, digests, company_id,
                                 company_remote_id)
    SELECT $1, r.contact_id, r.remote_id, r.seq, $2, r.digests, r.company_id, r.company_remote_id
    FROM unnest($3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::TEXT[])
        AS r (contact_id, remote_id, seq, digests, company_id, company_remote_id)
    ON CONFLICT (target, contact_id) DO UPDATE SET
        remote_id = COALESCE(excluded.remote_id, s.remote_id), seq = excluded.seq,
        at = excluded.at, digests = excluded.digests, company_id = excluded.company_id,
        company_remote_id = excluded.company_remote_id"""
Q_STATES_SEEN = """
    UPDATE sync_state s SET seq = r.seq, at = $2
    FROM unnest($3::TEXT[], $4::BIGINT[]) AS r (contact_id, seq)
    WHERE s.target = $1 AND s.contact_id = r.contact_id"""
Q_FORGET = "DELETE FROM sync_state WHERE target = $1 AND contact_id = ANY($2::TEXT[])"
Q_ATTEMPTS = """
    INSERT INTO attempts (target, contact_id, seq, at, outcome, detail, remote_id, mapping, fields)
    SELECT $1, a.contact_id, a.seq, $2, a.outcome, a.detail, a.remote_id, a.mapping, a.fields
    FROM unnest($3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[],
                $9::TEXT[])
        WITH ORDINALITY AS a (contact_id, seq, outcome, detail, remote_id, mapping, fields, n)
    ORDER BY a.n"""
Q_COUNT_DELIVERED = """
    INSERT INTO targets AS t (target, delivered, unchanged) VALUES ($1, $2, $3)
    ON CONFLICT (target) DO UPDATE SET delivered = t.delivered + excluded.delivered,
        unchanged = t.unchanged + excluded.unchanged"""
Q_NOTIFY = "SELECT pg_notify($1, payload) FROM unnest($2::TEXT[]) AS payload"
# Only leases that ran out: the live ones belong to replicas still pushing them.
Q_RECOVER = f"""
    UPDATE queue SET {q.UNCLAIM}
    WHERE id IN (SELECT id FROM queue WHERE claim IS NOT NULL AND due_at <= $1
                 FOR UPDATE SKIP LOCKED)"""

# --- operators' tools --------------------------------------------------------------------------

Q_REPLAYABLE = """
    SELECT id, target, contact_id FROM dead_letters
    WHERE replayed_at IS NULL AND target = ANY($1::TEXT[]) ORDER BY id"""
Q_DEAD_BY_ID = """
    SELECT id, target, contact_id FROM dead_letters WHERE id = ANY($1::BIGINT[]) ORDER BY id"""
# The latest state of each of some contacts of one tenant: its last event that was not dropped.
Q_LATEST_STATE = """
    SELECT e.contact_id, e.seq, e.op FROM events e
    WHERE e.seq IN (SELECT MAX(seq) FROM events WHERE tenant = $1 AND dropped IS NULL
                    AND contact_id = ANY($2::TEXT[]) GROUP BY contact_id)"""
# Queued again (a full re-write if $6); a contact already queued is left as it is. The event is
# locked (KEY SHARE) so that a retention pass cannot delete it under the new row.
Q_REQUEUE = """
    WITH state AS (SELECT op, seq FROM events WHERE seq = $5 FOR KEY SHARE)
    INSERT INTO queue (target, contact_id, op, last_seq, head_at, events, due_at, full_write)
    SELECT $1, $2, op, seq, $3, 1, $4, $6 FROM state
    ON CONFLICT (target, contact_id) DO NOTHING"""
Q_MARK_FULL = "UPDATE queue SET full_write = TRUE WHERE target = $1 AND contact_id = $2"
Q_SYNCED = "SELECT contact_id FROM sync_state WHERE target = $1"
# Retention takes two statements: candidates are locked first (a replay requeueing one of them
# waits, or is skipped), then deleted unless a statement with a fresh snapshot finds them needed.
NOT_NEEDED = q.NOT_NEEDED
Q_PRUNE_CANDIDATES = f"""
    SELECT e.seq FROM events e WHERE e.received_at < $1 AND {NOT_NEEDED}
    ORDER BY e.seq LIMIT $2
    FOR UPDATE SKIP LOCKED"""
Q_PRUNE_EVENTS = f"DELETE FROM events e WHERE e.seq = ANY($1::BIGINT[]) AND {NOT_NEEDED}"


# --- URLs and lock keys ------------------------------------------------------------------------


def lock_key(*parts: str) -> int:
    h = hashlib.blake2b(digest_size=8, person=b"mimeeq-connect")
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return int.from_bytes(h.digest(), "big", signed=True)


def contact_lock(tenant: str, contact_id: str) -> int:
    """The advisory lock key of one contact: its appends and completions take it."""
    return lock_key("contact", tenant, contact_id)


def migration_lock(schema: str) -> int:
    return lock_key("migrations", schema)


def rowcount(status: str) -> int:
    """The row count of a command tag such as ``INSERT 0 1`` or ``DELETE 3``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def requeue(
    conn: PoolConnectionProxy[asyncpg.Record],
    target: str,
    contact_id: str,
    seq: int,
    now: float,
    full: bool = True,
) -> bool:
    """Queue a (full) write of a contact's state ``seq``; False if it was queued already (then
    the queued write becomes a full one if ``full``)."""
    if rowcount(await conn.execute(Q_REQUEUE, target, contact_id, now, now, seq, full)):
        return True
    if full:
        await conn.execute(Q_MARK_FULL, target, contact_id)
    return False


def lock_keys(tenant: str, contacts: Iterable[str]) -> list[int]:
    return sorted({contact_lock(tenant, c) for c in contacts})
