"""Pieces of the in-memory placement engine."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hdc_infoprovider.placement import _first_k, _free_instances, epoch, version_key


def test_first_k_per_service_keeps_order():
    svc = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    idx = np.array([0, 1, 2, 3, 4, 6, 7])
    assert _first_k(svc, idx, 2).tolist() == [0, 1, 3, 4, 6]
    assert _first_k(svc, idx, 0).tolist() == idx.tolist()
    assert _first_k(svc, np.array([], dtype=np.int64), 3).tolist() == []


def test_version_key_orders_dotted_versions():
    assert version_key("11.8") < version_key("11.10") < version_key("12") < version_key("12.2")
    assert version_key("") == 0


def test_epoch_of_naive_and_aware_utc():
    aware = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert epoch(aware) == aware.timestamp() == epoch(aware.replace(tzinfo=None))


class _Q:
    def __init__(self, limits, usage):
        self.limits, self.usage = limits, usage


class _F:
    def __init__(self, cpus, ram_mb, gpus):
        self.cpus, self.ram_mb, self.gpus = cpus, ram_mb, gpus


def test_free_instances_takes_the_tightest_limit():
    q = _Q({"instances": 10, "cores": 40, "ram_mb": 65536, "gpus": 4}, {"instances": 2, "cores": 8})
    assert _free_instances(q, _F(8, 8192, 0)) == 4  # cores: 32 // 8
    assert _free_instances(q, _F(2, 32768, 0)) == 2  # RAM: 65536 // 32768
    assert _free_instances(q, _F(1, 1024, 2)) == 2  # GPUs: 4 // 2
    assert _free_instances(_Q({"instances": -1}, {}), _F(1, 1, 0)) == -1  # unlimited
    assert _free_instances(_Q({}, {}), None) == -1
