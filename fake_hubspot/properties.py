"""Property definitions: the standard ones, request body shapes and value checks."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fake_hubspot.model import EMAIL, MODIFIED, bad_request, invalid, now_iso


class Props:
    """A ``properties`` object: property name -> string (null is taken as "" and clears)."""


ASSOCIATION_FOR_OBJECT = {
    "to": {"id": str},
    "types": [{"associationCategory": str, "associationTypeId": int}],
}
OPTION = {"label": str, "value": str, "hidden?": bool, "displayOrder?": int, "description?": str}
PROPERTY_FIELDS = {
    "label": str,
    "type": str,
    "fieldType": str,
    "groupName": str,
    "description?": str,
    "options?": [OPTION],
    "displayOrder?": int,
    "hidden?": bool,
    "formField?": bool,
    "calculationFormula?": str,
}
SHAPES: dict[str, Any] = {
    "upsert": {
        "inputs": [{"id": str, "idProperty?": str, "objectWriteTraceId?": str, "properties": Props}]
    },
    "update": {
        "inputs": [{"id": str, "idProperty?": str, "objectWriteTraceId?": str, "properties": Props}]
    },
    # the spec marks ``associations`` required; HubSpot and the client's model do not
    "create": {
        "inputs": [
            {
                "properties": Props,
                "associations?": [ASSOCIATION_FOR_OBJECT],
                "objectWriteTraceId?": str,
            }
        ]
    },
    "read": {
        "inputs": [{"id": str}],
        "properties": [str],
        "propertiesWithHistory": [str],
        "idProperty?": str,
    },
    "archive": {"inputs": [{"id": str}]},
    "gdpr": {"objectId": str, "idProperty?": str},
    "create_one": {"properties": Props, "associations?": [ASSOCIATION_FOR_OBJECT]},
    "update_one": {"properties": Props},
    "associate": {"inputs": [{"from": {"id": str}, "to": {"id": str}}]},
    "association_archive": {"inputs": [{"from": {"id": str}, "to": [{"id": str}]}]},
    "property_create": {
        "name": str,
        **PROPERTY_FIELDS,
        "hasUniqueValue?": bool,
        "referencedObjectType?": str,
        "externalOptions?": bool,
    },
    "property_update": {f"{k.rstrip('?')}?": v for k, v in PROPERTY_FIELDS.items()},
    "group_create": {"name": str, "label": str, "displayOrder?": int},
}


def check_shape(value: Any, shape: Any, where: str) -> None:
    """Refuse (400) a body the spec does not describe: wrong types, unknown or missing fields."""
    if shape is Props:
        if not isinstance(value, dict):
            raise bad_request(f"Invalid input JSON: {where}: expected an object")
        for name, v in value.items():
            if v is not None and not isinstance(v, str):
                raise bad_request(
                    f"Invalid input JSON: {where}.{name}: property values must be strings"
                )
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise bad_request(f"Invalid input JSON: {where}: expected an array")
        for i, item in enumerate(value):
            check_shape(item, shape[0], f"{where}[{i}]")
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            raise bad_request(f"Invalid input JSON: {where or 'body'}: expected an object")
        fields = {k.rstrip("?"): (v, k.endswith("?")) for k, v in shape.items()}
        for name in value:
            if name not in fields:
                raise bad_request(
                    f'Invalid input JSON: {where or "body"}: unrecognized field "{name}"'
                )
        for name, (sub, optional) in fields.items():
            if value.get(name) is None:
                if not optional:
                    raise bad_request(
                        f'Invalid input JSON: {where or "body"}: missing required field "{name}"'
                    )
                continue
            check_shape(value[name], sub, f"{where}.{name}" if where else name)
    else:
        ok = isinstance(value, shape) and not (shape is int and isinstance(value, bool))
        if not ok:
            raise bad_request(f"Invalid input JSON: {where}: expected {shape.__name__}")


# --- property definitions -------------------------------------------------------------------------


def definition(
    name: str,
    label: str,
    *,
    type: str = "string",
    field_type: str = "text",
    group: str = "contactinformation",
    options: Iterable[tuple[str, str] | dict[str, Any]] = (),
    unique: bool = False,
    read_only: bool = False,
    hubspot_defined: bool = True,
    description: str = "",
) -> dict[str, Any]:
    """A property definition in the shape of the client's ``ModelProperty``."""
    now = now_iso()
    prop: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": type,
        "fieldType": field_type,
        "groupName": group,
        "description": description,
        "options": [option(o, i) for i, o in enumerate(options)],
        "displayOrder": -1,
        "hasUniqueValue": unique,
        "hidden": False,
        "formField": not read_only,
        "calculated": False,
        "externalOptions": False,
        "archived": False,
        "createdAt": now,
        "updatedAt": now,
        "modificationMetadata": {
            "archivable": not hubspot_defined,
            "readOnlyDefinition": hubspot_defined,
            "readOnlyValue": read_only,
            "readOnlyOptions": False,
        },
    }
    if hubspot_defined:
        prop["hubspotDefined"] = True
    return prop


def option(o: tuple[str, str] | dict[str, Any], order: int) -> dict[str, Any]:
    """An enumeration option; from (value, label) or from an OptionInput body."""
    if isinstance(o, tuple):
        o = {"value": o[0], "label": o[1]}
    return {
        "label": o.get("label", o["value"]),
        "value": o["value"],
        "displayOrder": o.get("displayOrder", order),
        "hidden": o.get("hidden", False),
        "description": o.get("description", ""),
    }


CONTACT_TEXT = {
    "email": "Email",
    "firstname": "First Name",
    "lastname": "Last Name",
    "address": "Street Address",
    "city": "City",
    "zip": "Postal Code",
    "state": "State/Region",
    "country": "Country/Region",
    "jobtitle": "Job Title",
    "company": "Company Name",
    "website": "Website URL",
}
COMPANY_TEXT = {
    "name": "Company name",
    "domain": "Company Domain Name",
    "address": "Street Address",
    "city": "City",
    "zip": "Postal Code",
    "state": "State/Region",
    "country": "Country/Region",
    "website": "Website URL",
    "description": "Description",
}
LIFECYCLE_STAGES = [
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
]
LEAD_STATUSES = [
    ("NEW", "New"),
    ("OPEN", "Open"),
    ("IN_PROGRESS", "In Progress"),
    ("OPEN_DEAL", "Open Deal"),
    ("UNQUALIFIED", "Unqualified"),
    ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
    ("CONNECTED", "Connected"),
    ("BAD_TIMING", "Bad Timing"),
]


def complete(prop: dict[str, Any]) -> dict[str, Any]:
    """A definition written by hand in a test, with the fields the client's model requires."""
    name = prop["name"]
    base = definition(
        name,
        prop.get("label", name),
        type=prop.get("type", "string"),
        field_type=prop.get("fieldType", "text"),
        group=prop.get("groupName", ""),
        hubspot_defined=False,
    )
    options = [option(o, i) for i, o in enumerate(prop.get("options", []))]
    return {**base, **prop, "options": options}


def standard_properties() -> dict[str, dict[str, dict[str, Any]]]:
    """HubSpot's standard properties the connector may map to, and the read-only system ones."""
    contacts = [definition(name, label) for name, label in CONTACT_TEXT.items()]
    contacts += [
        definition("phone", "Phone Number", field_type="phonenumber"),
        definition("mobilephone", "Mobile Phone Number", field_type="phonenumber"),
        definition("lifecyclestage", "Lifecycle Stage", type="enumeration", field_type="radio",
                   options=LIFECYCLE_STAGES),
        definition("hs_lead_status", "Lead Status", type="enumeration", field_type="radio",
                   options=LEAD_STATUSES),
    ]  # fmt: skip
    group = "companyinformation"
    companies = [definition(name, label, group=group) for name, label in COMPANY_TEXT.items()]
    companies.append(definition("phone", "Phone Number", field_type="phonenumber", group=group))
    result = {}
    for obj_type, props in [("contacts", contacts), ("companies", companies)]:
        group = props[0]["groupName"]
        system = dict(group=group, read_only=True)
        props += [
            definition("hs_object_id", "Record ID", type="number", field_type="number", **system),
            definition("createdate", "Create Date", type="datetime", field_type="date", **system),
            definition(MODIFIED[obj_type], "Last Modified Date", type="datetime",
                       field_type="date", **system),
        ]  # fmt: skip
        result[obj_type] = {p["name"]: p for p in props}
    return result


def value_failure(prop: dict[str, Any], name: str, value: str) -> dict[str, Any] | None:
    """Why HubSpot would refuse this value of this property (None when it is fine)."""
    if prop.get("modificationMetadata", {}).get("readOnlyValue"):
        return invalid(name, f'Property "{name}" is read-only', "READ_ONLY_VALUE")
    if value == "":
        return None  # "" clears any property
    if name == "email" and not EMAIL.fullmatch(value):
        return invalid(name, f"Email address {value} is invalid", "INVALID_EMAIL")
    kind = prop.get("type", "string")
    if kind == "enumeration":
        allowed = [o["value"] for o in prop.get("options", [])]
        values = value.split(";") if prop.get("fieldType") == "checkbox" else [value]
        for v in values:
            if v not in allowed:
                message = f"{v} was not one of the allowed options: [{', '.join(allowed)}]"
                return invalid(name, message, "INVALID_OPTION")
    elif kind == "number":
        try:
            float(value)
        except ValueError:
            return invalid(name, f"{value} is not a valid number", "INVALID_NUMBER")
    elif kind == "bool" and value.lower() not in ("true", "false"):
        return invalid(name, f"{value} is not a valid boolean (true or false)", "INVALID_BOOLEAN")
    elif kind == "date" and not is_midnight_date(value):
        message = (
            f"{value} is not a valid date: use YYYY-MM-DD or epoch milliseconds at midnight UTC"
        )
        return invalid(name, message, "INVALID_DATE")
    elif kind == "datetime" and not is_datetime(value):
        return invalid(name, f"{value} is not a valid datetime", "INVALID_DATETIME")
    return None


def is_midnight_date(value: str) -> bool:
    if value.isdigit():
        return int(value) % 86_400_000 == 0
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def is_datetime(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# --- objects, unique-value indexes and staged writes ----------------------------------------------


def normal(prop: str, value: str) -> str:
    return value.lower() if prop == "email" else value
