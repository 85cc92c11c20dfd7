"""Mimeeq's webhook events and the schema of the contact payloads.

Mimeeq posts the bare record, with no event name in it: the event is the last segment of the
webhook URL. Payloads are validated for the fields the connector relies on; unknown fields are
tolerated (Mimeeq adds fields over time) and kept, since the raw body is what gets stored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from connector.targets import Operation

CONTACT_EVENTS: dict[str, Operation] = {
    "contact-created": "upsert",
    "contact-updated": "upsert",
    "contact-deleted": "delete",
}

# Other Mimeeq events: accepted (a webhook may point at us for them) and ignored.
OTHER_EVENTS = frozenset(
    {
        "company-created",
        "company-updated",
        "company-deleted",
        "company-note-created",
        "company-note-updated",
        "company-note-deleted",
        "basket-submitted",
    }
)

# Ids end up in file names, URLs and logs: printable, no whitespace, bounded.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
Text = Annotated[str, StringConstraints(max_length=100_000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Email(_Model):
    type: Text | None = None
    mail: Text


class PhoneNumber(_Model):
    type: Text | None = None
    number: Text


class AddressDetails(_Model):
    address: Text | None = None
    city: Text | None = None
    zipCode: Text | None = None
    country: Text | None = None


class AccountDetails(_Model):
    position: Text | None = None


class ContactPayload(_Model):
    """contact-created and contact-updated: the full record (an update is not a diff)."""

    id: Identifier
    customerId: Identifier
    companyId: Identifier | None = None
    firstName: Text | None = None
    lastName: Text | None = None
    status: Text | None = None
    addressDetails: AddressDetails | None = None
    phoneNumbers: list[PhoneNumber] | None = None
    emails: list[Email] | None = None
    accountDetails: AccountDetails | None = None
    tags: list[Text] | None = None


class DeletedContactPayload(_Model):
    """contact-deleted: only the identifiers and the e-mail addresses."""

    id: Identifier
    customerId: Identifier
    emails: list[Email] | None = None


PAYLOAD_MODELS: dict[str, type[ContactPayload] | type[DeletedContactPayload]] = {
    "contact-created": ContactPayload,
    "contact-updated": ContactPayload,
    "contact-deleted": DeletedContactPayload,
}

EventStatus = Literal["queued", "ignored", "dropped"]
