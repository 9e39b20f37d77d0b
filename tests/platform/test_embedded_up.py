"""`hdc up` / `hdc status` / `hdc down`: every installed service, one process, real ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from hdc_common.service import discover

HDC = str(Path(sys.executable).with_name("hdc"))


def hdc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([HDC, *args], env=env, capture_output=True, text=True, timeout=120)


def test_up_status_down(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")}
    env["HDC_HOME"] = str(tmp_path)
    installed = set(discover())

    assert hdc("status", env=env).returncode == 3  # not running yet

    up = hdc("up", env=env)
    try:
        assert up.returncode == 0, up.stderr + up.stdout + (tmp_path / "hdc.log").read_text()
        status = hdc("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["running"] is True
        assert set(doc["services"]) == installed
        for name, svc in doc["services"].items():
            if "http" in svc:
                assert svc["health"] == "healthy", (name, svc)
                assert httpx.get(svc["http"] + "/readyz", timeout=5).status_code == 200, name
        # a second `up` does not start a second platform
        again = hdc("up", env=env)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = hdc("down", env=env)
    assert down.returncode == 0, down.stderr
    assert hdc("status", env=env).returncode == 3
    assert not (tmp_path / "embedded.json").exists()
