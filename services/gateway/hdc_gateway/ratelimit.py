"""Token-bucket rate limits per caller identity and per client IP (in this replica).

Each replica limits on its own; with N replicas behind a load balancer the effective
limit is up to N times the configured one, which operators size for.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from hdc_gateway.settings import BucketSettings


class RateLimiter:
    def __init__(self, settings: BucketSettings, max_keys: int) -> None:
        self.enabled = settings.rate > 0
        self._rate = settings.rate
        self._burst = float(max(settings.burst, 1))
        self._max_keys = max_keys
        # key -> (tokens, last refill time); ordered by last use so the stalest go first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, key: str) -> float:
        """0.0 when the request may pass, else the seconds until it would."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self._rate
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
