"""The controller on real databases (SQLite and PostgreSQL): allocation, tokens, keys, health."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hdc_common.db import create_engine, migrate, session_factory
from hdc_common.errors import Problem
from hdc_common.identity import Identity
from hdc_vrouter.controller import Controller
from hdc_vrouter.models import EnrolmentToken, Site, utcnow
from hdc_vrouter.service import MIGRATIONS
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.wgkeys import generate_keypair

ALICE = Identity(subject="alice", issuer="https://idp.example")
BOB = Identity(subject="bob", issuer="https://idp.example")
ADMIN = Identity(subject="root", issuer="https://idp.example", roles=("platform-admin",))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def controller(request, tmp_path):
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = create_engine(url)
    migrate(engine, MIGRATIONS)
    settings = VRouterSettings(data_dir=tmp_path, heartbeat_timeout_s=30)
    yield Controller(session_factory(engine), settings)
    engine.dispose()


def problem(fn, *args, **kwargs) -> Problem:
    with pytest.raises(Problem) as err:
        fn(*args, **kwargs)
    return err.value


def enrol(controller, token):
    private, public = generate_keypair()
    result = controller.enrol(token, public)
    return result, public


def test_sites_get_disjoint_blocks_and_the_hub_block_zero(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    assert ov["hub"]["subnet"] == "10.200.0.0/24" and ov["hub"]["tunnel_address"] == "10.200.0.1"
    sites = [controller.add_site(ALICE, ov["id"], name=f"s{i}") for i in range(5)]
    assert [s["subnet"] for s in sites] == [f"10.200.{i}.0/24" for i in range(1, 6)]
    assert [s["tunnel_address"] for s in sites] == [f"10.200.{i}.1" for i in range(1, 6)]
    assert all(s["enrolment_token"].startswith("hdcvr-enrol-") for s in sites)
    listed = controller.list_sites(ALICE, ov["id"])
    assert [s["name"] for s in listed] == ["hub", "s0", "s1", "s2", "s3", "s4"]
    assert "enrolment_token" not in listed[1]
    assert controller.get_overlay(ALICE, ov["id"])["sites_allocated"] == 5
    assert problem(controller.add_site, ALICE, ov["id"], name="s0").status == 409
    assert problem(controller.add_site, ALICE, ov["id"], name="hub").status == 400


def test_50_concurrent_allocations_never_overlap(controller):
    ov = controller.create_overlay(ALICE, name="busy", cidr="10.50.0.0/16", site_prefix=26)

    def add(i: int):
        # Every fifth request also claims the same private range: exactly one may win it.
        ranges = ["192.168.77.0/24"] if i % 5 == 0 else [f"172.20.{i}.0/24"]
        try:
            return controller.add_site(ALICE, ov["id"], name=f"site-{i}", private_ranges=ranges)
        except Problem as exc:
            return exc

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(add, range(50)))
    sites = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Problem)]
    assert len(sites) == 41 and len(refused) == 9
    assert all(p.status == 409 and p.extensions["reason"] == "range_overlap" for p in refused)
    nets = [ipaddress.ip_network(s["subnet"]) for s in sites] + [
        ipaddress.ip_network("10.50.0.0/26")
    ]
    assert len(set(nets)) == len(nets)
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    claimed = [s for s in sites if s["private_ranges"] == ["192.168.77.0/24"]]
    assert len(claimed) == 1
    # What the database holds agrees with what the callers were told.
    stored = controller.list_sites(ALICE, ov["id"])
    assert sorted(s["subnet"] for s in stored if s["role"] == "site") == sorted(
        s["subnet"] for s in sites
    )


def test_exhausted_pool_is_refused_and_a_freed_block_is_reused(controller):
    ov = controller.create_overlay(ALICE, name="small", cidr="10.9.0.0/22", site_prefix=24)
    sites = [controller.add_site(ALICE, ov["id"], name=f"s{i}") for i in range(3)]
    err = problem(controller.add_site, ALICE, ov["id"], name="one-too-many")
    assert err.status == 409 and err.extensions["reason"] == "pool_exhausted"
    assert "exhausted" in err.detail and "10.9.0.0/22" in err.detail
    controller.remove_site(ALICE, ov["id"], sites[1]["id"])
    again = controller.add_site(ALICE, ov["id"], name="late")
    assert again["subnet"] == sites[1]["subnet"]


def test_overlapping_ranges_are_refused_with_the_conflicting_site(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    controller.add_site(ALICE, ov["id"], name="a", private_ranges=["192.168.0.0/16"])
    err = problem(
        controller.add_site, ALICE, ov["id"], name="b", private_ranges=["192.168.10.0/24"]
    )
    assert err.status == 409
    assert err.extensions == {
        "reason": "range_overlap",
        "conflicting_site": "a",
        "conflicting_range": "192.168.0.0/16",
    }
    err = problem(controller.add_site, ALICE, ov["id"], name="c", private_ranges=["10.200.3.0/24"])
    assert err.status == 400 and "overlaps the overlay CIDR" in err.detail
    assert (
        problem(
            controller.create_overlay, ALICE, name="x", cidr="10.0.0.0/8", topology="ring"
        ).status
        == 400
    )
    assert problem(controller.add_site, ALICE, ov["id"], name="d", endpoint="nope").status == 400


def test_enrolment_tokens_are_single_use_and_expire(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    site = controller.add_site(ALICE, ov["id"], name="a")
    result, public = enrol(controller, site["enrolment_token"])
    assert result["site_id"] == site["id"] and result["agent_secret"].startswith("hdcvr-agent-")
    assert controller.get_site(ALICE, ov["id"], site["id"])["public_key"] == public

    replay = problem(controller.enrol, site["enrolment_token"], generate_keypair()[1])
    assert replay.status == 409 and replay.extensions["reason"] == "token_used"
    unknown = problem(controller.enrol, "hdcvr-enrol-made-up", generate_keypair()[1])
    assert unknown.status == 401 and unknown.extensions["reason"] == "token_unknown"

    fresh = controller.new_enrolment_token(ALICE, ov["id"], site["id"])
    with controller.sessions.begin() as s:
        s.execute(sa.update(EnrolmentToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    expired = problem(controller.enrol, fresh["enrolment_token"], generate_keypair()[1])
    assert expired.status == 401 and expired.extensions["reason"] == "token_expired"

    # Tokens are stored only as hashes.
    with controller.sessions() as s:
        stored = s.execute(sa.select(EnrolmentToken.token_hash)).scalars().all()
        secrets_at_rest = s.execute(sa.select(Site.agent_secret_hash)).scalars().all()
    assert site["enrolment_token"] not in stored and len(stored) == 3
    assert result["agent_secret"] not in secrets_at_rest


def test_one_token_raced_by_ten_agents_enrols_exactly_one(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    token = controller.add_site(ALICE, ov["id"], name="a")["enrolment_token"]

    def attempt(_):
        try:
            return controller.enrol(token, generate_keypair()[1])
        except Problem as exc:
            return exc

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(attempt, range(10)))
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(r.status == 409 for r in results if isinstance(r, Problem))


def test_invalid_and_duplicate_public_keys_are_refused(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    a = controller.add_site(ALICE, ov["id"], name="a")
    b = controller.add_site(ALICE, ov["id"], name="b")
    err = problem(controller.enrol, a["enrolment_token"], "AAAA")
    assert err.status == 400 and err.extensions["reason"] == "invalid_public_key"
    # A refused enrolment does not burn the token.
    _, public = enrol(controller, a["enrolment_token"])
    dup = problem(controller.enrol, b["enrolment_token"], public)
    assert dup.status == 409 and "already registered by site 'a'" in dup.detail


def test_hub_and_spoke_configs(controller):
    ov = controller.create_overlay(
        ALICE, name="o", cidr="10.200.0.0/16", hub_endpoint="198.18.0.1:51820"
    )
    hub, hub_key = enrol(controller, ov["hub"]["enrolment_token"])
    a = controller.add_site(ALICE, ov["id"], name="a", private_ranges=["192.168.1.0/24"])
    b = controller.add_site(ALICE, ov["id"], name="b", private_ranges=["192.168.2.0/24"], nat=True)
    ra, a_key = enrol(controller, a["enrolment_token"])
    rb, b_key = enrol(controller, b["enrolment_token"])

    cfg_a = controller.agent_config(ra["agent_secret"])
    assert cfg_a["address"] == "10.200.1.1/32" and cfg_a["masquerade"] is False
    assert [p["public_key"] for p in cfg_a["peers"]] == [hub_key]
    assert cfg_a["peers"][0]["allowed_ips"] == ["10.200.0.0/16", "192.168.2.0/24"]
    assert cfg_a["peers"][0]["endpoint"] == "198.18.0.1:51820"
    assert cfg_a["peers"][0]["persistent_keepalive"] == 25
    assert cfg_a["routes"] == ["10.200.0.0/16", "192.168.2.0/24"]
    assert controller.agent_config(rb["agent_secret"])["masquerade"] is True

    cfg_hub = controller.agent_config(hub["agent_secret"])
    assert {p["public_key"]: p["allowed_ips"] for p in cfg_hub["peers"]} == {
        a_key: ["10.200.1.0/24", "192.168.1.0/24"],
        b_key: ["10.200.2.0/24", "192.168.2.0/24"],
    }
    assert cfg_hub["forwarding"] is True
    assert controller.site_config(ALICE, ov["id"], a["id"]) == cfg_a


def test_full_mesh_configs(controller):
    ov = controller.create_overlay(ALICE, name="m", cidr="10.201.0.0/16", topology="full-mesh")
    _, hub_key = enrol(controller, ov["hub"]["enrolment_token"])
    a = controller.add_site(
        ALICE, ov["id"], name="a", private_ranges=["192.168.1.0/24"], endpoint="198.18.0.2:51820"
    )
    b = controller.add_site(ALICE, ov["id"], name="b")
    ra, _ = enrol(controller, a["enrolment_token"])
    _, b_key = enrol(controller, b["enrolment_token"])
    peers = {p["name"]: p for p in controller.agent_config(ra["agent_secret"])["peers"]}
    assert peers["hub"]["allowed_ips"] == ["10.201.0.1/32"]
    assert peers["b"]["allowed_ips"] == ["10.201.2.0/24"] and peers["b"]["public_key"] == b_key
    b_peers = {p["name"]: p for p in controller.site_config(ALICE, ov["id"], b["id"])["peers"]}
    assert b_peers["a"]["endpoint"] == "198.18.0.2:51820"
    assert b_peers["a"]["allowed_ips"] == ["10.201.1.0/24", "192.168.1.0/24"]
    assert hub_key == peers["hub"]["public_key"]


def test_rotation_replaces_the_key_everywhere(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    a = controller.add_site(ALICE, ov["id"], name="a")
    assert (
        problem(controller.request_rotation, ALICE, ov["id"], a["id"]).status == 409
    )  # not enrolled
    hub, _ = enrol(controller, ov["hub"]["enrolment_token"])
    ra, old = enrol(controller, a["enrolment_token"])
    assert controller.heartbeat(ra["agent_secret"], [])["rotate_key"] is False

    controller.request_rotation(ALICE, ov["id"], a["id"])
    beat = controller.heartbeat(ra["agent_secret"], [])
    assert beat["rotate_key"] is True
    assert problem(controller.agent_rotate_key, ra["agent_secret"], old).status == 409
    assert problem(controller.agent_rotate_key, ra["agent_secret"], "short").status == 400
    _, new = generate_keypair()
    cfg = controller.agent_rotate_key(ra["agent_secret"], new)
    assert cfg["rotate_key"] is False and cfg["config_version"] > beat["config_version"]
    hub_peers = [p["public_key"] for p in controller.agent_config(hub["agent_secret"])["peers"]]
    assert hub_peers == [new]
    site = controller.get_site(ALICE, ov["id"], a["id"])
    assert site["public_key"] == new and site["key_rotated_at"] is not None


def test_heartbeats_mark_tunnels_up_and_down(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    hub, hub_key = enrol(controller, ov["hub"]["enrolment_token"])
    a = controller.add_site(ALICE, ov["id"], name="a")
    ra, a_key = enrol(controller, a["enrolment_token"])
    now = int(utcnow().timestamp())

    health = controller.health(ALICE, ov["id"])
    assert [s["status"] for s in health["sites"]] == ["offline", "offline"]
    assert health["tunnels_up"] == 0 and health["tunnels_total"] == 2

    controller.heartbeat(
        ra["agent_secret"],
        [
            {
                "public_key": hub_key,
                "latest_handshake": now - 5,
                "rx_bytes": 1000,
                "tx_bytes": 2000,
                "endpoint": "198.18.0.1:51820",
            }
        ],
    )
    controller.heartbeat(
        hub["agent_secret"],
        [
            {
                "public_key": a_key,
                "latest_handshake": now - 400,
                "rx_bytes": 2000,
                "tx_bytes": 1000,
                "endpoint": "198.18.0.2:40000",
            }
        ],
    )
    current = controller.get_overlay(ALICE, ov["id"])["config_version"]
    controller.heartbeat(ra["agent_secret"], [], config_version=current - 1)
    assert controller.health(ALICE, ov["id"])["sites"][1]["config_current"] is False
    controller.heartbeat(
        ra["agent_secret"],
        [
            {
                "public_key": hub_key,
                "latest_handshake": now - 5,
                "rx_bytes": 1000,
                "tx_bytes": 2000,
                "endpoint": "198.18.0.1:51820",
            }
        ],
        config_version=current,
    )
    health = controller.health(ALICE, ov["id"])
    by_name = {s["name"]: s for s in health["sites"]}
    assert (
        by_name["a"]["config_current"] is True and by_name["a"]["config_version_applied"] == current
    )
    assert by_name["a"]["status"] == "online"
    assert by_name["a"]["tunnels"][0] | {"latest_handshake": None} == {
        "peer_site_id": ov["hub"]["id"],
        "peer_name": "hub",
        "state": "up",
        "latest_handshake": None,
        "rx_bytes": 1000,
        "tx_bytes": 2000,
        "endpoint": "198.18.0.1:51820",
    }
    # The hub last completed a handshake 400 s ago: past WireGuard's 180 s, that tunnel is down.
    assert by_name["hub"]["tunnels"][0]["state"] == "down"
    assert health["tunnels_up"] == 1
    # The hub saw site a at 198.18.0.2:40000; configs now tell peers where to find it.
    assert (
        controller.agent_config(hub["agent_secret"])["peers"][0]["endpoint"] == "198.18.0.2:40000"
    )

    # A router whose heartbeats stopped is offline and all its tunnels are down.
    with controller.sessions.begin() as s:
        s.execute(
            sa.update(Site)
            .where(Site.id == a["id"])
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    by_name = {s["name"]: s for s in controller.health(ALICE, ov["id"])["sites"]}
    assert by_name["a"]["status"] == "offline" and by_name["a"]["tunnels"][0]["state"] == "down"

    bad = problem(controller.heartbeat, ra["agent_secret"], [{"public_key": "x"}])
    assert bad.status == 400 and bad.detail.startswith("peers[0]")
    assert problem(controller.heartbeat, "hdcvr-agent-nope", []).status == 401


def test_removed_site_is_disowned_and_dropped_from_peers(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    hub, _ = enrol(controller, ov["hub"]["enrolment_token"])
    a = controller.add_site(ALICE, ov["id"], name="a")
    ra, _ = enrol(controller, a["enrolment_token"])
    assert len(controller.agent_config(hub["agent_secret"])["peers"]) == 1
    controller.remove_site(ALICE, ov["id"], a["id"])
    assert controller.agent_config(hub["agent_secret"])["peers"] == []
    assert problem(controller.agent_config, ra["agent_secret"]).status == 401
    assert problem(controller.remove_site, ALICE, ov["id"], a["id"]).status == 404
    assert problem(controller.remove_site, ALICE, ov["id"], ov["hub"]["id"]).status == 409


def test_overlays_are_visible_to_their_owner_only(controller):
    ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
    assert problem(controller.get_overlay, BOB, ov["id"]).status == 404
    assert problem(controller.add_site, BOB, ov["id"], name="x").status == 404
    assert controller.list_overlays(BOB) == []
    assert controller.get_overlay(ADMIN, ov["id"])["id"] == ov["id"]
    assert (
        problem(
            controller.create_overlay, BOB, name="g", cidr="10.1.0.0/16", group="physics"
        ).status
        == 403
    )
    controller.delete_overlay(ALICE, ov["id"])
    assert problem(controller.get_overlay, ALICE, ov["id"]).status == 404
