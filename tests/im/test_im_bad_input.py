"""Bad input gets a 4xx whose text names the problem; never a 5xx."""

from __future__ import annotations

import httpx
import pytest

IM = "type = InfrastructureManager; username = erin; password = pw"
DUMMY = "id = d; type = Dummy"
GOOD = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    vm: {type: tosca.nodes.indigo.Compute}
"""


def _post(
    url: str, body: str, auth: str | None, ctype: str = "text/yaml", accept: str | None = None
) -> httpx.Response:
    headers = {"Content-Type": ctype}
    if auth is not None:
        headers["Authorization"] = auth
    if accept:
        headers["Accept"] = accept
    return httpx.post(f"{url}/infrastructures", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("body", "ctype", "auth", "status", "needle"),
    [
        ("not: [valid", "text/yaml", f"{IM}\\n{DUMMY}", 400, "not valid YAML"),
        ("a: 1", "text/yaml", f"{IM}\\n{DUMMY}", 400, "tosca_definitions_version"),
        (
            GOOD.replace(
                "indigo.Compute}", "indigo.Compute, capabilities: {host: {properties: {cpus: 2}}}}"
            ),
            "text/yaml",
            f"{IM}\\n{DUMMY}",
            400,
            'unknown field "cpus"',
        ),
        ("system x ( cpu.count >= ", "text/plain", f"{IM}\\n{DUMMY}", 400, "invalid RADL"),
        ("[{]", "application/json", f"{IM}\\n{DUMMY}", 400, "invalid RADL"),
        (GOOD, "application/x-unknown", f"{IM}\\n{DUMMY}", 415, "Unsupported Media Type"),
        ("", "text/yaml", f"{IM}\\n{DUMMY}", 400, "body is empty"),
        (GOOD, "text/yaml", None, 401, "No authentication data provided"),
        (GOOD, "text/yaml", "type = InfrastructureManager; username", 400, "key = value"),
        (
            GOOD,
            "text/yaml",
            f"{IM}\\nid = x; type = CloudOfDreams",
            400,
            "Unknown credentials type 'CloudOfDreams'",
        ),
        (GOOD, "text/yaml", DUMMY, 401, "No credentials provided for the InfrastructureManager"),
        (GOOD, "text/yaml", IM, 400, "No cloud provider available"),
        (GOOD, "text/yaml", f"{IM}\\nid = d; username = x", 400, "has no 'type'"),
        (GOOD, "text/yaml", "Bearer not-a-jwt", 401, "not a JWT"),
        (GOOD, "text/yaml", f"{IM}; quote = 'open\\n{DUMMY}", 400, "unbalanced quote"),
    ],
)
def test_create_rejects_bad_input(im_server, body, ctype, auth, status, needle) -> None:
    r = _post(im_server.url, body, auth, ctype)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_a_body_naming_a_server_file_is_not_read(im_server) -> None:
    for ctype in ("text/plain", "application/json"):
        r = _post(im_server.url, "/etc/passwd", f"{IM}\\n{DUMMY}", ctype=ctype)
        assert r.status_code == 400 and "invalid RADL" in r.text
        assert "root:" not in r.text


def test_errors_in_json_when_asked(im_server) -> None:
    r = _post(im_server.url, "a: 1", f"{IM}\\n{DUMMY}", accept="application/json")
    assert r.status_code == 400
    assert r.json()["code"] == 400 and "tosca_definitions_version" in r.json()["message"]


def test_unknown_ids_and_properties(im_server) -> None:
    h = {"Authorization": f"{IM}\\n{DUMMY}"}
    r = httpx.get(f"{im_server.url}/infrastructures/nope/state", headers=h)
    assert r.status_code == 404 and "Invalid infrastructure ID" in r.text
    r = _post(im_server.url, GOOD, f"{IM}\\n{DUMMY}")
    inf = r.headers["InfID"]
    r = httpx.get(f"{im_server.url}/infrastructures/{inf}/vms/7", headers=h)
    assert r.status_code == 404 and "Invalid VM ID 7" in r.text
    r = httpx.get(f"{im_server.url}/infrastructures/{inf}/vms/abc", headers=h)
    assert r.status_code == 404
    r = httpx.put(f"{im_server.url}/infrastructures/{inf}/reconfigure?vm_list=a,b", headers=h)
    assert r.status_code == 400 and "Incorrect vm_list format" in r.text
    r = httpx.get(
        f"{im_server.url}/infrastructures/{inf}/state", headers={**h, "Accept": "text/html"}
    )
    assert r.status_code == 415
    r = httpx.get(f"{im_server.url}/infrastructures?filter=(", headers=h)
    assert r.status_code == 400 and "filter" in r.text
    r = httpx.delete(f"{im_server.url}/infrastructures/{inf}", headers=h)
    assert r.status_code == 200
    r = httpx.get(f"{im_server.url}/infrastructures/{inf}/state", headers=h)
    assert r.status_code == 404 and "Deleted infrastructure" in r.text


def test_content_negotiation(im_server) -> None:
    h = {"Authorization": f"{IM}\\n{DUMMY}"}
    r = _post(im_server.url, GOOD, f"{IM}\\n{DUMMY}")
    assert r.headers["content-type"].startswith("text/uri-list")
    inf = r.headers["InfID"]
    assert r.text == f"{im_server.url}/infrastructures/{inf}"
    r = _post(im_server.url, GOOD, f"{IM}\\n{DUMMY}", accept="application/json")
    assert r.json()["uri"].endswith(r.headers["InfID"])
    r = httpx.get(f"{im_server.url}/infrastructures/{inf}", headers=h)
    assert r.text == f"{im_server.url}/infrastructures/{inf}/vms/0"
    r = httpx.get(
        f"{im_server.url}/infrastructures/{inf}", headers={**h, "Accept": "application/json"}
    )
    assert r.json() == {"uri-list": [{"uri": f"{im_server.url}/infrastructures/{inf}/vms/0"}]}
    r = httpx.get(f"{im_server.url}/infrastructures/{inf}/contmsg", headers=h)
    assert r.headers["content-type"].startswith("text/plain") and "configured" in r.text
    r = httpx.get(
        f"{im_server.url}/infrastructures/{inf}/tosca", headers={**h, "Accept": "application/json"}
    )
    assert "tosca_definitions_version" in r.json()["tosca"]
    r = httpx.get(
        f"{im_server.url}/infrastructures/{inf}/vms/0", headers={**h, "Accept": "application/json"}
    )
    system = [x for x in r.json()["radl"] if x["class"] == "system"][0]
    assert system["state"] == "configured" and system["provider.type"] == "Dummy"
    r = httpx.get(f"{im_server.url}/version")
    assert r.text and r.headers["content-type"].startswith("text/plain")


def test_radl_documents_are_accepted(im_server) -> None:
    radl = (
        "network publica (outbound = 'yes')\n"
        "system front (cpu.count >= 1 and memory.size >= 512m and "
        "net_interface.0.connection = 'publica' and disk.0.image.url = 'dummy://img')\n"
        "deploy front 2\n"
    )
    r = _post(im_server.url, radl, f"{IM}\\n{DUMMY}", ctype="text/plain")
    assert r.status_code == 200, r.text
    h = {"Authorization": f"{IM}\\n{DUMMY}"}
    r = httpx.get(f"{im_server.url}/infrastructures/{r.headers['InfID']}/outputs", headers=h)
    assert r.status_code == 403 and "'outputs'" in r.text
