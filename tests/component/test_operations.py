"""Operators' tools against a running service: dlq, pause/resume, trace, import, redeliveries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from click.testing import CliRunner, Result

from connector.cli import main
from connector.config import load_config
from connector.outcomes import Dead
from connector.service import Service
from testkit.payloads import CUSTOMER, FAKE_MAPPING, contact, write_config
from testkit.service import fake_adapter, send, status_reaches
from testkit.waiting import eventually


async def cli(*args: str) -> Result:
    """The command line, in a thread: it runs its own event loop."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def config_of(service: Service) -> str:
    return str(service.config.path)


async def test_dead_letters_are_listed_shown_replayed_and_purged(running: Callable) -> None:
    service = await running()
    fake = fake_adapter(service)
    bad = {contact(n)["id"] for n in (1, 2)}
    fake.script = lambda r: Dead("HTTP 422: email is invalid") if r.contact_id in bad else None
    for n in range(4):
        await send(service, "contact-created", contact(n))
    await status_reaches(service, dead=2, delivered=2, pending=0)
    config = config_of(service)

    listed = await cli("dlq", "list", "--config", config)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "TENANT", "TARGET", "OBJECT"]
    assert contact(1)["id"] in lines[1] and "HTTP 422: email is invalid" in lines[1]
    letters = json.loads((await cli("dlq", "list", "--config", config, "--json")).stdout)
    assert [d["contact_id"] for d in letters] == [contact(1)["id"], contact(2)["id"]]
    assert letters[0]["tenant"] == "demo" and letters[0]["target"] == "fake"
    assert letters[0]["attempts"] == 1 and letters[0]["event_type"] == "contact-created"

    shown = await cli("dlq", "show", str(letters[0]["id"]), "--config", config)
    assert "error:" in shown.stdout and "HTTP 422: email is invalid" in shown.stdout
    assert '"firstName": "First1"' in shown.stdout

    fake.script = None  # the target is fixed
    replayed = await cli("dlq", "replay", str(letters[0]["id"]), "--config", config, "--wait", "15")
    assert replayed.exit_code == 0, replayed.output
    assert f"{contact(1)['id']}: queued → delivered" in replayed.stdout
    assert contact(1)["id"] in fake.contacts

    unknown = await cli("dlq", "replay", "999", "--config", config)
    assert unknown.exit_code == 1 and "#999: not found" in unknown.stdout

    # --all asks first; no answer (no terminal) is a no.
    refused = await cli("dlq", "purge", "--all", "--config", config)
    assert refused.exit_code == 1 and "Delete every dead letter for good?" in refused.output
    young = await cli("dlq", "purge", "--all", "--older-than-days", "1", "--yes", "--json",
                      "--config", config)  # fmt: skip
    assert json.loads(young.stdout) == {"purged": 0}
    purged = await cli("dlq", "purge", "--all", "--yes", "--config", config)
    assert purged.stdout.strip() == "purged 2 dead letter(s)"  # the replayed one too
    assert json.loads((await cli("dlq", "list", "--config", config, "--json")).stdout) == []
    missing = await cli("dlq", "show", "999", "--config", config)
    assert missing.exit_code == 1 and "no dead letter 999" in missing.stderr


async def test_dlq_filters_by_the_targets_message_for_list_replay_and_purge(
    running: Callable,
) -> None:
    service = await running()
    fake = fake_adapter(service)
    reasons = {contact(1)["id"]: "HTTP 400: EMAIL is invalid", contact(2)["id"]: "50% off"}
    fake.script = lambda r: Dead(reasons[r.contact_id]) if r.contact_id in reasons else None
    for n in (1, 2):
        await send(service, "contact-created", contact(n))
    await status_reaches(service, dead=2, pending=0)
    config = config_of(service)

    async def listed(*filters: str) -> list[str]:
        found = await cli("dlq", "list", "--config", config, "--json", *filters)
        return [d["contact_id"] for d in json.loads(found.stdout)]

    assert await listed("--reason", "email") == [contact(1)["id"]]
    assert await listed("--reason", "50%") == [contact(2)["id"]]  # literally, not a wildcard
    assert await listed("--reason", "5_%") == []
    assert await listed("--older-than-days", "1") == []
    narrowed = await cli("dlq", "replay", "1", "--reason", "email", "--config", config)
    assert narrowed.exit_code == 2 and "narrow --all, not ids" in narrowed.output
    fake.script = None
    replayed = await cli("dlq", "replay", "--all", "--reason", "Email", "--config", config,
                         "--wait", "15")  # fmt: skip
    assert replayed.exit_code == 0, replayed.output
    assert f"{contact(1)['id']}: queued → delivered" in replayed.stdout
    assert contact(2)["id"] not in replayed.stdout
    purged = await cli("dlq", "purge", "--all", "--reason", "off", "--yes", "--config", config)
    assert purged.stdout.strip() == "purged 1 dead letter(s)"
    assert await listed() == []


async def test_replay_needs_ids_or_all(running: Callable) -> None:
    service = await running()
    result = await cli("dlq", "replay", "--config", config_of(service))
    assert result.exit_code == 2 and "give dead letter ids, or --all" in result.output


async def test_dead_letter_ids_out_of_range_are_refused_plainly(running: Callable) -> None:
    service = await running()
    fake_adapter(service).script = lambda r: Dead("HTTP 422: email is invalid")
    await send(service, "contact-created", contact(1))
    await status_reaches(service, dead=1, pending=0)
    config = config_of(service)
    huge = "100000000000000000000000"
    ids = "is not in the range 1<=x<=9223372036854775807"
    for args, expected in (
        (("dlq", "show", huge), f"'DEAD_LETTER_ID': {huge} {ids}"),
        (("dlq", "show", "0"), f"'DEAD_LETTER_ID': 0 {ids}"),
        (("dlq", "replay", "1", huge), f"{huge} {ids}"),
        (("dlq", "purge", huge), f"{huge} {ids}"),
        (("dlq", "purge", "0", "1"), f"0 {ids}"),
        (("dlq", "list", "--limit", huge), "is not in the range 0<=x<=9223372036854775807"),
    ):
        result = await cli(*args, "--config", config)
        assert result.exit_code == 2, (args, result.output)  # a usage error
        assert expected in result.stderr, (args, result.stderr)
        assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    # Nothing was replayed or purged on the way.
    (letter,) = json.loads((await cli("dlq", "list", "--config", config, "--json")).stdout)
    assert letter["contact_id"] == contact(1)["id"] and letter["replayed_at"] is None
    largest = await cli("dlq", "show", "9223372036854775807", "--config", config)
    assert largest.exit_code == 1 and "no dead letter 9223372036854775807" in largest.stderr


async def test_an_operator_pauses_and_resumes_a_target(running: Callable) -> None:
    service = await running()
    fake = fake_adapter(service)
    config = config_of(service)
    target = ("--tenant", "demo", "--target", "fake")
    not_paused = await cli("resume", "--config", config, *target)
    assert not_paused.stdout == "demo/fake: was not paused\n"
    with structlog.testing.capture_logs() as logs:
        paused = await cli("pause", "--config", config, *target, "--reason", "CRM migration")
        assert paused.exit_code == 0, paused.output
        # The worker follows the store: it sees the pause at its next look, and says so.
        await eventually(lambda: service.workers["demo/fake"].paused_by == "operator")
    (line,) = [e for e in logs if e["event"] == "target paused by an operator"]
    assert line["reason"].endswith("CRM migration") and line["target"] == "fake"
    await send(service, "contact-created", contact(1))
    await asyncio.sleep(0.5)  # time enough for a push that should not happen
    assert fake.pushes == []
    status = json.loads((await cli("status", "--config", config, "--json")).stdout)
    assert status[0]["paused"] and status[0]["paused_reason"].endswith("CRM migration")
    assert status[0]["pending"] == 1
    resumed = await cli("resume", "--config", config, *target)
    assert resumed.exit_code == 0 and "resumed (it was paused: " in resumed.stdout
    await status_reaches(service, paused=False, delivered=1, pending=0)
    status = json.loads((await cli("status", "--config", config, "--json")).stdout)
    assert not status[0]["paused"] and status[0]["delivered"] == 1
    assert len(fake.contacts) == 1


async def test_trace_shows_every_step(running: Callable) -> None:
    service = await running()
    fake = fake_adapter(service)
    one = contact(1)["id"]
    created = await send(service, "contact-created", contact(1))
    await eventually(lambda: one in fake.contacts)
    await send(service, "contact-deleted", {"id": one, "customerId": CUSTOMER})
    await eventually(lambda: one not in fake.contacts)
    late = await send(service, "contact-updated", contact(1, lastName="Late"))
    assert late["status"] == "dropped"
    await status_reaches(service, delivered=2, pending=0)  # both outcomes are on record
    result = await cli("trace", one, "--config", config_of(service))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"(event {created['eventId']})" in out
    assert "contact-created" in out and "contact-deleted" in out
    assert "dropped: contact was deleted earlier" in out
    assert f"demo/fake  delivered  CRM id remote-{one}" in out
    assert "mapping config.yaml: tenants.demo.targets.fake.mapping (inline)" in out
    as_json = json.loads((await cli("trace", one, "--config", config_of(service), "--json")).stdout)
    assert [e["event_type"] for e in as_json["events"]] == [
        "contact-created", "contact-deleted", "contact-updated"]  # fmt: skip
    assert [a["outcome"] for a in as_json["attempts"]] == ["delivered", "delivered"]
    unknown = await cli("trace", "CONT-nobody", "--config", config_of(service))
    assert unknown.exit_code == 1 and "nothing known about CONT-nobody" in unknown.stderr


async def test_a_redelivered_webhook_is_stored_once(running: Callable) -> None:
    service = await running()
    fake = fake_adapter(service)
    fake.gate = asyncio.Event()
    first = await send(service, "contact-created", contact(1))
    again = await send(service, "contact-created", contact(1))
    assert again == {
        "eventId": first["eventId"],
        "status": "duplicate",
        "reason": "already received",
    }
    fake.gate.set()
    await status_reaches(service, delivered=1, pending=0)
    assert len(fake.pushes) == 1


MIMEEQ_EXPORT = (
    "\ufeffContact ID,First Name,Last Name,Email,Phone,Company ID,Status,Address,City,Zip Code,"
    "Country,Position,Tags\n"
    "CONT-imp-1,Ada,Lovelace,ada@example.com,+44 20 7946 0000,COMP-1,ACTIVE,1 Street,London,N1,"
    "UK,CTO,vip; trade fair\n"
    """CONT-imp-2,Alan,Turing,"alan@example.com; alan@home.example",,,INACTIVE,,,,,,
,No,Id,nobody@example.com,,,,,,,,,
CONT-imp-4,Grace,Hopper,grace@example.com,,,ACTIVE,,,,,,
"""
)


async def test_import_a_mimeeq_csv_export_twice(running: Callable, tmp_path: Path) -> None:
    service = await running()
    fake = fake_adapter(service)
    export = tmp_path / "contacts.csv"
    export.write_text(MIMEEQ_EXPORT, encoding="utf-8")
    refused = await cli("import", "--config", config_of(service), "--tenant", "demo", str(export))
    assert refused.exit_code == 1  # one row could not be used: the file is refused whole
    assert "line 4: id: required, but empty" in refused.stderr
    assert "refused, nothing imported: 1 unusable row(s), 3 usable" in refused.stdout
    export.write_text(MIMEEQ_EXPORT.replace(",No,Id,nobody@example.com,,,,,,,,,\n", ""))
    first = await cli("import", "--config", config_of(service), "--tenant", "demo", str(export))
    assert first.exit_code == 0, first.output
    assert "imported 3 rows: 3 queued, 0 duplicate, 0 dropped" in first.stdout
    await eventually(lambda: len(fake.contacts) == 3)  # picked up by the server
    assert fake.contacts["CONT-imp-1"] == {"first": "Ada", "last": "Lovelace",
                                           "email": "ada@example.com"}  # fmt: skip
    (record,) = [r for batch in fake.pushes for r in batch if r.contact_id == "CONT-imp-2"]
    assert record.event == "contact-imported"
    assert [e["mail"] for e in record.payload["emails"]] == [
        "alan@example.com",
        "alan@home.example",
    ]
    second = await cli("import", "--config", config_of(service), "--tenant", "demo", str(export),
                       "--json")  # fmt: skip
    counts = json.loads(second.stdout)
    assert (counts["queued"], counts["duplicate"], counts["unusable"]) == (0, 3, 0)
    assert second.exit_code == 0 and counts["status"] == "imported"


async def test_import_json_lines(running: Callable, tmp_path: Path) -> None:
    service = await running()
    fake = fake_adapter(service)
    lines = [json.dumps(contact(n)) for n in range(5)]
    lines.insert(2, "{broken")
    lines.append(json.dumps({**contact(9), "customerId": "CUST-someone-else"}))
    source = tmp_path / "contacts.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = await cli("import", "--config", config_of(service), "--tenant", "demo", str(source))
    assert result.exit_code == 1
    assert "refused, nothing imported: 2 unusable row(s), 5 usable" in result.stdout
    assert "line 3: not valid JSON" in result.stderr
    assert "line 7: customerId is not this tenant's Mimeeq customer" in result.stderr
    source.write_text("\n".join(lines[:2] + lines[3:-1]) + "\n")
    result = await cli("import", "--config", config_of(service), "--tenant", "demo", str(source))
    assert result.exit_code == 0 and "imported 5 rows: 5 queued" in result.stdout
    await eventually(lambda: len(fake.contacts) == 5)
    assert fake.pushes and len({r.contact_id for b in fake.pushes for r in b}) == 5


async def test_stopping_hands_back_a_cut_push_after_its_write_could_land(tmp_path: Path) -> None:
    """A push cut short by a stop may have sent its write: the contact is handed back at once
    (no lease to wait out, no recovery), and written again once that write could have landed."""
    target = {"fake": {"type": "fake", "mapping": FAKE_MAPPING, "push_timeout": 2}}
    config = load_config(write_config(tmp_path, target))
    service = Service(config)
    await service.start()
    fake = fake_adapter(service)
    fake.gate = asyncio.Event()  # the push hangs
    await send(service, "contact-created", contact(1))
    await eventually(lambda: bool(fake.in_flight))
    service.config.server.drain_timeout = 0.2
    stopped = time.time()
    await service.stop()
    service = Service(config)
    await service.start()
    try:
        (status,) = await service.store.status()
        assert status.pending == 1
        await eventually(lambda: bool(fake_adapter(service).contacts))
        (record,) = fake_adapter(service).pushes[0]
        assert time.time() - stopped >= 2  # push_timeout: the fence of a cut write
        assert record.attempt == 1  # handed back, not a failure
    finally:
        await service.stop()


async def test_trace_shows_what_each_push_wrote_and_skipped(running: Callable) -> None:
    service = await running()
    one = contact(1)["id"]
    await send(service, "contact-created", contact(1, lastName="Doe"))
    await status_reaches(service, delivered=1, pending=0)
    await send(service, "contact-updated", contact(1, lastName=None, firstName="Jane"))
    await status_reaches(service, delivered=2, pending=0)
    await send(service, "contact-updated", contact(1, lastName=None, firstName="Jane", status="X"))
    await status_reaches(service, delivered=2, unchanged=1, pending=0)
    result = await cli("trace", one, "--config", config_of(service))
    lines = result.stdout.splitlines()
    pushes = [n for n, line in enumerate(lines) if "demo/fake" in line and "(event" in line]
    assert [lines[n + 1].strip() for n in pushes] == [
        'wrote first="First1", last="Doe", email="p***@example.com"',  # masked like the logs
        'wrote first="Jane"; cleared last; unchanged email',
        "unchanged email, first",
    ]
    assert "  unchanged  (" in lines[pushes[2]]
    as_json = json.loads((await cli("trace", one, "--config", config_of(service), "--json")).stdout)
    assert as_json["attempts"][1]["fields"] == {
        "written": {"first": "Jane"}, "cleared": ["last"], "unchanged": ["email"]}  # fmt: skip


async def test_resync_writes_contacts_whole_again(running: Callable) -> None:
    service = await running()
    fake = fake_adapter(service)
    for n in (1, 2):
        await send(service, "contact-created", contact(n))
    await status_reaches(service, delivered=2, pending=0)
    config = config_of(service)
    one = await cli("resync", contact(1)["id"], "--config", config)
    assert one.exit_code == 0, one.output
    assert one.stdout.strip() == "demo/fake: 1 contact(s) queued for a full re-write"
    await status_reaches(service, delivered=3, pending=0)
    assert fake.pushes[-1][0].changes == fake.pushes[-1][0].fields  # every field, not a diff
    everything = await cli("resync", "--all", "--config", config, "--json")
    assert json.loads(everything.stdout) == {"demo/fake": 2}
    await status_reaches(service, delivered=5, pending=0)
    assert sorted(r.contact_id for r in fake.pushes[-1]) == [contact(1)["id"], contact(2)["id"]]
    neither = await cli("resync", "--config", config)
    assert neither.exit_code == 2 and "give contact ids, or --all" in neither.output
