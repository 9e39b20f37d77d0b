"""Embedded mode's own site: this machine, registered with the infoprovider through the
info agent's library (the same report builder and HTTP publisher `hdc-info-agent` uses).

The agent authenticates like any site agent: an access token of a trusted issuer whose
client id maps to the site. Embedded mode has no Keycloak, so the token is signed with the
embedded OpenID provider's key (the one the gateway's JWKS publishes), and the
infoprovider is told to trust that issuer for the `local` site's agent client only.
Like any agent reporting over HTTP it posts through the gateway (`<gateway>/infoprovider`):
the registry answers only gateway-signed callers, and the gateway forwards the agent's
bearer token for the registry's own site check.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("hdc.embedded.local_site")

SITE_ID = "local"
AGENT_CLIENT_ID = "hdc-local-agent"
EMBEDDED_ISSUER = "urn:hdc:embedded"
# Reports are valid for an hour; sent again well before they expire.
VALIDITY_S = 3600
REPUBLISH_S = 600


def gateway_url() -> str:
    port = os.environ.get("HDC_GATEWAY_HTTP_PORT", "8000")
    return f"http://127.0.0.1:{port}"


def infoprovider_env() -> dict[str, str]:
    """Settings that make the infoprovider accept the local agent's reports."""
    return {
        "HDC_INFOPROVIDER_TRUSTED_ISSUERS": json.dumps(
            [{"issuer": EMBEDDED_ISSUER, "jwks_uri": f"{gateway_url()}/.well-known/jwks.json"}]
        ),
        "HDC_INFOPROVIDER_AGENT_CLIENTS": json.dumps(
            [{"site_id": SITE_ID, "client_id": AGENT_CLIENT_ID, "issuer": EMBEDDED_ISSUER}]
        ),
    }


def _ram_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1024


def registry_url(gateway: str) -> str:
    """Where the agent posts: the infoprovider's route on the gateway at `gateway`."""
    return f"{gateway.rstrip('/')}/infoprovider"


def agent_config(registry: str) -> Any:
    from hdc_infoprovider.agent.config import AgentConfig

    return AgentConfig.model_validate(
        {
            "site": {"id": SITE_ID, "name": "This machine (embedded hdc)"},
            "validity": VALIDITY_S,
            "publish": {"transport": "http", "registry_url": registry},
            "collectors": [
                {
                    "type": "static",
                    "name": "local",
                    "services": [
                        {
                            "id": "processes",
                            "type": "local",
                            "endpoint": "http://127.0.0.1",
                            "identity_providers": [{"issuer": EMBEDDED_ISSUER}],
                            "flavors": [
                                {
                                    "id": "this-machine",
                                    "cpus": os.cpu_count() or 1,
                                    "ram_mb": _ram_mb(),
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    )


def agent_token(gateway_data_dir: Path, ttl_s: int = 300) -> str:
    """A client-credentials-shaped token for the local agent, signed by the embedded OP."""
    import jwt
    from hdc_gateway.embedded_op import EMBEDDED_ALGORITHM, load_or_create_key, public_jwk

    key = load_or_create_key(gateway_data_dir)
    now = int(time.time())
    claims = {
        "iss": EMBEDDED_ISSUER,
        "sub": f"service-account-{AGENT_CLIENT_ID}",
        # The gateway's audience for embedded-OP tokens: the report passes through it.
        "aud": "hdc-gateway",
        "client_id": AGENT_CLIENT_ID,
        "azp": AGENT_CLIENT_ID,
        "iat": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims, key, algorithm=EMBEDDED_ALGORITHM, headers={"kid": public_jwk(key)["kid"]}
    )


def publish_once(gateway_data_dir: Path, registry: str) -> dict[str, Any]:
    from hdc_infoprovider.agent.builder import build_report
    from hdc_infoprovider.agent.collectors import make_collector
    from hdc_infoprovider.agent.publish import make_publisher

    cfg = agent_config(registry)
    report = build_report(cfg, [make_collector(c) for c in cfg.collectors])
    publisher = make_publisher(cfg.publish)
    try:
        publisher.publish(report, agent_token(gateway_data_dir))
    finally:
        publisher.close()
    return report


def available() -> bool:
    try:
        import hdc_gateway.embedded_op  # noqa: F401
        import hdc_infoprovider.agent.builder  # noqa: F401
    except ImportError:
        return False
    return True


class LocalSiteAgent:
    """Publishes the local site at start and every REPUBLISH_S seconds after."""

    def __init__(self, gateway_data_dir: Path, registry: str) -> None:
        self.gateway_data_dir = gateway_data_dir
        self.registry = registry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-site-agent", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                publish_once(self.gateway_data_dir, self.registry)
                log.info("local site %r registered with the infoprovider", SITE_ID)
                wait = REPUBLISH_S
            except Exception as exc:  # the registry may still be starting; try again soon
                log.warning("could not register the local site: %s", exc)
                wait = 2.0


def main() -> None:
    """`python -m hdc_cli.local_site GATEWAY_DATA_DIR REGISTRY_URL`: the local site's agent
    as its own process (distributed mode), until SIGTERM; REGISTRY_URL is `registry_url()`."""
    import signal
    import sys

    from hdc_common.logs import setup_logging

    setup_logging("local-site-agent", os.environ.get("HDC_LOG_LEVEL", "INFO"))
    agent = LocalSiteAgent(Path(sys.argv[1]), sys.argv[2])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start()
    done.wait()
    agent.stop()


if __name__ == "__main__":
    main()
