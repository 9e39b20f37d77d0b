"""The writes that make the registry equal to one report, sent in as few round trips as the
database allows.

Ingestion first reads (the site, locked, with its services; the digests of the parts that
changed), then decides every write, then sends them:

- PostgreSQL: ONE statement. Each write is a data-modifying CTE of it whose rows travel as
  a JSON array the server expands against the table's row type (`json_populate_recordset`),
  so a first report's 250 records, or a quota change, cost one round trip. The writes of one
  report never touch the same row twice (inserted, updated and deleted records are disjoint
  sets), which is what PostgreSQL requires of CTEs; foreign keys are checked at the end of
  the statement, so a new site's services and records go in with it.
- SQLite (in-process, no round trips): the prebuilt statements, with `executemany`.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
import sqlalchemy as sa
from hdc_common.bus.tables import outbox
from sqlalchemy.orm import Session

from hdc_infoprovider import models as m

_SITES = m.Site.__table__
_SERVICES = m.Service.__table__
PARTS = ("flavors", "images", "networks", "quotas")
# Service columns a report leaves alone when the part was not read (failed_parts).
PART_FRESHNESS = tuple(
    f"{part}_{k}" for part in PARTS for k in ("creation_time", "validity_s", "valid_until")
)
SITE_VALUES = (
    "name", "country", "gocdb_id", "homepage", "support_emails", "status", "health",
    "creation_time", "validity_s", "valid_until", "last_report_at", "client_id", "agent",
)  # fmt: skip


class ReportWrites:
    """Collects one report's writes; `flush` sends them."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.site_insert: dict[str, Any] | None = None
        self.site_update: dict[str, Any] | None = None
        self.catalog_moved = False
        self.services_deleted: list[str] = []
        self.services_unhealthy: list[str] = []
        self.services_inserted: list[dict[str, Any]] = []
        self.services_updated: list[dict[str, Any]] = []
        self.children: dict[str, dict[str, list[dict[str, Any]]]] = {
            part: {"insert": [], "update": [], "delete": []} for part in PARTS
        }
        # Outbox rows (`hdc_common.bus.outbox.row`) announcing the change: written with it.
        self.outbox_rows: list[dict[str, Any]] = []

    def flush(self, session: Session) -> None:
        if session.get_bind().dialect.name == "postgresql":
            self._flush_pg(session)
        else:
            self._flush_each(session)

    # -- PostgreSQL: one statement -----------------------------------------------------

    def _flush_pg(self, session: Session) -> None:
        ctes: list[str] = []
        params: dict[str, Any] = {}

        def add(sql: str, rows: Any) -> None:
            name = f"p{len(ctes)}"
            params[name] = pydantic_core.to_json(rows).decode()
            ctes.append(sql.replace(":rows", f"CAST(%({name})s AS json)"))

        if self.site_insert is not None:
            add(_PG["site_insert"], [self.site_insert])
        if self.site_update is not None:
            add(_PG["site_update"], [{**self.site_update, "catalog_version": int(self.catalog_moved)}])  # fmt: skip
        if self.services_deleted:
            add(_PG["services_delete"], [{"id": i} for i in self.services_deleted])
        if self.services_unhealthy:
            add(_PG["services_unhealthy"], [{"id": i} for i in self.services_unhealthy])
        if self.services_inserted:
            add(_PG["services_insert"], self.services_inserted)
        if self.services_updated:
            add(_PG["services_update"], self.services_updated)
        for part, ops in self.children.items():
            for op in ("delete", "update", "insert"):
                if ops[op]:
                    add(_PG[f"{part}_{op}"], ops[op])
        if self.outbox_rows:
            add(_PG["outbox_insert"], self.outbox_rows)
        if not ctes:
            return
        # The last write is the statement itself, the others its CTEs: no result to set up.
        *first, sql = ctes
        if first:
            sql = "WITH " + ", ".join(f"w{n} AS ({c})" for n, c in enumerate(first)) + " " + sql
        # Driver SQL: no SQLAlchemy statement to build and compile for every report.
        session.connection().exec_driver_sql(sql, params)

    # -- elsewhere: one statement per kind of write ---------------------------------------

    def _flush_each(self, session: Session) -> None:
        if self.site_insert is not None:
            session.execute(_SITES.insert(), [self.site_insert])
        if self.site_update is not None:
            session.execute(_SITE_UPDATE, [{"b_id": self.site_id, **self.site_update}])
        if self.catalog_moved and self.site_insert is None:
            session.execute(_SITE_BUMP, {"b_id": self.site_id})
        if self.services_deleted:
            session.execute(_SERVICE_DELETE, {"ids": self.services_deleted})
        if self.services_unhealthy:
            session.execute(_SERVICE_UNHEALTHY, {"ids": self.services_unhealthy})
        if self.services_inserted:
            session.execute(_SERVICES.insert(), self.services_inserted)
        # Updates grouped by the columns they set (a failed part leaves its freshness alone).
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in self.services_updated:
            by_shape.setdefault(tuple(sorted(row)), []).append(row)
        for shape, rows in by_shape.items():
            session.execute(_service_update(shape), [{"b_id": r["id"], **r} for r in rows])
        for part, ops in self.children.items():
            insert, update, delete = _CHILD[part]
            by_service: dict[str, list[str]] = {}
            for row in ops["delete"]:
                by_service.setdefault(row["service_id"], []).append(row["id"])
            for sid, ids in by_service.items():
                session.execute(delete, {"sid": sid, "ids": ids})
            if ops["update"]:
                rows = [
                    {"b_service_id": r["service_id"], "b_id": r["id"], **r} for r in ops["update"]
                ]
                session.execute(update, rows)
            if ops["insert"]:
                session.execute(insert, ops["insert"])
        if self.outbox_rows:
            session.execute(outbox.insert(), self.outbox_rows)


# ---------------------------------------------------------------------- statements
# Built once: SQLAlchemy then reuses the compiled SQL, PostgreSQL its prepared plans.

_SITE_UPDATE = (
    _SITES.update()
    .where(_SITES.c.id == sa.bindparam("b_id"))
    .values(
        reports_accepted=_SITES.c.reports_accepted + 1,
        **{k: sa.bindparam(k) for k in SITE_VALUES},
    )
)
_SITE_BUMP = (
    _SITES.update()
    .where(_SITES.c.id == sa.bindparam("b_id"))
    .values(catalog_version=_SITES.c.catalog_version + 1)
)
_SERVICE_DELETE = _SERVICES.delete().where(_SERVICES.c.id.in_(sa.bindparam("ids", expanding=True)))
_SERVICE_UNHEALTHY = (
    _SERVICES.update()
    .where(_SERVICES.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(healthy=False)
)
_SERVICE_UPDATES: dict[tuple[str, ...], Any] = {}


def _service_update(columns: tuple[str, ...]) -> Any:
    stmt = _SERVICE_UPDATES.get(columns)
    if stmt is None:
        stmt = _SERVICE_UPDATES[columns] = (
            _SERVICES.update()
            .where(_SERVICES.c.id == sa.bindparam("b_id"))
            .values({c: sa.bindparam(c) for c in columns if c != "id"})
        )
    return stmt


def _child_statements(model: Any) -> tuple[Any, Any, Any]:
    t = model.__table__
    cols = [c.name for c in t.columns if c.name not in ("service_id", "id", "uid")]
    update = (
        t.update()
        .where(t.c.service_id == sa.bindparam("b_service_id"), t.c.id == sa.bindparam("b_id"))
        .values({c: sa.bindparam(c) for c in cols})
    )
    delete = t.delete().where(
        t.c.service_id == sa.bindparam("sid"), t.c.id.in_(sa.bindparam("ids", expanding=True))
    )
    return t.insert(), update, delete


_CHILD = {part: _child_statements(model) for part, model in m.CHILD_MODELS.items()}


def _pg_statements() -> dict[str, str]:
    """The CTE bodies; `:rows` is the JSON array of the rows (see ReportWrites._flush_pg)."""

    def rows(table: str) -> str:
        return f"json_populate_recordset(NULL::{table}, :rows)"

    def insert(t: sa.Table, skip: tuple[str, ...] = ()) -> str:
        cols = ", ".join(c.name for c in t.columns if c.name not in skip)
        return f"INSERT INTO {t.name} ({cols}) SELECT {cols} FROM {rows(t.name)}"

    out = {
        "site_insert": insert(_SITES),
        "site_update": (
            f"UPDATE ip_sites AS t SET {', '.join(f'{c} = x.{c}' for c in SITE_VALUES)}, "
            "reports_accepted = t.reports_accepted + 1, "
            "catalog_version = t.catalog_version + x.catalog_version "
            f"FROM {rows('ip_sites')} AS x WHERE t.id = x.id"
        ),
        "services_delete": f"DELETE FROM ip_services WHERE id IN (SELECT id FROM {rows('ip_services')})",
        "services_unhealthy": (
            "UPDATE ip_services SET healthy = false "
            f"WHERE id IN (SELECT id FROM {rows('ip_services')})"
        ),
        "services_insert": insert(_SERVICES),
        # The id is the outbox's sequence; sent_at stays NULL until the relay publishes.
        "outbox_insert": insert(outbox, skip=("id", "sent_at")),
    }
    content = [c.name for c in _SERVICES.columns if c.name != "id" and c.name not in PART_FRESHNESS]
    sets = [f"{c} = x.{c}" for c in content]
    # NOT NULL columns: absent (NULL) means "part not read, keep what is held".
    sets += [f"{c} = COALESCE(x.{c}, t.{c})" for c in PART_FRESHNESS]
    out["services_update"] = (
        f"UPDATE ip_services AS t SET {', '.join(sets)} "
        f"FROM {rows('ip_services')} AS x WHERE t.id = x.id"
    )
    for part, model in m.CHILD_MODELS.items():
        t = model.__table__
        name = t.name
        content = [c.name for c in t.columns if c.name not in ("service_id", "id", "uid")]
        out[f"{part}_insert"] = insert(t)
        out[f"{part}_update"] = (
            f"UPDATE {name} AS t SET {', '.join(f'{c} = x.{c}' for c in content)} "
            f"FROM {rows(name)} AS x WHERE t.service_id = x.service_id AND t.id = x.id"
        )
        out[f"{part}_delete"] = (
            f"DELETE FROM {name} AS t USING {rows(name)} AS x "
            "WHERE t.service_id = x.service_id AND t.id = x.id"
        )
    return out


_PG = _pg_statements()
