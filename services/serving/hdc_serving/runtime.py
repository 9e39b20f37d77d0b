"""Everything one serving instance holds while it runs: models, worker pool, jobs, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hdc_common.db import create_engine, session_factory
from hdc_common.errors import Problem

from hdc_serving.jobs.manager import JobManager
from hdc_serving.loading import ModelInfo, ModelNotFound, load_models
from hdc_serving.metrics import Metrics
from hdc_serving.pool import WorkerPool, make_pool
from hdc_serving.settings import ServingSettings

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


def migrate(engine: sa.Engine) -> None:
    """Bring the jobs table up to date (Alembic; own version table, no other service's)."""
    # Imported here: alembic is a large import, and start() runs this in a thread while the
    # predict workers load the models, so neither waits for the other.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = "alembic_version_serving"
        command.upgrade(cfg, "head")


class Runtime:
    def __init__(self, settings: ServingSettings, pool: WorkerPool | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        try:
            self.models: dict[str, ModelInfo] = load_models(settings.model or None)
        except ModelNotFound as exc:
            from hdc_common.errors import ConfigError

            raise ConfigError(str(exc)) from None
        base = settings.serving_dir
        self.uploads_dir = base / "uploads"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        # Models read their artifacts' place from here (see hdc_serving.models._store).
        self.env = settings.worker_env()
        os.environ.update(self.env)
        self.pool = pool or make_pool(settings)
        if self.pool.models != list(self.models):
            raise ValueError(f"the pool serves {self.pool.models}, the runtime {list(self.models)}")
        self.pool.metrics = self.metrics
        self.pool.batchable = {n for n, m in self.models.items() if m.batchable}
        self.engine = create_engine(settings.resolved_database_url())
        self.sessions = session_factory(self.engine)
        self.jobs = JobManager(
            self.sessions,
            base / "jobs",
            owner=settings.owner(),
            env=self.env,
            max_running=settings.max_training_jobs,
            heartbeat_stale_s=settings.heartbeat_stale_s,
            on_start=lambda model: self.metrics.training_started.labels(model).inc(),
        )
        self.metrics.count_jobs_with(self.jobs.counts)
        self.started = False

    async def start(self) -> None:
        # Workers first: loading the models is the slowest part of a start, and it runs in
        # the worker processes while this one migrates the database.
        if self.models:
            self.pool.start()
        await asyncio.to_thread(migrate, self.engine)
        self.jobs.start_background()
        self.started = True
        log.info("serving models", extra={"models": sorted(self.models)})

    async def stop(self) -> None:
        await self.jobs.close()
        await self.pool.close()
        self.engine.dispose()

    def model(self, name: str) -> ModelInfo:
        info = self.models.get(name)
        if info is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise Problem(404, "Not Found", f"unknown model '{name}' (served here: {known})")
        return info

    def readiness(self) -> list[str]:
        reasons = []
        if not self.started:
            reasons.append("starting")
        if not self.models:
            reasons.append("no model installed (no deepaas.v2.model entry point)")
        elif self.pool.ready_workers == 0:
            reasons.append("no predict worker has loaded the models yet")
        for name, err in self.pool.warm_errors.items():
            reasons.append(f"model '{name}' failed to load: {err}")
        return reasons

    async def metadata(self, name: str) -> dict[str, Any]:
        meta = await self.pool.submit(
            "metadata", name, None, timeout=self.settings.predict_timeout_s, priority=True
        )
        return meta[1] if isinstance(meta, tuple) else meta
