"""The invariants on a bad day: crashes, outages, shutdowns, reordering and broken mappings."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from connector.service import Service
from fake_hubspot import FakeHubSpot
from testkit.hubspot import hubspot_config
from testkit.payloads import CUSTOMER, TOKEN, contact
from testkit.service import ServerProcess, drained

AUTH = {"X-Mimeeq-Token": TOKEN}


PLAIN = {"fields": {"firstname": "firstName", "lastname": "lastName", "email": "emails[0].mail"}}


def live_by_mimeeq_id(fake: FakeHubSpot) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for props in fake.contacts.values():
        key = props.get("mimeeq_contact_id", "")
        assert key not in found, f"duplicate HubSpot contacts for {key}"
        found[key] = props
    return found


def deleted(n: int) -> dict[str, Any]:
    return {"id": contact(n)["id"], "customerId": CUSTOMER, "emails": contact(n)["emails"]}


async def post_until_accepted(
    http: aiohttp.ClientSession, url: Callable[[], str], event: str, body: dict[str, Any]
) -> None:
    """Like Mimeeq: keep redelivering until a 2xx says the event is stored."""
    while True:
        try:
            async with http.post(f"{url()}/webhooks/demo/{event}", json=body,
                                 headers=AUTH) as response:  # fmt: skip
                if response.status == 202:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)


async def test_sigkill_at_random_moments_loses_nothing(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    """3,000 webhooks for 300 contacts while the server is killed -9 again and again."""
    server = server_process(hubspot_config(tmp_path, fake, mapping=PLAIN, linger=0.2))
    server.start()
    versions = 10
    rng = random.Random(7)
    acked = 0
    # Kill at random moments, at least once in each fifth of the burst.
    kill_at = sorted(rng.randint(k * 600, k * 600 + 500) for k in range(5))
    kills = 0

    async def killer() -> None:
        nonlocal kills
        for mark in kill_at:
            while acked < mark:
                await asyncio.sleep(0.005)
            server.kill()
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await asyncio.to_thread(server.start)

    async def one_contact(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal acked
        for version in range(1, versions + 1):
            if version == versions and n % 7 == 0:
                await post_until_accepted(http, lambda: server.url, "contact-deleted", deleted(n))
            else:
                event = "contact-created" if version == 1 else "contact-updated"
                body = contact(n, lastName=f"v{version}")
                await post_until_accepted(http, lambda: server.url, event, body)
            acked += 1

    killing = asyncio.create_task(killer())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=60)) as http:
        await asyncio.gather(*(one_contact(http, n) for n in range(300)))
    await killing
    assert kills == 5
    await drained(tmp_path / "connector.db")
    assert server.stop() == 0

    live = live_by_mimeeq_id(fake)
    expected = {contact(n)["id"] for n in range(300) if n % 7}
    assert set(live) == expected
    assert all(props["lastname"] == f"v{versions}" for props in live.values())
    gone = {p.get("mimeeq_contact_id") for p in fake.archived.values()}
    assert gone == {contact(n)["id"] for n in range(300) if n % 7 == 0}


async def test_an_outage_mid_burst_delays_but_loses_nothing(
    tmp_path: Path, fake: FakeHubSpot
) -> None:
    config = load_config(
        hubspot_config(tmp_path, fake, mapping=PLAIN, linger=0,
                       batch_size=10, backoff={"initial": 0.2, "max": 1.0})
    )  # fmt: skip
    service = Service(config)
    await service.start()
    url = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(40):
                await post_until_accepted(http, lambda: url, "contact-created", contact(n))
            fake.down = True  # 503 to everything
            for n in range(40, 80):
                await post_until_accepted(http, lambda: url, "contact-created", contact(n))
            await asyncio.sleep(1.5)
            await fake.stop()  # connection refused
            for n in range(80, 100):
                await post_until_accepted(http, lambda: url, "contact-created", contact(n))
            await asyncio.sleep(1.5)
            fake.down = False
            await fake.start(fake.port)
        await drained(tmp_path / "connector.db")
        statuses = await service.store.status()
    finally:
        await service.stop()
    assert fake.count(503) > 0
    assert len(live_by_mimeeq_id(fake)) == 100
    assert statuses[0].dead == 0 and statuses[0].delivered == 100


async def test_sigterm_during_a_burst_drains_in_time_and_loses_nothing(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    fake.latency = 0.3  # pushes are in flight when the signal comes
    server = server_process(hubspot_config(tmp_path, fake, mapping=PLAIN, linger=0.1))
    server.start()
    acked: list[int] = []

    async def post(http: aiohttp.ClientSession, n: int) -> None:
        try:
            async with http.post(f"{server.url}/webhooks/demo/contact-created",
                                 json=contact(n), headers=AUTH) as response:  # fmt: skip
                if response.status == 202:
                    acked.append(n)
        except aiohttp.ClientError:
            pass

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as http:
        burst = [asyncio.create_task(post(http, n)) for n in range(400)]
        while len(acked) < 150:
            await asyncio.sleep(0.01)
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 30)
        took = time.monotonic() - signalled
        await asyncio.gather(*burst)
    assert code == 0
    assert took < 10 + 2  # drain_timeout 10 s, plus the process's own exit
    server.start()
    await drained(tmp_path / "connector.db")
    assert server.stop() == 0
    live = live_by_mimeeq_id(fake)
    assert {contact(n)["id"] for n in acked} <= set(live)


async def test_a_delete_before_a_delayed_update_sticks(tmp_path: Path, fake: FakeHubSpot) -> None:
    service = Service(load_config(hubspot_config(tmp_path, fake, mapping=PLAIN, linger=0)))
    await service.start()
    url = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession() as http:
            # Contact 1: created, then deleted, then an update delayed in transit arrives.
            await post_until_accepted(http, lambda: url, "contact-created", contact(1))
            await drained(tmp_path / "connector.db")
            await post_until_accepted(http, lambda: url, "contact-deleted", deleted(1))
            await post_until_accepted(http, lambda: url, "contact-updated",
                                      contact(1, lastName="Late"))  # fmt: skip
            # Contact 2: the delete overtook even the create.
            await post_until_accepted(http, lambda: url, "contact-deleted", deleted(2))
            await post_until_accepted(http, lambda: url, "contact-created", contact(2))
            await post_until_accepted(http, lambda: url, "contact-updated", contact(2))
        await drained(tmp_path / "connector.db")
    finally:
        await service.stop()
    assert live_by_mimeeq_id(fake) == {}
    assert [p["mimeeq_contact_id"] for p in fake.archived.values()] == [contact(1)["id"]]


async def test_fixing_a_mapping_and_replaying_delivers_the_dead(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    broken = {"fields": {**PLAIN["fields"], "favourite_colour": {"value": "blue"}}}
    config = hubspot_config(tmp_path, fake, mapping=broken, linger=0.1)
    server = server_process(config)
    server.start()
    async with aiohttp.ClientSession() as http:
        for n in range(5):
            await post_until_accepted(http, lambda: server.url, "contact-created", contact(n))
    await drained(tmp_path / "connector.db")
    listed = await asyncio.to_thread(
        CliRunner().invoke, main, ["dlq", "list", "--config", str(config), "--json"]
    )
    letters = json.loads(listed.stdout)
    assert len(letters) == 5
    assert "favourite_colour" in letters[0]["error"] and "does not exist" in letters[0]["error"]
    assert fake.contacts == {}

    # The operator fixes the mapping and restarts the server with it, then replays.
    assert server.stop() == 0
    config.write_text(config.read_text().replace("favourite_colour", "jobtitle"))
    server.start()
    replayed = await asyncio.to_thread(
        CliRunner().invoke, main, ["dlq", "replay", "--all", "--config", str(config),
                                   "--wait", "20"],
    )  # fmt: skip
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.count("queued → delivered") == 5
    assert server.stop() == 0
    live = live_by_mimeeq_id(fake)
    assert len(live) == 5 and all(p["jobtitle"] == "blue" for p in live.values())
