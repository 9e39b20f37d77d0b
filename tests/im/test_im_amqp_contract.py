"""The orchestrator <-> im AMQP contract on the real RabbitMQ: commands in, events out."""

from __future__ import annotations

import importlib.util
import queue
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hdc_common.bus import Bus, create_tables
from hdc_common.db import create_engine, session_factory

_spec = importlib.util.spec_from_file_location(
    "im_fx_amqp", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: COUNT}}
        os: {properties: {image: img}}
  outputs:
    ips: {value: {get_attribute: [vm, public_address]}}
"""


class Orchestrator:
    """The orchestrator's side of the contract: a bus that sends commands, hears events."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.engine = create_engine(f"sqlite:///{tmp}/orch.db")
        create_tables(self.engine)
        self.sessions = session_factory(self.engine)
        self.bus = Bus(url, service="orchestrator", sessions=self.sessions)
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.bus.on_event("im.#", queue="orchestrator.im-events")(self._heard)
        self.bus.start()

    def _heard(self, _session: Any, event: Any) -> None:
        self.events.put((event.type, event.data))

    def send(self, type_: str, data: dict[str, Any]) -> None:
        with self.sessions.begin() as s:
            self.bus.send(s, "im", type_, data)

    def wait_for(self, type_: str, infra_id: str, timeout: float = 30) -> dict[str, Any]:
        seen = []
        while True:
            kind, data = self.events.get(timeout=timeout)
            seen.append(kind)
            if kind == type_ and data.get("infrastructure_id") == infra_id:
                return data

    def close(self) -> None:
        self.bus.stop()
        self.engine.dispose()


@pytest.mark.rabbitmq
def test_create_update_delete_over_amqp(tmp_path: Path, sqlite_url: str, rabbitmq_url: str) -> None:
    im = fx.ImServer(fx.im_settings(tmp_path, sqlite_url, bus_url=rabbitmq_url)).start()
    orch = Orchestrator(rabbitmq_url, tmp_path)
    try:
        infra_id, dep_id = str(uuid.uuid4()), str(uuid.uuid4())
        create = {
            "infrastructure_id": infra_id,
            "site": {"id": "site-a", "service_id": "svc-1", "type": "dummy", "endpoint": ""},
            "tosca": TOSCA.replace("COUNT", "2"),
            "owner": {"subject": "u1", "issuer": "https://iam.example"},
            "deployment_id": dep_id,
            "user_data_extra": "#!/bin/sh\necho enrol\n",
        }
        orch.send("im.infrastructure.create", create)
        orch.send("im.infrastructure.create", create)  # a retried command: still one infra
        progress = orch.wait_for("im.infrastructure.progress", infra_id)
        assert progress["deployment_id"] == dep_id and progress["state"] == "pending"
        done = orch.wait_for("im.infrastructure.configured", infra_id)
        assert done["state"] == "configured" and done["deployment_id"] == dep_id
        assert len(done["vms"]) == 2 and {v["state"] for v in done["vms"]} == {"configured"}
        assert set(done["vms"][0]) >= {
            "id",
            "state",
            "name",
            "node",
            "public_ip",
            "private_ip",
            "ports",
        }
        assert len(done["outputs"]["ips"]) == 2

        orch.send(
            "im.infrastructure.update",
            {"infrastructure_id": infra_id, "tosca": TOSCA.replace("COUNT", "3")},
        )
        updated = orch.wait_for("im.infrastructure.updated", infra_id)
        assert len(updated["vms"]) == 3

        orch.send("im.vm.stop", {"infrastructure_id": infra_id, "vm_id": "1"})
        vm_state = orch.wait_for("im.vm.state", infra_id)
        assert vm_state == {**vm_state, "vm_id": "1", "state": "stopped"}

        orch.send(
            "im.infrastructure.update",
            {"infrastructure_id": infra_id, "tosca": TOSCA.replace("COUNT", "1")},
        )
        updated = orch.wait_for("im.infrastructure.updated", infra_id)
        assert len(updated["vms"]) == 1

        orch.send("im.infrastructure.delete", {"infrastructure_id": infra_id})
        deleted = orch.wait_for("im.infrastructure.deleted", infra_id)
        assert deleted["deployment_id"] == dep_id
        with im.parts["sessions"]() as s:
            n = s.scalar(sa.text("SELECT count(*) FROM im_infrastructures"))
        assert n == 1

        unknown = str(uuid.uuid4())
        orch.send("im.infrastructure.delete", {"infrastructure_id": unknown})
        assert orch.wait_for("im.infrastructure.deleted", unknown) == {"infrastructure_id": unknown}

        bad = str(uuid.uuid4())
        orch.send(
            "im.infrastructure.create",
            {**create, "infrastructure_id": bad, "tosca": "tosca_definitions_version: x\n"},
        )
        failed = orch.wait_for("im.infrastructure.failed", bad)
        assert failed["state"] == "failed" and "invalid TOSCA" in failed["error"]
    finally:
        orch.close()
        im.stop()
