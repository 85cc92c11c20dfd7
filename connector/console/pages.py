"""What the pages show, in words: status rows by tenant, dead letters, a contact's timeline.

Personal data is shown as the logs show it (connector.logs.mask): e-mail addresses and phone
numbers masked, everywhere, for everyone. No reveal: a console session is shared knowledge of one
token, so there is no one to reveal to; the CRM itself shows the full record to those allowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined

from connector.adapter import object_type_of
from connector.config import Target
from connector.errors import RecordMappingError
from connector.keys import split_key
from connector.logs import mask
from connector.mirror import masked
from connector.operations import age, push_words, status_dict
from connector.store.base import DeadLetter, TargetStatus, Trace

# Autoescape everywhere: reasons and names come from operators, targets and the config.
templates = Environment(
    loader=PackageLoader("connector.console", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=StrictUndefined,  # a typo in a template fails the tests, not silently blank
)

# The dead-letter list's age filter: key -> (label, seconds since the last failure).
AGES: dict[str, tuple[str, float]] = {
    "1h": ("more than an hour ago", 3600.0),
    "1d": ("more than a day ago", 86_400.0),
    "7d": ("more than a week ago", 7 * 86_400.0),
    "30d": ("more than 30 days ago", 30 * 86_400.0),
}


@dataclass(frozen=True)
class TargetLive:
    """What the serving process knows of a target beyond the store."""

    budget: tuple[int | None, int] | None  # requests used in the window (None: unknown), limit
    last_error: tuple[float, str] | None  # when (wall clock), and the problem, masked


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


templates.globals.update(when=when, mask=mask)


def state_words(row: TargetStatus) -> str:
    """The target's state as a sentence: never a colour alone."""
    if not row.paused:
        return "active"
    until = ""
    if row.paused_until is not None:
        until = time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(row.paused_until))
    return f"paused{until}: {row.paused_reason}"


def shown(row: TargetStatus, live: TargetLive | None, now: float) -> dict[str, str]:
    """A row's cells as text, for the page and for its refresh (/status.json): one source."""
    budget, error = "no limit", "none"
    if live is not None and live.budget is not None:
        used, limit = live.budget
        budget = f"{'?' if used is None else used} of {limit} in the window"
    if live is not None and live.last_error is not None:
        at, problem = live.last_error
        error = f"{age(max(now - at, 0))} ago: {problem}"
    return {
        "pending": str(row.pending),
        "delivered": str(row.delivered),
        "unchanged": str(row.unchanged),
        "dead": str(row.dead),
        "oldest": age(now - row.oldest_pending_at) if row.oldest_pending_at else "none",
        "budget": budget,
        "error": error,
        "state": state_words(row),
    }


def status_json(
    rows: list[TargetStatus], live: dict[str, TargetLive], now: float
) -> list[dict[str, Any]]:
    """`status --json`'s rows, with the cells as the page shows them."""
    return [
        {**status_dict(row, now), "shown": shown(row, live.get(row.target), now)} for row in rows
    ]


def by_tenant(
    rows: list[TargetStatus], live: dict[str, TargetLive], now: float
) -> list[tuple[str, list[dict[str, Any]]]]:
    """The overview's tables: a tenant each, a row per target (in the config's order)."""
    cells: list[dict[str, Any]] = []
    for row in rows:
        tenant, target = split_key(row.target)
        cells.append(
            {"key": row.target, "tenant": tenant, "target": target, "paused": row.paused}
            | shown(row, live.get(row.target), now)
        )
    ordered = sorted(cells, key=lambda c: c["tenant"])  # stable: targets keep their order
    return [(tenant, list(group)) for tenant, group in groupby(ordered, key=lambda c: c["tenant"])]


def letter_rows(letters: list[DeadLetter], now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "target": d.target,
            "object": d.contact_id,
            "event": d.event_type or "-",
            "attempts": d.attempts,
            "failed": f"{when(d.failed_at)} ({age(max(now - d.failed_at, 0))} ago)",
            "error": mask(d.error),
            "replayed": when(d.replayed_at) if d.replayed_at else None,
        }
        for d in letters
    ]


def mapped_record(
    target: Target | None, letter: DeadLetter
) -> tuple[dict[str, Any] | None, str | None]:
    """The record the target's CURRENT mapping makes of the failed event (masked), or why not."""
    if target is None:
        return None, "its target is no longer configured"
    if not letter.payload or not letter.event_type:
        return None, "its event has been pruned; a replay sends the contact's latest state"
    mapping = target.mapping_for(object_type_of(letter.event_type))
    if mapping is None:
        return None, f"{target.key} has no mapping for this kind of record"
    try:
        return masked(mapping.apply(orjson.loads(letter.payload))), None
    except RecordMappingError as exc:
        return None, f"{mapping.source}: {mask(str(exc))}"


FINISHED = frozenset({"delivered", "unchanged", "dead"})  # push outcomes that end its webhooks


@dataclass(frozen=True)
class Entry:
    """A line of a contact's timeline."""

    at: float
    what: str
    target: str | None = None
    details: tuple[str, ...] = ()
    letter: int | None = None  # a dead letter's id, for its link


def timeline(found: Trace) -> list[dict[str, Any]]:
    """Webhooks received, pushes (with the webhooks each folded in), dead letters, by time."""
    entries: list[Entry] = []
    for e in found.events:
        fate = f"dropped: {e.dropped}" if e.dropped else "stored and queued"
        entries.append(Entry(e.received_at, f"webhook {e.event_type} received, {fate}",
                             details=(f"event {e.event_id}",)))  # fmt: skip
    done_up_to: dict[str, int] = {}  # target -> the last seq a finished push of it carried
    for a in sorted(found.attempts, key=lambda a: (a.at, a.seq)):
        details = []
        previous, tenant = done_up_to.get(a.target, 0), split_key(a.target)[0]
        folded = [
            e for e in found.events
            if e.tenant == tenant and previous < e.seq <= a.seq and not e.dropped
        ]  # fmt: skip
        if len(folded) > 1:
            details.append(f"{len(folded)} webhooks coalesced into this push")
        if a.outcome in FINISHED:  # a retry carries the same webhooks again
            done_up_to[a.target] = max(previous, a.seq)
        if a.remote_id:
            details.append(f"CRM id {a.remote_id}")
        if a.mapping:
            details.append(f"mapping {a.mapping}")
        if a.outcome in ("delivered", "unchanged"):
            details += push_words(a.fields)
        problem = f": {mask(a.detail)}" if a.detail else ""
        entries.append(Entry(a.at, f"push {a.outcome}{problem}", a.target, tuple(details)))
    for d in found.dead_letters:
        state = f"replayed {when(d.replayed_at)}" if d.replayed_at else "not replayed"
        entries.append(Entry(d.failed_at, f"dead letter after {d.attempts} attempt(s): "
                             f"{mask(d.error)}", d.target, (state,), d.id))  # fmt: skip
    entries.sort(key=lambda entry: entry.at)
    return [vars(entry) | {"when": when(entry.at)} for entry in entries]
