"""A minimal service built only from hdc_common, used to test the runner and the HTTP helper."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from hdc_common.db import check_connection, create_engine
from hdc_common.errors import Problem
from hdc_common.http import caller, create_openapi_app
from hdc_common.identity import InternalTokenVerifier
from hdc_common.service import Components, Service, run_service
from hdc_common.settings import ServiceSettings, service_config

ITEMS: dict[str, dict] = {}
VERIFIER = InternalTokenVerifier("")


class SampleSettings(ServiceSettings):
    model_config = service_config("sample")
    http_port: int = 8999


def create_item(body: dict) -> tuple[dict, int]:
    if body["name"] in ITEMS:
        raise Problem(409, "Conflict", f"item {body['name']!r} exists")
    ITEMS[body["name"]] = body
    return body, 201


def get_item(name: str) -> dict:
    if name not in ITEMS:
        raise Problem(404, "Not Found", f"no item {name!r}")
    return ITEMS[name]


def whoami() -> dict:
    ident = caller(VERIFIER)
    return {"subject": ident.subject, "groups": list(ident.groups)}


def boom() -> dict:
    raise RuntimeError("kaboom with secret detail")


def build(settings: SampleSettings) -> Components:
    global VERIFIER
    VERIFIER = InternalTokenVerifier(settings.identity_key_pem())
    engine = create_engine(settings.resolved_database_url())
    check_connection(engine)

    def database() -> None:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))

    app = create_openapi_app(
        Path(__file__).with_name("openapi.yaml"), service="sample", readiness=[database]
    )
    return Components(asgi_app=app)


SERVICE = Service("sample", SampleSettings, build)


def main() -> None:
    run_service(SERVICE)


if __name__ == "__main__":
    main()
