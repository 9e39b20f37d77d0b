"""Room of a test's own on the real RabbitMQ and PostgreSQL that the Makefile starts: a
fresh vhost or database per test (or benchmark), and its removal afterwards."""

from __future__ import annotations

import os
import uuid

import httpx
import sqlalchemy as sa

RABBIT_HOST = os.environ.get("HDC_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_MGMT = os.environ.get("HDC_TEST_RABBITMQ_MGMT", f"http://{RABBIT_HOST}:15672")
PG_DSN = os.environ.get("HDC_TEST_POSTGRES", "postgresql+psycopg://hdc:hdc@127.0.0.1:5432")


def make_vhost(prefix: str) -> str:
    """A new vhost `<prefix>-<random>` the hdc user may use fully."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=RABBIT_MGMT, auth=("hdc", "hdc"), timeout=30) as api:
        api.put(f"/api/vhosts/{vhost}").raise_for_status()
        api.put(
            f"/api/permissions/{vhost}/hdc", json={"configure": ".*", "write": ".*", "read": ".*"}
        ).raise_for_status()
    return vhost


def drop_vhost(vhost: str) -> None:
    with httpx.Client(base_url=RABBIT_MGMT, auth=("hdc", "hdc"), timeout=30) as api:
        api.delete(f"/api/vhosts/{vhost}")


def on_admin_database(*statements: str, **params: object) -> list[list[tuple]]:
    """Run statements on the server's `postgres` database (autocommit); their rows."""
    admin = sa.create_engine(f"{PG_DSN}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            results = [c.execute(sa.text(sql), params) for sql in statements]
            return [[tuple(r) for r in res] if res.returns_rows else [] for res in results]
    finally:
        admin.dispose()


def create_databases(*names: str) -> None:
    on_admin_database(*(f'CREATE DATABASE "{name}"' for name in names))


def drop_databases(*names: str) -> None:
    on_admin_database(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names))
