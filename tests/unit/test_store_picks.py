"""What the store derives from events and picks before any SQL runs: the addresses of a payload,
their keyed hashes, and the condition of a dead-letter pick."""

from __future__ import annotations

import hashlib
import sqlite3

from connector.store.base import DeadLetterPick, email_hash, normal_email, payload_emails


def test_a_contacts_addresses_are_every_non_empty_mail() -> None:
    payload = {
        "id": "c1",
        "emails": [{"mail": "a@example.com", "type": "work"}, {"mail": "  "}, {"mail": "B@x.io"}],
    }
    assert payload_emails(payload) == ("a@example.com", "B@x.io")
    assert payload_emails({"id": "c1", "emails": None}) == ()
    assert payload_emails({"id": "c1"}) == ()
    assert payload_emails(b"not a payload") == ()


def test_an_address_hashes_the_same_however_it_is_typed_and_only_with_its_key() -> None:
    key, other = b"k" * 32, b"o" * 32
    assert normal_email("  Ann@Example.COM ") == "ann@example.com"
    assert email_hash(key, " Ann@Example.COM") == email_hash(key, "ann@example.com")
    assert email_hash(key, "ann@example.com") != email_hash(other, "ann@example.com")
    plain = hashlib.sha256(b"ann@example.com").digest()[:8]
    assert email_hash(key, "ann@example.com") != int.from_bytes(plain, "big", signed=True)
    assert -(2**63) <= email_hash(key, "ann@example.com") < 2**63  # a 64-bit column


def test_a_picks_message_filter_matches_its_text_literally() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE dead_letters (id INTEGER, target TEXT, error TEXT, failed_at REAL,"
               " replayed_at REAL)")  # fmt: skip
    rows = [(1, "100% used", None), (2, "100x used", None), (3, "a_b \\ c", 5.0)]
    db.executemany("INSERT INTO dead_letters VALUES (?, 't', ?, 0, ?)", rows)

    def picked(pick: DeadLetterPick) -> list[int]:
        where, params = pick.where()
        return [r[0] for r in db.execute(f"SELECT id FROM dead_letters WHERE {where}", params)]

    assert picked(DeadLetterPick(error_contains="100%")) == [1]
    assert picked(DeadLetterPick(error_contains="A_B")) == [3]
    assert picked(DeadLetterPick(error_contains="a_")) == [3]
    assert picked(DeadLetterPick(error_contains="\\")) == [3]
    assert picked(DeadLetterPick(error_contains="USED", not_replayed=True)) == [1, 2]
    assert picked(DeadLetterPick(after_id=1, not_replayed=True)) == [2]
