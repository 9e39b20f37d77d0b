"""Progress reports from inside a training job, readable by the server that runs the job.

A training function calls `report(0.4, "epoch 4/10")`. The runtime starts each job in its
own process with `HDC_TRAIN_PROGRESS_FILE` set; outside such a job `report` does nothing,
so a module that uses it still runs under any other DEEPaaS runtime.
"""

from __future__ import annotations

import json
import os

ENV = "HDC_TRAIN_PROGRESS_FILE"


def report(fraction: float, message: str | None = None) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    fraction = min(1.0, max(0.0, float(fraction)))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"progress": fraction, "message": message}, fh)
    # rename is atomic: the server never reads half a report.
    os.replace(tmp, path)


def read(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
