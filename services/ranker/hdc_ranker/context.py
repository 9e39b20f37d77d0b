"""Everything the filters and scorers of one request see: the request, the columnar
candidates, the reference time, and computations several plug-ins share (flavor choice,
the SLAs that cover each candidate)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker import wire
from hdc_ranker.errors import RankInputError
from hdc_ranker.table import (
    EMPTY_HASH,
    CandidateTable,
    lookup,
    pair_key,
    pair_keys,
    text_hash,
    ts_seconds,
)


class HistorySource(Protocol):
    """Success-rate estimates of past deployments, per site id (see history.py)."""

    def success_estimates(self, site_ids: list[str], now: float) -> np.ndarray: ...


class NoHistory:
    """No past deployments known: every site gets the uninformed prior."""

    def success_estimates(self, site_ids: list[str], now: float) -> np.ndarray:
        return np.full(len(site_ids), 0.5)


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


class RankContext:
    def __init__(
        self,
        request: pb.RankRequest,
        table: CandidateTable,
        now: float,
        knobs: Knobs,
        history: HistorySource,
    ) -> None:
        # `request` holds everything but the candidates, which are in `table`.
        self.request = request
        self.req: pb.Requirements = request.requirements
        self.table = table
        self.n = self.table.n
        self.now = now
        self.knobs = knobs
        self.history = history
        # Results plug-ins leave for the answer (e.g. "image": chosen image id per candidate).
        self.shared: dict[str, object] = {}

    @cached_property
    def instances(self) -> int:
        return max(1, self.req.instances)

    @cached_property
    def flavor_match(self) -> FlavorMatch:
        req = self.req
        ft = self.table.flavors
        n = self.n
        size = (ft.cpus >= req.cpus) & (ft.ram_mb >= req.ram_mb) & (ft.disk_gb >= req.disk_gb)
        gpu = np.ones(len(ft), dtype=bool)
        if req.gpu.count > 0:
            gpu = ft.gpus >= req.gpu.count
            if req.gpu.vendor:
                gpu &= ft.vendor_hash == np.uint64(text_hash(req.gpu.vendor, lower=True))
            if req.gpu.model:
                needle = np.frombuffer(req.gpu.model.lower().encode(), dtype=np.uint8)
                gpu &= wire.contains_lower(self.table.buf, ft.strs[:, 4], ft.strs[:, 5], needle)
        ib = ft.infiniband if req.infiniband else np.ones(len(ft), dtype=bool)
        ok = size & gpu & ib

        def any_per_candidate(mask: np.ndarray) -> np.ndarray:
            return np.bincount(ft.owner[mask], minlength=n) > 0

        chosen = np.full(n, -1, dtype=np.int64)
        idx = np.flatnonzero(ok)
        if idx.size:
            # Smallest matching flavor: fewest GPUs, then CPUs, RAM, disk (cost goes to the
            # cost scorer; the smallest flavor that fits wastes the least quota).
            order = np.lexsort(
                (ft.disk_gb[idx], ft.ram_mb[idx], ft.cpus[idx], ft.gpus[idx], ft.owner[idx])
            )
            sorted_idx = idx[order]
            owners = ft.owner[sorted_idx]
            first = np.ones(owners.size, dtype=bool)
            first[1:] = owners[1:] != owners[:-1]
            chosen[owners[first]] = sorted_idx[first]
        return FlavorMatch(
            chosen=chosen,
            has_flavors=ft.count > 0,
            any_size=any_per_candidate(size),
            any_gpu=any_per_candidate(gpu),
            any_ib=any_per_candidate(ib),
        )

    @cached_property
    def per_instance_need(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cpus, ram_mb, gpus) one instance takes: the chosen flavor's, else the request's."""
        req = self.req
        chosen = self.flavor_match.chosen
        ft = self.table.flavors
        has = chosen >= 0
        pick = np.where(has, chosen, 0)
        cpus = np.full(self.n, float(req.cpus))
        ram = np.full(self.n, float(req.ram_mb))
        gpus = np.full(self.n, float(req.gpu.count))
        if len(ft):
            cpus = np.where(has, ft.cpus[pick], cpus)
            ram = np.where(has, ft.ram_mb[pick], ram)
            gpus = np.where(has, ft.gpus[pick], gpus)
        return cpus, ram, gpus

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
        time in seconds or NaN), read in one pass and checked."""
        rows = [
            (k, p.success_rate, p.response_time_ms, p.time.seconds, p.time.nanos)
            for k, m in enumerate(self.request.monitoring)
            for p in m.probes
        ]
        data = np.array(rows, dtype=np.float64).reshape(len(rows), 5)
        entry, rate, rt = data[:, 0].astype(np.int64), data[:, 1], data[:, 2]
        when = np.where(
            (data[:, 3] == 0) & (data[:, 4] == 0), np.nan, data[:, 3] + data[:, 4] * 1e-9
        )
        with np.errstate(invalid="ignore"):
            bad_rate = ~((rate >= 0) & (rate <= 1))
            bad_rt = ~((rt >= 0) & np.isfinite(rt))
        for bad, name, rule in (
            (bad_rate, "success_rate", "a number in [0, 1]"),
            (bad_rt, "response_time_ms", "a finite number >= 0"),
        ):
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                k = int(entry[j])
                pos = j - int(np.flatnonzero(entry == k)[0])
                value = rate[j] if name == "success_rate" else rt[j]
                raise RankInputError(
                    f"monitoring[{k}].probes[{pos}].{name} must be {rule}, got {value}"
                )
        return entry, rate, rt, when

    @cached_property
    def slas_in_force(self) -> list[pb.Sla]:
        out = []
        for sla in self.request.slas:
            start, end = ts_seconds(sla.start), ts_seconds(sla.end)
            if not math.isnan(start) and self.now < start:
                continue
            if not math.isnan(end) and self.now > end:
                continue
            out.append(sla)
        return out

    def sla_keys(self, slas: list[pb.Sla]) -> dict[int, int]:
        """Key (site, service) of each SLA -> its position in `slas` (a later one wins)."""
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
