"""Contract tests of the DEEPaaS API v2 endpoints, on the demo models, over real HTTP."""

from __future__ import annotations

import io

import jsonschema
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DIGITS_X, DIGITS_Y = load_digits(return_X_y=True)
DIABETES = {
    "age": 0.04,
    "sex": 0.05,
    "bmi": 0.06,
    "bp": 0.02,
    "s1": -0.04,
    "s2": -0.03,
    "s3": -0.04,
    "s4": 0.0,
    "s5": 0.02,
    "s6": -0.02,
}


def digit_png(index: int, *, dark_on_light: bool = True, size: int = 96) -> bytes:
    """A picture of a data-set digit as a person would send it: big, ink dark on white."""
    pixels = DIGITS_X[index].reshape(8, 8) * (255 / 16)
    if dark_on_light:
        pixels = 255 - pixels
    img = Image.fromarray(pixels.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def test_versions(server):
    r = server.http.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body["versions"][0]["id"] == "v2"
    rels = {link["rel"]: link["href"] for link in body["links"]}
    assert rels == {"help": "/api", "describedby": "/openapi.json"}
    v2 = server.http.get("/v2/").json()
    assert v2 == {
        "version": "stable",
        "id": "v2",
        "links": [{"rel": "self", "type": "application/json", "href": "/v2/"}],
    }


def test_models_index_and_metadata(server):
    r = server.http.get("/v2/models/")
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["models"]}
    assert set(models) == {"digits", "diabetes", "legacy", "toy"}
    assert models["toy"]["author"] == "A. Scientist"
    assert models["toy"]["links"] == [{"rel": "self", "href": "/v2/models/toy"}]
    assert 0.9 < models["digits"]["accuracy"] <= 1
    one = server.http.get("/v2/models/digits/")
    assert one.status_code == 200
    assert one.json()["name"] == "digits" and one.json()["links"][0]["href"] == "/v2/models/digits"
    assert server.http.get("/v2/models/digits").status_code == 200  # without the slash too


def test_predict_json_array_wrapped_like_deepaas(server):
    r = server.http.post("/v2/models/digits/predict/", json={"pixels": DIGITS_X[0].tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "OK"
    assert body["predictions"]["label"] == DIGITS_Y[0]
    assert len(body["predictions"]["probabilities"]) == 10


def test_predict_query_string_and_form(server):
    pixels = ",".join(str(int(v)) for v in DIGITS_X[3])
    r = server.http.post(f"/v2/models/digits/predict/?pixels={pixels}")
    assert r.status_code == 200, r.text
    assert r.json()["predictions"]["label"] == DIGITS_Y[3]
    r = server.http.post(
        "/v2/models/diabetes/predict/", data={k: str(v) for k, v in DIABETES.items()}
    )
    assert r.status_code == 200, r.text
    # diabetes declares a response schema: the answer is returned as is, not wrapped
    assert set(r.json()) == {"prediction", "unit"}
    assert 25 < r.json()["prediction"] < 350


def test_predict_multipart_png_of_a_digit(server):
    for index in (5, 7, 12):
        files = {"image": (f"digit{index}.png", digit_png(index), "image/png")}
        r = server.http.post("/v2/models/digits/predict/", files=files)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"]["label"] == DIGITS_Y[index]
    # light ink on dark paper (MNIST style) is read too
    r = server.http.post(
        "/v2/models/digits/predict/",
        files={"image": ("d.png", digit_png(5, dark_on_light=False), "image/png")},
    )
    assert r.json()["predictions"]["label"] == DIGITS_Y[5]


def test_accept_negotiation(server):
    files = {"image": ("d.png", digit_png(7), "image/png")}
    r = server.http.post(
        "/v2/models/digits/predict/", files=files, headers={"Accept": "text/plain"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.strip() == str(DIGITS_Y[7])
    # q-values: text/plain preferred over json
    r = server.http.post(
        "/v2/models/digits/predict/",
        files=files,
        headers={"Accept": "application/json;q=0.5, text/plain"},
    )
    assert r.headers["content-type"].startswith("text/plain")
    # */* and no header: the model's first choice (JSON)
    for headers in ({"Accept": "*/*"}, {}):
        r = server.http.post("/v2/models/digits/predict/", files=files, headers=headers)
        assert r.headers["content-type"] == "application/json"
    r = server.http.post("/v2/models/digits/predict/", files=files, headers={"Accept": "image/png"})
    assert r.status_code == 406
    assert r.headers["content-type"] == "application/problem+json"
    assert "text/plain" in r.json()["detail"] and r.json()["argument"] == "accept"


def test_openapi_generated_from_model_arguments(server):
    doc = server.http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    predict = doc["paths"]["/v2/models/digits/predict/"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["image"] == {
        "type": "string",
        "format": "binary",
        "description": "A picture of one digit (PNG, JPEG, ...), any size.",
        "default": None,
        "nullable": True,
    }
    assert form["pixels"]["type"] == "array" and form["pixels"]["items"]["maximum"] == 16
    assert form["pixels"]["minItems"] == form["pixels"]["maxItems"] == 64
    assert set(predict["responses"]["200"]["content"]) == {"application/json", "text/plain"}
    diabetes = doc["paths"]["/v2/models/diabetes/predict/"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    assert diabetes["required"] == list(DIABETES)
    train = doc["paths"]["/v2/models/digits/train/"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    assert train["properties"]["C"]["default"] == 1.0
    assert "/v2/models/digits/train/{uuid}" in doc["paths"]
    assert "/oip/v2/models/{name}/infer" in doc["paths"]
    assert server.http.get("/swagger.json").json() == doc
    from openapi_spec_validator import validate

    validate(doc)  # a document any OpenAPI tool (Swagger UI, client generators) accepts


def test_swagger_ui(server):
    r = server.http.get("/api")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text and "/openapi.json" in r.text
    assert server.http.get("/api/static/swagger-ui-bundle.js").status_code == 200
    r = server.http.get("/ui", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/api"


def test_health_readiness_and_metrics(server):
    assert server.http.get("/healthz").json()["status"] == "ok"
    ready = server.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == [
        "diabetes",
        "digits",
        "legacy",
        "toy",
    ]
    server.http.post("/v2/models/digits/predict/", json={"pixels": DIGITS_X[1].tolist()})
    text = server.http.get("/metrics").text
    assert 'hdc_serving_requests_total{code="200",endpoint="predict",model="digits"}' in text
    assert "hdc_serving_request_duration_seconds_bucket" in text
    assert "hdc_serving_queue_depth" in text and "hdc_serving_workers_ready 1.0" in text
    assert "hdc_serving_training_jobs" in text


def test_catalog_entries_follow_the_published_schema(server):
    schema = server.http.get("/catalog/schema.json").json()
    entries = server.http.get("/catalog").json()["models"]
    assert {e["name"] for e in entries} == {"digits", "diabetes"}  # the toy ships none
    for entry in entries:
        jsonschema.Draft202012Validator(schema).validate(entry)
        assert entry["training"]["trainable"] is True
    digits = server.http.get("/v2/models/digits/catalog").json()
    assert digits["dataset"]["source"] == "sklearn.datasets.load_digits"
    assert server.http.get("/v2/models/toy/catalog").status_code == 404


def test_catalog_validation_names_the_bad_field():
    import pytest
    from hdc_serving.catalog import CatalogError, validate
    from hdc_serving.models import digits

    entry = digits.get_catalog_entry()
    validate(entry)
    bad = {**entry, "keywords": []}
    with pytest.raises(CatalogError, match="keywords"):
        validate(bad)
    with pytest.raises(CatalogError, match="docker_image"):
        validate({k: v for k, v in entry.items() if k != "docker_image"})


def test_demo_catalog_is_readable_without_the_models():
    from hdc_serving.catalog import demo_entries

    assert [e["name"] for e in demo_entries()] == ["diabetes", "digits"]
