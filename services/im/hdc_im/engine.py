"""The provisioning engine: plans in the database first, then calls the cloud, then records.

Every step is idempotent and resumable. A VM row (with its token) is committed before the
cloud is asked for the VM, and the cloud call tags the VM with that token, so whatever
happens between the call and the next commit, a retry finds the VM instead of making a
second one. Work runs as leased jobs: a worker that dies stops renewing its lease and any
other worker (or the same one after a restart) takes the job over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from hdc_im import contextualization, outputs
from hdc_im import tosca as tosca_module
from hdc_im.drivers.base import CloudError, Driver, VmRequest
from hdc_im.models import (
    CONFIGURED,
    DELETED,
    DELETING,
    FAILED,
    PENDING,
    RUNNING,
    STOPPED,
    VM,
    CloudResource,
    Infrastructure,
    Job,
    utcnow,
)
from hdc_im.secrets import Vault
from hdc_im.topology import NodeSpec, Topology

log = logging.getLogger(__name__)
_SEALED = "sealed:"
_ANNOUNCED = "announced"  # a create job's payload: its start was announced on submission

DriverFactory = Callable[[dict[str, Any], dict[str, Any] | None], Driver]

_JOBS = Job.__table__
_INFRAS = Infrastructure.__table__
# Take a create job that its command handler handed straight to this process's workers:
# only while nobody has run it yet (queued), no other job of its infrastructure runs (the
# rule claim() keeps), and the infrastructure is still the row the handler wrote (the
# handler's objects are used instead of reading them again). One statement, built once.
_CLAIM_HANDED_OFF = (
    sa.update(_JOBS)
    .where(
        _JOBS.c.id == sa.bindparam("jid"),
        _JOBS.c.state == "queued",
        _JOBS.c.infrastructure_id.not_in(
            sa.select(_JOBS.c.infrastructure_id).where(
                _JOBS.c.state == "running", _JOBS.c.lease_until >= sa.bindparam("now")
            )
        ),
        sa.exists().where(
            _INFRAS.c.id == sa.bindparam("iid"), _INFRAS.c.version == sa.bindparam("ver")
        ),
    )
    .values(
        state="running",
        lease_owner=sa.bindparam("owner"),
        lease_until=sa.bindparam("until"),
        attempts=_JOBS.c.attempts + 1,
    )
)
# The hot single-row job updates, built once (Core: no ORM bulk-update machinery per call).
_FINISH = (
    sa.update(_JOBS)
    .where(_JOBS.c.id == sa.bindparam("jid"), _JOBS.c.lease_owner == sa.bindparam("owner"))
    .values(state=sa.bindparam("p_state"), error=sa.bindparam("p_error"), lease_until=None)
)
_RENEW = (
    sa.update(_JOBS)
    .where(
        _JOBS.c.id == sa.bindparam("jid"),
        _JOBS.c.lease_owner == sa.bindparam("owner"),
        _JOBS.c.state == "running",
    )
    .values(lease_until=sa.bindparam("until"))
)
_AFTER_COMMIT = "hdc_im_after_commit"


def on_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run fn once `session`'s transaction has committed (dropped if it rolls back)."""
    todo = session.info.get(_AFTER_COMMIT)
    if todo is None:
        todo = session.info[_AFTER_COMMIT] = []

        def committed(s: Session) -> None:
            fns = list(s.info.get(_AFTER_COMMIT) or ())
            s.info[_AFTER_COMMIT] = []
            for f in fns:
                try:
                    f()
                except Exception:  # committed already; a queued job is still found by polling
                    log.exception("after-commit step failed")

        def rolled_back(s: Session) -> None:
            s.info[_AFTER_COMMIT] = []

        sa.event.listen(session, "after_commit", committed)
        sa.event.listen(session, "after_rollback", rolled_back)
    todo.append(fn)


class LeaseLost(Exception):
    """Another worker took this job over (we were presumed dead); stop touching it."""


class LeaseKeeper:
    """Renews the leases of the jobs this engine is running, every third of a lease.

    A lease is how other workers tell a dead worker from a busy one; a slow cloud call (a
    delete that waits for the cloud to let go of a network) must not look like death, so
    the renewal does not wait for the job's own steps. One thread for all jobs, started on
    first use; a job whose lease was taken over meanwhile is flagged (`_lost`), and its next
    step stops (renew() raises LeaseLost).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="im-leases", daemon=True)
                self._thread.start()

    def remove(self, job: Job) -> None:
        with self._lock:
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]

    def _loop(self) -> None:
        while True:
            time.sleep(self.engine.lease_s / 3)
            with self._lock:
                jobs = list(self._jobs.values())
            if not jobs:
                continue
            try:
                self._renew(jobs)
            except Exception:  # the database may be briefly unreachable; the next tick retries
                log.exception("lease renewal failed")

    def _renew(self, jobs: list[Job]) -> None:
        until = utcnow() + dt.timedelta(seconds=self.engine.lease_s)
        with self.engine.sessions.begin() as s:
            conn = s.connection()
            for job in jobs:
                res = conn.execute(
                    _RENEW, {"jid": job.id, "owner": job.lease_owner, "until": until}
                )
                if res.rowcount != 1:
                    job._lost = True
        now = time.monotonic()
        for job in jobs:
            job._renewed_at = now


class Events:
    """Where the engine announces what happened; the service wires the bus's outbox in."""

    def __init__(self, emit: Callable[..., None] | None = None) -> None:
        self._emit = emit

    def emit(self, session: Session, type_: str, data: dict[str, Any], subject: str) -> None:
        if self._emit is not None:
            self._emit(session, type_, data, subject=subject)
        else:
            log.debug("event %s %s (no bus)", type_, subject)


def vm_view(vm: VM) -> dict[str, Any]:
    return {
        "id": str(vm.index),
        "index": vm.index,
        "node": vm.node,
        "name": vm.node,
        "state": vm.state,
        "provider_id": vm.provider_id,
        "public_ip": vm.public_ip,
        "private_ip": vm.private_ip,
        "ports": dict(vm.ports or {}),
        "contmsg": vm.contmsg,
        **{
            k: v
            for k, v in (vm.info or {}).items()
            if k in ("image", "instance_type", "provider_type", "cpus", "memory_mb")
        },
    }


def infra_state(infra: Infrastructure, vms: list[VM]) -> str:
    if infra.state in (FAILED, DELETING, DELETED, PENDING):
        return infra.state
    states = {v.state for v in vms}
    if not states:
        return infra.state
    for s in (FAILED, "unknown", PENDING, RUNNING, "unconfigured", STOPPED, "off"):
        if s in states:
            return s
    return CONFIGURED


class Engine:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        vault: Vault,
        driver_factory: DriverFactory,
        events: Events | None = None,
        *,
        lease_s: float = 30.0,
        api_min_interval_s: float = 0.0,
        max_attempts: int = 3,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.sessions = sessions
        self.vault = vault
        self.driver_factory = driver_factory
        self.events = events or Events()
        self.lease_s = lease_s
        self.api_min_interval_s = api_min_interval_s
        self.max_attempts = max_attempts
        self.ready_timeout_s = ready_timeout_s
        self.worker_id = f"{uuid.uuid4().hex[:12]}"
        # Jobs handed to this process's workers without a trip through the database (their
        # rows are committed, queued, claimable by anyone; see hand_off), and None: "look at
        # the database" (a job was queued). A put wakes one waiting worker.
        self._handoffs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.local_workers = 0  # worker threads running in this process (Worker.start)
        self.handoff_max = 1000
        self.leases = LeaseKeeper(self)
        self._last_call = 0.0
        self._rate_lock = threading.Lock()

    # -- secrets of container nodes -------------------------------------------------------

    def seal(self, topo: Topology) -> Topology:
        """Container secrets sealed (Fernet) before the topology is stored; idempotent."""
        for node in topo.nodes:
            node.secrets = {
                k: v if v.startswith(_SEALED) else _SEALED + self.vault.seal(v)
                for k, v in node.secrets.items()
            }
        return topo

    def _unsealed(self, node: NodeSpec) -> NodeSpec:
        if not node.secrets:
            return node
        plain = {}
        for k, v in node.secrets.items():
            value = self.vault.open(v[len(_SEALED) :]) if v.startswith(_SEALED) else v
            if value is None:
                raise CloudError(
                    f"the secret {k} of node {node.name} cannot be opened (key rotated)"
                )
            plain[k] = str(value)
        return dataclasses.replace(node, secrets=plain)

    def store_topology(
        self, infra: Infrastructure, topo: Topology, tosca_text: str | None = None
    ) -> None:
        """What an update keeps: the topology with its secrets sealed, the TOSCA without them."""
        infra.topology = self.seal(topo).to_dict()
        if tosca_text is not None:
            infra.tosca = tosca_module.redact_secrets(tosca_text)

    # -- submitting work -----------------------------------------------------------------

    def plan_vms(
        self, session: Session, infra: Infrastructure, topo: Topology, new_infra: bool = False
    ) -> list[VM]:
        """Add VM rows for every node instance the topology asks for beyond what exists."""
        existing = (
            []
            if new_infra
            else session.scalars(
                sa.select(VM).where(VM.infrastructure_id == infra.id, VM.state != DELETED)
            ).all()
        )
        have: dict[str, int] = {}
        for vm in existing:
            have[vm.node] = have.get(vm.node, 0) + 1
        new = []
        for node in topo.nodes:
            for _ in range(max(0, node.count - have.get(node.name, 0))):
                idx = infra.next_vm_index
                infra.next_vm_index = idx + 1
                vm = VM(
                    infrastructure_id=infra.id,
                    index=idx,
                    node=node.name,
                    state=PENDING,
                    token=uuid.uuid5(uuid.NAMESPACE_URL, f"hdc-im:{infra.id}:{idx}").hex,
                    ports={},
                    info={"image": node.image, "instance_type": node.instance_type},
                    contmsg="",
                    version=1,
                )
                session.add(vm)
                new.append(vm)
        return new

    def submit_create(
        self,
        session: Session,
        *,
        infra_id: str,
        owner: str,
        topo: Topology,
        site: dict[str, Any],
        credentials: dict[str, Any] | None,
        tosca: str | None = None,
        radl: str | None = None,
        deployment_id: str | None = None,
        user_data_extra: str | None = None,
        wake: bool = True,
        claim: bool = False,
        progress_event: bool = True,
        hand_off: bool = False,
    ) -> tuple[Infrastructure, Job]:
        """Record an infrastructure, its planned VMs and its create job in `session`.

        claim=True: the caller runs the job itself right after commit (the synchronous API);
        the job is created already leased to this engine, and its start is announced in the
        same transaction, so the fast path costs no extra writes. A crash before it finishes
        lets the lease expire and any worker resumes it.

        hand_off=True (the bus's commands): the job is queued like any other, its start is
        announced in this transaction (the job remembers it: a worker that takes it from the
        database does not announce it again), and once committed it is handed to a worker
        of this process with the rows just written, so that worker reads none of them again.
        """
        infra = Infrastructure(
            id=infra_id,
            owner=owner,
            state=PENDING,
            topology=self.seal(topo).to_dict(),
            tosca=tosca_module.redact_secrets(tosca),
            radl=radl,
            site=site,
            credentials=self.vault.seal(credentials) if credentials else None,
            deployment_id=deployment_id,
            user_data_extra=user_data_extra,
            outputs={},
            contmsg="",
            next_vm_index=0,
            version=1,
        )
        if claim or hand_off:
            # before the INSERT, so that its log line is part of it (no UPDATE of the row);
            # a synchronous caller learns the outcome from its own answer: the progress event
            # only matters to asynchronous watchers (the orchestrator)
            self._announce(session, infra, event=progress_event)
        session.add(infra)  # the flush inserts it before its VMs (their foreign key)
        todo = self.plan_vms(session, infra, topo, new_infra=True)
        job = self.submit_job(
            session,
            infra_id,
            "create",
            {_ANNOUNCED: True} if hand_off and not claim else None,
            wake=wake and not claim and not hand_off,
            claim=claim,
            flush=not hand_off,  # handed off: written with the rest at commit, one flush
        )
        if claim:
            job._infra = infra
            job._todo = todo
        elif hand_off:
            self.hand_off(session, job, infra, todo, wake=wake)
        return infra, job

    def hand_off(
        self, session: Session, job: Job, infra: Infrastructure, todo: list[VM], wake: bool = True
    ) -> None:
        """Once `session` commits, give the queued create `job` to a worker of this process
        together with the objects of its rows, as written (see run_once). The job stays an
        ordinary queued job until a worker claims it, so any worker anywhere may take it
        instead (this process dying, or busy): then it runs as if it had never been handed.
        """
        if self.local_workers <= 0 or self._handoffs.qsize() >= self.handoff_max:
            if wake:
                on_commit(session, self.kick)
            return

        def give() -> None:
            state = sa.inspect(job)
            if not state.persistent:  # rolled back with a savepoint: nothing to run
                return
            # out of the committing session: its close must not touch what the worker uses
            for obj in (job, infra, *todo):
                if sa.inspect(obj).session is session:
                    session.expunge(obj)
            job._infra = infra
            job._todo = todo
            job._handed_off = True
            self._handoffs.put(job)

        on_commit(session, give)

    def kick(self) -> None:
        """A job was queued in the database: wake a worker to look (if any runs here; a
        worker that finds nothing to do looks again after its poll interval anyway)."""
        if self.local_workers > 0 and self._handoffs.qsize() < self.handoff_max:
            self._handoffs.put(None)

    def submit_job(
        self,
        session: Session,
        infra_id: str,
        kind: str,
        payload: dict[str, Any] | None = None,
        wake: bool = True,
        claim: bool = False,
        flush: bool = True,
    ) -> Job:
        """Queue a job; claim=True: leased to this engine now, the caller runs it (run()).
        flush=False: its id is known only once the session flushes (at commit at the latest)."""
        job = Job(
            infrastructure_id=infra_id, kind=kind, payload=payload or {}, state="queued", attempts=0
        )
        if claim:
            job.state = "running"
            job.attempts = 1
            job.lease_owner = self._lease_token()
            job.lease_until = utcnow() + dt.timedelta(seconds=self.lease_s)
        session.add(job)
        if flush:
            session.flush()
        if wake:
            # once committed: a worker woken before would not see the job yet
            on_commit(session, self.kick)
        return job

    # -- leases --------------------------------------------------------------------------

    def _lease_token(self) -> str:
        """Who holds a lease: this engine and this one claim. Worker threads of one process
        share the engine, so a thread whose lease expired (a slow cloud call) and the thread
        that then took the job over must still tell their leases apart."""
        return f"{self.worker_id}:{uuid.uuid4().hex[:12]}"

    def _holds(self, job: Job) -> bool:
        with self.sessions() as s:
            row = s.execute(sa.select(Job.lease_owner, Job.state).where(Job.id == job.id)).one()
        return row.lease_owner == job.lease_owner and row.state == "running"

    def claim(self, job_id: int | None = None) -> Job | None:
        """Take one runnable job (or the given one) under a fresh lease."""
        now = utcnow()
        with self.sessions.begin() as s:
            q = sa.select(Job.id).where(
                Job.state.in_(("queued", "running")),
                sa.or_(Job.lease_until.is_(None), Job.lease_until < now),
            )
            if job_id is not None:
                q = q.where(Job.id == job_id)
            # one job per infrastructure at a time: the oldest first
            busy = sa.select(Job.infrastructure_id).where(
                Job.state == "running", Job.lease_until >= now
            )
            q = q.where(Job.infrastructure_id.not_in(busy)).order_by(Job.id).limit(1)
            jid = s.scalar(q)
            if jid is None:
                return None
            res = s.execute(
                sa.update(Job)
                .where(Job.id == jid, sa.or_(Job.lease_until.is_(None), Job.lease_until < now))
                .values(
                    state="running",
                    lease_owner=self._lease_token(),
                    lease_until=now + dt.timedelta(seconds=self.lease_s),
                    attempts=Job.attempts + 1,
                )
            )
            if res.rowcount != 1:
                return None
            return s.get(Job, jid)

    def renew(self, job: Job, force: bool = False) -> None:
        """Extend the lease; a no-op while most of it is left (saves a write per step)."""
        if getattr(job, "_lost", False):
            raise LeaseLost(f"job {job.id}")
        now = time.monotonic()
        renewed = getattr(job, "_renewed_at", None)
        if renewed is None:
            job._renewed_at = renewed = now  # claimed just now with a full lease
        if not force and now - renewed < self.lease_s / 3:
            return
        job._renewed_at = now
        until = utcnow() + dt.timedelta(seconds=self.lease_s)
        with self.sessions.begin() as s:
            res = s.connection().execute(
                _RENEW, {"jid": job.id, "owner": job.lease_owner, "until": until}
            )
            if res.rowcount != 1:
                raise LeaseLost(f"job {job.id}")

    def finish(
        self,
        job: Job,
        state: str = "done",
        error: str | None = None,
        session: Session | None = None,
    ) -> None:
        if session is not None:
            self._finish_in(session, job, state, error)
            return
        with self.sessions.begin() as s:
            self._finish_in(s, job, state, error)

    def _finish_in(self, s: Session, job: Job, state: str, error: str | None) -> None:
        """Mark done inside the caller's transaction, so state and job commit together."""
        job._finished = True
        res = s.connection().execute(
            _FINISH, {"jid": job.id, "owner": job.lease_owner, "p_state": state, "p_error": error}
        )
        if res.rowcount != 1:
            raise LeaseLost(f"job {job.id}")

    # -- running work --------------------------------------------------------------------

    def run_once(self, job_id: int | None = None) -> bool:
        """Run one job: a handed-off one first, else one claimed from the database."""
        if job_id is None:
            try:
                handed = self._handoffs.get_nowait()
            except queue.Empty:
                handed = None
            if handed is not None:
                self.run_handed_off(handed)
                return True
        job = self.claim(job_id)
        if job is None:
            return False
        self.run(job)
        return True

    def next_handoff(self, timeout: float) -> Job | None:
        """Wait up to timeout for a handed-off job (None: none, or look at the database)."""
        try:
            return self._handoffs.get(timeout=timeout)
        except queue.Empty:
            return None

    def run_handed_off(self, job: Job) -> None:
        if not self._claim_handed_off(job):
            # taken by another worker, or its rows changed meanwhile: the database decides
            self.run_once(job.id)
            return
        self.run(job)

    def _claim_handed_off(self, job: Job) -> bool:
        now = utcnow()
        owner = self._lease_token()
        until = now + dt.timedelta(seconds=self.lease_s)
        with self.sessions.begin() as s:
            res = s.connection().execute(
                _CLAIM_HANDED_OFF,
                {
                    "jid": job.id,
                    "now": now,
                    "iid": job.infrastructure_id,
                    "ver": job._infra.version,
                    "owner": owner,
                    "until": until,
                },
            )
            if res.rowcount != 1:
                return False
        # queued until now: this is its first attempt
        job.state, job.attempts, job.lease_owner, job.lease_until = "running", 1, owner, until
        job._renewed_at = time.monotonic()
        return True

    def run(self, job: Job) -> None:
        self.leases.add(job)
        try:
            self._run(job)
        finally:
            self.leases.remove(job)

    def _run(self, job: Job) -> None:
        try:
            handler = getattr(self, f"_job_{job.kind}")
            handler(job)
            if not getattr(job, "_finished", False):
                self.finish(job)
        except LeaseLost:
            log.warning("lease lost on job %s; another worker has it", job.id)
        except Exception as exc:  # a job must never kill its worker
            log.exception("job %s (%s) crashed", job.id, job.kind)
            job._crash = str(exc)
            if not self._holds(job):
                # taken over while we ran (our lease ran out): the new holder carries on
                log.warning("job %s was taken over by another worker; leaving it", job.id)
                return
            if job.attempts >= self.max_attempts:
                error = f"internal error: {exc}"
                if job.kind in ("create", "update"):
                    self._cleanup_failed(job.infrastructure_id, error)  # destroys what was made
                else:
                    self._fail(job.infrastructure_id, error)
                self.finish(job, "failed", str(exc))
            else:
                # leave it leased-out briefly: it is retried when the lease expires
                with self.sessions.begin() as s:
                    s.execute(
                        sa.update(Job)
                        .where(Job.id == job.id, Job.lease_owner == job.lease_owner)
                        .values(lease_until=utcnow() + dt.timedelta(seconds=min(self.lease_s, 2.0)))
                    )

    def driver(self, infra: Infrastructure) -> Driver:
        try:
            return self.driver_factory(infra.site, self.vault.open(infra.credentials))
        except CloudError:
            raise
        except Exception as exc:  # bad endpoint/credential shapes surface here
            raise CloudError(
                f"cannot use site {infra.site.get('id')}: {exc}", bad_input=True
            ) from None

    def _throttle(self) -> None:
        if self.api_min_interval_s <= 0:
            return
        with self._rate_lock:
            wait = self._last_call + self.api_min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_call = time.monotonic()

    def _log(
        self, s: Session, infra: Infrastructure | None, msg: str, vm: VM | None = None
    ) -> None:
        """A contextualization-log line: on the VM it concerns, else on the infrastructure
        (GET /contmsg shows both), so a VM step writes one row, not two."""
        line = f"{utcnow().isoformat(timespec='seconds')}Z {msg}\n"
        if vm is not None:
            vm.contmsg = (vm.contmsg or "") + line
        elif infra is not None:
            infra.contmsg = (infra.contmsg or "") + line

    def _event_base(self, infra: Infrastructure) -> dict[str, Any]:
        data: dict[str, Any] = {"infrastructure_id": infra.id}
        if infra.deployment_id:
            data["deployment_id"] = infra.deployment_id
        return data

    def _job_create(self, job: Job) -> None:
        self._provision(job)

    def _job_update(self, job: Job) -> None:
        self._provision(job, updated=True)

    def _announce(self, s: Session, infra: Infrastructure, event: bool = True) -> None:
        site = infra.site or {}
        if event:
            self.events.emit(
                s,
                "im.infrastructure.progress",
                {
                    **self._event_base(infra),
                    "state": PENDING,
                    "message": f"provisioning on {site.get('type')}",
                },
                infra.id,
            )
        self._log(s, infra, f"Provisioning on site {site.get('id')} ({site.get('type')})")

    def _provision(self, job: Job, updated: bool = False) -> None:
        infra_id = job.infrastructure_id
        infra = getattr(job, "_infra", None)
        todo = getattr(job, "_todo", None)
        if infra is None:
            with self.sessions.begin() as s:
                infra = s.get(Infrastructure, infra_id)
                if infra is None or infra.state in (DELETING, DELETED, FAILED):
                    return
                if not ((job.attempts or 1) == 1 and (job.payload or {}).get(_ANNOUNCED)):
                    self._announce(s, infra)  # (else announced when the job was submitted)
        topo = Topology.from_dict(infra.topology)
        try:
            drv = self.driver(infra)
            shared = drv.prepare(infra_id, topo.nodes, self._recorder(infra_id))
            self.renew(job)
            if todo is None:
                with self.sessions() as s:
                    todo = s.scalars(
                        sa.select(VM)
                        .where(
                            VM.infrastructure_id == infra_id,
                            VM.state == PENDING,
                            VM.provider_id.is_(None),
                        )
                        .order_by(VM.index)
                    ).all()
            pending_records: list[tuple[VM, Any, bool]] = []
            last_flush = time.monotonic()
            flushed = False
            all_up = True
            for vm in todo:
                status, adopted = self._make_vm(drv, infra, topo, vm, shared)
                if status is None:
                    continue
                if status.state == FAILED:
                    self._record_vms(
                        [*pending_records, (vm, status, False)], drv.provider_type, topo
                    )
                    raise CloudError(
                        f"VM {vm.index} ({vm.node}) failed on the cloud: "
                        f"{status.info.get('error', 'no reason given')}"
                    )
                all_up = all_up and status.state not in (PENDING,)
                pending_records.append((vm, status, adopted))
                # Provider ids are written in batches: the VM row and its token exist already,
                # and the VM carries the token, so an unwritten id is found again on retry.
                if time.monotonic() - last_flush > 0.25:
                    self._record_vms(pending_records, drv.provider_type, topo)
                    pending_records, last_flush = [], time.monotonic()
                    flushed = True
                try:
                    self.renew(job)
                except LeaseLost:
                    if not adopted:
                        self._straggler_check(drv, vm, status.provider_id)
                    raise
            fresh = getattr(job, "_todo", None) is not None
            if fresh and all_up and not flushed and (job.attempts or 1) == 1:
                # everything came up at once: record and configure in one transaction
                self._configure(
                    infra_id, topo, updated, job, made=(pending_records, drv.provider_type)
                )
                return
            self._record_vms(pending_records, drv.provider_type, topo)
            if (job.attempts or 1) > 1:
                # this job ran before (a worker died or lost its lease mid-call): make the
                # cloud hold exactly the VMs the database knows, one per token
                self._converge(drv, infra_id)
            self._wait_running(drv, infra, topo, shared, job)
            self._configure(infra_id, topo, updated, job)
        except CloudError as exc:
            self._cleanup_failed(infra_id, str(exc))
            job._error = str(exc)

    def _recorder(self, infra_id: str) -> Callable[[str, str, str | None], None]:
        def record(kind: str, name: str, provider_id: str | None) -> None:
            with self.sessions.begin() as s:
                row = s.scalar(
                    sa.select(CloudResource).where(
                        CloudResource.infrastructure_id == infra_id,
                        CloudResource.kind == kind,
                        CloudResource.name == name,
                    )
                )
                if row is None:
                    row = CloudResource(
                        infrastructure_id=infra_id, kind=kind, name=name, state="creating"
                    )
                    s.add(row)
                if provider_id:
                    row.provider_id = provider_id
                    row.state = "present"

        return record

    def _make_vm(
        self, drv: Driver, infra: Infrastructure, topo: Topology, vm: VM, shared: dict[str, Any]
    ) -> tuple[Any, bool]:
        node = topo.node(vm.node)
        if node is None:
            return None, False
        req = VmRequest(infra.id, vm.index, vm.token, node, "", shared, self._recorder(infra.id))
        status = drv.find_vm(infra.id, vm.token)
        adopted = status is not None
        if status is None:
            self._throttle()
            if getattr(drv, "wants_user_data", True):
                req.user_data = contextualization.user_data(
                    node, infra.id, vm.index, infra.user_data_extra
                )
            req.node = self._unsealed(node)  # opened only for the call that hands them over
            status = drv.create_vm(req)
            req.node = node
        if status.state == RUNNING:
            status = drv.finish_vm(req, status)
        return status, adopted

    def _straggler_check(self, drv: Driver, vm: VM, made: str) -> None:
        """We lost the lease while our create call ran: if the new owner recorded another VM
        for this token, ours is a duplicate; remove it (else the owner adopts or dedupes it)."""
        with self.sessions() as s:
            recorded = s.scalar(sa.select(VM.provider_id).where(VM.id == vm.id))
        if recorded and recorded != made:
            log.warning("lease lost mid-create; removing duplicate %s of VM %s", made, vm.index)
            drv.destroy_vm(made)

    def _converge(self, drv: Driver, infra_id: str) -> None:
        with self.sessions() as s:
            rows = {
                v.token: v
                for v in s.scalars(
                    sa.select(VM).where(VM.infrastructure_id == infra_id, VM.state != DELETED)
                )
            }
        for t in drv.list_tagged_for(infra_id):
            if t.kind != "vm":
                continue
            row = rows.get(t.token)
            if row is None or (row.provider_id and row.provider_id != t.provider_id):
                log.warning("removing duplicate or unknown VM %s of %s", t.provider_id, infra_id)
                drv.destroy_vm(t.provider_id)

    def _record_vms(
        self, made: list[tuple[VM, Any, bool]], provider_type: str, topo: Topology
    ) -> None:
        if not made:
            return
        with self.sessions.begin() as s:
            self._apply_records(s, made, provider_type, topo)

    def _apply_records(
        self,
        s: Session,
        made: list[tuple[VM, Any, bool]],
        provider_type: str,
        topo: Topology,
        fresh: bool = False,
    ) -> list[VM]:
        """fresh: the VM objects are the rows as this job's submission wrote them (nobody has
        touched them since; optimistic locking refuses them otherwise): not read again."""
        if not made:
            return []
        if fresh:
            rows = {vm.id: s.merge(vm, load=False) for vm, _, _ in made}
        else:
            ids = [vm.id for vm, _, _ in made]
            rows = {r.id: r for r in s.scalars(sa.select(VM).where(VM.id.in_(ids)))}
        for vm, status, adopted in made:
            row = rows[vm.id]
            row.provider_id = status.provider_id
            row.state = status.state
            row.public_ip = status.public_ip
            row.private_ip = status.private_ip
            row.ports = status.ports
            row.info = {**(row.info or {}), **status.info, "provider_type": provider_type}
            verb = "found (made before a restart)" if adopted else "created"
            self._log(s, None, f"VM {vm.index} ({vm.node}) {verb}: {status.provider_id}", row)
            node = topo.node(vm.node)
            if not adopted and node is not None and node.kind == "vm":
                self._log(s, None, f"VM {vm.index}: cloud-init user-data delivered", row)
        return list(rows.values())

    def _wait_running(
        self,
        drv: Driver,
        infra: Infrastructure,
        topo: Topology,
        shared: dict[str, Any],
        job: Job,
    ) -> None:
        infra_id = infra.id
        record = self._recorder(infra_id)
        deadline = time.monotonic() + self.ready_timeout_s
        delay = 0.05
        while True:
            with self.sessions() as s:
                vms = s.scalars(
                    sa.select(VM).where(VM.infrastructure_id == infra_id, VM.state == PENDING)
                ).all()
            if not vms:
                return
            for vm in vms:
                if vm.provider_id is None:
                    continue
                st = drv.vm_status(vm.provider_id)
                if st is None:
                    raise CloudError(f"VM {vm.index} ({vm.provider_id}) disappeared from the cloud")
                if st.state == FAILED:
                    raise CloudError(
                        f"VM {vm.index} ({vm.provider_id}) failed on the cloud: "
                        f"{st.info.get('error', 'no reason given')}"
                    )
                node = topo.node(vm.node)
                if st.state == RUNNING and node is not None:
                    # recorded running only once the finishing step (public address) is done
                    req = VmRequest(infra_id, vm.index, vm.token, node, "", shared, record)
                    st = drv.finish_vm(req, st)
                if st.state != PENDING:
                    with self.sessions.begin() as s:
                        row = s.get(VM, vm.id)
                        row.state = st.state
                        row.public_ip = st.public_ip or row.public_ip
                        row.private_ip = st.private_ip or row.private_ip
                        row.ports = st.ports or row.ports
            if time.monotonic() > deadline:
                raise CloudError(f"VMs not running after {self.ready_timeout_s:.0f}s")
            self.renew(job)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _configure(
        self,
        infra_id: str,
        topo: Topology,
        updated: bool,
        job: Job,
        made: tuple[list[tuple[VM, Any, bool]], str] | None = None,
    ) -> None:
        with self.sessions.begin() as s:
            self.finish(job, session=s)
            known = getattr(job, "_infra", None)
            # the row this job created and nobody else has touched yet (optimistic locking
            # would refuse a stale copy): no need to read it again
            infra = (
                s.merge(known, load=False) if known is not None else s.get(Infrastructure, infra_id)
            )
            if made is not None:
                # a fresh infrastructure whose VMs all came up: they are all of its VMs
                vms = sorted(
                    self._apply_records(s, made[0], made[1], topo, fresh=known is not None),
                    key=lambda v: v.index,
                )
            else:
                vms = s.scalars(
                    sa.select(VM)
                    .where(VM.infrastructure_id == infra_id, VM.state != DELETED)
                    .order_by(VM.index)
                ).all()
            for vm in vms:
                if vm.state == RUNNING:
                    vm.state = CONFIGURED
                    self._log(s, infra, f"VM {vm.index}: contextualized", vm)
            views = [vm_view(v) for v in vms]
            result = outputs.compute(topo, views)
            # container nodes publish their endpoint even when the template names no output
            for node in topo.nodes:
                urls = [
                    v["ports"]["url"]
                    for v in views
                    if v["node"] == node.name and v["ports"].get("url")
                ]
                if urls and f"{node.name}_endpoint" not in result:
                    result[f"{node.name}_endpoint"] = urls[0] if len(urls) == 1 else urls
            infra.outputs = result
            infra.state = CONFIGURED
            self._log(s, infra, "Contextualization finished: infrastructure configured")
            kind = "im.infrastructure.updated" if updated else "im.infrastructure.configured"
            self.events.emit(
                s,
                kind,
                {
                    **self._event_base(infra),
                    "state": CONFIGURED,
                    "outputs": infra.outputs,
                    "vms": [self._vm_event(v) for v in views],
                },
                infra_id,
            )

    @staticmethod
    def _vm_event(v: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.get(k) for k in ("id", "state", "name", "node", "public_ip", "private_ip", "ports")
        }

    # -- failure and deletion ------------------------------------------------------------

    def _destroy_all(
        self,
        infra: Infrastructure,
        drv: Driver,
        only: set[int] | None = None,
        known: tuple[list[VM], list[CloudResource]] | None = None,
    ) -> list[int]:
        """Destroy VMs (all, or the indices in only) and, for all, the shared resources.

        Cloud calls first, then the caller records the result in one transaction
        (_mark_destroyed): destroying is idempotent, so a crash in between only repeats it.
        """
        if known is not None:
            vms, resources = known
        else:
            with self.sessions() as s:
                vms, resources = self._live_rows(s, infra.id)
        done = []
        for vm in vms:
            if only is not None and vm.index not in only:
                continue
            pid = vm.provider_id
            if pid is None:
                found = drv.find_vm(infra.id, vm.token)
                pid = found.provider_id if found else None
            if pid is not None:
                drv.destroy_vm(pid)
            done.append(vm.index)
        if only is None and resources:
            drv.release(infra.id, [(r.kind, r.name, r.provider_id) for r in resources])
        return done

    @staticmethod
    def _live_rows(s: Session, infra_id: str) -> tuple[list[VM], list[CloudResource]]:
        vms = s.scalars(
            sa.select(VM).where(VM.infrastructure_id == infra_id, VM.state != DELETED)
        ).all()
        resources = s.scalars(
            sa.select(CloudResource).where(
                CloudResource.infrastructure_id == infra_id, CloudResource.state != DELETED
            )
        ).all()
        return list(vms), list(resources)

    def submit_delete(self, session: Session, infra: Infrastructure, claim: bool = False) -> Job:
        """Mark an infrastructure deleting and queue (or, claim=True, lease) its delete job."""
        infra.state = DELETING
        job = self.submit_job(session, infra.id, "delete", wake=not claim, claim=claim)
        if claim:
            job._infra = infra
            job._known = self._live_rows(session, infra.id)
        return job

    def _mark_destroyed(
        self, s: Session, infra: Infrastructure, indices: list[int], resources: bool
    ) -> None:
        if indices:
            for row in s.scalars(
                sa.select(VM).where(VM.infrastructure_id == infra.id, VM.index.in_(indices))
            ):
                row.state = DELETED
                self._log(s, infra, f"VM {row.index} destroyed", row)
        if resources:
            s.execute(
                sa.update(CloudResource)
                .where(CloudResource.infrastructure_id == infra.id)
                .values(state=DELETED)
            )

    def _cleanup_failed(self, infra_id: str, error: str) -> None:
        with self.sessions() as s:
            infra = s.get(Infrastructure, infra_id)
        done: list[int] = []
        try:
            done = self._destroy_all(infra, self.driver(infra))
            complete = True
        except CloudError as exc:
            error = f"{error} (cleanup incomplete, the reconciler will retry: {exc})"
            complete = False
        self._fail(infra_id, error, done, complete)

    def _fail(
        self, infra_id: str, error: str, destroyed: list[int] | None = None, resources: bool = False
    ) -> None:
        with self.sessions.begin() as s:
            infra = s.get(Infrastructure, infra_id)
            if infra is None:
                return
            self._mark_destroyed(s, infra, destroyed or [], resources)
            infra.state = FAILED
            infra.error = error
            self._log(s, infra, f"Error: {error}")
            self.events.emit(
                s,
                "im.infrastructure.failed",
                {**self._event_base(infra), "state": FAILED, "error": error},
                infra_id,
            )

    def _job_delete(self, job: Job) -> None:
        infra = getattr(job, "_infra", None)
        if infra is not None:  # the API marked it deleting when it submitted the job
            self._finish_delete(job, infra)
            return
        with self.sessions.begin() as s:
            infra = s.get(Infrastructure, job.infrastructure_id)
            if infra is None:
                self.events.emit(
                    s,
                    "im.infrastructure.deleted",
                    {"infrastructure_id": job.infrastructure_id},
                    job.infrastructure_id,
                )
                return
            if infra.state == DELETED:
                return
            infra.state = DELETING
        self._finish_delete(job, infra)

    def _finish_delete(self, job: Job, infra: Infrastructure) -> None:
        done = self._destroy_all(infra, self.driver(infra), known=getattr(job, "_known", None))
        with self.sessions.begin() as s:
            known = getattr(job, "_infra", None)
            infra = (
                s.merge(known, load=False)
                if known is not None
                else s.get(Infrastructure, job.infrastructure_id)
            )
            known_rows = getattr(job, "_known", None)
            # skip the resources update when the API saw there were none
            has_resources = known_rows is None or bool(known_rows[1])
            self._mark_destroyed(s, infra, done, resources=has_resources)
            self.finish(job, session=s)
            infra.state = DELETED
            infra.credentials = None  # nothing left to act on: drop the secrets
            self._log(s, infra, "Infrastructure destroyed")
            self.events.emit(s, "im.infrastructure.deleted", self._event_base(infra), infra.id)

    def _job_remove_vms(self, job: Job) -> None:
        with self.sessions() as s:
            infra = s.get(Infrastructure, job.infrastructure_id)
        if infra is None or infra.state in (DELETED, DELETING):
            return
        done = self._destroy_all(
            infra, self.driver(infra), only=set(job.payload.get("indices", []))
        )
        with self.sessions.begin() as s:
            self._mark_destroyed(s, s.get(Infrastructure, infra.id), done, resources=False)
            self.finish(job, session=s)

    def _job_vm_start(self, job: Job) -> None:
        self._vm_job(job, "start")

    def _job_vm_stop(self, job: Job) -> None:
        self._vm_job(job, "stop")

    def _vm_job(self, job: Job, op: str) -> None:
        vm_id = str(job.payload.get("vm_id", ""))
        try:
            self.vm_operation(job.infrastructure_id, int(vm_id), op)
        except (CloudError, ValueError, AttributeError) as exc:
            with self.sessions.begin() as s:
                self.events.emit(
                    s,
                    "im.vm.state",
                    {
                        "infrastructure_id": job.infrastructure_id,
                        "vm_id": vm_id,
                        "state": "unknown",
                        "error": str(exc),
                    },
                    job.infrastructure_id,
                )

    def alter_vm(self, infra_id: str, index: int, change: NodeSpec) -> None:
        """Resize one VM to what `change` asks (unset fields keep their value)."""
        with self.sessions() as s:
            infra = s.get(Infrastructure, infra_id)
            vm = s.scalar(sa.select(VM).where(VM.infrastructure_id == infra_id, VM.index == index))
        topo = Topology.from_dict(infra.topology)
        node = topo.node(vm.node) or NodeSpec(name=vm.node)
        target = NodeSpec.from_dict(
            {
                **node.__dict__,
                **{
                    k: v
                    for k, v in change.__dict__.items()
                    if k in ("instance_type", "cpus", "memory_mb", "gpus") and v
                },
            }
        )
        if vm.provider_id is None:
            raise CloudError(f"VM {index} has not been created yet", bad_input=True)
        self.driver(infra).alter_vm(vm.provider_id, target)
        with self.sessions.begin() as s:
            row = s.get(VM, vm.id)
            row.info = {
                **(row.info or {}),
                "instance_type": target.instance_type,
                "cpus": target.cpus,
                "memory_mb": target.memory_mb,
                "gpus": target.gpus,
            }
            self._log(
                s,
                None,
                f"VM {index} resized to {target.instance_type or ''} "
                f"{target.cpus or ''} cpus {target.memory_mb or ''} MB",
                row,
            )

    def vm_operation(self, infra_id: str, index: int | None, op: str) -> None:
        """start/stop/reboot one VM (index) or all; synchronous, states recorded."""
        with self.sessions() as s:
            infra = s.get(Infrastructure, infra_id)
            q = sa.select(VM).where(VM.infrastructure_id == infra_id, VM.state != DELETED)
            if index is not None:
                q = q.where(VM.index == index)
            vms = s.scalars(q).all()
        drv = self.driver(infra)
        new_state = {"start": CONFIGURED, "stop": STOPPED, "reboot": CONFIGURED}[op]
        for vm in vms:
            if vm.provider_id is None:
                continue
            getattr(drv, f"{op}_vm")(vm.provider_id)
            with self.sessions.begin() as s:
                row = s.get(VM, vm.id)
                row.state = new_state
                inf = s.get(Infrastructure, infra_id)
                self._log(s, inf, f"VM {vm.index}: {op}", row)
                self.events.emit(
                    s,
                    "im.vm.state",
                    {**self._event_base(inf), "vm_id": str(vm.index), "state": new_state},
                    infra_id,
                )


class Worker:
    """Threads that take leased jobs; a background component of the service."""

    def __init__(self, engine: Engine, threads: int = 4, poll_s: float = 0.5) -> None:
        self.engine = engine
        self.threads = threads
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self.engine.local_workers += self.threads
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"im-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.engine.local_workers -= len(self._threads)
        for _ in self._threads:
            self.engine._handoffs.put(None)  # wakes one waiting worker: it sees the stop
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.engine.run_once():
                    continue
                # idle: until a job is handed over or queued, or poll_s passes
                job = self.engine.next_handoff(self.poll_s)
                if job is not None and not self._stop.is_set():
                    self.engine.run_handed_off(job)
            except Exception:  # the database may be briefly unreachable; keep going
                log.exception("worker loop error")
