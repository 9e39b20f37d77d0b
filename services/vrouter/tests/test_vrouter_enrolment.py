"""The cloud-init fragment the orchestrator/IM puts in a router VM's user data."""

from __future__ import annotations

import shlex

import pytest
import yaml
from hdc_vrouter.agent.cli import parse_args
from hdc_vrouter.enrolment import TOKEN_FILE, UNIT, cloud_init

URL = "https://vrouter.example.org:8105"
TOKEN = "hdcvr-enrol-Zm9vYmFyYmF6_-0123456789"


def exec_start(document: dict) -> list[str]:
    unit = next(f for f in document["write_files"] if f["path"].endswith(UNIT))["content"]
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_site_fragment_installs_and_starts_an_enrolling_agent():
    text = cloud_init(URL, TOKEN, interface="hdcvr1", interval_s=5)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert {"wireguard-tools", "wireguard-go", "iproute2", "nftables"} <= set(doc["packages"])
    token_file = next(f for f in doc["write_files"] if f["path"] == TOKEN_FILE)
    assert token_file["content"].strip() == TOKEN and token_file["permissions"] == "0600"
    assert ["systemctl", "enable", "--now", UNIT] in doc["runcmd"]
    argv = exec_start(doc)
    assert argv[1:3] == ["-m", "hdc_vrouter.agent"]
    # The unit's command line is one the real agent CLI accepts, with the values we chose.
    args = parse_args(argv[3:])
    assert args.controller == URL and str(args.token_file) == TOKEN_FILE
    assert args.interface == "hdcvr1" and args.interval == 5 and args.endpoint is None
    # The token appears once, in the root-only file, never on a command line.
    assert text.count(TOKEN) == 1


def test_hub_fragment_carries_the_public_endpoint_and_ca():
    doc = yaml.safe_load(
        cloud_init(
            URL,
            TOKEN,
            role="hub",
            endpoint="203.0.113.7:51820",
            ca_cert_pem="-----BEGIN CERTIFICATE-----\nx\n",
            pip_index_url="https://pypi.example/simple",
        )
    )
    args = parse_args(exec_start(doc)[3:])
    assert (
        args.endpoint == "203.0.113.7:51820"
        and args.ca_file == "/etc/hdc-vrouter/controller-ca.pem"
    )
    assert any("--index-url" in cmd for cmd in doc["runcmd"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"controller_url": "ftp://x", "token": TOKEN}, "http(s) URL"),
        ({"controller_url": URL, "token": "bad token; rm -rf /"}, "token"),
        ({"controller_url": URL, "token": TOKEN, "role": "hub"}, "public endpoint"),
        ({"controller_url": URL, "token": TOKEN, "role": "spoke"}, "role"),
        ({"controller_url": URL, "token": TOKEN, "endpoint": "no-port"}, "host:port"),
        ({"controller_url": URL, "token": TOKEN, "interface": "x" * 16}, "interface"),
        ({"controller_url": URL, "token": TOKEN, "interval_s": 0}, "interval"),
    ],
)
def test_bad_arguments_never_produce_a_fragment(kwargs, needle):
    with pytest.raises(ValueError, match=None) as err:
        cloud_init(**kwargs)
    assert needle in str(err.value)
