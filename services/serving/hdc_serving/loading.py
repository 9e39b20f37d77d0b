"""Finding models: the `deepaas.v2.model` entry point group, exactly as DEEPaaS does.

An entry point names an object (usually a module, sometimes a class or an instance) with
DEEPaaS's methods: `get_metadata`, `get_predict_args`, `get_train_args`, `predict`, `train`,
`warm`, and an optional response `schema`. hdc also uses, when a module offers them,
`predict_batch(list_of_kwargs)` for adaptive batching, `oip_metadata()` + `infer(tensors)`
for the Open Inference Protocol, and `get_catalog_entry()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import marshmallow

from hdc_serving.args import ArgSpec

GROUP = "deepaas.v2.model"
log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    pass


def available() -> dict[str, Any]:
    """Entry point name -> entry point, for every installed model."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_object(name: str) -> Any:
    from hdc_serving import compat

    compat.install()  # before the module is imported: some declare fields at import time
    eps = available()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ModelNotFound(f"model '{name}' is not installed (entry points in {GROUP}: {known})")
    return eps[name].load()


def response_schema(obj: Any) -> type[marshmallow.Schema] | None:
    schema = getattr(obj, "schema", None)
    if schema is None:
        return None
    if isinstance(schema, dict):
        return marshmallow.Schema.from_dict(schema, name="ModelPredictionResponse")
    if isinstance(schema, type) and issubclass(schema, marshmallow.Schema):
        return schema
    raise TypeError(
        f"response schema must be a dict of fields or a marshmallow Schema, not {schema!r}"
    )


def _call_optional(obj: Any, method: str, default: Any) -> Any:
    fn = getattr(obj, method, None)
    if fn is None:
        return default
    try:
        return fn()
    except NotImplementedError:
        return default


@dataclass
class ModelInfo:
    """What the HTTP side needs to know about a model; predictions run in the workers."""

    name: str
    predict: ArgSpec
    train: ArgSpec
    response_schema: type[marshmallow.Schema] | None
    has_train: bool
    batchable: bool
    tensor: dict[str, Any] | None
    catalog: dict[str, Any] | None


def inspect(name: str, obj: Any) -> ModelInfo:
    from hdc_serving import catalog

    entry = _call_optional(obj, "get_catalog_entry", None)
    if entry is not None:
        catalog.validate(entry)
    tensor = _call_optional(obj, "oip_metadata", None) if hasattr(obj, "infer") else None
    return ModelInfo(
        name=name,
        predict=ArgSpec.build(_call_optional(obj, "get_predict_args", {}), f"{name}PredictArgs"),
        train=ArgSpec.build(_call_optional(obj, "get_train_args", {}), f"{name}TrainArgs"),
        response_schema=response_schema(obj),
        has_train=callable(getattr(obj, "train", None)),
        batchable=callable(getattr(obj, "predict_batch", None)),
        tensor=tensor,
        catalog=entry,
    )


def load_models(only: str | None = None) -> dict[str, ModelInfo]:
    names = [only] if only else sorted(available())
    out = {}
    for name in names:
        out[name] = inspect(name, load_object(name))
    return out
