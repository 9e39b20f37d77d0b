"""Bad input gets a 4xx naming the argument; a failing model fails one request only."""

from __future__ import annotations

import pytest

TOY = "/v2/models/toy/predict/"
FILE = {"data": ("x.txt", b"abc", "text/plain")}


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()


def test_wrong_argument_type_names_the_argument(server):
    body = problem(server.http.post(TOY, files=FILE, data={"parameter": "seven"}), 422)
    assert body["errors"] == {"parameter": ["Not a valid integer."]}
    assert "argument 'parameter'" in body["detail"]
    body = problem(
        server.http.post("/v2/models/digits/predict/", json={"pixels": [1] * 63 + ["x"]}), 422
    )
    assert "pixels" in body["errors"]
    body = problem(
        server.http.post("/v2/models/digits/predict/", json={"pixels": [1] * 63 + [99]}), 422
    )
    assert "less than or equal to 16" in body["detail"]


def test_missing_required_arguments(server):
    body = problem(server.http.post(TOY, data={"mode": "count"}), 422)
    assert set(body["errors"]) == {"data", "parameter"}
    assert body["errors"]["data"] == ["Missing data for required field."]


def test_enum_violation_and_file_sent_as_text(server):
    body = problem(server.http.post(TOY, files=FILE, data={"parameter": "1", "mode": "dance"}), 422)
    assert "mode" in body["errors"]
    body = problem(server.http.post(TOY, data={"parameter": "1", "data": "not a file"}), 422)
    assert "file upload" in body["errors"]["data"][0]


def test_model_level_bad_input_is_a_400(server):
    body = problem(server.http.post("/v2/models/digits/predict/", json={}), 400)
    assert "'image'" in body["detail"] and "'pixels'" in body["detail"]
    png = {"image": ("blank.png", b"not a png", "image/png")}
    body = problem(server.http.post("/v2/models/digits/predict/", files=png), 400)
    assert body["detail"].startswith("image:")


def test_unknown_model_and_unknown_path(server):
    body = problem(server.http.post("/v2/models/nope/predict/", json={}), 404)
    assert "nope" in body["detail"] and "digits" in body["detail"]
    problem(server.http.get("/v2/models/nope/"), 404)
    problem(server.http.get("/v2/models/nope/train/"), 404)
    problem(server.http.get("/no/such/thing"), 404)
    problem(server.http.delete("/v2/models/digits/predict/"), 405)


def test_malformed_bodies(server):
    url = "/v2/models/digits/predict/"
    bad_multipart = b'--XYZ\r\nContent-Disposition: form-data; name="pixels"\r\n\r\n1,2\r\n'  # no closing boundary
    r = server.http.post(
        url, content=bad_multipart, headers={"content-type": "multipart/form-data; boundary=XYZ"}
    )
    assert problem(r, 400)["detail"].startswith("malformed multipart/form-data body")
    r = server.http.post(
        url, content=b"x", headers={"content-type": "multipart/form-data"}
    )  # no boundary
    problem(r, 400)
    r = server.http.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert "not valid JSON" in problem(r, 400)["detail"]
    r = server.http.post(url, json=[1, 2, 3])
    assert "must be an object" in problem(r, 400)["detail"]
    r = server.http.post(
        url, content=b"\x00\x01", headers={"content-type": "application/octet-stream"}
    )
    problem(r, 415)


@pytest.fixture(scope="module")
def small_server(make_server):
    return make_server(
        model="toy", max_upload_bytes=2000, max_request_bytes=20000, predict_timeout_s=1.5
    )


def test_oversized_file_and_body(small_server):
    big = {"data": ("big.bin", b"x" * 5000, "application/octet-stream")}
    body = problem(small_server.http.post(TOY, files=big, data={"parameter": "1"}), 413)
    assert body["argument"] == "data" and "2000" in body["detail"]
    huge = {"data": ("huge.bin", b"x" * 50000, "application/octet-stream")}
    body = problem(small_server.http.post(TOY, files=huge, data={"parameter": "1"}), 413)
    assert "20000" in body["detail"]
    assert small_server.http.post(TOY, files=FILE, data={"parameter": "1"}).status_code == 200


def test_model_that_raises_fails_only_that_request(server):
    r = server.http.post(TOY, files=FILE, data={"parameter": "1", "mode": "fail"})
    body = problem(r, 500)
    assert "RuntimeError" in body["detail"] and "exploded on purpose" in body["detail"]
    ok = server.http.post(TOY, files=FILE, data={"parameter": "1"})
    assert ok.status_code == 200
    assert server.http.get("/readyz").status_code == 200


def test_worker_crash_is_one_failed_request_then_a_new_worker(small_server, eventually):
    pids = small_server.runtime.pool.pids()
    body = problem(
        small_server.http.post(TOY, files=FILE, data={"parameter": "1", "mode": "crash"}), 500
    )
    assert "died" in body["detail"]
    eventually(lambda: small_server.http.get("/readyz").status_code == 200)
    assert small_server.http.post(TOY, files=FILE, data={"parameter": "1"}).status_code == 200
    assert small_server.runtime.pool.pids() != pids


def test_predict_timeout_stops_the_call(small_server, eventually):
    pids = small_server.runtime.pool.pids()
    body = problem(
        small_server.http.post(TOY, files=FILE, data={"parameter": "30", "mode": "sleep"}), 504
    )
    assert "1.5 s" in body["detail"]
    eventually(lambda: small_server.http.get("/readyz").status_code == 200)
    assert small_server.runtime.pool.pids() != pids  # the stuck worker was replaced
    assert small_server.http.post(TOY, files=FILE, data={"parameter": "1"}).status_code == 200


def test_model_that_cannot_load_is_reported_not_ready(make_server, tmp_path, monkeypatch):
    """Registered only for this test (its own dist-info), so other servers never see it."""
    info = tmp_path / "deep_broken-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: deep-broken\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[deepaas.v2.model]\nbroken = deep_toy_model.broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ['PYTHONPATH']}")
    srv = make_server(model="broken", ready_timeout=None)
    try:
        r = srv.http.get("/readyz")
        assert r.status_code == 503
        assert (
            "model 'broken' failed to load: FileNotFoundError: weights.h5 not found"
            in r.json()["reasons"]
        )
        body = problem(srv.http.post("/v2/models/broken/predict/", json={"x": 1}), 503)
        assert "weights.h5 not found" in body["detail"]
        assert srv.http.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        srv.stop()
