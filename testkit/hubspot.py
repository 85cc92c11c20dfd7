"""The fake HubSpot as the end-to-end tests set it up: the Mimeeq properties created, the token
read from the environment as a real one would be, and a config whose target points at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fake_hubspot import FakeHubSpot
from testkit.payloads import ROOT, write_config

HS_TOKEN = "hs-end-to-end-token"
STATUS_WITHOUT_DEFAULT = {"from": "status", "map": {"ACTIVE": "OPEN", "INACTIVE": "UNQUALIFIED"}}


@pytest.fixture
def hubspot_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's token in the environment, where the configs below read it, as a real one."""
    monkeypatch.setenv("TEST_HUBSPOT_TOKEN", HS_TOKEN)


@pytest.fixture
async def fake(hubspot_token: None) -> AsyncIterator[FakeHubSpot]:
    """The fake HubSpot with the Mimeeq properties."""
    hub = FakeHubSpot(token=HS_TOKEN)
    await hub.start()
    hub.add_property("mimeeq_contact_id", object_type="contacts", unique=True, group="mimeeq")
    hub.add_property(
        "mimeeq_tags", object_type="contacts", type="enumeration", field_type="checkbox",
        options=[("tag1", "tag1")], group="mimeeq",
    )  # fmt: skip
    hub.add_property(
        "mimeeq_status", object_type="contacts", type="enumeration", field_type="select",
        options=[("ACTIVE", "Active"), ("INACTIVE", "Inactive")], group="mimeeq",
    )  # fmt: skip
    try:
        yield hub
    finally:
        await hub.stop()


def hubspot_config(folder: Path, fake: FakeHubSpot, **target: Any) -> Path:
    """Tenant ``demo`` with one HubSpot target at the fake, its token read from the environment."""
    hubspot = {
        "type": "hubspot",
        "access_token": "${TEST_HUBSPOT_TOKEN}",
        "base_url": fake.url,
        # The shipped mapping, and the lead status as a field HubSpot can refuse.
        "mapping": {
            "extends": str(ROOT / "mappings" / "hubspot-contacts.yaml"),
            "fields": {"hs_lead_status": STATUS_WITHOUT_DEFAULT},
        },
        **target,
    }
    server = {"host": "127.0.0.1", "port": 0, "drain_timeout": 10}
    return write_config(folder, {"hubspot": hubspot}, server=server)
