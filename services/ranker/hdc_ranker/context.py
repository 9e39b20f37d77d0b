"""Everything the filters and scorers of one request see: the request, the columnar
candidates and user context, the reference time, and computations several plug-ins share
(flavor choice, quota needs)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker import decode as d
from hdc_ranker.table import (
    EMPTY_HASH,
    CandidateTable,
    lookup,
    pair_key,
    pair_keys,
    text_hash,
)
from hdc_ranker.user_context import UserContext


class HistorySource(Protocol):
    """Success-rate estimates of past deployments, per site id (see history.py)."""

    def success_estimates(self, site_ids: list[str], now: float) -> np.ndarray: ...


class NoHistory:
    """No past deployments known: every site gets the uninformed prior."""

    def success_estimates(self, site_ids: list[str], now: float) -> np.ndarray:
        return np.full(len(site_ids), 0.5)

    def success_by_hash(self, site_hashes: np.ndarray, now: float) -> np.ndarray:
        return np.full(site_hashes.size, 0.5)


@dataclass
class Knobs:
    """The effective options of a request (request values over configured defaults)."""

    max_age_s: float
    tie_epsilon: float
    seed: int
    monitoring_half_life_s: float


@dataclass
class FlavorMatch:
    """Per candidate: the chosen flavor (index into FlavorTable, -1 none) and why not."""

    chosen: np.ndarray
    has_flavors: np.ndarray
    any_size: np.ndarray
    any_gpu: np.ndarray
    any_ib: np.ndarray
    # The most GPUs, CPUs, RAM (MB) and disk (GB) any flavor of the candidate offers.
    most: np.ndarray


class RankContext:
    def __init__(
        self,
        request: pb.RankRequest,
        table: CandidateTable,
        now: float,
        knobs: Knobs,
        history: HistorySource,
        user: UserContext | None = None,
    ) -> None:
        # `request` holds everything but the candidates, which are in `table`; its SLAs,
        # preferences and monitoring are also in `user`, as checked arrays.
        self.request = request
        self.user = user if user is not None else UserContext(table)
        self.req: pb.Requirements = request.requirements
        self.table = table
        self.n = self.table.n
        self.now = now
        self.knobs = knobs
        self.history = history
        # Results plug-ins leave for the answer (e.g. "image": per candidate, the chosen
        # image as an index into the table's images, -1 none).
        self.shared: dict[str, object] = {}

    @cached_property
    def instances(self) -> int:
        return max(1, self.req.instances)

    @cached_property
    def flavor_match(self) -> FlavorMatch:
        """Decided while the flavors were decoded (decode.py, match.py)."""
        t = self.table
        fits = t.ints[:, d.C_FITS]
        return FlavorMatch(
            chosen=t.ints[:, d.C_FLAVOR_CHOSEN],
            has_flavors=t.flavors.count > 0,
            any_size=(fits & d.FITS_SIZE) > 0,
            any_gpu=(fits & d.FITS_GPU) > 0,
            any_ib=(fits & d.FITS_INFINIBAND) > 0,
            most=t.nums[:, d.C_MOST : d.C_MOST + 4],
        )

    @cached_property
    def per_instance_need(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cpus, ram_mb, gpus) one instance takes: the chosen flavor's, else the request's."""
        req = self.req
        chosen = self.flavor_match.chosen
        ft = self.table.flavors
        has = chosen >= 0
        if not len(ft):
            return (
                np.full(self.n, float(req.cpus)),
                np.full(self.n, float(req.ram_mb)),
                np.full(self.n, float(req.gpu.count)),
            )
        pick = np.where(has, chosen, 0)
        return (
            np.where(has, ft.cpus[pick], float(req.cpus)),
            np.where(has, ft.ram_mb[pick], float(req.ram_mb)),
            np.where(has, ft.gpus[pick], float(req.gpu.count)),
        )

    @cached_property
    def quota_need(self) -> np.ndarray:
        """What the deployment takes from the quota, columns as table.QUOTA_RESOURCES."""
        cpus, ram, gpus = self.per_instance_need
        k = self.instances
        need = np.empty((self.n, 5))
        need[:, 0] = k
        need[:, 1] = cpus * k
        need[:, 2] = ram * k
        need[:, 3] = gpus * k
        need[:, 4] = self.req.public_ips
        return need

    @cached_property
    def probes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every monitoring probe: (monitoring entry index, success rate, response time ms,
        time in seconds or NaN), checked."""
        u = self.user
        u.check_probes()
        return u.probe_owner, u.probe_rate, u.probe_response_ms, u.probe_time

    @cached_property
    def sla_in_force(self) -> np.ndarray:
        """Per SLA of the request: is it in force now."""
        return self.user.slas_in_force(self.now)

    @cached_property
    def slas_in_force(self) -> list[pb.Sla]:
        """The SLAs in force, as messages (for plug-ins)."""
        return [self.request.slas[i] for i in np.flatnonzero(self.sla_in_force).tolist()]

    # For plug-ins: look-ups by dicts keyed `pair_key(site hash, service hash)`.
    def sla_keys(self, slas: list[pb.Sla]) -> dict[int, int]:
        return {
            pair_key(text_hash(sla.site_id), text_hash(sla.service_id)): k
            for k, sla in enumerate(slas)
        }

    def match_keys(self, idx: np.ndarray, table: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """For candidates `idx`: entry of `table` for (site, service) and for (site, "")."""
        t = self.table
        own = lookup(pair_keys(t.site_hash[idx], t.service_hash[idx]), table)
        whole_site = lookup(pair_keys(t.site_hash[idx], EMPTY_HASH), table)
        return own, whole_site
