"""The Helm chart renders, lints, and its schema refuses bad values."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "hdc"
HELM = Path(os.environ.get("HDC_CACHE", Path.home() / ".cache" / "hdc")) / "bin" / "helm"


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def test_lint_and_render_every_enabled_service():
    lint = helm("lint", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = helm("template", "hdc", str(CHART))
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    enabled = {n for n, s in values["services"].items() if s["enabled"]}
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/name"]: d
        for d in docs
        if d["kind"] == "Deployment"
    }
    services = {
        d["metadata"]["labels"]["app.kubernetes.io/name"] for d in docs if d["kind"] == "Service"
    }
    assert set(deployments) == enabled == services
    for name, dep in deployments.items():
        service = values["services"][name].get("service", name)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [f"hdc-{service}"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"] for e in container["env"]}
        assert f"HDC_{service.upper()}_BUS_URL" in env
        # only the services that sign identities get the private key
        signs = f"HDC_{service.upper()}_IDENTITY_PRIVATE_KEY" in env
        assert signs == (service in ("gateway", "orchestrator")), name
        # credentials come from secrets, never inline values
        for e in container["env"]:
            if e["name"].endswith(("_DATABASE_URL", "_BUS_URL")):
                assert "secretKeyRef" in e["valueFrom"]


def test_schema_refuses_bad_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  ranker: {enabled: true, http: 8104, replicas: -1}\n")
    out = helm("template", "hdc", str(CHART), "-f", str(bad))
    assert out.returncode != 0 and "replicas" in out.stderr
    bad.write_text("unknownKnob: 1\n")
    out = helm("template", "hdc", str(CHART), "-f", str(bad))
    assert out.returncode != 0 and "unknownKnob" in out.stderr


def test_disabling_a_service_removes_it(tmp_path):
    vals = tmp_path / "v.yaml"
    vals.write_text("services:\n  vrouter: {enabled: false, http: 8105}\n")
    out = helm("template", "hdc", str(CHART), "-f", str(vals))
    assert out.returncode == 0, out.stderr
    assert "hdc-vrouter" not in out.stdout and "hdc-ranker" in out.stdout


def test_orchestrator_api_and_workers_run_as_deployments_of_their_own():
    out = helm("template", "hdc", str(CHART))
    assert out.returncode == 0, out.stderr
    containers = {
        d["metadata"]["labels"]["app.kubernetes.io/name"]: d["spec"]["template"]["spec"][
            "containers"
        ][0]
        for d in yaml.safe_load_all(out.stdout)
        if d and d["kind"] == "Deployment"
    }
    for name, role in (("orchestrator", "api"), ("orchestrator-workers", "workers")):
        c = containers[name]
        assert c["command"] == ["hdc-orchestrator"]
        assert c["image"].split("/")[-1].startswith("hdc-orchestrator:")
        env = {e["name"]: e for e in c["env"]}
        assert env["HDC_ORCHESTRATOR_ROLE"]["value"] == role
        # One database for both: the workers read the orchestrator's own secret key.
        ref = env["HDC_ORCHESTRATOR_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "orchestrator-database-url"


def test_settings_become_the_services_variables(tmp_path):
    vals = tmp_path / "v.yaml"
    vals.write_text(
        "services:\n  ranker: {enabled: true, http: 8104, grpc: 9104, database: true,\n"
        "           settings: {malloc_retain_mb: 64, max_age_s: 1800.5}}\n"
    )
    out = helm("template", "hdc", str(CHART), "-f", str(vals))
    assert out.returncode == 0, out.stderr
    ranker = next(
        d
        for d in yaml.safe_load_all(out.stdout)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "hdc-ranker"
    )
    env = {
        e["name"]: e.get("value")
        for e in ranker["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HDC_RANKER_MALLOC_RETAIN_MB"] == "64"
    assert env["HDC_RANKER_MAX_AGE_S"] == "1800.5"
    for bad in ("settings: {Bad-Key: 1}", "settings: {ok: [1, 2]}", "service: nosuch"):
        vals.write_text(f"services:\n  ranker: {{enabled: true, http: 8104, {bad}}}\n")
        out = helm("template", "hdc", str(CHART), "-f", str(vals))
        assert out.returncode != 0, bad
