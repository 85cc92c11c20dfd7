"""Planning a write as a diff against what the target last confirmed."""

from __future__ import annotations

from connector.mirror import digest, plan
from connector.store.base import SyncState

MAPPED = ("email", "first", "last", "tags")


def state(**fields: object) -> SyncState:
    return SyncState("hs-1", {name: digest(value) for name, value in fields.items()})


def test_a_first_write_carries_everything_and_clears_nothing() -> None:
    for known in (None, SyncState("hs-1", None)):  # never written, or a store upgraded since
        p = plan({"email": "a@x.io", "first": "Ann"}, MAPPED, known)
        assert (p.unchanged, p.cleared, p.skip) == (frozenset(), (), False)
        assert set(p.digests) == {"email", "first"}


def test_only_changes_are_written_and_emptied_fields_cleared() -> None:
    p = plan({"email": "a@x.io", "first": "Anne"}, MAPPED, state(email="a@x.io", first="Ann",
                                                               last="Lee"))  # fmt: skip
    assert p.unchanged == {"email"} and p.cleared == ("last",) and not p.skip


def test_nothing_new_means_no_write() -> None:
    fields = {"email": "a@x.io", "tags": ["b", "a"]}
    assert plan(fields, MAPPED, state(**fields)).skip
    assert not plan({**fields, "tags": ["a", "b"]}, MAPPED, state(**fields)).skip  # order counts


def test_a_field_that_left_the_mapping_is_not_cleared() -> None:
    p = plan({"email": "a@x.io"}, ("email",), state(email="a@x.io", first="Ann"))
    assert p.cleared == () and p.skip


def test_a_forced_write_carries_everything_and_still_clears() -> None:
    p = plan({"email": "a@x.io"}, MAPPED, state(email="a@x.io", first="Ann"), full=True)
    assert (p.unchanged, p.cleared, p.skip) == (frozenset(), ("first",), False)


def test_a_new_company_is_a_change_for_targets_that_associate() -> None:
    known = SyncState("hs-1", {"email": digest("a@x.io")}, "COMP-1", "hs-c1")
    fields = {"email": "a@x.io"}
    assert plan(fields, MAPPED, known, company_id="COMP-1", associates=True).skip
    moved = plan(fields, MAPPED, known, company_id="COMP-2", associates=True)
    assert moved.company_changed and not moved.skip
    assert plan(fields, MAPPED, known, company_id="COMP-2", associates=False).skip


def test_digests_tell_values_apart_whatever_their_type() -> None:
    values = ["1", 1, 1.5, True, None, "", [], ["1"], {"a": 1}, {"a": "1"}]
    assert len({digest(v) for v in values}) == len(values)
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
