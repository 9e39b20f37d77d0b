"""Where TOSCA imports may come from: only local copies, never the network.

INDIGO/DEEP templates import the INDIGO custom types by URL. The orchestrator maps every
well-known form of that URL (any branch or tag of indigo-dc/tosca-types) to hdc's own types
file, and refuses every other import: downloading at parse time would make validation slow,
flaky and a way to make the server fetch arbitrary URLs; a local path would let a caller read
server files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hdc_common.tosca_types import types_dir

INDIGO_TYPES_URL = re.compile(
    r"^https?://(raw\.githubusercontent\.com/indigo-dc/tosca-types/[^/]+/"
    r"|github\.com/indigo-dc/tosca-types/(raw|blob)/[^/]+/)custom_types\.ya?ml$"
)
# Short names an hdc template may import (relative to the types directory).
SHORT_NAMES = {
    "indigo_custom_types": "indigo/custom_types.yaml",
    "hdc_types": "hdc/hdc_types.yaml",
}


class ImportRefused(ValueError):
    pass


def resolve_import(ref: str, base: Path) -> str:
    ref = ref.strip()
    if INDIGO_TYPES_URL.match(ref):
        return str(base / SHORT_NAMES["indigo_custom_types"])
    name = ref.removesuffix(".yaml").removesuffix(".yml")
    if name in SHORT_NAMES:
        return str(base / SHORT_NAMES[name])
    # hdc's own vendored type files, by path relative to tosca-templates/ (no escaping it).
    if not ref.startswith(("/", "http:", "https:", "file:")) and ".." not in ref.split("/"):
        local = base / ref
        if local.is_file() and local.suffix in (".yaml", ".yml"):
            return str(local)
    raise ImportRefused(
        f"import '{ref}' is not allowed: the orchestrator only resolves the INDIGO custom "
        f"types URL and hdc's own types ({', '.join(sorted(SHORT_NAMES))}); it never downloads"
    )


def rewrite_imports(tpl: dict[str, Any], base: Path | None = None) -> None:
    """Replace every import in the parsed template with the absolute path of its local copy."""
    base = base or types_dir()
    imports = tpl.get("imports")
    if imports is None:
        return
    if not isinstance(imports, list):
        raise ImportRefused("'imports' must be a list")
    rewritten: list[Any] = []
    for entry in imports:
        if isinstance(entry, str):
            rewritten.append(resolve_import(entry, base))
        elif isinstance(entry, dict) and len(entry) == 1:
            ((name, value),) = entry.items()
            if isinstance(value, str):
                rewritten.append({name: resolve_import(value, base)})
            elif isinstance(value, dict) and isinstance(value.get("file"), str):
                if value.get("repository"):
                    raise ImportRefused(
                        f"import '{name}' uses a repository: not allowed (no downloads)"
                    )
                rewritten.append({name: {"file": resolve_import(value["file"], base)}})
            else:
                raise ImportRefused(f"import '{name}' must name a file")
        else:
            raise ImportRefused(f"import entry {entry!r} is not a string or a one-key mapping")
    tpl["imports"] = rewritten
