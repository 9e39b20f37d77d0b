"""The agent's life: enrol once, apply the config, then heartbeat and follow changes.

Each heartbeat carries the tunnel counters and answers with the overlay's config version
and whether the operator asked for a key rotation; the agent refetches only when the
version moved. A controller that cannot be reached leaves the tunnels as they are.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import httpx

from hdc_vrouter.agent.client import ControllerClient, ControllerError
from hdc_vrouter.agent.state import AgentState, Enrolment
from hdc_vrouter.agent.wireguard import CommandError, WireGuardInterface
from hdc_vrouter.wgkeys import generate_keypair, public_from_private

log = logging.getLogger("hdc_vrouter.agent")

EXIT_DISOWNED = 3


class EnrolmentRefused(RuntimeError):
    pass


class Agent:
    def __init__(
        self,
        controller: str,
        state_dir: Path,
        interface: str,
        token: str | None = None,
        token_file: Path | None = None,
        endpoint: str | None = None,
        interval_s: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        self.state = AgentState(state_dir)
        self.wg = WireGuardInterface(interface, state_dir)
        self.controller = controller
        self.token = token
        self.token_file = token_file
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.verify = verify
        self.stop_event = threading.Event()
        self.applied_version = -1
        self.client: ControllerClient | None = None

    # ------------------------------------------------------------ enrolment

    def enrol(self) -> dict[str, Any] | None:
        """Enrol with the token unless already enrolled; the config to apply, if fresh."""
        known = self.state.enrolment()
        if known is not None and self.state.private_key():
            self.client = ControllerClient(known.controller, known.agent_secret, verify=self.verify)
            return None
        if not self.token:
            raise EnrolmentRefused(
                "not enrolled yet and no enrolment token given (--token or --token-file)"
            )
        private, public = generate_keypair()
        # The key exists on disk before the controller hears of it, so a crash right after
        # enrolment cannot leave the controller holding a public key whose private half is lost.
        self.state.save_private_key(private)
        client = ControllerClient(self.controller, verify=self.verify)
        try:
            result = client.enrol(self.token, public, self.endpoint)
        except ControllerError as exc:
            client.close()
            raise EnrolmentRefused(exc.detail) from None
        self.state.save_enrolment(
            Enrolment(
                self.controller, result["site_id"], result["overlay_id"], result["agent_secret"]
            )
        )
        self.client = client
        if self.token_file is not None:
            # A used token is worthless, but there is no reason to leave it lying around.
            self.token_file.unlink(missing_ok=True)
        log.info(
            "enrolled", extra={"site_id": result["site_id"], "overlay_id": result["overlay_id"]}
        )
        return result["config"]

    # ------------------------------------------------------------ tunnel

    def apply(self, config: dict[str, Any]) -> None:
        key = self.state.private_key()
        assert key is not None
        self.wg.up()
        self.wg.apply(key, config)
        self.applied_version = int(config["config_version"])
        log.info(
            "config applied",
            extra={
                "config_version": self.applied_version,
                "peers": len(config["peers"]),
                "routes": config["routes"],
            },
        )

    def rotate(self) -> None:
        """New key pair; the controller learns the public half before we switch to it."""
        assert self.client is not None
        old = self.state.private_key()
        private, public = generate_keypair()
        config = self.client.rotate_key(public)
        # A crash right here leaves the controller with the new public key and us with the
        # old private one; reconcile_key() repairs that at the next start.
        self.state.save_private_key(private)
        self.apply(config)
        log.info(
            "key rotated",
            extra={
                "old_public_key": public_from_private(old) if old else None,
                "public_key": public,
            },
        )

    def reconcile_key(self, config: dict[str, Any]) -> dict[str, Any]:
        """If the controller holds a public key that is not ours, register ours again."""
        assert self.client is not None
        key = self.state.private_key()
        assert key is not None
        local = public_from_private(key)
        if config.get("public_key") and config["public_key"] != local:
            log.warning("controller holds another public key for this router; registering ours")
            return self.client.rotate_key(local)
        return config

    def step(self) -> None:
        assert self.client is not None
        if not self.wg.exists():
            # wireguard-go died or someone deleted the link: rebuild it from the current config.
            log.warning(
                "tunnel interface vanished; recreating it", extra={"interface": self.wg.name}
            )
            self.apply(self.client.config())
        peers = [p.as_dict() for p in self.wg.stats()]
        answer = self.client.heartbeat(self.applied_version, peers)
        if answer.get("rotate_key"):
            self.rotate()
        elif answer.get("config_version") != self.applied_version:
            self.apply(self.client.config())

    # ------------------------------------------------------------ loop

    def run(self) -> int:
        fresh = self.enrol()
        assert self.client is not None
        try:
            config = fresh
            while config is None:
                # Restarted agent: the tunnel needs the current config, so wait for it.
                try:
                    config = self.client.config()
                except ControllerError as exc:
                    if exc.status == 401:
                        return self._disowned(exc)
                    raise
                except httpx.HTTPError as exc:
                    log.warning("controller unreachable; retrying", extra={"error": str(exc)})
                    if self.stop_event.wait(self.interval_s):
                        return 0
            self.apply(self.reconcile_key(config))
            while not self.stop_event.is_set():
                try:
                    self.step()
                except ControllerError as exc:
                    if exc.status == 401:
                        return self._disowned(exc)
                    log.warning(
                        "controller refused a request",
                        extra={"status": exc.status, "detail": exc.detail},
                    )
                except httpx.HTTPError as exc:
                    log.warning(
                        "controller unreachable; tunnels left as they are",
                        extra={"error": str(exc)},
                    )
                except CommandError as exc:
                    log.error("applying the config failed", extra={"error": str(exc)})
                self.stop_event.wait(self.interval_s)
            return 0
        finally:
            self.wg.down()
            self.client.close()

    def _disowned(self, exc: ControllerError) -> int:
        # The site was removed from its overlay (or re-enrolled elsewhere): take the tunnel
        # down here too and forget the credentials, which are worthless now.
        log.warning(
            "controller no longer knows this router; leaving the overlay",
            extra={"detail": exc.detail},
        )
        self.state.forget()
        return EXIT_DISOWNED

    def stop(self) -> None:
        self.stop_event.set()
