"""Each scorer alone, then weighted together, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc_common.errors import ConfigError
from hdc_ranker.engine import Defaults, Ranker, normalise, tie_break_order
from hdc_ranker.history import HistoryStore
from hdc_ranker.plugins import Registry, Scorer, default_registry


def only(ranker, req, name):
    req.options.scorers.append(name)
    out = ranker.rank(req)
    assert out.criteria == [name]
    return out.scores[:, 0]


def test_normalise_min_max_missing_and_constant():
    assert normalise(np.array([2.0, 4.0, 3.0]), True, 0.5).tolist() == [0.0, 1.0, 0.5]
    assert normalise(np.array([2.0, 4.0, np.nan]), False, 0.5).tolist() == [1.0, 0.0, 0.5]
    assert normalise(np.array([7.0, 7.0]), True, 0.5).tolist() == [1.0, 1.0]
    assert normalise(np.array([np.nan, np.nan]), True, 0.25).tolist() == [0.25, 0.25]


def test_sla_scorer_scales_each_target_type(ranker, mk):
    slas = [
        pb.Sla(id="1", site_id="a", targets={"public_ip": 10, "computing_time": 100}),
        pb.Sla(id="2", site_id="b", service_id="b/nova", targets={"public_ip": 5}),
    ]
    req = mk.request(mk.candidate("a"), mk.candidate("b"), mk.candidate("c"), slas=slas)
    # raw: a (10/10 + 100/100)/2 = 1, b (5/10 + 0)/2 = 0.25, c 0 -> already in [0,1]
    assert only(ranker, req, "sla").tolist() == [1.0, 0.25, 0.0]


def test_sla_scorer_large_numbers_do_not_dominate(ranker, mk):
    # CloudProviderRanker summed raw numbers: 100 public IPs beat 1000 computing hours.
    slas = [
        pb.Sla(id="1", site_id="ips", targets={"public_ip": 100, "computing_time": 10}),
        pb.Sla(id="2", site_id="hours", targets={"public_ip": 10, "computing_time": 1000}),
    ]
    req = mk.request(mk.candidate("ips"), mk.candidate("hours"), slas=slas)
    # raw: ips (1 + 0.01)/2 = 0.505, hours (0.1 + 1)/2 = 0.55 -> hours wins
    scores = only(ranker, req, "sla")
    assert scores.tolist() == [0.0, 1.0]


def test_preference_scorer(ranker, mk):
    prefs = [
        pb.Preference(site_id="a", service_id="a/nova", weight=3),
        pb.Preference(site_id="b", weight=1),  # whole site
        pb.Preference(site_id="c", service_type="kubernetes", weight=9),  # other type: ignored
    ]
    req = mk.request(mk.candidate("a"), mk.candidate("b"), mk.candidate("c"), preferences=prefs)
    assert only(ranker, req, "preference").tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_monitoring_scorer_success_speed_decay(ranker, mk):
    now = mk.NOW
    mon = [
        pb.Monitoring(
            site_id="a", probes=[pb.Probe(name="create", success_rate=1.0, response_time_ms=0)]
        ),
        pb.Monitoring(
            site_id="b",
            service_id="b/nova",
            probes=[
                pb.Probe(name="create", success_rate=0.5, response_time_ms=1000),
            ],
        ),
        # d: a fresh perfect probe and a failure one half-life (6 h) old:
        # (1*1 + 0.5*0) / (1 + 0.5) = 2/3
        pb.Monitoring(
            site_id="d",
            probes=[
                pb.Probe(name="create", success_rate=1.0, response_time_ms=0),
                pb.Probe(name="create", success_rate=0.0, response_time_ms=0),
            ],
        ),
    ]
    mon[2].probes[0].time.seconds = now
    mon[2].probes[1].time.seconds = now - 6 * 3600
    req = mk.request(*(mk.candidate(s) for s in "abcd"), monitoring=mon)
    # raw: a 1.0, b 0.5/(1+1) = 0.25, c none, d 2/3 -> (x - 0.25)/0.75
    assert only(ranker, req, "monitoring").tolist() == pytest.approx(
        [1.0, 0.0, 0.5, (2 / 3 - 0.25) / 0.75]
    )


def test_monitoring_scorer_degraded_counts_half(ranker, mk):
    mon = [pb.Monitoring(site_id=s, probes=[pb.Probe(success_rate=1.0)]) for s in "ab"]
    req = mk.request(
        mk.candidate("a"), mk.candidate("b", status=pb.STATUS_DEGRADED), monitoring=mon
    )
    assert only(ranker, req, "monitoring").tolist() == [1.0, 0.0]


def test_headroom_scorer(ranker, mk):
    cands = [
        mk.candidate("a", quota={"cores": (10, 0)}),  # (10-0-2)/10 = 0.8
        mk.candidate("b", quota={"cores": (10, 6), "ram_mb": (100_000, 0)}),  # min(0.2, ~0.96)
        mk.candidate("c", quota={"cores": (-1, 0)}),  # unlimited: 1
        mk.candidate("d"),  # nothing published
    ]
    req = mk.request(*cands, requirements=pb.Requirements(cpus=2))
    assert only(ranker, req, "headroom").tolist() == pytest.approx([0.75, 0.0, 1.0, 0.5])


def test_history_scorer_from_recorded_outcomes(mk, sqlite_url):
    from hdc_common.db import create_engine, session_factory
    from hdc_ranker.service import migrate_schema

    engine = create_engine(sqlite_url)
    migrate_schema(engine)
    sessions = session_factory(engine)
    store = HistoryStore(sessions)
    events = (
        [("a", "CREATE_COMPLETE")] * 3 + [("a", "CREATE_FAILED")] + [("b", "CREATE_FAILED")] * 2
    )
    with sessions.begin() as s:
        for n, (site, status) in enumerate(events):
            store.record(
                s, {"uuid": f"d{n}", "status": status, "cloudProviderName": site}, when=mk.NOW
            )
    ranker = Ranker(default_registry(entry_points_too=False), Defaults(), history=store)
    req = mk.request(mk.candidate("a"), mk.candidate("b"), mk.candidate("c"))
    # raw: a (3+1)/(4+2) = 2/3, b (0+1)/(2+2) = 1/4, c prior 1/2
    assert only(ranker, req, "history").tolist() == pytest.approx([1.0, 0.0, 0.6])


def test_cost_scorer_flavor_breakdown_and_flat(ranker, mk):
    a = mk.candidate("a", flavors=[dict(id="m", cpus=2, ram_mb=4096, cost_per_hour=2.0)])
    b = mk.candidate("b")  # 2 CPUs, 4 GiB: 2*0.5 + 4*0.1 = 1.4
    b.cost.per_cpu_hour, b.cost.per_gb_ram_hour = 0.5, 0.1
    c = mk.candidate("c", cost_per_hour=3.0)
    d = mk.candidate("d")  # no price
    req = mk.request(a, b, c, d, requirements=pb.Requirements(cpus=2))
    # lower is better: (3 - x) / (3 - 1.4)
    assert only(ranker, req, "cost").tolist() == pytest.approx([0.625, 1.0, 0.0, 0.5])


def test_combined_weights_and_order(ranker, mk):
    prefs = [pb.Preference(site_id="a", weight=1.0)]
    a = mk.candidate("a", cost_per_hour=4.0)
    b = mk.candidate("b", cost_per_hour=1.0)
    req = mk.request(
        a,
        b,
        preferences=prefs,
        scorers=["preference", "cost"],
        weights={"preference": 1, "cost": 3},
    )
    out = ranker.rank(req)
    # a: (1*1 + 3*0)/4 = 0.25; b: (1*0 + 3*1)/4 = 0.75
    assert out.total.tolist() == [0.25, 0.75]
    assert out.rank.tolist() == [2, 1]
    assert out.weights == [1.0, 3.0]
    req.options.weights["preference"] = 10
    out = ranker.rank(req)  # a: 10/13, b: 3/13
    assert out.rank.tolist() == [1, 2]


def test_zero_weight_drops_criterion(ranker, mk):
    out = ranker.rank(mk.request(mk.candidate("a"), weights={"cost": 0}))
    assert "cost" not in out.criteria


def test_near_ties_broken_by_seed_reproducibly(ranker, mk):
    cands = [mk.candidate(f"s{i}") for i in range(8)]
    orders = {}
    for seed in (1, 2, 3):
        a = ranker.rank(mk.request(*cands, seed=seed)).order.tolist()
        b = ranker.rank(mk.request(*cands, seed=seed)).order.tolist()
        assert a == b
        orders[seed] = a
    assert len({tuple(o) for o in orders.values()}) > 1  # different seeds, different orders


def test_tie_break_keeps_clear_winners_first():
    idx = np.arange(5)
    totals = np.array([0.5, 0.9, 0.5 + 1e-9, 0.1, 0.5])
    for seed in range(5):
        order = tie_break_order(idx, totals, 1e-6, seed).tolist()
        assert order[0] == 1 and order[-1] == 3
        assert sorted(order[1:4]) == [0, 2, 4]


def test_tie_groups_never_span_more_than_epsilon():
    # 40 totals 0.4e-6 apart: each is a near tie of its neighbours, but the first and the
    # last are 15.6e-6 apart and must not be shuffled past each other.
    totals = 1.0 - np.arange(40) * 0.4e-6
    for seed in range(10):
        order = tie_break_order(np.arange(40), totals, 1e-6, seed)
        ranked = totals[order]
        assert all(a >= b - 1e-6 for a, b in zip(ranked, ranked[1:], strict=False))
        assert set(order[:3].tolist()) <= {0, 1, 2}


def test_plugin_scorer_registered_without_touching_core(mk):
    class PreferPrivate(Scorer):
        name = "private"

        def raw(self, ctx, idx):
            return np.array([0.0 if ctx.table.rows[i].public_cloud else 1.0 for i in idx])

    reg = default_registry(entry_points_too=False)
    reg.register(PreferPrivate())
    ranker = Ranker(reg, Defaults())
    req = mk.request(
        mk.candidate("pub", public_cloud=True), mk.candidate("priv"), scorers=["private"]
    )
    out = ranker.rank(req)
    assert out.criteria == ["private"] and out.rank.tolist() == [2, 1]


def test_plugin_by_reference_and_disable():
    reg = default_registry(disabled=["cost"], entry_points_too=False)
    assert "cost" not in reg.scorers
    reg.load_ref("hdc_ranker.scorers:CostScorer")
    assert "cost" in reg.scorers
    with pytest.raises(ConfigError, match="neither"):
        Registry().load_ref("hdc_ranker.engine:Defaults")
    with pytest.raises(ConfigError, match="cannot load"):
        Registry().load_ref("hdc_ranker.nowhere:Thing")
    with pytest.raises(ConfigError, match="unknown filter or scorer 'nope'"):
        default_registry(disabled=["nope"], entry_points_too=False)
