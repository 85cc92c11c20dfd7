"""The ``mimeeq-connector`` command line."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
from pydantic import ValidationError

from connector.config import Config, Target, default_config_path, load_config
from connector.errors import ConfigError, DeliveryError, RecordMappingError
from connector.observability import configure_logging
from connector.payloads import CONTACT_EVENTS, PAYLOAD_MODELS
from connector.receiver import describe
from connector.store import open_store
from connector.store.base import TargetStatus
from connector.targets import TargetContext

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file [default: $CONNECTOR_CONFIG, then ./config.yaml]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _load(config_path: Path | None) -> Config:
    path = config_path or default_config_path()
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)


def _target(config: Config, tenant: str, name: str) -> Target:
    found = config.tenants.get(tenant)
    if found is None:
        raise click.BadParameter(f"no tenant {tenant!r} in {config.path}", param_hint="--tenant")
    target = found.targets.get(name)
    if target is None:
        known = ", ".join(found.targets)
        raise click.BadParameter(f"no target {name!r} (known: {known})", param_hint="--target")
    return target


def _print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mimeeq-connector")
def main() -> None:
    """Keep CRMs in step with Mimeeq contacts, from Mimeeq's webhooks."""


@main.command()
@config_option
@click.option("--host", default=None, help="Listen address [default: server.host]")
@click.option("--port", type=int, default=None, help="Listen port [default: server.port]")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
def serve(
    config_path: Path | None, host: str | None, port: int | None, log_format: str, log_level: str
) -> None:
    """Receive webhooks and deliver them until SIGTERM/SIGINT, then drain."""
    from connector.service import Service

    configure_logging(log_format, log_level)
    config = _load(config_path)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(Service(config).run(host, port))
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): a faster event loop for the server."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@main.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config and every mapping it names."""
    config = _load(config_path)
    targets = config.targets
    click.echo(
        f"{config.path}: OK ({len(config.tenants)} tenant(s), {len(targets)} target(s): "
        f"{', '.join(t.key for t in targets)})"
    )


@main.command("map")
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
@click.option(
    "--event",
    type=click.Choice(sorted(CONTACT_EVENTS)),
    default="contact-updated",
    show_default=True,
)
@click.argument("payload_file", type=click.File("rb"))
def map_command(
    config_path: Path | None, tenant: str, target_name: str, event: str, payload_file: Any
) -> None:
    """Print the mapped record of a payload (a dry run: nothing is sent)."""
    target = _target(_load(config_path), tenant, target_name)
    try:
        payload = orjson.loads(payload_file.read())
        PAYLOAD_MODELS[event].model_validate(payload)
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"payload is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise click.ClickException(f"invalid {event} payload: {describe(exc)[1]}") from None
    try:
        _print_json(target.mapping.apply(payload))
    except RecordMappingError as exc:
        raise click.ClickException(f"{target.mapping.source}: {exc}") from None


@main.command()
@config_option
@json_option
def status(config_path: Path | None, as_json: bool) -> None:
    """Queue state per tenant × target: pending, dead, delivered, oldest pending, paused."""
    config = _load(config_path)
    rows = asyncio.run(_status(config))
    now = time.time()
    if as_json:
        _print_json([_status_dict(row, now) for row in rows])
        return
    header = ("TENANT", "TARGET", "PENDING", "DEAD", "DELIVERED", "OLDEST PENDING", "STATE")
    table = [header]
    for row in rows:
        tenant, _, target = row.target.partition("/")
        oldest = _age(now - row.oldest_pending_at) if row.oldest_pending_at else "-"
        state = f"paused: {row.paused_reason}" if row.paused else "active"
        table.append(
            (tenant, target, str(row.pending), str(row.dead), str(row.delivered), oldest, state)
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        click.echo("  ".join([*cells, line[-1]]))


async def _status(config: Config) -> list[TargetStatus]:
    store = open_store(config)
    await store.open()
    try:
        found = {row.target: row for row in await store.status()}
    finally:
        await store.close()
    rows = [
        found.pop(t.key) if t.key in found else TargetStatus(t.key, 0, 0, 0, 0, None, None, None)
        for t in config.targets
    ]
    return rows + list(found.values())  # targets no longer configured but with state left


def _status_dict(row: TargetStatus, now: float) -> dict[str, Any]:
    tenant, _, target = row.target.partition("/")
    return {
        "tenant": tenant,
        "target": target,
        "pending": row.pending,
        "pending_contacts": row.contacts,
        "dead": row.dead,
        "delivered": row.delivered,
        "oldest_pending_age_seconds": round(now - row.oldest_pending_at, 3)
        if row.oldest_pending_at
        else None,
        "paused": row.paused,
        "paused_reason": row.paused_reason,
        "paused_until": row.paused_until,
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@main.group("hubspot")
def hubspot_group() -> None:
    """HubSpot helpers."""


@hubspot_group.command("setup")
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
def hubspot_setup(config_path: Path | None, tenant: str, target_name: str) -> None:
    """Create the property group and the unique id property in the portal (safe to repeat)."""
    target = _target(_load(config_path), tenant, target_name)
    if target.settings.type != "hubspot":
        raise click.BadParameter(
            f"{target.key} is a {target.settings.type} target", param_hint="--target"
        )
    try:
        for line in asyncio.run(_hubspot_setup(target)):
            click.echo(line)
    except (DeliveryError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


async def _hubspot_setup(target: Target) -> list[str]:
    from adapters.hubspot import HubSpotAdapter

    adapter = HubSpotAdapter(
        target.settings, TargetContext(target.tenant, target.name, target.mapping)
    )
    try:
        return await adapter.setup()
    finally:
        await adapter.close()
