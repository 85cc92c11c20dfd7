"""The real server process, on the shipped example config, with the CSV target."""

from __future__ import annotations

import asyncio
import csv
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from testkit.payloads import ROOT, contact, example
from testkit.service import ServerProcess
from testkit.waiting import DEADLINE, eventually

EXAMPLE_TOKEN = "demo-token-change-me"  # the documented default of config.example.yaml
AUTH = {"X-Mimeeq-Token": EXAMPLE_TOKEN}


def example_setup(folder: Path) -> Path:
    """The repository's example config and shipped mappings, in a folder of their own."""
    shutil.copy(ROOT / "config.example.yaml", folder / "config.yaml")
    shutil.copytree(ROOT / "mappings", folder / "mappings")
    return folder / "config.yaml"


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["mimeeq_contact_id"]: row for row in csv.DictReader(f)}


async def post(server: ServerProcess, event: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/webhooks/demo/{event}", json=body, headers=AUTH) as response,
    ):
        assert response.status == 202, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def test_example_contact_lifecycle_reaches_the_csv(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    server = server_process(example_setup(tmp_path))
    server.start()
    sheet = tmp_path / "data" / "demo-contacts.csv"
    contact_id = example("contact-created")["id"]

    answer = await post(server, "contact-created", example("contact-created"))
    assert answer["status"] == "queued" and answer["eventId"]
    await eventually(lambda: contact_id in read_csv(sheet))
    row = read_csv(sheet)[contact_id]
    assert (row["first_name"], row["last_name"], row["email"]) == (
        "John",
        "Doe",
        "john.doe@example.com",
    )
    assert row["city"] == "Example City" and row["tags"] == "tag1; tag2"
    assert row["position"] == ""

    await post(server, "contact-updated", example("contact-updated"))
    await eventually(lambda: read_csv(sheet).get(contact_id, {}).get("position") == "Manager")

    await post(server, "contact-deleted", example("contact-deleted"))
    await eventually(lambda: contact_id not in read_csv(sheet))
    assert sheet.read_text(encoding="utf-8").startswith("mimeeq_contact_id,")
    assert server.stop() == 0


async def test_kill_9_during_a_burst_loses_no_acknowledged_event(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    """1,000 webhooks for 100 contacts; SIGKILL mid-burst; restart; every 202 is in the CSV."""
    config_path = example_setup(tmp_path)
    sheet = tmp_path / "data" / "demo-contacts.csv"
    server = server_process(config_path)
    server.start()
    versions = 10
    acked: dict[str, int] = {}  # contact id -> last version answered 202
    sent: dict[str, int] = {}  # contact id -> last version sent (maybe stored, never answered)
    kill_after = random.randint(300, 700)
    total = 0

    async def sender(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal total
        body = contact(n)
        for version in range(1, versions + 1):
            body["lastName"] = f"v{version}"
            sent[body["id"]] = version
            event = "contact-created" if version == 1 else "contact-updated"
            try:
                async with http.post(
                    f"{server.url}/webhooks/demo/{event}", json=body, headers=AUTH
                ) as response:
                    if response.status != 202:
                        return
                    await response.read()
            except aiohttp.ClientError:
                return  # the server is gone
            acked[body["id"]] = version
            total += 1
            if total == kill_after:
                server.kill()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
        await asyncio.gather(*(sender(http, n) for n in range(100)))
    assert server.proc is not None and server.proc.returncode == -9
    assert kill_after <= sum(acked.values()) < 1000

    server.start()  # same port, same store

    def caught_up() -> bool:
        rows = read_csv(sheet)
        return all(
            contact_id in rows and int(rows[contact_id]["last_name"][1:]) >= version
            for contact_id, version in acked.items()
        )

    await eventually(caught_up, 2 * DEADLINE)
    rows = read_csv(sheet)
    for contact_id, version in acked.items():
        # Exactly the last acknowledged state, or the one in flight when the server died.
        assert int(rows[contact_id]["last_name"][1:]) in (version, sent[contact_id])
    assert server.stop() == 0


async def test_sigterm_drains_and_a_restart_continues(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    config_path = example_setup(tmp_path)
    server = server_process(config_path)
    server.start()
    for n in range(20):
        await post(server, "contact-created", contact(n))
    assert server.stop(timeout=30) == 0
    server.start()
    sheet = tmp_path / "data" / "demo-contacts.csv"
    await eventually(lambda: len(read_csv(sheet)) == 20)
    assert server.stop() == 0
    log = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "connector stopped" for entry in log)
