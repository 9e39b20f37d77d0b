"""Alembic environment of the orchestrator's tables (run through hdc_common.db.migrate)."""

from hdc_common.db import run_migrations_env
from hdc_orchestrator.models import Base

run_migrations_env(Base.metadata)
