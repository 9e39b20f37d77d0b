"""An embedded hdc (`hdc up` in a fresh HDC_HOME) per test module; ports are the defaults,
so only one platform runs at a time (the distributed test starts its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.e2e.flow
    sys.path.insert(0, str(ROOT))

HDC = str(Path(sys.executable).with_name("hdc"))
REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "tosca-templates" / "templates"


@dataclass
class Platform:
    home: Path
    env: dict[str, str]

    def hdc(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [HDC, *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def hdc_json(self, *args: str, timeout: float = 120) -> dict:
        out = self.hdc(*args, "--json", timeout=timeout)
        assert out.returncode == 0, f"hdc {' '.join(args)}: {out.stderr}{out.stdout}"
        return json.loads(out.stdout)

    def log(self) -> str:
        try:
            return (self.home / "hdc.log").read_text()[-4000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Platform:
    home = tmp_path_factory.mktemp("hdc-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")}
    env["HDC_HOME"] = str(home)
    env["COLUMNS"] = "200"  # tables unwrapped in captured output
    p = Platform(home, env)
    up = p.hdc("up")
    assert up.returncode == 0, up.stderr + up.stdout + p.log()
    try:
        # The local site is registered by the embedded info agent right after start.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sites = p.hdc("site", "list", "--json")
            if sites.returncode == 0 and json.loads(sites.stdout).get("sites"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the local site was not registered: " + p.log())
        yield p
    finally:
        down = p.hdc("down")
        assert down.returncode == 0, down.stderr
