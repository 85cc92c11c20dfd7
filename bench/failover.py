"""Replicas on PostgreSQL: how fast idle ones wake for new work, and take over a dead one's.

Wake-up: a replica whose workers are idle (nothing due), and events queued by another replica's
receiver (a second store on the same schema). The figure is from the append's commit to the
push starting at the idle replica.

Failover: a replica claims a contact and dies mid-push (its claim is renewed no more: what a
SIGKILL leaves). It dies at a random moment between two renewals, as a real one would. The
figure is from the death to the push of that contact by the surviving replica, with default
settings.

    python bench/failover.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/
from bench.common import machine
from connector import delivery
from connector.config import load_config
from connector.logs import configure_logging
from connector.service import Service
from connector.store.base import NewEvent
from connector.store.postgres import PostgresStore
from testkit.fakes import FakeAdapter
from testkit.payloads import contact, write_config
from testkit.postgres import postgres_schema
from testkit.service import fake_adapter

TARGET = "demo/fake"


def queued(n: int, version: int) -> NewEvent:
    body = orjson.dumps(contact(n, lastName=f"v{version}"))
    return NewEvent("demo", "contact-updated", contact(n)["id"], "upsert", body, (TARGET,))


async def pushed(fake: FakeAdapter, contact_id: str, before: int) -> float:
    """When the fake target is next asked to push ``contact_id`` (its push count passes before)."""
    while sum(r.contact_id == contact_id for b in fake.pushes for r in b) <= before:
        await asyncio.sleep(0.001)
    return time.perf_counter()


def report(name: str, seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    figures = {"median_ms": statistics.median(ms), "p90_ms": ms[int(len(ms) * 0.9) - 1],
               "max_ms": ms[-1]}  # fmt: skip
    print(
        f"{name}: median {figures['median_ms']:.1f} ms, p90 {figures['p90_ms']:.1f} ms, "
        f"max {figures['max_ms']:.1f} ms ({len(ms)} rounds)"
    )
    return figures


async def main(rounds: int) -> None:
    configure_logging("json", "warning")
    print(f"machine: {machine()}")
    async with postgres_schema() as url:
        folder = Path(tempfile.mkdtemp())
        targets = {"fake": {"type": "fake", "mapping": {"fields": {"last": "lastName"}},
                            "linger": 0}}  # fmt: skip
        service = Service(load_config(write_config(folder, targets, store={"url": url})))
        await service.start()
        other = PostgresStore(url)  # another replica's receiver
        dead = PostgresStore(url)  # a replica that claims a contact, then dies
        await other.open()
        await dead.open()
        dead._channel = ""  # its events announce nothing: the claim must be its, not the live one's
        try:
            fake = fake_adapter(service)
            wakes = []
            for n in range(rounds):
                await asyncio.sleep(0.2)  # the worker is idle again, sleeping for IDLE_POLL
                before = len(fake.pushes)
                await other.append(queued(n, 1))
                stored = time.perf_counter()
                while len(fake.pushes) == before:
                    await asyncio.sleep(0.001)
                wakes.append(time.perf_counter() - stored)
                print(f"\rwake-up {n + 1}/{rounds}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            wake = report("idle replica wakes for new work", wakes)

            failovers: list[float] = []
            n = 1000
            while len(failovers) < rounds:
                n += 1
                contact_id = contact(n)["id"]
                done = sum(r.contact_id == contact_id for b in fake.pushes for r in b)
                await dead.append(queued(n, 1))
                claim = await dead.claim(TARGET, 1, delivery.LEASE)  # its last renewal
                if [i.contact_id for i in claim.items] != [contact_id]:
                    continue  # the live replica polled and took it first: not a failover
                await asyncio.sleep(random.uniform(0, delivery.RENEW_EVERY))
                died = time.perf_counter()
                failovers.append(await pushed(fake, contact_id, done) - died)
                print(f"\rfailover {len(failovers)}/{rounds}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            failover = report("a dead replica's contact pushed by another", failovers)
            print(json.dumps({"bench": "failover", "wake": wake, "failover": failover}))
        finally:
            await dead.close()
            await other.close()
            await service.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.rounds))
