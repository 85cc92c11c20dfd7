"""The console's pages against a running service: dead letters (filter, detail, replay, purge),
trace by id and by e-mail, targets (pause from there, full re-writes), the overview's live
columns. Each action is checked against what the CLI sees."""

from __future__ import annotations

import asyncio
import html
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from connector.outcomes import Dead, Retry
from connector.service import Service
from fake_hubspot import FakeHubSpot
from testkit.console import ADMIN_TOKEN, at, csrf_of, sign_in
from testkit.hubspot import hubspot_config
from testkit.payloads import TOKEN, contact
from testkit.service import fake_adapter, send, status_reaches
from testkit.waiting import eventually

BAD_EMAIL = "HTTP 400: Property values were not valid: email person1@example.com is invalid"


async def cli_json(service: Service, *args: str) -> Any:
    result = await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "--config", str(service.config.path), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def page(client: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with client.get(url) as response:
        text = await response.text()
        assert response.status == status, text
        return text


async def post(
    client: aiohttp.ClientSession, url: str, form: dict[str, Any] | list[tuple[str, str]]
) -> tuple[int, str, str]:
    async with client.post(url, data=form) as response:
        return response.status, response.url.path, await response.text()


async def two_dead_letters(console: Service) -> None:
    """Contacts 1 and 2 refused by the target (1 for its e-mail, 2 for its name); 3 delivered."""
    fake = fake_adapter(console)
    fake.script = lambda r: (
        Dead(BAD_EMAIL) if r.contact_id == contact(1)["id"]
        else Dead("HTTP 400: firstname is too long") if r.contact_id == contact(2)["id"]
        else None
    )  # fmt: skip
    for n in (1, 2, 3):
        await send(console, "contact-created", contact(n))
    await status_reaches(console, dead=2, delivered=1, pending=0)


def listed_ids(text: str) -> list[int]:
    return [int(i) for i in re.findall(r'<a href="/dead-letters/(\d+)">', text)]


async def test_dead_letters_are_listed_filtered_and_shown_with_the_crm_message_masked(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await two_dead_letters(console)
    await sign_in(client, console)
    letters = await cli_json(console, "dlq", "list")
    first, second = (d["id"] for d in letters)
    text = await page(client, at(console, "/dead-letters"))
    assert listed_ids(text) == [first, second]
    assert "person1@example.com" not in text and "p***@example.com" in text  # masked
    assert listed_ids(await page(client, at(console, "/dead-letters?reason=EMAIL"))) == [first]
    assert listed_ids(await page(client, at(console, "/dead-letters?reason=too+long"))) == [second]
    assert listed_ids(await page(client, at(console, "/dead-letters?age=1h"))) == []
    assert listed_ids(await page(client, at(console, "/dead-letters?target=demo/fake"))) == [
        first,
        second,
    ]
    none = await page(client, at(console, "/dead-letters?tenant=demo&reason=nothing+like+it"))
    assert "No dead letters match these filters" in none

    detail = await page(client, at(console, f"/dead-letters/{first}"))
    assert "Property values were not valid: email p***@example.com is invalid" in detail
    assert contact(1)["id"] in detail and "contact-created" in detail
    # The mapped record, as the current mapping makes it, masked like the logs.
    assert '"first": "First1"' in detail and '"email": "p***@example.com"' in detail
    assert "person1@example.com" not in detail
    await page(client, at(console, "/dead-letters/999999"), status=404)


async def test_a_replay_after_a_fix_turns_delivered_on_the_replay_page(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await two_dead_letters(console)
    csrf = await sign_in(client, console)
    (first, _) = (d["id"] for d in await cli_json(console, "dlq", "list"))
    fake_adapter(console).script = None  # the target accepts them now

    status, path, text = await post(
        client,
        at(console, "/dead-letters/replay"),
        [("csrf", csrf), ("scope", "selected"), ("id", str(first))],
    )
    assert status == 200 and path.startswith("/replays/"), text
    assert f"#{first}" in text and "queued" in text
    outcomes = at(console, f"{path}/outcomes.json")

    async def delivered() -> bool:
        async with client.get(outcomes) as response:
            return (await response.json()) == {str(first): "delivered"}

    await eventually(delivered)
    assert "delivered" in await page(client, at(console, path))
    remaining = await cli_json(console, "dlq", "list")
    assert [d["id"] for d in remaining] != [] and first not in [d["id"] for d in remaining]
    assert contact(1)["id"] in fake_adapter(console).contacts


async def test_replay_all_matching_takes_only_the_filtered_ones_and_says_dead_again(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await two_dead_letters(console)
    csrf = await sign_in(client, console)
    first, second = (d["id"] for d in await cli_json(console, "dlq", "list"))
    form = {"csrf": csrf, "scope": "matching", "reason": "too long"}
    status, path, _ = await post(client, at(console, "/dead-letters/replay"), form)
    assert status == 200

    async def dead_again() -> str:
        async with client.get(at(console, f"{path}/outcomes.json")) as response:
            found = await response.json()
        assert list(found) == [str(second)] and found[str(second)].startswith("dead again")
        return str(found[str(second)])

    assert "too long" in await eventually(dead_again)
    still = [d["id"] for d in await cli_json(console, "dlq", "list")]
    assert still[0] == first and second not in still  # a new letter replaces the replayed one


async def test_purge_asks_for_confirmation_first_and_takes_only_what_was_counted(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await two_dead_letters(console)
    csrf = await sign_in(client, console)
    form = {"csrf": csrf, "scope": "matching", "tenant": "demo"}
    status, _, text = await post(client, at(console, "/dead-letters/purge"), form)
    assert status == 200 and "Delete 2 dead letter(s) for good?" in text
    assert len(await cli_json(console, "dlq", "list")) == 2  # nothing deleted yet
    confirmed = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', text)
    assert ("tenant", "demo") in confirmed and "through" in dict(confirmed)
    await send(console, "contact-created", contact(1, lastName="Later"))  # dies after the count
    await status_reaches(console, dead=3, pending=0)
    status, path, text = await post(client, at(console, "/dead-letters/purge"), confirmed)
    assert (status, path) == (200, "/dead-letters") and "Purged 2 dead letter(s)." in text
    (left,) = await cli_json(console, "dlq", "list")  # the one that came after the count
    assert left["contact_id"] == contact(1)["id"]

    # A ticked letter replayed meanwhile is not counted, nor deleted.
    form = [("csrf", csrf), ("scope", "selected"), ("id", str(left["id"]))]
    _, _, text = await post(client, at(console, "/dead-letters/purge"), form)
    confirmed = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', text)
    assert "Delete 1 dead letter(s) for good?" in text
    await cli_json(console, "dlq", "replay", str(left["id"]))
    _, _, text = await post(client, at(console, "/dead-letters/purge"), confirmed)
    assert "Purged 0 dead letter(s)." in text
    status, _, text = await post(client, at(console, "/dead-letters/purge"), {"csrf": csrf})
    assert status == 400 and "Select dead letters first." in text


async def test_actions_on_dead_letters_refuse_what_they_cannot_take(
    console: Service, client: aiohttp.ClientSession
) -> None:
    csrf = await sign_in(client, console)
    for form, problem in (
        ({"scope": "matching", "target": "demo/gone"}, "no such target now: 'demo/gone'"),
        ({"scope": "matching", "tenant": "other"}, "no such tenant now: 'other'"),
        ({"scope": "selected", "id": "²"}, "Select dead letters first."),
        ({"scope": "selected", "id": "9" * 40}, "Select dead letters first."),
        ([("scope", "selected"), *[("id", str(n)) for n in range(1, 502)]], "at most 500"),
        ({"scope": "matching", "through": "x"}, "not one the console made"),
    ):
        sent = [("csrf", csrf), *(form.items() if isinstance(form, dict) else form)]
        for action in ("replay", "purge"):
            if action == "replay" and ("through", "x") in sent:
                continue
            status, _, text = await post(client, at(console, f"/dead-letters/{action}"), sent)
            assert status == 400 and problem in html.unescape(text), (action, form, text)
    assert "No dead letters" in await page(client, at(console, "/dead-letters?purged=²"))


async def test_trace_by_email_finds_the_contact_and_shows_its_timeline_masked(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await sign_in(client, console)
    await send(console, "contact-created", contact(7))
    await send(console, "contact-updated", contact(7, lastName="Changed"))
    await send(console, "contact-created", contact(8))
    await status_reaches(console, pending=0)
    form = {
        "csrf": csrf_of(await page(client, at(console, "/trace"))),
        "q": " PERSON7@Example.com ",
    }
    status, path, text = await post(client, at(console, "/trace"), form)
    assert status == 200 and path == "/trace"
    assert f"Contact {contact(7)['id']}" in text
    assert "webhook contact-created received" in text and "webhook contact-updated received" in text
    assert "push delivered" in text and f"CRM id remote-{contact(7)['id']}" in text
    assert "wrote " in text and "p***@example.com" in text
    assert "person7@example.com" not in text.lower()  # neither shown nor echoed into the form
    assert contact(8)["id"] not in text

    by_id = await page(client, at(console, f"/trace?id={contact(7)['id']}"))
    assert "push delivered" in by_id
    form["q"] = "nobody@example.com"
    assert (
        "No contact with this e-mail address"
        in (await post(client, at(console, "/trace"), form))[2]
    )


async def test_two_contacts_sharing_an_email_are_both_offered(
    console: Service, client: aiohttp.ClientSession
) -> None:
    csrf = await sign_in(client, console)
    shared = [{"type": "WORK", "mail": "desk@example.com"}]
    await send(console, "contact-created", contact(1, emails=shared))
    await send(console, "contact-created", contact(2, emails=shared))
    _, _, text = await post(client, at(console, "/trace"), {"csrf": csrf, "q": "desk@example.com"})
    assert "2 contacts have this e-mail address" in text
    assert contact(1)["id"] in text and contact(2)["id"] in text


async def test_targets_page_pauses_with_a_reason_and_rewrites_a_contact_in_full(
    console: Service, client: aiohttp.ClientSession
) -> None:
    csrf = await sign_in(client, console)
    text = await page(client, at(console, "/targets"))
    assert '<label for="reason-targets-demo/fake">Reason for pausing fake</label>' in text
    form = {"csrf": csrf, "target": "demo/fake", "reason": "CRM migration", "back": "/targets"}
    status, path, text = await post(client, at(console, "/targets/pause"), form)
    assert (status, path) == (200, "/targets")
    assert "paused: paused by an operator: CRM migration" in text
    (row,) = await cli_json(console, "status")
    assert row["paused_reason"] == "paused by an operator: CRM migration"
    form = {"csrf": csrf, "target": "demo/fake", "back": "https://elsewhere.example"}
    status, path, _ = await post(client, at(console, "/targets/resume"), form)
    assert (status, path) == (200, "/")  # never sent off the console
    assert (await cli_json(console, "status"))[0]["paused"] is False

    await send(console, "contact-created", contact(4))
    await status_reaches(console, delivered=1, pending=0)
    pushes = len(fake_adapter(console).pushes)
    ids = f"{contact(4)['id']}\n{contact(5)['id']}"
    form = {"csrf": csrf, "target": "demo/fake", "ids": ids}
    status, _, text = await post(client, at(console, "/targets/resync"), form)
    assert status == 200, text
    assert "demo/fake: 1 contact(s) queued for a full re-write." in text
    assert "1 of them could not be queued" in text

    async def written_again() -> bool:
        return len(fake_adapter(console).pushes) > pushes

    await eventually(written_again)
    (record,) = fake_adapter(console).pushes[-1]
    assert record.contact_id == contact(4)["id"] and not record.unchanged  # every field
    too_many = " ".join(f"CONT-{n}" for n in range(101))
    for bad in ({"ids": ""}, {"target": "demo/nobody"}, {"ids": too_many}):
        form = {"csrf": csrf, "target": "demo/fake", "ids": contact(4)["id"], **bad}
        assert (await post(client, at(console, "/targets/resync"), form))[0] == 400


async def test_the_overview_shows_the_last_error_masked(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await sign_in(client, console)
    fake_adapter(console).script = lambda r: Retry("HTTP 503 for person3@example.com", after=60)
    await send(console, "contact-created", contact(3))

    async def error_shown() -> str:
        async with client.get(at(console, "/status.json")) as response:
            (row,) = await response.json()
        assert row["shown"]["error"] != "none"
        return str(row["shown"]["error"])

    shown = await eventually(error_shown)
    assert "HTTP 503 for p***@example.com" in shown and "ago" in shown
    text = await page(client, at(console, "/"))
    assert 'data-field="budget">no limit<' in text and "HTTP 503 for p***@example.com" in text


async def test_a_wrong_admin_token_is_answered_like_a_wrong_webhook_token(
    console: Service, client: aiohttp.ClientSession
) -> None:
    """Both are 401, both compared in constant time: how close a guess is changes nothing
    measurable. Medians of interleaved attempts, against a bound far above the nanoseconds
    a byte comparison takes and far below any lookup a leak would need."""
    token = console.config.admin.token.get_secret_value() if console.config.admin else ""
    guesses = {"near": token[:-1] + "!", "far": "x" * len(token), "short": "x", "empty": ""}
    timings: dict[str, list[float]] = {name: [] for name in guesses}
    webhook = f"http://127.0.0.1:{console.port}/webhooks/demo/contact-created"
    for _ in range(60):
        for name, guess in guesses.items():
            started = time.perf_counter()
            async with client.post(at(console, "/login"), data={"token": guess}) as response:
                assert response.status == 401
            timings[name].append(time.perf_counter() - started)
    headers = {"X-Mimeeq-Token": TOKEN[:-1] + "!"}
    async with client.post(webhook, json=contact(1), headers=headers) as response:
        assert response.status == 401
    medians = {name: statistics.median(values) for name, values in timings.items()}
    spread = max(medians.values()) - min(medians.values())
    assert spread < max(0.002, 0.5 * min(medians.values())), medians


async def test_the_overview_shows_the_rate_budget_in_use(
    tmp_path: Path, fake: FakeHubSpot, client: aiohttp.ClientSession
) -> None:
    path = hubspot_config(tmp_path, fake)
    config = yaml.safe_load(path.read_text())
    config["admin"] = {"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN}
    path.write_text(yaml.safe_dump(config))
    service = Service(load_config(path))
    await service.start()
    try:
        await sign_in(client, service)
        for n in (1, 2, 3):
            await send(service, "contact-created", contact(n))
        await status_reaches(service, delivered=3, pending=0, target="demo/hubspot")
        async with client.get(at(service, "/status.json")) as response:
            (row,) = await response.json()
        used = re.fullmatch(r"(\d+) of 100 in the window", row["shown"]["budget"])
        assert used and 1 <= int(used.group(1)) <= len(fake.calls), row["shown"]
    finally:
        await service.stop()
