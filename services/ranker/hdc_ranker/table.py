"""Columnar view of the candidates of one request.

The candidates are read from the request's wire bytes by the compiled decoder (decode.py)
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

from hdc_ranker import decode as d
from hdc_ranker import match, quota, wire
from hdc_ranker.errors import RankInputError

# Quota resources, in the column order of CandidateTable.quota.
QUOTA_RESOURCES = ("instances", "cores", "ram_mb", "gpus", "floating_ips")
NAN = math.nan
MASK64 = (1 << 64) - 1
MIX = 0x9E3779B97F4A7C15  # odd constant: combines two hashes into one key
EMPTY_HASH = int(wire.EMPTY_HASH)


@functools.lru_cache(maxsize=65536)
def text_hash(text: str, lower: bool = False, strip_slash: bool = False) -> int:
    # Cached: the same site and service ids come back in every request.
    return wire.hash_text(text, lower, strip_slash)


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
    """Every flavor of every candidate, flattened in candidate order; `owner[i]` is the
    candidate of flavor i, candidate c's flavors are first[c] : first[c] + count[c]."""

    def __init__(
        self,
        raw: bytes,
        ints: np.ndarray,
        nums: np.ndarray,
        vendor_hash: np.ndarray,
        first: np.ndarray,
        count: np.ndarray,
    ) -> None:
        self._raw = raw
        self.ints = ints  # decode.F_* columns
        self.nums = nums  # decode.F_CPUS.. columns
        self.owner = ints[:, d.F_OWNER]
        self.cpus = nums[:, d.F_CPUS]
        self.ram_mb = nums[:, d.F_RAM_MB]
        self.disk_gb = nums[:, d.F_DISK_GB]
        self.gpus = nums[:, d.F_GPUS]
        self.infiniband = nums[:, d.F_INFINIBAND] > 0
        self._cost = nums[:, d.F_COST]
        self._cost_set = nums[:, d.F_COST_SET] > 0
        self.vendor_hash = vendor_hash
        self.first = first
        self.count = count

    def __len__(self) -> int:
        return self.owner.size

    def of(self, i: int) -> slice:
        """The flavors of candidate i."""
        return slice(int(self.first[i]), int(self.first[i] + self.count[i]))

    def message(self, i: int) -> pb.Flavor:
        s, e = self.ints[int(i), d.F_START], self.ints[int(i), d.F_END]
        return pb.Flavor.FromString(self._raw[s:e])

    def cost_per_hour(self, flavors: np.ndarray) -> np.ndarray:
        """Published price of the given flavors (indices; -1 = none); NaN = no price."""
        has = flavors >= 0
        if not len(self):
            return np.full(flavors.size, NAN)
        pick = np.where(has, flavors, 0)
        cost = np.where(has & self._cost_set[pick], self._cost[pick], NAN)
        with np.errstate(invalid="ignore"):
            bad = has & self._cost_set[pick] & ~(np.isfinite(cost) & (cost >= 0))
        if bad.any():
            f = int(pick[np.flatnonzero(bad)[0]])
            raise RankInputError(
                f"candidates[{self.owner[f]}].flavors[{self.message(f).id}].cost_per_hour must "
                f"be a finite number >= 0, got {self._cost[f]}"
            )
        return cost


def _utf8_error(status: int, at: int, sub: int) -> str:
    if status == d.ERR_UTF8_FLAVOR:
        return f"candidates[{at}].flavors[{sub}]: id or name is not valid UTF-8"
    if status == d.ERR_UTF8_IMAGE:
        return f"candidates[{at}].images[{sub}]: id or name is not valid UTF-8"
    return f"candidates[{at}]: site_id, service_id or service_type is not valid UTF-8"


class CandidateTable:
    """The candidates of a serialized RankRequest, as columns (see decode.py), and the rest
    of the request (`head`), parsed by the protobuf library."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.buf = np.frombuffer(raw, dtype=np.uint8)
        ok, cands, head, tenant_off, tenant_len, room = d.scan_request(self.buf, False)
        if not ok:
            raise RankInputError("the request is not a valid RankRequest protobuf message")
        self.head_spans = head
        try:
            self.head = pb.RankRequest.FromString(self.head_bytes())
        except DecodeError as exc:
            raise RankInputError(f"the request is not a valid RankRequest: {exc}") from None
        req = self.head.requirements
        # Which flavor and image fit is decided as they are read (match.py).
        needs = (match.flavor_need(req), match.image_need(req))
        tenant = (tenant_off, tenant_len)
        out = d.decode_candidates(self.buf, cands, tenant, room, False, *needs)
        if out[0] == d.ERR_ROOM:  # the candidates differ more than a sample suggested
            room = d.scan_request(self.buf, True)[5]
            out = d.decode_candidates(self.buf, cands, tenant, room, True, *needs)
        (status, err_at, err_sub, ci, cf, ch, fi, ff, fh, ii, po, ph) = out
        if status == wire.ERR_MALFORMED:
            raise RankInputError(f"candidates[{err_at}] is not a valid Candidate message")
        if status != wire.OK:
            # Strings copied into the answer must be UTF-8, as protobuf requires of strings.
            raise RankInputError(_utf8_error(status, err_at, err_sub))
        self.n = ci.shape[0]
        self.ints = ci  # decode.C_* columns
        self.nums = cf
        self.strs = ci[:, d.C_SITE_OFF : d.C_TYPE_LEN + 1]  # site, service, type spans
        self.status = ci[:, d.C_STATUS]
        self.public_cloud = ci[:, d.C_PUBLIC_CLOUD] > 0
        self.site_hash = ch[:, d.H_SITE]
        self.type_hash = ch[:, d.H_TYPE]
        self.rows = LazyRows(raw, ci[:, d.C_START], ci[:, d.C_END])
        self.flavors = FlavorTable(
            raw, fi, ff, fh, ci[:, d.C_FLAVOR_FIRST], ci[:, d.C_FLAVOR_COUNT]
        )
        self.image_owner = ii[:, d.I_OWNER]
        self.image_ints = ii
        self.image_count = ci[:, d.C_IMAGE_COUNT]
        self.image_first = ci[:, d.C_IMAGE_FIRST]
        self.idp_owner = po
        self.idp_hash = ph
        self.idp_count = ci[:, d.C_IDP_COUNT]

    def head_bytes(self) -> bytes:
        """Every field of the request but the candidates (for the protobuf library)."""
        return wire.gather(self.buf, self.head_spans).tobytes()

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

    @cached_property
    def service_hash(self) -> np.ndarray:
        """Hash of each service id (computed when a look-up needs it)."""
        return wire.hash_spans(self.buf, self.strs[:, 2], self.strs[:, 3])

    @cached_property
    def sites(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct site of each candidate, as an index into the distinct sites; the first
        candidate of each distinct site)."""
        return wire.intern(self.site_hash)

    @cached_property
    def site_list(self) -> list[str]:
        """The distinct site ids, in the order of `sites`."""
        return [self.site(i) for i in self.sites[1].tolist()]

    def site_names(self, idx: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The distinct site ids (all of the request's), and the position in that list of
        each candidate of `idx` (decodes one string per site, not per candidate)."""
        return self.site_list, self.sites[0][idx]

    # ------------------------------------------------------------ columns

    @cached_property
    def freshness(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(creation time, valid until, published stale flag); NaN = unknown."""
        created = self.nums[:, d.C_CREATED]
        valid = self.nums[:, d.C_VALID_UNTIL].copy()
        validity = self.nums[:, d.C_VALIDITY_S]
        by_validity = np.isnan(valid) & ~np.isnan(validity)
        valid[by_validity] = created[by_validity] + validity[by_validity]
        return created, valid, self.ints[:, d.C_STALE] > 0

    @cached_property
    def quota(self) -> tuple[np.ndarray, np.ndarray]:
        """(limits, usage), shape (n, len(QUOTA_RESOURCES)): NaN unknown, -1 unlimited."""
        limits, usage, i, j = quota.quota_columns(self.nums)
        if i >= 0:
            raise RankInputError(
                f"candidates[{i}].quotas: {QUOTA_RESOURCES[j]} limit {limits[i, j]:g} / usage "
                f"{usage[i, j]:g} invalid (limit >= 0 or -1 for unlimited; usage >= 0)"
            )
        return limits, usage

    def cost(self, idx: np.ndarray) -> np.ndarray:
        """Prices of candidates `idx`, shape (len(idx), 4): per CPU-hour, per GPU-hour,
        per GB-RAM-hour, flat per instance-hour; NaN = not published."""
        prices = self.nums[idx, d.C_COST_CPU : d.C_COST_FLAT + 1]
        flat_set = self.nums[idx, d.C_COST_FLAT_SET] > 0
        breakdown_set = ~np.isnan(prices[:, 0])
        with np.errstate(invalid="ignore"):
            bad_flat = flat_set & ~(np.isfinite(prices[:, 3]) & (prices[:, 3] >= 0))
            bad_breakdown = breakdown_set & ~(
                np.isfinite(prices[:, 0:3]) & (prices[:, 0:3] >= 0)
            ).all(axis=1)
        if bad_flat.any():
            j = int(np.flatnonzero(bad_flat)[0])
            raise RankInputError(
                f"candidates[{idx[j]}].cost_per_hour must be a finite number >= 0, "
                f"got {prices[j, 3]}"
            )
        if bad_breakdown.any():
            j = int(np.flatnonzero(bad_breakdown)[0])
            raise RankInputError(f"candidates[{idx[j]}].cost: prices must be finite numbers >= 0")
        return prices

    def record_hashes(self, idx: np.ndarray, tag: int) -> np.ndarray:
        """Per candidate of `idx`: a hash of its fields with `tag` (decode.T_*)."""
        return d.hash_records(self.buf, self.ints, np.asarray(idx, dtype=np.int64), tag)

    def identity_issuers(self, i: int) -> list[str]:
        return [idp.issuer or idp.name for idp in self.rows[i].identity_providers]
