"""``hubspot check``: a target's mappings against its HubSpot portal (adapters.hubspot.check)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from connector.cli.base import config_option, find_target, load, table
from connector.cli.service import hubspot_group
from connector.config import Config, Target
from connector.errors import DeliveryError, RecordMappingError
from connector.mapping import FieldMapping, field_options

if TYPE_CHECKING:
    from adapters.hubspot import Finding

# The sample payloads checked by default: Mimeeq's examples, in a source checkout.
SAMPLES = Path(__file__).resolve().parents[2] / "tests" / "data"

Values = dict[str, list[tuple[Any, str]]]  # property -> (a value it can get, where from)


@hubspot_group.command("check")
@config_option
@click.option("--tenant", required=True)
@click.option("--target", "target_name", required=True)
@click.argument("payload_files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def hubspot_check(
    config_path: Path | None, tenant: str, target_name: str, payload_files: tuple[Path, ...]
) -> None:
    """Check the mapped properties against the HubSpot portal: missing, read-only, of a type
    the values do not fit, or given a value that is not one of their options.

    The values checked are those the mapping can produce: its map tables, defaults and constant
    values, and the sample payloads mapped (tests/data, and PAYLOAD_FILES: a company payload when
    the file name starts with "company" or its id with COMP-). Exit 1 on any problem.
    """
    config = load(config_path)
    target = find_target(config, tenant, target_name)
    if target.settings.type != "hubspot":
        raise click.BadParameter(
            f"{target.key} is a {target.settings.type} target", param_hint="--target"
        )
    if check_online(config, target, payload_files):
        sys.exit(1)


def check_online(config: Config, target: Target, payload_files: Iterable[Path] = ()) -> int:
    """Print a HubSpot target's findings; return how many problems (``check --online`` too)."""
    # A deleted contact's payload is never mapped: its record would only show the defaults.
    samples = [p for p in sorted(SAMPLES.glob("*.json")) if not p.stem.endswith("-deleted")]
    payloads = [(path, _read(path)) for path in [*samples, *payload_files]]
    values = {"contacts": _values(config, target, "contact", payloads)}
    if target.company_mapping is not None:
        values["companies"] = _values(config, target, "company", payloads)
    try:
        findings = asyncio.run(_check(target, values))
    except DeliveryError as exc:  # a refused token, an unreachable portal: one line
        raise click.ClickException(str(exc)) from None
    rows = [(f.object_type, f.name, f.problem or "OK") for f in findings]
    table([("OBJECT", "PROPERTY", "PROBLEM"), *rows])
    problems = sum(1 for f in findings if f.problem)
    if problems:
        click.echo(f"{target.key}: {problems} problem(s)", err=True)
    return problems


async def _check(target: Target, values: dict[str, Values]) -> list[Finding]:
    from adapters.hubspot import HubSpotAdapter, HubSpotSettings

    settings = target.settings
    assert isinstance(settings, HubSpotSettings)  # the caller checked the target's type
    adapter = HubSpotAdapter(settings, target.context())
    try:
        return await adapter.check(values)
    finally:
        await adapter.close()


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read a JSON payload: {exc}") from None
    if not isinstance(payload, dict):
        raise click.ClickException(f"{path}: a payload is a JSON object")
    return payload


def _values(
    config: Config, target: Target, kind: str, payloads: Iterable[tuple[Path, dict[str, Any]]]
) -> Values:
    """The values each mapped property can get: from the mapping itself, then the samples."""
    mapping = target.mapping_for("company" if kind == "company" else "contact")
    assert mapping is not None  # the caller asks for companies only when they are mapped
    spec = target.settings.company_mapping if kind == "company" else target.settings.mapping
    assert spec is not None
    values: Values = {name: [] for name in mapping.fields}
    for name, options in field_options(spec, config.base_dir).items():
        found = values.setdefault(name, [])
        found += [(v, "map") for v in (options.get("map") or {}).values()]
        found += [(options[key], key) for key in ("default", "value") if key in options]
    for path, payload in payloads:
        company = path.name.startswith("company") or str(payload.get("id")).startswith("COMP-")
        if company == (kind == "company"):
            for name, value in _apply(mapping, path, payload).items():
                values.setdefault(name, []).append((value, path.name))
    return values


def _apply(mapping: FieldMapping, path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        return mapping.apply(payload)
    except RecordMappingError as exc:
        raise click.ClickException(f"{path}: {mapping.source}: {exc}") from None
