from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.config import Config, load_config
from connector.service import Service
from testkit.hubspot import fake, hubspot_token  # noqa: F401  (fixtures)
from testkit.payloads import write_config
from testkit.service import ServerProcess, free_port


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
