"""The gRPC Ranker service (hdc.ranker.v1.Ranker).

The method is registered with raw-bytes (de)serializers: the compiled decoder reads the
candidates straight from the request bytes, and the answer is written as bytes, so 10,000
candidates never become 10,000 Python message objects. Clients use the generated stub as
usual; the bytes on the wire are the RankRequest / RankResponse of the .proto.

Every call needs the gateway-signed identity in the `x-hdc-identity` metadata (the
orchestrator signs one for the deployment's owner); without a valid one it is UNAUTHENTICATED
and the request bytes are not even decoded.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from hdc.ranker.v1 import ranker_pb2  # noqa: F401 - registers the descriptors (reflection)
from hdc_common.identity import InternalTokenVerifier
from hdc_common.require_identity import grpc_caller

from hdc_ranker.engine import Ranker
from hdc_ranker.errors import RankInputError
from hdc_ranker.response import rank_bytes

SERVICE_NAME = "hdc.ranker.v1.Ranker"
TIMING_METADATA_KEY = "x-hdc-rank-ms"
CPU_METADATA_KEY = "x-hdc-rank-cpu-ms"


class RankerServicer:
    def __init__(self, ranker: Ranker, verifier: InternalTokenVerifier) -> None:
        self.ranker = ranker
        self.verifier = verifier

    def rank(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # The server time counts from here: the caller's identity check included.
        start = time.perf_counter()
        grpc_caller(self.verifier, context)
        try:
            body, elapsed_ms, cpu_ms = rank_bytes(self.ranker, request, start=start)
        except RankInputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        context.set_trailing_metadata(
            ((TIMING_METADATA_KEY, f"{elapsed_ms:.3f}"), (CPU_METADATA_KEY, f"{cpu_ms:.3f}"))
        )
        return body


def add_to_server(servicer: RankerServicer, server: grpc.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            # No (de)serializers: the handler takes and returns the protobuf bytes.
            "Rank": grpc.unary_unary_rpc_method_handler(servicer.rank),
        },
    )
    server.add_generic_rpc_handlers((handler,))


def servicer_entry(
    ranker: Ranker, verifier: InternalTokenVerifier
) -> tuple[Any, RankerServicer, str]:
    return (add_to_server, RankerServicer(ranker, verifier), SERVICE_NAME)
