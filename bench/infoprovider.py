"""Benchmark of the infoprovider registry: report ingestion and placement queries.

1,000 sites, each reporting one OpenStack service with 50 flavors and 200 images (plus 2
tenant quotas and a network). Ingestion is the full registry path of one report — token
verification (RS256, JWKS of a real loopback OP), schema validation, diff-upsert in one
transaction, the `infoprovider.site.changed` outbox row — against a real PostgreSQL
(`HDC_TEST_POSTGRES`, as in the tests) or SQLite (`--db sqlite`).

Anchors, measured in the same run on the same database:
- ingestion: a naive per-record upsert (ORM `merge` of every record, one query per vanished
  record check), what a straightforward CMDB loader does;
- query: the INDIGO orchestrator's CMDB access pattern — list a provider's services, then
  each service's flavors and images (one query each), and filter in the client.

Queries are timed on a quiet registry (`query_*`: the live state is cached until a report
is accepted) and interleaved with ingestion (`query_*_while_ingesting`: every query re-reads
the live state). A query is what the gRPC server spends on FindCandidates: the reply ready
for the wire (`placement.find_candidates_wire`, serialised bytes); `grpc_query_*` adds the
real gRPC server and a client that parses the reply, as the orchestrator does. Prints ONE
JSON line.

Ingestion is measured two ways: `ingest_reports_per_s_initial`/`_steady` apply reports one
by one in one thread, as one report consumer does, without the broker; the `_amqp_consumer`
figures are the service's own path (the broker, then all its `report_consumers`), for the
first reports of every site into an empty registry (`_initial_amqp_consumer`) and for
re-reports.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hdc.infoprovider.v1 import infoprovider_pb2 as pb  # noqa: E402
from hdc_common.db import create_engine, migrate  # noqa: E402
from hdc_infoprovider import models as m  # noqa: E402
from hdc_infoprovider import placement, query, synthetic  # noqa: E402
from hdc_infoprovider.agent_auth import AgentClient, AgentTokenVerifier, TrustedIssuer  # noqa: E402
from hdc_infoprovider.ingest import Ingestor, uid  # noqa: E402
from hdc_infoprovider.report import SiteReport, utcnow  # noqa: E402
from hdc_infoprovider.service import MIGRATIONS, ingest_sessions  # noqa: E402

from tests.fakes.oidc_provider import FakeOIDCProvider  # noqa: E402
from tests.real_components import (  # noqa: E402
    PG_DSN,
    RABBIT_HOST,
    create_databases,
    drop_databases,
    drop_vhost,
    make_vhost,
)

QUERIES = [
    # The orchestrator's common case: a VM of a size, an OS image, room in the tenant's quota.
    pb.Requirements(cpus=4, ram_mb=8192, tenant="vo.example.eu",
                    image=pb.ImageRequirement(os_distribution="ubuntu", os_version="22.04"),
                    max_flavors_per_candidate=3, max_images_per_candidate=3),
    # Training: GPUs of a model, a CUDA image.
    pb.Requirements(cpus=8, gpu=pb.GpuRequirement(count=2, vendor="nvidia", model="V100"),
                    image=pb.ImageRequirement(cuda=True, min_cuda_version="12.0"),
                    max_flavors_per_candidate=3, max_images_per_candidate=3),
    # HPC: Infiniband, big memory.
    pb.Requirements(cpus=16, ram_mb=65536, infiniband=True, tenant="vo.access.eu", instances=2,
                    max_flavors_per_candidate=3, max_images_per_candidate=3),
]  # fmt: skip


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Database:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"bench_ip_{uuid.uuid4().hex[:10]}"
        if kind == "postgres":
            create_databases(self.name)
            self.url = f"{PG_DSN}/{self.name}"
        else:
            self.path = Path(f"/tmp/{self.name}.db")
            self.url = f"sqlite:///{self.path}"
        self.engine = create_engine(self.url)
        migrate(self.engine, MIGRATIONS)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # What the service's report consumers apply reports with (service.ingest_sessions).
        self.ingest = ingest_sessions(self.engine)

    def drop(self) -> None:
        self.engine.dispose()
        self.ingest.kw["bind"].dispose()
        if self.kind == "postgres":
            drop_databases(self.name)
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def outbox_emit(session: Session, type: str, data: dict[str, Any], subject: str) -> None:
    """What the service's bus.emit does inside the ingest transaction: one outbox row."""
    from hdc_common.bus import outbox
    from hdc_common.bus.events import CloudEvent

    event = CloudEvent.create(type, data, source="/hdc/infoprovider", subject=subject)
    outbox.write(session, event, "hdc.events", type, None)


def outbox_emit_row(
    session: Session, type: str, data: dict[str, Any], subject: str
) -> dict[str, Any]:
    """What the service's bus.emit_row does: the outbox row, written by the ingest statement."""
    from hdc_common.bus import outbox
    from hdc_common.bus.events import CloudEvent

    event = CloudEvent.create(type, data, source="/hdc/infoprovider", subject=subject)
    return outbox.row(event, "hdc.events", type)


def ingest_all(db: Database, ingestor: Ingestor, envelopes: list[dict[str, Any]]) -> float:
    """One report per transaction, one after the other, as one report consumer applies them
    (without the broker: its deliveries and group commits are `amqp_ingest`)."""
    t0 = time.perf_counter()
    for env in envelopes:
        with db.ingest.begin() as s:
            res = ingestor.handle_envelope(s, env)
            if not res.accepted:
                raise SystemExit(f"bench report refused: {res.reason}")
    return len(envelopes) / (time.perf_counter() - t0)


def naive_ingest(
    db: Database, verifier: AgentTokenVerifier, envelopes: list[dict[str, Any]]
) -> float:
    """Anchor: the same checks, then one ORM merge per record and a query per kept record."""
    t0 = time.perf_counter()
    for env in envelopes:
        verifier.verify(env["access_token"])
        report = SiteReport.model_validate(env["report"])
        now = utcnow()
        with db.sessions.begin() as s:
            fresh = {"creation_time": report.creationTime, "validity_s": report.validity,
                     "valid_until": report.creationTime + timedelta(seconds=report.validity)}  # fmt: skip
            s.merge(m.Site(id=report.site.id, name=report.site.name, country=report.site.country,
                           last_report_at=now, health=[], support_emails=[], agent={}, **fresh))  # fmt: skip
            s.flush()
            for svc in report.services:
                sid = f"{report.site.id}.{svc.id}"
                parts = {f"{p}_{k}": v for p in ("flavors", "images", "networks", "quotas")
                         for k, v in fresh.items()}  # fmt: skip
                s.merge(m.Service(id=sid, uid=uid(sid), site_id=report.site.id, local_id=svc.id,
                                  type=svc.type, endpoint=svc.endpoint, component=svc.component,
                                  digest="", **fresh, **parts))  # fmt: skip
                s.flush()
                keep = set()
                for f in svc.flavors:
                    keep.add(("f", f.id))
                    s.merge(m.Flavor(service_id=sid, id=f.id, uid=uid(sid, "flavors", f.id), name=f.name,
                                     cpus=f.cpus, ram_mb=f.ram_mb, disk_gb=f.disk_gb, gpus=f.gpus,
                                     gpu_vendor=f.gpu_vendor, gpu_model=f.gpu_model, infiniband=f.infiniband,
                                     public=f.public, properties=f.properties, digest="", **fresh))  # fmt: skip
                for i in svc.images:
                    keep.add(("i", i.id))
                    s.merge(m.Image(service_id=sid, id=i.id, uid=uid(sid, "images", i.id), name=i.name,
                                    os_type=i.os_type, os_distribution=i.os_distribution,
                                    os_version=i.os_version, architecture=i.architecture, cuda=i.cuda,
                                    cuda_version=i.cuda_version, properties=i.properties, digest="", **fresh))  # fmt: skip
                for model, tag in ((m.Flavor, "f"), (m.Image, "i")):
                    for row in s.scalars(sa.select(model).where(model.service_id == sid)):
                        if (tag, row.id) not in keep:
                            s.delete(row)
    return len(envelopes) / (time.perf_counter() - t0)


def cmdb_style_query(db: Database, req: pb.Requirements) -> int:
    """Anchor: the orchestrator's CMDB pattern (providers -> services -> flavors, images)."""
    now = utcnow()
    found = 0
    with db.sessions() as s:
        for site_id in s.scalars(sa.select(m.Site.id)).all():
            for svc in s.scalars(sa.select(m.Service).where(m.Service.site_id == site_id)).all():
                flavors = s.scalars(sa.select(m.Flavor).where(m.Flavor.service_id == svc.id)).all()
                images = s.scalars(sa.select(m.Image).where(m.Image.service_id == svc.id)).all()
                ok_f = [f for f in flavors if f.cpus >= req.cpus and f.ram_mb >= req.ram_mb
                        and f.gpus >= req.gpu.count and (not req.infiniband or f.infiniband)
                        and query.to_utc(f.valid_until or svc.flavors_valid_until) > now]  # fmt: skip
                ok_i = [i for i in images if not req.image.os_distribution
                        or i.os_distribution == req.image.os_distribution]  # fmt: skip
                found += bool(ok_f and ok_i)
    return found


def amqp_ingest(db: Database, op: Any, envelopes: list[dict[str, Any]], sites: int) -> float:
    """The whole registry path over the real broker: the service's own bus consumer.

    Reports are queued first, then the registry's consumer is started and timed until it
    has applied them all (what a registry replica sustains from a backlog).
    """
    from hdc_common.bus import Bus
    from hdc_infoprovider.service import InfoProviderSettings, build

    vhost = make_vhost("bench")
    try:
        url = f"amqp://hdc:hdc@{RABBIT_HOST}:5672/{vhost}"
        settings = InfoProviderSettings(
            database_url=db.url,
            bus_url=url,
            trusted_issuers=[TrustedIssuer(issuer=op.issuer)],
            agent_clients=[AgentClient(site_id=f"site-{i:04d}", client_id=f"agent-{i}", issuer=op.issuer)
                           for i in range(sites)],
        )  # fmt: skip
        components = build(settings)
        # Every consumer of the report queue the service runs (`report_consumers`).
        buses = [c for c in components.background if isinstance(c, Bus)]
        with Bus(url, service="bench-agents") as agents:
            for env in envelopes:
                event = agents.new_event("infoprovider.site.report", env)
                agents.publish(event, exchange="hdc.commands", routing_key="infoprovider")
        before = _accepted(db)
        t0 = time.perf_counter()
        for bus in buses:
            bus.start()
        try:
            deadline = time.monotonic() + 600
            while _accepted(db) < before + len(envelopes) and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            done = _accepted(db) - before
        finally:
            for bus in buses:
                bus.stop()
    finally:
        drop_vhost(vhost)
    return done / elapsed


def _accepted(db: Database) -> int:
    with db.sessions() as s:
        return int(
            s.scalar(sa.select(sa.func.coalesce(sa.func.sum(m.Site.reports_accepted), 0))) or 0
        )


def grpc_queries(db: Database, catalog: placement.Catalog, n: int) -> list[float]:
    """FindCandidates through the service's real gRPC server, with the orchestrator's signed
    identity; the client parses each reply (as a caller does)."""
    import grpc
    from hdc.infoprovider.v1 import infoprovider_pb2_grpc as pb_grpc
    from hdc_common.grpc import create_server
    from hdc_common.identity import (
        GRPC_METADATA_KEY,
        Identity,
        InternalTokenSigner,
        InternalTokenVerifier,
        generate_keypair,
    )
    from hdc_infoprovider.grpc_api import servicer_entry

    private, public = generate_keypair()
    server = create_server(0, [servicer_entry(db.sessions, catalog, InternalTokenVerifier(public))])
    server.start()
    signer = InternalTokenSigner(private, ttl_s=3600)
    meta = [(GRPC_METADATA_KEY, signer.sign(Identity(subject="bench", issuer="https://op")))]
    out = []
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = pb_grpc.InfoProviderStub(channel)
            stub.FindCandidates(QUERIES[0], timeout=30, metadata=meta)  # connect
            for k in range(n):
                t0 = time.perf_counter()
                stub.FindCandidates(QUERIES[k % len(QUERIES)], timeout=30, metadata=meta)
                out.append(time.perf_counter() - t0)
    finally:
        server.stop(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--flavors", type=int, default=50)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--anchor-reports", type=int, default=50)
    ap.add_argument("--anchor-queries", type=int, default=5)
    ap.add_argument("--amqp-reports", type=int, default=300, help="0 = skip the broker run")
    args = ap.parse_args()

    with FakeOIDCProvider() as op:
        clients = [AgentClient(site_id=f"site-{i:04d}", client_id=f"agent-{i}", issuer=op.issuer)
                   for i in range(args.sites)]  # fmt: skip
        verifier = AgentTokenVerifier([TrustedIssuer(issuer=op.issuer)], clients)
        ingestor = Ingestor(verifier, emit=outbox_emit, emit_row=outbox_emit_row)
        tokens = [op.issue_token(f"agent-{i}") for i in range(args.sites)]

        def envelopes(created_offset_s: int, seed: int) -> list[dict[str, Any]]:
            created = utcnow() - timedelta(seconds=created_offset_s)
            made = [
                {"access_token": tokens[i],
                 "report": synthetic.site_report(i, created, flavors=args.flavors, images=args.images, seed=seed)}
                for i in range(args.sites)
            ]  # fmt: skip
            # A registry process holds no reports; this one holds thousands (a quarter of a
            # million dicts each batch), which the garbage collector would otherwise walk
            # again and again while the registry code runs here. Frozen, it leaves them be.
            gc.freeze()
            return made

        db = Database(args.db)
        anchor_db = Database(args.db)
        try:
            first = envelopes(120, seed=1)
            initial_rps = ingest_all(db, ingestor, first)
            # Steady state: every site reports again; quota usage changes on every site.
            again = envelopes(60, seed=2)
            steady_rps = ingest_all(db, ingestor, again)
            with db.sessions() as s:
                rows = {
                    t.__tablename__: s.scalar(sa.select(sa.func.count()).select_from(t))
                    for t in (m.Site, m.Flavor, m.Image)
                }

            amqp_rps = amqp_initial_rps = None
            if args.amqp_reports:
                third = envelopes(30, seed=3)[: args.amqp_reports]
                amqp_rps = amqp_ingest(db, op, third, args.sites)
                # The initial load as the service takes it: the first report of every site,
                # into an empty registry, through the broker and all its report consumers.
                fresh = Database(args.db)
                try:
                    amqp_initial_rps = amqp_ingest(fresh, op, first, args.sites)
                finally:
                    fresh.drop()

            naive_first = naive_ingest(anchor_db, verifier, first[: args.anchor_reports])
            naive_again = naive_ingest(anchor_db, verifier, again[: args.anchor_reports])
            # The registry process holds no reports; this one must not either, or the
            # garbage collector walks millions of report dicts during the timed queries.
            del first, again
            third = None
            gc.collect()

            catalog = placement.Catalog()
            t0 = time.perf_counter()
            with db.sessions() as s:  # a replica's first query loads every site's catalog
                placement.find_candidates_wire(s, QUERIES[0], catalog)
            cold_ms = (time.perf_counter() - t0) * 1000
            lat: list[float] = []
            cpu: list[float] = []
            by_type: list[list[float]] = [[] for _ in QUERIES]
            cpu_by_type: list[list[float]] = [[] for _ in QUERIES]
            counts = []
            for n in range(args.queries):
                req = QUERIES[n % len(QUERIES)]
                t0, c0 = time.perf_counter(), time.process_time()
                with db.sessions() as s:
                    wire = placement.find_candidates_wire(s, req, catalog)
                lat.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                by_type[n % len(QUERIES)].append(lat[-1])
                cpu_by_type[n % len(QUERIES)].append(cpu[-1])
                if n < len(QUERIES):
                    counts.append(len(pb.Candidates.FromString(wire).candidates))
            grpc_lat = grpc_queries(db, catalog, max(30, args.queries // 5))
            # The same queries while reports keep arriving: every query then sees a new
            # state and re-reads the live rows (freshness, health) of every service.
            busy: list[float] = []
            fourth = envelopes(10, seed=4)[: max(1, args.queries // 3)]
            for n in range(min(args.queries // 3, len(fourth))):
                with db.sessions.begin() as s:
                    ingestor.handle_envelope(s, fourth[n])
                req = QUERIES[n % len(QUERIES)]
                t0 = time.perf_counter()
                with db.sessions() as s:
                    placement.find_candidates_wire(s, req, catalog)
                busy.append(time.perf_counter() - t0)
            anchor_lat = []
            for n in range(args.anchor_queries):
                t0 = time.perf_counter()
                cmdb_style_query(db, QUERIES[n % len(QUERIES)])
                anchor_lat.append(time.perf_counter() - t0)
        finally:
            db.drop()
            anchor_db.drop()

    p99 = pct(lat, 99) * 1000
    anchor_p99 = pct(anchor_lat, 99) * 1000
    print(
        json.dumps(
            {
                "bench": "infoprovider",
                "db": args.db,
                "sites": args.sites,
                "flavors_per_site": args.flavors,
                "images_per_site": args.images,
                "rows": rows,
                "ingest_reports_per_s_initial": round(initial_rps, 1),
                "ingest_reports_per_s_steady": round(steady_rps, 1),
                "ingest_reports_per_s_amqp_consumer": round(amqp_rps, 1) if amqp_rps else None,
                # First reports of all sites into an empty registry, through the broker and
                # the service's `report_consumers` consumers (the _initial figure above is
                # one thread applying them one by one, without the broker).
                "ingest_reports_per_s_initial_amqp_consumer": (
                    round(amqp_initial_rps, 1) if amqp_initial_rps else None
                ),
                "anchor_naive_upsert_reports_per_s_initial": round(naive_first, 1),
                "anchor_naive_upsert_reports_per_s_steady": round(naive_again, 1),
                "ingest_ratio_vs_naive_steady": round(steady_rps / naive_again, 2),
                "query_cold_catalog_load_ms": round(cold_ms, 1),
                "query_p50_ms": round(statistics.median(lat) * 1000, 2),
                "query_p99_ms": round(p99, 2),
                # CPU seconds this process spent per query: what the code costs, apart from
                # waiting for a CPU on a shared machine (see load_average_1m).
                "query_cpu_p50_ms": round(statistics.median(cpu) * 1000, 2),
                "query_p50_ms_while_ingesting": round(statistics.median(busy) * 1000, 2),
                "query_p99_ms_while_ingesting": round(pct(busy, 99) * 1000, 2),
                "query_p99_ms_by_type": [round(pct(v, 99) * 1000, 2) for v in by_type],
                "query_cpu_p50_ms_by_type": [
                    round(statistics.median(v) * 1000, 2) for v in cpu_by_type
                ],
                "query_candidates_per_type": [counts[i] for i in range(len(QUERIES))],
                "grpc_query_p50_ms": round(statistics.median(grpc_lat) * 1000, 2),
                "grpc_query_p99_ms": round(pct(grpc_lat, 99) * 1000, 2),
                "anchor_cmdb_style_query_p99_ms": round(anchor_p99, 1),
                "query_ratio_vs_cmdb_style_p99": round(anchor_p99 / p99, 1),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "cpu_count": os.cpu_count(),
                # The goal, for the registry as it runs: reports through the broker and all
                # its report consumers (first reports of every site and re-reports), and the
                # query p99. Without --amqp-reports it cannot be told (false).
                "goal_met": bool(amqp_rps and amqp_rps >= 200)
                and bool(amqp_initial_rps and amqp_initial_rps >= 200)
                and p99 < 20,
                # The same rates from one thread applying reports one by one (one consumer's
                # share, no broker): not the registry's rate, shown for comparison.
                "goal_met_one_thread_loop": steady_rps >= 200 and initial_rps >= 200 and p99 < 20,
            }
        )
    )


if __name__ == "__main__":
    main()
