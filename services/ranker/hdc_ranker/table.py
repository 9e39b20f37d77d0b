"""Columnar view of the candidates of one request.

The candidates are read from the request's wire bytes by the compiled decoder (wire.py)
into numpy columns once per request; filters and scorers work on those columns. Strings
are byte spans plus 64-bit hashes (look-ups against a request's few SLA / preference /
monitoring keys compare hashes). A plug-in that wants a candidate as a protobuf message
gets it from `rows[i]`, parsed on demand.
"""

from __future__ import annotations

import functools
import math
from functools import cached_property

import numpy as np
from google.protobuf.message import DecodeError
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker import wire
from hdc_ranker.errors import RankInputError

# Quota resources, in the column order of CandidateTable.quota.
QUOTA_RESOURCES = ("instances", "cores", "ram_mb", "gpus", "floating_ips")
NAN = math.nan
MASK64 = (1 << 64) - 1
MIX = 0x9E3779B97F4A7C15  # odd constant: combines two hashes into one key
EMPTY_HASH = wire.fnv1a_text("")


@functools.lru_cache(maxsize=65536)
def text_hash(text: str, lower: bool = False, strip_slash: bool = False) -> int:
    # Cached: the same site and service ids come back in every request.
    return wire.fnv1a_text(text, lower, strip_slash)


def pair_key(a: int, b: int) -> int:
    """Key of a pair of hashes (Python ints), equal to `pair_keys` on arrays."""
    return ((a * MIX) & MASK64) ^ b


def pair_keys(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (
            (a * np.uint64(MIX)) ^ np.uint64(b) if isinstance(b, int) else (a * np.uint64(MIX)) ^ b
        )


def lookup(keys: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Index (from `table`) of every key; -1 where the key is not in the table."""
    if not table:
        return np.full(keys.size, -1, dtype=np.int64)
    known = np.fromiter(table.keys(), np.uint64, len(table))
    values = np.fromiter(table.values(), np.int64, len(table))
    order = np.argsort(known)
    known, values = known[order], values[order]
    pos = np.searchsorted(known, keys)
    pos[pos == known.size] = 0
    return np.where(known[pos] == keys, values[pos], -1)


def ts_seconds(ts: object) -> float:
    """Seconds since the epoch of a Timestamp; NaN when unset (epoch 0 is not a date)."""
    seconds, nanos = ts.seconds, ts.nanos  # type: ignore[attr-defined]
    if seconds == 0 and nanos == 0:
        return NAN
    return seconds + nanos * 1e-9


class LazyRows:
    """Candidates as protobuf messages, parsed from their bytes when first asked for."""

    def __init__(self, raw: bytes, start: np.ndarray, end: np.ndarray) -> None:
        self._raw = raw
        self._start = start
        self._end = end
        self._cache: dict[int, pb.Candidate] = {}

    def __len__(self) -> int:
        return self._start.size

    def __getitem__(self, i: int) -> pb.Candidate:
        i = int(i)
        row = self._cache.get(i)
        if row is None:
            try:
                row = pb.Candidate.FromString(self._raw[self._start[i] : self._end[i]])
            except DecodeError as exc:
                raise RankInputError(f"candidates[{i}] is not a valid Candidate: {exc}") from None
            self._cache[i] = row
        return row


class FlavorTable:
    """Every flavor of every candidate, flattened; `owner[i]` is the candidate of flavor i."""

    def __init__(
        self,
        raw: bytes,
        owner: np.ndarray,
        span: np.ndarray,
        num: np.ndarray,
        strs: np.ndarray,
        vendor_hash: np.ndarray,
        n: int,
    ) -> None:
        self._raw = raw
        self.owner = owner
        self.span = span
        self.cpus = num[:, 0]
        self.ram_mb = num[:, 1]
        self.disk_gb = num[:, 2]
        self.gpus = num[:, 3]
        self.infiniband = num[:, 4] > 0
        self._cost = num[:, 5]
        self._cost_set = num[:, 6] > 0
        self.strs = strs  # id off/len, name off/len, model off/len
        self.vendor_hash = vendor_hash
        self.count = np.bincount(owner, minlength=n)
        # flavors come in candidate order: candidate i's are first[i] : first[i] + count[i]
        self.first = np.cumsum(self.count) - self.count

    def __len__(self) -> int:
        return self.owner.size

    def of(self, i: int) -> slice:
        """The flavors of candidate i."""
        return slice(int(self.first[i]), int(self.first[i] + self.count[i]))

    def message(self, i: int) -> pb.Flavor:
        s, e = self.span[int(i)]
        return pb.Flavor.FromString(self._raw[s:e])

    def cost_per_hour(self, flavors: np.ndarray) -> np.ndarray:
        """Published price of the given flavors (indices; -1 = none); NaN = no price."""
        has = flavors >= 0
        pick = np.where(has, flavors, 0)
        if not len(self):
            return np.full(flavors.size, NAN)
        cost = np.where(has & self._cost_set[pick], self._cost[pick], NAN)
        bad = (
            has & self._cost_set[pick] & ~(np.isfinite(self._cost[pick]) & (self._cost[pick] >= 0))
        )
        if bad.any():
            f = int(pick[np.flatnonzero(bad)[0]])
            raise RankInputError(
                f"candidates[{self.owner[f]}].flavors[{self.message(f).id}].cost_per_hour must "
                f"be a finite number >= 0, got {self._cost[f]}"
            )
        return cost


class CandidateTable:
    def __init__(
        self,
        raw: bytes,
        cand_start: np.ndarray,
        cand_end: np.ndarray,
        counts: np.ndarray,
        tenant: str = "",
    ) -> None:
        self.raw = raw
        self.buf = np.frombuffer(raw, dtype=np.uint8)
        self.n = cand_start.size
        tenant_bytes = np.frombuffer(tenant.encode(), dtype=np.uint8)
        out = wire.decode_candidates(self.buf, cand_start, cand_end, counts, tenant_bytes)
        (
            err,
            err_at,
            self.strs,
            hashes,
            self.status,
            fresh,
            self._stale,
            self._cost,
            self.public_cloud,
            self._limits,
            self._usage,
            f_owner,
            f_span,
            f_num,
            f_strs,
            f_vendor,
            self.image_owner,
            self.image_strs,
            self.image_cuda,
            self.idp_owner,
            self.idp_hash,
        ) = out
        if err != wire.OK:
            raise RankInputError(f"candidates[{err_at}] is not a valid Candidate message")
        # Strings copied into the answer must be UTF-8, as protobuf requires of strings.
        for where, spans, columns in (
            ("candidates[{}]: site_id, service_id or service_type", self.strs, (0, 2, 4)),
            ("flavor {} of the request: id or name", f_strs, (0, 2)),
            ("image {} of the request: id or name", self.image_strs, (0, 2)),
        ):
            bad = wire.first_bad_utf8(self.buf, spans, np.array(columns, dtype=np.int64))
            if bad >= 0:
                raise RankInputError(where.format(bad) + " is not valid UTF-8")
        self.site_hash = hashes[:, 0]
        self.service_hash = hashes[:, 1]
        self.type_hash = hashes[:, 2]
        self._fresh = fresh
        self.rows = LazyRows(raw, cand_start, cand_end)
        self.flavors = FlavorTable(raw, f_owner, f_span, f_num, f_strs, f_vendor, self.n)

    # ------------------------------------------------------------ strings

    def text(self, off: int, length: int) -> str:
        return self.raw[off : off + length].decode("utf-8", errors="replace")

    def site(self, i: int) -> str:
        return self.text(self.strs[i, 0], self.strs[i, 1])

    def service(self, i: int) -> str:
        return self.text(self.strs[i, 2], self.strs[i, 3])

    def service_type_of(self, i: int) -> str:
        return self.text(self.strs[i, 4], self.strs[i, 5])

    @cached_property
    def site_id(self) -> list[str]:
        return [self.site(i) for i in range(self.n)]

    @cached_property
    def service_id(self) -> list[str]:
        return [self.service(i) for i in range(self.n)]

    @cached_property
    def service_type(self) -> list[str]:
        return [self.service_type_of(i) for i in range(self.n)]

    def site_names(self, idx: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The distinct site ids among candidates `idx`, and each candidate's position in it
        (decodes one string per site, not per candidate)."""
        uniq, first, inverse = np.unique(
            self.site_hash[idx], return_index=True, return_inverse=True
        )
        names = [self.site(int(idx[j])) for j in first]
        return names, inverse

    # ------------------------------------------------------------ columns

    @property
    def freshness(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(creation time, valid until, published stale flag); NaN = unknown."""
        created, valid, validity = self._fresh[:, 0], self._fresh[:, 1].copy(), self._fresh[:, 2]
        by_validity = np.isnan(valid) & ~np.isnan(validity)
        valid[by_validity] = created[by_validity] + validity[by_validity]
        return created, valid, self._stale

    @cached_property
    def quota(self) -> tuple[np.ndarray, np.ndarray]:
        """(limits, usage), shape (n, len(QUOTA_RESOURCES)): NaN unknown, -1 unlimited."""
        limits, usage = self._limits, self._usage
        bad = np.argwhere(((limits < 0) & (limits != -1)) | (usage < 0))
        if bad.size:
            i, j = bad[0]
            raise RankInputError(
                f"candidates[{i}].quotas: {QUOTA_RESOURCES[j]} limit {limits[i, j]:g} / usage "
                f"{usage[i, j]:g} invalid (limit >= 0 or -1 for unlimited; usage >= 0)"
            )
        return limits, usage

    def cost(self, idx: np.ndarray) -> np.ndarray:
        """Prices of candidates `idx`, shape (len(idx), 4): per CPU-hour, per GPU-hour,
        per GB-RAM-hour, flat per instance-hour; NaN = not published."""
        prices = self._cost[idx]
        flat_set = prices[:, 4] > 0
        breakdown_set = ~np.isnan(prices[:, 0])
        with np.errstate(invalid="ignore"):
            bad_flat = flat_set & ~(np.isfinite(prices[:, 3]) & (prices[:, 3] >= 0))
            bad_breakdown = breakdown_set & ~(
                np.isfinite(prices[:, 0:3]) & (prices[:, 0:3] >= 0)
            ).all(axis=1)
        if bad_flat.any():
            i = int(idx[np.flatnonzero(bad_flat)[0]])
            raise RankInputError(
                f"candidates[{i}].cost_per_hour must be a finite number >= 0, got {self._cost[i, 3]}"
            )
        if bad_breakdown.any():
            i = int(idx[np.flatnonzero(bad_breakdown)[0]])
            raise RankInputError(f"candidates[{i}].cost: prices must be finite numbers >= 0")
        return prices[:, 0:4]

    def identity_issuers(self, i: int) -> list[str]:
        return [idp.issuer or idp.name for idp in self.rows[i].identity_providers]
