"""Durable storage of events and delivery state. See :mod:`connector.store.base`."""

from __future__ import annotations

from connector.config import Config
from connector.errors import ConfigError
from connector.store.base import Store
from connector.store.sqlite import SQLiteStore, sqlite_path


def open_store(config: Config, *, exclusive: bool = False) -> Store:
    """The store named by ``store.url`` (not opened yet). ``exclusive``: only this process."""
    url = config.store.url
    if url.startswith("sqlite:"):
        return SQLiteStore(
            sqlite_path(url, config.base_dir),
            exclusive=exclusive,
            dedupe_window=config.store.dedupe_hours * 3600,
        )
    raise ConfigError(f"{config.path}: store.url: unsupported store {url.split(':', 1)[0]!r}")
