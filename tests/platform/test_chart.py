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
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"] for e in container["env"]}
        assert f"HDC_{name.upper()}_BUS_URL" in env
        # only the services that sign identities get the private key
        signs = f"HDC_{name.upper()}_IDENTITY_PRIVATE_KEY" in env
        assert signs == (name in ("gateway", "orchestrator")), name
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
