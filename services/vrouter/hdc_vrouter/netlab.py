"""A throw-away network lab for the vrouter's tests and benchmark (needs root).

Namespaces (names unique per lab, so parallel runs never meet):

    root ns ── veth ──┐
    hub  ns ── veth ──┤ wan ns (a bridge: the "internet", 198.18.<k>.0/24, RFC 2544 range)
    ra   ns ── veth ──┤
    rb   ns ── veth ──┘
    ha ns ── veth ── ra        (site A's private LAN, 172.16.1.0/24)
    hb ns ── veth ── rb        (site B's private LAN, 172.16.2.0/24)

The controller listens on the root namespace's end of the WAN (198.18.<k>.254); only that
one address is added outside the lab's own namespaces, and `destroy()` removes everything.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SITE_LANS = {"a": "172.16.1", "b": "172.16.2"}


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def missing_tools() -> list[str]:
    """What this machine lacks to run the lab (empty when it can)."""
    missing = [t for t in ("ip", "wg", "wireguard-go", "ping", "nft") if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    return missing


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    octet: int = field(default_factory=lambda: secrets.randbelow(250) + 1)
    created_ns: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    # names --------------------------------------------------------------
    def ns(self, role: str) -> str:
        return f"vr{self.tag}-{role}"

    def wg_ifname(self, role: str) -> str:
        return f"wg{self.tag}{role}"[:15]

    @property
    def wan_prefix(self) -> str:
        # 198.18.0.0/15 is reserved for benchmarking: it never collides with a real network.
        return f"198.18.{self.octet}"

    def wan_ip(self, role: str) -> str:
        return f"{self.wan_prefix}.{ {'hub': 1, 'ra': 2, 'rb': 3, 'ctl': 254}[role] }"

    @staticmethod
    def host_ip(site: str) -> str:
        return f"{SITE_LANS[site]}.10"

    @staticmethod
    def lan_range(site: str) -> str:
        return f"{SITE_LANS[site]}.0/24"

    # building -----------------------------------------------------------
    def _add_ns(self, role: str) -> str:
        name = self.ns(role)
        sh("ip", "netns", "add", name)
        self.created_ns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _veth(self, a: str, a_ns: str | None, b: str, b_ns: str | None) -> None:
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        if a_ns is None:
            self.root_links.append(a)
        else:
            sh("ip", "link", "set", a, "netns", a_ns)
        if b_ns is not None:
            sh("ip", "link", "set", b, "netns", b_ns)

    def _pick_free_octet(self) -> None:
        """Another lab running right now must not get the same WAN /24 in the root namespace."""
        used = sh("ip", "-o", "-4", "addr", "show").stdout
        while f"198.18.{self.octet}." in used:
            self.octet = secrets.randbelow(250) + 1

    def create(self, nat_site_b: bool = True) -> Lab:
        self._pick_free_octet()
        try:
            wan = self._add_ns("wan")
            sh("ip", "-n", wan, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", wan, "link", "set", "br0", "up")
            for role in ("ctl", "hub", "ra", "rb"):
                inner = f"v{self.tag}{role}"
                outer = f"w{self.tag}{role}"
                owner = None if role == "ctl" else self._add_ns(role)
                self._veth(inner, owner, outer, wan)
                sh("ip", "-n", wan, "link", "set", outer, "master", "br0")
                sh("ip", "-n", wan, "link", "set", outer, "up")
                prefix = [] if owner is None else ["-n", owner]
                sh("ip", *prefix, "addr", "add", f"{self.wan_ip(role)}/24", "dev", inner)
                sh("ip", *prefix, "link", "set", inner, "up")
            for site in ("a", "b"):
                router, host = self.ns(f"r{site}"), self._add_ns(f"h{site}")
                lan_r, lan_h = f"l{self.tag}r{site}", f"l{self.tag}h{site}"
                self._veth(lan_r, router, lan_h, host)
                sh("ip", "-n", router, "addr", "add", f"{SITE_LANS[site]}.1/24", "dev", lan_r)
                sh("ip", "-n", router, "link", "set", lan_r, "up")
                sh("ip", "-n", host, "addr", "add", f"{self.host_ip(site)}/24", "dev", lan_h)
                sh("ip", "-n", host, "link", "set", lan_h, "up")
                # Site B's hosts do not route the overlay back through their router when the
                # router masquerades: only site A's hosts get it as default gateway then.
                if site == "a" or not nat_site_b:
                    sh("ip", "-n", host, "route", "add", "default", "via", f"{SITE_LANS[site]}.1")
        except BaseException:
            self.destroy()
            raise
        return self

    def connect_hosts_directly(self) -> tuple[str, str]:
        """A veth straight from host A to host B (the benchmark's no-overlay baseline)."""
        a, b = f"d{self.tag}a", f"d{self.tag}b"
        self._veth(a, self.ns("ha"), b, self.ns("hb"))
        sh("ip", "-n", self.ns("ha"), "addr", "add", "10.255.0.1/30", "dev", a)
        sh("ip", "-n", self.ns("hb"), "addr", "add", "10.255.0.2/30", "dev", b)
        sh("ip", "-n", self.ns("ha"), "link", "set", a, "up")
        sh("ip", "-n", self.ns("hb"), "link", "set", b, "up")
        return "10.255.0.1", "10.255.0.2"

    # running things inside ------------------------------------------------
    def run(
        self, role: str, *cmd: str, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns(role), *cmd, check=check, timeout=timeout)

    def spawn(
        self, role: str, cmd: Sequence[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *cmd],
            stdout=kw.pop("stdout", out),
            stderr=out,
            **kw,
        )
        if log:
            out.close()
        self.processes.append(proc)
        return proc

    def spawn_agent(
        self,
        role: str,
        controller: str,
        token: str | None,
        state: Path,
        endpoint: str | None = None,
        interval: float = 0.5,
    ) -> subprocess.Popen[Any]:
        cmd = [
            sys.executable,
            "-m",
            "hdc_vrouter.agent",
            "--controller",
            controller,
            "--state-dir",
            str(state),
            "--interface",
            self.wg_ifname(role),
            "--interval",
            str(interval),
            "--log-level",
            "INFO",
        ]
        if token:
            # Without a token the agent resumes from its state directory (a restart).
            cmd += ["--token", token]
        if endpoint:
            cmd += ["--endpoint", endpoint]
        state.mkdir(parents=True, exist_ok=True)
        return self.spawn(role, cmd, log=state / "agent.log")

    def ping(self, role: str, address: str, count: int = 1, wait_s: int = 1) -> bool:
        return (
            self.run(
                role, "ping", "-n", "-q", "-c", str(count), "-W", str(wait_s), address
            ).returncode
            == 0
        )

    def wait_ping(self, role: str, address: str, deadline_s: float = 30) -> bool:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.ping(role, address):
                return True
            time.sleep(0.2)
        return False

    # teardown -------------------------------------------------------------
    def stop_process(self, proc: subprocess.Popen[Any], timeout: float = 10) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return proc.returncode

    def destroy(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop_process(proc)
        for name in list(self.created_ns):
            # Deleting a namespace deletes its interfaces; wireguard-go then exits by itself.
            for link in sh("ip", "-n", name, "-o", "link", "show", check=False).stdout.splitlines():
                ifname = link.split(":")[1].strip().split("@")[0]
                if ifname.startswith("wg" + self.tag):
                    sh("ip", "-n", name, "link", "del", ifname, check=False)
            sh("ip", "netns", "del", name, check=False)
            self.created_ns.remove(name)
        for link in self.root_links:
            sh("ip", "link", "del", link, check=False)
        self.root_links.clear()


class ControllerThread:
    """The real controller (its ASGI app under uvicorn, plus its background workers: bus
    relay, offline sweeper) on a lab address, in this process."""

    def __init__(self, components: Any, host: str, port: int) -> None:
        import uvicorn

        self.url = f"http://{host}:{port}"
        self.background = list(components.background)
        config = uvicorn.Config(
            components.asgi_app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, name="vrouter-controller", daemon=True
        )

    def __enter__(self) -> ControllerThread:
        for worker in self.background:
            worker.start()
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                self.__exit__()
                raise RuntimeError("controller did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        for worker in reversed(self.background):
            worker.stop()


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
