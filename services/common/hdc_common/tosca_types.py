"""Where hdc's TOSCA type files live (`tosca-templates/`), for every service that parses TOSCA.

Found from `HDC_TOSCA_TYPES_DIR`, else in the source checkout above this file, else at
`/opt/hdc/tosca-templates` where the service images copy it. Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# The type files every parser loads, relative to the types directory.
TYPE_FILES = ("indigo/custom_types.yaml", "hdc/hdc_types.yaml", "vrouter/vrouter_types.yaml")


@functools.cache
def types_dir() -> Path:
    env = os.environ.get("HDC_TOSCA_TYPES_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tosca-templates"
        if (candidate / TYPE_FILES[0]).is_file():
            return candidate
    return Path("/opt/hdc/tosca-templates")


def type_files(*names: str) -> list[str]:
    """Absolute paths of the named type files (default: all of TYPE_FILES) that exist."""
    base = types_dir()
    return [str(base / f) for f in (names or TYPE_FILES) if (base / f).is_file()]
