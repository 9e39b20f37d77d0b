"""A create command's job handed straight to a worker of the same process: the same events
and rows as a job taken from the database, no rows read again, and a job that someone else
took (or whose infrastructure changed) meanwhile is left to the database's rules."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from hdc_common.db import create_engine, migrate, session_factory
from hdc_im import service
from hdc_im.commands import CommandHandlers
from hdc_im.drivers.libcloud_driver import LibcloudDriver, dummy_for
from hdc_im.engine import Engine, Events, on_commit
from hdc_im.models import DELETING, VM, Infrastructure, Job
from hdc_im.secrets import Vault
from hdc_im.settings import ImSettings

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: 2}}
        os: {properties: {image: img}}
"""
SITE = "handoff-site"


class Setup:
    def __init__(self, sqlite_url: str, tmp_path: Path) -> None:
        self.db = create_engine(sqlite_url)
        migrate(self.db, Path(service.__file__).parent / "migrations")
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.engine = Engine(
            session_factory(self.db),
            Vault(Fernet(Fernet.generate_key())),
            lambda site, _creds: LibcloudDriver("dummy", str(site["id"])),
            Events(self._emit),
        )
        settings = ImSettings(database_url=sqlite_url, data_dir=tmp_path / "im")
        self.handlers = CommandHandlers(self.engine, settings)
        self.statements: list[str] = []
        sa.event.listen(
            self.db,
            "before_cursor_execute",
            lambda _c, _cur, stmt, *_a: self.statements.append(stmt),
        )

    def _emit(self, session: Any, type_: str, data: dict[str, Any], subject: str) -> None:
        on_commit(session, lambda: self.events.append((type_, data)))

    def create(self) -> str:
        infra_id = str(uuid.uuid4())
        data = {
            "infrastructure_id": infra_id,
            "deployment_id": "dep-1",
            "site": {"id": SITE, "type": "dummy"},
            "tosca": TOSCA,
            "owner": {"subject": "u", "issuer": "i"},
        }
        with self.engine.sessions.begin() as s:
            self.handlers.create(s, SimpleNamespace(data=data))
        return infra_id

    def kinds(self, infra_id: str) -> list[str]:
        return [k for k, d in self.events if d.get("infrastructure_id") == infra_id]

    def rows(self, infra_id: str) -> tuple[Infrastructure, list[VM], Job]:
        with self.engine.sessions() as s:
            infra = s.get(Infrastructure, infra_id)
            vms = s.scalars(sa.select(VM).where(VM.infrastructure_id == infra_id)).all()
            job = s.scalar(sa.select(Job).where(Job.infrastructure_id == infra_id))
        return infra, list(vms), job


@pytest.fixture
def setup(sqlite_url: str, tmp_path: Path) -> Setup:
    return Setup(sqlite_url, tmp_path)


def _on_cloud(infra_id: str) -> int:
    return sum(
        1
        for n in dummy_for(SITE).list_nodes()
        if n.extra["tags"].get("hdc-infrastructure-id") == infra_id
    )


def _check_configured(setup: Setup, infra_id: str) -> None:
    assert setup.kinds(infra_id) == ["im.infrastructure.progress", "im.infrastructure.configured"]
    configured = setup.events[-1][1]
    assert configured["deployment_id"] == "dep-1"
    assert [v["state"] for v in configured["vms"]] == ["configured", "configured"]
    infra, vms, job = setup.rows(infra_id)
    assert infra.state == "configured" and infra.contmsg.count("Provisioning on site") == 1
    assert {v.state for v in vms} == {"configured"} and all(v.provider_id for v in vms)
    assert (job.state, job.attempts, job.lease_until) == ("done", 1, None)
    assert _on_cloud(infra_id) == 2


def test_a_handed_off_create_reads_nothing_again(setup: Setup) -> None:
    setup.engine.local_workers = 1  # as if a Worker ran here; the test drives it
    infra_id = setup.create()
    setup.statements.clear()
    assert setup.engine.run_once()
    reads = [s for s in setup.statements if s.lstrip().upper().startswith("SELECT")]
    assert reads == []
    _check_configured(setup, infra_id)


def test_without_local_workers_the_job_waits_in_the_database(setup: Setup) -> None:
    infra_id = setup.create()
    assert setup.kinds(infra_id) == ["im.infrastructure.progress"]
    assert setup.engine.run_once()  # claimed from the database: announced once all the same
    _check_configured(setup, infra_id)


def test_a_handed_off_job_taken_by_another_worker_runs_once(setup: Setup) -> None:
    setup.engine.local_workers = 1
    infra_id = setup.create()
    _, _, job = setup.rows(infra_id)
    assert setup.engine.run_once(job.id)  # another worker claims it from the database
    assert setup.engine.run_once()  # the hand-off: its claim fails, nothing runs again
    _check_configured(setup, infra_id)


def test_a_handed_off_job_whose_infrastructure_changed_follows_the_database(
    setup: Setup,
) -> None:
    setup.engine.local_workers = 1
    infra_id = setup.create()
    with setup.engine.sessions.begin() as s:  # e.g. a DELETE through the API meanwhile
        s.get(Infrastructure, infra_id).state = DELETING
    assert setup.engine.run_once()
    assert setup.kinds(infra_id) == ["im.infrastructure.progress"]
    assert _on_cloud(infra_id) == 0
    _, vms, job = setup.rows(infra_id)
    assert job.state == "done" and {v.state for v in vms} == {"pending"}
