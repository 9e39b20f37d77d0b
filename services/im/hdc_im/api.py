"""IM-compatible REST handlers (bound by connexion from openapi.yaml).

Answers follow the IM: text by default, JSON with `Accept: application/json`, uri-lists for
collections; errors are text `Error <doing>: <reason>` with the IM's status codes.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import sqlalchemy as sa
from connexion import request
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import JSONResponse, Response

from hdc_im import IM_COMPAT_VERSION, radl_doc, tosca
from hdc_im.auth import AuthData, AuthError, parse_header
from hdc_im.drivers.base import CloudError
from hdc_im.engine import Engine, infra_state, vm_view
from hdc_im.models import DELETED, DELETING, FAILED, VM, Infrastructure, Job
from hdc_im.settings import ImSettings
from hdc_im.topology import Topology, TopologyError

log = logging.getLogger(__name__)
YAML_TYPES = ("text/yaml", "text/x-yaml", "application/yaml", "application/x-yaml")


class ImError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _media(header: str) -> list[str]:
    value = request.headers.get(header) or ""
    out = []
    for part in value.split(","):
        mt = part.split(";")[0].strip().lower()
        if mt:
            out.append("text/yaml" if mt in YAML_TYPES else mt)
    return out


def error_response(status: int, message: str) -> Response:
    accept = _media("Accept")
    if "application/json" in accept:
        return JSONResponse({"message": message, "code": status}, status_code=status)
    if "text/html" in accept:
        html = (
            f"<!DOCTYPE html><html><head><title>Error {status}.</title></head><body>"
            f"<h1>Code: {status}.</h1><h1>Message: {message}</h1></body></html>"
        )
        return Response(html, status_code=status, media_type="text/html")
    return Response(message, status_code=status, media_type="text/plain")


def output(
    res: Any,
    default_type: str = "text/plain",
    field: str | None = None,
    list_field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    accept = _media("Accept") or [default_type]
    for item in accept:
        if item in ("application/json", "application/*") or (
            item in (default_type, "*/*", "text/*") and default_type == "application/json"
        ):
            body: Any = res
            if field:
                if list_field and isinstance(res, list):
                    body = {field: [{list_field: r} for r in res]}
                else:
                    body = {field: res}
            return JSONResponse(body, headers=headers)
        if item in (default_type, "*/*", "text/*"):
            text = "\n".join(res) if isinstance(res, list) else str(res)
            return Response(text, media_type=default_type, headers=headers)
    raise ImError(415, f"Unsupported Accept Media Types: {','.join(accept)}")


def _yes(v: str | None) -> bool:
    return str(v or "").lower() in ("yes", "1", "true")


class ImApi:
    def __init__(
        self,
        settings: ImSettings,
        sessions: sessionmaker[Session],
        engine: Engine,
        gateway_identity: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.engine = engine
        self.gateway_identity = gateway_identity or (lambda _headers: None)

    # -- plumbing ------------------------------------------------------------------------

    @staticmethod
    def _error(doing: str, exc: Exception) -> Response:
        """The IM's error answer for a known failure: `Error <doing>: <reason>`."""
        if isinstance(exc, ImError):
            msg = exc.message if exc.status in (401, 415) else f"Error {doing}: {exc.message}"
            return error_response(exc.status, msg)
        if isinstance(exc, AuthError):
            msg = str(exc) if exc.status == 401 else f"Error {doing}: {exc}"
            return error_response(exc.status, msg)
        return error_response(400, f"Error {doing}: {exc}")  # TopologyError, CloudError

    async def _guard(self, doing: str, fn: Callable[[], Any]) -> Response:
        try:
            return await anyio.to_thread.run_sync(fn)
        except (ImError, AuthError, TopologyError, CloudError) as exc:
            return self._error(doing, exc)

    def _auth(self) -> AuthData:
        return parse_header(
            request.headers.get("Authorization"), self.gateway_identity(request.headers)
        )

    def _base(self) -> str:
        return str(request.base_url).rstrip("/")

    def _infra(
        self, s: Session, infid: str, auth: AuthData, allow_deleted: bool = False
    ) -> Infrastructure:
        infra = s.get(Infrastructure, infid)
        if infra is None:
            raise ImError(404, "Invalid infrastructure ID or access not granted.")
        if infra.owner != auth.owner:
            raise ImError(403, "Access to this infrastructure not granted.")
        if infra.state == DELETED and not allow_deleted:
            raise ImError(404, "Deleted infrastructure.")
        return infra

    def _vms(self, s: Session, infid: str) -> list[VM]:
        return list(
            s.scalars(
                sa.select(VM)
                .where(VM.infrastructure_id == infid, VM.state != DELETED)
                .order_by(VM.index)
            ).all()
        )

    def _vm(self, s: Session, infid: str, vmid: str) -> VM:
        if not vmid.isdigit():
            raise ImError(404, f"Invalid VM ID {vmid}: VM IDs are numbers.")
        vm = s.scalar(sa.select(VM).where(VM.infrastructure_id == infid, VM.index == int(vmid)))
        if vm is None:
            raise ImError(404, f"Invalid VM ID {vmid}: no such VM in the infrastructure.")
        if vm.state == DELETED:
            raise ImError(404, f"VM {vmid} has been deleted.")
        return vm

    async def _document(self) -> tuple[Topology, str | None, str | None, Any]:
        raw = (await request.body()).decode("utf-8", errors="replace")
        ctype = _media("Content-Type") or ["text/plain"]
        if not raw.strip():
            raise ImError(400, "Error parsing request body: the body is empty")
        if "text/yaml" in ctype or (
            ctype[0] in ("text/plain", "*/*") and raw.lstrip().startswith("tosca_definitions")
        ):
            topo = await anyio.to_thread.run_sync(
                lambda: tosca.load(raw, self.settings.tosca_types_files)
            )
            return topo, raw, None, None
        if "application/json" in ctype or ctype[0] in ("text/plain", "*/*", "text/*"):
            doc = radl_doc.parse(raw, "application/json" in ctype)
            return radl_doc.to_topology(doc), None, raw, doc
        raise ImError(415, f"Unsupported Media Type {ctype[0]}")

    def _site_for(self, auth: AuthData, doc: Any) -> tuple[dict[str, Any], dict[str, str]]:
        cloud_id = None
        if doc is not None:
            ids = {d.cloud_id for d in doc.deploys if d.cloud_id}
            cloud_id = next(iter(ids), None)
        cred = auth.cloud(cloud_id) or auth.cloud()
        if cred is None:
            raise ImError(
                400,
                "No cloud provider available: the Authorization header has no "
                "cloud credentials line (e.g. 'id = one; type = Dummy')",
            )
        conf = self.settings.sites.get(cred.id)
        site = {
            "id": cred.id,
            "type": conf.type if conf else cred.driver,
            "endpoint": cred.fields.get("host", conf.endpoint if conf else ""),
            "region": cred.fields.get("region", conf.region if conf else ""),
        }
        if cred.driver == "libcloud":
            site["provider"] = cred.fields.get("driver", cred.type)
        return site, {k: v for k, v in cred.fields.items() if k != "id"}

    def _wait_job(self, job_id: int, inline: bool = True) -> None:
        """Run the job here (the sync API) or wait for the worker that took it."""
        if inline and self.engine.run_once(job_id):
            return
        deadline = time.monotonic() + self.settings.sync_timeout_s
        while time.monotonic() < deadline:
            with self.sessions() as s:
                job = s.get(Job, job_id)
                if job is None or job.state in ("done", "failed"):
                    return
            if self.engine.run_once(job_id):
                return
            time.sleep(0.05)
        raise ImError(504, "Operation timed out")

    # -- handlers ------------------------------------------------------------------------

    async def get_version(self) -> Response:
        return output(IM_COMPAT_VERSION, field="version")

    async def list_infrastructures(self, filter_: str | None = None) -> Response:
        base = self._base()

        def run() -> Response:
            auth = self._auth()
            try:
                flt = re.compile(filter_) if filter_ else None
            except re.error as exc:
                raise ImError(400, f"invalid filter regular expression: {exc}") from None
            with self.sessions() as s:
                rows = s.execute(
                    sa.select(Infrastructure.id, Infrastructure.tosca, Infrastructure.radl)
                    .where(Infrastructure.owner == auth.owner, Infrastructure.state != DELETED)
                    .order_by(Infrastructure.created_at)
                ).all()
            ids = [r.id for r in rows if flt is None or flt.search(r.tosca or r.radl or "")]
            return output(
                [f"{base}/infrastructures/{i}" for i in ids], "text/uri-list", "uri-list", "uri"
            )

        return await self._guard("Getting Inf. List", run)

    async def create_infrastructure(
        self, async_: str | None = None, dry_run: str | None = None
    ) -> Response:
        base = self._base()
        try:
            auth = self._auth()
            topo, tosca_text, radl_text, doc = await self._document()
        except (ImError, AuthError, TopologyError) as exc:
            return self._error("Creating Inf.", exc)

        def run() -> Response:
            if _yes(dry_run):
                est = {
                    n.name: {
                        "count": n.count,
                        "cpus": n.cpus,
                        "memory_mb": n.memory_mb,
                        "gpus": n.gpus,
                    }
                    for n in topo.nodes
                }
                return output(est, "application/json")
            site, creds = self._site_for(auth, doc)
            infid = str(uuid.uuid4())
            sync = not _yes(async_)
            with self.sessions.begin() as s:
                _, job = self.engine.submit_create(
                    s,
                    infra_id=infid,
                    owner=auth.owner,
                    topo=topo,
                    site=site,
                    credentials=creds,
                    tosca=tosca_text,
                    radl=radl_text,
                    claim=sync,
                    progress_event=not sync,
                )
            if sync:
                self.engine.run(job)
                if getattr(job, "_error", None):
                    raise ImError(400, job._error)
                if getattr(job, "_crash", None):
                    # not finished: the job is retried in the background; the id stays valid
                    raise ImError(
                        503,
                        f"provisioning of {infid} interrupted ({job._crash}); "
                        "it is retried, see its state and contmsg",
                    )
            return output(
                f"{base}/infrastructures/{infid}", "text/uri-list", "uri", headers={"InfID": infid}
            )

        return await self._guard("Creating Inf.", run)

    async def get_infrastructure(self, infid: str) -> Response:
        base = self._base()

        def run() -> Response:
            auth = self._auth()
            with self.sessions() as s:
                self._infra(s, infid, auth)
                vms = self._vms(s, infid)
            return output(
                [f"{base}/infrastructures/{infid}/vms/{v.index}" for v in vms],
                "text/uri-list",
                "uri-list",
                "uri",
            )

        return await self._guard("Getting Inf. info", run)

    async def destroy_infrastructure(
        self, infid: str, async_: str | None = None, force: str | None = None
    ) -> Response:
        def run() -> Response:
            auth = self._auth()
            sync = not _yes(async_)
            with self.sessions.begin() as s:
                infra = self._infra(s, infid, auth)
                pending = None
                if infra.state == DELETING:
                    pending = s.scalar(
                        sa.select(Job.id).where(
                            Job.infrastructure_id == infid,
                            Job.kind == "delete",
                            Job.state.in_(("queued", "running")),
                        )
                    )
                if pending is None:
                    job = self.engine.submit_delete(s, infra, claim=sync)
            if pending is not None:
                # a delete is under way (another request, or a worker): wait for it
                if sync:
                    self._wait_job(pending, inline=False)
            elif sync:
                self.engine.run(job)
                if getattr(job, "_crash", None):
                    raise ImError(
                        503,
                        f"destroying {infid} interrupted ({job._crash}); it is "
                        "retried, see its state",
                    )
            return Response("", media_type="text/plain")

        return await self._guard("Destroying Inf", run)

    def _get_prop(self, infid: str, prop: str) -> Any:
        auth = self._auth()
        with self.sessions() as s:
            infra = self._infra(s, infid, auth)
            vms = self._vms(s, infid)
            if prop == "state":
                return {
                    "state": infra_state(infra, vms),
                    "vm_states": {str(v.index): v.state for v in vms},
                }
            if prop == "contmsg":
                parts = [infra.contmsg or ""]
                parts += [f"VM {v.index} ({v.node}):\n{v.contmsg}" for v in vms if v.contmsg]
                return "\n".join(parts)
            if prop == "outputs":
                if infra.tosca is None:
                    raise ImError(
                        403, "'outputs' infrastructure property is not valid in this infrastructure"
                    )
                return infra.outputs or {}
            if prop == "tosca":
                if infra.tosca is None:
                    raise ImError(
                        403, "'tosca' infrastructure property is not valid in this infrastructure"
                    )
                return infra.tosca
            if prop == "radl":
                return "\n".join(radl_doc.vm_radl(vm_view(v)) for v in vms)
        raise ImError(404, "Incorrect infrastructure property")

    async def _prop(self, infid: str, prop: str, default_type: str) -> Response:
        def run() -> Response:
            if default_type == "application/json":
                accept = _media("Accept") or ["application/json"]
                if not {"application/json", "*/*", "application/*"} & set(accept):
                    raise ImError(415, f"Unsupported Accept Media Types: {accept}")
            return output(self._get_prop(infid, prop), default_type, field=prop)

        return await self._guard("Getting Inf. prop", run)

    async def get_state(self, infid: str) -> Response:
        return await self._prop(infid, "state", "application/json")

    async def get_outputs(self, infid: str) -> Response:
        return await self._prop(infid, "outputs", "application/json")

    async def get_contmsg(self, infid: str, headeronly: str | None = None) -> Response:
        return await self._prop(infid, "contmsg", "text/plain")

    async def get_tosca(self, infid: str) -> Response:
        return await self._prop(infid, "tosca", "text/plain")

    async def get_radl(self, infid: str) -> Response:
        return await self._prop(infid, "radl", "text/plain")

    async def add_resource(self, infid: str, context: str | None = None) -> Response:
        base = self._base()
        try:
            auth = self._auth()
            topo, tosca_text, radl_text, _doc = await self._document()
        except (ImError, AuthError, TopologyError) as exc:
            return self._error("Adding resources", exc)

        def run() -> Response:
            with self.sessions.begin() as s:
                infra = self._infra(s, infid, auth)
                if infra.state in (DELETING, FAILED):
                    raise ImError(409, f"infrastructure is {infra.state}")
                current = Topology.from_dict(infra.topology)
                if tosca_text is not None:
                    merged = topo
                    merged_nodes = {n.name for n in topo.nodes}
                    merged.nodes += [n for n in current.nodes if n.name not in merged_nodes]
                else:
                    # RADL adds: counts are increments over what exists
                    merged = current
                    for n in topo.nodes:
                        have = merged.node(n.name)
                        if have is None:
                            merged.nodes.append(n)
                        else:
                            have.count += n.count
                    infra.radl = (infra.radl or "") + "\n" + (radl_text or "")
                removal = [int(x) for n in topo.nodes for x in n.removal_list if str(x).isdigit()]
                self.engine.store_topology(infra, merged, tosca_text)
                new = self.engine.plan_vms(s, infra, merged)
                new_ids = [v.index for v in new]
                infra.state = "pending" if new else infra.state
                jobs = []
                if removal:
                    jobs.append(
                        self.engine.submit_job(
                            s, infid, "remove_vms", {"indices": removal}, wake=False
                        ).id
                    )
                if new:
                    jobs.append(self.engine.submit_job(s, infid, "update", wake=False).id)
            for j in jobs:
                self._wait_job(j)
            with self.sessions() as s:
                infra = s.get(Infrastructure, infid)
                if infra.state == FAILED:
                    raise ImError(400, infra.error or "adding resources failed")
            return output(
                [f"{base}/infrastructures/{infid}/vms/{i}" for i in new_ids],
                "text/uri-list",
                "uri-list",
                "uri",
                headers={"InfID": infid},
            )

        return await self._guard("Adding resources", run)

    async def reconfigure(self, infid: str, vm_list: str | None = None) -> Response:
        def run() -> Response:
            auth = self._auth()
            if vm_list and not all(x.strip().isdigit() for x in vm_list.split(",")):
                raise ImError(400, "Incorrect vm_list format.")
            with self.sessions.begin() as s:
                infra = self._infra(s, infid, auth)
                if infra.state in (DELETING, FAILED):
                    raise ImError(409, f"infrastructure is {infra.state}")
                job = self.engine.submit_job(s, infid, "update", wake=False)
            self._wait_job(job.id)
            return Response("", media_type="text/plain", headers={"InfID": infid})

        return await self._guard("reconfiguring infrastructure", run)

    async def _infra_op(self, infid: str, op: str) -> Response:
        def run() -> Response:
            auth = self._auth()
            with self.sessions() as s:
                self._infra(s, infid, auth)
            self.engine.vm_operation(infid, None, op)
            return Response("", media_type="text/plain")

        return await self._guard(f"in {op} operation", run)

    async def start_infrastructure(self, infid: str) -> Response:
        return await self._infra_op(infid, "start")

    async def stop_infrastructure(self, infid: str) -> Response:
        return await self._infra_op(infid, "stop")

    async def get_vm(self, infid: str, vmid: str) -> Response:
        def run() -> Response:
            auth = self._auth()
            with self.sessions() as s:
                self._infra(s, infid, auth)
                view = vm_view(self._vm(s, infid, vmid))
            if "application/json" in _media("Accept"):
                return JSONResponse({"radl": radl_doc.vm_radl(view, as_json=True)})
            return output(radl_doc.vm_radl(view), field="radl")

        return await self._guard("Getting VM info", run)

    async def alter_vm(self, infid: str, vmid: str) -> Response:
        try:
            auth = self._auth()
            raw = (await request.body()).decode("utf-8", errors="replace")
            doc = radl_doc.parse(raw, "application/json" in _media("Content-Type"))
        except (ImError, AuthError, TopologyError) as exc:
            return self._error("modifying resources", exc)

        def run() -> Response:
            if not doc.systems:
                raise ImError(400, "the body has no system to apply to the VM")
            change = radl_doc.system_spec(doc.systems[0])
            with self.sessions() as s:
                self._infra(s, infid, auth)
                index = self._vm(s, infid, vmid).index
            self.engine.alter_vm(infid, index, change)
            with self.sessions() as s:
                view = vm_view(self._vm(s, infid, vmid))
            if "application/json" in _media("Accept"):
                return JSONResponse({"radl": radl_doc.vm_radl(view, as_json=True)})
            return output(radl_doc.vm_radl(view), field="radl")

        return await self._guard("modifying resources", run)

    async def get_vm_contmsg(self, infid: str, vmid: str) -> Response:
        def run() -> Response:
            auth = self._auth()
            with self.sessions() as s:
                self._infra(s, infid, auth)
                return output(self._vm(s, infid, vmid).contmsg or "", field="contmsg")

        return await self._guard("Getting VM. property", run)

    async def remove_vms(self, infid: str, vmid: str, context: str | None = None) -> Response:
        def run() -> Response:
            auth = self._auth()
            ids = [x.strip() for x in vmid.split(",") if x.strip()]
            with self.sessions.begin() as s:
                infra = self._infra(s, infid, auth)
                indices = [self._vm(s, infid, i).index for i in ids]
                current = Topology.from_dict(infra.topology)
                for vm in s.scalars(
                    sa.select(VM).where(VM.infrastructure_id == infid, VM.index.in_(indices))
                ):
                    node = current.node(vm.node)
                    if node is not None:
                        node.count = max(0, node.count - 1)
                infra.topology = current.to_dict()
                job = self.engine.submit_job(
                    s, infid, "remove_vms", {"indices": indices}, wake=False
                )
            self._wait_job(job.id)
            return Response("", media_type="text/plain")

        return await self._guard("Removing resources", run)

    async def _vm_op(self, infid: str, vmid: str, op: str) -> Response:
        def run() -> Response:
            auth = self._auth()
            with self.sessions() as s:
                self._infra(s, infid, auth)
                index = self._vm(s, infid, vmid).index
            self.engine.vm_operation(infid, index, op)
            return Response("", media_type="text/plain")

        return await self._guard(f"in {op} op in VM", run)

    async def start_vm(self, infid: str, vmid: str) -> Response:
        return await self._vm_op(infid, vmid, "start")

    async def stop_vm(self, infid: str, vmid: str) -> Response:
        return await self._vm_op(infid, vmid, "stop")

    async def reboot_vm(self, infid: str, vmid: str) -> Response:
        return await self._vm_op(infid, vmid, "reboot")
