"""HubSpot as an exact mirror of Mimeeq: the real server process against the fake HubSpot.

A late write never lands last, a change back is a change, emptied fields are cleared while what
the connector never wrote is left alone, and associations follow the contact's company.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp

from fake_hubspot import FakeHubSpot
from testkit.hubspot import hubspot_config
from testkit.payloads import CUSTOMER, TOKEN, contact
from testkit.service import ServerProcess, drained, post_all
from testkit.waiting import eventually

AUTH = {"X-Mimeeq-Token": TOKEN}
NAMES = {"fields": {"firstname": "firstName", "lastname": "lastName", "email": "emails[0].mail"}}


async def slow_first_write(
    folder: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> ServerProcess:
    """A server whose next upsert (contact 1, "OLD") HubSpot works on for 8 s."""
    server = server_process(hubspot_config(folder, fake, mapping=NAMES, push_timeout=5, linger=0))
    server.start()
    await post_all(server.url, [("contact-created", contact(9))])  # whatever a first push reads
    await drained(folder / "connector.db")
    fake.delay_next, calls = [8.0], len(fake.calls)
    await post_all(server.url, [("contact-created", contact(1, firstName="OLD"))])
    await eventually(lambda: len(fake.calls) > calls)
    assert fake.calls[calls].path.endswith("/batch/upsert")
    return server


def live(fake: FakeHubSpot, n: int) -> dict[str, str] | None:
    found = fake.find("mimeeq_contact_id", contact(n)["id"])
    return found[1] if found else None


def only(fake: FakeHubSpot) -> dict[str, str]:
    (props,) = fake.contacts.values()
    return props


async def test_an_abandoned_write_never_lands_after_the_newer_one(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    """HubSpot works on the first upsert for 8 s, longer than push_timeout: the connector gives
    up on it, HubSpot applies it anyway. The update posted a second later lands after it."""
    server = await slow_first_write(tmp_path, fake, server_process)
    await post_all(server.url, [("contact-updated", contact(1, firstName="NEW"))])
    await drained(tmp_path / "connector.db")
    assert server.stop() == 0
    assert (live(fake, 1) or {}).get("firstname") == "NEW"
    assert fake.overlaps == 0  # never two writes of the contact in HubSpot's hands at once


async def test_an_abandoned_write_never_resurrects_a_deleted_contact(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    server = await slow_first_write(tmp_path, fake, server_process)
    await post_all(
        server.url, [("contact-deleted", {"id": contact(1)["id"], "customerId": CUSTOMER})]
    )
    await drained(tmp_path / "connector.db")
    assert server.stop() == 0
    assert live(fake, 1) is None and live(fake, 9) is not None
    # The late create did land, and the delete after it: archived, not resurrected.
    assert [p["mimeeq_contact_id"] for p in fake.archived.values()] == [contact(1)["id"]]
    assert fake.overlaps == 0


async def test_a_change_back_ends_where_mimeeq_is(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    server = server_process(hubspot_config(tmp_path, fake, mapping=NAMES, linger=0))
    server.start()
    db = tmp_path / "connector.db"
    for n, name in enumerate(["A", "B", "A"]):
        event = "contact-updated" if n else "contact-created"
        await post_all(server.url, [(event, contact(1, firstName=name))])
        await drained(db)
        assert only(fake)["firstname"] == name
    writes = len(fake.writes())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/webhooks/demo/contact-updated",
            headers=AUTH,
            json=contact(1, firstName="A"),
        ) as response,  # fmt: skip
    ):
        assert (await response.json())["status"] == "duplicate"  # the latest, redelivered
    await drained(db)
    assert server.stop() == 0
    assert len(fake.writes()) == writes


async def test_emptied_fields_are_cleared_and_others_never_touched(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    # Contact 2 exists in HubSpot already, found by its e-mail: sales set its phone and job.
    adopted = fake.add_contact(email="person2@example.com", phone="+1 555 0100", jobtitle="CEO")
    server = server_process(hubspot_config(tmp_path, fake, linger=0))
    server.start()
    db = tmp_path / "connector.db"
    full = {
        "phoneNumbers": [{"type": "WORK", "number": "+44 20 7946 0000"}],
        "accountDetails": {"position": "Buyer"},
        "tags": ["eco; green", " vip"],
    }
    await post_all(server.url, [("contact-created", contact(1, **full))])
    await post_all(server.url, [("contact-created", contact(2, phoneNumbers=[], accountDetails={},
                                                            tags=[]))])  # fmt: skip
    await drained(db)
    one = fake.find("mimeeq_contact_id", contact(1)["id"])
    assert one is not None
    assert one[1]["phone"] == "+44 20 7946 0000" and one[1]["jobtitle"] == "Buyer"
    assert one[1]["mimeeq_tags"] == "eco, green;vip"  # a tag with ";" stays one option
    # Mimeeq empties the phone, the position and the tags of contact 1; contact 2 changes name.
    emptied = {"phoneNumbers": [], "accountDetails": {}, "tags": []}
    await post_all(server.url, [("contact-updated", contact(1, **emptied))])
    await post_all(server.url, [("contact-updated", contact(2, lastName="Renamed", **emptied))])
    await drained(db)
    assert server.stop() == 0
    one = fake.find("mimeeq_contact_id", contact(1)["id"])
    assert one is not None
    assert not any(one[1].get(name) for name in ("phone", "jobtitle", "mimeeq_tags"))  # cleared
    two = fake.contacts[adopted]
    assert two["mimeeq_contact_id"] == contact(2)["id"] and two["lastname"] == "Renamed"
    assert (two["phone"], two["jobtitle"]) == ("+1 555 0100", "CEO")  # never written: kept


async def test_associations_follow_the_company_and_only_when_it_changes(
    tmp_path: Path, fake: FakeHubSpot, server_process: Callable[[Path], ServerProcess]
) -> None:
    fake.add_property("mimeeq_company_id", object_type="companies", unique=True)
    first = fake.add_company(name="First", mimeeq_company_id="COMP-1")
    second = fake.add_company(name="Second", mimeeq_company_id="COMP-2")
    server = server_process(
        hubspot_config(tmp_path, fake, mapping=NAMES, linger=0, associate_company=True)
    )
    server.start()
    db = tmp_path / "connector.db"

    def association_calls() -> int:
        return sum(1 for c in fake.calls if "/associations/" in c.path)

    await post_all(server.url, [("contact-created", contact(1, companyId="COMP-1"))])
    await drained(db)
    hs_id = next(iter(fake.contacts))
    assert fake.associations == {(hs_id, first)}
    calls = association_calls()
    for name in ("Ann", "Anne"):  # other changes: no association call
        await post_all(server.url, [("contact-updated", contact(1, companyId="COMP-1",
                                                                firstName=name))])  # fmt: skip
        await drained(db)
    assert association_calls() == calls
    await post_all(server.url, [("contact-updated", contact(1, companyId="COMP-2",
                                                            firstName="Anne"))])  # fmt: skip
    await drained(db)
    assert server.stop() == 0
    assert fake.associations == {(hs_id, second)}  # moved: the old link is gone
    assert association_calls() == calls + 2  # one removal, one association
