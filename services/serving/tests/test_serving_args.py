"""Argument handling: the fast loader agrees with marshmallow; Accept negotiation; schemas."""

from __future__ import annotations

import math

import pytest
from hdc_serving.args import ArgSpec, ArgumentError, field_schema, negotiate
from marshmallow import fields, validate

DECLARED = {
    "pixels": fields.List(
        fields.Float(validate=validate.Range(min=0, max=16)),
        load_default=None,
        validate=validate.Length(equal=3),
    ),
    "count": fields.Int(required=True, validate=validate.Range(min=1)),
    "name": fields.Str(load_default="x", validate=validate.OneOf(["x", "y"])),
    "flag": fields.Bool(load_default=False),
    "labels": fields.List(fields.Str(), load_default=list),
    "ratio": fields.Float(allow_none=True, load_default=None),
}

INPUTS = [
    {"count": 1},
    {"count": 2, "pixels": [0, 1.5, 16]},
    {"count": 2, "pixels": [0, 1.5, 16.5]},
    {"count": 2, "pixels": [0, 1]},
    {"count": 2, "pixels": [0, "1", 2]},
    {"count": 2, "pixels": [True, 1, 2]},
    {"count": 2, "pixels": [math.nan, 1, 2]},
    {"count": 2, "pixels": [math.inf, 1, 2]},
    {"count": 2, "pixels": "1,2,3"},
    {"count": "3"},
    {"count": 3.0},
    {"count": 0},
    {"count": True},
    {"count": 1, "name": "y", "flag": True, "labels": ["a", "b"], "ratio": 0.5},
    {"count": 1, "name": "z"},
    {"count": 1, "flag": "true"},
    {"count": 1, "labels": ["a", 2]},
    {"count": 1, "ratio": None},
    {"name": "x"},
]


@pytest.mark.parametrize("raw", INPUTS)
def test_fast_loader_gives_what_marshmallow_gives(raw):
    spec = ArgSpec.build(DECLARED, "T")
    assert spec._fast is not None
    try:
        expected = spec.schema.load(raw)
    except Exception as exc:  # marshmallow says no: so must we, with marshmallow's words
        with pytest.raises(ArgumentError) as err:
            spec.load(raw)
        assert err.value.errors == exc.messages
        return
    assert spec.load(raw) == expected


def test_unusual_fields_fall_back_to_marshmallow():
    spec = ArgSpec.build({"when": fields.DateTime(), "n": fields.Int(data_key="N")}, "U")
    assert spec._fast is None
    assert spec.load({"when": "2024-01-02T03:04:05"})["when"].year == 2024


def test_negotiate():
    choices = ["application/json", "text/plain", "image/png"]
    assert negotiate(choices, None) == "application/json"
    assert negotiate(choices, "*/*") == "application/json"
    assert negotiate(choices, "image/*") == "image/png"
    assert negotiate(choices, "text/html, text/plain;q=0.4, application/json;q=0.3") == "text/plain"
    assert negotiate(choices, "application/json;q=0, text/plain") == "text/plain"
    assert negotiate(choices, "text/html") is None


def test_field_schema_covers_common_fields():
    assert field_schema(fields.Int(validate=validate.Range(min=1, max=9))) == {
        "type": "integer",
        "minimum": 1,
        "maximum": 9,
    }
    assert field_schema(
        fields.Str(metadata={"description": "d"}, validate=validate.OneOf(["a"]))
    ) == {
        "type": "string",
        "description": "d",
        "enum": ["a"],
    }
    assert field_schema(fields.Field(metadata={"type": "file"})) == {
        "type": "string",
        "format": "binary",
    }
    assert field_schema(fields.List(fields.Float()))["items"] == {"type": "number"}
    nested = field_schema(fields.Nested({"a": fields.Int()}))
    assert nested == {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert field_schema(fields.DateTime())["format"] == "date-time"


def test_query_and_form_strings_become_lists():
    from starlette.datastructures import Headers, QueryParams

    spec = ArgSpec.build(DECLARED, "Q")
    raw = spec.collect(
        QueryParams("count=2&pixels=1,2,3&labels=a&labels=b"), None, None, Headers({})
    )
    assert spec.load(raw) == {
        "count": 2,
        "pixels": [1.0, 2.0, 3.0],
        "labels": ["a", "b"],
        "name": "x",
        "flag": False,
        "ratio": None,
    }
    raw = spec.collect(QueryParams("count=2&pixels=[1,2,3]"), None, {"count": 5}, Headers({}))
    assert spec.load(raw)["count"] == 5  # the JSON body wins over the query string
