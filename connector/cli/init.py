"""``init``: a starter config for one tenant, with a fresh webhook token."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import click

from connector.cli.base import main
from connector.config import SLUG, load_config
from connector.errors import ConfigError

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"  # the shipped ones
TARGETS = ("csv", "hubspot", "rest")
CUSTOMER_ID = re.compile(r"^CUST-[A-Za-z0-9-]+$")

HEADER = """\
# mimeeq-connector config for tenant {tenant}, written by `mimeeq-connector init`.
# ${{VAR}} reads the environment; relative paths are against this file's folder. Every option:
# the README (Configuration) and config.example.yaml.

server:
  host: 127.0.0.1     # this machine only; 0.0.0.0 to take Mimeeq's webhooks (behind TLS)
  port: 8080

store:
  url: "sqlite:///data/{tenant}.db"

tenants:
  {tenant}:                      # webhooks go to /webhooks/{tenant}/<event>
    customer_id: {customer_id}
    auth:
      header: X-Mimeeq-Token    # Mimeeq's "HTTP Auth Header Name"
      values: ["${{{token_var}}}"]
    targets:
"""
CSV = """\
      sheet:
        type: csv
        path: data/{tenant}-contacts.csv
        mapping: {mappings}/csv-contacts.yaml
        companies_path: data/{tenant}-companies.csv
        company_mapping: {mappings}/csv-companies.yaml
"""
HUBSPOT = """\
      hubspot:
        type: hubspot
        access_token: ${{HUBSPOT_TOKEN}}   # a private app's token (README: HubSpot)
        mapping: {mappings}/hubspot-contacts.yaml
        company_mapping: {mappings}/hubspot-companies.yaml
        associate_company: true
        on_delete: archive            # archive | gdpr_delete | ignore
        rate_limit: {{requests: 100, per_seconds: 10}}   # 190 on Pro/Enterprise
"""
REST = """\
      crm:
        type: rest
        base_url: {rest_url}
        auth: {{type: bearer, token: "${{CRM_TOKEN}}"}}
        mapping: {mappings}/rest-contacts.yaml
        # Adapt the requests to the API (README: REST API); {{contact_id}} is the Mimeeq id.
        create:
          path: /contacts
          body: {{data: {{type: contacts, attributes: $record}}}}
          id_from_response: data.id
        update:
          path: /contacts/{{remote_id}}
          body: {{data: {{type: contacts, id: "{{remote_id}}", attributes: $record}}}}
        delete: {{path: "/contacts/{{remote_id}}"}}
        lookup:
          path: /contacts
          query: {{"filter[external_id]": "{{contact_id}}"}}
          id_from_response: data[0].id
"""
SECRETS = {"hubspot": "HUBSPOT_TOKEN", "rest": "CRM_TOKEN"}


def _targets(value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(t.strip().lower() for t in value.split(",") if t.strip()))
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown or not chosen:
        raise click.BadParameter(f"choose among {', '.join(TARGETS)} (comma-separated)")
    return chosen


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("config.yaml"),
    show_default=True,
    help="The file to write.",
)
@click.option("--tenant", prompt="Tenant name (used in the webhook URLs)", help="e.g. acme")
@click.option(
    "--customer-id", prompt="Mimeeq customer id (CUST-…)", help="The customerId of your payloads."
)
@click.option(
    "--targets",
    "target_list",
    prompt="Targets (comma-separated: csv, hubspot, rest)",
    default="csv",
    show_default=True,
)
@click.option("--rest-url", default=None, help="The REST API's base URL (with a rest target).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(
    config_path: Path,
    tenant: str,
    customer_id: str,
    target_list: str,
    rest_url: str | None,
    force: bool,
) -> None:
    """Write a starter config for one tenant, with a fresh webhook token (shown once)."""
    if not re.match(SLUG, tenant):
        raise click.BadParameter("lower-case letters, digits, - and _", param_hint="--tenant")
    if not CUSTOMER_ID.match(customer_id):
        raise click.BadParameter(
            "Mimeeq customer ids look like CUST-e3115ba6-…", param_hint="--customer-id"
        )
    targets = _targets(target_list)
    if "rest" in targets and not rest_url:
        rest_url = click.prompt("The REST API's base URL (https://…)")
    if config_path.exists() and not force:
        raise click.ClickException(f"{config_path} exists: --force to overwrite it")
    token_var = re.sub(r"[^A-Z0-9]", "_", tenant.upper()) + "_WEBHOOK_TOKEN"
    token = secrets.token_urlsafe(32)
    # The shipped mappings, as a path a reader recognises: relative beside them, else absolute.
    mappings = os.path.relpath(MAPPINGS, config_path.absolute().parent)
    if mappings.startswith(".."):
        mappings = str(MAPPINGS)
    values = dict(tenant=tenant, customer_id=customer_id, token_var=token_var,
                  mappings=mappings, rest_url=rest_url)  # fmt: skip
    text = HEADER.format(**values) + "".join(
        {"csv": CSV, "hubspot": HUBSPOT, "rest": REST}[t].format(**values) for t in targets
    )
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text, encoding="utf-8")
    needed = {token_var: token} | {SECRETS[t]: "…" for t in targets if t in SECRETS}
    with _environment(needed):  # what it reads from there, so that only the file is checked
        try:
            load_config(config_path)
        except ConfigError as exc:  # a value given here that the config refuses
            config_path.unlink()
            raise click.ClickException("\n".join(exc.problems)) from None

    command = f"mimeeq-connector {{}} --config {config_path}"
    click.echo(f"wrote {config_path}: tenant {tenant}, targets {', '.join(targets)}")
    click.echo("")
    click.echo("The webhook token, shown this once: set it as the value of the X-Mimeeq-Token")
    click.echo("header of each webhook in Mimeeq's admin, and in the environment:")
    click.echo(f"  export {token_var}='{token}'")
    for target in targets:
        if target in SECRETS:
            click.echo(f"  export {SECRETS[target]}=…    # the {target} target's token")
    click.echo("")
    click.echo("Next:")
    click.echo(f"  {command.format('check')}")
    if "hubspot" in targets:
        hubspot = command.format("hubspot setup") + f" --tenant {tenant} --target hubspot"
        click.echo(f"  {hubspot}")
    click.echo(f"  {command.format('serve')}")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment where nothing is set yet, for the time of a check."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            del os.environ[name]
