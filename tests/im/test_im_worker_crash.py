"""A worker killed (SIGKILL) in the middle of provisioning 5 VMs on EC2 (moto): after a restart
the infrastructure converges and moto holds exactly the VMs the database knows."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

_spec = importlib.util.spec_from_file_location("im_fx", Path(__file__).with_name("conftest.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    worker:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: 5}}
        os: {properties: {image: IMAGE}}
"""


def _auth(moto_url: str) -> str:
    return (
        "type = InfrastructureManager; username = dave; password = pw\\n"
        f"id = aws; type = EC2; username = testing; password = testing; host = {moto_url}"
    )


def _start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hdc_im", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HDC_HOME": str(config.parent)},
    )


@pytest.mark.postgres
def test_killed_worker_resumes_without_orphans(
    tmp_path: Path, postgres_url: str, moto_url: str
) -> None:
    port = fx._free_port()
    config = tmp_path / "im.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http_port": port,
                "database_url": postgres_url,
                "bus_url": "memory://",
                "data_dir": str(tmp_path / "data"),
                "workers": 2,
                "job_lease_s": 2.0,
                "job_poll_s": 0.2,
                "api_min_interval_s": 0.7,
                "reconcile_interval_s": 0,
            }
        )
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": _auth(moto_url)}
    log = tmp_path / "im.log"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    proc = _start(config, log)
    try:
        fx.wait_until(healthy, 60, 0.2)
        tosca = TOSCA.replace("IMAGE", fx.moto_image(moto_url))
        r = httpx.post(
            f"{base}/infrastructures?async=1",
            content=tosca,
            headers={**headers, "Content-Type": "text/yaml"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        inf_id = r.headers["InfID"]
        fx.wait_until(lambda: len(fx.live_instances(moto_url, inf_id)) >= 2, 60, 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = fx.live_instances(moto_url, inf_id)
        assert 2 <= len(before) < 5, "the kill must land in the middle of provisioning"

        proc = _start(config, log)
        fx.wait_until(healthy, 60, 0.2)

        def configured() -> bool:
            r = httpx.get(f"{base}/infrastructures/{inf_id}/state", headers=headers, timeout=10)
            return r.status_code == 200 and r.json()["state"]["state"] == "configured"

        fx.wait_until(configured, 90, 0.3)
        on_cloud = fx.live_instances(moto_url, inf_id)
        engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as c:
            known = {
                row[0]
                for row in c.execute(
                    sa.text(
                        "SELECT provider_id FROM im_vms WHERE infrastructure_id = :i "
                        "AND state != 'deleted'"
                    ),
                    {"i": inf_id},
                )
            }
        engine.dispose()
        assert len(on_cloud) == 5
        assert set(on_cloud) == known
        assert set(before) <= known  # the VMs made before the kill were adopted, not remade

        r = httpx.delete(f"{base}/infrastructures/{inf_id}", headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert fx.live_instances(moto_url, inf_id) == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
