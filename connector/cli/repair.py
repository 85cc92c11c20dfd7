"""Seeing and repairing what went wrong: dlq, trace, import."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from connector import operations
from connector.backfill import (
    KINDS,
    Kind,
    detect_kind,
    file_headers,
    is_json_lines,
    read_rows,
)
from connector.cli.base import (
    config_option,
    fail,
    json_option,
    load,
    main,
    opened_store,
    pick_targets,
    print_json,
    table,
    when,
)
from connector.config import Config
from connector.keys import split_key
from connector.operations import letter_dict
from connector.store.base import (
    DeadLetter,
    DeadLetterPick,
    NewEvent,
    Replayed,
    Trace,
    payload_emails,
)

tenant_option = click.option("--tenant", default=None, help="Only this tenant's targets.")
target_option = click.option("--target", default=None, help="Only this target (needs --tenant).")
MAX_ID = 2**63 - 1  # the largest integer SQLite and PostgreSQL keep: any larger is no id of ours
# Out of range is a usage error (exit 2) naming the range, not an overflow deep in the store.
DEAD_LETTER_ID = click.IntRange(1, MAX_ID)
F = TypeVar("F", bound=Callable[..., Any])


reason_option = click.option(
    "--reason", default=None, help="Only those whose error contains this text (any case)."
)
older_option = click.option(
    "--older-than-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Only those that last failed more than this many days ago.",
)


def dead_letter_choice(all_help: str) -> Callable[[F], F]:
    """The options that choose dead letters: ids, or --all (of --tenant/--target, narrowed by
    --reason and --older-than-days)."""

    def decorate(command: F) -> F:
        for option in reversed((
            config_option,
            click.argument("ids", type=DEAD_LETTER_ID, nargs=-1),
            click.option("--all", "all_of", is_flag=True, help=all_help),
            tenant_option,
            target_option,
            reason_option,
            older_option,
        )):  # fmt: skip
            command = option(command)
        return command

    return decorate


def letter_pick(
    targets: list[str] | None, reason: str | None, older_than_days: float | None
) -> DeadLetterPick:
    """The dead letters the filter options choose (as the console's filters do)."""
    before = time.time() - older_than_days * 86_400 if older_than_days is not None else None
    return DeadLetterPick(targets=targets, failed_before=before, error_contains=reason or None)


@main.group()
def dlq() -> None:
    """Inspect and redrive dead letters."""


@dlq.command("list")
@config_option
@tenant_option
@target_option
@reason_option
@older_option
@click.option("--limit", type=click.IntRange(0, MAX_ID), default=1000, show_default=True)
@json_option
def dlq_list(
    config_path: Path | None,
    tenant: str | None,
    target: str | None,
    reason: str | None,
    older_than_days: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """Dead letters not replayed yet, oldest first."""
    config = load(config_path, need="store")
    targets = pick_targets(config, tenant, target) if tenant else None
    letters = asyncio.run(
        _dead_letters(config, letter_pick(targets, reason, older_than_days), limit)
    )
    if as_json:
        print_json([letter_dict(letter) for letter in letters])
        return
    if not letters:
        click.echo("no dead letters")
        return
    rows = [("ID", "TENANT", "TARGET", "OBJECT", "EVENT", "ATTEMPTS", "FAILED AT", "ERROR")]
    for d in letters:
        tenant, name = split_key(d.target)
        error = d.error if len(d.error) <= 100 else d.error[:99] + "…"
        rows.append((str(d.id), tenant, name, d.contact_id, d.event_type or "-",
                     str(d.attempts), when(d.failed_at), error))  # fmt: skip
    table(rows)


async def _dead_letters(config: Config, pick: DeadLetterPick, limit: int) -> list[DeadLetter]:
    async with opened_store(config) as store:
        return await store.dead_letters(limit=limit, pick=pick)


@dlq.command("show")
@config_option
@click.argument("dead_letter_id", type=DEAD_LETTER_ID)
@json_option
def dlq_show(config_path: Path | None, dead_letter_id: int, as_json: bool) -> None:
    """Everything about one dead letter, payload included."""
    config = load(config_path, need="store")
    letter = asyncio.run(_dead_letter(config, dead_letter_id))
    if letter is None:
        fail(f"no dead letter {dead_letter_id}")
        return
    details = letter_dict(letter)
    payload = orjson.loads(letter.payload) if letter.payload else None
    if as_json:
        print_json({**details, "payload": payload})
        return
    for key, value in details.items():
        if key.endswith("_at"):
            value = when(value)
        click.echo(f"{key.replace('_', ' ') + ':':<18}{'-' if value is None else value}")
    click.echo("payload:")
    click.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() if payload else "  -")


async def _dead_letter(config: Config, dead_letter_id: int) -> DeadLetter | None:
    async with opened_store(config) as store:
        return await store.dead_letter(dead_letter_id)


@dlq.command("replay")
@dead_letter_choice("Every dead letter not replayed yet.")
@click.option("--wait", type=float, default=0, help="Wait up to this many seconds for outcomes.")
@json_option
def dlq_replay(
    config_path: Path | None,
    ids: tuple[int, ...],
    all_of: bool,
    tenant: str | None,
    target: str | None,
    reason: str | None,
    older_than_days: float | None,
    wait: float,
    as_json: bool,
) -> None:
    """Queue dead contacts again with their latest state, through the current mapping.

    A running server picks them up within seconds; it maps them with the config it has loaded,
    so after fixing a mapping restart the server (or send it SIGHUP) before replaying.
    """
    if bool(ids) == all_of:
        raise click.UsageError("give dead letter ids, or --all")
    if ids and (reason is not None or older_than_days is not None):
        raise click.UsageError("--reason and --older-than-days narrow --all, not ids")
    config = load(config_path)
    targets = pick_targets(config, tenant, target)
    pick = letter_pick(targets, reason, older_than_days) if all_of else None
    report, outcomes = asyncio.run(_replay(config, list(ids) or None, targets, pick, wait))
    if as_json:
        print_json([asdict(r) | {"outcome": outcomes.get(r.dead_letter)} for r in report])
    else:
        for r in report:
            outcome = f" → {outcomes[r.dead_letter]}" if r.dead_letter in outcomes else ""
            where = f" {r.target} {r.contact_id}" if r.target else ""
            click.echo(f"#{r.dead_letter}{where}: {r.action}{outcome}")
        counts = Counter(r.action for r in report)
        summary = ", ".join(f"{n} {action}" for action, n in counts.items())
        click.echo(summary or "nothing to replay")
    if any(r.action == "not found" for r in report):
        sys.exit(1)  # an id asked for is no dead letter: a typo a script must not miss


async def _replay(
    config: Config,
    ids: list[int] | None,
    targets: list[str],
    pick: DeadLetterPick | None,
    wait: float,
) -> tuple[list[Replayed], dict[int, str]]:
    async with opened_store(config) as store:
        return await operations.replay_and_wait(store, ids, targets, pick, wait)


@dlq.command("purge")
@dead_letter_choice("Every dead letter (of --tenant/--target).")
@click.option("--yes", is_flag=True, help="Do not ask before purging --all.")
@json_option
def dlq_purge(
    config_path: Path | None,
    ids: tuple[int, ...],
    all_of: bool,
    tenant: str | None,
    target: str | None,
    reason: str | None,
    older_than_days: float | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good."""
    if bool(ids) == all_of:
        raise click.UsageError("give dead letter ids, or --all")
    config = load(config_path, need="store")
    targets = pick_targets(config, tenant, target) if (tenant or target) else None
    if all_of and not yes:
        scope = f" of {', '.join(targets)}" if targets else ""
        age = f" older than {older_than_days:g} days" if older_than_days is not None else ""
        about = f" whose error contains {reason!r}" if reason else ""
        click.confirm(
            f"Delete every dead letter{scope}{about}{age} for good?", abort=True, err=True
        )
    pick = replace(letter_pick(targets, reason, older_than_days), ids=list(ids) or None)
    purged = asyncio.run(_purge(config, pick))
    if as_json:
        print_json({"purged": purged})
    else:
        click.echo(f"purged {purged} dead letter(s)")


async def _purge(config: Config, pick: DeadLetterPick) -> int:
    async with opened_store(config) as store:
        return await store.purge(pick)


@main.command()
@config_option
@click.argument("contact_ids", nargs=-1)
@click.option("--all", "all_of", is_flag=True, help="Every contact the targets hold.")
@tenant_option
@target_option
@json_option
def resync(
    config_path: Path | None,
    contact_ids: tuple[str, ...],
    all_of: bool,
    tenant: str | None,
    target: str | None,
    as_json: bool,
) -> None:
    """Write contacts again in full, not as a diff (after an edit in the CRM by hand, or a
    mapping change): one or more contacts, every contact of a target, or of every target.

    Each is queued with its latest state and written whole by a running server: every mapped
    field, and the emptied ones cleared. Deleted contacts stay deleted.
    """
    if bool(contact_ids) == all_of:
        raise click.UsageError("give contact ids, or --all")
    config = load(config_path)
    targets = pick_targets(config, tenant, target)
    queued = asyncio.run(_resync(config, targets, list(contact_ids) or None))
    if as_json:
        print_json(queued)
        return
    for key, n in queued.items():
        click.echo(f"{key}: {n} contact(s) queued for a full re-write")


async def _resync(
    config: Config, targets: list[str], contact_ids: list[str] | None
) -> dict[str, int]:
    async with opened_store(config) as store:
        return await operations.resync(store, targets, contact_ids)


@main.command()
@config_option
@click.argument("contact_id", metavar="ID")
@json_option
def trace(config_path: Path | None, contact_id: str, as_json: bool) -> None:
    """The history of one contact (or company, by its COMP-… id): received, mapped, pushed, CRM
    id, outcome."""
    config = load(config_path, need="store")
    found = asyncio.run(_trace(config, contact_id))
    if as_json:
        print_json(operations.trace_dict(found))
        return
    if operations.trace_is_empty(found):
        fail(
            f"nothing known about {contact_id} (events are kept "
            f"{config.store.retention_days:g} days after delivery)"
        )
    event_ids = {e.seq: e.event_id for e in found.events}
    click.echo(f"{operations.object_of(contact_id)} {contact_id}")
    click.echo("events received:")
    for e in found.events:
        fate = f"dropped: {e.dropped}" if e.dropped else "queued"
        click.echo(f"  {when(e.received_at)}  {e.tenant}  {e.event_type:<17} {fate}"
                   f"  (event {e.event_id})")  # fmt: skip
    click.echo("pushes:" if found.attempts else "pushes: none yet")
    for a in found.attempts:
        crm = f"  CRM id {a.remote_id}" if a.remote_id else ""
        detail = f": {a.detail}" if a.detail else ""
        source = f"event {event_ids.get(a.seq, a.seq)}, mapping {a.mapping or '-'}"
        click.echo(f"  {when(a.at)}  {a.target}  {a.outcome}{detail}{crm}  ({source})")
        if a.fields and a.outcome in ("delivered", "unchanged"):
            click.echo("      " + "; ".join(operations.push_words(a.fields)))
    for key, (op, tries, due, error) in found.pending.items():
        failed = f", {tries} failed attempt(s), last error: {error}" if tries else ""
        click.echo(f"pending: {key} {op}, next try {when(due)}{failed}")
    for d in found.dead_letters:
        state = f"replayed {when(d.replayed_at)}" if d.replayed_at else "not replayed"
        click.echo(f"dead letter #{d.id}: {d.target} after {d.attempts} attempt(s): {d.error}"
                   f" ({state})")  # fmt: skip
    for key, remote in found.remote_ids.items():
        click.echo(f"CRM id: {key} {remote}")


async def _trace(config: Config, contact_id: str) -> Trace:
    async with opened_store(config) as store:
        return await store.trace(contact_id)


@main.command("import")
@config_option
@click.option("--tenant", required=True)
@click.option(
    "--kind",
    type=click.Choice(sorted(KINDS)),
    default=None,
    help="What the file holds (default: told from its headers).",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def import_command(
    config_path: Path | None, tenant: str, kind: Kind | None, file: Path, as_json: bool
) -> None:
    """Backfill from a Mimeeq contacts or companies CSV export, or a JSON-lines file of
    contact or company payloads.

    Without --kind, the headers tell: first or last name, contacts; a company name and no
    first or last name, companies. The whole file is read and checked first: it is imported
    whole, or refused (exit 1) with the lines at fault and nothing stored. Every row goes
    through the normal pipeline; importing the same file twice stores nothing new.
    """
    config = load(config_path)
    if tenant not in config.tenants:
        raise click.BadParameter(f"no tenant {tenant!r} in {config.path}", param_hint="--tenant")
    if kind is not None:  # given: refused before the file is even opened
        _check_targets(config, tenant, kind)
    kind = _kind_of(config, tenant, file, kind)
    _check_targets(config, tenant, kind)
    result = asyncio.run(_import(config, tenant, file, kind, show_progress=not as_json))
    if as_json:
        print_json(asdict(result) | {"problems": [
            {"line": n, "problem": p} for n, p in result.problems]})  # fmt: skip
    else:
        for line, problem in result.problems:
            click.echo(f"  line {line}: {problem}", err=True)
        if result.more_problems:
            click.echo(f"  … and {result.more_problems} more", err=True)
        if result.error:
            click.echo(f"error: {result.error}", err=True)
        click.echo(f"{file}: {result.summary()}")
    if result.status != "imported":
        raise SystemExit(1)


def _check_targets(config: Config, slug: str, kind: Kind) -> None:
    # Companies go only to targets with a company_mapping: with none, the rows would be stored
    # for nobody (as the receiver ignores a company webhook then). Refused before any row is read.
    if kind == "companies" and not config.tenants[slug].targets_for("company"):
        fail(
            f"no target of tenant {slug!r} takes companies: give one a company_mapping "
            "(and enable it) before importing companies"
        )


def _kind_of(config: Config, slug: str, file: Path, given: Kind | None) -> Kind:
    """The kind of records ``file`` holds: ``given`` unless its headers clearly say otherwise,
    else told from them (on stderr)."""
    settings = config.tenants[slug].import_settings
    headers = file_headers(file, settings, max_line_bytes=config.server.max_body_bytes)
    if headers is None:  # unreadable: reading it names the problem (and nothing is stored)
        return given or "contacts"
    detected = detect_kind(headers, settings)
    if given is not None:
        if detected is not None and detected != given:
            raise click.UsageError(
                f"--kind {given}, but {file.name} looks like a {detected} export "
                f"({_evidence(detected)}); give --kind {detected}, or fix the headers"
            )
        return given
    if detected is None:
        shown = ", ".join(headers[:8]) + (", …" if len(headers) > 8 else "")
        raise click.UsageError(
            f"cannot tell whether {file.name} holds contacts or companies (headers: {shown}): "
            "neither a first/last name nor a company name column; give --kind contacts or "
            "--kind companies"
        )
    click.echo(f"{file.name}: {detected} ({_evidence(detected)}; --kind to say otherwise)",
               err=True)  # fmt: skip
    return detected


def _evidence(kind: Kind) -> str:
    if kind == "companies":
        return "a company name column and no first/last name"
    return "a first/last name column"


SHOWN_PROBLEMS = 20  # lines at fault named one by one; the others are counted
BATCH = 500  # events stored per transaction


@dataclass
class Imported:
    """What an import did: ``imported`` (every row stored), ``refused`` (a row could not be
    used: nothing stored) or ``stopped`` (storing failed part way: ``error``)."""

    status: Literal["imported", "refused", "stopped"] = "imported"
    rows: int = 0  # usable rows in the file
    queued: int = 0
    duplicate: int = 0  # identical to the contact's latest event: nothing new
    dropped: int = 0  # the contact was deleted earlier
    unusable: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # the first SHOWN_PROBLEMS
    more_problems: int = 0
    error: str | None = None

    def summary(self) -> str:
        stored = f"{self.queued} queued, {self.duplicate} duplicate, {self.dropped} dropped"
        if self.status == "refused" and self.error:
            return "refused, nothing imported"
        if self.status == "refused":
            return (
                f"refused, nothing imported: {self.unusable} unusable row(s), "
                f"{self.rows} usable; fix the lines named and import again"
            )
        if self.status == "stopped":
            done = self.queued + self.duplicate + self.dropped
            return (
                f"stopped after {done} of {self.rows} rows ({stored}); importing the file again "
                "is safe: what is stored already counts as duplicate"
            )
        return f"imported {self.rows} rows: {stored} (deleted earlier)"


@contextlib.contextmanager
def progress_bar(label: str, total: int, shown: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (stdout gets the summary), redrawn a few times a second however
    fast rows go by; drawn once at the end when stderr is no terminal. ``advance(n)`` moves it."""
    if not shown:
        yield lambda n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), refresh_per_second=4) as progress:
        task = progress.add_task(label, total=max(total, 0))
        yield lambda n: progress.advance(task, n)


async def _import(
    config: Config, slug: str, file: Path, kind: Kind, *, show_progress: bool
) -> Imported:
    tenant = config.tenants[slug]
    spec = KINDS[kind]
    targets = tenant.targets_for(spec.object_type)
    result = Imported()
    events: list[NewEvent] = []
    # Read and check every row before storing any: a file is imported whole or not at all.
    try:
        with file.open("rb") as f:  # in chunks: a file without line breaks is one huge line
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) + 1
        header = 0 if is_json_lines(file) else 1  # a CSV export's first line names the columns
        rows = read_rows(file, tenant.customer_id, tenant.import_settings, kind=kind,
                         max_line_bytes=config.server.max_body_bytes)  # fmt: skip
        with progress_bar("checking", lines - header, show_progress) as advance:
            done = header
            for row in rows:
                advance(max(row.line - done, 0))
                done = max(done, row.line)
                if row.payload is None:
                    result.unusable += 1
                    if len(result.problems) < SHOWN_PROBLEMS:
                        result.problems.append((row.line, row.problem or "unusable"))
                    else:
                        result.more_problems += 1
                    continue
                result.rows += 1
                if not result.unusable:  # once refused, the events are not needed
                    body = orjson.dumps(row.payload)
                    emails = payload_emails(row.payload) if kind == "contacts" else ()
                    events.append(NewEvent(slug, spec.event, row.payload["id"], "upsert", body,
                                           targets, emails))  # fmt: skip
            advance(max(lines - done, 0))
    except OSError as exc:  # the file vanished, or cannot be read: nothing stored
        result.status, result.error = "refused", f"cannot read {file}: {exc}"
        return result
    if result.unusable:
        result.status = "refused"
        return result
    if not events:
        return result  # a header and no rows: nothing to do, and nothing wrong
    try:
        async with opened_store(config) as store:
            with progress_bar("importing", len(events), show_progress) as advance:
                for at in range(0, len(events), BATCH):
                    batch = events[at : at + BATCH]
                    outcomes = Counter(one.status for one in await store.append_many(batch))
                    result.queued += outcomes["queued"]
                    result.duplicate += outcomes["duplicate"]
                    result.dropped += outcomes["dropped"]
                    advance(len(batch))
    except Exception as exc:  # the store failed (or could not open): say how far it got
        result.status, result.error = "stopped", f"cannot store: {exc}"
    return result
