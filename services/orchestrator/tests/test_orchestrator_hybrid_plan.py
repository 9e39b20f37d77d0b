"""hybrid.py: reading a template's vRouter nodes, and the router script the im receives."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from hdc_orchestrator.hybrid import (
    PlanError,
    cloud_config_to_sh,
    plan_overlay,
    router_script,
)
from hdc_orchestrator.tosca import validate_template

ROOT = Path(__file__).resolve().parents[3]
HYBRID = (ROOT / "tosca-templates/vrouter/hybrid_deployment.yaml").read_text()


def _chains(text: str, **params: object) -> tuple[str, dict[str, list[str]]]:
    v = validate_template(text, params)
    return v.resolved_text, {n.name: n.types for n in v.nodes.values()}


def test_plan_of_the_ready_hybrid_template_uses_its_inputs() -> None:
    plan = plan_overlay(
        *_chains(HYBRID, hub_dns_name="hub.example.net", site_b_range="10.9.0.0/24")
    )
    assert plan is not None
    assert plan.hub_endpoint == "hub.example.net:51820" and plan.cidr == "10.200.0.0/16"
    assert [(r.node, r.host, r.private_ranges, r.nat) for r in plan.sites] == [
        ("site_a_router", "site_a_router_server", ["192.168.10.0/24"], False),
        ("site_b_router", "site_b_router_server", ["10.9.0.0/24"], True),
    ]


def test_indigo_central_point_subnet_becomes_a_16() -> None:
    text = HYBRID.replace(
        "type: hdc.nodes.vrouter.Hub\n      properties:\n        overlay_cidr: { get_input: overlay_cidr }",
        'type: tosca.nodes.indigo.VR.CentralPoint\n      properties:\n        indigovr_subnet: "172.30.0.0"',
    )
    assert text != HYBRID
    plan = plan_overlay(*_chains(text))
    assert plan is not None and plan.cidr == "172.30.0.0/16"


def test_templates_without_routers_have_no_plan_and_two_hubs_are_refused() -> None:
    assert (
        plan_overlay("topology_template: {node_templates: {}}", {"a": ["tosca.nodes.Compute"]})
        is None
    )
    resolved, chains = _chains(HYBRID)
    chains["site_a_router"] = ["hdc.nodes.vrouter.Hub"]
    with pytest.raises(PlanError, match="exactly one vRouter hub"):
        plan_overlay(resolved, chains)


def test_the_router_script_does_what_the_cloud_config_says(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "token"
    marker = tmp_path / "ran"
    doc = "#cloud-config\n" + yaml.safe_dump(
        {
            "write_files": [
                {"path": str(target), "permissions": "0600", "content": "tok-EN_1\n"},
                {"path": str(tmp_path / "raw"), "content": "no newline 'quoted' $HOME"},
            ],
            "runcmd": [["touch", str(marker)], f"echo shell >> {marker}"],
        }
    )
    lines = cloud_config_to_sh(doc)
    subprocess.run(["sh", "-e", "-c", "\n".join(lines)], check=True)
    assert target.read_text() == "tok-EN_1\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert (tmp_path / "raw").read_text() == "no newline 'quoted' $HOME"
    assert marker.read_text() == "shell\n"


def test_the_script_dispatches_on_the_node_name_and_refuses_unknown_keys() -> None:
    script = router_script({"hub_server": "#cloud-config\nruncmd: [[echo, hub]]\n"})
    assert 'case "${HDC_NODE:-}" in' in script and "  hub_server)\necho hub\n    ;;" in script
    assert subprocess.run(["sh", "-n"], input=script.encode(), check=False).returncode == 0
    with pytest.raises(ValueError, match="bootcmd"):
        cloud_config_to_sh("#cloud-config\nbootcmd: [[reboot]]\n")


def test_only_the_router_vm_runs_its_part(tmp_path: Path) -> None:
    hub, site = tmp_path / "hub", tmp_path / "site"
    script = router_script(
        {
            "hub_server": f"#cloud-config\nruncmd: [[touch, {hub}]]\n",
            "site_a_router_server": f"#cloud-config\nruncmd: [[touch, {site}]]\n",
        }
    )
    env = tmp_path / "node.env"
    for node, made in (
        ("worker", set()),
        ("site_a_router_server", {site}),
        ("hub_server", {hub, site}),
    ):
        env.write_text(f"HDC_INFRASTRUCTURE_ID=x\nHDC_NODE={node}\nHDC_VM_INDEX=0\n")
        local = script.replace("/etc/hdc/node.env", str(env))
        subprocess.run(["sh", "-c", local], check=True)
        assert {p for p in (hub, site) if p.exists()} == made
