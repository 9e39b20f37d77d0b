"""Runs training jobs: one process per job, watched from the event loop, recorded in the DB.

`start` writes the row, then starts the process; a watcher task copies progress and new log
lines into the row about once a second (that write is also the heartbeat) and records the
result when the process ends. `cancel` kills the job's whole process group — the work stops,
not just the record. At start the manager marks jobs that this instance was running when it
stopped, and jobs whose server stopped sending heartbeats, as `error` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing
import os
import shutil
import signal
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from hdc_serving import progress as progress_mod
from hdc_serving.jobs import child
from hdc_serving.jobs.store import (
    CANCELLED,
    DONE,
    ERROR,
    FINAL,
    RUNNING,
    TrainingJob,
    to_response,
    utcnow,
)
from hdc_serving.uploads import UploadedFile

log = logging.getLogger(__name__)
_ctx = multiprocessing.get_context("spawn")
LOG_LIMIT = 256 * 1024  # keep the newest part of a job's log in the row


class JobError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Running:
    proc: Any
    task: asyncio.Task | None
    dir: Path
    cancelled: bool = False


class JobManager:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        jobs_dir: Path,
        *,
        owner: str,
        env: dict[str, str],
        max_running: int = 2,
        heartbeat_stale_s: float = 30.0,
        poll_s: float = 0.5,
        on_start: Any = None,
    ) -> None:
        self.sessions = sessions
        self.jobs_dir = jobs_dir
        self.owner = owner
        self.env = env
        self.max_running = max_running
        self.heartbeat_stale_s = heartbeat_stale_s
        self.poll_s = poll_s
        self.on_start = on_start
        self._running: dict[str, _Running] = {}
        self._sweeper: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------

    def recover(self) -> int:
        """Jobs this instance ran before it restarted can no longer finish: say so.

        Their log files are still on disk: the row gets the full log, including what was
        written after the last copy before the crash.
        """
        with self.sessions.begin() as s:
            jobs = s.scalars(
                sa.select(TrainingJob).where(
                    TrainingJob.status == RUNNING, TrainingJob.owner == self.owner
                )
            ).all()
            for job in jobs:
                job.status = ERROR
                job.finished_at = utcnow()
                job.message = "interrupted: the server restarted while this job was running"
                _, text = _read_from(str(self.jobs_dir / job.uuid / "log.txt"), 0)
                if text:
                    job.logs = text[-LOG_LIMIT:]
        return len(jobs)

    def sweep(self) -> int:
        """Jobs of other instances whose heartbeats stopped: their server is gone."""
        cutoff = utcnow() - dt.timedelta(seconds=self.heartbeat_stale_s)
        with self.sessions.begin() as s:
            n = s.execute(
                sa.update(TrainingJob)
                .where(
                    TrainingJob.status == RUNNING,
                    TrainingJob.owner != self.owner,
                    TrainingJob.heartbeat_at < cutoff,
                )
                .values(
                    status=ERROR,
                    finished_at=utcnow(),
                    message=(
                        f"interrupted: its server stopped reporting for over "
                        f"{self.heartbeat_stale_s:g} s"
                    ),
                )
            ).rowcount
        return n or 0

    def start_background(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        n = self.recover()
        if n:
            log.warning("marked %d interrupted training job(s) as failed", n)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.heartbeat_stale_s / 3, 1))
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:
                log.exception("sweeping stale training jobs failed")

    async def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for job_id in list(self._running):
            await self._stop(
                job_id, ERROR, "interrupted: the server shut down while this job was running"
            )

    # -- API ------------------------------------------------------------------------

    def start(self, model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(self._running) >= self.max_running:
            raise JobError(
                429,
                f"{len(self._running)} training jobs already running (limit {self.max_running}); retry later",
            )
        job_id = uuidlib.uuid4().hex
        jdir = self.jobs_dir / job_id
        jdir.mkdir(parents=True)
        kwargs = _keep_uploads(kwargs, jdir)
        paths = {
            "log": str(jdir / "log.txt"),
            "progress": str(jdir / "progress.json"),
            "result": str(jdir / "result.json"),
        }
        Path(paths["log"]).touch()
        now = utcnow()
        job = TrainingJob(
            uuid=job_id,
            model=model,
            status=RUNNING,
            args=_describe_args(kwargs),
            created_at=now,
            logs="",
            owner=self.owner,
            heartbeat_at=now,
        )
        with self.sessions.begin() as s:
            s.add(job)
        proc = _ctx.Process(
            target=child.main,
            args=(model, kwargs, paths, self.env, os.getpid()),
            name=f"hdc-serving-train-{job_id[:8]}",
        )
        try:
            proc.start()
        except Exception as exc:
            self._finish(job_id, ERROR, f"could not start the training process: {exc}")
            raise JobError(500, f"could not start the training process: {exc}") from exc
        with self.sessions.begin() as s:
            s.get(TrainingJob, job_id).pid = proc.pid
        running = _Running(proc=proc, task=None, dir=jdir)
        self._running[job_id] = running
        running.task = asyncio.get_running_loop().create_task(self._watch(job_id, paths))
        if self.on_start:
            self.on_start(model)
        return to_response(job, with_logs=False)

    def get(self, model: str, job_id: str, *, with_logs: bool = True) -> dict[str, Any]:
        with self.sessions() as s:
            job = s.get(TrainingJob, job_id)
            if job is None or job.model != model:
                raise JobError(404, f"no training job {job_id} for model '{model}'")
            out = to_response(job, with_logs=with_logs)
        if with_logs and job_id in self._running:
            # A job running here: its log file is fresher than the last copy in the row.
            _, text = _read_from(str(self.jobs_dir / job_id / "log.txt"), 0)
            out["logs"] = text[-LOG_LIMIT:]
        return out

    def list(self, model: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(
                sa.select(TrainingJob)
                .where(TrainingJob.model == model)
                .order_by(TrainingJob.created_at)
            ).all()
            return [to_response(j, with_logs=False) for j in rows]

    async def delete(self, model: str, job_id: str) -> dict[str, Any]:
        """Running: stop the work and keep the record as cancelled. Finished: forget it."""
        current = self.get(model, job_id, with_logs=False)
        if current["status"] == RUNNING:
            if job_id in self._running:
                await self._stop(job_id, CANCELLED, "cancelled by request")
            else:
                raise JobError(
                    409, f"training job {job_id} runs on another server instance; cancel it there"
                )
            return self.get(model, job_id, with_logs=True)
        with self.sessions.begin() as s:
            s.execute(sa.delete(TrainingJob).where(TrainingJob.uuid == job_id))
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        return current

    def counts(self) -> list[tuple[str, str, int]]:
        with self.sessions() as s:
            rows = s.execute(
                sa.select(TrainingJob.model, TrainingJob.status, sa.func.count()).group_by(
                    TrainingJob.model, TrainingJob.status
                )
            ).all()
        return [(m, st, int(n)) for m, st, n in rows]

    @property
    def running_pids(self) -> dict[str, int]:
        return {k: r.proc.pid for k, r in self._running.items()}

    # -- watching -------------------------------------------------------------------

    async def _watch(self, job_id: str, paths: dict[str, str]) -> None:
        running = self._running[job_id]
        offset = 0
        last_progress = None
        try:
            while True:
                alive = running.proc.is_alive()
                offset, chunk = _read_from(paths["log"], offset)
                prog = progress_mod.read(paths["progress"])
                if chunk or prog != last_progress or alive:
                    await asyncio.to_thread(self._update, job_id, chunk, prog)
                    last_progress = prog
                if not alive:
                    break
                await asyncio.sleep(self.poll_s)
            if running.cancelled:
                return
            running.proc.join(1)
            outcome = _read_json(paths["result"])
            if outcome and outcome.get("ok"):
                await asyncio.to_thread(self._finish, job_id, DONE, None, outcome.get("result"))
            else:
                reason = (outcome or {}).get("error") or (
                    f"the training process exited with code {running.proc.exitcode} without a result"
                )
                await asyncio.to_thread(self._finish, job_id, ERROR, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching training job %s failed", job_id)
        finally:
            if not running.cancelled:
                self._running.pop(job_id, None)

    def _update(self, job_id: str, chunk: str, prog: dict | None) -> None:
        with self.sessions.begin() as s:
            job = s.get(TrainingJob, job_id)
            if job is None or job.status != RUNNING:
                return
            if chunk:
                job.logs = ((job.logs or "") + chunk)[-LOG_LIMIT:]
            if prog:
                job.progress = prog.get("progress")
                job.progress_message = prog.get("message")
            job.heartbeat_at = utcnow()

    def _finish(self, job_id: str, status: str, message: str | None, result: Any = None) -> None:
        jdir = self.jobs_dir / job_id
        _, tail = _read_from(str(jdir / "log.txt"), 0)
        with self.sessions.begin() as s:
            job = s.get(TrainingJob, job_id)
            if job is None or job.status in FINAL:
                return
            job.status = status
            job.message = message
            job.finished_at = utcnow()
            if tail:
                job.logs = tail[-LOG_LIMIT:]
            if status == DONE:
                job.result = result
                job.progress = 1.0

    async def _stop(self, job_id: str, status: str, message: str) -> None:
        running = self._running.get(job_id)
        if running is None:
            return
        running.cancelled = True
        if running.task:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task
        await asyncio.to_thread(_kill_group, running.proc)
        self._running.pop(job_id, None)
        await asyncio.to_thread(self._finish, job_id, status, message)


def _kill_group(proc: Any) -> None:
    """SIGTERM the job's process group, SIGKILL what is left after a grace period."""
    pid = proc.pid
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        proc.join(wait)
        if not proc.is_alive():
            break
    # The group may hold children the model started; make sure none survives.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _read_from(path: str, offset: int) -> tuple[int, str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset, ""
    return offset + len(data), data.decode("utf-8", "replace")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _keep_uploads(kwargs: dict[str, Any], jdir: Path) -> dict[str, Any]:
    """Uploaded files move into the job's directory: they must outlive the request."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        if isinstance(value, UploadedFile) and value.filename:
            target = jdir / f"upload-{key}"
            shutil.move(value.filename, target)
            out[key] = value._replace(filename=str(target))
    return out


def _describe_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    from hdc_serving.worker import _default

    out = {}
    for key, value in kwargs.items():
        if isinstance(value, UploadedFile):
            # As DEEPaaS reports uploaded files: no server paths.
            out[key] = [value.name, value.content_type, value.original_filename]
        else:
            out[key] = json.loads(json.dumps(value, default=_default))
    return out
