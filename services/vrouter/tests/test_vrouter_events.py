"""Facts the vrouter announces on hdc.events (outbox, CloudEvents), seen by another service."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hdc_common.bus import Bus, create_tables
from hdc_common.db import create_engine, migrate, session_factory
from hdc_common.identity import Identity
from hdc_vrouter.controller import Controller
from hdc_vrouter.models import Site, utcnow
from hdc_vrouter.service import MIGRATIONS
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.wgkeys import generate_keypair

ALICE = Identity(subject="alice", issuer="https://idp")


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def bus_url(request):
    if request.param == "memory":
        return f"memory:///vrouter-{uuid.uuid4().hex[:8]}"
    return request.getfixturevalue("rabbitmq_url")


def test_lifecycle_and_tunnel_events_reach_a_subscriber(bus_url, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/vrouter.db")
    migrate(engine, MIGRATIONS)
    sessions = session_factory(engine)
    bus = Bus(bus_url, service="vrouter", sessions=sessions, relay_interval=0.1)
    controller = Controller(
        sessions, VRouterSettings(data_dir=tmp_path, heartbeat_timeout_s=30), bus=bus
    )

    watcher_engine = create_engine(f"sqlite:///{tmp_path}/watcher.db")
    create_tables(watcher_engine)
    watcher = Bus(bus_url, service="watcher", sessions=session_factory(watcher_engine))
    seen = []

    @watcher.on_event("vrouter.#", queue="watcher.vrouter")
    def collect(_session, event):
        seen.append(event)

    watcher.start()
    bus.start()
    try:
        ov = controller.create_overlay(ALICE, name="o", cidr="10.200.0.0/16")
        hub_private, hub_key = generate_keypair()
        hub = controller.enrol(ov["hub"]["enrolment_token"], hub_key)
        site = controller.add_site(ALICE, ov["id"], name="a")
        agent = controller.enrol(site["enrolment_token"], generate_keypair()[1])
        now = int(utcnow().timestamp())
        controller.heartbeat(
            agent["agent_secret"], [{"public_key": hub_key, "latest_handshake": now}]
        )
        # Same state again: no duplicate announcement.
        controller.heartbeat(
            agent["agent_secret"], [{"public_key": hub_key, "latest_handshake": now}]
        )
        controller.heartbeat(
            agent["agent_secret"], [{"public_key": hub_key, "latest_handshake": 0}]
        )
        controller.request_rotation(ALICE, ov["id"], site["id"])
        controller.agent_rotate_key(agent["agent_secret"], generate_keypair()[1])
        with sessions.begin() as s:
            s.execute(
                sa.update(Site)
                .where(Site.id == site["id"])
                .values(last_heartbeat_at=utcnow() - timedelta(minutes=5))
            )
        assert controller.sweep_offline() == 1
        assert controller.sweep_offline() == 0
        controller.remove_site(ALICE, ov["id"], site["id"])
        controller.heartbeat(hub["agent_secret"], [])

        expected = [
            "vrouter.overlay.created",
            "vrouter.router.enrolled",
            "vrouter.site.added",
            "vrouter.router.enrolled",
            "vrouter.router.online",
            "vrouter.tunnel.up",
            "vrouter.tunnel.down",
            "vrouter.router.key_rotated",
            "vrouter.router.offline",
            "vrouter.site.removed",
            "vrouter.router.online",
        ]
        deadline = time.monotonic() + 20
        while len(seen) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(e.type for e in seen) == sorted(expected)
        by_type = {}
        for event in seen:
            by_type.setdefault(event.type, []).append(event)
        up = by_type["vrouter.tunnel.up"][0]
        assert up.data == {
            "overlay_id": ov["id"],
            "site_id": site["id"],
            "peer_site_id": ov["hub"]["id"],
            "peer_public_key": hub_key,
        }
        assert up.subject == site["id"] and up.source == "/hdc/vrouter"
        assert by_type["vrouter.site.added"][0].data["subnet"] == "10.200.1.0/24"
    finally:
        bus.stop()
        watcher.stop()
        engine.dispose()
        watcher_engine.dispose()
