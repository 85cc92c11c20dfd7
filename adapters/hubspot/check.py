"""``hubspot check``: the mapped properties against the portal's definitions, before records
fail one by one at run time (missing, read-only, wrong type, a value that is not an option)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.hubspot.api import HubSpotApi, HubSpotSettings, hubspot_value
from adapters.hubspot.setup import _describe
from connector.adapter import TargetContext
from connector.outcomes import Retry, Undelivered

Value = tuple[Any, str]  # a value the mapping can produce, and where it comes from ("map", ...)

MISSING_OURS = "missing: run `hubspot setup`"
MISSING = "missing: not in HubSpot (create it, or fix the mapping)"
TYPES = {
    "number": "a number",
    "date": "a date (YYYY-MM-DD)",
    "datetime": "a date-time (ISO 8601 or epoch milliseconds)",
    "bool": "a boolean (true or false)",
}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Finding:
    object_type: str  # "contacts" or "companies"
    name: str  # the property
    problem: str | None  # None: OK


class _Check:
    """Mixed into HubSpotAdapter: ``hubspot check``."""

    settings: HubSpotSettings
    context: TargetContext
    api: HubSpotApi

    async def check(self, values: Mapping[str, Mapping[str, Sequence[Value]]]) -> list[Finding]:
        """A finding per problem of each property the connector writes (an OK one when it has
        none), in the mapping's order. ``values``: by object type and property, the values the
        mapping can produce. Raises a ``DeliveryError`` when the portal cannot be read."""
        s = self.settings
        objects = {"contacts": (s.id_property, self.context.fields)}
        if self.context.company_fields or s.associate_company:
            objects["companies"] = (s.company_id_property, self.context.company_fields)
        findings: list[Finding] = []
        for object_type, (id_property, fields) in objects.items():
            answer = await self.api.call(self.api.properties.get_all, object_type)
            if answer.status != 200:
                what = f"cannot read the {object_type} properties"
                raise Undelivered(Retry(f"{what}: {_describe(answer)}"))
            portal = {str(p.get("name")): p for p in answer.results}
            # The properties `hubspot setup` creates: the id property (filled by the connector
            # itself, so usually not mapped) and the enumerations it makes.
            ours = {*s.auto_options, "mimeeq_tags", "mimeeq_status"}
            ids = [id_property] if id_property != "email" else []
            for name in dict.fromkeys([*ids, *fields]):
                setup = name == id_property or name in ours
                given = values.get(object_type, {}).get(name, ())
                problems = _problems(portal.get(name), given, name in s.auto_options, setup)
                rows: list[str | None] = [*problems] or [None]
                findings += [Finding(object_type, name, p) for p in rows]
        return findings


def _problems(
    prop: dict[str, Any] | None, values: Sequence[Value], auto: bool, setup: bool
) -> list[str]:
    """What HubSpot would refuse of this property: ``auto``, it is in ``auto_options``;
    ``setup``, `hubspot setup` creates it."""
    if prop is None:
        return [MISSING_OURS if setup else MISSING]
    found = []
    meta = prop.get("modificationMetadata")
    if prop.get("calculated"):
        found.append("read-only: a calculated property (HubSpot refuses values for it)")
    elif isinstance(meta, dict) and meta.get("readOnlyValue"):
        found.append("read-only: HubSpot refuses values for it")
    kind = str(prop.get("type") or "string")
    options = [str(o.get("value")) for o in prop.get("options") or [] if isinstance(o, dict)]
    checkbox = prop.get("fieldType") == "checkbox"
    bad: dict[str, list[str]] = {}  # value as sent -> where it comes from
    for value, origin in values:
        text = hubspot_value(value, options=auto)  # as the adapter sends it
        if not text:
            continue  # "" clears a property of any type
        if kind == "enumeration" and not auto:  # auto_options: the connector adds the options
            items = text.split(";") if checkbox else [text]
            wrong = [item for item in items if item not in options]
        else:
            wrong = [] if kind not in TYPES or _fits(kind, text) else [text]
        for item in wrong:
            bad.setdefault(item, []).append(origin)
    for item, origins in bad.items():
        where = ", ".join(dict.fromkeys(origins))
        if kind == "enumeration":
            shown = ", ".join(options[:10]) + (", …" if len(options) > 10 else "")
            found.append(f"value {item!r} (from {where}) is not an option: {shown or 'none'}")
        else:
            found.append(f"wrong type: {item!r} (from {where}) is not {TYPES[kind]}")
    return found


def _fits(kind: str, text: str) -> bool:
    """Whether HubSpot takes ``text`` as a value of this type."""
    if kind == "bool":
        return text.lower() in ("true", "false")
    if kind == "number":
        try:
            float(text)
        except ValueError:
            return False
        return True
    if text.isdigit():  # epoch milliseconds; a date's must be midnight UTC
        return kind == "datetime" or int(text) % 86_400_000 == 0
    try:
        if kind == "date":
            return bool(_DATE.fullmatch(text)) and bool(dt.date.fromisoformat(text))
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
