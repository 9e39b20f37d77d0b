"""The im knows the vRouter node types by default, so hybrid templates reach the drivers."""

from __future__ import annotations

from hdc_common.tosca_types import types_dir
from hdc_im import tosca
from hdc_im.settings import ImSettings


def test_hybrid_template_parses_with_default_types():
    settings = ImSettings()
    text = (types_dir() / "vrouter" / "hybrid_deployment.yaml").read_text()
    topology = tosca.load(text, settings.tosca_types_files)
    assert topology is not None
    assert any(f.endswith("vrouter/vrouter_types.yaml") for f in settings.tosca_types_files)
