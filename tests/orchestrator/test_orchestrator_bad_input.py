"""Bad input is a 400 whose message names the problem, never a 500 (real PostgreSQL and
RabbitMQ; the collaborators are the test doubles of orch_doubles.py)."""

from __future__ import annotations

import pytest
from orch_doubles import TEMPLATE, user

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

CYCLIC = TEMPLATE.replace(
    "    app:\n      type: tosca.nodes.SoftwareComponent\n      requirements:\n        - host: server\n",
    "    app:\n      type: tosca.nodes.SoftwareComponent\n      requirements:\n        - host: server\n"
    "        - dependency: db\n"
    "    db:\n      type: tosca.nodes.SoftwareComponent\n      requirements:\n        - host: server\n"
    "        - dependency: app\n",
)
REQUIRED_INPUT = TEMPLATE.replace(
    "      type: integer\n      default: 1\n", "      type: integer\n"
)

CASES = {
    "malformed YAML": (
        {"template": "tosca_definitions_version: [\n  broken"},
        ["not valid YAML", "line"],
    ),
    "not a mapping": ({"template": "- just\n- a list\n"}, ["mapping"]),
    "no version": ({"template": "topology_template: {}\n"}, ["tosca_definitions_version"]),
    "unknown node type": (
        {
            "template": TEMPLATE.replace(
                "tosca.nodes.SoftwareComponent", "tosca.nodes.indigo.Teleporter"
            )
        },
        ["tosca.nodes.indigo.Teleporter"],
    ),
    "missing required input": ({"template": REQUIRED_INPUT}, ["num_cpus", "no value"]),
    "wrongly typed input": (
        {"template": TEMPLATE, "parameters": {"num_cpus": "lots"}},
        ["num_cpus", "integer"],
    ),
    "constraint violated": (
        {"template": TEMPLATE, "parameters": {"num_cpus": 1000}},
        ["num_cpus", "range"],
    ),
    "unknown parameter": ({"template": TEMPLATE, "parameters": {"colour": "red"}}, ["colour"]),
    "cyclic requirements": ({"template": CYCLIC}, ["cycle", "app", "db"]),
    "template over 1 MiB": ({"template": TEMPLATE + "#" * (1024 * 1024)}, ["1 MiB"]),
    "unknown request field": ({"template": TEMPLATE, "templat": "x"}, ["templat"]),
    "download import": (
        {
            "template": TEMPLATE.replace(
                "https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml",
                "https://evil.test/types.yaml",
            )
        },
        ["evil.test", "never downloads"],
    ),
    "local file import": (
        {
            "template": TEMPLATE.replace(
                "https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml",
                "/etc/passwd",
            )
        },
        ["/etc/passwd"],
    ),
    "unknown get_input": (
        {"template": TEMPLATE.replace("get_input: num_cpus", "get_input: cores")},
        ["cores"],
    ),
    "bad scalable count": ({"template": TEMPLATE.replace("count: 1", "count: -2")}, ["count"]),
    "no node templates": (
        {"template": "tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template: {}\n"},
        ["node_templates"],
    ),
    "empty template": ({"template": ""}, ["template"]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_input_is_400_naming_the_problem(stack, signer, case: str, method: str) -> None:
    body, words = CASES[case]
    h = signer.headers(user("fuzzy"))
    if method == "POST":
        r = stack.client.post("/deployments", json=body, headers=h)
    else:
        target = stack.client.post("/deployments", json={"template": TEMPLATE}, headers=h).json()[
            "uuid"
        ]
        r = stack.client.put(f"/deployments/{target}", json=body, headers=h)
    assert r.status_code == 400, (case, r.status_code, r.text)
    err = r.json()
    assert err["code"] == 400 and err["title"] == "Bad Request"
    for w in words:
        assert w.lower() in err["message"].lower(), (case, err["message"])


def test_nothing_was_stored_for_bad_input(stack, signer) -> None:
    h = signer.headers(user("fuzzy-count"))
    for body, _ in CASES.values():
        stack.client.post("/deployments", json=body, headers=h)
    assert (
        stack.client.get("/deployments?createdBy=me", headers=h).json()["page"]["totalElements"]
        == 0
    )
