"""Durable storage of events and delivery state. See :mod:`connector.store.base`."""

from __future__ import annotations

from connector.config import Config
from connector.errors import ConfigError
from connector.store.base import SchemaPolicy, Store
from connector.store.postgres import PostgresStore
from connector.store.sqlite import SQLiteStore, sqlite_path

POSTGRES_SCHEMES = ("postgresql:", "postgres:")


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
    url = settings.url
    if url.startswith("sqlite:"):
        return SQLiteStore(
            sqlite_path(url, config.base_dir),
            exclusive=exclusive,
            dedupe_window=settings.dedupe_hours * 3600,
            schema=policy,
            max_size_mb=settings.max_size_mb,
        )
    if url.startswith(POSTGRES_SCHEMES):
        try:
            return PostgresStore(url, dedupe_window=settings.dedupe_hours * 3600, schema=policy)
        except ValueError as exc:  # never the URL itself: it may hold a password
            raise ConfigError(f"{config.path}: store.url: {exc}") from None
    raise ConfigError(f"{config.path}: store.url: unsupported store {url.split(':', 1)[0]!r}")
