"""Payloads and config files for tests and benchmarks: Mimeeq's example contacts, one tenant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"
TOKEN = "test-token-0123456789"
CUSTOMER = "CUST-e3115ba6-0cce-4ba5-9803-aadf90ba2a96"


def example(name: str) -> dict[str, Any]:
    """One of Mimeeq's example payloads: contact-created, contact-updated, contact-deleted,
    company-created."""
    return json.loads((DATA / f"{name}.json").read_text())


def contact(n: int, **changes: Any) -> dict[str, Any]:
    """A distinct contact built from the contact-created example."""
    body = example("contact-created")
    body["id"] = f"CONT-{n:08d}-0000-0000-0000-000000000000"
    body["firstName"] = f"First{n}"
    body["emails"] = [{"type": "WORK", "mail": f"person{n}@example.com"}]
    body.update(changes)
    return body


def company(n: int, **changes: Any) -> dict[str, Any]:
    """A distinct company built from the company-created example."""
    body = example("company-created")
    body["id"] = company_id(n)
    body["companyName"] = f"Company {n}"
    body.update(changes)
    return body


def company_id(n: int) -> str:
    return f"COMP-{n:08d}-0000-0000-0000-000000000000"


FAKE_MAPPING = {"fields": {"first": "firstName", "last": "lastName", "email": "emails[0].mail"}}
FAKE_COMPANY_MAPPING = {"fields": {"name": "companyName", "city": "address.city"}}


def write_config(
    folder: Path,
    targets: dict[str, dict[str, Any]] | None = None,
    *,
    tenants: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """A config file with tenant ``demo`` (token TOKEN) and the given targets."""
    if targets is None:
        targets = {
            "fake": {
                "type": "fake",
                "mapping": FAKE_MAPPING,
                "company_mapping": FAKE_COMPANY_MAPPING,
            }
        }
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout": 5},
        "store": {"url": "sqlite:///connector.db"},
        "tenants": tenants
        or {
            "demo": {
                "customer_id": CUSTOMER,
                "auth": {"header": "X-Mimeeq-Token", "values": [TOKEN]},
                "targets": targets,
            }
        },
        **top,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
