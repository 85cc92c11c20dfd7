"""Backfill: contacts or companies from Mimeeq's CSV exports, or JSON lines of payloads, as
ordinary events.

Mimeeq has no API to list contacts or companies: its admin's CSV exports are the only bulk
source. Every row becomes a ``contact-imported`` or ``company-imported`` event that goes through
the normal pipeline (tombstones, queue, mapping, retries), so an import behaves exactly like
webhooks, and running it twice stores nothing new: identical events are recognised as duplicates.

The export's column headers are matched loosely (case, spaces and punctuation ignored) against
the names below; a tenant's ``import.columns`` (``import.company_columns`` for companies) names
the header of any field that differs. Which kind a file holds is given, or told from its headers
(``detect_kind``).

Whatever the file holds, reading it yields rows, never an exception: a row that cannot be used
(its line number and why), including what breaks the file itself (bytes that are not UTF-8, a
quote never closed, a cell or line too long, for which the rest of the file may go unread).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from connector.adapter import ObjectType
from connector.payloads import COMPANY, CONTACT

Kind = Literal["contacts", "companies"]

# Payload field -> header names it is recognised by (normalised: lower case, letters and digits).
DEFAULT_HEADERS: dict[str, tuple[str, ...]] = {
    "id": ("id", "contactid", "mimeeqid", "mimeeqcontactid"),
    "firstName": ("firstname", "first", "givenname"),
    "lastName": ("lastname", "last", "surname", "familyname"),
    "emails": ("email", "emails", "emailaddress", "emailaddresses", "mail"),
    "phoneNumbers": ("phone", "phones", "phonenumber", "phonenumbers", "telephone"),
    "companyId": ("companyid", "company"),
    "status": ("status",),
    "address": ("address", "street", "streetaddress"),
    "city": ("city", "town"),
    "zipCode": ("zipcode", "zip", "postcode", "postalcode"),
    "country": ("country",),
    "position": ("position", "jobtitle", "title", "role"),
    "tags": ("tags", "tag"),
}
COMPANY_HEADERS: dict[str, tuple[str, ...]] = {
    "id": ("id", "companyid", "mimeeqid", "mimeeqcompanyid"),
    "companyName": ("companyname", "name"),
    "street": ("street", "address", "streetaddress"),
    "city": ("city", "town"),
    "postcode": ("postcode", "zip", "zipcode", "postalcode"),
    "country": ("country",),
    "workNumber": ("phone", "worknumber", "phonenumber", "telephone"),
    "email": ("email", "emailaddress", "mail"),
    "website": ("website", "web", "url", "homepage"),
    "status": ("status",),
    "tags": ("tags", "tag"),
    "currency": ("currency",),
    "paymentTerms": ("paymentterms", "terms"),
}
LISTS = re.compile(r"\s*[;,|]\s*")  # how several e-mails, numbers or tags share one cell
LINE_LIMIT = 1 << 20  # characters in one line of a CSV file: more is not an export of contacts
# Bytes that are not UTF-8, as the surrogateescape error handler decodes them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class ImportSettings(BaseModel):
    """A tenant's ``import:`` section: how its Mimeeq exports are laid out."""

    model_config = ConfigDict(extra="forbid")
    columns: dict[str, str] = Field(
        default_factory=dict, description="contact payload field -> the export's header for it"
    )
    # Apart from ``columns``: both exports have an id, a status, … under headers of their own.
    company_columns: dict[str, str] = Field(
        default_factory=dict,
        description="company payload field (companyName, street, postcode, workNumber, email, "
        "website, …) -> the companies export's header for it",
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1)

    def columns_for(self, kind: Kind) -> dict[str, str]:
        return self.company_columns if kind == "companies" else self.columns


Cell = Callable[[str], "str | None"]  # a payload field's cell, stripped; None when empty
Cells = Callable[[str], list[str]]  # a payload field's cell split into several values


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What differs between importing contacts and companies; the reading is the same."""

    noun: str  # "contact", "company": in messages
    object_type: ObjectType
    event: str  # the event each row becomes
    headers: dict[str, tuple[str, ...]]
    schema: TypeAdapter[Any]
    build: Callable[[Cell, Cells, str], dict[str, Any]]  # (cell, many, customer id) -> payload


def _contact(cell: Cell, many: Cells, customer_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": cell("id"),
        "customerId": customer_id,
        "companyId": cell("companyId"),
        "firstName": cell("firstName"),
        "lastName": cell("lastName"),
        "status": cell("status"),
        "addressDetails": {
            "address": cell("address"),
            "city": cell("city"),
            "zipCode": cell("zipCode"),
            "country": cell("country"),
        },
        "emails": [{"type": None, "mail": mail} for mail in many("emails")],
        "phoneNumbers": [{"type": None, "number": number} for number in many("phoneNumbers")],
        "tags": many("tags"),
    }
    if cell("position"):
        payload["accountDetails"] = {"position": cell("position")}
    return {k: v for k, v in payload.items() if v is not None}


def _company(cell: Cell, many: Cells, customer_id: str) -> dict[str, Any]:
    # Mimeeq keeps a company's web address among its socials, typed "website". One per cell:
    # a web address may hold the characters that split lists.
    website = cell("website")
    payload: dict[str, Any] = {
        "id": cell("id"),
        "customerId": customer_id,
        "companyName": cell("companyName"),
        "status": cell("status"),
        "address": {
            "street": cell("street"),
            "city": cell("city"),
            "postcode": cell("postcode"),
            "country": cell("country"),
        },
        "accountDetails": {"workNumber": cell("workNumber"), "email": cell("email")},
        "socials": [{"type": "website", "address": website}] if website else [],
        "paymentTerms": cell("paymentTerms"),
        "currency": cell("currency"),
        "tags": many("tags"),
    }
    return {k: v for k, v in payload.items() if v is not None}


KINDS: dict[Kind, KindSpec] = {
    "contacts": KindSpec("contact", "contact", "contact-imported", DEFAULT_HEADERS, CONTACT,
                         _contact),
    "companies": KindSpec("company", "company", "company-imported", COMPANY_HEADERS, COMPANY,
                          _company),
}  # fmt: skip
IMPORT_EVENTS = frozenset(spec.event for spec in KINDS.values())


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    payload: dict[str, Any] | None  # None when unusable
    problem: str | None = None


def _normal(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def is_json_lines(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson", ".json")


def read_rows(
    path: Path,
    customer_id: str,
    settings: ImportSettings,
    *,
    kind: Kind = "contacts",
    max_line_bytes: int = 1 << 20,
) -> Iterator[Row]:
    """Rows of a ``.csv`` export or a JSON-lines file (``.jsonl``, ``.ndjson``, ``.json``), as
    payloads of ``kind``.

    ``max_line_bytes``: a JSON line longer than this is refused, as a webhook body would be.
    """
    if is_json_lines(path):
        yield from _json_lines(path, customer_id, KINDS[kind], max_line_bytes)
    else:
        yield from _csv_rows(path, customer_id, settings, kind)


def file_headers(path: Path, settings: ImportSettings, *, max_line_bytes: int) -> list[str] | None:
    """The header of a CSV file, or the keys of a JSON-lines file's first object: what tells
    the kind of records it holds. None when it cannot be read: ``read_rows`` says why."""
    try:
        if is_json_lines(path):
            with path.open("rb") as f:
                while raw := f.readline(max_line_bytes + 1):
                    if raw.strip():
                        data = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                        return list(data) if isinstance(data, dict) else None
            return None
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            lines = _Lines(f)
            for cells in csv.reader(lines, delimiter=settings.delimiter, strict=True):
                if lines.undecodable is not None:
                    return None
                if cells:
                    return cells
    except (OSError, csv.Error, orjson.JSONDecodeError):
        pass
    return None


# What tells the exports apart: a company has a name, a contact a first and last name (a
# contacts export may well name each contact's company too).
_PERSON_NAMES = ("firstName", "lastName")


def detect_kind(headers: list[str], settings: ImportSettings) -> Kind | None:
    """``companies`` for a company name header and no first or last name, ``contacts`` for a
    first or last name, None when the headers say neither (ambiguous)."""
    present = {_normal(h) for h in headers}

    def has(field: str, kind: Kind) -> bool:
        override = settings.columns_for(kind).get(field)
        if override is not None and override in headers:
            return True
        return not present.isdisjoint(KINDS[kind].headers[field])

    if any(has(name, "contacts") for name in _PERSON_NAMES):
        return "contacts"
    # Not "name" alone: too loose to tell a companies export by.
    if "companyname" in present or settings.company_columns.get("companyName") in headers:
        return "companies"
    return None


class _Lines:
    """A CSV file's lines as the csv reader takes them, counted, and those of the record being
    read kept (to find where a quote was left open). A line longer than LINE_LIMIT ends the
    input (``too_long`` says where): never more than that is held in memory."""

    def __init__(self, f: TextIO) -> None:
        self._f = f
        self.number = 0  # lines handed out so far
        self.record: list[str] = []
        self.undecodable: tuple[int, str] | None = None  # the record's first line not UTF-8
        self.too_long: int | None = None

    def next_record(self) -> None:
        self.record = []
        self.undecodable = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.too_long is not None:
            raise StopIteration
        line = self._f.readline(LINE_LIMIT + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) > LINE_LIMIT and not line.endswith(("\n", "\r")):
            self.too_long = self.number
            raise StopIteration
        if self.undecodable is None and (bad := _UNDECODABLE.search(line)) is not None:
            byte = ord(bad.group()) - 0xDC00
            where = f"byte 0x{byte:02X} at character {bad.start() + 1}"
            self.undecodable = (self.number, f"not UTF-8 text ({where}): save the file as UTF-8")
        self.record.append(line)
        return line


def _csv_rows(path: Path, customer_id: str, settings: ImportSettings, kind: Kind) -> Iterator[Row]:
    spec = KINDS[kind]
    # utf-8-sig: exports often carry a BOM; surrogateescape: bytes that are not UTF-8 are found
    # and named (by line) instead of ending the read with an exception.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        # strict: a quote left open at the end of the file is an error, not one giant cell.
        reader = csv.reader(lines, delimiter=settings.delimiter, strict=True)
        header: list[str] | None = None
        columns: dict[str, str] = {}
        while True:
            start = lines.number + 1
            lines.next_record()
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if lines.too_long is not None:
                    break
                line, problem, read_on = _csv_error(str(exc), start, lines, settings.delimiter)
                yield Row(line, None, problem)
                if read_on and header is not None:  # without a header, no row can be read
                    continue
                return
            if lines.undecodable is not None:
                line, problem = lines.undecodable
                yield Row(line, None, problem)
                if header is None:
                    return
                continue
            if not cells:
                continue  # a blank line
            if header is None:
                header = cells
                columns = _columns(header, settings.columns_for(kind), spec.headers)
                if "id" not in columns:
                    section = "company_columns" if kind == "companies" else "columns"
                    problem = f"no {spec.noun} id column (set import.{section}.id to its header)"
                    yield Row(start, None, problem)
                    return
                continue
            if any(extra.strip() for extra in cells[len(header) :]):  # empty ones are harmless
                hint = " (a quote not closed?)" if lines.number > start else ""
                problem = f"{len(cells)} cells, but the header has {len(header)}{hint}"
                yield Row(start, None, problem)
                continue
            payload = _payload(dict(zip(header, cells, strict=False)), columns, customer_id, spec)
            yield _validated(start, payload, spec.schema)
        if lines.too_long is not None:
            problem = f"longer than {LINE_LIMIT:,} characters: the rest of the file was not read"
            yield Row(lines.too_long, None, problem)
        elif header is None:
            yield Row(1, None, "no header line: the file is empty")


def _csv_error(error: str, start: int, lines: _Lines, delimiter: str) -> tuple[int, str, bool]:
    """What a csv.Error means for the user: the line at fault, the problem, and whether the
    lines after it can still be read as rows (not when a quote swallowed them)."""
    opened = _open_quote(lines.record, start, delimiter)
    if error.startswith("unexpected end of data") and opened is not None:
        problem = (
            "a quote opened on this line is never closed: every line after it would be one cell"
        )
        return opened, problem, False
    if error.startswith("field larger than field limit"):
        limit = f"{csv.field_size_limit():,} characters"
        if opened is not None and lines.number > opened:
            problem = (
                f"a quote opened on this line is not closed by line {lines.number}, where the "
                f"cell passes {limit}: the rest of the file was not read"
            )
            return opened, problem, False
        return start, f"a cell longer than {limit}", True
    return lines.number, f"malformed CSV: {error}", True


def _open_quote(record: list[str], first: int, delimiter: str) -> int | None:
    """The line (``record`` starts at line ``first``) of the quote still open at its end."""
    quoted, at_start, opened = False, True, None
    for number, text in enumerate(record, start=first):
        i = 0
        while i < len(text):
            char = text[i]
            if quoted:
                if char == '"':
                    if text[i + 1 : i + 2] == '"':
                        i += 1  # an escaped quote
                    else:
                        quoted = False
            elif char == '"' and at_start:  # a quote only opens a cell at its start
                quoted, opened = True, number
            at_start = not quoted and char in (delimiter, "\n", "\r")
            i += 1
    return opened if quoted else None


def _columns(
    headers: list[str], overrides: dict[str, str], defaults: dict[str, tuple[str, ...]]
) -> dict[str, str]:
    """Payload field -> the header that holds it."""
    by_normal = {_normal(h): h for h in headers}
    found = {}
    for field, names in defaults.items():
        wanted = overrides.get(field)
        if wanted is not None:
            if wanted in headers:
                found[field] = wanted
            continue
        header = next((by_normal[n] for n in names if n in by_normal), None)
        if header is not None:
            found[field] = header
    return found


def _payload(
    cells: dict[str, str], columns: dict[str, str], customer_id: str, spec: KindSpec
) -> dict[str, Any]:
    def cell(field: str) -> str | None:
        value = (cells.get(columns[field]) or "").strip() if field in columns else ""
        return value or None

    def many(field: str) -> list[str]:
        return [v for v in LISTS.split(cell(field) or "") if v]

    return spec.build(cell, many, customer_id)


def _json_lines(path: Path, customer_id: str, spec: KindSpec, max_bytes: int) -> Iterator[Row]:
    # Imported here: the receiver's module imports the config, which imports this one.
    from connector.receiver import body_problem

    with path.open("rb") as f:
        line = 0
        while raw := f.readline(max_bytes + 1):  # a line too long is never all in memory
            line += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while (rest := f.readline(max_bytes)) and not rest.endswith(b"\n"):
                    pass
                problem = f"longer than {max_bytes:,} bytes (server.max_body_bytes)"
                yield Row(line, None, problem)
                continue
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a BOM an editor may have added
            if not raw.strip():
                continue
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield Row(line, None, f"not valid JSON: {exc}")
                continue
            if not isinstance(payload, dict):
                yield Row(line, None, "not a JSON object")
                continue
            # Refused as a webhook would be: duplicate keys (ambiguous), nesting too deep.
            if (refused := body_problem(raw, payload)) is not None:
                yield Row(line, None, refused)
                continue
            payload.setdefault("customerId", customer_id)
            if payload["customerId"] != customer_id:
                yield Row(line, None, "customerId is not this tenant's Mimeeq customer")
                continue
            yield _validated(line, payload, spec.schema)


def _validated(line: int, payload: dict[str, Any], schema: TypeAdapter[Any]) -> Row:
    try:
        schema.validate_python(payload)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in error["loc"]) or "(row)"
        problem = "required, but empty" if error["type"] == "missing" else error["msg"]
        return Row(line, None, f"{field}: {problem}")
    return Row(line, payload)
