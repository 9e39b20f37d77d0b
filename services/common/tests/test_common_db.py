"""Database helpers on the real PostgreSQL: replicas that start together migrate once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from hdc_common.db import create_engine, migrate

pytestmark = [pytest.mark.postgres]

VERSION = '''"""one table

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("things", sa.Column("id", sa.Integer, primary_key=True))
'''


def test_replicas_starting_together_migrate_a_fresh_database_once(
    postgres_url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(
        "from hdc_common.db import run_migrations_env\nrun_migrations_env(None)\n"
    )
    (migrations / "versions" / "0001_things.py").write_text(VERSION)
    replicas = 4
    engines = [create_engine(postgres_url) for _ in range(replicas)]
    start = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def replica(engine: sa.Engine) -> None:
        start.wait()
        try:
            migrate(engine, migrations)
        except BaseException as exc:  # what a replica's start would die of
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        with engines[0].connect() as c:
            assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0001"
            assert c.execute(sa.text("SELECT count(*) FROM things")).scalar() == 0
    finally:
        for e in engines:
            e.dispose()
