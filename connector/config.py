"""Loading ``config.yaml``: environment interpolation, validation, compiled mappings.

Every problem is reported as ``file:line: key.path: problem`` and all of them are collected before
failing, so ``check`` shows everything that is wrong at once. Secret values never appear in a
message: errors name the key, never the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from connector.adapter import (
    Adapter,
    ObjectType,
    TargetContext,
    TargetReporter,
    TargetSettings,
    adapter_class,
)
from connector.backfill import ImportSettings
from connector.checks import SHAPES, path_checker
from connector.errors import ConfigError
from connector.keys import TargetKey, target_key
from connector.mapping import FieldMapping, StrictYamlLoader, key_lines, load_mapping
from connector.ratelimit import LimiterFactory, shared_limiter
from connector.store.url import PostgresUrl, parse_store_url

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")
DEFAULT_CONFIG = "config.yaml"

# The webhook token config.example.yaml falls back to: published, so for trying things out only.
DEMO_TOKEN = "demo-token-change-me"  # noqa: S105 - known so that it can be warned about


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on every interface
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    drain_timeout: float = Field(default=25.0, gt=0, description="bound on a graceful stop (s)")
    # Slow, stuck or greedy clients (see connector/receiver.py, "Connections").
    read_timeout: float = Field(
        default=10.0, gt=0, le=300, description="a request's first byte to its last (s)"
    )
    keepalive_timeout: float = Field(
        default=75.0, gt=0, le=3600, description="idle time before a connection is closed (s)"
    )
    max_connections: int = Field(default=512, ge=1, le=100_000, description="open at once")
    max_header_bytes: int = Field(
        default=8190, ge=1024, le=65_536, description="the request line and each header"
    )
    max_headers: int = Field(default=64, ge=16, le=1000, description="header fields per request")


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "sqlite:///data/connector.db"
    retention_days: float = Field(default=7.0, gt=0, description="events kept after delivery")
    dedupe_hours: float = Field(default=24.0, ge=0, description="redeliveries recognised within")
    migrate_on_start: bool = Field(
        default=True, description="apply schema migrations at start (else: `migrate` command)"
    )
    max_size_mb: float | None = Field(
        default=None, gt=0, description="SQLite: the database file's size cap; then 503s"
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        parse_store_url(url)  # its messages never repeat the URL (it may hold a password)
        return url

    @field_validator("max_size_mb")
    @classmethod
    def _sqlite_only(cls, size: float | None, info: ValidationInfo) -> float | None:
        url = info.data.get("url")  # None: the URL itself is invalid, and said so
        if size is not None and url is not None and isinstance(parse_store_url(url), PostgresUrl):
            raise ValueError("applies to a SQLite store only (PostgreSQL has its own quotas)")
        return size


def _long_enough(token: SecretStr) -> SecretStr:
    if not token.get_secret_value():
        raise ValueError("is empty: a secret must be set")
    if len(token.get_secret_value()) < 16:
        raise ValueError("use at least 16 characters")  # never echo the value itself
    return token


Token = Annotated[SecretStr, AfterValidator(_long_enough)]


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    header: str = Field(default="X-Mimeeq-Token", pattern=r"^[A-Za-z0-9-]{1,64}$")
    # Two values while rotating: the old one and the new one.
    values: list[Token] = Field(min_length=1, max_length=5)


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    customer_id: str = Field(pattern=r"^CUST-[A-Za-z0-9-]+$")
    auth: AuthSettings
    targets: dict[str, dict[str, Any]] = Field(min_length=1)
    import_: ImportSettings = Field(default_factory=ImportSettings, alias="import")


class AdminSettings(BaseModel):
    """The operator console's own listener (connector/console/): off unless the section is set."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"  # an operator's machine only, unless an ingress is put in front
    port: int = Field(default=8081, ge=0, le=65535)
    token: Token
    secure_cookie: bool = Field(default=False, description="true when served behind TLS")


class RootSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    admin: AdminSettings | None = None
    tenants: dict[str, TenantSettings] = Field(min_length=1)


@dataclass(frozen=True)
class Target:
    tenant: str
    name: str
    settings: TargetSettings
    adapter: type[Adapter]
    mapping: FieldMapping
    company_mapping: FieldMapping | None = None  # None: the target takes contacts only

    @property
    def key(self) -> TargetKey:
        return target_key(self.tenant, self.name)

    def mapping_for(self, object_type: ObjectType) -> FieldMapping | None:
        return self.company_mapping if object_type == "company" else self.mapping

    def context(
        self, report: TargetReporter | None = None, limiter: LimiterFactory = shared_limiter
    ) -> TargetContext:
        """What the target's adapter is told about where it runs."""
        return TargetContext(
            self.tenant,
            self.name,
            self.mapping.fields,
            report or TargetReporter(),
            limiter,
            company_fields=self.company_mapping.fields if self.company_mapping else (),
        )


@dataclass(frozen=True)
class Tenant:
    slug: str
    customer_id: str
    auth_header: str
    tokens: tuple[bytes, ...]
    targets: dict[str, Target] = field(default_factory=dict)
    import_settings: ImportSettings = field(default_factory=ImportSettings)

    @cached_property
    def enabled_targets(self) -> tuple[str, ...]:
        """Keys of the targets a new contact event goes to (once per config, not per webhook)."""
        return tuple(t.key for t in self.targets.values() if t.settings.enabled)

    @cached_property
    def company_targets(self) -> tuple[str, ...]:
        """Keys of the targets a new company event goes to: those with a company mapping."""
        return tuple(
            t.key
            for t in self.targets.values()
            if t.settings.enabled and t.company_mapping is not None
        )

    def targets_for(self, object_type: ObjectType) -> tuple[str, ...]:
        return self.company_targets if object_type == "company" else self.enabled_targets


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerSettings
    store: StoreSettings
    tenants: dict[str, Tenant]
    admin: AdminSettings | None = None  # None: no operator console

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def targets(self) -> list[Target]:
        return [t for tenant in self.tenants.values() for t in tenant.targets.values()]


def default_config_path() -> Path:
    return Path(os.environ.get("CONNECTOR_CONFIG") or DEFAULT_CONFIG)


# What a command needs loaded: "store" (read-only commands: server and store settings, and the
# tenants' and targets' names, so that targets can be named; no secrets, no mappings), "targets"
# (everything), "check" (everything, and mapping paths checked against the payload schemas).
Need = Literal["store", "targets", "check"]


def load_config(path: Path | str, *, need: Need = "targets") -> Config:
    """Read, interpolate and validate a config file; raise ConfigError listing every problem."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    reporter = _Reporter(path, text)
    try:
        raw = yaml.load(text, Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")

    if need == "store":
        return _load_store_config(path, raw, reporter)
    data = _interpolate(raw, (), reporter)
    root: RootSettings | None = None
    try:
        root = RootSettings.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        reporter.pydantic(exc, ())

    # Targets are validated by their adapter's own model, even when the rest has problems, so
    # that one run of `check` lists everything.
    targets: dict[str, dict[str, Target]] = {}
    raw_tenants = data.get("tenants")
    for slug, tenant in (raw_tenants if isinstance(raw_tenants, dict) else {}).items():
        if not re.match(SLUG, str(slug)):
            reporter.add(("tenants", slug), "tenant names are lower-case letters, digits, - and _")
        raw_targets = tenant.get("targets") if isinstance(tenant, dict) else None
        for name, options in (raw_targets if isinstance(raw_targets, dict) else {}).items():
            loc = ("tenants", slug, "targets", name)
            if not re.match(SLUG, str(name)):
                reporter.add(loc, "target names are lower-case letters, digits, - and _")
            if isinstance(options, dict):
                target = _load_target(slug, name, options, path, loc, reporter, need)
                if target is not None:
                    targets.setdefault(slug, {})[name] = target
    if reporter.problems or root is None:
        raise ConfigError(reporter.problems)

    tenants = {
        slug: Tenant(
            slug=slug,
            customer_id=tenant.customer_id,
            auth_header=tenant.auth.header,
            tokens=tuple(v.get_secret_value().encode() for v in tenant.auth.values),
            targets=targets.get(slug, {}),
            import_settings=tenant.import_,
        )
        for slug, tenant in root.tenants.items()
    }
    return Config(
        path=path, server=root.server, store=root.store, tenants=tenants, admin=root.admin
    )


def _load_target(
    tenant: str,
    name: str,
    options: dict[str, Any],
    path: Path,
    loc: tuple[str | int, ...],
    reporter: _Reporter,
    need: Need = "targets",
) -> Target | None:
    type_name = options.get("type")
    if not isinstance(type_name, str):
        reporter.add((*loc, "type"), "required: the kind of target (csv, hubspot, rest, ...)")
        return None
    try:
        cls = adapter_class(type_name)
    except ConfigError as exc:
        reporter.add((*loc, "type"), str(exc))
        return None
    try:
        settings = cls.settings_model.model_validate(options, context={"base_dir": path.parent})
    except ValidationError as exc:
        reporter.pydantic(exc, loc)
        settings = None  # its mappings are still read: one run of `check` lists everything
    _refuse_empty_secrets(settings, loc, reporter)
    mappings: dict[str, FieldMapping | None] = {"mapping": None, "company_mapping": None}
    for key in mappings:
        source = options.get(key)
        if not isinstance(source, str | dict):
            continue  # absent, or not a mapping (validation said so)
        if key == "company_mapping" and not cls.takes_companies:
            reporter.add((*loc, key), f"a {type_name} target does not take companies")
            continue
        if reporter.is_unset((*loc, key)):
            continue  # said once: its variable is not set
        if isinstance(source, str) and not (path.parent / source).is_file():
            looked = (path.parent / source).resolve()
            reporter.add((*loc, key), f"mapping file not found: looked for {looked}")
            continue
        origin = f"{path.name}: {'.'.join(map(str, (*loc, key)))}"
        check = path_checker(SHAPES[key]) if need == "check" else None
        located = (str(path), ".".join(map(str, (*loc, key))), reporter.lines_under((*loc, key)))
        try:
            mappings[key] = load_mapping(
                source, path.parent, origin=origin, check_path=check, located=located
            )
        except ConfigError as exc:
            reporter.problems.extend(exc.problems)
    mapping, company_mapping = mappings["mapping"], mappings["company_mapping"]
    wants_companies = settings is not None and settings.company_mapping is not None
    if settings is None or mapping is None or (wants_companies and company_mapping is None):
        return None  # its problems are reported
    return Target(
        tenant=tenant,
        name=name,
        settings=settings,
        adapter=cls,
        mapping=mapping,
        company_mapping=company_mapping,
    )


def _refuse_empty_secrets(value: Any, loc: tuple[str | int, ...], reporter: _Reporter) -> None:
    """A secret set to "" (often a variable set but left empty) would only be refused later, by
    the target, on every push: say so now, naming the key."""
    if isinstance(value, SecretStr):
        if not value.get_secret_value() and not reporter.is_unset(loc):
            reporter.add(loc, "is empty: a secret must be set")
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            _refuse_empty_secrets(getattr(value, name), (*loc, info.alias or name), reporter)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_empty_secrets(item, (*loc, key), reporter)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_empty_secrets(item, (*loc, i), reporter)


class _StoreRoot(BaseModel):
    """The settings read-only commands validate: tenants are only read for their targets' names."""

    model_config = ConfigDict(extra="forbid")
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    admin: dict[str, Any] | None = None  # read-only commands do not serve the console
    tenants: dict[str, dict[str, Any]] = Field(min_length=1)


def _load_store_config(path: Path, raw: dict[str, Any], reporter: _Reporter) -> Config:
    """The config of a read-only command (status, dlq list, trace...): server and store settings,
    and targets by name only. Target options (secrets, mappings) and webhook tokens are neither
    interpolated nor validated, so an unset HUBSPOT_TOKEN does not stop `status`."""
    data = {k: _interpolate(v, (k,), reporter) if k in ("server", "store") else v
            for k, v in raw.items()}  # fmt: skip
    root: _StoreRoot | None = None
    try:
        root = _StoreRoot.model_validate(data)
    except ValidationError as exc:
        reporter.pydantic(exc, ())
    tenants: dict[str, Tenant] = {}
    for slug, tenant in (root.tenants if root else {}).items():
        if not re.match(SLUG, str(slug)):
            reporter.add(("tenants", slug), "tenant names are lower-case letters, digits, - and _")
        targets: dict[str, Target] = {}
        raw_targets = tenant.get("targets")
        for name, options in (raw_targets if isinstance(raw_targets, dict) else {}).items():
            if not re.match(SLUG, str(name)):
                reporter.add(("tenants", slug, "targets", name),
                             "target names are lower-case letters, digits, - and _")  # fmt: skip
            options = options if isinstance(options, dict) else {}
            type_name = str(options.get("type"))
            try:
                cls = adapter_class(type_name)
            except ConfigError:  # a plugin missing here need not stop a read-only command
                cls = adapter_class("null")
            settings = TargetSettings.model_construct(
                type=type_name, mapping="", enabled=options.get("enabled") is not False
            )
            targets[name] = Target(slug, name, settings, cls, FieldMapping("(not loaded)", []))
        customer_id = str(tenant.get("customer_id", ""))
        tenants[slug] = Tenant(slug, customer_id, auth_header="", tokens=(), targets=targets)
    if reporter.problems or root is None:
        raise ConfigError(reporter.problems)
    return Config(path=path, server=root.server, store=root.store, tenants=tenants)


def _interpolate(value: Any, loc: tuple[str | int, ...], reporter: _Reporter) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in string values; ``$$`` is a literal ``$``."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), reporter) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), reporter) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                reporter.add(loc, f"environment variable {name} is not set")
                reporter.unset.append(loc)
                return ""
            return default
        if found == "":
            reporter.empty[loc] = name  # a secret left empty is refused, naming the variable
        return found

    return ENV_VAR.sub(substitute, value)


class _Reporter:
    """Collects problems as ``file:line: key.path: problem``, finding lines in the YAML."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self._lines = key_lines(text)
        self.unset: list[tuple[str | int, ...]] = []  # keys whose ${VAR} is not set: said once
        self.empty: dict[tuple[str | int, ...], str] = {}  # keys whose ${VAR} is set but empty

    def lines_under(self, loc: tuple[str | int, ...]) -> dict[tuple[str | int, ...], int]:
        """The lines of the keys under ``loc``, by their path from there (an inline mapping's)."""
        return {k[len(loc) :]: n for k, n in self._lines.items() if k[: len(loc)] == loc}

    def is_unset(self, loc: tuple[str | int, ...]) -> bool:
        """Whether ``loc`` (pydantic's, which may hold a union's tag) is a key already reported
        for an unset variable: its empty value's validation error would say it twice."""

        def within(key: tuple[str | int, ...]) -> bool:
            parts = iter(loc)
            return all(any(part == want for part in parts) for want in key)

        return any(within(key) for key in self.unset)

    def add(self, loc: tuple[str | int, ...], problem: str) -> None:
        if loc in self.empty:
            problem += f" (environment variable {self.empty[loc]} is set but empty)"
        line = None
        for depth in range(len(loc), 0, -1):  # the closest key that exists in the file
            line = self._lines.get(tuple(loc[:depth]))
            if line is not None:
                break
        where = f"{self.path}:{line}" if line else str(self.path)
        key = ".".join(str(part) for part in loc) or "(top level)"
        self.problems.append(f"{where}: {key}: {problem}")

    def pydantic(self, exc: ValidationError, prefix: tuple[str | int, ...]) -> None:
        for error in exc.errors(include_input=False, include_url=False):
            if self.is_unset((*prefix, *error["loc"])):
                continue
            problem = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                problem = "unknown key"
            elif error["type"] == "missing":
                problem = "required key is missing"
            self.add((*prefix, *error["loc"]), problem)
