"""Operator configuration: weights, plug-ins, bad values refused at start with one line."""

from __future__ import annotations

import pytest
from hdc_common.errors import ConfigError
from hdc_common.settings import load_settings
from hdc_ranker.service import build_ranker
from hdc_ranker.settings import RankerSettings


def test_weights_from_environment_are_used(mk, monkeypatch):
    monkeypatch.setenv("HDC_RANKER_WEIGHTS", '{"cost": 5, "preference": 0}')
    monkeypatch.setenv("HDC_RANKER_DISABLED", '["headroom"]')
    settings = load_settings(RankerSettings)
    ranker = build_ranker(settings)
    out = ranker.rank(mk.request(mk.candidate("a")))
    assert "preference" not in out.criteria and "headroom" not in out.criteria
    assert dict(zip(out.criteria, out.weights, strict=True))["cost"] == 5.0


def test_unknown_weight_is_a_config_error():
    with pytest.raises(ConfigError, match=r"weights: unknown criteria \['speed'\]"):
        build_ranker(RankerSettings(weights={"speed": 1.0}))


def test_negative_weight_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HDC_RANKER_WEIGHTS", '{"cost": -1}')
    with pytest.raises(ConfigError, match="weight of 'cost' must be a number >= 0"):
        load_settings(RankerSettings)


def test_plugin_reference_in_settings():
    ranker = build_ranker(
        RankerSettings(disabled=["cost"], plugins=["hdc_ranker.scorers:CostScorer"])
    )
    assert "cost" in ranker.registry.scorers
    with pytest.raises(ConfigError, match="cannot load"):
        build_ranker(RankerSettings(plugins=["no_such_module:X"]))
