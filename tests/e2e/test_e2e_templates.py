"""Every ready template in tosca-templates/templates/ parses and validates with the
orchestrator's own validator, and its inputs are typed and described."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hdc_orchestrator.tosca import TemplateError, validate_template

TEMPLATES = Path(__file__).resolve().parents[2] / "tosca-templates" / "templates"
# Inputs without a default that each template needs.
REQUIRED = {
    "deep-oc-marathon.yaml": {"docker_image": "deephdc/deep-oc-generic-dev"},
    "model-kubernetes.yaml": {"site": "k8s-site"},
    "hybrid-cluster.yaml": {"site_a": "site-a", "site_b": "site-b", "hub_dns_name": "hub.example"},
}
ALL = sorted(p.name for p in TEMPLATES.glob("*.yaml"))


def test_the_library_has_every_template_the_issue_names():
    assert {
        "deep-oc-model.yaml",
        "model-training-job.yaml",
        "vm-gpu-iaas.yaml",
        "model-kubernetes.yaml",
        "hybrid-cluster.yaml",
        "deep-oc-marathon.yaml",
    } <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_template_validates(name):
    v = validate_template((TEMPLATES / name).read_text(), REQUIRED.get(name, {}))
    assert v.nodes, name
    assert any(n.compute for n in v.nodes.values()), f"{name}: nothing to place"


@pytest.mark.parametrize("name", ALL)
def test_inputs_are_typed_and_described(name):
    doc = yaml.safe_load((TEMPLATES / name).read_text())
    assert doc.get("description"), f"{name}: no description"
    inputs = doc["topology_template"].get("inputs") or {}
    assert inputs, f"{name}: no inputs"
    for key, spec in inputs.items():
        assert spec.get("type"), f"{name}: input {key} has no type"
        assert len(spec.get("description", "")) > 10, f"{name}: input {key} is not described"


@pytest.mark.parametrize("name", [n for n in ALL if n in REQUIRED])
def test_missing_required_input_is_refused(name):
    with pytest.raises(TemplateError) as err:
        validate_template((TEMPLATES / name).read_text(), {})
    assert next(iter(REQUIRED[name])) in str(err.value)


def test_model_template_requirements_follow_the_inputs():
    text = (TEMPLATES / "deep-oc-model.yaml").read_text()
    v = validate_template(text, {"model": "digits", "num_gpus": 2, "mem_size": "2 GB"})
    assert v.requirements["gpu"]["count"] == 2
    assert v.requirements["ram_mb"] == 2000
    assert v.nodes["model_service"].type == "hdc.nodes.ModelService"


@pytest.mark.parametrize(
    "params",
    [{"num_gpus": -1}, {"num_gpus": 99}, {"num_cpus": 0}, {"port": 70000}, {"num_gpus": "two"}],
)
def test_model_template_refuses_bad_inputs(params):
    with pytest.raises(TemplateError):
        validate_template((TEMPLATES / "deep-oc-model.yaml").read_text(), params)


def test_gpu_vm_asks_for_gpus_and_cuda():
    v = validate_template((TEMPLATES / "vm-gpu-iaas.yaml").read_text(), {"num_gpus": 2})
    assert v.requirements["gpu"] == {"count": 2, "vendor": "NVIDIA", "model": ""}
    assert v.requirements["image"]["cuda"] is True
    assert v.nodes["gpu_vm"].compute


def test_hybrid_cluster_joins_two_sites_through_the_vrouter():
    v = validate_template(
        (TEMPLATES / "hybrid-cluster.yaml").read_text(), REQUIRED["hybrid-cluster.yaml"]
    )
    types = {n.type for n in v.nodes.values()}
    assert {"hdc.nodes.vrouter.Hub", "hdc.nodes.vrouter.SiteRouter"} <= types
    assert v.requirements["instances"] == 5  # hub, two routers, one worker per site
    # one infrastructure per site: each policy's VMs and what they host
    assert v.requirements["site_groups"] == [
        {
            "site": "site-a",
            "nodes": [
                "hub_server",
                "overlay_hub",
                "site_a_router_server",
                "site_a_router",
                "site_a_workers",
            ],
        },
        {"site": "site-b", "nodes": ["site_b_router_server", "site_b_router", "site_b_workers"]},
    ]


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("deep-oc-marathon.yaml", {"marathon", "kubernetes", "local"}),
        ("deep-oc-model.yaml", {"marathon", "kubernetes", "local"}),
        ("model-kubernetes.yaml", {"marathon", "kubernetes", "local"}),
        ("model-training-job.yaml", {"kubernetes"}),
        ("vm-gpu-iaas.yaml", {"openstack", "ec2", "dummy"}),
        ("hybrid-cluster.yaml", {"openstack", "ec2", "dummy"}),
    ],
)
def test_templates_ask_for_sites_that_can_run_them(name, kinds):
    """Virtual machines go to IaaS clouds, long-running containers to container platforms,
    batch jobs to a platform with jobs (the service types site agents publish)."""
    from hdc_orchestrator.placement import SITE_TYPES

    v = validate_template((TEMPLATES / name).read_text(), REQUIRED.get(name, {}))
    assert {SITE_TYPES[t] for t in v.requirements["service_types"]} == kinds
    assert name in ALL


def test_placement_policy_inputs_are_resolved():
    v = validate_template(
        (TEMPLATES / "model-kubernetes.yaml").read_text(), REQUIRED["model-kubernetes.yaml"]
    )
    assert v.requirements["site_ids"] == ["k8s-site"]


def test_marathon_template_has_the_indigo_deep_oc_shape():
    """Same node names, types, ports and outputs as INDIGO's deep-oc-marathon template, so
    tools written for that one (orchent scripts, the DEEP dashboard) work with ours."""
    doc = yaml.safe_load((TEMPLATES / "deep-oc-marathon.yaml").read_text())
    assert doc["imports"][0]["indigo_custom_types"].startswith(
        "https://raw.githubusercontent.com/indigo-dc/tosca-types/"
    )
    nodes = doc["topology_template"]["node_templates"]
    assert nodes["Docker"]["type"] == "tosca.nodes.indigo.Container.Runtime.Docker"
    assert nodes["marathon"]["type"] == "tosca.nodes.indigo.Container.Application.Docker.Marathon"
    ports = [
        p["source"] for p in nodes["Docker"]["capabilities"]["host"]["properties"]["publish_ports"]
    ]
    assert ports == [5000, 6006, 8888]
    v = validate_template(yaml.safe_dump(doc), REQUIRED["deep-oc-marathon.yaml"] | {"num_gpus": 1})
    assert v.requirements["gpu"]["count"] == 1


def test_readme_documents_every_template_and_type():
    readme = (TEMPLATES.parent / "README.md").read_text()
    for name in ALL:
        assert f"`templates/{name}`" in readme, name
    for rel in ("indigo/custom_types.yaml", "hdc/hdc_types.yaml", "vrouter/vrouter_types.yaml"):
        doc = yaml.safe_load((TEMPLATES.parent / rel).read_text())
        for section, items in doc.items():
            if not isinstance(items, dict) or section == "metadata":
                continue
            for type_name, spec in items.items():
                assert f"**`{type_name}`**" in readme, type_name
                for kind in ("properties", "attributes", "capabilities"):
                    for key in (spec or {}).get(kind) or {}:
                        assert f"`{key}` (" in readme, f"{type_name}.{key}"
