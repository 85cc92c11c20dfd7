"""The console's timeline of a contact: what each push carried, in words."""

from __future__ import annotations

from connector.console.pages import timeline
from connector.store.base import Trace, TraceAttempt, TraceEvent


def event(seq: int, tenant: str = "demo") -> TraceEvent:
    return TraceEvent(seq, f"e{seq}", tenant, "contact-updated", "upsert", float(seq), None, b"{}")


def push(seq: int, at: float, outcome: str, target: str = "demo/crm") -> TraceAttempt:
    return TraceAttempt(target, seq, at, outcome, "HTTP 503" if outcome == "retry" else None,
                        "crm-1" if outcome == "delivered" else None, None)  # fmt: skip


def test_a_push_counts_the_webhooks_it_carried_across_its_retries_and_tenants() -> None:
    events = [event(1), event(2), event(3, tenant="other"), event(4), event(5)]
    attempts = [
        push(2, 10.0, "retry"),  # carried 1 and 2, failed
        push(4, 11.0, "delivered"),  # carried 1, 2 and 4 (3 is another tenant's contact)
        push(5, 12.0, "delivered"),  # only 5
    ]
    lines = timeline(Trace(events, attempts, [], {}, {}))
    pushes = [line for line in lines if line["what"].startswith("push")]
    assert [p["what"] for p in pushes] == [
        "push retry: HTTP 503",
        "push delivered",
        "push delivered",
    ]
    assert "2 webhooks coalesced into this push" in pushes[0]["details"]
    assert "3 webhooks coalesced into this push" in pushes[1]["details"]
    assert "CRM id crm-1" in pushes[1]["details"]
    assert not any("coalesced" in d for d in pushes[2]["details"])
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)
