"""The real PostgreSQL the tests use: skipped with the reason when unreachable, except under
``CI=true``, where that fails (CI must run them). The server is ``$CONNECTOR_TEST_POSTGRES``
(default below); each user gets a fresh schema of its own, dropped afterwards."""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from connector.store.url import redacted

POSTGRES_URL = os.environ.get(
    "CONNECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
_postgres_problem: dict[str, str | None] = {}  # URL -> why it cannot be reached (None: it can)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


async def require_postgres() -> str:
    """The test server's URL. Skip when none is reachable; under CI=true, fail instead."""
    if POSTGRES_URL not in _postgres_problem:
        try:
            conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        except Exception as exc:  # any reason at all: refused, unknown host, bad URL, auth
            _postgres_problem[POSTGRES_URL] = f"{type(exc).__name__}: {exc}"
        else:
            await conn.close()
            _postgres_problem[POSTGRES_URL] = None
    problem = _postgres_problem[POSTGRES_URL]
    if problem is not None:
        where = redacted(POSTGRES_URL)
        if in_ci():
            pytest.fail(
                f"PostgreSQL at {where} is unreachable ({problem}) and CI=true: the PostgreSQL "
                "tests must run in CI (start the server or set CONNECTOR_TEST_POSTGRES)",
                pytrace=False,
            )
        pytest.skip(
            f"no PostgreSQL reachable at {where} ({problem}); start one or set "
            "CONNECTOR_TEST_POSTGRES (under CI=true these tests fail instead)"
        )
    return POSTGRES_URL


def with_search_path(url: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), ("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh, empty schema: yields a store URL that keeps its tables there; dropped after."""
    url = await require_postgres()
    name = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield with_search_path(url, name)
        finally:
            await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await admin.close()
