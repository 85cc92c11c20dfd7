"""``hubspot setup``: create the unique id property, its group and enumeration options."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from adapters.hubspot.api import (
    EXISTING_ID,
    OPTION_KEYS,
    PLACEHOLDER,
    STATUS_OPTIONS,
    Answer,
    HubSpotApi,
    HubSpotSettings,
)
from connector.adapter import TargetContext
from connector.outcomes import Retry, Undelivered


class _Setup:
    """Mixed into HubSpotAdapter: ``hubspot setup`` (the id property, its group, enumerations)."""

    settings: HubSpotSettings
    context: TargetContext
    api: HubSpotApi

    async def setup(self, say: Callable[[str], None] | None = None) -> list[str]:
        """Create the property group and the properties the connector needs; safe to repeat.

        Each line of the report goes to ``say`` as soon as it happens, so a failure midway (raised
        as a ``DeliveryError`` with HubSpot's message) still shows what was done.
        """
        lines: list[str] = []

        def report(line: str) -> None:
            lines.append(line)
            if say is not None:
                say(line)

        s = self.settings
        mapped = self.context.fields
        report(await self._create_group("contacts", s.property_group))
        if s.id_property != "email":
            await self._create_property(
                "contacts",
                {"name": s.id_property, "label": "Mimeeq contact ID", "type": "string",
                 "fieldType": "text", "groupName": s.property_group, "hasUniqueValue": True,
                 "description": "Set by mimeeq-connector: the contact's id in Mimeeq."},
                report,
            )  # fmt: skip
        for name in self._enumerations(mapped):
            await self._create_property("contacts", self._enumeration(name), report)
        companies = self.context.company_fields
        if s.associate_company or companies:
            report(await self._create_group("companies", s.property_group))
            await self._create_property(
                "companies",
                {"name": s.company_id_property, "label": "Mimeeq company ID",
                 "type": "string", "fieldType": "text", "groupName": s.property_group,
                 "hasUniqueValue": True,
                 "description": "Set by mimeeq-connector: the company's id in Mimeeq."},
                report,
            )  # fmt: skip
        for name in self._enumerations(companies):
            await self._create_property("companies", self._enumeration(name), report)
        for object_type, fields in (("contacts", mapped), ("companies", companies)):
            if not fields:
                continue
            answer = await self.api.call(self.api.properties.get_all, object_type)
            existing = {str(p.get("name")) for p in answer.results}
            for name in fields:
                if name not in existing and name not in self._enumerations(fields):
                    report(
                        f"WARNING: mapped {object_type} property {name!r} is not in HubSpot: "
                        "create it or fix the mapping"
                    )
        return lines

    def _enumerations(self, fields: Iterable[str]) -> list[str]:
        """The mapped enumeration properties that setup creates, in the mapping's order."""
        ours = {*self.settings.auto_options, "mimeeq_tags", "mimeeq_status"}
        return [name for name in fields if name in ours]

    def _enumeration(self, name: str) -> dict[str, Any]:
        definition: dict[str, Any] = {
            "name": name, "label": name.replace("_", " ").capitalize(), "type": "enumeration",
            "fieldType": "checkbox", "groupName": self.settings.property_group, "options": [],
        }  # fmt: skip
        if name == "mimeeq_status":
            definition |= {"fieldType": "select", "options": STATUS_OPTIONS}
        return definition

    async def _create_group(self, object_type: str, name: str) -> str:
        answer = await self.api.call(
            self.api.groups.create,
            object_type,
            {"name": name, "label": "Mimeeq", "displayOrder": -1},
        )
        return self._setup_line(answer, f"{object_type} property group {name!r}")

    async def _create_property(
        self, object_type: str, definition: dict[str, Any], report: Callable[[str], None]
    ) -> None:
        name = definition["name"]
        what = f"{object_type} property {name!r}"
        answer = await self.api.call(self.api.properties.create, object_type, definition)
        if answer.status == 400 and definition.get("options") == []:
            # Some portals refuse an enumeration without options ("needs options").
            definition = {**definition, "options": [PLACEHOLDER]}
            answer = await self.api.call(self.api.properties.create, object_type, definition)
            if answer.status < 300:
                report(
                    f"created {what} (HubSpot wants at least one option: it has a hidden "
                    f"placeholder option {PLACEHOLDER['value']!r})"
                )
                return
        line = self._setup_line(answer, what)
        if answer.status != 409:
            report(line)
            return
        current = await self.api.call(self.api.properties.get_by_name, object_type, name)
        body = current.body if current.status == 200 and isinstance(current.body, dict) else {}
        if definition.get("hasUniqueValue") and body and not body.get("hasUniqueValue"):
            line += " — WARNING: it exists but is not unique; upserts by it will fail"
        report(line)
        options = [o for o in body.get("options") or [] if isinstance(o, dict)]
        have = {str(o.get("value")) for o in options}
        missing = [o["value"] for o in definition.get("options") or [] if o["value"] not in have]
        if body.get("type") == "enumeration" and missing:
            answer = await self.api.call(
                self.api.properties.update,
                object_type,
                name,
                {"options": _with_options(options, missing, definition["options"])},
            )
            if answer.status >= 300:
                raise Undelivered(Retry(f"cannot add options to {what}: {_describe(answer)}"))
            report(f"changed {what}: added options {', '.join(missing)}")

    @staticmethod
    def _setup_line(answer: Answer, what: str) -> str:
        if answer.status < 300:
            return f"created {what}"
        if answer.status == 409:
            return f"found {what} (already exists)"
        raise Undelivered(Retry(f"cannot create {what}: {_describe(answer)}"))


def _with_options(
    options: list[dict[str, Any]], added: Iterable[str], given: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The options to PATCH: HubSpot's own, kept as they are, then the added ones."""
    kept = [{k: o[k] for k in OPTION_KEYS if o.get(k) is not None} for o in options]
    defined = {str(o["value"]): o for o in given}
    order = max((int(o.get("displayOrder") or 0) for o in kept), default=-1) + 1
    for i, value in enumerate(added):
        option = {"label": value, "value": value, "hidden": False, **defined.get(value, {})}
        kept.append({**option, "displayOrder": order + i})
    return kept


def _describe(answer: Answer) -> str:
    return f"HubSpot HTTP {answer.status}: {answer.message}"


def _existing_id(answer: Answer) -> str | None:
    body = answer.body if isinstance(answer.body, dict) else {}
    profile = body.get("identityProfile")
    if isinstance(profile, dict) and profile.get("vid"):
        return str(profile["vid"])
    match = EXISTING_ID.search(str(body.get("message") or ""))
    return match.group(1) if match else None
