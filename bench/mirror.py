"""Mirror benchmark: what updates cost in HubSpot calls once writes are diffs.

Runs the whole service (receiver, SQLite queue, HubSpot target) against the fake HubSpot with the
shipped mapping. 1,000 contacts are created first; then, counting only the calls that follow:

1. 1,000 contact-updated webhooks that change only what the mapping does not read (Mimeeq fires
   contact-updated for those too): target 0 write calls;
2. 1,000 contact-updated webhooks, each changing one mapped field of a different contact:
   target <= 11 write calls (10 batches of 100, and one for a straggler);
3. the same 1,000 posted again (redeliveries of each contact's latest state): 0 write calls.

    python bench/mirror.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
from bench.common import machine
from bench.hubspot import contact, drained, post_burst, scenario, writes
from connector.logs import configure_logging

CONTACTS = 1000


async def phase(
    name: str, service: Any, fake: Any, events: list[tuple[str, dict[str, Any]]], target: int
) -> int:
    before = writes(fake)
    started = time.monotonic()
    await post_burst(service, events)
    await drained(service)
    calls = writes(fake) - before
    seconds = time.monotonic() - started
    print(f"{name}: {calls} write calls (target <= {target}), {seconds:.1f} s", flush=True)
    return calls


async def run() -> dict[str, Any]:
    figures: dict[str, Any] = {"benchmark": "mirror", "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mirror"
        folder.mkdir()
        fake, service = await scenario(folder, 100, 10.0)
        try:
            print(f"creating {CONTACTS:,} contacts...", flush=True)
            await post_burst(service, [("contact-created", contact(n)) for n in range(CONTACTS)])
            await drained(service)

            unmapped = [
                ("contact-updated", contact(n, companyId=f"COMP-{n}", lastSeen="2026-12-03"))
                for n in range(CONTACTS)
            ]
            figures["writes_per_1000_unmapped_updates"] = await phase(
                "1,000 updates of unmapped fields", service, fake, unmapped, 0
            )
            changed = [
                ("contact-updated", contact(n, lastName=f"Changed{n}")) for n in range(CONTACTS)
            ]
            figures["writes_per_1000_one_field_updates"] = await phase(
                "1,000 updates of one mapped field", service, fake, changed, 11
            )
            figures["writes_per_1000_redeliveries"] = await phase(
                "the same 1,000 redelivered", service, fake, changed, 0
            )
            (status,) = await service.store.status()
            figures["unchanged"] = status.unchanged
            assert all(
                props.get("lastname") == f"Changed{int(props['mimeeq_contact_id'][5:])}"
                for props in fake.contacts.values()
            ), "HubSpot does not hold the latest state"
        finally:
            await service.stop()
            await fake.stop()
    return figures


def main() -> None:
    configure_logging("json", "warning")
    figures = asyncio.run(run())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
