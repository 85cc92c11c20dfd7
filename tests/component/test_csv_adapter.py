"""The CSV target: rows, formats, spreadsheet safety, atomic rewrites, shared writes at scale."""

from __future__ import annotations

import asyncio
import csv
import errno
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from adapters.csvfile import CsvAdapter, CsvSettings
from connector.adapter import Record, TargetContext, adapter_class
from connector.config import load_config
from connector.errors import ConfigError
from connector.mapping import load_mapping
from connector.outcomes import Dead, Delivered, Retry, Undelivered
from testkit.payloads import ROOT, company, contact, write_config

FIELDS = ("email", "firstname", "tags")


def settings(tmp_path: Path, **extra: Any) -> CsvSettings:
    raw = {"type": "csv", "mapping": "mappings/csv.yaml", "path": "out/contacts.csv", **extra}
    return CsvSettings.model_validate(raw, context={"base_dir": tmp_path})


def make(
    tmp_path: Path,
    fields: tuple[str, ...] = FIELDS,
    company_fields: tuple[str, ...] = (),
    **extra: Any,
) -> CsvAdapter:
    adapter = CsvAdapter(
        settings(tmp_path, **extra),
        TargetContext(tenant="demo", name="sheet", fields=fields, company_fields=company_fields),
    )
    adapter.write_retry_wait = 0  # keep failure tests fast
    return adapter


def up(contact_id: str, **fields: Any) -> Record:
    return Record(
        contact_id=contact_id,
        op="upsert",
        event="contact-created",
        event_id="e1",
        fields=fields,
        payload={},
        remote_id=None,
        attempt=1,
    )


def delete(contact_id: str) -> Record:
    return Record(
        contact_id=contact_id,
        op="delete",
        event="contact-deleted",
        event_id="e2",
        fields={},
        payload={},
        remote_id=None,
        attempt=1,
    )


def read(path: Path, delimiter: str = ",") -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter=delimiter))


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[CsvAdapter]:
    a = make(tmp_path)
    await a.open()
    yield a
    await a.close()


# -- settings and registration -----------------------------------------------------------------


def test_settings_resolve_relative_path_and_check_delimiter(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.path == tmp_path / "out" / "contacts.csv"
    assert s.key_column == "mimeeq_contact_id"
    assert settings(tmp_path, path=str(tmp_path / "abs.csv")).path == tmp_path / "abs.csv"
    for bad in ("", ";;", '"', "\n"):
        with pytest.raises(pydantic.ValidationError):
            settings(tmp_path, delimiter=bad)
    with pytest.raises(pydantic.ValidationError):
        settings(tmp_path, unknown=1)
    with pytest.raises(pydantic.ValidationError):
        CsvSettings.model_validate({"type": "csv", "mapping": "m.yaml"})  # path is required


def test_registered_by_entry_point() -> None:
    assert adapter_class("csv") is CsvAdapter
    assert CsvAdapter.max_batch_size == 10_000


# -- rows ----------------------------------------------------------------------------------------


async def test_create_update_delete(adapter: CsvAdapter) -> None:
    path = adapter.settings.path
    result = await adapter.push(
        [up("c1", email="a@x.io", firstname="Ann"), up("c2", email="b@x.io")]
    )
    assert result == [Delivered(), Delivered()]
    assert read(path) == [
        ["mimeeq_contact_id", "email", "firstname", "tags"],
        ["c1", "a@x.io", "Ann", ""],
        ["c2", "b@x.io", "", ""],
    ]

    # An update keeps the row's position; a new contact goes to the end.
    await adapter.push([up("c3", email="c@x.io"), up("c1", email="new@x.io", firstname="Ann")])
    assert [r[:2] for r in read(path)[1:]] == [
        ["c1", "new@x.io"],
        ["c2", "b@x.io"],
        ["c3", "c@x.io"],
    ]

    assert await adapter.push([delete("c2"), delete("nobody")]) == [
        Delivered(),
        Delivered(note="not in file"),
    ]
    assert [r[0] for r in read(path)[1:]] == ["c1", "c3"]

    await adapter.push([delete("c1"), delete("c3")])
    assert read(path) == [["mimeeq_contact_id", "email", "firstname", "tags"]]  # header stays
    assert leftovers(path) == []


async def test_empty_contact_id_is_dead(adapter: CsvAdapter) -> None:
    assert await adapter.push([up(""), up("c1")]) == [Dead("empty contact id"), Delivered()]
    assert [r[0] for r in read(adapter.settings.path)[1:]] == ["c1"]


async def test_column_order_key_column_and_delimiter(tmp_path: Path) -> None:
    # The key column comes first, even when the mapping also produces it.
    a = make(tmp_path, ("b", "id", "a"), key_column="id", delimiter=";")
    await a.open()
    await a.push([up("c1", a="1", b="2", id="ignored", extra="not a column")])
    await a.close()
    assert read(a.settings.path, ";") == [["id", "b", "a"], ["c1", "2", "1"]]
    assert a.settings.path.read_bytes() == b"id;b;a\r\nc1;2;1\r\n"


async def test_value_types(adapter: CsvAdapter) -> None:
    fields = {"email": None, "firstname": True, "tags": ["vip", 2, None, False]}
    await adapter.push([up("c1", **fields), up("c2", email=3, firstname=2.5, tags=False)])
    await adapter.push([up("c3", email={"a": [1, "é"], "b": None}, firstname=10**20, tags=())])
    assert read(adapter.settings.path)[1:] == [
        ["c1", "", "true", "vip; 2; ; false"],
        ["c2", "3", "2.5", "false"],
        ["c3", '{"a":[1,"é"],"b":null}', "100000000000000000000", ""],
    ]


async def test_utf8_round_trip_and_awkward_text(tmp_path: Path) -> None:
    a = make(tmp_path)
    await a.open()
    name = 'Zoë "Ω" 東京, 🚀\nline two'
    await a.push([up("ç1", email="zoë@exämple.de", firstname=name, tags="a;b")])
    await a.close()
    raw = a.settings.path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")  # plain UTF-8, no BOM
    assert read(a.settings.path)[1] == ["ç1", "zoë@exämple.de", name, "a;b"]

    b = make(tmp_path)
    await b.open()
    await b.push([up("c2")])
    await b.close()
    assert read(b.settings.path)[1] == ["ç1", "zoë@exämple.de", name, "a;b"]


# -- spreadsheet safety --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
async def test_formulas_are_neutralised_once(tmp_path: Path, prefix: str) -> None:
    value = f"{prefix}HYPERLINK(1)"
    a = make(tmp_path)
    await a.open()
    await a.push([up(f"{prefix}id", email=value, firstname="'already", tags=[f"{prefix}x"])])
    await a.close()
    expected = [f"'{prefix}id", f"'{value}", "'already", f"'{prefix}x"]
    assert read(a.settings.path)[1] == expected

    # Reload and rewrite: no second prefix; the same contact id still finds its row.
    b = make(tmp_path)
    await b.open()
    await b.push([up("other")])
    assert read(b.settings.path)[1] == expected
    await b.push([delete(f"{prefix}id")])
    await b.close()
    assert [r[0] for r in read(b.settings.path)[1:]] == ["other"]


async def test_ids_that_differ_only_by_an_escape_keep_a_row_each(tmp_path: Path) -> None:
    ids = ["=X", "'=X", "''=X", "'X", "X", "-1", "'-1"]
    a = make(tmp_path)
    await a.open()
    await a.push([up(i, firstname=f"name of {i}", email=i) for i in ids])
    await a.close()
    rows = {r[0]: r for r in read(a.settings.path)[1:]}
    assert len(rows) == len(ids)
    assert rows["''=X"] == ["''=X", "''=X", "name of '=X", ""]  # the value escaped alike
    assert rows["'X"][2] == "name of 'X"  # not a formula: written as it is

    # After a reload each contact still finds its own row: updated, then deleted.
    b = make(tmp_path)
    await b.open()
    await b.push([up(i, firstname=f"new name of {i}") for i in ids])
    await b.push([delete("'=X")])
    await b.close()
    names = sorted(r[2] for r in read(b.settings.path)[1:])
    assert names == sorted(f"new name of {i}" for i in ids if i != "'=X")


async def test_a_file_written_with_the_old_escaping_still_finds_its_rows(tmp_path: Path) -> None:
    """Earlier versions wrote contact ``=X`` as ``'=X`` and ``'X`` as it is."""
    a = make(tmp_path)
    path = a.settings.path
    path.parent.mkdir()
    path.write_text(
        "mimeeq_contact_id,email,firstname,tags\n'=X,,old =X,\n'X,,old 'X,\n'+44,,old +44,\n",
        "utf-8",
    )
    await a.open()
    await a.push([up("=X", firstname="new =X"), up("'X", firstname="new 'X"), delete("+44")])
    await a.push([up("'=X", firstname="new '=X")])  # a contact of its own, now
    await a.close()
    assert read(path)[1:] == [
        ["'=X", "", "new =X", ""],
        ["'X", "", "new 'X", ""],
        ["''=X", "", "new '=X", ""],
    ]


async def test_hand_edited_formula_is_neutralised_on_reload(tmp_path: Path) -> None:
    a = make(tmp_path)
    path = a.settings.path
    path.parent.mkdir()
    path.write_text("mimeeq_contact_id,email,firstname,tags\nc1,=cmd|' /C calc'!A0,,\n", "utf-8")
    await a.open()
    await a.push([up("c2")])
    await a.close()
    assert read(path)[1] == ["c1", "'=cmd|' /C calc'!A0", "", ""]


# -- loading at open ------------------------------------------------------------------------------


async def test_open_creates_folders_and_missing_file_is_fine(tmp_path: Path) -> None:
    a = make(tmp_path, path="deep/er/contacts.csv")
    await a.open()
    assert (tmp_path / "deep" / "er").is_dir()
    assert not a.settings.path.exists()
    await a.push([])  # nothing to do, nothing written
    assert a.writes == 0
    await a.close()


async def test_push_before_open_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before open"):
        await make(tmp_path).push([up("c1")])


async def test_open_reloads_existing_rows(tmp_path: Path) -> None:
    a = make(tmp_path)
    await a.open()
    await a.push([up("c1", email="a@x.io"), up("c2", email="b@x.io"), up("c3", email="c@x.io")])
    await a.close()

    b = make(tmp_path)
    await b.open()
    await b.push([up("c2", email="B@x.io"), up("c4", email="d@x.io")])
    await b.close()
    assert [r[:2] for r in read(b.settings.path)[1:]] == [
        ["c1", "a@x.io"],
        ["c2", "B@x.io"],
        ["c3", "c@x.io"],
        ["c4", "d@x.io"],
    ]


async def test_open_tolerates_bom_blank_lines_and_short_rows(tmp_path: Path) -> None:
    a = make(tmp_path)
    path = a.settings.path
    path.parent.mkdir()
    path.write_bytes(
        b"\xef\xbb\xbfmimeeq_contact_id,email,firstname,tags\r\nc1,a@x.io\r\n\r\n,,,\r\n"
    )
    await a.open()
    await a.push([up("c2")])
    await a.close()
    assert read(path) == [
        ["mimeeq_contact_id", "email", "firstname", "tags"],
        ["c1", "a@x.io", "", ""],
        ["c2", "", "", ""],
    ]


async def test_mapping_change_keeps_surviving_columns(tmp_path: Path) -> None:
    old = make(tmp_path, ("email", "phone", "firstname"))
    await old.open()
    await old.push([up("c1", email="a@x.io", phone="123", firstname="Ann")])
    await old.close()

    new = make(tmp_path, ("firstname", "company", "email"))
    await new.open()
    assert read(new.settings.path)[0] == ["mimeeq_contact_id", "email", "phone", "firstname"]
    await new.push([up("c2", firstname="Bo", company="Acme", email="b@x.io")])
    await new.close()
    assert read(new.settings.path) == [
        ["mimeeq_contact_id", "firstname", "company", "email"],
        ["c1", "Ann", "", "a@x.io"],
        ["c2", "Bo", "Acme", "b@x.io"],
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"mimeeq_contact_id,email\nc1,\xff\xfe\n", "cannot read"),
        (b'mimeeq_contact_id,email\nc1,"unterminated\n', "cannot read"),
        (b"id,email\nc1,a@x.io\n", "no 'mimeeq_contact_id' column"),
        (b"mimeeq_contact_id,email,email\nc1,a,b\n", "repeats"),
        (b"mimeeq_contact_id,email\nc1,a@x.io,surprise\n", "line 2 has more cells"),
        (b"mimeeq_contact_id,email\n,a@x.io\n", "line 2 has an empty"),
    ],
)
async def test_garbled_file_is_a_config_error(tmp_path: Path, content: bytes, problem: str) -> None:
    a = make(tmp_path)
    path = a.settings.path
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=problem) as caught:
        await a.open()
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content  # never overwritten


# -- atomic rewrites and failures -----------------------------------------------------------------


@pytest.fixture
def fail_os(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, int], list[int]]:
    """Make ``os.<name>`` fail with ENOSPC the next ``times`` calls made from the writer."""

    def install(name: str, times: int) -> list[int]:
        real = getattr(os, name)
        calls = [0]

        def flaky(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] <= times:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, flaky)
        return calls

    return install


@pytest.mark.parametrize("where", ["replace", "fsync"])
async def test_failed_write_keeps_old_file_and_retries_later(
    adapter: CsvAdapter, fail_os: Callable[[str, int], list[int]], where: str
) -> None:
    path = adapter.settings.path
    await adapter.push([up("c1", email="old@x.io")])
    before = path.read_bytes()

    calls = fail_os(where, 3)  # every attempt of the next rewrite fails
    with pytest.raises(Undelivered, match="No space left on device") as caught:
        await adapter.push([up("c1", email="new@x.io"), up("c2")])
    assert str(path) in str(caught.value)
    assert calls[0] == 3  # three attempts in the call
    assert path.read_bytes() == before  # the old complete file, untouched
    assert leftovers(path) == []
    assert adapter.writes == 1

    # The next push writes everything held in memory, the failed records included.
    assert await adapter.push([up("c3")]) == [Delivered()]
    assert [r[:2] for r in read(path)[1:]] == [["c1", "new@x.io"], ["c2", ""], ["c3", ""]]
    assert leftovers(path) == []
    assert adapter.writes == 2


async def test_transient_failure_is_retried_within_the_call(
    adapter: CsvAdapter, fail_os: Callable[[str, int], list[int]]
) -> None:
    calls = fail_os("replace", 2)
    assert await adapter.push([up("c1")]) == [Delivered()]
    assert calls[0] == 3
    assert adapter.writes == 1
    assert [r[0] for r in read(adapter.settings.path)[1:]] == ["c1"]
    assert leftovers(adapter.settings.path) == []


async def test_crash_mid_write_leaves_old_file_and_stale_temp_is_cleaned(tmp_path: Path) -> None:
    a = make(tmp_path)
    await a.open()
    await a.push([up("c1", email="a@x.io")])
    await a.close()
    path = a.settings.path
    before = path.read_bytes()
    # What a process killed between writing the temp file and the rename leaves behind.
    (path.parent / f".{path.name}.deadbeef.tmp").write_text(
        "mimeeq_contact_id,email\nhalf", "utf-8"
    )

    b = make(tmp_path)
    await b.open()
    assert path.read_bytes() == before
    assert leftovers(path) == []
    await b.push([up("c2")])
    await b.close()
    assert [r[0] for r in read(path)[1:]] == ["c1", "c2"]


async def test_write_runs_off_the_event_loop(
    adapter: CsvAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    seen: list[bool] = []

    def spy(src: Any, dst: Any) -> None:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:  # no loop in this thread: good
            seen.append(False)
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    await adapter.push([up("c1")])
    assert seen == [False]


# -- shared writes ------------------------------------------------------------------------------


async def test_overlapping_pushes_share_writes(adapter: CsvAdapter) -> None:
    results = await asyncio.gather(
        *(adapter.push([up(f"c{i}", email=f"{i}@x.io")]) for i in range(50))
    )
    assert all(r == [Delivered()] for r in results)
    assert adapter.writes <= 2
    assert [r[0] for r in read(adapter.settings.path)[1:]] == [f"c{i}" for i in range(50)]


async def test_pushes_during_a_write_share_the_next_one(
    adapter: CsvAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = adapter._write_once
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(*args: Any) -> None:
        loop.call_soon_threadsafe(entered.set)
        time.sleep(0.2)
        real(*args)

    monkeypatch.setattr(adapter, "_write_once", slow)
    first = asyncio.create_task(adapter.push([up("c0")]))
    await entered.wait()  # the first rewrite is under way; these must wait for the next one
    rest = await asyncio.gather(*(adapter.push([up(f"c{i}")]) for i in range(1, 20)))
    assert await first == [Delivered()]
    assert all(r == [Delivered()] for r in rest)
    assert adapter.writes == 2
    assert len(read(adapter.settings.path)) == 21


async def test_close_waits_for_pending_pushes(tmp_path: Path) -> None:
    a = make(tmp_path)
    await a.open()
    tasks = [asyncio.create_task(a.push([up(f"c{i}")])) for i in range(5)]
    await asyncio.sleep(0)  # the pushes are now waiting for their flush
    await a.close()
    # On disk by now; the pushes only have to return (no further rewrite).
    assert len(read(a.settings.path)) == 6
    assert await asyncio.gather(*tasks) == [[Delivered()]] * 5
    assert a.writes == 1


async def test_cancelled_push_does_not_cancel_the_shared_write(adapter: CsvAdapter) -> None:
    doomed = asyncio.create_task(adapter.push([up("c1")]))
    other = asyncio.create_task(adapter.push([up("c2")]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await other == [Delivered()]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert [r[0] for r in read(adapter.settings.path)[1:]] == ["c1", "c2"]


async def test_100k_contacts_then_a_burst_costs_a_few_rewrites(tmp_path: Path) -> None:
    a = make(tmp_path)
    await a.open()
    n, batch = 100_000, CsvAdapter.max_batch_size
    fields = {"email": "someone@example.com", "firstname": "Name", "tags": ["a", "b"]}
    seed = [[up(f"c{i:06d}", **fields) for i in range(s, s + batch)] for s in range(0, n, batch)]
    await asyncio.gather(*(a.push(b) for b in seed))
    assert a.writes <= 2
    await a.close()

    b = make(tmp_path)
    await b.open()  # reload 100k rows
    updates = [
        [up(f"c{i * 10:06d}", email=f"new{i}@x.io") for i in range(s, s + 1000)]
        for s in range(0, 10_000, 1000)
    ]
    results = await asyncio.gather(*(b.push(u) for u in updates))
    assert all(r == [Delivered()] * 1000 for r in results)
    assert b.writes <= 2
    # ...and one sequential batch of the worker's maximum size is one rewrite.
    await b.push([up(f"c{i:06d}", email="last@x.io") for i in range(10_000)])
    assert b.writes <= 3
    await b.close()

    rows = read(b.settings.path)
    assert len(rows) == n + 1
    assert rows[1][:2] == ["c000000", "last@x.io"]
    assert rows[10_001][:2] == ["c010000", "new1000@x.io"]  # updated, still in place
    assert rows[-1] == ["c099999", "someone@example.com", "Name", "a; b"]


# -- companies ----------------------------------------------------------------------------------

COMPANY_FIELDS = ("name", "phone", "tags")
WITH_COMPANIES = {"company_mapping": "mappings/c.yaml", "companies_path": "out/companies.csv"}


def company_up(company_id: str, event: str = "company-updated", **fields: Any) -> Record:
    return Record(
        contact_id=company_id,
        op="upsert",
        event=event,
        event_id="e3",
        fields=fields,
        payload={},
        remote_id=None,
        attempt=1,
        object_type="company",
    )


def company_delete(company_id: str) -> Record:
    return Record(
        contact_id=company_id,
        op="delete",
        event="company-deleted",
        event_id="e4",
        fields={},
        payload={},
        remote_id=None,
        attempt=1,
        object_type="company",
    )


def with_companies(tmp_path: Path, **extra: Any) -> CsvAdapter:
    return make(tmp_path, company_fields=COMPANY_FIELDS, **WITH_COMPANIES, **extra)


def test_company_settings(tmp_path: Path) -> None:
    assert CsvAdapter.takes_companies
    s = settings(tmp_path, **WITH_COMPANIES)
    assert s.companies_path == tmp_path / "out" / "companies.csv"
    assert s.company_key_column == "mimeeq_company_id"
    assert settings(tmp_path).companies_path is None  # contacts only, as before


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"company_mapping": "m.yaml"}, "company_mapping needs `companies_path`"),
        ({"companies_path": "c.csv"}, "companies_path needs `company_mapping`"),
        (
            {"company_mapping": "m.yaml", "companies_path": "out/contacts.csv"},
            "companies_path must be another file than path",
        ),
        ({**WITH_COMPANIES, "company_key_column": ""}, "at least 1 character"),
    ],
)
def test_company_settings_errors(tmp_path: Path, extra: dict[str, Any], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(problem)):
        settings(tmp_path, **extra)


def test_config_check_names_the_missing_companies_path(tmp_path: Path) -> None:
    target = {
        "type": "csv",
        "mapping": str(ROOT / "mappings/csv-contacts.yaml"),
        "company_mapping": str(ROOT / "mappings/csv-companies.yaml"),
        "path": "contacts.csv",
    }
    with pytest.raises(ConfigError, match="company_mapping needs `companies_path`") as error:
        load_config(write_config(tmp_path, {"sheet": target}))
    assert "tenants.demo.targets.sheet" in str(error.value)
    (loaded,) = load_config(
        write_config(tmp_path, {"sheet": {**target, "companies_path": "companies.csv"}})
    ).targets
    assert loaded.company_mapping is not None
    assert loaded.adapter is CsvAdapter


async def test_a_mixed_batch_lands_in_two_files_with_their_mappings(tmp_path: Path) -> None:
    contacts = load_mapping("mappings/csv-contacts.yaml", ROOT)
    companies = load_mapping("mappings/csv-companies.yaml", ROOT)
    a = make(tmp_path, contacts.fields, companies.fields, **WITH_COMPANIES)
    await a.open()
    person, firm = contact(1), company(1, socials=[{"type": "website", "address": "https://x.io"}])
    records = [
        up(person["id"], **contacts.apply(person)),
        company_up(firm["id"], "company-created", **companies.apply(firm)),
        up("c2", first_name="Bo"),
    ]
    assert await a.push(records) == [Delivered()] * 3
    await a.close()

    header, *rows = read(a.settings.path)
    assert header == ["mimeeq_contact_id", *contacts.fields]
    assert [r[0] for r in rows] == [person["id"], "c2"]
    assert rows[0][header.index("first_name")] == "First1"
    assert read(tmp_path / "out" / "companies.csv") == [
        [
            "mimeeq_company_id",
            "name",
            "phone",
            "email",
            "street",
            "city",
            "postcode",
            "country",
            "website",
            "status",
            "tags",
            "currency",
            "payment_terms",
        ],
        [
            firm["id"],
            "Company 1",
            "123-456-7890",
            "office@example.com",
            "123 Example Street",
            "Example City",
            "12345",
            "Example Country",
            "https://x.io",
            "ACTIVE",
            "dealer; eu",
            "USD",
            "30 days",
        ],
    ]
    assert a.writes == 2  # one rewrite of each file for the push


async def test_company_update_delete_escaping_and_reload(tmp_path: Path) -> None:
    a = with_companies(tmp_path)
    companies = tmp_path / "out" / "companies.csv"
    await a.open()
    await a.push(
        [company_up("COMP-1", name="Acme", phone="+44 20"), company_up("COMP-2", name="Bolt")]
    )
    # An update keeps the row's place; the same id as a contact is another row, in another file.
    await a.push([company_up("COMP-1", name="=Acme()", tags=["a", "b"]), up("COMP-1")])
    assert read(companies) == [
        ["mimeeq_company_id", "name", "phone", "tags"],
        ["COMP-1", "'=Acme()", "", "a; b"],
        ["COMP-2", "Bolt", "", ""],
    ]
    assert [r[0] for r in read(a.settings.path)[1:]] == ["COMP-1"]

    assert await a.push([company_delete("COMP-2"), company_delete("COMP-9")]) == [
        Delivered(),
        Delivered(note="not in file"),
    ]
    assert [r[0] for r in read(companies)[1:]] == ["COMP-1"]
    assert [r[0] for r in read(a.settings.path)[1:]] == ["COMP-1"]  # the contact stays
    assert await a.push([company_up("")]) == [Dead("empty company id")]
    await a.close()

    b = with_companies(tmp_path, company_key_column="mimeeq_company_id")
    await b.open()  # reloads both files
    await b.push([company_up("COMP-3", name="Cog")])
    await b.close()
    assert [r[:2] for r in read(companies)[1:]] == [["COMP-1", "'=Acme()"], ["COMP-3", "Cog"]]
    assert leftovers(companies) == []


async def test_a_push_of_contacts_leaves_the_companies_file_alone(tmp_path: Path) -> None:
    a = with_companies(tmp_path)
    await a.open()
    await a.push([up("c1")])
    assert a.writes == 1
    assert not (tmp_path / "out" / "companies.csv").exists()
    await a.push([company_up("COMP-1")])
    assert a.writes == 2
    await a.close()


async def test_a_failed_companies_file_delays_only_the_companies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = with_companies(tmp_path)
    await a.open()
    real = a._write_once
    broken = [True]

    def flaky(sheet: Any, rows: list[list[str]]) -> None:
        if broken[0] and sheet.path.name == "companies.csv":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(sheet, rows)

    monkeypatch.setattr(a, "_write_once", flaky)
    outcomes = await a.push([up("c1"), company_up("COMP-1", name="Acme")])
    assert outcomes[0] == Delivered()
    assert isinstance(outcomes[1], Retry) and "No space left on device" in outcomes[1].reason
    assert [r[0] for r in read(a.settings.path)[1:]] == ["c1"]
    with pytest.raises(Undelivered, match=r"companies\.csv"):  # companies alone: the whole push
        await a.push([company_up("COMP-2")])

    broken[0] = False  # the next rewrite includes every company held in memory
    assert await a.push([up("c2")]) == [Delivered()]
    await a.close()
    assert [r[0] for r in read(tmp_path / "out" / "companies.csv")[1:]] == ["COMP-1", "COMP-2"]
