"""Companies and their contacts as Mimeeq sends them: the scenario the end-to-end test and the
company benchmark share, and what every target must hold once it has been delivered.

Three waves, each posted in random order (contacts often before their company): every object is
created; then some companies are renamed and some contacts move to another company; then some
of both are deleted. Within a wave an object has one event, so the final state is known whatever
the order of arrival.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from testkit.payloads import company, company_id, contact

Event = tuple[str, dict[str, Any]]


@dataclass
class Scenario:
    waves: list[list[Event]] = field(default_factory=list)
    companies: dict[str, str] = field(default_factory=dict)  # live company id -> its name
    contacts: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (last name, company)

    @property
    def events(self) -> int:
        return sum(len(wave) for wave in self.waves)


def scenario(companies: int = 200, contacts: int = 1000, seed: int = 17) -> Scenario:
    rng = random.Random(seed)
    s = Scenario()
    company_of = {n: n % companies for n in range(contacts)}
    names = {c: f"Company {c}" for c in range(companies)}
    last = dict.fromkeys(range(contacts), "Doe")

    def contact_body(n: int) -> dict[str, Any]:
        return contact(n, companyId=company_id(company_of[n]), lastName=last[n])

    created: list[Event] = [("company-created", company(c)) for c in range(companies)]
    created += [("contact-created", contact_body(n)) for n in range(contacts)]

    renamed = [c for c in range(companies) if c % 5 == 0]
    moved = [n for n in range(contacts) if n % 4 == 0]
    for c in renamed:
        names[c] = f"Renamed {c}"
    for n in moved:
        company_of[n] = (company_of[n] + 7) % companies
        last[n] = "Moved"
    updated: list[Event] = [("company-updated", company(c, companyName=names[c])) for c in renamed]
    updated += [("contact-updated", contact_body(n)) for n in moved]

    gone_companies = {c for c in range(companies) if c % 20 == 3}
    gone_contacts = {n for n in range(contacts) if n % 10 == 1}
    deleted: list[Event] = [
        ("company-deleted", {**company(c, companyName=names[c])}) for c in sorted(gone_companies)
    ]
    deleted += [
        ("contact-deleted", {k: contact(n)[k] for k in ("id", "customerId", "emails")})
        for n in sorted(gone_contacts)
    ]
    for wave in (created, updated, deleted):
        rng.shuffle(wave)
        s.waves.append(wave)

    s.companies = {company_id(c): names[c] for c in range(companies) if c not in gone_companies}
    s.contacts = {
        contact(n)["id"]: (last[n], company_id(company_of[n]))
        for n in range(contacts)
        if n not in gone_contacts
    }
    return s


def minimum_hubspot_calls(s: Scenario, per_call: int = 100) -> int:
    """The fewest HubSpot calls the scenario can take: every batch call full."""

    def calls(n: int) -> int:
        return -(-n // per_call)

    total = 0
    for wave in s.waves:
        for event in ("company-created", "company-updated", "company-deleted"):
            total += calls(sum(1 for e, _ in wave if e == event))
        for event in ("contact-created", "contact-updated", "contact-deleted"):
            total += calls(sum(1 for e, _ in wave if e == event))
    # Each contact is linked once when created, and unlinked and linked again when it moves.
    moved = sum(1 for e, _ in s.waves[1] if e == "contact-updated")
    created = sum(1 for e, _ in s.waves[0] if e == "contact-created")
    return total + calls(created) + 2 * calls(moved)
