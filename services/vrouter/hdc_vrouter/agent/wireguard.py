"""The site side of a tunnel: a wireguard-go interface configured with `wg`, `ip` and `nft`.

Everything here acts on the network namespace the agent runs in. wireguard-go's control
socket lives in /var/run/wireguard (a path, shared across namespaces), so interface names
must be unique on the machine, not just in the namespace.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
IFNAME_MAX = 15


class CommandError(RuntimeError):
    pass


def run(*args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class PeerStats:
    public_key: str
    endpoint: str | None
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "latest_handshake": self.latest_handshake,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
        }


def render_conf(private_key: str, config: dict[str, Any]) -> str:
    """The `wg setconf` dialect (not wg-quick's: addresses and routes are ours to apply)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {config['listen_port']}"]
    for peer in config["peers"]:
        lines += ["", "[Peer]", f"PublicKey = {peer['public_key']}"]
        if peer["allowed_ips"]:
            lines.append(f"AllowedIPs = {', '.join(peer['allowed_ips'])}")
        if peer.get("endpoint"):
            lines.append(f"Endpoint = {peer['endpoint']}")
        if peer.get("persistent_keepalive"):
            lines.append(f"PersistentKeepalive = {peer['persistent_keepalive']}")
    return "\n".join(lines) + "\n"


class WireGuardInterface:
    def __init__(self, name: str, state_dir: Path) -> None:
        if not 0 < len(name) <= IFNAME_MAX or "/" in name or " " in name:
            raise ValueError(
                f"interface name {name!r} must be 1-{IFNAME_MAX} characters without / or spaces"
            )
        self.name = name
        self.state_dir = state_dir
        self._daemon: subprocess.Popen[bytes] | None = None

    @property
    def nft_table(self) -> str:
        return f"hdcvr_{self.name}".replace("-", "_")

    def exists(self) -> bool:
        return subprocess.run(["wg", "show", self.name], capture_output=True).returncode == 0

    def up(self) -> None:
        """Start wireguard-go for this interface unless it already runs (agent restart)."""
        if self.exists():
            return
        # A link left without its daemon (crash) cannot be configured: start from scratch.
        run("ip", "link", "del", self.name, check=False)
        log_file = open(self.state_dir / "wireguard-go.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        self._daemon = subprocess.Popen(
            ["wireguard-go", "-f", self.name], stdout=log_file, stderr=log_file, env=env
        )
        log_file.close()
        deadline = time.monotonic() + 15
        while not self.exists():
            if self._daemon.poll() is not None:
                raise CommandError(
                    f"wireguard-go exited with {self._daemon.returncode}; see {self.state_dir / 'wireguard-go.log'}"
                )
            if time.monotonic() > deadline:
                raise CommandError(f"wireguard-go did not create {self.name} within 15 s")
            time.sleep(0.05)

    def apply(self, private_key: str, config: dict[str, Any]) -> None:
        conf = self.state_dir / "wg.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(render_conf(private_key, config))
        # syncconf keeps the sessions of unchanged peers: a config change does not drop them.
        run("wg", "syncconf", self.name, str(conf))
        run("ip", "address", "replace", config["address"], "dev", self.name)
        run("ip", "link", "set", self.name, "up")
        self._sync_routes(config["routes"])
        if config.get("forwarding"):
            self._enable_forwarding(config["address"])
        self._sync_masquerade(bool(config.get("masquerade")))

    def _sync_routes(self, wanted: list[str]) -> None:
        current = json.loads(run("ip", "-j", "route", "show", "dev", self.name) or "[]")
        current += json.loads(run("ip", "-j", "-6", "route", "show", "dev", self.name) or "[]")
        for route in current:
            dst = route.get("dst")
            if route.get("protocol") == "kernel" or dst is None or dst in wanted:
                continue
            run("ip", "route", "del", dst, "dev", self.name, check=False)
        for dst in wanted:
            run("ip", "route", "replace", dst, "dev", self.name)

    def _enable_forwarding(self, address: str) -> None:
        knob = (
            "/proc/sys/net/ipv6/conf/all/forwarding"
            if ":" in address
            else "/proc/sys/net/ipv4/ip_forward"
        )
        with open(knob, "w") as fh:
            fh.write("1")

    def _sync_masquerade(self, wanted: bool) -> None:
        """Traffic from the tunnel leaves into the LAN as the router's own address, so hosts
        that do not route the overlay back through this router can still answer."""
        table = self.nft_table
        if not wanted:
            run("nft", "delete", "table", "inet", table, check=False)
            return
        # Declaring, deleting and recreating in one batch makes the change atomic and idempotent.
        rules = (
            f"table inet {table}\n"
            f"delete table inet {table}\n"
            f"table inet {table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    iifname "{self.name}" oifname != "{self.name}" masquerade\n'
            "  }\n"
            "}\n"
        )
        run("nft", "-f", "-", input=rules)

    def stats(self) -> list[PeerStats]:
        lines = run("wg", "show", self.name, "dump").strip().splitlines()
        peers = []
        for line in lines[1:]:  # the first line describes the interface itself
            fields = line.split("\t")
            if len(fields) < 8:
                continue
            peers.append(
                PeerStats(
                    public_key=fields[0],
                    endpoint=None if fields[2] == "(none)" else fields[2],
                    latest_handshake=int(fields[4]),
                    rx_bytes=int(fields[5]),
                    tx_bytes=int(fields[6]),
                )
            )
        return peers

    def public_key(self) -> str | None:
        out = run("wg", "show", self.name, "public-key", check=False).strip()
        return out or None

    def down(self) -> None:
        run("nft", "delete", "table", "inet", self.nft_table, check=False)
        run("ip", "link", "del", self.name, check=False)
        if self._daemon is not None:
            try:
                self._daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._daemon.terminate()
                self._daemon.wait(timeout=5)
            self._daemon = None
        (self.state_dir / "wg.conf").unlink(missing_ok=True)
