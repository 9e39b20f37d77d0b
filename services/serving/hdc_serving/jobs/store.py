"""Training jobs in the database: the durable record of every train request.

One row per job. The server that runs a job (its `owner`) refreshes `heartbeat_at` while the
job runs; a job whose owner restarted, or whose heartbeat went stale (its server died), is
marked `error` with the reason, so nobody waits forever on a job that no longer runs.
Statuses are DEEPaaS's: running, done, error, cancelled.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUNNING, DONE, ERROR, CANCELLED = "running", "done", "error", "cancelled"
FINAL = (DONE, ERROR, CANCELLED)


class Base(DeclarativeBase):
    pass


class TrainingJob(Base):
    __tablename__ = "serving_training_jobs"

    uuid: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    args: Mapped[Any] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime, nullable=True)
    progress: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    message: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    result: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    logs: Mapped[str] = mapped_column(sa.Text, default="")
    owner: Mapped[str] = mapped_column(sa.String(300), index=True)
    pid: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime, nullable=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _date(value: dt.datetime | None) -> str | None:
    # DEEPaaS's format (str(datetime)); clients parse it with "%Y-%m-%d %H:%M:%S.%f".
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if value else None


def to_response(job: TrainingJob, *, with_logs: bool) -> dict[str, Any]:
    """DEEPaaS's training document, plus progress and logs."""
    out: dict[str, Any] = {
        "uuid": job.uuid,
        "model": job.model,
        "date": _date(job.created_at),
        "args": job.args,
        "status": job.status,
        "progress": job.progress,
    }
    if job.progress_message:
        out["progress_message"] = job.progress_message
    if job.message:
        out["message"] = job.message
    if job.status == DONE:
        finished = job.finished_at or job.created_at
        out["result"] = {
            "output": job.result,
            "finish_date": _date(finished),
            "duration": str(finished - job.created_at),
        }
    elif job.finished_at:
        out["finish_date"] = _date(job.finished_at)
    if with_logs:
        out["logs"] = job.logs or ""
    return out
