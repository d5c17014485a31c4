"""The case-record schema: valid Draft 2020-12, inside the subset the converter understands,
annotated exactly as the encryption plan expects, and fully exercised by the fixtures.

No service import: the schema is the contract the service is generated from, so it is
checked on its own.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / "case_record.schema.json"
FIXTURES = ROOT / "tests" / "fixtures"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


SCHEMA: dict[str, Any] = _load(SCHEMA_PATH)
FULL: dict[str, Any] = _load(FIXTURES / "full_record.json")
MINIMAL: dict[str, Any] = _load(FIXTURES / "minimal_record.json")
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
TOP = SCHEMA["properties"]
DEFS = SCHEMA.get("$defs", {})

REQUIRED = {"birth_name", "first_names", "birth_date", "sex"}

SENSITIVITY = {
    "birth_name": "identity",
    "usage_name": "identity",
    "first_names": "identity",
    "sex": "identity",
    "birth_date": "identity",
    "birth_place": "identity",
    "nir": "national_id",
    "nationality": "identity",
    "residence_permit": "identity",
    "id_document": "identity",
    "addresses": "contact",
    "email": "contact",
    "phone": "contact",
    "family_situation": "social",
    "legal_representatives": "contact",
    "education_level": "social",
    "diplomas": "social",
    "ft_id": "identity",
    "ft_registration": "social",
    "programme_kind": "internal",
    "programme": "social",
    "pathway_status": "internal",
    "situations": "social",
    "benefits": "social",
    "rqth": "special_category",
    "housing": "social",
    "allowance": "financial",
    "interviews": "social",
    "actions": "social",
    "appointments": "social",
    "notes": "social",
    "end_of_pathway": "social",
}

INDEXES = {
    "birth_name": {"name": "birth_name", "scope": "structure", "normalise": "name"},
    "usage_name": {"name": "usage_name", "scope": "structure", "normalise": "name"},
    "first_names": {"name": "first_name", "scope": "structure", "normalise": "name"},
    "birth_date": {"name": "birth_date", "scope": "structure", "normalise": "date"},
    "email": {"name": "email", "scope": "structure", "normalise": "email"},
    "phone": {"name": "phone", "scope": "structure", "normalise": "phone"},
    "ft_id": {"name": "ft_id", "scope": "national", "normalise": "ft_id"},
    "nir": {"name": "nir", "scope": "national", "normalise": "nir", "restricted": True},
}

MASKS = {
    "birth_name": "initial",
    "usage_name": "initial",
    "first_names": "initial",
    "birth_date": "year",
    "programme_kind": "clear",
    "pathway_status": "clear",
}

ROOT_KEYS = {
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "additionalProperties",
    "required",
    "properties",
    "$defs",
}
COMMON_KEYS = {"type", "description"}
KEYS_BY_TYPE = {
    "string": {"maxLength", "minLength", "pattern", "enum", "format"},
    "integer": {"minimum", "maximum"},
    "boolean": set(),
    "array": {"items", "maxItems", "minItems"},
    "object": {"properties", "additionalProperties", "required"},
}
ANNOTATION_KEYS = {"x-sensitivity", "x-encrypted", "x-index", "x-mask"}
REF_RE = re.compile(r"#/\$defs/[A-Za-z][A-Za-z0-9]*")
SNAKE_CASE_RE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Constructs that Python `re` and ECMA-262 read differently, or that only one of them has:
# \d \w \s \b are Unicode-aware in Python and (mostly) ASCII in ECMA; the rest is Python-only.
NON_PORTABLE_REGEX = ("\\d", "\\w", "\\s", "\\b", "\\A", "\\Z", "(?P", "(?#", "(?i", "(?m", "(?s")


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return DEFS[node["$ref"].removeprefix("#/$defs/")]
    return node


Node = tuple[str, dict[str, Any], bool]


def _nodes() -> Iterator[Node]:
    """Every schema node below the root: (path, node, is_top_level_property)."""

    def walk(path: str, node: dict[str, Any], top: bool) -> Iterator[Node]:
        yield path, node, top
        if node.get("type") == "object":
            for name, child in node.get("properties", {}).items():
                yield from walk(f"{path}.{name}", child, False)
        elif node.get("type") == "array" and isinstance(node.get("items"), dict):
            yield from walk(f"{path}[]", node["items"], False)

    for name, node in TOP.items():
        yield from walk(name, node, True)
    for name, node in DEFS.items():
        yield from walk(f"$defs.{name}", node, False)


def _schema_paths(node: dict[str, Any], prefix: str) -> set[str]:
    node = _resolve(node)
    paths: set[str] = set()
    if node["type"] == "object":
        for name, child in node["properties"].items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            paths |= _schema_paths(child, path)
    elif node["type"] == "array":
        paths |= _schema_paths(node["items"], f"{prefix}[]")
    return paths


def _instance_paths(value: Any, prefix: str) -> set[str]:
    paths: set[str] = set()
    if isinstance(value, dict):
        for name, child in value.items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            paths |= _instance_paths(child, path)
    elif isinstance(value, list):
        for child in value:
            paths |= _instance_paths(child, f"{prefix}[]")
    return paths


def _errors(record: dict[str, Any]) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(record)]


def _nir_key(first13: str) -> str:
    department = {"2A": "19", "2B": "18"}.get(first13[5:7], first13[5:7])
    digits = first13[:5] + department + first13[7:]
    return f"{97 - int(digits) % 97:02d}"


def _with(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of record with the value at a dotted path (list items by index) replaced."""
    result = copy.deepcopy(record)
    *parents, last = path.split(".")
    target: Any = result
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return result


# --- the schema itself ---------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_root_follows_the_dialect() -> None:
    assert set(SCHEMA) <= ROOT_KEYS
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "https://vault-service.example/schemas/case_record.schema.json"
    assert isinstance(SCHEMA["title"], str)
    assert SCHEMA["title"]
    assert isinstance(SCHEMA["description"], str)
    assert SCHEMA["description"]
    assert SCHEMA["type"] == "object"
    assert SCHEMA["additionalProperties"] is False
    assert len(SCHEMA["required"]) == len(set(SCHEMA["required"]))
    assert set(SCHEMA["required"]) == REQUIRED


NODES = list(_nodes())


@pytest.mark.parametrize(("path", "node", "top"), NODES, ids=[path for path, _, _ in NODES])
def test_every_node_follows_the_dialect(path: str, node: dict[str, Any], top: bool) -> None:
    assert isinstance(node, dict), path
    if "$ref" in node:
        assert not top, f"{path}: a top-level property carries annotations, it cannot be a $ref"
        assert set(node) == {"$ref"}, path
        assert REF_RE.fullmatch(node["$ref"]), path
        assert node["$ref"].removeprefix("#/$defs/") in DEFS, path
        return

    kind = node.get("type")
    assert isinstance(kind, str), f"{path}: a single string type"
    assert kind in KEYS_BY_TYPE, path
    allowed = COMMON_KEYS | KEYS_BY_TYPE[kind] | (ANNOTATION_KEYS if top else set())
    assert set(node) <= allowed, f"{path}: {sorted(set(node) - allowed)}"
    if "description" in node:
        assert isinstance(node["description"], str), path
        assert node["description"].strip(), path

    if kind == "string":
        _check_string(path, node)
    elif kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        assert type(low) is int, f"{path}: integers need minimum"
        assert type(high) is int, f"{path}: integers need maximum"
        assert low <= high, path
    elif kind == "array":
        assert isinstance(node.get("items"), dict), f"{path}: arrays need items"
        assert type(node.get("maxItems")) is int, f"{path}: arrays need maxItems"
        assert 1 <= node["maxItems"] <= 200, path
        assert 0 <= node.get("minItems", 0) <= node["maxItems"], path
    elif kind == "object":
        assert node.get("additionalProperties") is False, f"{path}: additionalProperties false"
        assert isinstance(node.get("properties"), dict), f"{path}: objects need properties"
        assert node["properties"], path
        required = node.get("required", [])
        assert len(required) == len(set(required)), path
        assert set(required) <= set(node["properties"]), path


def _check_string(path: str, node: dict[str, Any]) -> None:
    if "enum" in node:
        values = node["enum"]
        assert isinstance(values, list), path
        assert values, path
        assert all(isinstance(v, str) and v for v in values), path
        assert len(values) == len(set(values)), path
        assert "format" not in node, path
        assert "pattern" not in node, path
        return
    fmt = node.get("format")
    assert fmt in (None, "date", "email"), path
    if fmt == "date":
        return
    assert type(node.get("maxLength")) is int, f"{path}: strings need maxLength"
    assert 1 <= node["maxLength"] <= 4000, path
    assert 0 <= node.get("minLength", 0) <= node["maxLength"], path
    if fmt == "email":
        assert node["maxLength"] == 254, path
        assert "pattern" in node, path
    if "pattern" in node:
        pattern = node["pattern"]
        assert pattern.startswith("^"), path
        assert pattern.endswith("$"), path
        re.compile(pattern)
        for token in NON_PORTABLE_REGEX:
            assert token not in pattern, f"{path}: {token} is not portable to ECMA-262"


def test_property_names_are_snake_case() -> None:
    for path, node, _top in _nodes():
        for name in node.get("properties", {}):
            assert SNAKE_CASE_RE.fullmatch(name), f"{path}.{name}"


def test_every_def_is_used() -> None:
    used = {
        node["$ref"].removeprefix("#/$defs/") for _path, node, _top in _nodes() if "$ref" in node
    }
    assert used == set(DEFS)


def test_lengths_stay_small() -> None:
    for name in ("birth_name", "usage_name"):
        assert TOP[name]["maxLength"] == 100
    assert _resolve(TOP["first_names"]["items"])["maxLength"] == 100
    assert TOP["first_names"]["minItems"] == 1
    assert TOP["first_names"]["maxItems"] == 4
    assert TOP["addresses"]["maxItems"] == 5
    assert _resolve(TOP["notes"]["items"]["properties"]["text"])["maxLength"] == 4000
    assert _resolve(TOP["interviews"]["items"]["properties"]["summary"])["maxLength"] == 2000


# --- security annotations -----------------------------------------------------------------


def test_every_top_level_property_is_classified_as_expected() -> None:
    assert {name: node.get("x-sensitivity") for name, node in TOP.items()} == SENSITIVITY


def test_encrypted_iff_not_internal() -> None:
    for name, node in TOP.items():
        assert type(node.get("x-encrypted")) is bool, name
        assert node["x-encrypted"] is (node["x-sensitivity"] != "internal"), name
    internal = {name for name, node in TOP.items() if not node["x-encrypted"]}
    assert internal == {"programme_kind", "pathway_status"}
    for name in internal:
        assert "enum" in TOP[name], f"{name}: an internal property is a closed list of codes"


def test_annotations_only_on_top_level_properties() -> None:
    for path, node, top in _nodes():
        if not top:
            assert not any(key.startswith("x-") for key in node), path


def test_blind_indexes_are_exactly_the_listed_ones() -> None:
    assert {name: node["x-index"] for name, node in TOP.items() if "x-index" in node} == INDEXES
    names = [index["name"] for index in INDEXES.values()]
    assert len(names) == len(set(names))
    for name, index in INDEXES.items():
        node = TOP[name]
        if node["type"] == "array":
            assert _resolve(node["items"])["type"] == "string", name
        else:
            assert node["type"] == "string", name
        assert ("restricted" in index) == (name == "nir"), name


def test_masks_are_exactly_the_listed_ones() -> None:
    assert {name: node["x-mask"] for name, node in TOP.items() if "x-mask" in node} == MASKS
    for name, mask in MASKS.items():
        node = TOP[name]
        if mask == "clear":
            assert node["x-sensitivity"] == "internal", name
        elif mask == "year":
            assert node.get("format") == "date", name
        else:
            leaf = _resolve(node["items"]) if node["type"] == "array" else node
            assert leaf["type"] == "string", name


# --- fixtures -------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [FULL, MINIMAL], ids=["full", "minimal"])
def test_fixture_is_valid(record: dict[str, Any]) -> None:
    assert _errors(record) == []


def test_minimal_fixture_has_only_required_fields() -> None:
    assert set(MINIMAL) == REQUIRED


def test_full_fixture_sets_every_property() -> None:
    missing = _schema_paths(SCHEMA, "") - _instance_paths(FULL, "")
    assert not missing, sorted(missing)


def test_full_fixture_nir_has_a_correct_key_and_matches_the_record() -> None:
    nir = FULL["nir"]
    assert _nir_key(nir[:13]) == nir[13:]
    assert nir[0] == {"M": "1", "F": "2"}[FULL["sex"]]
    assert nir[1:5] == FULL["birth_date"][2:4] + FULL["birth_date"][5:7]
    assert nir[5:10] == FULL["birth_place"]["insee_code"]


# --- NIR --------------------------------------------------------------------------------------

NIR_PATTERN = TOP["nir"]["pattern"]


@pytest.mark.parametrize(
    "first13",
    [
        "2040375111123",  # the full fixture
        "253072B073004",  # Haute-Corse (python-stdnum's example)
        "253072A073004",  # Corse-du-Sud (python-stdnum's example)
        "1052099123456",  # month unknown: 20 and above
        "8031199134456",  # temporary number, born abroad (99, country 134)
        "7010199350001",  # temporary number
    ],
)
def test_nir_pattern_accepts_real_shapes(first13: str) -> None:
    nir = first13 + _nir_key(first13)
    assert re.fullmatch(NIR_PATTERN, nir)
    assert _errors(_with(MINIMAL, "nir", nir)) == []


@pytest.mark.parametrize(
    "nir",
    [
        "20403751111239",  # 14 characters
        "2040375111123940",  # 16 characters
        "2 04 03 75 111 123 94",  # spaced form: the compact form only
        "504037511112394",  # no such sex digit
        "204137511112394",  # month 13
        "204032C11112394",  # no department 2C
        "204032a11112394",  # Corsica in lower case
        "20403751111239A",  # letter in the key
        "204037511112398",  # key above 97
        "204037511112300",  # key 00
        "204037511112394\n",  # trailing newline
        "",
    ],
)
def test_nir_pattern_rejects_wrong_values(nir: str) -> None:
    assert _errors(_with(MINIMAL, "nir", nir))


# --- negative validations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("birth_name", "L" * 101),
        ("birth_name", ""),
        ("birth_name", "Zo\u0007é"),  # control character
        ("birth_name", "Zoé\u202eevèfeL"),  # bidirectional override
        ("usage_name", "Dupont\nDurand"),
        ("first_names", []),
        ("first_names", ["Zoé", "Marie", "Anne", "Lina", "Jade"]),
        ("first_names", ["Z" * 101]),
        ("birth_date", "2004-02-30"),
        ("birth_date", "14/03/2004"),
        ("birth_date", "2004-3-14"),
        ("sex", "X"),
        ("email", "not-an-email"),
        ("phone", "call me"),
        ("ft_id", "1234567a"),
        ("ft_id", "123456"),
        ("nationality", "FRA"),
        ("programme_kind", "cej"),
        ("addresses", [{"line1": "1 rue X", "city": "Paris", "postal_code": "7500"}]),
        ("addresses", [{"line1": "1 rue X", "city": "Paris", "floor": "2"}]),
        ("addresses", [{"line1": "1 rue X", "city": "Paris"}] * 6),
        ("family_situation", {"dependent_children": 21}),
        ("family_situation", {"dependent_children": "2"}),
        ("rqth", {"recognised": "yes"}),
        ("allowance", {"kind": "ALLOCATION_CEJ", "monthly_amount_cents": -1}),
        ("allowance", {"kind": "ALLOCATION_CEJ", "iban": "FR76 9999 9000 0100 0000 1234 537"}),
        ("appointments", [{"date": "2025-02-10", "status": "planned", "time": "25:00"}]),
        ("notes", [{"date": "2025-02-10", "text": "x" * 4001}]),
        ("interviews", [{"date": "2025-02-10", "kind": "individual", "counsellor_ref": "bob"}]),
        ("diplomas", [{"title": "CAP", "year": 1989}]),
    ],
)
def test_invalid_values_are_refused(path: str, value: Any) -> None:
    assert _errors(_with(FULL, path, value))


def test_unknown_top_level_field_is_refused() -> None:
    assert _errors({**MINIMAL, "favourite_colour": "blue"})


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_fields_are_required(name: str) -> None:
    record = {key: value for key, value in MINIMAL.items() if key != name}
    assert _errors(record)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("nir", "204037511112394\n"),
        ("nationality", "FR\n"),
        ("birth_place.insee_code", "75111\n"),
        ("addresses.0.postal_code", "75011\n"),
        ("appointments.0.time", "09:30\n"),
        ("notes.0.author_ref", "00000000-0000-4000-8000-000000000001\n"),
    ],
)
def test_fixed_length_codes_reject_a_trailing_newline(path: str, value: str) -> None:
    # Python's `$` also matches before a final newline (ECMA's does not); for fixed-length
    # codes the exact minLength/maxLength is what keeps the schema strict under Python `re`.
    assert _errors(_with(FULL, path, value))
