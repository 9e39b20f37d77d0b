"""An older-style DEEP module: marshmallow 3 era keyword arguments on fields, a class API.

`missing=`, `description=`, `type=`, `location=`, `enum=` passed straight to the field, as
modules written for DEEPaaS 1.x/2.x on marshmallow 3 do; the entry point names a class
whose methods are static, another shape real modules have.
"""

from webargs import fields


class Model:
    schema = {"top": fields.List(fields.Str(), required=True, description="best labels")}

    @staticmethod
    def get_metadata():
        return {
            "name": "legacy",
            "description": "marshmallow 3 style arguments",
            "author": "B. Scientist",
        }

    @staticmethod
    def get_predict_args():
        return {
            "data": fields.Field(
                required=False, missing=None, type="file", location="form", description="A file"
            ),
            "top_k": fields.Int(required=False, missing=2, description="How many labels"),
            "mode": fields.Str(missing="abc", enum=["abc", "cba"], description="Label order"),
        }

    @staticmethod
    def predict(**kwargs):
        labels = sorted(kwargs["mode"], reverse=kwargs["mode"] == "cba")
        return {"top": labels[: kwargs["top_k"]]}
