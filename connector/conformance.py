"""The conformance suite every adapter passes: subclass :class:`AdapterConformance` in a test.

Like singer-sdk's standard target tests: the suite owns the checks, a subclass supplies a few
hooks that know the destination. It needs pytest (with pytest-asyncio in auto mode) when used::

    class TestMyCrm(AdapterConformance):
        async def make_adapter(self, context: TargetContext) -> Adapter:
            return MyCrmAdapter(MyCrmSettings(type="mycrm", mapping="-"), context)

        async def stored(self, adapter: Adapter) -> list[tuple[str, dict[str, Any]]]:
            return [(row["id"], row["fields"]) for row in my_fake.rows]

The checks push records built here (:meth:`AdapterConformance.record`) whose mapped fields are
``FIELDS``. A hook that cannot apply to a destination (a file has no 401) raises
:class:`NotApplicable` with the reason; the check is then skipped with that reason, so every
exemption is written down where the adapter is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from connector.adapter import Adapter, Operation, Record, TargetContext
from connector.errors import TargetPaused
from connector.mapping import load_mapping
from connector.outcomes import Delivered, Outcome

# The mapped fields of every record the suite pushes: plain names most CRMs have.
FIELDS = ("email", "firstname", "lastname")
CANCEL_WITHIN = 2.0  # seconds a cancelled push may take to end


class NotApplicable(Exception):
    """Raised by a hook whose destination cannot do what the check needs (the reason says why)."""


class AdapterConformance:
    """The checks. Subclasses implement ``make_adapter`` and ``stored``, and where they can,
    ``refuse_auth`` (the destination answers 401 from now on) and ``hang`` (it stops answering)."""

    tenant = "conformance"
    target = "target"

    # --- hooks ----------------------------------------------------------------------------------

    async def make_adapter(self, context: TargetContext) -> Adapter[Any]:
        """A new adapter for this destination, not yet opened (the suite opens and closes it)."""
        raise NotImplementedError

    async def stored(self, adapter: Adapter[Any]) -> list[tuple[str, dict[str, Any]]]:
        """What the destination holds: one ``(contact id, mapped fields)`` per stored contact."""
        raise NotImplementedError

    async def refuse_auth(self, adapter: Adapter[Any]) -> None:
        """Make the destination answer 401 to every request from now on."""
        raise NotApplicable("this destination has no authentication")

    async def hang(self, adapter: Adapter[Any]) -> None:
        """Make the destination take (far) longer than a test waits to answer."""
        raise NotApplicable("this destination cannot be made to hang")

    # --- helpers --------------------------------------------------------------------------------

    def context(self) -> TargetContext:
        mapping = {"fields": {name: name for name in FIELDS}}
        return TargetContext(self.tenant, self.target, load_mapping(mapping, Path.cwd()).fields)

    def record(
        self, n: int, op: Operation = "upsert", *, version: int = 1, event_id: str | None = None
    ) -> Record:
        """Contact ``n`` as the worker would hand it over on a first write (nothing remembered)."""
        contact_id = f"CONTACT-conformance-{n}"
        fields = {
            "email": f"contact{n}@example.com",
            "firstname": f"First{n}",
            "lastname": f"Last{n}-v{version}",
        }
        return Record(
            contact_id=contact_id,
            op=op,
            event="contact-deleted" if op == "delete" else "contact-updated",
            event_id=event_id or f"event-{n}-{version}",
            fields={} if op == "delete" else fields,
            payload={"id": contact_id},
            remote_id=None,
            attempt=1,
            email=fields["email"],
        )

    async def _stored_or_skip(self, adapter: Adapter[Any]) -> dict[str, list[dict[str, Any]]]:
        try:
            rows = await self.stored(adapter)
        except NotApplicable as exc:
            pytest.skip(str(exc))
        held: dict[str, list[dict[str, Any]]] = {}
        for contact_id, fields in rows:
            held.setdefault(contact_id, []).append(fields)
        return held

    @contextlib.asynccontextmanager
    async def _adapter(self) -> AsyncIterator[Adapter[Any]]:
        """An opened adapter, closed after the check whatever happens."""
        adapter = await self.make_adapter(self.context())
        await adapter.open()
        try:
            yield adapter
        finally:
            await adapter.close()

    async def _push(self, adapter: Adapter[Any], records: Sequence[Record]) -> list[Outcome]:
        outcomes = list(await adapter.push(records))
        assert len(outcomes) == len(records), "exactly one outcome per record"
        return outcomes

    @staticmethod
    def _mirrors(held: list[dict[str, Any]], record: Record) -> bool:
        return any(all(f.get(k) == v for k, v in record.fields.items()) for f in held)

    # --- the checks -----------------------------------------------------------------------------

    async def test_one_outcome_per_record_in_order(self) -> None:
        async with self._adapter() as adapter:
            records = [self.record(n) for n in range(5)]
            outcomes = await self._push(adapter, records)
            assert all(isinstance(o, Delivered) for o in outcomes), outcomes

    async def test_order_is_kept_within_a_contact(self) -> None:
        async with self._adapter() as adapter:
            for version in (1, 2, 3):
                (outcome,) = await self._push(adapter, [self.record(1, version=version)])
                assert isinstance(outcome, Delivered), outcome
            held = await self._stored_or_skip(adapter)
            (fields,) = held[self.record(1).contact_id]
            assert fields.get("lastname") == "Last1-v3"  # the last write is the one that stays

    async def test_a_retry_with_the_same_event_id_leaves_one_copy(self) -> None:
        async with self._adapter() as adapter:
            record = self.record(2)
            for _ in range(2):  # the worker retries with the same event id when unsure
                (outcome,) = await self._push(adapter, [record])
                assert isinstance(outcome, Delivered), outcome
            held = await self._stored_or_skip(adapter)
            copies = held.get(record.contact_id, [])
            assert len(copies) == 1, copies
            assert self._mirrors(copies, record)

    async def test_deleting_an_unknown_contact_is_delivered(self) -> None:
        async with self._adapter() as adapter:
            (outcome,) = await self._push(adapter, [self.record(3, "delete")])
            assert isinstance(outcome, Delivered), outcome  # nothing to delete is no failure

    async def test_a_delete_removes_a_known_contact(self) -> None:
        async with self._adapter() as adapter:
            (written,) = await self._push(adapter, [self.record(4)])
            assert isinstance(written, Delivered)
            delete = dataclasses.replace(self.record(4, "delete"), remote_id=written.remote_id)
            (outcome,) = await self._push(adapter, [delete])
            assert isinstance(outcome, Delivered), outcome
            held = await self._stored_or_skip(adapter)
            assert delete.contact_id not in held

    async def test_a_401_pauses_the_target(self) -> None:
        async with self._adapter() as adapter:
            await _arrange(self.refuse_auth, adapter)
            # A refused token concerns every record: the target pauses, nothing is burned.
            with pytest.raises(TargetPaused):
                await adapter.push([self.record(5)])

    async def test_a_cancelled_push_ends_promptly(self) -> None:
        async with self._adapter() as adapter:
            await _arrange(self.hang, adapter)
            task = asyncio.create_task(adapter.push([self.record(6)]))
            await asyncio.sleep(0.3)  # the request is out, waiting for an answer
            assert not task.done(), "the destination was meant to hang"
            task.cancel()
            start = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, CANCEL_WITHIN)
            assert time.monotonic() - start < CANCEL_WITHIN


async def _arrange(hook: Callable[[Adapter[Any]], Awaitable[None]], adapter: Adapter[Any]) -> None:
    """Run a hook that sets the destination up; skip the check where it cannot apply."""
    try:
        await hook(adapter)
    except NotApplicable as exc:
        pytest.skip(str(exc))
