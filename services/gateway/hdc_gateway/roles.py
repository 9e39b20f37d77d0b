"""From a provider's claims to an hdc `Identity`: groups, hdc roles, scopes.

Providers spell groups differently: Keycloak `groups` (names or full paths), WLCG
`wlcg.groups` (`/ml-team`, `/ml-team/admins`), INDIGO IAM `groups`, `realm_access.roles`,
and AARC `eduperson_entitlement` URNs (`urn:mace:egi.eu:group:ml-team:role=manager#aai`).
All are normalised to plain group names; the mapping configuration then decides who is a
platform admin and who administers which group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hdc_common.identity import GROUP_ADMIN_PREFIX, PLATFORM_ADMIN, Identity

from hdc_gateway.settings import RoleMappingSettings

USER = "user"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping | bytes):
        return [v for v in value if isinstance(v, str)]
    return []


def _group_name(raw: str) -> str:
    return raw.strip().strip("/")


def _entitlement(raw: str) -> tuple[str, str | None] | None:
    """`urn:...:group:<g>[:<sub>...][:role=<r>][#authority]` → (`g[/sub]`, role)."""
    body = raw.split("#", 1)[0]
    marker = ":group:"
    if marker not in body:
        return None
    parts = body.split(marker, 1)[1].split(":")
    role = None
    if parts and parts[-1].startswith("role="):
        role = parts.pop()[len("role=") :]
    names = [p for p in parts if p]
    return ("/".join(names), role) if names else None


class RoleMapper:
    def __init__(self, settings: RoleMappingSettings) -> None:
        self._s = settings

    def identity(self, claims: Mapping[str, Any], issuer: str) -> Identity:
        groups: list[str] = []
        provider_roles: list[str] = []
        admin_of: set[str] = set()
        for raw in _strings(claims.get("groups")) + _strings(claims.get("wlcg.groups")):
            groups.append(_group_name(raw))
        realm_access = claims.get("realm_access")
        if isinstance(realm_access, Mapping):
            provider_roles.extend(_strings(realm_access.get("roles")))
        for raw in _strings(claims.get("eduperson_entitlement")):
            parsed = _entitlement(raw)
            if parsed is None:
                continue
            group, role = parsed
            groups.append(group)
            if role in self._s.entitlement_admin_roles:
                admin_of.add(group)
        groups = list(dict.fromkeys(g for g in groups if g))
        group_set = set(groups)
        for group in groups:
            for suffix in self._s.group_admin_suffixes:
                if group.endswith(suffix) and len(group) > len(suffix):
                    admin_of.add(group[: -len(suffix)])
        roles = [USER]
        if group_set & set(self._s.platform_admin_groups) or set(provider_roles) & set(
            self._s.platform_admin_roles
        ):
            roles.append(PLATFORM_ADMIN)
        roles.extend(f"{GROUP_ADMIN_PREFIX}{g}" for g in sorted(admin_of))
        sources = group_set | set(provider_roles)
        for hdc_role, granted_by in self._s.extra_roles.items():
            if sources & set(granted_by):
                roles.append(hdc_role)
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else _strings(claims.get("scp"))
        client_id = claims.get("azp") or claims.get("client_id")
        return Identity(
            subject=str(claims["sub"]),
            issuer=issuer,
            groups=tuple(groups),
            roles=tuple(dict.fromkeys(roles)),
            scopes=tuple(scopes),
            name=_str_or_none(claims.get("name") or claims.get("preferred_username")),
            email=_str_or_none(claims.get("email")),
            client_id=_str_or_none(client_id),
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
