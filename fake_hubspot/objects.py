"""Object endpoints: batch and single create/update/upsert/read/archive, GDPR delete."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from fake_hubspot.model import (
    DEFAULT_READ,
    MAX_INPUTS,
    MODIFIED,
    OBJECT_TYPES,
    RAW_BODY,
    SINGULAR,
    InputFailure,
    Refusal,
    bad_request,
    failure_details,
    invalid,
    invalid_message,
    is_write,
    now_iso,
    query_list,
    standard_error,
)
from fake_hubspot.properties import SHAPES, check_shape, normal, value_failure
from fake_hubspot.store import Input, Session, Written


class ObjectRoutes:
    """Mixed into FakeHubSpot: the handlers of object endpoints."""

    def _touched(self, request: web.Request, body: Any) -> list[set[str]]:
        """For overlap counting: per input of a contact write, the keys of the contact it touches.

        Keys are ``id:<HubSpot id>`` and ``<unique property>:<value>``, so two writes meet whether
        they name the contact by id, email or a unique property.
        """
        if not is_write(request.method, request.path):
            return []
        path = request.path
        info = request.match_info
        items: list[Any] = []
        if path.startswith("/crm/v3/objects/contacts"):
            if "oid" in info:
                idp = request.query.get("idProperty") or "hs_object_id"
                given = body if isinstance(body, dict) else {}
                items = [{**given, "id": info["oid"], "idProperty": idp}]
            elif path.endswith("/gdpr-delete") and isinstance(body, dict):
                items = [{"id": body.get("objectId"), "idProperty": body.get("idProperty")}]
            elif isinstance(body, dict):
                items = body.get("inputs") or ([body] if "properties" in body else [])
        elif path.startswith("/crm/v4/") and "contact" in path:
            side = "from" if OBJECT_TYPES.get(info.get("from_type", "")) == "contacts" else "to"
            if "from_id" in info:
                items = [{"id": info[f"{side}_id"]}]
            elif isinstance(body, dict):
                for i in body.get("inputs") or []:
                    named = i.get(side) if isinstance(i, dict) else None
                    named = named if isinstance(named, list) else [named]  # archive: a list
                    items += [{"id": n.get("id")} for n in named if isinstance(n, dict)]
        session = Session(self, "contacts")
        unique = ["email", *self._unique_custom("contacts")]
        touched = []
        for item in items:
            if not isinstance(item, dict):
                continue
            named = [(item.get("idProperty") or "hs_object_id", item.get("id"))]
            if isinstance(item.get("properties"), dict):
                named += [(p, item["properties"].get(p)) for p in unique]
            keys: set[str] = set()
            for prop, value in named:
                if not isinstance(value, str) or not value:
                    continue
                if prop == "hs_object_id":
                    keys.add(f"id:{value}")
                    continue
                keys.add(f"{prop}:{normal(prop, value)}")
                if prop in unique and (oid := session.owner(prop, value)) is not None:
                    keys.add(f"id:{oid}")
            touched.append(keys)
        return touched

    # --- request helpers ---

    def _body(self, request: web.Request, shape: str) -> dict[str, Any]:
        raw = request[RAW_BODY]
        if not raw:
            raise bad_request("Invalid input JSON: the request has no body")
        try:
            body: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"Invalid input JSON: {exc}") from None
        check_shape(body, SHAPES[shape], "")
        if isinstance(body.get("inputs"), list) and len(body["inputs"]) > MAX_INPUTS:
            raise bad_request(
                f"Too many inputs: {len(body['inputs'])}. A batch takes at most {MAX_INPUTS}."
            )
        return body

    def _object_type(self, name: str) -> str:
        obj_type = OBJECT_TYPES.get(name)
        if obj_type is None:
            raise bad_request(f"Unable to infer object type from: {name}")
        return obj_type

    def _unique_custom(self, obj_type: str) -> list[str]:
        return [n for n, p in self.properties[obj_type].items() if p.get("hasUniqueValue")]

    def _check_id_property(self, obj_type: str, id_prop: str) -> None:
        unique = {"hs_object_id", *self._unique_custom(obj_type)}
        if obj_type == "contacts":
            unique.add("email")
        if id_prop not in self.properties[obj_type]:
            raise bad_request(f'Property "{id_prop}" does not exist')
        if id_prop not in unique:
            raise bad_request(
                f'Property "{id_prop}" is not a unique property and cannot be an idProperty'
            )

    def _check_duplicates(self, inputs: list[dict[str, Any]]) -> None:
        seen: set[tuple[str, str]] = set()
        duplicates = []
        for inp in inputs:
            id_prop = inp.get("idProperty") or "hs_object_id"
            key = (id_prop, normal(id_prop, inp["id"]))
            if key in seen:
                duplicates.append(inp["id"])
            seen.add(key)
        if duplicates:
            raise bad_request(
                f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique"
            )

    def _public(
        self,
        obj_type: str,
        oid: str,
        props: Mapping[str, str | None],
        *,
        archived: bool = False,
        history: Iterable[str] = (),
    ) -> dict[str, Any]:
        """A SimplePublicObject with the given properties shown."""
        stored = self._live(obj_type).get(oid) or self._archive_of(obj_type).get(oid) or props
        updated = stored.get(MODIFIED[obj_type]) or now_iso()
        result: dict[str, Any] = {
            "id": oid,
            "properties": props,
            "createdAt": stored.get("createdate") or updated,
            "updatedAt": updated,
            "archived": archived,
        }
        if archived:
            result["archivedAt"] = updated
        history = list(history)
        if history:
            result["propertiesWithHistory"] = {
                name: [{"value": stored[name], "timestamp": updated, "sourceType": "API"}]
                if stored.get(name)
                else []
                for name in history
            }
        return result

    def _shown(self, obj_type: str, props: dict[str, str], wanted: list[str]) -> dict[str, Any]:
        """The properties a read shows: those asked for (null when unset) and the system ones."""
        known = self.properties[obj_type]
        names = [n for n in (wanted or DEFAULT_READ[obj_type]) if n in known]
        names += ["hs_object_id", "createdate", MODIFIED[obj_type]]
        return {n: props.get(n) for n in names}

    @staticmethod
    def _batch(results: list[Any], errors: list[dict[str, Any]], ok: int) -> web.Response:
        now = now_iso()
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "requestedAt": now,
            "startedAt": now,
            "completedAt": now,
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return web.json_response(body, status=207 if errors else ok)

    # --- writing objects (shared by upsert, update, create and the single-object endpoints) ---

    def _apply(
        self, obj_type: str, inputs: list[Input], *, conflict_mode: str, validation_mode: str
    ) -> tuple[list[Written], list[dict[str, Any]]]:
        """Validate then write each input; refuse the whole batch where HubSpot would."""
        failures = [self._failures(obj_type, inp) for inp in inputs]
        if validation_mode == "400" and any(failures):
            every = [f for fs in failures for f in fs]
            # HubSpot's whole-batch answer does not say which input is at fault
            raise bad_request(invalid_message(every), errors=failure_details(every))
        session = Session(self, self._live_kind(obj_type))
        written: list[Written] = []
        errors: list[dict[str, Any]] = []
        for inp, fails in zip(inputs, failures, strict=True):
            context: dict[str, list[str]] = {}
            if inp.trace is not None:
                context["objectWriteTraceId"] = [inp.trace]
            elif inp.ref is not None:
                context["ids"] = [inp.ref]
            if fails:
                details = failure_details(fails)
                message = invalid_message(fails)
                errors.append(standard_error("VALIDATION_ERROR", message, context, details))
                continue
            try:
                written.append(self._write(session, obj_type, inp))
            except InputFailure as failure:
                if failure.conflict is not None and conflict_mode == "409":
                    raise self._conflict(failure) from None
                errors.append(
                    standard_error(failure.category, failure.message, context, failure.details)
                )
        session.commit()
        for w in written:
            self._associate_new(obj_type, w)
        return written, errors

    def _failures(self, obj_type: str, inp: Input) -> list[dict[str, Any]]:
        """Property validation of one input (values and the id value), as HubSpot reports it."""
        known = self.properties[obj_type]
        values = dict(inp.props)
        if inp.id_prop not in (None, "hs_object_id") and inp.may_create:
            values.setdefault(inp.id_prop, inp.id_value)  # the id becomes the value on create
        failures = []
        for name, value in values.items():
            prop = known.get(name)
            if prop is None:
                message = f'Property "{name}" does not exist'
                failures.append(invalid(name, message, "PROPERTY_DOESNT_EXIST"))
            elif (failure := value_failure(prop, name, value)) is not None:
                failures.append(failure)
        return failures

    def _write(self, session: Session, obj_type: str, inp: Input) -> Written:
        oid = session.owner(inp.id_prop, inp.id_value) if inp.id_prop else None
        if (
            oid is None
            and inp.id_prop is not None
            and (not inp.may_create or inp.id_prop == "hs_object_id")
        ):
            raise InputFailure("OBJECT_NOT_FOUND", self._not_found_message(obj_type))
        created = oid is None
        old = session.get(oid) if oid is not None else {}
        assert old is not None
        given = dict(inp.props)
        if created and inp.id_prop not in (None, "hs_object_id"):
            given[inp.id_prop] = inp.id_value
        props = {k: v for k, v in {**old, **given}.items() if v != ""}
        self._check_identity(session, obj_type, oid, old, props)
        oid = oid or str(next(self._ids))
        now = now_iso()
        system = {"hs_object_id": oid, "createdate": old.get("createdate", now)}
        system[MODIFIED[obj_type]] = now
        session.put(oid, {**props, **system})
        return Written(oid, {**given, **system}, created, inp.trace, inp.associations)

    def _check_identity(
        self,
        session: Session,
        obj_type: str,
        oid: str | None,
        old: dict[str, str],
        new: dict[str, str],
    ) -> None:
        """Emails (contacts) and hasUniqueValue values may belong to one live object only."""
        singular = SINGULAR[obj_type].lower()
        email = new.get("email", "") if obj_type == "contacts" else ""
        if email and normal("email", email) != normal("email", old.get("email", "")):
            if oid is None and email.lower() in self.blocklist:
                message = (
                    f"Cannot create a contact with email {email}: a contact with this email was "
                    "permanently deleted (GDPR delete) and the email is blocklisted"
                )
                failure = invalid("email", message, "BLOCKLISTED_EMAIL")
                raise InputFailure(
                    "VALIDATION_ERROR", invalid_message([failure]), failure_details([failure])
                )
            owner = session.owner("email", email)
            if owner is not None and owner != oid:
                message = f"Contact already exists. Existing ID: {owner}"
                # a contact created earlier in this same batch does not exist until the batch
                # commits: a 409 naming it would name nothing, so only this input fails
                conflict = owner if owner in session.live else None
                raise InputFailure("CONFLICT", message, conflict=conflict, email=email)
        for prop in self._unique_custom(obj_type):
            value = new.get(prop)
            if value and value != old.get(prop):
                owner = session.owner(prop, value)
                if owner is not None and owner != oid:
                    message = (
                        f'The value "{value}" of unique property "{prop}" already belongs to '
                        f"{singular} {owner}"
                    )
                    failure = invalid(prop, message, "UNIQUE_VALUE_CONFLICT")
                    raise InputFailure(
                        "VALIDATION_ERROR", invalid_message([failure]), failure_details([failure])
                    )

    def _conflict(self, failure: InputFailure) -> Refusal:
        """The 409 a batch gets for its first email conflict (the id only in the message)."""
        if self.conflict_body != "identity":
            return Refusal(409, "CONFLICT", failure.message)
        # the newer body HubSpot sends on some portals
        profile = {
            "vid": int(failure.conflict or 0),
            "identity": [{"value": failure.email, "type": "EMAIL", "isPrimary": True}],
            "isContact": True,
        }
        details = [
            {
                "message": f"A contact with email {failure.email} already exists. "
                f"Existing ID: {failure.conflict}",
                "in": "email",
            }
        ]
        return Refusal(
            409,
            "OBJECT_ALREADY_EXISTS",
            failure.message,
            identityProfile=profile,
            errors=details,
            error="CONTACT_EXISTS",
        )

    def _associate_new(self, obj_type: str, written: Written) -> None:
        """Associations given with a create (contacts -> companies only)."""
        for association in written.associations:
            to = association["to"]["id"]
            if obj_type == "contacts" and to in self.companies:
                self.associations.add((written.oid, to))

    @staticmethod
    def _not_found_message(obj_type: str) -> str:
        return (
            f"Could not get some {SINGULAR[obj_type]} objects, they may be deleted or not exist. "
            "Check that ids are valid."
        )

    def _batch_inputs(
        self, obj_type: str, body: dict[str, Any], *, may_create: bool
    ) -> list[Input]:
        inputs = body["inputs"]
        for inp in inputs:
            if inp.get("idProperty"):
                self._check_id_property(obj_type, inp["idProperty"])
        self._check_duplicates(inputs)
        return [
            Input(
                ref=inp["id"],
                props={k: v or "" for k, v in inp["properties"].items()},
                id_prop=inp.get("idProperty") or "hs_object_id",
                id_value=inp["id"],
                may_create=may_create,
            )
            for inp in inputs
        ]

    # --- contacts and companies: batch endpoints ---

    async def _batch_upsert(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "upsert")
        inputs = self._batch_inputs(obj_type, body, may_create=True)
        written, errors = self._apply(
            obj_type,
            inputs,
            conflict_mode=self.conflict_mode,
            validation_mode=self.validation_mode,
        )
        results = [{**self._public(obj_type, w.oid, w.shown), "new": w.new} for w in written]
        return self._batch(results, errors, 200)

    async def _batch_update(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "update")
        inputs = self._batch_inputs(obj_type, body, may_create=False)
        # email conflicts of updates come back per input
        written, errors = self._apply(
            obj_type, inputs, conflict_mode="207", validation_mode=self.validation_mode
        )
        results = [self._public(obj_type, w.oid, w.shown) for w in written]
        return self._batch(results, errors, 200)

    async def _batch_create(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "create")
        inputs = [
            Input(
                ref=None,
                props={k: v or "" for k, v in inp["properties"].items()},
                trace=inp.get("objectWriteTraceId"),
                associations=inp.get("associations") or [],
            )
            for inp in body["inputs"]
        ]
        written, errors = self._apply(
            obj_type,
            inputs,
            conflict_mode=self.conflict_mode,
            validation_mode=self.validation_mode,
        )
        results = []
        for w in written:
            result = self._public(obj_type, w.oid, w.shown)
            if w.trace is not None:
                result["objectWriteTraceId"] = w.trace
            results.append(result)
        return self._batch(results, errors, 201)

    async def _batch_read(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "read")
        id_prop = body.get("idProperty") or "hs_object_id"
        self._check_id_property(obj_type, id_prop)
        archived = request.query.get("archived", "").lower() == "true"
        kind = self._archive_kind(obj_type) if archived else self._live_kind(obj_type)
        session = Session(self, kind)
        source = session.live
        results, missing = [], []
        for ident in dict.fromkeys(inp["id"] for inp in body["inputs"]):
            oid = session.owner(id_prop, ident)
            if oid is None:
                missing.append(ident)
                continue
            props = source[oid]
            shown = self._shown(obj_type, props, body["properties"])
            history = body["propertiesWithHistory"]
            results.append(self._public(obj_type, oid, shown, archived=archived, history=history))
        errors = []
        if missing:
            message = self._not_found_message(obj_type)
            errors.append(standard_error("OBJECT_NOT_FOUND", message, {"ids": missing}))
        return self._batch(results, errors, 200)

    async def _batch_archive(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "archive")
        for inp in body["inputs"]:
            self._archive(obj_type, inp["id"])  # unknown ids are ignored
        return web.Response(status=204)

    def _archive(self, obj_type: str, oid: str) -> None:
        props = self._live(obj_type).get(oid)
        if props is not None:
            self._store(self._live_kind(obj_type), {oid: None})
            dict.__setitem__(props, MODIFIED[obj_type], now_iso())  # not an edit by hand
            self._store(self._archive_kind(obj_type), {oid: props})

    async def _gdpr_delete(self, request: web.Request) -> web.Response:
        body = self._body(request, "gdpr")
        id_prop = body.get("idProperty") or "hs_object_id"
        self._check_id_property("contacts", id_prop)
        oid = Session(self, "contacts").owner(id_prop, body["objectId"])
        if oid is None and id_prop == "hs_object_id" and body["objectId"] in self.archived:
            oid = body["objectId"]
        if oid is None:
            raise Refusal(
                404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric."
            )
        kind = "contacts" if oid in self.contacts else "archived"
        props = getattr(self, kind)[oid]
        self._store(kind, {oid: None})
        if props.get("email"):
            self.blocklist.add(props["email"].lower())
        self.associations = {a for a in self.associations if a[0] != oid}
        return web.Response(status=204)

    # --- contacts and companies: single-object endpoints ---

    def _single(self, obj_type: str, inp: Input) -> Written:
        """A single-object write: validation failures are 400s and conflicts 409s."""
        written, errors = self._apply(obj_type, [inp], conflict_mode="409", validation_mode="400")
        if errors:
            error = errors[0]
            status = 404 if error["category"] == "OBJECT_NOT_FOUND" else 400
            raise Refusal(status, error["category"], error["message"], errors=error["errors"])
        return written[0]

    async def _create_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "create_one")
        props = {k: v or "" for k, v in body["properties"].items()}
        inp = Input(ref=None, props=props, associations=body.get("associations") or [])
        written = self._single(obj_type, inp)
        return web.json_response(self._public(obj_type, written.oid, written.shown), status=201)

    async def _update_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        body = self._body(request, "update_one")
        id_prop = request.query.get("idProperty") or "hs_object_id"
        self._check_id_property(obj_type, id_prop)
        oid = request.match_info["oid"]
        props = {k: v or "" for k, v in body["properties"].items()}
        inp = Input(ref=oid, props=props, id_prop=id_prop, id_value=oid, may_create=False)
        written = self._single(obj_type, inp)
        return web.json_response(self._public(obj_type, written.oid, written.shown))

    async def _archive_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        self._archive(obj_type, request.match_info["oid"])
        return web.Response(status=204)

    async def _get_one(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        id_prop = request.query.get("idProperty") or "hs_object_id"
        self._check_id_property(obj_type, id_prop)
        archived = request.query.get("archived", "").lower() == "true"
        kind = self._archive_kind(obj_type) if archived else self._live_kind(obj_type)
        session = Session(self, kind)
        source = session.live
        oid = session.owner(id_prop, request.match_info["oid"])
        if oid is None:
            raise Refusal(
                404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric."
            )
        shown = self._shown(obj_type, source[oid], query_list(request, "properties"))
        history = query_list(request, "propertiesWithHistory")
        return web.json_response(
            self._public(obj_type, oid, shown, archived=archived, history=history)
        )

    async def _get_page(self, request: web.Request) -> web.Response:
        obj_type = self._object_type(request.match_info["object_type"])
        archived = request.query.get("archived", "").lower() == "true"
        source = self._archive_of(obj_type) if archived else self._live(obj_type)
        try:
            limit = min(int(request.query.get("limit", "10")), 100)
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise bad_request("limit and after must be integers") from None
        wanted = query_list(request, "properties")
        ids = sorted(source, key=int)
        page = [i for i in ids if int(i) > after][:limit]
        body: dict[str, Any] = {
            "results": [
                self._public(
                    obj_type, oid, self._shown(obj_type, source[oid], wanted), archived=archived
                )
                for oid in page
            ]
        }
        if page and page[-1] != ids[-1]:
            body["paging"] = {"next": {"after": page[-1]}}
        return web.json_response(body)

    # --- associations v4 ---
