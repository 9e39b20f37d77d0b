"""Container nodes as Marathon apps (Mesos), as INDIGO ran them: one app per instance."""

from __future__ import annotations

import json
import re
from typing import Any

from marathon import MarathonClient
from marathon.exceptions import MarathonError, NotFoundError
from marathon.models import MarathonApp
from marathon.models.container import (
    MarathonContainer,
    MarathonContainerPortMapping,
    MarathonDockerContainer,
)

from hdc_im.drivers.base import (
    TAG_INFRA,
    TAG_NODE,
    TAG_TOKEN,
    CloudError,
    Driver,
    Tagged,
    VmRequest,
    VmStatus,
)


def _clean(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "node"


def _message(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    if resp is not None:
        try:
            return f"Marathon {resp.status_code}: {resp.json().get('message', resp.text)}"
        except ValueError:
            return f"Marathon {resp.status_code}: {resp.text}"
    return str(exc) or exc.__class__.__name__


class MarathonDriver(Driver):
    provider_type = "Marathon"

    def __init__(self, endpoint: str, credentials: dict[str, str]) -> None:
        if not endpoint:
            raise CloudError("Marathon site without an endpoint URL", bad_input=True)
        self.client = MarathonClient(
            [endpoint],
            username=credentials.get("username"),
            password=credentials.get("password"),
            auth_token=credentials.get("token"),
            timeout=30,
        )

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFoundError:
            return None
        except MarathonError as exc:
            raise CloudError(_message(exc)) from None

    @staticmethod
    def app_id(req: VmRequest) -> str:
        return f"/hdc/{req.infrastructure_id}/{_clean(req.node.name)}-{req.index}"

    def _status(self, app: Any) -> VmStatus:
        tasks = list(app.tasks or [])
        running = [t for t in tasks if getattr(t, "state", "") == "TASK_RUNNING"]
        if app.instances == 0:
            state = "stopped"
        elif len(running) >= app.instances:
            state = "running"
        else:
            state = "pending"
        host = running[0].host if running else None
        ports: dict[str, Any] = {}
        names = [str(n) for n in (app.labels or {}).get("hdc-port-names", "").split(",") if n]
        if running and running[0].ports:
            for name, port in zip(
                names or [f"port_{i}" for i in range(len(running[0].ports))],
                running[0].ports,
                strict=False,
            ):
                ports[name] = port
            ports["url"] = f"http://{host}:{running[0].ports[0]}"
        return VmStatus(
            provider_id=app.id,
            state=state,
            public_ip=host,
            private_ip=host,
            ports=ports,
            info={"staged": app.tasks_staged},
        )

    def create_vm(self, req: VmRequest) -> VmStatus:
        node = req.node
        if node.kind != "container":
            raise CloudError(
                f"node '{node.name}': Marathon runs containers, not VMs", bad_input=True
            )
        mappings = [
            MarathonContainerPortMapping(
                container_port=p["port"], host_port=0, protocol=p["protocol"]
            )
            for p in node.ports.values()
        ]
        docker = MarathonDockerContainer(
            image=node.image, network="BRIDGE", port_mappings=mappings or None
        )
        labels = {
            **node.labels,
            TAG_INFRA: req.infrastructure_id,
            TAG_TOKEN: req.token,
            TAG_NODE: node.name,
            "hdc-port-names": ",".join(node.ports),
        }
        app = MarathonApp(
            cmd=node.command or None,
            cpus=node.cpus or 0.5,
            mem=node.memory_mb or 512,
            gpus=node.gpus or None,
            instances=1,
            # open-source Marathon has no secret store: secrets travel as environment
            env={**node.environment, **node.secrets} or None,
            labels=labels,
            constraints=node.constraints or None,
            container=MarathonContainer(type="DOCKER", docker=docker),
        )
        aid = self.app_id(req)
        app.id = aid
        # marathon 0.13's own encoder for nested models uses collections.Iterable (removed in
        # Python 3.10); encode the same json_repr ourselves and send it through the client.
        data = json.dumps(
            app.json_repr(minimal=True), sort_keys=True, default=lambda o: o.json_repr(minimal=True)
        )
        try:
            self.client._do_request("POST", "/v2/apps", data=data)
        except MarathonError as exc:
            if getattr(getattr(exc, "response", None), "status_code", 0) != 409:
                raise CloudError(_message(exc)) from None
            # 409: made by an earlier attempt (the id is the idempotency key)
        got = self._call(self.client.get_app, aid, embed_tasks=True)
        if got is None:
            raise CloudError(f"Marathon app {aid} vanished right after creation")
        return self._status(got)

    def find_vm(self, infrastructure_id: str, token: str) -> VmStatus | None:
        apps = self._call(self.client.list_apps, label=f"{TAG_TOKEN}=={token}") or []
        if not apps:
            return None
        return self.vm_status(apps[0].id)

    def vm_status(self, provider_id: str) -> VmStatus | None:
        app = self._call(self.client.get_app, provider_id, embed_tasks=True)
        return self._status(app) if app is not None else None

    def destroy_vm(self, provider_id: str) -> None:
        self._call(self.client.delete_app, provider_id, force=True)

    def stop_vm(self, provider_id: str) -> None:
        self._call(self.client.scale_app, provider_id, instances=0, force=True)

    def start_vm(self, provider_id: str) -> None:
        self._call(self.client.scale_app, provider_id, instances=1, force=True)

    def alter_vm(self, provider_id: str, node: Any) -> None:
        change = {
            k: v
            for k, v in (("cpus", node.cpus), ("mem", node.memory_mb), ("gpus", node.gpus))
            if v
        }
        if not change:
            raise CloudError(
                "nothing to change: give cpu.count, memory.size or gpu.count", bad_input=True
            )
        try:
            self.client._do_request(
                "PUT",
                f"/v2/apps/{provider_id.strip('/')}",
                params={"force": "true"},
                data=json.dumps(change),
            )
        except MarathonError as exc:
            raise CloudError(_message(exc)) from None

    def reboot_vm(self, provider_id: str) -> None:
        self._call(self.client.restart_app, provider_id, force=True)

    def list_tagged(self) -> list[Tagged]:
        apps = self._call(self.client.list_apps, label=TAG_INFRA) or []
        return [
            Tagged(
                "vm", a.id, (a.labels or {}).get(TAG_INFRA, ""), (a.labels or {}).get(TAG_TOKEN, "")
            )
            for a in apps
        ]
