"""CSV target: a current-state file, one row per live contact, for people with a spreadsheet.

With a ``company_mapping``, a second file (``companies_path``) holds one row per live company,
kept by the same rules. Each file is kept in memory (key → row of final cell strings) and
rewritten atomically after every change: temp file in the same folder, fsync, ``os.replace``,
fsync of the folder. A crash at any moment leaves the old or the new complete file. Overlapping
pushes share one rewrite (group commit), so a burst of updates costs a few rewrites, not one per
push.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TextIO

from pydantic import Field, field_validator, model_validator
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from connector.adapter import (
    Adapter,
    ConfigPath,
    ObjectType,
    Record,
    RequestPreview,
    TargetContext,
    TargetSettings,
)
from connector.errors import ConfigError
from connector.outcomes import Dead, Delivered, Outcome, Retry, Undelivered

if TYPE_CHECKING:
    from _csv import Reader

# OWASP CSV injection advice: a spreadsheet may run a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class CsvSettings(TargetSettings):
    path: ConfigPath = Field(description="the CSV file; relative to the config file's folder")
    key_column: str = Field(default="mimeeq_contact_id", min_length=1, description="first column")
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    companies_path: ConfigPath | None = Field(
        default=None, description="the companies' CSV file (with company_mapping)"
    )
    company_key_column: str = Field(
        default="mimeeq_company_id", min_length=1, description="first column of companies_path"
    )

    @field_validator("delimiter")
    @classmethod
    def _usable_delimiter(cls, value: str) -> str:
        if value in "\"\r\n'":
            raise ValueError("must not be a quote or a line break")
        return value

    @model_validator(mode="after")
    def _companies_have_a_file(self) -> Self:
        # Companies need a file of their own, and a file of companies needs their mapping.
        if self.company_mapping is not None and self.companies_path is None:
            raise ValueError("company_mapping needs `companies_path`: the companies' CSV file")
        if self.companies_path is not None and self.company_mapping is None:
            raise ValueError("companies_path needs `company_mapping`: how companies are mapped")
        if self.companies_path is not None and self.companies_path == self.path:
            raise ValueError("companies_path must be another file than path")
        return self


def _text(value: Any) -> str:
    """One mapped value as cell text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "; ".join(_text(item) for item in value)
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def _safe(cell: str) -> str:
    """Neutralise a would-be formula in a cell read back from the file (a hand edit).
    Idempotent: a cell starting with ``'`` is left alone."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _escaped(text: str) -> str:
    """A value as its cell: a would-be formula gets a ``'`` in front, and so does text that
    would read as one escaped (``'=X`` becomes ``''=X``), so that no two texts share a cell
    and a key column keeps one row per contact. Other text starting with ``'`` is left as it
    is, as before: files written by earlier versions read the same."""
    return "'" + text if text.lstrip("'").startswith(_FORMULA_STARTS) else text


def _unescaped(cell: str) -> str:
    """The text a cell holds: the inverse of ``_escaped``."""
    return cell[1:] if cell.startswith("'") and _escaped(cell[1:]) == cell else cell


@dataclass(eq=False, slots=True)
class _Sheet:
    """One current-state file: the contacts', or the companies'."""

    path: Path
    columns: list[str]  # the key column first, then the mapping's fields in order
    # key cell → the row's final cell strings. Rows are replaced, never mutated, so a writer
    # thread can serialise a snapshot while pushes keep changing the dict.
    rows: dict[str, list[str]] = field(default_factory=dict)
    dirty: bool = False  # changed since its last rewrite began: the next one writes it

    @property
    def key(self) -> str:
        return self.columns[0]


class CsvAdapter(Adapter[CsvSettings]):
    type = "csv"
    settings_model = CsvSettings
    max_batch_size = 10_000
    default_linger = 0.2  # every push rewrites the file: gather bursts
    takes_companies = True

    # Retries of one rewrite within a push (disk full, file locked by a spreadsheet program).
    write_attempts: int = 3
    write_retry_wait: float = 0.2

    def __init__(self, settings: CsvSettings, context: TargetContext) -> None:
        super().__init__(settings, context)
        self._sheets: dict[ObjectType, _Sheet] = {
            "contact": _Sheet(settings.path, _columns(settings.key_column, context.fields))
        }
        if settings.companies_path is not None:
            columns = _columns(settings.company_key_column, context.company_fields)
            self._sheets["company"] = _Sheet(settings.companies_path, columns)
        self.writes = 0  # file rewrites so far (tests and benchmarks count them)
        self._opened = False
        # Resolved by the next rewrite round, which includes every change applied before it
        # starts, with the error of each file it could not write (none: all written). None: no
        # push is waiting for a rewrite.
        self._next_flush: asyncio.Future[dict[ObjectType, str]] | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        for sheet in self._sheets.values():
            sheet.rows = await asyncio.to_thread(self._load, sheet)
        self._opened = True

    async def close(self) -> None:
        # The writer task loops until no push is waiting, so awaiting it drains everything.
        while self._writer is not None and not self._writer.done():
            await self._writer

    # -- delivery ----------------------------------------------------------------------------

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        if not self._opened:  # writing without the loaded rows would wipe the file
            raise RuntimeError("CsvAdapter.push() before open()")
        if not records:
            return []
        outcomes: list[Outcome] = []
        # Apply to memory without awaiting, so each push's changes land atomically.
        for record in records:
            sheet = self._sheets.get(record.object_type)
            key = _escaped(record.contact_id)
            if sheet is None:  # config refuses company_mapping without companies_path
                outcomes.append(Dead("this target has no companies_path: companies are not kept"))
                continue
            sheet.dirty = True
            if not key:  # a row without a key would make the file unreadable at the next open
                outcomes.append(Dead(f"empty {record.object_type} id"))
            elif record.op == "delete":
                known = sheet.rows.pop(key, None) is not None
                outcomes.append(Delivered() if known else Delivered(note="not in file"))
            else:
                sheet.rows[key] = _row(sheet, key, record)
                outcomes.append(Delivered())
        errors = await self._flush()
        failed = [errors.get(r.object_type) for r in records]
        if all(failed):
            # Memory keeps the changes; the next rewrite includes them, and the worker retries.
            raise Undelivered(Retry(next(e for e in failed if e)))
        # Only one of the files failed: its records wait, the other file's are delivered.
        return [
            Retry(error) if error and not isinstance(o, Dead) else o
            for o, error in zip(outcomes, failed, strict=True)
        ]

    def describe_request(self, record: Record) -> list[RequestPreview]:
        sheet = self._sheets.get(record.object_type)
        if sheet is None:
            return [RequestPreview(note="this target has no companies_path: nothing written")]
        key = _escaped(record.contact_id)
        path = str(sheet.path)
        if not key:
            return [RequestPreview(note=f"empty {record.object_type} id: nothing written")]
        if record.op == "delete":
            return [RequestPreview(path=path, note=f"the file is rewritten without row {key}")]
        # The header and this row as the rewrite writes them; the file's other rows stay.
        text = io.StringIO(newline="")
        _write_rows(text, self.settings.delimiter, sheet.columns, [_row(sheet, key, record)])
        return [RequestPreview(path=path, text=text.getvalue())]

    async def _flush(self) -> dict[ObjectType, str]:
        """Wait for a rewrite that includes every change applied so far; the files it could not
        write, with the error."""
        if self._next_flush is None:
            self._next_flush = asyncio.get_running_loop().create_future()
        flush = self._next_flush
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        # Shielded: a push cancelled by its timeout must not cancel the flush others wait for.
        return await asyncio.shield(flush)

    async def _write_loop(self) -> None:
        while (flush := self._next_flush) is not None:
            # Pushes arriving from now on wait for the following rewrite.
            self._next_flush = None
            errors: dict[ObjectType, str] = {}
            try:
                for kind, sheet in self._sheets.items():
                    if not sheet.dirty:
                        continue  # a push of contacts only does not rewrite the companies
                    sheet.dirty = False
                    rows = list(sheet.rows.values())
                    try:
                        await asyncio.to_thread(self._write, sheet, rows)
                    except Exception as exc:  # OSError after the retries, or anything unexpected
                        sheet.dirty = True  # the next rewrite tries again
                        errors[kind] = f"cannot write {sheet.path}: {exc}"
                    else:
                        self.writes += 1
            except BaseException:
                for sheet in self._sheets.values():
                    sheet.dirty = True  # a cancelled rewrite may not have landed
                flush.cancel()
                raise
            flush.set_result(errors)

    # -- file I/O (runs in a thread) ---------------------------------------------------------

    def _write(self, sheet: _Sheet, rows: list[list[str]]) -> None:
        for attempt in Retrying(
            stop=stop_after_attempt(self.write_attempts),
            wait=wait_fixed(self.write_retry_wait),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        ):
            with attempt:
                self._write_once(sheet, rows)

    def _write_once(self, sheet: _Sheet, rows: list[list[str]]) -> None:
        path = sheet.path
        # Same folder as the target, so os.replace is an atomic rename on one file system.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("x", encoding="utf-8", newline="") as f:
                _write_rows(f, self.settings.delimiter, sheet.columns, rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)  # make the rename itself durable

    def _load(self, sheet: _Sheet) -> dict[str, list[str]]:
        path = sheet.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a crash mid-write
                stale.unlink(missing_ok=True)
            # utf-8-sig: tolerate the BOM a spreadsheet program may add when saving.
            with path.open(encoding="utf-8-sig", newline="") as f:
                reader = csv.reader(f, delimiter=self.settings.delimiter, strict=True)
                return _parse(sheet, reader)
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{path}: cannot read the CSV file: {exc}") from exc


def _row(sheet: _Sheet, key: str, record: Record) -> list[str]:
    """A record's row: its (escaped) key, then each column's cell."""
    fields = record.fields
    return [key, *(_escaped(_text(fields.get(c))) for c in sheet.columns[1:])]


def _write_rows(f: TextIO, delimiter: str, columns: list[str], rows: list[list[str]]) -> None:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(columns)
    writer.writerows(rows)


def _columns(key: str, fields: Sequence[str]) -> list[str]:
    """A file's header: the key column first, even when the mapping also produces it."""
    return [key, *(f for f in fields if f != key)]


def _parse(sheet: _Sheet, reader: Reader) -> dict[str, list[str]]:
    path, key = sheet.path, sheet.key
    header = next(reader, None)
    if header is None:
        return {}  # empty file
    if key not in header or len(set(header)) != len(header):
        raise ConfigError(f"{path}: header has no {key!r} column or repeats one: not ours?")
    # The mapping may have changed: keep the columns that still exist, in the new order.
    where = [header.index(c) if c in header else None for c in sheet.columns]
    key_at = header.index(key)
    rows: dict[str, list[str]] = {}
    for cells in reader:
        if not any(cells):
            continue  # blank line
        if len(cells) > len(header):
            raise ConfigError(f"{path}: line {reader.line_num} has more cells than the header")
        cells += [""] * (len(header) - len(cells))
        # _safe again: a hand-edited cell may hold a formula; idempotent for our own cells.
        row = [_safe(cells[i]) if i is not None else "" for i in where]
        # The key as this version writes it: the same contact finds its row whichever
        # version wrote the file, and a hand-typed formula key is neutralised.
        row[0] = _escaped(_unescaped(cells[key_at]))
        if not row[0]:
            raise ConfigError(f"{path}: line {reader.line_num} has an empty {key!r}")
        rows[row[0]] = row
    return rows


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # folders cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
