"""The gRPC contract (hdc.vrouter.v1.VRouter) on a real server, with gateway-signed identity."""

from __future__ import annotations

import grpc
import pytest
from hdc.vrouter.v1 import vrouter_pb2 as pb
from hdc.vrouter.v1 import vrouter_pb2_grpc as pb_grpc
from hdc_common.db import create_engine, migrate, session_factory
from hdc_common.grpc import create_server, insecure_channel
from hdc_common.identity import (
    Identity,
    InternalTokenSigner,
    InternalTokenVerifier,
    generate_keypair,
)
from hdc_vrouter.controller import Controller
from hdc_vrouter.grpc_api import SERVICE_NAME, servicer_entry
from hdc_vrouter.service import MIGRATIONS
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.wgkeys import generate_keypair as wg_keypair


@pytest.fixture
def stack(tmp_path, sqlite_url, unused_port):
    private, public = generate_keypair()
    engine = create_engine(sqlite_url)
    migrate(engine, MIGRATIONS)
    controller = Controller(session_factory(engine), VRouterSettings(data_dir=tmp_path))
    server = create_server(unused_port, [servicer_entry(controller, InternalTokenVerifier(public))])
    server.start()
    signer = InternalTokenSigner(private)
    token = signer.sign(Identity(subject="orchestrator", issuer="https://idp"))
    channel = insecure_channel(
        f"127.0.0.1:{server.port}", [SERVICE_NAME], identity_token=lambda: token
    )
    anonymous = insecure_channel(f"127.0.0.1:{server.port}", [SERVICE_NAME])
    yield pb_grpc.VRouterStub(channel), pb_grpc.VRouterStub(anonymous), controller
    channel.close()
    anonymous.close()
    server.stop(0)
    engine.dispose()


def test_overlay_lifecycle_over_grpc(stack):
    stub, _, controller = stack
    created = stub.CreateOverlay(
        pb.CreateOverlayRequest(name="hybrid", cidr="10.77.0.0/16", hub_endpoint="198.18.0.1:51820")
    )
    assert created.overlay.cidr == "10.77.0.0/16" and created.overlay.topology == "hub-and-spoke"
    assert created.overlay.persistent_keepalive == 25
    assert created.hub.site.role == "hub" and created.hub.enrolment_token
    oid = created.overlay.id

    a = stub.AddSite(
        pb.AddSiteRequest(overlay_id=oid, name="a", private_ranges=["192.168.1.0/24"], nat=True)
    )
    assert (
        a.site.subnet == "10.77.1.0/24"
        and a.site.nat
        and list(a.site.private_ranges) == ["192.168.1.0/24"]
    )
    controller.enrol(created.hub.enrolment_token, wg_keypair()[1])
    controller.enrol(a.enrolment_token, wg_keypair()[1])

    cfg = stub.GetSiteConfig(pb.GetSiteConfigRequest(overlay_id=oid, site_id=a.site.id))
    assert cfg.address == "10.77.1.1/32" and cfg.masquerade
    assert [list(p.allowed_ips) for p in cfg.peers] == [["10.77.0.0/16"]]
    assert cfg.peers[0].endpoint == "198.18.0.1:51820"

    user_data = stub.GetRouterUserData(
        pb.GetRouterUserDataRequest(overlay_id=oid, site_id=a.site.id)
    )
    assert user_data.role == "site" and user_data.user_data.startswith("#cloud-config")
    hub_data = stub.GetRouterUserData(
        pb.GetRouterUserDataRequest(overlay_id=oid, site_id=created.hub.site.id)
    )
    assert "--endpoint 198.18.0.1:51820" in hub_data.user_data

    rotated = stub.RotateSiteKey(pb.RotateSiteKeyRequest(overlay_id=oid, site_id=a.site.id))
    assert rotated.rotation_requested

    health = stub.ListHealth(pb.ListHealthRequest(overlay_id=oid))
    assert [s.name for s in health.sites] == ["hub", "a"] and health.tunnels_total == 2
    assert [s.name for s in stub.ListSites(pb.ListSitesRequest(overlay_id=oid)).sites] == [
        "hub",
        "a",
    ]
    assert stub.GetOverlay(pb.GetOverlayRequest(overlay_id=oid)).sites_allocated == 1

    stub.RemoveSite(pb.RemoveSiteRequest(overlay_id=oid, site_id=a.site.id))
    assert [s.name for s in stub.ListSites(pb.ListSitesRequest(overlay_id=oid)).sites] == ["hub"]
    stub.DeleteOverlay(pb.DeleteOverlayRequest(overlay_id=oid))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetOverlay(pb.GetOverlayRequest(overlay_id=oid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_errors_map_to_status_codes_with_reasons(stack):
    stub, anonymous, _ = stack
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateOverlay(pb.CreateOverlayRequest(name="x", cidr="10.0.0.5/8"))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "host bits" in err.value.details()
    )

    oid = stub.CreateOverlay(
        pb.CreateOverlayRequest(name="x", cidr="10.8.0.0/23", site_prefix=24)
    ).overlay.id
    stub.AddSite(pb.AddSiteRequest(overlay_id=oid, name="a", private_ranges=["172.16.0.0/12"]))
    with pytest.raises(grpc.RpcError) as err:
        stub.AddSite(pb.AddSiteRequest(overlay_id=oid, name="b", private_ranges=["172.20.0.0/16"]))
    assert (
        err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "site 'a'" in err.value.details()
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.AddSite(pb.AddSiteRequest(overlay_id=oid, name="c"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    with pytest.raises(grpc.RpcError) as err:
        anonymous.GetOverlay(pb.GetOverlayRequest(overlay_id=oid))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
