"""A third-party DEEP module (tests/thirdparty, unchanged) served through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_toy_metadata_and_openapi(server):
    meta = server.http.get("/v2/models/toy/").json()
    assert meta["id"] == "toy" and meta["license"] == "MIT"
    doc = server.http.get("/openapi.json").json()
    op = doc["paths"]["/v2/models/toy/predict/"]["post"]
    props = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert props["required"] == ["data", "parameter"]
    assert props["properties"]["mode"]["enum"] == ["count", "fail", "reject", "sleep", "crash"]
    assert "accept" not in props["properties"]  # a header, negotiated from Accept
    assert set(op["responses"]["200"]["content"]) == {"application/json", "text/plain", "image/png"}


def test_toy_predict_receives_uploaded_file_like_deepaas(server):
    files = {"data": ("notes.txt", b"hello world", "text/plain")}
    r = server.http.post(
        "/v2/models/toy/predict/", files=files, data={"parameter": "7", "tags": ["a", "b"]}
    )
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert got == {
        "size": 11,
        "name": "data",
        "original_filename": "notes.txt",
        "content_type": "text/plain",
        "parameter": 7,
        "tags": ["a", "b"],
    }
    # the temporary copy handed to the model is removed after the request
    assert not any(p.name.startswith("upload-") for p in server.runtime.uploads_dir.iterdir())


def test_toy_binary_and_text_answers(server):
    files = {"data": ("x.bin", b"\x00" * 100, "application/octet-stream")}
    r = server.http.post(
        "/v2/models/toy/predict/?parameter=1", files=files, headers={"Accept": "image/png"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png" and r.content.startswith(PNG_MAGIC)
    r = server.http.post(
        "/v2/models/toy/predict/?parameter=1", files=files, headers={"Accept": "text/plain"}
    )
    assert r.text == "x.bin:100"


def test_toy_signals_bad_input_with_its_own_exception(server):
    files = {"data": ("x", b"x", "text/plain")}
    r = server.http.post(
        "/v2/models/toy/predict/", files=files, data={"parameter": "1", "mode": "reject"}
    )
    assert r.status_code == 400
    assert r.json()["detail"] == "the toy model refuses this file"


def test_cli_predict_runs_a_module_without_a_server(tmp_path: Path, model_cache: Path):
    sample = tmp_path / "in.txt"
    sample.write_bytes(b"12345")
    env = {**os.environ, "HDC_HOME": str(model_cache)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdc_serving.cli",
            "predict",
            "--model",
            "toy",
            "--file",
            f"data={sample}",
            "--arg",
            "parameter=3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"]["size"] == 5
    # batch use: one JSON object per line in, one answer per line out; bad lines reported
    batch = tmp_path / "batch.jsonl"
    lines = [json.dumps({"pixels": [0.0] * 64}), json.dumps({"pixels": [1, 2]})]
    batch.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdc_serving.cli",
            "predict",
            "--model",
            "digits",
            "--batch",
            str(batch),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1
    assert lines[0]["status"] == "OK" and "label" in lines[0]["predictions"]
    assert lines[1]["status"] == 422 and "pixels" in lines[1]["error"]


def test_marshmallow3_style_module_is_served_unchanged(server):
    """Keyword arguments marshmallow 4 no longer takes (missing=, description=, type=...)."""
    doc = server.http.get("/openapi.json").json()
    form = doc["paths"]["/v2/models/legacy/predict/"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]
    props = form["schema"]["properties"]
    assert props["data"]["format"] == "binary" and props["data"]["description"] == "A file"
    assert props["top_k"] == {"type": "integer", "description": "How many labels", "default": 2}
    assert props["mode"]["enum"] == ["abc", "cba"]
    r = server.http.post("/v2/models/legacy/predict/", data={"mode": "cba", "top_k": "2"})
    assert r.status_code == 200, r.text
    assert r.json() == {"top": ["c", "b"]}  # a response schema: returned as is
    assert server.http.get("/v2/models/legacy/").json()["author"] == "B. Scientist"
    r = server.http.post("/v2/models/legacy/train/", json={})
    assert r.status_code == 501 and "train" in r.json()["detail"]
