"""Companies benchmark: HubSpot calls to sync companies and contacts, against the minimum.

Runs the whole service (receiver, SQLite queue, a HubSpot target taking companies and linking
contacts to them) against the fake HubSpot, with the shipped mappings, on the scenario of the
end-to-end test (``testkit.companies``): 200 companies and 1,000 contacts created in random order
(contacts often before their company), then 40 companies renamed and 250 contacts moved to
another company, then 10 companies and 100 contacts deleted. Prints the calls by endpoint, and
their total against the fewest the scenario can take (every batch call carrying 100 objects).

    python bench/companies.py
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/
from bench.common import ROOT, machine
from bench.hubspot import drained, hubspot_service, post_burst
from connector.logs import configure_logging
from connector.runtime import server_runner
from connector.service import Service
from fake_hubspot import FakeHubSpot
from testkit.companies import Scenario, minimum_hubspot_calls, scenario

HS_TOKEN = "hs-bench"


async def start(folder: Path, fake: FakeHubSpot) -> Service:
    return await hubspot_service(
        folder, "companies.db", fake.url,
        mapping=str(ROOT / "mappings" / "hubspot-contacts.yaml"),
        company_mapping=str(ROOT / "mappings" / "hubspot-companies.yaml"),
        associate_company=True,
    )  # fmt: skip


def properties(fake: FakeHubSpot) -> None:
    """What `hubspot setup` creates."""
    for object_type, id_property in (
        ("contacts", "mimeeq_contact_id"),
        ("companies", "mimeeq_company_id"),
    ):
        fake.add_property(id_property, object_type=object_type, unique=True)
        fake.add_property(
            "mimeeq_tags", object_type=object_type, type="enumeration", field_type="checkbox"
        )
        fake.add_property(
            "mimeeq_status", object_type=object_type, type="enumeration", field_type="select",
            options=[("ACTIVE", "Active"), ("INACTIVE", "Inactive")],
        )  # fmt: skip


async def run(s: Scenario) -> dict[str, object]:
    fake = FakeHubSpot(token=HS_TOKEN)
    await fake.start()
    properties(fake)
    with tempfile.TemporaryDirectory() as folder:
        service = await start(Path(folder), fake)
        started = time.monotonic()
        try:
            for n, wave in enumerate(s.waves, 1):
                print(f"wave {n} of {len(s.waves)}: {len(wave)} webhooks...", flush=True)
                await post_burst(service, wave)
                await drained(service, timeout=300)
        finally:
            await service.stop()
        seconds = time.monotonic() - started
    await fake.stop()
    calls = collections.Counter(f"{c.method} {c.path}" for c in fake.calls)
    for endpoint, n in sorted(calls.items(), key=lambda item: -item[1]):
        print(f"{n:6}  {endpoint}")
    total, minimum = sum(calls.values()), minimum_hubspot_calls(s)
    print(f"{s.events:,} webhooks: {total} HubSpot calls, minimum {minimum} "
          f"({total / minimum:.2f}x), {seconds:.1f} s")  # fmt: skip
    return {
        "benchmark": "companies",
        "machine": machine(),
        "webhooks": s.events,
        "hubspot_calls": total,
        "minimum_calls": minimum,
        "calls_vs_minimum": round(total / minimum, 2),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--companies", type=int, default=200)
    parser.add_argument("--contacts", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("console", "warning")
    with server_runner() as runner:
        figures = runner.run(run(scenario(args.companies, args.contacts)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
