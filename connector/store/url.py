"""``store.url``, read in one place: which store, and where.

``sqlite:///relative/file.db`` (against the config file's folder), ``sqlite:////absolute/file.db``
or ``postgresql://user:password@host:5432/database`` (``postgres://`` too). A PostgreSQL URL may
hold a password: no message here repeats it, and :func:`shown` gives it without.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
POOL_PARAMS = ("pool_min_size", "pool_max_size")
EXPECTED = (
    "expected sqlite:///relative/path.db, sqlite:////absolute/path.db or "
    "postgresql://user@host:5432/database"
)


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    path: Path  # as written: relative paths are against the config file's folder

    def located(self, base_dir: Path | None) -> Path:
        return self.path if self.path.is_absolute() or base_dir is None else base_dir / self.path


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    dsn: str  # for asyncpg: the URL without the pool's own parameters
    pool_min_size: int
    pool_max_size: int


def parse_store_url(url: str) -> SqliteUrl | PostgresUrl:
    """The store ``url`` names; ValueError saying what is wrong (never quoting a password)."""
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme in POSTGRES_SCHEMES:
        return _postgres(url)
    if scheme == "sqlite" and url.startswith(SQLITE_PREFIX) and url != SQLITE_PREFIX:
        return SqliteUrl(Path(url[len(SQLITE_PREFIX) :]))
    raise ValueError(EXPECTED)


def _postgres(url: str) -> PostgresUrl:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # its message may quote a piece of the password
        raise ValueError(
            "not a valid PostgreSQL URL: expected postgresql://user:password@host:5432/database"
            " (percent-encode special characters such as / @ : in the password)"
        ) from None
    sizes = {"pool_min_size": POOL_MIN_SIZE, "pool_max_size": POOL_MAX_SIZE}
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key in POOL_PARAMS:
            if not value.isdigit() or int(value) < (0 if key == "pool_min_size" else 1):
                raise ValueError(f"{key} must be a whole number (at least 1 for the maximum)")
            sizes[key] = int(value)
        else:
            rest.append((key, value))
    if sizes["pool_min_size"] > sizes["pool_max_size"]:
        raise ValueError("pool_min_size must not exceed pool_max_size")
    dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    return PostgresUrl(dsn, sizes["pool_min_size"], sizes["pool_max_size"])


def redacted(url: str) -> str:
    """A PostgreSQL URL without its password and query, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://…"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def shown(url: str, base_dir: Path | None) -> str:
    """The store as logs and messages name it: the SQLite file, or the URL without password."""
    try:
        parsed = parse_store_url(url)
    except ValueError:
        return redacted(url)
    return str(parsed.located(base_dir)) if isinstance(parsed, SqliteUrl) else redacted(url)
