"""The HubSpot adapter, through the real hubspot-api-client and httpx, against the fake HubSpot."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
import yaml
from click.testing import CliRunner

from adapters.hubspot import HubSpotAdapter, HubSpotSettings
from connector.adapter import CLAIM_HOLD, ClaimHold, Record, TargetContext
from connector.cli import main
from connector.errors import TargetPaused
from connector.mapping import FieldMapping, load_mapping
from connector.outcomes import CompanyLink, Dead, Delivered, Retry
from fake_hubspot import FakeHubSpot
from testkit.payloads import CUSTOMER, ROOT, company, company_id, contact

TOKEN = "hs-test-token"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
ASSOCIATE = "/crm/v4/associations/contacts/companies/batch/associate/default"
DISSOCIATE = "/crm/v4/associations/contacts/companies/batch/archive"
# Statuses Mimeeq may add one day pass through unmapped: HubSpot refuses them (INVALID_OPTION).
STATUS_WITHOUT_DEFAULT = {"from": "status", "map": {"ACTIVE": "OPEN", "INACTIVE": "UNQUALIFIED"}}
WITH_LEAD_STATUS = {
    "extends": "mappings/hubspot-contacts.yaml",
    "fields": {"hs_lead_status": STATUS_WITHOUT_DEFAULT},
}


def add_mimeeq_properties(hub: FakeHubSpot) -> None:
    """What `hubspot setup` creates, as the fixtures' starting point."""
    hub.groups["contacts"].add("mimeeq")
    hub.add_property("mimeeq_contact_id", unique=True, group="mimeeq")
    hub.add_property(
        "mimeeq_tags", type="enumeration", field_type="checkbox", group="mimeeq",
        options=[("tag1", "tag1"), ("tag2", "tag2")],
    )  # fmt: skip
    hub.add_property(
        "mimeeq_status", type="enumeration", field_type="select", group="mimeeq",
        options=[("ACTIVE", "Active"), ("INACTIVE", "Inactive")],
    )  # fmt: skip


@pytest.fixture
async def fake() -> AsyncIterator[FakeHubSpot]:
    hub = FakeHubSpot(token=TOKEN, time_zone="America/Los_Angeles")
    await hub.start()
    add_mimeeq_properties(hub)
    try:
        yield hub
    finally:
        await hub.settled()
        await hub.stop()


MAPPINGS: dict[HubSpotAdapter, FieldMapping] = {}  # each adapter's mapping, to build its records


@pytest.fixture
async def make_adapter(fake: FakeHubSpot) -> AsyncIterator[Callable[..., Any]]:
    made: list[HubSpotAdapter] = []

    async def make(**options: Any) -> HubSpotAdapter:
        mapping = load_mapping(options.pop("mapping", "mappings/hubspot-contacts.yaml"), ROOT)
        settings = HubSpotSettings.model_validate(
            {"type": "hubspot", "mapping": "unused", "access_token": TOKEN,
             "base_url": fake.url, **options}
        )  # fmt: skip
        adapter = HubSpotAdapter(settings, TargetContext("demo", "hubspot", mapping.fields))
        MAPPINGS[adapter] = mapping
        adapter.api.transient_attempts = 2
        await adapter.open()
        made.append(adapter)
        await adapter.api.read_zone()  # as the first push would: tests then steer what follows
        return adapter

    yield make
    for adapter in made:
        await adapter.close()


def record(
    adapter: HubSpotAdapter,
    n: int,
    op: str = "upsert",
    remote_id: str | None = None,
    *,
    after: Record | None = None,
    company: CompanyLink | None = None,
    **changes: Any,
) -> Record:
    """Contact ``n``; ``after``: the record last confirmed written, to plan a diff against."""
    payload = contact(n, **changes)
    fields = MAPPINGS[adapter].apply(payload)
    unchanged: frozenset[str] = frozenset()
    cleared: tuple[str, ...] = ()
    if after is not None:  # what the worker plans from the sync state
        unchanged = frozenset(k for k, v in fields.items() if after.fields.get(k) == v)
        cleared = tuple(k for k in after.fields if k not in fields)
        remote_id = remote_id or after.remote_id
        company = company or after.company
    return Record(
        contact_id=payload["id"],
        op=op,  # type: ignore[arg-type]
        event="contact-deleted" if op == "delete" else "contact-updated",
        event_id=f"event-{n}",
        fields=fields,
        payload=payload,
        remote_id=remote_id,
        attempt=1,
        unchanged=unchanged,
        cleared=cleared,
        company_id=payload.get("companyId"),
        company=company,
    )


def confirmed(r: Record, outcome: object) -> Record:
    """The record as the worker remembers it once the target confirmed it."""
    assert isinstance(outcome, Delivered), outcome
    return Record(
        r.contact_id, r.op, r.event, r.event_id, r.fields, r.payload, outcome.remote_id,
        r.attempt, company=outcome.company,
    )  # fmt: skip


def in_hubspot(fake: FakeHubSpot, n: int) -> dict[str, str]:
    found = fake.find("mimeeq_contact_id", contact(n)["id"])
    assert found is not None, f"contact {n} is not in HubSpot"
    return found[1]


async def warm(adapter: HubSpotAdapter) -> HubSpotAdapter:
    """After a first push the adapter knows the options: the next push is one upsert."""
    assert all(isinstance(o, Delivered) for o in await adapter.push([record(adapter, 99)]))
    return adapter


def sent(fake: FakeHubSpot, path: str = UPSERT) -> list[dict[str, str]]:
    """The properties of each input the fake received on ``path``, in order."""
    return [i["properties"] for c in fake.calls if c.path == path for i in c.body["inputs"]]


# --- writing ---------------------------------------------------------------------------------


async def test_new_contacts_cost_one_call_per_hundred(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, n) for n in range(100)])
    assert all(isinstance(o, Delivered) and o.remote_id for o in outcomes)
    assert len(fake.contacts) == 100
    assert [c.path for c in fake.writes()] == [UPSERT]
    props = in_hubspot(fake, 7)
    assert (props["firstname"], props["email"], props["mimeeq_status"]) == (
        "First7",
        "person7@example.com",
        "ACTIVE",
    )
    assert props["mimeeq_tags"] == "tag1;tag2"
    assert "hs_lead_status" not in props  # sales own it
    assert outcomes[7] == Delivered(remote_id=props["hs_object_id"])


async def test_phones_go_to_phone_and_mobilephone(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    numbers = [{"type": "MOBILE", "number": "+44 7700 900123"},
               {"type": "PRIVATE", "number": "020 7946 0001"}]  # fmt: skip
    work = [*numbers, {"type": "WORK", "number": "020 7946 0002"}]
    await adapter.push([record(adapter, 1, phoneNumbers=numbers),
                        record(adapter, 2, phoneNumbers=work)])  # fmt: skip
    first, second = in_hubspot(fake, 1), in_hubspot(fake, 2)
    assert (first["mobilephone"], first["phone"]) == ("+44 7700 900123", "020 7946 0001")
    assert (second["mobilephone"], second["phone"]) == ("+44 7700 900123", "020 7946 0002")


async def test_an_update_sends_only_what_changed(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    first = record(adapter, 1)
    (outcome,) = await adapter.push([first])
    hs_id = in_hubspot(fake, 1)["hs_object_id"]
    fake.contacts[hs_id]["lifecyclestage"] = "customer"  # set by a HubSpot user
    fake.contacts[hs_id]["firstname"] = "Changed by sales"  # a mapped one: Mimeeq wins if it
    (outcome,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                            lastName="Renamed")])  # fmt: skip
    assert outcome == Delivered(remote_id=hs_id)
    assert sent(fake)[-1] == {"lastname": "Renamed", "mimeeq_contact_id": contact(1)["id"]}
    props = fake.contacts[hs_id]
    assert props["lastname"] == "Renamed" and props["lifecyclestage"] == "customer"
    assert props["firstname"] == "Changed by sales"  # ... changes; unchanged, it is not re-sent


async def test_emptied_fields_are_cleared_only_when_written_before(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter()
    first = record(adapter, 1, accountDetails={"position": "Buyer"})
    (outcome,) = await adapter.push([first])
    hs_id = in_hubspot(fake, 1)["hs_object_id"]
    fake.contacts[hs_id]["mobilephone"] = "+1 555 0100"  # mapped, but never written by us
    # Mimeeq empties the position, the city and the tags, and has no mobile number.
    emptied = record(adapter, 1, after=confirmed(first, outcome), accountDetails={}, tags=[],
                     addressDetails={**contact(1)["addressDetails"], "city": None})  # fmt: skip
    assert emptied.cleared == ("city", "jobtitle", "mimeeq_tags")
    (outcome,) = await adapter.push([emptied])
    assert isinstance(outcome, Delivered)
    assert sent(fake)[-1] == {
        "city": "", "jobtitle": "", "mimeeq_tags": "", "mimeeq_contact_id": contact(1)["id"]
    }  # fmt: skip
    props = fake.contacts[hs_id]
    assert not {"city", "jobtitle", "mimeeq_tags"} & props.keys()
    assert props["mobilephone"] == "+1 555 0100" and props["firstname"] == "First1"


async def test_a_contact_deleted_in_hubspot_is_written_whole_again(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter()
    first = record(adapter, 1)
    (outcome,) = await adapter.push([first])
    del fake.contacts[in_hubspot(fake, 1)["hs_object_id"]]  # by hand, in HubSpot
    update = record(adapter, 1, after=confirmed(first, outcome), lastName="Renamed")
    (outcome,) = await adapter.push([update])
    props = in_hubspot(fake, 1)
    assert isinstance(outcome, Delivered) and outcome.remote_id == props["hs_object_id"]
    assert outcome.note == "not in HubSpot any more: created again, with the whole record"
    assert props["lastname"] == "Renamed"
    assert (props["firstname"], props["email"], props["city"], props["mimeeq_tags"]) == (
        "First1", "person1@example.com", "Example City", "tag1;tag2"
    )  # fmt: skip
    assert sent(fake)[-2] == {"lastname": "Renamed", "mimeeq_contact_id": contact(1)["id"]}
    assert len(fake.contacts) == 1


async def test_a_contact_left_half_filled_is_written_whole_next_time(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await warm(await make_adapter())
    first = record(adapter, 1)
    (outcome,) = await adapter.push([first])
    del fake.contacts[in_hubspot(fake, 1)["hs_object_id"]]
    fake.fail_next = [None, 503, 503]  # the partial write lands, the whole one does not
    (failed,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                           lastName="Renamed")])  # fmt: skip
    assert isinstance(failed, Retry)
    assert "firstname" not in in_hubspot(fake, 1)  # half-filled for now
    # The retry is planned against the same confirmed state: it is written whole all the same.
    (outcome,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                            lastName="Renamed")])  # fmt: skip
    assert isinstance(outcome, Delivered)
    props = in_hubspot(fake, 1)
    assert (props["firstname"], props["lastname"], props["city"]) == (
        "First1", "Renamed", "Example City"
    )  # fmt: skip
    assert len(fake.contacts) == 2  # contact 99 (warm-up) and this one


async def test_a_refused_record_is_dead_and_the_others_delivered(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter(mapping=WITH_LEAD_STATUS)
    records = [record(adapter, n) for n in range(5)]
    records[2] = record(adapter, 2, status="BLOCKED")
    outcomes = await adapter.push(records)
    assert isinstance(outcomes[2], Dead) and "INVALID_OPTION" in outcomes[2].reason
    assert "hs_lead_status" in outcomes[2].reason
    assert all(isinstance(outcomes[i], Delivered) for i in (0, 1, 3, 4))
    assert len(fake.contacts) == 4
    assert len(fake.writes()) == 2  # BLOCKED became a mimeeq_status option first


async def test_a_batch_refused_whole_is_bisected(fake: FakeHubSpot, make_adapter) -> None:
    fake.validation_mode = "400"
    adapter = await make_adapter(mapping=WITH_LEAD_STATUS)
    records = [record(adapter, n) for n in range(16)]
    records[11] = record(adapter, 11, status="BLOCKED")
    outcomes = await adapter.push(records)
    assert (
        isinstance(outcomes[11], Dead) and "Property values were not valid" in outcomes[11].reason
    )
    assert sum(isinstance(o, Delivered) for o in outcomes) == 15
    assert len(fake.contacts) == 15
    assert len([c for c in fake.writes() if c.path == UPSERT]) <= 2 * 4 + 1  # log2(16) levels


@pytest.mark.parametrize("mode", ["409", "207"])
async def test_an_existing_email_is_adopted_not_duplicated(
    fake: FakeHubSpot, make_adapter, mode: str
) -> None:
    fake.conflict_mode = mode
    existing = fake.add_contact(
        email="person3@example.com", lifecyclestage="customer", jobtitle="Head of sales"
    )
    other = fake.add_contact(email="person8@example.com")
    adapter = await make_adapter()
    records = [record(adapter, n) for n in range(10)]
    # A state left from an earlier contact: adoption never clears what it did not write here.
    records[3] = dataclasses.replace(records[3], cleared=("jobtitle",))
    outcomes = await adapter.push(records)
    assert all(isinstance(o, Delivered) for o in outcomes), outcomes
    assert outcomes[3] == Delivered(
        remote_id=existing, note=f"adopted existing HubSpot contact {existing} (same e-mail)"
    )
    assert len(fake.contacts) == 10  # 8 new, 2 adopted
    adopted = fake.contacts[existing]
    assert adopted["mimeeq_contact_id"] == contact(3)["id"] and adopted["firstname"] == "First3"
    assert (adopted["lifecyclestage"], adopted["jobtitle"]) == ("customer", "Head of sales")
    assert fake.contacts[other]["firstname"] == "First8"
    # Later updates find the adopted contact by the unique property.
    await adapter.push([record(adapter, 3, after=confirmed(records[3], outcomes[3]),
                               lastName="Again")])  # fmt: skip
    assert fake.contacts[existing]["lastname"] == "Again" and len(fake.contacts) == 10


async def test_email_id_property_upserts_by_email(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter(id_property="email")
    first = record(adapter, 1)
    outcomes = await adapter.push([first, record(adapter, 2, emails=[])])
    assert isinstance(outcomes[0], Delivered)
    assert outcomes[1] == Dead("no e-mail address: this target upserts by email")
    assert fake.find("email", "person1@example.com") is not None
    assert "mimeeq_contact_id" not in next(iter(fake.contacts.values()))
    # An update that leaves the e-mail unchanged still finds the contact by it.
    await adapter.push([record(adapter, 1, after=confirmed(first, outcomes[0]), lastName="X")])
    assert sent(fake)[-1] == {"lastname": "X"}
    assert fake.find("email", "person1@example.com")[1]["lastname"] == "X"  # type: ignore[index]


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
    assert fake.find("mimeeq_contact_id", contact(1)["id"]) is None and not fake.archived
    ignore = await make_adapter(on_delete="ignore")
    (kept,) = await ignore.push([record(ignore, 2, "delete")])
    assert kept == Delivered(note="on_delete is ignore: left in HubSpot")
    assert in_hubspot(fake, 2)


# --- values ----------------------------------------------------------------------------------


async def test_new_tags_and_statuses_become_options(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    tags = [" vip ", "", "eco; green", "trade fair", "vip"]
    await adapter.push([record(adapter, 1, tags=tags, status="BLOCKED")])
    options = fake.properties["contacts"]["mimeeq_tags"]["options"]
    assert [o["value"] for o in options] == ["tag1", "tag2", "eco, green", "trade fair", "vip"]
    assert in_hubspot(fake, 1)["mimeeq_tags"] == "vip;eco, green;trade fair"
    statuses = {
        o["value"]: o["label"] for o in fake.properties["contacts"]["mimeeq_status"]["options"]
    }
    assert statuses == {"ACTIVE": "Active", "INACTIVE": "Inactive", "BLOCKED": "BLOCKED"}
    assert in_hubspot(fake, 1)["mimeeq_status"] == "BLOCKED"


async def test_a_text_value_of_an_enumeration_is_split_into_options(
    fake: FakeHubSpot, make_adapter
) -> None:
    mapping = {"fields": {"mimeeq_tags": {"from": "tags", "join": ";"}}}
    adapter = await make_adapter(mapping=mapping)
    await adapter.push([record(adapter, 1, tags=["a ", " b; c", ""])])
    assert in_hubspot(fake, 1)["mimeeq_tags"] == "a;b;c"


# --- companies -------------------------------------------------------------------------------


@pytest.fixture
def companies(fake: FakeHubSpot) -> dict[str, str]:
    """Two companies in HubSpot, by Mimeeq id."""
    fake.add_property("mimeeq_company_id", object_type="companies", unique=True)
    return {c: fake.add_company(name=c, mimeeq_company_id=c) for c in ("COMP-1", "COMP-2")}


async def test_the_company_is_associated_only_when_it_changes(
    fake: FakeHubSpot, make_adapter, companies: dict[str, str]
) -> None:
    adapter = await make_adapter(associate_company=True)
    assert adapter.associates_companies
    first = record(adapter, 1, companyId="COMP-1")
    (outcome,) = await adapter.push([first])
    hs_id = in_hubspot(fake, 1)["hs_object_id"]
    assert outcome == Delivered(
        hs_id, f"associated with company {companies['COMP-1']}",
        company=CompanyLink("COMP-1", companies["COMP-1"]),
    )  # fmt: skip
    assert fake.associations == {(hs_id, companies["COMP-1"])}

    # Same company: no association call, the link stays as it is.
    calls = len(fake.calls)
    second = record(adapter, 1, after=confirmed(first, outcome), companyId="COMP-1", lastName="B")
    (outcome,) = await adapter.push([second])
    assert outcome == Delivered(hs_id, company=CompanyLink("COMP-1", companies["COMP-1"]))
    assert [c.path for c in fake.calls[calls:]] == [UPSERT]

    # Another company: the old association goes, the new one comes.
    third = record(adapter, 1, after=confirmed(second, outcome), companyId="COMP-2")
    (outcome,) = await adapter.push([third])
    assert isinstance(outcome, Delivered)
    assert outcome.company == CompanyLink("COMP-2", companies["COMP-2"])
    assert fake.associations == {(hs_id, companies["COMP-2"])}
    assert [c.body for c in fake.calls if c.path == DISSOCIATE] == [
        {"inputs": [{"from": {"id": hs_id}, "to": [{"id": companies["COMP-1"]}]}]}
    ]

    # No company any more: the association goes.
    fourth = record(adapter, 1, after=confirmed(third, outcome), companyId=None)
    (outcome,) = await adapter.push([fourth])
    assert isinstance(outcome, Delivered) and outcome.company is None
    assert fake.associations == set()


async def test_a_company_not_in_hubspot_yet_is_linked_once_it_is(
    fake: FakeHubSpot, make_adapter, companies: dict[str, str]
) -> None:
    adapter = await make_adapter(associate_company=True)
    adapter.company_cache_ttl = 0
    first = record(adapter, 1, companyId="COMP-3")
    (outcome,) = await adapter.push([first])
    assert isinstance(outcome, Delivered) and outcome.company == CompanyLink("COMP-3", None)
    assert "company COMP-3 not in HubSpot (mimeeq_company_id)" in (outcome.note or "")
    assert fake.associations == set() and not [c for c in fake.calls if c.path == ASSOCIATE]
    company = fake.add_company(name="Three", mimeeq_company_id="COMP-3")
    (outcome,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                            companyId="COMP-3", lastName="B")])  # fmt: skip
    assert isinstance(outcome, Delivered) and outcome.company == CompanyLink("COMP-3", company)
    assert fake.associations == {(in_hubspot(fake, 1)["hs_object_id"], company)}


async def test_a_failed_association_retries_the_record(
    fake: FakeHubSpot, make_adapter, companies: dict[str, str]
) -> None:
    adapter = await make_adapter(associate_company=True)
    await adapter.push([record(adapter, 1, companyId="COMP-1")])  # the company id is now cached
    del fake.companies[companies["COMP-1"]]  # deleted in HubSpot meanwhile
    outcomes = await adapter.push([record(adapter, 2, companyId="COMP-1"),
                                   record(adapter, 3, companyId="COMP-2")])  # fmt: skip
    assert isinstance(outcomes[0], Retry) and "associating the company" in outcomes[0].reason
    assert "No object exists" in outcomes[0].reason
    assert isinstance(outcomes[1], Delivered)
    assert outcomes[1].company == CompanyLink("COMP-2", companies["COMP-2"])


async def test_a_failed_removal_retries_the_record(
    fake: FakeHubSpot, make_adapter, companies: dict[str, str]
) -> None:
    adapter = await make_adapter(associate_company=True)
    first = record(adapter, 1, companyId="COMP-1")
    (outcome,) = await adapter.push([first])
    # Only the company changed: no upsert; the look-up passes, then the removal is refused.
    fake.fail_next = [None, 400]
    (retry,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                          companyId="COMP-2")])  # fmt: skip
    assert isinstance(retry, Retry) and "removing the old company association" in retry.reason
    hs_id = in_hubspot(fake, 1)["hs_object_id"]
    assert fake.associations == {(hs_id, companies["COMP-1"])}  # not linked to both
    (outcome,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                            companyId="COMP-2")])  # fmt: skip
    assert isinstance(outcome, Delivered)
    assert fake.associations == {(hs_id, companies["COMP-2"])}


async def test_a_contact_created_again_is_linked_again(
    fake: FakeHubSpot, make_adapter, companies: dict[str, str]
) -> None:
    adapter = await make_adapter(associate_company=True)
    first = record(adapter, 1, companyId="COMP-1")
    (outcome,) = await adapter.push([first])
    old_id = in_hubspot(fake, 1)["hs_object_id"]
    del fake.contacts[old_id]  # deleted in HubSpot by hand
    fake.associations.clear()
    (outcome,) = await adapter.push([record(adapter, 1, after=confirmed(first, outcome),
                                            companyId="COMP-1", lastName="B")])  # fmt: skip
    hs_id = in_hubspot(fake, 1)["hs_object_id"]
    assert isinstance(outcome, Delivered) and hs_id != old_id
    assert outcome.company == CompanyLink("COMP-1", companies["COMP-1"])
    assert fake.associations == {(hs_id, companies["COMP-1"])}


async def test_contacts_of_one_batch_share_the_company_calls(
    fake: FakeHubSpot, make_adapter, companies: dict[str, str]
) -> None:
    adapter = await make_adapter(associate_company=True)
    outcomes = await adapter.push([record(adapter, n, companyId="COMP-1") for n in range(3)])
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len(fake.associations) == 3
    paths = [c.path for c in fake.calls]
    assert paths.count("/crm/v3/objects/companies/batch/read") == 1
    assert paths.count(ASSOCIATE) == 1


# --- companies --------------------------------------------------------------------------------

COMPANY_MAPPING = "mappings/hubspot-companies.yaml"


@pytest.fixture
def company_properties(fake: FakeHubSpot) -> None:
    """What `hubspot setup` creates on companies for a target with a company mapping."""
    fake.groups["companies"].add("mimeeq")
    fake.add_property("mimeeq_company_id", object_type="companies", unique=True, group="mimeeq")
    for name, field_type in (("mimeeq_tags", "checkbox"), ("mimeeq_status", "select")):
        fake.add_property(
            name, object_type="companies", type="enumeration", field_type=field_type,
            group="mimeeq", options=[("ACTIVE", "Active")] if name == "mimeeq_status" else [],
        )  # fmt: skip


def company_record(
    n: int, op: str = "upsert", remote_id: str | None = None, **changes: Any
) -> Record:
    payload = company(n, **changes)
    return Record(
        contact_id=payload["id"],
        op=op,  # type: ignore[arg-type]
        event="company-deleted" if op == "delete" else "company-updated",
        event_id=f"company-event-{n}",
        fields=load_mapping(COMPANY_MAPPING, ROOT).apply(payload),
        payload=payload,
        remote_id=remote_id,
        attempt=1,
        object_type="company",
    )


def company_in_hubspot(fake: FakeHubSpot, n: int) -> tuple[str, dict[str, str]]:
    found = [
        (oid, props)
        for oid, props in fake.companies.items()
        if props.get("mimeeq_company_id") == company_id(n)
    ]
    assert len(found) == 1, f"company {n}: {len(found)} in HubSpot"
    return found[0]


@pytest.mark.usefixtures("company_properties")
async def test_companies_are_upserted_by_their_mimeeq_id(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter(associate_company=True)
    outcomes = await adapter.push([company_record(1), company_record(2, tags=["dealer", "new"])])
    assert all(isinstance(o, Delivered) and o.remote_id for o in outcomes)
    hs_id, props = company_in_hubspot(fake, 1)
    assert outcomes[0] == Delivered(hs_id)
    assert props["name"] == "Company 1" and props["zip"] == "12345"
    assert props["address"] == "123 Example Street" and props["phone"] == "123-456-7890"
    assert props["mimeeq_status"] == "ACTIVE"
    assert company_in_hubspot(fake, 2)[1]["mimeeq_tags"] == "dealer;new"  # options added
    # An update of the same company updates it: still one company per Mimeeq id.
    (outcome,) = await adapter.push([company_record(1, companyName="Renamed", status="INACTIVE")])
    assert outcome == Delivered(hs_id)
    assert company_in_hubspot(fake, 1)[1]["name"] == "Renamed"
    assert company_in_hubspot(fake, 1)[1]["mimeeq_status"] == "INACTIVE"
    assert len(fake.companies) == 2


@pytest.mark.usefixtures("company_properties")
@pytest.mark.parametrize("on_delete", ["archive", "gdpr_delete"])
async def test_a_deleted_company_is_archived(
    fake: FakeHubSpot, make_adapter, on_delete: str
) -> None:
    adapter = await make_adapter(on_delete=on_delete)
    await adapter.push([company_record(1)])
    hs_id, _ = company_in_hubspot(fake, 1)
    # Found by its Mimeeq id when its HubSpot id is not remembered.
    (outcome,) = await adapter.push([company_record(1, "delete")])
    assert outcome == Delivered(hs_id, "archived")
    assert hs_id not in fake.companies and hs_id in fake.archived_companies
    (again,) = await adapter.push([company_record(1, "delete")])
    assert again == Delivered(note="not in HubSpot: nothing to delete")


@pytest.mark.usefixtures("company_properties")
async def test_a_company_and_its_contacts_in_one_batch_are_linked_at_once(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter(associate_company=True)
    contacts = [record(adapter, n, companyId=company_id(7)) for n in range(3)]
    # The contacts come first in the batch: the company is written before them all the same.
    outcomes = await adapter.push([*contacts, company_record(7)])
    hs_company, _ = company_in_hubspot(fake, 7)
    assert outcomes[3] == Delivered(hs_company)
    for n, outcome in enumerate(outcomes[:3]):
        assert isinstance(outcome, Delivered)
        assert outcome.company == CompanyLink(company_id(7), hs_company)
        assert (in_hubspot(fake, n)["hs_object_id"], hs_company) in fake.associations
    assert [c.path for c in fake.calls].count("/crm/v3/objects/companies/batch/read") == 0


@pytest.mark.usefixtures("company_properties")
async def test_a_contact_waiting_for_its_company_is_linked_when_written_again(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter(associate_company=True)
    first = record(adapter, 1, companyId=company_id(8))
    (waiting,) = await adapter.push([first])
    assert isinstance(waiting, Delivered) and waiting.company == CompanyLink(company_id(8), None)
    # A company missing in HubSpot is not remembered as missing: the next look finds it.
    (created,) = await adapter.push([company_record(8)])
    assert isinstance(created, Delivered)
    (linked,) = await adapter.push([record(adapter, 1, after=confirmed(first, waiting),
                                           companyId=company_id(8))])  # fmt: skip
    assert isinstance(linked, Delivered)
    assert linked.company == CompanyLink(company_id(8), created.remote_id)
    assert fake.associations == {(in_hubspot(fake, 1)["hs_object_id"], created.remote_id)}


@pytest.mark.usefixtures("company_properties")
async def test_a_refused_company_is_dead_and_the_contacts_go_on(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter()
    bad = company_record(9)
    bad = dataclasses.replace(bad, fields={**bad.fields, "no_such_property": "x"})
    outcomes = await adapter.push([bad, record(adapter, 1)])
    assert isinstance(outcomes[0], Dead) and "no_such_property" in outcomes[0].reason
    assert isinstance(outcomes[1], Delivered)
    assert not fake.companies


# --- rate limits and the daily budget --------------------------------------------------------


def next_midnight_in(zone: str) -> float:
    local = datetime.now(ZoneInfo(zone))
    tomorrow = (local + timedelta(days=1)).date()
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=ZoneInfo(zone)).timestamp()


async def test_rate_limit_answers_are_waited_out(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    fake.fail_next = [429, 429]
    start = time.monotonic()
    outcomes = await adapter.push([record(adapter, 1)])
    assert isinstance(outcomes[0], Delivered)
    assert fake.count(429) == 2
    assert time.monotonic() - start >= 1.0  # Retry-After was honoured


async def test_the_daily_limit_pauses_until_the_portals_midnight(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await make_adapter()
    fake.daily_limit = 0
    with pytest.raises(TargetPaused, match="daily") as caught:
        await adapter.push([record(adapter, 1)])
    assert caught.value.until == pytest.approx(next_midnight_in("America/Los_Angeles"), abs=5)
    assert not fake.contacts


async def test_the_daily_reserve_pauses_once_reached(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await warm(await make_adapter(rate_limit={"daily_reserve": 3}))
    fake.daily_limit = len(fake.calls) + 4  # the next call leaves 3
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Delivered)  # the answer in hand is used
    calls = len(fake.calls)
    with pytest.raises(TargetPaused, match=r"3 of \d+ calls left") as caught:
        await adapter.push([record(adapter, 2)])
    assert caught.value.until == pytest.approx(next_midnight_in("America/Los_Angeles"), abs=5)
    assert len(fake.calls) == calls  # nothing more was sent


async def test_an_unreadable_time_zone_means_utc_with_one_warning(
    fake: FakeHubSpot, make_adapter
) -> None:
    fake.fail_next = [503]
    with structlog.testing.capture_logs() as logs:
        adapter = await make_adapter()  # its first read of the time zone fails
        fake.daily_limit = 0
        with pytest.raises(TargetPaused) as caught:
            await adapter.push([record(adapter, 1)])
        adapter.api._zone_due = 0  # time to read it again (refused now: the daily limit)
        with pytest.raises(TargetPaused):
            await adapter.push([record(adapter, 1)])
    assert caught.value.until == pytest.approx(next_midnight_in("UTC"), abs=5)
    warnings = [entry for entry in logs if "time zone" in entry["event"]]
    assert len(warnings) == 1 and "503" in warnings[0]["error"]


@pytest.mark.parametrize("problem", ["token", "scopes"])
async def test_bad_credentials_pause_the_target(
    fake: FakeHubSpot, make_adapter, problem: str
) -> None:
    adapter = await make_adapter()
    if problem == "token":
        fake.token = "rotated"
    else:
        fake.scopes_missing = True
    with pytest.raises(TargetPaused, match="refused the token"):
        await adapter.push([record(adapter, 1)])
    assert not fake.contacts


# --- the transport: outages, timeouts, cancellation ------------------------------------------


async def test_a_passing_outage_is_retried_within_the_push(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await warm(await make_adapter())
    fake.fail_next = [503]
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Delivered)
    assert [c.status for c in fake.calls if c.path == UPSERT][-2:] == [503, 200]


async def test_a_longer_outage_becomes_a_retry(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    fake.down = True
    outcomes = await adapter.push([record(adapter, 1), record(adapter, 2, "delete")])
    assert all(isinstance(o, Retry) and "503" in o.reason for o in outcomes)
    assert not any(o.maybe_written for o in outcomes)  # type: ignore[union-attr]


async def test_an_unreachable_hubspot_becomes_a_retry(make_adapter, fake: FakeHubSpot) -> None:
    adapter = await make_adapter()
    await fake.stop()
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Retry) and "cannot reach HubSpot" in outcome.reason
    assert not outcome.maybe_written  # refused: nothing went out


async def test_a_write_without_answer_may_still_land(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await warm(await make_adapter(read_timeout=0.3))
    fake.delay_next = [3.0]
    before = len(fake.calls)
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Retry) and outcome.maybe_written
    assert "ReadTimeout" in outcome.reason and "may still land" in outcome.reason
    assert [c.path for c in fake.calls[before:]] == [UPSERT]  # not sent again meanwhile
    await fake.settled()
    assert in_hubspot(fake, 1)  # and it did land


async def test_a_trickling_answer_is_cut_at_the_call_timeout(
    fake: FakeHubSpot, make_adapter
) -> None:
    adapter = await warm(await make_adapter(call_timeout=1.0))
    fake.trickle = 0.05  # a byte every 50 ms: each read is quick, the answer never ends
    before = len(fake.calls)
    started = time.monotonic()
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert time.monotonic() - started < 3
    assert isinstance(outcome, Retry) and outcome.maybe_written
    assert "call_timeout (1 s)" in outcome.reason
    await fake.settled()
    assert [(c.path, c.gone) for c in fake.calls[before:]] == [(UPSERT, True)]


async def test_a_cancelled_push_leaves_nothing_running(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await warm(await make_adapter())
    threads = threading.active_count()
    fake.delay_next = [5.0]  # HubSpot hangs on the upsert
    before = len(fake.calls)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):  # the worker's push_timeout
            await adapter.push([record(adapter, 1), record(adapter, 2, "delete")])
    assert time.monotonic() - started < 1.5
    assert threading.active_count() == threads  # no thread carries the write on
    calls = len(fake.calls)
    await fake.settled()
    (upsert,) = fake.calls[before:]
    assert upsert.path == UPSERT and upsert.gone  # we closed the connection ...
    assert in_hubspot(fake, 1)  # ... and HubSpot applied the write all the same
    assert len(fake.calls) == calls  # nothing of that push was sent after it was cancelled
    (outcome,) = await adapter.push([record(adapter, 2)])  # the adapter goes on working
    assert isinstance(outcome, Delivered)


async def test_no_write_after_the_claim_ran_out(fake: FakeHubSpot, make_adapter) -> None:
    adapter = await make_adapter()
    calls = len(fake.calls)
    token = CLAIM_HOLD.set(ClaimHold(time.time() - 1))
    try:
        outcomes = await adapter.push([record(adapter, 1), record(adapter, 2, "delete")])
    finally:
        CLAIM_HOLD.reset(token)
    assert all(isinstance(o, Retry) and "claim" in o.reason for o in outcomes)
    assert len(fake.calls) == calls and not fake.contacts


# --- set-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("needs_options", [True, False])
async def test_setup_creates_what_the_connector_needs_and_can_run_twice(
    fake: FakeHubSpot, make_adapter, needs_options: bool
) -> None:
    fake.enumeration_needs_options = needs_options
    for name in ("mimeeq_contact_id", "mimeeq_tags", "mimeeq_status"):
        del fake.properties["contacts"][name]
    fake.groups["contacts"].discard("mimeeq")
    adapter = await make_adapter(associate_company=True)
    said: list[str] = []
    first = await adapter.setup(said.append)
    tags = "created contacts property 'mimeeq_tags'"
    if needs_options:
        tags += (
            " (HubSpot wants at least one option: it has a hidden placeholder option 'mimeeq_none')"
        )
    assert (
        said
        == first
        == [
            "created contacts property group 'mimeeq'",
            "created contacts property 'mimeeq_contact_id'",
            tags,
            "created contacts property 'mimeeq_status'",
            "created companies property group 'mimeeq'",
            "created companies property 'mimeeq_company_id'",
        ]
    )
    props = fake.properties["contacts"]
    assert props["mimeeq_contact_id"]["hasUniqueValue"] is True
    assert props["mimeeq_tags"]["fieldType"] == "checkbox"
    assert [(o["value"], o["hidden"]) for o in props["mimeeq_tags"]["options"]] == (
        [("mimeeq_none", True)] if needs_options else []
    )
    assert (props["mimeeq_status"]["fieldType"], props["mimeeq_status"]["options"][0]["label"]) == (
        "select", "Active"
    )  # fmt: skip
    second = await adapter.setup()
    assert "found contacts property 'mimeeq_contact_id' (already exists)" in second
    assert not any(line.startswith(("created", "changed", "WARNING")) for line in second)
    # New tags become options next to the placeholder.
    await adapter.push([record(adapter, 1)])
    assert in_hubspot(fake, 1)["mimeeq_tags"] == "tag1;tag2"


async def test_setup_adds_missing_options_and_warns_about_unknown_properties(
    fake: FakeHubSpot, make_adapter
) -> None:
    fake.properties["contacts"]["mimeeq_status"]["options"] = [
        {"label": "Active (Mimeeq)", "value": "ACTIVE", "hidden": False, "displayOrder": 0}
    ]
    mapping = {"extends": "mappings/hubspot-contacts.yaml", "fields": {"favourite": "firstName"}}
    adapter = await make_adapter(mapping=mapping)
    lines = await adapter.setup()
    assert "changed contacts property 'mimeeq_status': added options INACTIVE" in lines
    assert lines[-1] == (
        "WARNING: mapped contacts property 'favourite' is not in HubSpot: "
        "create it or fix the mapping"
    )
    options = fake.properties["contacts"]["mimeeq_status"]["options"]
    assert [(o["value"], o["label"]) for o in options] == [
        ("ACTIVE", "Active (Mimeeq)"), ("INACTIVE", "Inactive")
    ]  # fmt: skip


async def test_setup_command_shows_what_it_did_before_a_failure(
    fake: FakeHubSpot, tmp_path: Any
) -> None:
    del fake.properties["contacts"]["mimeeq_contact_id"]
    status = fake.properties["contacts"]["mimeeq_status"]  # HubSpot will not change its options
    status["options"] = []
    status["modificationMetadata"].update(readOnlyDefinition=True, readOnlyOptions=True)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"url": "sqlite:///connector.db"},
        "tenants": {"demo": {
            "customer_id": CUSTOMER, "auth": {"values": ["webhook-token-0123456789"]},
            "targets": {"hubspot": {
                "type": "hubspot", "access_token": TOKEN, "base_url": fake.url,
                "mapping": str(ROOT / "mappings" / "hubspot-contacts.yaml"),
            }},
        }},
    }))  # fmt: skip
    args = ["hubspot", "setup", "--config", str(config), "--tenant", "demo", "--target", "hubspot"]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "found contacts property group 'mimeeq' (already exists)",
        "created contacts property 'mimeeq_contact_id'",
        "found contacts property 'mimeeq_tags' (already exists)",
        "found contacts property 'mimeeq_status' (already exists)",
    ]
    assert "cannot add options to contacts property 'mimeeq_status'" in result.stderr
    assert "HubSpot HTTP 400: Property mimeeq_status is HubSpot-defined" in result.stderr
    assert TOKEN not in result.output
