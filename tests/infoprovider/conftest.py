"""Fixtures of the infoprovider end-to-end tests (real RabbitMQ and PostgreSQL)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.fakes.* and tests.infoprovider.harness
    sys.path.insert(0, str(ROOT))
