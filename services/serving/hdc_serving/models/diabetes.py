"""Disease-progression regression on scikit-learn's bundled diabetes data set (tabular).

A plain DEEPaaS v2 module with one named argument per column, so the Swagger UI shows a
form. It declares a response `schema`, so answers are validated and returned as they are.
The ten inputs are the data set's own scaled values (mean 0, each column's norm 1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from webargs import fields, validate

from hdc_serving.models._store import Cached, save

ARTIFACT = "diabetes.joblib"
COLUMNS = {
    "age": "age (scaled)",
    "sex": "sex (scaled)",
    "bmi": "body mass index (scaled)",
    "bp": "average blood pressure (scaled)",
    "s1": "tc, total serum cholesterol (scaled)",
    "s2": "ldl, low-density lipoproteins (scaled)",
    "s3": "hdl, high-density lipoproteins (scaled)",
    "s4": "tch, total cholesterol / HDL (scaled)",
    "s5": "ltg, log of serum triglycerides level (scaled)",
    "s6": "glu, blood sugar level (scaled)",
}

schema = {
    "prediction": fields.Float(required=True),
    "unit": fields.Str(required=True),
}


def _fit(alpha: float = 0.1, test_size: float = 0.2) -> dict[str, Any]:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=0)
    reg = Ridge(alpha=alpha).fit(x_train, y_train)
    return {
        "regressor": reg,
        "r2": float(reg.score(x_test, y_test)),
        "params": {"alpha": alpha, "test_size": test_size},
        "n_train": len(y_train),
        "n_test": len(y_test),
        "trained_at": time.time(),
    }


_model = Cached(ARTIFACT, _fit)


def get_metadata() -> dict[str, Any]:
    state = _model.get()
    return {
        "name": "diabetes",
        "description": (
            "Predicts a quantitative measure of diabetes progression one year after "
            "baseline from ten scaled clinical measurements."
        ),
        "author": "hdc",
        "version": "1.0.0",
        "license": "BSD-3-Clause",
        "url": "https://scikit-learn.org/stable/datasets/toy_dataset.html#diabetes-dataset",
        "r2": state["r2"],
        "training": state["params"],
    }


def warm() -> None:
    _model.get()


def get_predict_args() -> dict[str, fields.Field]:
    return {
        name: fields.Float(
            required=True,
            validate=validate.Range(min=-1, max=1),
            metadata={"description": text},
        )
        for name, text in COLUMNS.items()
    }


def get_train_args() -> dict[str, fields.Field]:
    return {
        "alpha": fields.Float(
            load_default=0.1,
            validate=validate.Range(min=0, max=1e6),
            metadata={"description": "Ridge regularisation strength."},
        ),
        "test_size": fields.Float(
            load_default=0.2,
            validate=validate.Range(min=0.05, max=0.5),
            metadata={"description": "Fraction of the data held out to measure R²."},
        ),
    }


def _row(kwargs: dict[str, Any]) -> list[float]:
    return [float(kwargs[name]) for name in COLUMNS]


def predict(**kwargs: Any) -> dict[str, Any]:
    reg = _model.get()["regressor"]
    value = float(reg.predict(np.asarray([_row(kwargs)]))[0])
    return {"prediction": round(value, 4), "unit": "disease progression score"}


def predict_batch(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reg = _model.get()["regressor"]
    values = reg.predict(np.asarray([_row(kw) for kw in requests]))
    return [{"prediction": round(float(v), 4), "unit": "disease progression score"} for v in values]


def train(**kwargs: Any) -> dict[str, Any]:
    try:
        from hdc_serving.progress import report
    except ImportError:

        def report(fraction: float, message: str | None = None) -> None:
            return None

    report(0.2, "fitting ridge regression")
    state = _fit(
        alpha=float(kwargs.get("alpha", 0.1)), test_size=float(kwargs.get("test_size", 0.2))
    )
    save(ARTIFACT, state)
    print(f"diabetes: saved model, r2={state['r2']:.4f}", flush=True)
    report(1.0, "model replaced")
    return {
        "r2": state["r2"],
        "n_train": state["n_train"],
        "n_test": state["n_test"],
        **state["params"],
    }


def oip_metadata() -> dict[str, Any]:
    return {
        "platform": "sklearn",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, len(COLUMNS)]}],
        "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [-1]}],
    }


def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["features"].reshape(-1, len(COLUMNS))
    return {"prediction": _model.get()["regressor"].predict(x).astype(np.float64)}


def get_catalog_entry() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "diabetes.catalog.json").read_text())
