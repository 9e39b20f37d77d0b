"""Ext-auth mode: a real nginx (Debian's) in front asks the gateway's /auth about every
request with `auth_request`, forwards the identity header it gets back, and proxies to
the service itself. The service still trusts only the gateway-signed header."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.keycloak

NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /_hdc_auth {{
      internal;
      proxy_pass {gateway}/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location / {{
      auth_request /_hdc_auth;
      auth_request_set $hdc_identity $upstream_http_x_hdc_identity;
      # Replaces whatever X-HDC-Identity the client sent; empty (not sent) when anonymous.
      proxy_set_header X-HDC-Identity $hdc_identity;
      proxy_pass {backend};
    }}
  }}
}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(kc_gateway: Any, backend: Any, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.fail("nginx is not installed: run tests/infra/nginx.sh")
    port = _port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(tmp=tmp_path, port=port, gateway=kc_gateway.url, backend=backend.url)
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                proc.kill()
                pytest.fail(f"nginx did not start: {err}")
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_auth_request_forwards_identity(nginx: str, keycloak: Any) -> None:
    token = keycloak.token("alice")
    resp = httpx.get(f"{nginx}/svc/models", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["groups"] == ["ml-team"] and body["path"] == "/svc/models"


def test_nginx_refuses_without_valid_token(nginx: str, keycloak: Any) -> None:
    missing = httpx.get(f"{nginx}/svc/models")
    assert missing.status_code == 401
    assert 'error="invalid_request"' in missing.headers["www-authenticate"]
    head, _, sig = keycloak.token("bob").split(".")
    tampered = f"{head}.eyJzdWIiOiJyb290In0.{sig}"
    bad = httpx.get(f"{nginx}/svc/models", headers={"Authorization": f"Bearer {tampered}"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_nginx_applies_route_policy(nginx: str, keycloak: Any) -> None:
    bob = {"Authorization": f"Bearer {keycloak.token('bob')}"}
    assert httpx.get(f"{nginx}/team/models", headers=bob).status_code == 403
    alice = {"Authorization": f"Bearer {keycloak.token('alice')}"}
    assert httpx.get(f"{nginx}/team/models", headers=alice).status_code == 200


def test_nginx_does_not_pass_a_client_identity_header(nginx: str) -> None:
    # Anonymous route: /auth says yes without identity, nginx clears the client's header,
    # and the service, seeing no identity, refuses.
    resp = httpx.get(f"{nginx}/public/whoami", headers={"X-HDC-Identity": "forged.header.value"})
    assert resp.status_code == 401
    assert "gateway" in resp.json()["detail"]
