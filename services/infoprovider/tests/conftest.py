"""Unit/contract tests of the infoprovider service (SQLite, embedded bus, loopback fakes)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # tests.fakes.* and tests.infoprovider.harness
    sys.path.insert(0, str(ROOT))
