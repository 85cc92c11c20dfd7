"""Mapping files: sources, transforms, extends, load errors, run-time errors, and the JMESPath
compiler checked against ``jmespath.search`` itself."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import MappingError, RecordMappingError
from connector.jmespath_compiler import compile_expression
from connector.mapping import FieldMapping, load_mapping

DATA = Path(__file__).parent.parent / "data"
REPO = Path(__file__).parent.parent.parent


@pytest.fixture
def created() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((DATA / "contact-created.json").read_text())
    return payload


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def inline(tmp_path: Path, fields: dict[str, Any]) -> FieldMapping:
    return load_mapping({"fields": fields}, tmp_path, origin="config.yaml: tenants.t.mapping")


def one(tmp_path: Path, spec: Any, payload: dict[str, Any]) -> Any:
    """Map a single field ``f``; returns its value, or ``MISSING`` when the field is left out."""
    return inline(tmp_path, {"f": spec}).apply(payload).get("f", "MISSING")


def load_error(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    write(tmp_path, name, text)
    with pytest.raises(MappingError) as info:
        load_mapping(name, tmp_path)
    return str(info.value)


def inline_error(tmp_path: Path, spec: Any) -> str:
    with pytest.raises(MappingError) as info:
        load_mapping(spec, tmp_path, origin="config.yaml: tenants.t.mapping")
    return str(info.value)


# --- The example mapping, on the example payloads ---------------------------------------------

EXAMPLE = """\
    fields:
      firstname: firstName
      email: "(emails[?type=='WORK'].mail | [0]) || emails[0].mail"
      mimeeq_tags: {from: tags, join: ";"}
      hs_lead_status: {from: status, map: {ACTIVE: OPEN, INACTIVE: UNQUALIFIED}, default: NEW}
      lead_source: {value: Mimeeq}
      full_name: {template: "{firstName} {lastName}", trim: true}
      phone: {from: "phoneNumbers[0].number", phone: e164, phone_region: US}
      country: {from: addressDetails.country, country: alpha2}
"""


def test_example_mapping_on_contact_created(tmp_path: Path, created: dict[str, Any]) -> None:
    write(tmp_path, "hubspot.yaml", EXAMPLE)
    mapping = load_mapping("hubspot.yaml", tmp_path)
    assert mapping.source == "hubspot.yaml"
    assert mapping.fields == (
        "firstname", "email", "mimeeq_tags", "hs_lead_status", "lead_source", "full_name",
        "phone", "country",
    )  # fmt: skip
    record = mapping.apply(created)
    assert record == {
        "firstname": "John",
        "email": "john.doe@example.com",
        "mimeeq_tags": "tag1;tag2",
        "hs_lead_status": "OPEN",
        "lead_source": "Mimeeq",
        "full_name": "John Doe",
        "phone": "+11234567890",
        "country": "Example Country",  # not a country: passes through unchanged
    }
    assert list(record) == list(mapping.fields)


def test_example_mapping_on_contact_deleted(tmp_path: Path) -> None:
    write(tmp_path, "hubspot.yaml", EXAMPLE)
    deleted = json.loads((DATA / "contact-deleted.json").read_text())
    assert load_mapping("hubspot.yaml", tmp_path).apply(deleted) == {
        "email": "john.doe@example.com",
        "hs_lead_status": "NEW",
        "lead_source": "Mimeeq",
    }


def test_example_payloads_are_the_reference_ones() -> None:
    reference = Path("/work/shared/reference/mimeeq/examples")
    for name in ("contact-created.json", "contact-updated.json", "contact-deleted.json"):
        payload = json.loads((DATA / name).read_text())
        assert payload["id"].startswith("CONT-")
        if reference.is_dir():
            assert payload == json.loads((reference / name).read_text())


def test_shipped_csv_mapping() -> None:
    mapping = load_mapping("mappings/csv-contacts.yaml", REPO)
    assert mapping.fields == (
        "first_name", "last_name", "email", "phone", "company_id", "status", "street", "city",
        "zip", "country", "position", "tags",
    )  # fmt: skip
    updated = json.loads((DATA / "contact-updated.json").read_text())
    assert mapping.apply(updated) == {
        "first_name": "John",
        "last_name": "Doe",
        "email": "john.doe@example.com",
        "phone": "123-456-7890",
        "company_id": "COMP-ebf7b5c3-b50c-43a0-9d01-7ef5c25612ac",
        "status": "ACTIVE",
        "street": "123 Example Street",
        "city": "Example City",
        "zip": "12345",
        "country": "Example Country",
        "position": "Manager",
        "tags": "tag1; tag2",
    }
    created = json.loads((DATA / "contact-created.json").read_text())
    assert "position" not in mapping.apply(created)


# --- Sources ----------------------------------------------------------------------------------


def test_from_and_its_shorthand(tmp_path: Path, created: dict[str, Any]) -> None:
    mapping = inline(tmp_path, {"a": "addressDetails.city", "b": {"from": "phoneNumbers[0].type"}})
    assert mapping.apply(created) == {"a": "Example City", "b": "PRIVATE"}
    assert mapping.source == "config.yaml: tenants.t.mapping (inline)"


def test_work_email_first_else_the_first(tmp_path: Path) -> None:
    spec = "(emails[?type=='WORK'].mail | [0]) || emails[0].mail"
    emails = [{"type": "PRIVATE", "mail": "p@x"}, {"type": "WORK", "mail": "w@x"}]
    assert one(tmp_path, spec, {"emails": emails}) == "w@x"
    assert one(tmp_path, spec, {"emails": emails[:1]}) == "p@x"
    assert one(tmp_path, spec, {"emails": []}) == "MISSING"
    assert one(tmp_path, spec, {}) == "MISSING"


@pytest.mark.parametrize("value", ["text", 0, 1.5, False, True, ["a", 1], {"k": [1, {"n": None}]}])
def test_value_constants(tmp_path: Path, value: Any) -> None:
    assert one(tmp_path, {"value": value}, {}) == value


def test_mutable_constants_are_not_shared_between_records(tmp_path: Path) -> None:
    mapping = inline(tmp_path, {"v": {"value": {"k": [1]}}, "d": {"from": "x", "default": [1]}})
    first = mapping.apply({})
    first["v"]["k"].append(2)
    first["d"].append(2)
    assert mapping.apply({}) == {"v": {"k": [1]}, "d": [1]}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{firstName} {lastName}", "John Doe"),
        ("Hi {firstName}!", "Hi John!"),
        ("{{literal}} {firstName}", "{literal} John"),
        ("}}{firstName}{{", "}John{"),
        ("{firstName}/{nothing}/", "John//"),  # a missing placeholder renders as ""
        ("{tags}", '["tag1", "tag2"]'),  # non-strings render as JSON
        ("{tags[0]}-{`3`}-{`true`}-{`null`}", "tag1-3-true-"),
        ("{ {x: firstName}.x }", "John"),  # braces inside the expression
        ("{'}'}{firstName}", "}John"),
        ("{emails[?type=='WORK'].mail | [0]}", "john.doe@example.com"),
        ("no placeholders", "no placeholders"),
        ("{nothing} {none}", "MISSING"),  # every placeholder missing: the field is missing
    ],
)
def test_templates(tmp_path: Path, created: dict[str, Any], template: str, expected: str) -> None:
    assert one(tmp_path, {"template": template}, created) == expected


def test_template_then_trim_and_default(tmp_path: Path) -> None:
    spec = {"template": "{firstName} {lastName}", "trim": True, "default": "Unknown"}
    assert one(tmp_path, spec, {"firstName": "Ann"}) == "Ann"
    assert one(tmp_path, spec, {"firstName": "", "lastName": None}) == "Unknown"


@pytest.mark.parametrize(
    "template",
    [
        "{__class__}",
        "{__class__.__init__.__globals__}",
        "{firstName.__class__}",
        "{__dict__}{__module__}{__builtins__}",
        "{@.__class__}",
    ],
)
def test_templates_never_reach_python_internals(tmp_path: Path, template: str) -> None:
    # Placeholders are JMESPath: dunder names are just fields that the payload lacks.
    assert one(tmp_path, {"template": template}, {"firstName": "John"}) == "MISSING"
    # ...and only payload data can fill them.
    assert one(tmp_path, {"template": "{__class__}"}, {"__class__": "data"}) == "data"


@pytest.mark.parametrize("template", ["{0.__class__}", "{0}", "{firstName!r}", "{a.__class__()}"])
def test_python_format_syntax_is_rejected_at_load(tmp_path: Path, template: str) -> None:
    message = inline_error(tmp_path, {"fields": {"f": {"template": template}}})
    assert message.startswith("config.yaml: tenants.t.mapping (inline): fields.f: template: ")
    assert "invalid JMESPath expression" in message


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{a", "'{' at position 0 is never closed"),
        ("a}b", "single '}' at position 1"),
        ("{}", "invalid JMESPath expression in {}"),
        ("x {a[}", "invalid JMESPath expression in {a[}"),
    ],
)
def test_template_errors(tmp_path: Path, template: str, problem: str) -> None:
    assert problem in inline_error(tmp_path, {"fields": {"f": {"template": template}}})


# --- Transforms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["a", "b"], "a; b"),
        (["a", None, "", "b"], "a; b"),  # null and empty items skipped
        ([1, 2.5, True, "x"], "1; 2.5; true; x"),  # scalars rendered as in templates
        ([], "MISSING"),
        ([None, ""], "MISSING"),
        ("already text", "already text"),
        (7, 7),
        (None, "MISSING"),
    ],
)
def test_join(tmp_path: Path, value: Any, expected: Any) -> None:
    assert one(tmp_path, {"from": "v", "join": "; "}, {"v": value}) == expected


@pytest.mark.parametrize("value", [["a", ["b"]], ["a", {"b": 1}], {"a": 1}])
def test_join_fails_the_record_on_nested_values(tmp_path: Path, value: Any) -> None:
    mapping = inline(tmp_path, {"ok": "ok", "tags": {"from": "v", "join": ","}})
    with pytest.raises(RecordMappingError) as info:
        mapping.apply({"ok": 1, "v": value})
    assert info.value.field == "tags"
    assert "join" in info.value.problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [("  a b \n", "a b"), ("   ", "MISSING"), ("", "MISSING"), (5, 5), (["  x "], ["  x "])],
)
def test_trim(tmp_path: Path, value: Any, expected: Any) -> None:
    assert one(tmp_path, {"from": "v", "trim": True}, {"v": value}) == expected


def test_trim_false_keeps_whitespace(tmp_path: Path) -> None:
    assert one(tmp_path, {"from": "v", "trim": False}, {"v": " a "}) == " a "


@pytest.mark.parametrize(
    ("value", "expected", "expected_with_default"),
    [
        ("ACTIVE", "OPEN", "OPEN"),
        ("INACTIVE", "UNQUALIFIED", "UNQUALIFIED"),
        ("ARCHIVED", "ARCHIVED", "NEW"),  # not in the map: unchanged, or the default
        (None, "MISSING", "NEW"),
        ("", "MISSING", "NEW"),
        (["ACTIVE"], ["ACTIVE"], "NEW"),  # lists are never map keys
        (1, "one", "one"),
    ],
)
def test_map(tmp_path: Path, value: Any, expected: Any, expected_with_default: Any) -> None:
    table = {"ACTIVE": "OPEN", "INACTIVE": "UNQUALIFIED", 1: "one"}
    assert one(tmp_path, {"from": "v", "map": table}, {"v": value}) == expected
    spec = {"from": "v", "map": table, "default": "NEW"}
    assert one(tmp_path, spec, {"v": value}) == expected_with_default


@pytest.mark.parametrize(
    ("style", "region", "value", "expected"),
    [
        ("e164", "GB", "020 7946 0958", "+442079460958"),
        ("international", "GB", "020 7946 0958", "+44 20 7946 0958"),
        ("national", "GB", "+44 20 7946 0958", "020 7946 0958"),
        ("e164", None, "+1 (650) 253-0000", "+16502530000"),
        ("e164", None, "650 253 0000", "650 253 0000"),  # no region, no +prefix: unchanged
        ("e164", "us", "not a number", "not a number"),
        ("e164", "US", "12", "12"),  # parses, but too short to be a number: unchanged
        ("e164", "US", 6502530000, 6502530000),  # not text: unchanged
    ],
)
def test_phone(tmp_path: Path, style: str, region: str | None, value: Any, expected: Any) -> None:
    spec: dict[str, Any] = {"from": "v", "phone": style}
    if region:
        spec["phone_region"] = region
    assert one(tmp_path, spec, {"v": value}) == expected


@pytest.mark.parametrize(
    ("value", "alpha2", "alpha3", "name"),
    [
        ("Germany", "DE", "DEU", "Germany"),
        ("deu", "DE", "DEU", "Germany"),
        ("de", "DE", "DEU", "Germany"),
        ("  Côte d'Ivoire ", "CI", "CIV", "Côte d'Ivoire"),
        ("cote d'ivoire", "CI", "CIV", "Côte d'Ivoire"),
        ("Korea, Republic of", "KR", "KOR", "South Korea"),  # ISO name in, common name out
        ("south korea", "KR", "KOR", "South Korea"),
        ("United States of America", "US", "USA", "United States"),
        ("UK", "GB", "GBR", "United Kingdom"),
        ("Example Country", "Example Country", "Example Country", "Example Country"),
        (None, "MISSING", "MISSING", "MISSING"),
        (44, 44, 44, 44),
    ],
)
def test_country(tmp_path: Path, value: Any, alpha2: Any, alpha3: Any, name: Any) -> None:
    for style, expected in (("alpha2", alpha2), ("alpha3", alpha3), ("name", name)):
        assert one(tmp_path, {"from": "v", "country": style}, {"v": value}) == expected


@pytest.mark.parametrize(
    ("case", "expected"),
    [("lower", "mcdonald ltd"), ("upper", "MCDONALD LTD"), ("title", "Mcdonald Ltd"),
     ("capitalize", "Mcdonald ltd")],
)  # fmt: skip
def test_case(tmp_path: Path, case: str, expected: str) -> None:
    assert one(tmp_path, {"from": "v", "case": case}, {"v": "mcDonald LTD"}) == expected
    assert one(tmp_path, {"from": "v", "case": case}, {"v": 3}) == 3


def test_max_length(tmp_path: Path) -> None:
    spec = {"from": "v", "max_length": 3}
    assert one(tmp_path, spec, {"v": "abcdef"}) == "abc"
    assert one(tmp_path, spec, {"v": "ab"}) == "ab"
    assert one(tmp_path, spec, {"v": [1, 2, 3, 4]}) == [1, 2, 3, 4]


def test_transforms_run_in_the_documented_order(tmp_path: Path) -> None:
    # join -> trim -> map -> phone -> country -> case -> max_length -> default
    spec = {
        "from": "v",
        "join": ",",
        "trim": True,
        "map": {"a,b": "germany"},
        "country": "name",
        "case": "upper",
        "max_length": 4,
        "default": "none",
    }
    assert one(tmp_path, spec, {"v": ["  a", "b  "]}) == "GERM"
    assert one(tmp_path, spec, {"v": ["x"]}) == "none"  # unmapped with a default set
    phone = {"from": "v", "map": {"main": "+44 20 7946 0958"}, "phone": "national"}
    assert one(tmp_path, phone, {"v": "main"}) == "020 7946 0958"


@pytest.mark.parametrize("value", [None, "", []])
def test_missing_values_are_left_out_or_defaulted(tmp_path: Path, value: Any) -> None:
    mapping = inline(tmp_path, {"a": "v", "b": {"from": "v", "default": "D"}, "c": "other"})
    assert mapping.apply({"v": value, "other": 1}) == {"b": "D", "c": 1}
    assert mapping.apply({}) == {"b": "D"}


@pytest.mark.parametrize("value", [0, 0.0, False, {}])
def test_falsy_values_that_are_not_missing_are_kept(tmp_path: Path, value: Any) -> None:
    assert one(tmp_path, {"from": "v", "default": "D"}, {"v": value}) == value
    assert one(tmp_path, "v", {"v": value}) == value


def test_explicit_defaults_are_kept_even_if_empty(tmp_path: Path) -> None:
    mapping = inline(
        tmp_path, {"a": {"from": "v", "default": ""}, "b": {"from": "v", "default": None}}
    )
    assert mapping.apply({}) == {"a": "", "b": None}
    assert one(tmp_path, {"value": ""}, {}) == "MISSING"  # a constant can be missing too


def test_record_keeps_field_order(tmp_path: Path) -> None:
    mapping = inline(tmp_path, {"z": "a", "y": {"value": 1}, "x": "a"})
    assert list(mapping.apply({"a": 5})) == ["z", "y", "x"] == list(mapping.fields)


def test_yaml_1_1_booleans_and_dates_stay_text(tmp_path: Path) -> None:
    write(
        tmp_path,
        "m.yaml",
        """\
        fields:
          answer: {from: v, map: {yes: Y, no: N, on: "1", off: "0"}}
          flag: {value: true}
          day: {value: 2024-01-31}
        """,
    )
    mapping = load_mapping("m.yaml", tmp_path)
    assert mapping.apply({"v": "no"}) == {"answer": "N", "flag": True, "day": "2024-01-31"}
    assert mapping.apply({"v": "on"})["answer"] == "1"


# --- Run-time errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "payload"),
    [
        ("length(v)", {"v": 5}),  # a JMESPath function type error
        ("v < w", {"v": "a", "w": 1}),  # jmespath compares text with text, never with numbers
        ("sort_by(v, &k)", {"v": [{"k": 1}, {"k": "a"}]}),
        ("to_number(v) | abs(@)", {"v": "x"}),
    ],
)
def test_record_mapping_error_names_the_field(
    tmp_path: Path, expression: str, payload: dict[str, Any]
) -> None:
    mapping = inline(tmp_path, {"fine": {"value": 1}, "bad": expression})
    with pytest.raises(RecordMappingError) as info:
        mapping.apply(payload)
    assert info.value.field == "bad"
    assert str(info.value).startswith("mapping field 'bad': expression failed: ")


RISKY = {
    "plain": "a",
    "path": "a.b[0].c",
    "filter": "a[?b=='x'].c | [0]",
    "ordering": "a < b",
    "length": "length(a)",
    "sum": "sum(a)",
    "join": {"from": "a", "join": ","},
    "all": {
        "from": "b",
        "join": " ",
        "trim": True,
        "map": {"x": "GB"},
        "phone": "e164",
        "phone_region": "GB",
        "country": "name",
        "case": "title",
        "max_length": 5,
        "default": "-",
    },
    "template": {"template": "{a} {b.c} {a[0]}"},
}
JSON_KEYS = st.sampled_from(["a", "b", "c", "type", "mail"])
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from([0.0, -0.0, 1.0, 2.5]),
    st.sampled_from(["", "x", "WORK", "a", " Germany ", "+44 20 7946 0958"]),
    st.text(max_size=4),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_KEYS, inner, max_size=4),
    max_leaves=16,
)
PAYLOADS = st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=5)


@settings(max_examples=300, deadline=None)
@given(payload=PAYLOADS)
def test_apply_raises_only_record_mapping_error(payload: dict[str, Any]) -> None:
    mapping = load_mapping({"fields": RISKY}, Path("."))
    try:
        record = mapping.apply(payload)
    except RecordMappingError as exc:
        assert exc.field in RISKY
    else:
        assert set(record) <= set(RISKY)
        assert record["all"] is not None


# --- extends ----------------------------------------------------------------------------------


def test_extends_overrides_adds_and_removes(tmp_path: Path, created: dict[str, Any]) -> None:
    write(
        tmp_path,
        "shared/base.yaml",
        """\
        fields:
          firstname: firstName
          lastname: lastName
          city: addressDetails.city
          source: {value: Mimeeq}
        """,
    )
    write(
        tmp_path,
        "tenant.yaml",
        """\
        extends: shared/base.yaml
        fields:
          lastname: {from: lastName, case: upper}   # override keeps its place
          city: null                                # removed
          zip: addressDetails.zipCode               # added at the end
        """,
    )
    mapping = load_mapping("tenant.yaml", tmp_path)
    assert mapping.fields == ("firstname", "lastname", "source", "zip")
    assert mapping.apply(created) == {
        "firstname": "John",
        "lastname": "DOE",
        "source": "Mimeeq",
        "zip": "12345",
    }


def test_nested_extends_resolve_relative_to_each_file(tmp_path: Path) -> None:
    write(tmp_path, "root.yaml", "fields: {a: {value: root}, b: {value: root}, c: {value: root}}")
    write(tmp_path, "lib/mid.yaml", "extends: ../root.yaml\nfields: {b: {value: mid}}")
    write(tmp_path, "tenants/t.yaml", "extends: ../lib/mid.yaml\nfields: {c: {value: t}}")
    mapping = load_mapping(tmp_path / "tenants" / "t.yaml", tmp_path / "elsewhere")
    assert mapping.apply({}) == {"a": "root", "b": "mid", "c": "t"}


def test_extends_alone_is_an_alias(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "fields: {a: {value: 1}}")
    write(tmp_path, "alias.yaml", "extends: base.yaml\n")
    assert load_mapping("alias.yaml", tmp_path).apply({}) == {"a": 1}


def test_inline_mapping_extends_against_base_dir(tmp_path: Path) -> None:
    write(tmp_path, "mappings/base.yaml", "fields: {a: x, b: y}")
    spec = {"extends": "mappings/base.yaml", "fields": {"b": None, "c": {"value": 3}}}
    mapping = load_mapping(spec, tmp_path, origin="config.yaml: tenants.t.targets.s.mapping")
    assert mapping.source == "config.yaml: tenants.t.targets.s.mapping (inline)"
    assert mapping.apply({"x": 1, "y": 2}) == {"a": 1, "c": 3}


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: sub/b.yaml\nfields: {x: x}")
    write(tmp_path, "sub/b.yaml", "extends: ../a.yaml\nfields: {y: y}")
    message = load_error(tmp_path, "extends: sub/b.yaml\nfields: {x: x}", "a.yaml")
    assert message == "sub/b.yaml: 'extends' makes a cycle: a.yaml -> sub/b.yaml -> a.yaml"


def test_extends_itself(tmp_path: Path) -> None:
    message = load_error(tmp_path, "extends: m.yaml\nfields: {x: x}")
    assert message == "m.yaml: 'extends' makes a cycle: m.yaml -> m.yaml"


def test_diamond_extends_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "fields: {a: {value: 1}}")
    write(tmp_path, "left.yaml", "extends: base.yaml\nfields: {b: {value: 2}}")
    write(tmp_path, "top.yaml", "extends: left.yaml\nfields: {c: {value: 3}}")
    assert load_mapping("top.yaml", tmp_path).apply({}) == {"a": 1, "b": 2, "c": 3}
    assert load_mapping("left.yaml", tmp_path).apply({}) == {"a": 1, "b": 2}


def test_extends_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "extends: nope/base.yaml\nfields: {x: x}")
    assert message == (
        "m.yaml:1: 'extends' file not found: nope/base.yaml"
        f" (looked for {tmp_path / 'nope/base.yaml'})"
    )
    assert "not found: base.yaml" in inline_error(tmp_path, {"extends": "base.yaml"})


def test_removing_a_field_that_is_not_inherited(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "fields: {a: x}")
    message = load_error(tmp_path, "extends: base.yaml\nfields: {b: null}")
    assert message.startswith("m.yaml:2: fields.b: null removes an inherited field")


def test_errors_in_an_extended_file_name_that_file(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "fields: {bad: 'a[?'}")
    message = load_error(tmp_path, "extends: base.yaml\nfields: {ok: x}")
    assert message.startswith("base.yaml:1: fields.bad: invalid JMESPath expression 'a[?'")
    write(tmp_path, "broken.yaml", "fields: [")
    assert load_error(tmp_path, "extends: broken.yaml\n").startswith("broken.yaml: invalid YAML")


def test_an_override_may_replace_a_broken_inherited_field(tmp_path: Path) -> None:
    # Only the fields that survive the merge are compiled.
    write(tmp_path, "base.yaml", "fields: {f: 'a[?', g: x}")
    write(tmp_path, "m.yaml", "extends: base.yaml\nfields: {f: y}")
    assert load_mapping("m.yaml", tmp_path).apply({"x": 1, "y": 2}) == {"f": 2, "g": 1}


# --- Load errors ------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "fields:\n  a: x\n  b: [unclosed\n  c: z\n")
    assert message.startswith("m.yaml: invalid YAML at line ")
    assert "line 4" in message or "line 5" in message


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "fields:\n  a: x\n  b: y\n  a: z\n")
    assert message == "m.yaml: invalid YAML at line 4, column 3: duplicate key 'a'"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "m.yaml: expected a mapping with a 'fields' key, got an empty file"),
        ("- a\n- b\n", "m.yaml: expected a mapping with a 'fields' key, got list"),
        ("description: x\n", "m.yaml: no 'fields' given"),
        ("fields: {}\n", "m.yaml: the mapping defines no fields"),
        ("fields: [a, b]\n", "m.yaml: 'fields' must be a mapping, got list"),
        (
            "fields: {a: x}\nfeilds: {b: y}\n",
            "m.yaml:2: unknown top-level key 'feilds' (allowed: extends, description, fields)",
        ),
        ("extends: 3\nfields: {a: x}\n", "m.yaml: 'extends' must be the path of a mapping file"),
        ("description: [1]\nfields: {a: x}\n", "m.yaml:1: 'description' must be text"),
        ("fields: {'': x}\n", "m.yaml:1: fields: names must be non-empty text, got ''"),
        ("fields: {1: x}\n", "m.yaml: fields: names must be non-empty text, got 1"),
        ("fields: {a: null}\n", "m.yaml:1: fields.a: null removes an inherited field"),
    ],
)
def test_document_errors(tmp_path: Path, text: str, problem: str) -> None:
    assert load_error(tmp_path, text).startswith(problem)


def test_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"^mappings/none\.yaml: file not found$"):
        load_mapping("mappings/none.yaml", tmp_path)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("a[?", "invalid JMESPath expression 'a[?': incomplete expression"),
        ("a.`1", "invalid JMESPath expression 'a.`1': Unclosed ` delimiter at column 2"),
        ("nope(a)", "invalid JMESPath expression 'nope(a)': unknown function nope()"),
        ("length(a, b)", "Expected 1 argument for function length(), received 2"),
        ("a[::0]", "slice step cannot be 0"),
        ("", "invalid JMESPath expression ''"),
        (5, "expected a JMESPath expression or an object of options, got number"),
        (["a"], "expected a JMESPath expression or an object of options, got list"),
        ({"from": "a", "jion": ";"}, "unknown option 'jion' (allowed: from, value, template, "),
        ({"from": "a", "jion": ";"}, "did you mean 'join'?"),
        ({"join": ";"}, "no source: give one of from, value, template"),
        ({"from": "a", "value": 1}, "two sources given (from and value): give exactly one"),
        ({"value": 1, "template": "x"}, "two sources given (value and template)"),
        ({"from": 3}, "option 'from' must be a JMESPath expression (text), got number 3"),
        ({"template": ["x"]}, "option 'template' must be text, got list ['x']"),
        ({"from": "a", "join": 1}, "option 'join' must be the separator text, got number 1"),
        ({"from": "a", "trim": "yes"}, "option 'trim' must be true or false, got text 'yes'"),
        ({"from": "a", "map": ["x"]}, "option 'map' must be an object of value: replacement"),
        ({"from": "a", "map": {"x": {1, 2}}}, "option 'map': replacements must be plain"),
        ({"from": "a", "phone": "E164"}, "option 'phone' must be one of e164, international, "),
        ({"from": "a", "phone": "e164", "phone_region": "XX"}, "unknown region 'XX'"),
        ({"from": "a", "phone": "e164", "phone_region": 44}, "option 'phone_region' must be"),
        ({"from": "a", "phone_region": "GB"}, "option 'phone_region' needs 'phone'"),
        ({"from": "a", "country": "iso"}, "option 'country' must be one of alpha2, alpha3, name"),
        ({"from": "a", "case": "shout"}, "option 'case' must be one of lower, upper, title, "),
        ({"from": "a", "case": ["upper"]}, "option 'case' must be one of lower, upper, title, "),
        ({"from": "a", "max_length": "5"}, "option 'max_length' must be a whole number"),
        ({"from": "a", "max_length": True}, "option 'max_length' must be a whole number"),
        ({"from": "a", "max_length": 0}, "option 'max_length' must be at least 1, got 0"),
        ({"value": object()}, "option 'value' must be plain JSON-like data"),
        ({"from": "a", "default": {1: "x"}}, "option 'default' must be plain JSON-like data"),
    ],
)
def test_field_errors_name_file_field_and_problem(tmp_path: Path, spec: Any, problem: str) -> None:
    message = inline_error(tmp_path, {"fields": {"ok": "x", "email": spec}})
    assert message.startswith("config.yaml: tenants.t.mapping (inline): fields.email: ")
    assert problem in message
    assert "\n" not in message


def test_field_errors_in_files_name_the_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "fields:\n  email: {from: x, jion: ','}\n", "mappings/x.yaml")
    assert message.startswith("mappings/x.yaml:2: fields.email: unknown option 'jion' (allowed: ")
    with pytest.raises(MappingError) as info:
        load_mapping("mappings/x.yaml", tmp_path)
    assert (info.value.source, info.value.field) == ("mappings/x.yaml", "email")


# --- The JMESPath compiler against jmespath itself ---------------------------------------------

EXPRESSIONS = [
    "a", "a.b", "a.b.c", "a[0]", "a[-1]", "a[0].b", "a.b[1].c", "a[0][1]", "\"a\".b",
    "a[*]", "a[*].b", "a[*].b[0]", "a[]", "a[].b", "a[][]", "a[].b[]", "*.b", "a.*", "a.*.b",
    "a[?b=='x']", "a[?type=='WORK'].mail | [0]", "(a[?type=='WORK'].mail | [0]) || a[0].mail",
    "a || b", "a && b", "!a", "!a.b", "a || b && c", "!(a && b) || c",
    "a[?!b]", "a[?b && c].c", "a[?b || c]", "a[?@]", "a[?b == `1`].c",
    "a == b", "a != b", "a == `1`", "a == `true`", "a != `false`", "a == `1.0`", "a == 'x'",
    "a == `null`", "a == `[1, true]`", "a.b == a.c", "`0` == `false`",
    "a < b", "a <= `1`", "a > `0`", "a >= b", "a[?b > `0`]", "a[?b < 'x'].c", "a < 'x'",
    "[a, b]", "{x: a, y: b.c}", "a[*].[b, c]", "a[*].{x: b}", "a.[b, c][0]", "[a, b][]",
    "a[1:]", "a[::-1]", "a[:2].b", "a[-2:]",
    "length(a)", "to_string(a)", "sort_by(a, &b)", "join(', ', a)", "contains(a, 'x')",
    "not_null(a, b, `\"z\"`)", "keys(@)", "values(@)", "max_by(a, &b)", "type(a)", "map(&b, a)",
    "length(a[?b]) > `1`", "sort(a[*].b)", "to_array(a)[0]",
    "`{\"k\": [1, 2]}`", "'literal'", "@", "@.a", "a | b", "a[*].b | [0]", "b[*][0]", "a | [0] | b",
    "&a",
]  # fmt: skip


def outcome(run: Any) -> tuple[str, str]:
    # repr tells 1 from 1.0 from True, which == would not.
    try:
        return ("value", repr(run()))
    except Exception as exc:
        return ("error", type(exc).__name__)


COMPILED = [(expression, compile_expression(expression)) for expression in EXPRESSIONS]


@settings(max_examples=400, deadline=None)
@given(payload=PAYLOADS)
def test_compiled_expressions_match_jmespath(payload: dict[str, Any]) -> None:
    # One payload against every expression: generating payloads is the slow part.
    options = jmespath.Options(dict_cls=dict)
    for expression, compiled in COMPILED:
        expected = outcome(lambda e=expression: jmespath.search(e, payload, options=options))
        if expression == "&a":  # an expression reference: compare its kind only
            expected = ("value", expected[1].split(" object at ")[0])
            got = ("value", repr(compiled(payload)).split(" object at ")[0])
        else:
            got = outcome(lambda c=compiled: c(payload))
        assert got == expected, expression


@pytest.mark.parametrize(
    ("expression", "payload"),
    [
        ("a == b", {"a": 1, "b": 1.0}),
        ("a == b", {"a": True, "b": 1}),
        ("a == b", {"a": False, "b": 0.0}),
        ("a == `1`", {"a": True}),
        ("a || b", {"a": 0, "b": "x"}),
        ("a || b", {"a": {}, "b": "x"}),
        ("!a", {"a": 0}),
        ("!a", {"a": []}),
        ("a < b", {"a": "a", "b": "b"}),
        ("a < b", {"a": None, "b": 1}),
        ("a[?b]", {"a": [{"b": 0}, {"b": ""}, {"b": []}, {"b": False}, {"b": "x"}]}),
        ("a[*].b", {"a": [{"b": None}, {"b": 1}, 5]}),
        ("a[0]", {"a": "text"}),
        ("a.b", {"a": ["x"]}),
    ],
)
def test_compiled_edge_cases(expression: str, payload: dict[str, Any]) -> None:
    assert outcome(lambda: compile_expression(expression)(payload)) == outcome(
        lambda: jmespath.search(expression, payload)
    )
