"""The operator console in tests: a config with an admin listener, a signed-in HTTP client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.config import load_config
from connector.service import Service
from testkit.payloads import write_config

ADMIN_TOKEN = "admin-token-0123456789"


def admin_config(tmp_path: Path, targets: dict[str, Any] | None = None, **admin: Any) -> Path:
    return write_config(
        tmp_path, targets, admin={"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN, **admin}
    )


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Service]:
    service = Service(load_config(admin_config(tmp_path)))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the jar keeps cookies set by an IP address (127.0.0.1) too.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def at(service: Service, path: str) -> str:
    return f"http://127.0.0.1:{service.admin_port}{path}"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def sign_in(client: aiohttp.ClientSession, service: Service) -> str:
    """Sign in; return the session's CSRF token, read from the overview's forms."""
    async with client.post(at(service, "/login"), data={"token": ADMIN_TOKEN}) as response:
        assert response.status == 200 and response.url.path == "/", await response.text()
        return csrf_of(await response.text())
