"""A model's argument fields (webargs/marshmallow, as DEEPaaS modules declare them).

`ArgSpec` is built once per model and endpoint from `get_predict_args()` /
`get_train_args()`; it knows which arguments are files, which one is `accept`, turns the
raw values of a request (query string, form fields, JSON body, headers) into what
marshmallow loads, and describes every field as JSON Schema for the OpenAPI document.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from dataclasses import dataclass, field
from typing import Any

import marshmallow
from marshmallow import fields as mf
from marshmallow import validate as mv

JSON_TYPES = ("application/json", "*/*")


class ArgumentError(Exception):
    """Invalid arguments: `errors` maps each argument name to what is wrong with it."""

    def __init__(self, errors: dict[str, Any], status: int = 422) -> None:
        self.errors = errors
        self.status = status
        super().__init__(describe(errors))


def describe(errors: dict[str, Any]) -> str:
    parts = []
    for name, msgs in errors.items():
        if isinstance(msgs, dict):
            msgs = [
                f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in msgs.items()
            ]
        elif not isinstance(msgs, list):
            msgs = [msgs]
        parts.append(f"argument '{name}': {' '.join(str(m) for m in msgs)}")
    return "; ".join(parts)


def is_file_field(f: mf.Field) -> bool:
    return f.metadata.get("type") == "file" or getattr(f, "type", None) == "file"


def field_location(f: mf.Field) -> str | None:
    return f.metadata.get("location") or getattr(f, "location", None)


@dataclass
class ArgSpec:
    fields: dict[str, mf.Field]
    file_args: set[str] = field(default_factory=set)
    header_args: set[str] = field(default_factory=set)
    accept: list[str] | None = None
    schema: marshmallow.Schema | None = None
    _fast: Any = None

    @classmethod
    def build(cls, declared: dict[str, mf.Field] | None, name: str) -> ArgSpec:
        declared = dict(declared or {})
        for key, value in declared.items():
            if not isinstance(value, mf.Field):
                raise TypeError(
                    f"argument '{key}' is a {type(value).__name__}, not a marshmallow field"
                )
        spec = cls(fields=declared)
        spec.file_args = {k for k, f in declared.items() if is_file_field(f)}
        spec.header_args = {k for k, f in declared.items() if field_location(f) == "headers"}
        accept = declared.get("accept")
        if accept is not None:
            spec.header_args.add("accept")
            spec.accept = list(_choices(accept) or JSON_TYPES[:1])
        schema_cls = marshmallow.Schema.from_dict(declared, name=name)
        spec.schema = schema_cls(unknown=marshmallow.EXCLUDE)
        spec._fast = compile_fast_loader(declared)
        return spec

    # -- requests -------------------------------------------------------------------

    def collect(
        self,
        query: Any,
        form: Any | None,
        body: dict[str, Any] | None,
        headers: Any,
    ) -> dict[str, Any]:
        """Raw values for the declared arguments, from wherever the client put them.

        Like webargs' defaults: query string, form and JSON body are all looked at (body
        wins); header arguments come from headers. Strings from the query string or a form
        become lists/dicts for list/dict fields.
        """
        raw: dict[str, Any] = {}
        for name, f in self.fields.items():
            if name in self.header_args:
                if name in headers:
                    raw[name] = headers[name]
                continue
            if body is not None and name in body:
                raw[name] = body[name]
                continue
            values = None
            if form is not None and name in form:
                values = form.getlist(name)
            elif name in query:
                values = query.getlist(name)
            if values is not None:
                raw[name] = _from_strings(f, values)
        return raw

    def load(self, raw: dict[str, Any]) -> dict[str, Any]:
        assert self.schema is not None
        if self._fast is not None:
            loaded = self._fast(raw)
            if loaded is not None:
                return loaded
        errors: dict[str, Any] = {}
        for name in self.file_args:
            value = raw.get(name)
            if value is not None and not _is_upload(value):
                errors[name] = [
                    "Expected a file upload (a multipart/form-data part with a filename)."
                ]
        for name, value in raw.items():
            if name not in self.file_args and _is_upload(value):
                errors[name] = ["Not a file argument; send it as a plain form field."]
        if errors:
            raise ArgumentError(errors)
        try:
            return self.schema.load(raw)
        except marshmallow.ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            raise ArgumentError(messages) from None

    # -- OpenAPI --------------------------------------------------------------------

    def body_schema(self, with_files: bool) -> dict[str, Any]:
        props: dict[str, Any] = {}
        required = []
        for name, f in self.fields.items():
            if name in self.header_args or (name in self.file_args and not with_files):
                continue
            props[name] = field_schema(f)
            if f.required:
                required.append(name)
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = required
        return out


def _is_upload(value: Any) -> bool:
    return hasattr(value, "filename") and (
        hasattr(value, "file") or hasattr(value, "original_filename")
    )


def _from_strings(f: mf.Field, values: list[Any]) -> Any:
    if isinstance(f, mf.List | mf.Tuple):
        if len(values) == 1 and isinstance(values[0], str):
            text = values[0].strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    return text
            if "," in text:
                return [v.strip() for v in text.split(",")]
        return values
    value = values[-1]
    if isinstance(f, mf.Dict | mf.Nested) and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _choices(f: mf.Field) -> list[Any] | None:
    validators = f.validate if isinstance(f.validate, list | tuple) else [f.validate]
    for v in [*validators, *getattr(f, "validators", [])]:
        if isinstance(v, mv.OneOf):
            return list(v.choices)
    enum = f.metadata.get("enum")
    return list(enum) if enum else None


_SIMPLE: list[tuple[type, dict[str, Any]]] = [
    (mf.Boolean, {"type": "boolean"}),
    (mf.Integer, {"type": "integer"}),
    (mf.Float, {"type": "number"}),
    (mf.Decimal, {"type": "number"}),
    (mf.Number, {"type": "number"}),
    (mf.UUID, {"type": "string", "format": "uuid"}),
    (mf.Email, {"type": "string", "format": "email"}),
    (mf.Url, {"type": "string", "format": "uri"}),
    (mf.AwareDateTime, {"type": "string", "format": "date-time"}),
    (mf.NaiveDateTime, {"type": "string", "format": "date-time"}),
    (mf.DateTime, {"type": "string", "format": "date-time"}),
    (mf.Date, {"type": "string", "format": "date"}),
    (mf.Time, {"type": "string", "format": "time"}),
    (mf.TimeDelta, {"type": "number"}),
    (mf.String, {"type": "string"}),
    (mf.Dict, {"type": "object"}),
]


def field_schema(f: mf.Field) -> dict[str, Any]:
    """JSON Schema (OpenAPI 3.0 flavour) for one marshmallow field."""
    out: dict[str, Any] = {}
    if is_file_field(f):
        out = {"type": "string", "format": "binary"}
    elif isinstance(f, mf.List):
        out = {"type": "array", "items": field_schema(f.inner)}
    elif isinstance(f, mf.Tuple):
        out = {"type": "array", "minItems": len(f.tuple_fields), "maxItems": len(f.tuple_fields)}
    elif isinstance(f, mf.Nested):
        nested = f.schema
        out = {
            "type": "object",
            "properties": {k: field_schema(v) for k, v in nested.fields.items()},
        }
        if f.many:
            out = {"type": "array", "items": out}
    else:
        for cls, schema in _SIMPLE:
            if isinstance(f, cls):
                out = dict(schema)
                break
    description = f.metadata.get("description")
    if description:
        out["description"] = str(description)
    choices = _choices(f)
    if choices:
        out["enum"] = choices
    default = f.load_default
    if default is not marshmallow.missing and not callable(default):
        safe = _jsonable(default)
        if safe is not None or default is None:
            out["default"] = safe
            if default is None:
                out["nullable"] = True
    validators = f.validate if isinstance(f.validate, list | tuple) else [f.validate]
    for v in [*validators, *getattr(f, "validators", [])]:
        if isinstance(v, mv.Range):
            if v.min is not None:
                out["minimum"] = v.min
            if v.max is not None:
                out["maximum"] = v.max
        elif isinstance(v, mv.Length):
            lo, hi = (
                ("minItems", "maxItems")
                if out.get("type") == "array"
                else ("minLength", "maxLength")
            )
            if v.equal is not None:
                out[lo] = out[hi] = v.equal
            else:
                if v.min is not None:
                    out[lo] = v.min
                if v.max is not None:
                    out[hi] = v.max
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return None


_NEGOTIATED: dict[tuple[tuple[str, ...], str], str | None] = {}


def negotiate(choices: list[str], header: str | None) -> str | None:
    """The first of `choices` the Accept header allows, best q first; None when none fits."""
    if not header:
        return choices[0]
    # Clients send the same few Accept headers again and again: remember the answers.
    key = (tuple(choices), header)
    if key in _NEGOTIATED:
        return _NEGOTIATED[key]
    result = _negotiate(choices, header)
    if len(_NEGOTIATED) < 1024:
        _NEGOTIATED[key] = result
    return result


def _negotiate(choices: list[str], header: str) -> str | None:
    ranges = []
    for i, part in enumerate(header.split(",")):
        bits = [b.strip() for b in part.split(";")]
        media = bits[0].lower()
        if not media:
            continue
        q = 1.0
        for b in bits[1:]:
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            ranges.append((-q, i, media))
    for _, _, media in sorted(ranges):
        for choice in choices:
            c = choice.lower()
            if media in ("*/*", c) or (media.endswith("/*") and c.startswith(media[:-1])):
                return choice
    return None


# -- fast path ------------------------------------------------------------------------
#
# marshmallow spends ~1.5 µs per list item (deserialize + validate calls); a 64-pixel array
# costs ~90 µs, the largest share of a prediction's time on the event loop. For plain
# fields (numbers, strings, booleans, lists of them) with the stock validators, the checks
# below give the same value marshmallow would, much faster. Anything they are not sure of
# (an unusual type, a value that fails a check, a field option they do not know) makes
# them return None and marshmallow runs instead, so error messages and edge cases stay
# marshmallow's own.

_MISSING = marshmallow.missing
_NUMBER_TYPES = {float, int}  # exact types: bool, a subclass of int, is not a number here


def _fast_validator(v: Any) -> Any:
    if isinstance(v, mv.Range):
        lo, hi, lo_inc, hi_inc = v.min, v.max, v.min_inclusive, v.max_inclusive

        def check(x: Any) -> bool:
            if lo is not None and (x < lo if lo_inc else x <= lo):
                return False
            return not (hi is not None and (x > hi if hi_inc else x >= hi))

        return check
    if isinstance(v, mv.OneOf):
        choices = list(v.choices)
        return lambda x: x in choices
    if isinstance(v, mv.Length):
        lo, hi, eq = v.min, v.max, v.equal
        if eq is not None:
            return lambda x: len(x) == eq
        return lambda x: (lo is None or len(x) >= lo) and (hi is None or len(x) <= hi)
    return None


def _fast_field(f: mf.Field) -> Any:
    """A function value -> loaded value (or raises _Slow), or None when f is not simple."""
    if f.data_key is not None or f.attribute is not None:
        return None
    checks = []
    for v in getattr(f, "validators", []):
        c = _fast_validator(v)
        if c is None:
            return None
        checks.append(c)
    if type(f) in (mf.Float,) and not f.allow_nan and not f.as_string:

        def convert(x: Any) -> Any:
            t = type(x)
            if (t is float and x - x == 0) or t is int:  # finite float or int, never bool
                return float(x)
            raise _Slow
    elif type(f) in (mf.Integer, mf.Int) and not f.strict and not f.as_string:

        def convert(x: Any) -> Any:
            if type(x) is int:
                return x
            raise _Slow
    elif type(f) in (mf.String, mf.Str):

        def convert(x: Any) -> Any:
            if type(x) is str:
                return x
            raise _Slow
    elif type(f) in (mf.Boolean, mf.Bool):

        def convert(x: Any) -> Any:
            if type(x) is bool:
                return x
            raise _Slow
    elif type(f) in (mf.Field, mf.Raw):

        def convert(x: Any) -> Any:
            return x
    elif type(f) is mf.List and _plain_float(f.inner) is not None:
        # Numeric arrays are the common case (pixels, features): check them as a whole.
        lo, hi = _plain_float(f.inner)

        def convert(x: Any) -> Any:
            if type(x) is not list or not set(map(type, x)) <= _NUMBER_TYPES:
                raise _Slow
            out = [float(i) for i in x]
            if out:
                if not math.isfinite(sum(out)):
                    raise _Slow
                if (lo is not None and min(out) < lo) or (hi is not None and max(out) > hi):
                    raise _Slow
            return out
    elif type(f) is mf.List:
        inner = _fast_field(f.inner)
        if inner is None:
            return None

        def convert(x: Any) -> Any:
            if type(x) is not list:
                raise _Slow
            return [inner(i) for i in x]
    else:
        return None
    allow_none = f.allow_none

    def load(x: Any) -> Any:
        if x is None:
            if allow_none:
                return None
            raise _Slow
        value = convert(x)
        for c in checks:
            if not c(value):
                raise _Slow
        return value

    return load


def _plain_float(f: mf.Field) -> tuple[float | None, float | None] | None:
    """(min, max) for a Float field with at most one inclusive Range check, else None."""
    if type(f) is not mf.Float or f.allow_nan or f.as_string or f.allow_none:
        return None
    if f.data_key is not None or f.attribute is not None:
        return None
    validators = list(getattr(f, "validators", []))
    if not validators:
        return (None, None)
    if len(validators) == 1 and isinstance(validators[0], mv.Range):
        r = validators[0]
        if r.min_inclusive and r.max_inclusive:
            return (r.min, r.max)
    return None


class _Slow(Exception):
    """This value needs marshmallow."""


def compile_fast_loader(declared: dict[str, mf.Field]) -> Any:
    plan = []
    for name, f in declared.items():
        loader = _fast_field(f)
        if loader is None:
            return None
        plan.append((name, loader, f))

    def load(raw: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        try:
            for name, loader, f in plan:
                if name in raw:
                    out[name] = loader(raw[name])
                elif f.required:
                    return None
                else:
                    default = f.load_default
                    if default is not _MISSING:
                        out[name] = default() if callable(default) else default
        except (_Slow, TypeError, ValueError):
            return None
        return out

    return load
