"""Durable storage of events and delivery state. See :mod:`connector.store.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.store.base import SchemaPolicy, Store
from connector.store.postgres import PostgresStore
from connector.store.sqlite import SQLiteStore
from connector.store.url import SqliteUrl, parse_store_url

if TYPE_CHECKING:  # the config module reads store URLs from here
    from connector.config import Config


def open_store(
    config: Config, *, exclusive: bool = False, schema: SchemaPolicy | None = None
) -> Store:
    """The store named by ``store.url`` (not opened yet).

    ``exclusive``: only this process may use it (SQLite; PostgreSQL is shared by design).
    ``schema``: what opening does about the schema; by default it migrates, or only checks the
    version when ``store.migrate_on_start`` is false.
    """
    settings = config.store
    policy: SchemaPolicy = schema or ("migrate" if settings.migrate_on_start else "verify")
    url = parse_store_url(settings.url)  # valid: the config was checked when it was loaded
    if isinstance(url, SqliteUrl):
        return SQLiteStore(
            url.located(config.base_dir),
            exclusive=exclusive,
            dedupe_window=settings.dedupe_hours * 3600,
            schema=policy,
            max_size_mb=settings.max_size_mb,
        )
    return PostgresStore(settings.url, dedupe_window=settings.dedupe_hours * 3600, schema=policy)
