"""The store contract: what every store implementation must do."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connector.store.base import NewEvent, Result, Store
from connector.store.sqlite import SQLiteStore

T = "demo/crm"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = SQLiteStore(tmp_path / "store.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


_bodies = itertools.count()


def event(contact: str, op: str = "upsert", body: bytes | None = None, *targets: str) -> NewEvent:
    kind = {"upsert": "contact-updated", "delete": "contact-deleted"}[op]
    body = body if body is not None else b'{"n": %d}' % next(_bodies)  # distinct: not redeliveries
    return NewEvent("demo", kind, contact, op, body, targets or (T,))


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
    due = time.time() + 0.3
    await store.complete(claim, [Result("c1", "retry", error="503", due_at=due)])
    assert (await store.claim(T, 10, 60)).items == []
    next_due = await store.next_due(T)
    assert next_due == pytest.approx(due)
    await asyncio.sleep(0.35)
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.attempts == 1


async def test_a_wait_that_is_not_a_failure_does_not_count(store: Store) -> None:
    await store.append(event("c1"))
    claim = await store.claim(T, 10, 60)
    await store.complete(claim, [Result("c1", "retry", error="429", count_attempt=False)])
    (item,) = (await store.claim(T, 10, 60)).items
    assert item.attempts == 0


async def test_dead_records_go_to_the_dead_letter_store(store: Store, tmp_path: Path) -> None:
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
    db = sqlite3.connect(tmp_path / "store.db")
    row = db.execute("SELECT contact_id, attempts, first_error, error FROM dead_letters").fetchone()
    assert row == ("c1", 2, "first try failed", "Property email is invalid")
    await store.open()


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


async def test_recover_releases_claims_of_a_crashed_process(store: Store) -> None:
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


async def test_committed_events_survive_a_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    await asyncio.gather(*(store.append(event(f"c{n}")) for n in range(300)))
    await store.close()
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        assert len((await store.claim(T, 1000, 60)).items) == 300
    finally:
        await store.close()


async def test_concurrent_appends_share_commits(store: SQLiteStore) -> None:
    commits = 0
    run_batch = store._run_batch

    def counting(conn, batch):
        nonlocal commits
        commits += 1
        return run_batch(conn, batch)

    store._run_batch = counting
    await asyncio.gather(*(store.append(event(f"c{n}")) for n in range(500)))
    assert commits < 100


async def test_one_failing_operation_does_not_fail_its_group(store: SQLiteStore) -> None:
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
