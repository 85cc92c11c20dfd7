"""CSV target: a current-state file, one row per live contact, for people with a spreadsheet.

The whole file is kept in memory (key → row of final cell strings) and rewritten atomically after
every change: temp file in the same folder, fsync, ``os.replace``, fsync of the folder. A crash at
any moment leaves the old or the new complete file. Overlapping pushes share one rewrite (group
commit), so a burst of updates costs a few rewrites, not one per push.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from connector.adapter import Adapter, ConfigPath, Record, TargetContext, TargetSettings
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

    @field_validator("delimiter")
    @classmethod
    def _usable_delimiter(cls, value: str) -> str:
        if value in "\"\r\n'":
            raise ValueError("must not be a quote or a line break")
        return value


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


class CsvAdapter(Adapter[CsvSettings]):
    type = "csv"
    settings_model = CsvSettings
    max_batch_size = 10_000
    default_linger = 0.2  # every push rewrites the file: gather bursts

    # Retries of one rewrite within a push (disk full, file locked by a spreadsheet program).
    write_attempts: int = 3
    write_retry_wait: float = 0.2

    def __init__(self, settings: CsvSettings, context: TargetContext) -> None:
        super().__init__(settings, context)
        key = settings.key_column
        self.columns: list[str] = [key, *(f for f in context.fields if f != key)]
        self._value_columns = self.columns[1:]
        self.writes = 0  # file rewrites so far (tests and benchmarks count them)
        # key cell → the row's final cell strings. Rows are replaced, never mutated, so a writer
        # thread can serialise a snapshot while pushes keep changing the dict.
        self._rows: dict[str, list[str]] = {}
        self._opened = False
        # Resolved (with None, or an error text) by the next rewrite, which includes every
        # change applied before it starts. None: no push is waiting for a rewrite.
        self._next_flush: asyncio.Future[str | None] | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._rows = await asyncio.to_thread(self._load)
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
            key = _escaped(record.contact_id)
            if not key:  # a row without a key would make the file unreadable at the next open
                outcomes.append(Dead("empty contact id"))
            elif record.op == "delete":
                known = self._rows.pop(key, None) is not None
                outcomes.append(Delivered() if known else Delivered(note="not in file"))
            else:
                fields = record.fields
                cells = (_escaped(_text(fields.get(c))) for c in self._value_columns)
                self._rows[key] = [key, *cells]
                outcomes.append(Delivered())
        error = await self._flush()
        if error is not None:
            # Memory keeps the changes; the next rewrite includes them, and the worker retries.
            raise Undelivered(Retry(error))
        return outcomes

    async def _flush(self) -> str | None:
        """Wait for a rewrite that includes every change applied so far; None when it succeeded."""
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
            rows = list(self._rows.values())
            try:
                await asyncio.to_thread(self._write, rows)
            except Exception as exc:  # OSError after the retries, or anything unexpected
                flush.set_result(f"cannot write {self.settings.path}: {exc}")
            except BaseException:
                flush.cancel()
                raise
            else:
                self.writes += 1
                flush.set_result(None)

    # -- file I/O (runs in a thread) ---------------------------------------------------------

    def _write(self, rows: list[list[str]]) -> None:
        for attempt in Retrying(
            stop=stop_after_attempt(self.write_attempts),
            wait=wait_fixed(self.write_retry_wait),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        ):
            with attempt:
                self._write_once(rows)

    def _write_once(self, rows: list[list[str]]) -> None:
        path = self.settings.path
        # Same folder as the target, so os.replace is an atomic rename on one file system.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("x", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter=self.settings.delimiter)
                writer.writerow(self.columns)
                writer.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)  # make the rename itself durable

    def _load(self) -> dict[str, list[str]]:
        path = self.settings.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a crash mid-write
                stale.unlink(missing_ok=True)
            # utf-8-sig: tolerate the BOM a spreadsheet program may add when saving.
            with path.open(encoding="utf-8-sig", newline="") as f:
                return self._parse(csv.reader(f, delimiter=self.settings.delimiter, strict=True))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{path}: cannot read the CSV file: {exc}") from exc

    def _parse(self, reader: Reader) -> dict[str, list[str]]:
        path, key = self.settings.path, self.settings.key_column
        header = next(reader, None)
        if header is None:
            return {}  # empty file
        if key not in header or len(set(header)) != len(header):
            raise ConfigError(f"{path}: header has no {key!r} column or repeats one: not ours?")
        # The mapping may have changed: keep the columns that still exist, in the new order.
        where = [header.index(c) if c in header else None for c in self.columns]
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
