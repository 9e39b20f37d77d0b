"""Body of a training job's own process.

The process is a session leader (so cancelling kills whatever the model started too) and
asks the kernel to kill it when the server dies (PR_SET_PDEATHSIG): a job never outlives
the server that answers for it. Its stdout/stderr, at file-descriptor level so C libraries'
output is caught as well, go to the job's log file; the result or the error goes to a JSON
file the server reads when the process ends.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import traceback
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _redirect_output(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def main(
    name: str, kwargs: dict[str, Any], paths: dict[str, str], env: dict[str, str], parent: int
) -> None:
    os.setsid()
    _die_with_parent(parent)
    os.environ.update(env)
    os.environ["HDC_TRAIN_PROGRESS_FILE"] = paths["progress"]
    _redirect_output(paths["log"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from hdc_serving.loading import load_object
    from hdc_serving.worker import _default

    outcome: dict[str, Any]
    try:
        print(f"training {name} with {sorted(kwargs)}", flush=True)
        obj = load_object(name)
        result = obj.train(**kwargs)
        outcome = {"ok": True, "result": json.loads(json.dumps(result, default=_default))}
    except BaseException as exc:
        traceback.print_exc()
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    tmp = paths["result"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(outcome, fh)
    os.replace(tmp, paths["result"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if outcome["ok"] else 1)
