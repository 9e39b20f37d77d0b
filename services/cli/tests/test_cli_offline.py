"""CLI pieces that need no running platform: argument parsing, error mapping, the local
site's report and token, and exit codes when hdc is not running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import httpx
import jwt
import pytest
from hdc_cli import api, embedded, local_site, models
from hdc_cli.deployments import parse_params

HDC = str(Path(sys.executable).with_name("hdc"))


def run_hdc(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")}
    return subprocess.run(
        [HDC, *args],
        env=base | {"HDC_HOME": str(home)} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_params_json_values_and_errors():
    got = parse_params(("n=2", "name=digits", "flag=true"), '{"mem_size": "1 GB"}')
    assert got == {"mem_size": "1 GB", "n": 2, "name": "digits", "flag": True}
    with pytest.raises(click.BadParameter):
        parse_params(("novalue",), None)
    with pytest.raises(click.BadParameter):
        parse_params((), "[1, 2]")


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 2), (401, 5), (403, 5), (404, 4), (409, 6), (412, 6), (422, 2), (500, 7), (502, 7)],
)
def test_http_errors_map_to_exit_codes(status, code):
    resp = httpx.Response(status, json={"code": status, "title": "x", "message": "why it failed"})
    with pytest.raises(api.CliError) as err:
        api.raise_for_status(resp)
    assert err.value.exit_code == code
    assert "why it failed" in err.value.message


def test_problem_json_detail_is_the_message():
    resp = httpx.Response(404, json={"title": "Not Found", "detail": "no site 'x'"})
    assert api.error_message(resp) == "no site 'x'"


def test_model_file_and_arg_parsing(tmp_path):
    png = tmp_path / "seven.png"
    png.write_bytes(b"\x89PNG")
    [(field, (name, data, kind))] = models._files((f"image={png}",))
    assert (field, name, data, kind) == ("image", "seven.png", b"\x89PNG", "image/png")
    with pytest.raises(click.BadParameter):
        models._files(("image",))
    with pytest.raises(click.BadParameter):
        models._files((f"image={tmp_path / 'missing.png'}",))
    assert models._form(("C=0.5",)) == {"C": "0.5"}
    with pytest.raises(click.BadParameter):
        models._form(("=1",))


def test_catalog_templates_resolve_to_the_library():
    from hdc_serving.catalog import demo_entries

    for entry in demo_entries():
        path = models.template_of(entry)
        assert path.parent.name == "templates" and path.is_file()


def test_local_site_report_is_a_valid_agent_report():
    from hdc_infoprovider.report import SiteReport

    cfg = local_site.agent_config("http://127.0.0.1:8103")
    from hdc_infoprovider.agent.builder import build_report
    from hdc_infoprovider.agent.collectors import make_collector

    report = build_report(cfg, [make_collector(c) for c in cfg.collectors])
    SiteReport.model_validate(report)
    [service] = report["services"]
    assert report["site"]["id"] == "local" and service["type"] == "local"
    assert service["flavors"][0]["cpus"] >= 1


def test_local_agent_token_verifies_with_the_embedded_jwks(tmp_path):
    from hdc_gateway.embedded_op import jwks_document

    token = local_site.agent_token(tmp_path)
    [jwk] = jwks_document(tmp_path)["keys"]
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(token, key, algorithms=["RS256"], options={"verify_aud": False})
    assert claims["client_id"] == local_site.AGENT_CLIENT_ID
    assert claims["iss"] == local_site.EMBEDDED_ISSUER


def test_embedded_env_trusts_the_local_agent_and_finds_hdc_serving(tmp_path):
    env = embedded.embedded_env(tmp_path)
    clients = json.loads(env["HDC_INFOPROVIDER_AGENT_CLIENTS"])
    assert clients == [
        {"site_id": "local", "client_id": "hdc-local-agent", "issuer": "urn:hdc:embedded"}
    ]
    command = json.loads(env["HDC_IM_LOCAL_COMMAND"])
    assert Path(command[0]).name == "hdc-serving" and Path(command[0]).is_file()
    assert "{model}" in command and "{port}" in command
    # hdc's types are among the im's type files (its own default or added by embedded_env)
    files = json.loads(env.get("HDC_IM_TOSCA_TYPES_FILES", "[]"))
    if not files:
        from hdc_common.settings import load_settings
        from hdc_im.settings import ImSettings

        files = load_settings(ImSettings).tosca_types_files
    assert any(f.endswith("hdc/hdc_types.yaml") for f in files)


def test_not_running_exit_codes(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    assert run_hdc("status", home=tmp_path).returncode == 3
    status = run_hdc("status", "--json", home=tmp_path)
    assert json.loads(status.stdout) == {"running": False}
    for args in (["site", "list"], ["model", "show", "digits"], ["deployment", "list"]):
        out = run_hdc(*args, home=tmp_path, HDC_URL=url, HDC_TOKEN="t")
        assert out.returncode == 3, (args, out.stderr)
        assert "hdc up" in out.stderr
    # no token at all for a remote gateway: say how to log in
    out = run_hdc("token", home=tmp_path, HDC_URL="http://hdc.example.org")
    assert out.returncode == 5 and "hdc login" in out.stderr
    assert run_hdc("login", home=tmp_path, HDC_URL="http://hdc.example.org").returncode == 2
