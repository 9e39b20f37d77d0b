"""Fixtures of the orchestrator tests: one real PostgreSQL database and one RabbitMQ vhost per
module (the root conftest's are per test, too slow to start an orchestrator for each), the
gRPC test doubles, the im test double, and an in-process orchestrator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from orch_doubles import (
    PG_DSN,
    RABBIT_HOST,
    GrpcDoubles,
    ImDouble,
    Signer,
    Site,
    Stack,
    drop_db,
    drop_vhost,
    make_db,
    make_vhost,
)


@pytest.fixture(scope="module")
def module_bus_url() -> Iterator[str]:
    vhost = make_vhost()
    yield f"amqp://hdc:hdc@{RABBIT_HOST}:5672/{vhost}"
    drop_vhost(vhost)


@pytest.fixture(scope="module")
def module_db_url() -> Iterator[str]:
    name = make_db()
    yield f"{PG_DSN}/{name}"
    drop_db(name)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def grpc_doubles() -> Iterator[GrpcDoubles]:
    doubles = GrpcDoubles([Site("site-a", 0.9), Site("site-b", 0.7), Site("site-c", 0.5)])
    yield doubles
    doubles.stop()


@pytest.fixture(scope="module")
def im_double(module_bus_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImDouble]:
    im = ImDouble(module_bus_url, tmp_path_factory.mktemp("im") / "im.db").start()
    yield im
    im.stop()


@pytest.fixture(scope="module")
def stack(
    module_bus_url: str,
    module_db_url: str,
    signer: Signer,
    grpc_doubles: GrpcDoubles,
    im_double: ImDouble,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    from hdc_orchestrator.settings import OrchestratorSettings

    settings = OrchestratorSettings(
        database_url=module_db_url,
        bus_url=module_bus_url,
        infoprovider_target=grpc_doubles.target,
        ranker_target=grpc_doubles.target,
        identity_public_key=signer.public,
        data_dir=tmp_path_factory.mktemp("orch"),
        minute_s=0.5,
        sweep_interval_s=0.2,
        callback_backoff_s=0.2,
        callback_secret="test-callback-secret",
        placement_retry_s=0.2,
        placement_max_tries=4,
    )
    s = Stack(settings)
    yield s
    s.stop()
