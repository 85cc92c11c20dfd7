"""The fake HubSpot as the end-to-end tests set it up: the Mimeeq properties created, the token
read from the environment as a real one would be, and a config whose target points at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_hubspot import FakeHubSpot
from testkit.payloads import CUSTOMER, ROOT, TOKEN

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
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout": 10},
        "store": {"url": "sqlite:///connector.db"},
        "tenants": {
            "demo": {
                "customer_id": CUSTOMER,
                "auth": {"header": "X-Mimeeq-Token", "values": [TOKEN]},
                "targets": {
                    "hubspot": {
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
                },
            }
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
