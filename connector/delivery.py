"""Target workers: one per tenant × target, pushing the queue into the target.

A worker claims due contacts oldest first (the store hands out at most one row per contact and
never a contact that is already claimed), maps them with the target's compiled mapping, pushes
the batch through the adapter and records one outcome per record. A worker never blocks another:
each has its own tasks, and a target that is down only delays itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Sequence

import orjson

from connector.config import Target
from connector.errors import PermanentError, RecordMappingError, RetryableError, TargetPaused
from connector.metrics import Metrics
from connector.observability import get_logger
from connector.store.base import Claim, ClaimedItem, Result, Store
from connector.targets import Adapter, Dead, Delivered, Outcome, Record, Retry

log = get_logger("connector.delivery")

LEASE_FACTOR, LEASE_MARGIN = 1.5, 5.0  # a claim outlives its push (bounded by push_timeout)
IDLE_POLL = 5.0  # longest sleep with nothing due; new events wake the worker at once
PROBE_INTERVAL = 60.0  # how often a paused target is tried again when it gave no time
STATE_POLL = 2.0  # how often the store is asked whether an operator paused or resumed the target


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
        # Held while pushing: if this process dies, another replica takes over after it.
        self.lease = settings.push_timeout * LEASE_FACTOR + LEASE_MARGIN
        self.wake = asyncio.Event()
        # Events announced and not claimed yet, and since when: is a batch full yet?
        self.fresh = 0
        self.fresh_since = 0.0
        self._claiming = asyncio.Lock()
        self.paused_until: float | None = None  # no claims before this time
        self.paused_reason: str | None = None  # as recorded in the store, until a push succeeds
        self.paused_by: str | None = None  # "target" (probed now and then) or "operator"
        self._synced = float("-inf")
        self._inflight: dict[int, Claim] = {}  # claims being pushed, by token
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        self._log = log.bind(tenant=target.tenant, target=target.name)

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
        for claim in self._inflight.values():  # hand them back: the next run pushes them again
            try:
                await self.store.complete(
                    claim, [Result(i.contact_id, "release") for i in claim.items]
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
                    claim = await self._next_claim()
                if claim is not None:
                    self._inflight[claim.token] = claim
                    results = await self.deliver(claim)
                    await self.store.complete(claim, results)
                    del self._inflight[claim.token]
                    # Events that arrived during the push, or retries due soon, may be waiting
                    # for the lane that watches the queue: have it look again.
                    self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A store hiccup must not kill the worker: log it and try again shortly.
                self._log.exception("worker error")
                await self._sleep(1.0)

    async def _next_claim(self) -> Claim | None:
        await self._sync_pause()
        if self._stopping or await self._wait_while_paused():
            return None
        await self._linger()
        claim = await self.store.claim(self.key, self.batch_size, self.lease)
        taken = len(claim.items)
        self.fresh = 0 if taken < self.batch_size else max(0, self.fresh - taken)
        if taken:
            return claim
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
        if not self.fresh:
            self.fresh_since = time.monotonic()
        self.fresh += events
        self.wake.set()

    async def _linger(self) -> None:
        """Let a burst fill the batch: no event waits more than ``linger`` for company."""
        while 0 < self.fresh < self.batch_size and not self._stopping:
            remaining = self.fresh_since + self.linger - time.monotonic()
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

    async def deliver(self, claim: Claim) -> list[Result]:
        """Map and push one claimed batch; return one result per item."""
        settings = self.target.settings
        outcomes: dict[int, Outcome] = {}
        records: list[Record] = []
        pushed: list[int] = []
        for index, item in enumerate(claim.items):
            try:
                records.append(self._record(item))
                pushed.append(index)
            except RecordMappingError as exc:
                outcomes[index] = Dead(f"mapping {self.target.mapping.source}: {exc}")

        if records:
            try:
                async with asyncio.timeout(settings.push_timeout):
                    answers = await self.adapter.push(records)
                if len(answers) != len(records):
                    raise RuntimeError(f"adapter gave {len(answers)} outcomes for {len(records)}")
                outcomes.update(zip(pushed, answers, strict=True))
            except TargetPaused as exc:
                return await self._pause(claim, str(exc), exc.until)
            except RetryableError as exc:
                retry = Retry(str(exc), exc.after, exc.count_attempt)
                outcomes.update(dict.fromkeys(pushed, retry))
            except PermanentError as exc:
                outcomes.update(dict.fromkeys(pushed, Dead(str(exc))))
            except TimeoutError:
                timeout = Retry(f"push timed out after {settings.push_timeout:g} s")
                outcomes.update(dict.fromkeys(pushed, timeout))
            except Exception as exc:
                self._log.exception("adapter failed")
                failure = Retry(f"adapter error: {type(exc).__name__}: {exc}")
                outcomes.update(dict.fromkeys(pushed, failure))

        if self.paused_by == "target" and any(isinstance(o, Delivered) for o in outcomes.values()):
            await self.resume()
        return self._results(claim.items, [outcomes[i] for i in range(len(claim.items))])

    def _record(self, item: ClaimedItem) -> Record:
        payload = orjson.loads(item.payload)
        return Record(
            contact_id=item.contact_id,
            op=item.op,
            event=item.event_type,
            event_id=item.event_id,
            fields=self.target.mapping.apply(payload),
            payload=payload,
            remote_id=item.remote_id,
            attempt=item.attempts + 1,
        )

    def _results(self, items: Sequence[ClaimedItem], outcomes: Sequence[Outcome]) -> list[Result]:
        settings = self.target.settings
        now = time.time()
        results = []
        counts = {"delivered": 0, "retry": 0, "dead": 0}
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                result = Result(
                    item.contact_id, "delivered", remote_id=outcome.remote_id, note=outcome.note
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
                result = Result(
                    item.contact_id,
                    "retry",
                    error=outcome.reason,
                    due_at=now + delay,
                    count_attempt=outcome.count_attempt,
                )
            results.append(dataclasses.replace(result, mapping=self.target.mapping.source))
            counts[result.kind] += 1
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

    def _count(self, outcome: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.deliveries.labels(self.target.tenant, self.target.name, outcome).inc(n)

    async def _pause(self, claim: Claim, reason: str, until: float | None) -> list[Result]:
        self.paused_until = until if until is not None else time.time() + PROBE_INTERVAL
        self.paused_reason, self.paused_by = reason, "target"
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
