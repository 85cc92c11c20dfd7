"""``import`` with hostile files: a file is imported whole, or refused naming the lines at fault
and storing nothing. Never a traceback, never a silent loss, always a summary line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from connector.cli import main
from connector.store.sqlite import SQLiteStore
from testkit.payloads import CUSTOMER, contact, write_config

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
