"""The normalised topology every driver works from, whatever document it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

VM_KIND, CONTAINER_KIND = "vm", "container"


class TopologyError(ValueError):
    """The document cannot be turned into a topology; the message names the problem."""


@dataclass
class NodeSpec:
    name: str
    kind: str = VM_KIND
    count: int = 1
    image: str = ""
    instance_type: str = ""
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    public: bool = False
    # name -> {"port": int, "protocol": "tcp"|"udp", "remote_cidr": str}
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    command: str = ""
    batch: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    constraints: list[list[str]] = field(default_factory=list)
    # cloud-init material gathered from the template
    ssh_keys: list[str] = field(default_factory=list)
    username: str = ""
    packages: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    removal_list: list[str] = field(default_factory=list)
    # attached block storage: {"size_gb": int, "device": str, "location": str}
    volumes: list[dict[str, Any]] = field(default_factory=list)
    # the model a container node serves (local driver); defaults to the image
    model: str = ""
    # an existing private network (name or id) the VM joins; empty: the driver's default
    # (a network made for the infrastructure)
    network: str = ""
    # address range of the network made for the infrastructure (empty: the site's default)
    network_cidr: str = ""
    # the external network public addresses come from (empty: the site's default)
    public_network: str = ""
    # container environment values that are secret: handed over through the platform's
    # secret store where it has one, never shown (sealed at rest by the engine)
    secrets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Topology:
    nodes: list[NodeSpec] = field(default_factory=list)
    # output name -> definition with TOSCA functions still unevaluated
    outputs: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    # raw node templates (for get_property in outputs)
    properties: dict[str, Any] = field(default_factory=dict)
    source: str = "tosca"

    def node(self, name: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        return cls(
            nodes=[NodeSpec.from_dict(n) for n in data.get("nodes", [])],
            outputs=data.get("outputs", {}),
            inputs=data.get("inputs", {}),
            properties=data.get("properties", {}),
            source=data.get("source", "tosca"),
        )
