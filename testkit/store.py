"""Events as the store contract tests append them: one tenant, one target, distinct bodies."""

from __future__ import annotations

import itertools

from connector.store.base import NewEvent

T = "demo/crm"  # the target the store tests queue for
_bodies = itertools.count()


def event(contact: str, op: str = "upsert", body: bytes | None = None, *targets: str) -> NewEvent:
    kind = {"upsert": "contact-updated", "delete": "contact-deleted"}[op]
    body = body if body is not None else b'{"n": %d}' % next(_bodies)  # distinct: not redeliveries
    return NewEvent("demo", kind, contact, op, body, targets or (T,))
