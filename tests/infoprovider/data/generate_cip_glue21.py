"""Regenerates `glue21-cip-1.2.0-gpu-site.json`: REAL cloud-info-provider output with GPUs.

Not a test. Runs the unmodified cloud-info-provider release from PyPI (its own CLI,
`cloud_info_provider.core.main`, OpenStack provider and GLUE21Json formatter) against the
OpenStack protocol fake of tests/fakes/openstack.py, holding a site with a GPU flavor
(the `Accelerator:*` extra specs cloud-info-provider reads by default) and two VO projects.
The only thing not real is the network around it: GOCDB (goc.egi.eu) cannot be reached
from the build machine, so its `get_service` call is answered by a local server with the
same XML; the site endpoint is `http://` so the CA lookup needs no TLS peer.

    uv venv /tmp/cip-venv --python 3.11
    uv pip install --python /tmp/cip-venv/bin/python 'cloud-info-provider==1.2.0'
    .venv/bin/python tests/infoprovider/data/generate_cip_glue21.py /tmp/cip-venv/bin/python
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.fakes.openstack import FakeOpenStack  # noqa: E402

OUT = HERE / "glue21-cip-1.2.0-gpu-site.json"
SITE_ENDPOINT = "http://keystone.cloud.hdc-example.eu:5000/v3"
GOCDB_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<results>
  <SERVICE_ENDPOINT PRIMARY_KEY="99001G0">
    <PRIMARY_KEY>99001G0</PRIMARY_KEY>
    <HOSTNAME>keystone.cloud.hdc-example.eu</HOSTNAME>
    <SERVICE_TYPE>org.openstack.nova</SERVICE_TYPE>
    <IN_PRODUCTION>Y</IN_PRODUCTION>
    <SITENAME>HDC-EXAMPLE</SITENAME>
    <COUNTRY_CODE>IT</COUNTRY_CODE>
    <URL>{SITE_ENDPOINT}</URL>
    <ENDPOINTS/>
  </SERVICE_ENDPOINT>
</results>
"""
# cloud-info-provider's CLI with GOCDB's one URL redirected to a local server (see above).
RUNNER = """
import os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import requests
from cloud_info_provider import core
from cloud_info_provider.providers import utils

class Goc(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = open(os.environ["GOCDB_XML"], "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

server = ThreadingHTTPServer(("127.0.0.1", 0), Goc)
threading.Thread(target=server.serve_forever, daemon=True).start()
real_get = requests.get
def get(url, *args, **kwargs):
    if url.startswith("https://goc.egi.eu/gocdbpi/public/"):
        url = "http://127.0.0.1:%d/gocdbpi/public/" % server.server_address[1]
    return real_get(url, *args, **kwargs)
utils.requests.get = get
sys.exit(core.main())
"""


def main(python: str) -> None:
    with FakeOpenStack() as cloud, tempfile.TemporaryDirectory() as tmp:
        cloud.add_user("cloud-info", "s3cret")
        access = cloud.add_project(
            "vo-access",
            quota={
                "instances": {"limit": 20, "in_use": 2},
                "cores": {"limit": 80, "in_use": 10},
                "ram": {"limit": 163840, "in_use": 20480},
                "floating_ips": {"limit": 5, "in_use": 1},
            },
        )
        deep = cloud.add_project(
            "vo-deep",
            quota={
                "instances": {"limit": 10, "in_use": 1},
                "cores": {"limit": 64, "in_use": 16},
                "ram": {"limit": 262144, "in_use": 65536},
            },
        )
        cloud.add_flavor("1", "m1.small", 1, 2048, 20)
        cloud.add_flavor("2", "m1.xlarge", 8, 16384, 80)
        cloud.add_flavor(
            "10",
            "g1.v100.2",
            16,
            65536,
            160,
            {
                "Accelerator:Number": "2",
                "Accelerator:Vendor": "nvidia",
                "Accelerator:Model": "Tesla V100",
                "Accelerator:Memory": "16384",
                "pci_passthrough:alias": "V100:2",
            },
            public=False,
        )
        cloud.add_image(
            "6f3c1e0a-58a5-4d0e-9d4c-2b1b9b0f0a11",
            "EGI Ubuntu 22.04",
            os_distro="ubuntu",
            os_version="22.04",
            architecture="x86_64",
            marketplace="registry.egi.eu/egi_vm_images/ubuntu:22.04",
            APPLIANCE_ATTRIBUTES=json.dumps(
                {
                    "ad:base_mpuri": "registry.egi.eu/egi_vm_images/ubuntu:22.04",
                    "eu.egi.cloud.description": "EGI Ubuntu 22.04 image",
                }
            ),
        )
        cloud.add_image(
            "0b0a5a5e-3f3a-4c55-8f1e-8c9d2f3e4a22",
            "Ubuntu 22.04 CUDA 12.2",
            os_distro="ubuntu",
            os_version="22.04",
            architecture="x86_64",
            gpu_driver="535",
            gpu_cuda="12.2",
            gpu_cudnn="8.9",
        )
        cloud.add_image("9c1d7e7e-1a2b-4c3d-9e8f-7a6b5c4d3e33", "CentOS 7", os_distro="centos",
                        os_version="7", architecture="x86_64", status="deactivated")  # fmt: skip
        cloud.servers = [
            {"id": "s1", "name": "vm-1", "status": "ACTIVE", "tenant_id": access.id},
            {"id": "s2", "name": "vm-2", "status": "SHUTOFF", "tenant_id": access.id},
            {"id": "s3", "name": "vm-3", "status": "ACTIVE", "tenant_id": deep.id},
        ]
        site = Path(tmp) / "site.yaml"
        site.write_text(
            textwrap.dedent(
                f"""\
                gocdb: HDC-EXAMPLE
                endpoint: {SITE_ENDPOINT}
                vos:
                  - name: vo.access.egi.eu
                    auth: {{project_id: {access.id}}}
                  - name: vo.deep-hybrid-datacloud.eu
                    auth: {{project_id: {deep.id}}}
                """
            )
        )
        goc = Path(tmp) / "gocdb.xml"
        goc.write_text(GOCDB_XML)
        runner = Path(tmp) / "run_cip.py"
        runner.write_text(RUNNER)
        cmd = [python, str(runner), "--os-auth-type", "v3password",
               "--os-auth-url", cloud.auth_url, "--os-username", "cloud-info",
               "--os-password", "s3cret", "--os-user-domain-name", "Default", str(site)]  # fmt: skip
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "GOCDB_XML": str(goc)},
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"cloud-info-provider failed:\n{done.stderr}")
        doc = json.loads(done.stdout)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUT} ({', '.join(f'{k}: {len(v)}' for k, v in doc.items())})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cip-venv/bin/python")
