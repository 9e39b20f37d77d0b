"""Settings of the serving runtime (environment `HDC_SERVING_*`, YAML file, CLI flags)."""

from __future__ import annotations

import socket
from pathlib import Path

from hdc_common.settings import ServiceSettings, service_config
from pydantic import Field


class ServingSettings(ServiceSettings):
    model_config = service_config("serving")

    http_port: int = 8106
    # One model (the entry point name) or empty for every installed DEEPaaS model.
    model: str = ""
    # Predict worker processes; 0 means one per CPU this process may use.
    workers: int = Field(0, ge=0, le=256)
    # Largest number of queued requests one worker call takes for a model with predict_batch.
    batch_max_size: int = Field(32, ge=1, le=4096)
    # Queued requests wait for a running batch of the same model that should end within this
    # many milliseconds, rather than start a small batch on another worker (0: never wait).
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    predict_timeout_s: float = Field(60.0, gt=0)
    max_request_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_queue: int = Field(1024, ge=1)
    enable_train: bool = True
    enable_predict: bool = True
    max_training_jobs: int = Field(2, ge=1)
    # A running job whose server sent no heartbeat for this long is reported failed.
    heartbeat_stale_s: float = Field(30.0, gt=0)
    # Who runs jobs here; the same name after a restart lets the server fail its own orphans.
    instance_name: str = ""

    @property
    def serving_dir(self) -> Path:
        return self.data_dir / "serving"

    def worker_env(self) -> dict[str, str]:
        """Environment of the model processes: where the demo models keep their artifacts."""
        return {"HDC_MODEL_DIR": str(self.serving_dir / "models")}

    def owner(self) -> str:
        # Several instances may share a data dir (one per deployment on a host): the port
        # tells them apart, and a restarted instance comes back on the same one.
        return (
            self.instance_name
            or f"{socket.gethostname()}:{self.http_port}:{self.serving_dir.resolve()}"
        )
