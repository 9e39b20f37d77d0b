"""Claims of several providers mapped to hdc groups and roles."""

from __future__ import annotations

from hdc_gateway.roles import RoleMapper
from hdc_gateway.settings import RoleMappingSettings

ISS = "https://iam.example.org/"


def test_keycloak_groups_and_realm_roles() -> None:
    mapper = RoleMapper(RoleMappingSettings(extra_roles={"site-agent": ["site-agent"]}))
    who = mapper.identity(
        {
            "sub": "s",
            "groups": ["/ml-team", "ml-team-admins"],
            "azp": "hdc-cli",
            "realm_access": {"roles": ["site-agent", "offline_access"]},
            "scope": "openid email",
        },
        ISS,
    )
    assert who.groups == ("ml-team", "ml-team-admins")
    assert who.roles == ("user", "group-admin:ml-team", "site-agent")
    assert who.scopes == ("openid", "email")
    assert who.client_id == "hdc-cli"


def test_wlcg_groups_and_platform_admin() -> None:
    who = RoleMapper(RoleMappingSettings()).identity(
        {
            "sub": "s",
            "wlcg.groups": ["/hdc-admins", "/cms", "/cms/admins"],
            "scp": ["storage.read:/"],
        },
        ISS,
    )
    assert who.groups == ("hdc-admins", "cms", "cms/admins")
    assert "platform-admin" in who.roles and "group-admin:cms" in who.roles
    assert who.scopes == ("storage.read:/",)


def test_eduperson_entitlements() -> None:
    who = RoleMapper(RoleMappingSettings()).identity(
        {
            "sub": "s",
            "eduperson_entitlement": [
                "urn:mace:egi.eu:group:vo.access.eosc:role=member#aai.egi.eu",
                "urn:mace:egi.eu:group:ml-team:role=manager#aai.egi.eu",
                "urn:mace:egi.eu:group:ml-team:gpu:role=member#aai.egi.eu",
                "urn:example:not-a-group",
            ],
        },
        ISS,
    )
    assert who.groups == ("vo.access.eosc", "ml-team", "ml-team/gpu")
    assert who.roles == ("user", "group-admin:ml-team")


def test_platform_admin_by_realm_role_and_config() -> None:
    mapper = RoleMapper(RoleMappingSettings(platform_admin_groups=[], platform_admin_roles=["ops"]))
    assert mapper.identity({"sub": "s", "realm_access": {"roles": ["ops"]}}, ISS).is_platform_admin
    assert not mapper.identity({"sub": "s", "groups": ["hdc-admins"]}, ISS).is_platform_admin


def test_malformed_claims_are_ignored() -> None:
    who = RoleMapper(RoleMappingSettings()).identity(
        {"sub": 7, "groups": "single", "realm_access": "nope", "wlcg.groups": [1, None, "/x"]}, ISS
    )
    assert who.subject == "7"
    assert who.groups == ("single", "x")
    assert who.roles == ("user",)
