"""Alembic environment for the bus tables (own version table: alembic_version_hdc_bus)."""

from hdc_common.bus.tables import metadata
from hdc_common.db import run_migrations_env

run_migrations_env(metadata)
