"""The JMESPath compiler against stock jmespath, on expressions hypothesis writes itself.

``connector.jmespath_compiler`` re-implements jmespath's interpreter on its internals (the parse
tree's shape, ``FUNCTION_TABLE``, ``_Expression``), so pyproject.toml pins jmespath to the minor
release this suite passes on. Every generated expression is compiled once and run on several
generated payloads; the compiled getter must give the same value (by ``repr``: 1, 1.0 and true
differ) or raise the same exception type as ``jmespath.search``.
"""

from __future__ import annotations

from typing import Any

import jmespath
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.jmespath_compiler import compile_expression

KEYS = ["a", "b", "c", "type", "mail"]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from([0.0, -0.0, 1.0, 2.5]),
    st.sampled_from(["", "x", "WORK", "a", "b"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
PAYLOADS = st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5), min_size=4)

LITERALS = st.sampled_from(
    ["`1`", "`0`", "`1.0`", "`true`", "`false`", "`null`", "'x'", "'WORK'", "`\"\"`", "`[]`",
     "`{}`", "`[1, \"a\"]`", "`{\"a\": 1}`"]
)  # fmt: skip
BRACKETS = st.sampled_from(
    ["[0]", "[1]", "[-1]", "[*]", "[]", "[1:]", "[:1]", "[::-1]", "[-2:]", ".*"]
)
FIELDS = st.sampled_from(KEYS)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """Unparenthesised chains (a.b[0].c, a[*].b, a[?b].c), the usual shape in a mapping."""
    out = draw(FIELDS)
    for _ in range(draw(st.integers(0, 3))):
        step = draw(st.sampled_from(["field", "bracket", "filter"]))
        if step == "field":
            out += "." + draw(FIELDS)
        elif step == "bracket":
            out += draw(BRACKETS)
        else:
            op = draw(st.sampled_from(["==", "!=", "<", ">="]))
            out += f"[?{draw(FIELDS)} {op} {draw(LITERALS)}]"
    return out


# (template, arity): each {} is a sub-expression. Arity is always right: the compiler rejects a
# wrong one at compile time, where jmespath only fails when the call is reached.
FUNCTIONS = [
    ("length({})", 1), ("to_string({})", 1), ("type({})", 1), ("keys({})", 1), ("values({})", 1),
    ("sort({})", 1), ("to_array({})", 1), ("to_number({})", 1), ("abs({})", 1), ("sum({})", 1),
    ("reverse({})", 1), ("max({})", 1), ("not_null({}, {})", 2), ("contains({}, {})", 2),
    ("starts_with({}, {})", 2), ("join(', ', {})", 1), ("sort_by({}, &b)", 1),
    ("max_by({}, &a)", 1), ("map(&b, {})", 1), ("merge({}, {})", 2), ("to_array({})[0]", 1),
]  # fmt: skip


def combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # Sub-expressions are parenthesised, so precedence never decides what is generated.
    two = st.tuples(inner, inner)
    return st.one_of(
        two.map(lambda p: f"({p[0]}) || ({p[1]})"),
        two.map(lambda p: f"({p[0]}) && ({p[1]})"),
        inner.map(lambda x: f"!({x})"),
        st.tuples(inner, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), inner).map(
            lambda p: f"({p[0]}) {p[1]} ({p[2]})"
        ),
        two.map(lambda p: f"({p[0]}) | ({p[1]})"),
        st.tuples(inner, BRACKETS).map(lambda p: f"({p[0]}){p[1]}"),
        st.tuples(inner, FIELDS).map(lambda p: f"({p[0]}).{p[1]}"),
        two.map(lambda p: f"({p[0]})[?{p[1]}]"),
        two.map(lambda p: f"[({p[0]}), ({p[1]})]"),
        two.map(lambda p: f"{{x: ({p[0]}), y: ({p[1]})}}"),
        st.tuples(st.sampled_from(FUNCTIONS), st.lists(inner, min_size=2, max_size=2)).map(
            lambda p: p[0][0].format(*(f"({x})" for x in p[1][: p[0][1]]))
        ),
    )


EXPRESSIONS = st.recursive(st.one_of(paths(), LITERALS, st.just("@")), combine, max_leaves=6)


def outcome(run: Any) -> tuple[str, str]:
    try:
        return ("value", repr(run()))
    except Exception as exc:
        return ("error", type(exc).__name__)


@settings(max_examples=600, deadline=None)
@given(expression=EXPRESSIONS, payloads=PAYLOADS)
def test_compiled_expression_matches_jmespath(expression: str, payloads: list[Any]) -> None:
    parsed = jmespath.compile(expression)
    compiled = compile_expression(expression)
    options = jmespath.Options(dict_cls=dict)
    for payload in payloads:
        expected = outcome(lambda p=payload: parsed.search(p, options=options))
        assert outcome(lambda p=payload: compiled(p)) == expected, (expression, payload)
