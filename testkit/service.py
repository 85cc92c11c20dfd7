"""Driving the service in tests and benchmarks: webhooks in, committed status out, and the
server as a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from connector.service import Service
from connector.store.base import TargetStatus
from testkit.fakes import FakeAdapter
from testkit.payloads import ROOT, TOKEN
from testkit.waiting import DEADLINE, eventually, eventually_blocking


async def send(service: Service, event: str, body: dict[str, Any]) -> dict[str, Any]:
    """Post a webhook for tenant ``demo``; return the 202's answer."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{service.port}/webhooks/demo/{event}",
            json=body,
            headers={"X-Mimeeq-Token": TOKEN},
        ) as response,
    ):
        assert response.status == 202, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def status_reaches(
    service: Service, target: str = "demo/fake", **expected: object
) -> TargetStatus:
    """The target's committed status, once its fields hold the ``expected`` values.

    What a worker did is committed after the adapter saw it: wait on the store, not the adapter.
    """

    async def check() -> TargetStatus:
        (status,) = [s for s in await service.store.status() if s.target == target]
        actual = {name: getattr(status, name) for name in expected}
        assert actual == expected, status
        return status

    return await eventually(check)


async def drained(db: Path, timeout: float = 2 * DEADLINE) -> None:
    """Wait until the SQLite store at ``db`` has nothing left to deliver (a backlog may take a
    while on a loaded machine: twice the usual deadline)."""

    def empty() -> bool:
        if not db.exists():
            return False
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return not conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    await eventually(empty, timeout)


def fake_adapter(service: Service, name: str = "demo/fake") -> FakeAdapter:
    adapter = service.workers[name].adapter
    assert isinstance(adapter, FakeAdapter)
    return adapter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``mimeeq-connector serve`` in a real child process."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config_path.parent / "server.log"

    def start(self, timeout: float = DEADLINE) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "connector",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--port",
                    str(self.port),
                    "--log-format",
                    "json",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        try:
            eventually_blocking(listening, timeout)
        except AssertionError:
            raise RuntimeError(f"server did not start:\n{self.log.read_text()}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


async def post_all(url: str, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Post the webhooks for tenant ``demo`` at once; return each 202's status, in order."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as http:

        async def post(event: str, body: dict[str, Any]) -> str:
            async with http.post(
                f"{url}/webhooks/demo/{event}", json=body, headers={"X-Mimeeq-Token": TOKEN}
            ) as response:
                assert response.status == 202, await response.text()
                return str((await response.json())["status"])

        return await asyncio.gather(*(post(event, body) for event, body in events))
