"""Let modules written for marshmallow 3 declare their fields the way they always did.

Most DEEP modules build fields as `fields.Str(required=False, missing="x",
description="...", enum=[...])` or `fields.Field(type="file", location="form")`. Marshmallow
3 put unknown keyword arguments into `field.metadata` and accepted `missing`/`default`;
marshmallow 4 raises TypeError, so such a module could not even list its arguments. The
runtime installs this shim before it imports any model: `missing`/`default` become
`load_default`/`dump_default`, other unknown keywords go to `metadata`, as marshmallow 3 did.
Only calls that would otherwise fail change behaviour.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from marshmallow import fields

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    original = fields.Field.__init__
    known = set(inspect.signature(original).parameters) - {"self"}
    if "metadata" not in known or "missing" in known:
        _installed = True  # marshmallow 3 handles these itself
        return

    @functools.wraps(original)
    def __init__(self: fields.Field, *args: Any, **kwargs: Any) -> None:
        if "missing" in kwargs:
            kwargs.setdefault("load_default", kwargs.pop("missing"))
        if "default" in kwargs:
            kwargs.setdefault("dump_default", kwargs.pop("default"))
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
        if extra:
            kwargs["metadata"] = {**(kwargs.get("metadata") or {}), **extra}
        original(self, *args, **kwargs)

    fields.Field.__init__ = __init__  # type: ignore[method-assign]
    _installed = True
