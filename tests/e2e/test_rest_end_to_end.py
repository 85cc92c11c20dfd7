"""Mimeeq webhooks in, a REST CRM out: the real server process against a small aiohttp CRM that
fails a fifth of its calls with 503 (half of them after doing the work: a lost answer)."""

from __future__ import annotations

import asyncio
import collections
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connector.mapping import load_mapping
from testkit.payloads import CUSTOMER, ROOT, contact, write_config
from testkit.service import ServerProcess, drained, post_all
from testkit.waiting import eventually

CRM_TOKEN = "crm-end-to-end-token-0123456789"
MAPPING = ROOT / "mappings" / "rest-contacts.yaml"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeCrm:
    """A JSON:API-style CRM: server-assigned ids, bearer auth, Idempotency-Key replays."""

    def __init__(self, seed: int = 20, failure_rate: float = 0.2) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}  # CRM id -> attributes
        self.created: collections.Counter[str] = collections.Counter()  # external id -> creates
        self.replies: dict[str, tuple[int, Any]] = {}  # idempotency key -> first answer
        self.calls: collections.Counter[tuple[str, int]] = collections.Counter()
        self.unkeyed_writes = 0
        self.random = random.Random(seed)
        self.failure_rate = failure_rate
        self.delay_next: list[float] = []  # seconds the next writes wait before their work
        self.writing = 0  # writes being worked on right now
        self.overlaps = 0  # writes that began while another one was still being worked on
        self._next_id = 1000
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v1/contacts", self.find)
        app.router.add_post("/api/v1/contacts", self.create)
        app.router.add_patch("/api/v1/contacts/{id}", self.update)
        app.router.add_delete("/api/v1/contacts/{id}", self.delete)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._answer(request, handler)
        self.calls[(request.method, response.status)] += 1
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {CRM_TOKEN}":
            return web.json_response({"errors": [{"title": "unauthorized"}]}, status=401)
        roll = self.random.random()
        if roll < self.failure_rate / 2:  # down before doing anything
            return web.json_response({"errors": [{"title": "unavailable"}]}, status=503)
        key = request.headers.get("Idempotency-Key")
        if request.method != "GET" and not key:
            self.unkeyed_writes += 1
        if key and key in self.replies:  # a retry of a request already done: the same answer
            status, body = self.replies[key]
        else:
            response = await self._work(request, handler)
            assert isinstance(response, web.Response)
            status, body = response.status, response.text
            if key and status < 300:
                self.replies[key] = (status, body)
        if roll < self.failure_rate:  # did the work, but the answer is lost
            return web.json_response({"errors": [{"title": "unavailable"}]}, status=503)
        return web.Response(status=status, text=body, content_type="application/json")

    async def _work(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A write is worked on to the end even when its client has gone (as aiohttp and many
        real servers do): an abandoned write can still land."""
        if request.method == "GET":
            return await handler(request)
        await request.read()  # the whole request is in: what follows is the CRM's own work
        self.overlaps += self.writing > 0
        self.writing += 1
        try:
            if self.delay_next:
                await asyncio.sleep(self.delay_next.pop(0))
            return await handler(request)
        finally:
            self.writing -= 1

    async def find(self, request: web.Request) -> web.Response:
        wanted = request.query["filter[external_id]"]
        found = [
            {"id": crm_id, "type": "contacts", "attributes": attributes}
            for crm_id, attributes in self.contacts.items()
            if attributes.get("external_id") == wanted
        ]
        return web.json_response({"data": found})

    async def create(self, request: web.Request) -> web.Response:
        attributes = (await request.json())["data"]["attributes"]
        crm_id = f"crm-{self._next_id}"
        self._next_id += 1
        self.contacts[crm_id] = attributes
        self.created[attributes["external_id"]] += 1
        return web.json_response({"data": {"id": crm_id, "type": "contacts"}}, status=201)

    async def update(self, request: web.Request) -> web.Response:
        crm_id = request.match_info["id"]
        data = (await request.json())["data"]
        if crm_id not in self.contacts or data["id"] != crm_id:
            return web.json_response({"errors": [{"title": "not found"}]}, status=404)
        self.contacts[crm_id].update(data["attributes"])  # JSON:API PATCH: a merge
        return web.json_response({"data": {"id": crm_id, "type": "contacts"}})

    async def delete(self, request: web.Request) -> web.Response:
        if self.contacts.pop(request.match_info["id"], None) is None:
            return web.json_response({"errors": [{"title": "not found"}]}, status=404)
        return web.json_response(None, status=204)


@pytest.fixture
async def crm() -> AsyncIterator[FakeCrm]:
    fake = FakeCrm()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.runner.cleanup()


def rest_config(folder: Path, crm: FakeCrm, **options: Any) -> Path:
    wrapped = {"data": {"type": "contacts", "attributes": "$record"}}
    target = {
        "type": "rest",
        "base_url": f"{crm.url}/api/v1",
        "auth": {"type": "bearer", "token": "${TEST_CRM_TOKEN}"},
        "mapping": str(MAPPING),
        "create": {"path": "/contacts", "body": wrapped, "id_from_response": "data.id"},
        "update": {
            "path": "/contacts/{remote_id}",
            "body": {"data": {"type": "contacts", "id": "{remote_id}", "attributes": "$record"}},
        },
        "delete": {"path": "/contacts/{remote_id}"},
        "lookup": {
            "path": "/contacts",
            "query": {"filter[external_id]": "{contact_id}"},
            "id_from_response": "data[0].id",
        },
        "linger": 0.05,
        "backoff": {"initial": 0.05, "max": 0.5},
        **options,
    }
    server = {"host": "127.0.0.1", "port": 0, "drain_timeout": 10}
    return write_config(folder, {"crm": target}, server=server)


async def test_100_contacts_reach_a_flaky_rest_crm_exactly_as_mapped(
    tmp_path: Path,
    crm: FakeCrm,
    server_process: Callable[[Path], ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_CRM_TOKEN", CRM_TOKEN)
    server = server_process(rest_config(tmp_path, crm))
    server.start()
    latest = {n: contact(n) for n in range(100)}

    def change(n: int, **changes: Any) -> tuple[str, dict[str, Any]]:
        latest[n] = {**latest[n], **changes}
        return "contact-updated", latest[n]

    # Creates, then updates of a third posted right behind them: some are pushed apart, some
    # coalesce into one update of a contact the CRM has never seen.
    await post_all(server.url, [("contact-created", latest[n]) for n in range(100)])
    await post_all(server.url, [change(n, lastName=f"Updated{n}") for n in range(0, 100, 3)])
    await drained(tmp_path / "connector.db")

    deleted = set(range(1, 100, 5))
    await post_all(
        server.url,
        [change(n, tags=["vip"], status="INACTIVE") for n in range(0, 100, 4) if n not in deleted]
        + [("contact-deleted", {"id": contact(n)["id"], "customerId": CUSTOMER}) for n in deleted],
    )
    # A late update of a deleted contact never brings it back.
    late = await post_all(server.url, [("contact-updated", contact(n)) for n in (1, 11, 21)])
    assert late == ["dropped"] * 3
    await drained(tmp_path / "connector.db")
    assert server.stop() == 0

    mapping = load_mapping(MAPPING, ROOT)
    live = {attributes["external_id"]: attributes for attributes in crm.contacts.values()}
    expected = {contact(n)["id"]: mapping.apply(latest[n]) for n in range(100) if n not in deleted}
    assert len(crm.contacts) == len(live)  # no two CRM contacts for one Mimeeq contact
    assert live == expected  # every live contact in its latest state, the deleted ones gone
    assert live[contact(4)["id"]]["tags"] == ["vip"]
    assert live[contact(3)["id"]]["last_name"] == "Updated3"
    # Each contact was created once, lost answers included; updates and deletes went by the
    # remembered CRM id (no 404), every write with an idempotency key.
    assert set(crm.created.values()) == {1} and len(crm.created) == 100
    assert not any(status == 404 for _, status in crm.calls)
    assert crm.unkeyed_writes == 0
    assert crm.calls[("PATCH", 200)] >= 20  # at least the second round's updates
    assert crm.calls[("DELETE", 204)] == len(deleted)  # one accepted delete each (replays too)
    failed = sum(n for (_, status), n in crm.calls.items() if status == 503)
    assert failed >= 0.1 * crm.calls.total()  # the CRM really was flaky

    with sqlite3.connect(tmp_path / "connector.db") as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
        links = dict(db.execute("SELECT contact_id, remote_id FROM sync_state"))
    crm_ids = {attributes["external_id"]: crm_id for crm_id, attributes in crm.contacts.items()}
    assert links == crm_ids  # the connector remembers each live contact's CRM id
    assert CRM_TOKEN not in server.log.read_text()


@pytest.mark.parametrize("then", ["contact-updated", "contact-deleted"])
async def test_an_abandoned_write_never_lands_after_a_newer_one(
    tmp_path: Path,
    server_process: Callable[[Path], ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    """The CRM works on the create for 8 s, longer than push_timeout: the connector gives up on
    it, but the CRM still creates the contact. The update (or delete) posted a second later must
    land after it, never before, and never while it is still being worked on."""
    monkeypatch.setenv("TEST_CRM_TOKEN", CRM_TOKEN)
    crm = FakeCrm(failure_rate=0)
    await crm.start()
    try:
        crm.delay_next = [8.0]
        server = server_process(rest_config(tmp_path, crm, push_timeout=5))
        server.start()
        one = contact(1, lastName="OLD")
        await post_all(server.url, [("contact-created", one)])
        await eventually(lambda: crm.writing == 1)
        await asyncio.sleep(1)
        later = {"id": one["id"], "customerId": CUSTOMER} if then == "contact-deleted" else one
        await post_all(server.url, [(then, {**later, "lastName": "NEW"})])
        await drained(tmp_path / "connector.db")
        assert server.stop() == 0
    finally:
        await crm.runner.cleanup()
    assert crm.overlaps == 0
    assert set(crm.created.values()) == {1}  # created once: found by lookup afterwards
    if then == "contact-deleted":
        assert crm.contacts == {}  # never resurrected by the late create
    else:
        (attributes,) = crm.contacts.values()
        assert attributes["last_name"] == "NEW"
