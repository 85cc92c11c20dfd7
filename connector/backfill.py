"""Backfill: contacts from Mimeeq's CSV export, or JSON lines of payloads, as ordinary events.

Mimeeq has no API to list contacts: its admin's CSV export is the only bulk source. Every row
becomes a ``contact-imported`` event that goes through the normal pipeline (tombstones, queue,
mapping, retries), so an import behaves exactly like webhooks, and running it twice stores
nothing new: identical events are recognised as duplicates.

The export's column headers are matched loosely (case, spaces and punctuation ignored) against
the names below; a tenant's ``import.columns`` names the header of any field that differs.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connector.payloads import CONTACT

IMPORT_EVENT = "contact-imported"

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
LISTS = re.compile(r"\s*[;,|]\s*")  # how several e-mails, numbers or tags share one cell


class ImportSettings(BaseModel):
    """A tenant's ``import:`` section: how its Mimeeq export is laid out."""

    model_config = ConfigDict(extra="forbid")
    columns: dict[str, str] = Field(
        default_factory=dict, description="payload field -> the export's header for it"
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1)


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    payload: dict[str, Any] | None  # None when unusable
    problem: str | None = None


def _normal(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def read_rows(path: Path, customer_id: str, settings: ImportSettings) -> Iterator[Row]:
    """Rows of a ``.csv`` export or a JSON-lines file (``.jsonl``, ``.ndjson``, ``.json``)."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from _json_lines(path, customer_id)
    else:
        yield from _csv_rows(path, customer_id, settings)


def _csv_rows(path: Path, customer_id: str, settings: ImportSettings) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig", newline="") as f:  # exports often carry a BOM
        reader = csv.DictReader(f, delimiter=settings.delimiter)
        columns = _columns(list(reader.fieldnames or []), settings)
        if "id" not in columns:
            yield Row(1, None, "no contact id column (set import.columns.id to its header)")
            return
        for cells in reader:
            payload = _payload(cells, columns, customer_id)
            yield _validated(reader.line_num, payload)


def _columns(headers: list[str], settings: ImportSettings) -> dict[str, str]:
    """Payload field -> the header that holds it."""
    by_normal = {_normal(h): h for h in headers}
    found = {}
    for field, names in DEFAULT_HEADERS.items():
        wanted = settings.columns.get(field)
        if wanted is not None:
            if wanted in headers:
                found[field] = wanted
            continue
        header = next((by_normal[n] for n in names if n in by_normal), None)
        if header is not None:
            found[field] = header
    return found


def _payload(cells: dict[str, str], columns: dict[str, str], customer_id: str) -> dict[str, Any]:
    def cell(field: str) -> str | None:
        value = (cells.get(columns[field]) or "").strip() if field in columns else ""
        return value or None

    def many(field: str) -> list[str]:
        return [v for v in LISTS.split(cell(field) or "") if v]

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


def _json_lines(path: Path, customer_id: str) -> Iterator[Row]:
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
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
            payload.setdefault("customerId", customer_id)
            if payload["customerId"] != customer_id:
                yield Row(line, None, "customerId is not this tenant's Mimeeq customer")
                continue
            yield _validated(line, payload)


def _validated(line: int, payload: dict[str, Any]) -> Row:
    try:
        CONTACT.validate_python(payload)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in error["loc"]) or "(row)"
        problem = "required, but empty" if error["type"] == "missing" else error["msg"]
        return Row(line, None, f"{field}: {problem}")
    return Row(line, payload)
