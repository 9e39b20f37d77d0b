"""gRPC helpers: servers with health and reflection, channels with deadlines and retries.

Trace context and the caller's identity ride in call metadata (`traceparent`,
`x-hdc-identity`); the server side puts them in context so handlers and logs see them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from contextvars import ContextVar
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hdc_common.errors import ConfigError
from hdc_common.identity import GRPC_METADATA_KEY
from hdc_common.telemetry import attach_traceparent, current_traceparent

DEFAULT_DEADLINE_S = 5.0

# (add_XServicer_to_server, servicer, full service name e.g. "hdc.ranker.v1.Ranker")
Servicer = tuple[Callable[[Any, grpc.Server], None], Any, str]

#: The raw `x-hdc-identity` token of the call being served (verify it before trusting it).
caller_identity_token: ContextVar[str | None] = ContextVar("caller_identity_token", default=None)


class _ContextInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        meta = dict(details.invocation_metadata or ())
        traceparent = meta.get("traceparent")
        identity = meta.get(GRPC_METADATA_KEY)
        inner = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            token = caller_identity_token.set(identity)
            try:
                with attach_traceparent(traceparent):
                    return inner(request, context)
            finally:
                caller_identity_token.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcServer:
    """A started-on-demand gRPC server; `start()`/`stop()` match the service runner."""

    def __init__(
        self,
        server: grpc.Server,
        health_servicer: health.HealthServicer,
        names: list[str],
        port: int,
    ) -> None:
        self.server = server
        self.health = health_servicer
        self.names = names
        self.port = port

    def start(self) -> None:
        self.server.start()
        for name in [*self.names, ""]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


# gRPC's own default is 4 MiB received per message. A placement over thousands of sites is
# bigger than that (10,000 candidates to rank are ~1.3 MB, their offers with every matching
# image several times more), so both ends accept messages up to this size.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MESSAGE_LIMITS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def create_server(
    port: int, servicers: Sequence[Servicer], host: str = "127.0.0.1", max_workers: int = 16
) -> GrpcServer:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[_ContextInterceptor()],
        options=[("grpc.so_reuseport", 0), *_MESSAGE_LIMITS],
    )
    names = []
    for add, servicer, name in servicers:
        add(servicer, server)
        names.append(name)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ConfigError(f"grpc_port {port}: cannot bind {host}:{port} (in use?)")
    return GrpcServer(server, health_servicer, names, bound)


def _retry_config(service_names: Iterable[str]) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": name} for name in service_names],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, identity_token: Callable[[], str | None] | None, deadline_s: float) -> None:
        self._identity_token = identity_token
        self._deadline_s = deadline_s

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = list(details.metadata or ())
        traceparent = current_traceparent()
        if traceparent:
            metadata.append(("traceparent", traceparent))
        token = self._identity_token() if self._identity_token else None
        if token:
            metadata.append((GRPC_METADATA_KEY, token))
        details = _CallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._deadline_s,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(details, request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def insecure_channel(
    target: str,
    service_names: Iterable[str] = (),
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    identity_token: Callable[[], str | None] | None = None,
) -> grpc.Channel:
    """A channel whose every call has a deadline, retries UNAVAILABLE, and carries context."""
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _retry_config(service_names)),
            *_MESSAGE_LIMITS,
        ],
    )
    return grpc.intercept_channel(channel, _MetadataInterceptor(identity_token, deadline_s))
