"""The IM Authorization header parser."""

from __future__ import annotations

import base64
import json

import pytest
from hdc_im.auth import AuthError, parse_header


def _jwt(claims: dict) -> str:
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def test_multi_line_header_as_im_client_sends_it() -> None:
    header = (
        "id = im; type = InfrastructureManager; username = u; password = p;\\n"
        "id = one; type = OpenStack; host = https://keystone:5000; username = demo; "
        "password = 'a;b=c'; tenant = demo;\\n"
        "id = ec2; type = EC2; username = AK; password = SK;\\n"
    )
    auth = parse_header(header)
    assert auth.username == "u"
    assert [c.id for c in auth.clouds] == ["one", "ec2"]
    assert auth.clouds[0].fields["password"] == "a;b=c"
    assert auth.clouds[0].driver == "openstack"
    assert auth.cloud("ec2").fields["username"] == "AK"


def test_owner_is_stable_and_secret_free() -> None:
    a = parse_header("type = InfrastructureManager; username = u; password = p")
    b = parse_header("type = InfrastructureManager; username = u; password = p")
    c = parse_header("type = InfrastructureManager; username = u; password = q")
    assert a.owner == b.owner != c.owner
    assert "p" not in a.owner.removeprefix("im:").lower() or len(a.owner) > 20


def test_newlines_inside_values() -> None:
    header = (
        "type = InfrastructureManager; username = u; password = p\\n"
        "id = k; type = Kubernetes; host = https://k; token = line1\\\\nline2"
    )
    assert parse_header(header).cloud("k").fields["token"] == "line1\nline2"


@pytest.mark.parametrize(
    ("header", "status", "needle"),
    [
        (None, 401, "No authentication data provided"),
        ("", 401, "No authentication data provided"),
        ("id = x; type = Dummy", 401, "No credentials provided for the InfrastructureManager"),
        ("type = InfrastructureManager; password = p", 401, "No username nor token"),
        ("type = InfrastructureManager; username", 400, "key = value"),
        (
            "type = InfrastructureManager; username = u\\nid = c; type = Nimbus",
            400,
            "Unknown credentials type 'Nimbus'",
        ),
        ("type = InfrastructureManager; username = u\\nid = c; host = h", 400, "no 'type'"),
        ("Basic !!!", 400, "bad Basic credentials"),
        ("Bearer abc", 401, "not a JWT"),
    ],
)
def test_malformed_headers(header, status, needle) -> None:
    with pytest.raises(AuthError) as err:
        parse_header(header)
    assert err.value.status == status
    assert needle in str(err.value)


def test_basic_auth() -> None:
    token = base64.b64encode(b"user:pw").decode()
    assert parse_header(f"Basic {token}").username == "user"


def test_oidc_tokens_only_through_the_gateway() -> None:
    token = _jwt({"sub": "abc", "iss": "https://iam.example"})
    with pytest.raises(AuthError, match="through the hdc gateway"):
        parse_header(f"Bearer {token}")
    with pytest.raises(AuthError, match="does not match"):
        parse_header(f"Bearer {token}", gateway_subject="other@https://iam.example")
    auth = parse_header(f"Bearer {token}", gateway_subject="abc@https://iam.example")
    assert auth.owner == "abc@https://iam.example"
    auth = parse_header(
        f"type = InfrastructureManager; token = {token}\\nid = d; type = Dummy",
        gateway_subject="abc@https://iam.example",
    )
    assert auth.owner == "abc@https://iam.example" and auth.cloud("d") is not None
