"""Resolve the TOSCA functions the orchestrator can evaluate before provisioning.

`get_input` is always resolved (the im receives a template with inputs filled in);
`concat` and `token` are evaluated when all their arguments are known values. Functions on
run-time data (`get_attribute`, `get_property` of other nodes, ...) are left for the im.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SCALAR = (str, int, float, bool)


class FunctionError(ValueError):
    pass


def resolve(value: Any, inputs: Mapping[str, Any], where: str = "") -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "get_input":
                return _get_input(arg, inputs, where)
            if key == "concat":
                return _concat(arg, inputs, where)
            if key == "token":
                return _token(arg, inputs, where)
        return {
            k: resolve(v, inputs, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolve(v, inputs, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _get_input(arg: Any, inputs: Mapping[str, Any], where: str) -> Any:
    path = arg if isinstance(arg, list) else [arg]
    if not path or not isinstance(path[0], str):
        raise FunctionError(f"{where}: get_input needs an input name, got {arg!r}")
    name = path[0]
    if name not in inputs:
        raise FunctionError(f"{where}: get_input refers to unknown input '{name}'")
    value = inputs[name]
    # Nested access into list/map inputs: get_input: [name, key_or_index, ...]
    for step in path[1:]:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise FunctionError(f"{where}: get_input {path!r}: no element {step!r}") from None
    return value


def _concat(arg: Any, inputs: Mapping[str, Any], where: str) -> Any:
    if not isinstance(arg, list):
        raise FunctionError(f"{where}: concat needs a list of values")
    parts = [resolve(a, inputs, where) for a in arg]
    if all(isinstance(p, SCALAR) for p in parts):
        return "".join(_text(p) for p in parts)
    return {"concat": parts}


def _token(arg: Any, inputs: Mapping[str, Any], where: str) -> Any:
    if not isinstance(arg, list) or len(arg) != 3:
        raise FunctionError(f"{where}: token needs [string, separators, index]")
    string, separators, index = (resolve(a, inputs, where) for a in arg)
    if not isinstance(string, SCALAR):
        return {"token": [string, separators, index]}
    if not isinstance(separators, str) or not separators:
        raise FunctionError(f"{where}: token separators must be a non-empty string")
    if not isinstance(index, int) or isinstance(index, bool):
        raise FunctionError(f"{where}: token index must be an integer")
    pieces = re.split("[" + re.escape(separators) + "]", _text(string))
    if not -len(pieces) <= index < len(pieces):
        raise FunctionError(f"{where}: token index {index} out of range ({len(pieces)} substrings)")
    return pieces[index]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
