"""gRPC helpers: health, reflection, deadlines, and context carried in metadata."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hdc_common.grpc import caller_identity_token, create_server, insecure_channel
from hdc_common.telemetry import current_traceparent, setup_telemetry, tracer

SERVICE = "hdc.test.v1.Echo"
seen: dict[str, object] = {}


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    seen["identity"] = caller_identity_token.get()
    seen["traceparent"] = current_traceparent()
    if request == b"slow":
        time.sleep(1.0)
    return request


def _add(_servicer: object, server: grpc.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {"Echo": grpc.unary_unary_rpc_method_handler(_echo)},
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
def server(unused_port):
    srv = create_server(unused_port, [(_add, None, SERVICE)])
    srv.start()
    yield srv
    srv.stop(0)


def test_health_reflection_context_and_deadline(server):
    setup_telemetry("test")
    target = f"127.0.0.1:{server.port}"
    channel = insecure_channel(target, [SERVICE], deadline_s=0.3, identity_token=lambda: "tok")
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    refl = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(target))
    answers = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names

    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    with tracer("test").start_as_current_span("client") as span:
        assert echo(b"hi") == b"hi"
        trace_id = f"{span.get_span_context().trace_id:032x}"
    assert seen["identity"] == "tok"
    assert trace_id in str(seen["traceparent"])

    # every call has a deadline even when the caller sets none
    with pytest.raises(grpc.RpcError) as exc:
        echo(b"slow")
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_messages_over_grpcs_4_mib_default_pass_both_ways(server):
    # A placement over thousands of sites: far more than gRPC's default 4 MiB limit.
    channel = insecure_channel(f"127.0.0.1:{server.port}", [SERVICE], deadline_s=30)
    big = bytes(range(256)) * (24 * 1024 * 1024 // 256)
    assert channel.unary_unary(f"/{SERVICE}/Echo")(big) == big
    channel.close()
