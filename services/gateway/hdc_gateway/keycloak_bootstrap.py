"""Bootstrap a Keycloak realm for hdc (Helm install job, test setup) with python-keycloak.

Creates the realm from a realm JSON (like `tests/keycloak/hdc-realm.json`) when it does
not exist, and otherwise adds the groups and clients it lacks, so running it again is
harmless. Client secrets can come from environment variables instead of the file, and
the file's users can be left out in production. Prints the gateway `issuers:` entry.

    hdc-keycloak-bootstrap --url https://kc.example.org --realm-file hdc-realm.json \
        --admin-user admin --admin-password-env KC_ADMIN_PASSWORD \
        --client-secret-env site-agent-1=SITE_AGENT_SECRET --no-users
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class BootstrapError(Exception):
    pass


def load_realm(
    path: Path,
    *,
    realm_name: str | None = None,
    client_secrets: dict[str, str] | None = None,
    include_users: bool = True,
) -> dict[str, Any]:
    try:
        realm = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BootstrapError(f"realm file {path}: {exc}") from None
    if not isinstance(realm, dict) or not realm.get("realm"):
        raise BootstrapError(f"realm file {path}: no 'realm' name at top level")
    if realm_name:
        realm["realm"] = realm_name
        # Realm-scoped default role names carry the realm name.
        for user in realm.get("users", []):
            user["realmRoles"] = [
                f"default-roles-{realm_name}" if r.startswith("default-roles-") else r
                for r in user.get("realmRoles", [])
            ]
    clients = {c.get("clientId"): c for c in realm.get("clients", [])}
    for client_id, secret in (client_secrets or {}).items():
        if client_id not in clients:
            raise BootstrapError(f"--client-secret-env: realm has no client {client_id!r}")
        clients[client_id]["secret"] = secret
    if not include_users:
        # Service-account users belong to their clients and stay.
        realm["users"] = [u for u in realm.get("users", []) if u.get("serviceAccountClientId")]
    return realm


def bootstrap(admin: Any, realm: dict[str, Any]) -> dict[str, list[str]]:
    """Create or complete the realm; returns what was created."""
    name = realm["realm"]
    existing = {r["realm"] for r in admin.get_realms()}
    if name not in existing:
        admin.create_realm(payload=realm, skip_exists=True)
        return {"realm": [name]}
    created: dict[str, list[str]] = {"groups": [], "clients": []}
    admin.change_current_realm(name)
    try:
        have_groups = {g["name"] for g in admin.get_groups()}
        for group in realm.get("groups", []):
            if group["name"] not in have_groups:
                admin.create_group({"name": group["name"]})
                created["groups"].append(group["name"])
        have_clients = {c["clientId"] for c in admin.get_clients()}
        for client in realm.get("clients", []):
            if client["clientId"] not in have_clients:
                admin.create_client(client, skip_exists=True)
                created["clients"].append(client["clientId"])
    finally:
        admin.change_current_realm("master")
    return created


def issuer_snippet(url: str, realm: str, audience: str = "hdc-gateway") -> str:
    return f"issuers:\n  - issuer: {url.rstrip('/')}/realms/{realm}\n    audiences: [{audience}]\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hdc-keycloak-bootstrap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", required=True, help="Keycloak base URL")
    parser.add_argument("--realm-file", required=True, type=Path)
    parser.add_argument("--realm-name", help="override the realm name in the file")
    parser.add_argument("--admin-user", default="admin")
    parser.add_argument(
        "--admin-password-env",
        default="KEYCLOAK_ADMIN_PASSWORD",
        help="environment variable holding the admin password",
    )
    parser.add_argument(
        "--client-secret-env",
        action="append",
        default=[],
        metavar="CLIENT=VAR",
        help="take CLIENT's secret from environment variable VAR",
    )
    parser.add_argument("--no-users", action="store_true", help="skip the file's (test) users")
    args = parser.parse_args(argv)
    try:
        password = os.environ.get(args.admin_password_env)
        if not password:
            raise BootstrapError(f"set the admin password in ${args.admin_password_env}")
        secrets: dict[str, str] = {}
        for item in args.client_secret_env:
            client_id, sep, var = item.partition("=")
            if not sep or not os.environ.get(var):
                raise BootstrapError(
                    f"--client-secret-env {item}: expected CLIENT=VAR with VAR set"
                )
            secrets[client_id] = os.environ[var]
        realm = load_realm(
            args.realm_file,
            realm_name=args.realm_name,
            client_secrets=secrets,
            include_users=not args.no_users,
        )
        from keycloak import KeycloakAdmin
        from keycloak.exceptions import KeycloakError

        try:
            admin = KeycloakAdmin(
                server_url=args.url,
                username=args.admin_user,
                password=password,
                realm_name="master",
                user_realm_name="master",
                timeout=30,
            )
            created = bootstrap(admin, realm)
        except KeycloakError as exc:
            raise BootstrapError(f"Keycloak at {args.url}: {exc}") from None
    except BootstrapError as exc:
        print(f"hdc-keycloak-bootstrap: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"# created: {json.dumps(created)}")
    print(issuer_snippet(args.url, realm["realm"]), end="")


if __name__ == "__main__":
    main()
