"""`map --request`: the requests a target would make for a payload, shown and never sent."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from click.testing import CliRunner

from connector.cli import main
from testkit.payloads import (
    FAKE_COMPANY_MAPPING,
    FAKE_MAPPING,
    company,
    company_id,
    contact,
    example,
    write_config,
)

CONTACT = contact(1)["id"]
BASE = "https://crm.example.test/v1"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here fails if anything is sent: by httpx, or through any socket at all."""

    def refuse(*args: Any) -> None:
        raise AssertionError(f"map --request opened a connection: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with respx.mock(assert_all_called=False) as router:
        router.route().respond(500)
        yield
        assert not router.calls, "map --request sent a request"  # before the exit resets them


def requests(
    tmp_path: Path, target: dict[str, Any], payload: dict[str, Any], *args: str
) -> list[dict[str, Any]]:
    config = write_config(tmp_path, {"t": target})
    code, out = invoke(config, tmp_path, payload, "--json", *args)
    assert code == 0, out
    found: list[dict[str, Any]] = json.loads(out)
    return found


def invoke(
    config: Path, tmp_path: Path, payload: dict[str, Any], *args: str, target: str = "t"
) -> tuple[int, str]:
    file = tmp_path / "payload.json"
    file.write_text(json.dumps(payload))
    command = ["map", "--config", str(config), "--tenant", "demo", "--target", target, "--request"]
    result = CliRunner().invoke(main, [*command, *args, str(file)])
    crash = "" if isinstance(result.exception, SystemExit | None) else repr(result.exception)
    return result.exit_code, result.stdout + result.stderr + crash


def hubspot(**options: Any) -> dict[str, Any]:
    mapping = {"fields": {**FAKE_MAPPING["fields"], "mimeeq_tags": "tags"}}
    return {"type": "hubspot", "access_token": "hs-secret-token", "mapping": mapping, **options}


# --- HubSpot -------------------------------------------------------------------------------------


def test_hubspot_contact_upsert_is_the_batch_call_the_adapter_makes(tmp_path: Path) -> None:
    target = hubspot(auto_options=[])
    [upsert] = requests(tmp_path, target, contact(1, tags=["vip", "a;b", "vip"]))
    assert upsert["method"] == "POST"
    assert upsert["url"] == "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert"
    assert upsert["headers"]["Authorization"] == "Bearer ***"
    assert upsert["body"] == {
        "inputs": [
            {
                "id": CONTACT,
                "idProperty": "mimeeq_contact_id",
                "properties": {
                    "first": "First1",
                    "last": "Doe",
                    "email": "person1@example.com",
                    "mimeeq_tags": "vip;a,b",  # hubspot_value: a multiple checkbox, cleaned
                    "mimeeq_contact_id": CONTACT,
                },
            }
        ]
    }


def test_hubspot_reads_the_options_first_and_keys_on_email_when_told(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"t": hubspot(id_property="email")})
    code, out = invoke(config, tmp_path, contact(1, tags=["vip"]))
    assert code == 0, out
    assert "hs-secret-token" not in out
    assert "GET https://api.hubapi.com/crm/v3/properties/contacts/mimeeq_tags\n" in out
    upsert = out.split("POST https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert\n")[1]
    body = json.loads(upsert[upsert.index("\n\n") :])
    [item] = body["inputs"]
    assert item["id"] == "person1@example.com" and item["idProperty"] == "email"
    assert "mimeeq_contact_id" not in item["properties"]


def test_hubspot_company_upsert(tmp_path: Path) -> None:
    target = hubspot(company_mapping=FAKE_COMPANY_MAPPING, auto_options=[])
    [upsert] = requests(tmp_path, target, company(2), "--event", "company-updated")
    assert upsert["url"] == "https://api.hubapi.com/crm/v3/objects/companies/batch/upsert"
    [item] = upsert["body"]["inputs"]
    assert item["id"] == company_id(2) and item["idProperty"] == "mimeeq_company_id"
    assert item["properties"] == {
        "name": "Company 2",
        "city": example("company-created")["address"]["city"],
        "mimeeq_company_id": company_id(2),
    }


def test_hubspot_delete_shows_the_lookup_and_archive_with_a_placeholder(tmp_path: Path) -> None:
    deleted = example("contact-deleted")
    read, archive = requests(tmp_path, hubspot(), deleted, "--event", "contact-deleted")
    assert read["url"].endswith("/crm/v3/objects/contacts/batch/read")
    assert read["body"]["idProperty"] == "mimeeq_contact_id"
    assert read["body"]["inputs"] == [{"id": deleted["id"]}]
    assert archive["url"].endswith("/crm/v3/objects/contacts/batch/archive")
    assert archive["body"] == {"inputs": [{"id": "{hubspot_id}"}]}
    assert "{hubspot_id}" in archive["note"]


def test_hubspot_gdpr_delete_and_ignore(tmp_path: Path) -> None:
    deleted = example("contact-deleted")
    target = hubspot(on_delete="gdpr_delete", id_property="email")
    [purge] = requests(tmp_path, target, deleted, "--event", "contact-deleted")
    assert purge["url"] == "https://api.hubapi.com/crm/v3/objects/contacts/gdpr-delete"
    assert purge["body"] == {"objectId": "john.doe@example.com", "idProperty": "email"}
    [nothing] = requests(
        tmp_path, hubspot(on_delete="ignore"), deleted, "--event", "contact-deleted"
    )
    assert nothing == {"note": "on_delete is ignore: left in HubSpot"}


# --- REST ----------------------------------------------------------------------------------------


def test_rest_create_with_a_masked_token_and_an_encoded_path(tmp_path: Path) -> None:
    target = {
        "type": "rest",
        "base_url": BASE,
        "auth": {"type": "bearer", "token": "rest-secret-token"},
        "headers": {"X-Api-Key": "header-secret"},
        "mapping": FAKE_MAPPING,
        "create": {"path": "/people/{fields.email}", "id_from_response": "id"},
        "update": {"path": "/people/{remote_id}"},
    }
    config = write_config(tmp_path, {"t": target})
    payload = contact(1, emails=[{"type": "WORK", "mail": "a+b/c@example.com"}])
    code, out = invoke(config, tmp_path, payload, "--event", "contact-created")
    assert code == 0, out
    assert "secret" not in out
    first, *_ = out.split("\n\n")
    lines = first.splitlines()
    assert lines[0] == f"POST {BASE}/people/a%2Bb%2Fc%40example.com"
    assert "Authorization: Bearer ***" in lines and "X-Api-Key: ***" in lines
    assert "Idempotency-Key: preview" in lines and "Content-Type: application/json" in lines
    assert json.loads(out.split("\n\n", 1)[1]) == {
        "first": "First1",
        "last": "Doe",
        "email": "a+b/c@example.com",
    }


def test_rest_update_first_for_an_update_event_then_create_if_missing(tmp_path: Path) -> None:
    target = {
        "type": "rest",
        "base_url": BASE,
        "mapping": FAKE_MAPPING,
        "create": {"path": "/people"},
        "update": {"path": "/people/{contact_id}"},
    }
    update, create = requests(tmp_path, target, contact(1), "--event", "contact-updated")
    assert (update["method"], update["url"]) == ("PATCH", f"{BASE}/people/{CONTACT}")
    assert update["body"] == {"first": "First1", "last": "Doe", "email": "person1@example.com"}
    assert (create["method"], create["url"]) == ("POST", f"{BASE}/people")
    assert create["headers"]["Idempotency-Key"] == "preview:create"
    assert "404" in create["note"]


def test_rest_lookup_before_create_and_delete(tmp_path: Path) -> None:
    target = {
        "type": "rest",
        "base_url": BASE,
        "mapping": FAKE_MAPPING,
        "lookup": {
            "path": "/people",
            "query": {"email": "{fields.email}"},
            "id_from_response": "id",
        },
        "create": {"path": "/people"},
        "update": {"path": "/people/{remote_id}"},
        "delete": {"path": "/people/{remote_id}"},
    }
    lookup, create = requests(tmp_path, target, contact(1))
    assert (lookup["method"], lookup["url"]) == (
        "GET",
        f"{BASE}/people?email=person1%40example.com",
    )
    assert "body" not in lookup and "Idempotency-Key" not in lookup["headers"]
    assert create["method"] == "POST" and "not found" in create["note"]
    deleted = example("contact-deleted")
    _, delete = requests(tmp_path, target, deleted, "--event", "contact-deleted")
    assert (delete["method"], delete["url"]) == ("DELETE", f"{BASE}/people/{{remote_id}}")


def test_rest_batch_with_one_item_and_basic_auth(tmp_path: Path) -> None:
    target = {
        "type": "rest",
        "base_url": BASE,
        "auth": {"type": "basic", "username": "me", "password": "basic-secret"},
        "mapping": FAKE_MAPPING,
        "batch": {"path": "/bulk/{tenant}", "item": {"id": "{contact_id}", "data": "$record"}},
    }
    [batch] = requests(tmp_path, target, contact(1))
    assert (batch["method"], batch["url"]) == ("POST", f"{BASE}/bulk/demo")
    assert batch["headers"]["Authorization"] == "Basic ***"
    key = hashlib.sha256(b"preview").hexdigest()[:32]
    assert batch["headers"]["Idempotency-Key"] == f"batch-{key}"
    data = {"first": "First1", "last": "Doe", "email": "person1@example.com"}
    assert batch["body"] == {"records": [{"id": CONTACT, "data": data}]}


# --- CSV and others ------------------------------------------------------------------------------


def test_csv_row_as_written_with_a_formula_escaped(tmp_path: Path) -> None:
    target = {"type": "csv", "path": "out/contacts.csv", "mapping": FAKE_MAPPING}
    [write] = requests(tmp_path, target, contact(1, firstName="=SUM(1,2)", lastName="@x"))
    assert write["path"] == str(tmp_path / "out" / "contacts.csv")
    assert write["text"] == (
        "mimeeq_contact_id,first,last,email\r\n"
        f"{CONTACT},\"'=SUM(1,2)\",'@x,person1@example.com\r\n"
    )
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_a_target_without_the_method_says_so(tmp_path: Path) -> None:
    code, out = invoke(write_config(tmp_path), tmp_path, contact(1), target="fake")
    assert code == 1
    assert "demo/fake: a fake target cannot show its requests" in out
    assert "Traceback" not in out
