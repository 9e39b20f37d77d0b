"""The official im-client (PyPI) against hdc's im on libcloud's dummy driver."""

from __future__ import annotations

from pathlib import Path

from imclient import IMClient

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml
topology_template:
  inputs:
    n: {type: integer, default: 2}
  node_templates:
    front:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: {get_input: n}}}
        host: {properties: {num_cpus: 1, mem_size: 1 GB}}
        os: {properties: {image: dummy-image}}
        endpoint: {properties: {network_name: PUBLIC}}
  outputs:
    front_ip: {value: {get_attribute: [front, public_address, 0]}}
"""

AUTH = [
    {"id": "im", "type": "InfrastructureManager", "username": "alice", "password": "s3cret"},
    {"id": "dummy", "type": "Dummy"},
]


def _client(url: str, auth: list[dict] = AUTH) -> IMClient:
    return IMClient.init_client(url, auth)


def test_im_client_full_lifecycle_on_dummy(im_server, tmp_path: Path) -> None:
    client = _client(im_server.url)
    ok, version = client.getversion()
    assert ok and version

    ok, inf_id = client.create(TOSCA, "yaml")
    assert ok, inf_id

    ok, infras = client.list_infras()
    assert ok and infras == [inf_id]

    ok, vms = client.getinfo(inf_id)
    assert ok
    infos = list(vms)
    assert [vm_id for vm_id, _, _ in infos] == ["0", "1"]
    assert all(success and "state = 'configured'" in radl for _, success, radl in infos)

    ok, state = client.get_infra_property(inf_id, "state")
    assert ok and state["state"] == "configured"
    assert state["vm_states"] == {"0": "configured", "1": "configured"}

    ok, outputs = client.get_infra_property(inf_id, "outputs")
    assert ok and outputs["front_ip"].count(".") == 3

    ok, contmsg = client.get_infra_property(inf_id, "contmsg")
    assert ok and "cloud-init user-data delivered" in contmsg

    more = TOSCA.replace("default: 2", "default: 3")
    ok, new_vms = client.addresource(inf_id, more, "yaml")
    assert ok, new_vms
    assert new_vms == ["2"]

    ok, radl = client.alter(
        inf_id,
        "2",
        "system front ( instance_type = 'm1.large' and cpu.count >= 4 and memory.size >= 8g )",
    )
    assert ok, radl
    assert "instance_type = 'm1.large'" in radl and "cpu.count = 4" in radl
    ok, radl = client.alter(inf_id, "2", "system front ( cpu.count >= ")
    assert not ok and "invalid RADL" in radl

    ok, msg = client.stop_infra(inf_id)
    assert ok, msg
    ok, state = client.get_infra_property(inf_id, "state")
    assert state["state"] == "stopped"
    ok, msg = client.start_infra(inf_id)
    assert ok, msg
    ok, state = client.get_infra_property(inf_id, "state")
    assert state["state"] == "configured" and len(state["vm_states"]) == 3

    ok, removed = client.removeresource(inf_id, ["1"])
    ok, state = client.get_infra_property(inf_id, "state")
    assert sorted(state["vm_states"]) == ["0", "2"]

    ok, msg = client.destroy(inf_id)
    assert ok, msg
    ok, infras = client.list_infras()
    assert ok and infras == []


def test_other_users_cannot_see_an_infrastructure(im_server) -> None:
    ok, inf_id = _client(im_server.url).create(TOSCA, "yaml")
    assert ok
    bob = [
        {"type": "InfrastructureManager", "username": "bob", "password": "x"},
        {"id": "dummy", "type": "Dummy"},
    ]
    ok, msg = _client(im_server.url, bob).get_infra_property(inf_id, "state")
    assert not ok and "not granted" in msg
    ok, infras = _client(im_server.url, bob).list_infras()
    assert ok and infras == []


def test_slow_cloud_calls_still_configure_every_vm(tmp_path: Path, sqlite_url: str) -> None:
    """Provider ids are recorded in batches while calls are slow: none may be forgotten."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "im_fx_slow", Path(__file__).with_name("conftest.py")
    )
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    server = fx.ImServer(fx.im_settings(tmp_path, sqlite_url, api_min_interval_s=0.3)).start()
    try:
        client = _client(server.url)
        ok, inf_id = client.create(TOSCA.replace("default: 2", "default: 3"), "yaml")
        assert ok, inf_id
        ok, state = client.get_infra_property(inf_id, "state")
        assert state["vm_states"] == {"0": "configured", "1": "configured", "2": "configured"}
        ok, outputs = client.get_infra_property(inf_id, "outputs")
        assert outputs["front_ip"].count(".") == 3
    finally:
        server.stop()
