"""Three replicas on one PostgreSQL database, one of them killed, against a flaky HubSpot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from fake_hubspot import FakeHubSpot
from testkit.payloads import CUSTOMER, TOKEN, contact
from testkit.postgres import postgres_schema
from testkit.service import ServerProcess
from testkit.waiting import eventually

HS_TOKEN = "hs-replicas-token"
AUTH = {"X-Mimeeq-Token": TOKEN}
LIMIT, WINDOW = 40, 4.0  # HubSpot's 100 per 10 s, compressed: the fake enforces the same


@pytest.fixture
async def schema_url() -> AsyncIterator[str]:
    async with postgres_schema() as url:
        yield url


@pytest.fixture
async def fake() -> AsyncIterator[FakeHubSpot]:
    hub = FakeHubSpot(token=HS_TOKEN, rate_limit=LIMIT, interval=WINDOW, latency=0.02)
    await hub.start()
    hub.add_property("mimeeq_contact_id", object_type="contacts", unique=True, group="mimeeq")
    hub.failure_rate = 0.2  # one answer in five is a 503 or a 429
    try:
        yield hub
    finally:
        await hub.stop()


async def pending(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT COUNT(*) FROM queue"))
    finally:
        await conn.close()


async def claims(url: str) -> set[tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT contact_id, claim FROM queue WHERE claim IS NOT NULL")
    finally:
        await conn.close()
    return {(row[0], row[1]) for row in rows}


async def test_three_replicas_one_killed_deliver_exactly_once_in_order(
    tmp_path: Path,
    schema_url: str,
    fake: FakeHubSpot,
    server_process: Callable[[Path], ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_HUBSPOT_TOKEN", HS_TOKEN)  # this test's own fake and token
    config = tmp_path / "config.yaml"
    mapping = {"fields": {"firstname": "firstName", "lastname": "lastName"}}
    target = {
        "type": "hubspot", "access_token": "${TEST_HUBSPOT_TOKEN}", "base_url": fake.url,
        "mapping": mapping, "linger": 0.2,
        "backoff": {"initial": 0.2, "max": 2}, "rate_limit": {"requests": LIMIT,
                                                               "per_seconds": WINDOW},
    }  # fmt: skip
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout": 5},
        "store": {"url": schema_url},
        "tenants": {"demo": {"customer_id": CUSTOMER, "auth": {"values": [TOKEN]},
                             "targets": {"hubspot": target}}},
    }))  # fmt: skip
    replicas = [server_process(config) for _ in range(3)]
    for replica in replicas:
        replica.start()
    alive = list(replicas)
    versions, contacts = 12, 500
    acked = 0

    async def post(http: aiohttp.ClientSession, n: int, event: str, body: dict[str, Any]) -> None:
        """As a load balancer in front of the replicas would: on failure, the next one."""
        nonlocal acked
        for attempt in range(1000):
            replica = alive[(n + attempt) % len(alive)]
            try:
                async with http.post(f"{replica.url}/webhooks/demo/{event}", json=body,
                                     headers=AUTH) as response:  # fmt: skip
                    if response.status == 202:
                        acked += 1
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("webhook never accepted")

    async def one_contact(http: aiohttp.ClientSession, n: int) -> None:
        for version in range(1, versions + 1):
            if version == versions and n % 10 == 0:
                body = {"id": contact(n)["id"], "customerId": CUSTOMER}
                await post(http, n, "contact-deleted", body)
            else:
                event = "contact-created" if version == 1 else "contact-updated"
                await post(http, n, event, contact(n, lastName=f"v{version}"))

    claimed_at_kill: set[tuple[str, int]] = set()
    killed_at = 0.0

    async def kill_one_midway() -> None:
        while acked < versions * contacts // 2:
            await asyncio.sleep(0.01)
        nonlocal killed_at
        victim = alive.pop(0)
        victim.kill()  # mid-push, most likely: its claims come back when their leases end
        killed_at = time.monotonic()
        claimed_at_kill.update(await claims(schema_url))
        assert claimed_at_kill  # the kill came mid-push
        # Every claim held at the kill (the dead replica's among them) ends within 30 s of it,
        # with default settings: the dead one's contacts move on while the webhooks go on.
        await eventually(lambda: taken_over(claimed_at_kill), 30.0)

    async def taken_over(at_kill: set[tuple[str, int]]) -> bool:
        return not at_kill & await claims(schema_url)

    killing = asyncio.create_task(kill_one_midway())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
        await asyncio.gather(*(one_contact(http, n) for n in range(contacts)))
    await killing
    assert acked == versions * contacts

    async def drained() -> bool:
        return not await pending(schema_url)

    # Everything, the dead replica's contacts included, delivered within 30 s of the kill.
    await eventually(drained, killed_at + 30.0 - time.monotonic())
    for replica in alive:
        assert replica.stop() == 0

    live = {}
    for props in fake.contacts.values():
        key = props.get("mimeeq_contact_id", "")
        assert key not in live, f"two HubSpot contacts for {key}"
        live[key] = props
    assert set(live) == {contact(n)["id"] for n in range(contacts) if n % 10}
    assert all(props["lastname"] == f"v{versions}" for props in live.values())
    # Deleted contacts are archived, unless the delete overtook their creation altogether.
    assert {p.get("mimeeq_contact_id") for p in fake.archived.values()} <= {
        contact(n)["id"] for n in range(contacts) if n % 10 == 0
    }
    assert fake.overlaps == 0  # no contact was ever pushed by two replicas at once
    assert fake.count(503) + fake.count(429) > 0
    # Together, the replicas kept under the account's limit: HubSpot (which counts a request
    # when it arrives) hardly ever had to refuse one. A request delayed on its way by a busy
    # machine can still arrive in the next window, hence not zero.
    assert fake.rate_refusals <= 5
    conn = await asyncpg.connect(schema_url)
    try:
        assert await conn.fetchval("SELECT COUNT(*) FROM dead_letters") == 0
    finally:
        await conn.close()
