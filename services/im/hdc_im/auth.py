"""The IM `Authorization` header: one line per credential, `key = value` pairs split by `;`.

Clients send the lines joined by the two characters backslash-n, and newlines inside a value
(a certificate, a private key) as backslash-backslash-n. A line with
`type = InfrastructureManager` names the user (username/password or an OIDC token); every
other line is a cloud credential. `Authorization: Bearer <token>` is the OIDC-only form.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from hdc_im.secrets import owner_key_for_password

LINE_SEPARATOR = "\\n"
VALUE_NEWLINE = "\\\\n"

# Cloud credential types and the driver each maps to.
CLOUD_TYPES = {
    "dummy": "dummy",
    "ec2": "ec2",
    "openstack": "openstack",
    "kubernetes": "kubernetes",
    "marathon": "marathon",
    "local": "local",
    "libcloud": "libcloud",
    "gce": "libcloud",
    "azure": "libcloud",
}
IGNORED_TYPES = {"vmrc", "vault"}


class AuthError(Exception):
    """Malformed or unacceptable credentials; `status` says which HTTP error it is."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CloudCredential:
    id: str
    type: str  # lower-case IM type
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def driver(self) -> str:
        return CLOUD_TYPES[self.type]


@dataclass(frozen=True)
class AuthData:
    owner: str  # stable owner key; never the password itself
    username: str
    clouds: tuple[CloudCredential, ...] = ()
    token: str | None = None

    def cloud(self, cloud_id: str | None = None) -> CloudCredential | None:
        for c in self.clouds:
            if cloud_id is None or c.id == cloud_id:
                return c
        return None


def split_tokens(line: str, sep: str) -> list[str]:
    """Split on sep outside single or double quotes (values may contain `;` or `=`)."""
    tokens, cur, quote = [], [], ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur.append(ch)
        elif ch in "'\"":
            quote = ch
        elif ch == sep:
            tokens.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise AuthError("Malformed authorization header: unbalanced quote", 400)
    if "".join(cur).strip():
        tokens.append("".join(cur))
    return tokens


def parse_lines(lines: list[str]) -> list[dict[str, str]]:
    out = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        item: dict[str, str] = {}
        for token in split_tokens(line, ";"):
            if not token.strip():
                continue
            if "=" not in token:
                raise AuthError(
                    f"Malformed authorization header: line {number}: '{token.strip()[:40]}' "
                    "is not of the form key = value",
                    400,
                )
            key, value = token.split("=", 1)
            item[key.strip()] = value.strip().strip("'\"").replace("\\n", "\n")
        if item:
            out.append(item)
    return out


def _oidc_subject(token: str) -> tuple[str, str]:
    """sub and iss of a JWT, read without verification (the gateway verified it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"]), str(claims.get("iss", ""))
    except (IndexError, ValueError, KeyError, TypeError):
        raise AuthError(
            "Invalid InfrastructureManager credentials. OIDC token is not a JWT."
        ) from None


def parse_header(value: str | None, gateway_subject: str | None = None) -> AuthData:
    """AuthData from an Authorization header, or AuthError naming what is wrong.

    gateway_subject is the owner key the gateway verified (X-HDC-Identity), if any: OIDC
    tokens are accepted only when they name that same user, since this service holds no JWKS.
    """
    if not value or not value.strip():
        raise AuthError("No authentication data provided")
    value = value.strip()
    if value.startswith("Basic "):
        try:
            user, password = base64.b64decode(value[6:]).decode().split(":", 1)
        except (ValueError, UnicodeDecodeError):
            raise AuthError("Malformed authorization header: bad Basic credentials", 400) from None
        return AuthData(owner=owner_key_for_password(user, password), username=user)
    if value.startswith("Bearer "):
        return _from_token(value[7:].strip(), gateway_subject, ())
    lines = value.replace(VALUE_NEWLINE, "\n").split(LINE_SEPARATOR)
    items = parse_lines(lines)
    im_line = None
    clouds: list[CloudCredential] = []
    for n, item in enumerate(items):
        kind = item.get("type")
        if not kind:
            raise AuthError(f"Malformed authorization header: line {n + 1} has no 'type'", 400)
        low = kind.lower()
        if low == "infrastructuremanager":
            im_line = item
        elif low in IGNORED_TYPES:
            continue
        elif low in CLOUD_TYPES:
            cid = item.get("id") or f"{low}{n}"
            clouds.append(
                CloudCredential(
                    id=cid, type=low, fields={k: v for k, v in item.items() if k != "type"}
                )
            )
        else:
            raise AuthError(
                f"Unknown credentials type '{kind}' (supported: InfrastructureManager, "
                f"{', '.join(sorted(t.capitalize() for t in CLOUD_TYPES))})",
                400,
            )
    if im_line is None:
        raise AuthError("No credentials provided for the InfrastructureManager.")
    if "token" in im_line:
        return _from_token(im_line["token"], gateway_subject, tuple(clouds))
    if "username" not in im_line:
        raise AuthError("No username nor token for the InfrastructureManager.")
    username, password = im_line["username"], im_line.get("password", "")
    return AuthData(
        owner=owner_key_for_password(username, password), username=username, clouds=tuple(clouds)
    )


def _from_token(
    token: str, gateway_subject: str | None, clouds: tuple[CloudCredential, ...]
) -> AuthData:
    sub, iss = _oidc_subject(token)
    key = f"{sub}@{iss}"
    if gateway_subject is None:
        raise AuthError(
            "Invalid InfrastructureManager credentials. OIDC tokens are accepted only "
            "through the hdc gateway."
        )
    if gateway_subject != key:
        raise AuthError("Invalid InfrastructureManager credentials. Token does not match caller.")
    return AuthData(owner=key, username=sub, clouds=clouds, token=token)
