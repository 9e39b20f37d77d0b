"""What an agent keeps on disk between restarts: its private key and its agent secret.

Both files are created 0600 and replaced atomically, so a crash never leaves half a key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass
class Enrolment:
    controller: str
    site_id: str
    overlay_id: str
    agent_secret: str


class AgentState:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    @property
    def key_file(self) -> Path:
        return self.dir / "private.key"

    @property
    def enrolment_file(self) -> Path:
        return self.dir / "enrolment.json"

    def private_key(self) -> str | None:
        return self.key_file.read_text().strip() if self.key_file.exists() else None

    def save_private_key(self, key: str) -> None:
        write_private(self.key_file, key + "\n")

    def enrolment(self) -> Enrolment | None:
        if not self.enrolment_file.exists():
            return None
        return Enrolment(**json.loads(self.enrolment_file.read_text()))

    def save_enrolment(self, enrolment: Enrolment) -> None:
        write_private(self.enrolment_file, json.dumps(asdict(enrolment)))

    def forget(self) -> None:
        """After the controller disowned this router: a new token is needed to rejoin."""
        self.enrolment_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)
