"""The cloud-init fragment that turns a fresh VM into an enrolled vrouter hub or site router.

The orchestrator / infrastructure manager calls `cloud_init(...)` with the controller's URL
and the one-time token returned when the site (or the overlay's hub) was created, and puts
the result in the router VM's user data. The token lands in a root-only file the agent
deletes after enrolling; nothing else secret is in the user data.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlparse

import yaml
from hdc_common.errors import Problem

from hdc_vrouter.agent.wireguard import IFNAME_MAX
from hdc_vrouter.validation import validate_endpoint

STATE_DIR = "/var/lib/hdc-vrouter"
TOKEN_FILE = "/etc/hdc-vrouter/enrolment-token"
CA_FILE = "/etc/hdc-vrouter/controller-ca.pem"
VENV = "/opt/hdc-vrouter"
UNIT = "hdc-vrouter-agent.service"
# Debian/Ubuntu package names; wireguard-go covers kernels without the WireGuard module.
PACKAGES = ["wireguard-tools", "wireguard-go", "iproute2", "nftables", "python3-venv"]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the unit file) as literal blocks, so the user data stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def agent_command(
    controller_url: str,
    *,
    interface: str = "hdcvr0",
    endpoint: str | None = None,
    interval_s: float = 10.0,
    ca_file: str | None = None,
    python: str = f"{VENV}/bin/python",
) -> list[str]:
    """The agent's command line, exactly as the systemd unit runs it."""
    cmd = [
        python,
        "-m",
        "hdc_vrouter.agent",
        "--controller",
        controller_url,
        "--token-file",
        TOKEN_FILE,
        "--state-dir",
        STATE_DIR,
        "--interface",
        interface,
        "--interval",
        f"{interval_s:g}",
    ]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    if ca_file:
        cmd += ["--ca-file", ca_file]
    return cmd


def cloud_init(
    controller_url: str,
    token: str,
    *,
    role: str = "site",
    endpoint: str | None = None,
    interface: str = "hdcvr0",
    interval_s: float = 10.0,
    agent_requirement: str = "hdc-vrouter",
    pip_index_url: str | None = None,
    ca_cert_pem: str | None = None,
) -> str:
    """A complete `#cloud-config` document (YAML) enrolling this machine's router agent.

    `role="hub"` needs `endpoint` (the hub's public host:port): sites must know where to
    reach it. Raises ValueError on input the agent would refuse anyway, so a bad fragment
    never reaches a VM.
    """
    parsed = urlparse(controller_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"controller_url {controller_url!r} must be an http(s) URL")
    if not token or not re.fullmatch(r"[A-Za-z0-9_\-]+", token):
        raise ValueError("token must be the enrolment token returned by the controller")
    if role not in ("hub", "site"):
        raise ValueError("role must be 'hub' or 'site'")
    if role == "hub" and not endpoint:
        raise ValueError("a hub needs its public endpoint (host:port) so sites can reach it")
    if endpoint:
        try:
            validate_endpoint(endpoint)
        except Problem as exc:
            raise ValueError(exc.detail) from None
    if not re.fullmatch(rf"[A-Za-z0-9_.\-]{{1,{IFNAME_MAX}}}", interface):
        raise ValueError(f"interface must be 1-{IFNAME_MAX} letters, digits, '.', '-' or '_'")
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")

    files = [
        {"path": TOKEN_FILE, "permissions": "0600", "owner": "root:root", "content": token + "\n"},
    ]
    if ca_cert_pem:
        files.append(
            {"path": CA_FILE, "permissions": "0644", "owner": "root:root", "content": ca_cert_pem}
        )
    command = agent_command(
        controller_url,
        interface=interface,
        endpoint=endpoint,
        interval_s=interval_s,
        ca_file=CA_FILE if ca_cert_pem else None,
    )
    unit = "\n".join(
        [
            "[Unit]",
            f"Description=hdc vrouter agent ({role})",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={shlex.join(command)}",
            # Exit code 3: the controller removed this router; restarting would not help.
            "Restart=on-failure",
            "RestartPreventExitStatus=2 3",
            "RestartSec=5",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )
    files.append({"path": f"/etc/systemd/system/{UNIT}", "permissions": "0644", "content": unit})
    pip = [f"{VENV}/bin/pip", "install", "--quiet"]
    if pip_index_url:
        pip += ["--index-url", pip_index_url]
    document = {
        "package_update": True,
        "packages": PACKAGES,
        "write_files": files,
        "runcmd": [
            ["python3", "-m", "venv", VENV],
            [*pip, agent_requirement],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", UNIT],
        ],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)
