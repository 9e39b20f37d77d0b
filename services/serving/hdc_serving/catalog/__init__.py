"""Module catalog entries: the metadata JSON each model ships, checked against one JSON Schema.

The schema (`schema.json` here, served at `/catalog/schema.json`) is the contract the dashboard
and the orchestrator read catalog entries with.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).with_name("schema.json")


class CatalogError(ValueError):
    """A catalog entry that does not follow the schema; the message names the bad field."""


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(entry: Any) -> dict[str, Any]:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise CatalogError(f"catalog entry field {where}: {first.message}")
    return entry


def demo_entries() -> list[dict[str, Any]]:
    """The catalog entries of the demo models, read without importing the models.

    For the dashboard and the orchestrator: the demo catalog of an embedded platform.
    """
    models = Path(__file__).parent.parent / "models"
    return [validate(json.loads(p.read_text())) for p in sorted(models.glob("*.catalog.json"))]
