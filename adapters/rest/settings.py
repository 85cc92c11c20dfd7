"""The REST target's settings: endpoints, batch, auth, rate limit and status tables."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from adapters.http import RateLimit, StatusCode, StatusKind, StatusRules
from adapters.rest.templates import (
    RECORD,
    BodyTemplate,
    JMESPath,
    Method,
    Template,
    Text,
    _body_names,
    _search,
    compile_body,
)
from connector.adapter import ConfigPath, ObjectType, TargetSettings
from connector.jmespath_compiler import Getter, compile_expression


class Endpoint(BaseModel):
    """Where a request goes: method, path below ``base_url``, query."""

    model_config = ConfigDict(extra="forbid")
    method: Method = "POST"
    path: Template = Field(pattern=r"^/[^?#]*$", description="no query here: use `query`")
    query: dict[str, Template] = {}

    _path: Text = PrivateAttr()
    _query: dict[str, Text] = PrivateAttr()

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _compile_url(self) -> Self:
        self._path = Text.parse(self.path)
        self._query = {name: Text.parse(value) for name, value in self.query.items()}
        return self

    @property
    def url_names(self) -> set[str]:
        """Placeholders of the path and query: each needs a value, or the request cannot go."""
        return self._path.names.union(*(t.names for t in self._query.values()))


class Request(Endpoint):
    body: BodyTemplate = Field(default=RECORD, description='"$record", null, or a template')
    id_from_response: JMESPath | None = None

    _body: Any = PrivateAttr()
    _id: Getter | None = PrivateAttr()

    @model_validator(mode="after")
    def _compile_body(self) -> Self:
        self._body = compile_body(self.body)
        self._id = compile_expression(self.id_from_response) if self.id_from_response else None
        return self

    @property
    def needs_remote_id(self) -> bool:
        return "remote_id" in self.url_names or "remote_id" in set(_body_names(self._body))


class UpdateRequest(Request):
    method: Method = "PATCH"
    create_if_missing: bool = Field(default=True, description="404/410: create the contact")
    send: Literal["changes", "all"] = Field(
        default="changes", description="what changed (and the cleared fields), or everything"
    )


class UpsertRequest(Request):
    method: Method = "PUT"


class DeleteRequest(Request):
    method: Method = "DELETE"
    body: BodyTemplate = None
    missing_ok: bool = Field(default=True, description="404/410 count as delivered")


class LookupRequest(Request):
    method: Method = "GET"
    body: BodyTemplate = None
    id_from_response: JMESPath = Field(description="the remote id; null or [] when not found")


class BatchRequest(Endpoint):
    key: str | None = Field(default="records", description="the list goes under it; null: bare")
    item: BodyTemplate = RECORD
    max_size: int = Field(default=100, ge=1, le=1000)
    results: JMESPath | None = Field(default=None, description="the per-item results' list")
    match_by: JMESPath | None = Field(default=None, description="Mimeeq id in a result; else order")
    id_from_result: JMESPath | None = None
    status_from_result: JMESPath | None = None
    error_from_result: JMESPath | None = None

    _item: Any = PrivateAttr()
    _compiled: dict[str, Getter | None] = PrivateAttr()

    @model_validator(mode="after")
    def _compile_results(self) -> Self:
        self._item = compile_body(self.item)
        self._compiled = {}
        for name in ("results", "match_by", "id_from_result", "status_from_result",
                     "error_from_result"):  # fmt: skip
            expression = getattr(self, name)
            self._compiled[name] = compile_expression(expression) if expression else None
        return self

    def search(self, name: str, data: Any) -> Any:
        return _search(self._compiled[name], data)


class BearerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer"]
    token: SecretStr


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"]
    username: str
    password: SecretStr


class HeaderAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["header"]
    name: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    value: SecretStr


class NoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["none"] = "none"


class Operations(BaseModel):
    """The requests for one kind of Mimeeq object: contacts (the target's top level) or companies
    (its ``companies:`` block). The adapter picks the set by ``Record.object_type``."""

    model_config = ConfigDict(extra="forbid")
    # The placeholder of the Mimeeq id in these requests, and the other kind's, refused here.
    own_id: ClassVar[str] = "contact_id"
    other_id: ClassVar[str] = "company_id"

    upsert: UpsertRequest | None = None
    create: Request | None = None
    update: UpdateRequest | None = None
    delete: DeleteRequest | None = None
    lookup: LookupRequest | None = None
    batch: BatchRequest | None = None

    @model_validator(mode="after")
    def _consistent_operations(self) -> Self:
        if sum(x is not None for x in (self.batch, self.upsert, self.create)) != 1 or (
            (self.create is None) != (self.update is None)
        ):
            raise ValueError(
                "creates and updates need exactly one of: `upsert`, `create` with `update`, "
                "or `batch`"
            )
        for name in ("upsert", "create", "lookup"):
            request: Endpoint | None = getattr(self, name)
            if request and "remote_id" in request.url_names:
                raise ValueError(f"{name}: {{remote_id}} is not known yet when {name} is used")
        if self.batch and self.batch.url_names - {"tenant"}:
            raise ValueError("batch: its path and query can only use {tenant}")
        if self.batch and self.batch.results is None and any(self.batch._compiled.values()):
            raise ValueError("batch: match_by and the *_from_result expressions need `results`")
        gives_ids = (
            self.lookup
            or any(r and r.id_from_response for r in (self.create, self.upsert))
            or (self.batch and self.batch.id_from_result)
        )
        for name, needs in (("update", self.update), ("delete", self.delete)):
            if needs and needs.needs_remote_id and not gives_ids:
                raise ValueError(
                    f"{name} uses {{remote_id}}, but nothing gives one: set `id_from_response` "
                    "on create (or upsert), or a `lookup`"
                )
        for name, names in self._names().items():
            if self.other_id in names:
                raise ValueError(self._wrong_id(name))
        return self

    def _wrong_id(self, name: str) -> str:
        return (
            f"{name}: {{{self.other_id}}} is for company requests (`companies:`); a contact's "
            f"Mimeeq id is {{{self.own_id}}}"
        )

    def _names(self) -> dict[str, set[str]]:
        """Each configured request's placeholders."""
        names: dict[str, set[str]] = {}
        for name in ("upsert", "create", "update", "delete", "lookup"):
            request: Request | None = getattr(self, name)
            if request is not None:
                names[name] = request.url_names | set(_body_names(request._body))
        if self.batch:
            names["batch"] = self.batch.url_names | set(_body_names(self.batch._item))
        return names

    def placeholders(self) -> set[str]:
        return set().union(*self._names().values())


class CompanyOperations(Operations):
    """The ``companies:`` block: the same requests, for Mimeeq companies."""

    own_id: ClassVar[str] = "company_id"
    other_id: ClassVar[str] = "contact_id"

    def _wrong_id(self, name: str) -> str:
        return (
            f"{name}: {{{self.other_id}}} is for contact requests; in `companies:` the "
            f"company's Mimeeq id is {{{self.own_id}}}"
        )


class RestSettings(TargetSettings, Operations):
    base_url: str = Field(pattern=r"^https?://[^?#]+$")
    auth: BearerAuth | BasicAuth | HeaderAuth | NoAuth = Field(
        default=NoAuth(), discriminator="type"
    )
    headers: dict[str, SecretStr] = Field(default={}, description="sent with every request")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    call_timeout: float = Field(default=60.0, gt=0, description="total bound on one request")
    cleared_fields: Literal["send_null", "leave_out"] = Field(
        default="send_null", description="how a field emptied in Mimeeq is cleared"
    )
    verify: bool = Field(default=True, description="check the server's TLS certificate")
    ca_bundle: ConfigPath | None = Field(default=None, description="PEM file of trusted CAs")
    max_connections: int = Field(default=8, ge=1, le=100, description="requests in flight")
    call_attempts: int = Field(default=3, ge=1, le=10, description="tries within one push")
    rate_limit: RateLimit | None = None
    idempotency_header: str | None = Field(default="Idempotency-Key", min_length=1)

    # The contacts' requests are the top-level ones (from Operations); the companies' are here.
    companies: CompanyOperations | None = Field(
        default=None, description="the requests for companies (with company_mapping)"
    )

    success: list[StatusCode] = ["2xx"]
    retry_on: list[StatusCode] = [408, 425, 429, "5xx"]
    dead_on: list[StatusCode] = ["4xx"]
    pause_on: list[StatusCode] = [401, 403]

    _status: StatusRules = PrivateAttr()

    @field_validator("ca_bundle")
    @classmethod
    def _readable(cls, value: ConfigPath | None) -> ConfigPath | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.company_mapping is not None and self.companies is None:
            raise ValueError("company_mapping needs a `companies:` block: the company requests")
        if self.companies is not None and self.company_mapping is None:
            raise ValueError("`companies:` needs a company_mapping: how companies are mapped")
        if self.ca_bundle and not self.verify:
            raise ValueError("ca_bundle needs verify: true")
        self._status = StatusRules(self.success, self.retry_on, self.dead_on, self.pause_on)
        if self.batch_size is None:  # single requests: a push stays well inside push_timeout
            self.batch_size = self.batch.max_size if self.batch else 100
        return self

    def status_kind(self, status: int) -> StatusKind:
        return self._status.kind(status)

    def operations(self, object_type: ObjectType) -> Operations | None:
        """The requests for a record of this kind; None: companies, and no ``companies:``."""
        return self.companies if object_type == "company" else self
