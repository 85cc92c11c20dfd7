"""Running the service and looking at it: serve, check, map, status, pause, resume, hubspot."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
from pydantic import ValidationError

from connector.adapter import Record, RequestPreview, object_type_of
from connector.cli.base import (
    config_option,
    find_target,
    json_option,
    load,
    main,
    opened_store,
    print_json,
    table,
)
from connector.config import Config, Target, default_config_path, load_config
from connector.errors import ConfigError, DeliveryError, RecordMappingError
from connector.keys import split_key
from connector.logs import configure_logging, get_logger
from connector.operations import age, operator_reason, set_pause, status_dict, status_rows
from connector.payloads import EVENTS, PAYLOAD_SCHEMAS, contact_links
from connector.receiver import describe
from connector.runtime import server_runner
from connector.store.base import TargetStatus


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
    from connector.service import Service, StartupError

    configure_logging(log_format, log_level)
    # Whatever stops it is one log line (JSON when the log is), never a bare traceback.
    log = get_logger("connector.serve")
    try:
        config = load_config(config_path or default_config_path())
        with server_runner() as runner:
            runner.run(Service(config).run(host, port))
    except ConfigError as exc:
        log.error("cannot start", problems=exc.problems)
        sys.exit(1)
    except StartupError as exc:
        log.error("cannot start", error=str(exc))
        sys.exit(1)
    except Exception:  # a bug: its traceback is a field of the line
        log.exception("stopped by an unexpected error")
        sys.exit(1)


@main.command()
@config_option
@click.option(
    "--online",
    is_flag=True,
    help="Also check each HubSpot target's mapped properties against its portal.",
)
def check(config_path: Path | None, online: bool) -> None:
    """Validate the config and every mapping it names, listing every problem at once; each
    mapping path is also checked against the Mimeeq payload it reads."""
    config = load(config_path, need="check")
    targets = config.targets
    click.echo(
        f"{config.path}: OK ({len(config.tenants)} tenant(s), {len(targets)} target(s): "
        f"{', '.join(t.key for t in targets)})"
    )
    if online:
        from connector.cli.online import check_online  # it imports this module's hubspot group

        checked = [t for t in targets if t.settings.type == "hubspot"]
        problems = 0
        for target in checked:
            click.echo(f"\n{target.key} against its HubSpot portal:")
            problems += check_online(config, target)
        if not checked:
            click.echo("no HubSpot target: nothing to check online")
        if problems:
            sys.exit(1)


@main.command("map")
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
@click.option(
    "--event",
    type=click.Choice(sorted(EVENTS)),
    default="contact-updated",
    show_default=True,
)
@click.option(
    "--request",
    "as_request",
    is_flag=True,
    help="Print the request(s) the target would send for it as a first write instead.",
)
@json_option
@click.argument("payload_file", type=click.File("rb"))
def map_command(
    config_path: Path | None,
    tenant: str,
    target_name: str,
    event: str,
    as_request: bool,
    as_json: bool,
    payload_file: Any,
) -> None:
    """Print the mapped record of a payload (a dry run: nothing is sent). A company event
    (``--event company-updated``) is mapped with the target's company mapping.

    With --request, the requests the target would make for it as a first write (every field
    written; ids only known at run time as placeholders), secrets masked: nothing is sent."""
    target = find_target(load(config_path), tenant, target_name)
    mapping = target.mapping_for(object_type_of(event))
    if mapping is None:
        raise click.ClickException(f"{target.key} takes no companies: it has no company_mapping")
    try:
        payload = orjson.loads(payload_file.read())
        PAYLOAD_SCHEMAS[event].validate_python(payload)
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"payload is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise click.ClickException(f"invalid {event} payload: {describe(exc)[1]}") from None
    try:
        fields = mapping.apply(payload)
    except RecordMappingError as exc:
        raise click.ClickException(f"{mapping.source}: {exc}") from None
    if not as_request:
        print_json(fields)
        return
    try:
        previews = asyncio.run(_describe_requests(target, _first_write(event, payload, fields)))
    except NotImplementedError:
        kind = target.settings.type
        message = f"{target.key}: a {kind} target cannot show its requests"
        raise click.ClickException(message) from None
    if as_json:
        print_json([_preview_dict(p) for p in previews])
    else:
        click.echo("\n\n".join(_preview_text(p) for p in previews))


def _first_write(event: str, payload: dict[str, Any], fields: dict[str, Any]) -> Record:
    """The record the worker would push for this payload with no state (as delivery._record)."""
    object_type = object_type_of(event)
    company_id, email = contact_links(payload, object_type)
    return Record(
        contact_id=str(payload["id"]),
        op=EVENTS[event],
        event=event,
        event_id="preview",
        fields=fields,
        payload=payload,
        remote_id=None,
        attempt=1,
        company_id=company_id,
        email=email,
        object_type=object_type,
    )


async def _describe_requests(target: Target, record: Record) -> list[RequestPreview]:
    # In a loop: adapters may make loop-bound things (rate limiters); nothing is opened.
    adapter = target.adapter(target.settings, target.context())
    try:
        return adapter.describe_request(record)
    finally:
        await adapter.close()


def _preview_dict(preview: RequestPreview) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(preview).items() if v is not None and v != {}}


def _preview_text(p: RequestPreview) -> str:
    lines = [f"# {p.note}"] if p.note else []
    if p.method:
        lines += [f"{p.method} {p.url}", *(f"{k}: {v}" for k, v in p.headers.items())]
        if p.body is not None:
            lines += ["", orjson.dumps(p.body, option=orjson.OPT_INDENT_2).decode()]
    if p.path:
        lines.append(f"file: {p.path}")
        if p.text is not None:
            lines += ["", p.text.rstrip("\r\n")]
    return "\n".join(lines)


@main.command()
@config_option
@json_option
def status(config_path: Path | None, as_json: bool) -> None:
    """Queue state per tenant × target: pending, dead, delivered, unchanged (no call needed),
    oldest pending, paused."""
    config = load(config_path, need="store")
    rows = asyncio.run(_status(config))
    now = time.time()
    if as_json:
        print_json([status_dict(row, now) for row in rows])
        return
    lines = [
        ("TENANT", "TARGET", "PENDING", "DEAD", "DELIVERED", "UNCHANGED", "OLDEST PENDING",
         "STATE")
    ]  # fmt: skip
    for row in rows:
        tenant, target = split_key(row.target)
        oldest = age(now - row.oldest_pending_at) if row.oldest_pending_at else "-"
        state = f"paused: {row.paused_reason}" if row.paused else "active"
        pending, dead, delivered = str(row.pending), str(row.dead), str(row.delivered)
        lines.append((tenant, target, pending, dead, delivered, str(row.unchanged), oldest, state))
    table(lines)


async def _status(config: Config) -> list[TargetStatus]:
    async with opened_store(config) as store:
        return await status_rows(config, store)


@main.group("hubspot")
def hubspot_group() -> None:
    """HubSpot helpers."""


@hubspot_group.command("setup")
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
def hubspot_setup(config_path: Path | None, tenant: str, target_name: str) -> None:
    """Create the property group and the properties the connector needs (safe to repeat).

    Each step is printed as it happens: after a failure (exit 1, HubSpot's message) the lines
    above it say what was already done.
    """
    target = find_target(load(config_path), tenant, target_name)
    if target.settings.type != "hubspot":
        raise click.BadParameter(
            f"{target.key} is a {target.settings.type} target", param_hint="--target"
        )
    try:
        asyncio.run(_hubspot_setup(target, click.echo))
    except (DeliveryError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


async def _hubspot_setup(target: Target, say: Callable[[str], None]) -> None:
    from adapters.hubspot import HubSpotAdapter, HubSpotSettings

    settings = target.settings
    assert isinstance(settings, HubSpotSettings)  # the caller checked the target's type
    adapter = HubSpotAdapter(settings, target.context())
    try:
        await adapter.setup(say)
    finally:
        await adapter.close()


@main.command()
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
@click.option("--reason", default="maintenance", show_default=True, help="Shown in status.")
def pause(config_path: Path | None, tenant: str, target_name: str, reason: str) -> None:
    """Stop delivering to a target (events keep queueing) until `resume`."""
    config = load(config_path)
    key = find_target(config, tenant, target_name).key
    asyncio.run(_set_pause(config, key, operator_reason(reason)))
    click.echo(f"{key}: paused (a running server stops within seconds; events keep queueing)")


@main.command()
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
def resume(config_path: Path | None, tenant: str, target_name: str) -> None:
    """Resume a target paused by an operator or by the target itself (auth, daily limit)."""
    config = load(config_path)
    key = find_target(config, tenant, target_name).key
    was = asyncio.run(_set_pause(config, key, None))
    click.echo(f"{key}: resumed (it was paused: {was})" if was else f"{key}: was not paused")


async def _set_pause(config: Config, key: str, reason: str | None) -> str | None:
    """Pause (a reason) or resume (None) the target; return why it was paused, if it was."""
    async with opened_store(config) as store:
        return await set_pause(store, key, reason)


@main.command()
@config_option
def migrate(config_path: Path | None) -> None:
    """Apply pending schema migrations to the store and report its version.

    `serve` does it at start unless `store.migrate_on_start` is false; safe while replicas run.
    """
    import asyncpg

    config = load(config_path, need="store")
    try:
        before, after = asyncio.run(_migrate(config))
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    except (OSError, asyncpg.PostgresError) as exc:  # neither quotes a password
        click.echo(f"error: store: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    if before == after:
        click.echo(f"store schema is up to date (version {after})")
    else:
        click.echo(f"store schema migrated from version {before} to {after}")


async def _migrate(config: Config) -> tuple[int, int]:
    from connector.store import open_store

    store = open_store(config, schema="as-is")
    await store.open()
    try:
        return await store.migrate()
    finally:
        await store.close()
