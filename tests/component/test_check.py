"""`check` lists every problem at once (a newcomer's first hour), and read-only commands load only
what they need."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.checks import SHAPES, path_checker
from connector.cli import main
from connector.mapping import load_mapping
from testkit.payloads import FAKE_MAPPING, ROOT, write_config


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def check(config: Path) -> tuple[int, list[str]]:
    code, _, err = run("check", "--config", str(config))
    return code, err.splitlines()


def test_the_shipped_example_passes() -> None:
    code, out, err = run("check", "--config", str(ROOT / "config.example.yaml"))
    assert (code, err) == (0, ""), err
    assert "OK" in out


@pytest.mark.parametrize("path", sorted((ROOT / "mappings").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_mapping_matches_its_payload(path: Path) -> None:
    key = "company_mapping" if "compan" in path.name else "mapping"
    load_mapping(path, path.parent, check_path=path_checker(SHAPES[key]))  # raises on a problem


def test_three_typos_in_one_mapping_are_reported_in_one_run_with_lines(tmp_path: Path) -> None:
    (tmp_path / "crm.yaml").write_text(
        "fields:\n"
        "  first: fristName\n"  # 2: a field the payload never has
        "  ok: lastName\n"
        "  tags: {from: tags, jion: ';'}\n"  # 4: an unknown option
        "  bad: 'emails[?'\n"  # 5: invalid JMESPath
    )
    (tmp_path / "other.yaml").write_text("fields:\n  zip: addressDetails.zip\n")
    config = write_config(
        tmp_path,
        {
            "a": {"type": "fake", "mapping": "crm.yaml"},
            "b": {"type": "fake", "mapping": "other.yaml", "batch_size": 0},
        },
    )
    code, lines = check(config)
    assert code == 1
    assert any(
        line.startswith("error: crm.yaml:2: fields.first: the contact payload has no field")
        and "did you mean 'firstName'?" in line
        for line in lines
    )
    assert any(
        line.startswith("error: crm.yaml:4: fields.tags: unknown option 'jion'") for line in lines
    )
    assert any(line.startswith("error: crm.yaml:5: fields.bad: invalid JMESPath") for line in lines)
    assert any("other.yaml:2: fields.zip:" in line and "'zipCode'?" in line for line in lines)
    assert any(".targets.b.batch_size:" in line for line in lines)  # config problems too
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("fristName", "the contact payload has no field 'fristName'; did you mean 'firstName'?"),
        ("addressDetails.zip", "addressDetails has no field 'zip'; did you mean 'zipCode'?"),
        ("emails[0].address", "emails[] has no field 'address'"),
        ("emails.mail", "emails is a list: use emails[0].mail or emails[].mail"),
        ("phoneNumbers[?typ=='WORK'].number", "phoneNumbers[] has no field 'typ'"),
        ("addressDetails.{city: cty}", "addressDetails has no field 'cty'"),
        ("firstName.x", "firstName is a single value"),
    ],
)
def test_paths_that_never_match(tmp_path: Path, expression: str, problem: str) -> None:
    mapping = {"fields": {"f": {"from": expression, "trim": True}}}
    code, lines = check(write_config(tmp_path, {"a": {"type": "fake", "mapping": mapping}}))
    assert code == 1
    assert len(lines) == 1 and problem in lines[0], lines
    assert re.match(r"error: \S+config\.yaml:\d+: tenants\.demo\.targets\.a\.mapping", lines[0])


@pytest.mark.parametrize(
    "expression",
    [
        "(emails[?type=='WORK'].mail | [0]) || emails[0].mail",
        "phoneNumbers[?type!='MOBILE'].number | [0]",
        "length(emails)",
        "sort_by(emails, &mail)[0].mail",
        "join(', ', tags)",
        "emails[].mail",
        "@.firstName",
        "keys(@)",
        "addressDetails.{street: address, postal_code: zipCode}",
        'not_null(firstName, lastName, `"x"`)',
        "emails[?contains(mail, '@')].type",
        "tags[1:]",
    ],
)
def test_paths_that_may_match_are_not_reported(tmp_path: Path, expression: str) -> None:
    mapping = {"fields": {"f": expression}}
    code, lines = check(write_config(tmp_path, {"a": {"type": "fake", "mapping": mapping}}))
    assert (code, lines) == (0, [])


def test_company_mappings_are_checked_against_the_company_payload(tmp_path: Path) -> None:
    targets = {
        "a": {
            "type": "fake",
            "mapping": {"fields": {"city": "addressDetails.city"}},
            "company_mapping": {"fields": {"city": "address.city", "zip": "address.zipCode"}},
        }
    }
    code, lines = check(write_config(tmp_path, targets))
    assert code == 1
    assert len(lines) == 1
    assert "targets.a.company_mapping.fields.zip: address has no field 'zipCode'" in lines[0]


def test_a_missing_mapping_file_says_where_it_was_looked_for(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a": {"type": "fake", "mapping": "mappings/nope.yaml"}})
    code, lines = check(config)
    assert code == 1
    line = config.read_text().splitlines().index("        mapping: mappings/nope.yaml") + 1
    assert lines == [
        f"error: {config}:{line}: tenants.demo.targets.a.mapping: mapping file not found: "
        f"looked for {tmp_path / 'mappings' / 'nope.yaml'}"
    ]


def test_a_missing_variable_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    targets = {
        "hs": {"type": "hubspot", "access_token": "${NOT_SET_HERE}", "mapping": FAKE_MAPPING}
    }
    code, lines = check(write_config(tmp_path, targets))
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].endswith("tenants.demo.targets.hs.access_token: environment variable "
                             "NOT_SET_HERE is not set")  # fmt: skip


def test_a_missing_webhook_token_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    tenants = {
        "demo": {
            "customer_id": "CUST-1",
            "auth": {"values": ["${NOT_SET_HERE}"]},
            "targets": {"a": {"type": "fake", "mapping": FAKE_MAPPING}},
        }
    }
    code, lines = check(write_config(tmp_path, tenants=tenants))
    assert code == 1
    assert len(lines) == 1 and "NOT_SET_HERE is not set" in lines[0], lines


def test_empty_secrets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_TOKEN", "")
    targets = {
        "hs": {"type": "hubspot", "access_token": "${EMPTY_TOKEN}", "mapping": FAKE_MAPPING},
        "crm": {
            "type": "rest",
            "base_url": "https://crm.example",
            "auth": {"type": "bearer", "token": ""},
            "mapping": FAKE_MAPPING,
            "upsert": {"method": "PUT", "path": "/contacts/{contact_id}"},
        },
    }
    tenants = {
        "demo": {
            "customer_id": "CUST-1",
            "auth": {"values": ["${EMPTY_TOKEN}"]},
            "targets": targets,
        }
    }
    code, lines = check(write_config(tmp_path, tenants=tenants))
    assert code == 1
    hint = "is empty: a secret must be set (environment variable EMPTY_TOKEN is set but empty)"
    assert any(line.endswith(f"tenants.demo.targets.hs.access_token: {hint}") for line in lines)
    assert any(line.endswith(f"tenants.demo.auth.values.0: {hint}") for line in lines)
    assert any(
        line.endswith("tenants.demo.targets.crm.auth.token: is empty: a secret must be set")
        for line in lines
    ), lines
    assert len(lines) == 3, lines


def test_read_only_commands_work_with_an_unset_target_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    targets = {
        "hs": {"type": "hubspot", "access_token": "${NOT_SET_HERE}", "mapping": "nope.yaml"},
        "a": {"type": "fake", "mapping": FAKE_MAPPING},
    }
    config = str(write_config(tmp_path, targets))
    code, out, err = run("migrate", "--config", config)
    assert code == 0, err
    code, out, err = run("status", "--config", config)
    assert code == 0, err
    assert "hs" in out and "active" in out
    code, out, err = run("dlq", "list", "--config", config, "--tenant", "demo", "--target", "hs")
    assert (code, out.strip()) == (0, "no dead letters"), err
    code, out, err = run("trace", "CONT-nobody", "--config", config)
    assert code == 1 and "nothing known about CONT-nobody" in err  # the store was read
    code, _, err = run("check", "--config", config)
    assert code == 1
    assert "NOT_SET_HERE is not set" in err and "nope.yaml" in err


def test_read_only_commands_still_validate_the_store(tmp_path: Path) -> None:
    config = write_config(tmp_path, store={"url": "mysql://nowhere", "colour": "red"})
    code, _, err = run("status", "--config", str(config))
    assert code == 1
    assert "store.url:" in err and "store.colour: unknown key" in err
