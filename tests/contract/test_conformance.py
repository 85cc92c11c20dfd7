"""Every shipped adapter, and the example in docs/examples, passes the conformance suite.

Exemptions (each check skips with its reason): csv and the example have no authentication and
write a local file (no 401, nothing to hang on); null keeps nothing, so there is nothing to read
back (order, copies, deletes are not observable), and it has no authentication nor I/O to hang.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from tenacity import wait_none

from adapters.csvfile import CsvAdapter, CsvSettings
from adapters.hubspot import HubSpotAdapter, HubSpotSettings
from adapters.null import NullAdapter
from adapters.rest import RestAdapter, RestSettings
from connector.adapter import Adapter, TargetContext, TargetSettings
from connector.conformance import AdapterConformance, NotApplicable
from fake_hubspot import FakeHubSpot
from testkit.payloads import ROOT

TOKEN = "hs-conformance-token"
BASE = "https://crm.test/api/v1"


class TestHubSpot(AdapterConformance):
    @pytest.fixture(autouse=True)
    async def _fake(self) -> AsyncIterator[None]:
        self.fake = FakeHubSpot(token=TOKEN)
        await self.fake.start()
        self.fake.add_property("mimeeq_contact_id", unique=True)
        try:
            yield
        finally:
            await self.fake.stop()

    async def make_adapter(self, context: TargetContext) -> Adapter[Any]:
        settings = HubSpotSettings.model_validate(
            {"type": "hubspot", "mapping": "-", "access_token": TOKEN, "base_url": self.fake.url}
        )
        adapter = HubSpotAdapter(settings, context)
        adapter.api.transient_attempts = 2
        return adapter

    async def stored(self, adapter: Adapter[Any]) -> list[tuple[str, dict[str, Any]]]:
        return [
            (props["mimeeq_contact_id"], props)
            for props in self.fake.contacts.values()
            if props.get("mimeeq_contact_id")
        ]

    async def refuse_auth(self, adapter: Adapter[Any]) -> None:
        self.fake.token = "revoked"

    async def hang(self, adapter: Adapter[Any]) -> None:
        self.fake.delay_next = [3.0] * 5  # longer than the test waits, short for the teardown


class TestRest(AdapterConformance):
    @pytest.fixture(autouse=True)
    async def _crm(self) -> AsyncIterator[None]:
        self.held: dict[str, dict[str, Any]] = {}
        self.status: int | None = None  # answer every request with this status
        self.hanging = False
        async with respx.mock(base_url=BASE, assert_all_called=False) as router:
            path = r"/contacts/(?P<cid>[^/]+)"
            router.put(path__regex=path).mock(side_effect=self._put)
            router.delete(path__regex=path).mock(side_effect=self._delete)
            yield

    async def _answer(self) -> httpx.Response | None:
        if self.hanging:
            await asyncio.sleep(30)
        return None if self.status is None else httpx.Response(self.status)

    async def _put(self, request: httpx.Request, cid: str) -> httpx.Response:
        if (refused := await self._answer()) is not None:
            return refused
        self.held[cid] = json.loads(request.content)
        return httpx.Response(200, json={"id": cid})

    async def _delete(self, request: httpx.Request, cid: str) -> httpx.Response:
        if (refused := await self._answer()) is not None:
            return refused
        return httpx.Response(204 if self.held.pop(cid, None) is not None else 404)

    async def make_adapter(self, context: TargetContext) -> Adapter[Any]:
        settings = RestSettings.model_validate(
            {
                "type": "rest",
                "mapping": "-",
                "base_url": BASE,
                "upsert": {"method": "PUT", "path": "/contacts/{contact_id}"},
                "delete": {"method": "DELETE", "path": "/contacts/{contact_id}"},
            }
        )
        adapter = RestAdapter(settings, context)
        adapter.call_wait = wait_none()  # type: ignore[misc]
        return adapter

    async def stored(self, adapter: Adapter[Any]) -> list[tuple[str, dict[str, Any]]]:
        return list(self.held.items())

    async def refuse_auth(self, adapter: Adapter[Any]) -> None:
        self.status = 401

    async def hang(self, adapter: Adapter[Any]) -> None:
        self.hanging = True


class TestCsv(AdapterConformance):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "contacts.csv"

    async def make_adapter(self, context: TargetContext) -> Adapter[Any]:
        settings = CsvSettings.model_validate({"type": "csv", "mapping": "-", "path": self.path})
        return CsvAdapter(settings, context)

    async def stored(self, adapter: Adapter[Any]) -> list[tuple[str, dict[str, Any]]]:
        with self.path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        return [(row.pop("mimeeq_contact_id"), row) for row in rows]


class TestNull(AdapterConformance):
    async def make_adapter(self, context: TargetContext) -> Adapter[Any]:
        return NullAdapter(TargetSettings(type="null", mapping="-"), context)

    async def stored(self, adapter: Adapter[Any]) -> list[tuple[str, dict[str, Any]]]:
        raise NotApplicable("the null target keeps nothing to read back")


def _example() -> Any:
    """docs/examples/jsonfile.py, loaded by path: the docs are no package."""
    spec = importlib.util.spec_from_file_location(
        "docs_example_jsonfile", ROOT / "docs" / "examples" / "jsonfile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TestDocsExample(AdapterConformance):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "contacts.json"

    async def make_adapter(self, context: TargetContext) -> Adapter[Any]:
        example = _example()
        settings = example.JsonFileSettings(type="jsonfile", mapping="-", path=self.path)
        adapter: Adapter[Any] = example.JsonFileAdapter(settings, context)
        return adapter

    async def stored(self, adapter: Adapter[Any]) -> list[tuple[str, dict[str, Any]]]:
        held: dict[str, dict[str, Any]] = json.loads(self.path.read_text("utf-8"))
        return list(held.items())
