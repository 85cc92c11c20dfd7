"""Mimeeq companies and contacts in, in any order: HubSpot ends with exactly the live companies
and contacts, each contact linked to exactly its current company, and the CSV files and a REST
CRM agree."""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from connector.config import load_config
from connector.service import Service
from connector.store.base import Relink
from connector.store.sqlite import SQLiteStore
from fake_hubspot import FakeHubSpot
from testkit.companies import Scenario, scenario
from testkit.hubspot import hubspot_config
from testkit.payloads import ROOT, company, company_id, contact
from testkit.service import ServerProcess, drained, post_all, send
from testkit.waiting import eventually


def add_company_properties(fake: FakeHubSpot) -> None:
    """What `hubspot setup` creates on companies for a target with a company mapping."""
    fake.groups["companies"].add("mimeeq")
    fake.add_property("mimeeq_company_id", object_type="companies", unique=True, group="mimeeq")
    fake.add_property(
        "mimeeq_tags", object_type="companies", type="enumeration", field_type="checkbox",
        group="mimeeq",
    )  # fmt: skip
    fake.add_property(
        "mimeeq_status", object_type="companies", type="enumeration", field_type="select",
        options=[("ACTIVE", "Active"), ("INACTIVE", "Inactive")], group="mimeeq",
    )  # fmt: skip


class Crm:
    """A REST CRM keyed by the Mimeeq ids: PUT writes an object whole, DELETE removes it."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"contacts": {}, "companies": {}}
        app = web.Application()
        app.router.add_put("/{kind:contacts|companies}/{id}", self.put)
        app.router.add_delete("/{kind:contacts|companies}/{id}", self.delete)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def put(self, request: web.Request) -> web.Response:
        kind, key = request.match_info["kind"], request.match_info["id"]
        self.objects[kind][key] = await request.json()
        return web.json_response({"id": key})

    async def delete(self, request: web.Request) -> web.Response:
        kind, key = request.match_info["kind"], request.match_info["id"]
        found = self.objects[kind].pop(key, None)
        return web.json_response(None, status=204 if found else 404)


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    server = Crm()
    await server.runner.setup()
    site = web.TCPSite(server.runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{server.runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await server.runner.cleanup()


def rest_target(crm: Crm) -> dict[str, Any]:
    def requests(kind: str, key: str) -> dict[str, Any]:
        path = f"/{kind}/{{{key}}}"
        return {"upsert": {"method": "PUT", "path": path}, "delete": {"path": path}}

    return {
        "type": "rest",
        "base_url": crm.url,
        "mapping": str(ROOT / "mappings" / "rest-contacts.yaml"),
        **requests("contacts", "contact_id"),
        "company_mapping": str(ROOT / "mappings" / "rest-companies.yaml"),
        "companies": requests("companies", "company_id"),
    }


def companies_config(
    folder: Path, fake: FakeHubSpot, crm: Crm | None = None, *, with_csv: bool = True
) -> Path:
    """A HubSpot target (and a CSV one, and a REST one) taking companies."""
    path = hubspot_config(
        folder,
        fake,
        company_mapping=str(ROOT / "mappings" / "hubspot-companies.yaml"),
        associate_company=True,
    )
    if not with_csv:
        return path
    config = yaml.safe_load(path.read_text())
    config["tenants"]["demo"]["targets"]["sheet"] = {
        "type": "csv",
        "path": "contacts.csv",
        "mapping": str(ROOT / "mappings" / "csv-contacts.yaml"),
        "companies_path": "companies.csv",
        "company_mapping": str(ROOT / "mappings" / "csv-companies.yaml"),
    }
    if crm is not None:
        config["tenants"]["demo"]["targets"]["crm"] = rest_target(crm)
    path.write_text(yaml.safe_dump(config))
    return path


def hubspot_state(fake: FakeHubSpot) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Companies (Mimeeq id -> name), their HubSpot ids, and contacts' Mimeeq id -> HubSpot id;
    each Mimeeq id at most once."""
    names: dict[str, str] = {}
    company_ids: dict[str, str] = {}
    for hs_id, props in fake.companies.items():
        mimeeq = props["mimeeq_company_id"]
        assert mimeeq not in names, f"{mimeeq} is in HubSpot twice"
        names[mimeeq], company_ids[hs_id] = props["name"], mimeeq
    contacts: dict[str, str] = {}
    for hs_id, props in fake.contacts.items():
        mimeeq = props["mimeeq_contact_id"]
        assert mimeeq not in contacts, f"{mimeeq} is in HubSpot twice"
        contacts[mimeeq] = hs_id
    return names, company_ids, contacts


def visible_associations(fake: FakeHubSpot) -> set[tuple[str, str]]:
    """Associations between live objects: HubSpot shows none with an archived company."""
    return {(a, b) for a, b in fake.associations if a in fake.contacts and b in fake.companies}


def assert_hubspot_mirrors(fake: FakeHubSpot, s: Scenario) -> None:
    names, mimeeq_of_company, contacts = hubspot_state(fake)
    assert names == s.companies
    assert set(contacts) == set(s.contacts)
    hs_company = {mimeeq: hs_id for hs_id, mimeeq in mimeeq_of_company.items()}
    linked: dict[str, set[str]] = {}
    for contact_hs, company_hs in visible_associations(fake):
        linked.setdefault(contact_hs, set()).add(mimeeq_of_company[company_hs])
    for mimeeq, (last_name, current) in s.contacts.items():
        hs_id = contacts[mimeeq]
        assert fake.contacts[hs_id]["lastname"] == last_name
        expected = {current} if current in hs_company else set()
        assert linked.get(hs_id, set()) == expected, mimeeq


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as file:
        return {row[next(iter(row))]: row for row in csv.DictReader(file)}


async def run(url: str, db: Path, s: Scenario) -> None:
    for wave in s.waves:
        await post_all(url, wave)
    await drained(db)


async def test_companies_and_contacts_in_any_order_end_mirrored(
    tmp_path: Path,
    fake: FakeHubSpot,
    crm: Crm,
    server_process: Callable[[Path], ServerProcess],
) -> None:
    add_company_properties(fake)
    s = scenario()
    server = server_process(companies_config(tmp_path, fake, crm))
    server.start()
    await run(server.url, tmp_path / "connector.db", s)
    assert server.stop() == 0

    assert_hubspot_mirrors(fake, s)
    archived = {p["mimeeq_company_id"] for p in fake.archived_companies.values()}
    assert archived == {company_id(c) for c in range(200) if c % 20 == 3}
    companies = csv_rows(tmp_path / "companies.csv")
    assert {k: row["name"] for k, row in companies.items()} == s.companies
    contacts = csv_rows(tmp_path / "contacts.csv")
    assert {k: row["last_name"] for k, row in contacts.items()} == {
        k: last for k, (last, _) in s.contacts.items()
    }
    assert {k: c["name"] for k, c in crm.objects["companies"].items()} == s.companies
    assert {k: (c["last_name"], c["company_id"]) for k, c in crm.objects["contacts"].items()} == (
        s.contacts
    )


async def order(
    tmp_path: Path,
    fake: FakeHubSpot,
    server_process: Callable[[Path], ServerProcess],
    *waves: list[tuple[str, dict[str, Any]]],
    linked: tuple[int, str],
) -> None:
    """Post the waves, each once the one before is delivered; then wait for contact n's link
    (a link a company's push queues comes a moment after the queue first looks empty)."""
    add_company_properties(fake)
    server = server_process(companies_config(tmp_path, fake, with_csv=False))
    server.start()
    for wave in waves:
        await post_all(server.url, wave)
        await drained(tmp_path / "connector.db")
    n, company = linked
    await eventually(lambda: linked_companies(fake, n) == {company})
    assert server.stop() == 0


def linked_companies(fake: FakeHubSpot, n: int) -> set[str]:
    contact_hs = next(
        hs for hs, p in fake.contacts.items() if p["mimeeq_contact_id"] == contact(n)["id"]
    )
    return {
        fake.companies[company_hs]["mimeeq_company_id"]
        for c, company_hs in visible_associations(fake)
        if c == contact_hs
    }


async def test_a_contact_before_its_company_is_linked_when_the_company_comes(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    await order(
        tmp_path, fake, server_process,
        [("contact-created", contact(1, companyId=company_id(1)))],
        [("company-created", company(1))],
        linked=(1, company_id(1)),
    )  # fmt: skip


async def test_a_company_before_its_contact_is_linked_at_once(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    await order(
        tmp_path, fake, server_process,
        [("company-created", company(1))],
        [("contact-created", contact(1, companyId=company_id(1)))],
        linked=(1, company_id(1)),
    )  # fmt: skip


async def test_a_contact_moving_to_another_company_moves_its_link(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    await order(
        tmp_path, fake, server_process,
        [("company-created", company(1)), ("company-created", company(2)),
         ("contact-created", contact(1, companyId=company_id(1)))],
        [("contact-updated", contact(1, companyId=company_id(2)))],
        linked=(1, company_id(2)),
    )  # fmt: skip


async def test_a_link_the_store_failed_to_queue_is_made_all_the_same(
    tmp_path: Path, fake: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_company_properties(fake)
    service = Service(load_config(companies_config(tmp_path, fake, with_csv=False)))
    await service.start()
    try:
        await send(service, "contact-created", contact(1, companyId=company_id(1)))
        await drained(tmp_path / "connector.db")  # written, and waiting for its company
        asked: list[Relink] = []  # the contact's own relink may still come: it finds nothing
        relink = SQLiteStore.relink

        async def failing_once(store: SQLiteStore, target: str, links: Relink) -> int:
            asked.append(links)
            if links.companies and all(not a.companies for a in asked[:-1]):
                raise sqlite3.OperationalError("disk I/O error")  # the company's, the first time
            return await relink(store, target, links)

        monkeypatch.setattr(SQLiteStore, "relink", failing_once)
        await send(service, "company-created", company(1))
        # The company's push could not queue its contact; the next claim looks at every one.
        await eventually(lambda: linked_companies(fake, 1) == {company_id(1)})
        failed = next(i for i, links in enumerate(asked) if links.companies)
        assert asked[failed].companies == [company_id(1)]
        assert any(links.companies is None for links in asked[failed + 1 :])  # the sweep
    finally:
        await service.stop()
