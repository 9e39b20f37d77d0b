"""Per-deployment routes: `/deployments/{uuid}/model/<rest>` → the deployed model's endpoint.

A deployed model listens wherever its site put it (the deployment's `endpoint` output), so
its route cannot be configured in advance. The gateway asks the orchestrator for the
deployment with the caller's own signed identity (the orchestrator's visibility rules
decide: whoever may not see the deployment gets 404), caches the answer a few seconds per
caller, and proxies to the endpoint. Outputs are written by whoever wrote the template, so
an endpoint is only followed to http(s) URLs on hosts the operator allows
(`model_upstream_hosts`) and never to one of the gateway's own service upstreams: a user
cannot turn the gateway into an open proxy or a way around a route's policy.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp
from hdc_common.identity import HEADER as IDENTITY_HEADER

from hdc_gateway.routing import Route
from hdc_gateway.settings import GatewaySettings, RouteSettings

PREFIX = "/deployments/"
MODEL_SEGMENT = "model"
METRIC_LABEL = "/deployments/{uuid}/model"
# Statuses in which the deployment's model runs (an update keeps the old one serving).
SERVING_STATUSES = frozenset(
    {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_IN_PROGRESS", "UPDATE_FAILED"}
)
_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_LOOKUP_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)


class ModelRouteError(Exception):
    """An answer the gateway gives instead of proxying (status and a public message)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def parse(path: str) -> tuple[str, str] | None:
    """(deployment id, path for the model) when `path` is a model route, else None."""
    if not path.startswith(PREFIX):
        return None
    parts = path[len(PREFIX) :].split("/", 2)
    if len(parts) < 2 or parts[1] != MODEL_SEGMENT:
        return None
    rest = "/" + parts[2] if len(parts) == 3 else "/"
    return parts[0], rest


class HostAllowList:
    """Exact host names, `*.suffix` wildcards and IP networks. Names are never resolved:
    a name matches name entries only, so DNS cannot smuggle in an address."""

    def __init__(self, entries: list[str]) -> None:
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            entry = entry.strip().lower()
            if entry.startswith("*."):
                self._suffixes.append(entry[1:])
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry)

    def allows(self, host: str) -> bool:
        host = host.lower().strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self._names or any(host.endswith(s) for s in self._suffixes)
        return any(address in net for net in self._networks)


@dataclass
class _Cached:
    route: Route
    expires_at: float


class ModelRoutes:
    def __init__(
        self,
        settings: GatewaySettings,
        lookup_upstream: str,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self._lookup = lookup_upstream.rstrip("/")
        self._session = session
        self._hosts = HostAllowList(settings.model_upstream_hosts)
        self._cache_s = settings.model_lookup_cache_s
        self._max_body = settings.max_body_bytes
        self._read_timeout_s = settings.model_read_timeout_s
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._cache_max = 10_000
        # The gateway's own services are never a model endpoint, whatever the host list says.
        self._reserved = {_host_port(r.upstream) for r in settings.routes}
        self._reserved.add(_host_port(self._lookup))
        # What every model route requires before the lookup: a valid token.
        self.policy = Route.from_settings(
            RouteSettings(
                prefix="/deployments",
                upstream=self._lookup,
                anonymous_paths=[],
                forward_authorization=False,
            ),
            settings.max_body_bytes,
        )

    def forget(self, deployment: str, caller: str) -> None:
        self._cache.pop((deployment, caller), None)

    async def resolve(self, deployment: str, caller: str, identity_header: str) -> Route:
        """The route to the deployment's model for this caller; ModelRouteError if none."""
        if not _UUID.match(deployment):
            raise ModelRouteError(400, f"'{deployment[:80]}' is not a deployment id")
        key = (deployment, caller)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now < cached.expires_at:
            return cached.route
        doc = await self._fetch(deployment, identity_header)
        route = self._route_of(deployment, doc)
        if self._cache_s > 0:
            if len(self._cache) >= self._cache_max:
                for stale in list(self._cache)[: self._cache_max // 10]:
                    del self._cache[stale]
            self._cache[key] = _Cached(route, now + self._cache_s)
        return route

    async def _fetch(self, deployment: str, identity_header: str) -> dict:
        url = f"{self._lookup}/deployments/{quote(deployment, safe='')}"
        headers = {IDENTITY_HEADER: identity_header, "Accept": "application/json"}
        try:
            async with self._session().get(url, headers=headers, timeout=_LOOKUP_TIMEOUT) as resp:
                if resp.status in (401, 403, 404):
                    # Not visible to this caller and not existing look the same from outside.
                    raise ModelRouteError(404, f"no deployment {deployment} visible to you")
                if resp.status != 200:
                    raise ModelRouteError(
                        502, f"the orchestrator answered {resp.status} for deployment {deployment}"
                    )
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise ModelRouteError(
                503, "the orchestrator cannot be reached to look the deployment up"
            ) from None
        if not isinstance(doc, dict):
            raise ModelRouteError(502, "the orchestrator's answer is not a deployment")
        return doc

    def _route_of(self, deployment: str, doc: dict) -> Route:
        status = str(doc.get("status") or "UNKNOWN")
        if status not in SERVING_STATUSES:
            raise ModelRouteError(
                409,
                f"deployment {deployment} is {status}; its model answers once it is "
                "CREATE_COMPLETE",
            )
        outputs = doc.get("outputs") or {}
        endpoint = outputs.get("endpoint") or outputs.get("deepaas_endpoint")
        if isinstance(endpoint, list):
            endpoint = endpoint[0] if endpoint else None
        if not isinstance(endpoint, str) or not endpoint:
            raise ModelRouteError(
                409, f"deployment {deployment} has no 'endpoint' output: it runs no model API"
            )
        upstream = self._check_endpoint(deployment, endpoint)
        try:
            settings = RouteSettings(
                prefix=f"/deployments/{deployment}/model",
                upstream=upstream,
                strip_prefix=True,
                anonymous_paths=[],
                # The model is the deployment owner's code: the caller's token stays here.
                forward_authorization=False,
                read_timeout_s=self._read_timeout_s,
            )
        except ValueError:
            raise ModelRouteError(
                403, f"the endpoint of deployment {deployment} is not a usable URL"
            ) from None
        return Route.from_settings(settings, self._max_body)

    def _check_endpoint(self, deployment: str, endpoint: str) -> str:
        try:
            url = urlsplit(endpoint.strip())
            port = url.port
        except ValueError:
            url, port = None, None
        if (
            url is None
            or url.scheme not in ("http", "https")
            or not url.hostname
            or url.username is not None
            or url.password is not None
            or url.query
            or url.fragment
        ):
            raise ModelRouteError(
                403, f"the endpoint of deployment {deployment} is not a plain http(s) URL"
            )
        if not self._hosts.allows(url.hostname):
            raise ModelRouteError(
                403,
                f"the endpoint of deployment {deployment} is on host {url.hostname}, which "
                "this gateway does not proxy models to (model_upstream_hosts)",
            )
        port = port or (443 if url.scheme == "https" else 80)
        if (_same_host(url.hostname), port) in self._reserved:
            raise ModelRouteError(
                403, f"the endpoint of deployment {deployment} is one of hdc's own services"
            )
        return f"{url.scheme}://{url.netloc}{url.path}".rstrip("/")


def _same_host(host: str) -> str:
    """Every loopback spelling as one, so `localhost:8101` is known as `127.0.0.1:8101`."""
    host = host.lower().strip("[]")
    if host == "localhost":
        return "loopback"
    try:
        return "loopback" if ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host


def _host_port(upstream: str) -> tuple[str, int]:
    url = urlsplit(upstream)
    port = url.port or (443 if url.scheme == "https" else 80)
    return _same_host(url.hostname or ""), port


def lookup_upstream(settings: GatewaySettings) -> str:
    """Where deployments are looked up: the setting, else the `/orchestrator` route's upstream."""
    if settings.model_lookup_upstream:
        return settings.model_lookup_upstream
    for route in settings.routes:
        if route.prefix == "/orchestrator":
            return route.upstream
    return ""
