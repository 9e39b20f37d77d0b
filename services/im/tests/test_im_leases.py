"""Job leases: a job taken over after its lease ran out is told apart from the new holder even
inside one process (worker threads share the engine), and the lease keeper keeps a busy
job's lease alive while its steps are slow."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from hdc_common.db import create_engine, migrate, session_factory
from hdc_im import service
from hdc_im.engine import Engine, LeaseLost
from hdc_im.models import Job
from hdc_im.secrets import Vault


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    db = create_engine(sqlite_url)
    migrate(db, Path(service.__file__).parent / "migrations")

    def no_cloud(site, credentials):  # these tests run no job handler
        raise AssertionError("no driver expected")

    return Engine(session_factory(db), Vault(Fernet(Fernet.generate_key())), no_cloud, lease_s=0.6)


def _queue(engine: Engine) -> int:
    with engine.sessions.begin() as s:
        return engine.submit_job(s, "infra-1", "create", wake=False).id


def _expire(engine: Engine, job_id: int) -> None:
    with engine.sessions.begin() as s:
        s.execute(
            sa.update(Job).where(Job.id == job_id).values(lease_until=dt.datetime(2000, 1, 1))
        )


def test_a_taken_over_job_is_lost_to_its_first_holder(engine: Engine) -> None:
    job_id = _queue(engine)
    first = engine.claim()
    assert first is not None and first.id == job_id
    _expire(engine, job_id)  # as if its worker had stalled
    second = engine.claim()
    assert second is not None and second.lease_owner != first.lease_owner
    with pytest.raises(LeaseLost):
        engine.renew(first, force=True)
    with pytest.raises(LeaseLost):
        engine.finish(first)
    engine.renew(second, force=True)
    engine.finish(second)
    with engine.sessions() as s:
        assert s.get(Job, job_id).state == "done"


def test_the_lease_keeper_keeps_a_slow_job_leased(engine: Engine) -> None:
    job_id = _queue(engine)
    job = engine.claim()
    engine.leases.add(job)
    try:
        time.sleep(engine.lease_s * 2.5)  # a slow step: no renew() of its own
        assert engine.claim() is None  # still leased: nobody takes it over
        engine.renew(job)  # and the job's next step goes on
    finally:
        engine.leases.remove(job)
    time.sleep(engine.lease_s * 1.5)
    taken = engine.claim()
    assert taken is not None and taken.id == job_id  # unwatched, it expires


def test_the_lease_keeper_flags_a_job_taken_over(engine: Engine) -> None:
    _queue(engine)
    job = engine.claim()
    with engine.sessions.begin() as s:
        s.execute(sa.update(Job).where(Job.id == job.id).values(lease_owner="someone-else"))
    engine.leases._renew([job])
    with pytest.raises(LeaseLost):
        engine.renew(job)
