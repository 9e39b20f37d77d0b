"""Fixtures every test in the repository can use.

The real RabbitMQ and PostgreSQL are started by `make test` (tests/infra/*.sh). Each test
gets its own RabbitMQ vhost and its own PostgreSQL database, so tests never see each
other's queues or rows and can run in any order.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest

RABBIT_HOST = os.environ.get("HDC_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_MGMT = os.environ.get("HDC_TEST_RABBITMQ_MGMT", f"http://{RABBIT_HOST}:15672")
RABBIT_AUTH = ("hdc", "hdc")
PG_DSN = os.environ.get("HDC_TEST_POSTGRES", "postgresql+psycopg://hdc:hdc@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh vhost on the real broker, deleted after the test."""
    vhost = f"t-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=30) as api:
        api.put(f"/api/vhosts/{vhost}").raise_for_status()
        api.put(
            f"/api/permissions/{vhost}/hdc",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
        yield vhost
        api.delete(f"/api/vhosts/{vhost}")


@pytest.fixture
def rabbitmq_url(rabbitmq_vhost: str) -> str:
    return f"amqp://hdc:hdc@{RABBIT_HOST}:5672/{rabbitmq_vhost}"


@pytest.fixture
def rabbitmq_api(rabbitmq_vhost: str) -> Iterator[RabbitApi]:
    with RabbitApi(rabbitmq_vhost) as api:
        yield api


class RabbitApi:
    """The management API, scoped to one test's vhost (queue depths, DLQ contents)."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self._http = httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=30)

    def __enter__(self) -> RabbitApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def queues(self) -> dict[str, dict]:
        rows = self._http.get(f"/api/queues/{self.vhost}").raise_for_status().json()
        return {q["name"]: q for q in rows}

    def get_messages(self, queue: str, count: int = 100) -> list[dict]:
        """Read messages without consuming them (requeued)."""
        return (
            self._http.post(
                f"/api/queues/{self.vhost}/{queue}/get",
                json={"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"},
            )
            .raise_for_status()
            .json()
        )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, dropped after the test."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{PG_DSN}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_DSN}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/test.db"
