"""Check deployment parameters against the template's inputs: names, types, constraints.

INDIGO only checks that required inputs are present; hdc also checks each value's type and
the input's constraints, so a bad value is a 400 at submit time instead of a failed
deployment minutes later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toscaparser.common.exception import ExceptionCollector
from toscaparser.dataentity import DataEntity
from toscaparser.elements.constraints import Constraint

from hdc_orchestrator.redact import SECRET_KEY

KNOWN_TYPES = {
    "string", "integer", "float", "number", "boolean", "timestamp", "range", "list", "map",
    "version", "scalar-unit.size", "scalar-unit.time", "scalar-unit.frequency",
}  # fmt: skip


class InputError(ValueError):
    pass


def is_secret_name(name: str) -> bool:
    return bool(SECRET_KEY.search(name))


def check_inputs(
    definitions: Mapping[str, Any] | None, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """The value of every input (parameter, else default), type-coerced; raise InputError."""
    definitions = definitions or {}
    if not isinstance(definitions, Mapping):
        raise InputError("topology_template.inputs must be a mapping")
    unknown = sorted(set(parameters) - set(definitions))
    if unknown:
        known = ", ".join(sorted(definitions)) or "none"
        raise InputError(
            f"parameter(s) {', '.join(repr(u) for u in unknown)} are not inputs of the "
            f"template (its inputs: {known})"
        )
    values: dict[str, Any] = {}
    # Outside a parse, toscaparser raises validation errors at once instead of collecting.
    ExceptionCollector.stop()
    for name, spec in definitions.items():
        if not isinstance(spec, Mapping):
            raise InputError(f"input '{name}' must be a mapping with at least a 'type'")
        if name in parameters:
            value = parameters[name]
        elif "default" in spec:
            value = spec["default"]
        elif spec.get("required", True) is False:
            continue
        else:
            raise InputError(f"required input '{name}' has no value (no parameter, no default)")
        if value is None:
            if spec.get("required", True) is False:
                continue
            raise InputError(f"required input '{name}' is null")
        values[name] = _check_one(name, spec, value)
    return values


def _check_one(name: str, spec: Mapping[str, Any], value: Any) -> Any:
    typ = spec.get("type", "string")
    if not isinstance(typ, str):
        raise InputError(f"input '{name}': type must be a string")
    if typ not in KNOWN_TYPES:
        # Complex (data type) inputs are validated by tosca-parser during the parse.
        return value
    if typ == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ == "integer" and isinstance(value, bool):
        raise InputError(f"input '{name}': {value!r} is not an integer")
    if typ == "string" and not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # orchent sends numbers for string inputs; INDIGO accepts them
        else:
            raise InputError(f"input '{name}': {value!r} is not a string")
    try:
        coerced = DataEntity.validate_datatype(typ, value, spec.get("entry_schema"))
    except Exception as exc:
        raise InputError(f"input '{name}' (type {typ}): {_msg(exc)}") from None
    if typ in ("integer", "float", "boolean"):
        value = coerced
    for raw in spec.get("constraints") or []:
        try:
            constraint = Constraint(name, typ, raw)
            constraint.validate(value)
        except Exception as exc:
            raise InputError(f"input '{name}': {_msg(exc)}") from None
    return value


def _msg(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
