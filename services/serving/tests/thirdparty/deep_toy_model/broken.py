"""A module whose model cannot load (its weights are missing, say): warm() raises."""

from webargs import fields


def get_predict_args():
    return {"x": fields.Int(required=True)}


def warm():
    raise FileNotFoundError("weights.h5 not found")


def predict(**kwargs):
    return kwargs["x"]
