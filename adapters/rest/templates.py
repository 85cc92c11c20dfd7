"""REST templates: ``{name}`` placeholders in URLs and JSON bodies, and their values."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

import orjson
from jmespath.exceptions import JMESPathError
from pydantic import (
    AfterValidator,
)

from connector.adapter import Record
from connector.jmespath_compiler import Getter, compile_expression, describe_error
from connector.logs import get_logger

log = get_logger("adapters.rest")

RECORD, PAYLOAD = "$record", "$payload"  # body leaves standing for the whole mapped record/payload
# And fields.NAME. contact_id is for contact requests, company_id for company ones (settings).
NAMES = ("contact_id", "company_id", "tenant", "remote_id", "event", "event_id")
GONE = frozenset({404, 410})
SNIPPET = 1024  # bytes of an answer's body kept in a reason
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


# --- templates -----------------------------------------------------------------------------


class Missing(Exception):
    """A placeholder has no value for this record."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Whole:
    what: Literal["record", "payload"]


@dataclass(frozen=True, slots=True)
class Text:
    """A config string with ``{placeholder}``s, parsed once; ``{{`` and ``}}`` are braces."""

    parts: tuple[str | Var, ...]

    @classmethod
    def parse(cls, text: str) -> Text:
        parts: list[str | Var] = []
        pos = 0
        for match in [*_TOKEN.finditer(text), None]:
            literal = text[pos : match.start() if match else len(text)]
            if "{" in literal or "}" in literal:
                raise ValueError(f"unmatched brace in {text!r} (write {{{{ or }}}} for one)")
            parts.append(literal)
            if match:
                name = match.group(1)
                parts.append(match.group(0)[0] if name is None else Var(_known(name.strip())))
                pos = match.end()
        return cls(tuple(p for p in parts if p != ""))

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.parts if isinstance(p, Var)}

    @property
    def single(self) -> Var | None:
        """The placeholder when it is the whole string: its value keeps its JSON type."""
        return self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], Var) else None

    def render(
        self, values: Values, encode: Callable[[str], str] | None = None, *, url: bool = True
    ) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                text = _text(values.get(part.name, url=url))
                out.append(encode(text) if encode else text)
        return "".join(out)


def _known(name: str) -> str:
    if name in NAMES or (name.startswith("fields.") and len(name) > len("fields.")):
        return name
    known = ", ".join(f"{{{n}}}" for n in NAMES)
    raise ValueError(f"unknown placeholder {{{name}}} (known: {known}, {{fields.NAME}})")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _segment(text: str) -> str:
    """A value in a path stays one segment: ``/ ? # %`` are encoded, ``.``/``..`` too."""
    encoded = quote(text, safe="")
    return encoded.replace(".", "%2E") if set(text) <= {"."} else encoded


def compile_body(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(key): compile_body(value) for key, value in node.items()}
    if isinstance(node, list):
        return [compile_body(value) for value in node]
    if node in (RECORD, PAYLOAD) and isinstance(node, str):
        return Whole("record" if node == RECORD else "payload")
    return Text.parse(node) if isinstance(node, str) else node


_SKIP = object()


def render_body(node: Any, values: Values) -> Any:
    """The JSON body; a leaf whose placeholder has no value is left out, like a missing field."""
    if isinstance(node, dict):
        rendered = {k: render_body(v, values) for k, v in node.items()}
        return {k: v for k, v in rendered.items() if v is not _SKIP}
    if isinstance(node, list):
        return [v for v in (render_body(item, values) for item in node) if v is not _SKIP]
    if isinstance(node, Whole):
        return values.whole(node.what)
    if isinstance(node, Text):
        try:
            if node.single:
                return values.get(node.single.name, url=False)
            return node.render(values, url=False)
        except Missing:
            return _SKIP
    return node


def _body_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict | list):
        for item in node.values() if isinstance(node, dict) else node:
            yield from _body_names(item)
    elif isinstance(node, Text):
        yield from node.names


@dataclass(frozen=True, slots=True)
class Values:
    """What placeholders read: the tenant, and the record (absent for a batch's own URL) with the
    fields this request sends (``fields``; the whole mapped record when None)."""

    tenant: str
    record: Record | None = None
    remote_id: str | None = None
    fields: Mapping[str, Any] | None = None

    def get(self, name: str, *, url: bool = True) -> Any:
        """The value, or Missing. A mapped field set to null or "" is a value in a body (it
        clears the attribute), never in a URL."""
        is_field = name.startswith("fields.")
        if is_field:
            fields = self.sent
            value = fields.get(name.removeprefix("fields."), _SKIP)
        elif name == "tenant":
            value = self.tenant
        elif name == "remote_id":
            value = self.remote_id
        elif name in ("contact_id", "company_id"):
            # The record's Mimeeq id, under its kind's name only: a company has no contact id
            # (and a contact's company_id is the company it belongs to, not its own id).
            record = self.record
            kind = record.object_type if record else None
            value = record.contact_id if record and name == f"{kind}_id" else None
        else:
            value = getattr(self.record, name, None)
        blank = value is None or value == ""
        if value is _SKIP or (blank and (url or not is_field)):
            raise Missing(name)
        return value

    @property
    def sent(self) -> Mapping[str, Any]:
        if self.fields is not None:
            return self.fields
        return self.record.fields if self.record else {}

    def whole(self, what: str) -> Any:
        assert self.record is not None
        return dict(self.sent) if what == "record" else self.record.payload


# --- settings ------------------------------------------------------------------------------


def _template(value: str) -> str:
    Text.parse(value)
    return value


def _jmespath(value: str) -> str:
    try:
        compile_expression(value)
    except JMESPathError as exc:
        raise ValueError(f"invalid JMESPath {value!r}: {describe_error(exc)}") from None
    return value


def _body(value: Any) -> Any:
    compile_body(value)
    return value


Template = Annotated[str, AfterValidator(_template)]
JMESPath = Annotated[str, AfterValidator(_jmespath)]
BodyTemplate = Annotated[Any, AfterValidator(_body)]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


def _search(expression: Getter | None, data: Any) -> Any:
    return expression(data) if expression is not None and data is not None else None


def _remote_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    return str(value) if isinstance(value, str | int) else None
