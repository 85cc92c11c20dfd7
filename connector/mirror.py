"""The target as a mirror of Mimeeq: what a mapped record changes against the last confirmed write.

For each target × contact the store keeps a :class:`~connector.store.base.SyncState`: a digest of
each field value the target confirmed, and the company the contact was associated with. Before a
push the worker plans the write against it:

* a field whose digest equals the stored one is *unchanged*: not written again;
* a field the connector wrote before (it has a digest) and whose mapped value is now missing or
  empty is *cleared*: the adapter empties it in the target. A field it never wrote is never
  touched, and neither is one that left the mapping (removing a field from a mapping must not
  wipe it in the CRM);
* a record whose fields are all unchanged, with nothing to clear and the same company, costs no
  call at all (``unchanged``).

A forced full re-write (``resync``, ``dlq replay``) writes every field, and still clears. A state
that was never recorded (a first write, or a store upgraded from a release without sync state)
means a full write too. Digests rather than values: the sync state outlives the events' retention,
and holds no copy of the personal data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from connector.adapter import Record
from connector.logs import mask
from connector.store.base import SyncState


def digest(value: Any) -> str:
    """A short digest of one mapped value (its canonical JSON)."""
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=8).digest().hex()


@dataclass(frozen=True, slots=True)
class Plan:
    """What one upsert writes, as a diff against the sync state."""

    unchanged: frozenset[str]  # fields whose value the target already holds
    cleared: tuple[str, ...]  # fields to clear, in the mapping's order
    digests: dict[str, str]  # the state to record once the target confirms the write
    company_changed: bool  # the contact moved to another company (or to none)
    skip: bool  # nothing to write: no call at all


def plan(
    fields: Mapping[str, Any],
    mapped: Sequence[str],
    state: SyncState | None,
    *,
    full: bool = False,
    company_id: str | None = None,
    associates: bool = False,
) -> Plan:
    """Plan the write of ``fields`` (one mapped record; ``mapped``: every field of the mapping)."""
    digests = {name: digest(value) for name, value in fields.items()}
    known = state.digests if state is not None else None
    if known is None:  # nothing confirmed: write it all, clear nothing
        return Plan(frozenset(), (), digests, associates and company_id is not None, False)
    cleared = tuple(name for name in mapped if name in known and name not in fields)
    same = frozenset(name for name, d in digests.items() if known.get(name) == d)
    assert state is not None
    # A link still waiting for its company to reach the target is not done either.
    company_changed = associates and (
        state.company_id != company_id
        or (company_id is not None and state.company_remote_id is None)
    )
    skip = not full and len(same) == len(digests) and not cleared and not company_changed
    return Plan(frozenset() if full else same, cleared, digests, company_changed, skip)


def report(record: Record) -> str:
    """For ``trace``: the properties a write sent, the cleared ones and those skipped as
    unchanged, as JSON. Kept with the attempt for ``retention_days``, like the event it comes
    from; ``trace`` masks the values as the logs do when it shows them."""
    return orjson.dumps(
        {
            "written": record.changes,
            "cleared": record.cleared,
            "unchanged": sorted(record.unchanged),
        },
        option=orjson.OPT_NON_STR_KEYS,
    ).decode()


def masked(value: Any) -> Any:
    """A written value as ``trace`` shows it: e-mail addresses and phone numbers masked."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    return value
