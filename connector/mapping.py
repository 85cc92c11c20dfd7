"""Mapping files: how a Mimeeq payload becomes the record a target receives.

A mapping is a YAML file (or the same shape inline in ``config.yaml``)::

    extends: base.yaml        # optional: start from another mapping (relative to this file);
                              # fields here override it, ``name: null`` removes an inherited field
    description: free text    # optional
    fields:
      firstname: firstName                        # a JMESPath expression: shorthand for {from: ...}
      email: "(emails[?type=='WORK'].mail | [0]) || emails[0].mail"
      mimeeq_tags: {from: tags, join: ";"}
      hs_lead_status: {from: status, map: {ACTIVE: OPEN, INACTIVE: UNQUALIFIED}, default: NEW}
      lead_source: {value: Mimeeq}

Each field takes exactly one source, then the transforms it names, always in this order:

============  ===============================================================================
option        effect
============  ===============================================================================
from          source: a JMESPath expression evaluated on the payload
value         source: a constant (any YAML scalar, list or object)
template      source: text with ``{expr}`` JMESPath placeholders; ``{{`` and ``}}`` are literal
              braces. Strings render as they are, other values as JSON, missing values as "";
              if every placeholder is missing the field is missing.
join          separator: a list becomes one string; null/empty items are skipped, other
              scalars rendered as in templates; a nested list or object fails the record
trim          true: strip surrounding whitespace
map           {value: replacement}: values not listed pass through, or become ``default``
              when it is set
phone         e164 | international | national (``phonenumbers``); a number that does not
              parse passes through unchanged
phone_region  ISO region (GB, US...) for numbers written without +country; default none
country       alpha2 | alpha3 | name (``pycountry``; name is the common name when ISO has
              one); accepts names, codes and common names in any case; unknown: unchanged
case          lower | upper | title | capitalize
max_length    truncate text to this many characters
default       the value when the result is missing (used as written, never transformed)
============  ===============================================================================

"Missing" means null, "" or []: a missing field is left out of the record unless it has a
``default``. Transforms that work on text (trim, phone, country, case, max_length) leave other
values unchanged. Everything compiles once at load: a bad file raises one ``MappingError`` whose
``problems`` name, for every field at fault, the file, line, field and problem; at run time
``apply`` raises only ``RecordMappingError``.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import copy
import difflib
import functools
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import phonenumbers
import pycountry
import yaml
from jmespath.exceptions import JMESPathError

from connector.errors import MappingError, RecordMappingError
from connector.jmespath_compiler import Getter, compile_expression, describe_error

__all__ = ["FieldMapping", "StrictYamlLoader", "load_mapping"]

_TOP_LEVEL = ("extends", "description", "fields")
_OPTIONS = (
    "from", "value", "template", "join", "trim", "map", "phone", "phone_region",
    "country", "case", "max_length", "default",
)  # fmt: skip
_SOURCES = ("from", "value", "template")
_PHONE_FORMATS = {
    "e164": phonenumbers.PhoneNumberFormat.E164,
    "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    "national": phonenumbers.PhoneNumberFormat.NATIONAL,
}
_COUNTRY_STYLES = ("alpha2", "alpha3", "name")
_CASES = {"lower": str.lower, "upper": str.upper, "title": str.title, "capitalize": str.capitalize}
# Everyday names that ISO 3166 (and so pycountry) does not list.
_COUNTRY_ALIASES = {
    "uk": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "america": "US", "russia": "RU", "turkey": "TR",
    "holland": "NL", "the netherlands": "NL", "ivory coast": "CI", "macedonia": "MK",
    "swaziland": "SZ", "uae": "AE", "cape verde": "CV", "east timor": "TL", "vatican": "VA",
    "vatican city": "VA", "burma": "MM", "palestine": "PS", "brunei": "BN", "micronesia": "FM",
}  # fmt: skip


class FieldMapping:
    """A compiled mapping: ``apply`` turns one payload into one record."""

    __slots__ = ("_steps", "fields", "source")

    def __init__(self, source: str, steps: list[tuple[str, Getter, bool]]) -> None:
        self.source = source
        self.fields: tuple[str, ...] = tuple(name for name, _, _ in steps)
        self._steps = tuple(steps)  # (field, getter, keep even when missing: has a default)

    def __repr__(self) -> str:
        return f"FieldMapping({self.source!r}, fields={self.fields!r})"

    def apply(self, payload: cabc.Mapping[str, Any]) -> dict[str, Any]:
        """The mapped record, keys in ``fields`` order; missing values are left out."""
        record: dict[str, Any] = {}
        name = ""
        try:
            for name, get, keep in self._steps:
                value = get(payload)
                # Missing (null, "", []) is left out; `value or` spares truthy values the tests.
                if keep or value or not (value is None or value == "" or value == []):
                    record[name] = value
        except _RecordProblem as exc:
            raise RecordMappingError(name, str(exc)) from None
        except Exception as exc:  # a JMESPath function or comparison rejected this payload
            raise RecordMappingError(name, f"expression failed: {exc}") from exc
        return record


def load_mapping(
    spec: str | Path | dict[str, Any],
    base_dir: Path,
    *,
    origin: str = "mapping",
    check_path: cabc.Callable[[str], list[str]] | None = None,
    located: tuple[str, str, _Lines] | None = None,
) -> FieldMapping:
    """Load and compile a mapping file (``spec`` a path, relative to ``base_dir``) or an inline
    mapping (``spec`` a dict whose ``extends`` is relative to ``base_dir``; ``origin`` labels it
    in errors). Every field is compiled even after one fails, so the MappingError raised lists
    every problem (``problems``), each as ``file:line: fields.name: problem``. ``check_path``
    returns the problems of one ``from`` expression (``check``: fields the payload never has).
    ``located`` is where an inline mapping is: (file, key, lines of its keys under that key)."""
    problems: list[MappingError] = []
    fields: _Fields = {}
    source = f"{origin} (inline)" if isinstance(spec, dict) else str(spec)
    inline = isinstance(spec, dict) and located is not None
    file, key, lines = located if located and inline else (None, "", {})
    try:
        if isinstance(spec, dict):
            fields = _resolve(spec, source, base_dir, "", (), lines, problems, (file, key))
        else:
            path = Path(spec)
            fields = _load_file(path if path.is_absolute() else base_dir / path, source, (),
                                problems)  # fmt: skip
        if not fields and not problems:
            raise MappingError(source, None, "the mapping defines no fields")
    except MappingError as exc:  # the file as a whole is unusable: its fields cannot be known
        problems.append(exc)
    steps = []
    for name, (field_source, field_spec, line) in fields.items():
        at = (file, key) if field_source == source else (None, "")
        try:
            get, keep = _compile_field(field_source, name, field_spec)
        except MappingError as exc:
            problems.append(_Located(field_source, name, exc.problem, line, at))
            continue
        steps.append((name, get, keep))
        expression = field_spec if isinstance(field_spec, str) else field_spec.get("from")
        for problem in check_path(expression) if check_path else ():
            problems.append(_Located(field_source, name, problem, line, at))
    if problems:
        raise _Problems(problems)
    return FieldMapping(source, steps)


class _Located(MappingError):
    """A MappingError that names the line of its file, when it is known."""

    def __init__(
        self,
        source: str,
        field: str | None,
        problem: str,
        line: int | None,
        at: tuple[str | None, str] = (None, ""),  # an inline mapping's file and key
    ) -> None:
        super().__init__(source, field, problem)
        self.line = line
        if line is not None:
            file, key = at
            keys = ".".join(part for part in (key, f"fields.{field}" if field else "") if part)
            self.problems = [": ".join(p for p in (f"{file or source}:{line}", keys, problem) if p)]
            self.args = (self.problems[0],)


class _Problems(MappingError):
    """Every problem of a mapping; its attributes are the first one's (one error, one line)."""

    def __init__(self, errors: list[MappingError]) -> None:
        first = errors[0]
        super().__init__(first.source, first.field, first.problem)
        self.problems = [problem for error in errors for problem in error.problems]
        self.args = ("\n".join(self.problems),)


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """The line (1-based) of every key and list item of a YAML document, by its path."""
    lines: dict[tuple[str | int, ...], int] = {}

    def index(node: yaml.Node | None, loc: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*loc, key.value)] = key.start_mark.line + 1
                index(value, (*loc, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*loc, i)] = item.start_mark.line + 1
                index(item, (*loc, i))

    with contextlib.suppress(yaml.YAMLError):  # the caller's own parse reports it
        index(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return lines


# --- Loading files, extends -------------------------------------------------------------------

_Fields = dict[str, tuple[str, Any, int | None]]  # field -> (file defining it, raw spec, line)
_Chain = tuple[tuple[Path, str], ...]  # files being loaded: (resolved path, label)
_Lines = dict[tuple[str | int, ...], int]


class StrictYamlLoader(yaml.SafeLoader):
    """Safe YAML, stricter where mapping files get bitten: a key written twice is an error (not a
    silent override), only true/false are booleans (``map: {no: No}`` keeps the text 'no') and
    dates stay text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


_BOOL_TAG, _TIMESTAMP_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"
StrictYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictYamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_file(path: Path, source: str, chain: _Chain, problems: list[MappingError]) -> _Fields:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(source, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(source, None, f"cannot read the file: {exc}") from None
    loader = StrictYamlLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MappingError(source, None, f"invalid YAML{where}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise MappingError(source, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    label_dir = os.path.dirname(source)
    chain = (*chain, (path.resolve(), source))
    return _resolve(document, source, path.parent, label_dir, chain, key_lines(text), problems)


def _resolve(
    document: Any,
    source: str,
    base_dir: Path,
    label_dir: str,
    chain: _Chain,
    lines: _Lines,
    problems: list[MappingError],
    at: tuple[str | None, str] = (None, ""),
) -> _Fields:
    """The fields of one mapping document, with whatever it extends merged underneath. Problems
    that leave the fields knowable are collected in ``problems``; the others are raised."""

    def report(loc: tuple[str, ...], field: str | None, problem: str) -> None:
        problems.append(_Located(source, field, problem, lines.get(loc), at))

    if not isinstance(document, dict):
        got = "an empty file" if document is None else _type_name(document)
        raise MappingError(source, None, f"expected a mapping with a 'fields' key, got {got}")
    for key in document:
        if key not in _TOP_LEVEL:
            close = difflib.get_close_matches(str(key), _TOP_LEVEL, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(_TOP_LEVEL)
            report((key,), None, f"unknown top-level key {key!r} (allowed: {allowed}){hint}")
    if not isinstance(document.get("description") or "", str):
        report(("description",), None, "'description' must be text")
    extends, fields = document.get("extends"), document.get("fields")

    merged: _Fields = {}
    if extends is not None:
        if not isinstance(extends, str) or not extends.strip():
            raise MappingError(source, None, "'extends' must be the path of a mapping file")
        target = base_dir / extends
        label = os.path.normpath(os.path.join(label_dir, extends))
        resolved = target.resolve()
        if any(seen == resolved for seen, _ in chain):
            cycle = " -> ".join([*(name for _, name in chain), label])
            raise MappingError(source, None, f"'extends' makes a cycle: {cycle}")
        if not target.is_file():
            problem = f"'extends' file not found: {label} (looked for {resolved})"
            raise _Located(source, None, problem, lines.get(("extends",)), at)
        merged = _load_file(target, label, chain, problems)
    elif fields is None:
        raise MappingError(source, None, "no 'fields' given")

    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise MappingError(source, None, f"'fields' must be a mapping, got {_type_name(fields)}")
    for name, spec in fields.items():
        line = lines.get(("fields", name))
        if not isinstance(name, str) or not name.strip():
            problem = f"fields: names must be non-empty text, got {name!r}"
            problems.append(_Located(source, None, problem, line, at))
        elif spec is not None:
            merged[name] = (source, spec, line)  # an override keeps the inherited field's place
        elif name in merged:
            del merged[name]
        else:
            problem = "null removes an inherited field, but no extended mapping defines it"
            problems.append(_Located(source, name, problem, line, at))
    return merged


# --- Compiling one field ----------------------------------------------------------------------


_UNLISTED = object()  # a value that ``map`` did not list, when a default replaces it


class _RecordProblem(Exception):
    """A transform cannot handle this payload's value; ``apply`` names the field."""


def _compile_field(source: str, name: str, spec: Any) -> tuple[Getter, bool]:
    """The field's getter (source plus only the transforms it uses) and whether it has a default."""

    def fail(problem: str) -> MappingError:
        return MappingError(source, name, problem)

    if isinstance(spec, str):
        spec = {"from": spec}
    if not isinstance(spec, dict):
        got = _type_name(spec)
        raise fail(f"expected a JMESPath expression or an object of options, got {got}")
    for key in spec:
        if key not in _OPTIONS:
            close = difflib.get_close_matches(str(key), _OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise fail(f"unknown option {key!r} (allowed: {', '.join(_OPTIONS)}){hint}")
    sources = [key for key in _SOURCES if key in spec]
    if not sources:
        raise fail("no source: give one of from, value, template")
    if len(sources) > 1:
        raise fail(f"two sources given ({' and '.join(sources)}): give exactly one")

    def option(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = spec[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise fail(f"option {key!r} must be {what}, got {_type_name(value)} {value!r}")
        return value

    def choice(key: str, choices: cabc.Iterable[str]) -> str:
        value = spec[key]
        if not isinstance(value, str) or value not in choices:
            raise fail(f"option {key!r} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def constant(key: str) -> Any:
        if not _is_json(spec[key]):
            raise fail(f"option {key!r} must be plain JSON-like data (text, numbers, lists...)")
        return spec[key]

    if "from" in spec:
        expression = option("from", str, "a JMESPath expression (text)")
        try:
            get = compile_expression(expression)
        except JMESPathError as exc:
            problem = describe_error(exc)
            raise fail(f"invalid JMESPath expression {expression!r}: {problem}") from None
    elif "value" in spec:
        get = _constant(constant("value"))
    else:
        get = _template(option("template", str, "text"), fail)

    transforms: list[Getter] = []
    has_default = "default" in spec
    default = constant("default") if has_default else None
    if "join" in spec:
        transforms.append(_join(option("join", str, "the separator text")))
    if "trim" in spec and option("trim", bool, "true or false"):
        transforms.append(lambda v: v.strip() if isinstance(v, str) else v)
    if "map" in spec:
        table = option("map", dict, "an object of value: replacement")
        if not _is_json(list(table.values())):
            raise fail("option 'map': replacements must be plain JSON-like data")
        transforms.append(_map(table, has_default))
    if "phone" in spec:
        region = None
        if "phone_region" in spec:
            region = option("phone_region", str, "an ISO region code such as GB").upper()
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise fail(f"option 'phone_region': unknown region {spec['phone_region']!r}")
        transforms.append(_phone(_PHONE_FORMATS[choice("phone", _PHONE_FORMATS)], region))
    elif "phone_region" in spec:
        raise fail("option 'phone_region' needs 'phone'")
    if "country" in spec:
        transforms.append(_country(choice("country", _COUNTRY_STYLES)))
    if "case" in spec:
        to_case = _CASES[choice("case", _CASES)]
        transforms.append(lambda v: to_case(v) if isinstance(v, str) else v)
    if "max_length" in spec:
        limit = option("max_length", int, "a whole number")
        if limit < 1:
            raise fail(f"option 'max_length' must be at least 1, got {limit}")
        transforms.append(lambda v: v[:limit] if isinstance(v, str) else v)

    get = _compose(get, transforms)
    return (_with_default(get, default) if has_default else get), has_default


def _compose(source: Getter, transforms: list[Getter]) -> Getter:
    if not transforms:
        return source
    if len(transforms) == 1:
        (transform,) = transforms
        return lambda payload: transform(source(payload))

    def run(payload: Any) -> Any:
        value = source(payload)
        for transform in transforms:
            value = transform(value)
        return value

    return run


def _with_default(get: Getter, default: Any) -> Getter:
    def field(payload: Any) -> Any:
        value = get(payload)
        if value is None or value == "" or value == [] or value is _UNLISTED:
            return _copy(default)
        return value

    return field


def _constant(value: Any) -> Getter:
    if isinstance(value, list | dict):
        return lambda payload: copy.deepcopy(value)  # records must not share mutable values
    return lambda payload: value


def _copy(value: Any) -> Any:
    return copy.deepcopy(value) if isinstance(value, list | dict) else value


def _to_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- Templates --------------------------------------------------------------------------------


def _template(text: str, fail: cabc.Callable[[str], MappingError]) -> Getter:
    """Compile ``{expr}`` placeholders to JMESPath getters. Only JMESPath ever sees the payload,
    never ``str.format``: a placeholder such as ``{__class__}`` is just a field that is missing."""
    parts: list[tuple[str, Getter]] = []  # (literal text before, placeholder)
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{}" and text.startswith(char * 2, i):
            literal.append(char)
            i += 2
        elif char == "}":
            raise fail(f"template: single '}}' at position {i} (write '}}}}' for a literal brace)")
        elif char != "{":
            literal.append(char)
            i += 1
        else:
            # The placeholder ends at the first '}' that closes a valid expression, so an
            # expression may hold braces of its own: {{x: a}.x} or {'}'}.
            end, first_error = text.find("}", i + 1), None
            shortest = text[i : end + 1]
            while end != -1:
                try:
                    parts.append(("".join(literal), compile_expression(text[i + 1 : end])))
                    break
                except JMESPathError as exc:
                    first_error = first_error or exc
                    end = text.find("}", end + 1)
            if end == -1:
                if first_error is None:
                    raise fail(f"template: '{{' at position {i} is never closed")
                problem = describe_error(first_error)
                raise fail(f"template: invalid JMESPath expression in {shortest}: {problem}")
            literal, i = [], end + 1
    tail = "".join(literal)
    if not parts:
        return _constant(tail)

    def render(payload: Any) -> Any:
        out: list[str] = []
        found = False
        for before, get in parts:
            out.append(before)
            value = get(payload)
            if not (value is None or value == "" or value == []):
                found = True
                out.append(_to_text(value))
        if not found:
            return None
        out.append(tail)
        return "".join(out)

    return render


# --- Transforms -------------------------------------------------------------------------------


def _join(separator: str) -> Getter:
    def join(value: Any) -> Any:
        if isinstance(value, dict):
            raise _RecordProblem("join: expected a list, got an object")
        if not isinstance(value, list):
            return value
        texts = []
        for item in value:
            if item is None or item == "" or item == []:
                continue
            if isinstance(item, list | dict):
                raise _RecordProblem(f"join: cannot join a nested {_type_name(item)}")
            texts.append(_to_text(item))
        return separator.join(texts)

    return join


def _map(table: dict[Any, Any], has_default: bool) -> Getter:
    # With a default, an unlisted value becomes _UNLISTED: later transforms leave it alone (it
    # is not text) and _with_default swaps in the default, untransformed like any default.
    unlisted = _UNLISTED if has_default else None

    def map_(value: Any) -> Any:
        if value is None or value == "" or value == []:
            return value  # missing stays missing: ``default`` is applied last
        if not isinstance(value, list | dict):  # lists and objects are never map keys
            try:
                return _copy(table[value])
            except KeyError:
                pass
        return unlisted or value

    return map_


def _phone(style: int, region: str | None) -> Getter:
    def phone(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            return value
        if not phonenumbers.is_possible_number(number):
            return value
        return phonenumbers.format_number(number, style)

    return phone


def _fold(text: str) -> str:
    # "  Côte d'Ivoire " and "cote d'ivoire" are the same country.
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


@functools.cache
def _countries() -> dict[str, Any]:
    index: dict[str, Any] = {}
    for country in pycountry.countries:
        for attr in ("alpha_2", "alpha_3", "name", "common_name", "official_name"):
            if value := getattr(country, attr, None):
                index.setdefault(_fold(value), country)
    for alias, code in _COUNTRY_ALIASES.items():
        index.setdefault(alias, pycountry.countries.get(alpha_2=code))
    return index


def _country(style: str) -> Getter:
    index = _countries()

    def country(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        found = index.get(_fold(value))
        if found is None:
            return value
        if style == "alpha2":
            return found.alpha_2
        if style == "alpha3":
            return found.alpha_3
        return getattr(found, "common_name", found.name)

    return country


# --- Small helpers ----------------------------------------------------------------------------


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "list", str: "text", bool: "boolean", int: "number"}
    return names.get(type(value), "number" if isinstance(value, float) else type(value).__name__)


def field_options(spec: str | Path | dict[str, Any], base_dir: Path) -> dict[str, dict[str, Any]]:
    """Each field's options as written (``extends`` merged; a bare expression as ``{from: ...}``),
    for tools that look at the values a field can take (``hubspot check``: its map, default,
    value). ``spec`` and ``base_dir`` as for ``load_mapping``, which is what reports problems."""
    problems: list[MappingError] = []
    if isinstance(spec, dict):
        fields = _resolve(spec, "mapping (inline)", base_dir, "", (), {}, problems)
    else:
        path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
        fields = _load_file(path, str(spec), (), problems)
    return {
        name: copy.deepcopy({"from": raw} if isinstance(raw, str) else raw)
        for name, (_, raw, _) in fields.items()
        if isinstance(raw, str | dict)
    }
