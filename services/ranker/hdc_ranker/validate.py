"""Checks of the small parts of a request (the candidate columns are checked as they are
extracted, see table.py). Every message names the field so the caller can fix it."""

from __future__ import annotations

import math

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker.errors import RankInputError
from hdc_ranker.table import CandidateTable


def _number(value: float, where: str, *, upper: float | None = None) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise RankInputError(f"{where} must be a finite number >= 0, got {value}")
    if upper is not None and value > upper:
        raise RankInputError(f"{where} must be <= {upper}, got {value}")


def validate_site_ids(table: CandidateTable) -> None:
    missing = np.flatnonzero(table.strs[:, 1] == 0)
    if missing.size:
        raise RankInputError(f"candidates[{missing[0]}].site_id is required")


def validate_request(request: pb.RankRequest) -> None:
    for i, p in enumerate(request.preferences):
        if not p.site_id:
            raise RankInputError(f"preferences[{i}].site_id is required")
        _number(p.weight, f"preferences[{i}].weight")
    for i, m in enumerate(request.monitoring):
        if not m.site_id:
            raise RankInputError(f"monitoring[{i}].site_id is required")
    # (probe values are checked as they are read: RankContext.probes)
    for i, sla in enumerate(request.slas):
        if not sla.site_id:
            raise RankInputError(f"slas[{i}].site_id is required")
        for key, value in sla.targets.items():
            _number(value, f"slas[{i}].targets[{key!r}]")
