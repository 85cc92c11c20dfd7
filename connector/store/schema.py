"""The schema, written once for both stores.

The seven tables (events, queue, links → sync_state, dead_letters, tombstones, targets, attempts)
are the same in SQLite and PostgreSQL; only the types differ: a :class:`Dialect` names them, and
:func:`tables` and :func:`mirror` render the DDL of migration 1 and of the "target as a mirror"
migration for each. What only one store has stays its own: PostgreSQL's append and claim
functions (one round trip each) and its shared rate-limit tables (its migration 2), which is why
the mirror migration is number 2 in SQLite and 3 in PostgreSQL.

Existing databases must open unchanged: the rendered DDL is the DDL each store shipped, and the
migrations keep their numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    serial: str  # an autoincrementing primary key
    big: str  # a 64-bit integer (sequence numbers, counters)
    real: str  # seconds since the epoch
    blob: str
    flag: str  # a boolean column, false by default
    keyed: str  # after a table whose primary key is its whole identity
    churning: str  # after the queue's table: it is updated in place all the time


SQLITE = Dialect(
    serial="INTEGER PRIMARY KEY",
    big="INTEGER",
    real="REAL",
    blob="BLOB",
    flag="INTEGER NOT NULL DEFAULT 0",
    keyed=" WITHOUT ROWID",  # no hidden rowid beside the key
    churning="",
)

POSTGRES = Dialect(
    serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    big="BIGINT",
    real="DOUBLE PRECISION",
    blob="BYTEA",
    flag="BOOLEAN NOT NULL DEFAULT FALSE",
    keyed="",
    # Room on each page lets an update stay on it (HOT), and vacuum comes often, so that rows
    # delivered long ago do not linger as dead tuples.
    churning=(
        " WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05,"
        "\n            autovacuum_analyze_scale_factor = 0.05)"
    ),
)


def tables(d: Dialect) -> str:
    """Migration 1: the seven tables as first shipped (``links`` before it became sync_state)."""
    return f"""
    CREATE TABLE events (
        seq         {d.serial},
        event_id    TEXT NOT NULL,  -- random: no index needed to keep it unique
        tenant      TEXT NOT NULL,
        contact_id  TEXT NOT NULL,
        event_type  TEXT NOT NULL,
        op          TEXT NOT NULL,
        payload     {d.blob} NOT NULL,
        received_at {d.real} NOT NULL,
        dropped     TEXT,
        digest      {d.big} NOT NULL
    );
    CREATE INDEX events_by_digest ON events (digest);

    -- Rows live in insertion order (id), so the oldest rows claimed together share pages.
    CREATE TABLE queue (
        id              {d.serial},
        target          TEXT NOT NULL,
        contact_id      TEXT NOT NULL,
        op              TEXT NOT NULL,
        last_seq        {d.big} NOT NULL,
        head_at         {d.real} NOT NULL,
        events          INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        due_at          {d.real} NOT NULL,
        claim           {d.big},
        claim_seq       {d.big},
        claim_events    INTEGER,
        claim_op        TEXT,
        first_error     TEXT,
        last_error      TEXT,
        first_failed_at {d.real}
    ){d.churning};
    -- Contact first: it also finds every target's row of one contact (prune, trace, replay).
    CREATE UNIQUE INDEX queue_by_contact ON queue (contact_id, target);
    CREATE INDEX queue_by_due ON queue (target, due_at);

    CREATE TABLE links (
        target     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        remote_id  TEXT,
        seq        {d.big} NOT NULL,
        at         {d.real} NOT NULL,
        PRIMARY KEY (target, contact_id)
    ){d.keyed};

    CREATE TABLE dead_letters (
        id              {d.serial},
        target          TEXT NOT NULL,
        contact_id      TEXT NOT NULL,
        op              TEXT NOT NULL,
        seq             {d.big} NOT NULL,
        events          INTEGER NOT NULL,
        attempts        INTEGER NOT NULL,
        first_error     TEXT,
        error           TEXT NOT NULL,
        first_failed_at {d.real},
        failed_at       {d.real} NOT NULL,
        replayed_at     {d.real}
    );
    CREATE INDEX dead_letters_by_target ON dead_letters (target, id);
    CREATE INDEX dead_letters_by_seq ON dead_letters (seq);

    CREATE TABLE tombstones (
        tenant     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seq        {d.big} NOT NULL,
        deleted_at {d.real} NOT NULL,
        PRIMARY KEY (tenant, contact_id)
    ){d.keyed};

    CREATE TABLE targets (
        target        TEXT PRIMARY KEY,
        delivered     {d.big} NOT NULL DEFAULT 0,
        paused_reason TEXT,
        paused_until  {d.real},
        paused_at     {d.real},
        paused_by     TEXT
    );

    CREATE TABLE attempts (
        id         {d.serial},
        target     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seq        {d.big} NOT NULL,
        at         {d.real} NOT NULL,
        outcome    TEXT NOT NULL,
        detail     TEXT,
        remote_id  TEXT,
        mapping    TEXT
    );
    """


def mirror(d: Dialect) -> str:
    """The target as a mirror. Per target × contact, what it holds (``links`` becomes
    ``sync_state``: digests of the values written, the associated company); dedupe compares an
    event with its contact's latest one (found by contact, not by digest); forced re-writes."""
    return f"""
    DROP INDEX events_by_digest;
    CREATE INDEX events_by_contact ON events (tenant, contact_id, seq);
    ALTER TABLE links RENAME TO sync_state;
    ALTER TABLE sync_state ADD COLUMN digests TEXT;  -- JSON {{field: digest}}; NULL: unknown
    ALTER TABLE sync_state ADD COLUMN company_id TEXT;
    ALTER TABLE sync_state ADD COLUMN company_remote_id TEXT;
    ALTER TABLE queue ADD COLUMN full_write {d.flag};
    ALTER TABLE targets ADD COLUMN unchanged {d.big} NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN fields TEXT;
    """


# Migration 3 (SQLite), 4 (PostgreSQL): companies are synced too, each as an object of its own
# (its COMP-… id in the contact_id columns, which hold any Mimeeq object's id). A contact whose
# company had not reached the target yet waits for it: found again when the company arrives.
COMPANIES = """
    CREATE INDEX sync_state_waiting ON sync_state (target, company_id)
        WHERE company_remote_id IS NULL AND company_id IS NOT NULL;
    """


def email_lookup(d: Dialect, random_key: str) -> str:
    """Migration 4 (SQLite), 5 (PostgreSQL): contacts found by e-mail address, kept only as a
    keyed hash (``base.email_hash``) under a random key of the store's own, made here once.

    A row per event carrying an address, appended in order and never updated, with no index but
    its id: a random-keyed index would dirty a page of its own for every contact event (a quarter
    more time per webhook, measured), while a look-up, which is rare, scans a table of narrow rows
    kept ``retention_days`` (a few milliseconds per hundred thousand)."""
    return f"""
    CREATE TABLE contact_emails (
        id         {d.serial},
        email_hash {d.big} NOT NULL,
        tenant     TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        seen_at    {d.real} NOT NULL  -- when the event that carried the address was stored
    );
    CREATE TABLE email_key (key {d.blob} NOT NULL);  -- one row
    INSERT INTO email_key (key) VALUES ({random_key});
    """


# --- PostgreSQL only ---------------------------------------------------------------------------

# How connector_append finds a redelivery: migration 1 looks for any event with the same digest in
# the dedupe window; migration 3 compares with the contact's LATEST event only, so that a change
# back (A, B, A) is stored.
_DEDUPE_BY_DIGEST = (
    "v_original TEXT;",
    """SELECT e.event_id INTO v_original FROM events e
            WHERE e.digest = p_digests[i] AND e.received_at >= p_since
                AND e.tenant = p_tenants[i] AND e.event_type = p_types[i]
                AND e.payload = p_payloads[i]
            ORDER BY e.seq LIMIT 1;
            IF FOUND THEN  -- a redelivery: acknowledge it, keep one
                out_status := 'duplicate';
                out_event_id := v_original;""",
)
_DEDUPE_BY_LATEST = (
    "v_head RECORD;",
    """SELECT e.event_id, e.event_type, e.digest, e.received_at, e.seq INTO v_head
            FROM events e WHERE e.tenant = p_tenants[i] AND e.contact_id = p_contacts[i]
            ORDER BY e.seq DESC LIMIT 1;
            IF FOUND AND v_head.digest = p_digests[i] AND v_head.event_type = p_types[i]
                AND v_head.received_at >= p_since
                AND (SELECT e.payload FROM events e WHERE e.seq = v_head.seq) = p_payloads[i]
            THEN  -- a redelivery of the latest event: acknowledge it, keep one
                out_status := 'duplicate';
                out_event_id := v_head.event_id;""",
)


def _append_function(create: str, dedupe: tuple[str, str]) -> str:
    declare, find_duplicate = dedupe
    return f"""
    {create} connector_append(
        p_event_ids TEXT[], p_tenants TEXT[], p_contacts TEXT[], p_types TEXT[], p_ops TEXT[],
        p_payloads BYTEA[], p_digests BIGINT[], p_targets TEXT[], p_locks BIGINT[],
        p_now DOUBLE PRECISION, p_since DOUBLE PRECISION, p_dropped TEXT
    ) RETURNS TABLE (out_status TEXT, out_event_id TEXT)
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
    DECLARE
        k BIGINT;
        v_seq BIGINT;
        {declare}
        v_dropped TEXT;
    BEGIN
        FOREACH k IN ARRAY p_locks LOOP
            PERFORM pg_advisory_xact_lock(k);
        END LOOP;
        -- From here on every statement sees what the transactions we waited for committed.
        FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
            {find_duplicate}
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
"""


@dataclass(frozen=True)
class _ClaimShape:
    """What connector_claim returns: migration 3 adds the sync state and the full-write flag."""

    returns: str
    declare: str
    returning: str
    aggregate: str
    into: str
    select: str
    unnest: str
    join: str


_CLAIM_LINKS = _ClaimShape(
    returns="""contact_id TEXT, op TEXT, seq BIGINT, attempts INTEGER, events INTEGER,
                     event_id TEXT, event_type TEXT, payload BYTEA, remote_id TEXT""",
    declare="",
    returning="",
    aggregate="",
    into="",
    select="""e.event_id, e.event_type,
            e.payload,
            (SELECT l.remote_id FROM links l
             WHERE l.target = p_target AND l.contact_id = c.contact_id)""",
    unnest="",
    join="",
)
_CLAIM_SYNC_STATE = _ClaimShape(
    returns="""contact_id TEXT, op TEXT, seq BIGINT, attempts INTEGER, events INTEGER,
                     full_write BOOLEAN, event_id TEXT, event_type TEXT, payload BYTEA,
                     synced BOOLEAN, remote_id TEXT, digests TEXT, company_id TEXT,
                     company_remote_id TEXT""",
    declare="\n        v_full BOOLEAN[];",
    returning=", q.full_write",
    aggregate=", array_agg(c.full_write)",
    into=", v_full",
    select="""c.full_write, e.event_id,
            e.event_type, e.payload, s.target IS NOT NULL, s.remote_id, s.digests, s.company_id,
            s.company_remote_id""",
    unnest=", full_write",
    join="\n        LEFT JOIN sync_state s ON s.target = p_target AND s.contact_id = c.contact_id",
)


def _claim_function(shape: _ClaimShape) -> str:
    s = shape
    return f"""CREATE FUNCTION connector_claim(
        p_target TEXT, p_token BIGINT, p_lease_until DOUBLE PRECISION, p_now DOUBLE PRECISION,
        p_limit INTEGER
    ) RETURNS TABLE ({s.returns})
    LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_sort = off
    SET enable_bitmapscan = off AS $fn$
    #variable_conflict use_column
    DECLARE
        v_contacts TEXT[];
        v_ops TEXT[];
        v_seqs BIGINT[];
        v_attempts INTEGER[];
        v_events INTEGER[];{s.declare}
    BEGIN
        WITH claimed AS (
            UPDATE queue q SET claim = p_token, claim_seq = q.last_seq,
                claim_events = q.events, claim_op = q.op, due_at = p_lease_until
            FROM (SELECT id FROM queue WHERE target = p_target AND due_at <= p_now
                  ORDER BY due_at LIMIT p_limit
                  FOR UPDATE SKIP LOCKED) AS picked
            WHERE q.id = picked.id
            RETURNING q.contact_id, q.op, q.last_seq, q.attempts, q.events{s.returning}
        )
        SELECT array_agg(c.contact_id), array_agg(c.op), array_agg(c.last_seq),
            array_agg(c.attempts), array_agg(c.events){s.aggregate}
        INTO v_contacts, v_ops, v_seqs, v_attempts, v_events{s.into}
        FROM claimed c;
        RETURN QUERY  -- one index lookup per row, however many rows the tables hold
        SELECT c.contact_id, c.op, c.seq, c.attempts, c.events, {s.select}
        FROM unnest(v_contacts, v_ops, v_seqs, v_attempts, v_events{s.into})
            AS c (contact_id, op, seq, attempts, events{s.unnest})
        CROSS JOIN LATERAL (SELECT e.event_id, e.event_type, e.payload FROM events e
                            WHERE e.seq = c.seq) AS e{s.join};
    END
    $fn$;
"""


# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
SQLITE_MIGRATIONS: list[str] = [
    tables(SQLITE),
    mirror(SQLITE),
    COMPANIES,
    email_lookup(SQLITE, "randomblob(32)"),
]

# Each entry migrates the schema from version i to i + 1 (a row in schema_migrations).
POSTGRES_MIGRATIONS: list[str] = [
    tables(POSTGRES)
    # Store events and queue them, in one round trip. The caller passes one array element per
    # event, the advisory lock keys of their contacts (sorted, so that two transactions never
    # wait for each other's locks in a cycle) and the start of the dedupe window.
    + _append_function("CREATE FUNCTION", _DEDUPE_BY_DIGEST)
    # Lease up to p_limit due rows of a target, oldest first, and return them with their
    # state. Rows another replica holds locked right now are skipped, not waited for. The plan
    # must walk queue_by_due in order whatever the statistics say (a queue grows from nothing to
    # a backlog faster than they follow), hence no sorting. The states are read by a statement
    # of their own: a row that an append updated after the first statement took its snapshot
    # is locked (and returned) in its new version, pointing at that append's event, which the
    # snapshot cannot see.
    + "\n    "
    + _claim_function(_CLAIM_LINKS),
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
    # 3: the target as a mirror (SQLite's migration 2), with the functions to match.
    mirror(POSTGRES)
    + _append_function("CREATE OR REPLACE FUNCTION", _DEDUPE_BY_LATEST)
    + """
    DROP FUNCTION connector_claim(TEXT, BIGINT, DOUBLE PRECISION, DOUBLE PRECISION, INTEGER);
    """
    + _claim_function(_CLAIM_SYNC_STATE),
    COMPANIES,
    # 5: 32 bytes of two random UUIDs (built in since PostgreSQL 13, unlike pgcrypto's
    # gen_random_bytes): 244 random bits, the version and variant digits being fixed.
    email_lookup(
        POSTGRES,
        "decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')",
    ),
]
