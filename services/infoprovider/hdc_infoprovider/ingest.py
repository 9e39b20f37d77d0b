"""Ingestion of a site report: authenticate, validate, then make the registry equal to it.

One report replaces everything its site published before, except what the report itself says
it could not read: services of an unhealthy collector, and a service's `failed_parts`, keep
their previous rows (and those rows' old validity, so they still expire on time).

A refused report is recorded with its reason in `ip_rejected_reports` in the caller's
transaction and the call returns normally: refusing is a decision, not an error, so the bus
must not retry it. Only a transient failure (the IdP's JWKS unreachable) raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import pydantic_core
import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from hdc_infoprovider import models as m
from hdc_infoprovider.agent_auth import AgentIdentity, AgentTokenVerifier, AuthError
from hdc_infoprovider.report import Flavor, Image, Network, Quota, Service, SiteReport, utcnow
from hdc_infoprovider.writes import ReportWrites

log = logging.getLogger(__name__)

EVENT_SITE_CHANGED = "infoprovider.site.changed"
UID_NAMESPACE = uuid.UUID("6f1f3c3e-3c55-4c1e-9a3b-6d1b7f0e7a21")
EXCERPT_CHARS = 8192
CLOCK_SKEW = timedelta(minutes=5)
PART_NAMES = ("flavors", "images", "networks", "quotas")

Emit = Callable[[Session, str, dict[str, Any], str], None]
# Like Emit, but returns the outbox row (`hdc_common.bus.outbox.row`) for the caller to
# write: `Bus.emit_row`. Ingestion writes it in the statement that applies the report.
EmitRow = Callable[[Session, str, dict[str, Any], str], dict[str, Any]]


@dataclass
class IngestResult:
    accepted: bool
    site_id: str = ""
    reason: str = ""
    kind: str = ""
    status: str = ""
    changes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(any(v.values()) for v in self.changes.values())


class Refused(Exception):
    """kind: invalid | too_large | unauthenticated | forbidden | conflict (maps to 400..409)."""

    def __init__(
        self,
        reason: str,
        claimed_site: str = "",
        who: AgentIdentity | None = None,
        kind: str = "invalid",
    ):
        super().__init__(reason)
        self.reason = reason
        self.claimed_site = claimed_site
        self.who = who
        self.kind = kind


_UID_PREFIX = UID_NAMESPACE.bytes


def uid(*parts: str) -> str:
    """uuid5(UID_NAMESPACE, parts joined by \x1f).hex, without building UUID objects (a
    first report computes 250 of them)."""
    return _uuid5_hex(hashlib.sha1(_UID_PREFIX + "\x1f".join(parts).encode()))


def _uid_prefix(*parts: str) -> Any:
    """The hash of uid(*parts, ...) up to the last part: a service's records share it."""
    return hashlib.sha1(_UID_PREFIX + "".join(f"{p}\x1f" for p in parts).encode())


def _uuid5_hex(h: Any) -> str:
    b = bytearray(h.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def _digest(values: tuple[Any, ...]) -> str:
    return hashlib.blake2b(repr(values).encode(), digest_size=16).hexdigest()


def to_utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything the registry stores is UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class Ingestor:
    def __init__(
        self,
        verifier: AgentTokenVerifier,
        emit: Emit | None = None,
        max_report_bytes: int = 4 * 1024 * 1024,
        emit_row: EmitRow | None = None,
    ) -> None:
        self.verifier = verifier
        self.emit = emit
        # Preferred to `emit` when given: the event then costs no statement of its own.
        self.emit_row = emit_row
        self.max_report_bytes = max_report_bytes

    # ------------------------------------------------------------------ entry points

    def handle_envelope(
        self,
        session: Session,
        envelope: Any,
        *,
        event_id: str = "",
        transport: str = "amqp",
        raw_size: int | None = None,
    ) -> IngestResult:
        """Envelope = CloudEvent data: {"access_token": <JWT>, "report": <site report>}."""
        size = raw_size if raw_size is not None else _json_size(envelope)
        try:
            if size > self.max_report_bytes:
                raise Refused(
                    f"report of {size} bytes exceeds the limit of {self.max_report_bytes} bytes",
                    _claimed(envelope),
                    kind="too_large",
                )
            if not isinstance(envelope, dict):
                raise Refused(
                    "report envelope must be a JSON object with access_token and report, "
                    f"got {type(envelope).__name__}"
                )
            extra = set(envelope) - {"access_token", "report"}
            if extra:
                raise Refused(
                    f"unknown envelope fields: {', '.join(sorted(map(str, extra)))}",
                    _claimed(envelope),
                )
            try:
                who = self.verifier.verify(envelope.get("access_token"))
            except AuthError as exc:
                raise Refused(str(exc), _claimed(envelope), kind="unauthenticated") from None
            raw_report = envelope.get("report")
            if not isinstance(raw_report, dict):
                raise Refused("envelope has no report object", who=who)
            try:
                report = SiteReport.model_validate(raw_report)
            except ValidationError as exc:
                raise Refused(
                    "report does not match the site-report schema: " + _errors(exc),
                    _claimed(envelope),
                    who,
                ) from None
            return self.apply(session, report, who)
        except Refused as exc:
            self._record_refusal(session, exc, envelope, event_id, transport, size)
            log.warning(
                "site report refused",
                extra={"reason": exc.reason, "claimed_site": exc.claimed_site, "event": event_id},
            )
            return IngestResult(False, exc.claimed_site, exc.reason, exc.kind)

    def apply(self, session: Session, report: SiteReport, who: AgentIdentity) -> IngestResult:
        """Make the registry equal to an authenticated, schema-valid report."""
        site_id = report.site.id
        if site_id != who.site_id:
            raise Refused(
                f"client {who.client_id!r} speaks for site {who.site_id!r} but the report "
                f"claims site {site_id!r}",
                site_id,
                who,
                "forbidden",
            )
        for svc in report.services:
            if svc.site_id is not None and svc.site_id != who.site_id:
                raise Refused(
                    f"service {svc.id!r} claims site {svc.site_id!r}; client "
                    f"{who.client_id!r} may only write records of site {who.site_id!r}",
                    site_id,
                    who,
                    "forbidden",
                )
        now = utcnow()
        try:
            _check_times(report, now)
            _check_unique(report)
        except Refused as exc:
            exc.who = who
            raise

        site, existing = _lock_site(session, site_id)
        if site is not None and to_utc(report.creationTime) <= to_utc(site.creation_time):
            raise Refused(
                f"report created at {report.creationTime.isoformat()} is not newer than the one "
                f"held (created at {site.creation_time.isoformat()})",
                site_id,
                who,
                "conflict",
            )
        previous_status = _effective_status(site, now) if site is not None else "new"
        status = _report_status(report)
        valid_until = report.creationTime + timedelta(seconds=report.validity)
        values = {
            "name": report.site.name,
            "country": report.site.country,
            "gocdb_id": report.site.gocdb_id,
            "homepage": report.site.homepage,
            "support_emails": list(report.site.support_emails),
            "status": status,
            "health": [h.model_dump() for h in report.health],
            "creation_time": report.creationTime,
            "validity_s": report.validity,
            "valid_until": valid_until,
            "last_report_at": now,
            "client_id": who.client_id,
            "agent": report.agent.model_dump(),
        }
        # Everything to write is decided first, then sent at once (one statement on
        # PostgreSQL): see writes.py.
        writes = ReportWrites(site_id)
        changes = _sync_services(session, site_id, report, existing, writes)
        writes.catalog_moved = any(
            any(changes[k].values()) for k in ("services", "flavors", "images", "networks")
        )
        if site is None:
            writes.site_insert = {
                "id": site_id,
                "reports_accepted": 1,
                "catalog_version": int(writes.catalog_moved),
                **values,
            }
        else:
            writes.site_update = {"id": site_id, **values}
        result = IngestResult(True, site_id, status=status, changes=changes)
        event = None
        if result.changed or previous_status != status:
            event = {
                "site_id": site_id,
                "status": status,
                "previous_status": previous_status,
                "valid_until": valid_until.isoformat(),
                "changes": changes,
            }
        if event is not None and self.emit_row is not None:
            # Everything the event says is known before the writes: it goes with them.
            writes.outbox_rows.append(self.emit_row(session, EVENT_SITE_CHANGED, event, site_id))
            event = None
        writes.flush(session)
        if event is not None and self.emit is not None:
            self.emit(session, EVENT_SITE_CHANGED, event, site_id)
        return result

    # ------------------------------------------------------------------ refusals

    def _record_refusal(
        self,
        session: Session,
        exc: Refused,
        envelope: Any,
        event_id: str,
        transport: str,
        size: int,
    ) -> None:
        session.add(
            m.RejectedReport(
                received_at=utcnow(),
                event_id=str(event_id)[:255],
                transport=transport,
                claimed_site=exc.claimed_site[:255],
                authenticated_site=exc.who.site_id if exc.who else "",
                client_id=exc.who.client_id if exc.who else "",
                issuer=exc.who.issuer if exc.who else "",
                reason=exc.reason[:4000],
                size_bytes=size,
                excerpt=_excerpt(envelope),
            )
        )


# ---------------------------------------------------------------------- statements
# Built once: ingestion runs hundreds of times a second and SQLAlchemy then reuses the
# compiled SQL without rebuilding cache keys.

_SITES = m.Site.__table__
_SERVICES = m.Service.__table__
# The site (locked on PostgreSQL) and what it holds of each of its services, in one round
# trip: one row per service, or one row without a service for a site that has none.
_SITE_LOCK = (
    sa.select(
        _SITES.c.creation_time,
        _SITES.c.valid_until,
        _SITES.c.status,
        _SERVICES.c.id.label("service_id"),
        _SERVICES.c.digest,
        _SERVICES.c.component,
        _SERVICES.c.part_digests,
    )
    .select_from(_SITES.outerjoin(_SERVICES, _SERVICES.c.site_id == _SITES.c.id))
    .where(_SITES.c.id == sa.bindparam("site_id"))
)
# PostgreSQL: the same as driver SQL. Ingestion's few statements skip SQLAlchemy's
# statement building and compiling there (run for every report, they cost more CPU than
# the statements themselves); psycopg prepares them on the server after a few uses.
_SITE_LOCK_PG = (
    "SELECT s.creation_time, s.valid_until, s.status, v.id AS service_id, v.digest, "
    "v.component, v.part_digests "
    "FROM ip_sites AS s LEFT OUTER JOIN ip_services AS v ON v.site_id = s.id "
    "WHERE s.id = %s FOR UPDATE OF s"
)
_HELD_PART = {
    part: sa.select(sa.literal(part).label("part"), model.service_id, model.id, model.digest).where(
        model.service_id.in_(sa.bindparam(f"{part}_sids", expanding=True))
    )
    for part, model in m.CHILD_MODELS.items()
}
_HELD: dict[tuple[str, ...], Any] = {}


def _held_statement(parts: tuple[str, ...]) -> Any:
    """Digests held for the parts that changed (one round trip, whatever their number)."""
    stmt = _HELD.get(parts)
    if stmt is None:
        selects = [_HELD_PART[p] for p in parts]
        stmt = _HELD[parts] = selects[0] if len(selects) == 1 else sa.union_all(*selects)
    return stmt


def _held_pg(parts: tuple[str, ...]) -> str:
    return " UNION ALL ".join(
        f"SELECT '{p}' AS part, service_id, id, digest FROM {m.CHILD_MODELS[p].__tablename__} "
        f"WHERE service_id = ANY(%({p}_sids)s)"
        for p in parts
    )


_HELD_PG = {
    parts: _held_pg(parts)
    for parts in (
        tuple(p for i, p in enumerate(PART_NAMES) if mask >> i & 1)
        for mask in range(1, 1 << len(PART_NAMES))
    )
}


# ---------------------------------------------------------------------- checks


def _json_size(value: Any) -> int:
    """Bytes of the value as compact UTF-8 JSON (serialised in Rust: a third of the time)."""
    try:
        return len(pydantic_core.to_json(value, fallback=str))
    except (TypeError, ValueError, pydantic_core.PydanticSerializationError):
        pass
    try:  # what the Rust serialiser refuses (e.g. lone surrogates) the json module measures
        return len(json.dumps(value, separators=(",", ":"), default=str).encode())
    except (TypeError, ValueError):
        return 0


def _claimed(envelope: Any) -> str:
    if isinstance(envelope, dict):
        report = envelope.get("report")
        if isinstance(report, dict) and isinstance(report.get("site"), dict):
            return str(report["site"].get("id", ""))[:255]
    return ""


def _excerpt(envelope: Any) -> str:
    """What operators see of a refused report: never the token."""
    if isinstance(envelope, dict):
        shown = {k: v for k, v in envelope.items() if k != "access_token"}
        if "access_token" in envelope:
            shown["access_token"] = "(removed)"
        text = json.dumps(shown, default=str)
    else:
        text = json.dumps(envelope, default=str) if _json_size(envelope) else repr(envelope)
    return text[:EXCERPT_CHARS]


def _errors(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(report)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _check_times(report: SiteReport, now: datetime) -> None:
    if report.creationTime > now + CLOCK_SKEW:
        raise Refused(
            f"report creationTime {report.creationTime.isoformat()} is in the future",
            report.site.id,
        )
    if report.creationTime + timedelta(seconds=report.validity) < now:
        raise Refused(
            f"report expired before it arrived (created {report.creationTime.isoformat()}, "
            f"validity {report.validity} s)",
            report.site.id,
        )
    for svc in report.services:
        for rec in [svc, *svc.flavors, *svc.images, *svc.networks, *svc.quotas]:
            if rec.creationTime is not None and rec.creationTime > now + CLOCK_SKEW:
                raise Refused(
                    f"service {svc.id!r}: a record's creationTime "
                    f"{rec.creationTime.isoformat()} is in the future",
                    report.site.id,
                )


def _check_unique(report: SiteReport) -> None:
    seen: set[str] = set()
    for svc in report.services:
        if svc.id in seen:
            raise Refused(f"service id {svc.id!r} appears twice", report.site.id)
        seen.add(svc.id)
        for part in ("flavors", "images", "networks", "quotas"):
            ids = [r.tenant if part == "quotas" else r.id for r in getattr(svc, part)]
            if len(ids) != len(set(ids)):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise Refused(
                    f"service {svc.id!r}: {part} id {dup!r} appears twice", report.site.id
                )


def _report_status(report: SiteReport) -> str:
    if report.unhealthy_components() or any(
        not s.healthy or s.failed_parts for s in report.services
    ):
        return "degraded"
    return "up"


def _effective_status(site: m.Site, now: datetime) -> str:
    return "down" if to_utc(site.valid_until) < now else site.status


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _lock_site(session: Session, site_id: str) -> tuple[Any, dict[str, Any]]:
    """The site's row (None if new) and its services' rows by id."""
    # PostgreSQL: replicas handling two reports of one site serialise here.
    # SQLite: writers are already serialised by BEGIN IMMEDIATE.
    if _is_pg(session):
        rows = session.connection().exec_driver_sql(_SITE_LOCK_PG, (site_id,)).all()
    else:
        rows = session.execute(_SITE_LOCK, {"site_id": site_id}).all()
    if not rows:
        return None, {}
    return rows[0], {r.service_id: r for r in rows if r.service_id is not None}


# ---------------------------------------------------------------------- sync


def _fresh(rec: Any, default_ct: datetime, default_validity: int) -> tuple[datetime, int]:
    ct = rec.creationTime or default_ct
    validity = rec.validity or default_validity
    return ct, validity


def _service_row(
    site_id: str, svc: Service, ct: datetime, validity: int, new: bool
) -> dict[str, Any]:
    sid = f"{site_id}.{svc.id}"
    content = {
        "site_id": site_id,
        "local_id": svc.id,
        "type": svc.type,
        "endpoint": svc.endpoint,
        "region": svc.region,
        "api_version": svc.api_version,
        "component": svc.component,
        "healthy": svc.healthy,
        "failed_parts": sorted(svc.failed_parts),
        "public_ip_assignable": svc.public_ip_assignable,
        "identity_providers": [i.model_dump() for i in svc.identity_providers],
        "cost": svc.cost.model_dump() if svc.cost else None,
        "properties": dict(sorted(svc.properties.items())),
    }
    row = {"id": sid, "uid": uid(sid), **content}
    row["digest"] = _digest(tuple(content.values()))
    row["part_digests"] = _part_digests(svc)
    valid_until = ct + timedelta(seconds=validity)
    row.update(creation_time=ct, validity_s=validity, valid_until=valid_until)
    for part in PART_NAMES:
        # A part the collector could not read keeps the freshness of its last good reading.
        if part not in svc.failed_parts or new:
            row[f"{part}_creation_time"] = ct
            row[f"{part}_validity_s"] = validity
            row[f"{part}_valid_until"] = valid_until
    return row


# A record's content: its column values in column order. They are read in one call
# (attrgetter) and hashed as they come, because a first report holds hundreds of records.
# The digest is blake2b(repr(content values + (own creation time, own validity))): keep it
# so, or every stored digest stops matching (and every record is rewritten once).
_FLAVOR_COLUMNS = (
    "name", "cpus", "ram_mb", "disk_gb", "gpus", "gpu_vendor", "gpu_model", "infiniband",
    "public", "properties",
)  # fmt: skip
_IMAGE_COLUMNS = (
    "name", "os_type", "os_distribution", "os_version", "architecture", "cuda",
    "cuda_version", "cudnn_version", "gpu_driver", "docker_image", "user_name",
    "description", "properties",
)  # fmt: skip
_NETWORK_COLUMNS = ("name", "public", "shared", "cidr")
_QUOTA_COLUMNS = ("project_id", "project_name", "limits", "usage")


def _with_sorted_properties(getter: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], Any]:
    """Content ending with `properties`, stored (and hashed) with its keys sorted."""

    def content(rec: Any) -> tuple[Any, ...]:
        values = getter(rec)
        props = values[-1]
        if len(props) > 1:
            return (*values[:-1], dict(sorted(props.items())))
        return values

    return content


def _quota_values(q: Any) -> tuple[Any, ...]:
    return (
        q.project_id,
        q.project_name,
        q.limits.model_dump(exclude_none=True),
        q.usage.model_dump(exclude_none=True),
    )


_PART_JSON = {
    "flavors": TypeAdapter(list[Flavor]),
    "images": TypeAdapter(list[Image]),
    "networks": TypeAdapter(list[Network]),
    "quotas": TypeAdapter(list[Quota]),
}


def _part_digests(svc: Service) -> dict[str, str]:
    """Hash of each part as reported (serialised in Rust: cheap even for 200 images)."""
    return {
        part: hashlib.blake2b(
            _PART_JSON[part].dump_json(getattr(svc, part)), digest_size=16
        ).hexdigest()
        for part in PART_NAMES
        if part not in svc.failed_parts
    }


@dataclass(frozen=True)
class _PartSpec:
    key: Callable[[Any], str]  # the record's id within its service
    content: Callable[[Any], tuple[Any, ...]]  # values of `columns`, in that order
    columns: tuple[str, ...]
    # Row keys, in the order the row tuples are built (see _sync_services).
    insert_keys: tuple[str, ...] = ()
    update_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        own = ("creation_time", "validity_s", "valid_until", "digest")
        object.__setattr__(self, "insert_keys", ("service_id", "id", "uid", *self.columns, *own))
        object.__setattr__(self, "update_keys", ("service_id", "id", *self.columns, *own))


PARTS: dict[str, _PartSpec] = {
    "flavors": _PartSpec(
        attrgetter("id"),
        _with_sorted_properties(attrgetter(*_FLAVOR_COLUMNS)),
        _FLAVOR_COLUMNS,
    ),
    "images": _PartSpec(
        attrgetter("id"), _with_sorted_properties(attrgetter(*_IMAGE_COLUMNS)), _IMAGE_COLUMNS
    ),
    "networks": _PartSpec(attrgetter("id"), attrgetter(*_NETWORK_COLUMNS), _NETWORK_COLUMNS),
    "quotas": _PartSpec(attrgetter("tenant"), _quota_values, _QUOTA_COLUMNS),
}
_NO_OWN_FRESHNESS = (None, None, None)


def _empty_changes() -> dict[str, dict[str, int]]:
    return {
        k: {"added": 0, "updated": 0, "removed": 0}
        for k in ("services", "flavors", "images", "networks", "quotas")
    }


def _sync_services(
    session: Session,
    site_id: str,
    report: SiteReport,
    existing: dict[str, Any],
    writes: ReportWrites,
) -> dict[str, dict[str, int]]:
    changes = _empty_changes()
    unhealthy = report.unhealthy_components()
    incoming: dict[str, tuple[Service, dict[str, Any]]] = {}
    for svc in report.services:
        ct, validity = _fresh(svc, report.creationTime, report.validity)
        sid = f"{site_id}.{svc.id}"
        row = _service_row(site_id, svc, ct, validity, new=sid not in existing)
        incoming[sid] = (svc, row)

    # Vanished services go, unless their collector failed this time (then they are kept
    # and expire on their own validity).
    gone = [
        sid for sid, r in existing.items() if sid not in incoming and r.component not in unhealthy
    ]
    writes.services_deleted = gone
    changes["services"]["removed"] = len(gone)
    # Kept from before, but their collector failed: not fit for placement until it recovers.
    writes.services_unhealthy = [
        sid for sid, r in existing.items() if sid not in incoming and r.component in unhealthy
    ]

    for sid, (_, row) in incoming.items():
        if sid in existing:
            # A part not read this time keeps the digest of its rows, which stay.
            row["part_digests"] = {**(existing[sid].part_digests or {}), **row["part_digests"]}
    writes.services_inserted = [row for sid, (_, row) in incoming.items() if sid not in existing]
    changes["services"]["added"] = len(writes.services_inserted)
    for sid, (_, row) in incoming.items():
        if sid in existing:
            writes.services_updated.append(row)
            if existing[sid].digest != row["digest"]:
                changes["services"]["updated"] += 1

    # What the registry holds of every part of these services, in one round trip.
    def unchanged(sid: str, part: str) -> bool:
        old = existing[sid].part_digests if sid in existing else None
        return bool(old) and old.get(part) == incoming[sid][1]["part_digests"].get(part)

    # Only the parts that changed are diffed: a report whose quotas moved reads the quota
    # digests, not those of 250 unchanged flavors and images.
    held: dict[tuple[str, str], dict[str, str]] = {}
    to_diff: dict[str, list[str]] = {}
    for sid, (svc, _) in incoming.items():
        if sid in existing:
            for p in PART_NAMES:
                if p not in svc.failed_parts and not unchanged(sid, p):
                    to_diff.setdefault(p, []).append(sid)
    if to_diff:
        parts = tuple(p for p in PART_NAMES if p in to_diff)
        params = {f"{p}_sids": to_diff[p] for p in parts}
        if _is_pg(session):
            held_rows = session.connection().exec_driver_sql(_HELD_PG[parts], params)
        else:
            held_rows = session.execute(_held_statement(parts), params)
        for r in held_rows:
            held.setdefault((r.part, r.service_id), {})[r.id] = r.digest

    for part, spec in PARTS.items():
        inserts = writes.children[part]["insert"]
        updates = writes.children[part]["update"]
        deletes = writes.children[part]["delete"]
        key_of, content_of = spec.key, spec.content
        insert_keys, update_keys = spec.insert_keys, spec.update_keys
        for sid, (svc, srow) in incoming.items():
            if part in svc.failed_parts or unchanged(sid, part):
                continue
            have = held.get((part, sid), {})
            default_ct, default_validity = srow["creation_time"], srow["validity_s"]
            uid_prefix = _uid_prefix(sid, part)
            seen: set[str] = set()
            for rec in getattr(svc, part):
                rid = key_of(rec)
                seen.add(rid)
                content = content_of(rec)
                ct = rec.creationTime or default_ct
                validity = rec.validity or default_validity
                if ct == default_ct and validity == default_validity:
                    own = _NO_OWN_FRESHNESS
                else:  # the site dated this record itself (e.g. GLUE objects)
                    own = (ct, validity, ct + timedelta(seconds=validity))
                digest = _digest((*content, own[0], own[1]))
                old = have.get(rid)
                if old is None:
                    h = uid_prefix.copy()
                    h.update(rid.encode())
                    row = (sid, rid, _uuid5_hex(h), *content, *own, digest)
                    inserts.append(dict(zip(insert_keys, row, strict=True)))
                elif old != digest:
                    row = (sid, rid, *content, *own, digest)
                    updates.append(dict(zip(update_keys, row, strict=True)))
            deletes += ({"service_id": sid, "id": rid} for rid in have if rid not in seen)
        changes[part]["removed"] += len(deletes)
        changes[part]["updated"] += len(updates)
        changes[part]["added"] += len(inserts)
    return changes
