"""HubSpot target: contacts upserted in batches by a unique property, as a mirror of Mimeeq.

Writes
* Creates and updates go through ``batch/upsert`` keyed by ``id_property`` (a unique custom
  property filled with the Mimeeq id by the connector itself, or ``email``): no search-then-create,
  so two workers can never create the same contact twice.
* An upsert is a diff (see :mod:`connector.adapter`): it sends the record's changes, ``""`` for
  each property in ``Record.cleared`` (HubSpot clears a property with ""), and the id property.
  A property neither changed nor cleared is not sent: what a HubSpot user set on properties the
  connector never wrote is never touched. If HubSpot answers ``"new": true`` to a partial write
  (someone deleted the contact in HubSpot), the whole record is written right after, in the same
  push, so the new contact is not left half-filled (if that fails, this process writes the whole
  record the next time).
* Outcomes are per record. In a 207 the accepted records are delivered, refused ones are dead with
  HubSpot's message, others retried. A 4xx that does not say which input is at fault is split in
  halves until the bad records stand alone.
* An e-mail that already belongs to a HubSpot contact ("Contact already exists. Existing ID: N")
  makes the connector adopt that contact: it is updated by id with the whole mapped record and the
  unique id property, so later upserts find it. Nothing is cleared on it: the connector never
  wrote that contact.
* With ``associate_company``, a contact is linked to the company whose ``company_id_property`` is
  its Mimeeq ``companyId``, and HubSpot is called only when that company changed (or was not in
  HubSpot yet): the old association is removed, the new one made. ``Delivered.company`` tells the
  worker what is linked now; a failed association retries the record.
* Deletes archive (by the remembered id, else looked up by the unique property), GDPR-delete, or
  are ignored, per ``on_delete``. A contact already gone counts as delivered.

Values: HubSpot takes strings only. A list (multiple checkboxes, e.g. tags) is written item by
item: each item stripped, a ``;`` inside an item replaced by ``,`` (HubSpot separates checkbox
values with ``;``: "eco; green" must stay one option), empty and repeated items dropped, joined
with ``;``. A text value of an ``auto_options`` property is split on ``;`` and cleaned the same
way; the connector adds an option to such a property for each new item (Mimeeq tags and statuses
are free text; HubSpot takes only values that are options).

Transport: one write at a time, really. hubspot-api-client builds every request (paths, auth
header, serialisation of bodies and models) but sends none: each API object's
``api_client.request`` is replaced by a function that returns what it is given, which the client
hands back as is (``_preload_content=False``). An ``httpx.AsyncClient`` sends it, so cancelling
a push (the worker's ``push_timeout``) closes the connection and nothing of that push is sent
afterwards: no thread carries on. Each request waits for the account's rate limiter, checks the
worker's claim (``check_claim``) and the daily budget, and must be answered in full within
``call_timeout`` (connect to last byte, however slowly it trickles). A 5xx or a connection that
could not be made is tried again a few times; a write that went out without an answer is not: it
may still land, so the records wait (``maybe_written``) and the next write of those contacts goes
after it. 429s are waited out without counting as failures; 401/403 pause the target until a probe
succeeds. The daily budget: once ``X-HubSpot-RateLimit-Daily-Remaining`` is at most
``rate_limit.daily_reserve``, or a 429 says the DAILY limit is reached, the target pauses until
midnight in the portal's time zone (when HubSpot resets it; read from the account-info API once a
day, UTC if it cannot be read).
"""

from __future__ import annotations

from adapters.hubspot.adapter import HubSpotAdapter
from adapters.hubspot.api import HubSpotApi, HubSpotSettings, RateLimit, hubspot_value
from adapters.hubspot.check import Finding

__all__ = [
    "Finding",
    "HubSpotAdapter",
    "HubSpotApi",
    "HubSpotSettings",
    "RateLimit",
    "hubspot_value",
]
