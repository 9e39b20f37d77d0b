"""A DEEPaaS v2 model module as DEEP scientists write them (module-level functions).

It knows nothing about hdc: arguments are webargs fields, files arrive as DEEPaaS's
UploadedFile (read through `.filename`), bad input is signalled with an exception carrying
an HTTP status, as aiohttp's HTTPBadRequest does in real DEEP modules.
"""

import json
import os
import time

from webargs import fields, validate

PNG_1PX = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00:~\x9bU"
    b"\x00\x00\x00\nIDATx\x9cc\xf8\x0f\x00\x01\x01\x01\x00\x18\xdd\x8d\xb0\x00\x00\x00\x00IEND\xaeB`\x82"
)


class HTTPBadRequest(Exception):
    status_code = 400


def get_metadata():
    return {
        "name": "toy",
        "description": "Counts the bytes of an uploaded file and echoes its parameters.",
        "author": "A. Scientist",
        "version": "0.1.0",
        "license": "MIT",
        "url": "https://example.org/toy",
    }


def warm():
    pass


def get_predict_args():
    return {
        "data": fields.Field(
            required=True,
            metadata={"type": "file", "location": "form", "description": "Any file."},
        ),
        "parameter": fields.Int(required=True, metadata={"description": "An integer."}),
        "mode": fields.Str(
            load_default="count",
            validate=validate.OneOf(["count", "fail", "reject", "sleep", "crash"]),
            metadata={
                "description": "What to do",
                "enum": ["count", "fail", "reject", "sleep", "crash"],
            },
        ),
        "tags": fields.List(
            fields.Str(), load_default=[], metadata={"description": "Free labels."}
        ),
        "accept": fields.Str(
            metadata={"location": "headers"},
            validate=validate.OneOf(["application/json", "text/plain", "image/png"]),
        ),
    }


def get_train_args():
    return {
        "steps": fields.Int(
            required=True, validate=validate.Range(min=1), metadata={"description": "Steps to run."}
        ),
        "step_seconds": fields.Float(load_default=0.1, metadata={"description": "Sleep per step."}),
        "heartbeat": fields.Str(
            load_default=None,
            allow_none=True,
            metadata={"description": "File to append to each step."},
        ),
        "fail": fields.Bool(load_default=False),
    }


def predict(**kwargs):
    mode = kwargs.get("mode", "count")
    if mode == "fail":
        raise RuntimeError("toy model exploded on purpose")
    if mode == "reject":
        raise HTTPBadRequest("the toy model refuses this file")
    if mode == "sleep":
        time.sleep(kwargs["parameter"])
    if mode == "crash":
        os._exit(3)
    upload = kwargs["data"]
    with open(upload.filename, "rb") as fh:
        size = len(fh.read())
    if kwargs.get("accept") == "image/png":
        return PNG_1PX
    if kwargs.get("accept") == "text/plain":
        return f"{upload.original_filename}:{size}"
    return {
        "size": size,
        "name": upload.name,
        "original_filename": upload.original_filename,
        "content_type": upload.content_type,
        "parameter": kwargs["parameter"],
        "tags": kwargs.get("tags", []),
    }


def train(**kwargs):
    for step in range(kwargs["steps"]):
        if kwargs.get("heartbeat"):
            with open(kwargs["heartbeat"], "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "step": step}) + "\n")
        print(f"step {step}", flush=True)
        time.sleep(kwargs.get("step_seconds", 0.1))
    if kwargs.get("fail"):
        raise ValueError("toy training diverged")
    return {"steps": kwargs["steps"], "loss": 0.5 / kwargs["steps"]}
