"""The user's context of one request (SLAs, preferences, monitoring) as checked arrays, and
look-ups of its entries by each candidate's site and service."""

from __future__ import annotations

import numpy as np

from hdc_ranker import decode_context as dc
from hdc_ranker.errors import RankInputError
from hdc_ranker.table import EMPTY_HASH, CandidateTable, pair_keys

_EMPTY = np.uint64(EMPTY_HASH)


class KeyIndex:
    """Sorted distinct keys, each with the position of its last entry (a later entry with
    the same key replaces an earlier one, as in a dict)."""

    def __init__(self, keys: np.ndarray, positions: np.ndarray) -> None:
        reverse = keys[::-1]
        self.keys, first = np.unique(reverse, return_index=True)
        self.positions = positions[::-1][first]

    def __len__(self) -> int:
        return self.keys.size

    def find(self, queries: np.ndarray) -> np.ndarray:
        """Position of each query's entry; -1 where there is none."""
        if not self.keys.size:
            return np.full(queries.size, -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, queries)
        pos[pos == self.keys.size] = 0
        return np.where(self.keys[pos] == queries, self.positions[pos], -1)


class SiteServiceIndex:
    """Entries keyed by (site id hash, service id hash), the empty service meaning the whole
    site. Whole-site entries are looked up once per distinct site of the request; per-service
    keys (and the candidates' service hashes) only when some entry names a service."""

    def __init__(self, site: np.ndarray, service: np.ndarray) -> None:
        whole = service == _EMPTY
        at = np.arange(site.size)
        self.by_site = KeyIndex(site[whole], at[whole])
        self.by_service = KeyIndex(pair_keys(site[~whole], service[~whole]), at[~whole])

    def __len__(self) -> int:
        return len(self.by_site) + len(self.by_service)

    def find(self, table: CandidateTable, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For candidates `idx`: the entry for (site, service) and for (site, ""), -1 none."""
        site_of, first = table.sites
        whole_site = self.by_site.find(table.site_hash[first])[site_of[idx]]
        if len(self.by_service):
            own = self.by_service.find(pair_keys(table.site_hash[idx], table.service_hash[idx]))
        else:
            own = np.full(idx.size, -1, dtype=np.int64)
        return own, whole_site


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0]) if bad.any() else -1


class UserContext:
    """SLAs, preferences and monitoring of a request, read from its bytes and checked (bad
    input is a RankInputError naming the field)."""

    def __init__(self, table: CandidateTable) -> None:
        status, slas, targets, prefs, monitoring, probes = dc.decode_context(
            table.buf, table.head_spans
        )
        if status != 0:
            raise RankInputError("the request's SLAs, preferences or monitoring do not parse")
        self._raw = table.raw
        self.sla_hash, self.sla_time, sla_site_len = slas
        t_owner, t_hash, t_span, t_value = targets
        self.pref_hash, self.pref_weight, pref_site_len = prefs
        self.mon_hash, mon_site_len = monitoring
        self.probe_owner, probe_num = probes
        self.probe_rate = probe_num[:, dc.R_RATE]
        self.probe_response_ms = probe_num[:, dc.R_RESPONSE_MS]
        self.probe_time = probe_num[:, dc.R_TIME]
        # A map key given twice in one SLA: the later value counts (protobuf semantics).
        keep = np.sort(
            KeyIndex(
                pair_keys(t_owner.astype(np.uint64), t_hash), np.arange(t_owner.size)
            ).positions
        )
        self.target_owner, self.target_hash = t_owner[keep], t_hash[keep]
        self.target_span, self.target_value = t_span[keep], t_value[keep]
        self._check(pref_site_len, mon_site_len, sla_site_len)

    def _text(self, span: np.ndarray) -> str:
        return self._raw[span[0] : span[0] + span[1]].decode("utf-8", errors="replace")

    def _check(
        self, pref_site_len: np.ndarray, mon_site_len: np.ndarray, sla_site_len: np.ndarray
    ) -> None:
        """In the order the first bad field is reported: preferences (site, weight),
        monitoring (site), SLAs (site, target values); probes come later (check_probes)."""
        w = self.pref_weight
        with np.errstate(invalid="ignore"):
            bad_weight = ~((w >= 0) & np.isfinite(w))
        i = _first((pref_site_len == 0) | bad_weight)
        if i >= 0:
            if pref_site_len[i] == 0:
                raise RankInputError(f"preferences[{i}].site_id is required")
            raise RankInputError(
                f"preferences[{i}].weight must be a finite number >= 0, got {w[i]}"
            )
        i = _first(mon_site_len == 0)
        if i >= 0:
            raise RankInputError(f"monitoring[{i}].site_id is required")
        v = self.target_value
        with np.errstate(invalid="ignore"):
            bad_target = np.bincount(
                self.target_owner, weights=~((v >= 0) & np.isfinite(v)), minlength=sla_site_len.size
            )
        i = _first((sla_site_len == 0) | (bad_target > 0))
        if i >= 0:
            if sla_site_len[i] == 0:
                raise RankInputError(f"slas[{i}].site_id is required")
            with np.errstate(invalid="ignore"):
                t = int(np.flatnonzero((self.target_owner == i) & ~((v >= 0) & np.isfinite(v)))[0])
            name = self._text(self.target_span[t])
            raise RankInputError(
                f"slas[{i}].targets[{name!r}] must be a finite number >= 0, got {v[t]}"
            )

    def check_probes(self) -> None:
        """Success rates in [0, 1], response times finite and >= 0."""
        rate, rt = self.probe_rate, self.probe_response_ms
        with np.errstate(invalid="ignore"):
            bad_rate = ~((rate >= 0) & (rate <= 1))
            bad_rt = ~((rt >= 0) & np.isfinite(rt))
        for bad, name, rule, value in (
            (bad_rate, "success_rate", "a number in [0, 1]", rate),
            (bad_rt, "response_time_ms", "a finite number >= 0", rt),
        ):
            j = _first(bad)
            if j >= 0:
                k = int(self.probe_owner[j])
                pos = j - int(np.flatnonzero(self.probe_owner == k)[0])
                raise RankInputError(
                    f"monitoring[{k}].probes[{pos}].{name} must be {rule}, got {value[j]}"
                )

    # ------------------------------------------------------------ SLAs

    def slas_in_force(self, now: float) -> np.ndarray:
        """Which SLAs are in force at `now` (an unset start or end does not limit)."""
        start, end = self.sla_time[:, dc.S_START], self.sla_time[:, dc.S_END]
        with np.errstate(invalid="ignore"):
            return ~(now < start) & ~(now > end)

    def sla_index(self, which: np.ndarray) -> SiteServiceIndex:
        """The SLAs `which` (indices) by site and service; entries are positions in it."""
        h = self.sla_hash[which]
        return SiteServiceIndex(h[:, dc.S_SITE], h[:, dc.S_SERVICE])

    def sla_targets(self, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, SiteServiceIndex]:
        """For the SLAs `which`: one row per distinct (site, service), the largest value of
        each target type (columns in the order of the type names), and the index of the
        rows: (values (rows, types), types present, index)."""
        h = self.sla_hash[which]
        keys = pair_keys(h[:, dc.S_SITE], h[:, dc.S_SERVICE])
        uniq, first, row_of = np.unique(keys, return_index=True, return_inverse=True)
        position = np.full(self.sla_hash.shape[0], -1, dtype=np.int64)
        position[which] = row_of.reshape(-1)
        mine = position[self.target_owner] >= 0 if self.target_owner.size else np.zeros(0, bool)
        kinds, kind_first, kind_of = np.unique(
            self.target_hash[mine], return_index=True, return_inverse=True
        )
        names = [self._text(s) for s in self.target_span[mine][kind_first]]
        # Columns in name order, as a reader of the SLAs would list them.
        order = sorted(range(len(names)), key=names.__getitem__)
        column = np.empty(len(names), dtype=np.int64)
        column[order] = np.arange(len(names))
        values = np.zeros((uniq.size, len(names)))
        np.maximum.at(
            values,
            (position[self.target_owner[mine]], column[kind_of.reshape(-1)]),
            self.target_value[mine],
        )
        index = SiteServiceIndex(h[first, dc.S_SITE], h[first, dc.S_SERVICE])
        return values, np.asarray(sorted(names)), index

    # ------------------------------------------------------------ monitoring

    def monitoring_values(self, now: float, half_life_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Per monitoring entry with probes: (entry, value), value = the probes' success
        rate x 1/(1 + response time / 1 s), weights halving every `half_life_s`."""
        n = self.mon_hash.shape[0]
        when = self.probe_time
        age = np.where(np.isnan(when), 0.0, np.maximum(0.0, now - when))
        w = 0.5 ** (age / half_life_s)
        num = np.bincount(
            self.probe_owner,
            weights=w * self.probe_rate / (1.0 + self.probe_response_ms / 1000.0),
            minlength=n,
        )
        den = np.bincount(self.probe_owner, weights=w, minlength=n)
        entries = np.flatnonzero(den > 0)
        return entries, num[entries] / den[entries]

    def monitoring_index(self, entries: np.ndarray) -> SiteServiceIndex:
        h = self.mon_hash[entries]
        return SiteServiceIndex(h[:, dc.M_SITE], h[:, dc.M_SERVICE])

    # ------------------------------------------------------------ preferences

    def preferences(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (service type, site, service) hashes, as rows, with the largest weight
        given to each."""
        h = self.pref_hash
        keys = pair_keys(pair_keys(h[:, dc.P_TYPE], h[:, dc.P_SITE]), h[:, dc.P_SERVICE])
        uniq, first, group = np.unique(keys, return_index=True, return_inverse=True)
        weights = np.zeros(uniq.size)
        np.maximum.at(weights, group.reshape(-1), self.pref_weight)
        return h[first, : dc.P_SLA], weights
