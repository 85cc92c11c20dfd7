from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from connector.config import Config, load_config
from connector.service import Service
from connector.store.base import TargetStatus
from tests.fakes import FakeAdapter
from tests.waiting import DEADLINE, eventually, eventually_blocking

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
TOKEN = "test-token-0123456789"
CUSTOMER = "CUST-e3115ba6-0cce-4ba5-9803-aadf90ba2a96"


def example(name: str) -> dict[str, Any]:
    """One of Mimeeq's example payloads: contact-created, contact-updated, contact-deleted."""
    return json.loads((DATA / f"{name}.json").read_text())


def contact(n: int, **changes: Any) -> dict[str, Any]:
    """A distinct contact built from the contact-created example."""
    body = example("contact-created")
    body["id"] = f"CONT-{n:08d}-0000-0000-0000-000000000000"
    body["firstName"] = f"First{n}"
    body["emails"] = [{"type": "WORK", "mail": f"person{n}@example.com"}]
    body.update(changes)
    return body


FAKE_MAPPING = {"fields": {"first": "firstName", "last": "lastName", "email": "emails[0].mail"}}


def write_config(
    folder: Path,
    targets: dict[str, dict[str, Any]] | None = None,
    *,
    tenants: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """A config file with tenant ``demo`` (token TOKEN) and the given targets."""
    if targets is None:
        targets = {"fake": {"type": "fake", "mapping": FAKE_MAPPING}}
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


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


@pytest.fixture
async def service(config: Config) -> AsyncIterator[Service]:
    svc = Service(config)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start services on demand; stop whatever is still running at the end."""
    started: list[Service] = []

    async def make(targets: dict[str, dict[str, Any]] | None = None) -> Service:
        svc = Service(load_config(write_config(tmp_path, targets)))
        await svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        if svc.accepting:
            await svc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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


@pytest.fixture
def server_process() -> Iterator[Callable[[Path], ServerProcess]]:
    started: list[ServerProcess] = []

    def make(config_path: Path) -> ServerProcess:
        server = ServerProcess(config_path, free_port())
        started.append(server)
        return server

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
