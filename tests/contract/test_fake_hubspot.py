"""The fake HubSpot, driven through the real hubspot-api-client (raw HTTP where it cannot go)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import hubspot
import pytest
import urllib3
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsError
from hubspot.crm.companies.exceptions import ApiException as CompaniesError
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    PublicGdprDeleteInput,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
)
from hubspot.crm.contacts.exceptions import ApiException
from hubspot.crm.properties import OptionInput, PropertyCreate, PropertyGroupCreate, PropertyUpdate
from hubspot.crm.properties.exceptions import ApiException as PropertiesError

import fake_hubspot
from fake_hubspot import FakeHubSpot

MIMEEQ = "mimeeq_contact_id"


class HubSpot:
    """The real client's APIs, built once (each access builds a new pool), called from a thread."""

    def __init__(self, url: str, token: str) -> None:
        client = hubspot.Client.create(access_token=token, host=url)
        self.contacts = client.crm.contacts.batch_api
        self.basic = client.crm.contacts.basic_api
        self.companies = client.crm.companies.batch_api
        self.properties = client.crm.properties.core_api
        self.groups = client.crm.properties.groups_api
        self.associations = client.crm.associations.v4.batch_api
        self.association_pages = client.crm.associations.v4.basic_api

    async def __call__(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, _request_timeout=(2, 5), **kwargs)

    def close(self) -> None:
        for api in vars(self).values():
            api.api_client.rest_client.pool_manager.clear()


@pytest.fixture
async def fake() -> AsyncIterator[FakeHubSpot]:
    fake = FakeHubSpot()
    fake.add_property(MIMEEQ, unique=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def hs(fake: FakeHubSpot) -> Any:
    client = HubSpot(fake.url, fake.token)
    yield client
    client.close()


def upsert(*items: tuple[str, dict[str, Any]], id_property: str = MIMEEQ) -> dict[str, Any]:
    return {"inputs": [{"id": i, "idProperty": id_property, "properties": p} for i, p in items]}


def read(*ids: str, properties: list[str], id_property: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"id": i} for i in ids],
        "properties": properties,
        "propertiesWithHistory": [],
    }
    if id_property:
        body["idProperty"] = id_property
    return body


def error_body(exc: Exception) -> dict[str, Any]:
    body = json.loads(exc.body)  # type: ignore[attr-defined]
    assert {"status", "message", "correlationId", "category"} <= body.keys()
    return body


# --- upsert ---


async def test_upsert_creates_then_updates_only_the_given_properties(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    body = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[
            SimplePublicObjectBatchInputUpsert(
                id="M-1", id_property=MIMEEQ, properties={"firstname": "Ann", "city": "Oslo"}
            ),
            SimplePublicObjectBatchInputUpsert(
                id="M-2", id_property=MIMEEQ, properties={"email": "bo@example.com"}
            ),
        ]
    )
    first, status, headers = await hs(hs.contacts.upsert_with_http_info, body)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert [r.new for r in first.results] == [True, True]
    ann = first.results[0]
    assert ann.properties[MIMEEQ] == "M-1"
    assert ann.properties["hs_object_id"] == ann.id
    assert {"createdate", "lastmodifieddate"} <= ann.properties.keys()
    assert ann.archived is False and ann.created_at is not None
    assert fake.contacts[ann.id][MIMEEQ] == "M-1"

    second = await hs(hs.contacts.upsert, upsert(("M-1", {"firstname": "Anna"})))
    assert second.results[0].id == ann.id
    assert second.results[0].new is False
    stored = fake.contacts[ann.id]
    assert (stored["firstname"], stored["city"]) == ("Anna", "Oslo")  # city untouched
    assert len(fake.contacts) == 2


async def test_upsert_by_email_matches_case_insensitively(fake: FakeHubSpot, hs: HubSpot) -> None:
    existing = fake.add_contact(email="Ann@Example.com", firstname="Ann")
    answer = await hs(
        hs.contacts.upsert,
        upsert(
            ("ann@example.COM", {"lastname": "Lee"}),
            ("new@example.com", {"firstname": "New"}),
            id_property="email",
        ),
    )
    by_id = {r.id: r for r in answer.results}
    assert by_id[existing].new is False
    assert fake.contacts[existing]["lastname"] == "Lee"
    (created,) = [r for r in answer.results if r.new]
    assert fake.contacts[created.id]["email"] == "new@example.com"
    assert fake.find("email", "NEW@example.com") == (created.id, fake.contacts[created.id])


async def test_invalid_inputs_fail_alone_in_a_207(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.add_property(
        "interests", type="enumeration", field_type="checkbox", options=[("a", "A"), ("b", "B")]
    )
    answer, status, _ = await hs(
        hs.contacts.upsert_with_http_info,
        upsert(
            ("ok", {"firstname": "Fine", "interests": "a;b"}),
            ("unknown", {"foo": "x"}),
            ("option", {"hs_lead_status": "ACTIVE"}),
            ("checkbox", {"interests": "a;z"}),
            ("email", {"email": "not-an-email"}),
        ),
    )
    assert status == 207
    assert answer.num_errors == 4
    assert [r.properties[MIMEEQ] for r in answer.results] == ["ok"]
    errors = {e.context["ids"][0]: e for e in answer.errors}
    assert all(e.category == "VALIDATION_ERROR" and e.status == "error" for e in errors.values())
    assert '"error":"PROPERTY_DOESNT_EXIST","name":"foo"' in errors["unknown"].message
    assert 'Property \\"foo\\" does not exist' in errors["unknown"].message
    option = errors["option"].message
    assert '"error":"INVALID_OPTION","name":"hs_lead_status"' in option
    assert "ACTIVE was not one of the allowed options" in option and "UNQUALIFIED" in option
    assert "z was not one of the allowed options" in errors["checkbox"].message
    assert '"error":"INVALID_EMAIL"' in errors["email"].message
    assert errors["email"].errors[0].code == "INVALID_EMAIL"
    assert [c[MIMEEQ] for c in fake.contacts.values()] == ["ok"]


async def test_validation_mode_400_refuses_the_batch_without_naming_the_input(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    fake.validation_mode = "400"
    with pytest.raises(ApiException) as caught:
        await hs(
            hs.contacts.upsert,
            upsert(("good", {"firstname": "A"}), ("bad", {"hs_lead_status": "ACTIVE"})),
        )
    assert caught.value.status == 400
    body = error_body(caught.value)
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith("Property values were not valid: [")
    assert body["errors"] == [
        {
            "message": body["errors"][0]["message"],
            "code": "INVALID_OPTION",
            "context": {"propertyName": ["hs_lead_status"]},
        }
    ]
    assert "bad" not in json.dumps(body) and "good" not in json.dumps(body)
    assert fake.contacts == {}


async def test_409_names_only_the_first_conflict_and_changes_nothing(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    a = fake.add_contact(email="a@example.com", **{MIMEEQ: "A"})
    b = fake.add_contact(email="b@example.com", **{MIMEEQ: "B"})
    before = json.dumps(fake.contacts, sort_keys=True)
    with pytest.raises(ApiException) as caught:
        await hs(
            hs.contacts.upsert,
            upsert(
                ("fresh", {"email": "fresh@example.com"}),
                ("X", {"email": "B@example.com"}),
                ("Y", {"email": "a@example.com"}),
            ),
        )
    assert caught.value.status == 409
    body = error_body(caught.value)
    assert body["message"] == f"Contact already exists. Existing ID: {b}"
    assert body["category"] == "CONFLICT"
    assert "context" not in body and a not in json.dumps(body)
    assert json.dumps(fake.contacts, sort_keys=True) == before

    # an update that takes another contact's email conflicts too
    with pytest.raises(ApiException) as caught:
        await hs(hs.contacts.upsert, upsert(("A", {"email": "b@example.com"})))
    assert error_body(caught.value)["message"] == f"Contact already exists. Existing ID: {b}"


async def test_207_conflict_mode_fails_only_the_conflicting_inputs(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    fake.conflict_mode = "207"
    b = fake.add_contact(email="b@example.com")
    answer, status, _ = await hs(
        hs.contacts.upsert_with_http_info,
        upsert(("fresh", {"email": "fresh@example.com"}), ("X", {"email": "b@example.com"})),
    )
    assert status == 207
    (error,) = answer.errors
    assert (error.category, error.context) == ("CONFLICT", {"ids": ["X"]})
    assert error.message == f"Contact already exists. Existing ID: {b}"
    assert fake.find(MIMEEQ, "fresh") is not None and fake.find(MIMEEQ, "X") is None


async def test_two_new_contacts_of_one_batch_with_one_email(fake: FakeHubSpot, hs: HubSpot) -> None:
    answer, status, _ = await hs(
        hs.contacts.upsert_with_http_info,
        upsert(("X", {"email": "same@example.com"}), ("Y", {"email": "Same@example.com"})),
    )
    assert status == 207
    (x,) = answer.results
    (error,) = answer.errors
    assert (error.category, error.context) == ("CONFLICT", {"ids": ["Y"]})
    assert error.message == f"Contact already exists. Existing ID: {x.id}"
    assert list(fake.contacts) == [x.id]


async def test_newer_conflict_body_carries_the_identity_profile(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    fake.conflict_body = "identity"
    b = fake.add_contact(email="b@example.com")
    with pytest.raises(ApiException) as caught:
        await hs(hs.contacts.upsert, upsert(("X", {"email": "b@example.com"})))
    body = error_body(caught.value)
    assert body["message"] == f"Contact already exists. Existing ID: {b}"
    assert body["identityProfile"]["vid"] == int(b)
    assert body["errors"][0]["in"] == "email"


async def test_a_unique_value_belongs_to_one_contact(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.add_contact(**{MIMEEQ: "A"})
    b = fake.add_contact(**{MIMEEQ: "B"})
    answer, status, _ = await hs(
        hs.contacts.update_with_http_info,
        {"inputs": [{"id": b, "properties": {MIMEEQ: "A"}}]},
    )
    assert status == 207
    (error,) = answer.errors
    assert error.category == "VALIDATION_ERROR" and error.context == {"ids": [b]}
    assert f'unique property \\"{MIMEEQ}\\"' in error.message
    assert fake.contacts[b][MIMEEQ] == "B"


async def test_more_than_100_inputs_are_refused(fake: FakeHubSpot, hs: HubSpot) -> None:
    items = [(f"M-{n}", {"firstname": "x"}) for n in range(101)]
    with pytest.raises(ApiException) as caught:
        await hs(hs.contacts.upsert, upsert(*items))
    assert caught.value.status == 400
    assert error_body(caught.value)["message"].startswith("Too many inputs")
    with pytest.raises(ApiException):
        await hs(hs.contacts.read, read(*[str(n) for n in range(101)], properties=[]))
    assert fake.contacts == {}
    answer = await hs(hs.contacts.upsert, upsert(*items[:100]))
    assert len(answer.results) == 100


async def test_bodies_the_spec_does_not_describe_are_refused(fake: FakeHubSpot) -> None:
    url = fake.url + "/crm/v3/objects/contacts/batch/upsert"
    auth = {"Authorization": f"Bearer {fake.token}"}
    bad = [
        b"{not json",
        b"",
        json.dumps({"inputs": [{"id": "1", "idProperty": MIMEEQ, "propertiez": {}}]}).encode(),
        json.dumps({"inputs": [{"id": "1", "idProperty": MIMEEQ}]}).encode(),
        json.dumps({"inputs": [{"id": 1, "idProperty": MIMEEQ, "properties": {}}]}).encode(),
        json.dumps({"inputs": [{"id": "1", "properties": {"zip": 1234}}]}).encode(),
        json.dumps({"inputs": [{"id": "1", "idProperty": "firstname", "properties": {}}]}).encode(),
        json.dumps(upsert(("dup", {}), ("dup", {}))).encode(),
    ]
    async with aiohttp.ClientSession(headers=auth) as http:
        for data in bad:
            async with http.post(url, data=data) as response:
                assert response.status == 400, data
                assert response.content_type == "application/json"
                body = await response.json()
                assert body["category"] == "VALIDATION_ERROR"
                assert body["correlationId"]
        async with http.post(fake.url + "/crm/v3/objects/deals/batch/upsert", data=b"{}") as r:
            assert r.status == 404
            assert (await r.json())["status"] == "error"
    assert fake.contacts == {}
    assert [c.status for c in fake.calls] == [400] * len(bad) + [404]


# --- read, update, create, archive, GDPR delete ---


async def test_batch_read_by_unique_property_and_by_id(fake: FakeHubSpot, hs: HubSpot) -> None:
    a = fake.add_contact(email="a@example.com", firstname="Ann", city="Oslo", **{MIMEEQ: "A"})
    body = BatchReadInputSimplePublicObjectId(
        id_property=MIMEEQ,
        inputs=[SimplePublicObjectId(id="A"), SimplePublicObjectId(id="nope")],
        properties=["firstname", "phone"],
        properties_with_history=[],
    )
    answer, status, _ = await hs(hs.contacts.read_with_http_info, body)
    assert status == 207
    (found,) = answer.results
    assert found.id == a
    assert found.properties == {
        "firstname": "Ann",
        "phone": None,
        "hs_object_id": a,
        "createdate": fake.contacts[a]["createdate"],
        "lastmodifieddate": fake.contacts[a]["lastmodifieddate"],
    }
    (missing,) = answer.errors
    assert (missing.category, missing.context) == ("OBJECT_NOT_FOUND", {"ids": ["nope"]})

    answer, status, _ = await hs(hs.contacts.read_with_http_info, read(a, properties=[]))
    assert status == 200
    assert answer.results[0].properties["email"] == "a@example.com"  # the default properties


async def test_batch_update_by_id_and_missing_ids(fake: FakeHubSpot, hs: HubSpot) -> None:
    a = fake.add_contact(firstname="Ann")
    answer, status, _ = await hs(
        hs.contacts.update_with_http_info,
        {
            "inputs": [
                {"id": a, "properties": {"firstname": "Anna", "city": "Oslo"}},
                {"id": "999999", "properties": {"firstname": "Ghost"}},
            ]
        },
    )
    assert status == 207
    assert answer.results[0].properties["firstname"] == "Anna"
    assert answer.errors[0].category == "OBJECT_NOT_FOUND"
    assert answer.errors[0].context == {"ids": ["999999"]}
    assert fake.contacts[a]["city"] == "Oslo" and len(fake.contacts) == 1


async def test_batch_create(fake: FakeHubSpot, hs: HubSpot) -> None:
    answer, status, _ = await hs(
        hs.contacts.create_with_http_info,
        {"inputs": [{"properties": {"email": "c@example.com"}, "associations": []}]},
    )
    assert status == 201
    assert fake.contacts[answer.results[0].id]["email"] == "c@example.com"
    with pytest.raises(ApiException) as caught:
        await hs(hs.contacts.create, {"inputs": [{"properties": {"email": "C@example.com"}}]})
    assert caught.value.status == 409


async def test_archive_then_upsert_by_email_creates_a_new_contact(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    a = fake.add_contact(email="a@example.com")
    b = fake.add_contact(email="b@example.com")
    answer = await hs(hs.contacts.archive_with_http_info, {"inputs": [{"id": a}, {"id": "424242"}]})
    assert answer[1] == 204
    assert list(fake.contacts) == [b] and list(fake.archived) == [a]

    archived = await hs(hs.contacts.read, read(a, properties=["email"]), archived=True)
    assert archived.results[0].archived is True
    again = await hs(hs.contacts.upsert, upsert(("a@example.com", {}), id_property="email"))
    assert again.results[0].new is True and again.results[0].id != a


async def test_gdpr_delete_is_permanent_and_blocklists_the_email(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    a = fake.add_contact(email="a@example.com", **{MIMEEQ: "A"})
    b = fake.add_contact(email="b@example.com")
    _, status, _ = await hs(hs.basic.purge_with_http_info, PublicGdprDeleteInput(object_id=a))
    assert status == 204
    assert a not in fake.contacts and a not in fake.archived
    with pytest.raises(ApiException) as caught:
        await hs(hs.basic.purge, {"objectId": a})
    assert caught.value.status == 404
    assert error_body(caught.value)["category"] == "OBJECT_NOT_FOUND"
    await hs(hs.basic.purge, {"objectId": "b@example.com", "idProperty": "email"})
    assert b not in fake.contacts

    answer, status, _ = await hs(
        hs.contacts.upsert_with_http_info, upsert(("A", {"email": "A@example.com"}))
    )
    assert status == 207
    assert answer.errors[0].category == "VALIDATION_ERROR"
    assert "GDPR" in answer.errors[0].message
    assert fake.contacts == {}


async def test_single_object_endpoints(fake: FakeHubSpot, hs: HubSpot) -> None:
    created = await hs(hs.basic.create, {"properties": {"email": "s@example.com", MIMEEQ: "S"}})
    got = await hs(hs.basic.get_by_id, "S", id_property=MIMEEQ, properties=["email"])
    assert (got.id, got.properties["email"]) == (created.id, "s@example.com")
    updated = await hs(hs.basic.update, created.id, {"properties": {"firstname": "Sue"}})
    assert updated.properties["firstname"] == "Sue"
    with pytest.raises(ApiException) as caught:
        await hs(hs.basic.update, created.id, {"properties": {"hs_lead_status": "nope"}})
    assert caught.value.status == 400
    page = await hs(hs.basic.get_page, limit=1, properties=["email", "firstname"])
    assert page.results[0].properties["firstname"] == "Sue" and page.paging is None
    await hs(hs.basic.archive, created.id)
    assert created.id in fake.archived
    with pytest.raises(ApiException) as caught:
        await hs(hs.basic.get_by_id, created.id)
    assert caught.value.status == 404


# --- properties, companies, associations ---


async def test_properties_and_groups(fake: FakeHubSpot, hs: HubSpot) -> None:
    group = PropertyGroupCreate(name="mimeeq", label="Mimeeq")
    created = await hs(hs.groups.create, "contacts", group)
    assert (created.name, created.label) == ("mimeeq", "Mimeeq")
    with pytest.raises(PropertiesError) as caught:
        await hs(hs.groups.create, "contacts", group)
    assert caught.value.status == 409
    assert "already exists" in error_body(caught.value)["message"]
    assert "mimeeq" in {g.name for g in (await hs(hs.groups.get_all, "contacts")).results}

    tier = PropertyCreate(
        name="mimeeq_tier",
        label="Tier",
        type="enumeration",
        field_type="select",
        group_name="mimeeq",
        options=[OptionInput(label="Gold", value="gold", hidden=False, display_order=0)],
    )
    prop = await hs(hs.properties.create, "contacts", tier)
    assert [o.value for o in prop.options] == ["gold"]
    with pytest.raises(PropertiesError) as caught:
        await hs(hs.properties.create, "contacts", tier)
    assert caught.value.status == 409
    assert error_body(caught.value)["message"] == "Property named 'mimeeq_tier' already exists."

    unique = PropertyCreate(
        name="mimeeq_id2", label="Id", type="string", field_type="text", group_name="mimeeq",
        has_unique_value=True,
    )  # fmt: skip
    assert (await hs(hs.properties.create, "contacts", unique)).has_unique_value is True
    assert fake.properties["contacts"]["mimeeq_id2"]["hasUniqueValue"] is True
    with pytest.raises(PropertiesError) as caught:
        await hs(hs.properties.create, "contacts", {**unique.to_dict(), "groupName": "nope"})
    assert caught.value.status == 400

    options = [
        OptionInput(label="Silver", value="silver", hidden=False),
        OptionInput(label="Gold", value="gold", hidden=False),
    ]
    patched = await hs(
        hs.properties.update, "contacts", "mimeeq_tier", PropertyUpdate(options=options)
    )
    assert [o.value for o in patched.options] == ["silver", "gold"]
    answer = await hs(hs.contacts.upsert, upsert(("T", {"mimeeq_tier": "silver"})))
    assert answer.results[0].properties["mimeeq_tier"] == "silver"
    bare = PropertyCreate(
        name="mimeeq_bare", label="Bare", type="enumeration", field_type="checkbox",
        group_name="mimeeq", options=[],
    )  # fmt: skip
    with pytest.raises(PropertiesError) as caught:  # this portal wants options (the default)
        await hs(hs.properties.create, "contacts", bare)
    assert caught.value.status == 400
    assert error_body(caught.value)["message"] == "An enumeration property needs options"
    assert "mimeeq_bare" not in fake.properties["contacts"]
    fake.enumeration_needs_options = False  # this one does not
    assert (await hs(hs.properties.create, "contacts", bare)).options == []
    got = await hs(hs.properties.get_by_name, "contacts", "hs_lead_status")
    assert "UNQUALIFIED" in [o.value for o in got.options]
    assert MIMEEQ in {p.name for p in (await hs(hs.properties.get_all, "contacts")).results}
    with pytest.raises(PropertiesError) as caught:
        await hs(hs.properties.get_by_name, "contacts", "nope")
    assert caught.value.status == 404


async def test_definitions_written_by_hand_are_served_whole(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.properties["contacts"]["tags"] = {
        "name": "tags", "type": "enumeration", "fieldType": "checkbox",
        "options": [{"value": "red"}],
    }  # fmt: skip
    got = await hs(hs.properties.get_by_name, "contacts", "tags")
    assert (got.label, [o.value for o in got.options]) == ("tags", ["red"])
    answer, status, _ = await hs(
        hs.contacts.upsert_with_http_info, upsert(("A", {"tags": "red"}), ("B", {"tags": "blue"}))
    )
    assert status == 207 and answer.errors[0].context == {"ids": ["B"]}


async def test_companies_upsert_and_read_by_unique_property(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.add_property("mimeeq_company_id", object_type="companies", unique=True)
    answer = await hs(
        hs.companies.upsert,
        upsert(("C-1", {"name": "Acme", "domain": "acme.com"}), id_property="mimeeq_company_id"),
    )
    (acme,) = answer.results
    assert fake.companies[acme.id]["name"] == "Acme"
    found = await hs(
        hs.companies.read,
        read("C-1", properties=["name"], id_property="mimeeq_company_id"),
    )
    assert found.results[0].id == acme.id
    assert found.results[0].properties["hs_lastmodifieddate"]
    with pytest.raises(CompaniesError) as caught:
        await hs(hs.companies.read, read("acme.com", properties=[], id_property="domain"))
    assert caught.value.status == 400  # domain is not a unique property


async def test_v4_default_associations(fake: FakeHubSpot, hs: HubSpot) -> None:
    contact = fake.add_contact(email="a@example.com")
    company = fake.add_company(name="Acme")
    answer, status, _ = await hs(
        hs.associations.create_default_with_http_info,
        "contacts",
        "companies",
        {"inputs": [{"from": {"id": contact}, "to": {"id": company}}]},
    )
    assert status == 200
    (result,) = answer.results
    assert (result._from.id, result.to.id) == (contact, company)
    assert result.association_spec.association_type_id == 279
    assert fake.associations == {(contact, company)}
    page = await hs(hs.association_pages.get_page, "contacts", contact, "companies")
    assert [r.to_object_id for r in page.results] == [company]

    # the client maps no model to a 207 here: read the raw answer
    raw = await hs(
        hs.associations.create_default,
        "contacts",
        "companies",
        {"inputs": [{"from": {"id": contact}, "to": {"id": "999"}}]},
        _preload_content=False,
    )
    assert raw.status == 207
    (error,) = json.loads(raw.data)["errors"]
    assert error["context"] == {"toObjectId": ["999"]}
    with pytest.raises(AssociationsError) as caught:
        await hs(hs.associations.create_default, "contacts", "deals", {"inputs": []})
    assert caught.value.status == 400


async def test_v4_batch_archive_removes_associations(fake: FakeHubSpot, hs: HubSpot) -> None:
    contact = fake.add_contact(email="a@example.com")
    one, two = fake.add_company(name="One"), fake.add_company(name="Two")
    fake.associations |= {(contact, one), (contact, two)}
    body = {"inputs": [{"from": {"id": contact}, "to": [{"id": one}, {"id": "999"}]}]}
    _, status, _ = await hs(hs.associations.archive_with_http_info, "contacts", "companies", body)
    assert status == 204
    assert fake.associations == {(contact, two)}  # an association that is not there is ignored
    # the other way round, from the company
    body = {"inputs": [{"from": {"id": two}, "to": [{"id": contact}]}]}
    await hs(hs.associations.archive, "companies", "contacts", body)
    assert fake.associations == set()
    with pytest.raises(AssociationsError) as caught:  # ``to`` is a list in this body
        await hs(hs.associations.archive, "contacts", "companies",
                 {"inputs": [{"from": {"id": contact}, "to": {"id": one}}]})  # fmt: skip
    assert caught.value.status == 400


# --- account ---


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Asia/Kolkata"])
async def test_account_info_tells_the_time_zone(zone: str) -> None:
    fake = FakeHubSpot(time_zone=zone)
    await fake.start()
    url = fake.url + "/account-info/v3/details"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as refused:
                assert refused.status == 401
            fake.scopes_missing = True  # it needs no CRM scope
            headers = {"Authorization": f"Bearer {fake.token}"}
            async with http.get(url, headers=headers) as response:
                assert response.status == 200
                body = await response.json()
    finally:
        await fake.stop()
    offset = datetime.now(ZoneInfo(zone)).utcoffset()
    assert offset is not None
    assert body["timeZone"] == zone
    assert body["utcOffsetMilliseconds"] == offset.total_seconds() * 1000
    assert body["utcOffset"] == {"UTC": "+00:00", "Asia/Kolkata": "+05:30"}.get(
        zone, body["utcOffset"]
    )
    assert {"portalId", "accountType", "companyCurrency", "uiDomain"} <= body.keys()


# --- the edge: auth, rate limits, failures, overlaps ---


async def test_bad_token_and_missing_scopes(fake: FakeHubSpot, hs: HubSpot) -> None:
    wrong = HubSpot(fake.url, "wrong-token")
    try:
        with pytest.raises(ApiException) as caught:
            await wrong(wrong.contacts.upsert, upsert(("A", {})))
    finally:
        wrong.close()
    assert caught.value.status == 401
    body = error_body(caught.value)
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["message"].startswith("Authentication credentials not found")

    fake.scopes_missing = True
    with pytest.raises(PropertiesError) as caught:
        await hs(hs.properties.get_all, "contacts")
    assert caught.value.status == 403
    body = error_body(caught.value)
    assert body["category"] == "MISSING_SCOPES"
    assert body["errors"][0]["context"] == {"requiredGranularScopes": ["crm.schemas.contacts.read"]}
    assert fake.contacts == {}


async def test_ten_secondly_rolling_limit() -> None:
    fake = FakeHubSpot(rate_limit=3, interval=2.0)  # a window no loaded machine outlasts
    await fake.start()
    hs = HubSpot(fake.url, fake.token)
    try:
        remaining = []
        for n in range(3):
            _, _, headers = await hs(
                hs.contacts.upsert_with_http_info, upsert((f"E{n}", {}), id_property="email")
            )
            remaining.append(headers["X-HubSpot-RateLimit-Remaining"])
            assert headers["X-HubSpot-RateLimit-Max"] == "3"
            assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "2000"
        assert remaining == ["2", "1", "0"]
        with pytest.raises(ApiException) as caught:
            await hs(hs.contacts.upsert, upsert(("late@example.com", {}), id_property="email"))
        assert caught.value.status == 429
        assert int(caught.value.headers["Retry-After"]) >= 1
        body = json.loads(caught.value.body)
        assert body["errorType"] == "RATE_LIMIT"
        assert body["policyName"] == "TEN_SECONDLY_ROLLING"
        assert body["message"] == "You have reached your ten_secondly_rolling limit."
        assert fake.find("email", "late@example.com") is None
        await asyncio.sleep(2.0)  # the window has rolled on
        await hs(hs.contacts.upsert, upsert(("late@example.com", {}), id_property="email"))
        assert fake.find("email", "late@example.com") is not None
        assert fake.count(429) == 1
    finally:
        hs.close()
        await fake.stop()


async def test_daily_limit() -> None:
    fake = FakeHubSpot(daily_limit=2)
    await fake.start()
    hs = HubSpot(fake.url, fake.token)
    try:
        _, _, headers = await hs(hs.properties.get_all_with_http_info, "contacts")
        assert headers["X-HubSpot-RateLimit-Daily"] == "2"
        assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "1"
        await hs(hs.properties.get_all, "contacts")
        with pytest.raises(PropertiesError) as caught:
            await hs(hs.properties.get_all, "contacts")
        assert caught.value.status == 429
        assert json.loads(caught.value.body)["policyName"] == "DAILY"
        assert "Retry-After" not in caught.value.headers
    finally:
        hs.close()
        await fake.stop()


async def test_fail_next_answers_the_next_requests(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.fail_next = [None, 503, "reset", 429]
    await hs(hs.properties.get_all, "contacts")  # None: this one goes through
    with pytest.raises(ApiException) as caught:
        await hs(hs.contacts.upsert, upsert(("A", {})))
    assert caught.value.status == 503
    assert error_body(caught.value)["status"] == "error"
    with pytest.raises(urllib3.exceptions.ProtocolError):
        await hs(hs.contacts.upsert, upsert(("A", {})))
    with pytest.raises(ApiException) as caught:
        await hs(hs.contacts.upsert, upsert(("A", {})))
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    assert fake.contacts == {}
    await hs(hs.contacts.upsert, upsert(("A", {})))
    assert [c.status for c in fake.calls] == [200, 503, 0, 429, 200]
    assert len(fake.contacts) == 1


async def test_failure_rate_fails_before_processing(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.failure_rate = 0.5
    ok = 0
    for n in range(20):
        try:
            await hs(hs.contacts.upsert, upsert((f"M-{n}", {})))
            ok += 1
        except ApiException as exc:
            assert exc.status in (503, 429)
    assert 0 < ok < 20
    assert len(fake.contacts) == ok


async def test_down_answers_503_until_back(fake: FakeHubSpot, hs: HubSpot) -> None:
    fake.down = True
    for _ in range(3):
        with pytest.raises(ApiException) as caught:
            await hs(hs.contacts.read, read("1", properties=[]))
        assert caught.value.status == 503
    fake.down = False
    await hs(hs.contacts.upsert, upsert(("A", {})))
    assert fake.count(503) == 3 and len(fake.contacts) == 1


async def test_overlapping_writes_of_one_contact_are_counted() -> None:
    fake = FakeHubSpot(latency=0.3)
    fake.add_property(MIMEEQ, unique=True)
    await fake.start()
    hs = HubSpot(fake.url, fake.token)
    try:
        a = fake.add_contact(email="a@example.com", **{MIMEEQ: "A"})
        await asyncio.gather(
            hs(hs.contacts.upsert, upsert(("A", {"firstname": "x"}))),
            hs(hs.contacts.upsert, upsert(("B", {"firstname": "y"}))),
        )
        assert fake.overlaps == 0
        await asyncio.gather(
            hs(hs.contacts.upsert, upsert(("A", {"firstname": "x"}))),
            hs(hs.contacts.archive, {"inputs": [{"id": a}]}),  # the same contact, by its id
        )
        assert fake.overlaps == 1
        await asyncio.gather(
            hs(hs.contacts.upsert, upsert(("B", {"city": "x"}))),
            hs(hs.contacts.upsert, upsert(("B", {"city": "y"}))),
            hs(hs.contacts.read, read("B", properties=[], id_property=MIMEEQ)),  # reads don't count
        )
        assert fake.overlaps == 2
    finally:
        hs.close()
        await fake.stop()


async def test_delay_next_delays_chosen_requests_and_counts_overlaps(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    fake.delay_next = [0.0, 0.5]  # the first request at once, the second slowly
    started = time.monotonic()
    await hs(hs.contacts.upsert, upsert(("A", {"firstname": "x"})))
    assert time.monotonic() - started < 0.4

    async def later() -> None:
        await asyncio.sleep(0.1)
        await hs(hs.contacts.upsert, upsert(("A", {"city": "z"})))

    # delayed 0.5 s, while a write of the same contact comes in and is done
    await asyncio.gather(hs(hs.contacts.upsert, upsert(("A", {"firstname": "y"}))), later())
    assert time.monotonic() - started >= 0.5
    assert fake.delay_next == [] and fake.overlaps == 1


async def test_a_request_whose_client_left_is_processed_to_the_end(fake: FakeHubSpot) -> None:
    fake.delay_next = [0.5]
    url = fake.url + "/crm/v3/objects/contacts/batch/upsert"
    auth = {"Authorization": f"Bearer {fake.token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1), http.post(url, json=upsert(("A", {}))):
                pass
    await fake.settled()
    (call,) = fake.calls
    assert call.gone and call.status == 200
    assert fake.find(MIMEEQ, "A") is not None  # the write was applied all the same


async def test_trickle_sends_answers_a_byte_at_a_time(fake: FakeHubSpot) -> None:
    fake.trickle = 0.01
    url = fake.url + "/crm/v3/properties/contacts/groups"
    auth = {"Authorization": f"Bearer {fake.token}"}
    async with aiohttp.ClientSession(headers=auth) as http, http.get(url) as response:
        assert response.status == 200
        chunks = [chunk async for chunk in response.content.iter_any()]
        body = json.loads(b"".join(chunks))
    assert "mimeeq" not in {g["name"] for g in body["results"]}
    assert len(chunks) > 10  # it came in pieces
    assert not fake.calls[0].gone


async def test_calls_and_writes_are_recorded(fake: FakeHubSpot, hs: HubSpot) -> None:
    started = time.monotonic()
    await hs(hs.contacts.upsert, upsert(("A", {}), ("B", {})))
    await hs(hs.contacts.read, read("A", properties=[], id_property=MIMEEQ))
    await hs(hs.properties.get_all, "contacts")
    upsert_call, read_call, _ = fake.calls
    assert (upsert_call.method, upsert_call.path) == (
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
    )
    assert (upsert_call.status, upsert_call.inputs) == (200, 2)
    assert upsert_call.body["inputs"][0]["id"] == "A"
    assert started <= upsert_call.at <= read_call.at
    assert fake.writes() == [upsert_call]
    assert fake.count(200) == 3


# --- unique-value indexes (kept across requests) ---


async def id_of(
    hs: HubSpot, value: str, prop: str = MIMEEQ, *, archived: bool = False
) -> str | None:
    """The id of the contact whose ``prop`` is ``value``, read through the API (None: none)."""
    answer = await hs(
        hs.contacts.read, read(value, properties=[], id_property=prop), archived=archived
    )
    return answer.results[0].id if answer.results else None


async def test_edits_by_hand_between_requests_are_seen(fake: FakeHubSpot, hs: HubSpot) -> None:
    a = fake.add_contact(email="a@example.com", **{MIMEEQ: "A"})
    b = fake.add_contact(email="b@example.com")
    assert await id_of(hs, "A") == a  # the indexes exist from here on
    assert await id_of(hs, "B@example.com", "email") == b

    fake.contacts[b][MIMEEQ] = "B"  # a unique value set by hand
    fake.contacts[a]["email"] = "new-a@example.com"  # and an email changed
    assert await id_of(hs, "B") == b
    assert await id_of(hs, "NEW-A@example.com", "email") == a
    assert await id_of(hs, "a@example.com", "email") is None

    # a contact put in by hand, as a plain dict
    fake.contacts["7"] = {"hs_object_id": "7", "email": "c@example.com", MIMEEQ: "C"}
    assert await id_of(hs, "C") == "7"
    fake.contacts["7"][MIMEEQ] = "C2"  # edits of it are seen too
    assert await id_of(hs, "C2") == "7" and await id_of(hs, "C") is None

    fake.contacts[a] = {**fake.contacts[a], MIMEEQ: "A2"}  # a whole object replaced
    assert await id_of(hs, "A2") == a and await id_of(hs, "A") is None
    del fake.contacts[b]
    assert await id_of(hs, "B") is None

    answer = await hs(hs.contacts.upsert, upsert(("A2", {"city": "x"}), ("B", {"city": "y"})))
    assert [(r.id == a, r.new) for r in answer.results] == [(True, False), (False, True)]
    assert fake.contacts[a]["city"] == "x"


async def test_a_refused_batch_changes_no_index(fake: FakeHubSpot, hs: HubSpot) -> None:
    a = fake.add_contact(email="a@example.com", **{MIMEEQ: "A"})
    fake.add_contact(email="b@example.com", **{MIMEEQ: "B"})
    assert await id_of(hs, "A") == a
    with pytest.raises(ApiException) as caught:
        await hs(
            hs.contacts.upsert,
            upsert(
                ("NEW", {"email": "new@example.com"}),
                ("A", {"email": "x@example.com"}),
                ("X", {"email": "B@example.com"}),  # B's: a 409
            ),
        )
    assert caught.value.status == 409
    fake.validation_mode = "400"
    with pytest.raises(ApiException) as caught:
        await hs(
            hs.contacts.upsert,
            upsert(("NEW", {"email": "new@example.com"}), ("Y", {"email": "not an email"})),
        )
    assert caught.value.status == 400

    assert await id_of(hs, "NEW") is None
    assert await id_of(hs, "new@example.com", "email") is None
    assert await id_of(hs, "x@example.com", "email") is None
    assert await id_of(hs, "a@example.com", "email") == a
    answer = await hs(hs.contacts.upsert, upsert(("NEW", {"email": "new@example.com"})))
    assert answer.results[0].new is True


async def test_a_batch_sees_its_own_changes_others_once_committed(
    fake: FakeHubSpot, hs: HubSpot
) -> None:
    a = fake.add_contact(email="a@example.com", **{MIMEEQ: "A"})
    assert await id_of(hs, "a@example.com", "email") == a
    # A gives up its email and a new contact takes it, in one batch
    answer = await hs(
        hs.contacts.upsert,
        upsert(("A", {"email": "x@example.com"}), ("Z", {"email": "A@example.com"})),
    )
    z = answer.results[1].id
    assert [r.new for r in answer.results] == [False, True]
    assert await id_of(hs, "a@example.com", "email") == z
    assert await id_of(hs, "x@example.com", "email") == a
    assert await id_of(hs, "Z") == z


async def test_shared_values_resolve_as_a_scan_would(fake: FakeHubSpot, hs: HubSpot) -> None:
    first = fake.add_contact(email="dup@example.com")  # add_contact does not validate
    second = fake.add_contact(email="DUP@example.com")
    assert await id_of(hs, "dup@example.com", "email") == second  # the last one
    await hs(hs.contacts.archive, {"inputs": [{"id": second}]})
    assert await id_of(hs, "dup@example.com", "email") == first
    assert await id_of(hs, "dup@example.com", "email", archived=True) == second
    await hs(hs.contacts.archive, {"inputs": [{"id": first}]})
    assert await id_of(hs, "dup@example.com", "email") is None
    assert await id_of(hs, "dup@example.com", "email", archived=True) == first  # last archived


async def test_reindex_after_edits_that_go_round_the_dicts(fake: FakeHubSpot, hs: HubSpot) -> None:
    a = fake.add_contact(**{MIMEEQ: "A"})
    assert await id_of(hs, "A") == a
    dict.__setitem__(fake.contacts[a], MIMEEQ, "A2")  # not counted as an edit
    fake.reindex()
    assert await id_of(hs, "A2") == a and await id_of(hs, "A") is None


async def test_deleting_and_recreating_a_unique_property(fake: FakeHubSpot, hs: HubSpot) -> None:
    a = fake.add_contact(**{MIMEEQ: "A"})
    assert await id_of(hs, "A") == a
    await hs(hs.properties.archive, "contacts", MIMEEQ)
    with pytest.raises(ApiException):
        await id_of(hs, "A")
    fake.add_property(MIMEEQ, unique=True)
    assert await id_of(hs, "A") == a  # the values stayed


async def test_indexes_are_built_once_and_kept(
    fake: FakeHubSpot, hs: HubSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(50):
        fake.add_contact(email=f"c{n}@example.com", **{MIMEEQ: f"C{n}"})
    await hs(hs.contacts.upsert, upsert(("C1", {"city": "x"}), ("NEW", {"email": "n@example.com"})))
    built: list[str] = []
    build = fake_hubspot.UniqueIndex.__init__

    def counted(self: Any, source: Any, prop: str, serial: int) -> None:
        built.append(prop)
        build(self, source, prop, serial)

    monkeypatch.setattr(fake_hubspot.UniqueIndex, "__init__", counted)
    await hs(
        hs.contacts.upsert,
        upsert(("C2", {"email": "c2-new@example.com"}), ("NEW2", {"email": "n2@example.com"})),
    )
    found = fake.find(MIMEEQ, "C3")
    assert found is not None
    await hs(hs.contacts.archive, {"inputs": [{"id": found[0]}]})
    d = fake.add_contact(email="d@example.com", **{MIMEEQ: "D"})
    assert await id_of(hs, "D") == d and await id_of(hs, "C3") is None
    assert await id_of(hs, "C2@example.com", "email") is None
    assert await id_of(hs, "c2-new@example.com", "email") == await id_of(hs, "C2")
    assert built == []

    fake.contacts[d]["city"] = "edited by hand"  # any edit: each index is built again, once
    assert await id_of(hs, "D") == d and await id_of(hs, "C4") is not None
    assert built == [MIMEEQ]
