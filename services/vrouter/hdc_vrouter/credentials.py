"""One-time enrolment tokens and per-agent secrets: random, shown once, stored only as hashes.

SHA-256 is enough here (no slow KDF): the values are 256-bit random, not human passwords,
so there is nothing to brute-force from a leaked hash.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "hdcvr-enrol-"
AGENT_SECRET_PREFIX = "hdcvr-agent-"


def new_enrolment_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_agent_secret() -> str:
    return AGENT_SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
