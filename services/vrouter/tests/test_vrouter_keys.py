"""WireGuard key handling: compatible with `wg`, and bad keys refused with a reason."""

import base64
import subprocess

import pytest
from hdc_common.errors import Problem
from hdc_vrouter import credentials
from hdc_vrouter.wgkeys import generate_keypair, public_from_private, validate_public_key


def test_generated_keys_are_valid_and_distinct():
    pairs = {generate_keypair() for _ in range(5)}
    assert len(pairs) == 5
    for private, public in pairs:
        assert len(base64.b64decode(private)) == 32
        assert validate_public_key(public) == public
        assert public_from_private(private) == public


def test_keys_match_wg_pubkey():
    private, public = generate_keypair()
    out = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == public
    wg_private = subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    wg_public = subprocess.run(
        ["wg", "pubkey"], input=wg_private, capture_output=True, text=True, check=True
    )
    assert validate_public_key(wg_public.stdout.strip()) == wg_public.stdout.strip()
    assert public_from_private(wg_private) == wg_public.stdout.strip()


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "required"),
        (None, "required"),
        (42, "required"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"x" * 31).decode(), "decodes to 31 bytes"),
        (base64.b64encode(b"x" * 33).decode(), "decodes to 33 bytes"),
        (base64.b64encode(bytes(32)).decode(), "low-order"),
        # The order-8 point 0x01 (x = 1) is another key every exchange turns into zeros.
        (base64.b64encode(b"\x01" + bytes(31)).decode(), "low-order"),
    ],
)
def test_invalid_public_keys_are_refused(key, reason):
    with pytest.raises(Problem) as err:
        validate_public_key(key)
    assert err.value.status == 400
    assert reason in err.value.detail
    assert err.value.extensions["reason"] == "invalid_public_key"


def test_credentials_are_random_and_hashed():
    a, b = credentials.new_enrolment_token(), credentials.new_enrolment_token()
    assert a != b and a.startswith("hdcvr-enrol-")
    assert credentials.digest(a) != a and len(credentials.digest(a)) == 64
    assert credentials.digest(a) == credentials.digest(a)
