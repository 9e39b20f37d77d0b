"""Handwritten digit classifier trained on scikit-learn's bundled 8x8 digits data set.

A plain DEEPaaS v2 module (module-level `get_metadata`, `get_predict_args`, `predict`, ...),
so `deepaas-run` serves it as well as hdc does. Extras that hdc's runtime uses when present
and any other runtime ignores: `predict_batch` (adaptive batching), `oip_metadata` + `infer`
(Open Inference Protocol tensors) and `get_catalog_entry`.

The model is trained the first time it is needed (about a second) and cached under the model
directory; `train` retrains it with new hyper-parameters and replaces the cached one.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from webargs import fields, validate

from hdc_serving.models._store import BadInput, Cached, save

ARTIFACT = "digits.joblib"
N_PIXELS = 64
ACCEPT = ["application/json", "text/plain"]


def _fit(c: float = 1.0, test_size: float = 0.2, max_iter: int = 300) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=0, stratify=y
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(x_train, y_train)
    return {
        "classifier": clf,
        "accuracy": float(clf.score(x_test, y_test)),
        "params": {"C": c, "test_size": test_size, "max_iter": max_iter},
        "n_train": len(y_train),
        "n_test": len(y_test),
        "trained_at": time.time(),
    }


_model = Cached(ARTIFACT, _fit)


def get_metadata() -> dict[str, Any]:
    state = _model.get()
    return {
        "name": "digits",
        "description": (
            "Recognises a handwritten digit (0-9) from a picture or from 64 pixel "
            "intensities in 0..16, as in scikit-learn's digits data set."
        ),
        "author": "hdc",
        "version": "1.0.0",
        "license": "BSD-3-Clause",
        "url": "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        "accuracy": state["accuracy"],
        "training": state["params"],
    }


def warm() -> None:
    _model.get()


def get_predict_args() -> dict[str, fields.Field]:
    return {
        "image": fields.Field(
            required=False,
            load_default=None,
            metadata={
                "type": "file",
                "location": "form",
                "description": "A picture of one digit (PNG, JPEG, ...), any size.",
            },
        ),
        "pixels": fields.List(
            fields.Float(validate=validate.Range(min=0, max=16)),
            required=False,
            load_default=None,
            validate=validate.Length(equal=N_PIXELS),
            metadata={"description": "64 intensities in 0..16, row by row (an 8x8 image)."},
        ),
        "accept": fields.Str(
            load_default=ACCEPT[0],
            validate=validate.OneOf(list(ACCEPT)),
            metadata={"location": "headers", "description": "Media type of the answer."},
        ),
    }


def get_train_args() -> dict[str, fields.Field]:
    return {
        "C": fields.Float(
            load_default=1.0,
            validate=validate.Range(min=1e-6, max=1e6),
            metadata={"description": "Inverse regularisation strength."},
        ),
        "test_size": fields.Float(
            load_default=0.2,
            validate=validate.Range(min=0.05, max=0.5),
            metadata={"description": "Fraction of the data held out to measure accuracy."},
        ),
        "max_iter": fields.Int(
            load_default=300,
            validate=validate.Range(min=10, max=10000),
            metadata={"description": "Most solver iterations."},
        ),
    }


def image_to_pixels(data: bytes) -> np.ndarray:
    """A picture of a digit as the data set's 64 features (ink high, 0..16)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInput(f"image: not a picture this server can read ({exc})") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        # Transparent pixels count as paper, not ink.
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: the data set stores ink as high values
        gray = 255.0 - gray
    ink = gray > max(gray.max() * 0.25, 1.0)
    if not ink.any():
        raise BadInput("image: no digit found (the picture is blank)")
    rows, cols = np.where(ink.any(axis=1))[0], np.where(ink.any(axis=0))[0]
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Keep the aspect ratio: a "1" must stay thin when it is fitted into the square.
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side))
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = crop
    small = Image.fromarray(square.astype(np.uint8)).resize((8, 8), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64).reshape(N_PIXELS)
    return pixels * (16.0 / pixels.max())


def _features(kwargs: dict[str, Any]) -> np.ndarray:
    image, pixels = kwargs.get("image"), kwargs.get("pixels")
    if image is not None and pixels is not None:
        raise BadInput("give either 'image' or 'pixels', not both")
    if image is not None:
        return image_to_pixels(Path(image.filename).read_bytes())
    if pixels is not None:
        arr = np.asarray(pixels, dtype=np.float64).reshape(-1)
        if arr.size != N_PIXELS:
            raise BadInput(f"pixels: expected {N_PIXELS} numbers, got {arr.size}")
        return arr
    raise BadInput("give 'image' (a picture of a digit) or 'pixels' (64 numbers in 0..16)")


def _answer(proba: np.ndarray, classes: np.ndarray, accept: str | None) -> Any:
    best = int(np.argmax(proba))
    label = int(classes[best])
    if accept == "text/plain":
        return f"{label}\n"
    return {
        "label": label,
        "confidence": round(float(proba[best]), 6),
        "probabilities": [round(float(p), 6) for p in proba],
    }


def predict(**kwargs: Any) -> Any:
    clf = _model.get()["classifier"]
    proba = clf.predict_proba(_features(kwargs).reshape(1, -1))[0]
    return _answer(proba, clf.classes_, kwargs.get("accept"))


def predict_batch(requests: list[dict[str, Any]]) -> list[Any]:
    """Many requests in one scikit-learn call: the per-call overhead is paid once."""
    clf = _model.get()["classifier"]
    matrix = np.stack([_features(kw) for kw in requests])
    probas = clf.predict_proba(matrix)
    return [
        _answer(p, clf.classes_, kw.get("accept")) for p, kw in zip(probas, requests, strict=True)
    ]


def train(**kwargs: Any) -> dict[str, Any]:
    try:
        from hdc_serving.progress import report
    except ImportError:  # under another runtime progress is simply not reported

        def report(fraction: float, message: str | None = None) -> None:
            return None

    report(0.1, "loading the digits data set")
    state = _fit(
        c=float(kwargs.get("C", 1.0)),
        test_size=float(kwargs.get("test_size", 0.2)),
        max_iter=int(kwargs.get("max_iter", 300)),
    )
    report(0.9, f"trained, held-out accuracy {state['accuracy']:.4f}")
    save(ARTIFACT, state)
    print(f"digits: saved model, accuracy={state['accuracy']:.4f}", flush=True)
    report(1.0, "model replaced")
    return {
        "accuracy": state["accuracy"],
        "n_train": state["n_train"],
        "n_test": state["n_test"],
        **state["params"],
    }


def oip_metadata() -> dict[str, Any]:
    return {
        "platform": "sklearn",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, N_PIXELS]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }


def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["pixels"].reshape(-1, N_PIXELS)
    clf = _model.get()["classifier"]
    proba = clf.predict_proba(x)
    return {
        "label": clf.classes_[np.argmax(proba, axis=1)].astype(np.int64),
        "probabilities": proba.astype(np.float32),
    }


def get_catalog_entry() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "digits.catalog.json").read_text())
