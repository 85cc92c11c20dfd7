"""``init``: a starter config that passes ``check`` as written, with a token shown once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from testkit.payloads import CUSTOMER


def init(tmp_path: Path, *args: str, given: str | None = None) -> tuple[int, str, Path]:
    path = tmp_path / "config.yaml"
    result = CliRunner().invoke(main, ["init", "--config", str(path), *args], input=given)
    return result.exit_code, result.output, path


def test_a_starter_config_for_every_target_passes_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, path = init(
        tmp_path, "--tenant", "acme", "--customer-id", CUSTOMER,
        "--targets", "csv,hubspot,rest", "--rest-url", "https://api.crm.example/v2",
    )  # fmt: skip
    assert code == 0, output
    (token,) = re.findall(r"export ACME_WEBHOOK_TOKEN='([^']+)'", output)
    assert len(token) >= 40
    text = path.read_text()
    assert token not in text and "${ACME_WEBHOOK_TOKEN}" in text  # the file holds no secret
    for line in ("check --config", "hubspot setup --config", "serve --config"):
        assert f"mimeeq-connector {line} {path}" in output
    monkeypatch.setenv("ACME_WEBHOOK_TOKEN", token)
    monkeypatch.setenv("HUBSPOT_TOKEN", "pat-eu1-test")
    monkeypatch.setenv("CRM_TOKEN", "crm-test")
    config = load_config(path)
    tenant = config.tenants["acme"]
    assert tenant.customer_id == CUSTOMER and tenant.tokens == (token.encode(),)
    assert set(tenant.targets) == {"sheet", "hubspot", "crm"}
    assert tenant.company_targets == ("acme/sheet", "acme/hubspot")
    assert config.server.host == "127.0.0.1"


def test_each_run_makes_a_new_token_and_never_overwrites(tmp_path: Path) -> None:
    args = ("--tenant", "acme", "--customer-id", CUSTOMER, "--targets", "csv")
    code, first, _ = init(tmp_path, *args)
    assert code == 0
    code, output, _ = init(tmp_path, *args)
    assert code == 1 and "exists: --force to overwrite it" in output
    code, second, _ = init(tmp_path, *args, "--force")
    assert code == 0
    tokens = [re.findall(r"_TOKEN='([^']+)'", out)[0] for out in (first, second)]
    assert tokens[0] != tokens[1]


def test_it_asks_for_what_is_not_given(tmp_path: Path) -> None:
    code, output, path = init(tmp_path, given=f"acme\n{CUSTOMER}\ncsv\n")
    assert code == 0, output
    assert "Tenant name" in output and "Mimeeq customer id" in output
    assert "acme:" in path.read_text()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--tenant", "Acme Inc", "--customer-id", CUSTOMER), "--tenant"),
        (("--tenant", "acme", "--customer-id", "12345"), "CUST-"),
        (("--tenant", "acme", "--customer-id", CUSTOMER, "--targets", "salesforce"), "choose"),
    ],
)
def test_bad_answers_are_refused_and_nothing_is_written(
    tmp_path: Path, args: tuple[str, ...], problem: str
) -> None:
    code, output, path = init(tmp_path, *args, given="csv\n")
    assert code == 2 and problem in output
    assert not path.exists()
