"""Mimeeq's webhook events and the schemas of the contact and company payloads.

Mimeeq posts the bare record, with no event name in it: the event is the last segment of the
webhook URL. Payloads are validated for the fields the connector relies on; unknown fields are
tolerated (Mimeeq adds fields over time) and kept, since the raw body is what gets stored.
"""

from __future__ import annotations

from typing import Annotated, NotRequired

from pydantic import ConfigDict, StringConstraints, TypeAdapter, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from connector.adapter import ObjectType, Operation

# The events the connector syncs, and what each does to its object (the object type is the
# event's prefix: connector.adapter.object_type_of).
EVENTS: dict[str, Operation] = {
    "contact-created": "upsert",
    "contact-updated": "upsert",
    "contact-deleted": "delete",
    "company-created": "upsert",
    "company-updated": "upsert",
    "company-deleted": "delete",
}

# Other Mimeeq events: accepted (a webhook may point at us for them) and ignored. The fields of
# company notes are not documented.
OTHER_EVENTS = frozenset(
    {
        "company-note-created",
        "company-note-updated",
        "company-note-deleted",
        "basket-submitted",
    }
)

# Ids end up in file names, URLs and logs: printable, no whitespace, bounded.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
Text = Annotated[str, StringConstraints(max_length=100_000)]

# Typed dicts rather than models: validated in place, nothing is built (twice as fast per webhook).
_STRICT = ConfigDict(extra="ignore", strict=True)


@with_config(_STRICT)
class Email(TypedDict):
    type: NotRequired[Text | None]
    mail: Text


@with_config(_STRICT)
class PhoneNumber(TypedDict):
    type: NotRequired[Text | None]
    number: Text


@with_config(_STRICT)
class AddressDetails(TypedDict, total=False):
    address: Text | None
    city: Text | None
    zipCode: Text | None
    country: Text | None


@with_config(_STRICT)
class AccountDetails(TypedDict, total=False):
    position: Text | None


@with_config(_STRICT)
class ContactPayload(TypedDict):
    """contact-created and contact-updated: the full record (an update is not a diff)."""

    id: Identifier
    customerId: Identifier
    companyId: NotRequired[Identifier | None]
    firstName: NotRequired[Text | None]
    lastName: NotRequired[Text | None]
    status: NotRequired[Text | None]
    addressDetails: NotRequired[AddressDetails | None]
    phoneNumbers: NotRequired[list[PhoneNumber] | None]
    emails: NotRequired[list[Email] | None]
    accountDetails: NotRequired[AccountDetails | None]
    tags: NotRequired[list[Text] | None]


@with_config(_STRICT)
class DeletedContactPayload(TypedDict):
    """contact-deleted: only the identifiers and the e-mail addresses."""

    id: Identifier
    customerId: Identifier
    emails: NotRequired[list[Email] | None]


@with_config(_STRICT)
class CompanyAddress(TypedDict, total=False):
    street: Text | None
    city: Text | None
    postcode: Text | None
    country: Text | None


@with_config(_STRICT)
class CompanyAccountDetails(TypedDict, total=False):
    workNumber: Text | None
    email: Text | None


@with_config(_STRICT)
class Social(TypedDict, total=False):
    type: Text | None
    address: Text | None


@with_config(_STRICT)
class CompanyPayload(TypedDict):
    """company-created, -updated and -deleted: the full record after the change (a deleted
    company's body is only known to start with its identifiers: nothing else is required)."""

    id: Identifier
    customerId: Identifier
    companyName: NotRequired[Text | None]
    status: NotRequired[Text | None]
    address: NotRequired[CompanyAddress | None]
    accountDetails: NotRequired[CompanyAccountDetails | None]
    deliveryAddresses: NotRequired[list[dict[str, object]] | None]
    socials: NotRequired[list[Social] | None]
    paymentTerms: NotRequired[Text | None]
    currency: NotRequired[Text | None]
    tags: NotRequired[list[Text] | None]


CONTACT = TypeAdapter(ContactPayload)
DELETED_CONTACT = TypeAdapter(DeletedContactPayload)
COMPANY = TypeAdapter(CompanyPayload)
# validate_python(data) raises pydantic's ValidationError, naming the field.
PAYLOAD_SCHEMAS: dict[
    str,
    TypeAdapter[ContactPayload] | TypeAdapter[DeletedContactPayload] | TypeAdapter[CompanyPayload],
] = {
    "contact-created": CONTACT,
    "contact-updated": CONTACT,
    "contact-deleted": DELETED_CONTACT,
    "company-created": COMPANY,
    "company-updated": COMPANY,
    "company-deleted": COMPANY,
}


def contact_links(payload: object, object_type: ObjectType) -> tuple[str | None, str | None]:
    """What adapters get from a contact's payload beside its mapped fields: the Mimeeq company
    it belongs to, and its first e-mail address (for targets that key on it). None for a
    company."""
    if object_type != "contact" or not isinstance(payload, dict):
        return None, None
    company = payload.get("companyId")
    emails = payload.get("emails")
    first = emails[0] if isinstance(emails, list) and emails else None
    mail = first.get("mail") if isinstance(first, dict) else None
    return (str(company) if company else None), (str(mail) if mail else None)
