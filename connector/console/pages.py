"""What the pages show: status rows in words, grouped by tenant, and the Jinja2 environment."""

from __future__ import annotations

import time
from itertools import groupby
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from connector.keys import split_key
from connector.operations import age, status_dict
from connector.store.base import TargetStatus

# Autoescape everywhere: reasons and names come from operators, targets and the config.
templates = Environment(
    loader=PackageLoader("connector.console", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=StrictUndefined,  # a typo in a template fails the tests, not silently blank
)


def state_words(row: TargetStatus) -> str:
    """The target's state as a sentence: never a colour alone."""
    if not row.paused:
        return "active"
    until = ""
    if row.paused_until is not None:
        until = time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(row.paused_until))
    return f"paused{until}: {row.paused_reason}"


def shown(row: TargetStatus, now: float) -> dict[str, str]:
    """A row's cells as text, for the page and for its refresh (/status.json): one source."""
    return {
        "pending": str(row.pending),
        "delivered": str(row.delivered),
        "unchanged": str(row.unchanged),
        "dead": str(row.dead),
        "oldest": age(now - row.oldest_pending_at) if row.oldest_pending_at else "none",
        "state": state_words(row),
    }


def status_json(rows: list[TargetStatus], now: float) -> list[dict[str, Any]]:
    """`status --json`'s rows, with the cells as the page shows them."""
    return [{**status_dict(row, now), "shown": shown(row, now)} for row in rows]


def by_tenant(rows: list[TargetStatus], now: float) -> list[tuple[str, list[dict[str, Any]]]]:
    """The overview's tables: a tenant each, a row per target (in the config's order)."""
    cells: list[dict[str, Any]] = []
    for row in rows:
        tenant, target = split_key(row.target)
        cells.append(
            {"key": row.target, "tenant": tenant, "target": target, "paused": row.paused}
            | shown(row, now)
        )
    ordered = sorted(cells, key=lambda c: c["tenant"])  # stable: targets keep their order
    return [(tenant, list(group)) for tenant, group in groupby(ordered, key=lambda c: c["tenant"])]
