"""A private RabbitMQ node for tests that must stop or restart the broker.

The shared broker (tests/infra/rabbitmq.sh) serves every engineer's tests, so a test that
restarts RabbitMQ gets its own node: own name, AMQP and distribution ports, data and log
directories, Erlang cookie (HOME), and no plugins (the shared node owns :15672). It runs as
the current user from RabbitMQ's own scripts (not the /usr/sbin wrapper, which switches to
the rabbitmq user), and is always shut down and killed on exit.

    with PrivateRabbit(tmp_path) as node:
        url = node.url            # amqp://guest:guest@127.0.0.1:<port>/
        node.restart()            # full stop of the node, then start on the same data
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

RABBIT_BIN = Path(os.environ.get("HDC_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists() and shutil.which("erl") is not None


class PrivateRabbit:
    def __init__(self, base: Path, startup_timeout: float = 90.0) -> None:
        self.base = Path(base) / f"rabbit-{uuid.uuid4().hex[:8]}"
        self.name = f"hdcbus{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self.base.mkdir(parents=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(self.base),  # own .erlang.cookie, shared by server and rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),  # absent: defaults
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def __enter__(self) -> PrivateRabbit:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - lives as long as the node
        self._proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so close() can kill all of it
        )
        log.close()
        self.await_startup()

    def await_startup(self) -> None:
        # await_startup fails at once while the node has not registered with epmd yet.
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited early: {self.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"private RabbitMQ did not start: {self.tail()}")
            done = self.ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 10)
            if done.returncode == 0 and self._accepts_amqp():
                return
            time.sleep(0.5)

    def _accepts_amqp(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the whole node (not just the app): every connection drops."""
        if self._proc is None:
            return
        self.ctl("shutdown", timeout=60)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill()
        self._proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self.ctl("shutdown", timeout=30)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=15)
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            self._kill()
            self._proc = None
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def tail(self, n: int = 3000) -> str:
        try:
            return (self.base / "server.out").read_text(errors="replace")[-n:]
        except OSError:
            return ""
