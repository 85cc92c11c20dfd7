"""What only ``check`` looks at: mapping paths against the Mimeeq payload schemas.

A JMESPath path that names a field the payload never has (``fristName``, ``addressDetails.zip``)
compiles, runs, and leaves the column empty forever. ``path_problems`` walks the expression's
parse tree alongside the schema derived from the TypedDicts in ``connector/payloads.py`` (so a
field added there is known here at once) and names each field that can never match. Where the
walk cannot follow (function results, literals, ``&expr`` arguments) it accepts silently: a false
error would teach people to ignore ``check``.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jmespath.exceptions import JMESPathError
from jmespath.parser import Parser
from typing_extensions import is_typeddict

from connector.payloads import CompanyPayload, ContactPayload


@dataclass(frozen=True)
class Shape:
    """What a value can be: an object with known fields, a list of items, a scalar, or unknown."""

    kind: str  # "object" | "list" | "scalar" | "any"
    name: str  # how messages call it: "the contact payload", "addressDetails", "emails[]"
    fields: dict[str, Shape] = field(default_factory=dict)
    item: Shape | None = None


ANY = Shape("any", "")


def shape_of(tp: Any, name: str) -> Shape:
    """The shape of a payload type: TypedDicts (nested, in lists), optional values, scalars."""
    if is_typeddict(tp):
        hints = typing.get_type_hints(tp)  # NotRequired and Annotated stripped
        return Shape("object", name, {k: shape_of(v, k) for k, v in hints.items()})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        return shape_of(kept[0], name) if len(kept) == 1 else ANY
    if origin is list and args:
        return Shape("list", name, item=shape_of(args[0], f"{name}[]"))
    if tp in (str, int, float, bool):
        return Shape("scalar", name)
    return ANY  # dict[str, object], object...: anything goes


CONTACT_SHAPE = shape_of(ContactPayload, "the contact payload")
COMPANY_SHAPE = shape_of(CompanyPayload, "the company payload")
# Which payload each mapping key of a target maps.
SHAPES = {"mapping": CONTACT_SHAPE, "company_mapping": COMPANY_SHAPE}


def path_checker(shape: Shape) -> Callable[[str], list[str]]:
    return lambda expression: path_problems(expression, shape)


def path_problems(expression: str, shape: Shape) -> list[str]:
    """The fields of ``expression`` that ``shape`` never has (empty: fine, or cannot tell)."""
    try:
        tree: Any = Parser().parse(expression).parsed  # jmespath's nodes: plain dicts
    except JMESPathError:
        return []  # reported by the compiler
    problems: list[str] = []
    _walk(tree, shape, problems)
    return list(dict.fromkeys(problems))


# Nodes whose children are all evaluated on the current value.
_EACH_CHILD_ON_CURRENT = frozenset(
    {
        "comparator", "and_expression", "or_expression", "not_expression", "multi_select_list",
        "multi_select_dict", "key_val_pair", "function_expression",
    }
)  # fmt: skip


def _walk(node: dict[str, Any], at: Shape, problems: list[str]) -> Shape:
    """The shape ``node`` yields when evaluated on a value of shape ``at``."""
    kind, children = node["type"], node["children"]
    if kind == "field":
        return _field(at, node["value"], problems)
    if kind in ("current", "identity"):
        return at
    if kind in ("subexpression", "pipe"):
        return _walk(children[1], _walk(children[0], at, problems), problems)
    if kind == "index_expression":
        left = _walk(children[0], at, problems)
        if children[1]["type"] != "index":
            return left  # a slice: a list of the same items
        return _item(left, problems)
    if kind == "flatten":
        left = _walk(children[0], at, problems)
        if left.kind != "list" or left.item is None:
            return ANY
        inner = left.item.item if left.item.kind == "list" else left.item
        return Shape("list", left.name, item=inner)
    if kind in ("projection", "filter_projection"):
        left = _walk(children[0], at, problems)
        item = left.item if left.kind == "list" and left.item else ANY
        if kind == "filter_projection":
            _walk(children[2], item, problems)  # the condition, on each item
        return Shape("list", left.name, item=_walk(children[1], item, problems))
    if kind in _EACH_CHILD_ON_CURRENT:
        results = [_walk(child, at, problems) for child in children]
        if kind == "key_val_pair" or (kind == "or_expression" and results[0] == results[1]):
            return results[0]
        return ANY
    return ANY  # literals, &expr (applied to items we do not follow), value projections...


def _field(at: Shape, name: str, problems: list[str]) -> Shape:
    if at.kind == "object":
        if name in at.fields:
            return at.fields[name]
        close = difflib.get_close_matches(name, at.fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(f"{at.name} has no field {name!r}{hint}")
    elif at.kind == "list":
        problems.append(f"{at.name} is a list: use {at.name}[0].{name} or {at.name}[].{name}")
    elif at.kind == "scalar":
        problems.append(f"{at.name} is a single value: it has no field {name!r}")
    return ANY


def _item(left: Shape, problems: list[str]) -> Shape:
    if left.kind == "list":
        return left.item or ANY
    if left.kind in ("object", "scalar"):
        problems.append(f"{left.name} is not a list: it cannot be indexed")
    return ANY
