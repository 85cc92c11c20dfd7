"""The REST adapter against respx: auth, templates, operations, batch mode, failure classes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import structlog
import yaml
from aiohttp import web
from pydantic import ValidationError
from tenacity import wait_none

import adapters.rest.adapter
from adapters.rest import RestAdapter, RestSettings
from connector.adapter import CLAIM_HOLD, ClaimHold, Record, TargetContext, adapter_class
from connector.config import load_config
from connector.errors import ConfigError, TargetPaused
from connector.mapping import FieldMapping, load_mapping
from connector.outcomes import Dead, Delivered, Retry
from testkit.payloads import ROOT, company, company_id, contact, write_config

BASE = "https://crm.test/api/v1"
SECRET = "s3cret-crm-token-0123456789"
# A JSON:API-style CRM: server-assigned ids, the record wrapped under data.attributes.
CRUD: dict[str, Any] = {
    "create": {
        "path": "/contacts",
        "body": {"data": {"type": "contacts", "attributes": "$record"}},
        "id_from_response": "data.id",
    },
    "update": {
        "path": "/contacts/{remote_id}",
        "body": {"data": {"type": "contacts", "id": "{remote_id}", "attributes": "$record"}},
    },
    "delete": {"path": "/contacts/{remote_id}"},
}
LOOKUP = {
    "path": "/contacts",
    "query": {"external_id": "{contact_id}"},
    "id_from_response": "data[0].id",
}


@pytest.fixture
async def crm() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


MAPPINGS: dict[RestAdapter, FieldMapping] = {}  # each adapter's mapping, to build its records
COMPANY_MAPPING = load_mapping("mappings/rest-companies.yaml", ROOT)


@pytest.fixture
async def make_adapter(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[RestAdapter] = []

    async def make(ops: dict[str, Any] | None = None, **options: Any) -> RestAdapter:
        mapping = load_mapping(options.pop("mapping", "mappings/rest-contacts.yaml"), ROOT)
        if "companies" in options:  # the companies' requests come with their mapping
            options.setdefault("company_mapping", "-")
        options = {"type": "rest", "mapping": "-", "base_url": BASE, **(ops or CRUD), **options}
        settings = RestSettings.model_validate(options, context={"base_dir": tmp_path})
        company_fields = COMPANY_MAPPING.fields if settings.companies else ()
        context = TargetContext("demo", "crm", mapping.fields, company_fields=company_fields)
        adapter = RestAdapter(settings, context)
        MAPPINGS[adapter] = mapping
        adapter.call_wait = wait_none()  # type: ignore[misc]
        await adapter.open()
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.close()


def record(
    adapter: RestAdapter,
    n: int,
    op: str = "upsert",
    remote_id: str | None = None,
    event: str | None = None,
    contact_id: str | None = None,
    **changes: Any,
) -> Record:
    payload = contact(n, **changes)
    if contact_id is not None:
        payload["id"] = contact_id
    return Record(
        contact_id=payload["id"],
        op=op,  # type: ignore[arg-type]
        event=event or ("contact-deleted" if op == "delete" else "contact-updated"),
        event_id=f"event-{n}",
        fields=MAPPINGS[adapter].apply(payload),
        payload=payload,
        remote_id=remote_id,
        attempt=1,
    )


def sent(route: respx.Route, index: int = -1) -> httpx.Request:
    return route.calls[index].request


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def created(remote_id: Any) -> httpx.Response:
    return httpx.Response(201, json={"data": {"id": remote_id, "type": "contacts"}})


# --- auth, headers, TLS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "bearer", "token": SECRET}, "Authorization", f"Bearer {SECRET}"),
        (
            {"type": "basic", "username": "sync", "password": SECRET},
            "Authorization",
            "Basic " + base64.b64encode(f"sync:{SECRET}".encode()).decode(),
        ),
        ({"type": "header", "name": "X-Api-Key", "value": SECRET}, "X-Api-Key", SECRET),
        ({"type": "none"}, "Authorization", None),
    ],
)
async def test_each_auth_mode(
    crm: respx.MockRouter, make_adapter, auth: dict[str, str], header: str, expected: str | None
) -> None:
    route = crm.post("/contacts").mock(return_value=created("1"))
    adapter = await make_adapter(auth=auth)
    assert await adapter.push([record(adapter, 1)]) == [Delivered("1")]
    assert sent(route).headers.get(header) == expected
    assert SECRET not in repr(adapter.settings) + str(adapter.settings.model_dump())


async def test_secrets_come_from_the_environment_and_never_show(
    tmp_path: Path, crm: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN", SECRET)
    target = {
        "type": "rest",
        "mapping": str(ROOT / "mappings/rest-contacts.yaml"),
        "base_url": BASE,
        "auth": {"type": "bearer", "token": "${CRM_TOKEN}"},
        **CRUD,
    }
    config = load_config(write_config(tmp_path, {"crm": target}))
    (loaded,) = config.targets
    assert loaded.adapter is RestAdapter is adapter_class("rest")
    adapter = RestAdapter(loaded.settings, TargetContext("demo", "crm", loaded.mapping.fields))
    MAPPINGS[adapter] = loaded.mapping
    await adapter.open()
    crm.post("/contacts").mock(return_value=httpx.Response(201, json={}))
    crm.patch("/contacts/9").mock(return_value=httpx.Response(401, json={"error": "bad token"}))
    try:
        with structlog.testing.capture_logs() as logs:
            created_without_id = await adapter.push([record(adapter, 1)])
            with pytest.raises(TargetPaused) as paused:
                await adapter.push([record(adapter, 2, remote_id="9")])
    finally:
        await adapter.close()
    assert created_without_id == [Delivered(None, "no id at 'data.id' in the answer")]
    assert "HTTP 401" in str(paused.value) and "bad token" in str(paused.value)
    assert logs and SECRET not in repr(logs) + str(paused.value) + repr(loaded.settings)


async def test_headers_and_the_idempotency_key(crm: respx.MockRouter, make_adapter) -> None:
    route = crm.post("/contacts").mock(side_effect=[httpx.Response(503), created("5")])
    adapter = await make_adapter(headers={"X-Tenant": "acme", "Accept": "application/vnd.crm+json"})
    assert await adapter.push([record(adapter, 5)]) == [Delivered("5")]
    first, second = (call.request for call in route.calls)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == "event-5"
    assert second.headers["X-Tenant"] == "acme"
    assert second.headers["Accept"] == "application/vnd.crm+json"
    assert second.headers["User-Agent"] == "mimeeq-connector"
    assert second.headers["Content-Type"] == "application/json"

    route.mock(side_effect=None, return_value=created("6"))
    renamed = await make_adapter(idempotency_header="X-Request-Id")
    await renamed.push([record(renamed, 6)])
    assert sent(route).headers["X-Request-Id"] == "event-6"
    assert "Idempotency-Key" not in sent(route).headers
    off = await make_adapter(idempotency_header=None)
    await off.push([record(off, 7)])
    assert "Idempotency-Key" not in sent(route).headers


async def test_timeouts_and_tls(make_adapter, tmp_path: Path, monkeypatch) -> None:
    clients: list[dict[str, Any]] = []
    real = httpx.AsyncClient

    def spy(**kwargs: Any) -> httpx.AsyncClient:
        clients.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(adapters.rest.adapter.httpx, "AsyncClient", spy)
    await make_adapter(connect_timeout=2, read_timeout=9)
    assert clients[-1]["timeout"] == httpx.Timeout(9, connect=2)
    assert clients[-1]["verify"] is True  # on by default
    await make_adapter(verify=False)
    assert clients[-1]["verify"] is False
    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(__import__("certifi").where()).read_text())
    await make_adapter(ca_bundle="ca.pem")  # relative to the config's folder
    assert clients[-1]["verify"].get_ca_certs() is not None
    with pytest.raises(ValidationError, match="no such file"):
        await make_adapter(ca_bundle="missing.pem")
    with pytest.raises(ValidationError, match="ca_bundle needs verify"):
        await make_adapter(ca_bundle="ca.pem", verify=False)


# --- operations and remote ids -----------------------------------------------------------------


async def test_create_update_delete_round_trip_the_remote_id(
    crm: respx.MockRouter, make_adapter
) -> None:
    create = crm.post("/contacts").mock(return_value=created(42))  # a number: kept as text
    update = crm.patch("/contacts/42").mock(return_value=httpx.Response(200, json={}))
    delete = crm.delete("/contacts/42").mock(return_value=httpx.Response(204))
    adapter = await make_adapter()

    first = record(adapter, 1, event="contact-created")
    assert await adapter.push([first]) == [Delivered("42")]
    assert body(sent(create)) == {"data": {"type": "contacts", "attributes": dict(first.fields)}}
    assert sent(create).method == "POST"

    later = record(adapter, 1, remote_id="42", lastName="Renamed")
    assert await adapter.push([later]) == [Delivered("42")]
    assert body(sent(update))["data"]["id"] == "42"
    assert body(sent(update))["data"]["attributes"]["last_name"] == "Renamed"

    gone = record(adapter, 1, op="delete", remote_id="42")
    assert await adapter.push([gone]) == [Delivered("42", "deleted")]
    assert delete.call_count == 1 and not sent(delete).content


async def test_an_update_without_a_remote_id_follows_create(
    crm: respx.MockRouter, make_adapter
) -> None:
    create = crm.post("/contacts").mock(return_value=created("c-1"))
    adapter = await make_adapter()
    # Created and updated before the first push: one coalesced contact-updated record.
    assert await adapter.push([record(adapter, 1)]) == [Delivered("c-1")]
    assert create.call_count == 1


async def test_an_update_answered_404_creates_the_contact_again(
    crm: respx.MockRouter, make_adapter
) -> None:
    crm.patch("/contacts/7").mock(return_value=httpx.Response(404, json={"error": "no such id"}))
    create = crm.post("/contacts").mock(return_value=created("8"))
    adapter = await make_adapter()
    (outcome,) = await adapter.push([record(adapter, 1, remote_id="7")])
    assert outcome == Delivered("8", "update answered HTTP 404: created it")
    assert sent(create).headers["Idempotency-Key"] == "event-1:create"

    strict = await make_adapter({**CRUD, "update": {**CRUD["update"], "create_if_missing": False}})
    (outcome,) = await strict.push([record(strict, 1, remote_id="7")])
    assert outcome == Dead('update: HTTP 404: {"error":"no such id"}')


async def test_an_update_keyed_by_the_mimeeq_id(crm: respx.MockRouter, make_adapter) -> None:
    ops = {**CRUD, "update": {"path": "/contacts/external/{contact_id}"}}
    ops["delete"] = {"path": "/contacts/external/{contact_id}"}
    update = crm.patch(url__regex=r"/contacts/external/").mock(return_value=httpx.Response(204))
    create = crm.post("/contacts").mock(return_value=created("1"))
    adapter = await make_adapter(ops)
    assert await adapter.push([record(adapter, 1)]) == [Delivered()]  # no remote id needed
    assert sent(update).url.path == f"/api/v1/contacts/external/{contact(1)['id']}"
    assert body(sent(update)) == dict(record(adapter, 1).fields)  # the default body: the record
    assert await adapter.push([record(adapter, 2, event="contact-created")]) == [Delivered("1")]
    assert (update.call_count, create.call_count) == (1, 1)


async def test_upsert(crm: respx.MockRouter, make_adapter) -> None:
    ops = {"upsert": {"path": "/contacts/{contact_id}", "id_from_response": "id"}}
    route = crm.put(url__regex=r"/contacts/").mock(return_value=httpx.Response(200, json={"id": 3}))
    adapter = await make_adapter(ops)
    assert await adapter.push([record(adapter, 3)]) == [Delivered("3")]
    assert sent(route).method == "PUT" and body(sent(route))["email"] == "person3@example.com"
    # Without a delete operation, deletes are left in the target.
    deleted = await adapter.push([record(adapter, 3, op="delete", remote_id="3")])
    assert deleted == [Delivered(note="no `delete` configured: left in the target")]


async def test_lookup_finds_contacts_whose_remote_id_is_unknown(
    crm: respx.MockRouter, make_adapter
) -> None:
    known, unknown = contact(1)["id"], contact(2)["id"]
    crm.get("/contacts", params={"external_id": known}).mock(
        return_value=httpx.Response(200, json={"data": [{"id": "k1"}]})
    )
    lookup = crm.get("/contacts", params={"external_id": unknown}).mock(
        return_value=httpx.Response(200, json={"data": []})
    )
    update = crm.patch("/contacts/k1").mock(return_value=httpx.Response(200))
    delete = crm.delete("/contacts/k1").mock(return_value=httpx.Response(204))
    create = crm.post("/contacts").mock(return_value=created("n2"))
    adapter = await make_adapter(lookup=LOOKUP)

    outcomes = await adapter.push([record(adapter, 1, event="contact-created"), record(adapter, 2)])
    assert outcomes == [Delivered("k1"), Delivered("n2")]  # found: updated, not created
    assert update.call_count == 1 and create.call_count == 1
    assert "Idempotency-Key" not in sent(lookup).headers  # a GET is idempotent by itself
    outcomes = await adapter.push(
        [record(adapter, 1, op="delete"), record(adapter, 2, op="delete")]
    )
    assert outcomes == [
        Delivered("k1", "deleted"),
        Delivered(note="not found by lookup: nothing to delete"),
    ]
    assert delete.call_count == 1


async def test_delete_without_a_remote_id(crm: respx.MockRouter, make_adapter) -> None:
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, 1, op="delete")])
    assert outcomes == [Delivered(note="no remote id: nothing to delete")]
    assert not crm.calls


@pytest.mark.parametrize("status", [404, 410])
async def test_a_delete_of_a_contact_already_gone_is_delivered(
    crm: respx.MockRouter, make_adapter, status: int
) -> None:
    crm.delete("/contacts/5").mock(return_value=httpx.Response(status))
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, 1, op="delete", remote_id="5")])
    assert outcomes == [Delivered("5", f"already gone (HTTP {status})")]
    strict = await make_adapter({**CRUD, "delete": {**CRUD["delete"], "missing_ok": False}})
    (outcome,) = await strict.push([record(strict, 1, op="delete", remote_id="5")])
    assert isinstance(outcome, Dead) and f"HTTP {status}" in outcome.reason


# --- templates -----------------------------------------------------------------------------


async def test_body_templates(crm: respx.MockRouter, make_adapter) -> None:
    ops = {
        "upsert": {
            "path": "/contacts/{contact_id}",
            "body": {
                "contact": {"attributes": "$record", "tags": "{fields.tags}"},
                "meta": {
                    "source": "mimeeq/{tenant}",
                    "phone": "{fields.phone}",  # this contact has none: left out
                    "list": ["{event}", "{fields.phone}", 7, None],
                    "literal": "{{not a placeholder}}",
                },
                "original": "$payload",
            },
        }
    }
    route = crm.put(url__regex="/contacts/").mock(return_value=httpx.Response(204))
    adapter = await make_adapter(ops)
    rec = record(adapter, 1, phoneNumbers=[])
    assert await adapter.push([rec]) == [Delivered()]
    assert body(sent(route)) == {
        "contact": {"attributes": dict(rec.fields), "tags": ["tag1", "tag2"]},
        "meta": {"source": "mimeeq/demo", "list": ["contact-updated", 7, None],
                 "literal": "{not a placeholder}"},
        "original": rec.payload,
    }  # fmt: skip


async def test_values_keep_their_json_types(crm: respx.MockRouter, make_adapter) -> None:
    fields = {"score": {"value": 5}, "vip": {"value": True}, "ratio": {"value": 0.5}}
    blank = {"from": "middleName", "default": ""}  # set to "" to clear it in the CRM
    mapping = {"fields": {**fields, "address": "addressDetails", "middle": blank}}
    ops = {
        "upsert": {
            "path": "/scores/{fields.score}/{fields.vip}",
            "query": {"r": "{fields.ratio}"},
            "body": {"all": "$record", "middle": "{fields.middle}", "text": "<{fields.middle}>"},
        }
    }
    route = crm.put(url__regex="/scores/").mock(return_value=httpx.Response(200))
    adapter = await make_adapter(ops, mapping=mapping)
    await adapter.push([record(adapter, 1)])
    assert sent(route).url.raw_path == b"/api/v1/scores/5/true?r=0.5"
    assert body(sent(route)) == {
        "all": {"score": 5, "vip": True, "ratio": 0.5, "address": contact(1)["addressDetails"],
                "middle": ""},
        "middle": "",
        "text": "<>",
    }  # fmt: skip
    blank_in_path = await make_adapter({"upsert": {"path": "/c/{fields.middle}"}}, mapping=mapping)
    (outcome,) = await blank_in_path.push([record(blank_in_path, 1)])
    assert isinstance(outcome, Dead) and "{fields.middle}" in outcome.reason


@pytest.mark.parametrize(
    ("contact_id", "raw_path"),
    [
        ("../admin", b"/api/v1/contacts/..%2Fadmin/notes"),
        ("..", b"/api/v1/contacts/%2E%2E/notes"),
        ("a/b?c#d", b"/api/v1/contacts/a%2Fb%3Fc%23d/notes"),
        ("50% off & more", b"/api/v1/contacts/50%25%20off%20%26%20more/notes"),
        ("Zoë", b"/api/v1/contacts/Zo%C3%AB/notes"),
    ],
)
async def test_values_in_paths_are_encoded(
    crm: respx.MockRouter, make_adapter, contact_id: str, raw_path: bytes
) -> None:
    route = crm.route().mock(return_value=httpx.Response(200))
    ops = {"upsert": {"path": "/contacts/{contact_id}/notes", "query": {"who": "{contact_id}"}}}
    adapter = await make_adapter(ops)
    assert await adapter.push([record(adapter, 1, contact_id=contact_id)]) == [Delivered()]
    url = sent(route).url
    assert url.host == "crm.test" and url.raw_path.split(b"?")[0] == raw_path
    assert url.params["who"] == contact_id  # query values are encoded too, and decode back


async def test_a_missing_placeholder_value_is_dead(crm: respx.MockRouter, make_adapter) -> None:
    ops = {"upsert": {"path": "/contacts/by-email/{fields.email}"}}
    adapter = await make_adapter(ops)
    (outcome,) = await adapter.push([record(adapter, 1, emails=[])])
    assert outcome == Dead(
        "upsert: the request needs {fields.email}, which this contact has no value for"
    )
    assert not crm.calls


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"upsert": {"path": "/c/{contactid}"}}, "unknown placeholder {contactid}"),
        ({"upsert": {"path": "/c/{contact_id"}}, "unmatched brace"),
        ({"upsert": {"path": "/c", "body": {"a": "x}"}}}, "unmatched brace"),
        ({"upsert": {"path": "/c?x=1"}}, "String should match pattern"),
        ({"upsert": {"path": "c"}}, "String should match pattern"),
        ({"upsert": {"path": "/c", "method": "FETCH"}}, "Input should be 'GET'"),
        ({"upsert": {"path": "/c", "id_from_response": "data.[id"}}, "invalid JMESPath"),
        ({"upsert": {"path": "/c/{remote_id}"}}, "{remote_id} is not known yet"),
        ({"create": {"path": "/c"}}, "exactly one of"),
        ({**CRUD, "upsert": {"path": "/c"}}, "exactly one of"),
        ({}, "exactly one of"),
        ({"create": {"path": "/c"}, "update": {"path": "/c/{remote_id}"}}, "nothing gives one"),
        ({"batch": {"path": "/b/{contact_id}"}}, "can only use {tenant}"),
        (
            {**CRUD, "retry_on": [404], "dead_on": [404]},
            "status 404 is in both retry_on and dead_on",
        ),
        ({"batch": {"path": "/b", "id_from_result": "id"}}, "need `results`"),
        ({**CRUD, "success": ["2xx", "4xx"]}, "status 4xx is in both success and dead_on"),
        ({**CRUD, "retry_on": ["6xx"]}, "String should match pattern"),
        ({**CRUD, "auth": {"type": "token", "token": "x"}}, "does not match any of the expected"),
    ],
)
def test_bad_templates_and_options_are_config_errors(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as error:
        RestSettings.model_validate({"type": "rest", "mapping": "m", "base_url": BASE, **options})
    assert problem in str(error.value)


def test_config_check_names_the_key(tmp_path: Path) -> None:
    target = {
        "type": "rest",
        "mapping": str(ROOT / "mappings/rest-contacts.yaml"),
        "base_url": BASE,
        "upsert": {"path": "/c/{fields.email}", "query": {"x": "{nope}"}},
    }
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, {"crm": target}))
    problem = "config.yaml:22: tenants.demo.targets.crm.upsert.query.x: unknown placeholder {nope}"
    assert problem in str(error.value)


# --- batch mode ----------------------------------------------------------------------------


BATCH = {
    "path": "/contacts/batch",
    "key": "contacts",
    "item": {"external_id": "{contact_id}", "id": "{remote_id}", "properties": "$record"},
}


async def test_batch_mode_sends_max_size_records_per_request(
    crm: respx.MockRouter, make_adapter
) -> None:
    route = crm.post("/contacts/batch").mock(return_value=httpx.Response(200))
    delete = crm.delete(url__regex="/contacts/external/").mock(return_value=httpx.Response(204))
    adapter = await make_adapter(
        {"batch": {**BATCH, "max_size": 2}, "delete": {"path": "/contacts/external/{contact_id}"}}
    )
    assert adapter.settings.batch_size == 2  # a push is one full batch by default
    records = [record(adapter, n, remote_id="r1" if n == 1 else None) for n in range(5)]
    records.append(record(adapter, 4, op="delete", remote_id="r4"))
    outcomes = await adapter.push(records)
    assert outcomes == [Delivered(), Delivered("r1"), Delivered(), Delivered(), Delivered(),
                        Delivered("r4", "deleted")]  # fmt: skip
    assert route.call_count == 3 and delete.call_count == 1  # deletes go one by one
    first = body(route.calls[0].request)
    assert first == {"contacts": [
        {"external_id": contact(0)["id"], "properties": dict(records[0].fields)},
        {"external_id": contact(1)["id"], "id": "r1", "properties": dict(records[1].fields)},
    ]}  # fmt: skip
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert len(keys) == 3 and all(k.startswith("batch-") for k in keys)


async def test_batch_results_by_position(crm: respx.MockRouter, make_adapter) -> None:
    answer = {"results": [
        {"id": 11, "status": 201},
        {"status": 422, "error": {"field": "email", "message": "invalid"}},
        {"status": "503"},
        {"error": "duplicate"},
    ]}  # fmt: skip
    crm.post("/contacts/batch").mock(return_value=httpx.Response(207, json=answer))
    options = {"results": "results", "id_from_result": "id", "status_from_result": "status",
               "error_from_result": "error"}  # fmt: skip
    adapter = await make_adapter({"batch": {**BATCH, **options}})
    outcomes = await adapter.push([record(adapter, n) for n in range(5)])
    assert outcomes == [
        Delivered("11"),
        Dead('batch item: HTTP 422: {"field":"email","message":"invalid"}'),
        Retry('batch item: HTTP 503: {"status":"503"}'),
        Dead("batch item: duplicate"),
        Retry("batch: the answer has no result for this contact"),
    ]


async def test_batch_results_matched_by_id(crm: respx.MockRouter, make_adapter) -> None:
    answer = {"items": [{"ref": contact(n)["id"], "id": f"x{n}"} for n in (2, 0)]}
    crm.post("/contacts/batch").mock(return_value=httpx.Response(200, json=answer))
    options = {"key": None, "results": "items", "match_by": "ref", "id_from_result": "id"}
    adapter = await make_adapter({"batch": {**BATCH, **options}})
    outcomes = await adapter.push([record(adapter, n) for n in range(3)])
    assert outcomes == [Delivered("x0"), Retry("batch: the answer has no result for this contact"),
                        Delivered("x2")]  # fmt: skip
    assert isinstance(body(crm.calls.last.request), list)  # key: null sends the bare list


async def test_a_whole_batch_failure_applies_to_every_item(
    crm: respx.MockRouter, make_adapter
) -> None:
    route = crm.post("/contacts/batch")
    adapter = await make_adapter({"batch": BATCH})
    records = [record(adapter, n) for n in range(3)]
    route.mock(return_value=httpx.Response(503, headers={"Retry-After": "30"}))
    assert await adapter.push(records) == [Retry("batch: HTTP 503: Service Unavailable", 30.0)] * 3
    route.mock(return_value=httpx.Response(400, text="malformed"))
    assert await adapter.push(records) == [Dead("batch: HTTP 400: malformed")] * 3
    route.mock(return_value=httpx.Response(403))
    with pytest.raises(TargetPaused, match="HTTP 403"):
        await adapter.push(records)


# --- failure classes -----------------------------------------------------------------------


async def test_429_waits_the_retry_after_seconds_without_counting(
    crm: respx.MockRouter, make_adapter
) -> None:
    route = crm.post("/contacts").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"})
    )
    adapter = await make_adapter()
    outcomes = await adapter.push([record(adapter, 1)])
    assert outcomes == [Retry('create: HTTP 429: {"error":"slow down"}', 7.0, count_attempt=False)]
    assert route.call_count == 1  # no in-call retry: the target said when


async def test_503_honours_a_retry_after_http_date(crm: respx.MockRouter, make_adapter) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    route = crm.post("/contacts").mock(
        return_value=httpx.Response(503, headers={"Retry-After": when})
    )
    adapter = await make_adapter()
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Retry) and outcome.count_attempt
    assert outcome.after is not None and 115 <= outcome.after <= 120
    assert route.call_count == 1
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    route.mock(return_value=httpx.Response(503, headers={"Retry-After": past}))
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert isinstance(outcome, Retry) and outcome.after == 0


@pytest.mark.parametrize(
    ("value", "after"),
    [("12", 12.0), ("1.5", 1.5), ("-3", 0.0), ("inf", None), ("nan", None), ("soon", None),
     (None, None)],
)  # fmt: skip
def test_retry_after_values(value: str | None, after: float | None) -> None:
    assert adapters.rest.retry_after(value) == after


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 599])
async def test_5xx_are_retried_within_the_call_then_later(
    crm: respx.MockRouter, make_adapter, status: int
) -> None:
    route = crm.post("/contacts").mock(
        side_effect=[httpx.Response(status), httpx.Response(status), created("1")]
    )
    adapter = await make_adapter(call_attempts=3)
    assert await adapter.push([record(adapter, 1)]) == [Delivered("1")]
    assert route.call_count == 3
    route.mock(side_effect=None, return_value=httpx.Response(status, text="down"))
    outcomes = await adapter.push([record(adapter, 2)])
    assert outcomes == [Retry(f"create: HTTP {status}: down")]  # after: the target's backoff


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("timed out"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("x")],
)
async def test_timeouts_and_connection_errors_retry(
    crm: respx.MockRouter, make_adapter, error: Exception
) -> None:
    route = crm.post("/contacts").mock(side_effect=[error, created("1")])
    adapter = await make_adapter(call_attempts=2)
    assert await adapter.push([record(adapter, 1)]) == [Delivered("1")]
    route.mock(side_effect=error)
    outcomes = await adapter.push([record(adapter, 2)])
    # A refused connection sent nothing; after a timeout or a broken answer the CRM may have
    # done the work: the contact's next write must wait for it.
    sent_out = not isinstance(error, httpx.ConnectError)
    assert outcomes == [Retry(f"create: {type(error).__name__}: {error}", maybe_written=sent_out)]
    assert route.call_count == 4


async def test_other_4xx_are_dead_with_the_first_kib_of_the_body(
    crm: respx.MockRouter, make_adapter
) -> None:
    text = '{"errors": [{"field": "email", "message": "is invalid"}]}' + " " * 2000 + "END"
    crm.post("/contacts").mock(return_value=httpx.Response(422, text=text))
    adapter = await make_adapter()
    (outcome,) = await adapter.push([record(adapter, 1)])
    assert outcome == Dead("create: HTTP 422: " + text[:1024])
    assert crm.calls.call_count == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_pause_the_target(
    crm: respx.MockRouter, make_adapter, status: int
) -> None:
    crm.post("/contacts").mock(return_value=httpx.Response(status, text="token revoked"))
    adapter = await make_adapter()
    with pytest.raises(TargetPaused, match=f"HTTP {status}: token revoked"):
        await adapter.push([record(adapter, 1), record(adapter, 2)])


async def test_a_refusal_next_to_deliveries_waits_instead_of_pausing(
    crm: respx.MockRouter, make_adapter
) -> None:
    crm.patch("/contacts/a").mock(return_value=httpx.Response(200))
    crm.patch("/contacts/b").mock(return_value=httpx.Response(403, text="not your contact"))
    adapter = await make_adapter()
    outcomes = await adapter.push(
        [record(adapter, 1, remote_id="a"), record(adapter, 2, remote_id="b")]
    )
    assert outcomes == [
        Delivered("a"),
        Retry("update: HTTP 403: not your contact", count_attempt=False),
    ]


async def test_status_classes_are_configurable(crm: respx.MockRouter, make_adapter) -> None:
    route = crm.post("/contacts")
    adapter = await make_adapter(
        success=[200, 201], retry_on=[409, 429, "5xx"], dead_on=["4xx", 501], pause_on=[401]
    )
    cases = {
        201: Delivered("1"),
        202: Dead("create: HTTP 202: Accepted"),  # listed nowhere: dead
        409: Retry("create: HTTP 409: Conflict"),
        501: Dead("create: HTTP 501: Not Implemented"),
        403: Dead("create: HTTP 403: Forbidden"),
        302: Dead("create: HTTP 302: Found"),  # redirects are not followed
    }
    for status, expected in cases.items():
        payload = {"data": {"id": "1"}} if status == 201 else None
        route.mock(return_value=httpx.Response(status, json=payload))
        assert await adapter.push([record(adapter, 1)]) == [expected], status
    assert route.call_count == 6 + 2  # 409 was tried three times within the call


async def test_requests_in_flight_are_bounded(crm: respx.MockRouter, make_adapter) -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return created(request.headers["Idempotency-Key"])

    crm.post("/contacts").mock(side_effect=slow)
    adapter = await make_adapter(max_connections=3)
    outcomes = await adapter.push([record(adapter, n) for n in range(20)])
    assert outcomes == [Delivered(f"event-{n}") for n in range(20)]  # in order
    assert peak == 3


async def test_a_rate_limit_spaces_requests_out(crm: respx.MockRouter, make_adapter) -> None:
    starts: list[float] = []

    def note(request: httpx.Request) -> httpx.Response:
        starts.append(time.monotonic())
        return created("1")

    crm.post("/contacts").mock(side_effect=note)
    adapter = await make_adapter(rate_limit={"requests": 2, "per_seconds": 0.3})
    await adapter.push([record(adapter, n) for n in range(4)])
    assert starts[2] - starts[0] >= 0.3


# --- the documentation ---------------------------------------------------------------------


def test_the_documented_examples_are_valid(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", SECRET)
    readme = (ROOT / "README.md").read_text().split("\n## REST API\n")[1].split("\n## ")[0]
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    full, companies, batch = (yaml.safe_load(b) for b in blocks)
    # The commented example in config.example.yaml, uncommented.
    example = (ROOT / "config.example.yaml").read_text().split("      # crm:\n")[1]
    commented = yaml.safe_load(re.sub(r"(?m)^      #   ", "", example))
    single = {k: v for k, v in full["crm"].items() if k not in ("create", "update", "lookup")}
    for target in (full["crm"], commented, {**single, **batch}, {**full["crm"], **companies}):
        for key in ("mapping", "company_mapping"):
            if key in target:
                target[key] = str(ROOT / target[key])
        (loaded,) = load_config(write_config(tmp_path, {"crm": target})).targets
        assert isinstance(loaded.settings, RestSettings)


# --- the target as a mirror: diffs, clearing, one write at a time -------------------------------


def diffed(adapter: RestAdapter, n: int, remote_id: str | None, **changes: Any) -> Record:
    """A record as the worker plans it: only last_name changed, phone emptied since written."""
    base = record(adapter, n, remote_id=remote_id, **changes)
    unchanged = frozenset(base.fields) - {"last_name"}
    return dataclasses.replace(base, unchanged=unchanged, cleared=("phone",))


@pytest.mark.parametrize(("cleared", "phone"), [("send_null", [None]), ("leave_out", [])])
async def test_an_update_sends_what_changed_and_clears_what_was_emptied(
    crm: respx.MockRouter, make_adapter, cleared: str, phone: list[Any]
) -> None:
    route = crm.patch("/contacts/crm-1").mock(return_value=httpx.Response(200, json={}))
    adapter = await make_adapter(cleared_fields=cleared)
    rec = diffed(adapter, 1, "crm-1", lastName="Changed", phoneNumbers=[])
    assert await adapter.push([rec]) == [Delivered("crm-1")]
    attributes = body(sent(route))["data"]["attributes"]
    assert attributes.pop("last_name") == "Changed"
    assert [attributes.pop(name) for name in list(attributes) if name == "phone"] == phone
    assert attributes == {}  # nothing else: unchanged fields are not sent again


async def test_creates_and_whole_updates_send_the_whole_record(
    crm: respx.MockRouter, make_adapter
) -> None:
    update = {**CRUD["update"], "send": "all"}
    patched = crm.patch("/contacts/crm-1").mock(return_value=httpx.Response(404))
    posted = crm.post("/contacts").mock(return_value=created("crm-2"))
    adapter = await make_adapter({**CRUD, "update": update, "lookup": LOOKUP})
    rec = diffed(adapter, 1, "crm-1", phoneNumbers=[])
    whole = {**rec.fields, "phone": None}
    assert await adapter.push([rec]) == [Delivered("crm-2", "update answered HTTP 404: created it")]
    assert body(sent(patched))["data"]["attributes"] == whole
    assert body(sent(posted))["data"]["attributes"] == whole  # gone: created whole again


async def test_a_field_never_written_is_never_sent(crm: respx.MockRouter, make_adapter) -> None:
    route = crm.patch("/contacts/crm-1").mock(return_value=httpx.Response(200, json={}))
    adapter = await make_adapter()
    rec = dataclasses.replace(record(adapter, 1, remote_id="crm-1", phoneNumbers=[]),
                              unchanged=frozenset({"email"}))  # fmt: skip
    await adapter.push([rec])
    assert "phone" not in body(sent(route))["data"]["attributes"]


async def test_a_trickling_answer_is_cut_at_the_call_timeout(make_adapter) -> None:
    """A CRM that sends its answer a byte at a time never trips httpx's read timeout (it is per
    read): the call's total deadline cuts it, and the write may still land."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201)
        await response.prepare(request)
        for _ in range(100):
            await response.write(b" ")
            await asyncio.sleep(0.1)
        return response

    app = web.Application()
    app.router.add_post("/api/v1/contacts", trickle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
        adapter = await make_adapter(base_url=url, call_timeout=0.5, read_timeout=0.3,
                                     call_attempts=1)  # fmt: skip
        started = time.monotonic()
        (outcome,) = await adapter.push([record(adapter, 1)])
        assert time.monotonic() - started < 5
        assert isinstance(outcome, Retry) and outcome.maybe_written
        assert "call_timeout" in outcome.reason
    finally:
        await runner.cleanup()


async def test_no_write_once_the_claim_ran_out(crm: respx.MockRouter, make_adapter) -> None:
    route = crm.post("/contacts").mock(return_value=created("1"))
    adapter = await make_adapter()
    token = CLAIM_HOLD.set(ClaimHold(time.time() - 1))  # another replica may own the contact now
    try:
        (outcome,) = await adapter.push([record(adapter, 1)])
    finally:
        CLAIM_HOLD.reset(token)
    assert isinstance(outcome, Retry) and "claim" in outcome.reason
    assert route.call_count == 0


async def test_a_cancelled_push_leaves_no_request_running(make_adapter) -> None:
    started, finished = asyncio.Event(), asyncio.Event()
    cancelled: list[bool] = []

    async def hang(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finally:
            finished.set()
        return web.json_response({"data": {"id": "1"}}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/contacts", hang)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
        adapter = await make_adapter(base_url=url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await adapter.push([record(adapter, 1)])
        # The connection was closed with the push: the server saw its client go.
        async with asyncio.timeout(5):
            await finished.wait()
        assert cancelled == [True] and started.is_set()
    finally:
        await runner.cleanup()


# --- companies ---------------------------------------------------------------------------------

# The same CRM's companies: server-assigned ids, a lookup by the Mimeeq company id.
COMPANIES: dict[str, Any] = {
    "create": {
        "path": "/companies",
        "body": {"data": {"type": "companies", "attributes": "$record"}},
        "id_from_response": "data.id",
    },
    "update": {"path": "/companies/{remote_id}"},
    "delete": {"path": "/companies/{remote_id}"},
    "lookup": {
        "path": "/companies",
        "query": {"external_id": "{company_id}"},
        "id_from_response": "data[0].id",
    },
}


def company_record(
    n: int,
    op: str = "upsert",
    remote_id: str | None = None,
    event: str | None = None,
    mimeeq_id: str | None = None,
    **changes: Any,
) -> Record:
    payload = company(n, **changes)
    if mimeeq_id is not None:
        payload["id"] = mimeeq_id
    return Record(
        contact_id=payload["id"],
        op=op,  # type: ignore[arg-type]
        event=event or ("company-deleted" if op == "delete" else "company-updated"),
        event_id=f"company-event-{n}",
        fields=COMPANY_MAPPING.apply(payload),
        payload=payload,
        remote_id=remote_id,
        attempt=1,
        object_type="company",
    )


async def test_a_mixed_batch_goes_to_each_kind_s_endpoints(
    crm: respx.MockRouter, make_adapter
) -> None:
    contacts = crm.post("/contacts").mock(return_value=created("p-1"))
    lookup = crm.get("/companies").mock(return_value=httpx.Response(200, json={"data": []}))
    companies = crm.post("/companies").mock(return_value=created("org-1"))
    adapter = await make_adapter(companies=COMPANIES)
    assert RestAdapter.takes_companies
    records = [
        record(adapter, 1, event="contact-created"),
        company_record(1, event="company-created"),
    ]
    assert await adapter.push(records) == [Delivered("p-1"), Delivered("org-1")]

    assert body(sent(contacts))["data"]["attributes"] == dict(records[0].fields)
    assert "name" not in body(sent(contacts))["data"]["attributes"]
    assert sent(lookup).url.params["external_id"] == company_id(1)
    attributes = body(sent(companies))["data"]["attributes"]
    assert attributes == dict(records[1].fields)
    assert attributes["name"] == "Company 1" and attributes["payment_terms"] == "30 days"
    assert attributes["address"]["postal_code"] == "12345"
    assert body(sent(companies))["data"]["type"] == "companies"
    assert sent(companies).headers["Idempotency-Key"] == "company-event-1"


async def test_company_update_and_delete(crm: respx.MockRouter, make_adapter) -> None:
    update = crm.patch("/companies/org-7").mock(return_value=httpx.Response(200, json={}))
    delete = crm.delete("/companies/org-7").mock(return_value=httpx.Response(204))
    adapter = await make_adapter(companies=COMPANIES)

    base = company_record(7, remote_id="org-7")
    renamed = dataclasses.replace(
        company_record(7, remote_id="org-7", companyName="Renamed Ltd"),
        unchanged=frozenset(base.fields) - {"name"},
    )
    assert await adapter.push([renamed]) == [Delivered("org-7")]
    assert body(sent(update)) == {"name": "Renamed Ltd"}  # an update sends what changed

    gone = company_record(7, op="delete", remote_id="org-7")
    assert await adapter.push([gone]) == [Delivered("org-7", "deleted")]
    assert delete.call_count == 1 and not sent(delete).content
    # A company the connector never delivered, and the lookup does not find: nothing to delete.
    crm.get("/companies").mock(return_value=httpx.Response(200, json={"data": []}))
    unknown = company_record(8, op="delete")
    assert await adapter.push([unknown]) == [
        Delivered(note="not found by lookup: nothing to delete")
    ]


async def test_company_upserts_and_batches_keep_to_their_kind(
    crm: respx.MockRouter, make_adapter
) -> None:
    contacts = crm.post("/contacts/batch").mock(return_value=httpx.Response(200))
    companies = crm.put(url__regex=r"/companies/").mock(return_value=httpx.Response(200))
    adapter = await make_adapter(
        {"batch": BATCH}, companies={"upsert": {"path": "/companies/{company_id}"}}
    )
    records = [company_record(1), record(adapter, 1), company_record(2), record(adapter, 2)]
    assert await adapter.push(records) == [Delivered()] * 4
    items = body(sent(contacts))["contacts"]
    assert [i["external_id"] for i in items] == [contact(1)["id"], contact(2)["id"]]
    assert [c.request.url.path for c in companies.calls] == [
        f"/api/v1/companies/{company_id(1)}",
        f"/api/v1/companies/{company_id(2)}",
    ]

    # Companies in batches of their own, contacts one by one.
    company_batch = {**BATCH, "path": "/companies/batch", "key": "companies"}
    company_batch["item"] = {"external_id": "{company_id}", "properties": "$record"}
    crm.post("/contacts").mock(return_value=created("p"))
    batched = crm.post("/companies/batch").mock(return_value=httpx.Response(200))
    mixed = await make_adapter(companies={"batch": company_batch})
    assert await mixed.push([company_record(3), record(mixed, 3), company_record(4)]) == [
        Delivered(),
        Delivered("p"),
        Delivered(),
    ]
    items = body(sent(batched))["companies"]
    assert [i["external_id"] for i in items] == [company_id(3), company_id(4)]
    assert items[0]["properties"]["name"] == "Company 3"


@pytest.mark.parametrize(
    ("mimeeq_id", "raw_path"),
    [
        ("../admin", b"/api/v1/companies/..%2Fadmin/notes"),
        ("..", b"/api/v1/companies/%2E%2E/notes"),
        ("a/b?c#d", b"/api/v1/companies/a%2Fb%3Fc%23d/notes"),
        ("Zoë & Co", b"/api/v1/companies/Zo%C3%AB%20%26%20Co/notes"),
    ],
)
async def test_company_ids_in_paths_are_encoded(
    crm: respx.MockRouter, make_adapter, mimeeq_id: str, raw_path: bytes
) -> None:
    route = crm.route().mock(return_value=httpx.Response(200))
    ops = {"upsert": {"path": "/companies/{company_id}/notes", "query": {"who": "{company_id}"}}}
    adapter = await make_adapter(companies=ops)
    assert await adapter.push([company_record(1, mimeeq_id=mimeeq_id)]) == [Delivered()]
    url = sent(route).url
    assert url.raw_path.split(b"?")[0] == raw_path
    assert url.params["who"] == mimeeq_id


async def test_a_4xx_on_a_company_is_dead_while_the_contacts_are_delivered(
    crm: respx.MockRouter, make_adapter
) -> None:
    crm.post("/contacts").mock(side_effect=[created("p-1"), created("p-2")])
    crm.get("/companies").mock(return_value=httpx.Response(200, json={"data": []}))
    refused = '{"errors": [{"field": "name", "message": "is taken"}]}'
    crm.post("/companies").mock(return_value=httpx.Response(422, text=refused))
    adapter = await make_adapter(companies=COMPANIES)
    records = [record(adapter, 1), company_record(1), record(adapter, 2)]
    outcomes = await adapter.push(records)
    assert outcomes[1] == Dead(f"create: HTTP 422: {refused}")
    assert {outcomes[0], outcomes[2]} == {Delivered("p-1"), Delivered("p-2")}


async def test_a_missing_company_placeholder_names_the_company(
    crm: respx.MockRouter, make_adapter
) -> None:
    adapter = await make_adapter(companies={"upsert": {"path": "/companies/{fields.email}"}})
    (outcome,) = await adapter.push([company_record(1, accountDetails={})])
    assert outcome == Dead(
        "upsert: the request needs {fields.email}, which this company has no value for"
    )
    assert not crm.calls


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"company_mapping": "m"}, "company_mapping needs a `companies:` block"),
        ({"companies": {"upsert": {"path": "/o"}}}, "`companies:` needs a company_mapping"),
        (
            {"company_mapping": "m", "companies": {"upsert": {"path": "/o/{contact_id}"}}},
            "upsert: {contact_id} is for contact requests; in `companies:` the company's Mimeeq "
            "id is {company_id}",
        ),
        (
            {"upsert": {"path": "/c", "body": {"org": "{company_id}"}}},
            "upsert: {company_id} is for company requests (`companies:`)",
        ),
        (
            {"company_mapping": "m", "companies": {"create": {"path": "/o"}}},
            "exactly one of",
        ),
        (
            {
                "company_mapping": "m",
                "companies": {"create": {"path": "/o"}, "update": {"path": "/o/{remote_id}"}},
            },
            "update uses {remote_id}, but nothing gives one",
        ),
        (
            {"company_mapping": "m", "companies": {"upsert": {"path": "/o/{remote_id}"}}},
            "upsert: {remote_id} is not known yet",
        ),
        (
            {"company_mapping": "m", "companies": {"batch": {"path": "/o/{company_id}"}}},
            "batch: its path and query can only use {tenant}",
        ),
        (
            {"company_mapping": "m", "companies": {"upsert": {"path": "/o"}, "bogus": 1}},
            "Extra inputs are not permitted",
        ),
    ],
)
def test_company_config_errors(options: dict[str, Any], problem: str) -> None:
    raw = {"type": "rest", "mapping": "m", "base_url": BASE, "upsert": {"path": "/c"}, **options}
    with pytest.raises(ValidationError) as error:
        RestSettings.model_validate(raw)
    assert problem in str(error.value)


def test_company_config_check_names_the_key(tmp_path: Path) -> None:
    target = {
        "type": "rest",
        "mapping": str(ROOT / "mappings/rest-contacts.yaml"),
        "company_mapping": str(ROOT / "mappings/rest-companies.yaml"),
        "base_url": BASE,
        **CRUD,
    }
    with pytest.raises(ConfigError, match=r"tenants\.demo\.targets\.crm: .*`companies:` block"):
        load_config(write_config(tmp_path, {"crm": target}))
    bad = {**target, "companies": {"upsert": {"path": "/o/{contact_id}"}}}
    with pytest.raises(ConfigError, match=r"tenants\.demo\.targets\.crm\.companies: .*upsert"):
        load_config(write_config(tmp_path, {"crm": bad}))
    good = {**target, "companies": COMPANIES}
    (loaded,) = load_config(write_config(tmp_path, {"crm": good})).targets
    assert loaded.company_mapping is not None
    assert isinstance(loaded.settings, RestSettings) and loaded.settings.companies is not None
