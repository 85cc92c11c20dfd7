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
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from connector.errors import ConfigError
from connector.ratelimit import RateLimiter, window_with_margin
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

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
POOL_PARAMS = ("pool_min_size", "pool_max_size")

DROPPED_AFTER_DELETE = "contact was deleted earlier; a late create or update cannot bring it back"
TARGET_SEPARATOR = "\x1f"  # joins an event's target keys into one array element

# Each entry migrates the schema from version i to i + 1 (a row in schema_migrations).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id    TEXT NOT NULL,  -- random: no index needed to keep it unique
        tenant      TEXT NOT NULL,
        contact_id  TEXT NOT NULL,
        event_type  TEXT NOT NULL,
        op          TEXT NOT NULL,
        payload     BYTEA NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        dropped     TEXT,
        digest      BIGINT NOT NULL
    );
    CREATE INDEX events_by_digest ON events (digest);

    -- Updated in place all the time: room on each page lets an update stay on it (HOT), and
    -- vacuum comes often, so that rows delivered long ago do not linger as dead tuples.
    CREATE TABLE queue (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        target          TEXT NOT NULL,
        contact_id      TEXT NOT NULL,
        op              TEXT NOT NULL,
        last_seq        BIGINT NOT NULL,
        head_at         DOUBLE PRECISION NOT NULL,
        events          INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        due_at          DOUBLE PRECISION NOT NULL,
        claim           BIGINT,
        claim_seq       BIGINT,
        claim_events    INTEGER,
        claim_op        TEXT,
        first_error     TEXT,
        last_error      TEXT,
        first_failed_at DOUBLE PRECISION
    ) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05,
            autovacuum_analyze_scale_factor = 0.05);
    CREATE UNIQUE INDEX queue_by_contact ON queue (contact_id, target);
    CREATE INDEX queue_by_due ON queue (target, due_at);

    CREATE TABLE links (
        target     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        remote_id  TEXT,
        seq        BIGINT NOT NULL,
        at         DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (target, contact_id)
    );

    CREATE TABLE dead_letters (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        target          TEXT NOT NULL,
        contact_id      TEXT NOT NULL,
        op              TEXT NOT NULL,
        seq             BIGINT NOT NULL,
        events          INTEGER NOT NULL,
        attempts        INTEGER NOT NULL,
        first_error     TEXT,
        error           TEXT NOT NULL,
        first_failed_at DOUBLE PRECISION,
        failed_at       DOUBLE PRECISION NOT NULL,
        replayed_at     DOUBLE PRECISION
    );
    CREATE INDEX dead_letters_by_target ON dead_letters (target, id);
    CREATE INDEX dead_letters_by_seq ON dead_letters (seq);

    CREATE TABLE tombstones (
        tenant     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seq        BIGINT NOT NULL,
        deleted_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, contact_id)
    );

    CREATE TABLE targets (
        target        TEXT PRIMARY KEY,
        delivered     BIGINT NOT NULL DEFAULT 0,
        paused_reason TEXT,
        paused_until  DOUBLE PRECISION,
        paused_at     DOUBLE PRECISION,
        paused_by     TEXT
    );

    CREATE TABLE attempts (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        target     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seq        BIGINT NOT NULL,
        at         DOUBLE PRECISION NOT NULL,
        outcome    TEXT NOT NULL,
        detail     TEXT,
        remote_id  TEXT,
        mapping    TEXT
    );

    -- Store events and queue them, in one round trip. The caller passes one array element per
    -- event, the advisory lock keys of their contacts (sorted, so that two transactions never
    -- wait for each other's locks in a cycle) and the start of the dedupe window.
    CREATE FUNCTION connector_append(
        p_event_ids TEXT[], p_tenants TEXT[], p_contacts TEXT[], p_types TEXT[], p_ops TEXT[],
        p_payloads BYTEA[], p_digests BIGINT[], p_targets TEXT[], p_locks BIGINT[],
        p_now DOUBLE PRECISION, p_since DOUBLE PRECISION, p_dropped TEXT
    ) RETURNS TABLE (out_status TEXT, out_event_id TEXT)
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
    DECLARE
        k BIGINT;
        v_seq BIGINT;
        v_original TEXT;
        v_dropped TEXT;
    BEGIN
        FOREACH k IN ARRAY p_locks LOOP
            PERFORM pg_advisory_xact_lock(k);
        END LOOP;
        -- From here on every statement sees what the transactions we waited for committed.
        FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
            SELECT e.event_id INTO v_original FROM events e
            WHERE e.digest = p_digests[i] AND e.received_at >= p_since
                AND e.tenant = p_tenants[i] AND e.event_type = p_types[i]
                AND e.payload = p_payloads[i]
            ORDER BY e.seq LIMIT 1;
            IF FOUND THEN  -- a redelivery: acknowledge it, keep one
                out_status := 'duplicate';
                out_event_id := v_original;
                RETURN NEXT;
                CONTINUE;
            END IF;
            v_dropped := NULL;
            IF p_ops[i] = 'upsert' AND EXISTS (
                SELECT 1 FROM tombstones t WHERE t.tenant = p_tenants[i]
                AND t.contact_id = p_contacts[i]
            ) THEN
                v_dropped := p_dropped;
            END IF;
            INSERT INTO events (event_id, tenant, contact_id, event_type, op, payload,
                                received_at, dropped, digest)
            VALUES (p_event_ids[i], p_tenants[i], p_contacts[i], p_types[i], p_ops[i],
                    p_payloads[i], p_now, v_dropped, p_digests[i])
            RETURNING seq INTO v_seq;
            out_event_id := p_event_ids[i];
            IF v_dropped IS NOT NULL THEN
                out_status := 'dropped';
                RETURN NEXT;
                CONTINUE;
            END IF;
            IF p_ops[i] = 'delete' THEN
                INSERT INTO tombstones (tenant, contact_id, seq, deleted_at)
                VALUES (p_tenants[i], p_contacts[i], v_seq, p_now)
                ON CONFLICT DO NOTHING;
            END IF;
            -- The event folds into the contact's row; due_at is kept (backoff, lease).
            INSERT INTO queue AS q (target, contact_id, op, last_seq, head_at, events, due_at)
            SELECT DISTINCT t, p_contacts[i], p_ops[i], v_seq, p_now, 1, p_now
            FROM unnest(string_to_array(p_targets[i], chr(31))) AS t
            ON CONFLICT (target, contact_id) DO UPDATE SET
                op = excluded.op, last_seq = excluded.last_seq, events = q.events + 1;
            out_status := 'queued';
            RETURN NEXT;
        END LOOP;
    END
    $fn$;

    -- Lease up to p_limit due rows of a target, oldest first, and return them with their state.
    -- Rows another replica holds locked right now are skipped, not waited for. The plan must
    -- walk queue_by_due in order whatever the statistics say (a queue grows from nothing to a
    -- backlog faster than they follow), hence no sorting. The states are read by a statement of
    -- their own: a row that an append updated after the first statement took its snapshot is
    -- locked (and returned) in its new version, pointing at that append's event, which the
    -- snapshot cannot see.
    CREATE FUNCTION connector_claim(
        p_target TEXT, p_token BIGINT, p_lease_until DOUBLE PRECISION, p_now DOUBLE PRECISION,
        p_limit INTEGER
    ) RETURNS TABLE (contact_id TEXT, op TEXT, seq BIGINT, attempts INTEGER, events INTEGER,
                     event_id TEXT, event_type TEXT, payload BYTEA, remote_id TEXT)
    LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_sort = off
    SET enable_bitmapscan = off AS $fn$
    #variable_conflict use_column
    DECLARE
        v_contacts TEXT[];
        v_ops TEXT[];
        v_seqs BIGINT[];
        v_attempts INTEGER[];
        v_events INTEGER[];
    BEGIN
        WITH claimed AS (
            UPDATE queue q SET claim = p_token, claim_seq = q.last_seq,
                claim_events = q.events, claim_op = q.op, due_at = p_lease_until
            FROM (SELECT id FROM queue WHERE target = p_target AND due_at <= p_now
                  ORDER BY due_at LIMIT p_limit
                  FOR UPDATE SKIP LOCKED) AS picked
            WHERE q.id = picked.id
            RETURNING q.contact_id, q.op, q.last_seq, q.attempts, q.events
        )
        SELECT array_agg(c.contact_id), array_agg(c.op), array_agg(c.last_seq),
            array_agg(c.attempts), array_agg(c.events)
        INTO v_contacts, v_ops, v_seqs, v_attempts, v_events
        FROM claimed c;
        RETURN QUERY  -- one index lookup per row, however many rows the tables hold
        SELECT c.contact_id, c.op, c.seq, c.attempts, c.events, e.event_id, e.event_type,
            e.payload,
            (SELECT l.remote_id FROM links l
             WHERE l.target = p_target AND l.contact_id = c.contact_id)
        FROM unnest(v_contacts, v_ops, v_seqs, v_attempts, v_events)
            AS c (contact_id, op, seq, attempts, events)
        CROSS JOIN LATERAL (SELECT e.event_id, e.event_type, e.payload FROM events e
                            WHERE e.seq = c.seq) AS e;
    END
    $fn$;
    """,
    # 2: request budgets shared by the replicas (rate limits of CRM accounts).
    """
    CREATE TABLE rate_starts (
        account TEXT NOT NULL,             -- a digest of the account's URL and credential
        at      DOUBLE PRECISION NOT NULL  -- when a request started (the database's clock)
    );
    CREATE INDEX rate_starts_by_account ON rate_starts (account, at);
    CREATE TABLE rate_holds (
        account TEXT PRIMARY KEY,
        until   DOUBLE PRECISION NOT NULL
    );
    """,
    # 3: the target as a mirror (see the SQLite store's migration 2): ``links`` becomes
    # ``sync_state``, dedupe compares an event with its contact's latest one, forced re-writes.
    """
    DROP INDEX events_by_digest;
    CREATE INDEX events_by_contact ON events (tenant, contact_id, seq);
    ALTER TABLE links RENAME TO sync_state;
    ALTER TABLE sync_state ADD COLUMN digests TEXT;  -- JSON {field: digest}; NULL: unknown
    ALTER TABLE sync_state ADD COLUMN company_id TEXT;
    ALTER TABLE sync_state ADD COLUMN company_remote_id TEXT;
    ALTER TABLE queue ADD COLUMN full_write BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE targets ADD COLUMN unchanged BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN fields TEXT;

    -- As in migration 1, but a duplicate is a repeat of the contact's LATEST event only: a
    -- change back (A, B, A) is stored.
    CREATE OR REPLACE FUNCTION connector_append(
        p_event_ids TEXT[], p_tenants TEXT[], p_contacts TEXT[], p_types TEXT[], p_ops TEXT[],
        p_payloads BYTEA[], p_digests BIGINT[], p_targets TEXT[], p_locks BIGINT[],
        p_now DOUBLE PRECISION, p_since DOUBLE PRECISION, p_dropped TEXT
    ) RETURNS TABLE (out_status TEXT, out_event_id TEXT)
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
    DECLARE
        k BIGINT;
        v_seq BIGINT;
        v_head RECORD;
        v_dropped TEXT;
    BEGIN
        FOREACH k IN ARRAY p_locks LOOP
            PERFORM pg_advisory_xact_lock(k);
        END LOOP;
        -- From here on every statement sees what the transactions we waited for committed.
        FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
            SELECT e.event_id, e.event_type, e.digest, e.received_at, e.seq INTO v_head
            FROM events e WHERE e.tenant = p_tenants[i] AND e.contact_id = p_contacts[i]
            ORDER BY e.seq DESC LIMIT 1;
            IF FOUND AND v_head.digest = p_digests[i] AND v_head.event_type = p_types[i]
                AND v_head.received_at >= p_since
                AND (SELECT e.payload FROM events e WHERE e.seq = v_head.seq) = p_payloads[i]
            THEN  -- a redelivery of the latest event: acknowledge it, keep one
                out_status := 'duplicate';
                out_event_id := v_head.event_id;
                RETURN NEXT;
                CONTINUE;
            END IF;
            v_dropped := NULL;
            IF p_ops[i] = 'upsert' AND EXISTS (
                SELECT 1 FROM tombstones t WHERE t.tenant = p_tenants[i]
                AND t.contact_id = p_contacts[i]
            ) THEN
                v_dropped := p_dropped;
            END IF;
            INSERT INTO events (event_id, tenant, contact_id, event_type, op, payload,
                                received_at, dropped, digest)
            VALUES (p_event_ids[i], p_tenants[i], p_contacts[i], p_types[i], p_ops[i],
                    p_payloads[i], p_now, v_dropped, p_digests[i])
            RETURNING seq INTO v_seq;
            out_event_id := p_event_ids[i];
            IF v_dropped IS NOT NULL THEN
                out_status := 'dropped';
                RETURN NEXT;
                CONTINUE;
            END IF;
            IF p_ops[i] = 'delete' THEN
                INSERT INTO tombstones (tenant, contact_id, seq, deleted_at)
                VALUES (p_tenants[i], p_contacts[i], v_seq, p_now)
                ON CONFLICT DO NOTHING;
            END IF;
            -- The event folds into the contact's row; due_at is kept (backoff, lease).
            INSERT INTO queue AS q (target, contact_id, op, last_seq, head_at, events, due_at)
            SELECT DISTINCT t, p_contacts[i], p_ops[i], v_seq, p_now, 1, p_now
            FROM unnest(string_to_array(p_targets[i], chr(31))) AS t
            ON CONFLICT (target, contact_id) DO UPDATE SET
                op = excluded.op, last_seq = excluded.last_seq, events = q.events + 1;
            out_status := 'queued';
            RETURN NEXT;
        END LOOP;
    END
    $fn$;

    -- As in migration 1, and each row comes with its sync state and whether it is a full write.
    DROP FUNCTION connector_claim(TEXT, BIGINT, DOUBLE PRECISION, DOUBLE PRECISION, INTEGER);
    CREATE FUNCTION connector_claim(
        p_target TEXT, p_token BIGINT, p_lease_until DOUBLE PRECISION, p_now DOUBLE PRECISION,
        p_limit INTEGER
    ) RETURNS TABLE (contact_id TEXT, op TEXT, seq BIGINT, attempts INTEGER, events INTEGER,
                     full_write BOOLEAN, event_id TEXT, event_type TEXT, payload BYTEA,
                     synced BOOLEAN, remote_id TEXT, digests TEXT, company_id TEXT,
                     company_remote_id TEXT)
    LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_sort = off
    SET enable_bitmapscan = off AS $fn$
    #variable_conflict use_column
    DECLARE
        v_contacts TEXT[];
        v_ops TEXT[];
        v_seqs BIGINT[];
        v_attempts INTEGER[];
        v_events INTEGER[];
        v_full BOOLEAN[];
    BEGIN
        WITH claimed AS (
            UPDATE queue q SET claim = p_token, claim_seq = q.last_seq,
                claim_events = q.events, claim_op = q.op, due_at = p_lease_until
            FROM (SELECT id FROM queue WHERE target = p_target AND due_at <= p_now
                  ORDER BY due_at LIMIT p_limit
                  FOR UPDATE SKIP LOCKED) AS picked
            WHERE q.id = picked.id
            RETURNING q.contact_id, q.op, q.last_seq, q.attempts, q.events, q.full_write
        )
        SELECT array_agg(c.contact_id), array_agg(c.op), array_agg(c.last_seq),
            array_agg(c.attempts), array_agg(c.events), array_agg(c.full_write)
        INTO v_contacts, v_ops, v_seqs, v_attempts, v_events, v_full
        FROM claimed c;
        RETURN QUERY  -- one index lookup per row, however many rows the tables hold
        SELECT c.contact_id, c.op, c.seq, c.attempts, c.events, c.full_write, e.event_id,
            e.event_type, e.payload, s.target IS NOT NULL, s.remote_id, s.digests, s.company_id,
            s.company_remote_id
        FROM unnest(v_contacts, v_ops, v_seqs, v_attempts, v_events, v_full)
            AS c (contact_id, op, seq, attempts, events, full_write)
        CROSS JOIN LATERAL (SELECT e.event_id, e.event_type, e.payload FROM events e
                            WHERE e.seq = c.seq) AS e
        LEFT JOIN sync_state s ON s.target = p_target AND s.contact_id = c.contact_id;
    END
    $fn$;
    """,
]

# --- named queries -----------------------------------------------------------------------------

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
# The contacts' advisory locks, in the order given (sorted by the caller).
Q_LOCK_CONTACTS = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::BIGINT[]) AS k"

UNCLAIM = "claim = NULL, claim_seq = NULL, claim_events = NULL, claim_op = NULL"

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
    UPDATE queue SET events = events - claim_events, {UNCLAIM}, attempts = 0, due_at = $1,
        full_write = FALSE,
        first_error = NULL, last_error = NULL, first_failed_at = NULL,
        head_at = COALESCE((SELECT received_at FROM events  -- only events since the claim
                            WHERE seq > $2 AND tenant = $3 AND contact_id = $4
                            ORDER BY seq LIMIT 1),
                           head_at)
    WHERE target = $5 AND contact_id = $4"""
Q_RETRY = f"""
    UPDATE queue SET {UNCLAIM},
        attempts = attempts + $1, due_at = $2, last_error = $3,
        first_error = COALESCE(first_error, $3), first_failed_at = COALESCE(first_failed_at, $4)
    WHERE target = $5 AND contact_id = $6 AND claim = $7"""
Q_RELEASE = f"""
    UPDATE queue SET {UNCLAIM}, due_at = $1
    WHERE target = $2 AND contact_id = $3 AND claim = $4"""
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
Q_DEAD = """
    INSERT INTO dead_letters (target, contact_id, op, seq, events, attempts, first_error, error,
                              first_failed_at, failed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"""
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
Q_RENEW = "UPDATE queue SET due_at = $1 WHERE target = $2 AND claim = $3"
Q_NEXT_DUE = "SELECT MIN(due_at) FROM queue WHERE target = $1"
# Only leases that ran out: the live ones belong to replicas still pushing them.
Q_RECOVER = f"""
    UPDATE queue SET {UNCLAIM}
    WHERE id IN (SELECT id FROM queue WHERE claim IS NOT NULL AND due_at <= $1
                 FOR UPDATE SKIP LOCKED)"""
Q_SET_PAUSED = """
    INSERT INTO targets (target, paused_reason, paused_until, paused_at, paused_by)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (target) DO UPDATE SET paused_reason = excluded.paused_reason,
        paused_until = excluded.paused_until, paused_at = excluded.paused_at,
        paused_by = excluded.paused_by"""
Q_TARGET_STATE = "SELECT paused_reason, paused_until, paused_by FROM targets WHERE target = $1"
Q_STATUS_QUEUE = """
    SELECT target, COUNT(*), SUM(events), MIN(head_at) FROM queue GROUP BY target"""
Q_STATUS_DEAD = """
    SELECT target, COUNT(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY target"""
Q_STATUS_TARGETS = "SELECT target, delivered, paused_reason, paused_until, unchanged FROM targets"

# --- operators' tools --------------------------------------------------------------------------

Q_DEAD_LETTERS = """
    SELECT d.id, d.target, d.contact_id, d.op, d.seq, e.event_id, e.event_type, e.received_at,
        d.events, d.attempts, d.first_error, d.error, d.first_failed_at, d.failed_at,
        d.replayed_at, {payload}
    FROM dead_letters d LEFT JOIN events e ON e.seq = d.seq"""
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
# Queued again as a full re-write; a contact already queued is only marked for one. The event is
# locked (KEY SHARE) so that a retention pass cannot delete it under the new row.
Q_REQUEUE = """
    WITH state AS (SELECT op, seq FROM events WHERE seq = $5 FOR KEY SHARE)
    INSERT INTO queue (target, contact_id, op, last_seq, head_at, events, due_at, full_write)
    SELECT $1, $2, op, seq, $3, 1, $4, TRUE FROM state
    ON CONFLICT (target, contact_id) DO NOTHING"""
Q_MARK_FULL = "UPDATE queue SET full_write = TRUE WHERE target = $1 AND contact_id = $2"
Q_SYNCED = "SELECT contact_id FROM sync_state WHERE target = $1"
Q_MARK_REPLAYED = "UPDATE dead_letters SET replayed_at = $1 WHERE id = $2"
# Retention takes two statements: candidates are locked first (a replay requeueing one of them
# waits, or is skipped), then deleted unless a statement with a fresh snapshot finds them needed.
# Needed: by a queued row, by a dead letter, or as the latest state of a live contact (kept, so
# that a forced re-write can map it again).
NOT_NEEDED = """
    NOT EXISTS (SELECT 1 FROM queue q WHERE q.contact_id = e.contact_id AND q.last_seq = e.seq)
    AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = e.seq AND d.replayed_at IS NULL)
    AND (e.dropped IS NOT NULL OR e.op = 'delete'
         OR EXISTS (SELECT 1 FROM events n WHERE n.tenant = e.tenant
                    AND n.contact_id = e.contact_id AND n.seq > e.seq AND n.dropped IS NULL)
         OR EXISTS (SELECT 1 FROM tombstones t WHERE t.tenant = e.tenant
                    AND t.contact_id = e.contact_id))"""
Q_PRUNE_CANDIDATES = f"""
    SELECT e.seq FROM events e WHERE e.received_at < $1 AND {NOT_NEEDED}
    ORDER BY e.seq LIMIT $2
    FOR UPDATE SKIP LOCKED"""
Q_PRUNE_EVENTS = f"DELETE FROM events e WHERE e.seq = ANY($1::BIGINT[]) AND {NOT_NEEDED}"
Q_PRUNE_ATTEMPTS = """
    DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < $1 ORDER BY id LIMIT $2)"""


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
Q_RATE_HOLD = """
    INSERT INTO rate_holds (account, until)
    VALUES ($1, extract(epoch FROM clock_timestamp()) + $2)
    ON CONFLICT (account) DO UPDATE SET until = GREATEST(rate_holds.until, excluded.until)"""


# --- URLs and lock keys ------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, int, int]:
    """Split ``store.url`` into the DSN for asyncpg and the pool's sizes; ValueError if invalid.

    Messages never repeat the URL: it may hold a password.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # its message may quote a piece of the password
        raise ValueError(
            "not a valid PostgreSQL URL: expected postgresql://user:password@host:5432/database"
            " (percent-encode special characters such as / @ : in the password)"
        ) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("expected postgresql://user:password@host:5432/database")
    sizes = {"pool_min_size": POOL_MIN_SIZE, "pool_max_size": POOL_MAX_SIZE}
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key in POOL_PARAMS:
            if not value.isdigit() or int(value) < (0 if key == "pool_min_size" else 1):
                raise ValueError(f"{key} must be a whole number (at least 1 for the maximum)")
            sizes[key] = int(value)
        else:
            rest.append((key, value))
    if sizes["pool_min_size"] > sizes["pool_max_size"]:
        raise ValueError("pool_min_size must not exceed pool_max_size")
    dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    return dsn, sizes["pool_min_size"], sizes["pool_max_size"]


def redacted(url: str) -> str:
    """The URL without its password and query, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://…"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _lock_key(*parts: str) -> int:
    h = hashlib.blake2b(digest_size=8, person=b"mimeeq-connect")
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return int.from_bytes(h.digest(), "big", signed=True)


def contact_lock(tenant: str, contact_id: str) -> int:
    """The advisory lock key of one contact: its appends and completions take it."""
    return _lock_key("contact", tenant, contact_id)


def migration_lock(schema: str) -> int:
    return _lock_key("migrations", schema)


def _rowcount(status: str) -> int:
    """The row count of a command tag such as ``INSERT 0 1`` or ``DELETE 3``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class PostgresStore(Store):
    """The store on a PostgreSQL database, shared by any number of replicas."""

    writers = 4  # appends sent at once (each a batch of those waiting) by one process
    max_group = 200  # appends per batch at most
    prune_slice = 2000  # rows deleted per transaction by prune()
    replay_slice = 500  # dead letters replayed per transaction (each locks its contact)

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
        self._dsn, self.pool_min_size, self.pool_max_size = parse_url(url)
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
        rows = await self.pool.fetch(
            Q_APPEND,
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
            DROPPED_AFTER_DELETE,
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
            contact_id, op, seq, attempts, count, full, event_id, event_type, payload = row[:9]
            synced, remote_id = row[9:11]
            state = SyncState.from_row(*row[10:]) if synced else None
            items.append(
                ClaimedItem(
                    contact_id=contact_id,
                    op=op,
                    seq=seq,
                    event_id=event_id,
                    event_type=event_type,
                    payload=payload,
                    remote_id=remote_id,
                    attempts=attempts,
                    events=count,
                    state=state,
                    full=full,
                )
            )
        return Claim(target=target, token=token, items=items)

    async def complete(self, claim: Claim, results: Sequence[Result]) -> None:
        if not results:
            return
        target, now = claim.target, time.time()
        tenant = target.split("/", 1)[0]
        contacts = list({res.contact_id for res in results})
        async with self._transaction() as conn:
            # Appends of these contacts wait until the outcome is recorded (and we for theirs).
            await conn.execute(Q_LOCK_CONTACTS, _lock_keys(tenant, contacts))
            # Rows this claim still holds: a row whose lease ran out belongs to someone else.
            held = {
                row[0]: tuple(row[1:])
                for row in await conn.fetch(Q_CLAIMED_ROWS, target, claim.token, contacts)
            }
            drop: list[str] = []
            keep_newer: list[tuple[Any, ...]] = []
            states: list[tuple[Any, ...]] = []
            seen: list[tuple[str, int]] = []
            forget: list[str] = []
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
                        drop.append(res.contact_id)
                    else:  # events that arrived during the push stay queued
                        keep_newer.append((now, claim_seq, tenant, res.contact_id, target))
                if res.kind == "delivered":
                    delivered += claim_events
                    if op == "delete":
                        forget.append(res.contact_id)
                    else:
                        state = res.state or SyncState(remote_id=res.remote_id)
                        states.append(
                            (res.contact_id, state.remote_id, claim_seq, state.digests_json(),
                             state.company_id, state.company_remote_id)
                        )  # fmt: skip
                elif res.kind == "unchanged":
                    unchanged += claim_events
                    seen.append((res.contact_id, claim_seq))
                elif res.kind == "dead":
                    dead.append(
                        (*key, op, claim_seq, claim_events, tries + 1, first_error or res.error,
                         res.error or "", first_failed_at or now, now)
                    )  # fmt: skip
                elif res.kind == "retry":
                    retry.append(
                        (int(res.count_attempt), res.due_at or now, res.error, now, *key,
                         claim.token)
                    )  # fmt: skip
                else:
                    release.append((res.due_at or now, *key, claim.token))
                    continue
                attempts.append(
                    (res.contact_id, claim_seq, res.kind, res.error or res.note, res.remote_id,
                     res.mapping, res.fields)
                )  # fmt: skip
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
            if delivered or unchanged:
                await conn.execute(Q_COUNT_DELIVERED, target, delivered, unchanged)

    async def renew(self, claim: Claim, lease: float) -> bool:
        status = await self.pool.execute(Q_RENEW, time.time() + lease, claim.target, claim.token)
        return _rowcount(status) > 0

    async def next_due(self, target: str) -> float | None:
        due: float | None = await self.pool.fetchval(Q_NEXT_DUE, target)
        return due

    async def recover(self) -> int:
        """Clear claims whose lease ran out (they were claimable anyway); live ones stay.

        Other replicas may be pushing right now: their claims are theirs until their leases end.
        """
        return _rowcount(await self.pool.execute(Q_RECOVER, time.time()))

    async def set_paused(
        self,
        target: str,
        reason: str | None,
        until: float | None,
        by: Literal["target", "operator"] = "target",
    ) -> None:
        at, who = (time.time(), by) if reason else (None, None)
        await self.pool.execute(Q_SET_PAUSED, target, reason, until, at, who)

    async def target_state(self, target: str) -> TargetState:
        row = await self.pool.fetchrow(Q_TARGET_STATE, target)
        return TargetState(*row) if row else TargetState(None, None, None)

    async def status(self) -> list[TargetStatus]:
        async with self.pool.acquire() as conn:
            queued = {row[0]: tuple(row[1:]) for row in await conn.fetch(Q_STATUS_QUEUE)}
            dead = {row[0]: row[1] for row in await conn.fetch(Q_STATUS_DEAD)}
            known = {row[0]: tuple(row[1:]) for row in await conn.fetch(Q_STATUS_TARGETS)}
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

    async def dead_letters(
        self, targets: Sequence[str] | None = None, limit: int = 1000
    ) -> list[DeadLetter]:
        sql = Q_DEAD_LETTERS.format(payload="NULL")
        if targets is None:
            rows = await self.pool.fetch(
                f"{sql} WHERE d.replayed_at IS NULL ORDER BY d.id LIMIT $1", limit
            )
        else:
            rows = await self.pool.fetch(
                f"{sql} WHERE d.replayed_at IS NULL AND d.target = ANY($1::TEXT[])"
                " ORDER BY d.id LIMIT $2",
                list(targets),
                limit,
            )
        return [DeadLetter(*row) for row in rows]

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
        for some in _chunks(rows, self.replay_slice):
            report += await self._replay_slice(some, targets)
        if not all_of:
            report += [Replayed(i, "", "", "not found") for i in sorted(missing)]
        return report

    async def _replay_slice(
        self, rows: list[tuple[Any, ...]], targets: Sequence[str]
    ) -> list[Replayed]:
        now = time.time()
        by_tenant: dict[str, set[str]] = {}
        for _, target, contact_id in rows:
            by_tenant.setdefault(target.split("/", 1)[0], set()).add(contact_id)
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
            for dead_id, target, contact_id in rows:
                seq = latest.get((target.split("/", 1)[0], contact_id))
                action: Literal["queued", "already queued", "unknown target", "not found"]
                if target not in targets:
                    action = "unknown target"
                elif seq is None:
                    action = "not found"  # its events were pruned: nothing to send
                else:
                    queued = await _requeue(conn, target, contact_id, seq, now)
                    action = "queued" if queued else "already queued"
                    await conn.execute(Q_MARK_REPLAYED, now, dead_id)
                report.append(Replayed(dead_id, target, contact_id, action))
        return report

    async def resync(self, target: str, contact_ids: Sequence[str] | None) -> int:
        tenant = target.split("/", 1)[0]
        if contact_ids is None:
            contact_ids = [row[0] for row in await self.pool.fetch(Q_SYNCED, target)]
        queued = 0
        for some in _chunks(sorted(set(contact_ids)), self.replay_slice):
            now = time.time()
            async with self._transaction() as conn:
                # Appends and completions of these contacts wait (and we for theirs).
                await conn.execute(Q_LOCK_CONTACTS, _lock_keys(tenant, some))
                for contact_id, seq, op in await conn.fetch(Q_LATEST_STATE, tenant, some):
                    if op == "upsert":  # a deleted contact stays deleted
                        await _requeue(conn, target, contact_id, seq, now)
                        queued += 1
        return queued

    async def purge(
        self,
        ids: Sequence[int] | None,
        targets: Sequence[str] | None,
        older_than: float | None = None,
    ) -> int:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if ids is not None:
            params.append(list(ids))
            where.append(f"id = ANY(${len(params)}::BIGINT[])")
        if targets is not None:
            params.append(list(targets))
            where.append(f"target = ANY(${len(params)}::TEXT[])")
        if older_than is not None:
            params.append(older_than)
            where.append(f"failed_at < ${len(params)}")
        sql = f"DELETE FROM dead_letters WHERE {' AND '.join(where)}"
        return _rowcount(await self.pool.execute(sql, *params))

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
            events = [
                TraceEvent(*row)
                for row in await conn.fetch(
                    "SELECT seq, event_id, tenant, event_type, op, received_at, dropped, payload"
                    " FROM events WHERE contact_id = $1 ORDER BY seq",
                    contact_id,
                )
            ]
            attempts = [
                TraceAttempt(*row)
                for row in await conn.fetch(
                    "SELECT target, seq, at, outcome, detail, remote_id, mapping, fields"
                    " FROM attempts"
                    " WHERE contact_id = $1 ORDER BY id",
                    contact_id,
                )
            ]
            sql = Q_DEAD_LETTERS.format(payload="NULL")
            dead = [
                DeadLetter(*row)
                for row in await conn.fetch(
                    f"{sql} WHERE d.contact_id = $1 ORDER BY d.id", contact_id
                )
            ]
            pending = {
                row[0]: tuple(row[1:])
                for row in await conn.fetch(
                    "SELECT target, op, attempts, due_at, last_error FROM queue"
                    " WHERE contact_id = $1",
                    contact_id,
                )
            }
            remote_ids = {
                row[0]: row[1]
                for row in await conn.fetch(
                    "SELECT target, remote_id FROM sync_state"
                    " WHERE contact_id = $1 AND remote_id IS NOT NULL",
                    contact_id,
                )
            }
        return Trace(events, attempts, dead, pending, remote_ids)

    async def prune(self, retention: float) -> dict[str, int]:
        cutoff = time.time() - retention
        pruned = {"events": 0, "attempts": 0}
        # In slices, each its own short transaction.
        while True:
            async with self._transaction() as conn:
                candidates = [
                    row[0] for row in await conn.fetch(Q_PRUNE_CANDIDATES, cutoff, self.prune_slice)
                ]
                events = _rowcount(await conn.execute(Q_PRUNE_EVENTS, candidates))
            attempts = _rowcount(
                await self.pool.execute(Q_PRUNE_ATTEMPTS, cutoff, self.prune_slice)
            )
            pruned["events"] += events
            pruned["attempts"] += attempts
            if events < self.prune_slice and attempts < self.prune_slice:
                return pruned

    def rate_limiter(self, account: str, requests: int, per_seconds: float) -> RateLimiter:
        """A request budget every replica draws from: its window lives in the database."""
        key = (account, requests, per_seconds)
        if key not in self._limiters:
            self._limiters[key] = PostgresRateLimiter(self, account, requests, per_seconds)
        return self._limiters[key]

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")


class PostgresRateLimiter(RateLimiter):
    """A sliding window of request starts kept in PostgreSQL, so all replicas share one limit.

    Each ``acquire`` is one short transaction serialised by an advisory lock on the account, and
    uses the database's clock, so the replicas' own clocks do not matter.
    """

    def __init__(
        self, store: PostgresStore, account: str, requests: int, per_seconds: float
    ) -> None:
        self.store, self.account, self.requests = store, account, requests
        self.window = window_with_margin(per_seconds)
        self._lock = _lock_key("rate", account)
        self._held_until = 0.0  # a hold this replica knows of, spared a round trip
        self._holds: set[asyncio.Task[None]] = set()

    async def acquire(self) -> float:
        started = time.monotonic()
        while True:
            wait = max(self._held_until - time.monotonic(), 0.0)
            if wait == 0:
                async with self.store._transaction() as conn:
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

    async def _hold(self, seconds: float) -> None:
        with contextlib.suppress(Exception):  # best effort: this replica holds regardless
            async with self.store._transaction() as conn:
                await conn.execute(Q_RATE_HOLD, self.account, seconds)


async def _requeue(
    conn: PoolConnectionProxy[asyncpg.Record], target: str, contact_id: str, seq: int, now: float
) -> bool:
    """Queue a full re-write of a contact's state ``seq``; False if it was queued already (then
    the queued write becomes a full one)."""
    if _rowcount(await conn.execute(Q_REQUEUE, target, contact_id, now, now, seq)):
        return True
    await conn.execute(Q_MARK_FULL, target, contact_id)
    return False


def _lock_keys(tenant: str, contacts: Iterable[str]) -> list[int]:
    return sorted({contact_lock(tenant, c) for c in contacts})


def _accepted(status: str, event_id: str) -> Accepted:
    if status == "duplicate":
        return Accepted(event_id, "duplicate", "already received")
    if status == "dropped":
        return Accepted(event_id, "dropped", DROPPED_AFTER_DELETE)
    return Accepted(event_id, "queued")
