"""Alembic environment of the infoprovider schema (run through hdc_common.db.migrate)."""

from hdc_common.db import run_migrations_env
from hdc_infoprovider.models import Base

run_migrations_env(Base.metadata)
