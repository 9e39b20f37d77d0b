from __future__ import annotations

import time

import jwt
import pytest
from hdc_common.errors import Problem
from hdc_common.identity import (
    HEADER,
    Identity,
    InternalTokenSigner,
    InternalTokenVerifier,
    generate_keypair,
    identity_from_headers,
)


@pytest.fixture(scope="module")
def keys():
    return generate_keypair()


def test_round_trip(keys):
    private, public = keys
    ident = Identity("alice", "https://kc/realms/hdc", groups=("ml",), roles=("group-admin:ml",))
    token = InternalTokenSigner(private).sign(ident)
    got = identity_from_headers({HEADER: token}, InternalTokenVerifier(public))
    assert got == ident
    assert got.key == "alice@https://kc/realms/hdc"
    assert got.is_group_admin("ml") and not got.is_group_admin("other")
    assert got.can_see("bob", "https://kc/realms/hdc", "ml")
    assert not got.can_see("bob", "https://kc/realms/hdc", "other")


def test_missing_header_is_401(keys):
    with pytest.raises(Problem) as exc:
        identity_from_headers({}, InternalTokenVerifier(keys[1]))
    assert exc.value.status == 401
    assert "gateway" in exc.value.detail


def test_other_signer_refused(keys):
    other_private, _ = generate_keypair()
    token = InternalTokenSigner(other_private).sign(Identity("eve", "x"))
    with pytest.raises(Problem, match="Signature verification failed"):
        InternalTokenVerifier(keys[1]).verify(token)


def test_expired_refused(keys):
    token = InternalTokenSigner(keys[0], ttl_s=-60).sign(Identity("alice", "x"))
    with pytest.raises(Problem, match="expired"):
        InternalTokenVerifier(keys[1]).verify(token)


def test_hs256_with_public_key_refused(keys):
    now = int(time.time())
    claims = {
        "sub": "eve",
        "oidc_iss": "x",
        "iat": now,
        "exp": now + 60,
        "iss": "hdc-gateway",
        "aud": "hdc-services",
    }
    forged = jwt.encode(claims, "not-the-key-material-but-long-enough-for-hmac", algorithm="HS256")
    with pytest.raises(Problem):
        InternalTokenVerifier(keys[1]).verify(forged)


def test_no_trusted_key_refuses_everything(keys):
    token = InternalTokenSigner(keys[0]).sign(Identity("alice", "x"))
    with pytest.raises(Problem, match="trusts no identity"):
        InternalTokenVerifier("").verify(token)
