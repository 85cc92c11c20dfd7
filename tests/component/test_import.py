"""``import`` with hostile files: a file is imported whole, or refused naming the lines at fault
and storing nothing. Never a traceback, never a silent loss, always a summary line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from connector.backfill import ImportSettings, detect_kind
from connector.cli import main
from connector.store.sqlite import SQLiteStore
from testkit.payloads import (
    CUSTOMER,
    DATA,
    FAKE_MAPPING,
    ROOT,
    company,
    company_id,
    contact,
    write_config,
)

HEADER = "Contact ID,First Name,Last Name,Email\n"


def line(n: int) -> str:
    return f"CONT-{n:05d},First{n},Last{n},person{n}@example.com\n"


def rows(first: int, last: int) -> str:
    return "".join(line(n) for n in range(first, last + 1))


def run(config: Path, file: Path, *extra: str) -> Result:
    result = CliRunner().invoke(
        main, ["import", "--config", str(config), "--tenant", "demo", str(file), *extra]
    )
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def stored(config: Path) -> int:
    """Events waiting for the target: what the imports stored (no server runs)."""
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    (target,) = json.loads(result.stdout)
    count: int = target["pending"]
    return count


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def export(tmp_path: Path, text: str | bytes, name: str = "contacts.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_a_header_only_file_imports_nothing_and_says_so(config: Path, tmp_path: Path) -> None:
    result = run(config, export(tmp_path, HEADER))
    assert result.exit_code == 0
    assert result.stdout.strip().endswith("contacts.csv: imported 0 rows: 0 queued, 0 duplicate, "
                                          "0 dropped (deleted earlier)")  # fmt: skip
    assert stored(config) == 0


@pytest.mark.parametrize("count", [500, 1000])
def test_whole_batches_are_imported_then_recognised(
    config: Path, tmp_path: Path, count: int
) -> None:
    file = export(tmp_path, HEADER + rows(1, count))
    first = run(config, file)
    assert first.exit_code == 0, first.output
    assert f"imported {count} rows: {count} queued, 0 duplicate, 0 dropped" in first.stdout
    assert "importing" in first.stderr  # the progress, kept off the summary's stream
    assert stored(config) == count
    again = run(config, file, "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {
        "status": "imported", "rows": count, "queued": 0, "duplicate": count, "dropped": 0,
        "unusable": 0, "problems": [], "more_problems": 0, "error": None}  # fmt: skip
    assert stored(config) == count


def test_the_progress_counts_rows_not_the_header_and_stays_short(
    config: Path, tmp_path: Path
) -> None:
    result = run(config, export(tmp_path, HEADER + rows(1, 20_000)))
    assert result.exit_code == 0, result.output
    assert "checking" in result.stderr and "20000/20000" in result.stderr
    assert len(result.stderr) < 2_000  # drawn once off a terminal, not once per row


def test_the_sample_exports_import(with_companies: Path) -> None:
    for name, kind, n in (
        ("companies-export.csv", "companies", 4),
        ("contacts-export.csv", "contacts", 3),
    ):
        result = run(with_companies, DATA / name)
        assert result.exit_code == 0, result.output
        assert f"{name}: {kind}" in result.stderr
        assert f"imported {n} rows: {n} queued" in result.stdout


def test_a_file_without_a_usable_row_is_refused_naming_a_bounded_list(
    config: Path, tmp_path: Path
) -> None:
    text = HEADER + "".join(f",First{n},Last{n},person{n}@example.com\n" for n in range(30))
    result = run(config, export(tmp_path, text))
    assert result.exit_code == 1
    named = [x for x in result.stderr.splitlines() if x.startswith("  line ")]
    assert named[0] == "  line 2: id: required, but empty"
    assert len(named) == 20 and named[-1].startswith("  line 21: ")
    assert "  … and 10 more" in result.stderr
    assert "refused, nothing imported: 30 unusable row(s), 0 usable" in result.stdout
    assert stored(config) == 0


def test_one_bad_row_refuses_the_whole_file(config: Path, tmp_path: Path) -> None:
    text = HEADER + rows(1, 600) + ",No,Id,nobody@example.com\n" + rows(601, 700)
    result = run(config, export(tmp_path, text), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "refused"
    assert (report["rows"], report["unusable"], report["queued"]) == (700, 1, 0)
    assert report["problems"] == [{"line": 602, "problem": "id: required, but empty"}]
    assert stored(config) == 0


def test_an_unbalanced_quote_is_refused_naming_its_line(config: Path, tmp_path: Path) -> None:
    text = HEADER + rows(1, 9) + 'CONT-00010,"First10,Last10,a@example.com\n' + rows(11, 50)
    result = run(config, export(tmp_path, text))
    assert result.exit_code == 1
    assert "  line 11: a quote opened on this line is never closed" in result.stderr
    assert "refused, nothing imported" in result.stdout
    assert stored(config) == 0


def test_an_unbalanced_quote_in_a_long_file_is_refused_naming_its_line(
    config: Path, tmp_path: Path
) -> None:
    """The cell the quote opens passes the csv module's limit long before the end."""
    text = HEADER + rows(1, 99) + 'CONT-00100,"First100,Last,a@example.com\n' + rows(101, 5000)
    result = run(config, export(tmp_path, text))
    assert result.exit_code == 1
    assert "  line 101: a quote opened on this line is not closed by line " in result.stderr
    assert "the rest of the file was not read" in result.stderr
    assert stored(config) == 0


def test_a_stray_quote_closed_by_another_is_refused(config: Path, tmp_path: Path) -> None:
    """Two stray quotes make the lines between them one cell: the cells no longer fit."""
    text = HEADER + line(1) + 'CONT-00002,"First2,Last2,a@example.com\n' + line(3)
    text += 'CONT-00004,First4",Last4,b@example.com,extra\n' + line(5)
    result = run(config, export(tmp_path, text))
    assert result.exit_code == 1
    assert "  line 3: 5 cells, but the header has 4 (a quote not closed?)" in result.stderr
    assert stored(config) == 0


def test_an_oversized_cell_is_refused_naming_its_line(config: Path, tmp_path: Path) -> None:
    huge = f"CONT-01100,{'x' * 200_000},Last,a@example.com\n"
    text = HEADER + rows(1, 1099) + huge + rows(1101, 1300)
    result = run(config, export(tmp_path, text))
    assert result.exit_code == 1
    named = [x for x in result.stderr.splitlines() if x.startswith("  line ")]
    assert named == ["  line 1101: a cell longer than 131,072 characters"]
    assert stored(config) == 0


def test_invalid_utf8_is_refused_naming_its_line(config: Path, tmp_path: Path) -> None:
    bad = "CONT-01200,J\xf6rg,Last,a@example.com\n".encode("latin-1")
    text = (HEADER + rows(1, 1199)).encode() + bad + rows(1201, 1500).encode()
    result = run(config, export(tmp_path, text))
    assert result.exit_code == 1
    named = [x for x in result.stderr.splitlines() if x.startswith("  line ")]
    assert named == ["  line 1201: not UTF-8 text (byte 0xF6 at character 13): save the file as "
                     "UTF-8"]  # fmt: skip
    assert stored(config) == 0


def jsonl(objects: list[dict[str, Any] | str]) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects)


def test_json_lines_with_a_duplicate_key_are_refused(config: Path, tmp_path: Path) -> None:
    twice = json.dumps(contact(2))[:-1] + ', "id": "CONT-someone-else"}'
    text = jsonl([contact(1), twice, contact(3)])
    result = run(config, export(tmp_path, text, "contacts.jsonl"))
    assert result.exit_code == 1
    assert "  line 2: duplicate key 'id': its meaning is ambiguous" in result.stderr
    assert stored(config) == 0


def test_json_lines_longer_than_a_webhook_body_are_refused(config: Path, tmp_path: Path) -> None:
    big = {**contact(2), "notes": "x" * 2_000_000}  # over server.max_body_bytes (1 MiB)
    result = run(config, export(tmp_path, jsonl([contact(1), big]), "contacts.jsonl"))
    assert result.exit_code == 1
    assert "  line 2: longer than 1,048,576 bytes (server.max_body_bytes)" in result.stderr
    assert stored(config) == 0


def test_a_good_json_lines_file_is_imported(config: Path, tmp_path: Path) -> None:
    objects: list[dict[str, Any] | str] = [contact(n) for n in range(3)]
    objects.insert(1, "")  # blank lines are fine
    result = run(config, export(tmp_path, jsonl(objects), "contacts.jsonl"))
    assert result.exit_code == 0, result.output
    assert "imported 3 rows: 3 queued" in result.stdout
    assert stored(config) == 3
    assert contact(0)["customerId"] == CUSTOMER


def test_a_store_failing_part_way_says_how_far_it_got(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    append_many = SQLiteStore.append_many

    async def failing_second_time(self: SQLiteStore, events: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        return await append_many(self, events)

    monkeypatch.setattr(SQLiteStore, "append_many", failing_second_time)
    result = run(config, export(tmp_path, HEADER + rows(1, 1200)))
    assert result.exit_code == 1
    assert "error: cannot store: disk full" in result.stderr
    assert "stopped after 500 of 1200 rows (500 queued, 0 duplicate, 0 dropped)" in result.stdout
    assert stored(config) == 500
    monkeypatch.undo()
    again = run(config, export(tmp_path, HEADER + rows(1, 1200)))
    assert again.exit_code == 0
    assert "imported 1200 rows: 700 queued, 500 duplicate" in again.stdout
    assert stored(config) == 1200


COMPANIES = DATA / "companies-export.csv"  # as Mimeeq's admin exports it (with a BOM)
COMPANY_HEADER = "Company ID,Company Name,Status,City,Email,Tags\n"


@pytest.fixture
def with_companies(tmp_path: Path) -> Path:
    """Two targets: ``fake`` takes contacts only, ``crm`` (HubSpot) companies too."""
    return write_config(tmp_path, {
        "fake": {"type": "fake", "mapping": FAKE_MAPPING},
        "crm": {"type": "hubspot", "access_token": "pat-test-0000", "mapping": FAKE_MAPPING,
                "company_mapping": str(ROOT / "mappings" / "hubspot-companies.yaml")},
    })  # fmt: skip


def pending(config: Path) -> dict[str, int]:
    """Events waiting, per target."""
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    return {t["target"]: t["pending"] for t in json.loads(result.stdout)}


def latest_event(config: Path, object_id: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["trace", "--config", str(config), "--json", object_id])
    event: dict[str, Any] = json.loads(result.stdout)["events"][-1]
    return event


def test_a_companies_export_goes_to_the_company_targets_only(with_companies: Path) -> None:
    first = run(with_companies, COMPANIES)
    assert first.exit_code == 0, first.output
    assert "companies-export.csv: companies (a company name column and no first/last name" in (
        first.stderr
    )
    assert "imported 4 rows: 4 queued, 0 duplicate, 0 dropped" in first.stdout
    assert pending(with_companies) == {"fake": 0, "crm": 4}
    event = latest_event(with_companies, "COMP-3f1c2a10-0001")
    assert event["event_type"] == "company-imported"
    assert event["payload"] == {
        "id": "COMP-3f1c2a10-0001", "customerId": CUSTOMER, "companyName": "Northwind Interiors",
        "status": "ACTIVE",
        "address": {"street": "12 Harbour Road, Unit 4", "city": "Bristol", "postcode": "BS1 5TY",
                    "country": "United Kingdom"},
        "accountDetails": {"workNumber": "+44 117 496 0123", "email": "office@northwind.example"},
        "socials": [{"type": "website", "address": "https://northwind.example"}],
        "paymentTerms": "30 days", "currency": "GBP", "tags": ["dealer", "uk"],
    }  # fmt: skip
    bare = latest_event(with_companies, "COMP-3f1c2a10-0003")["payload"]  # empty cells: None
    assert (bare["companyName"], bare["socials"], bare["tags"]) == ("Oakline Office Ltd", [], [])
    again = run(with_companies, COMPANIES, "--kind", "companies", "--json")
    assert again.exit_code == 0
    report = json.loads(again.stdout)
    assert (report["status"], report["queued"], report["duplicate"]) == ("imported", 0, 4)
    assert pending(with_companies) == {"fake": 0, "crm": 4}


def test_contacts_still_go_to_every_target(with_companies: Path, tmp_path: Path) -> None:
    result = run(with_companies, export(tmp_path, HEADER + rows(1, 3)))
    assert result.exit_code == 0, result.output
    assert "contacts.csv: contacts (a first/last name column" in result.stderr
    assert pending(with_companies) == {"fake": 3, "crm": 3}
    assert latest_event(with_companies, "CONT-00001")["event_type"] == "contact-imported"


def test_companies_as_json_lines_are_told_by_their_keys(
    with_companies: Path, tmp_path: Path
) -> None:
    text = jsonl([company(n) for n in range(3)])
    result = run(with_companies, export(tmp_path, text, "companies.jsonl"))
    assert result.exit_code == 0, result.output
    assert "companies.jsonl: companies" in result.stderr
    assert pending(with_companies) == {"fake": 0, "crm": 3}
    assert latest_event(with_companies, company_id(1))["event_type"] == "company-imported"


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ("Contact ID,First Name,Last Name,Email", "contacts"),
        ("Contact ID,Surname,Company Name", "contacts"),  # a contact's company, named
        ("Company ID,Company Name,Street", "companies"),
        ("ID,company_name,Postcode", "companies"),
        ("ID,Name,Email", None),  # a name alone says neither
        ("Firma,Nummer", None),
    ],
)
def test_the_kind_is_told_from_the_headers(headers: str, kind: str | None) -> None:
    assert detect_kind(headers.split(","), ImportSettings()) == kind


def test_the_tenants_column_names_tell_the_kind_too() -> None:
    settings = ImportSettings(company_columns={"companyName": "Firma"})
    assert detect_kind(["Nummer", "Firma"], settings) == "companies"
    settings = ImportSettings(columns={"lastName": "Nachname"})
    assert detect_kind(["Nummer", "Nachname", "Firma"], settings) == "contacts"


def test_a_kind_the_headers_contradict_is_a_usage_error(
    with_companies: Path, tmp_path: Path
) -> None:
    result = run(with_companies, COMPANIES, "--kind", "contacts")
    assert result.exit_code == 2
    expected = ("--kind contacts, but companies-export.csv looks like a companies export (a "
                "company name column and no first/last name); give --kind companies")  # fmt: skip
    assert expected in result.stderr
    result = run(with_companies, export(tmp_path, HEADER + rows(1, 2)), "--kind", "companies")
    assert result.exit_code == 2
    assert "--kind companies, but contacts.csv looks like a contacts export" in result.stderr
    assert pending(with_companies) == {"fake": 0, "crm": 0}


def test_ambiguous_headers_ask_for_the_kind(with_companies: Path, tmp_path: Path) -> None:
    file = export(tmp_path, "ID,Name,Email\nCOMP-1,Acme,office@acme.example\n", "export.csv")
    result = run(with_companies, file)
    assert result.exit_code == 2
    assert "cannot tell whether export.csv holds contacts or companies (headers: ID, Name, " in (
        result.stderr
    )
    assert "give --kind contacts or --kind companies" in result.stderr
    assert pending(with_companies) == {"fake": 0, "crm": 0}
    given = run(with_companies, file, "--kind", "companies")
    assert given.exit_code == 0, given.output
    assert latest_event(with_companies, "COMP-1")["payload"]["companyName"] == "Acme"
    assert pending(with_companies) == {"fake": 0, "crm": 1}


def test_companies_without_a_company_target_are_refused_unread(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"fake": {"type": "fake", "mapping": FAKE_MAPPING}})
    result = run(config, COMPANIES)
    assert result.exit_code == 1
    assert "error: no target of tenant 'demo' takes companies: give one a company_mapping" in (
        result.stderr
    )
    assert "checking" not in result.stderr  # refused before the rows are read
    assert stored(config) == 0


def test_bad_company_rows_are_named_and_the_good_ones_imported_once_fixed(
    with_companies: Path, tmp_path: Path
) -> None:
    good = [f"COMP-{n},Company {n},ACTIVE,Leeds,office{n}@example.com,dealer\n" for n in range(5)]
    bad = [",No Id,ACTIVE,York,,\n", "COMP has spaces,Spaced,ACTIVE,,,\n"]
    text = COMPANY_HEADER + "".join(good[:2] + bad[:1] + good[2:4] + bad[1:] + good[4:])
    result = run(with_companies, export(tmp_path, text, "companies.csv"))
    assert result.exit_code == 1
    named = [x for x in result.stderr.splitlines() if x.startswith("  line ")]
    assert named[0] == "  line 4: id: required, but empty"
    assert named[1].startswith("  line 7: id: String should match pattern")
    assert "refused, nothing imported: 2 unusable row(s), 5 usable" in result.stdout
    assert pending(with_companies) == {"fake": 0, "crm": 0}
    fixed = run(with_companies, export(tmp_path, COMPANY_HEADER + "".join(good), "companies.csv"))
    assert fixed.exit_code == 0, fixed.output
    assert "imported 5 rows: 5 queued" in fixed.stdout
    assert pending(with_companies) == {"fake": 0, "crm": 5}


def test_a_companies_export_without_an_id_column_names_the_setting(
    with_companies: Path, tmp_path: Path
) -> None:
    text = "Ref,Company Name\nC1,Acme\n"
    result = run(with_companies, export(tmp_path, text, "companies.csv"))
    assert result.exit_code == 1
    assert "  line 1: no company id column (set import.company_columns.id to its header)" in (
        result.stderr
    )
