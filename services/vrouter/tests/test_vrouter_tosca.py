"""The vRouter TOSCA types parse, INDIGO names resolve to hdc's, and map onto controller calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import toscaparser.tosca_template
from hdc_vrouter.tosca import overlay_request, site_request

TEMPLATES = Path(__file__).resolve().parents[3] / "tosca-templates" / "vrouter"


def nodes(name: str) -> dict:
    template = toscaparser.tosca_template.ToscaTemplate(str(TEMPLATES / name))
    return {n.name: n for n in template.nodetemplates}


def props(node) -> dict:
    # Inputs (get_input) resolve to their defaults, as the orchestrator would with no input given.
    return {
        p.name: p.value.result() if hasattr(p.value, "result") else p.value
        for p in node.get_properties_objects()
    }


def test_hdc_template_maps_onto_overlay_and_sites():
    found = nodes("hybrid_overlay.yaml")
    hub = found["overlay_hub"]
    assert hub.type == "hdc.nodes.vrouter.Hub"
    request = overlay_request(hub.type, "hybrid", props(hub))
    assert request == {
        "name": "hybrid",
        "cidr": "10.200.0.0/16",
        "site_prefix": 24,
        "topology": "hub-and-spoke",
        "listen_port": 51820,
        "persistent_keepalive": 25,
    }
    b = found["site_b_router"]
    assert site_request(b.type, "b", props(b)) == {
        "name": "b",
        "private_ranges": ["192.168.20.0/24"],
        "nat": True,
    }
    assert [r for r in b.requirements if "central_point" in r] == [{"central_point": "overlay_hub"}]


def test_indigo_names_derive_from_hdc_types():
    found = nodes("indigo_vrouter.yaml")
    cp = found["indigovr_cp"]
    assert cp.type == "tosca.nodes.indigo.VR.CentralPoint"
    assert cp.type_definition.parent_type.type == "hdc.nodes.vrouter.Hub"
    assert (
        found["indigovr_router"].type_definition.parent_type.type == "hdc.nodes.vrouter.SiteRouter"
    )
    assert (
        found["indigovr_client"].type_definition.parent_type.type == "hdc.nodes.vrouter.SiteRouter"
    )
    # INDIGO's central point names only a network address: hdc reads it as a /16.
    assert overlay_request(cp.type, "legacy", props(cp))["cidr"] == "192.168.0.0/16"
    assert site_request(found["indigovr_router"].type, "r", props(found["indigovr_router"]))[
        "private_ranges"
    ] == ["172.16.10.0/24"]
    with pytest.raises(ValueError):
        overlay_request("tosca.nodes.Compute", "x", {})
    with pytest.raises(ValueError):
        site_request("hdc.nodes.vrouter.Hub", "x", {})
