"""What an operator does, whichever door they come in by: the command line or the console.

One implementation per action, so that the CLI and the console cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from connector.config import Config
from connector.keys import split_key
from connector.store.base import Store, TargetStatus


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
