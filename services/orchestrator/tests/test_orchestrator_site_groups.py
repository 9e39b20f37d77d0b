"""Templates spread over several sites: how placement policies split them (site_groups.py).
The deployment of such a template end to end is in tests/e2e/test_e2e_templates_deploy.py."""

from __future__ import annotations

import pytest
import yaml
from hdc_orchestrator.site_groups import (
    GroupError,
    group_tosca,
    merge_outputs,
    overlay_outputs,
    plan_groups,
)
from hdc_orchestrator.tosca import TemplateError, validate_template

TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml
topology_template:
  node_templates:
    front:
      type: tosca.nodes.indigo.Compute
    app:
      type: tosca.nodes.SoftwareComponent
      requirements:
        - host: front
        - dependency: back
    back:
      type: tosca.nodes.indigo.Compute
  policies:
    - here:
        type: tosca.policies.indigo.Placement
        properties: { provider: site-a }
        targets: [ front ]
    - there:
        type: tosca.policies.indigo.Placement
        properties: { provider: site-b }
        targets: [ back ]
  outputs:
    front_ip:
      value: { get_attribute: [ front, public_address, 0 ] }
    back_ip:
      value: { get_attribute: [ back, private_address ] }
    both:
      value: { concat: [ { get_attribute: [ front, public_address, 0 ] },
                         { get_attribute: [ back, private_address, 0 ] } ] }
"""


VM = "tosca.nodes.indigo.Compute"
VM_B = "    back:\n"


def test_policies_naming_two_sites_split_the_template_by_site():
    v = validate_template(TEMPLATE, {})
    assert v.requirements["site_groups"] == [
        {"site": "site-a", "nodes": ["front", "app"]},  # app follows its host
        {"site": "site-b", "nodes": ["back"]},
    ]
    assert v.requirements["site_ids"] == ["site-a", "site-b"]


def test_one_site_is_no_split():
    one = TEMPLATE.replace("provider: site-b", "provider: site-a")
    assert "site_groups" not in validate_template(one, {}).requirements
    nodes = {"a": {}, "b": {}}
    assert plan_groups(nodes, ["a", "b"], [("p", "s1", ["a"]), ("q", "s2", [])]) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ((VM_B, f"    spare:\n      type: {VM}\n{VM_B}"), "spare is not"),
        (("targets: [ back ]", "targets: [ back, front ]"), "front' is placed on two sites"),
        (("targets: [ back ]", "targets: [ nowhere ]"), '"nowhere" is not found'),
        ((VM_B, f"    loose:\n      type: tosca.nodes.Root\n{VM_B}"), "'loose' is neither placed"),
    ],
)
def test_a_split_that_cannot_be_made_is_refused_with_the_reason(change, message):
    with pytest.raises(TemplateError) as err:
        validate_template(TEMPLATE.replace(*change), {})
    assert message in str(err.value)


def test_plan_errors_are_group_errors():
    with pytest.raises(GroupError):
        plan_groups({"a": {}}, ["a"], [("p", "s1", ["a"]), ("q", "s2", ["ghost"])])


def test_each_site_gets_its_nodes_and_the_outputs_about_them():
    v = validate_template(TEMPLATE, {})
    part = yaml.safe_load(group_tosca(v.resolved_text, ["front", "app"]))
    topo = part["topology_template"]
    assert set(topo["node_templates"]) == {"front", "app"}
    assert "policies" not in topo
    # the requirement on the other site's node stays, abstract: the types still count it
    assert topo["node_templates"]["app"]["requirements"] == [{"host": "front"}, {"dependency": {}}]
    assert set(topo["outputs"]) == {"front_ip"}
    other = yaml.safe_load(group_tosca(v.resolved_text, ["back"]))["topology_template"]
    assert set(other["node_templates"]) == {"back"} and set(other["outputs"]) == {"back_ip"}


def test_outputs_of_every_site_are_kept():
    merged = merge_outputs({"a": "1.2.3.4", "b": []}, {"a": None, "b": ["10.0.0.5"], "c": 3})
    assert merged == {"a": "1.2.3.4", "b": ["10.0.0.5"], "c": 3}


def test_vrouter_attributes_in_outputs_come_from_the_overlay():
    resolved = yaml.safe_dump(
        {
            "topology_template": {
                "outputs": {
                    "overlay": {"value": {"get_attribute": ["hub", "overlay_id"]}},
                    "subnet_b": {"value": {"get_attribute": ["router_b", "subnet"]}},
                    "ip": {"value": {"get_attribute": ["vm", "public_address"]}},
                }
            }
        }
    )
    record = {
        "overlay_id": "ov-1",
        "sites": {
            "hub": {"site_id": "s0", "subnet": "10.200.0.0/24"},
            "router_b": {"site_id": "s2", "subnet": "10.200.2.0/24"},
        },
    }
    assert overlay_outputs(resolved, record) == {"overlay": "ov-1", "subnet_b": "10.200.2.0/24"}
