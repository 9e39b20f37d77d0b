"""The gateway as one raw ASGI application.

Per request: CORS preflight → gateway-local endpoints → route match → per-IP limit →
size limit → token validation (cached) → route policy → per-identity limit → proxy with
a freshly signed `X-HDC-Identity` (any incoming one is dropped). Raw ASGI instead of a
framework keeps the added latency to a few dozen microseconds on a cache hit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import yaml
from hdc_common.identity import HEADER as IDENTITY_HEADER
from hdc_common.identity import Identity, InternalTokenSigner
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from yarl import URL

from hdc_gateway import embedded_op
from hdc_gateway.client_address import ClientAddress
from hdc_gateway.cors import Cors
from hdc_gateway.fast_upstream import FastUpstream
from hdc_gateway.im_authorization import im_token
from hdc_gateway.jwks import KeySet
from hdc_gateway.model_routes import METRIC_LABEL, ModelRouteError, ModelRoutes, lookup_upstream
from hdc_gateway.model_routes import parse as parse_model_path
from hdc_gateway.provider_client import ProviderClient
from hdc_gateway.proxy import (
    HOP_BY_HOP,
    BodyTooLarge,
    ClientGone,
    Proxy,
    Receive,
    Scope,
    Send,
    UpstreamError,
)
from hdc_gateway.ratelimit import RateLimiter, retry_after
from hdc_gateway.responses import bearer_challenge, send_empty, send_json, send_problem
from hdc_gateway.roles import RoleMapper
from hdc_gateway.routing import Forbidden, Route, RouteTable
from hdc_gateway.settings import GatewaySettings, IssuerSettings
from hdc_gateway.tokens import ProviderUnavailable, TokenError, TokenValidator

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "hdc_gateway_requests_total", "Requests by route and status", ["route", "status"]
)
REALM = "hdc"
_IDENTITY_LOWER = IDENTITY_HEADER.lower()
# Request headers the gateway sets itself or never forwards, besides the hop-by-hop ones.
_DROP_REQUEST = HOP_BY_HOP | {
    "expect",
    "host",
    _IDENTITY_LOWER,
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "forwarded",
}
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class _Denied(Exception):
    """An answer the gateway gives itself instead of forwarding."""

    def __init__(self, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


class _CacheEntry:
    __slots__ = ("header", "header_renew_at", "identity", "valid_until")

    def __init__(self, identity: Identity, valid_until: float) -> None:
        self.identity = identity
        self.valid_until = valid_until
        self.header = ""
        self.header_renew_at = 0.0


class GatewayApp:
    def __init__(self, settings: GatewaySettings, signer: InternalTokenSigner) -> None:
        self.settings = settings
        self._signer = signer
        # Re-sign the forwarded identity once half its lifetime has passed.
        self._header_reuse_s = settings.identity_ttl_s / 2
        self._proxy = Proxy(
            pool_size=settings.upstream_pool_size,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            header_timeout_s=settings.upstream_header_timeout_s,
        )
        self._fast = (
            FastUpstream(
                connect_timeout_s=settings.upstream_connect_timeout_s,
                max_idle_per_upstream=settings.upstream_pool_size,
                header_timeout_s=settings.upstream_header_timeout_s,
            )
            if settings.fast_upstream
            else None
        )
        self._idp_session: aiohttp.ClientSession | None = None
        self._provider = ProviderClient(self._idp)
        issuers: dict[str, IssuerSettings] = {i.issuer: i for i in settings.issuers}
        key_sets = {
            i.issuer: KeySet(
                self._provider.jwks_source(i),
                ttl_s=settings.jwks_cache_s,
                min_refresh_s=settings.jwks_min_refresh_s,
            )
            for i in settings.issuers
        }
        if settings.embedded_op:
            local = IssuerSettings(
                issuer=embedded_op.EMBEDDED_ISSUER,
                audiences=[settings.embedded_op_audience],
                algorithms=[embedded_op.EMBEDDED_ALGORITHM],
            )
            issuers[local.issuer] = local
            data_dir = settings.data_dir

            async def local_jwks() -> dict[str, Any]:
                return embedded_op.jwks_document(data_dir)

            key_sets[local.issuer] = KeySet(
                local_jwks, ttl_s=settings.jwks_cache_s, min_refresh_s=settings.jwks_min_refresh_s
            )
        self._validator = TokenValidator(
            issuers,
            key_sets,
            RoleMapper(settings.roles),
            leeway_s=settings.clock_skew_s,
            introspect=self._provider.introspect,
        )
        self._routes = RouteTable(
            [Route.from_settings(r, settings.max_body_bytes) for r in settings.routes]
        )
        self._ip_limit = RateLimiter(settings.rate_limit.per_ip, settings.rate_limit.max_keys)
        self._id_limit = RateLimiter(settings.rate_limit.per_identity, settings.rate_limit.max_keys)
        self._address = ClientAddress(settings.trusted_proxies)
        self._security = [
            (k.lower().encode(), v.encode()) for k, v in settings.security_headers.items()
        ]
        self._cors = Cors(settings.cors, self._security)
        self._cache: dict[str, _CacheEntry] = {}
        self._cache_max = 50_000
        lookup = lookup_upstream(settings)
        self._models = (
            ModelRoutes(settings, lookup, self._idp) if settings.model_routes and lookup else None
        )
        self._local: dict[str, Callable[..., Any]] = {
            "/healthz": self._healthz,
            "/readyz": self._healthz,
            "/metrics": self._metrics,
            "/openapi.json": self._openapi,
            settings.ext_auth_path: self._ext_auth,
        }
        if settings.embedded_op:
            self._local["/.well-known/jwks.json"] = self._jwks
            self._local["/.well-known/openid-configuration"] = self._discovery

    # -- lifecycle ---------------------------------------------------------------------

    def _idp(self) -> aiohttp.ClientSession:
        if self._idp_session is None or self._idp_session.closed:
            self._idp_session = aiohttp.ClientSession()
        return self._idp_session

    async def aclose(self) -> None:
        await self._proxy.close()
        if self._fast is not None:
            self._fast.close()
        if self._idp_session is not None:
            await self._idp_session.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- entry -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not routed by this gateway
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        authorization = origin = content_length = xff = None
        chunked = False
        preflight = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"origin":
                origin = value
            elif name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-forwarded-for":
                xff = value
            elif name == b"access-control-request-method":
                preflight = True
        base_headers = self._security + self._cors.headers(origin)
        route: Route | None = None
        model: tuple[str, str] | None = None
        status = 500
        try:
            if preflight and method == "OPTIONS" and origin is not None:
                status = await self._cors.preflight(send, origin)
                return
            local = self._local.get(path)
            if local is not None:
                status = await local(scope, receive, send, base_headers, authorization, xff)
                return
            if "/." in path and any(seg in (".", "..") for seg in path.split("/")):
                raise _Denied(400, "path must not contain '.' or '..' segments")
            model = parse_model_path(path) if self._models is not None else None
            route = (
                self._models.policy
                if model is not None and self._models is not None
                else self._routes.match(path)
            )
            if route is None:
                raise _Denied(404, f"no service is routed at {path[:200]}")
            ip = self._address.of(scope, xff)
            wait = self._ip_limit.acquire(ip)
            if wait:
                raise _Denied(
                    429,
                    "too many requests from this address",
                    [(b"retry-after", retry_after(wait).encode())],
                )
            limit = route.max_body_bytes
            if content_length is not None:
                try:
                    length = int(content_length)
                except ValueError:
                    raise _Denied(400, "Content-Length is not a number") from None
                if limit is not None and length > limit:
                    raise _Denied(413, f"request body exceeds {limit} bytes")
            entry = await self._authenticate(route.access_for(path), route, authorization)
            if model is not None and entry is not None:
                route = await self._model_route(model[0], entry)
            target = self._upstream_target(route, path, scope["query_string"])
            headers = self._upstream_headers(scope, route, entry, ip, xff)
            has_body = chunked or (content_length is not None and content_length != b"0")
            try:
                if (
                    self._fast is not None
                    and not has_body
                    and method == "GET"
                    and route.upstream_plain_http
                ):
                    status = await self._fast.forward(
                        receive,
                        send,
                        host=route.upstream_host,
                        port=route.upstream_port,
                        method=method,
                        target=target,
                        headers=headers,
                        read_timeout_s=route.read_timeout_s,
                        extra_response_headers=base_headers,
                    )
                else:
                    status = await self._proxy.forward(
                        receive,
                        send,
                        method=method,
                        url=URL(route.upstream + target, encoded=True),
                        headers=CIMultiDict(headers),
                        has_body=has_body,
                        max_body=limit,
                        read_timeout_s=route.read_timeout_s,
                        extra_response_headers=base_headers,
                    )
            except BodyTooLarge:
                raise _Denied(413, f"request body exceeds {limit} bytes") from None
            except ClientGone:
                status = 499
            except UpstreamError as exc:
                # Details (addresses, errors) go to the log, not to the public caller.
                log.warning("upstream of %s failed: %s", route.prefix, exc.detail)
                if model is not None and entry is not None:
                    # The cached endpoint may be stale (deleted, moved): look again so the
                    # caller learns why (404, 409) rather than just 502.
                    self._models.forget(model[0], entry.identity.key)  # type: ignore[union-attr]
                    await self._model_route(model[0], entry)
                    public = "is unreachable" if exc.status == 502 else "did not answer in time"
                    raise _Denied(
                        exc.status, f"the model of deployment {model[0]} {public}"
                    ) from None
                public = "is unreachable" if exc.status == 502 else "did not answer in time"
                raise _Denied(exc.status, f"the service behind {route.prefix} {public}") from None
        except _Denied as denied:
            status = denied.status
            await send_problem(
                send, denied.status, denied.detail, headers=base_headers + denied.headers
            )
        except Exception:
            # A bug, or the upstream broke off mid-stream: log it whole; answer 500 if the
            # response has not started yet (otherwise the server just closes the connection).
            log.exception("error while handling %s %s", method, path)
            with contextlib.suppress(Exception):
                await send_problem(
                    send,
                    500,
                    "an unexpected error occurred; it has been logged",
                    headers=base_headers,
                )
        finally:
            label = METRIC_LABEL if model is not None else (route.prefix if route else "-")
            REQUESTS.labels(label, str(status)).inc()

    # -- authentication ------------------------------------------------------------------

    async def _authenticate(
        self, access: str, route: Route | None, authorization: bytes | None
    ) -> _CacheEntry | None:
        """The caller's cache entry, None for anonymous access; _Denied when refused."""
        if access == "anonymous":
            return None
        token = _bearer(authorization)
        if token is None and authorization and route and route.token_from == "im_authorization":
            token = im_token(authorization)
        if token is None:
            if access == "optional" and authorization is None:
                return None
            detail = (
                "Authorization header is not a Bearer token"
                + (
                    " nor an IM header with a token on its InfrastructureManager line"
                    if route and route.token_from == "im_authorization"
                    else ""
                )
                if authorization
                else "no access token: send 'Authorization: Bearer <token>'"
            )
            raise _Denied(401, detail, [_challenge("invalid_request", detail)])
        entry = await self._validated(token)
        if route is not None:
            try:
                route.authorize(entry.identity)
            except Forbidden as exc:
                challenge = bearer_challenge(REALM, exc.error, exc.detail, exc.scope)
                raise _Denied(
                    403, exc.detail, [(b"www-authenticate", challenge.encode())]
                ) from None
        wait = self._id_limit.acquire(entry.identity.key)
        if wait:
            raise _Denied(
                429,
                "too many requests for this identity",
                [(b"retry-after", retry_after(wait).encode())],
            )
        now = time.time()
        if now >= entry.header_renew_at:
            entry.header = self._signer.sign(entry.identity)
            entry.header_renew_at = now + self._header_reuse_s
        return entry

    async def _model_route(self, deployment: str, entry: _CacheEntry) -> Route:
        """The route to a deployed model, looked up with the caller's identity."""
        try:
            return await self._models.resolve(  # type: ignore[union-attr]
                deployment, entry.identity.key, entry.header
            )
        except ModelRouteError as exc:
            raise _Denied(exc.status, exc.detail) from None

    async def _validated(self, token: str) -> _CacheEntry:
        now = time.time()
        entry = self._cache.get(token)
        if entry is not None:
            if now < entry.valid_until:
                return entry
            del self._cache[token]
        try:
            result = await self._validator.validate(token)
        except TokenError as exc:
            raise _Denied(401, exc.description, [_challenge(exc.error, exc.description)]) from None
        except ProviderUnavailable as exc:
            log.warning("token provider unavailable: %s", exc)
            raise _Denied(503, str(exc), [(b"retry-after", b"5")]) from None
        entry = _CacheEntry(
            result.identity, min(now + self.settings.token_cache_s, result.expires_at)
        )
        if self.settings.token_cache_s > 0:
            if len(self._cache) >= self._cache_max:
                # Dicts keep insertion order: drop the oldest tenth in one go.
                for stale in list(self._cache)[: self._cache_max // 10]:
                    del self._cache[stale]
            self._cache[token] = entry
        return entry

    # -- forwarding helpers -----------------------------------------------------------------

    @staticmethod
    def _upstream_target(route: Route, path: str, query: bytes) -> str:
        target = quote(route.upstream_path(path), safe=_PATH_SAFE)
        if query:
            target += "?" + query.decode("latin-1")
        return target

    def _upstream_headers(
        self, scope: Scope, route: Route, entry: _CacheEntry | None, ip: str, xff: bytes | None
    ) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        host = None
        listed: set[str] = set()  # RFC 9110 §7.6.1: names in Connection are hop-by-hop too
        for raw_name, raw_value in scope["headers"]:
            if raw_name == b"connection":
                listed.update(t.strip().lower() for t in raw_value.decode("latin-1").split(","))
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            if name == "host":
                host = raw_value.decode("latin-1")
            if name in _DROP_REQUEST or name in listed:
                continue
            if name == "authorization" and not route.forward_authorization:
                continue
            headers.append((name, raw_value.decode("latin-1")))
        if entry is not None:
            headers.append((IDENTITY_HEADER, entry.header))
        forwarded_for = ip
        if (
            xff is not None
            and self._address.has_trusted_proxies
            and ip != (scope.get("client") or ("",))[0]
        ):
            forwarded_for = f"{xff.decode('latin-1')}, {scope['client'][0]}"
        headers.append(("X-Forwarded-For", forwarded_for))
        headers.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if host:
            headers.append(("X-Forwarded-Host", host))
        if route.strip_prefix and route.prefix != "/":
            headers.append(("X-Forwarded-Prefix", route.prefix))
        return headers

    # -- gateway-local endpoints ---------------------------------------------------------------

    async def _healthz(self, scope: Scope, _r: Receive, send: Send, headers: list, *_: Any) -> int:
        await send_json(send, 200, {"status": "ok", "service": "gateway"}, headers=headers)
        return 200

    async def _openapi(self, scope: Scope, _r: Receive, send: Send, headers: list, *_: Any) -> int:
        await send_json(send, 200, _spec(), headers=headers)
        return 200

    async def _metrics(self, scope: Scope, _r: Receive, send: Send, headers: list, *_: Any) -> int:
        body = generate_latest()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return 200

    async def _jwks(self, scope: Scope, _r: Receive, send: Send, headers: list, *_: Any) -> int:
        await send_json(
            send, 200, embedded_op.jwks_document(self.settings.data_dir), headers=headers
        )
        return 200

    async def _discovery(
        self, scope: Scope, _r: Receive, send: Send, headers: list, *_: Any
    ) -> int:
        host = dict(scope["headers"]).get(b"host", b"localhost").decode("latin-1")
        base = f"{scope.get('scheme', 'http')}://{host}"
        await send_json(send, 200, embedded_op.discovery_document(base), headers=headers)
        return 200

    async def _ext_auth(
        self,
        scope: Scope,
        _r: Receive,
        send: Send,
        headers: list,
        authorization: bytes | None,
        xff: bytes | None,
    ) -> int:
        """nginx `auth_request` / ingress-nginx `auth-url`: 200 with identity headers, 401, 403.

        The original request is described by X-Original-URI/-Method (nginx) or
        X-Forwarded-Uri/-Method (Traefik, ingress-nginx); its route's policy applies.
        """
        original = {k: v for k, v in scope["headers"] if k in _ORIGINAL_HEADERS}
        uri = (original.get(b"x-original-uri") or original.get(b"x-forwarded-uri") or b"/").decode(
            "latin-1"
        )
        path = urlsplit(uri).path or "/"
        route = self._routes.match(path)
        access = route.access_for(path) if route else "authenticated"
        ip = self._address.of(scope, xff)
        try:
            wait = self._ip_limit.acquire(ip)
            if wait:
                raise _Denied(
                    429,
                    "too many requests from this address",
                    [(b"retry-after", retry_after(wait).encode())],
                )
            entry = await self._authenticate(access, route, authorization)
        except _Denied as denied:
            await send_problem(send, denied.status, denied.detail, headers=headers + denied.headers)
            return denied.status
        answer = list(headers)
        if entry is not None:
            identity = entry.identity
            answer += [
                (_IDENTITY_LOWER.encode(), entry.header.encode()),
                (b"x-auth-request-user", identity.subject.encode()),
                (b"x-auth-request-groups", ",".join(identity.groups).encode()),
            ]
            if identity.email:
                answer.append((b"x-auth-request-email", identity.email.encode()))
        await send_empty(send, 200, answer + [(b"content-length", b"0")])
        return 200


@functools.cache
def _spec() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).parent / "openapi.yaml").read_text())


_ORIGINAL_HEADERS = frozenset(
    {b"x-original-uri", b"x-forwarded-uri", b"x-original-method", b"x-forwarded-method"}
)


def _bearer(authorization: bytes | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token.decode("ascii", "replace") if token else None


def _challenge(error: str, description: str) -> tuple[bytes, bytes]:
    return (b"www-authenticate", bearer_challenge(REALM, error, description).encode())
