"""Gemini Schema (OpenAPI subset, UPPERCASE types, camel or snake keys) <-> JSON Schema."""

from __future__ import annotations

from typing import Any

import pytest
from google.genai import types as genai_types

from shared.codecs.gemini_schema import gemini_to_json_schema, json_schema_to_gemini, normalize_gemini_key

# What the google-genai SDK sends for a function's parameters (the Gemini Live API reference)
SDK_PARAMETERS = {"properties": {"city": {"type": "STRING"}}, "required": ["city"], "type": "OBJECT"}

ROUND_TRIPS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    {"type": ["string", "null"], "description": "maybe", "enum": ["a", "b"], "format": "enum"},
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 1, "maxItems": 3},
    {
        "type": "object",
        "properties": {"pet": {"$ref": "#/$defs/Pet"}, "user_name": {"type": "string", "pattern": "^[a-z]+$"}},
        "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "number"}}}},
        "propertyOrdering": ["user_name", "pet"],
        "additionalProperties": False,
    },
    {"anyOf": [{"type": "string"}, {"type": "boolean"}], "title": "either", "default": "x"},
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1, "maxProperties": 4},
    {"type": "string", "minLength": 2, "maxLength": 5, "examples": ["abc"]},
]


def test_sdk_parameters_become_json_schema() -> None:
    lossy: list[str] = []
    assert gemini_to_json_schema(SDK_PARAMETERS, lossy=lossy) == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    assert lossy == []


@pytest.mark.parametrize("schema", ROUND_TRIPS)
def test_json_schema_round_trips_through_gemini(schema: dict[str, Any]) -> None:
    lossy: list[str] = []
    gemini = json_schema_to_gemini(schema, lossy=lossy)
    genai_types.Schema.model_validate(gemini)  # forbids unknown fields: every key is a Gemini Schema field
    assert gemini_to_json_schema(gemini, lossy=lossy) == schema
    assert lossy == []


def test_json_to_gemini_spelling() -> None:
    gemini = json_schema_to_gemini(ROUND_TRIPS[3])
    assert gemini == {
        "type": "OBJECT",
        "properties": {"pet": {"ref": "#/defs/Pet"}, "user_name": {"type": "STRING", "pattern": "^[a-z]+$"}},
        "defs": {"Pet": {"type": "OBJECT", "properties": {"legs": {"type": "NUMBER"}}}},
        "propertyOrdering": ["user_name", "pet"],
        "additionalProperties": False,
    }
    assert json_schema_to_gemini({"type": ["string", "null"]}) == {"type": "STRING", "nullable": True}


def test_snake_keys_and_int64_strings_are_normalised_but_property_names_are_not() -> None:
    gemini = {
        "type": "object",  # lowercase types are accepted too
        "properties": {"n_days": {"type": "ARRAY", "max_items": "3", "items": {"type": "INTEGER"}}},
        "property_ordering": ["n_days"],
        "any_of": [{"type": "OBJECT"}],
        "nullable": True,
    }
    assert gemini_to_json_schema(gemini) == {
        "type": ["object", "null"],
        "properties": {"n_days": {"type": "array", "maxItems": 3, "items": {"type": "integer"}}},
        "propertyOrdering": ["n_days"],
        "anyOf": [{"type": "object"}],
    }


def test_nullable_without_type_folds_into_any_of() -> None:
    assert gemini_to_json_schema({"anyOf": [{"type": "STRING"}], "nullable": True}) == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert json_schema_to_gemini({"anyOf": [{"type": "string"}, {"type": "null"}]}) == {
        "anyOf": [{"type": "STRING"}],
        "nullable": True,
    }


def test_type_unions_become_any_of() -> None:
    assert json_schema_to_gemini({"type": ["string", "integer", "null"]}) == {
        "anyOf": [{"type": "STRING"}, {"type": "INTEGER"}],
        "nullable": True,
    }


def test_unmappable_keywords_are_reported_never_silently_dropped() -> None:
    lossy: list[str] = []
    gemini = json_schema_to_gemini(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "age": {"type": "integer", "exclusiveMinimum": 0},
                "kind": {"const": "cat"},
                "pick": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            },
        },
        lossy=lossy,
    )
    assert gemini == {
        "type": "OBJECT",
        "properties": {
            "age": {"type": "INTEGER"},
            "kind": {"enum": ["cat"]},
            "pick": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]},
        },
    }
    assert lossy == ["/$schema", "/properties/age/exclusiveMinimum", "/properties/kind/const", "/properties/pick/oneOf"]

    lossy = []
    assert gemini_to_json_schema({"type": "WIDGET", "flavour": "x"}, lossy=lossy) == {}
    assert lossy == ["/flavour", "/type"]


@pytest.mark.parametrize("bad", [[], "STRING", {"properties": {"a": "STRING"}}, {"anyOf": {"type": "STRING"}}])
def test_non_object_schemas_raise_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        gemini_to_json_schema(bad)
    with pytest.raises(ValueError):
        json_schema_to_gemini(bad)


def test_key_normalisation() -> None:
    assert normalize_gemini_key("max_items") == "maxItems"
    assert normalize_gemini_key("parametersJsonSchema") == "parametersJsonSchema"
    assert normalize_gemini_key("prebuilt_voice_config") == "prebuiltVoiceConfig"
