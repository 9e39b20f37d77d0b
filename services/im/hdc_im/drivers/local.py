"""The local site: container nodes run as processes on this machine (embedded mode).

A model node runs under the hdc serving runtime (settings.local_command, by default
`hdc-serving run --model {model} --listen-ip {host} --listen-port {port}`). Each process
carries its infrastructure id and VM token in its environment (the local "tags"), and a
state file under state_dir records it before Popen returns, so a restarted im finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from hdc_im.drivers.base import CloudError, Driver, Tagged, VmRequest, VmStatus
from hdc_im.topology import CONTAINER_KIND

ENV_INFRA = "HDC_INFRASTRUCTURE_ID"
ENV_TOKEN = "HDC_VM_TOKEN"
# hdc-serving's setting: with the gateway's key, the model refuses calls that skip the gateway.
ENV_IDENTITY_KEY = "HDC_SERVING_IDENTITY_PUBLIC_KEY"


# The children this process started, by pid: terminating one waits on it (reaps it), so no
# zombie is left behind. A process started by an earlier run of the im is not our child;
# its exit is watched through /proc instead (its parent, init, reaps it).
_CHILDREN: dict[int, subprocess.Popen] = {}
_CHILDREN_LOCK = threading.Lock()
_TERM_GRACE_S = 5.0


def _child(pid: int) -> subprocess.Popen | None:
    with _CHILDREN_LOCK:
        return _CHILDREN.get(pid)


def _forget(pid: int) -> None:
    with _CHILDREN_LOCK:
        _CHILDREN.pop(pid, None)


def _reap_exited(pid: int | None) -> None:
    """A child of ours that exited on its own is reaped now, not left a zombie."""
    proc = _child(pid) if pid else None
    if proc is not None and proc.poll() is not None:
        _forget(pid)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _alive(pid: int, token: str, spawned_at: float = 0.0) -> bool:
    """The pid runs and is still our process (pids are reused).

    A child seconds old may not have exec'd yet (its environment is still ours): trust the
    pid then; later, only a process carrying our token counts.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    fresh = time.time() - spawned_at < 10
    if not fresh and f"{ENV_TOKEN}={token}".encode() not in environ.split(b"\0"):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalDriver(Driver):
    provider_type = "Local"

    def __init__(
        self,
        state_dir: Path,
        command: list[str],
        host: str = "127.0.0.1",
        identity_public_key: str = "",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.command = command
        self.host = host
        # PEM of the gateway's identity key (the im's own setting), given to every model.
        self.identity_public_key = identity_public_key

    def _path(self, token: str) -> Path:
        return self.state_dir / f"{token}.json"

    def _read(self, token: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(token).read_text())
        except (OSError, ValueError):
            return None

    def _write(self, token: str, data: dict[str, Any]) -> None:
        tmp = self._path(token).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
        tmp.replace(self._path(token))

    def _status(self, rec: dict[str, Any]) -> VmStatus:
        pid, port, token = rec.get("pid"), rec["port"], rec["token"]
        _reap_exited(pid)
        url = f"http://{self.host}:{port}"
        ports = {name: port for name in rec.get("port_names", [])}
        ports["url"] = url
        if rec.get("stopped"):
            state = "stopped"
        elif pid and _alive(pid, token, rec.get("spawned_at", 0.0)):
            state = "running" if _listening(self.host, port) else "pending"
        else:
            state = "failed"
        info: dict[str, Any] = {"pid": pid, "endpoint": url}
        if state == "failed":
            log = self.state_dir / f"{token}.log"
            tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
            info["error"] = f"process exited: {tail.strip() or 'no output'}"
        return VmStatus(
            provider_id=token,
            state=state,
            public_ip=self.host,
            private_ip=self.host,
            ports=ports,
            info=info,
        )

    def _spawn(self, rec: dict[str, Any], env_extra: dict[str, str]) -> int:
        subst = {"model": rec["model"], "port": str(rec["port"]), "host": self.host}
        argv = [part.format(**subst) for part in self.command]
        env = {
            **os.environ,
            **env_extra,
            ENV_INFRA: rec["infrastructure_id"],
            ENV_TOKEN: rec["token"],
        }
        if self.identity_public_key:
            # Set after the template's environment: a deployment cannot switch the check off.
            env[ENV_IDENTITY_KEY] = self.identity_public_key
        log = (self.state_dir / f"{rec['token']}.log").open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise CloudError(f"cannot start {argv[0]}: {exc.strerror}") from None
        finally:
            log.close()
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        return proc.pid

    def create_vm(self, req: VmRequest) -> VmStatus:
        node = req.node
        if node.kind != CONTAINER_KIND:
            raise CloudError(
                f"node '{node.name}': the local site runs container nodes only "
                "(a Container.Application node), not virtual machines",
                bad_input=True,
            )
        model = node.model or node.image.rsplit("/", 1)[-1].split(":")[0]
        rec = {
            "infrastructure_id": req.infrastructure_id,
            "token": req.token,
            "model": model,
            "port": _free_port(self.host),
            "pid": None,
            "port_names": list(node.ports),
            # secrets too: a restart needs them (the state file is readable by its owner only)
            "environment": {**node.environment, **node.secrets},
        }
        self._write(req.token, rec)  # recorded before the process exists
        rec["pid"] = self._spawn(rec, rec["environment"])
        rec["spawned_at"] = time.time()
        self._write(req.token, rec)
        return self._status(rec)

    def find_vm(self, infrastructure_id: str, token: str) -> VmStatus | None:
        rec = self._read(token)
        if rec is None:
            return None
        if rec.get("pid") is None:
            # crashed between recording and starting: nothing runs, start afresh
            self._path(token).unlink(missing_ok=True)
            return None
        return self._status(rec)

    def vm_status(self, provider_id: str) -> VmStatus | None:
        rec = self._read(provider_id)
        return self._status(rec) if rec else None

    def _terminate(self, rec: dict[str, Any]) -> None:
        """SIGTERM to the process group, a grace period, then SIGKILL; our own child is
        waited for (reaped) each time, so it never stays behind as a zombie."""
        pid = rec.get("pid")
        if not pid:
            return
        proc = _child(pid)
        if proc is not None:
            self._terminate_child(proc)
            return
        born = rec.get("spawned_at", 0.0)
        if not _alive(pid, rec["token"], born):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + _TERM_GRACE_S
            while time.monotonic() < deadline and _alive(pid, rec["token"], born):
                time.sleep(0.05)
            if not _alive(pid, rec["token"], born):
                return

    @staticmethod
    def _terminate_child(proc: subprocess.Popen) -> None:
        try:
            if proc.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        # the whole group: whatever the model started goes too
                        os.killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout=_TERM_GRACE_S)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                else:
                    # SIGKILL cannot be ignored; only a process stuck in the kernel outlasts
                    # this, and it stays registered so the next status read reaps it
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=30)
        finally:
            if proc.returncode is not None:
                _forget(proc.pid)

    def destroy_vm(self, provider_id: str) -> None:
        rec = self._read(provider_id)
        if rec is None:
            return
        self._terminate(rec)
        self._path(provider_id).unlink(missing_ok=True)
        (self.state_dir / f"{provider_id}.log").unlink(missing_ok=True)

    def stop_vm(self, provider_id: str) -> None:
        rec = self._read(provider_id)
        if rec is None:
            raise CloudError(f"process {provider_id} is not known on this machine")
        self._terminate(rec)
        rec["stopped"] = True
        self._write(provider_id, rec)

    def start_vm(self, provider_id: str) -> None:
        rec = self._read(provider_id)
        if rec is None:
            raise CloudError(f"process {provider_id} is not known on this machine")
        alive = rec.get("pid") and _alive(rec["pid"], provider_id, rec.get("spawned_at", 0.0))
        if alive and not rec.get("stopped"):
            return
        rec["stopped"] = False
        rec["pid"] = self._spawn(rec, rec.get("environment") or {})
        rec["spawned_at"] = time.time()
        self._write(provider_id, rec)

    def reboot_vm(self, provider_id: str) -> None:
        self.stop_vm(provider_id)
        self.start_vm(provider_id)

    def list_tagged(self) -> list[Tagged]:
        out = []
        for path in self.state_dir.glob("*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.append(Tagged("vm", rec["token"], rec["infrastructure_id"], rec["token"]))
        return out
