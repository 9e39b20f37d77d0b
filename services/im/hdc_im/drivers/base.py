"""The one interface every driver implements, and the tags that make resources findable.

Every resource a driver makes carries TAG_INFRA (the infrastructure id) and, for VMs,
TAG_TOKEN (the VM's idempotency token), set in the same call that creates it. A create that
is retried after a crash first looks for the token, so it never makes a second VM; the
reconciler lists what carries TAG_INFRA and removes what the database does not know.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdc_im.topology import NodeSpec

TAG_INFRA = "hdc-infrastructure-id"
TAG_TOKEN = "hdc-vm-token"
TAG_NODE = "hdc-node"

# record(kind, name, provider_id): writes a CloudResource row; called before a create call
# (provider_id None) and again once the cloud has answered with the id.
Recorder = Callable[[str, str, str | None], None]


class CloudError(Exception):
    """The cloud refused or failed; the message is the cloud's own.

    bad_input marks refusals caused by the request (unknown image, flavor), which a
    synchronous API call reports as 4xx rather than as a failed infrastructure.
    """

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass
class VmRequest:
    infrastructure_id: str
    index: int
    token: str
    node: NodeSpec
    user_data: str = ""
    shared: dict[str, Any] = field(default_factory=dict)  # what prepare() made
    record: Recorder | None = None


@dataclass
class VmStatus:
    provider_id: str
    state: str  # an IM state
    public_ip: str | None = None
    private_ip: str | None = None
    ports: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tagged:
    """A resource on the cloud that carries our infrastructure tag."""

    kind: str  # "vm" or a shared resource kind
    provider_id: str
    infrastructure_id: str
    token: str = ""  # set on per-VM resources (a VM, its public address)


class Driver(abc.ABC):
    provider_type = "unknown"
    # whether create_vm hands VmRequest.user_data to the cloud (else the engine skips it)
    wants_user_data = True

    def prepare(self, infrastructure_id: str, nodes: list[NodeSpec], record: Any) -> dict[str, Any]:
        """Make shared resources (security groups, ...); `record(kind, name, provider_id)` is
        called before each create call and again with the id once it exists."""
        return {}

    @abc.abstractmethod
    def create_vm(self, req: VmRequest) -> VmStatus: ...

    def finish_vm(self, req: VmRequest, status: VmStatus) -> VmStatus:
        """The step after the VM runs (a public address, ...); called with a running status
        until it returns a state other than pending. Idempotent: a retry finds what an earlier
        call made (by tag) instead of making it again."""
        return status

    @abc.abstractmethod
    def find_vm(self, infrastructure_id: str, token: str) -> VmStatus | None: ...

    @abc.abstractmethod
    def vm_status(self, provider_id: str) -> VmStatus | None: ...

    @abc.abstractmethod
    def destroy_vm(self, provider_id: str) -> None:
        """Idempotent: a VM that is already gone is not an error."""

    def start_vm(self, provider_id: str) -> None:
        raise CloudError(f"{self.provider_type} cannot start a stopped VM", bad_input=True)

    def stop_vm(self, provider_id: str) -> None:
        raise CloudError(f"{self.provider_type} cannot stop a VM", bad_input=True)

    def reboot_vm(self, provider_id: str) -> None:
        raise CloudError(f"{self.provider_type} cannot reboot a VM", bad_input=True)

    def alter_vm(self, provider_id: str, node: NodeSpec) -> None:
        """Resize to node's instance_type / cpus / memory_mb / gpus."""
        raise CloudError(f"{self.provider_type} cannot resize a VM", bad_input=True)

    def release(  # noqa: B027 - drivers without shared resources have nothing to release
        self, infrastructure_id: str, resources: list[tuple[str, str, str | None]]
    ) -> None:
        """Destroy shared resources (kind, name, provider_id) made by prepare(); idempotent."""

    def remove_tagged(self, tagged: Tagged) -> None:
        """Remove one tagged non-VM resource (the reconciler's per-resource clean-up)."""
        self.release(
            tagged.infrastructure_id, [(tagged.kind, tagged.provider_id, tagged.provider_id)]
        )

    @abc.abstractmethod
    def list_tagged(self) -> list[Tagged]: ...

    def list_tagged_for(self, infrastructure_id: str) -> list[Tagged]:
        """What carries this infrastructure's tag (drivers with server-side filters override)."""
        return [t for t in self.list_tagged() if t.infrastructure_id == infrastructure_id]

    def close(self) -> None:  # noqa: B027 - most clients hold nothing to release
        """Release client connections."""
