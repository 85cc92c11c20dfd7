"""Association, property, property-group and account-info endpoints."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from fake_hubspot.model import (
    ASSOCIATION_TYPE,
    FIELD_TYPES,
    PROPERTY_NAME,
    PROPERTY_TYPES,
    SINGULAR,
    Refusal,
    bad_request,
    now_iso,
    standard_error,
)
from fake_hubspot.properties import complete, definition, option


class SchemaRoutes:
    """Mixed into FakeHubSpot: associations, properties and account info."""

    def _association_types(self, request: web.Request) -> tuple[str, str]:
        from_type = self._object_type(request.match_info["from_type"])
        to_type = self._object_type(request.match_info["to_type"])
        if (from_type, to_type) not in ASSOCIATION_TYPE:
            raise bad_request(f"Associations from {from_type} to {to_type} are not supported here")
        return from_type, to_type

    def _associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> dict[str, Any]:
        pair = (from_id, to_id) if from_type == "contacts" else (to_id, from_id)
        self.associations.add(pair)
        return {
            "from": {"id": from_id},
            "to": {"id": to_id},
            "associationSpec": {
                "associationCategory": "HUBSPOT_DEFINED",
                "associationTypeId": ASSOCIATION_TYPE[(from_type, to_type)],
            },
        }

    async def _associate_batch(self, request: web.Request) -> web.Response:
        from_type, to_type = self._association_types(request)
        body = self._body(request, "associate")
        results, errors = [], []
        for inp in body["inputs"]:
            from_id, to_id = inp["from"]["id"], inp["to"]["id"]
            context = {}
            if from_id not in self._live(from_type):
                context["fromObjectId"] = [from_id]
            if to_id not in self._live(to_type):
                context["toObjectId"] = [to_id]
            if context:
                missing = [f"{SINGULAR[from_type]} {from_id}"] if "fromObjectId" in context else []
                missing += [f"{SINGULAR[to_type]} {to_id}"] if "toObjectId" in context else []
                message = f"No object exists for {' and '.join(missing)}"
                errors.append(standard_error("VALIDATION_ERROR", message, context))
            else:
                results.append(self._associate(from_type, from_id, to_type, to_id))
        now = now_iso()
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": now,
            "completedAt": now,
        }
        if errors:
            answer["errors"] = errors
            answer["numErrors"] = len(errors)
        status = self.association_error_status if errors else 200
        return web.json_response(answer, status=status)

    async def _archive_associations(self, request: web.Request) -> web.Response:
        from_type, _ = self._association_types(request)
        body = self._body(request, "association_archive")
        for inp in body["inputs"]:
            for to in inp["to"]:  # associations that do not exist are ignored
                pair = (inp["from"]["id"], to["id"])
                self.associations.discard(pair if from_type == "contacts" else pair[::-1])
        return web.Response(status=204)

    async def _associate_one(self, request: web.Request) -> web.Response:
        from_type, to_type = self._association_types(request)
        from_id, to_id = request.match_info["from_id"], request.match_info["to_id"]
        for obj_type, oid in [(from_type, from_id), (to_type, to_id)]:
            if oid not in self._live(obj_type):
                message = f"No {SINGULAR[obj_type]} with ID {oid} exists"
                raise Refusal(404, "OBJECT_NOT_FOUND", message)
        now = now_iso()
        result = self._associate(from_type, from_id, to_type, to_id)
        body = {"status": "COMPLETE", "results": [result], "startedAt": now, "completedAt": now}
        return web.json_response(body)

    async def _associations_of(self, request: web.Request) -> web.Response:
        from_type, to_type = self._association_types(request)
        oid = request.match_info["from_id"]
        if from_type == "contacts":
            others = sorted(c for k, c in self.associations if k == oid)
        else:
            others = sorted(k for k, c in self.associations if c == oid)
        kind = {"category": "HUBSPOT_DEFINED", "typeId": ASSOCIATION_TYPE[(from_type, to_type)]}
        results = [{"toObjectId": other, "associationTypes": [kind]} for other in others]
        return web.json_response({"results": results})

    # --- properties and property groups ---

    def _property_type(self, request: web.Request) -> str:
        return self._object_type(request.match_info["object_type"])

    def _property(self, obj_type: str, name: str) -> dict[str, Any]:
        """A definition (completed in place if a test wrote it by hand), or a 404."""
        prop = self.properties[obj_type].get(name)
        if prop is None:
            message = f"Unable to find property {name} for object type {obj_type}"
            raise Refusal(404, "OBJECT_NOT_FOUND", message)
        prop.update(complete(prop))
        return prop

    def _check_definition(self, obj_type: str, body: dict[str, Any]) -> None:
        if "type" in body and body["type"] not in PROPERTY_TYPES:
            raise bad_request(f"Invalid property type {body['type']!r}")
        if "fieldType" in body and body["fieldType"] not in FIELD_TYPES:
            raise bad_request(f"Invalid fieldType {body['fieldType']!r}")
        group = body.get("groupName")
        if group is not None and group not in self.groups[obj_type]:
            raise bad_request(f"Property group {group} does not exist")

    async def _properties_list(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        names = list(self.properties[obj_type])
        return web.json_response({"results": [self._property(obj_type, n) for n in names]})

    async def _property_get(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        return web.json_response(self._property(obj_type, request.match_info["name"]))

    async def _property_create(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        body = self._body(request, "property_create")
        name = body["name"]
        if name in self.properties[obj_type]:
            raise Refusal(
                409,
                "OBJECT_ALREADY_EXISTS",
                f"Property named '{name}' already exists.",
                subCategory="PropertyCreationErrorType.PROPERTY_EXISTS",
                context={"name": [name]},
            )
        if not PROPERTY_NAME.fullmatch(name):
            raise bad_request(
                f"Invalid property name {name!r}: use lower case letters, digits and underscores, "
                "starting with a letter"
            )
        self._check_definition(obj_type, body)
        needs_options = self.enumeration_needs_options and body["type"] == "enumeration"
        if needs_options and not body.get("options"):
            raise bad_request("An enumeration property needs options")
        if body.get("hasUniqueValue") and body["type"] not in ("string", "number"):
            raise bad_request("Only string and number properties can have unique values")
        prop = definition(
            name,
            body["label"],
            type=body["type"],
            field_type=body["fieldType"],
            group=body["groupName"],
            options=body.get("options") or [],
            unique=bool(body.get("hasUniqueValue")),
            hubspot_defined=False,
            description=body.get("description", ""),
        )
        for key in ("hidden", "formField", "displayOrder", "externalOptions"):
            if key in body:
                prop[key] = body[key]
        self.properties[obj_type][name] = prop
        return web.json_response(prop, status=201)

    async def _property_update(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        prop = self._property(obj_type, request.match_info["name"])
        body = self._body(request, "property_update")
        meta = prop["modificationMetadata"]
        # of a HubSpot-defined property only the options may change (e.g. hs_lead_status)
        changes = {k for k, v in body.items() if v is not None}
        if meta["readOnlyDefinition"] and (changes - {"options"} or meta["readOnlyOptions"]):
            raise bad_request(
                f"Property {prop['name']} is HubSpot-defined: only its options can change"
            )
        self._check_definition(obj_type, body)
        for key, value in body.items():
            if key == "options":
                prop["options"] = [option(o, i) for i, o in enumerate(value)]
            elif value is not None:
                prop[key] = value
        prop["updatedAt"] = now_iso()
        return web.json_response(prop)

    async def _property_archive(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        prop = self._property(obj_type, request.match_info["name"])
        if not prop["modificationMetadata"]["archivable"]:
            raise bad_request(f"Property {prop['name']} cannot be archived")
        del self.properties[obj_type][prop["name"]]
        for kind in (self._live_kind(obj_type), self._archive_kind(obj_type)):
            self._indexes.pop((kind, prop["name"]), None)  # the values stay, unindexed
        return web.Response(status=204)

    def _group(self, obj_type: str, name: str) -> dict[str, Any]:
        label = self.group_labels.get((obj_type, name), name)
        return {"name": name, "label": label, "displayOrder": -1, "archived": False}

    async def _groups_list(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        groups = [self._group(obj_type, name) for name in sorted(self.groups[obj_type])]
        return web.json_response({"results": groups})

    async def _group_get(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        name = request.match_info["name"]
        if name not in self.groups[obj_type]:
            raise Refusal(404, "OBJECT_NOT_FOUND", f"Unable to find property group {name}")
        return web.json_response(self._group(obj_type, name))

    async def _group_create(self, request: web.Request) -> web.Response:
        obj_type = self._property_type(request)
        body = self._body(request, "group_create")
        name = body["name"]
        if name in self.groups[obj_type]:
            raise Refusal(
                409,
                "OBJECT_ALREADY_EXISTS",
                f"A property group named '{name}' already exists.",
                context={"name": [name]},
            )
        if not PROPERTY_NAME.fullmatch(name):
            raise bad_request(f"Invalid property group name {name!r}")
        self.groups[obj_type].add(name)
        self.group_labels[(obj_type, name)] = body["label"]
        group = self._group(obj_type, name)
        if "displayOrder" in body:
            group["displayOrder"] = body["displayOrder"]
        return web.json_response(group, status=201)

    # --- account ---

    async def _account_info(self, request: web.Request) -> web.Response:
        zone = ZoneInfo(self.time_zone)
        offset = datetime.now(zone).utcoffset() or timedelta()
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        body = {
            "portalId": 12345678,
            "accountType": "STANDARD",
            "timeZone": self.time_zone,
            "companyCurrency": "EUR",
            "additionalCurrencies": [],
            "utcOffset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
            "utcOffsetMilliseconds": minutes * 60_000,
            "uiDomain": "app.hubspot.com",
            "dataHostingLocation": "na1",
        }
        return web.json_response(body)
