"""The command line: check, map, status (serve is covered end to end)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from connector.service import Service
from testkit.payloads import DATA, FAKE_MAPPING, ROOT, contact, write_config
from testkit.service import fake_adapter, send, status_reaches
from testkit.waiting import eventually


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_accepts_the_shipped_example_config() -> None:
    code, out, _ = run("check", "--config", str(ROOT / "config.example.yaml"))
    assert code == 0, out
    assert "OK" in out and "demo/sheet" in out


def test_check_reports_a_bad_expression_and_an_unknown_option_with_file_and_field(
    tmp_path: Path,
) -> None:
    (tmp_path / "crm.yaml").write_text(
        "fields:\n  email: \"emails[?type=='WORK'.mail\"\n  tags: {from: tags, jion: ';'}\n"
    )
    (tmp_path / "other.yaml").write_text("fields:\n  tags: {from: tags, jion: ';'}\n")
    config = write_config(
        tmp_path,
        {
            "a": {"type": "fake", "mapping": "crm.yaml"},
            "b": {"type": "fake", "mapping": "other.yaml"},
        },
    )
    code, _, err = run("check", "--config", str(config))
    assert code == 1
    assert "crm.yaml:2: fields.email: invalid JMESPath expression" in err
    assert "other.yaml:2: fields.tags: unknown option 'jion'" in err


def test_check_reports_config_problems_with_file_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = write_config(
        tmp_path,
        {
            "crm": {"type": "fake", "mapping": FAKE_MAPPING, "batch_size": 0, "colour": "red"},
            "other": {"type": "nosuchcrm", "mapping": FAKE_MAPPING},
            "secret": {
                "type": "fake",
                "mapping": FAKE_MAPPING,
                "fail_first": "${NOT_SET_ANYWHERE}",
            },
        },
    )
    code, _, err = run("check", "--config", str(config))
    assert code == 1
    lines = err.splitlines()
    assert any("tenants.demo.targets.crm.batch_size:" in line for line in lines)
    assert any("tenants.demo.targets.crm.colour: unknown key" in line for line in lines)
    assert any(
        "tenants.demo.targets.other.type: unknown target type 'nosuchcrm'" in line for line in lines
    )
    assert any("environment variable NOT_SET_ANYWHERE is not set" in line for line in lines)
    # Line numbers point into the file.
    text = config.read_text().splitlines()
    batch_line = next(line for line in lines if ".batch_size:" in line)
    number = int(batch_line.split("config.yaml:")[1].split(":")[0])
    assert "batch_size" in text[number - 1]


def test_check_never_prints_secret_values(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        tenants={
            "demo": {
                "customer_id": "not-a-customer",
                "auth": {"values": ["short-secret"]},
                "targets": {"x": {"type": "fake", "mapping": FAKE_MAPPING}},
            }
        },
    )
    code, _, err = run("check", "--config", str(config))
    assert code == 1
    assert "short-secret" not in err
    assert "tenants.demo.auth.values.0: use at least 16 characters" in err
    assert "tenants.demo.customer_id" in err


def test_config_interpolation_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHEET_NAME", "contacts.csv")
    monkeypatch.setenv("EMPTY_VALUE", "")
    config_path = write_config(
        tmp_path,
        {
            "sheet": {
                "type": "csv",
                "path": "out/${SHEET_NAME}",
                "mapping": FAKE_MAPPING,
                "key_column": "${EMPTY_VALUE:-id}",
                "delimiter": "$$",
            }
        },
    )
    config = load_config(config_path)
    settings = config.tenants["demo"].targets["sheet"].settings
    assert settings.path == tmp_path / "out" / "contacts.csv"  # type: ignore[attr-defined]
    assert settings.key_column == "id"  # type: ignore[attr-defined]
    assert settings.delimiter == "$"  # type: ignore[attr-defined]


def test_map_prints_the_mapped_record() -> None:
    code, out, err = run(
        "map",
        "--config",
        str(ROOT / "config.example.yaml"),
        "--tenant",
        "demo",
        "--target",
        "sheet",
        "--event",
        "contact-updated",
        str(DATA / "contact-updated.json"),
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["first_name"] == "John" and record["position"] == "Manager"
    assert record["email"] == "john.doe@example.com" and record["tags"] == "tag1; tag2"
    assert list(record)[:2] == ["first_name", "last_name"]


def test_map_reads_stdin_and_explains_a_bad_payload(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(
        main,
        ["map", "--config", str(config), "--tenant", "demo", "--target", "fake", "-"],
        input='{"id": "CONT-1", "customerId": "CUST-1", "emails": "x"}',
    )
    assert result.exit_code == 1
    assert "invalid contact-updated payload: emails:" in result.stderr


def test_map_names_an_unknown_target(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    code, _, err = run(
        "map",
        "--config",
        str(config),
        "--tenant",
        "demo",
        "--target",
        "nope",
        str(DATA / "contact-created.json"),
    )
    assert code == 2 and "no target 'nope' (known: fake)" in err


def test_status_lists_every_configured_target(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    code, out, _ = run("status", "--config", str(config), "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "tenant": "demo",
            "target": "fake",
            "pending": 0,
            "pending_contacts": 0,
            "dead": 0,
            "delivered": 0,
            "unchanged": 0,
            "oldest_pending_age_seconds": None,
            "paused": False,
            "paused_reason": None,
            "paused_until": None,
        }
    ]
    code, out, _ = run("status", "--config", str(config))
    assert out.splitlines()[0].split()[:5] == ["TENANT", "TARGET", "PENDING", "DEAD", "DELIVERED"]
    assert out.splitlines()[1].split() == ["demo", "fake", "0", "0", "0", "0", "-", "active"]


async def test_status_counts_what_the_service_did(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    service = Service(load_config(config_path))
    await service.start()
    try:
        fake = fake_adapter(service)
        fake.gate, fake.hold = asyncio.Event(), {contact(2)["id"]}
        await send(service, "contact-created", contact(1))
        await status_reaches(service, delivered=1, pending=0)
        await send(service, "contact-created", contact(2))
        await eventually(lambda: bool(fake.in_flight))
        _, out, _ = await asyncio.to_thread(run, "status", "--config", str(config_path), "--json")
        (row,) = json.loads(out)
        assert (row["pending"], row["delivered"]) == (1, 1)
        assert row["oldest_pending_age_seconds"] >= 0
        fake.gate.set()
    finally:
        await service.stop()


def test_python_dash_m_runs_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("serve", "check", "map", "status"):
        assert command in result.stdout
