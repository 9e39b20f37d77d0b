"""The `hdc` CLI against a running platform: each command, `--json` parsed, exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import jwt

TEMPLATES = Path(__file__).resolve().parents[2] / "tosca-templates" / "templates"

# Exit codes of hdc_cli.api
USAGE, NOT_RUNNING, NOT_FOUND, AUTH = 2, 3, 4, 5
NO_SUCH = "00000000-0000-0000-0000-000000000000"


def test_status_and_token(platform):
    doc = platform.hdc_json("status")
    assert doc["running"] is True
    assert {"gateway", "orchestrator", "im", "infoprovider"} <= set(doc["services"])
    token = platform.hdc("token")
    assert token.returncode == 0
    claims = jwt.decode(token.stdout.strip(), options={"verify_signature": False})
    assert claims["iss"] == "urn:hdc:embedded"
    login = platform.hdc("login")
    assert login.returncode == 0 and "development token" in login.stdout


def test_site_list_and_show(platform):
    sites = platform.hdc_json("site", "list")["sites"]
    local = next(s for s in sites if s["id"] == "local")
    assert local["status"] == "STATUS_UP" and local["flavor_count"] == 1
    doc = platform.hdc_json("site", "show", "local")
    assert [s["type"] for s in doc["services"]] == ["local"]
    human = platform.hdc("site", "list")
    assert human.returncode == 0 and "local" in human.stdout
    missing = platform.hdc("site", "show", "no-such-site")
    assert missing.returncode == NOT_FOUND and "no-such-site" in missing.stderr


def test_model_list_and_show(platform):
    doc = platform.hdc_json("model", "list")
    names = {m["name"] for m in doc["models"]}
    assert "digits" in names and doc["source"] in ("platform", "installed")
    entry = platform.hdc_json("model", "show", "digits")
    assert entry["training"]["trainable"] is True
    missing = platform.hdc("model", "show", "no-such-model")
    assert missing.returncode == NOT_FOUND and "digits" in missing.stderr


def test_deployment_list_and_missing(platform):
    doc = platform.hdc_json("deployment", "list")
    assert isinstance(doc["content"], list) and "page" in doc
    for cmd in (["show", NO_SUCH], ["events", NO_SUCH], ["placement", NO_SUCH]):
        out = platform.hdc("deployment", *cmd, "--json")
        assert out.returncode == NOT_FOUND, (cmd, out.stderr)
    assert platform.hdc("deployment", "log", NO_SUCH).returncode == NOT_FOUND
    assert platform.hdc("deployment", "template", NO_SUCH).returncode == NOT_FOUND
    assert platform.hdc("deployment", "delete", NO_SUCH).returncode == NOT_FOUND
    assert platform.hdc("resource", "list", NO_SUCH).returncode == NOT_FOUND
    assert platform.hdc("deployment", "reset", NO_SUCH).returncode == NOT_FOUND
    model = str(TEMPLATES / "deep-oc-model.yaml")
    assert platform.hdc("deployment", "update", NO_SUCH, model).returncode == NOT_FOUND


def test_dry_run_places_on_the_local_site(platform):
    doc = platform.hdc_json(
        "deployment", "create", str(TEMPLATES / "deep-oc-model.yaml"), "--dry-run"
    )
    text = json.dumps(doc)
    assert "local" in text


def test_bad_input_exit_codes(platform, tmp_path):
    model = str(TEMPLATES / "deep-oc-model.yaml")
    # a file that is not there, a --param that is not key=value: usage errors
    assert platform.hdc("deployment", "create", str(tmp_path / "none.yaml")).returncode == USAGE
    assert platform.hdc("deployment", "create", model, "--param", "oops").returncode == USAGE
    # inputs the template refuses: the orchestrator's 400 becomes a usage error
    bad = platform.hdc("deployment", "create", model, "--param", "num_gpus=-1")
    assert bad.returncode == USAGE and "num_gpus" in bad.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("tosca_definitions_version: tosca_simple_yaml_1_0\ntopology_template: [\n")
    assert platform.hdc("deployment", "create", str(broken)).returncode == USAGE
    # predict with nothing to send
    assert platform.hdc("model", "predict", NO_SUCH).returncode == USAGE
    # a token the gateway does not accept
    assert platform.hdc("deployment", "list", HDC_TOKEN="not-a-token").returncode == AUTH


def test_platform_not_reachable(platform):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = platform.hdc("site", "list", HDC_URL=f"http://127.0.0.1:{port}", HDC_TOKEN="x")
    assert out.returncode == NOT_RUNNING and "hdc up" in out.stderr


def test_wait_follows_the_events_stream(platform):
    """`--wait` in human mode shows each event as the deployment advances, then the result."""
    import re

    created = platform.hdc(
        "deployment",
        "create",
        str(TEMPLATES / "deep-oc-model.yaml"),
        "--param",
        "model=digits",
        "--wait",
        "--wait-timeout",
        "120",
        timeout=180,
    )
    assert created.returncode == 0, created.stderr + created.stdout
    uuid = re.search(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", created.stdout
    )
    assert uuid, created.stdout
    events = platform.hdc_json("deployment", "events", uuid.group(0))["events"]
    # every event of the stream was printed as it came, then the final document
    lines = created.stdout.splitlines()
    for event in events:
        assert any(event["kind"] in line and event["time"] in line for line in lines), event
    assert re.search(r"status\s+CREATE_COMPLETE", created.stdout), created.stdout
    deleted = platform.hdc("deployment", "delete", uuid.group(0), "--wait", timeout=180)
    assert deleted.returncode == 0, deleted.stderr
    assert "DELETE_COMPLETE" in deleted.stdout
    assert platform.hdc("deployment", "show", uuid.group(0)).returncode == NOT_FOUND
