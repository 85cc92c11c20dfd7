"""The HubSpot adapter: upserts, conflicts, associations and deletes (see the package docstring)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from adapters.http import chunks, join_notes
from adapters.hubspot.api import (
    MAX_INPUTS,
    Answer,
    HubSpotApi,
    HubSpotSettings,
    _Upsert,
    hubspot_value,
    log,
)
from adapters.hubspot.check import _Check
from adapters.hubspot.setup import _describe, _existing_id, _Setup, _with_options
from connector.adapter import Adapter, ObjectType, Record, RequestPreview, TargetContext
from connector.outcomes import CompanyLink, Dead, Delivered, Outcome, Retry, Undelivered


@dataclass(frozen=True, slots=True)
class _Kind:
    """What a Mimeeq object becomes in HubSpot: a contact, or a company."""

    object_type: str  # HubSpot's name: "contacts" or "companies"
    id_property: str  # the unique property upserts match on
    batch: Any  # hubspot-api-client's batch API of the object type

    def norm(self, key: str) -> str:
        """Keys as HubSpot compares them: e-mail addresses regardless of case."""
        return key.lower() if self.id_property == "email" else key


@dataclass(slots=True)
class _Found:
    """What writing a batch of one kind found, as it is split on errors: an outcome per record
    (by index), or the HubSpot id of a contact that has its e-mail already, to adopt."""

    outcomes: dict[int, Outcome]
    kind: _Kind
    adopt: dict[int, str] = field(default_factory=dict)


class HubSpotAdapter(_Check, _Setup, Adapter[HubSpotSettings]):
    type = "hubspot"
    settings_model = HubSpotSettings
    takes_companies = True
    max_batch_size = MAX_INPUTS
    default_concurrency = 4
    default_linger = 0.5  # calls are rationed: wait a little to send full batches

    company_cache_ttl: ClassVar[float] = 600.0

    def __init__(self, settings: HubSpotSettings, context: TargetContext) -> None:
        super().__init__(settings, context)
        self.api = HubSpotApi(
            settings,
            workers=(settings.concurrency or 4) + 2,
            report=context.report,
            limiter=context.limiter,
        )
        # (object type, auto_options property) -> its known options; None: not an enumeration
        self._options: dict[tuple[str, str], set[str] | None] = {}
        self._options_lock = asyncio.Lock()
        # Mimeeq company id -> (HubSpot id, when seen). Only companies found are kept: one that is
        # missing may be created any moment, by this process or another.
        self._companies: dict[str, tuple[str, float]] = {}
        self._half_filled: set[str] = set()  # objects to write whole: see _upsert
        self._kinds: dict[ObjectType, _Kind] = {
            "contact": _Kind("contacts", settings.id_property, self.api.contacts),
            "company": _Kind("companies", settings.company_id_property, self.api.companies),
        }

    @property
    def associates_companies(self) -> bool:
        return self.settings.associate_company

    async def close(self) -> None:
        await self.api.close()

    # --- push --------------------------------------------------------------------------------

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        if self.api.zone_due():  # before the daily budget runs out, when it can still be read
            await self.api.read_zone()
        outcomes: dict[int, Outcome] = {}
        # Companies first: the contacts of the same batch can then be linked to them at once.
        runs: list[tuple[Any, list[tuple[int, Record]]]] = [
            (run, [(i, r) for i, r in enumerate(records) if r.op == op and r.object_type == type_])
            for type_ in ("company", "contact")
            for op, run in (("upsert", self._upsert), ("delete", self._delete))
        ]
        for run, items in runs:
            if not items:
                continue
            try:
                outcomes.update(await run(items))
            except Undelivered as exc:  # this half of the batch waits; the other stands
                if not isinstance(exc.outcome, Retry):
                    raise
                outcomes.update({i: exc.outcome for i, _ in items if i not in outcomes})
        return [outcomes[i] for i in range(len(records))]

    # --- creates and updates -----------------------------------------------------------------

    def _encode(self, values: Mapping[str, Any]) -> dict[str, str]:
        enumerations = self.settings.auto_options
        return {name: hubspot_value(v, options=name in enumerations) for name, v in values.items()}

    def _whole(self, u: _Upsert) -> _Upsert:
        """The same object with every mapped value, nothing cleared."""
        properties = self._encode(u.record.fields)
        id_property = self._kinds[u.record.object_type].id_property
        if id_property != "email":
            properties[id_property] = u.key
        return dataclasses.replace(u, properties=properties, partial=False, new=False)

    async def _upsert(self, items: list[tuple[int, Record]]) -> dict[int, Outcome]:
        """Create or update objects of one kind (the batch was split by kind)."""
        outcomes: dict[int, Outcome] = {}
        upserts: list[_Upsert] = []
        linking: list[_Upsert] = []  # nothing to write, only the company link to make
        kind = self._kinds[items[0][1].object_type]
        for index, record in items:
            whole = record.contact_id in self._half_filled
            properties = self._encode(record.fields if whole else record.changes)
            properties.update(dict.fromkeys(record.cleared, ""))
            if not properties and record.remote_id:
                outcomes[index] = Delivered(remote_id=record.remote_id)
                linking.append(_Upsert(index, record, record.remote_id, properties))
                continue
            upsert = self._keyed(index, record, properties, kind, whole)
            if isinstance(upsert, Dead):
                outcomes[index] = upsert
            else:
                upserts.append(upsert)
        if upserts:
            await self._write(upserts, outcomes, kind)
        # HubSpot created an object that got only the changes: someone deleted it in HubSpot.
        lost = [
            u for u in upserts if u.new and u.partial and isinstance(outcomes[u.index], Delivered)
        ]
        # Until the whole record is written, the next write of these contacts is whole.
        self._half_filled.update(u.record.contact_id for u in lost)
        if lost:
            await self._write([self._whole(u) for u in lost], outcomes, kind)
            for u in lost:
                outcome = outcomes[u.index]
                if isinstance(outcome, Delivered):
                    note = "not in HubSpot any more: created again, with the whole record"
                    outcomes[u.index] = dataclasses.replace(outcome, note=note)
        self._half_filled.difference_update(
            u.record.contact_id for u in upserts if isinstance(outcomes.get(u.index), Delivered)
        )
        delivered = [u for u in upserts if isinstance(outcomes.get(u.index), Delivered)]
        if kind.object_type == "companies":
            now = time.monotonic()
            for u in delivered:
                if remote_id := cast(Delivered, outcomes[u.index]).remote_id:
                    self._companies[u.record.contact_id] = (remote_id, now)
        elif self.settings.associate_company:
            await self._associate(linking + delivered, outcomes)
        return outcomes

    @staticmethod
    def _keyed(
        index: int, record: Record, properties: dict[str, str], kind: _Kind, whole: bool
    ) -> _Upsert | Dead:
        """The upsert of a record's properties, keyed by the id property (set among them)."""
        if kind.id_property == "email":
            key = hubspot_value(record.fields.get("email")).strip()
            if not key:
                return Dead("no e-mail address: this target upserts by email")
        else:
            key = properties[kind.id_property] = record.contact_id
        partial = bool(record.unchanged) and not whole
        return _Upsert(index, record, key, properties, partial)

    @staticmethod
    def _upsert_body(batch: list[_Upsert], kind: _Kind) -> dict[str, Any]:
        return {
            "inputs": [
                {"id": u.key, "idProperty": kind.id_property, "properties": u.properties}
                for u in batch
            ]
        }

    async def _write(
        self, upserts: list[_Upsert], outcomes: dict[int, Outcome], kind: _Kind
    ) -> None:
        await self._ensure_options(upserts, kind.object_type)
        found = _Found(outcomes, kind)
        await self._upsert_batch(upserts, found)
        if found.adopt:
            await self._adopt([u for u in upserts if u.index in found.adopt], found.adopt, outcomes)

    async def _upsert_batch(self, batch: list[_Upsert], found: _Found) -> None:
        kind = found.kind
        answer = await self.api.call(kind.batch.upsert, self._upsert_body(batch, kind))
        if answer.status == 409 and kind.object_type == "contacts":
            await self._resolve_conflict(batch, answer, found)
            return
        if answer.status >= 400:
            await self._split_or_fail(batch, answer, found)
            return
        written = {
            kind.norm(str((r.get("properties") or {}).get(kind.id_property, ""))): r
            for r in answer.results
        }
        failed = self._errors_by_key(answer, kind)
        unexplained = []
        for u in batch:
            key = kind.norm(u.key)
            if key in written:
                u.new = written[key].get("new") is True
                found.outcomes[u.index] = Delivered(remote_id=str(written[key].get("id")))
            elif key in failed:
                self._per_input_error(u, failed[key], found)
            elif answer.status == 200 and not answer.errors:
                found.outcomes[u.index] = Delivered()  # accepted; its id is looked up if needed
            else:
                unexplained.append(u)
        if unexplained:
            # Errors HubSpot did not tie to an input: split until each bad one stands alone.
            await self._split_or_fail(unexplained, answer, found)

    async def _split_or_fail(self, batch: list[_Upsert], answer: Answer, found: _Found) -> None:
        if len(batch) == 1:
            found.outcomes[batch[0].index] = Dead(f"HubSpot HTTP {answer.status}: {answer.message}")
            return
        middle = len(batch) // 2
        await self._upsert_batch(batch[:middle], found)
        await self._upsert_batch(batch[middle:], found)

    async def _resolve_conflict(self, batch: list[_Upsert], answer: Answer, found: _Found) -> None:
        """A whole-batch 409 names only the first existing contact: find whose e-mail it has."""
        existing = _existing_id(answer)
        culprit = None
        if existing and len(batch) == 1:
            culprit = batch[0]
        elif existing:
            read = await self.api.call(
                self.api.contacts.read,
                {
                    "inputs": [{"id": existing}],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
            )
            emails = {
                str((r.get("properties") or {}).get("email") or "").lower() for r in read.results
            }
            culprit = next(
                (u for u in batch if u.properties.get("email", "").lower() in emails - {""}), None
            )
        if existing is None or culprit is None:
            await self._split_or_fail(batch, answer, found)
            return
        self._per_input_error(culprit, answer.body, found)
        rest = [u for u in batch if u is not culprit]
        if rest:
            await self._upsert_batch(rest, found)

    def _per_input_error(self, u: _Upsert, error: dict[str, Any], found: _Found) -> None:
        message = str(error.get("message") or error)
        category = str(error.get("category") or "")
        existing = _existing_id(Answer(409, {}, error))
        conflict = category == "CONFLICT" or "already exists" in message
        if existing and conflict and found.kind.object_type == "contacts":
            if u.record.remote_id and u.record.remote_id != existing:
                found.outcomes[u.index] = Dead(
                    f"HubSpot: the e-mail belongs to another contact ({existing}): {message}"
                )
            else:
                found.adopt[u.index] = existing
        elif category in ("RATE_LIMITS", "RATE_LIMIT") or str(error.get("status")).startswith("5"):
            found.outcomes[u.index] = Retry(f"HubSpot: {message}")
        else:
            found.outcomes[u.index] = Dead(f"HubSpot {category or 'error'}: {message}")

    async def _adopt(
        self, batch: list[_Upsert], adopt: dict[int, str], outcomes: dict[int, Outcome]
    ) -> None:
        """Update existing contacts by id, setting the unique id property so upserts find them.

        The contact is new to the connector: it gets the whole record and nothing is cleared.
        """
        by_id = {adopt[u.index]: self._whole(u) for u in batch}
        await self._ensure_options(list(by_id.values()), "contacts")
        body = {"inputs": [{"id": hs_id, "properties": u.properties} for hs_id, u in by_id.items()]}
        answer = await self.api.call(self.api.contacts.update, body)
        if answer.status >= 400:
            for u in batch:
                outcomes[u.index] = Dead(f"HubSpot HTTP {answer.status}: {answer.message}")
            return
        updated = {str(r.get("id")) for r in answer.results}
        failed = {}
        for error in answer.errors:
            for hs_id in (error.get("context") or {}).get("ids") or []:
                failed[str(hs_id)] = error
        for hs_id, u in by_id.items():
            if hs_id in updated:
                outcomes[u.index] = Delivered(
                    remote_id=hs_id, note=f"adopted existing HubSpot contact {hs_id} (same e-mail)"
                )
            else:
                error = failed.get(hs_id, {"message": "no result for this contact"})
                outcomes[u.index] = Dead(f"HubSpot (adopting {hs_id}): {error.get('message')}")

    @staticmethod
    def _errors_by_key(answer: Answer, kind: _Kind) -> dict[str, dict[str, Any]]:
        failed: dict[str, dict[str, Any]] = {}
        for error in answer.errors:
            for key in (error.get("context") or {}).get("ids") or []:
                failed[kind.norm(str(key))] = error
        return failed

    async def _ensure_options(self, upserts: list[_Upsert], object_type: str) -> None:
        """Add the options that new values of ``auto_options`` properties need."""
        for name in self.settings.auto_options:
            wanted = {v for u in upserts for v in u.properties.get(name, "").split(";") if v}
            known = self._options.get((object_type, name), set())
            if not wanted or (known is not None and wanted <= known):
                continue
            async with self._options_lock:  # one read-modify-write of the options at a time
                # Read them afresh: options added in HubSpot meanwhile must not be dropped.
                answer = await self.api.call(self.api.properties.get_by_name, object_type, name)
                if answer.status != 200 or not isinstance(answer.body, dict):
                    self._options[(object_type, name)] = (
                        None  # no such property: the upsert will say so
                    )
                    continue
                if answer.body.get("type") != "enumeration":
                    self._options[(object_type, name)] = None  # text takes any value
                    continue
                options = [o for o in answer.body.get("options") or [] if isinstance(o, dict)]
                current = {str(o.get("value")) for o in options}
                self._options[(object_type, name)] = current
                added = sorted(wanted - current)
                if not added:
                    continue
                answer = await self.api.call(
                    self.api.properties.update,
                    object_type,
                    name,
                    {"options": _with_options(options, added)},
                )
                if answer.status == 200:
                    current.update(added)
                else:
                    log.warning("cannot add options", property=name, error=answer.message)

    # --- company associations ----------------------------------------------------------------

    async def _associate(self, upserts: list[_Upsert], outcomes: dict[int, Outcome]) -> None:
        """Link each delivered contact to its company, calling HubSpot only when that changed."""
        moving: list[tuple[_Upsert, str, CompanyLink | None]] = []  # (upsert, contact, old link)
        for u in upserts:
            delivered = outcomes[u.index]
            assert isinstance(delivered, Delivered)
            old, company = u.record.company, u.record.company_id
            if u.new or delivered.remote_id != u.record.remote_id:
                old = None  # HubSpot made the contact anew, or we adopted one: nothing is linked
            # Linked already (or no company at all), or no id to link: leave it as it is.
            done = old.remote_id is not None and old.company_id == company if old else not company
            if done or delivered.remote_id is None:
                outcomes[u.index] = dataclasses.replace(delivered, company=old)
            else:
                moving.append((u, delivered.remote_id, old))
        if not moving:
            return
        try:
            company_ids = await self._company_ids(
                {c for u, _, _ in moving if (c := u.record.company_id)}
            )
        except Undelivered as exc:  # written, not linked: linked when tried again
            for u, _, _ in moving:
                outcomes[u.index] = Retry(f"looking up the company: {exc.outcome.reason}")
            return
        failed: dict[int, str] = {}  # record index -> why
        removals = []  # (upsert, HubSpot contact id, HubSpot company id)
        additions = []
        for u, contact, old in moving:
            company = u.record.company_id
            new = company_ids.get(company) if company else None
            if old is not None and old.remote_id and old.remote_id != new:
                removals.append((u, contact, old.remote_id))
            if new and (old is None or old.remote_id != new):
                additions.append((u, contact, new))
        if removals:
            body: dict[str, Any] = {
                "inputs": [{"from": {"id": c}, "to": [{"id": old}]} for _, c, old in removals]
            }
            answer = await self.api.call(
                self.api.associations.archive, "contacts", "companies", body
            )
            if answer.status >= 300:
                for u, _, _ in removals:
                    failed[u.index] = f"removing the old company association: {_describe(answer)}"
        additions = [a for a in additions if a[0].index not in failed]
        if additions:
            body = {"inputs": [{"from": {"id": c}, "to": {"id": new}} for _, c, new in additions]}
            answer = await self.api.call(
                self.api.associations.create_default, "contacts", "companies", body
            )
            made = {
                (str((r.get("from") or {}).get("id")), str((r.get("to") or {}).get("id")))
                for r in answer.results
            }
            for u, c, new in additions:
                if (c, new) not in made:
                    failed[u.index] = f"associating the company: {_describe(answer)}"
        for u, _, _ in moving:
            delivered = outcomes[u.index]
            assert isinstance(delivered, Delivered)
            company = u.record.company_id
            if u.index in failed:
                outcomes[u.index] = Retry(failed[u.index])
            elif company is None:
                outcomes[u.index] = dataclasses.replace(
                    delivered, note=join_notes(delivered.note, "company association removed")
                )
            elif (new := company_ids.get(company)) is None:
                name = self.settings.company_id_property
                note = join_notes(delivered.note, f"company {company} not in HubSpot ({name})")
                link = CompanyLink(company, None)
                outcomes[u.index] = dataclasses.replace(delivered, note=note, company=link)
            else:
                note = join_notes(delivered.note, f"associated with company {new}")
                link = CompanyLink(company, new)
                outcomes[u.index] = dataclasses.replace(delivered, note=note, company=link)

    async def _company_ids(self, companies: set[str]) -> dict[str, str | None]:
        now = time.monotonic()
        found: dict[str, str | None] = {
            c: hit[0]
            for c in companies
            if (hit := self._companies.get(c)) and now - hit[1] < self.company_cache_ttl
        }
        missing = sorted(companies - set(found))
        hits = await self._read_ids(self._kinds["company"], missing) if missing else {}
        for c in missing:
            found[c] = hits.get(c)
            if c in hits:
                self._companies[c] = (hits[c], now)
        return found

    async def _read_ids(self, kind: _Kind, keys: list[str]) -> dict[str, str]:
        """HubSpot ids of the objects whose unique property has one of these values (by value,
        as :meth:`_Kind.norm` gives it): only those found."""
        hits: dict[str, str] = {}
        for chunk in chunks(keys, MAX_INPUTS):
            answer = await self.api.call(kind.batch.read, self._read_body(kind, chunk))
            if answer.status >= 400 and answer.status != 404:
                raise Undelivered(Retry(_describe(answer)))
            for r in answer.results:
                key = kind.norm(str((r.get("properties") or {}).get(kind.id_property)))
                hits[key] = str(r.get("id"))
        return hits

    @staticmethod
    def _read_body(kind: _Kind, keys: Sequence[str]) -> dict[str, Any]:
        return {
            "idProperty": kind.id_property,
            "inputs": [{"id": key} for key in keys],
            "properties": [kind.id_property],
            "propertiesWithHistory": [],
        }

    # --- deletes -----------------------------------------------------------------------------

    async def _delete(self, items: list[tuple[int, Record]]) -> dict[int, Outcome]:
        """Delete objects of one kind (the batch was split by kind) as ``on_delete`` says."""
        mode = self.settings.on_delete
        kind = self._kinds[items[0][1].object_type]
        if mode == "ignore":
            return {i: Delivered(note="on_delete is ignore: left in HubSpot") for i, _ in items}
        if mode == "gdpr_delete" and kind.object_type == "contacts":
            return {i: await self._gdpr_delete(r) for i, r in items}
        # HubSpot's GDPR delete is for contacts: a company (no personal data) is archived.
        outcomes: dict[int, Outcome] = {}
        hubspot_ids = await self._find(items, outcomes, kind)
        if hubspot_ids:
            answer = await self.api.call(kind.batch.archive, _archive_body(hubspot_ids.values()))
            for i, hs_id in hubspot_ids.items():
                outcomes[i] = (
                    Delivered(remote_id=hs_id, note="archived")
                    if answer.status < 300
                    else Dead(_describe(answer))
                )
        if kind.object_type == "companies":
            for _, record in items:
                self._companies.pop(record.contact_id, None)
        return outcomes

    async def _find(
        self, items: list[tuple[int, Record]], outcomes: dict[int, Outcome], kind: _Kind
    ) -> dict[int, str]:
        """HubSpot ids of the objects to delete: remembered, else looked up by the id property."""
        found = {i: r.remote_id for i, r in items if r.remote_id}
        unknown = {}
        for i, record in items:
            if i in found:
                continue
            key = self._delete_key(record, kind)
            if key is None:
                outcomes[i] = Delivered(note="no e-mail to find it by: nothing to delete")
            else:
                unknown[i] = key
        if unknown:
            hits = await self._read_ids(kind, list(unknown.values()))
            for i, key in unknown.items():
                if kind.norm(key) in hits:
                    found[i] = hits[kind.norm(key)]
                else:
                    outcomes[i] = Delivered(note="not in HubSpot: nothing to delete")
        return {i: hs_id for i, hs_id in found.items() if hs_id}

    @staticmethod
    def _delete_key(record: Record, kind: _Kind) -> str | None:
        if kind.id_property != "email":
            return record.contact_id
        return str(record.fields.get("email") or record.email or "") or None

    def _purge_body(self, record: Record) -> dict[str, str] | None:
        """The GDPR delete's body: by HubSpot id, else by the id property (None: no key)."""
        if record.remote_id:
            return {"objectId": record.remote_id}
        kind = self._kinds["contact"]
        key = self._delete_key(record, kind)
        return None if key is None else {"objectId": key, "idProperty": kind.id_property}

    async def _gdpr_delete(self, record: Record) -> Outcome:
        body = self._purge_body(record)
        if body is None:
            return Delivered(note="no e-mail to find it by: nothing to delete")
        answer = await self.api.call(self.api.contacts_basic.purge, body)
        if answer.status < 300:
            return Delivered(remote_id=record.remote_id, note="GDPR-deleted")
        if answer.status == 404:
            return Delivered(note="not in HubSpot: nothing to delete")
        return Dead(_describe(answer))

    # --- map --request ------------------------------------------------------------------------

    def describe_request(self, record: Record) -> list[RequestPreview]:
        """The calls of ``push`` for this record alone in a new process: built by the same code,
        never sent. Ids only HubSpot's answers give are shown as ``{hubspot_id}``."""
        kind = self._kinds[record.object_type]
        if record.op == "delete":
            return self._describe_delete(record, kind)
        properties = self._encode(record.changes)
        properties.update(dict.fromkeys(record.cleared, ""))
        upsert = self._keyed(0, record, properties, kind, whole=False)
        if isinstance(upsert, Dead):
            return [RequestPreview(note=upsert.reason)]
        build = self.api.build
        # A new process knows no options yet: _ensure_options reads them first.
        previews = [
            build(self.api.properties.get_by_name, kind.object_type, name).preview(
                f"first: the options of {name}, to add the values HubSpot lacks (PATCH)"
            )
            for name in self.settings.auto_options
            if properties.get(name)
        ]
        previews.append(build(kind.batch.upsert, self._upsert_body([upsert], kind)).preview())
        if kind.object_type == "contacts" and self.associates_companies and record.company_id:
            note = (
                f"then: link the contact to company {record.company_id}, found by "
                f"{self.settings.company_id_property} (batch/read, associations)"
            )
            previews.append(RequestPreview(note=note))
        return previews

    def _describe_delete(self, record: Record, kind: _Kind) -> list[RequestPreview]:
        build = self.api.build
        if self.settings.on_delete == "ignore":
            return [RequestPreview(note="on_delete is ignore: left in HubSpot")]
        if self.settings.on_delete == "gdpr_delete" and kind.object_type == "contacts":
            body = self._purge_body(record)
            if body is None:
                return [RequestPreview(note="no e-mail to find it by: nothing to delete")]
            return [build(self.api.contacts_basic.purge, body).preview("GDPR delete")]
        if record.remote_id:
            return [build(kind.batch.archive, _archive_body([record.remote_id])).preview()]
        key = self._delete_key(record, kind)
        if key is None:
            return [RequestPreview(note="no e-mail to find it by: nothing to delete")]
        read = build(kind.batch.read, self._read_body(kind, [key]))
        archive = build(kind.batch.archive, _archive_body(["{hubspot_id}"]))
        return [
            read.preview("find its HubSpot id"),
            archive.preview("if found: {hubspot_id} is the id the read answers"),
        ]

    # --- set-up ------------------------------------------------------------------------------


def _archive_body(hubspot_ids: Iterable[str]) -> dict[str, Any]:
    return {"inputs": [{"id": h} for h in hubspot_ids]}
