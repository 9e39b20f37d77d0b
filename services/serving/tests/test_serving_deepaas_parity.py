"""Side by side with the real DEEPaaS (PyPI `deepaas` 2.6.0, `deepaas-run`): same answers.

Both serve the same module (`hdc_serving.models.digits`) from the same trained artifact.
The DEEPaaS virtualenv `.venv-deepaas` is the benchmark's (created with uv when missing).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "hdc_bench_serving", ROOT / "bench" / "serving.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deepaas(server, model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    deepaas_run = _bench_module().ensure_deepaas_venv()
    port = _bench_module().free_port()
    log = tmp_path_factory.mktemp("deepaas") / "deepaas.log"
    env = {**os.environ, "HDC_MODEL_DIR": str(model_cache / "serving" / "models")}
    proc = subprocess.Popen(
        [
            str(deepaas_run),
            "--listen-ip",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--model-name",
            "digits",
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 90
    while True:
        try:
            if http.get("/v2/models/").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "deepaas-run did not start"
        time.sleep(0.2)
    yield http
    http.close()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


def test_same_version_and_model_documents(server, deepaas):
    assert server.http.get("/v2/").json() == deepaas.get("/v2/").json()
    theirs = deepaas.get("/v2/models/").json()["models"]
    ours = {m["id"]: m for m in server.http.get("/v2/models/").json()["models"]}
    assert theirs == [ours["digits"]]
    assert server.http.get("/v2/models/digits/").json() == deepaas.get("/v2/models/digits/").json()


def test_same_predictions(server, deepaas):
    from sklearn.datasets import load_digits

    pixels = load_digits().data[9].tolist()
    url = "/v2/models/digits/predict/"
    assert (
        server.http.post(url, json={"pixels": pixels}).json()
        == deepaas.post(url, json={"pixels": pixels}).json()
    )
    files = {"image": ("d.png", digit_png(12), "image/png")}
    ours = server.http.post(url, files=files)
    theirs = deepaas.post(url, files=files)
    assert ours.json() == theirs.json()
    text = {"Accept": "text/plain"}
    assert (
        server.http.post(url, json={"pixels": pixels}, headers=text).text
        == deepaas.post(url, json={"pixels": pixels}, headers=text).text
    )


def digit_png(index: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = 255 - load_digits().data[index].reshape(8, 8) * (255 / 16)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).resize((80, 80), Image.Resampling.NEAREST).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_same_argument_errors(server, deepaas):
    url = "/v2/models/digits/predict/"
    bad = {"pixels": [1] * 63 + [40]}
    theirs = deepaas.post(url, json=bad)
    ours = server.http.post(url, json=bad)
    assert theirs.status_code == ours.status_code == 422
    assert ours.json()["errors"] == theirs.json()  # webargs' map, inside our problem document


def test_same_training_document(server, deepaas):
    url = "/v2/models/digits/train/"
    theirs = deepaas.post(url, json={"C": 0.5}).json()
    ours = server.http.post(url, json={"C": 0.5}).json()
    assert set(theirs) <= set(ours)
    assert ours["status"] == theirs["status"] == "running"
    assert ours["args"] == theirs["args"]
