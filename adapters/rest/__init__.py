"""REST target: contacts (and companies) into any HTTP JSON API, by configuration alone (httpx).

* Each operation is a request template: ``upsert``, or ``create`` + ``update``; ``delete``;
  optionally ``lookup`` (find a contact whose remote id the connector does not know) and ``batch``
  (several upserts per call). Placeholders (``{contact_id}``, ``{tenant}``, ``{remote_id}``,
  ``{event}``, ``{event_id}``, ``{fields.NAME}``) are filled by this module, never by
  ``str.format``, and every value placed in a path is percent-encoded as one segment.
* Companies (with a ``company_mapping``) have requests of their own, the ``companies:`` block:
  the same operations and rules, with ``{company_id}`` (the Mimeeq company id) in place of
  ``{contact_id}``. The adapter picks the set by ``Record.object_type``; the machinery is shared.
* The remote id read from an answer (``id_from_response``, JMESPath) is remembered by the worker
  and comes back as ``Record.remote_id``. ``update`` without a known id follows ``lookup`` then
  ``create``; an ``update`` answered 404/410 creates the contact again.
* Writes are diffs: ``update`` sends what changed since the last confirmed write (``update.send:
  all`` sends the whole record); ``create``, ``upsert`` and ``batch`` send the whole record. A field
  the connector wrote before and whose mapped value is now missing is cleared: sent as ``null``,
  or left out (``cleared_fields``). A field it never wrote is never sent.
* Every write carries an ``Idempotency-Key`` (the event id, stable across retries). Answers are
  classified by the target's ``success`` / ``retry_on`` / ``dead_on`` / ``pause_on`` lists;
  timeouts, connection errors and retryable statuses without ``Retry-After`` are retried briefly
  within the call (tenacity), then the record waits (``Retry``), honouring ``Retry-After``.
* One write at a time: requests are asynchronous and cancellable (a push cut by the worker's
  ``push_timeout`` leaves nothing running), each has a total deadline (``call_timeout``: a server
  trickling its answer cannot hold a call forever), and a write that went out without an answer
  is reported ``maybe_written``, so the contact's next write waits for it. A write is not sent
  once the push's claim may have passed to another replica (``check_claim``).
"""

from __future__ import annotations

from adapters.http import retry_after
from adapters.rest.adapter import RestAdapter
from adapters.rest.settings import RestSettings

__all__ = ["RestAdapter", "RestSettings", "retry_after"]
