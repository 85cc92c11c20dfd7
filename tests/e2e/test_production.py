"""Running it like production: metrics, log hygiene, configuration reload."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connector.config import load_config
from connector.service import Service
from fake_hubspot import FakeHubSpot
from testkit.hubspot import HS_TOKEN, hubspot_config
from testkit.payloads import CUSTOMER, TOKEN, contact
from testkit.service import ServerProcess, drained
from testkit.waiting import eventually

AUTH = {"X-Mimeeq-Token": TOKEN}

pytestmark = pytest.mark.usefixtures("hubspot_token")  # as a deployment would have it


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_happened(tmp_path: Path, fake: FakeHubSpot) -> None:
    mapping = {"fields": {"email": "emails[0].mail", "hs_lead_status": "status"}}
    service = Service(load_config(hubspot_config(tmp_path, fake, mapping=mapping, linger=0)))
    await service.start()
    url = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def post(event: str, body: Any, headers: dict[str, str] = AUTH) -> int:
                async with http.post(f"{url}/webhooks/demo/{event}", json=body,
                                     headers=headers) as response:  # fmt: skip
                    return response.status

            for n in range(3):
                assert await post("contact-created", contact(n, status="OPEN")) == 202
            assert await post("contact-created", contact(9, status="NOT-AN-OPTION")) == 202
            assert await post("contact-created", contact(1, status="OPEN")) == 202  # redelivery
            assert await post("contact-updated", {"id": "CONT-1"}) == 422
            assert await post("contact-created", contact(1), {"X-Mimeeq-Token": "no"}) == 401
            assert await post("basket-submitted", {}) == 202
            await drained(tmp_path / "connector.db")
            async with http.get(f"{url}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                found = samples(await response.text())
    finally:
        await service.stop()

    labels = {"tenant": "demo", "event": "contact-created"}
    assert value(found, "mimeeq_connector_events_received_total", **labels, outcome="queued") == 4
    assert value(found, "mimeeq_connector_events_received_total", **labels,
                 outcome="duplicate") == 1  # fmt: skip
    assert value(found, "mimeeq_connector_events_received_total", **labels,
                 outcome="unauthorized") == 1  # fmt: skip
    assert value(found, "mimeeq_connector_events_received_total", tenant="demo",
                 event="contact-updated", outcome="invalid") == 1  # fmt: skip
    assert value(found, "mimeeq_connector_events_received_total", tenant="demo",
                 event="basket-submitted", outcome="ignored") == 1  # fmt: skip
    target = {"tenant": "demo", "target": "hubspot"}
    assert value(found, "mimeeq_connector_deliveries_total", **target, outcome="delivered") == 3
    assert value(found, "mimeeq_connector_deliveries_total", **target, outcome="dead") == 1
    assert value(found, "mimeeq_connector_dead_letters", **target) == 1
    assert value(found, "mimeeq_connector_queue_pending", **target) == 0
    assert value(found, "mimeeq_connector_queue_oldest_age_seconds", **target) == 0
    assert value(found, "mimeeq_connector_target_paused", **target) == 0
    calls = sum(1 for c in fake.calls if c.status)
    assert value(found, "mimeeq_connector_crm_request_seconds_count", **target) == calls
    assert value(found, "mimeeq_connector_crm_responses_total", **target, status="207") >= 1
    assert value(found, "mimeeq_connector_info", version="0.1.0") == 1
    # Nothing a caller controls becomes a label.
    assert not any("CONT-" in str(labels) for _, labels in found)


async def test_logs_never_show_tokens_emails_or_phone_numbers(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    phone = "+44 20 7946 0958"
    mapping = {"fields": {"email": "emails[0].mail", "hs_lead_status": "phoneNumbers[0].number"}}
    server = server_process(hubspot_config(tmp_path, fake, mapping=mapping, linger=0))
    server.start()
    people = [contact(n, phoneNumbers=[{"type": "WORK", "number": phone}]) for n in range(3)]
    people.append(contact(7, emails=[{"type": "WORK", "mail": "broken.address@example"}]))
    async with aiohttp.ClientSession() as http:
        for body in people:
            async with http.post(f"{server.url}/webhooks/demo/contact-created", json=body,
                                 headers=AUTH) as response:  # fmt: skip
                assert response.status == 202
        await drained(tmp_path / "connector.db")  # all dead: HubSpot refused every one
        fake.token = "rotated"  # and now the token stops working
        async with http.post(f"{server.url}/webhooks/demo/contact-updated", json=people[0],
                             headers=AUTH) as response:  # fmt: skip
            assert response.status == 202
        await eventually(lambda: "target paused" in server.log.read_text())
    assert server.stop() == 0
    log = server.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(entry["event"] == "record dead" for entry in lines)
    assert any(entry["event"] == "target paused" for entry in lines)
    assert all({"tenant", "target"} <= entry.keys() for entry in lines
               if entry["event"] in ("record dead", "batch pushed"))  # fmt: skip
    assert all("contact_id" in entry and "event_id" in entry for entry in lines
               if entry["event"] == "record dead")  # fmt: skip
    for secret in (HS_TOKEN, TOKEN):
        assert secret not in log
    for person in people:
        assert person["emails"][0]["mail"] not in log
    assert "7946" not in log and "0958" not in log
    assert "***58" in log  # the phone number was there, masked


def read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The sheet's columns and rows by contact id; nothing before its first write."""
    if not path.exists():
        return [], {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), {r["mimeeq_contact_id"]: r for r in reader}


def cell(path: Path, n: int, column: str) -> str | None:
    return read_csv(path)[1].get(contact(n)["id"], {}).get(column)


def log_count(server: ServerProcess, text: str) -> int:
    return server.log.read_text().count(text)


async def test_sighup_reloads_mappings_and_refuses_a_broken_config(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    mapping = tmp_path / "sheet.yaml"
    mapping.write_text("fields:\n  first: firstName\n")
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout": 5},
        "store": {"url": "sqlite:///connector.db"},
        "tenants": {"demo": {"customer_id": CUSTOMER, "auth": {"values": [TOKEN]},
                             "targets": {"sheet": {"type": "csv", "path": "sheet.csv",
                                                   "mapping": "sheet.yaml", "linger": 0}}}},
    }  # fmt: skip
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sheet = tmp_path / "sheet.csv"
    server = server_process(config_path)
    server.start()
    assert server.proc is not None
    sent = 0

    async def flow(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal sent
        async with http.post(f"{server.url}/webhooks/demo/contact-created", json=contact(n),
                             headers=AUTH) as response:  # fmt: skip
            assert response.status == 202
        sent += 1

    async with aiohttp.ClientSession() as http:
        await flow(http, 1)
        await eventually(lambda: read_csv(sheet)[0] == ["mimeeq_contact_id", "first"])

        # Change the mapping while events keep flowing; SIGHUP; the pushes after it use it.
        mapping.write_text("fields:\n  first: firstName\n  last: lastName\n")
        server.proc.send_signal(signal.SIGHUP)
        for n in range(2, 29):
            await flow(http, n)
            await asyncio.sleep(0.02)
        await eventually(lambda: log_count(server, "config reloaded") == 1)
        await flow(http, 29)
        await eventually(lambda: cell(sheet, 29, "last") == "Doe")

        # Same columns, computed differently: swapped in without restarting the target.
        mapping.write_text("fields:\n  first: firstName\n  last: {from: lastName, case: upper}\n")
        server.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: log_count(server, "config reloaded") == 2)
        await flow(http, 30)
        await eventually(lambda: cell(sheet, 30, "last") == "DOE")

        # A broken config is refused; the running one keeps working.
        config_path.write_text(config_path.read_text() + "\n  : nonsense: [\n")
        server.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: log_count(server, "config reload refused") == 1)
        await flow(http, 40)
        await eventually(lambda: cell(sheet, 40, "last") == "DOE")
        await eventually(lambda: len(read_csv(sheet)[1]) == sent)
    assert server.proc.poll() is None  # still serving
    assert server.stop() == 0
    log = server.log.read_text()
    assert log.count("config reloaded") == 2
    assert "config reload refused" in log and "invalid YAML" in log
    assert len(read_csv(sheet)[1]) == sent
    assert os.environ.get("TEST_HUBSPOT_TOKEN") == HS_TOKEN  # untouched by the run
    assert re.search(r'"problems":\["[^"]*config\.yaml', log)


def test_serve_runs_on_uvloop_with_a_collector_tuned_for_a_server() -> None:
    # In a process of its own: the tuning is process-wide.
    probe = (
        "import asyncio, gc, json\n"
        "from connector.runtime import server_runner\n"
        "async def loop_kind():\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "with server_runner() as runner:\n"
        "    kind = runner.run(loop_kind())\n"
        "print(json.dumps([kind, gc.get_threshold()[0], gc.get_freeze_count() > 0]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    kind, youngest, frozen = json.loads(out)
    assert kind.startswith("uvloop")
    assert youngest == 20_000  # not Python's 700: a webhook allocates many short-lived objects
    assert frozen  # what start-up built is out of the collector's way
