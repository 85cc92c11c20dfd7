"""Property-based tests: the mapping engine over any payload the receiver accepts, what each target
is handed, and the receiver over any body.

* Every shipped mapping maps every valid payload without raising; HubSpot gets text, the CSV file
  gets cells no spreadsheet runs as formulas, a REST path keeps each value in its one segment.
* Templates render what JMESPath reads from the payload, and nothing else (no Python internals).
* No body, content type, tenant or event name makes the receiver answer 5xx or store a refusal.

Example counts stay modest so the suite stays fast; ``deadline=None`` because a loaded CI machine
is slow now and then.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import httpx
import jmespath
import orjson
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from adapters.csvfile import _FORMULA_STARTS, CsvAdapter, CsvSettings
from adapters.hubspot import hubspot_value
from adapters.rest import RestAdapter, RestSettings
from connector.adapter import Record, TargetContext
from connector.config import load_config
from connector.mapping import FieldMapping, load_mapping
from connector.outcomes import Delivered
from connector.payloads import PAYLOAD_SCHEMAS
from connector.service import Service
from testkit.payloads import CUSTOMER, ROOT, TOKEN, contact, write_config

MAPPINGS = {
    path.name: load_mapping(path.name, path.parent) for path in (ROOT / "mappings").glob("*.yaml")
}
EXAMPLES = settings(max_examples=150, deadline=None)
FEW = settings(max_examples=40, deadline=None)


def test_every_shipped_mapping_is_covered() -> None:
    assert {"csv-contacts.yaml", "hubspot-contacts.yaml", "rest-contacts.yaml"} <= set(MAPPINGS)


# --- Payloads the receiver accepts ------------------------------------------------------------

# Text as a spreadsheet or a CRM would hate it: formula starts, quotes, separators, line breaks.
HOSTILE_STARTS = ["", "=", "+", "-", "@", "\t", "\r", "\n", "'", '"', ";", ",", " ", "=cmd|"]
TEXT = st.builds(
    lambda start, rest: start + rest,
    st.sampled_from(HOSTILE_STARTS),
    st.text(max_size=20),
)
IDENTIFIER = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)
NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
KEYS = st.text(max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


EMAIL = st.fixed_dictionaries(
    {"mail": TEXT}, optional={"type": optional(st.sampled_from(["WORK", "PRIVATE"]) | TEXT)}
)
PHONE = st.fixed_dictionaries(
    {"number": TEXT | st.sampled_from(["+44 20 7946 0958", "020 7946 0958", "+1-202-555-0143"])},
    optional={"type": optional(st.sampled_from(["WORK", "MOBILE"]) | TEXT)},
)
ADDRESS = st.fixed_dictionaries(
    {},
    optional={
        "address": optional(TEXT),
        "city": optional(TEXT),
        "zipCode": optional(TEXT),
        "country": optional(TEXT | st.sampled_from(["Germany", "DEU", "uk", "Côte d'Ivoire"])),
    },
)
ACCOUNT = st.fixed_dictionaries({}, optional={"position": optional(TEXT)})
EXTRA_KEYS = st.sampled_from(["newMimeeqField", "__class__", "__dict__", "metadata", "x"])
EXTRA = st.dictionaries(EXTRA_KEYS, JSON_VALUES, max_size=2)  # fields Mimeeq may add one day
CONTACT = st.fixed_dictionaries(
    {"id": IDENTIFIER, "customerId": st.just(CUSTOMER)},
    optional={
        "companyId": optional(IDENTIFIER),
        "firstName": optional(TEXT),
        "lastName": optional(TEXT),
        "status": optional(st.sampled_from(["ACTIVE", "INACTIVE"]) | TEXT),
        "addressDetails": optional(ADDRESS),
        "phoneNumbers": optional(st.lists(PHONE, max_size=3)),
        "emails": optional(st.lists(EMAIL, max_size=3)),
        "accountDetails": optional(ACCOUNT),
        "tags": optional(st.lists(TEXT, max_size=4)),
    },
).flatmap(lambda body: EXTRA.map(lambda extra: extra | body))
DELETED = st.fixed_dictionaries(
    {"id": IDENTIFIER, "customerId": st.just(CUSTOMER)},
    optional={"emails": optional(st.lists(EMAIL, max_size=3))},
)
# (event, payload) as the worker sees it: the stored body, parsed again.
EVENTS = st.one_of(
    st.tuples(st.sampled_from(["contact-created", "contact-updated"]), CONTACT),
    st.tuples(st.just("contact-deleted"), DELETED),
).map(lambda pair: (pair[0], orjson.loads(json.dumps(pair[1]))))


def accepted(event: str, payload: dict[str, Any]) -> None:
    """The strategies make only payloads the receiver accepts."""
    PAYLOAD_SCHEMAS[event].validate_python(payload)


def mapped(mapping: FieldMapping, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    accepted(event, payload)
    record = mapping.apply(payload)  # raising anything at all fails the property
    assert set(record) <= set(mapping.fields)
    return record


def record(contact_id: str, fields: dict[str, Any], payload: dict[str, Any], **kw: Any) -> Record:
    return Record(
        contact_id=contact_id,
        op=kw.pop("op", "upsert"),
        event=kw.pop("event", "contact-updated"),
        event_id="event-1",
        fields=fields,
        payload=payload,
        remote_id=kw.pop("remote_id", None),
        attempt=1,
    )


# --- The mapping engine -----------------------------------------------------------------------


@EXAMPLES
@given(event=EVENTS)
def test_shipped_mappings_map_every_valid_payload(event: tuple[str, dict[str, Any]]) -> None:
    name, payload = event
    for mapping in MAPPINGS.values():
        record = mapped(mapping, name, payload)
        # Missing values are left out, never sent as null or "".
        assert all(value not in (None, "", []) for value in record.values())


@EXAMPLES
@given(event=EVENTS)
def test_hubspot_gets_text(event: tuple[str, dict[str, Any]]) -> None:
    name, payload = event
    record = mapped(MAPPINGS["hubspot-contacts.yaml"], name, payload)
    for key, value in record.items():
        text = hubspot_value(value, options=key in ("mimeeq_tags", "mimeeq_status"))
        assert isinstance(text, str), key
        if isinstance(value, list):  # tags: each one a clean option of the checkbox
            assert key == "mimeeq_tags"
            assert all(o and o == o.strip() for o in text.split(";") if text), text
        else:
            assert isinstance(value, str), key  # the shipped mapping makes text of the rest
    assert record.get("mimeeq_status") == (payload.get("status") or None)


@EXAMPLES
@given(event=EVENTS)
def test_rest_gets_the_json_types_it_is_promised(event: tuple[str, dict[str, Any]]) -> None:
    name, payload = event
    record = mapped(MAPPINGS["rest-contacts.yaml"], name, payload)
    assert record["external_id"] == payload["id"] and record["lead_source"] == "Mimeeq"
    for key in ("email", "first_name", "last_name", "phone", "job_title", "company_id", "status"):
        assert isinstance(record.get(key, ""), str), key
    assert isinstance(record.get("tags", []), list)
    assert all(isinstance(tag, str) for tag in record.get("tags", []))
    assert isinstance(record.get("address", {}), dict)


@FEW
@given(events=st.lists(EVENTS, min_size=1, max_size=5))
async def test_csv_cells_are_text_no_spreadsheet_runs(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    mapping = MAPPINGS["csv-contacts.yaml"]
    with tempfile.TemporaryDirectory() as folder:
        options = {"type": "csv", "mapping": "-", "path": "contacts.csv"}
        csv_settings = CsvSettings.model_validate(options, context={"base_dir": Path(folder)})
        adapter = CsvAdapter(csv_settings, TargetContext("demo", "sheet", mapping.fields))
        await adapter.open()
        live: set[str] = set()
        for name, payload in events:
            op = "delete" if name == "contact-deleted" else "upsert"
            fields = mapped(mapping, name, payload)
            (outcome,) = await adapter.push([record(payload["id"], fields, payload, op=op)])
            assert isinstance(outcome, Delivered)
            (live.discard if op == "delete" else live.add)(payload["id"])
        await adapter.close()
        with open(Path(folder) / "contacts.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    assert rows[0] == ["mimeeq_contact_id", *mapping.fields]
    assert len(rows) == 1 + len(live)
    for row in rows:
        assert len(row) == len(rows[0])
        for cell in row:
            assert isinstance(cell, str)
            assert not cell.startswith(_FORMULA_STARTS), cell


PLACEHOLDERS = ["__class__", "__dict__", "firstName.__class__", "__init__.__globals__", "@", "id"]


@EXAMPLES
@given(event=EVENTS, names=st.lists(st.sampled_from(PLACEHOLDERS), min_size=1, max_size=3))
def test_templates_render_the_payload_and_nothing_else(
    event: tuple[str, dict[str, Any]], names: list[str]
) -> None:
    """A placeholder is a JMESPath expression on the payload, never ``str.format``."""
    _, payload = event
    template = "|".join(f"{{{name}}}" for name in names)
    got = load_mapping({"fields": {"t": {"template": template}}}, ROOT).apply(payload).get("t")

    def text(value: Any) -> str:
        if value is None or value == "" or value == []:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    options = jmespath.Options(dict_cls=dict)
    values = [jmespath.search(name, payload, options=options) for name in names]
    expected = "|".join(text(v) for v in values) if any(text(v) for v in values) else None
    assert got == expected


# --- REST paths -------------------------------------------------------------------------------

BASE = "https://crm.test/api/v1"


@FEW
@given(contact_id=IDENTIFIER, remote_id=st.text(min_size=1, max_size=30))
async def test_rest_paths_keep_each_value_in_one_segment(contact_id: str, remote_id: str) -> None:
    mapping = MAPPINGS["rest-contacts.yaml"]
    ops = {
        "upsert": {
            "path": "/contacts/{contact_id}/notes",
            "query": {"who": "{contact_id}"},
            "id_from_response": "id",
        },
        "delete": {"path": "/contacts/{remote_id}"},
    }
    options = {"type": "rest", "mapping": "-", "base_url": BASE, **ops}
    rest_settings = RestSettings.model_validate(options, context={"base_dir": ROOT})
    adapter = RestAdapter(rest_settings, TargetContext("demo", "crm", mapping.fields))
    payload = orjson.loads(json.dumps(contact(1, id=contact_id)))
    upsert = record(contact_id, mapping.apply(payload), payload)
    delete = record(contact_id, {}, payload, op="delete", remote_id=remote_id)
    async with respx.mock(base_url=BASE, assert_all_called=False) as crm:
        route = crm.route().mock(return_value=httpx.Response(200, json={"id": "r-1"}))
        await adapter.open()
        try:
            assert await adapter.push([upsert]) == [Delivered(remote_id="r-1")]
            assert len(await adapter.push([delete])) == 1
        finally:
            await adapter.close()
    upsert_url, delete_url = (call.request.url for call in route.calls)

    def segments(url: httpx.URL) -> list[bytes]:
        return url.raw_path.split(b"?")[0].split(b"/")

    assert segments(upsert_url) == [b"", b"api", b"v1", b"contacts", quoted(contact_id), b"notes"]
    assert upsert_url.params["who"] == contact_id
    assert segments(delete_url) == [b"", b"api", b"v1", b"contacts", quoted(remote_id)]
    assert unquote(segments(delete_url)[-1].decode()) == remote_id


def quoted(value: str) -> bytes:
    """One path segment: nothing a server could read as a separator, a query or a dot segment."""
    segment = quote(value, safe="").encode()
    return segment.replace(b".", b"%2E") if set(value) <= {"."} else segment


# --- The receiver -----------------------------------------------------------------------------


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Service]:
    service = Service(load_config(write_config(tmp_path)))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def events(service: Service) -> int:
    with sqlite3.connect(service.config.base_dir / "connector.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded",
     "application/json; charset=latin-1", "multipart/form-data"]
) | st.text(max_size=30)  # fmt: skip
BODIES = st.one_of(
    st.binary(max_size=2000),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    # Almost a contact: any known field may hold anything at all.
    st.fixed_dictionaries(
        {},
        optional={
            key: JSON_VALUES | st.floats() | IDENTIFIER
            for key in ["id", "customerId", "firstName", "emails", "tags", "addressDetails"]
        },
    ).map(lambda v: json.dumps(v).encode()),
    CONTACT.map(lambda v: json.dumps(v).encode()),
)
SEGMENTS = st.sampled_from(["demo", "contact-created", "contact-deleted", "..", "%2F"]) | st.text(
    min_size=1, max_size=40
)
TOKENS = st.sampled_from([TOKEN, "", "x" * 30]) | st.text(max_size=30)
SLOW_ONES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_ONES)
@given(body=BODIES, content_type=CONTENT_TYPES, event=st.sampled_from(list(PAYLOAD_SCHEMAS)))
async def test_no_body_makes_the_receiver_fail(
    receiver: Service, body: bytes, content_type: str | None, event: str
) -> None:
    headers = {"X-Mimeeq-Token": TOKEN}
    if content_type is not None:
        headers["Content-Type"] = "".join(c for c in content_type if " " <= c <= "~")
    before = events(receiver)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{receiver.port}/webhooks/demo/{event}",
            data=io.BytesIO(body),
            headers=headers,
            skip_auto_headers=["Content-Type"],
        ) as response,
    ):
        assert response.status < 500, await response.text()
        answer = await response.json()
    if response.status == 202:
        assert answer["status"] in ("queued", "duplicate", "dropped")
    else:
        assert response.status in (400, 413, 415, 422) and answer["error"]
        assert events(receiver) == before


@settings(max_examples=100, deadline=None, suppress_health_check=SLOW_ONES)
@given(tenant=SEGMENTS, event=SEGMENTS, token=TOKENS)
async def test_no_path_or_token_makes_the_receiver_fail(
    receiver: Service, tenant: str, event: str, token: str
) -> None:
    path = f"/webhooks/{quote(tenant, safe='')}/{quote(event, safe='')}"
    token = "".join(c for c in token if " " < c <= "~")  # what a header can carry
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            URL(f"http://127.0.0.1:{receiver.port}{path}", encoded=True),
            data=io.BytesIO(json.dumps(contact(1)).encode()),
            headers={"X-Mimeeq-Token": token, "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status < 500
        answer = await response.json()
    if response.status != 202:
        assert answer["error"]
    if (tenant, token) != ("demo", TOKEN):
        assert response.status in (401, 404)  # 404: a path that is no webhook at all
    await asyncio.sleep(0)
