"""Test doubles: an adapter that records what it is given and fails on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import ClassVar

from connector.adapter import Adapter, Record, TargetSettings, register_adapter
from connector.errors import DeliveryError
from connector.outcomes import Dead, Delivered, Outcome, Retry

Script = Callable[[Record], Outcome | None]


class FakeSettings(TargetSettings):
    fail_first: int = 0  # answer Retry to the first N pushes of every contact


@register_adapter
class FakeAdapter(Adapter):
    """Holds the target's state in memory: ``contacts`` (id → fields) and every push made.

    Tests steer it with ``script`` (a function returning an outcome for a record, or None for the
    normal behaviour), ``raise_next`` (an exception for the next push) and ``gate`` (an event the
    next pushes wait on).
    """

    type = "fake"
    settings_model: ClassVar[type[TargetSettings]] = FakeSettings
    max_batch_size = 50
    takes_companies = True

    def __init__(self, settings: TargetSettings, context: object) -> None:
        super().__init__(settings, context)
        self.contacts: dict[str, dict[str, object]] = {}
        self.pushes: list[list[Record]] = []
        self.script: Script | None = None
        self.raise_next: list[DeliveryError | Exception] = []
        self.gate: asyncio.Event | None = None
        self.hold: set[str] | None = None  # only pushes with these contacts wait on the gate
        self.in_flight: set[str] = set()
        self.overlaps = 0  # a contact pushed while an earlier push of it was still running
        self._seen: dict[str, int] = {}

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        self.pushes.append(list(records))
        ids = {r.contact_id for r in records}
        self.overlaps += len(ids & self.in_flight)
        self.in_flight |= ids
        try:
            if self.gate is not None and (self.hold is None or ids & self.hold):
                await self.gate.wait()
            if self.raise_next:
                raise self.raise_next.pop(0)
            return [self._one(r) for r in records]
        finally:
            self.in_flight -= ids

    def _one(self, record: Record) -> Outcome:
        self._seen[record.contact_id] = self._seen.get(record.contact_id, 0) + 1
        if self.script is not None:
            scripted = self.script(record)
            if scripted is not None:
                if isinstance(scripted, Delivered):
                    self._apply(record)
                return scripted
        fail_first = getattr(self.settings, "fail_first", 0)
        if self._seen[record.contact_id] <= fail_first:
            return Retry("scripted failure", after=0.01)
        self._apply(record)
        return Delivered(remote_id=f"remote-{record.contact_id}")

    def _apply(self, record: Record) -> None:
        if record.op == "delete":
            self.contacts.pop(record.contact_id, None)
        else:
            self.contacts[record.contact_id] = dict(record.fields)

    @property
    def pushed_ids(self) -> list[str]:
        return [r.contact_id for batch in self.pushes for r in batch]


__all__ = ["Dead", "Delivered", "FakeAdapter", "Retry"]
