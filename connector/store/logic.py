"""What both stores decide, as pure functions of the rows they read (no I/O).

Each store reads rows its own way (SQLite in its writer thread, PostgreSQL under advisory locks)
and writes back its own way; what the rows mean — a target's status, what a replay does with each
dead letter, which tenant a target belongs to — is decided here once, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from connector.keys import split_key
from connector.store.base import ClaimedItem, Replayed, Result, SyncState, TargetStatus

ReplayAction = Literal["queued", "already queued", "unknown target", "not found"]


def tenant_of(target: str) -> str:
    """The tenant of a target key (``tenant/name``)."""
    return split_key(target)[0]


def statuses(
    queued: Mapping[str, Sequence[Any]],
    dead: Mapping[str, int],
    known: Mapping[str, Sequence[Any]],
) -> list[TargetStatus]:
    """Each target's status from the queue's totals (contacts, events, oldest), the unreplayed
    dead letters and the targets table (delivered, pause reason and end, unchanged)."""
    out = []
    for target in sorted(set(queued) | set(dead) | set(known)):
        contacts, pending, oldest = queued.get(target, (0, 0, None))
        delivered, reason, until, unchanged = known.get(target, (0, None, None, 0))
        out.append(
            TargetStatus(
                target,
                pending or 0,
                contacts,
                dead.get(target, 0),
                delivered,
                oldest,
                reason,
                until,
                unchanged,
            )
        )
    return out


def contacts_by_tenant(rows: Iterable[Sequence[Any]]) -> dict[str, set[str]]:
    """The contacts of dead-letter rows ``(id, target, contact_id)``, by tenant."""
    by_tenant: dict[str, set[str]] = {}
    for _, target, contact_id in rows:
        by_tenant.setdefault(tenant_of(target), set()).add(contact_id)
    return by_tenant


def replay_plan(
    rows: Iterable[Sequence[Any]],
    targets: Sequence[str],
    latest: Mapping[tuple[str, str], int],
) -> list[tuple[int, str, str, int | None, ReplayAction | None]]:
    """What a replay does with each dead letter ``(id, target, contact_id)``: requeue the
    contact's latest state (``seq``, action None: the store says whether it was queued already),
    or report why not. ``latest``: (tenant, contact) -> seq of its latest state."""
    plan: list[tuple[int, str, str, int | None, ReplayAction | None]] = []
    for dead_id, target, contact_id in rows:
        seq = latest.get((tenant_of(target), contact_id))
        if target not in targets:
            plan.append((dead_id, target, contact_id, None, "unknown target"))
        elif seq is None:  # its events were pruned: nothing to send
            plan.append((dead_id, target, contact_id, None, "not found"))
        else:
            plan.append((dead_id, target, contact_id, seq, None))
    return plan


def not_found(missing: Iterable[int]) -> list[Replayed]:
    """The report's lines for ids asked for that are no dead letter."""
    return [Replayed(i, "", "", "not found") for i in sorted(missing)]


@dataclass
class Completion:
    """What completing a claim writes, per contact (the store adds the target, the claim token and
    the time in the shape its statements take)."""

    drop: list[str] = field(default_factory=list)  # delivered, and no newer event: row goes
    keep_newer: list[tuple[str, int]] = field(default_factory=list)  # (contact, claimed seq)
    # (contact, remote id, seq, digests JSON, company id, company's remote id)
    states: list[tuple[Any, ...]] = field(default_factory=list)
    seen: list[tuple[str, int]] = field(default_factory=list)  # unchanged: (contact, seq)
    forget: list[str] = field(default_factory=list)  # deleted at the target
    # (contact, op, seq, events, attempts, first error, error, first failed at)
    dead: list[tuple[Any, ...]] = field(default_factory=list)
    retry: list[tuple[str, int, float, str | None]] = field(default_factory=list)
    release: list[tuple[str, float]] = field(default_factory=list)  # (contact, due at)
    # (contact, seq, outcome, detail, remote id, mapping, fields)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    delivered: int = 0
    unchanged: int = 0


def plan_completion(
    held: Mapping[str, Sequence[Any]], results: Iterable[Result], now: float
) -> Completion:
    """What the results of a claim do to the rows the claim still ``held`` (contact ->
    claimed seq, claimed events, last seq, claimed op, attempts, first error, first failed at);
    a result for a row no longer held (its lease ran out) does nothing."""
    plan = Completion()
    for res in results:
        if res.contact_id not in held:
            continue
        contact = res.contact_id
        claim_seq, claim_events, last_seq, op, tries, first_error, first_failed_at = held[contact]
        if res.kind in ("delivered", "unchanged", "dead"):
            if last_seq == claim_seq:
                plan.drop.append(contact)
            else:  # events that arrived during the push stay queued
                plan.keep_newer.append((contact, claim_seq))
        if res.kind == "delivered":
            plan.delivered += claim_events
            if op == "delete":
                plan.forget.append(contact)
            else:
                state = res.state or SyncState(remote_id=res.remote_id)
                plan.states.append(
                    (contact, state.remote_id, claim_seq, state.digests_json(), state.company_id,
                     state.company_remote_id)
                )  # fmt: skip
        elif res.kind == "unchanged":
            plan.unchanged += claim_events
            plan.seen.append((contact, claim_seq))
        elif res.kind == "dead":
            plan.dead.append(
                (contact, op, claim_seq, claim_events, tries + 1, first_error or res.error,
                 res.error or "", first_failed_at or now)
            )  # fmt: skip
        elif res.kind == "retry":
            plan.retry.append((contact, int(res.count_attempt), res.due_at or now, res.error))
        else:
            plan.release.append((contact, res.due_at or now))
            continue
        plan.attempts.append(
            (contact, claim_seq, res.kind, res.error or res.note, res.remote_id, res.mapping,
             res.fields)
        )  # fmt: skip
    return plan


def claimed_item(
    row: Sequence[Any], event: Sequence[Any], remote_id: str | None, state: SyncState | None
) -> ClaimedItem:
    """A claimed queue ``row`` (contact, op, seq, attempts, events, full write) with its
    ``event`` (id, type, payload) and what the target holds."""
    contact_id, op, seq, attempts, count, full = row
    event_id, event_type, payload = event
    return ClaimedItem(
        contact_id=contact_id,
        op=op,
        seq=seq,
        event_id=event_id,
        event_type=event_type,
        payload=payload,
        remote_id=remote_id,
        attempts=attempts,
        events=count,
        state=state,
        full=bool(full),
    )
