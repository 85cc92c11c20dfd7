"""Target workers: one per tenant × target, pushing the queue into the target.

A worker claims due contacts oldest first (the store hands out at most one row per contact and
never a contact that is already claimed), maps them with the target's compiled mapping, plans each
write as a diff against what the target last confirmed (:mod:`connector.mirror`), pushes what
changed through the adapter and records one outcome per record. A record with nothing new costs
no call. A worker never blocks another: each has its own tasks, and a target that is down only
delays itself.

One write of a contact at a time, really: a claim holds the contact until its outcome is
recorded, and a push never outlives it. ``push_timeout`` cancels the push, and adapters do their
I/O cancellably (no thread carries on). A write that went out without an answer may still land,
though: its contact's next write waits at least ``push_timeout`` more (the retry's due time, kept
in the store, so every replica abides by it). A push whose claim may have passed to another replica
(the process was stopped, the lease ran out) sends nothing more (``targets.check_claim``).

Leases are short and renewed while a push runs (a heartbeat every ``RENEW_EVERY`` seconds), so
the contacts of a replica that died come back within ``LEASE`` seconds, whatever ``push_timeout``
says. A write stops ``LEASE_MARGIN`` seconds before the lease would run out unrenewed: replicas'
clocks may disagree by that much.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Sequence

import orjson

from connector import mirror
from connector.adapter import CLAIM_HOLD, Adapter, ClaimHold, Record, object_type_of
from connector.config import Target
from connector.errors import RecordMappingError, TargetPaused
from connector.logs import get_logger, mask
from connector.mapping import FieldMapping
from connector.metrics import Metrics
from connector.outcomes import CompanyLink, Dead, Delivered, Outcome, Retry, Undelivered
from connector.payloads import contact_links
from connector.store.base import Claim, ClaimedItem, Relink, Result, Store, SyncState

log = get_logger("connector.delivery")

LEASE = 10.0  # seconds a claim holds unless renewed: a dead replica's contacts wait this long
RENEW_EVERY = 2.0  # seconds between two renewals of the claims being pushed
LEASE_MARGIN = 4.0  # no write later than this before an unrenewed lease runs out
RECORD_RETRY_MAX = 5.0  # longest wait between two tries to record a push's outcomes
RECORD_RETRY_FOR = 120.0  # seconds of such tries before the claim is left to run out
IDLE_POLL = 5.0  # longest sleep with nothing due; new events wake the worker at once
PROBE_INTERVAL = 60.0  # how often a paused target is tried again when it gave no time
TROUBLE_LOGGED_EVERY = 60.0  # seconds between two log lines about the same error
STATE_POLL = 2.0  # how often the store is asked whether an operator paused or resumed the target


@dataclasses.dataclass(frozen=True, slots=True)
class _Unchanged:
    """The outcome of a record the target already holds: nothing was sent."""


UNCHANGED = _Unchanged()


def backoff_delay(failures: int, initial: float, cap: float) -> float:
    """Exponential backoff with jitter: about ``initial * 2**(failures-1)``, at most ``cap``."""
    delay: float = min(cap, initial * 2.0 ** max(failures - 1, 0))
    return delay * random.uniform(0.5, 1.0)


class TargetWorker:
    def __init__(
        self, target: Target, adapter: Adapter, store: Store, metrics: Metrics | None = None
    ) -> None:
        self.target = target
        self.adapter = adapter
        self.store = store
        self.metrics = metrics
        settings = target.settings
        self.key = target.key
        self.batch_size = min(settings.batch_size or adapter.max_batch_size, adapter.max_batch_size)
        self.concurrency = settings.concurrency or adapter.default_concurrency
        self.linger = settings.linger if settings.linger is not None else adapter.default_linger
        self.wake = asyncio.Event()
        # Events announced and not claimed yet, oldest first, with when each group came: is a
        # batch full yet, and how long has its oldest event waited?
        self.fresh = 0
        self._arrivals: collections.deque[list[float]] = collections.deque()  # [time, events]
        self._claiming = asyncio.Lock()
        self.paused_until: float | None = None  # no claims before this time
        self.paused_reason: str | None = None  # as recorded in the store, until a push succeeds
        self.paused_by: str | None = None  # "target" (probed now and then) or "operator"
        self._synced = float("-inf")
        self._inflight: dict[int, Claim] = {}  # claims being pushed, by token
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        self._log = log.bind(tenant=target.tenant, target=target.name)
        self._troubles: dict[str, float] = {}  # when each kind of error was last logged
        self._swept = False  # contacts waiting for a company looked at since the start
        # The last problem this process met pushing to the target, masked: (wall clock, text).
        self.last_error: tuple[float, str] | None = None

    @property
    def running(self) -> bool:
        return bool(self._lanes) and not any(lane.done() for lane in self._lanes)

    def start(self) -> None:
        self._lanes = [
            asyncio.create_task(self._lane(), name=f"worker:{self.key}:{i}")
            for i in range(self.concurrency)
        ]

    async def stop(self, grace: float) -> None:
        """Let pushes in flight finish (for up to ``grace`` seconds), then stop."""
        self._stopping = True
        self.wake.set()
        if not self._lanes:
            return
        _, late = await asyncio.wait(self._lanes, timeout=grace)
        for lane in late:
            lane.cancel()
        for lane in self._lanes:
            with contextlib.suppress(asyncio.CancelledError):
                await lane
        # Hand them back: the next run pushes them again, once a write of theirs that may have
        # gone out before the push was cut short has had time to land.
        fence = time.time() + self.target.settings.push_timeout
        for claim in self._inflight.values():
            try:
                await self.store.complete(
                    claim, [Result(i.contact_id, "release", due_at=fence) for i in claim.items]
                )
            except Exception:  # their leases run out instead
                self._log.exception("could not hand claims back")
            else:
                self._count("released", len(claim.items))
        if late:
            self._log.warning("stopped with pushes unfinished", unfinished=len(late))

    async def _lane(self) -> None:
        while not self._stopping:
            try:
                # One lane at a time watches the queue and gathers a batch; pushes overlap.
                async with self._claiming:
                    claimed = await self._next_claim()
                if claimed is not None:
                    claim, hold = claimed
                    self._inflight[claim.token] = claim
                    heartbeat = asyncio.create_task(self._renew(claim, hold))
                    try:
                        results = await self.deliver(claim, hold)
                        await self._record_outcomes(claim, results)
                    finally:
                        heartbeat.cancel()
                    del self._inflight[claim.token]
                    await self._relink(claim.items, results)
                    # Events that arrived during the push, or retries due soon, may be waiting
                    # for the lane that watches the queue: have it look again.
                    self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A store hiccup must not kill the worker: say so (once per kind of error a
                # minute, not at every try) and try again shortly.
                self._trouble("worker error", exc)
                await self._sleep(1.0)

    def _trouble(self, message: str, exc: Exception) -> None:
        kind = f"{message}: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        if self._troubles.get(kind, -math.inf) + TROUBLE_LOGGED_EVERY <= now:
            if len(self._troubles) > 100:  # messages that vary without end: start over
                self._troubles.clear()
            self._troubles[kind] = now
            self._log.error(message, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self._note_error(kind)

    def _note_error(self, text: str) -> None:
        self.last_error = (time.time(), mask(text))

    async def _renew(self, claim: Claim, hold: ClaimHold) -> None:
        """Keep the claim while its push runs; a write stops when the renewals stop working."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            asked = time.time()
            try:
                held = await self.store.renew(claim, LEASE)
            except Exception as exc:  # hold.until stays: writes stop if this goes on
                self._trouble("could not renew a claim", exc)
                continue
            if not held:
                hold.until = -math.inf
                self._log.warning("claim lost to another worker: no more writes in this push")
                return
            hold.until = asked + LEASE - LEASE_MARGIN

    async def _record_outcomes(self, claim: Claim, results: list[Result]) -> None:
        """Record a push's outcomes, trying again while the store fails (the heartbeat keeps
        the claim meanwhile): without them, the contacts would be pushed again. After
        ``RECORD_RETRY_FOR`` seconds the claim is left to run out: the contacts go round again."""
        delay, give_up = 0.5, time.monotonic() + RECORD_RETRY_FOR
        while True:
            try:
                await self.store.complete(claim, results)
                return
            except Exception as exc:
                if time.monotonic() >= give_up:
                    raise
                self._trouble("could not record outcomes; trying again", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX)

    async def _relink(self, items: Sequence[ClaimedItem], results: Sequence[Result]) -> None:
        """Have the contacts that wait for a company written again once it is in the target.

        Whichever of a company and its contact completes second finds the other: the contacts
        of a company just written, and the contacts just left waiting whose company has come
        meanwhile (another lane or replica wrote it). A crash in between is caught at the next
        start, which looks at every waiting contact (``_swept``); so is a store that fails here.
        """
        if not self.adapter.associates_companies:
            return
        by_id = {item.contact_id: item for item in items}
        written: list[str] = []
        deleted: list[str] = []
        waiting: list[str] = []
        for result in results:
            item = by_id[result.contact_id]
            if result.kind != "delivered":
                continue
            if object_type_of(item.event_type) == "company":
                (deleted if item.op == "delete" else written).append(item.contact_id)
            elif result.state and result.state.company_id and not result.state.company_remote_id:
                waiting.append(item.contact_id)
        if written or deleted or waiting:
            try:
                await self._queue_links(Relink(written, waiting, deleted))
            except Exception as exc:
                self._swept = False  # the next claim looks at every waiting contact
                self._trouble("could not queue contacts to link with their company", exc)

    async def _queue_links(self, links: Relink) -> None:
        queued = await self.store.relink(self.key, links)
        if queued:
            self.notify(queued)
            self._log.info("contacts queued to link with their company", contacts=queued)

    async def _next_claim(self) -> tuple[Claim, ClaimHold] | None:
        """The next batch, and until when (wall clock) the claim on it surely holds."""
        if not self._swept and self.adapter.associates_companies:
            await self._queue_links(Relink(None))
            self._swept = True
        await self._sync_pause()
        if self._stopping or await self._wait_while_paused():
            return None
        await self._linger()
        announced = self.fresh
        hold = ClaimHold(time.time() + LEASE - LEASE_MARGIN)  # the store's clock starts later
        claim = await self.store.claim(self.key, self.batch_size, LEASE)
        taken = len(claim.items)
        # A full batch took the oldest events; a smaller one took every event announced before
        # it (or found them folded into rows it took). Those announced meanwhile still wait.
        self._claimed(taken if taken == self.batch_size else announced)
        if taken:
            return claim, hold
        next_due = await self.store.next_due(self.key)
        await self._sleep(IDLE_POLL if next_due is None else min(IDLE_POLL, next_due - time.time()))
        return None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless woken; True when woken (new events, or stopping)."""
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return False
        if not self._stopping:  # a stop stays signalled for every later sleep
            self.wake.clear()
        return True

    def notify(self, events: int = 1) -> None:
        """New events were queued for this target."""
        self.fresh += events
        self._arrivals.append([time.monotonic(), events])
        self.wake.set()

    def _claimed(self, events: int) -> None:
        """The oldest ``events`` announced events are claimed: forget them."""
        self.fresh = max(0, self.fresh - events)
        while events > 0 and self._arrivals:
            group = self._arrivals[0]
            if group[1] > events:
                group[1] -= events
                return
            events -= int(group[1])
            self._arrivals.popleft()

    async def _linger(self) -> None:
        """Let a burst fill the batch: no event waits more than ``linger`` for company."""
        while 0 < self.fresh < self.batch_size and self._arrivals and not self._stopping:
            remaining = self._arrivals[0][0] + self.linger - time.monotonic()
            if remaining <= 0 or not await self._sleep(remaining):
                return

    async def _sync_pause(self) -> None:
        """Follow the store: an operator may pause or resume the target from the command line."""
        if time.monotonic() - self._synced < STATE_POLL:
            return
        self._synced = time.monotonic()
        state = await self.store.target_state(self.key)
        if state.paused_reason is None:
            if self.paused_reason is not None:
                self._log.info("target resumed by an operator")
            self.paused_reason = self.paused_until = self.paused_by = None
        elif state.paused_by == "operator" or self.paused_reason is None:
            # An operator's pause holds until resumed; the target's own (left by an earlier
            # run) is probed at once.
            if state.paused_by == "operator" and self.paused_by != "operator":
                self._log.info("target paused by an operator", reason=state.paused_reason)
            self.paused_reason, self.paused_by = state.paused_reason, state.paused_by

    async def _wait_while_paused(self) -> bool:
        if self.paused_by == "operator":
            await self._sleep(STATE_POLL)
            return True
        if self.paused_until is None:
            return False
        remaining = self.paused_until - time.time()
        if remaining <= 0:
            self.paused_until = None  # probe: the next push tells whether it is fixed
            return False
        await self._sleep(min(remaining, STATE_POLL))
        return True

    async def deliver(self, claim: Claim, hold: ClaimHold | None = None) -> list[Result]:
        """Map, plan and push one claimed batch; return one result per item."""
        settings = self.target.settings
        outcomes: dict[int, Outcome | _Unchanged] = {}
        records: dict[int, tuple[Record, mirror.Plan | None]] = {}
        for index, item in enumerate(claim.items):
            mapping = self.target.mapping_for(object_type_of(item.event_type))
            if mapping is None:  # queued before the company mapping left the config
                outcomes[index] = Dead("this target takes no companies: it has no company_mapping")
                continue
            try:
                records[index] = self._record(item, mapping)
            except RecordMappingError as exc:
                outcomes[index] = Dead(f"mapping {mapping.source}: {exc}")
                continue
            plan = records[index][1]
            if plan is not None and plan.skip:
                outcomes[index] = UNCHANGED  # the target holds all of it already: no call
        pushed = [index for index in records if index not in outcomes]

        if pushed:
            batch = [records[index][0] for index in pushed]
            holding = CLAIM_HOLD.set(hold)
            try:
                async with asyncio.timeout(settings.push_timeout):
                    answers = await self.adapter.push(batch)
                if len(answers) != len(batch):
                    raise RuntimeError(f"adapter gave {len(answers)} outcomes for {len(batch)}")
                outcomes.update(zip(pushed, answers, strict=True))
            except TargetPaused as exc:
                return await self._pause(claim, str(exc), exc.until)
            except Undelivered as exc:
                outcomes.update(dict.fromkeys(pushed, exc.outcome))
            except TimeoutError:
                # Cancelled mid-way: a request of it may have gone out and still land.
                reason = f"push timed out after {settings.push_timeout:g} s"
                outcomes.update(dict.fromkeys(pushed, Retry(reason, maybe_written=True)))
            except Exception as exc:
                self._log.exception("adapter failed")
                failure = Retry(f"adapter error: {type(exc).__name__}: {exc}")
                outcomes.update(dict.fromkeys(pushed, failure))
            finally:
                CLAIM_HOLD.reset(holding)

        if self.paused_by == "target" and any(isinstance(o, Delivered) for o in outcomes.values()):
            await self.resume()
        return self._results(claim.items, outcomes, records)

    def _mapping_source(self, item: ClaimedItem) -> str:
        mapping = self.target.mapping_for(object_type_of(item.event_type))
        return mapping.source if mapping is not None else "(none)"

    def _record(
        self, item: ClaimedItem, mapping: FieldMapping
    ) -> tuple[Record, mirror.Plan | None]:
        """The record to push, and for an upsert the plan of its write (None for a delete)."""
        object_type = object_type_of(item.event_type)
        payload = orjson.loads(item.payload)
        fields = mapping.apply(payload)
        company_id, email = contact_links(payload, object_type)
        associates = self.adapter.associates_companies and object_type == "contact"
        state = item.state
        plan = None
        if item.op == "upsert":
            plan = mirror.plan(
                fields,
                mapping.fields,
                state,
                full=item.full,
                company_id=company_id,
                associates=associates,
            )
        linked = None
        if state is not None and state.company_id is not None:
            linked = CompanyLink(state.company_id, state.company_remote_id)
        record = Record(
            contact_id=item.contact_id,
            op=item.op,
            event=item.event_type,
            event_id=item.event_id,
            fields=fields,
            payload=payload,
            remote_id=item.remote_id,
            attempt=item.attempts + 1,
            unchanged=plan.unchanged if plan else frozenset(),
            cleared=plan.cleared if plan else (),
            company_id=company_id,
            company=linked,
            email=email,
            object_type=object_type,
        )
        return record, plan

    def _results(
        self,
        items: Sequence[ClaimedItem],
        outcomes: dict[int, Outcome | _Unchanged],
        records: dict[int, tuple[Record, mirror.Plan | None]],
    ) -> list[Result]:
        settings = self.target.settings
        now = time.time()
        results = []
        counts = {"delivered": 0, "unchanged": 0, "retry": 0, "dead": 0}
        for index, item in enumerate(items):
            outcome = outcomes[index]
            record, plan = records.get(index, (None, None))
            report = mirror.report(record) if record is not None else None
            if isinstance(outcome, _Unchanged):
                result = Result(item.contact_id, "unchanged", fields=report)
            elif isinstance(outcome, Delivered):
                result = Result(
                    item.contact_id,
                    "delivered",
                    remote_id=outcome.remote_id,
                    note=outcome.note,
                    state=self._state(outcome, plan),
                    fields=report,
                )
            elif isinstance(outcome, Dead):
                result = Result(item.contact_id, "dead", error=outcome.reason)
            elif outcome.count_attempt and item.attempts + 1 >= settings.max_attempts:
                reason = f"gave up after {item.attempts + 1} attempts: {outcome.reason}"
                result = Result(item.contact_id, "dead", error=reason)
            else:
                delay = outcome.after
                if delay is None:
                    delay = backoff_delay(
                        item.attempts + 1, settings.backoff.initial, settings.backoff.max
                    )
                reason = outcome.reason
                if outcome.maybe_written:  # let the write that may still land go first
                    delay = max(delay, settings.push_timeout)
                    reason += " (it may still land: the next write waits for it)"
                result = Result(
                    item.contact_id,
                    "retry",
                    error=reason,
                    due_at=now + delay,
                    count_attempt=outcome.count_attempt,
                )
            results.append(dataclasses.replace(result, mapping=self._mapping_source(item)))
            counts[result.kind] += 1
            if result.error:
                self._note_error(result.error)
            if result.kind == "dead":
                self._log.warning(
                    "record dead",
                    contact_id=item.contact_id,
                    event_id=item.event_id,
                    reason=result.error,
                )
        self._log.info("batch pushed", **counts)
        for kind, n in counts.items():
            self._count(kind, n)
        return results

    def _state(self, delivered: Delivered, plan: mirror.Plan | None) -> SyncState | None:
        """What the target holds after a confirmed write (None for a delete: forgotten)."""
        if plan is None:
            return None
        link = delivered.company if self.adapter.associates_companies else None
        return SyncState(
            remote_id=delivered.remote_id,
            digests=plan.digests,
            company_id=link.company_id if link else None,
            company_remote_id=link.remote_id if link else None,
        )

    def _count(self, outcome: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.deliveries.labels(self.target.tenant, self.target.name, outcome).inc(n)

    async def _pause(self, claim: Claim, reason: str, until: float | None) -> list[Result]:
        self.paused_until = until if until is not None else time.time() + PROBE_INTERVAL
        self.paused_reason, self.paused_by = reason, "target"
        self._note_error(reason)
        await self.store.set_paused(self.key, reason, self.paused_until)
        self._log.error("target paused", reason=reason, until=until)
        self._count("released", len(claim.items))
        return [
            Result(item.contact_id, "release", due_at=self.paused_until) for item in claim.items
        ]

    async def resume(self) -> None:
        self.paused_reason = self.paused_until = self.paused_by = None
        await self.store.set_paused(self.key, None, None)
        self._log.info("target resumed")
