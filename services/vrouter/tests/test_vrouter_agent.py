"""Agent pieces that need no root: the wg config it renders, its state files, its CLI."""

from __future__ import annotations

import stat

import pytest
from hdc_vrouter.agent.cli import parse_args
from hdc_vrouter.agent.state import AgentState, Enrolment
from hdc_vrouter.agent.wireguard import PeerStats, WireGuardInterface, render_conf


def test_render_conf_is_wg_setconf_dialect():
    conf = render_conf(
        "PRIVATE=",
        {
            "listen_port": 51820,
            "peers": [
                {
                    "public_key": "HUB=",
                    "allowed_ips": ["10.200.0.0/16", "192.168.2.0/24"],
                    "endpoint": "198.18.0.1:51820",
                    "persistent_keepalive": 25,
                },
                {
                    "public_key": "B=",
                    "allowed_ips": ["10.200.2.0/24"],
                    "endpoint": None,
                    "persistent_keepalive": 0,
                },
            ],
        },
    )
    assert conf.splitlines() == [
        "[Interface]",
        "PrivateKey = PRIVATE=",
        "ListenPort = 51820",
        "",
        "[Peer]",
        "PublicKey = HUB=",
        "AllowedIPs = 10.200.0.0/16, 192.168.2.0/24",
        "Endpoint = 198.18.0.1:51820",
        "PersistentKeepalive = 25",
        "",
        "[Peer]",
        "PublicKey = B=",
        "AllowedIPs = 10.200.2.0/24",
    ]
    # wg-quick keys (Address, DNS, PostUp) would make `wg syncconf` fail: never emitted.
    assert "Address" not in conf


def test_state_files_are_private(tmp_path):
    state = AgentState(tmp_path / "state")
    assert state.enrolment() is None and state.private_key() is None
    state.save_private_key("KEY=")
    state.save_enrolment(Enrolment("http://c", "site", "overlay", "hdcvr-agent-secret"))
    assert state.private_key() == "KEY="
    assert state.enrolment().agent_secret == "hdcvr-agent-secret"
    for path in (state.key_file, state.enrolment_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
    state.forget()
    assert state.enrolment() is None and state.private_key() is None


def test_interface_names_are_checked(tmp_path):
    with pytest.raises(ValueError):
        WireGuardInterface("x" * 16, tmp_path)
    with pytest.raises(ValueError):
        WireGuardInterface("a/b", tmp_path)
    assert WireGuardInterface("hdcvr-0", tmp_path).nft_table == "hdcvr_hdcvr_0"


def test_peer_stats_as_heartbeat():
    stats = PeerStats("K=", "198.18.0.1:51820", 1700000000, 10, 20)
    assert stats.as_dict() == {
        "public_key": "K=",
        "endpoint": "198.18.0.1:51820",
        "latest_handshake": 1700000000,
        "rx_bytes": 10,
        "tx_bytes": 20,
    }


def test_cli_validates_arguments(capsys):
    args = parse_args(["--controller", "http://c:8105", "--token", "t", "--interval", "2"])
    assert args.interval == 2 and args.interface == "hdcvr0"
    with pytest.raises(SystemExit):
        parse_args(["--controller", "http://c", "--interval", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--controller", "http://c", "--token", "a", "--token-file", "/x"])
    with pytest.raises(SystemExit):
        parse_args([])
    assert "--controller" in capsys.readouterr().err
