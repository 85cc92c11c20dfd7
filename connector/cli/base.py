"""The command line's group and what its commands share."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
import orjson

from connector.config import Config, Need, Target, default_config_path, load_config
from connector.errors import ConfigError
from connector.store import open_store
from connector.store.base import Store

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file [default: $CONNECTOR_CONFIG, then ./config.yaml]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def load(config_path: Path | None, need: Need = "targets") -> Config:
    """The config, or every problem on stderr and exit 1. Read-only commands pass need="store":
    they then work while a target's secret is unset (see ``connector.config.Need``)."""
    path = config_path or default_config_path()
    try:
        return load_config(path, need=need)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)


def find_target(config: Config, tenant: str, name: str) -> Target:
    found = config.tenants.get(tenant)
    if found is None:
        raise click.BadParameter(f"no tenant {tenant!r} in {config.path}", param_hint="--tenant")
    target = found.targets.get(name)
    if target is None:
        known = ", ".join(found.targets)
        raise click.BadParameter(f"no target {name!r} (known: {known})", param_hint="--target")
    return target


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mimeeq-connector")
def main() -> None:
    """Keep CRMs in step with Mimeeq contacts, from Mimeeq's webhooks."""


def pick_targets(config: Config, tenant: str | None, target: str | None) -> list[str]:
    """Keys of the configured targets, narrowed by --tenant / --target."""
    if target and not tenant:
        raise click.BadParameter("--target needs --tenant", param_hint="--target")
    if tenant and target:
        return [find_target(config, tenant, target).key]
    if tenant and tenant not in config.tenants:
        raise click.BadParameter(f"no tenant {tenant!r} in {config.path}", param_hint="--tenant")
    return [t.key for t in config.targets if tenant is None or t.tenant == tenant]


@asynccontextmanager
async def opened_store(config: Config) -> AsyncIterator[Store]:
    """The config's store, shared with a server that may be running (SQLite allows readers)."""
    store = open_store(config)
    try:
        await store.open()
    except ConfigError as exc:  # e.g. a schema behind this release: say so, no traceback
        fail("; ".join(exc.problems))
    try:
        yield store
    finally:
        await store.close()


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


def table(rows: Sequence[tuple[str, ...]]) -> None:
    """Print aligned columns; the last one runs free."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)
