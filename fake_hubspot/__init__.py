"""A fake HubSpot: the parts of the CRM API that mimeeq-connector uses, in memory, for tests.

It follows HubSpot's OpenAPI specs (``reference/hubspot``: contacts and companies v3, associations
v4) for paths and bodies, rejects bodies they do not describe, and answers with every field the
models of the real ``hubspot-api-client`` require, so that client can be pointed at it::

    fake = FakeHubSpot(rate_limit=3, interval=1.0)
    url = await fake.start()
    client = hubspot.Client.create(access_token=fake.token, host=url)
    await asyncio.to_thread(client.crm.contacts.batch_api.upsert, {...})   # the client is sync

Tests read and arrange the state directly (``contacts``, ``archived``, ``properties``, ...) and
steer failures with ``fail_next``, ``failure_rate``, ``down``, ``conflict_mode``,
``validation_mode`` and ``enumeration_needs_options``, and slowness with ``latency`` (every
request), ``delay_next`` (chosen ones) and ``trickle`` (answers sent a byte at a time).

Like a real server, the fake finishes what it started: a request whose client gave up (a timeout,
a cancelled push) and closed the connection is still processed to the end, its write applied
(``Call.gone`` tells). A connector must cope with a write that lands after it stopped waiting.
``settled()`` waits until no request is being processed.

Layout: ``server`` holds the state, the app and its edge (call log, failure injection, auth,
rate limits, latency: one middleware); ``objects`` and ``schema`` hold the endpoint handlers (one
each); writes go through ``store.Session`` (staged, so a batch refused whole changes nothing);
request bodies are checked against the small shapes in ``properties.SHAPES``; ``model`` holds
HubSpot's constants and error bodies. ``python -m fake_hubspot --port N`` serves one portal.
"""

from __future__ import annotations

from fake_hubspot.model import MAX_INPUTS, Call
from fake_hubspot.server import FakeHubSpot
from fake_hubspot.store import Session, Tracked, UniqueIndex

__all__ = ["MAX_INPUTS", "Call", "FakeHubSpot", "Session", "Tracked", "UniqueIndex"]
