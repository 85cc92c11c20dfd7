"""The named queries both stores run as they are, written once in SQLite's ``?`` style.

Only the placeholders differ between the two dialects for these: :func:`numbered` turns ``?`` into
asyncpg's ``$1…$n`` once, at import. Queries whose SQL differs (PostgreSQL's set-based batches over
``unnest``, ``FOR UPDATE SKIP LOCKED``, a placeholder used twice, SQLite's ``{marks}`` lists) stay
with their store.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

from connector.store.base import DeadLetterPick

DROPPED_AFTER_DELETE = "contact was deleted earlier; a late create or update cannot bring it back"

# Hand a row back: no claim holds it any more.
UNCLAIM = "claim = NULL, claim_seq = NULL, claim_events = NULL, claim_op = NULL"

RELEASE = f"""
    UPDATE queue SET {UNCLAIM}, due_at = ?
    WHERE target = ? AND contact_id = ? AND claim = ?"""
DEAD = """
    INSERT INTO dead_letters (target, contact_id, op, seq, events, attempts, first_error, error,
                              first_failed_at, failed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
RENEW = "UPDATE queue SET due_at = ? WHERE target = ? AND claim = ?"
NEXT_DUE = "SELECT MIN(due_at) FROM queue WHERE target = ?"
SET_PAUSED = """
    INSERT INTO targets (target, paused_reason, paused_until, paused_at, paused_by)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (target) DO UPDATE SET paused_reason = excluded.paused_reason,
        paused_until = excluded.paused_until, paused_at = excluded.paused_at,
        paused_by = excluded.paused_by"""
TARGET_STATE = "SELECT paused_reason, paused_until, paused_by FROM targets WHERE target = ?"
STATUS_QUEUE = """
    SELECT target, COUNT(*), SUM(events), MIN(head_at) FROM queue GROUP BY target"""
STATUS_DEAD = """
    SELECT target, COUNT(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY target"""
STATUS_TARGETS = "SELECT target, delivered, paused_reason, paused_until, unchanged FROM targets"

# --- operators' tools --------------------------------------------------------------------------

# ``{payload}``: the event's payload, or NULL where the listing leaves it out.
DEAD_LETTERS = """
    SELECT d.id, d.target, d.contact_id, d.op, d.seq, e.event_id, e.event_type, e.received_at,
        d.events, d.attempts, d.first_error, d.error, d.first_failed_at, d.failed_at,
        d.replayed_at, {payload}
    FROM dead_letters d LEFT JOIN events e ON e.seq = d.seq"""
MARK_REPLAYED = "UPDATE dead_letters SET replayed_at = ? WHERE id = ?"


def dead_letter_list(
    targets: Sequence[str] | None, limit: int, pick: DeadLetterPick | None
) -> tuple[str, list[Any]]:
    """The listing of dead letters (not replayed yet, oldest first), narrowed by ``pick``: the
    query in ``?`` style and its parameters."""
    listed = DeadLetterPick(targets=targets, not_replayed=True).where("d.")
    picked = (pick or DeadLetterPick()).where("d.")
    sql = f"{DEAD_LETTERS.format(payload='NULL')} WHERE {listed[0]} AND {picked[0]}"
    return f"{sql} ORDER BY d.id LIMIT ?", [*listed[1], *picked[1], limit]


# An event retention may delete: needed by no queued row and no dead letter, and not the latest
# state of a live contact (kept, so that a forced re-write can map it again).
NOT_NEEDED = """
    NOT EXISTS (SELECT 1 FROM queue q WHERE q.contact_id = e.contact_id AND q.last_seq = e.seq)
    AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = e.seq AND d.replayed_at IS NULL)
    AND (e.dropped IS NOT NULL OR e.op = 'delete'
         OR EXISTS (SELECT 1 FROM events n WHERE n.tenant = e.tenant
                    AND n.contact_id = e.contact_id AND n.seq > e.seq AND n.dropped IS NULL)
         OR EXISTS (SELECT 1 FROM tombstones t WHERE t.tenant = e.tenant
                    AND t.contact_id = e.contact_id))"""
PRUNE_ATTEMPTS = """
    DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < ? ORDER BY id LIMIT ?)"""

# The contacts found by an address (its email_hash), and the addresses no event carried since the
# cutoff, a slice at a time.
EMAIL_KEY = "SELECT key FROM email_key"
CONTACTS_BY_EMAIL = """
    SELECT tenant, contact_id FROM contact_emails WHERE email_hash = ?
    GROUP BY tenant, contact_id ORDER BY max(seen_at) DESC, tenant, contact_id"""
PRUNE_EMAILS = """
    DELETE FROM contact_emails WHERE id IN (
        SELECT id FROM contact_emails WHERE seen_at < ? ORDER BY id LIMIT ?)"""

# A contact's whole story (trace): scans, as tracing is rare and an index on contact ids would
# cost every webhook a write.
TRACE_EVENTS = """
    SELECT seq, event_id, tenant, event_type, op, received_at, dropped, payload
    FROM events WHERE contact_id = ? ORDER BY seq"""
TRACE_ATTEMPTS = """
    SELECT target, seq, at, outcome, detail, remote_id, mapping, fields FROM attempts
    WHERE contact_id = ? ORDER BY id"""
TRACE_DEAD = DEAD_LETTERS.format(payload="NULL") + " WHERE d.contact_id = ? ORDER BY d.id"
TRACE_PENDING = "SELECT target, op, attempts, due_at, last_error FROM queue WHERE contact_id = ?"
TRACE_REMOTE_IDS = """
    SELECT target, remote_id FROM sync_state WHERE contact_id = ? AND remote_id IS NOT NULL"""


def numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1``, ``$2``… (none of these queries has a ``?`` in a
    string literal)."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


# Contacts waiting for their company to reach the target (it has, if it has a remote id there),
# optionally narrowed by "AND s.company_id IN (…)" or "AND s.contact_id IN (…)".
WAITING = """
    SELECT s.contact_id FROM sync_state s
    JOIN sync_state c ON c.target = s.target AND c.contact_id = s.company_id
    WHERE s.target = ? AND s.company_id IS NOT NULL AND s.company_remote_id IS NULL
        AND c.remote_id IS NOT NULL"""
