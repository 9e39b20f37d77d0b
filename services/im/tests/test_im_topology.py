"""TOSCA and RADL documents into topologies; outputs; cloud-init; secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hdc_im import contextualization, outputs, radl_doc, tosca
from hdc_im.secrets import Vault, load_fernet, redact
from hdc_im.topology import NodeSpec, TopologyError

INDIGO = """
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml
topology_template:
  inputs:
    n: {type: integer, default: 3}
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: {get_input: n}}}
        host: {properties: {num_cpus: 2, mem_size: 4 GB, num_gpus: 1}}
        os: {properties: {image: "ost://cloud/ubuntu"}}
        endpoint: {properties: {network_name: PUBLIC, ports: {http: {protocol: tcp, source: 80}}}}
    future:
      type: tosca.nodes.indigo.SomethingFromANewerTypeSet
  outputs:
    first_ip: {value: {get_attribute: [vm, public_address, 0]}}
    url: {value: {concat: ["http://", {get_attribute: [vm, public_address, 0]}, "/"]}}
    n: {value: {get_input: n}}
"""


def test_indigo_template_without_network_access() -> None:
    topo = tosca.load(INDIGO)
    (vm,) = topo.nodes
    assert (vm.count, vm.cpus, vm.memory_mb, vm.gpus) == (3, 2.0, 4000, 1)
    assert vm.image == "ost://cloud/ubuntu" and vm.public
    assert vm.ports == {"http": {"port": 80, "protocol": "tcp", "remote_cidr": "0.0.0.0/0"}}


def test_outputs_are_evaluated_against_vms() -> None:
    topo = tosca.load(INDIGO)
    vms = [{"node": "vm", "index": i, "public_ip": f"1.1.1.{i}", "ports": {}} for i in range(3)]
    assert outputs.compute(topo, vms) == {"first_ip": "1.1.1.0", "url": "http://1.1.1.0/", "n": 3}


def test_outputs_never_carry_private_keys() -> None:
    key = "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----"
    assert "abc" not in str(redact({"k": f"x {key} y", "password": "p"}))


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("x: [", "not valid YAML"),
        ("a: 1", "tosca_definitions_version"),
        (
            "tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template: {}",
            "node_templates",
        ),
        (
            "tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template:\n"
            "  node_templates: {a: {properties: {}}}",
            "has no 'type'",
        ),
        (
            "tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template:\n"
            "  node_templates: {a: {type: tosca.nodes.SoftwareComponent, "
            "requirements: [{host: nowhere}]}}",
            "nowhere",
        ),
        (
            "tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template:\n"
            "  node_templates: {a: {type: tosca.nodes.indigo.Compute, capabilities: "
            "{scalable: {properties: {count: many}}}}}",
            '"many" is not an integer',
        ),
    ],
)
def test_invalid_tosca_names_the_problem(doc: str, needle: str) -> None:
    with pytest.raises(TopologyError) as err:
        tosca.load(doc)
    assert needle in str(err.value)


def test_extra_type_files_are_used(tmp_path: Path) -> None:
    types = tmp_path / "types.yaml"
    types.write_text(
        "tosca_definitions_version: tosca_simple_yaml_1_0\nnode_types:\n"
        "  site.nodes.BigVM:\n    derived_from: tosca.nodes.indigo.Compute\n"
    )
    doc = (
        "tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template:\n"
        "  node_templates: {a: {type: site.nodes.BigVM}}"
    )
    assert tosca.load(doc, [str(types)]).nodes[0].kind == "vm"


def test_radl_round_trip() -> None:
    doc = radl_doc.parse(
        "system s (cpu.count >= 2 and memory.size >= 1g and "
        "disk.0.image.url = 'one://x/1')\ndeploy s 2",
        False,
    )
    (node,) = radl_doc.to_topology(doc).nodes
    assert (node.count, node.cpus, node.memory_mb, node.image) == (2, 2.0, 1000, "one://x/1")
    text = radl_doc.vm_radl(
        {"node": "s", "state": "running", "provider_id": "i-1", "public_ip": "1.2.3.4"}
    )
    assert "net_interface.0.ip = '1.2.3.4'" in text and "state = 'running'" in text
    with pytest.raises(TopologyError, match="no system is deployed"):
        radl_doc.to_topology(radl_doc.parse("system s (cpu.count >= 1)", False))


def test_cloud_init_user_data() -> None:
    node = NodeSpec(
        name="web",
        ssh_keys=["ssh-ed25519 AAA k"],
        username="admin",
        packages=["nginx"],
        commands=["nginx -s reload"],
        files={"/etc/x": "y"},
    )
    ud = contextualization.user_data(node, "inf-1", 0)
    assert ud.startswith("#cloud-config\n")
    assert (
        "ssh-ed25519 AAA k" in ud
        and "nginx -s reload" in ud
        and "HDC_INFRASTRUCTURE_ID=inf-1" in ud
    )
    multi = contextualization.user_data(node, "inf-1", 0, "#!/bin/sh\necho vrouter\n")
    assert "multipart/mixed" in multi and "text/x-shellscript" in multi and "echo vrouter" in multi


def test_vault_round_trip_and_key_rotation(tmp_path: Path) -> None:
    vault = Vault(load_fernet("", tmp_path))
    sealed = vault.seal({"password": "s3cret"})
    assert "s3cret" not in sealed
    assert vault.open(sealed) == {"password": "s3cret"}
    assert Vault(load_fernet("", tmp_path)).open(sealed) == {"password": "s3cret"}  # key kept
    assert Vault(Fernet(Fernet.generate_key())).open(sealed) is None


NETWORKS = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    outside:
      type: tosca.nodes.network.Network
      properties: {network_type: public, network_name: ext-net}
    lan:
      type: tosca.nodes.network.Network
      properties: {network_name: private}
    fresh:
      type: tosca.nodes.network.Network
      properties: {cidr: 10.77.0.0/24}
    a:
      type: tosca.nodes.indigo.Compute
      capabilities: {os: {properties: {image: img}}}
    b:
      type: tosca.nodes.indigo.Compute
      capabilities: {os: {properties: {image: img}}}
    c:
      type: tosca.nodes.indigo.Compute
      capabilities:
        os: {properties: {image: img}}
        endpoint: {properties: {network_name: science-net}}
    a_out: {type: tosca.nodes.network.Port, requirements: [{binding: a}, {link: outside}]}
    a_lan: {type: tosca.nodes.network.Port, requirements: [{binding: a}, {link: lan}]}
    b_new: {type: tosca.nodes.network.Port, requirements: [{binding: b}, {link: fresh}]}
"""


def test_networks_from_ports_and_endpoints() -> None:
    nodes = {n.name: n for n in tosca.load(NETWORKS).nodes}
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    # a: public through the external network it names, on the existing "private"
    assert (a.public, a.public_network, a.network) == (True, "ext-net", "private")
    # b: private, on a network made for it with the template's range
    assert (b.public, b.network, b.network_cidr) == (False, "", "10.77.0.0/24")
    # c: TOSCA's endpoint network_name naming a network to join
    assert (c.public, c.network) == (False, "science-net")


SECRET_APP = """
tosca_definitions_version: tosca_simple_yaml_1_0
node_types:
  hdc.nodes.App:
    derived_from: tosca.nodes.indigo.Container.Application.Docker
    properties:
      secrets: {type: map, required: false, entry_schema: {type: string}}
topology_template:
  node_templates:
    rt:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities: {host: {properties: {num_cpus: 1.0}}}
    app:
      type: hdc.nodes.App
      properties:
        environment_variables: {MODE: prod, TOKEN: "visible-by-mistake"}
        secrets: {TOKEN: "t0ps3cret", DB_PASSWORD: "hunter2"}
      artifacts:
        image: {file: img, type: tosca.artifacts.Deployment.Image.Container.Docker}
      requirements: [{host: rt}]
"""


def test_secrets_are_parsed_apart_and_redacted_from_the_kept_template() -> None:
    (app,) = tosca.load(SECRET_APP).nodes
    assert app.secrets == {"TOKEN": "t0ps3cret", "DB_PASSWORD": "hunter2"}
    assert app.environment == {"MODE": "prod"}  # a value given both ways is a secret
    kept = tosca.redact_secrets(SECRET_APP)
    assert "t0ps3cret" not in kept and "hunter2" not in kept
    (again,) = tosca.load(kept).nodes  # still a valid template
    assert again.secrets == {"TOKEN": "<redacted>", "DB_PASSWORD": "<redacted>"}
    assert tosca.redact_secrets(INDIGO) is INDIGO  # nothing to hide: kept as written
