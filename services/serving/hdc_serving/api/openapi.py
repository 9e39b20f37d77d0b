"""The OpenAPI 3 document, generated from each served model's argument fields.

Models are plug-ins, so a fixed spec file cannot describe their arguments; the document is
built at start from the same `ArgSpec`s that validate requests, and cannot drift from them.
"""

from __future__ import annotations

from typing import Any

from hdc_serving import __version__
from hdc_serving.args import field_schema
from hdc_serving.loading import ModelInfo

PROBLEM = {"$ref": "#/components/responses/Problem"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _request_body(info: ModelInfo, which: str) -> dict[str, Any] | None:
    spec = info.predict if which == "predict" else info.train
    if not [n for n in spec.fields if n not in spec.header_args]:
        return None
    content: dict[str, Any] = {"multipart/form-data": {"schema": spec.body_schema(with_files=True)}}
    if spec.file_args:
        content["multipart/form-data"]["encoding"] = {
            n: {"contentType": "*/*"} for n in spec.file_args
        }
    content["application/json"] = {"schema": spec.body_schema(with_files=False)}
    content["application/x-www-form-urlencoded"] = {"schema": spec.body_schema(with_files=False)}
    return {"required": bool(spec.body_schema(True).get("required")), "content": content}


def _predict_responses(info: ModelInfo) -> dict[str, Any]:
    if info.response_schema is not None:
        fields = info.response_schema().fields
        answer = {"type": "object", "properties": {k: field_schema(f) for k, f in fields.items()}}
    else:
        answer = {"$ref": "#/components/schemas/Prediction"}
    content: dict[str, Any] = {}
    for media in info.predict.accept or ["application/json"]:
        if media == "application/json":
            content[media] = {"schema": answer}
        else:
            content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {
        "200": {"description": "The model's answer", "content": content},
        "400": PROBLEM,
        "404": PROBLEM,
        "406": PROBLEM,
        "413": PROBLEM,
        "415": PROBLEM,
        "422": PROBLEM,
        "500": PROBLEM,
        "503": PROBLEM,
        "504": PROBLEM,
    }


def build(
    models: dict[str, ModelInfo], *, enable_train: bool, enable_predict: bool
) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "tags": ["versions"],
                "summary": "API versions",
                "responses": {"200": _json({"$ref": "#/components/schemas/Versions"})},
            }
        },
        "/v2/": {
            "get": {
                "tags": ["versions"],
                "summary": "Version 2 of the API",
                "responses": {"200": _json({"$ref": "#/components/schemas/Version"})},
            }
        },
        "/v2/models/": {
            "get": {
                "tags": ["models"],
                "summary": "Models served here and their metadata",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "models": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/ModelMeta"},
                                }
                            },
                        }
                    )
                },
            }
        },
        "/healthz": {
            "get": {
                "tags": ["health"],
                "summary": "Liveness: the server answers",
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["health"],
                "summary": "Readiness: models loaded in at least one worker",
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "not ready; reasons listed"},
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["health"],
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition format"}},
            }
        },
        "/catalog": {
            "get": {
                "tags": ["catalog"],
                "summary": "Catalog entries of the models served here",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/catalog/schema.json": {
            "get": {
                "tags": ["catalog"],
                "summary": "JSON Schema of a catalog entry",
                "responses": {"200": _json({"type": "object"})},
            }
        },
    }
    for name, info in models.items():
        base = f"/v2/models/{name}"
        paths[f"{base}/"] = {
            "get": {
                "tags": ["models"],
                "summary": f"Metadata of {name}",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ModelMeta"}),
                    "404": PROBLEM,
                },
            }
        }
        if enable_predict:
            op: dict[str, Any] = {
                "tags": ["models"],
                "summary": f"Predict with {name}",
                "operationId": f"predict_{name}",
                "responses": _predict_responses(info),
            }
            body = _request_body(info, "predict")
            if body:
                op["requestBody"] = body
            paths[f"{base}/predict/"] = {"post": op}
        if enable_train and info.has_train:
            op = {
                "tags": ["training"],
                "summary": f"Start training {name}",
                "operationId": f"train_{name}",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Training"}),
                    "422": PROBLEM,
                    "429": PROBLEM,
                },
            }
            body = _request_body(info, "train")
            if body:
                op["requestBody"] = body
            paths[f"{base}/train/"] = {
                "post": op,
                "get": {
                    "tags": ["training"],
                    "summary": f"Training jobs of {name}",
                    "responses": {
                        "200": _json(
                            {"type": "array", "items": {"$ref": "#/components/schemas/Training"}}
                        )
                    },
                },
            }
            uuid_param = [
                {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
            paths[f"{base}/train/{{uuid}}"] = {
                "parameters": uuid_param,
                "get": {
                    "tags": ["training"],
                    "summary": "Status, progress, logs and result of a job",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Training"}),
                        "404": PROBLEM,
                    },
                },
                "delete": {
                    "tags": ["training"],
                    "summary": "Cancel a running job (its process is killed); forget a finished one",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Training"}),
                        "404": PROBLEM,
                        "409": PROBLEM,
                    },
                },
            }
        if info.catalog is not None:
            paths[f"{base}/catalog"] = {
                "get": {
                    "tags": ["catalog"],
                    "summary": f"Catalog entry of {name}",
                    "responses": {"200": _json({"type": "object"})},
                }
            }
    paths.update(_oip_paths())
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "hdc serving",
            "version": __version__,
            "description": (
                "Model runtime compatible with the DEEPaaS API v2 (`/v2/...`), plus the Open "
                "Inference Protocol v2 for tensor models under `/oip/v2/...` (moved there so it "
                "does not collide with DEEPaaS's `/v2/models/{name}/`)."
            ),
        },
        "paths": paths,
        "components": _components(),
    }


def _oip_paths() -> dict[str, Any]:
    model = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/oip/v2": {
            "get": {
                "tags": ["open inference protocol"],
                "summary": "Server metadata",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/oip/v2/health/live": {
            "get": {
                "tags": ["open inference protocol"],
                "summary": "Server live",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/oip/v2/health/ready": {
            "get": {
                "tags": ["open inference protocol"],
                "summary": "Server ready",
                "responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"})},
            }
        },
        "/oip/v2/models/{name}": {
            "parameters": model,
            "get": {
                "tags": ["open inference protocol"],
                "summary": "Model metadata (tensors)",
                "responses": {
                    "200": _json({"type": "object"}),
                    "404": _json({"$ref": "#/components/schemas/OipError"}),
                },
            },
        },
        "/oip/v2/models/{name}/ready": {
            "parameters": model,
            "get": {
                "tags": ["open inference protocol"],
                "summary": "Model ready",
                "responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"})},
            },
        },
        "/oip/v2/models/{name}/infer": {
            "parameters": model,
            "post": {
                "tags": ["open inference protocol"],
                "summary": "Inference on tensors",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/InferRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/InferResponse"}),
                    "400": _json({"$ref": "#/components/schemas/OipError"}),
                    "404": _json({"$ref": "#/components/schemas/OipError"}),
                },
            },
        },
    }


def _components() -> dict[str, Any]:
    link = {
        "type": "object",
        "properties": {
            "rel": {"type": "string"},
            "href": {"type": "string"},
            "type": {"type": "string"},
        },
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    }
    return {
        "schemas": {
            "Version": {
                "type": "object",
                "properties": {
                    "version": {"type": "string"},
                    "id": {"type": "string"},
                    "links": {"type": "array", "items": link},
                },
            },
            "Versions": {
                "type": "object",
                "properties": {
                    "versions": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Version"},
                    },
                    "links": {"type": "array", "items": link},
                },
            },
            "ModelMeta": {
                "type": "object",
                "required": ["id", "name"],
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "license": {"type": "string"},
                    "author": {"type": "string"},
                    "version": {"type": "string"},
                    "url": {"type": "string"},
                    "links": {"type": "array", "items": link},
                },
            },
            "Prediction": {
                "type": "object",
                "properties": {"status": {"type": "string"}, "predictions": {}},
            },
            "Training": {
                "type": "object",
                "required": ["uuid", "date", "status"],
                "properties": {
                    "uuid": {"type": "string"},
                    "model": {"type": "string"},
                    "date": {"type": "string"},
                    "args": {"type": "object"},
                    "status": {"type": "string", "enum": ["running", "done", "error", "cancelled"]},
                    "progress": {"type": "number", "nullable": True},
                    "progress_message": {"type": "string"},
                    "message": {"type": "string"},
                    "result": {
                        "type": "object",
                        "properties": {
                            "output": {},
                            "finish_date": {"type": "string"},
                            "duration": {"type": "string"},
                        },
                    },
                    "logs": {"type": "string"},
                },
            },
            "Problem": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {
                        "type": "object",
                        "description": "argument name -> what is wrong with it",
                    },
                },
            },
            "InferRequest": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": tensor},
                    "outputs": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                },
            },
            "InferResponse": {
                "type": "object",
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "outputs": {"type": "array", "items": tensor},
                },
            },
            "OipError": {"type": "object", "properties": {"error": {"type": "string"}}},
        },
        "responses": {
            "Problem": {
                "description": "An error (RFC 9457 problem details)",
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }
        },
    }


SWAGGER_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hdc serving API</title>
<link rel="stylesheet" href="{root}/api/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{root}/api/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{root}/openapi.json", dom_id: "#swagger-ui", deepLinking: true}});
</script>
</body>
</html>
"""
