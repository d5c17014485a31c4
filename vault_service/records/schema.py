"""The case-record schema, loaded once: validation types and the encryption plan.

`schemas/case_record.schema.json` is the only list of fields. From it this module
builds (1) msgspec Structs that validate create and patch bodies at C speed with
unknown fields refused, and (2) the `FieldPlan` of every top-level property: is it
encrypted, is it indexed (how, under which scope), how is it masked. There is no
second hand-kept list of encrypted fields anywhere in the service.

The converter supports the small JSON Schema subset that the schema's own test
pins (single `type`, string/integer/boolean/array/object, enum, pattern, lengths,
bounds, date and email formats, local `$ref`) and refuses anything else at start-up,
so a schema edit can never silently weaken validation.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, cast

import msgspec

from vault_service.errors import ConfigurationError

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent / "schemas" / "case_record.schema.json"

Sensitivity = Literal[
    "internal", "identity", "contact", "social", "special_category", "national_id", "financial"
]
_NODE_KEYS: Final = {
    "type",
    "description",
    "title",
    "maxLength",
    "minLength",
    "pattern",
    "enum",
    "format",
    "minimum",
    "maximum",
    "items",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "additionalProperties",
    "$ref",
    "examples",
}


@dataclass(frozen=True, slots=True)
class IndexSpec:
    name: str
    national: bool
    normalise: str
    restricted: bool


@dataclass(frozen=True, slots=True)
class FieldPlan:
    name: str
    sensitivity: Sensitivity
    encrypted: bool
    index: IndexSpec | None
    mask: Literal["initial", "year", "clear"] | None
    required: bool
    is_list: bool


@dataclass(frozen=True)
class RecordSchema:
    fields: Mapping[str, FieldPlan]
    create_type: type[msgspec.Struct]
    patch_type: type[msgspec.Struct]
    raw: Mapping[str, Any]

    @property
    def encrypted(self) -> tuple[str, ...]:
        return tuple(n for n, f in self.fields.items() if f.encrypted)

    @property
    def indexed(self) -> tuple[FieldPlan, ...]:
        return tuple(f for f in self.fields.values() if f.index is not None)

    def search_index(self, name: str) -> FieldPlan | None:
        for plan in self.fields.values():
            if plan.index is not None and plan.index.name == name:
                return plan
        return None


class _Converter:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self._defs: Mapping[str, Any] = root.get("$defs", {})
        self._structs: dict[str, type[msgspec.Struct]] = {}

    def _resolve(self, node: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
        ref = node.get("$ref")
        if ref is None:
            return None, node
        if not isinstance(ref, str) or not ref.startswith("#/$defs/") or len(node) != 1:
            raise ConfigurationError("schema: only bare local #/$defs/ references are supported")
        name = ref.removeprefix("#/$defs/")
        if name not in self._defs:
            raise ConfigurationError("schema: dangling $ref")
        return name, self._defs[name]

    def type_of(self, node: Mapping[str, Any], struct_name: str) -> Any:
        ref_name, node = self._resolve(node)
        unknown = set(node) - _NODE_KEYS - {k for k in node if k.startswith("x-")}
        if unknown:
            raise ConfigurationError(f"schema: unsupported keywords {sorted(unknown)}")
        kind = node.get("type")
        if "enum" in node:
            values = node["enum"]
            if kind != "string" or not values or not all(isinstance(v, str) for v in values):
                raise ConfigurationError("schema: enums must be non-empty lists of strings")
            return Literal[tuple(values)]
        if kind == "string":
            fmt = node.get("format")
            if fmt == "date":
                return datetime.date
            if fmt not in (None, "email"):
                raise ConfigurationError("schema: unsupported string format")
            if "maxLength" not in node:
                raise ConfigurationError("schema: every free string needs maxLength")
            meta = msgspec.Meta(
                max_length=node["maxLength"],
                min_length=node.get("minLength"),
                pattern=_anchor_end(node.get("pattern")),
            )
            return Annotated[str, meta]
        if kind == "integer":
            return Annotated[int, msgspec.Meta(ge=node["minimum"], le=node["maximum"])]
        if kind == "boolean":
            return bool
        if kind == "array":
            item = self.type_of(node["items"], struct_name + "Item")
            meta = msgspec.Meta(max_length=node["maxItems"], min_length=node.get("minItems"))
            return Annotated[list[item], meta]  # type: ignore[valid-type]
        if kind == "object":
            name = ref_name or struct_name
            if name not in self._structs:
                self._structs[name] = self.struct(name, node, partial=False)
            return self._structs[name]
        raise ConfigurationError("schema: unsupported or missing type")

    def struct(self, name: str, node: Mapping[str, Any], *, partial: bool) -> type[msgspec.Struct]:
        if node.get("additionalProperties") is not False:
            raise ConfigurationError("schema: objects must set additionalProperties: false")
        required = set(node.get("required", ()))
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for prop, sub in node["properties"].items():
            typ = self.type_of(sub, name + _camel(prop))
            if prop in required and not partial:
                fields.append((prop, typ))
            elif partial and prop not in required:
                # JSON merge patch (RFC 7396): null removes an optional property.
                fields.append((prop, typ | None | msgspec.UnsetType, msgspec.UNSET))
            else:
                fields.append((prop, typ | msgspec.UnsetType, msgspec.UNSET))
        return msgspec.defstruct(
            name,
            fields,
            kw_only=True,
            forbid_unknown_fields=True,
            omit_defaults=True,
            module=__name__,
        )


def _anchor_end(pattern: str | None) -> str | None:
    r"""msgspec matches with `re.search`, where `$` also matches before a final newline:
    'Dupont\n' would pass '^[A-Z]+$'. `\Z` is the true end of the string."""
    if pattern is not None and pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + "\\Z"
    return pattern


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _plan(name: str, node: Mapping[str, Any], required: bool) -> FieldPlan:
    sensitivity = node.get("x-sensitivity")
    encrypted = node.get("x-encrypted")
    if sensitivity not in Sensitivity.__args__ or not isinstance(encrypted, bool):  # type: ignore[attr-defined]
        raise ConfigurationError("schema: every property needs x-sensitivity and x-encrypted")
    if encrypted != (sensitivity != "internal"):
        # Fail closed: a personal field can never be stored in clear by a schema slip.
        raise ConfigurationError("schema: exactly the non-internal properties are encrypted")
    index = None
    if (spec := node.get("x-index")) is not None:
        index = IndexSpec(
            name=spec["name"],
            national=spec["scope"] == "national",
            normalise=spec["normalise"],
            restricted=bool(spec.get("restricted", False)),
        )
    mask = node.get("x-mask")
    if mask == "clear" and encrypted:
        raise ConfigurationError("schema: only internal properties may show in clear")
    return FieldPlan(
        name=name,
        sensitivity=cast(Sensitivity, sensitivity),
        encrypted=encrypted,
        index=index,
        mask=mask,
        required=required,
        is_list=node.get("type") == "array",
    )


def build(raw: Mapping[str, Any]) -> RecordSchema:
    required = set(raw.get("required", ()))
    plans = {name: _plan(name, node, name in required) for name, node in raw["properties"].items()}
    converter = _Converter(raw)
    create_type = converter.struct("CaseRecord", raw, partial=False)
    patch_type = converter.struct("CaseRecordPatch", raw, partial=True)
    return RecordSchema(plans, create_type, patch_type, raw)


@functools.cache
def load(path: Path = SCHEMA_PATH) -> RecordSchema:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the case-record schema: {type(exc).__name__}"
        ) from None
    return build(raw)
