"""Gemini ``Schema`` (OpenAPI 3.0 subset) <-> JSON Schema, both directions, driven by one table.

Gemini function declarations carry ``parameters`` as a Gemini ``Schema``: UPPERCASE ``type``
(``STRING``, ``OBJECT``, ...), ``nullable`` instead of a ``"null"`` type, ``example`` instead of
``examples``, ``defs``/``ref`` instead of ``$defs``/``$ref``, and, from the Python SDK, keys in either
camelCase or snake_case (the Gemini Live API reference: the SDK mixes them). OpenAI tools carry plain JSON Schema.

Both converters are pure functions on JSON values. They never raise on a keyword they cannot map: the
keyword is left out and its path (``/properties/city/exclusiveMinimum``) appended to ``lossy`` when the
caller passes a list, so a codec can report it (nothing is dropped silently). They raise ``ValueError``
only when a (sub)schema is not a JSON object where one is required.

Names of properties (keys under ``properties`` / ``defs``) are data: they are never re-cased.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

__all__ = ["gemini_to_json_schema", "json_schema_to_gemini", "normalize_gemini_key"]

JSON = Any  # a decoded JSON value (dict / list / str / int / float / bool / None)

_GEMINI_TYPES: Mapping[str, str] = {
    "STRING": "string",
    "NUMBER": "number",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "ARRAY": "array",
    "OBJECT": "object",
    "NULL": "null",
}
_JSON_TYPES: Mapping[str, str] = {v: k for k, v in _GEMINI_TYPES.items()}


class _Kind(Enum):
    VALUE = "value"  # copied as is
    INT = "int"  # proto int64: may arrive as a JSON string ("3")
    SCHEMA = "schema"  # one sub-schema
    SCHEMA_MAP = "schema_map"  # name -> sub-schema (names are data, never re-cased)
    SCHEMA_LIST = "schema_list"  # list of sub-schemas
    SCHEMA_OR_BOOL = "schema_or_bool"  # additionalProperties: a schema or true/false
    REF = "ref"  # "#/defs/X" <-> "#/$defs/X"
    EXAMPLE = "example"  # Gemini one ``example`` <-> JSON Schema ``examples`` list


# Gemini camelCase key -> (JSON Schema keyword, kind). ``type`` and ``nullable`` are handled apart:
# together they make one JSON Schema ``type`` (nullable STRING <-> ["string", "null"]).
_FIELDS: Mapping[str, tuple[str, _Kind]] = {
    "title": ("title", _Kind.VALUE),
    "description": ("description", _Kind.VALUE),
    "format": ("format", _Kind.VALUE),
    "enum": ("enum", _Kind.VALUE),
    "default": ("default", _Kind.VALUE),
    "pattern": ("pattern", _Kind.VALUE),
    "minimum": ("minimum", _Kind.VALUE),
    "maximum": ("maximum", _Kind.VALUE),
    "required": ("required", _Kind.VALUE),
    # No JSON Schema keyword; kept under its Gemini name (validators ignore unknown keywords), so a
    # Gemini -> JSON -> Gemini round trip keeps the order of properties.
    "propertyOrdering": ("propertyOrdering", _Kind.VALUE),
    "minLength": ("minLength", _Kind.INT),
    "maxLength": ("maxLength", _Kind.INT),
    "minItems": ("minItems", _Kind.INT),
    "maxItems": ("maxItems", _Kind.INT),
    "minProperties": ("minProperties", _Kind.INT),
    "maxProperties": ("maxProperties", _Kind.INT),
    "items": ("items", _Kind.SCHEMA),
    "properties": ("properties", _Kind.SCHEMA_MAP),
    "defs": ("$defs", _Kind.SCHEMA_MAP),
    "anyOf": ("anyOf", _Kind.SCHEMA_LIST),
    "additionalProperties": ("additionalProperties", _Kind.SCHEMA_OR_BOOL),
    "ref": ("$ref", _Kind.REF),
    "example": ("examples", _Kind.EXAMPLE),
}
_JSON_FIELDS: Mapping[str, tuple[str, _Kind]] = {j: (g, kind) for g, (j, kind) in _FIELDS.items()}

# JSON Schema keywords Gemini lacks but that map onto a near equivalent (recorded in ``lossy``).
_JSON_APPROX: Mapping[str, str] = {"oneOf": "anyOf", "definitions": "defs"}

_GEMINI_REF_PREFIX = "#/defs/"
_JSON_REF_PREFIXES = ("#/$defs/", "#/definitions/")

_CAMEL_RE = re.compile(r"_([a-z0-9])")
_KEY_CACHE: dict[str, str] = {}


def normalize_gemini_key(key: str) -> str:
    """snake_case -> camelCase (``max_items`` -> ``maxItems``); camelCase keys come back unchanged."""
    out = _KEY_CACHE.get(key)
    if out is None:
        out = _CAMEL_RE.sub(lambda m: m.group(1).upper(), key) if "_" in key else key
        if len(_KEY_CACHE) < 4096:  # bounded: keys are client-chosen strings
            _KEY_CACHE[key] = out
    return out


def _obj(value: JSON, path: str) -> Mapping[str, JSON]:
    if not isinstance(value, Mapping):
        raise ValueError(f"schema at {path or '/'} is not an object")
    return value


def _note(lossy: list[str] | None, path: str) -> None:
    if lossy is not None:
        lossy.append(path or "/")


def _int(value: JSON) -> JSON:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


# --------------------------------------------------------------------------------------------------
# Gemini -> JSON Schema


def gemini_to_json_schema(schema: Mapping[str, JSON], *, lossy: list[str] | None = None) -> dict[str, JSON]:
    """A Gemini ``Schema`` (camel or snake keys, any type casing) -> JSON Schema with lowercase types."""
    return _g2j(_obj(schema, ""), "", lossy)


def _g2j(schema: Mapping[str, JSON], path: str, lossy: list[str] | None) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    type_: JSON = None
    nullable = False
    for raw_key, value in schema.items():
        key = normalize_gemini_key(raw_key)
        here = f"{path}/{key}"
        if key == "type":
            type_ = value
        elif key == "nullable":
            nullable = value is True
        elif (spec := _FIELDS.get(key)) is not None:
            name, kind = spec
            out[name] = _G2J_CONVERT[kind](value, here, lossy)
        else:
            _note(lossy, here)
    json_type = _g2j_type(type_, path, lossy)
    if json_type is not None:
        # JSON Schema spells nullability as a "null" member of the type; "type" first for readability.
        return {"type": [json_type, "null"] if nullable and json_type != "null" else json_type, **out}
    if nullable:
        if isinstance(out.get("anyOf"), list):
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        else:
            _note(lossy, f"{path}/nullable")
    return out


def _g2j_type(type_: JSON, path: str, lossy: list[str] | None) -> str | None:
    if type_ is None:
        return None
    name = type_.upper() if isinstance(type_, str) else None
    if name == "TYPE_UNSPECIFIED":
        return None
    json_type = _GEMINI_TYPES.get(name) if name is not None else None
    if json_type is None:
        _note(lossy, f"{path}/type")
    return json_type


def _g2j_ref(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    if isinstance(value, str) and value.startswith(_GEMINI_REF_PREFIX):
        return "#/$defs/" + value[len(_GEMINI_REF_PREFIX) :]
    return value


def _g2j_example(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    return [value]


def _g2j_map(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    return {name: _g2j(_obj(sub, f"{path}/{name}"), f"{path}/{name}", lossy) for name, sub in _obj(value, path).items()}


def _g2j_list(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    if not isinstance(value, list):
        raise ValueError(f"schema list at {path} is not a list")
    return [_g2j(_obj(sub, f"{path}/{i}"), f"{path}/{i}", lossy) for i, sub in enumerate(value)]


def _g2j_schema_or_bool(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    return value if isinstance(value, bool) else _g2j(_obj(value, path), path, lossy)


_Convert = Callable[[JSON, str, "list[str] | None"], JSON]
_G2J_CONVERT: Mapping[_Kind, _Convert] = {
    _Kind.VALUE: lambda v, p, lossy: v,
    _Kind.INT: lambda v, p, lossy: _int(v),
    _Kind.SCHEMA: lambda v, p, lossy: _g2j(_obj(v, p), p, lossy),
    _Kind.SCHEMA_MAP: _g2j_map,
    _Kind.SCHEMA_LIST: _g2j_list,
    _Kind.SCHEMA_OR_BOOL: _g2j_schema_or_bool,
    _Kind.REF: _g2j_ref,
    _Kind.EXAMPLE: _g2j_example,
}


# --------------------------------------------------------------------------------------------------
# JSON Schema -> Gemini


def json_schema_to_gemini(schema: Mapping[str, JSON], *, lossy: list[str] | None = None) -> dict[str, JSON]:
    """JSON Schema -> a Gemini ``Schema`` with camelCase keys and UPPERCASE types.

    Approximations (recorded in ``lossy``): ``oneOf`` -> ``anyOf``, ``const`` -> one-value ``enum``,
    ``examples`` -> its first item, ``definitions`` -> ``defs``. Keywords with no Gemini field
    (``$schema``, ``exclusiveMinimum``, ``not``, ``allOf``, ...) are left out and recorded.
    """
    return _j2g(_obj(schema, ""), "", lossy)


def _j2g(schema: Mapping[str, JSON], path: str, lossy: list[str] | None) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    type_: JSON = None
    for key, value in schema.items():
        here = f"{path}/{key}"
        if key == "type":
            type_ = value
            continue
        if key == "const":
            out["enum"] = [value]
            _note(lossy, here)
            continue
        if key == "examples":  # Gemini keeps one example
            if isinstance(value, list) and value:
                out["example"] = value[0]
            if not (isinstance(value, list) and len(value) == 1):
                _note(lossy, here)
            continue
        target = key
        if key in _JSON_APPROX:
            _note(lossy, here)
            target = _FIELDS[_JSON_APPROX[key]][0]
        spec = _JSON_FIELDS.get(target)
        if spec is None:
            _note(lossy, here)
            continue
        name, kind = spec
        out[name] = _J2G_CONVERT[kind](value, here, lossy)
    _j2g_type(out, type_, path, lossy)
    if isinstance(out.get("anyOf"), list):
        _j2g_fold_null_branch(out)
    return out


def _j2g_type(out: dict[str, JSON], type_: JSON, path: str, lossy: list[str] | None) -> None:
    if type_ is None:
        return
    names = type_ if isinstance(type_, list) else [type_]
    if not all(isinstance(n, str) and n in _JSON_TYPES for n in names):
        _note(lossy, f"{path}/type")
        names = [n for n in names if isinstance(n, str) and n in _JSON_TYPES]
    nullable = "null" in names and len(names) > 1
    concrete = [n for n in names if n != "null"] if nullable else names
    if len(concrete) == 1:
        out["type"] = _JSON_TYPES[concrete[0]]
    elif concrete:  # ["string", "integer"]: Gemini has one type per node, so a union becomes anyOf
        out["anyOf"] = [*(out.get("anyOf") or []), *({"type": _JSON_TYPES[n]} for n in concrete)]
    if nullable:
        out["nullable"] = True


def _j2g_fold_null_branch(out: dict[str, JSON]) -> None:
    """``anyOf: [X, {"type": "null"}]`` -> ``anyOf: [X], nullable: true`` (Gemini's spelling)."""
    branches = out["anyOf"]
    kept = [b for b in branches if b != {"type": "NULL"}]
    if len(kept) != len(branches) and kept:
        out["anyOf"] = kept
        out["nullable"] = True


def _j2g_ref(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    if isinstance(value, str):
        for prefix in _JSON_REF_PREFIXES:
            if value.startswith(prefix):
                return _GEMINI_REF_PREFIX + value[len(prefix) :]
    return value


def _j2g_map(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    return {name: _j2g(_obj(sub, f"{path}/{name}"), f"{path}/{name}", lossy) for name, sub in _obj(value, path).items()}


def _j2g_list(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    if not isinstance(value, list):
        raise ValueError(f"schema list at {path} is not a list")
    return [_j2g(_obj(sub, f"{path}/{i}"), f"{path}/{i}", lossy) for i, sub in enumerate(value)]


def _j2g_schema_or_bool(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    return value if isinstance(value, bool) else _j2g(_obj(value, path), path, lossy)


def _j2g_items(value: JSON, path: str, lossy: list[str] | None) -> JSON:
    if isinstance(value, list):  # draft-4 tuple form: Gemini has one item schema; keep the first
        _note(lossy, path)
        return _j2g(_obj(value[0], f"{path}/0"), f"{path}/0", lossy) if value else {}
    return _j2g(_obj(value, path), path, lossy)


_J2G_CONVERT: Mapping[_Kind, _Convert] = {
    _Kind.VALUE: lambda v, p, lossy: v,
    _Kind.INT: lambda v, p, lossy: _int(v),
    _Kind.SCHEMA: _j2g_items,  # "items" is the only single-schema keyword
    _Kind.SCHEMA_MAP: _j2g_map,
    _Kind.SCHEMA_LIST: _j2g_list,
    _Kind.SCHEMA_OR_BOOL: _j2g_schema_or_bool,
    _Kind.REF: _j2g_ref,
    _Kind.EXAMPLE: lambda v, p, lossy: [v],  # unreachable: "examples" is handled in _j2g
}
