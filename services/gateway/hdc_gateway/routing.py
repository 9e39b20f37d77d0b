"""Route table (longest prefix wins) and the per-route access policy."""

from __future__ import annotations

from dataclasses import dataclass

from hdc_common.identity import GROUP_ADMIN_PREFIX, PLATFORM_ADMIN, Identity
from yarl import URL

from hdc_gateway.settings import RouteSettings


class Forbidden(Exception):
    def __init__(self, detail: str, error: str = "insufficient_scope", scope: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.error = error
        self.scope = scope


@dataclass(frozen=True)
class Route:
    prefix: str
    upstream: str
    strip_prefix: bool
    access: str
    anonymous_paths: tuple[str, ...]
    scopes: frozenset[str]
    groups: frozenset[str]
    roles: frozenset[str]
    forward_authorization: bool
    token_from: str
    max_body_bytes: int | None
    read_timeout_s: float | None
    # Parsed once: plain-http upstreams take the lean client for bodyless GETs.
    upstream_host: str
    upstream_port: int
    upstream_plain_http: bool

    @classmethod
    def from_settings(cls, s: RouteSettings, default_max_body: int) -> Route:
        url = URL(s.upstream)
        return cls(
            prefix=s.prefix,
            upstream=s.upstream,
            strip_prefix=s.strip_prefix,
            access=s.access,
            anonymous_paths=tuple(p.rstrip("/") or "/" for p in s.anonymous_paths),
            scopes=frozenset(s.scopes),
            groups=frozenset(s.groups),
            roles=frozenset(s.roles),
            forward_authorization=s.forward_authorization,
            token_from=s.token_from,
            max_body_bytes=s.max_body_bytes if s.max_body_bytes is not None else default_max_body,
            read_timeout_s=s.read_timeout_s,
            upstream_host=url.host or "127.0.0.1",
            upstream_port=url.port or (443 if url.scheme == "https" else 80),
            upstream_plain_http=url.scheme == "http" and not url.path.strip("/"),
        )

    def upstream_path(self, path: str) -> str:
        if not self.strip_prefix or self.prefix == "/":
            return path
        return path[len(self.prefix) :] or "/"

    def access_for(self, path: str) -> str:
        """The route's access, except `anonymous` for its health and docs paths."""
        if self.access == "anonymous" or not self.anonymous_paths:
            return self.access
        rest = path if self.prefix == "/" else path[len(self.prefix) :] or "/"
        for open_path in self.anonymous_paths:
            if rest == open_path or rest.startswith(open_path + "/"):
                return "anonymous"
        return self.access

    def authorize(self, identity: Identity) -> None:
        """Raise Forbidden when the identity lacks what this route requires."""
        missing = self.scopes - set(identity.scopes)
        if missing:
            wanted = " ".join(sorted(self.scopes))
            raise Forbidden(f"token lacks scope(s) {sorted(missing)}", scope=wanted)
        if not (self.groups or self.roles):
            return
        # A platform admin passes every group/role requirement; a group admin passes the
        # requirement of the group they administer.
        if PLATFORM_ADMIN in identity.roles:
            return
        if self.groups & set(identity.groups):
            return
        if any(f"{GROUP_ADMIN_PREFIX}{g}" in identity.roles for g in self.groups):
            return
        if self.roles & set(identity.roles):
            return
        need = sorted(self.groups) + sorted(self.roles)
        raise Forbidden(
            f"caller is not in any of the required groups/roles {need}", error="insufficient_scope"
        )


class RouteTable:
    def __init__(self, routes: list[Route]) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        for route in self._routes:
            prefix = route.prefix
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return route
        return None
