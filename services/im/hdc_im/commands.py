"""The orchestrator's AMQP commands (see README: the contract), handled exactly once.

Each handler runs in the bus's DB transaction: it only records the work (rows and a job);
the workers do the cloud calls and announce progress and results as events (outbox).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from hdc_im import tosca
from hdc_im.engine import Engine
from hdc_im.models import DELETED, VM, Infrastructure
from hdc_im.settings import ImSettings
from hdc_im.topology import Topology, TopologyError

log = logging.getLogger(__name__)
_INFRAS = Infrastructure.__table__
_INFRA_EXISTS = sa.select(_INFRAS.c.id).where(_INFRAS.c.id == sa.bindparam("id"))


class CommandHandlers:
    def __init__(self, engine: Engine, settings: ImSettings) -> None:
        self.engine = engine
        self.settings = settings

    def register(self, bus: Any) -> None:
        bus.on_command("im.infrastructure.create")(self.create)
        bus.on_command("im.infrastructure.update")(self.update)
        bus.on_command("im.infrastructure.delete")(self.delete)
        bus.on_command("im.vm.start")(self.vm_start)
        bus.on_command("im.vm.stop")(self.vm_stop)

    def _fail_event(self, s: Session, data: dict[str, Any], error: str) -> None:
        self.engine.events.emit(
            s,
            "im.infrastructure.failed",
            {
                "infrastructure_id": data.get("infrastructure_id"),
                **({"deployment_id": data["deployment_id"]} if data.get("deployment_id") else {}),
                "state": "failed",
                "error": error,
            },
            str(data.get("infrastructure_id")),
        )

    def create(self, session: Session, event: Any) -> None:
        data = event.data or {}
        infra_id = str(data.get("infrastructure_id") or "")
        if not infra_id:
            raise ValueError("im.infrastructure.create without infrastructure_id")
        if session.new:  # an earlier command of this transaction may have added it
            session.flush()
        if session.connection().scalar(_INFRA_EXISTS, {"id": infra_id}) is not None:
            return  # idempotent: the id is the orchestrator's idempotency key
        site = dict(data.get("site") or {})
        site_id = str(site.get("id") or "")
        conf = self.settings.sites.get(site_id)
        if conf is None and not site.get("type"):
            self._fail_event(session, data, f"unknown site '{site_id}' and no site type given")
            return
        try:
            topo = tosca.load(str(data.get("tosca") or ""), self.settings.tosca_types_files)
        except TopologyError as exc:
            self._fail_event(session, data, str(exc))
            return
        owner = data.get("owner") or {}
        self.engine.submit_create(
            session,
            infra_id=infra_id,
            owner=f"{owner.get('subject', '')}@{owner.get('issuer', '')}",
            topo=topo,
            site={
                "id": site_id or site.get("type"),
                "type": conf.type if conf else site["type"],
                "endpoint": site.get("endpoint") or "",
                "region": site.get("region") or "",
            },
            credentials=None,
            tosca=data.get("tosca"),
            deployment_id=data.get("deployment_id"),
            user_data_extra=data.get("user_data_extra"),
            hand_off=True,
        )

    def update(self, session: Session, event: Any) -> None:
        data = event.data or {}
        infra = session.get(Infrastructure, str(data.get("infrastructure_id")))
        if infra is None or infra.state == DELETED:
            self._fail_event(session, data, "unknown infrastructure")
            return
        try:
            topo = tosca.load(str(data.get("tosca") or ""), self.settings.tosca_types_files)
        except TopologyError as exc:
            self._fail_event(session, {**data, "deployment_id": infra.deployment_id}, str(exc))
            return
        removal = set()
        current = {n.name: n for n in Topology.from_dict(infra.topology).nodes}
        for node in topo.nodes:
            removal |= {int(x) for x in node.removal_list if str(x).isdigit()}
            # scale-in without a removal list: drop the newest instances
            live = session.scalars(
                sa.select(VM)
                .where(VM.infrastructure_id == infra.id, VM.node == node.name, VM.state != DELETED)
                .order_by(VM.index.desc())
            ).all()
            kept = [v for v in live if v.index not in removal]
            extra = len(kept) - node.count
            if extra > 0:
                removal |= {v.index for v in kept[:extra]}
            current[node.name] = node
        merged = Topology(
            nodes=list(current.values()),
            outputs=topo.outputs,
            inputs=topo.inputs,
            properties=topo.properties,
        )
        self.engine.store_topology(infra, merged, str(data.get("tosca") or ""))
        if removal:
            self.engine.submit_job(session, infra.id, "remove_vms", {"indices": sorted(removal)})
        self.engine.plan_vms(session, infra, Topology.from_dict(infra.topology))
        infra.state = "pending"
        self.engine.submit_job(session, infra.id, "update")

    def delete(self, session: Session, event: Any) -> None:
        infra_id = str((event.data or {}).get("infrastructure_id") or "")
        self.engine.submit_job(session, infra_id, "delete")

    def _vm_op(self, session: Session, event: Any, op: str) -> None:
        data = event.data or {}
        self.engine.submit_job(
            session,
            str(data.get("infrastructure_id")),
            f"vm_{op}",
            {"vm_id": str(data.get("vm_id"))},
        )

    def vm_start(self, session: Session, event: Any) -> None:
        self._vm_op(session, event, "start")

    def vm_stop(self, session: Session, event: Any) -> None:
        self._vm_op(session, event, "stop")
