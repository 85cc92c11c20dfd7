"""The webhook endpoint: what Mimeeq (or anyone else) gets back, and what is stored."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml

from connector.config import DEMO_TOKEN, Config, load_config
from connector.service import Service
from testkit.payloads import (
    CUSTOMER,
    FAKE_COMPANY_MAPPING,
    FAKE_MAPPING,
    TOKEN,
    company,
    contact,
    example,
    write_config,
)
from testkit.service import fake_adapter
from testkit.waiting import eventually

AUTH = {"X-Mimeeq-Token": TOKEN}


def url(service: Service, path: str) -> str:
    return f"http://127.0.0.1:{service.port}{path}"


async def post(
    http: aiohttp.ClientSession,
    service: Service,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = data if data is not None else json.dumps(body).encode()
    async with http.post(
        url(service, path), data=io.BytesIO(raw), headers=AUTH if headers is None else headers
    ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def stored_events(service: Service) -> int:
    with sqlite3.connect(service.config.base_dir / "connector.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


async def test_contact_created_is_queued(service: Service, http: aiohttp.ClientSession) -> None:
    status, body = await post(
        http, service, "/webhooks/demo/contact-created", example("contact-created")
    )
    assert status == 202
    assert body["status"] == "queued" and len(body["eventId"]) == 36


@pytest.mark.parametrize("event", ["company-note-deleted", "basket-submitted"])
async def test_other_mimeeq_events_are_ignored(
    service: Service, http: aiohttp.ClientSession, event: str
) -> None:
    status, body = await post(http, service, f"/webhooks/demo/{event}", {"id": "COMP-1"})
    assert (status, body["status"]) == (202, "ignored")
    assert await stored_events(service) == 0


@pytest.mark.parametrize("event", ["company-created", "company-updated", "company-deleted"])
async def test_company_events_are_queued_for_the_targets_taking_companies(
    running: Any, http: aiohttp.ClientSession, event: str
) -> None:
    service = await running({
        "contacts": {"type": "fake", "mapping": FAKE_MAPPING},
        "both": {"type": "fake", "mapping": FAKE_MAPPING, "company_mapping": FAKE_COMPANY_MAPPING},
    })  # fmt: skip
    status, body = await post(http, service, f"/webhooks/demo/{event}", company(1))
    assert (status, body["status"]) == (202, "queued")
    both = fake_adapter(service, "demo/both")
    await eventually(lambda: both.pushed_ids == [company(1)["id"]])
    (record,) = both.pushes[0]
    assert record.object_type == "company" and record.event == event
    if event != "company-deleted":
        assert record.fields == {"name": "Company 1", "city": "Example City"}
    assert fake_adapter(service, "demo/contacts").pushes == []


async def test_company_events_are_ignored_while_no_target_takes_companies(
    running: Any, http: aiohttp.ClientSession
) -> None:
    service = await running({"contacts": {"type": "fake", "mapping": FAKE_MAPPING}})
    status, body = await post(http, service, "/webhooks/demo/company-created", company(1))
    assert (status, body["status"]) == (202, "ignored")
    assert "no target of this tenant takes companies" in body["reason"]
    assert await stored_events(service) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [({"companyName": 7}, "companyName"), ({"address": {"postcode": ["x"]}}, "address.postcode"),
     ({"socials": "none"}, "socials"), ({"customerId": None}, "customerId")],
)  # fmt: skip
async def test_a_malformed_company_is_refused_naming_the_field(
    service: Service, http: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    status, body = await post(http, service, "/webhooks/demo/company-updated", company(1, **change))
    assert status == 422 and body["field"] == field, body
    assert await stored_events(service) == 0


async def test_a_company_of_another_customer_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    other = company(1, customerId="CUST-someone-else")
    status, body = await post(http, service, "/webhooks/demo/company-created", other)
    assert (status, body["field"]) == (422, "customerId")


async def test_a_deleted_company_needs_only_its_identifiers(
    service: Service, http: aiohttp.ClientSession
) -> None:
    bare = {"id": company(1)["id"], "customerId": CUSTOMER, "somethingNew": {"x": 1}}
    status, body = await post(http, service, "/webhooks/demo/company-deleted", bare)
    assert (status, body["status"]) == (202, "queued")


BAD_REQUESTS = [
    # (case, path, headers, raw body, status, words the error must contain)
    ("no auth", "/webhooks/demo/contact-created", {}, None, 401, "authentication"),
    (
        "wrong auth",
        "/webhooks/demo/contact-created",
        {"X-Mimeeq-Token": "nope"},
        None,
        401,
        "authentication",
    ),
    (
        "token in the wrong header",
        "/webhooks/demo/contact-created",
        {"Authorization": TOKEN},
        None,
        401,
        "authentication",
    ),
    ("unknown tenant", "/webhooks/other/contact-created", AUTH, None, 401, "authentication"),
    ("unknown event", "/webhooks/demo/contact-merged", AUTH, None, 404, "contact-merged"),
    (
        "oversized body",
        "/webhooks/demo/contact-created",
        AUTH,
        json.dumps({**contact(1), "pad": "x" * 1_100_000}).encode(),
        413,
        "larger than",
    ),
    ("not JSON", "/webhooks/demo/contact-created", AUTH, b"{id: 1", 400, "not valid JSON"),
    ("empty body", "/webhooks/demo/contact-created", AUTH, b"", 400, "not valid JSON"),
    (
        "a JSON array",
        "/webhooks/demo/contact-created",
        AUTH,
        json.dumps([contact(1)]).encode(),
        400,
        "must be a JSON object, got an array",
    ),
    (
        "missing id",
        "/webhooks/demo/contact-created",
        AUTH,
        json.dumps({k: v for k, v in contact(1).items() if k != "id"}).encode(),
        422,
        "id",
    ),
    (
        "wrong type for emails",
        "/webhooks/demo/contact-updated",
        AUTH,
        json.dumps({**contact(1), "emails": "john@example.com"}).encode(),
        422,
        "emails",
    ),
    (
        "email without mail",
        "/webhooks/demo/contact-updated",
        AUTH,
        json.dumps({**contact(1), "emails": [{"type": "WORK"}]}).encode(),
        422,
        "emails.0.mail",
    ),
    (
        "foreign customerId",
        "/webhooks/demo/contact-created",
        AUTH,
        json.dumps({**contact(1), "customerId": "CUST-someone-else"}).encode(),
        422,
        "customerId",
    ),
    (
        "deleted without id",
        "/webhooks/demo/contact-deleted",
        AUTH,
        json.dumps({"customerId": CUSTOMER}).encode(),
        422,
        "id",
    ),
]


@pytest.mark.parametrize(
    ("path", "headers", "raw", "status", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_requests_are_refused_and_store_nothing(
    service: Service,
    http: aiohttp.ClientSession,
    path: str,
    headers: dict[str, str],
    raw: bytes | None,
    status: int,
    words: str,
) -> None:
    data = raw if raw is not None else json.dumps(contact(1)).encode()
    got, body = await post(http, service, path, headers=headers, data=data)
    assert got == status
    assert words in body["error"]
    assert await stored_events(service) == 0
    assert fake_adapter(service).pushes == []


async def test_validation_errors_name_the_field(
    service: Service, http: aiohttp.ClientSession
) -> None:
    _, body = await post(
        http,
        service,
        "/webhooks/demo/contact-updated",
        {**contact(1), "emails": "john@example.com"},
    )
    assert body["field"] == "emails"
    assert body["error"].startswith("invalid contact-updated payload: emails:")


async def test_unknown_tenant_and_wrong_token_look_the_same(
    service: Service, http: aiohttp.ClientSession
) -> None:
    unknown = await post(http, service, "/webhooks/nobody/contact-created", contact(1))
    wrong = await post(
        http,
        service,
        "/webhooks/demo/contact-created",
        contact(1),
        headers={"X-Mimeeq-Token": "wrong"},
    )
    assert unknown == wrong


async def test_auth_is_checked_before_the_body(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(
        http, service, "/webhooks/demo/contact-created", headers={}, data=b"x" * 2_000_000
    )
    assert status == 401


async def test_unknown_fields_are_tolerated_and_kept(
    service: Service, http: aiohttp.ClientSession
) -> None:
    body = {**contact(1), "newMimeeqField": {"nested": True}}
    status, _ = await post(http, service, "/webhooks/demo/contact-created", body)
    assert status == 202


async def test_probes(service: Service, http: aiohttp.ClientSession) -> None:
    async with http.get(url(service, "/healthz")) as response:
        assert response.status == 200
    async with http.get(url(service, "/readyz")) as response:
        assert response.status == 200
    service.accepting = False  # as while draining
    async with http.get(url(service, "/readyz")) as response:
        assert response.status == 503
    status, body = await post(http, service, "/webhooks/demo/contact-created", contact(1))
    assert status == 503 and "shutting down" in body["error"]
    service.accepting = True


async def test_unknown_routes_answer_json(service: Service, http: aiohttp.ClientSession) -> None:
    async with http.get(url(service, "/webhooks/demo/contact-created")) as response:
        assert response.status == 405
        assert "error" in await response.json()
    async with http.get(url(service, "/nothing")) as response:
        assert response.status == 404
        assert "error" in await response.json()


async def test_a_store_that_cannot_write_means_503_never_500(
    service: Service, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the store raises (here a bug's error), the event is refused with Retry-After,
    counted, and /readyz says so until a write works again."""

    async def broken(*args: Any) -> Any:
        raise RuntimeError("the store is broken")

    monkeypatch.setattr(service.store, "append", broken)
    monkeypatch.setattr(service.store, "probe_write", broken)
    async with http.post(url(service, "/webhooks/demo/contact-created"), json=contact(1),
                         headers=AUTH) as response:  # fmt: skip
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert "not accepted" in (await response.json())["error"]
    async with http.get(url(service, "/readyz")) as response:
        assert response.status == 503
        assert "RuntimeError: the store is broken" in (await response.json())["reason"]
    async with http.get(url(service, "/metrics")) as response:
        assert 'outcome="store_unavailable",tenant="demo"} 1.0' in await response.text()

    monkeypatch.undo()  # the store writes again: the probe of the next /readyz finds out
    service.store_health.probe_every = 0
    async with http.get(url(service, "/readyz")) as response:
        assert response.status == 200
    assert service.store_health.failing is None
    status, _ = await post(http, service, "/webhooks/demo/contact-created", contact(1))
    assert status == 202


async def test_a_store_that_hangs_means_503_after_a_while(
    config: Config, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.receiver.STORE_TIMEOUT", 0.3)
    service = Service(config)
    await service.start()
    try:

        async def hangs(*args: Any) -> Any:
            await asyncio.Event().wait()

        monkeypatch.setattr(service.store, "append", hangs)
        async with http.post(url(service, "/webhooks/demo/contact-created"), json=contact(1),
                             headers=AUTH) as response:  # fmt: skip
            assert response.status == 503
            assert "Retry-After" in response.headers
        assert service.store_health.failing == "TimeoutError: not stored within 0.3 s"
    finally:
        monkeypatch.undo()
        await service.stop()


async def test_refused_credentials_are_logged_without_the_value_and_not_for_each(
    service: Service, http: aiohttp.ClientSession
) -> None:
    url = "/webhooks/demo/contact-created"
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            status, _ = await post(http, service, url, contact(1),
                                   headers={"X-Mimeeq-Token": "typo-" + TOKEN})  # fmt: skip
            assert status == 401
        await post(http, service, url, contact(1), headers={})
        await post(http, service, "/webhooks/nobody/contact-created", contact(1))
    refused = [e for e in logs if e["event"] == "webhook refused (401)"]
    assert [(e["tenant"], e["reason"]) for e in refused] == [
        ("demo", "wrong value in X-Mimeeq-Token"),
        ("demo", "no X-Mimeeq-Token header"),
        ("unknown", "unknown tenant"),
    ]  # one line per kind within 10 s, however many came
    assert TOKEN not in repr(logs) and "nobody" not in repr(refused)


async def test_the_published_demo_token_is_warned_about(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["tenants"]["demo"]["auth"]["values"] = [DEMO_TOKEN]
    path.write_text(yaml.safe_dump(config))
    service = Service(load_config(path))
    with structlog.testing.capture_logs() as logs:
        await service.start(host="127.0.0.1")
        await service.stop()
    (warning,) = [e for e in logs if "DEMO WEBHOOK TOKEN" in e["event"]]
    assert warning["log_level"] == "warning" and warning["tenant"] == "demo"
