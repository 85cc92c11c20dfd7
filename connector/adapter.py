"""The adapter interface: what a target plugin declares, receives and returns.

A target plugin is a subclass of :class:`Adapter` that sets ``type`` (the name used in the
config's ``type:`` key), optionally a ``settings_model`` with its own options, and implements
:meth:`Adapter.push`. It is registered under the ``mimeeq_connector.adapters`` entry-point group,
so a new CRM is a new module, not an edit of the core::

    [project.entry-points."mimeeq_connector.adapters"]
    mycrm = "mypackage.mycrm:MyCrmAdapter"

The worker hands ``push`` a batch of :class:`Record` (already coalesced: at most one per contact,
the latest state, deletes winning) and expects exactly one outcome per record, in order (from
:mod:`connector.outcomes`): ``Delivered``, ``Retry`` or ``Dead``. A failure that concerns the whole
batch is raised instead, as ``Undelivered`` or one of the :mod:`connector.errors` delivery errors.

The target is a mirror: a record says what changed since the last confirmed write
(:attr:`Record.changes`), what to clear (:attr:`Record.cleared`: written before, empty now), and
what was left alone (:attr:`Record.unchanged`). Records whose mapped values all equal the last
confirmed write never reach ``push``. An adapter writes the changes and clears the cleared; it may
write everything instead when its target wants whole objects.

A push must not leave a write running after it returns or is cancelled (the worker's
``push_timeout``): use cancellable I/O, never a thread that goes on by itself. A request that was
sent but never answered may still land later: report it as ``Retry(maybe_written=True)`` (or raise
``Undelivered(Retry(..., maybe_written=True))``) so that the contact's next write waits long enough
for it to land first.
"""

from __future__ import annotations

import builtins
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo
from typing_extensions import TypeVar

from connector.errors import ConfigError
from connector.keys import TargetKey, target_key
from connector.outcomes import CompanyLink, Outcome, Retry, Undelivered
from connector.ratelimit import LimiterFactory, shared_limiter

ENTRY_POINT_GROUP = "mimeeq_connector.adapters"

Operation = Literal["upsert", "delete"]
EventKind = Literal["created", "updated", "deleted"]
# The Mimeeq objects the connector syncs: contacts (ids CONT-…) and companies (ids COMP-…).
ObjectType = Literal["contact", "company"]


def object_type_of(event: str) -> ObjectType:
    """Whose event this is: ``company-…`` events carry a company, every other one a contact."""
    return "company" if event.startswith("company-") else "contact"


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
"""A path in the config: relative paths resolve against the config file's folder."""


class Backoff(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial: float = Field(default=1.0, gt=0, description="seconds before the first retry")
    max: float = Field(default=1800.0, gt=0, description="longest wait between two attempts")


class TargetSettings(BaseModel):
    """Options every target has. Adapters subclass it to add their own."""

    model_config = ConfigDict(extra="forbid")

    type: str
    mapping: str | dict[str, Any] = Field(description="mapping file, or an inline mapping")
    company_mapping: str | dict[str, Any] | None = Field(
        default=None, description="this target takes Mimeeq companies too, mapped by this"
    )
    enabled: bool = True
    batch_size: int | None = Field(default=None, ge=1, description="default: the adapter's max")
    concurrency: int | None = Field(default=None, ge=1, le=64, description="batches in flight")
    linger: float | None = Field(
        default=None, ge=0, le=60, description="longest wait for a burst to fill a batch (s)"
    )
    max_attempts: int = Field(default=25, ge=1, description="failed attempts before dead letter")
    backoff: Backoff = Backoff()
    push_timeout: float = Field(default=120.0, gt=0, description="bound on one push (s)")


@dataclass(frozen=True, slots=True)
class Record:
    """One contact or company to push: the latest state the connector holds for it."""

    contact_id: str  # the Mimeeq id of the object: a contact's CONT-…, a company's COMP-…
    op: Operation
    event: str  # the Mimeeq event that carried this state, e.g. "contact-updated"
    event_id: str  # stable across retries of the same state: a natural idempotency key
    fields: Mapping[str, Any]  # the whole mapped record, in the mapping's field order
    payload: Mapping[str, Any]  # the Mimeeq payload as received
    remote_id: str | None  # the target's id for this contact, from an earlier delivery
    attempt: int  # 1 for the first attempt
    # Fields whose value is the one last confirmed written: no need to write them again.
    unchanged: frozenset[str] = frozenset()
    # Fields the connector wrote before whose mapped value is now missing: clear them.
    cleared: tuple[str, ...] = ()
    company_id: str | None = None  # the Mimeeq company the contact belongs to (companyId)
    company: CompanyLink | None = None  # the association last confirmed in the target
    email: str | None = None  # the contact's first e-mail in Mimeeq, mapped or not
    object_type: ObjectType = "contact"  # mapped with the target's company_mapping if "company"

    @property
    def kind(self) -> EventKind:
        """What happened in Mimeeq, from the event name: adapters need not parse it."""
        if self.op == "delete" or self.event.endswith("-deleted"):
            return "deleted"
        return "created" if self.event.endswith("-created") else "updated"

    @property
    def changes(self) -> dict[str, Any]:
        """What to write: every field but the unchanged ones (all of them on a first write)."""
        if not self.unchanged:
            return dict(self.fields)
        return {k: v for k, v in self.fields.items() if k not in self.unchanged}


@dataclass(frozen=True, slots=True)
class RequestPreview:
    """One request a target would make for a record, shown by ``map --request`` and never sent:
    an HTTP call (``method``, ``url``, ``headers`` with secrets masked, JSON ``body``) or a file
    write (``path``, ``text``). ``note`` says when it is made, or alone, why nothing is."""

    method: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    path: str | None = None
    text: str | None = None
    note: str | None = None


@dataclass(slots=True)
class ClaimHold:
    """Until when (wall clock) the worker's claim on the records being pushed surely holds.

    The worker renews the claim while the push runs (a heartbeat) and moves ``until`` on after
    each renewal. Past it, another replica may own the records: a push still running (a process
    stopped and resumed, a store unreachable for the renewals) must not send another write.
    """

    until: float = math.inf


# Set by the worker around each push; adapters call ``check_claim`` before each request that
# writes.
CLAIM_HOLD: ContextVar[ClaimHold | None] = ContextVar("claim_hold", default=None)


def check_claim() -> None:
    """Raise ``Undelivered(Retry(...))`` when the push's claim may no longer be this process's."""
    hold = CLAIM_HOLD.get()
    if hold is not None and time.time() >= hold.until:
        raise Undelivered(Retry("the claim on these contacts ran out before this write: not sent"))


class TargetReporter:
    """Where an adapter reports what it did, for the metrics. Reports nowhere by default."""

    def request(self, status: int | str, seconds: float) -> None:
        """One request to the target: its HTTP status (0 or "error": no answer) and time."""

    def rate_wait(self, seconds: float) -> None:
        """Time spent waiting for the target's rate limit."""


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What an adapter knows about where it runs."""

    tenant: str
    name: str
    fields: tuple[str, ...]  # the mapped field names, in the mapping's order
    report: TargetReporter = field(default_factory=TargetReporter)
    limiter: LimiterFactory = shared_limiter  # the account's request budget, for rate limits
    company_fields: tuple[str, ...] = ()  # the company mapping's fields (none: no companies)

    @property
    def key(self) -> TargetKey:
        return target_key(self.tenant, self.name)


# The default keeps a bare ``Adapter`` meaning ``Adapter[TargetSettings]``.
SettingsT = TypeVar("SettingsT", bound=TargetSettings, default=TargetSettings)


class Adapter(ABC, Generic[SettingsT]):
    """Base class of every target plugin, generic over its settings model.

    ``settings_model`` validates the target's config; the worker builds ``settings`` with it, so
    ``self.settings`` is already the adapter's own model (no ``isinstance`` check needed).
    """

    type: ClassVar[str]
    settings_model: ClassVar[builtins.type[TargetSettings]] = TargetSettings
    max_batch_size: ClassVar[int] = 100
    default_concurrency: ClassVar[int] = 1
    default_linger: ClassVar[float] = 0.05  # seconds; longer where every call is precious
    # Whether the target can take companies (``company_mapping``); records then carry either.
    takes_companies: ClassVar[bool] = False

    def __init__(self, settings: SettingsT, context: TargetContext) -> None:
        self.settings: SettingsT = settings
        self.context = context

    @property
    def associates_companies(self) -> bool:
        """True when this target links contacts to companies (see :attr:`Delivered.company`):
        a change of the contact's company is then a change even if no mapped field changed."""
        return False

    async def open(self) -> None:
        """Prepare the target (load state, open connections). Called once before any push."""

    async def close(self) -> None:
        """Release what ``open`` took. Called once, after the last push."""

    def describe_request(self, record: Record) -> list[RequestPreview]:
        """The requests a push of this record alone would make, without making them (nor any
        other call): for ``map --request``. Optional: targets without it say so there."""
        raise NotImplementedError("this target cannot show its requests")

    @abstractmethod
    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        """Deliver a batch; return one outcome per record, in the same order."""


_registered: dict[str, type[Adapter[Any]]] = {}


def register_adapter(cls: type[Adapter[Any]]) -> type[Adapter[Any]]:
    """Register an adapter class directly (embedding, tests); entry points need no call."""
    _registered[cls.type] = cls
    return cls


def available_adapters() -> dict[str, type[Adapter[Any]]]:
    found: dict[str, type[Adapter[Any]]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.load())
    return found | _registered


def adapter_class(type_name: str) -> type[Adapter[Any]]:
    if type_name in _registered:
        return _registered[type_name]
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            raise ConfigError(
                f"entry point {ep.value!r} for target type {type_name!r} is no Adapter"
            )
        return cls
    known = ", ".join(sorted(available_adapters())) or "none installed"
    raise ConfigError(f"unknown target type {type_name!r} (known: {known})")
