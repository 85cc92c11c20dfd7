"""The store contract: what every store implementation must do.

Every test taking the ``store`` (or ``backend``) fixture runs against SQLite and PostgreSQL; each
PostgreSQL test gets a fresh schema of its own, dropped afterwards. The PostgreSQL server is
``$CONNECTOR_TEST_POSTGRES`` (default below). Without one the PostgreSQL tests are skipped, with
the reason, except under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from connector.errors import ConfigError
from connector.store.base import (
    ClaimedItem,
    DeadLetter,
    DeadLetterPick,
    NewEvent,
    Relink,
    Result,
    Store,
    SyncState,
    email_hash,
)
from connector.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from connector.store.postgres import PostgresStore
from connector.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from connector.store.sqlite import SQLiteStore
from testkit.payloads import write_config
from testkit.postgres import postgres_schema
from testkit.store import T, event
from testkit.waiting import eventually

# --- the two backends ----------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str  # as store.url in a config file
    make: Callable[..., Store]  # another store on the same data (not opened yet)
    set_version: Callable[[int], Awaitable[None]]  # write a schema version (tests of refusal)
    # The schema of the release before sync state, with one event and one link row in it.
    create_version_1: Callable[..., Awaitable[None]]
    create_version: Callable[[int], Awaitable[None]]  # the schema as migration n left it
    fetch: Callable[[str], Awaitable[list[tuple[Any, ...]]]]  # rows of a query, read directly


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "store.db"

        async def sqlite_version(version: int) -> None:
            with sqlite3.connect(path) as db:
                db.execute(f"PRAGMA user_version = {version}")

        async def sqlite_version_1(event_row: tuple[Any, ...], link_row: tuple[Any, ...]) -> None:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.executescript(SQLITE_MIGRATIONS[0])
                db.execute(f"INSERT INTO events VALUES ({','.join('?' * len(event_row))})",
                           event_row)  # fmt: skip
                db.execute("INSERT INTO links VALUES (?, ?, ?, ?, ?)", link_row)
                db.execute("PRAGMA user_version = 1")
                db.commit()

        async def sqlite_create(version: int) -> None:
            with contextlib.closing(sqlite3.connect(path)) as db:
                for migration in SQLITE_MIGRATIONS[:version]:
                    db.executescript(migration)
                db.execute(f"PRAGMA user_version = {version}")

        async def sqlite_fetch(sql: str) -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(path)) as db:
                return db.execute(sql).fetchall()

        yield Backend(
            "sqlite",
            f"sqlite:///{path}",
            lambda **options: SQLiteStore(path, **options),
            sqlite_version,
            sqlite_version_1,
            sqlite_create,
            sqlite_fetch,
        )
        return
    async with postgres_schema() as url:

        async def postgres_version(version: int) -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)", version
                )
            finally:
                await conn.close()

        async def postgres_version_1(event_row: tuple[Any, ...], link_row: tuple[Any, ...]) -> None:
            conn = await asyncpg.connect(url)
            try:
                for version in (1, 2):  # version 2 added rate limits, before sync state
                    await conn.execute(POSTGRES_MIGRATIONS[version - 1])
                await conn.execute(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                    " applied_at DOUBLE PRECISION NOT NULL)"
                )
                await conn.execute("INSERT INTO schema_migrations VALUES (1, 0), (2, 0)")
                await conn.execute(
                    "INSERT INTO events OVERRIDING SYSTEM VALUE VALUES"
                    " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    *event_row,
                )
                await conn.execute("INSERT INTO links VALUES ($1, $2, $3, $4, $5)", *link_row)
            finally:
                await conn.close()

        async def postgres_create(version: int) -> None:
            conn = await asyncpg.connect(url)
            try:
                for migration in POSTGRES_MIGRATIONS[:version]:
                    await conn.execute(migration)
                await conn.execute(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                    " applied_at DOUBLE PRECISION NOT NULL)"
                )
                await conn.executemany(
                    "INSERT INTO schema_migrations VALUES ($1, 0)",
                    [(n,) for n in range(1, version + 1)],
                )
            finally:
                await conn.close()

        async def postgres_fetch(sql: str) -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(url)
            try:
                return [tuple(row) for row in await conn.fetch(sql)]
            finally:
                await conn.close()

        yield Backend(
            "postgres",
            url,
            lambda **options: PostgresStore(url, **options),
            postgres_version,
            postgres_version_1,
            postgres_create,
            postgres_fetch,
        )


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_appended_event_is_claimed_with_its_payload(store: Store) -> None:
    accepted = await store.append(event("c1", body=b'{"id": "c1"}'))
    assert accepted.status == "queued" and len(accepted.event_id) == 36
    claim = await store.claim(T, 10, 60)
    assert [(i.contact_id, i.op, i.payload, i.event_id) for i in claim.items] == [
        ("c1", "upsert", b'{"id": "c1"}', accepted.event_id)
    ]
    assert claim.items[0].attempts == 0 and claim.items[0].remote_id is None


async def test_events_of_one_contact_coalesce_into_the_latest_state(store: Store) -> None:
    for n in range(3):
        await store.append(event("c1", body=b'{"n": %d}' % n))
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.payload == b'{"n": 2}' and item.events == 3


async def test_a_delete_wins_over_earlier_upserts(store: Store) -> None:
    await store.append(event("c1"))
    await store.append(event("c1"))
    await store.append(event("c1", "delete"))
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.op == "delete" and item.events == 3


async def test_a_late_update_after_a_delete_is_dropped(store: Store) -> None:
    await store.append(event("c1", "delete"))
    late = await store.append(event("c1"))
    assert late.status == "dropped" and "deleted" in (late.reason or "")
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.op == "delete" and item.events == 1


async def test_contacts_are_claimed_oldest_first(store: Store) -> None:
    for contact in ("a", "b", "c", "d"):
        await store.append(event(contact))
    first = await store.claim(T, 2, 60)
    second = await store.claim(T, 10, 60)
    assert [i.contact_id for i in first.items] == ["a", "b"]
    assert [i.contact_id for i in second.items] == ["c", "d"]


async def test_a_claimed_contact_is_never_claimed_twice(store: Store) -> None:
    await store.append(event("c1", body=b"1"))
    first = await store.claim(T, 10, 60)
    await store.append(event("c1", body=b"2"))  # arrives while the first push runs
    await store.append(event("c2"))
    second = await store.claim(T, 10, 60)
    assert [i.contact_id for i in second.items] == ["c2"]
    await store.complete(first, [Result("c1", "delivered", remote_id="r1")])
    (again,) = (await store.claim(T, 10, 60)).items
    assert (again.contact_id, again.payload, again.events, again.remote_id) == ("c1", b"2", 1, "r1")


async def test_delivered_rows_leave_the_queue_and_are_counted(store: Store) -> None:
    for _ in range(3):
        await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "delivered", remote_id="42")])
    assert (await store.claim(T, 10, 60)).items == []
    (status,) = await store.status()
    assert (status.pending, status.delivered, status.dead) == (0, 3, 0)


async def test_a_retry_waits_until_due_and_counts_the_attempt(store: Store) -> None:
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    due = time.time() + 1.0
    await store.complete(claim, [Result("c1", "retry", error="503", due_at=due)])
    assert (await store.claim(T, 10, 60)).items == []
    next_due = await store.next_due(T)
    assert next_due == pytest.approx(due)

    async def due_again() -> list[ClaimedItem]:
        items = (await store.claim(T, 10, 60)).items
        assert not items or time.time() >= due, "claimed before it was due"
        return items

    (item,) = await eventually(due_again)
    assert item.attempts == 1


async def test_a_wait_that_is_not_a_failure_does_not_count(store: Store) -> None:
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "retry", error="429", count_attempt=False)])
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.attempts == 0


async def test_dead_records_go_to_the_dead_letter_store(store: Store) -> None:
    await store.append(event("c1"))
    await store.append(event("c2"))
    claim = await store.claim(T, 10, 60)
    await store.complete(
        claim,
        [
            Result("c1", "retry", error="first try failed", due_at=time.time()),
            Result("c2", "release"),
        ],
    )
    claim = await store.claim(T, 10, 60)
    await store.complete(
        claim,
        [Result("c1", "dead", error="Property email is invalid"), Result("c2", "delivered")],
    )
    (status,) = await store.status()
    assert (status.pending, status.dead, status.delivered) == (0, 1, 1)
    await store.close()
    await store.open()  # on disk, not only in this process
    (letter,) = await store.dead_letters()
    assert (letter.contact_id, letter.attempts, letter.first_error, letter.error) == (
        "c1",
        2,
        "first try failed",
        "Property email is invalid",
    )


async def test_newer_events_survive_a_dead_letter(store: Store) -> None:
    await store.append(event("c1", body=b"bad"))
    claim = await store.claim(T, 10, 60)
    await store.append(event("c1", body=b"fixed"))
    await store.complete(claim, [Result("c1", "dead", error="invalid")])
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.payload == b"fixed" and item.attempts == 0


async def test_released_items_keep_their_attempts(store: Store) -> None:
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "release")])
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.attempts == 0


async def test_results_for_a_lost_lease_are_ignored(store: Store) -> None:
    await store.append(event("c1"))
    stale = await store.claim(T, 10, 0.01)
    await asyncio.sleep(0.02)
    fresh = await store.claim(T, 10, 60)  # the lease ran out: someone else took it
    assert [i.contact_id for i in fresh.items] == ["c1"]
    await store.complete(stale, [Result("c1", "delivered")])
    (status,) = await store.status()
    assert (status.pending, status.delivered) == (1, 0)


async def test_a_renewed_claim_outlives_its_first_lease(store: Store) -> None:
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 0.05)
    assert await store.renew(claim, 60)
    await asyncio.sleep(0.1)  # past the first lease: the renewal holds it
    assert (await store.claim(T, 10, 60)).items == []
    await store.complete(claim, [Result("c1", "delivered")])
    (status,) = await store.status()
    assert (status.pending, status.delivered) == (0, 1)


async def test_a_lost_claim_cannot_be_renewed(store: Store) -> None:
    await store.append(event("c1"))
    stale = await store.claim(T, 10, 0.01)
    await asyncio.sleep(0.02)
    fresh = await store.claim(T, 10, 60)
    assert not await store.renew(stale, 60)  # the contact is the other claim's now
    assert await store.renew(fresh, 60)


async def test_recover_releases_claims_of_a_crashed_process(sqlite_store: SQLiteStore) -> None:
    # One process per SQLite file: every claim left at start belongs to a process that is gone.
    # (PostgreSQL is shared: see test_postgres for what recover() does there.)
    store = sqlite_store
    await store.append(event("c1"))
    await store.claim(T, 10, 600)
    assert (await store.claim(T, 10, 600)).items == []
    assert await store.recover() == 1
    assert [i.contact_id for i in (await store.claim(T, 10, 600)).items] == ["c1"]


async def test_each_target_has_its_own_queue(store: Store) -> None:
    await store.append(event("c1", "upsert", None, "demo/a", "demo/b"))
    a = await store.claim("demo/a", 10, 60)
    await store.complete(a, [Result("c1", "dead", error="no")])
    assert [i.contact_id for i in (await store.claim("demo/b", 10, 60)).items] == ["c1"]


async def test_status_reports_pending_oldest_and_pause(store: Store) -> None:
    before = time.time()
    await store.append(event("c1"))
    await store.append(event("c1"))
    await store.append(event("c2"))
    await store.set_paused(T, "401 Unauthorized", None)
    (status,) = await store.status()
    assert (status.pending, status.contacts) == (3, 2)
    assert status.oldest_pending_at is not None and status.oldest_pending_at >= before
    assert status.paused and status.paused_reason == "401 Unauthorized"
    await store.set_paused(T, None, None)
    assert not (await store.status())[0].paused


async def test_committed_events_survive_a_reopen(backend: Backend) -> None:
    store = backend.make()
    await store.open()
    await asyncio.gather(*(store.append(event(f"c{n}")) for n in range(300)))
    await store.close()
    store = backend.make()
    await store.open()
    try:
        assert len((await store.claim(T, 1000, 60)).items) == 300
    finally:
        await store.close()


async def test_concurrent_appends_share_commits(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    commits = 0
    transaction = store._transaction

    async def counting(batch):
        nonlocal commits
        commits += 1
        return await transaction(batch)

    store._transaction = counting
    await asyncio.gather(*(store.append(event(f"c{n}")) for n in range(500)))
    assert commits < 100


async def test_one_failing_operation_does_not_fail_its_group(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results = await asyncio.gather(
        *(store.append(event(f"c{n}")) for n in range(20)),
        store._call(broken),
        return_exceptions=True,
    )
    assert isinstance(results[-1], sqlite3.OperationalError)
    assert all(r.status == "queued" for r in results[:-1])
    assert len((await store.claim(T, 100, 60)).items) == 20


async def test_a_second_server_cannot_open_the_same_file(tmp_path: Path) -> None:
    from connector.errors import ConfigError

    first = SQLiteStore(tmp_path / "s.db", exclusive=True)
    await first.open()
    try:
        with pytest.raises(ConfigError, match="in use by another connector"):
            await SQLiteStore(tmp_path / "s.db", exclusive=True).open()
    finally:
        await first.close()


async def test_an_identical_redelivery_is_acknowledged_not_stored_twice(store: Store) -> None:
    first = await store.append(event("c1", body=b'{"same": 1}'))
    again = await store.append(event("c1", body=b'{"same": 1}'))
    assert again.status == "duplicate" and again.event_id == first.event_id
    other_event = await store.append(
        NewEvent("demo", "contact-created", "c1", "upsert", b'{"same": 1}', (T,))
    )
    other_tenant = await store.append(
        NewEvent("acme", "contact-updated", "c1", "upsert", b'{"same": 1}', ("acme/crm",))
    )
    assert other_event.status == other_tenant.status == "queued"
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.events == 2  # the redelivery did not count


async def test_duplicates_are_recognised_within_a_group_and_only_within_the_window(
    backend: Backend,
) -> None:
    store = backend.make(dedupe_window=0.2)
    await store.open()
    try:
        same = [event("c1", body=b"{}"), event("c1", body=b"{}")]
        answers = await store.append_many(same)
        assert [a.status for a in answers] == ["queued", "duplicate"]
        await asyncio.sleep(0.25)
        assert (await store.append(event("c1", body=b"{}"))).status == "queued"
    finally:
        await store.close()


async def test_operator_pause_is_recorded_with_who_paused(store: Store) -> None:
    await store.set_paused(T, "paused by an operator: migration", None, by="operator")
    state = await store.target_state(T)
    assert (state.paused_reason, state.paused_by) == (
        "paused by an operator: migration",
        "operator",
    )
    await store.set_paused(T, None, None, by="operator")
    assert (await store.target_state(T)).paused_reason is None
    assert (await store.target_state("demo/never-seen")).paused_reason is None


async def dead(store: Store, contact: str, body: bytes, error: str = "refused") -> None:
    await store.append(event(contact, body=body))
    claim = await store.claim(T, 100, 60)
    await store.complete(claim, [Result(i.contact_id, "dead", error=error) for i in claim.items])


async def test_dead_letters_can_be_listed_and_shown(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}', "Property email is invalid")
    await dead(store, "c2", b'{"v": 2}')
    listed = await store.dead_letters()
    assert [(d.contact_id, d.error, d.attempts) for d in listed] == [
        ("c1", "Property email is invalid", 1),
        ("c2", "refused", 1),
    ]
    assert listed[0].payload is None and listed[0].event_type == "contact-updated"
    shown = await store.dead_letter(listed[0].id)
    assert shown is not None and shown.payload == b'{"v": 1}'
    assert await store.dead_letters(["demo/other"]) == []
    assert await store.dead_letter(999) is None


async def test_replay_queues_the_latest_state_once(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}')
    await dead(store, "c1", b'{"v": 2}')  # a newer update died too
    await dead(store, "c2", b'{"v": 3}')
    c1_first, c1_second, c2 = await store.dead_letters()
    report = await store.replay([c1_first.id, c1_second.id, 42], [T])
    assert [(r.contact_id, r.action) for r in report] == [
        ("c1", "queued"),
        ("c1", "already queued"),
        ("", "not found"),
    ]
    (item,) = (await store.claim(T, 10, 60)).items
    assert (item.contact_id, item.payload) == ("c1", b'{"v": 2}')
    assert [d.id for d in await store.dead_letters()] == [c2.id]  # replayed ones leave the list
    (status,) = await store.status()
    assert status.dead == 1
    assert [r.action for r in await store.replay(None, ["demo/other"], all_of=True)] == []
    assert [r.action for r in await store.replay([c2.id], ["demo/other"])] == ["unknown target"]


async def test_replay_sends_a_delete_when_the_contact_was_deleted_since(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}')
    await store.append(event("c1", "delete"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "delivered")])
    await store.append(event("c1", body=b'{"late": true}'))  # dropped: deleted earlier
    assert len(await store.dead_letters()) == 1
    await store.replay(None, [T], all_of=True)
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.op == "delete"


async def test_purge_removes_dead_letters(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}')
    await dead(store, "c2", b'{"v": 2}')
    first, _ = await store.dead_letters()
    assert await store.purge(DeadLetterPick(ids=[first.id])) == 1
    assert await store.purge(DeadLetterPick(targets=[T], failed_before=0)) == 0  # none before 1970
    assert await store.purge(DeadLetterPick(ids=[])) == 0
    assert await store.purge(DeadLetterPick(targets=[T])) == 1
    assert await store.dead_letters() == []


async def test_trace_tells_the_story_of_a_contact(store: Store) -> None:
    created = await store.append(event("c1", body=b'{"v": 1}'))
    claim = await store.claim(T, 10, 60)
    await store.complete(
        claim, [Result("c1", "delivered", remote_id="hs-7", mapping="mappings/x.yaml")]
    )
    await store.append(event("c1", "delete"))
    late = await store.append(event("c1", body=b'{"v": 3}'))
    found = await store.trace("c1")
    assert found.events[0].event_id == created.event_id
    assert [e.dropped is not None for e in found.events] == [False, False, True]
    assert [(a.outcome, a.remote_id, a.mapping) for a in found.attempts] == [
        ("delivered", "hs-7", "mappings/x.yaml")
    ]
    assert found.pending == {T: ("delete", 0, pytest.approx(time.time(), abs=5), None)}
    assert found.remote_ids == {T: "hs-7"}
    assert late.status == "dropped"
    assert (await store.trace("nobody")).events == []


async def test_prune_keeps_what_is_still_needed(store: Store) -> None:
    await store.append(event("delivered", body=b'{"v": 0}'))
    await store.append(event("delivered", body=b'{"v": 1}'))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("delivered", "delivered")])
    await dead(store, "dead", b'{"v": 2}')
    await store.append(event("pending", body=b'{"v": 3}'))
    await store.append(event("gone", body=b'{"v": 4}'))
    await store.append(event("gone", "delete"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result(i.contact_id, "delivered") for i in claim.items])
    await asyncio.sleep(0.05)
    assert await store.prune(retention=3600) == {"events": 0, "attempts": 0, "contact_emails": 0}
    pruned = await store.prune(retention=0.01)
    assert pruned == {"events": 3, "attempts": 4, "contact_emails": 0}
    # A live contact's latest state stays (a forced re-write maps it again); older ones go.
    assert [e.payload for e in (await store.trace("delivered")).events] == [b'{"v": 1}']
    assert (await store.trace("gone")).events == []  # deleted: nothing of it is kept
    assert len((await store.trace("dead")).events) == 1  # a dead letter still needs it
    assert len((await store.trace("pending")).events) == 1  # so does the queue
    (letter,) = await store.dead_letters()
    assert (await store.dead_letter(letter.id)).payload == b'{"v": 2}'  # type: ignore[union-attr]
    late = await store.append(event("gone", body=b'{"v": 5}'))
    assert late.status == "dropped"  # the tombstone outlives the events


def letters_of(letters: list[DeadLetter]) -> list[str]:
    return [d.contact_id for d in letters]


async def test_dead_letters_are_filtered_by_the_targets_message_and_age(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}', "Property EMAIL is invalid")
    await dead(store, "c2", b'{"v": 2}', "rate limit: 100% used")
    await dead(store, "c3", b'{"v": 3}', "rate limit: 100x_used")
    c1, _, c3 = await store.dead_letters()

    def listed(**pick: Any) -> Awaitable[list[DeadLetter]]:
        return store.dead_letters(pick=DeadLetterPick(**pick))

    assert letters_of(await listed(error_contains="email is")) == ["c1"]  # whatever the case
    assert letters_of(await listed(error_contains="100%")) == ["c2"]  # % is no wildcard
    assert letters_of(await listed(error_contains="100_")) == []  # nor is _
    assert letters_of(await listed(error_contains="x_U")) == ["c3"]
    assert letters_of(await listed(error_contains="RATE LIMIT")) == ["c2", "c3"]
    assert letters_of(await store.dead_letters(limit=1, pick=DeadLetterPick(
        error_contains="rate limit"))) == ["c2"]  # fmt: skip
    assert await listed(failed_before=0) == []  # none before 1970
    assert letters_of(await listed(failed_before=time.time() + 1)) == ["c1", "c2", "c3"]
    assert letters_of(await listed(after_id=c1.id)) == ["c2", "c3"]
    await store.replay([c3.id], [T])
    assert letters_of(await listed(error_contains="rate")) == ["c2"]  # the list: not replayed
    assert letters_of(await listed()) == ["c1", "c2"]


async def test_dead_letters_are_filtered_by_targets_and_ids_together(store: Store) -> None:
    other = "demo/other"
    await dead(store, "c1", b'{"v": 1}')
    await store.append(event("c2", "upsert", b'{"v": 2}', other))
    claim = await store.claim(other, 10, 60)
    await store.complete(claim, [Result("c2", "dead", error="refused")])
    c1, c2 = await store.dead_letters()
    both = [c1.id, c2.id]
    pick = DeadLetterPick(ids=both, targets=[T])
    assert letters_of(await store.dead_letters(pick=pick)) == ["c1"]
    assert letters_of(await store.dead_letters([other], pick=DeadLetterPick(ids=both))) == ["c2"]
    assert await store.dead_letters([T], 10, pick=DeadLetterPick(ids=[c2.id])) == []
    assert await store.dead_letters(pick=DeadLetterPick(ids=[])) == []
    assert letters_of(await store.dead_letters([T, other], 10)) == ["c1", "c2"]


async def test_purge_takes_the_dead_letters_whose_message_matches(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}', "Rate limit hit")
    await dead(store, "c2", b'{"v": 2}', "invalid email")
    await dead(store, "c3", b'{"v": 3}', "rate LIMIT again")
    first = (await store.dead_letters())[0]
    await store.replay([first.id], [T])
    assert await store.purge(DeadLetterPick(error_contains="limit", not_replayed=True)) == 1
    assert await store.purge(DeadLetterPick(error_contains="%")) == 0
    assert await store.purge(DeadLetterPick(error_contains="RATE")) == 1  # the replayed one too
    assert letters_of(await store.dead_letters()) == ["c2"]


# --- contacts found by e-mail address ----------------------------------------------------------


def contact(contact_id: str, *emails: str, tenant: str = "demo") -> NewEvent:
    """A contact event carrying these addresses (a distinct body each time)."""
    return replace(event(contact_id), tenant=tenant, emails=emails)


async def test_contacts_are_found_by_their_email_address(store: Store) -> None:
    await store.append(contact("c1", "Ann.Smith@Example.com"))
    await asyncio.sleep(0.01)  # seen later
    shared = contact("c2", "ann.smith@example.com", "bob@example.com")
    await store.append(shared)
    await store.append(contact("c3"))
    assert await store.contacts_by_email("  ANN.SMITH@example.COM\t") == [
        ("demo", "c2"), ("demo", "c1"),
    ]  # fmt: skip
    assert await store.contacts_by_email("Bob@Example.com") == [("demo", "c2")]
    assert await store.contacts_by_email("nobody@example.com") == []
    assert await store.contacts_by_email("") == []
    assert await store.contacts_by_email("   ") == []
    await asyncio.sleep(0.01)
    await store.append_many(
        [contact("c1", "ann.smith@example.com"), contact("x", "ann.smith@example.com",
                                                         tenant="acme")]
    )  # fmt: skip
    assert (await store.append(shared)).status == "duplicate"  # a redelivery: nothing new seen
    found = await store.contacts_by_email("ann.smith@example.com")
    assert found[2:] == [("demo", "c2")]
    assert sorted(found[:2]) == [("acme", "x"), ("demo", "c1")]


async def test_a_batch_may_carry_one_address_several_times(store: Store) -> None:
    answers = await store.append_many(
        [contact("c1", "a@example.com", "A@example.com"), contact("c1", "a@example.com")]
    )
    assert [a.status for a in answers] == ["queued", "queued"]
    assert await store.contacts_by_email("a@example.com") == [("demo", "c1")]


async def test_a_dropped_event_still_tells_its_addresses(store: Store) -> None:
    await store.append(event("c1", "delete"))
    late = await store.append(contact("c1", "late@example.com"))
    assert late.status == "dropped"
    assert await store.contacts_by_email("late@example.com") == [("demo", "c1")]


async def test_the_email_lookup_keeps_no_address_in_clear(store: Store, backend: Backend) -> None:
    address = "Carol.Jones@Example.com"
    await store.append(contact("c1", address))
    (row,) = await backend.fetch("SELECT * FROM contact_emails")
    ((key,),) = await backend.fetch("SELECT key FROM email_key")
    key = bytes(key)
    assert len(key) == 32
    for clear in (address, address.lower(), address.casefold()):
        assert clear not in repr(row)
        plain = int.from_bytes(hashlib.sha256(clear.encode()).digest()[:8], "big", signed=True)
        assert plain not in row  # keyed, not a plain digest
    assert email_hash(key, address) in row and "c1" in row


async def test_retention_forgets_addresses_no_event_carried_since(store: Store) -> None:
    await store.append(contact("old", "old@example.com"))
    await store.append(contact("kept", "kept@example.com"))
    await asyncio.sleep(0.3)
    await store.append(contact("kept", "kept@example.com"))  # seen again: lives on
    assert (await store.prune(retention=3600))["contact_emails"] == 0
    assert (await store.prune(retention=0.2))["contact_emails"] == 2  # a row per event
    assert await store.contacts_by_email("old@example.com") == []
    assert await store.contacts_by_email("kept@example.com") == [("demo", "kept")]


async def test_a_store_from_before_the_email_lookup_gains_it(backend: Backend) -> None:
    previous = latest_version(backend) - 1
    await backend.create_version(previous)
    store = backend.make(schema="as-is")
    await store.open()
    try:
        assert (await store.append(event("c0"))).status == "queued"
        assert await store.contacts_by_email("a@example.com") == []
        assert await store.migrate() == (previous, previous + 1)
        assert (await store.append(contact("c1", "a@example.com"))).status == "queued"
        assert await store.contacts_by_email("A@example.com") == [("demo", "c1")]
        (item,) = (await store.claim(T, 1, 60)).items
        assert item.contact_id == "c0"  # what was queued before is still there
    finally:
        await store.close()


# --- the target as a mirror: dedupe, sync state, forced re-writes ------------------------------


async def test_a_change_back_is_a_change_not_a_redelivery(store: Store) -> None:
    answers = [
        await store.append(event("c1", body=body)) for body in (b'{"s": "A"}', b'{"s": "B"}')
    ]
    back = await store.append(event("c1", body=b'{"s": "A"}'))
    assert [a.status for a in [*answers, back]] == ["queued", "queued", "queued"]
    again = await store.append(event("c1", body=b'{"s": "A"}'))  # the latest, redelivered
    assert (again.status, again.event_id) == ("duplicate", back.event_id)
    (item,) = (await store.claim(T, 10, 60)).items
    assert (item.payload, item.events) == (b'{"s": "A"}', 3)


async def test_sync_state_is_recorded_after_a_confirmed_write(store: Store) -> None:
    await store.append(event("c1"))
    (item,) = (claim := await store.claim(T, 10, 60)).items
    assert item.state is None and not item.full
    state = SyncState("hs-1", {"email": "d1", "firstname": "d2"}, "COMP-1", "hs-c1")
    await store.complete(claim, [Result("c1", "delivered", remote_id="hs-1", state=state)])

    await store.append(event("c1"))
    (item,) = (claim := await store.claim(T, 10, 60)).items
    assert (item.state, item.remote_id) == (state, "hs-1")
    # Nothing mapped changed: no call, counted apart, and the state stays.
    await store.complete(claim, [Result("c1", "unchanged", fields='{"unchanged": ["email"]}')])
    (status,) = await store.status()
    assert (status.delivered, status.unchanged, status.pending) == (1, 1, 0)
    assert [a.outcome for a in (await store.trace("c1")).attempts] == ["delivered", "unchanged"]
    assert (await store.trace("c1")).attempts[1].fields == '{"unchanged": ["email"]}'

    await store.append(event("c1"))
    (item,) = (claim := await store.claim(T, 10, 60)).items
    assert item.state == state
    await store.complete(claim, [Result("c1", "retry", error="503", due_at=0)])
    (item,) = (claim := await store.claim(T, 10, 60)).items
    assert item.state == state  # a failed write changes nothing of it

    await store.complete(claim, [Result("c1", "dead", error="refused")])
    await store.append(event("c1", "delete"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "delivered")])
    assert (await store.trace("c1")).remote_ids == {}  # a deleted contact is forgotten


async def test_a_write_without_a_new_id_keeps_the_known_one(store: Store) -> None:
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "delivered", remote_id="hs-1")])
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "delivered", state=SyncState(None, {}))])
    await store.append(event("c1"))
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.state == SyncState("hs-1", {}) and item.remote_id == "hs-1"


async def test_resync_queues_a_full_rewrite_of_live_contacts(store: Store) -> None:
    for contact in ("c1", "c2", "c3"):
        await store.append(event(contact, body=b'{"%s": 1}' % contact.encode()))
    await store.append(event("c1", body=b'{"c1": 2}'))
    claim = await store.claim(T, 10, 60)
    done = SyncState("hs", {"x": "d"})
    await store.complete(
        claim, [Result(i.contact_id, "delivered", state=done) for i in claim.items]
    )
    await store.append(event("c3", "delete"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c3", "delivered")])
    await store.append(event("c2", body=b'{"c2": 2}'))  # queued already: marked, not doubled

    assert await store.resync(T, None) == 2  # c1 and c2; c3 was deleted
    items = {i.contact_id: i for i in (await store.claim(T, 10, 60)).items}
    assert set(items) == {"c1", "c2"}
    assert all(i.full and i.state == done for i in items.values())
    assert (items["c1"].payload, items["c2"].payload) == (b'{"c1": 2}', b'{"c2": 2}')
    assert await store.resync(T, ["c3", "nobody"]) == 0
    assert await store.resync("demo/other", None) == 0


async def deliver_all(store: Store, states: dict[str, SyncState]) -> None:
    """Claim what is queued and record each as delivered with its state."""
    claim = await store.claim(T, 100, 60)
    results = [Result(i.contact_id, "delivered", state=states[i.contact_id]) for i in claim.items]
    await store.complete(claim, results)


async def test_contacts_waiting_for_a_company_are_queued_once_it_arrives(store: Store) -> None:
    await store.append(event("CONT-1"))
    await store.append(event("CONT-2"))
    waiting = SyncState("hs-c", {}, company_id="COMP-1")  # its company was not in the target
    await deliver_all(store, {"CONT-1": waiting, "CONT-2": SyncState("hs-d", {})})
    # The contact's side: its company has not arrived, nothing to do.
    assert await store.relink(T, Relink([], contacts=["CONT-1"])) == 0
    assert await store.relink(T, Relink(None)) == 0
    await store.append(NewEvent("demo", "company-created", "COMP-1", "upsert", b"{}", (T,)))
    await deliver_all(store, {"COMP-1": SyncState("hs-company", {})})

    # The company's side (or the contact's, had it completed second) finds it.
    assert await store.relink(T, Relink(["COMP-1"])) == 1
    assert (
        await store.relink(T, Relink([], contacts=["CONT-1"])) == 1
    )  # queued already: not doubled
    claim = await store.claim(T, 10, 60)
    (item,) = claim.items
    assert item.contact_id == "CONT-1" and not item.full and item.state == waiting
    linked = SyncState("hs-c", {}, "COMP-1", "hs-company")
    await store.complete(claim, [Result("CONT-1", "delivered", state=linked)])
    assert await store.relink(T, Relink(None)) == 0  # linked: nothing waits any more

    # The company is deleted: its contacts wait for it again, and are linked when it is back.
    assert await store.relink(T, Relink([], deleted=["COMP-1"])) == 0
    assert await store.queued(T, ["CONT-1"]) == set()
    await store.append(NewEvent("demo", "company-created", "COMP-1", "upsert", b"{}", (T,)))
    await deliver_all(store, {"COMP-1": SyncState("hs-company-2", {})})
    assert await store.relink(T, Relink(None)) == 1  # as a start would find it
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.contact_id == "CONT-1" and item.state == SyncState("hs-c", {}, "COMP-1", None)


async def test_a_replay_is_a_full_rewrite(store: Store) -> None:
    await dead(store, "c1", b'{"v": 1}')
    (letter,) = await store.dead_letters()
    await store.replay([letter.id], [T])
    (item,) = (claim := await store.claim(T, 10, 60)).items
    assert item.full
    await store.append(event("c1", body=b'{"v": 2}'))
    await store.complete(claim, [Result("c1", "delivered", state=SyncState(None, {}))])
    (item,) = (await store.claim(T, 10, 60)).items
    assert not item.full  # the next write after the full one is a diff again


async def test_an_upgraded_store_keeps_ids_and_writes_each_contact_whole(backend: Backend) -> None:
    """A store from the release before sync state: its links become states without digests."""
    await backend.create_version_1(
        event_row=(1, "e-1", "demo", "c1", "contact-updated", "upsert", b"{}", 1.0, None, 0),
        link_row=(T, "c1", "hs-9", 1, 1.0),
    )
    store = backend.make()
    await store.open()
    try:
        await store.append(event("c1"))
        (item,) = (await store.claim(T, 10, 60)).items
        assert item.state == SyncState("hs-9", None) and item.remote_id == "hs-9"
    finally:
        await store.close()


async def test_queued_tells_which_contacts_wait(store: Store) -> None:
    await store.append(event("c1"))
    await store.append(event("c2"))
    assert await store.queued(T, ["c1", "c3"]) == {"c1"}


async def test_another_writer_is_waited_for_without_blocking_the_loop(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    store = sqlite_store
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. an import running in another process
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    appending = asyncio.create_task(store.append(event("c1")))
    await eventually(lambda: ticks >= 15)  # the loop runs while the append waits
    assert not appending.done()
    other.execute("COMMIT")
    assert (await appending).status == "queued"
    ticking.cancel()
    other.close()


# --- schema migrations (both stores) -------------------------------------------------------------


def latest_version(backend: Backend) -> int:
    return len(SQLITE_MIGRATIONS if backend.name == "sqlite" else POSTGRES_MIGRATIONS)


async def test_migrate_applies_pending_migrations_once(backend: Backend) -> None:
    latest = latest_version(backend)
    store = backend.make(schema="as-is")
    await store.open()
    try:
        assert await store.migrate() == (0, latest)
        assert await store.migrate() == (latest, latest)
        assert (await store.append(event("c1"))).status == "queued"
    finally:
        await store.close()


async def test_stores_opening_together_migrate_once(backend: Backend) -> None:
    latest = latest_version(backend)
    stores = [backend.make() for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        assert [await store.migrate() for store in stores] == [(latest, latest)] * 4
        answers = await asyncio.gather(*(s.append(event(f"c{n}")) for n, s in enumerate(stores)))
        assert {a.status for a in answers} == {"queued"}
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_opening_migrates_unless_told_not_to(backend: Backend) -> None:
    latest = latest_version(backend)
    with pytest.raises(ConfigError, match=r"version 0, this release needs \d+: run `mimeeq-conn"):
        await backend.make(schema="verify").open()
    store = backend.make()  # the default: migrate on open
    await store.open()
    try:
        assert await store.migrate() == (latest, latest)
    finally:
        await store.close()
    verified = backend.make(schema="verify")
    await verified.open()  # up to date: it starts
    await verified.close()


async def test_a_schema_newer_than_this_release_is_refused(backend: Backend) -> None:
    store = backend.make()
    await store.open()
    await store.close()
    await backend.set_version(latest_version(backend) + 1)
    for schema in ("migrate", "verify"):
        with pytest.raises(ConfigError, match="newer than this release"):
            await backend.make(schema=schema).open()


async def test_migrate_command_reports_the_version(backend: Backend, tmp_path: Path) -> None:
    latest = latest_version(backend)
    config = write_config(tmp_path, store={"url": backend.url, "migrate_on_start": False})

    def migrate() -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["migrate", "--config", str(config)])
        return result.exit_code, result.stdout, result.stderr

    code, out, err = await asyncio.to_thread(migrate)
    assert code == 0, err
    assert out.strip() == f"store schema migrated from version 0 to {latest}"
    code, out, err = await asyncio.to_thread(migrate)
    assert (code, out.strip()) == (0, f"store schema is up to date (version {latest})")
    store = backend.make(schema="verify")
    await store.open()
    await store.close()


def test_store_url_accepts_postgresql_and_never_repeats_a_password(tmp_path: Path) -> None:
    for url in ("postgresql://connector:pw@db:5432/mimeeq", "postgres://db/mimeeq?pool_max_size=4"):
        assert load_config(write_config(tmp_path, store={"url": url})).store.url == url
    for url, problem in (
        ("postgresql://connector:s3cr/et@db:5432/mimeeq", "percent-encode"),
        ("postgresql://connector:s3cret@db/m?pool_max_size=0", "pool_max_size"),
        ("mysql://connector:s3cr/et@db/mimeeq", "expected sqlite:///"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(write_config(tmp_path, store={"url": url}))
        message = "\n".join(caught.value.problems)
        assert "store.url" in message and problem in message
        assert "s3cr" not in message


def test_a_config_chooses_its_store_by_the_url(tmp_path: Path) -> None:
    from connector.store import open_store

    config = load_config(write_config(tmp_path, store={"url": "postgresql://u:pw@db/x"}))
    store = open_store(config)
    assert isinstance(store, PostgresStore) and store.schema == "migrate"
    assert "pw" not in repr(store)
    config = load_config(
        write_config(tmp_path, store={"url": "sqlite:///c.db", "migrate_on_start": False})
    )
    sqlite = open_store(config)
    assert isinstance(sqlite, SQLiteStore) and sqlite.schema == "verify"
