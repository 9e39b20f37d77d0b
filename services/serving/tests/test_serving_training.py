"""Durable training jobs: train -> poll -> result, cancel really stops, restart reports failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

TRAIN = "/v2/models/{}/train/"


def poll_until_final(http: httpx.Client, model: str, uuid: str, eventually) -> dict:
    def final():
        body = http.get(f"{TRAIN.format(model)}{uuid}").json()
        return body if body["status"] != "running" else None

    return eventually(final, timeout=120, interval=0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it does no work
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_train_poll_result_and_the_new_model_serves(server, eventually):
    r = server.http.post(TRAIN.format("digits"), json={"C": 0.05, "max_iter": 200})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "running" and job["args"] == {
        "C": 0.05,
        "test_size": 0.2,
        "max_iter": 200,
    }
    done = poll_until_final(server.http, "digits", job["uuid"], eventually)
    assert done["status"] == "done", done
    assert done["progress"] == 1.0
    assert 0.8 < done["result"]["output"]["accuracy"] <= 1
    assert done["result"]["finish_date"] and done["result"]["duration"].startswith("0:00:")
    assert "digits: saved model" in done["logs"]
    listing = server.http.get(TRAIN.format("digits")).json()
    assert job["uuid"] in [j["uuid"] for j in listing]
    # the workers pick up the retrained artifact
    meta = eventually(
        lambda: (m := server.http.get("/v2/models/digits/").json())["training"]["C"] == 0.05 and m
    )
    assert meta["training"]["max_iter"] == 200
    # a second DELETE-free check: a finished job is forgotten on DELETE
    gone = server.http.delete(f"{TRAIN.format('digits')}{job['uuid']}")
    assert gone.status_code == 200 and gone.json()["status"] == "done"
    assert server.http.get(f"{TRAIN.format('digits')}{job['uuid']}").status_code == 404


def test_training_failure_is_recorded(server, eventually):
    job = server.http.post(
        TRAIN.format("toy"), json={"steps": 2, "step_seconds": 0.01, "fail": True}
    ).json()
    done = poll_until_final(server.http, "toy", job["uuid"], eventually)
    assert done["status"] == "error"
    assert done["message"] == "ValueError: toy training diverged"
    assert "Traceback" in done["logs"]


def test_train_bad_arguments(server):
    r = server.http.post(TRAIN.format("toy"), json={"steps": 0})
    assert r.status_code == 422 and "steps" in r.json()["errors"]
    r = server.http.post(TRAIN.format("digits"), data={"C": "lots"})
    assert r.status_code == 422 and "C" in r.json()["errors"]
    assert server.http.get(f"{TRAIN.format('toy')}0123").status_code == 404


def test_cancel_really_stops_the_work(server, eventually, tmp_path: Path):
    beat = tmp_path / "heartbeat.jsonl"
    job = server.http.post(
        TRAIN.format("toy"), json={"steps": 2000, "step_seconds": 0.05, "heartbeat": str(beat)}
    ).json()
    eventually(lambda: beat.exists() and len(beat.read_text().splitlines()) >= 3)
    pid = json.loads(beat.read_text().splitlines()[0])["pid"]
    assert pid_alive(pid)
    running = server.http.get(f"{TRAIN.format('toy')}{job['uuid']}").json()
    assert running["status"] == "running" and "step 0" in running["logs"]
    r = server.http.delete(f"{TRAIN.format('toy')}{job['uuid']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert not pid_alive(pid)  # the process is gone when DELETE answers
    steps = len(beat.read_text().splitlines())
    # no step is written after the cancel: look again after ten step periods
    time.sleep(0.5)
    assert len(beat.read_text().splitlines()) == steps
    assert server.http.get(f"{TRAIN.format('toy')}{job['uuid']}").json()["status"] == "cancelled"


@pytest.fixture
def run_server(tmp_path: Path):
    """`hdc-serving run` as a subprocess (so the test can kill it like a crash would)."""
    procs: list[subprocess.Popen] = []

    def start(port: int, data_dir: Path, database_url: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hdc_serving.cli",
                "run",
                "--listen-port",
                str(port),
                "--model",
                "toy",
                "--workers",
                "1",
                "--data-dir",
                str(data_dir),
                "--database-url",
                database_url,
            ],
            stdout=(tmp_path / f"server-{port}.log").open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "HDC_SERVING_INSTANCE_NAME": "restart-test"},
        )
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(15)


def wait_http_ready(http: httpx.Client, eventually) -> None:
    def ready():
        try:
            return http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    eventually(ready, timeout=90, interval=0.2)


def start_long_job(http: httpx.Client, beat: Path, eventually) -> tuple[str, int]:
    job = http.post(
        TRAIN.format("toy"), json={"steps": 5000, "step_seconds": 0.05, "heartbeat": str(beat)}
    ).json()
    eventually(lambda: beat.exists() and len(beat.read_text().splitlines()) >= 2)
    return job["uuid"], json.loads(beat.read_text().splitlines()[0])["pid"]


def test_server_crash_and_stop_during_training_report_the_job_failed(
    run_server, tmp_path: Path, unused_port: int, eventually
):
    data, db = tmp_path / "data", f"sqlite:///{tmp_path}/jobs.db"
    url = f"{TRAIN.format('toy')}"
    proc = run_server(unused_port, data, db)
    with httpx.Client(base_url=f"http://127.0.0.1:{unused_port}", timeout=10) as http:
        wait_http_ready(http, eventually)
        crashed, pid = start_long_job(http, tmp_path / "beat1.jsonl", eventually)
        proc.kill()  # a crash: no shutdown handler runs
        proc.wait(10)
        eventually(lambda: not pid_alive(pid), timeout=10)  # the job does not outlive its server
        proc = run_server(unused_port, data, db)
        wait_http_ready(http, eventually)
        got = http.get(f"{url}{crashed}").json()
        assert got["status"] == "error"
        assert got["message"] == "interrupted: the server restarted while this job was running"
        assert "step 0" in got["logs"]  # the log written after the last copy is kept

        stopped, pid = start_long_job(http, tmp_path / "beat2.jsonl", eventually)
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM, not a crash
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert not pid_alive(pid)
        run_server(unused_port, data, db)
        wait_http_ready(http, eventually)
        got = http.get(f"{url}{stopped}").json()
        assert got["status"] == "error"
        assert got["message"] == "interrupted: the server shut down while this job was running"
        assert http.get(f"{url}{crashed}").json()["status"] == "error"


@pytest.mark.postgres
def test_jobs_on_postgresql(make_server, postgres_url: str, eventually, tmp_path: Path):
    srv = make_server(model="toy", database_url=postgres_url)
    try:
        job = srv.http.post(TRAIN.format("toy"), json={"steps": 3, "step_seconds": 0.01}).json()
        done = poll_until_final(srv.http, "toy", job["uuid"], eventually)
        assert done["status"] == "done" and done["result"]["output"] == {
            "steps": 3,
            "loss": 0.5 / 3,
        }
        beat = tmp_path / "beat.jsonl"
        job = srv.http.post(
            TRAIN.format("toy"), json={"steps": 1000, "step_seconds": 0.05, "heartbeat": str(beat)}
        ).json()
        eventually(lambda: beat.exists())
        assert (
            srv.http.delete(f"{TRAIN.format('toy')}{job['uuid']}").json()["status"] == "cancelled"
        )
        statuses = sorted(j["status"] for j in srv.http.get(TRAIN.format("toy")).json())
        assert statuses == ["cancelled", "done"]
        assert (
            'hdc_serving_training_jobs{model="toy",status="done"} 1.0'
            in srv.http.get("/metrics").text
        )
    finally:
        srv.stop()


def test_jobs_of_a_vanished_instance_are_failed_after_their_heartbeat_stops(tmp_path: Path):
    """Replicas share the database: a job whose server stopped reporting is not left running."""
    import datetime as dt

    from hdc_common.db import create_engine, session_factory
    from hdc_serving.jobs.manager import JobManager
    from hdc_serving.jobs.store import TrainingJob, utcnow
    from hdc_serving.runtime import migrate

    engine = create_engine(f"sqlite:///{tmp_path}/jobs.db")
    migrate(engine)
    sessions = session_factory(engine)
    old = utcnow() - dt.timedelta(seconds=120)
    with sessions.begin() as s:
        for uuid, owner, beat in [
            ("a" * 32, "gone", old),
            ("b" * 32, "alive", utcnow()),
            ("c" * 32, "me", old),
        ]:
            s.add(
                TrainingJob(
                    uuid=uuid,
                    model="toy",
                    status="running",
                    args={},
                    created_at=old,
                    logs="",
                    owner=owner,
                    heartbeat_at=beat,
                )
            )
    manager = JobManager(sessions, tmp_path / "jobs", owner="me", env={}, heartbeat_stale_s=30)
    assert manager.sweep() == 1
    assert manager.recover() == 1
    with sessions() as s:
        status = {j.uuid[0]: (j.status, j.message) for j in s.query(TrainingJob)}
    assert status["a"] == ("error", "interrupted: its server stopped reporting for over 30 s")
    assert status["b"] == ("running", None)
    assert status["c"] == ("error", "interrupted: the server restarted while this job was running")
    engine.dispose()
