"""Tenant isolation: two tenants in one process, and tenant A (or anyone holding A's token) can
neither write into B's queue, nor read B's state, nor slow B down.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.config import load_config
from connector.errors import TargetPaused
from connector.payloads import EVENTS, OTHER_EVENTS
from connector.service import Service
from testkit.payloads import FAKE_MAPPING, contact, write_config
from testkit.service import fake_adapter, status_reaches
from testkit.waiting import eventually

A_TOKEN, B_TOKEN = "alpha-token-0123456789", "bravo-token-0123456789"
A_CUSTOMER = "CUST-aaaaaaaa-0000-4000-8000-000000000001"
B_CUSTOMER = "CUST-bbbbbbbb-0000-4000-8000-000000000002"
TENANTS = {
    "alpha": {
        "customer_id": A_CUSTOMER,
        "auth": {"header": "X-Mimeeq-Token", "values": [A_TOKEN]},
        "targets": {"crm": {"type": "fake", "mapping": FAKE_MAPPING, "push_timeout": 60}},
    },
    "bravo": {
        "customer_id": B_CUSTOMER,
        "auth": {"header": "X-Mimeeq-Token", "values": [B_TOKEN]},
        "targets": {"crm": {"type": "fake", "mapping": FAKE_MAPPING}},
    },
}
# What B's contacts carry: none of it may reach anyone but B's targets.
B_SECRETS = {"id": "CONT-bravo-secret-0001", "firstName": "Bravissima", "lastName": "Secretti"}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = Service(load_config(write_config(tmp_path, tenants=TENANTS)))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def b_contact(n: int = 1) -> dict[str, Any]:
    return contact(n, customerId=B_CUSTOMER, **B_SECRETS) | {"id": f"{B_SECRETS['id']}-{n}"}


def a_contact(n: int = 1, **changes: Any) -> dict[str, Any]:
    return contact(n, customerId=A_CUSTOMER, **changes)


async def post(
    service: Service, tenant: str, token: str, body: dict[str, Any], event: str = "contact-created"
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{service.port}/webhooks/{tenant}/{event}",
            json=body,
            headers={"X-Mimeeq-Token": token},
        ) as response,
    ):
        return response.status, await response.json()


def stored(service: Service, tenant: str | None = None) -> int:
    with sqlite3.connect(service.config.base_dir / "connector.db") as db:
        if tenant is None:
            return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        query = "SELECT COUNT(*) FROM events WHERE tenant = ?"
        return int(db.execute(query, (tenant,)).fetchone()[0])


# --- Writing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize("body", [b_contact, a_contact], ids=["b-payload", "a-payload"])
async def test_a_token_cannot_enqueue_for_b(
    service: Service, event: str, body: Callable[[], dict[str, Any]]
) -> None:
    status, answer = await post(service, "bravo", A_TOKEN, body(), event)
    assert (status, answer) == (401, {"error": "missing or invalid authentication header"})
    assert stored(service) == 0
    assert fake_adapter(service, "bravo/crm").pushes == []


async def test_b_token_cannot_enqueue_for_a(service: Service) -> None:
    status, _ = await post(service, "alpha", B_TOKEN, a_contact())
    assert status == 401 and stored(service) == 0


async def test_a_cannot_smuggle_b_contacts_through_its_own_url(service: Service) -> None:
    status, answer = await post(service, "alpha", A_TOKEN, b_contact())
    assert status == 422 and answer["field"] == "customerId"
    assert stored(service) == 0


async def test_a_token_with_a_repeated_customer_id_is_refused(service: Service) -> None:
    """A body naming A's customer first and B's last (or the reverse) means different things to
    different parsers: refused, not stored under either."""
    body = b'{"id": "CONT-1", "customerId": "%s", "customerId": "%s"}' % (
        A_CUSTOMER.encode(),
        B_CUSTOMER.encode(),
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{service.port}/webhooks/alpha/contact-created",
            data=body,
            headers={"X-Mimeeq-Token": A_TOKEN, "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 400
        assert "duplicate key 'customerId'" in (await response.json())["error"]
    assert stored(service) == 0


async def test_each_token_writes_only_into_its_own_tenant(service: Service) -> None:
    assert (await post(service, "alpha", A_TOKEN, a_contact()))[0] == 202
    assert (await post(service, "bravo", B_TOKEN, b_contact()))[0] == 202
    a, b = fake_adapter(service, "alpha/crm"), fake_adapter(service, "bravo/crm")
    await eventually(lambda: bool(a.contacts) and bool(b.contacts))
    assert set(a.contacts) == {a_contact()["id"]}
    assert set(b.contacts) == {b_contact()["id"]}
    assert (stored(service, "alpha"), stored(service, "bravo")) == (1, 1)


# --- Reading ----------------------------------------------------------------------------------


async def test_no_endpoint_shows_b_state_to_a(service: Service) -> None:
    assert (await post(service, "bravo", B_TOKEN, b_contact()))[0] == 202
    await eventually(lambda: bool(fake_adapter(service, "bravo/crm").contacts))
    base = f"http://127.0.0.1:{service.port}"
    secrets = [*B_SECRETS.values(), B_CUSTOMER, B_TOKEN]
    # Everything A might try, with A's token: the probes, and every method on B's webhook URLs.
    attempts = [("GET", p) for p in ("/healthz", "/readyz", "/metrics", "/", "/webhooks/bravo")]
    attempts += [
        (method, f"/webhooks/bravo/{event}")
        for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
        for event in ("contact-created", "contact-deleted", "status", "..")
    ]
    attempts += [("GET", f"/webhooks/bravo/{B_SECRETS['id']}"), ("GET", "/dlq"), ("GET", "/trace")]
    async with aiohttp.ClientSession() as http:
        for method, path in attempts:
            async with http.request(
                method, base + path, headers={"X-Mimeeq-Token": A_TOKEN}
            ) as response:
                text = await response.text()
                if path not in ("/healthz", "/readyz", "/metrics"):
                    assert response.status in (401, 404, 405), (method, path)
                for secret in secrets:
                    assert secret not in text, (method, path, secret)
                    assert all(secret not in v for v in response.headers.values())


LABELS = {"tenant", "target", "event", "outcome", "status", "version", "le"}


async def test_metrics_hold_counts_under_labels_no_caller_chooses(service: Service) -> None:
    """Tenant-controlled strings (URL segments, headers, payload values) never become labels."""
    chosen = ["evil-tenant-x", "evil-event-y", "injected-header", "label-injection"]
    await post(service, "evil-tenant-x", A_TOKEN, a_contact())
    await post(service, "alpha", A_TOKEN, a_contact(), event="evil-event-y")
    await post(service, "alpha", "injected-header", a_contact())
    await post(service, "alpha", A_TOKEN, a_contact(firstName="label-injection", tags=["x"]))
    await post(service, "alpha", A_TOKEN, {**a_contact(2), "firstName": 5})  # refused: 422
    await post(service, "bravo", B_TOKEN, b_contact())
    await eventually(lambda: bool(fake_adapter(service, "bravo/crm").contacts))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.port}/metrics") as response,
    ):
        text = await response.text()
    for secret in [*chosen, *B_SECRETS.values(), B_CUSTOMER, A_CUSTOMER, A_TOKEN, B_TOKEN]:
        assert secret not in text
    tenants = {"alpha", "bravo", "unknown"}
    events = {*EVENTS, *OTHER_EVENTS, "unknown"}
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples
    for line in samples:
        match = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        float(match.group(3))  # a number: a count, a sum, a gauge
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        assert set(labels) <= LABELS, line
        assert labels.get("tenant", "alpha") in tenants, line
        assert labels.get("event", "contact-created") in events, line
        assert labels.get("target", "crm") == "crm", line


# --- Slowing down -----------------------------------------------------------------------------


async def test_a_hanging_target_does_not_delay_b(service: Service) -> None:
    a, b = fake_adapter(service, "alpha/crm"), fake_adapter(service, "bravo/crm")
    a.gate = asyncio.Event()  # A's CRM never answers
    for n in range(1, 4):
        assert (await post(service, "alpha", A_TOKEN, a_contact(n)))[0] == 202
    await eventually(lambda: bool(a.in_flight))
    for n in range(1, 4):
        assert (await post(service, "bravo", B_TOKEN, b_contact(n)))[0] == 202
    await eventually(lambda: len(b.contacts) == 3)  # while A's push still hangs
    assert a.contacts == {} and a.in_flight
    a.gate.set()
    await eventually(lambda: len(a.contacts) == 3)


async def test_a_paused_target_does_not_pause_b(service: Service) -> None:
    a, b = fake_adapter(service, "alpha/crm"), fake_adapter(service, "bravo/crm")
    a.raise_next.append(TargetPaused("401 Unauthorized: token revoked", until=time.time() + 600))
    assert (await post(service, "alpha", A_TOKEN, a_contact()))[0] == 202
    await status_reaches(service, "alpha/crm", paused=True, pending=1)
    assert (await post(service, "bravo", B_TOKEN, b_contact()))[0] == 202
    await status_reaches(service, "bravo/crm", paused=False, delivered=1)
    assert service.workers["bravo/crm"].paused_reason is None
    assert (await status_reaches(service, "alpha/crm")).paused
    assert a.contacts == {} and len(b.contacts) == 1


async def test_an_operator_pause_of_a_does_not_pause_b(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.delivery.STATE_POLL", 0.05)  # workers follow the store at once
    await service.store.set_paused("alpha/crm", "maintenance", None, by="operator")
    await asyncio.sleep(0.1)  # what `mimeeq-connector pause` does, a moment before the webhooks
    assert (await post(service, "alpha", A_TOKEN, a_contact()))[0] == 202
    assert (await post(service, "bravo", B_TOKEN, b_contact()))[0] == 202
    await status_reaches(service, "bravo/crm", delivered=1)
    # A's webhook woke its worker, which looked at the store and stayed paused.
    await eventually(lambda: service.workers["alpha/crm"].paused_by == "operator")
    assert fake_adapter(service, "alpha/crm").pushes == []
    assert service.workers["bravo/crm"].paused_reason is None


async def test_a_flood_of_a_refusals_does_not_slow_b(service: Service) -> None:
    """Anyone can send A's URL garbage; B's webhooks are answered as fast meanwhile."""

    async def garbage() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.post(
                    f"http://127.0.0.1:{service.port}/webhooks/alpha/contact-created",
                    data=b"{" * 1000,
                    headers={"X-Mimeeq-Token": A_TOKEN},
                ) as response:
                    assert response.status == 400

    flood = [asyncio.create_task(garbage()) for _ in range(4)]
    started = time.monotonic()
    for n in range(1, 6):
        assert (await post(service, "bravo", B_TOKEN, b_contact(n)))[0] == 202
    # Not starved by the flood (a bound generous enough for a loaded machine).
    assert time.monotonic() - started < 10.0
    await asyncio.gather(*flood)
    assert stored(service, "alpha") == 0 and stored(service, "bravo") == 5


# --- Rotating a token -------------------------------------------------------------------------


async def test_a_token_rotates_without_a_refused_webhook(tmp_path: Path) -> None:
    """SECURITY.md's steps: both values, then only the new one, each applied by a reload."""
    old, new = "old-token-0123456789", "new-token-0123456789"

    def configure(*values: str) -> Path:
        tenants = {**TENANTS, "alpha": {**TENANTS["alpha"], "auth": {"values": list(values)}}}
        return write_config(tmp_path, tenants=tenants)

    svc = Service(load_config(configure(old)))
    await svc.start()
    try:
        assert (await post(svc, "alpha", old, a_contact(1)))[0] == 202
        configure(old, new)
        assert await svc.reload()
        assert (await post(svc, "alpha", old, a_contact(2)))[0] == 202  # Mimeeq not switched yet
        assert (await post(svc, "alpha", new, a_contact(3)))[0] == 202  # switched
        configure(new)
        assert await svc.reload()
        assert (await post(svc, "alpha", old, a_contact(4)))[0] == 401
        assert (await post(svc, "alpha", new, a_contact(5)))[0] == 202
        assert (await post(svc, "bravo", B_TOKEN, b_contact()))[0] == 202  # B never noticed
    finally:
        await svc.stop()
