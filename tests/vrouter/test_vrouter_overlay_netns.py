"""Real WireGuard tunnels between network namespaces: a hub and two sites, each site with a
private LAN and a host behind its router. The controller is the real service (REST, SQLite)
and every router runs the real `hdc-vrouter-agent` inside its namespace.

Site A routes its LAN normally (its host's gateway is the router); site B masquerades, so its
host has no route back into the overlay at all. Needs root, wireguard-go, wg, ip, nft
(tests/infra/wireguard.sh installs them).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair
from hdc_vrouter.netlab import ControllerThread, Lab, free_port, missing_tools
from hdc_vrouter.service import build
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.wgkeys import generate_keypair as generate_wg_keypair

pytestmark = pytest.mark.netns


def test_lab_tools_are_installed():
    # tests/infra/wireguard.sh installs them; their absence is a setup failure, not a skip.
    assert not missing_tools()


ECHO_SERVER = """
import socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Relays stdin lines over one long-lived TCP connection and prints each echo.
LINE_CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
reader = conn.makefile("r")
print("connected", flush=True)
for line in sys.stdin:
    conn.sendall(line.encode())
    print(reader.readline().strip(), flush=True)
"""


@dataclass
class Overlay:
    lab: Lab
    api: httpx.Client
    overlay: dict
    sites: dict[str, dict]
    agents: dict[str, subprocess.Popen]
    tmp: Path
    controller_url: str

    def health(self) -> dict:
        return self.api.get(f"/overlays/{self.overlay['id']}/health").raise_for_status().json()

    def hub_peer_keys(self) -> set[str]:
        out = self.lab.run(
            "hub", "wg", "show", self.lab.wg_ifname("hub"), "peers", check=True
        ).stdout
        return set(out.split())


def wait_for(predicate, deadline_s: float = 30, every_s: float = 0.2) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def read_line(proc: subprocess.Popen, deadline_s: float) -> str | None:
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    return proc.stdout.readline().strip() if ready else None


@pytest.fixture(scope="module", params=["hub-and-spoke", "full-mesh"])
def overlay(request, tmp_path_factory) -> Iterator[Overlay]:
    topology = request.param
    tmp = tmp_path_factory.mktemp(f"vrouter-{topology}")
    lab = Lab()
    try:
        lab.create(nat_site_b=True)
        host = lab.wan_ip("ctl")
        port = free_port(host)
        private, public = generate_keypair()
        settings = VRouterSettings(
            data_dir=tmp,
            http_host=host,
            http_port=port,
            identity_public_key=public,
            heartbeat_timeout_s=10,
        )
        with ControllerThread(build(settings), host, port) as controller:
            identity = InternalTokenSigner(private, ttl_s=3600).sign(
                Identity(subject="tester", issuer="https://idp")
            )
            api = httpx.Client(
                base_url=controller.url + "/v1", headers={"X-HDC-Identity": identity}, timeout=10
            )
            overlay = (
                api.post(
                    "/overlays",
                    json={
                        "name": f"netns-{topology}",
                        "cidr": "10.200.0.0/16",
                        "topology": topology,
                    },
                )
                .raise_for_status()
                .json()
            )
            sites = {}
            for name, nat in (("a", False), ("b", True)):
                sites[name] = (
                    api.post(
                        f"/overlays/{overlay['id']}/sites",
                        json={
                            "name": f"site-{name}",
                            "private_ranges": [lab.lan_range(name)],
                            "nat": nat,
                        },
                    )
                    .raise_for_status()
                    .json()
                )
            agents = {
                "hub": lab.spawn_agent(
                    "hub",
                    controller.url,
                    overlay["hub"]["enrolment_token"],
                    tmp / "hub",
                    endpoint=f"{lab.wan_ip('hub')}:51820",
                )
            }
            for name in ("a", "b"):
                # In a full mesh sites reach each other directly, so they announce their endpoint.
                endpoint = f"{lab.wan_ip('r' + name)}:51820" if topology == "full-mesh" else None
                agents[name] = lab.spawn_agent(
                    "r" + name,
                    controller.url,
                    sites[name]["enrolment_token"],
                    tmp / name,
                    endpoint=endpoint,
                )
            yield Overlay(lab, api, overlay, sites, agents, tmp, controller.url)
            api.close()
    finally:
        lab.destroy()
        for log in sorted(tmp.glob("*/agent.log")):
            # Shown by pytest only when a test failed: what each agent did.
            print(f"--- {log}\n{log.read_text()[-4000:]}", file=sys.stderr)


def test_agents_enrol_and_heartbeats_mark_tunnels_up(overlay):
    def all_up() -> bool:
        health = overlay.health()
        return health["tunnels_total"] > 0 and health["tunnels_up"] == health["tunnels_total"]

    assert wait_for(all_up, 40), overlay.health()
    health = overlay.health()
    assert {s["name"]: s["status"] for s in health["sites"]} == {
        "hub": "online",
        "site-a": "online",
        "site-b": "online",
    }
    expected = 4 if overlay.overlay["topology"] == "hub-and-spoke" else 6
    assert health["tunnels_total"] == expected
    for site in health["sites"]:
        for tunnel in site["tunnels"]:
            assert tunnel["latest_handshake"] is not None and tunnel["rx_bytes"] > 0


def test_agent_with_a_replayed_token_is_refused_with_the_reason(overlay):
    lab = overlay.lab
    state = overlay.tmp / "replay"
    token_file = overlay.tmp / "replayed-token"
    token_file.write_text(overlay.sites["a"]["enrolment_token"])
    proc = lab.run(
        "ra",
        sys.executable,
        "-m",
        "hdc_vrouter.agent",
        "--controller",
        overlay.controller_url,
        "--token-file",
        str(token_file),
        "--state-dir",
        str(state),
        "--interface",
        lab.wg_ifname("rx"),
    )
    assert proc.returncode == 2
    assert "already used" in proc.stderr
    assert not (state / "enrolment.json").exists()
    assert lab.run("ra", "ip", "link", "show", lab.wg_ifname("rx")).returncode != 0


def test_host_in_site_a_pings_and_talks_tcp_to_host_in_site_b(overlay):
    lab = overlay.lab
    target = lab.host_ip("b")
    assert lab.wait_ping("ha", target, 30), "no ping from site A's host to site B's host"
    script = overlay.tmp / "echo_server.py"
    script.write_text(ECHO_SERVER)
    server = lab.spawn(
        "hb", [sys.executable, str(script), target, "7000"], stdout=subprocess.PIPE, text=True
    )
    assert read_line(server, 10) == "listening"
    client = lab.run(
        "ha",
        sys.executable,
        "-c",
        "import socket,sys; c=socket.create_connection((sys.argv[1], 7000), timeout=10); "
        "c.sendall(b'x' * 200000); c.shutdown(socket.SHUT_WR); n=0\n"
        "while d := c.recv(65536): n += len(d)\nprint(n)",
        target,
        check=True,
    )
    assert client.stdout.strip() == "200000"
    if overlay.overlay["topology"] == "full-mesh":
        # Site to site traffic went straight between the routers, not through the hub.
        dump = lab.run(
            "ra", "wg", "show", lab.wg_ifname("ra"), "dump", check=True
        ).stdout.splitlines()[1:]
        peer_b = [
            line.split("\t")
            for line in dump
            if line.split("\t")[2].startswith(lab.wan_ip("rb") + ":")
        ]
        assert peer_b and int(peer_b[0][5]) > 200000  # rx bytes from site B's router


def test_key_rotation_keeps_the_overlay_up(overlay):
    lab = overlay.lab
    target = lab.host_ip("b")
    site_a = overlay.sites["a"]
    old_key = overlay.api.get(f"/overlays/{overlay.overlay['id']}/sites/{site_a['id']}").json()[
        "public_key"
    ]
    assert old_key in overlay.hub_peer_keys()

    script = overlay.tmp / "line_client.py"
    script.write_text(LINE_CLIENT)
    client = lab.spawn(
        "ha",
        [sys.executable, str(script), target, "7000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(client, 15) == "connected"
        client.stdin.write("before\n")
        client.stdin.flush()
        assert read_line(client, 15) == "before"

        r = overlay.api.post(f"/overlays/{overlay.overlay['id']}/sites/{site_a['id']}/rotate-key")
        assert r.status_code == 202

        def rotated() -> bool:
            site = overlay.api.get(f"/overlays/{overlay.overlay['id']}/sites/{site_a['id']}").json()
            return site["public_key"] != old_key and site["public_key"] in overlay.hub_peer_keys()

        assert wait_for(rotated, 30)
        assert old_key not in overlay.hub_peer_keys()
        new_key = lab.run(
            "ra", "wg", "show", lab.wg_ifname("ra"), "public-key", check=True
        ).stdout.strip()
        assert new_key != old_key
        # The TCP connection opened before the rotation carries data after it.
        client.stdin.write("after\n")
        client.stdin.flush()
        assert read_line(client, 30) == "after"
        assert lab.wait_ping("ha", target, 15)
    finally:
        lab.stop_process(client)


def test_restarted_agent_resumes_and_repairs_a_key_mismatch(overlay):
    """An agent that crashed between registering a new key and saving it comes back with the
    old private key: on restart it notices the controller holds another key and re-registers."""
    lab = overlay.lab
    target = lab.host_ip("b")
    state = overlay.tmp / "a"
    assert lab.stop_process(overlay.agents["a"]) == 0
    assert lab.run("ra", "ip", "link", "show", lab.wg_ifname("ra")).returncode != 0
    assert not lab.ping("ha", target)

    secret = json.loads((state / "enrolment.json").read_text())["agent_secret"]
    stray = generate_wg_keypair()[1]
    r = overlay.api.put(
        "/agent/key", json={"public_key": stray}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200

    overlay.agents["a"] = lab.spawn_agent("ra", overlay.controller_url, None, state)
    assert lab.wait_ping("ha", target, 30)
    site = overlay.api.get(
        f"/overlays/{overlay.overlay['id']}/sites/{overlay.sites['a']['id']}"
    ).json()
    local = lab.run(
        "ra", "wg", "show", lab.wg_ifname("ra"), "public-key", check=True
    ).stdout.strip()
    assert site["public_key"] == local != stray


def test_removed_site_loses_connectivity(overlay):
    lab = overlay.lab
    target = lab.host_ip("b")
    assert lab.wait_ping("ha", target, 15)
    site_b = overlay.sites["b"]
    r = overlay.api.delete(f"/overlays/{overlay.overlay['id']}/sites/{site_b['id']}")
    assert r.status_code == 204

    # Site B's agent learns it was removed, takes its tunnel down and exits with code 3.
    agent_b = overlay.agents["b"]
    assert wait_for(lambda: agent_b.poll() is not None, 30)
    assert agent_b.returncode == 3
    assert lab.run("rb", "ip", "link", "show", lab.wg_ifname("rb")).returncode != 0
    assert wait_for(lambda: not lab.ping("ha", target), 30)
    assert not lab.ping("ha", target, count=3)
    names = [s["name"] for s in overlay.health()["sites"]]
    assert names == ["hub", "site-a"]
    # The rest of the overlay is unaffected: site A still reaches the hub.
    assert lab.wait_ping("ha", "10.200.0.1", 15)
