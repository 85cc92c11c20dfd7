"""Mimeeq webhooks in, HubSpot contacts out: the whole service against the fake HubSpot."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import adapters.hubspot.api
from connector.cli import main
from connector.config import load_config
from connector.service import Service
from fake_hubspot import FakeHubSpot
from testkit.hubspot import HS_TOKEN, hubspot_config
from testkit.payloads import contact
from testkit.service import ServerProcess, drained, post_all, status_reaches


def deleted_payload(n: int) -> dict[str, Any]:
    body = contact(n)
    return {"id": body["id"], "customerId": body["customerId"], "emails": body["emails"]}


async def test_300_contacts_reach_hubspot_exactly_as_mapped(
    tmp_path: Path,
    fake: FakeHubSpot,
    server_process: Callable[[Path], ServerProcess],
) -> None:
    fake.conflict_mode = "409"
    # Ten Mimeeq contacts already exist in HubSpot by e-mail, one with a value set by sales.
    existing = {n: fake.add_contact(email=f"person{n}@example.com") for n in range(10)}
    fake.contacts[existing[4]]["lifecyclestage"] = "customer"
    server = server_process(hubspot_config(tmp_path, fake, linger=1.0))
    server.start()

    def body(n: int, **changes: Any) -> dict[str, Any]:
        if n >= 295:
            changes.setdefault("emails", [])  # a few contacts without any e-mail
        if n == 42:
            changes["status"] = "BLOCKED"  # not a HubSpot lead status option
        return contact(n, **changes)

    updated = [n for n in range(300) if n % 3 == 0]
    deleted = [n for n in range(300) if n % 6 == 1]
    await post_all(server.url, [("contact-created", body(n)) for n in range(300)])
    await drained(tmp_path / "connector.db")
    await post_all(server.url, [("contact-updated", body(n, lastName="Updated")) for n in updated])
    await post_all(server.url, [("contact-deleted", deleted_payload(n)) for n in deleted])
    await drained(tmp_path / "connector.db")
    assert server.stop() == 0

    live = {props.get("mimeeq_contact_id"): props for props in fake.contacts.values()}
    expected = {n for n in range(300) if n not in deleted and n != 42}
    assert set(live) == {contact(n)["id"] for n in expected}  # nothing missing, no duplicates
    for n in expected:
        props = live[contact(n)["id"]]
        assert props["firstname"] == f"First{n}"
        assert props.get("lastname") == ("Updated" if n in updated else "Doe")
        assert props.get("email") == (None if n >= 295 else f"person{n}@example.com")
        assert props["hs_lead_status"] == "OPEN" and props["mimeeq_tags"] == "tag1;tag2"
        assert props["mimeeq_status"] == "ACTIVE"
    # Pre-existing contacts were adopted, not duplicated; what sales set survives.
    for n, hs_id in existing.items():
        assert (hs_id in fake.contacts) == (n not in deleted)
    assert fake.contacts[existing[4]]["lifecyclestage"] == "customer"
    assert {p.get("mimeeq_contact_id") for p in fake.archived.values()} == {
        contact(n)["id"] for n in deleted
    }

    with sqlite3.connect(tmp_path / "connector.db") as db:
        dead = db.execute("SELECT contact_id, error FROM dead_letters").fetchall()
    assert [d[0] for d in dead] == [contact(42)["id"]] * len(dead)
    assert "INVALID_OPTION" in dead[0][1] and "BLOCKED" in dead[0][1]

    # Writes: a call per hundred events, plus one per e-mail conflict (409 names one at a
    # time), plus one adoption call per batch that had conflicts.
    events = 300 + len(updated) + len(deleted)
    writes = [c for c in fake.writes() if "/properties/" not in c.path]
    conflicts = sum(1 for c in writes if c.status == 409)
    assert conflicts <= len(existing)
    assert len(writes) <= events / 100 + conflicts + 6, [(c.path, c.inputs) for c in writes]


async def test_backlog_stays_under_the_rate_limit(tmp_path: Path, fake: FakeHubSpot) -> None:
    fake.rate_limit, fake.interval = 10, 1.0
    config = load_config(
        hubspot_config(
            tmp_path, fake, batch_size=4, linger=0, rate_limit={"requests": 10, "per_seconds": 1}
        )
    )
    service = Service(config)
    await service.start()
    try:
        await post_all(
            f"http://127.0.0.1:{service.port}",
            [("contact-created", contact(n, tags=[])) for n in range(120)],
        )
        await drained(tmp_path / "connector.db")
    finally:
        await service.stop()
    assert len(fake.contacts) == 120
    # HubSpot counts a request when it arrives: one delayed on its way by a busy machine can
    # land in the next window, and is then refused (and retried). Hardly ever.
    assert fake.rate_refusals <= 3


async def test_a_revoked_token_pauses_the_target_until_it_is_fixed(
    tmp_path: Path, fake: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapters.hubspot.api, "AUTH_PROBE", 0.5)
    fake.token = "the-token-was-rotated"
    service = Service(load_config(hubspot_config(tmp_path, fake, linger=0)))
    await service.start()
    try:
        await post_all(f"http://127.0.0.1:{service.port}", [("contact-created", contact(1))])
        # Nothing burned into dead letters while the token is refused.
        status = await status_reaches(service, "demo/hubspot", paused=True, pending=1, dead=0)
        assert "401" in (status.paused_reason or "")
        fake.token = HS_TOKEN  # the operator fixes the token in HubSpot
        await status_reaches(service, "demo/hubspot", paused=False, pending=0, delivered=1)
    finally:
        await service.stop()
    assert len(fake.contacts) == 1


async def test_hubspot_setup_command(tmp_path: Path, fake: FakeHubSpot) -> None:
    del fake.properties["contacts"]["mimeeq_contact_id"]
    config = hubspot_config(tmp_path, fake)
    args = ["hubspot", "setup", "--config", str(config), "--tenant", "demo", "--target", "hubspot"]
    first = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert first.exit_code == 0, first.output
    assert "created contacts property 'mimeeq_contact_id'" in first.stdout
    assert fake.properties["contacts"]["mimeeq_contact_id"]["hasUniqueValue"] is True
    again = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert again.exit_code == 0 and "already exists" in again.stdout
    assert HS_TOKEN not in first.output + again.output
    fake.token = "revoked"
    refused = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert refused.exit_code == 1 and "refused the token" in refused.stderr
