"""REST handlers (bound to openapi.yaml by operationId)."""

from __future__ import annotations

import json
from typing import Any

from connexion.lifecycle import ConnexionResponse
from google.protobuf import json_format
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc_common.errors import Problem

from hdc_ranker import cpr
from hdc_ranker.engine import Ranker
from hdc_ranker.errors import RankInputError
from hdc_ranker.response import rank_and_respond


class RestApi:
    def __init__(self, ranker: Ranker, cpr_error_reason: bool = True) -> None:
        self.ranker = ranker
        self.cpr_error_reason = cpr_error_reason

    def rank_cpr(self, body: Any) -> ConnexionResponse:
        try:
            results = cpr.rank(body)
        except RankInputError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
        # The body is pre-rendered: numbers must read exactly as the Java original prints them.
        return ConnexionResponse(
            status_code=200,
            mimetype="application/json",
            content_type="application/json",
            body=cpr.to_json(results, error_reason=self.cpr_error_reason),
        )

    def rank_v1(self, body: Any) -> ConnexionResponse:
        request = pb.RankRequest()
        try:
            json_format.ParseDict(body, request)
            response = rank_and_respond(self.ranker, request)
        except json_format.ParseError as exc:
            raise Problem(400, "Bad Request", f"not a RankRequest: {exc}") from None
        except RankInputError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
        return ConnexionResponse(
            status_code=200,
            mimetype="application/json",
            content_type="application/json",
            body=json.dumps(
                json_format.MessageToDict(
                    response,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
            ),
        )
