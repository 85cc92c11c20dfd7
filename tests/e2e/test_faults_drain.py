"""A stop (SIGTERM) ends within ``drain_timeout`` whatever the CRM does, and loses nothing.

The real server process, against the fake HubSpot: one CRM that never answers, one that trickles
its answer a byte at a time. Default settings, apart from a short ``drain_timeout``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from fake_hubspot import FakeHubSpot
from testkit.hubspot import hubspot_config
from testkit.payloads import TOKEN, contact
from testkit.service import ServerProcess
from testkit.waiting import eventually

DRAIN = 3.0
# Past the drain: the store's last writes and the process's exit, on a busy machine.
EXIT_SLACK = 5.0


@pytest.mark.parametrize("crm", ["hangs", "trickles"])
async def test_sigterm_drains_on_time_whatever_the_crm_does(
    crm: str,
    tmp_path: Path,
    fake: FakeHubSpot,
    server_process: Callable[[Path], ServerProcess],
) -> None:
    config = hubspot_config(tmp_path, fake)
    text = config.read_text().replace("drain_timeout: 10", f"drain_timeout: {DRAIN}")
    config.write_text(text)
    if crm == "hangs":
        fake.delay_next = [3600.0] * 10
    else:
        fake.trickle = 5.0  # a byte every 5 s: each read is quick, the answer never ends
    server = server_process(config)
    server.start()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/webhooks/demo/contact-created", json=contact(1),
                  headers={"X-Mimeeq-Token": TOKEN}) as response,
    ):  # fmt: skip
        assert response.status == 202
    await eventually(lambda: bool(fake.calls))  # the push is waiting for HubSpot

    asked = time.monotonic()
    assert server.stop(timeout=DRAIN + EXIT_SLACK + 30) == 0
    assert time.monotonic() - asked < DRAIN + EXIT_SLACK

    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert any(line["event"] == "connector stopped" for line in lines)
    # The contact is still queued: pushed again by the next run.
    with sqlite3.connect(tmp_path / "connector.db") as db:
        assert db.execute("SELECT COUNT(*) FROM queue").fetchone()[0] == 1
