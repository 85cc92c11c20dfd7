from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.config import Config, load_config
from connector.service import Service
from testkit.console import client, console  # noqa: F401  (fixtures)
from testkit.hubspot import fake, hubspot_token  # noqa: F401  (fixtures)
from testkit.payloads import write_config
from testkit.service import ServerProcess, free_port

# Each folder holds one kind of test, marked after it: `pytest -m unit`, `make test-fast`.
KINDS = {
    "unit": "pure functions and single modules, no I/O beyond temporary files",
    "contract": "what every implementation must do: the stores, the adapters, the fake HubSpot",
    "component": "one part of the service against fakes: an adapter, the receiver, the CLI",
    "e2e": "the service as a real process (or several), webhooks in, a target's state out",
    "deploy": "the Dockerfile, Kubernetes and compose files, dashboards",
    "browser": "a real headless Chromium against the real server process (the console)",
}


def pytest_configure(config: pytest.Config) -> None:
    for kind, what in KINDS.items():
        config.addinivalue_line("markers", f"{kind}: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)


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
