"""The token on the InfrastructureManager line of an IM-style Authorization header."""

from __future__ import annotations

from hdc_gateway.im_authorization import im_token


def test_token_from_the_infrastructure_manager_line() -> None:
    header = b"id = im; type = InfrastructureManager; token = abc.def.ghi\\nid = os; type = OpenStack; username = u; password = 'a;b=c'"
    assert im_token(header) == "abc.def.ghi"


def test_real_newlines_quotes_and_case() -> None:
    header = b'id = os; type = OpenStack; host = h\ntype = infrastructuremanager ; token = "t0k"'
    assert im_token(header) == "t0k"


def test_no_token_on_the_line() -> None:
    assert im_token(b"type = InfrastructureManager; username = kim; password = pw") is None
    assert im_token(b"id = d; type = Dummy") is None
    assert im_token(b"type = InfrastructureManager; token = ") is None
    assert im_token(b"\xff\xfe garbage") is None
