"""The store interface: the durable queue every webhook goes through.

The model, shared by every implementation:

* ``events``: every accepted webhook, raw payload included, in arrival order (``seq``).
* ``queue``: one row per target × contact with undelivered events. A new event folds into the
  row (its state is the latest full state; a delete wins), so coalescing happens on write and the
  queue never holds more rows than contacts. ``due_at`` orders the rows oldest first, holds a
  retry back, and while a row is claimed it is the lease expiry.
* ``sync_state``: per target × contact, what the target holds as far as the connector knows: its
  id for the contact, a digest of each field value last confirmed written, the company the contact
  is associated with. Written only after a confirmed write; the next write is a diff against it.
* ``dead_letters``, ``tombstones`` (deleted contacts, so a late update cannot resurrect them),
  ``targets`` (counters, pauses) and ``attempts`` (what happened on each push, for ``trace``).

Dedupe: an event whose type and body equal those of the contact's latest accepted event is a
redelivery (``duplicate``); anything else, a change back included, is stored. Retention keeps
each live contact's latest state, so that a forced full re-write (``resync``) can map it again.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from connector.adapter import Operation
from connector.ratelimit import RateLimiter

ResultKind = Literal["delivered", "unchanged", "retry", "dead", "release"]

# What opening a store does about its schema: apply pending migrations (the default), refuse to
# start when the schema is behind (``store.migrate_on_start: false``), or leave it alone (the
# ``migrate`` command, which then calls ``Store.migrate``).
SchemaPolicy = Literal["migrate", "verify", "as-is"]

# A target's pause as stored: target, reason, until, paused at, paused by.
PauseRow = tuple[str, str | None, float | None, float | None, str | None]


def new_event_id() -> str:
    """A UUIDv7: unique (74 random bits), and time-ordered like the events themselves."""
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)  # unique, not secret: no system call needed
    variant_and_rest = 0x8000000000000000 | (rand & ((1 << 62) - 1))
    h = f"{ms:012x}7{(rand >> 62) & 0xFFF:03x}{variant_and_rest:016x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def schema_problem(store: str, version: int, latest: int) -> str | None:
    """Why a store whose schema is at ``version`` cannot be used by this release, if it cannot."""
    if version > latest:
        return (
            f"{store}: the schema is at version {version}, newer than this release knows "
            f"({latest}): a newer mimeeq-connector migrated it; run that release"
        )
    if version < latest:
        return (
            f"{store}: the schema is at version {version}, this release needs {latest}: run "
            "`mimeeq-connector migrate --config FILE` (store.migrate_on_start is false)"
        )
    return None


@dataclass(frozen=True, slots=True)
class DeadLetterPick:
    """Which dead letters an operator action takes: each filter given narrows the choice."""

    ids: Sequence[int] | None = None
    targets: Sequence[str] | None = None
    failed_before: float | None = None  # wall clock
    error_contains: str | None = None  # in the target's message, any case (ASCII only on SQLite)
    not_replayed: bool = False
    after_id: int | None = None  # those after this one (paging through a long list)
    through_id: int | None = None  # none after this one (what an operator confirmed)

    def where(self, alias: str = "") -> tuple[str, list[Any]]:
        """The condition in ``?`` style, valid in SQLite and PostgreSQL, and its parameters
        (``alias``: the table's, as ``d.``, where the query joins another)."""
        where, params = ["1 = 1"], list[Any]()
        for column, values in (("id", self.ids), ("target", self.targets)):
            if values is not None:  # an empty list picks nothing (PostgreSQL refuses "IN ()")
                where.append(
                    f"{alias}{column} IN ({', '.join('?' * len(values))})" if values else "1 = 0"
                )
                params += values
        if self.failed_before is not None:
            where.append(f"{alias}failed_at < ?")
            params.append(self.failed_before)
        if self.error_contains is not None:
            # LIKE with its wildcards escaped: the text is matched literally, and the same SQL
            # runs in both stores (SQLite has no strpos, PostgreSQL no instr).
            where.append(
                f"lower({alias}error) LIKE ('%' || lower(CAST(? AS TEXT)) || '%') ESCAPE '\\'"
            )
            params.append(re.sub(r"([\\%_])", r"\\\1", self.error_contains))
        if self.through_id is not None:
            where.append(f"{alias}id <= ?")
            params.append(self.through_id)
        if self.after_id is not None:
            where.append(f"{alias}id > ?")
            params.append(self.after_id)
        if self.not_replayed:
            where.append(f"{alias}replayed_at IS NULL")
        return " AND ".join(where), params


@dataclass(frozen=True, slots=True)
class Relink:
    """What a push changed for the links of contacts to companies (``Store.relink``).

    Asked after each push, so that whichever of a company and its contact completes second finds
    the other: ``companies`` were just written (None: look at every waiting contact, as at a
    start), ``contacts`` were just left waiting for theirs. The contacts of ``deleted`` companies
    wait again: the target dropped their association.
    """

    companies: Sequence[str] | None
    contacts: Sequence[str] = ()
    deleted: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class NewEvent:
    tenant: str
    event_type: str  # the Mimeeq event name
    contact_id: str
    op: Operation
    payload: bytes  # the body exactly as received
    targets: tuple[str, ...]  # keys ("tenant/target") of the targets it goes to
    emails: tuple[str, ...] = ()  # the payload's e-mail addresses (``contacts_by_email``)


def payload_emails(payload: object) -> tuple[str, ...]:
    """The e-mail addresses of a contact's (validated) payload: each non-empty ``mail`` of its
    ``emails``; none for anything else."""
    emails = payload.get("emails") if isinstance(payload, dict) else None
    if not isinstance(emails, list):
        return ()
    mails = (entry.get("mail") for entry in emails if isinstance(entry, dict))
    return tuple(mail for mail in mails if isinstance(mail, str) and mail.strip())


def normal_email(address: str) -> str:
    """An address as looked up: the same however it was typed (case, surrounding spaces)."""
    return address.strip().casefold()


def email_hash(key: bytes, address: str) -> int:
    """What the lookup table keeps of an address: 64 bits of its HMAC-SHA-256. Keyed with the
    store's own random key: the table alone (a dump, a backup) does not let anyone test a list of
    known addresses against it, as a plain digest would."""
    digest = hmac.new(key, normal_email(address).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def event_digest(event: NewEvent) -> int:
    """64 bits identifying an event's content, to recognise a redelivery of it."""
    h = hashlib.blake2b(digest_size=8)
    for part in (event.tenant.encode(), event.event_type.encode(), event.payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return int.from_bytes(h.digest(), "big", signed=True)


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    status: Literal["queued", "dropped", "duplicate"]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SyncState:
    """What a target holds for one contact, as last confirmed by a write."""

    remote_id: str | None = None  # the target's id for the contact
    # field -> digest of the value last confirmed written; None: never recorded (write it all)
    digests: dict[str, str] | None = None
    company_id: str | None = None  # the Mimeeq company an association was last made for
    company_remote_id: str | None = None  # the target's id of that company, when linked

    def digests_json(self) -> str | None:
        if self.digests is None:
            return None
        return orjson.dumps(self.digests, option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_row(
        cls,
        remote_id: str | None,
        digests: str | None,
        company_id: str | None,
        company_remote_id: str | None,
    ) -> SyncState:
        return cls(remote_id, orjson.loads(digests) if digests else None, company_id,
                   company_remote_id)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    contact_id: str
    op: Operation
    seq: int  # the event whose state is pushed
    event_id: str
    event_type: str
    payload: bytes
    remote_id: str | None
    attempts: int  # failed attempts so far
    events: int  # events folded into this push
    state: SyncState | None = None  # what the target holds; None: nothing confirmed yet
    full: bool = False  # a forced full re-write (resync, replay): write every field


@dataclass(frozen=True, slots=True)
class Claim:
    target: str
    token: int
    items: list[ClaimedItem]


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one claimed item. ``release`` hands it back untouched (pause, shutdown)."""

    contact_id: str
    kind: ResultKind
    error: str | None = None
    due_at: float | None = None  # retry/release: when it may be claimed again
    count_attempt: bool = True
    remote_id: str | None = None
    note: str | None = None
    mapping: str | None = None  # the mapping that produced the pushed record
    state: SyncState | None = None  # delivered upsert: the sync state to record
    fields: str | None = None  # JSON, for trace: the properties written, cleared and skipped


@dataclass(frozen=True, slots=True)
class TargetStatus:
    target: str
    pending: int  # undelivered events
    contacts: int  # contacts with undelivered events
    dead: int
    delivered: int
    oldest_pending_at: float | None
    paused_reason: str | None
    paused_until: float | None
    unchanged: int = 0  # events whose mapped values were already in the target: no call

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None


@dataclass(frozen=True, slots=True)
class TargetState:
    paused_reason: str | None
    paused_until: float | None
    paused_by: Literal["target", "operator"] | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    target: str
    contact_id: str
    op: Operation
    seq: int
    event_id: str | None  # None once the event itself has been pruned
    event_type: str | None
    received_at: float | None
    events: int  # events folded into the failed push
    attempts: int
    first_error: str | None
    error: str  # the target's own message
    first_failed_at: float | None
    failed_at: float
    replayed_at: float | None
    payload: bytes | None = None  # only from ``dead_letter(id)``


@dataclass(frozen=True, slots=True)
class Replayed:
    dead_letter: int
    target: str
    contact_id: str
    action: Literal["queued", "already queued", "unknown target", "not found"]


@dataclass(frozen=True, slots=True)
class TraceEvent:
    seq: int
    event_id: str
    tenant: str
    event_type: str
    op: Operation
    received_at: float
    dropped: str | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class TraceAttempt:
    target: str
    seq: int
    at: float
    outcome: str
    detail: str | None
    remote_id: str | None
    mapping: str | None
    fields: str | None = None  # JSON: {"written": {name: masked value}, "cleared": [...],
    #                                  "unchanged": [...]}


@dataclass(frozen=True, slots=True)
class Trace:
    events: list[TraceEvent]
    attempts: list[TraceAttempt]
    dead_letters: list[DeadLetter]
    pending: dict[str, tuple[Operation, int, float, str | None]]  # target: op, tries, due, error
    remote_ids: dict[str, str]  # target -> the target's id for the contact


class QueueStore(ABC):
    """The queue side: what the receiver and the delivery workers use."""

    @abstractmethod
    async def append(self, event: NewEvent) -> Accepted:
        """Store an event and queue it for its targets; durable when this returns.

        An identical event (same tenant, event type and body) stored within the dedupe window is
        not stored again: the answer is ``duplicate`` with the first one's id.
        """

    @abstractmethod
    async def append_many(self, events: Sequence[NewEvent]) -> list[Accepted]:
        """``append`` for a batch (imports), in one transaction."""

    @abstractmethod
    async def claim(self, target: str, limit: int, lease: float) -> Claim:
        """Lease up to ``limit`` due contacts of ``target``, oldest first, one row per contact."""

    @abstractmethod
    async def complete(self, claim: Claim, results: Sequence[Result]) -> None:
        """Record outcomes. Results for items whose lease was lost are ignored."""

    @abstractmethod
    async def renew(self, claim: Claim, lease: float) -> bool:
        """Extend the claim's lease to ``lease`` seconds from now; False when it holds no row
        any more (its lease ran out and another claim took them)."""

    @abstractmethod
    def watch(self, queued: Callable[[str, int], None]) -> None:
        """Call ``queued(tenant, events)`` when another process queues events for ``tenant``."""

    @abstractmethod
    async def next_due(self, target: str) -> float | None:
        """When the earliest row of ``target`` becomes due (or its lease ends), if any."""

    @abstractmethod
    async def recover(self) -> int:
        """Release leases a crashed process left behind; return how many."""

    @abstractmethod
    async def relink(self, target: str, links: Relink) -> int:
        """Queue (as they are, not as full re-writes) the contacts of ``target`` whose link
        waits for a company that has reached the target since; return how many were queued."""


class OperatorStore(ABC):
    """The operator side: status, pauses, dead letters, replay, resync, trace, retention."""

    async def set_paused(
        self,
        target: str,
        reason: str | None,
        until: float | None,
        by: Literal["target", "operator"] = "target",
    ) -> None:
        """Pause ``target`` (reason given) or resume it (reason None)."""
        at, who = (time.time(), by) if reason else (None, None)
        await self._write_pause((target, reason, until, at, who))

    @abstractmethod
    async def _write_pause(self, row: PauseRow) -> None:
        """Write a target's pause (``queries.SET_PAUSED``); all None but the target: resumed."""

    async def target_state(self, target: str) -> TargetState:
        row = await self._pause_row(target)
        return TargetState(*row) if row else TargetState(None, None, None)

    @abstractmethod
    async def _pause_row(self, target: str) -> Sequence[Any] | None:
        """The target's row of ``queries.TARGET_STATE``, if it has one."""

    @abstractmethod
    async def status(self) -> list[TargetStatus]: ...

    @abstractmethod
    async def dead_letters(
        self,
        targets: Sequence[str] | None = None,
        limit: int = 1000,
        *,
        pick: DeadLetterPick | None = None,
    ) -> list[DeadLetter]:
        """Dead letters not replayed yet, oldest first (of ``targets`` when given, and of those
        ``pick`` chooses)."""

    @abstractmethod
    async def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        """One dead letter (replayed or not), with the failed event's payload."""

    @abstractmethod
    async def replay(
        self, ids: Sequence[int] | None, targets: Sequence[str], *, all_of: bool = False
    ) -> list[Replayed]:
        """Queue the contacts of dead letters again, each with its LATEST known state, as a full
        re-write (as ``resync`` does).

        ``ids`` picks dead letters; ``all_of`` takes every one not replayed yet. Only the given
        ``targets`` (the configured ones) are replayed. Duplicate suppression does not apply.
        """

    @abstractmethod
    async def purge(self, pick: DeadLetterPick) -> int:
        """Delete the dead letters ``pick`` chooses; return how many."""

    @abstractmethod
    async def resync(self, target: str, contact_ids: Sequence[str] | None) -> int:
        """Queue a full re-write of contacts of ``target`` with their latest state; return how
        many were queued. ``None``: every contact the target holds (has a sync state for).

        Such a write carries every mapped field (and clears the cleared ones), whatever the sync
        state says. Contacts already queued are marked for it; deleted ones are left alone.
        """

    @abstractmethod
    async def queued(self, target: str, contact_ids: Sequence[str]) -> set[str]:
        """Which of these contacts have undelivered events for ``target``."""

    @abstractmethod
    async def trace(self, contact_id: str) -> Trace:
        """Everything the store knows about one contact."""

    @abstractmethod
    async def contacts_by_email(self, email: str) -> list[tuple[str, str]]:
        """``(tenant, contact_id)`` of the contacts whose events carried this address (in any
        case, spaces around it ignored), most recently seen first. Only its keyed hash is kept
        (``email_hash``)."""

    @abstractmethod
    async def prune(self, retention: float) -> dict[str, int]:
        """Delete events and attempts older than ``retention`` seconds that nothing needs, and
        the addresses no event has carried since (``contact_emails``)."""


class Store(QueueStore, OperatorStore):
    """A durable queue and its operators' tools. Every method is safe to call concurrently from
    the event loop."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def migrate(self) -> tuple[int, int]:
        """Apply pending schema migrations; return the schema version before and after.

        Safe while other processes use the store, and when several start at once: one applies
        them, the others wait and find nothing left to do. ``open`` calls it unless the store was
        made with another ``SchemaPolicy``.
        """

    def rate_limiter(self, account: str, requests: int, per_seconds: float) -> RateLimiter | None:
        """A request budget shared by every process using this store, where it can hold one.

        None: each process keeps its own (enough for a store only one process serves).
        """
        return None

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot be reached."""

    async def probe_write(self) -> None:
        """Raise if the store cannot take a write now; leaves nothing behind.

        Readiness asks it while appends fail. By default, whether the store answers at all.
        """
        await self.ping()
