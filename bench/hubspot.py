"""HubSpot delivery benchmark: API write calls per burst, and the time a backlog takes.

Runs the whole service (receiver, SQLite queue, HubSpot target through hubspot-api-client) against
the fake HubSpot, with the shipped HubSpot mapping:

1. write calls for 1,000 new contacts posted in a burst (target <= 11);
2. write calls for 1,000 updates spread over 10 contacts (target <= 20);
3. 10,000 new contacts queued while the target is paused, then released, with the fake's limit
   at 100 requests per 10 s compressed to 100 per second: seconds until the last contact is
   visible in the fake, against the time that limit takes at a steady pace (100 calls of 100
   contacts at 100 per second: 1 s; target within 10% of it). The fake's window is a rolling
   one, as HubSpot's, so a connector fast enough to send the 100 calls as one burst finishes
   sooner than that.
4. the same 10,000 posted while the target delivers: seconds from the last 202 to the last
   contact visible.

    python bench/hubspot.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
from bench.common import ROOT, machine
from connector.config import load_config
from connector.logs import configure_logging
from connector.runtime import server_runner
from connector.service import Service
from fake_hubspot import FakeHubSpot

TOKEN = "bench-token-0123456789"
HS_TOKEN = "hs-bench"
CUSTOMER = "CUST-e3115ba6-0cce-4ba5-9803-aadf90ba2a96"
LATENCY = 0.02  # seconds the fake HubSpot takes to answer
BODY = json.loads((ROOT / "tests" / "data" / "contact-created.json").read_text())


def contact(n: int, **changes: Any) -> dict[str, Any]:
    emails = [{"type": "WORK", "mail": f"p{n}@example.com"}]
    return {**BODY, "id": f"CONT-{n:08d}", "emails": emails, **changes}


async def scenario(
    folder: Path, limit: int, per_seconds: float, **target: Any
) -> tuple[FakeHubSpot, Service]:
    fake = FakeHubSpot(token=HS_TOKEN, rate_limit=limit, interval=per_seconds, latency=LATENCY)
    await fake.start()
    fake.add_property("mimeeq_contact_id", object_type="contacts", unique=True)
    tags = [("tag1", "tag1"), ("tag2", "tag2")]
    fake.add_property(
        "mimeeq_tags", object_type="contacts", type="enumeration", field_type="checkbox",
        options=tags,
    )  # fmt: skip
    fake.add_property(
        "mimeeq_status", object_type="contacts", type="enumeration", field_type="select",
        options=[("ACTIVE", "Active"), ("INACTIVE", "Inactive")],
    )  # fmt: skip
    service = await hubspot_service(
        folder, f"{folder.name}.db", fake.url,
        mapping=str(ROOT / "mappings" / "hubspot-contacts.yaml"),
        rate_limit={"requests": limit, "per_seconds": per_seconds}, **target,
    )  # fmt: skip
    return fake, service


async def hubspot_service(folder: Path, db: str, url: str, **target: Any) -> Service:
    """The service with tenant ``demo`` and one HubSpot target at ``url``, started."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"url": f"sqlite:///{db}"},
        "tenants": {"demo": {
            "customer_id": CUSTOMER,
            "auth": {"values": [TOKEN]},
            "targets": {"hubspot": {
                "type": "hubspot", "access_token": HS_TOKEN, "base_url": url, **target,
            }},
        }},
    }))  # fmt: skip
    service = Service(load_config(path))
    await service.start()
    return service


async def backlog_service(folder: Path, url: str) -> Service:
    fields = {"firstname": "firstName", "lastname": "lastName", "email": "emails[0].mail"}
    return await hubspot_service(
        folder, "backlog.db", url, mapping={"fields": fields},
        rate_limit={"requests": 100, "per_seconds": 1.0}, concurrency=8,
    )  # fmt: skip


async def post_burst(service: Service, events: list[tuple[str, dict[str, Any]]]) -> float:
    """Post concurrently; return when the last 202 came back (time.monotonic())."""
    url = f"http://127.0.0.1:{service.port}/webhooks/demo/"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def post(event: str, body: dict[str, Any]) -> None:
            async with http.post(url + event, json=body, headers={"X-Mimeeq-Token": TOKEN}) as r:
                assert r.status == 202, await r.text()

        await asyncio.gather(*(post(e, b) for e, b in events))
    return time.monotonic()


async def drained(service: Service, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(s.pending for s in await service.store.status()):
        assert time.monotonic() < deadline, "did not drain"
        await asyncio.sleep(0.02)


REMOTE_FAKE = """
import asyncio, sys
from aiohttp import web
sys.path.insert(0, sys.argv[1])
from fake_hubspot import FakeHubSpot

async def main() -> None:
    fake = FakeHubSpot(token=sys.argv[2], rate_limit=int(sys.argv[3]), interval=float(sys.argv[4]),
                       latency=float(sys.argv[5]))
    fake.add_property("mimeeq_contact_id", object_type="contacts", unique=True)

    async def stats(request: web.Request) -> web.Response:
        upserts = [c.at for c in fake.calls if c.path.endswith("batch/upsert")]
        return web.json_response({"contacts": len(fake.contacts), "upserts": upserts,
                                  "answered_429": sum(1 for c in fake.calls
                                                  if c.status == 429 and c.path != "/__stats")})

    fake.app.router.add_get("/__stats", stats)
    print(await fake.start(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def remote_stats(url: str) -> dict[str, Any]:
    """The remote fake's figures. It rate-limits every request, this one too: wait for a turn."""
    auth = {"Authorization": f"Bearer {HS_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        while True:
            async with http.get(f"{url}/__stats") as response:
                if response.status != 429:
                    response.raise_for_status()
                    return dict(await response.json())
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def remote_fake() -> AsyncIterator[str]:
    """HubSpot is another machine: the fake runs in a process of its own, on the other core."""
    remote = subprocess.Popen(
        [sys.executable, "-c", REMOTE_FAKE, str(ROOT), HS_TOKEN, "100", "1.0", str(LATENCY)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert remote.stdout is not None
    try:
        yield remote.stdout.readline().strip()
    finally:
        remote.terminate()
        remote.wait()


async def post_all(service: Service, count: int) -> float:
    """Post ``count`` new contacts, 2,000 at a time; return when the last 202 came back."""
    last = time.monotonic()
    for start in range(0, count, 2000):
        chunk = range(start, min(start + 2000, count))
        last = await post_burst(service, [("contact-created", contact(n)) for n in chunk])
    return last


def writes(fake: FakeHubSpot) -> int:
    return len(fake.writes())


async def run(backlog: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"benchmark": "hubspot", "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        (folder / "new").mkdir()
        fake, service = await scenario(folder / "new", 100, 10.0)
        await post_burst(service, [("contact-created", contact(n)) for n in range(1000)])
        await drained(service)
        figures["writes_per_1000_new"] = writes(fake)
        await service.stop()
        await fake.stop()
        print(f"1,000 new contacts:          {figures['writes_per_1000_new']} write calls "
              "(target <= 11)", flush=True)  # fmt: skip

        (folder / "updates").mkdir()
        fake, service = await scenario(folder / "updates", 100, 10.0)
        events = [("contact-updated", contact(n % 10, lastName=f"v{n}")) for n in range(1000)]
        await post_burst(service, events)
        await drained(service)
        figures["writes_per_1000_updates_of_10"] = writes(fake)
        await service.stop()
        await fake.stop()
        print(f"1,000 updates to 10 contacts: {figures['writes_per_1000_updates_of_10']} write "
              "calls (target <= 20)", flush=True)  # fmt: skip

        (folder / "backlog").mkdir()
        async with remote_fake() as url:
            service = await backlog_service(folder / "backlog", url)
            key = "demo/hubspot"
            await service.store.set_paused(
                key, "benchmark: filling the backlog", None, by="operator"
            )
            await asyncio.sleep(2.5)  # the workers notice the pause
            print(f"queueing {backlog:,} new contacts...", flush=True)
            await post_all(service, backlog)
            await service.store.set_paused(key, None, None, by="operator")
            await drained(service)  # asking the fake meanwhile would spend its rate budget
            await service.stop()
            stats = await remote_stats(url)
            assert stats["contacts"] == backlog
        # From the first call (the workers notice a resume within 2 s: not delivery time) to
        # the last contact visible, by the fake's clock.
        upserts = stats["upserts"]
        delivery = max(upserts) - min(upserts) + LATENCY  # the last answer takes the latency
        minimum = math.ceil(backlog / 100) / 100  # calls needed / calls allowed per second
        figures.update(
            backlog=backlog,
            backlog_calls=len(upserts),
            backlog_seconds=round(delivery, 2),
            backlog_minimum_seconds=minimum,
            backlog_vs_minimum=round(delivery / minimum, 3),
            answered_429=stats["answered_429"],
        )
        print(f"{backlog:,} contacts at 100 requests/s: {delivery:.2f} s from the first call to "
              f"the last contact visible, minimum {minimum:.2f} s "
              f"({delivery / minimum:.0%} of it; target <= 110%), "
              f"{len(upserts)} upsert calls, {stats['answered_429']} answered 429")  # fmt: skip

        # The same contacts posted as fast as the receiver takes them, delivered meanwhile:
        # seconds from the last 202 to the last contact visible (one clock: both processes
        # read the system's monotonic clock).
        (folder / "live").mkdir()
        async with remote_fake() as url:
            service = await backlog_service(folder / "live", url)
            started = time.monotonic()
            last_202 = await post_all(service, backlog)
            await drained(service)
            await service.stop()
            stats = await remote_stats(url)
            assert stats["contacts"] == backlog
        upserts = stats["upserts"]
        after = max(upserts) + LATENCY - last_202
        figures.update(
            live_post_seconds=round(last_202 - started, 2),
            live_seconds_after_last_202=round(after, 2),
            live_calls=len(upserts),
            live_answered_429=stats["answered_429"],
        )
        print(f"{backlog:,} contacts posted in {last_202 - started:.2f} s while delivering: last "
              f"contact visible {after:.2f} s after the last 202, {len(upserts)} upsert calls, "
              f"{stats['answered_429']} answered 429")  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    configure_logging("console", "warning")
    with server_runner() as runner:  # the loop and collector of `serve`
        figures = runner.run(run(args.backlog))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
