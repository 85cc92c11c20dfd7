"""What an operator does, whichever door they come in by: the command line or the console.

One implementation per action, so that the CLI and the console cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import orjson

from connector.config import Config
from connector.keys import split_key
from connector.mirror import masked
from connector.store.base import (
    DeadLetter,
    DeadLetterPick,
    Replayed,
    Store,
    TargetStatus,
    Trace,
)


async def status_rows(config: Config, store: Store) -> list[TargetStatus]:
    """A row per configured target (zeros when the store has none yet), then the targets no
    longer configured that still have state in the store."""
    found = {row.target: row for row in await store.status()}
    rows = [
        found.pop(t.key) if t.key in found else TargetStatus(t.key, 0, 0, 0, 0, None, None, None)
        for t in config.targets
    ]
    return rows + list(found.values())


def status_dict(row: TargetStatus, now: float) -> dict[str, Any]:
    """A status row as `status --json` (and the console's /status.json) show it."""
    tenant, target = split_key(row.target)
    return {
        "tenant": tenant,
        "target": target,
        "pending": row.pending,
        "pending_contacts": row.contacts,
        "dead": row.dead,
        "delivered": row.delivered,
        "unchanged": row.unchanged,
        "oldest_pending_age_seconds": round(now - row.oldest_pending_at, 3)
        if row.oldest_pending_at
        else None,
        "paused": row.paused,
        "paused_reason": row.paused_reason,
        "paused_until": row.paused_until,
    }


def age(seconds: float) -> str:
    """A short duration for people: 42s, 17m, 3.5h."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


async def set_pause(store: Store, key: str, reason: str | None) -> str | None:
    """Pause (a reason) or resume (None) the target; return why it was paused, if it was.

    A running server's worker sees the pause within seconds (it reads the store)."""
    was = (await store.target_state(key)).paused_reason
    await store.set_paused(key, reason, None, by="operator")
    return was


def operator_reason(reason: str) -> str:
    """The pause reason stored for an operator's pause: says who, in `status` and the console."""
    return f"paused by an operator: {reason}"


# --- dead letters ----------------------------------------------------------------------------

REPLAY_CHUNK = 500  # dead letters replayed per store call when replaying all that match


def letter_dict(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as `dlq list --json` shows it (no payload)."""
    details = asdict(letter)
    details.pop("payload")
    tenant, target = split_key(letter.target)
    return {"id": letter.id, "tenant": tenant, "target": target} | {
        k: v for k, v in details.items() if k not in ("id", "target")
    }


async def replay(
    store: Store, ids: Sequence[int] | None, targets: Sequence[str], pick: DeadLetterPick | None
) -> list[Replayed]:
    """Queue dead contacts again: the letters ``ids`` (of ``targets``), or every letter not
    replayed yet that ``pick`` chooses (``pick`` is then narrowed to ``targets``)."""
    if pick is None:
        return await store.replay(ids, targets)
    pick = replace(pick, targets=pick.targets or targets)
    report: list[Replayed] = []
    # Page by id: a letter that cannot be replayed (its events pruned) stays in the list.
    while letters := await store.dead_letters(limit=REPLAY_CHUNK, pick=pick):
        report += await store.replay([d.id for d in letters], targets)
        pick = replace(pick, after_id=letters[-1].id)
    return report


ReplayOutcome = str  # "still queued", "delivered", or "dead again: <the target's message>"


async def replay_outcomes(
    store: Store, report: Sequence[Replayed], since: float
) -> dict[int, ReplayOutcome]:
    """What became of the contacts queued by a replay made at ``since`` (wall clock)."""
    queued = [r for r in report if r.action in ("queued", "already queued")]
    still: set[tuple[str, str]] = set()
    for key in {r.target for r in queued}:
        ids = [r.contact_id for r in queued if r.target == key]
        still |= {(key, c) for c in await store.queued(key, ids)}
    # A contact that died again has a new dead letter, after every one replayed: page from there.
    dead_again: dict[tuple[str, str], str] = {}
    pick = DeadLetterPick(
        targets=sorted({r.target for r in queued}),
        after_id=max((r.dead_letter for r in queued), default=0),
    )
    while letters := await store.dead_letters(limit=REPLAY_CHUNK, pick=pick):
        dead_again |= {(d.target, d.contact_id): d.error for d in letters if d.failed_at >= since}
        pick = replace(pick, after_id=letters[-1].id)
    outcomes: dict[int, ReplayOutcome] = {}
    for r in queued:
        if (r.target, r.contact_id) in still:
            outcomes[r.dead_letter] = "still queued"
        elif (r.target, r.contact_id) in dead_again:
            outcomes[r.dead_letter] = f"dead again: {dead_again[(r.target, r.contact_id)]}"
        else:
            outcomes[r.dead_letter] = "delivered"
    return outcomes


async def replay_and_wait(
    store: Store,
    ids: Sequence[int] | None,
    targets: Sequence[str],
    pick: DeadLetterPick | None,
    wait: float,
) -> tuple[list[Replayed], dict[int, ReplayOutcome]]:
    """Replay, then wait up to ``wait`` seconds for the outcomes (none asked: none given)."""
    since = time.time()
    report = await replay(store, ids, targets, pick)
    if not wait:
        return report, {}
    deadline = time.monotonic() + wait
    while True:
        outcomes = await replay_outcomes(store, report, since)
        if "still queued" not in outcomes.values() or time.monotonic() >= deadline:
            return report, outcomes
        await asyncio.sleep(0.5)


# --- contacts --------------------------------------------------------------------------------


async def resync(store: Store, targets: Sequence[str], ids: Sequence[str] | None) -> dict[str, int]:
    """Queue full re-writes of contacts ``ids`` (None: all) of each target; how many each."""
    return {key: await store.resync(key, ids) for key in targets}


def attempt_fields(text: str | None) -> dict[str, Any] | None:
    """A push's fields (written, cleared, unchanged), the values written masked like the logs."""
    if not text:
        return None
    fields: dict[str, Any] = orjson.loads(text)
    fields["written"] = {k: masked(v) for k, v in (fields.get("written") or {}).items()}
    return fields


def push_words(text: str | None) -> list[str]:
    """What a push wrote (values masked like the logs), cleared and skipped as unchanged."""
    fields = attempt_fields(text) or {}
    parts = []
    if written := fields.get("written"):
        shown = ", ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in written.items())
        parts.append(f"wrote {shown}")
    if cleared := fields.get("cleared"):
        parts.append(f"cleared {', '.join(cleared)}")
    if unchanged := fields.get("unchanged"):
        parts.append(f"unchanged {', '.join(unchanged)}")
    return parts or ["nothing to write"]


def object_of(mimeeq_id: str) -> str:
    """What a Mimeeq id names, as Mimeeq prefixes it (CONT-…, COMP-…)."""
    return "company" if mimeeq_id.startswith("COMP-") else "contact"


def trace_dict(found: Trace) -> dict[str, Any]:
    """`trace --json`: everything the store knows about one contact."""
    return {
        "events": [
            asdict(e) | {"payload": orjson.loads(e.payload) if e.payload else None}
            for e in found.events
        ],
        "attempts": [asdict(a) | {"fields": attempt_fields(a.fields)} for a in found.attempts],
        "dead_letters": [letter_dict(d) for d in found.dead_letters],
        "pending": {
            key: {"op": op, "failed_attempts": tries, "due_at": due, "last_error": error}
            for key, (op, tries, due, error) in found.pending.items()
        },
        "remote_ids": found.remote_ids,
    }


def trace_is_empty(found: Trace) -> bool:
    return not (found.events or found.attempts or found.dead_letters or found.pending)
