"""Open Inference Protocol v2 under /oip/v2, and adaptive batching in the worker pool."""

from __future__ import annotations

import threading

from sklearn.datasets import load_digits

X, Y = load_digits(return_X_y=True)
INFER = "/oip/v2/models/digits/infer"


def tensor(rows, name="pixels", datatype="FP32"):
    return {
        "name": name,
        "shape": [len(rows), 64],
        "datatype": datatype,
        "data": [v for r in rows for v in r],
    }


def test_oip_health_and_metadata(server):
    assert server.http.get("/oip/v2/health/live").json() == {"live": True}
    assert server.http.get("/oip/v2/health/ready").json() == {"ready": True}
    assert server.http.get("/oip/v2").json()["name"] == "hdc-serving"
    meta = server.http.get("/oip/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert server.http.get("/oip/v2/models/digits/versions/1").status_code == 200
    assert server.http.get("/oip/v2/models/digits/ready").json() == {
        "name": "digits",
        "ready": True,
    }
    r = server.http.get("/oip/v2/models/toy")
    assert r.status_code == 404 and "no tensor interface" in r.json()["error"]


def test_oip_infer(server):
    rows = [X[i].tolist() for i in range(6)]
    r = server.http.post(INFER, json={"id": "req-1", "inputs": [tensor(rows)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "digits"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["datatype"] == "INT64" and out["label"]["shape"] == [6]
    assert out["label"]["data"] == Y[:6].tolist()
    assert out["probabilities"]["shape"] == [6, 10]
    only = server.http.post(
        INFER, json={"inputs": [tensor(rows[:1])], "outputs": [{"name": "label"}]}
    ).json()
    assert [o["name"] for o in only["outputs"]] == ["label"]
    reg = server.http.post(
        "/oip/v2/models/diabetes/infer",
        json={
            "inputs": [
                {"name": "features", "shape": [1, 10], "datatype": "FP64", "data": [0.0] * 10}
            ]
        },
    )
    assert reg.status_code == 200 and reg.json()["outputs"][0]["shape"] == [1]


def test_oip_bad_requests(server):
    cases = [
        ({"inputs": []}, "non-empty"),
        ({"inputs": [tensor([[1] * 64], name="x")]}, "unknown input 'x'"),
        ({"inputs": [tensor([[1] * 64], datatype="INT8")]}, "INT8 given"),
        (
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 63], "datatype": "FP32", "data": [1] * 63}
                ]
            },
            "does not fit",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [1] * 64}
                ]
            },
            "do not fill",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ["a"] * 64}
                ]
            },
            "not FP32",
        ),
    ]
    for body, message in cases:
        r = server.http.post(INFER, json=body)
        assert r.status_code == 400, body
        assert message in r.json()["error"], r.json()
    assert (
        server.http.post(
            INFER, content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert server.http.post("/oip/v2/models/nope/infer", json={"inputs": []}).status_code == 404


def test_queued_requests_go_to_the_model_as_one_batch(server, eventually):
    """While the only worker is busy, predictions queue; when it frees they go as one batch."""
    pool = server.runtime.pool
    before = _batches(server)
    blocker = threading.Thread(
        target=server.http.post,
        args=("/v2/models/toy/predict/",),
        kwargs={"files": {"data": ("x", b"x")}, "data": {"parameter": "2", "mode": "sleep"}},
    )
    blocker.start()
    eventually(lambda: pool.queue_depth == 0 and _busy(pool))
    answers: dict[int, object] = {}

    def ask(i: int) -> None:
        pixels = X[i].tolist() if i != 3 else [1] * 63 + [-1]  # one invalid request in the crowd
        answers[i] = server.http.post("/v2/models/digits/predict/", json={"pixels": pixels})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    eventually(lambda: pool.queue_depth >= 9)  # the invalid one never reaches the queue
    for t in threads:
        t.join(60)
    blocker.join(60)
    for i, r in answers.items():
        if i == 3:
            assert r.status_code == 422
        else:
            assert r.status_code == 200 and r.json()["predictions"]["label"] == Y[i]
    after = _batches(server)
    assert after["count"] - before["count"] == 2  # the blocker, then the nine together
    assert after["sum"] - before["sum"] == 10


def test_a_failing_item_does_not_fail_its_batch(server, eventually):
    import io

    from PIL import Image

    pool = server.runtime.pool
    blocker = threading.Thread(
        target=server.http.post,
        args=("/v2/models/toy/predict/",),
        kwargs={"files": {"data": ("x", b"x")}, "data": {"parameter": "1", "mode": "sleep"}},
    )
    blocker.start()
    eventually(lambda: _busy(pool))
    blank = io.BytesIO()
    Image.new("L", (20, 20), 255).save(
        blank, "PNG"
    )  # valid arguments, but the model finds no digit
    answers: dict[str, object] = {}
    good = threading.Thread(
        target=lambda: answers.update(
            good=server.http.post("/v2/models/digits/predict/", json={"pixels": X[0].tolist()})
        )
    )
    bad = threading.Thread(
        target=lambda: answers.update(
            bad=server.http.post(
                "/v2/models/digits/predict/",
                files={"image": ("b.png", blank.getvalue(), "image/png")},
            )
        )
    )
    good.start()
    bad.start()
    eventually(lambda: pool.queue_depth >= 2)
    for t in (good, bad, blocker):
        t.join(60)
    assert (
        answers["good"].status_code == 200
        and answers["good"].json()["predictions"]["label"] == Y[0]
    )
    assert answers["bad"].status_code == 400 and "blank" in answers["bad"].json()["detail"]


def _busy(pool) -> bool:
    return any(w.tasks for w in pool._workers)


def _batches(server) -> dict[str, float]:
    text = server.http.get("/metrics").text
    out = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        if line.startswith("hdc_serving_batch_size_count"):
            out["count"] = float(line.split()[-1])
        elif line.startswith("hdc_serving_batch_size_sum"):
            out["sum"] = float(line.split()[-1])
    return out
