"""CloudEvents 1.0 structured-mode JSON envelopes, with the W3C `traceparent` extension.

Every body on `hdc.commands` and `hdc.events` is one of these. The envelope is validated on
the way in (a malformed one is a poison message: it goes straight to the dead-letter queue)
and on the way out (a bug in the sender fails at `emit`, inside the sender's transaction).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import propagate

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"

_CONTEXT_ATTRIBUTES = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
)
# CloudEvents 1.0: extension names are lower-case ASCII letters and digits.
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class InvalidEvent(ValueError):
    """The bytes are not a CloudEvents 1.0 structured JSON envelope we can handle."""


def current_traceparent() -> str | None:
    """The active span's `traceparent`, or None outside any trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@dataclass(frozen=True)
class CloudEvent:
    """One CloudEvents 1.0 event. `data` is any JSON value (or bytes, sent as `data_base64`)."""

    type: str
    source: str
    data: Any = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    subject: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: str | None = "application/json"
    dataschema: str | None = None
    traceparent: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    specversion: str = SPEC_VERSION

    def __post_init__(self) -> None:
        _require_text("id", self.id)
        _require_text("source", self.source)
        _require_text("type", self.type)
        if self.specversion != SPEC_VERSION:
            raise InvalidEvent(f"specversion must be {SPEC_VERSION!r}, got {self.specversion!r}")
        if self.subject is not None:
            _require_text("subject", self.subject)
        if self.time.tzinfo is None:
            raise InvalidEvent("time must be timezone-aware")
        if self.traceparent is not None and not _TRACEPARENT.match(self.traceparent):
            raise InvalidEvent(f"traceparent {self.traceparent!r} is not a W3C traceparent")
        for name in self.extensions:
            if name in _CONTEXT_ATTRIBUTES or name in ("data", "data_base64", "traceparent"):
                raise InvalidEvent(f"extension {name!r} clashes with a CloudEvents attribute")
            if not _EXTENSION_NAME.match(name):
                raise InvalidEvent(
                    f"extension name {name!r} must be 1-20 lower-case letters/digits"
                )

    @classmethod
    def create(
        cls,
        type: str,
        data: Any = None,
        *,
        source: str,
        subject: str | None = None,
        **extensions: Any,
    ) -> CloudEvent:
        """A new event stamped with a fresh id, the current time and the current trace."""
        return cls(
            type=type,
            source=source,
            data=data,
            subject=subject,
            traceparent=current_traceparent(),
            extensions=extensions,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time.isoformat().replace("+00:00", "Z"),
        }
        for name in ("subject", "datacontenttype", "dataschema", "traceparent"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extensions)
        if isinstance(self.data, bytes | bytearray):
            out["data_base64"] = base64.b64encode(self.data).decode("ascii")
        elif self.data is not None:
            out["data"] = self.data
        return out

    def to_json(self) -> bytes:
        try:
            return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"data of {self.type!r} is not JSON-serialisable: {exc}") from None

    @classmethod
    def from_dict(cls, raw: Any) -> CloudEvent:
        if not isinstance(raw, dict):
            raise InvalidEvent("a CloudEvent must be a JSON object")
        raw = dict(raw)
        for required in ("specversion", "id", "source", "type"):
            if required not in raw:
                raise InvalidEvent(f"missing required attribute {required!r}")
        if "data" in raw and "data_base64" in raw:
            raise InvalidEvent("data and data_base64 are mutually exclusive")
        data: Any = raw.pop("data", None)
        if "data_base64" in raw:
            try:
                data = base64.b64decode(raw.pop("data_base64"), validate=True)
            except (ValueError, TypeError):
                raise InvalidEvent("data_base64 is not valid base64") from None
        time_raw = raw.pop("time", None)
        time = _parse_time(time_raw) if time_raw is not None else datetime.now(UTC)
        known = {k: raw.pop(k) for k in list(raw) if k in _CONTEXT_ATTRIBUTES or k == "traceparent"}
        for name, value in known.items():
            if value is not None and not isinstance(value, str):
                raise InvalidEvent(f"attribute {name!r} must be a string")
        return cls(
            type=known["type"],
            source=known["source"],
            id=known["id"],
            specversion=known["specversion"],
            subject=known.get("subject"),
            datacontenttype=known.get("datacontenttype"),
            dataschema=known.get("dataschema"),
            traceparent=known.get("traceparent"),
            time=time,
            data=data,
            extensions=raw,
        )

    @classmethod
    def from_json(cls, body: bytes | str) -> CloudEvent:
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEvent(f"body is not JSON: {exc}") from None
        return cls.from_dict(raw)


def _require_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name} must be a non-empty string")


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidEvent("time must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidEvent(f"time {value!r} is not RFC 3339") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"time {value!r} has no UTC offset")
    return parsed
