"""Where demo models keep their trained artifacts, and how they load them.

Artifacts live under `HDC_MODEL_DIR` (the runtime sets it to `<data_dir>/models`),
falling back to `~/.hdc/serving/models`. Several predict workers may start at once on a
fresh machine: a file lock makes exactly one of them train while the others wait, and every
write is a rename so no reader sees half a file. A retrain (another process) replaces the
file; readers notice the new modification time and reload. A container image can ship
artifacts trained at build time in `HDC_MODEL_SEED_DIR`; they are copied, not retrained.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib


class BadInput(ValueError):
    """The caller sent something the model cannot use; runtimes answer 400 with this text."""

    status_code = 400


def model_dir() -> Path:
    path = Path(os.environ.get("HDC_MODEL_DIR") or Path.home() / ".hdc/serving/models")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(name: str, obj: Any) -> Path:
    target = model_dir() / name
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    os.close(fd)
    joblib.dump(obj, tmp)
    os.replace(tmp, target)
    return target


class Cached:
    """An artifact loaded once per process, trained on first use, reloaded when replaced."""

    def __init__(self, name: str, fit: Callable[[], Any]) -> None:
        self.name = name
        self._fit = fit
        self._obj: Any = None
        self._mtime = 0.0

    def get(self) -> Any:
        path = model_dir() / self.name
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            mtime = self._train_once(path)
        if self._obj is None or mtime != self._mtime:
            self._obj = joblib.load(path)
            self._mtime = mtime
        return self._obj

    def _train_once(self, path: Path) -> float:
        with open(path.parent / f".{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                seed = Path(os.environ.get("HDC_MODEL_SEED_DIR", "/nonexistent")) / self.name
                if seed.is_file():  # trained when the image was built: copy, do not retrain
                    tmp = path.with_name(f".{self.name}.seed")
                    shutil.copyfile(seed, tmp)
                    os.replace(tmp, path)
                else:
                    save(self.name, self._fit())
        return path.stat().st_mtime
