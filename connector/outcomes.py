"""What became of a record pushed to a target: the one outcome vocabulary of adapters.

``push`` answers each record with :class:`Delivered`, :class:`Retry` or :class:`Dead`; a failure of
the whole batch is raised as :class:`Undelivered` carrying the outcome every record gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.errors import DeliveryError


@dataclass(frozen=True, slots=True)
class CompanyLink:
    """The company a contact is associated with in the target."""

    company_id: str  # Mimeeq's id (COMP-…)
    remote_id: str | None  # the target's id of that company; None: not in the target (yet)


@dataclass(frozen=True, slots=True)
class Delivered:
    remote_id: str | None = None  # remembered for later updates, deletes and traces
    note: str | None = None  # shown in trace, e.g. "already deleted"
    # The association in place after this write, for adapters that associate companies: the
    # next write associates again only when the contact's company changes.
    company: CompanyLink | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    after: float | None = None  # seconds; None means the target's backoff policy
    count_attempt: bool = True  # False for waits that are not failures (rate limits)
    # A request went out and no answer came back (timeout, connection lost): it may still land.
    maybe_written: bool = False


@dataclass(frozen=True, slots=True)
class Dead:
    reason: str  # the target's own message


Outcome = Delivered | Retry | Dead


class Undelivered(DeliveryError):
    """Raised by a push: every record of it (not yet answered) gets ``outcome``.

    The one exception for failed deliveries: the outcome values say retry or dead, so the
    exception does not say it a second time.
    """

    def __init__(self, outcome: Retry | Dead) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome
