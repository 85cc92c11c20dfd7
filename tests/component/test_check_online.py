"""`hubspot check`: a target's mappings against the (fake) HubSpot portal, before records fail."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli import main
from fake_hubspot import FakeHubSpot
from testkit.payloads import ROOT, contact, write_config

TOKEN = "hs-check-token"
CONTACTS = str(ROOT / "mappings" / "hubspot-contacts.yaml")
COMPANIES = str(ROOT / "mappings" / "hubspot-companies.yaml")
NOT_AN_OPTION = "is not an option: NEW, OPEN, IN_PROGRESS, OPEN_DEAL, UNQUALIFIED"


@pytest.fixture
async def fake() -> AsyncIterator[FakeHubSpot]:
    hub = FakeHubSpot(token=TOKEN)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.settled()
        await hub.stop()


def config(
    folder: Path, fake: FakeHubSpot, fields: dict[str, Any] | None = None, **more: Any
) -> Path:
    """A hubspot target: the shipped contact mapping, extended by ``fields``."""
    mapping = {"extends": CONTACTS, "fields": fields} if fields else CONTACTS
    target = {"type": "hubspot", "access_token": TOKEN, "base_url": fake.url, "mapping": mapping}
    return write_config(folder, {"hubspot": {**target, **more}})


async def cli(*args: str) -> tuple[int, str, str]:
    # In a thread: the command runs its own event loop, the fake serves from this one.
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    return result.exit_code, result.stdout, result.stderr


async def check(path: Path, *payloads: Path, setup: bool = True) -> tuple[int, list[str], str]:
    """Exit status, the table's rows as "object property problem", stderr; after `setup`."""
    target = ["--config", str(path), "--tenant", "demo", "--target", "hubspot"]
    if setup:
        code, _, err = await cli("hubspot", "setup", *target)
        assert code == 0, err
    code, out, err = await cli("hubspot", "check", *target, *map(str, payloads))
    lines = out.splitlines()
    if lines:
        assert re.split(r"\s{2,}", lines[0]) == ["OBJECT", "PROPERTY", "PROBLEM"]
    return code, [" ".join(re.split(r"\s{2,}", line, maxsplit=2)) for line in lines[1:]], err


def problems(rows: list[str]) -> list[str]:
    return [row for row in rows if not row.endswith(" OK")]


async def test_the_shipped_mappings_pass_once_setup_ran(fake: FakeHubSpot, tmp_path: Path) -> None:
    path = config(tmp_path, fake, company_mapping=COMPANIES, associate_company=True)
    code, rows, err = await check(path)
    assert (code, problems(rows), err) == (0, [], "")
    assert rows[:2] == ["contacts mimeeq_contact_id OK", "contacts email OK"]
    assert "companies mimeeq_company_id OK" in rows
    assert "companies website OK" in rows


async def test_missing_properties(fake: FakeHubSpot, tmp_path: Path) -> None:
    path = config(tmp_path, fake, {"favourite_colour": "firstName"})
    await check(path)  # `hubspot setup` ran
    del fake.properties["contacts"]["mimeeq_tags"]  # as if `hubspot setup` never created it
    code, rows, err = await check(path, setup=False)
    assert code == 1
    assert problems(rows) == [
        "contacts mimeeq_tags missing: run `hubspot setup`",
        "contacts favourite_colour missing: not in HubSpot (create it, or fix the mapping)",
    ]
    assert err == "demo/hubspot: 2 problem(s)\n"


@pytest.mark.parametrize("flag", ["readOnlyValue", "calculated"])
async def test_a_read_only_property(fake: FakeHubSpot, tmp_path: Path, flag: str) -> None:
    prop = fake.add_property("mimeeq_score", type="number", field_type="number")
    if flag == "calculated":
        prop["calculated"] = True
    else:
        prop["modificationMetadata"]["readOnlyValue"] = True
    code, rows, _ = await check(config(tmp_path, fake, {"mimeeq_score": {"value": 3}}))
    assert code == 1
    [row] = problems(rows)
    assert row.startswith("contacts mimeeq_score read-only:")


async def test_a_number_property_fed_text(fake: FakeHubSpot, tmp_path: Path) -> None:
    fake.add_property("mimeeq_score", type="number", field_type="number")
    fake.add_property("mimeeq_rank", type="number", field_type="number")
    fields = {"mimeeq_score": "firstName", "mimeeq_rank": {"from": "rank", "default": 2.5}}
    code, rows, _ = await check(config(tmp_path, fake, fields))
    assert code == 1
    assert problems(rows) == [
        "contacts mimeeq_score wrong type: 'John' (from contact-created.json, "
        "contact-updated.json) is not a number"
    ]


async def test_a_date_property_fed_what_is_not_a_date(fake: FakeHubSpot, tmp_path: Path) -> None:
    fake.add_property("mimeeq_since", type="date", field_type="date")
    fake.add_property("mimeeq_seen", type="datetime", field_type="date")
    fields = {
        "mimeeq_since": {"from": "since", "map": {"x": "2024-02-30"}, "default": "2024-01-31"},
        "mimeeq_seen": {"value": "2024-01-31T10:00:00Z"},
    }
    code, rows, _ = await check(config(tmp_path, fake, fields))
    assert code == 1
    assert problems(rows) == [
        "contacts mimeeq_since wrong type: '2024-02-30' (from map) is not a date (YYYY-MM-DD)"
    ]


async def test_a_value_outside_the_options_from_a_map(fake: FakeHubSpot, tmp_path: Path) -> None:
    status = {"from": "status", "map": {"ACTIVE": "Open", "INACTIVE": "UNQUALIFIED"}}
    code, rows, _ = await check(config(tmp_path, fake, {"hs_lead_status": status}))
    assert code == 1
    [row] = problems(rows)
    samples = "contact-created.json, contact-updated.json"  # ACTIVE: mapped to Open
    assert row.startswith(
        f"contacts hs_lead_status value 'Open' (from map, {samples}) {NOT_AN_OPTION}"
    )


async def test_a_value_outside_the_options_from_a_default(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    status = {"from": "status", "map": {"ACTIVE": "OPEN"}, "default": "Lost"}
    code, rows, _ = await check(config(tmp_path, fake, {"hs_lead_status": status}))
    assert code == 1
    [row] = problems(rows)
    assert row.startswith(f"contacts hs_lead_status value 'Lost' (from default) {NOT_AN_OPTION}")


async def test_a_value_outside_the_options_from_a_sample_payload(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    fake.add_property(
        "mimeeq_sector", type="enumeration", field_type="checkbox",
        options=[("tag1", "tag1"), ("tag2", "tag2")],
    )  # fmt: skip
    payload = tmp_path / "mine.json"
    payload.write_text(json.dumps(contact(1, status="LEAD", tags=["tag1", "eco"])))
    fields = {"hs_lead_status": "status", "mimeeq_sector": "tags"}
    code, rows, _ = await check(config(tmp_path, fake, fields), payload)
    assert code == 1
    [active, lead, eco] = problems(rows)
    assert active.startswith(
        "contacts hs_lead_status value 'ACTIVE' (from contact-created.json, contact-updated.json) "
        f"{NOT_AN_OPTION}"
    )
    assert lead.startswith(f"contacts hs_lead_status value 'LEAD' (from mine.json) {NOT_AN_OPTION}")
    # A checkbox value is "tag1;eco": each option is checked.
    assert eco == "contacts mimeeq_sector value 'eco' (from mine.json) is not an option: tag1, tag2"


async def test_an_auto_options_property_takes_any_value(fake: FakeHubSpot, tmp_path: Path) -> None:
    payload = tmp_path / "mine.json"
    payload.write_text(json.dumps(contact(1, status="LEAD", tags=["brand new tag"])))
    auto = ["mimeeq_tags", "mimeeq_status", "hs_lead_status"]
    path = config(tmp_path, fake, {"hs_lead_status": "status"}, auto_options=auto)
    code, rows, _ = await check(path, payload)
    assert (code, problems(rows)) == (0, [])
    assert "contacts hs_lead_status OK" in rows


async def test_a_refused_token_is_one_error_line(fake: FakeHubSpot, tmp_path: Path) -> None:
    path = config(tmp_path, fake, access_token="not-the-token")
    code, rows, err = await check(path, setup=False)
    assert (code, rows) == (1, [])
    [line] = err.splitlines()
    assert line.startswith("Error: HubSpot refused the token (HTTP 401)")


async def test_an_unreachable_portal_is_one_error_line(tmp_path: Path) -> None:
    target = {"type": "hubspot", "access_token": TOKEN, "base_url": "http://127.0.0.1:9",
              "mapping": CONTACTS}  # fmt: skip
    code, out, err = await cli(
        "hubspot", "check", "--config", str(write_config(tmp_path, {"hubspot": target})),
        "--tenant", "demo", "--target", "hubspot",
    )  # fmt: skip
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith("Error: cannot reach HubSpot:")


async def test_check_online_checks_every_hubspot_target(fake: FakeHubSpot, tmp_path: Path) -> None:
    status = {"from": "status", "map": {"ACTIVE": "Open", "INACTIVE": "UNQUALIFIED"}}
    path = config(tmp_path, fake, {"hs_lead_status": status})
    await check(path)  # `hubspot setup` ran; the lead status is still refused
    offline, out, _ = await cli("check", "--config", str(path))
    assert offline == 0 and "OK" in out  # nothing about the portal without --online
    code, out, err = await cli("check", "--online", "--config", str(path))
    assert code == 1
    assert "demo/hubspot against its HubSpot portal:" in out
    assert "value 'Open' (from map" in out and err == "demo/hubspot: 1 problem(s)\n"
