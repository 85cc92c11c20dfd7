"""PostgreSQL as the shared store of several replicas: what only a shared store must get right.

Each test opens several ``PostgresStore`` objects (each with its own connection pool, as separate
replicas would) on one fresh schema. The contract every store honours is in ``test_store``.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest

from connector import delivery
from connector.config import load_config
from connector.service import Service
from connector.store.base import Accepted, Claim, NewEvent, Result
from connector.store.postgres import MIGRATIONS, PostgresStore
from testkit.payloads import ROOT, contact, write_config
from testkit.postgres import postgres_schema
from testkit.service import fake_adapter, send
from testkit.store import T, event
from testkit.waiting import eventually

Replicas = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def schema_url() -> AsyncIterator[str]:
    async with postgres_schema() as url:
        yield url


@pytest.fixture
async def replicas(schema_url: str) -> AsyncIterator[Replicas]:
    """Opens another replica's store on the test schema; all are closed afterwards."""
    opened: list[PostgresStore] = []

    async def make(**options: Any) -> PostgresStore:
        store = PostgresStore(schema_url, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_concurrent_claims_never_hand_out_a_contact_twice(replicas: Replicas) -> None:
    a, b = await replicas(), await replicas()
    await a.append_many([event(f"c{n:03}") for n in range(300)])
    claims = await asyncio.gather(*(store.claim(T, 10, 60) for _ in range(20) for store in (a, b)))
    claimed = [item.contact_id for claim in claims for item in claim.items]
    assert len(claimed) == len(set(claimed)) == 300


async def test_replicas_pushing_together_keep_contacts_exclusive_and_in_order(
    replicas: Replicas,
) -> None:
    stores = [await replicas() for _ in range(3)]
    contacts = [f"c{n:02}" for n in range(40)]
    in_flight: dict[str, int] = {}  # contact -> the replica pushing it
    pushed: dict[str, list[int]] = defaultdict(list)
    overlaps: list[str] = []
    appending = True

    async def lane(replica: int) -> None:
        store = stores[replica]
        while True:
            claim = await store.claim(T, 5, 600)  # a claim lost on the way would hang the test
            if not claim.items:
                if not appending and not any(s.pending for s in await store.status()):
                    return
                await asyncio.sleep(0.005)
                continue
            for item in claim.items:
                if item.contact_id in in_flight:
                    overlaps.append(item.contact_id)
                in_flight[item.contact_id] = replica
                pushed[item.contact_id].append(item.seq)
            await asyncio.sleep(random.uniform(0, 0.01))  # the push
            results = []
            for item in claim.items:
                in_flight.pop(item.contact_id, None)
                if random.random() < 0.1:  # the target asks to try again
                    results.append(Result(item.contact_id, "retry", error="503", due_at=0.0))
                else:
                    results.append(Result(item.contact_id, "delivered"))
            await store.complete(claim, results)

    async def append(n: int) -> None:
        await asyncio.sleep(random.uniform(0, 0.3))
        await stores[n % 3].append(event(random.choice(contacts)))

    lanes = [asyncio.create_task(lane(r)) for r in range(3) for _ in range(3)]
    await asyncio.gather(*(append(n) for n in range(600)))
    appending = False
    await asyncio.wait_for(asyncio.gather(*lanes), 30)

    assert overlaps == []
    latest = {
        row["contact_id"]: row["seq"]
        for row in await fetch(
            stores[0].url, "SELECT contact_id, MAX(seq) AS seq FROM events GROUP BY contact_id"
        )
    }
    for contact_id, seqs in pushed.items():
        assert seqs == sorted(seqs), contact_id  # retries push a state again, never an older one
        assert seqs[-1] == latest[contact_id]  # the latest state reached the target
    assert set(pushed) == set(latest)
    assert sum(s.delivered for s in await stores[0].status()) == 600


async def test_a_lease_that_runs_out_hands_the_contact_to_another_replica(
    replicas: Replicas,
) -> None:
    a, b = await replicas(), await replicas()
    await a.append(event("c1"))
    stale = await a.claim(T, 10, 2.0)  # then replica a dies mid-push
    assert [i.contact_id for i in stale.items] == ["c1"]
    assert (await b.claim(T, 10, 60)).items == []
    assert await b.next_due(T) == pytest.approx(stale_due := await a.next_due(T))
    assert stale_due is not None

    async def taken_over() -> Claim | None:
        claim = await b.claim(T, 10, 60)
        assert time.time() >= stale_due, "claimed before the lease ran out"
        return claim if claim.items else None

    fresh = await eventually(taken_over)
    assert [i.contact_id for i in fresh.items] == ["c1"]
    await a.complete(stale, [Result("c1", "delivered")])  # too late: ignored
    (status,) = await b.status()
    assert (status.pending, status.delivered) == (1, 0)
    await b.complete(fresh, [Result("c1", "delivered")])
    (status,) = await b.status()
    assert (status.pending, status.delivered) == (0, 1)


async def test_recover_leaves_the_live_claims_of_other_replicas_alone(
    replicas: Replicas,
) -> None:
    a, b = await replicas(), await replicas()
    await a.append(event("c1"))
    await a.append(event("c2"))
    pushing = await a.claim(T, 1, 600)
    assert [i.contact_id for i in pushing.items] == ["c1"]
    await a.claim(T, 1, 0.01)  # c2: its lease runs out at once
    await asyncio.sleep(0.02)
    assert await b.recover() == 1  # replica b starts: only the expired claim is cleared
    assert [i.contact_id for i in (await b.claim(T, 10, 60)).items] == ["c2"]
    await a.complete(pushing, [Result("c1", "delivered")])  # a's claim was never taken away
    assert (await a.status())[0].delivered == 1


async def test_identical_redeliveries_at_several_replicas_are_stored_once(
    replicas: Replicas,
) -> None:
    """Each webhook of 7 contacts reaches all three replicas at once (a load balancer retrying
    it): one of them stores it, the others see it is the contact's latest and answer duplicate."""
    stores = [await replicas() for _ in range(3)]
    bodies = [b'{"id": "c%d", "round": %d}' % (n % 7, n) for n in range(42)]
    answers: list[Accepted] = []
    for round_ in range(0, len(bodies), 7):  # a contact's next change comes after the last one
        answers += await asyncio.gather(
            *(
                store.append(event(f"c{n % 7}", body=bodies[n]))
                for n in range(round_, round_ + 7)
                for store in stores
            )
        )
    for n in range(len(bodies)):
        three = answers[3 * n : 3 * n + 3]
        assert sorted(a.status for a in three) == ["duplicate", "duplicate", "queued"]
        assert len({a.event_id for a in three}) == 1
    rows = await fetch(stores[0].url, "SELECT payload, COUNT(*) AS n FROM events GROUP BY payload")
    assert sorted(row["payload"] for row in rows) == sorted(bodies)
    assert {row["n"] for row in rows} == {1}


async def test_a_delete_and_a_late_update_at_two_replicas_keep_the_contact_deleted(
    replicas: Replicas,
) -> None:
    a, b = await replicas(), await replicas()
    contacts = [f"c{n:02}" for n in range(60)]
    await a.append_many([event(c) for c in contacts])
    await asyncio.gather(
        *(a.append(event(c, "delete")) for c in contacts),
        *(b.append(event(c)) for c in contacts),  # a late update, at the other replica
    )
    claim = await b.claim(T, 100, 60)
    assert {i.contact_id for i in claim.items} == set(contacts)
    assert {i.op for i in claim.items} == {"delete"}
    for contact_id in contacts:
        events = (await a.trace(contact_id)).events
        deleted_at = next(e.seq for e in events if e.op == "delete")
        assert all(e.dropped for e in events if e.seq > deleted_at)


async def test_imports_and_completions_on_shared_contacts_never_deadlock(
    replicas: Replicas,
) -> None:
    a, b = await replicas(), await replicas()
    contacts = [f"c{n:03}" for n in range(200)]
    await a.append_many([event(c) for c in contacts])
    claim = await a.claim(T, 200, 60)

    # Two imports taking the same contacts in opposite orders, and a completion of all of them.
    await asyncio.gather(
        a.append_many([event(c) for c in contacts]),
        b.append_many([event(c) for c in reversed(contacts)]),
        b.complete(claim, [Result(i.contact_id, "delivered") for i in reversed(claim.items)]),
    )
    (status,) = await a.status()
    assert (status.contacts, status.pending, status.delivered) == (200, 400, 200)


async def test_one_bad_append_does_not_fail_the_appends_sharing_its_transaction(
    replicas: Replicas,
) -> None:
    store = await replicas()
    bad = NewEvent("demo", "contact-updated", "nul\x00byte", "upsert", b"{}", (T,))
    answers = await asyncio.gather(
        *(store.append(event(f"c{n}")) for n in range(30)),
        store.append(bad),  # PostgreSQL text cannot hold a NUL character
        *(store.append(event(f"d{n}")) for n in range(30)),
        return_exceptions=True,
    )
    assert isinstance(answers[30], Exception)
    assert all(not isinstance(a, Exception) and a.status == "queued" for a in answers[:30])
    assert all(not isinstance(a, Exception) and a.status == "queued" for a in answers[31:])
    assert len((await store.claim(T, 100, 60)).items) == 60


async def test_two_services_share_one_queue(schema_url: str, tmp_path: Any) -> None:
    config = load_config(write_config(tmp_path, store={"url": schema_url}))
    first, second = Service(config), Service(config)
    await first.start()
    await second.start()
    try:
        # One target seen by both replicas: a contact pushed by both at once would show up.
        shared = fake_adapter(first)
        second.workers["demo/fake"].adapter = shared
        for n in range(30):
            await send((first, second)[n % 2], "contact-created", contact(n))
        for n in range(30):
            await send((second, first)[n % 2], "contact-updated", contact(n, firstName=f"U{n}"))

        def delivered() -> bool:
            return all(
                shared.contacts.get(f"CONT-{n:08d}-0000-0000-0000-000000000000", {}).get("first")
                == f"U{n}"
                for n in range(30)
            )

        await eventually(delivered)
        assert shared.overlaps == 0
    finally:
        await second.stop()
        await first.stop()


async def test_replicas_starting_together_migrate_once(schema_url: str) -> None:
    stores = [PostgresStore(schema_url) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        rows = await fetch(schema_url, "SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in rows] == list(range(1, len(MIGRATIONS) + 1))
        accepted = await asyncio.gather(
            *(store.append(event(f"c{n}")) for n, store in enumerate(stores))
        )
        assert {a.status for a in accepted} == {"queued"}
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_pool_sizes_come_from_the_url(schema_url: str) -> None:
    store = PostgresStore(f"{schema_url}&pool_min_size=2&pool_max_size=3")
    await store.open()
    try:
        assert (store.pool.get_min_size(), store.pool.get_max_size()) == (2, 3)
        await asyncio.gather(*(store.append(event(f"c{n}")) for n in range(50)))
        assert len((await store.claim(T, 100, 60)).items) == 50
    finally:
        await store.close()


async def test_a_search_path_without_a_schema_is_explained(schema_url: str) -> None:
    from connector.errors import ConfigError

    url = schema_url.replace("search_path=", "search_path=no_such_")
    with pytest.raises(ConfigError, match="no schema to create the tables in"):
        await PostgresStore(url).open()


def run_one_postgres_test(postgres_url: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONNECTOR_TEST_POSTGRES": postgres_url}
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/contract/test_store.py::test_queued_tells_which_contacts_wait[postgres]",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_postgresql_its_tests_skip_outside_ci_and_fail_in_ci() -> None:
    nowhere = "postgresql://postgres:hunter2@127.0.0.1:1/test"  # nothing listens on port 1
    outside = run_one_postgres_test(nowhere, None)
    assert outside.returncode == 0, outside.stdout
    assert "1 skipped" in outside.stdout and "no PostgreSQL reachable" in outside.stdout
    in_ci = run_one_postgres_test(nowhere, "true")
    assert in_ci.returncode == 1, in_ci.stdout
    assert "must run in CI" in in_ci.stdout and "skipped" not in in_ci.stdout
    assert "hunter2" not in outside.stdout + in_ci.stdout


async def test_replicas_share_one_rate_budget(replicas: Replicas) -> None:
    """Three replicas drawing on one account never start more than its limit in any window."""
    stores = [await replicas() for _ in range(3)]
    limiters = [store.rate_limiter("account-1", 5, 0.5) for store in stores]
    assert stores[0].rate_limiter("account-1", 5, 0.5) is limiters[0]  # one per account
    starts: list[float] = []

    async def caller(limiter: Any) -> None:
        for _ in range(5):
            await limiter.acquire()
            starts.append(asyncio.get_running_loop().time())

    await asyncio.gather(*(caller(limiter) for limiter in limiters for _ in range(2)))
    assert len(starts) == 30
    # Measured after each acquire returns, so allow the round trip's jitter (the limiter's
    # own window is in the database's clock, with a margin for exactly that).
    busiest = max(sum(1 for t in starts if s <= t < s + 0.4) for s in starts)
    assert busiest <= 5
    # No dawdling: 30 at 5 per window take five windows (about 3 s); one window each, 17 s.
    assert max(starts) - min(starts) < 10
    # Another account is not held back by this one, whose window is full right now.
    assert await stores[1].rate_limiter("account-2", 5, 0.5).acquire() < 0.3
    # Every replica sees the same budget in use (the console shows it).
    in_use = [await store.rate_limiter("account-2", 5, 0.5).in_window() for store in stores]
    assert in_use == [1, 1, 1]


async def test_a_hold_seen_by_one_replica_holds_them_all(replicas: Replicas) -> None:
    a, b = await replicas(), await replicas()
    a.rate_limiter("account-1", 100, 1).hold(0.4)  # a 429 seen by replica a
    (held,) = await eventually(lambda: fetch(a.url, "SELECT until FROM rate_holds"))
    await b.rate_limiter("account-1", 100, 1).acquire()
    assert time.time() >= held["until"] - 0.01  # b did not start before the hold ended


async def test_work_queued_at_another_replica_wakes_an_idle_one_at_once(
    schema_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polling alone would not find the events before the wait below gives up.
    monkeypatch.setattr(delivery, "IDLE_POLL", 3600.0)
    service = Service(load_config(write_config(tmp_path, store={"url": schema_url})))
    await service.start()
    other = PostgresStore(schema_url)  # another replica's receiver
    await other.open()
    try:
        fake = fake_adapter(service)
        worker = service.workers["demo/fake"]
        await eventually(lambda: worker.wake.is_set() is False and not fake.in_flight)

        async def queue(n: int, **fields: Any) -> None:
            body = orjson.dumps(contact(n, **fields))
            created = NewEvent("demo", "contact-created", contact(n)["id"], "upsert", body,
                               ("demo/fake",))  # fmt: skip
            assert (await other.append(created)).status == "queued"

        await queue(1)
        await eventually(lambda: contact(1)["id"] in fake.contacts)
        # The listening connection dropped (a database restart, a proxy): it comes back.
        listeners = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
        for row in await fetch(schema_url, listeners):
            await fetch(schema_url, "SELECT pg_terminate_backend($1)", row[0])

        tries = iter(range(1000))

        async def heard_again() -> bool:
            await queue(2, lastName=f"try {next(tries)}")  # a change each time, not a duplicate
            await asyncio.sleep(0.5)
            return contact(2)["id"] in fake.contacts

        await eventually(heard_again)
    finally:
        await other.close()
        await service.stop()
