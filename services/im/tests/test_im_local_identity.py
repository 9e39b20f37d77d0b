"""The local driver hands the gateway's identity key to the model processes it starts, so
they refuse calls that skip the gateway; a template's environment cannot take it away."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hdc_im.drivers.base import VmRequest
from hdc_im.drivers.local import ENV_IDENTITY_KEY, LocalDriver
from hdc_im.topology import CONTAINER_KIND, NodeSpec

# Writes what it was given, then idles like a server until it is stopped.
CHILD = """
import os, sys, time
with open(sys.argv[1], "w") as f:
    f.write(os.environ.get("HDC_SERVING_IDENTITY_PUBLIC_KEY", "<unset>"))
time.sleep(60)
"""


def _run(tmp_path: Path, key: str, environment: dict[str, str]) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    seen = tmp_path / f"seen-{len(environment)}-{len(key)}.txt"
    driver = LocalDriver(
        tmp_path / "state", [sys.executable, str(script), str(seen)], identity_public_key=key
    )
    node = NodeSpec(
        name="model_service", kind=CONTAINER_KIND, environment=environment, model="digits"
    )
    status = driver.create_vm(VmRequest("infra-1", 0, f"tok{len(environment)}{len(key)}", node))
    try:
        deadline = time.monotonic() + 20
        while not seen.exists() or not seen.read_text():
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        return seen.read_text()
    finally:
        driver.destroy_vm(status.provider_id)


def test_model_process_gets_the_ims_identity_key(tmp_path: Path) -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAtest\n-----END PUBLIC KEY-----\n"
    assert _run(tmp_path, pem, {}) == pem
    # The deployment's own environment does not switch the check off.
    assert _run(tmp_path, pem, {ENV_IDENTITY_KEY: ""}) == pem
