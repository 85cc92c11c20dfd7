"""The HubSpot adapter, through the real hubspot-api-client, against the fake HubSpot."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters.hubspot import HubSpotAdapter, HubSpotSettings
from connector.errors import TargetPaused
from connector.mapping import load_mapping
from connector.targets import Dead, Delivered, Record, Retry, TargetContext
from tests.conftest import ROOT, contact
from tests.fake_hubspot import FakeHubSpot

TOKEN = "hs-test-token"
# Statuses Mimeeq may add one day pass through unmapped: HubSpot refuses them (INVALID_OPTION).
STATUS_WITHOUT_DEFAULT = {"from": "status", "map": {"ACTIVE": "OPEN", "INACTIVE": "UNQUALIFIED"}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeHubSpot]:
    hub = FakeHubSpot(token=TOKEN)
    await hub.start()
    hub.properties["contacts"]["mimeeq_contact_id"] = {
        "name": "mimeeq_contact_id", "type": "string", "fieldType": "text",
        "hasUniqueValue": True, "groupName": "mimeeq", "options": [],
    }  # fmt: skip
    hub.properties["contacts"]["mimeeq_tags"] = {
        "name": "mimeeq_tags", "type": "enumeration", "fieldType": "checkbox",
        "hasUniqueValue": False, "groupName": "mimeeq",
        "options": [{"label": t, "value": t, "displayOrder": 0, "hidden": False}
                    for t in ("tag1", "tag2")],
    }  # fmt: skip
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.fixture
async def make_adapter(fake: FakeHubSpot) -> AsyncIterator[Callable[..., Any]]:
    made: list[HubSpotAdapter] = []

    async def make(**options: Any) -> HubSpotAdapter:
        mapping = load_mapping(options.pop("mapping", "mappings/hubspot-contacts.yaml"), ROOT)
        settings = HubSpotSettings.model_validate(
            {"type": "hubspot", "mapping": "unused", "access_token": TOKEN,
             "base_url": fake.url, "read_timeout": 2, **options}
        )  # fmt: skip
        adapter = HubSpotAdapter(settings, TargetContext("demo", "hubspot", mapping))
        adapter.api.transient_attempts = 2
        await adapter.open()
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.close()


def record(
    adapter: HubSpotAdapter,
    n: int,
    op: str = "upsert",
    remote_id: str | None = None,
    **changes: Any,
) -> Record:
    payload = contact(n, **changes)
    return Record(
        contact_id=payload["id"],
        op=op,  # type: ignore[arg-type]
        event="contact-deleted" if op == "delete" else "contact-updated",
        event_id=f"event-{n}",
        fields=adapter.context.mapping.apply(payload),
        payload=payload,
        remote_id=remote_id,
        attempt=1,
    )


def in_hubspot(fake: FakeHubSpot, n: int) -> dict[str, str] | None:
    found = fake.find("mimeeq_contact_id", contact(n)["id"])
    return found[1] if found else None


async def test_new_contacts_cost_one_call_per_hundred(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, n) for n in range(100)])
    assert all(isinstance(o, Delivered) and o.remote_id for o in outcomes)
    assert len(fake.contacts) == 100
    assert [c.path for c in fake.writes()].count("/crm/v3/objects/contacts/batch/upsert") == 1
    props = in_hubspot(fake, 7)
    assert props is not None
    assert (props["firstname"], props["email"], props["hs_lead_status"]) == (
        "First7",
        "person7@example.com",
        "OPEN",
    )
    assert props["mimeeq_tags"] == "tag1;tag2"
    assert outcomes[7] == Delivered(remote_id=props["hs_object_id"])


async def test_only_mapped_properties_are_written(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    await adapter.push([record(adapter, 1)])
    hs_id, _ = fake.find("mimeeq_contact_id", contact(1)["id"])  # type: ignore[misc]
    fake.contacts[hs_id]["lifecyclestage"] = "customer"  # set by a HubSpot user
    await adapter.push([record(adapter, 1, remote_id=hs_id, lastName="Renamed")])
    props = fake.contacts[hs_id]
    assert props["lastname"] == "Renamed" and props["lifecyclestage"] == "customer"


async def test_a_refused_record_is_dead_and_the_others_delivered(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter(
        mapping={
            "extends": "mappings/hubspot-contacts.yaml",
            "fields": {"hs_lead_status": STATUS_WITHOUT_DEFAULT},
        }
    )
    records = [record(adapter, n) for n in range(5)]
    records[2] = record(adapter, 2, status="BLOCKED")
    outcomes = await adapter.push(records)
    assert isinstance(outcomes[2], Dead) and "INVALID_OPTION" in outcomes[2].reason
    assert "hs_lead_status" in outcomes[2].reason
    assert all(isinstance(outcomes[i], Delivered) for i in (0, 1, 3, 4))
    assert len(fake.contacts) == 4
    assert len(fake.writes()) == 1


async def test_a_batch_refused_whole_is_bisected(fake: FakeHubSpot, make_adapter) -> None:
    fake.validation_mode = "400"
    adapter = await make_adapter(
        mapping={
            "extends": "mappings/hubspot-contacts.yaml",
            "fields": {"hs_lead_status": STATUS_WITHOUT_DEFAULT},
        }
    )
    records = [record(adapter, n) for n in range(16)]
    records[11] = record(adapter, 11, status="BLOCKED")
    outcomes = await adapter.push(records)
    assert (
        isinstance(outcomes[11], Dead) and "Property values were not valid" in outcomes[11].reason
    )
    assert sum(isinstance(o, Delivered) for o in outcomes) == 15
    assert len(fake.contacts) == 15
    assert len(fake.writes()) <= 2 * 4 + 1  # log2(16) levels, two halves each


@pytest.mark.parametrize("mode", ["409", "207"])
async def test_an_existing_email_is_adopted_not_duplicated(
    fake: FakeHubSpot, make_adapter, mode: str
) -> None:
    fake.conflict_mode = mode
    existing = fake.add_contact(email="person3@example.com", lifecyclestage="customer")
    other = fake.add_contact(email="person8@example.com")
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, n) for n in range(10)])
    assert all(isinstance(o, Delivered) for o in outcomes), outcomes
    assert outcomes[3] == Delivered(
        remote_id=existing, note=f"adopted existing HubSpot contact {existing} (same e-mail)"
    )
    assert len(fake.contacts) == 10  # 8 new, 2 adopted
    assert fake.contacts[existing]["mimeeq_contact_id"] == contact(3)["id"]
    assert fake.contacts[existing]["lifecyclestage"] == "customer"
    assert fake.contacts[other]["firstname"] == "First8"
    # Later updates find the adopted contact by the unique property.
    await adapter.push([record(adapter, 3, lastName="Again")])
    assert fake.contacts[existing]["lastname"] == "Again" and len(fake.contacts) == 10


async def test_email_id_property_upserts_by_email(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter(id_property="email")
    outcomes = await adapter.push([record(adapter, 1), record(adapter, 2, emails=[])])
    assert isinstance(outcomes[0], Delivered)
    assert outcomes[1] == Dead("no e-mail address: this target upserts by email")
    assert fake.find("email", "person1@example.com") is not None
    assert "mimeeq_contact_id" not in next(iter(fake.contacts.values()))


async def test_deletes_archive_by_remembered_or_looked_up_id(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter()
    created = await adapter.push([record(adapter, n) for n in range(3)])
    remembered = created[0].remote_id  # type: ignore[union-attr]
    outcomes = await adapter.push(
        [
            record(adapter, 0, "delete", remote_id=remembered),
            record(adapter, 1, "delete"),  # id not remembered: looked up by the unique property
            record(adapter, 9, "delete"),  # never in HubSpot
        ]
    )
    assert outcomes[0] == Delivered(remote_id=remembered, note="archived")
    assert isinstance(outcomes[1], Delivered) and outcomes[1].note == "archived"
    assert outcomes[2] == Delivered(note="not in HubSpot: nothing to delete")
    assert len(fake.contacts) == 1 and len(fake.archived) == 2


async def test_gdpr_delete_and_ignore(fake: FakeHubSpot, make_adapter) -> None:
    gdpr = await make_adapter(on_delete="gdpr_delete")
    await gdpr.push([record(gdpr, 1), record(gdpr, 2)])
    outcomes = await gdpr.push([record(gdpr, 1, "delete"), record(gdpr, 5, "delete")])
    assert outcomes[0] == Delivered(note="GDPR-deleted")
    assert outcomes[1] == Delivered(note="not in HubSpot: nothing to delete")
    assert in_hubspot(fake, 1) is None and not fake.archived
    ignore = await make_adapter(on_delete="ignore")
    (kept,) = await ignore.push([record(ignore, 2, "delete")])
    assert kept == Delivered(note="on_delete is ignore: left in HubSpot")
    assert in_hubspot(fake, 2) is not None


async def test_contacts_are_associated_with_their_company(fake: FakeHubSpot, make_adapter) -> None:
    company = fake.add_company(name="Example", mimeeq_company_id="COMP-1")
    fake.properties["companies"]["mimeeq_company_id"] = {
        "name": "mimeeq_company_id", "type": "string", "fieldType": "text",
        "hasUniqueValue": True, "options": [],
    }  # fmt: skip
    adapter = await make_adapter(associate_company=True)
    outcomes = await adapter.push(
        [record(adapter, 1, companyId="COMP-1"), record(adapter, 2, companyId="COMP-404"),
         record(adapter, 3, companyId="COMP-1")]
    )  # fmt: skip
    hs_one = in_hubspot(fake, 1)["hs_object_id"]  # type: ignore[index]
    assert (hs_one, company) in fake.associations
    assert outcomes[0].note == f"associated with company {company}"  # type: ignore[union-attr]
    assert "company COMP-404 not in HubSpot" in (outcomes[1].note or "")  # type: ignore[union-attr]
    # One read of companies and one association call for the whole batch.
    paths = [c.path for c in fake.calls]
    assert paths.count("/crm/v3/objects/companies/batch/read") == 1
    assert paths.count("/crm/v4/associations/contacts/companies/batch/associate/default") == 1


async def test_new_tags_become_options(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    await adapter.push([record(adapter, 1, tags=["vip", "trade fair"])])
    options = {o["value"] for o in fake.properties["contacts"]["mimeeq_tags"]["options"]}
    assert options == {"tag1", "tag2", "vip", "trade fair"}  # the existing ones are kept
    assert in_hubspot(fake, 1)["mimeeq_tags"] == "vip;trade fair"  # type: ignore[index]


async def test_rate_limit_answers_are_waited_out(fake: FakeHubSpot, make_adapter) -> None:
    fake.fail_next = [429, 429]
    adapter = await make_adapter()
    start = time.monotonic()
    outcomes = await adapter.push([record(adapter, 1)])
    assert isinstance(outcomes[0], Delivered)
    assert fake.count(429) == 2
    assert time.monotonic() - start >= 1.0  # Retry-After was honoured


async def test_daily_limit_pauses_until_midnight(fake: FakeHubSpot, make_adapter) -> None:
    fake.daily_limit = 0
    adapter = await make_adapter()
    with pytest.raises(TargetPaused, match="daily") as caught:
        await adapter.push([record(adapter, 1)])
    assert caught.value.until is not None and caught.value.until > time.time()
    assert caught.value.until - time.time() <= 86_400


@pytest.mark.parametrize("problem", ["token", "scopes"])
async def test_bad_credentials_pause_the_target(
    fake: FakeHubSpot, make_adapter, problem: str
) -> None:
    if problem == "token":
        fake.token = "rotated"
    else:
        fake.scopes_missing = True
    adapter = await make_adapter()
    with pytest.raises(TargetPaused, match="refused the token"):
        await adapter.push([record(adapter, 1)])
    assert not fake.contacts


async def test_a_passing_outage_is_retried_within_the_push(fake: FakeHubSpot, make_adapter) -> None:
    fake.fail_next = [503]
    adapter = await make_adapter()
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Delivered)


async def test_a_longer_outage_becomes_a_retry(fake: FakeHubSpot, make_adapter) -> None:
    fake.down = True
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, 1), record(adapter, 2, "delete")])
    assert all(isinstance(o, Retry) and "503" in o.reason for o in outcomes)


async def test_an_unreachable_hubspot_becomes_a_retry(make_adapter, fake: FakeHubSpot) -> None:
    adapter = await make_adapter()
    await fake.stop()
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Retry) and "cannot reach HubSpot" in outcome.reason


async def test_a_slow_hubspot_times_out(fake: FakeHubSpot, make_adapter) -> None:
    fake.latency = 3.0
    adapter = await make_adapter(read_timeout=0.3)
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Retry) and "Timeout" in outcome.reason


async def test_setup_creates_what_the_connector_needs_and_can_run_twice(
    fake: FakeHubSpot, make_adapter
) -> None:
    del fake.properties["contacts"]["mimeeq_contact_id"]
    del fake.properties["contacts"]["mimeeq_tags"]
    adapter = await make_adapter(associate_company=True)
    first = await adapter.setup()
    assert "created contacts property group 'mimeeq'" in first
    assert "created contacts property 'mimeeq_contact_id'" in first
    assert "created contacts property 'mimeeq_tags'" in first
    assert "created companies property 'mimeeq_company_id'" in first
    assert fake.properties["contacts"]["mimeeq_contact_id"]["hasUniqueValue"] is True
    second = await adapter.setup()
    assert "contacts property 'mimeeq_contact_id' already exists" in second
    assert not any(line.startswith("WARNING") for line in second)
