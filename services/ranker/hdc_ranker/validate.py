"""Checks of a request's candidates beyond what decoding checks (decode.py: wire format,
UTF-8; user_context.py: SLAs, preferences, monitoring). Every message names the field so
the caller can fix it."""

from __future__ import annotations

import numpy as np

from hdc_ranker.errors import RankInputError
from hdc_ranker.table import CandidateTable


def validate_site_ids(table: CandidateTable) -> None:
    missing = np.flatnonzero(table.strs[:, 1] == 0)
    if missing.size:
        raise RankInputError(f"candidates[{missing[0]}].site_id is required")
