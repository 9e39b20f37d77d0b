"""Helpers of the main-job tests: a real digit picture, and what is left of a deployment."""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digit_png(path: Path, digit: int) -> Path:
    """A PNG of a real handwritten digit from scikit-learn's set, dark ink on white, 64x64."""
    data = load_digits()
    index = int(np.flatnonzero(data.target == digit)[0])
    pixels = (255 - data.images[index] * 255 / 16).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def processes_of(infrastructure_id: str) -> list[int]:
    """Live (not zombie) processes carrying the infrastructure's id in their environment."""
    marker = f"HDC_INFRASTRUCTURE_ID={infrastructure_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def listening(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


GATEWAY = "http://127.0.0.1:8000"


def model_url(uuid: str, gateway: str = GATEWAY) -> str:
    """A deployed model's API through the gateway."""
    return f"{gateway}/deployments/{uuid}/model"


def post_digit(base: str, png: Path, headers: dict[str, str] | None = None) -> httpx.Response:
    """A real image of a digit to the digits model's predict, as curl -F would send it."""
    return httpx.post(
        f"{base}/v2/models/digits/predict/",
        files={"image": (png.name, png.read_bytes(), "image/png")},
        headers=headers,
        timeout=30,
    )


def predicts(base: str, png: Path, token: str) -> int | None:
    """The label the model at `base` (through the gateway) gives, None while it cannot."""
    try:
        r = post_digit(base, png, {"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        return None
    return r.json()["predictions"]["label"] if r.status_code == 200 else None
