"""Target workers: order per contact, coalescing, retries, dead letters, pauses, independence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector import delivery
from connector.adapter import Record
from connector.config import load_config
from connector.delivery import backoff_delay
from connector.errors import TargetPaused
from connector.outcomes import Dead, Retry, Undelivered
from connector.service import Service
from testkit.fakes import FakeAdapter
from testkit.payloads import FAKE_MAPPING, contact, write_config
from testkit.service import fake_adapter, send, status_reaches
from testkit.waiting import eventually


async def test_a_contact_arrives_mapped(running: Callable[..., Any]) -> None:
    service = await running()
    fake = fake_adapter(service)
    await send(service, "contact-created", contact(1, lastName="Doe"))
    await eventually(lambda: bool(fake.contacts))
    assert fake.contacts == {
        contact(1)["id"]: {"first": "First1", "last": "Doe", "email": "person1@example.com"}
    }
    (record,) = fake.pushes[0]
    assert (record.op, record.event, record.attempt, record.remote_id) == (
        "upsert",
        "contact-created",
        1,
        None,
    )


async def test_updates_of_one_contact_arrive_in_order_and_coalesce(
    running: Callable[..., Any],
) -> None:
    service = await running({"fake": {"type": "fake", "mapping": FAKE_MAPPING, "concurrency": 4}})
    fake = fake_adapter(service)
    one = contact(1)["id"]
    fake.gate, fake.hold = asyncio.Event(), {one}
    await send(service, "contact-created", contact(1, lastName="v0"))
    await eventually(lambda: one in fake.in_flight)
    for n in range(1, 11):  # all arrive while the first push of the contact is still running
        await send(service, "contact-updated", contact(1, lastName=f"v{n}"))
    await send(service, "contact-created", contact(2))
    # Other contacts are not held up by the stuck one.
    await eventually(lambda: contact(2)["id"] in fake.contacts)
    fake.gate.set()
    await eventually(lambda: fake.contacts.get(one, {}).get("last") == "v10")
    await status_reaches(service, pending=0, delivered=12)  # nothing left to push
    pushes_of_one = [
        r for r in (rec for batch in fake.pushes for rec in batch) if r.contact_id == one
    ]
    assert [r.fields["last"] for r in pushes_of_one] == ["v0", "v10"]
    assert fake.overlaps == 0
    assert pushes_of_one[1].remote_id == f"remote-{one}"  # remembered from the first delivery


async def test_a_delete_wins_and_a_late_update_cannot_resurrect(
    running: Callable[..., Any],
) -> None:
    service = await running()
    fake = fake_adapter(service)
    await send(service, "contact-created", contact(1))
    await eventually(lambda: bool(fake.contacts))
    await send(service, "contact-deleted", {k: contact(1)[k] for k in ("id", "customerId")})
    await eventually(lambda: not fake.contacts)
    late = await send(service, "contact-updated", contact(1))
    assert late["status"] == "dropped"
    await status_reaches(service, pending=0, delivered=2)
    assert fake.contacts == {}


async def test_retries_follow_the_scheduled_time(running: Callable[..., Any]) -> None:
    service = await running({"fake": {"type": "fake", "mapping": FAKE_MAPPING, "fail_first": 2}})
    fake = fake_adapter(service)
    await send(service, "contact-created", contact(1))
    await status_reaches(service, pending=0, delivered=1, dead=0)
    assert [r.attempt for batch in fake.pushes for r in batch] == [1, 2, 3]


async def test_backoff_delays_the_next_attempt(running: Callable[..., Any]) -> None:
    targets = {
        "fake": {"type": "fake", "mapping": FAKE_MAPPING, "backoff": {"initial": 0.6, "max": 5}}
    }
    service = await running(targets)
    fake = fake_adapter(service)
    fake.script = lambda r: Retry("busy") if r.attempt == 1 else None
    await send(service, "contact-created", contact(1))
    await eventually(lambda: len(fake.pushes) == 1)
    first = time.monotonic()
    await eventually(lambda: bool(fake.contacts))
    assert time.monotonic() - first >= 0.25  # backoff 0.6 s with jitter: at least half of it


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for failures, low, high in [(1, 0.5, 1), (2, 1, 2), (4, 4, 8), (20, 30, 60)]:
        delays = [backoff_delay(failures, 1.0, 60.0) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert len(set(delays)) > 1


async def test_refused_records_go_dead_and_the_others_arrive(
    running: Callable[..., Any],
) -> None:
    service = await running()
    fake = fake_adapter(service)
    bad = contact(2)["id"]
    fake.script = lambda r: Dead("Property values were not valid") if r.contact_id == bad else None
    for n in range(1, 4):
        await send(service, "contact-created", contact(n))
    await status_reaches(service, dead=1, delivered=2, pending=0)
    assert set(fake.contacts) == {contact(1)["id"], contact(3)["id"]}


async def test_gives_up_after_max_attempts(running: Callable[..., Any]) -> None:
    targets = {"fake": {"type": "fake", "mapping": FAKE_MAPPING, "max_attempts": 3}}
    service = await running(targets)
    fake = fake_adapter(service)
    fake.script = lambda r: Retry("HTTP 500", after=0.01)
    await send(service, "contact-created", contact(1))
    await status_reaches(service, dead=1, pending=0)
    assert len(fake.pushes) == 3


async def test_a_mapping_failure_is_a_dead_letter(running: Callable[..., Any]) -> None:
    targets = {"fake": {"type": "fake", "mapping": {"fields": {"x": "join(', ', firstName)"}}}}
    service = await running(targets)
    await send(service, "contact-created", contact(1))
    await status_reaches(service, dead=1, pending=0)
    assert fake_adapter(service).pushes == []


@pytest.mark.parametrize(
    ("error", "dead", "pending"),
    [
        (Undelivered(Retry("503 Service Unavailable", after=30)), 0, 1),
        (Undelivered(Dead("400 Bad Request")), 1, 0),
        (RuntimeError("bug in adapter"), 0, 1),
    ],
    ids=["retryable", "permanent", "unexpected"],
)
async def test_a_failed_batch_only_affects_its_own_records(
    running: Callable[..., Any], error: Exception, dead: int, pending: int
) -> None:
    targets = {"fake": {"type": "fake", "mapping": FAKE_MAPPING, "backoff": {"initial": 30}}}
    service = await running(targets)
    fake = fake_adapter(service)
    fake.gate = asyncio.Event()
    await send(service, "contact-created", contact(1))
    await eventually(lambda: bool(fake.in_flight))
    await send(service, "contact-created", contact(2))
    fake.raise_next.append(error)
    fake.gate.set()  # the first batch (contact 1) fails; the next one (contact 2) goes through
    await status_reaches(service, dead=dead, pending=pending, delivered=1)
    assert list(fake.contacts) == [contact(2)["id"]]


async def test_an_auth_failure_pauses_the_target_and_loses_nothing(
    running: Callable[..., Any],
) -> None:
    service = await running()
    fake = fake_adapter(service)
    token = {"revoked": True}

    def auth(record: Record) -> None:  # every push is refused until the token is fixed
        if token["revoked"]:
            raise TargetPaused("401 Unauthorized: token revoked", until=time.time() + 0.2)

    fake.script = auth
    await send(service, "contact-created", contact(1))
    status = await status_reaches(service, paused=True, pending=1, dead=0)
    assert "401" in (status.paused_reason or "")
    await eventually(lambda: len(fake.pushes) >= 2)  # probed again after the pause
    token["revoked"] = False
    await status_reaches(service, paused=False, pending=0, delivered=1, dead=0)
    assert len(fake.contacts) == 1


async def test_one_target_down_does_not_delay_another(running: Callable[..., Any]) -> None:
    service = await running(
        {
            "down": {"type": "fake", "mapping": FAKE_MAPPING},
            "up": {"type": "fake", "mapping": FAKE_MAPPING},
        }
    )
    down, up = fake_adapter(service, "demo/down"), fake_adapter(service, "demo/up")
    down.gate = asyncio.Event()  # hangs forever
    for n in range(5):
        await send(service, "contact-created", contact(n))
    await eventually(lambda: len(up.contacts) == 5)
    assert down.contacts == {}
    down.gate.set()


async def test_pending_retries_survive_a_restart(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    service = Service(config)
    await service.start()
    fake = fake_adapter(service)
    fake.script = lambda r: Retry("HTTP 503", after=0.5)
    await send(service, "contact-created", contact(1))
    await eventually(lambda: len(fake.pushes) == 1)
    await service.stop()

    service = Service(config)
    await service.start()
    try:
        fake = fake_adapter(service)
        await eventually(lambda: bool(fake.contacts))
        (record,) = fake.pushes[0]
        assert record.attempt == 2
    finally:
        await service.stop()


async def test_records_carry_what_the_adapter_needs(running: Callable[..., Any]) -> None:
    service = await running()
    fake = fake_adapter(service)
    seen: list[Record] = []
    fake.script = lambda r: seen.append(r) or None  # type: ignore[func-returns-value]
    answer = await send(service, "contact-created", contact(7))
    await eventually(lambda: bool(seen))
    record = seen[0]
    assert record.event_id == answer["eventId"]
    assert record.payload["id"] == contact(7)["id"]
    assert isinstance(fake, FakeAdapter)


# --- the target as a mirror ---------------------------------------------------------------------


async def test_an_update_of_unmapped_fields_costs_no_push(running: Callable[..., Any]) -> None:
    service = await running()
    fake = fake_adapter(service)
    await send(service, "contact-created", contact(1))
    await status_reaches(service, delivered=1, pending=0)
    await send(service, "contact-updated", contact(1, status="INACTIVE"))  # not mapped here
    status = await status_reaches(service, delivered=1, unchanged=1, pending=0)
    assert status.dead == 0
    assert len(fake.pushes) == 1


async def test_a_write_carries_what_changed_and_clears_what_was_emptied(
    running: Callable[..., Any],
) -> None:
    service = await running()
    fake = fake_adapter(service)
    await send(service, "contact-created", contact(1, lastName="Doe"))
    await status_reaches(service, delivered=1, pending=0)
    await send(service, "contact-updated", contact(1, firstName="Jane", lastName=None))
    await status_reaches(service, delivered=2, pending=0)
    first, second = (batch[0] for batch in fake.pushes)
    assert first.changes == {"first": "First1", "last": "Doe", "email": "person1@example.com"}
    assert (first.cleared, first.unchanged) == ((), frozenset())
    assert second.changes == {"first": "Jane"}
    assert second.cleared == ("last",)  # written before, empty now
    assert second.unchanged == {"email"}


async def test_a_field_never_written_is_never_cleared(running: Callable[..., Any]) -> None:
    service = await running()
    fake = fake_adapter(service)
    await send(service, "contact-created", contact(1, lastName=None))  # no last name yet
    await status_reaches(service, delivered=1, pending=0)
    await send(service, "contact-updated", contact(1, lastName=None, firstName="Jane"))
    await status_reaches(service, delivered=2, pending=0)
    assert fake.pushes[1][0].cleared == ()


async def test_a_change_back_is_delivered(running: Callable[..., Any]) -> None:
    service = await running()
    fake = fake_adapter(service)
    for n, last in enumerate(("A", "B", "A")):
        event = "contact-updated" if n else "contact-created"
        await send(service, event, contact(1, lastName=last))
        await status_reaches(service, delivered=n + 1, pending=0)
    assert [batch[0].fields["last"] for batch in fake.pushes] == ["A", "B", "A"]
    assert fake.contacts[contact(1)["id"]]["last"] == "A"
    again = await send(service, "contact-updated", contact(1, lastName="A"))  # redelivered
    assert again["status"] == "duplicate"


async def test_a_write_that_may_still_land_holds_the_next_one_back(
    running: Callable[..., Any],
) -> None:
    targets = {"fake": {"type": "fake", "mapping": FAKE_MAPPING, "push_timeout": 1.5}}
    service = await running(targets)
    fake = fake_adapter(service)
    fake.script = lambda r: Retry("read timeout", after=0.01, maybe_written=True)
    await send(service, "contact-created", contact(1))
    await eventually(lambda: len(fake.pushes) == 1)
    first = time.monotonic()
    fake.script = None
    await eventually(lambda: len(fake.pushes) == 2)
    # Not after 0.01 s as the adapter asked: the unanswered write gets push_timeout to land.
    assert time.monotonic() - first >= 1.4
    await status_reaches(service, delivered=1, pending=0)


async def test_a_push_timeout_holds_the_next_write_back(running: Callable[..., Any]) -> None:
    targets = {"fake": {"type": "fake", "mapping": FAKE_MAPPING, "push_timeout": 1}}
    service = await running(targets)
    fake = fake_adapter(service)
    fake.gate, fake.hold = asyncio.Event(), {contact(1)["id"]}
    await send(service, "contact-created", contact(1, lastName="OLD"))
    await eventually(lambda: bool(fake.in_flight))
    started = time.monotonic()
    await send(service, "contact-updated", contact(1, lastName="NEW"))
    await eventually(lambda: not fake.in_flight)  # cancelled by push_timeout
    fake.hold = set()
    await status_reaches(service, delivered=2, pending=0)
    assert time.monotonic() - started >= 1.9  # the timeout, then as long again for the fence
    assert [b[0].fields["last"] for b in fake.pushes] == ["OLD", "NEW"]
    assert fake.overlaps == 0


async def test_a_burst_goes_out_in_full_batches(running: Callable[..., Any]) -> None:
    target = {"type": "fake", "mapping": FAKE_MAPPING, "batch_size": 20, "linger": 5,
              "concurrency": 4}  # fmt: skip
    service = await running({"fake": target})
    fake = fake_adapter(service)
    await asyncio.gather(*(send(service, "contact-created", contact(n)) for n in range(40)))
    await status_reaches(service, delivered=40, pending=0)
    assert [len(batch) for batch in fake.pushes] == [20, 20]  # ceil(40 / 20) calls, no more


async def test_a_push_longer_than_the_lease_keeps_its_contacts(
    running: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "LEASE", 0.6)  # renewed every 0.2 s, writes stop 0.2 s early
    monkeypatch.setattr(delivery, "RENEW_EVERY", 0.2)
    monkeypatch.setattr(delivery, "LEASE_MARGIN", 0.2)
    targets = {"fake": {"type": "fake", "mapping": FAKE_MAPPING, "concurrency": 4}}
    service = await running(targets)
    fake = fake_adapter(service)
    fake.gate, fake.hold = asyncio.Event(), {contact(1)["id"]}
    await send(service, "contact-created", contact(1))
    await eventually(lambda: bool(fake.in_flight))
    await asyncio.sleep(2.0)  # several leases long: without the heartbeat, another lane takes it
    assert len(fake.pushes) == 1
    fake.hold = set()
    fake.gate.set()
    await status_reaches(service, delivered=1, pending=0)
    assert fake.overlaps == 0 and len(fake.pushes) == 1


async def test_outcomes_the_store_failed_to_record_are_recorded_again(
    running: Callable[..., Any],
) -> None:
    service = await running()
    fake = fake_adapter(service)
    complete, failures = service.store.complete, [1]

    async def flaky_complete(*args: Any) -> None:
        if failures:
            failures.pop()
            raise OSError("database or disk is full")
        await complete(*args)

    service.store.complete = flaky_complete  # type: ignore[method-assign]
    started = time.monotonic()
    await send(service, "contact-created", contact(1))
    await status_reaches(service, delivered=1, pending=0)
    assert not failures and len(fake.pushes) == 1  # recorded, not pushed again
    assert time.monotonic() - started < delivery.LEASE  # not left to wait out the lease
