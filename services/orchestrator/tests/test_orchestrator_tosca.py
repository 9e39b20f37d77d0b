"""TOSCA validation: INDIGO/DEEP templates parse against hdc's types; every problem is a
TemplateError naming it; functions, scalable.count and requirements are resolved."""

from __future__ import annotations

import pytest
import yaml
from hdc_orchestrator.tosca import MAX_TEMPLATE_BYTES, TemplateError, validate_template
from hdc_orchestrator.tosca.functions import FunctionError, resolve
from hdc_orchestrator.tosca.imports import ImportRefused, resolve_import, types_dir

INDIGO_URL = "https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml"

GPU_VM = f"""
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: {INDIGO_URL}
topology_template:
  inputs:
    wn_num: {{type: integer, default: 2}}
    mem: {{type: scalar-unit.size, default: 8 GB}}
    image: {{type: string, default: "ubuntu-20.04"}}
  node_templates:
    gpu_node:
      type: tosca.nodes.indigo.Compute
      capabilities:
        endpoint:
          properties:
            network_name: PUBLIC
            ports:
              jupyter: {{protocol: tcp, source: 8888}}
        scalable:
          properties:
            count: {{get_input: wn_num}}
        host:
          properties:
            num_cpus: 4
            mem_size: {{get_input: mem}}
            disk_size: 40 GB
            num_gpus: 2
            gpu_vendor: NVIDIA
            gpu_model: V100
            infiniband: true
        os:
          properties:
            image: {{get_input: image}}
            distribution: ubuntu
            version: "20.04"
            cuda_support: true
            cuda_min_version: "11.2"
    ssh_name:
      type: tosca.nodes.SoftwareComponent
      requirements:
        - host: gpu_node
  policies:
    - deploy_on_sla:
        type: tosca.policies.indigo.SlaPlacement
        properties: {{sla_id: sla-42}}
        targets: [gpu_node]
    - pin:
        type: tosca.policies.indigo.Placement
        properties: {{provider: site-b}}
        targets: [gpu_node]
  outputs:
    url:
      value: {{concat: ["http://", {{get_attribute: [gpu_node, public_address, 0]}}, ":8888"]}}
    greeting:
      value: {{concat: ["node-", {{get_input: wn_num}}]}}
    major:
      value: {{token: [{{get_input: image}}, "-", 1]}}
"""

DEEP_MARATHON = f"""
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: {INDIGO_URL}
description: DEEP-OC model on Marathon
topology_template:
  inputs:
    rclone_pass: {{type: string, default: "hunter2-secret"}}
    num_gpus: {{type: integer, default: 1}}
  node_templates:
    marathon:
      type: tosca.nodes.indigo.Container.Application.Docker.Marathon
      properties:
        force_pull_image: true
        command: deepaas-run --listen-ip 0.0.0.0
        environment_variables:
          RCLONE_CONFIG_PASS: {{get_input: rclone_pass}}
        labels:
          HAPROXY_GROUP: external
      artifacts:
        image:
          file: deephdc/deep-oc-generic
          type: tosca.artifacts.Deployment.Image.Container.Docker
      requirements:
        - host: docker_runtime
    docker_runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host:
          properties:
            num_cpus: 1.5
            mem_size: 4 GB
            num_gpus: {{get_input: num_gpus}}
            publish_ports:
              - protocol: tcp
                source: 5000
"""


def test_gpu_template_requirements_functions_and_policies() -> None:
    v = validate_template(GPU_VM, {"wn_num": 3})
    assert v.requirements | {"image": None} == {
        "cpus": 4, "ram_mb": 8000, "disk_gb": 40,
        "gpu": {"count": 2, "vendor": "NVIDIA", "model": "V100"},
        "infiniband": True, "image": None, "instances": 3,
        "sla_ids": ["sla-42"], "site_ids": ["site-b"],
        "service_types": ["org.openstack.nova", "openstack", "com.amazonaws.ec2", "ec2", "dummy"],
    }  # fmt: skip
    assert v.requirements["image"] == {
        "name": "ubuntu-20.04", "os_distribution": "ubuntu", "os_version": "20.04",
        "cuda": True, "min_cuda_version": "11.2",
    }  # fmt: skip
    assert v.nodes["gpu_node"].count == 3 and v.nodes["gpu_node"].compute
    assert v.nodes["ssh_name"].requires == ["gpu_node"]
    assert "tosca.nodes.Compute" in v.nodes["gpu_node"].types
    resolved = yaml.safe_load(v.resolved_text)
    topo = resolved["topology_template"]
    assert (
        topo["node_templates"]["gpu_node"]["capabilities"]["scalable"]["properties"]["count"] == 3
    )
    assert topo["inputs"]["wn_num"]["default"] == 3
    assert topo["outputs"]["greeting"]["value"] == "node-3"
    assert topo["outputs"]["major"]["value"] == "20.04"
    # run-time functions stay for the im
    assert topo["outputs"]["url"]["value"]["concat"][1] == {
        "get_attribute": ["gpu_node", "public_address", 0]
    }
    assert resolved["imports"][0]["indigo_custom_types"] == INDIGO_URL


def test_deep_marathon_template_and_secret_inputs() -> None:
    v = validate_template(DEEP_MARATHON, {})
    assert v.nodes["docker_runtime"].compute and not v.nodes["marathon"].compute
    assert v.requirements["cpus"] == 2 and v.requirements["ram_mb"] == 4000
    assert v.requirements["gpu"]["count"] == 1
    assert v.secret_values == ["hunter2-secret"]


@pytest.mark.parametrize(
    ("mutate", "params", "words"),
    [
        (lambda t: t + "\n  bad: [", {}, ["YAML"]),
        (
            lambda t: t.replace("tosca.nodes.SoftwareComponent", "tosca.nodes.Nope"),
            {},
            ["tosca.nodes.Nope"],
        ),
        (lambda t: t, {"wn_num": "two"}, ["wn_num", "integer"]),
        (lambda t: t, {"wn_num": True}, ["wn_num"]),
        (lambda t: t, {"mem": "lots"}, ["mem"]),
        (lambda t: t, {"nope": 1}, ["nope"]),
        (
            lambda t: t.replace("{type: integer, default: 2}", "{type: integer}"),
            {},
            ["wn_num", "no value"],
        ),
        (
            lambda t: t.replace(
                "{type: integer, default: 2}",
                "{type: integer, default: 2, constraints: [{less_or_equal: 4}]}",
            ),
            {"wn_num": 9},
            ["wn_num", "4"],
        ),
        (
            lambda t: t.replace(
                "{type: integer, default: 2}",
                "{type: integer, default: 2, constraints: [{valid_values: [1, 2]}]}",
            ),
            {"wn_num": 3},
            ["wn_num"],
        ),
        (lambda t: t.replace(INDIGO_URL, "http://example.test/types.yaml"), {}, ["example.test"]),
        (lambda t: t.replace(INDIGO_URL, "../../etc/passwd"), {}, ["passwd"]),
        (
            lambda t: t.replace('get_input: image}, "-", 1]', 'get_input: image}, "-", 9]'),
            {},
            ["token", "out of range"],
        ),
        (lambda t: t.replace("count: {get_input: wn_num}", "count: 1.5"), {}, ["count"]),
        (
            lambda t: t.replace(
                "- host: gpu_node", "- host: gpu_node\n        - dependency: ssh_name"
            ),
            {},
            ["cycle", "ssh_name -> ssh_name"],
        ),
        (lambda t: t.replace("mem_size: {get_input: mem}", "mem_size: huge"), {}, ["mem_size"]),
    ],
)
def test_template_errors_name_the_problem(mutate, params, words) -> None:
    with pytest.raises(TemplateError) as info:
        validate_template(mutate(GPU_VM), params)
    for w in words:
        assert w.lower() in str(info.value).lower(), str(info.value)


def test_size_limit() -> None:
    big = GPU_VM + "#" * MAX_TEMPLATE_BYTES
    with pytest.raises(TemplateError, match="1 MiB"):
        validate_template(big, {})


def test_numeric_strings_and_float_inputs_are_coerced() -> None:
    t = GPU_VM.replace(
        "{type: integer, default: 2}",
        "{type: integer, default: 2}\n    ratio: {type: float, default: 1}",
    )
    v = validate_template(t, {"wn_num": "2", "ratio": 3})
    assert v.inputs["wn_num"] == 2 and v.inputs["ratio"] == 3.0


def test_functions() -> None:
    inputs = {"a": "x-y.z", "l": [1, 2], "m": {"k": "v"}}
    assert resolve({"get_input": "a"}, inputs) == "x-y.z"
    assert resolve({"get_input": ["l", 1]}, inputs) == 2
    assert resolve({"get_input": ["m", "k"]}, inputs) == "v"
    assert resolve({"token": [{"get_input": "a"}, "-", 1]}, inputs) == "y.z"
    assert resolve({"concat": ["a", 1, True]}, inputs) == "a1true"
    with pytest.raises(FunctionError, match="unknown input 'b'"):
        resolve({"x": {"get_input": "b"}}, inputs)
    with pytest.raises(FunctionError, match="no element"):
        resolve({"get_input": ["l", 5]}, inputs)


def test_imports_resolve_locally() -> None:
    base = types_dir()
    local = base / "indigo" / "custom_types.yaml"
    for url in (
        INDIGO_URL,
        "https://raw.githubusercontent.com/indigo-dc/tosca-types/v4.0.0/custom_types.yaml",
        "https://github.com/indigo-dc/tosca-types/raw/master/custom_types.yml",
    ):
        assert resolve_import(url, base) == str(local)
    assert resolve_import("hdc_types", base).endswith("hdc/hdc_types.yaml")
    for bad in (
        "https://evil.test/custom_types.yaml",
        "file:///etc/passwd",
        "/etc/passwd",
        "../x.yaml",
    ):
        with pytest.raises(ImportRefused):
            resolve_import(bad, base)


def test_hdc_types_parse() -> None:
    t = """
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - hdc_types
topology_template:
  node_templates:
    model:
      type: hdc.nodes.ModelService
      properties:
        model: demo-digits
      requirements:
        - host: runtime
    runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host:
          properties: {num_cpus: 1, mem_size: 1 GB}
"""
    v = validate_template(t, {})
    assert "tosca.nodes.indigo.Container.Application.Docker" in v.nodes["model"].types
