"""CloudEvents envelopes, trace context and topic matching (no broker needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hdc_common.bus import Bus, CloudEvent, InvalidEvent, topic_matches
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider


def test_round_trip_keeps_every_attribute():
    event = CloudEvent(
        type="orchestrator.deployment.created",
        source="/hdc/orchestrator",
        data={"uuid": "d-1", "n": [1, 2]},
        subject="d-1",
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        extensions={"partition": "p1"},
    )
    raw = json.loads(event.to_json())
    assert raw["specversion"] == "1.0"
    assert raw["time"] == "2026-01-02T03:04:05Z"
    assert raw["partition"] == "p1"
    assert raw["traceparent"].startswith("00-0af7")
    assert CloudEvent.from_json(event.to_json()) == event


def test_binary_data_travels_as_base64():
    event = CloudEvent(
        type="a.b.c", source="/x", data=b"\x00\xffraw", datacontenttype="application/octet-stream"
    )
    raw = json.loads(event.to_json())
    assert "data" not in raw and raw["data_base64"] == "AP9yYXc="
    assert CloudEvent.from_json(event.to_json()).data == b"\x00\xffraw"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"specversion":"1.0","id":"1","source":"/s"}', "'type'"),
        (b'{"specversion":"0.3","id":"1","source":"/s","type":"t"}', "specversion"),
        (b'{"specversion":"1.0","id":"","source":"/s","type":"t"}', "id must be"),
        (b'{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}', "RFC 3339"),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","traceparent":"xyz"}',
            "traceparent",
        ),
        (b'{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad_Ext":1}', "extension name"),
        (b'{"specversion":"1.0","id":1,"source":"/s","type":"t"}', "'id' must be a string"),
    ],
)
def test_malformed_envelopes_are_rejected_with_a_reason(body, message):
    with pytest.raises(InvalidEvent, match=message):
        CloudEvent.from_json(body)


def test_unserialisable_data_fails_at_the_sender():
    with pytest.raises(InvalidEvent, match="not JSON-serialisable"):
        CloudEvent(type="a.b.c", source="/x", data={"when": datetime.now(UTC)}).to_json()


def test_new_events_carry_the_current_trace():
    tracer = TracerProvider().get_tracer("test")
    bus = Bus("memory:///events-trace", service="orchestrator")
    assert bus.new_event("orchestrator.deployment.created").traceparent is None
    with tracer.start_as_current_span("request") as span:
        event = bus.new_event("orchestrator.deployment.created", {"a": 1}, subject="d1")
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert event.traceparent is not None and trace_id in event.traceparent
    assert event.source == "/hdc/orchestrator"
    assert trace.get_current_span() is not span


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("orchestrator.deployment.*", "orchestrator.deployment.created", True),
        ("orchestrator.deployment.*", "orchestrator.deployment.created.late", False),
        ("orchestrator.#", "orchestrator.deployment.created", True),
        ("#", "a", True),
        ("#.created", "im.vm.created", True),
        ("*.vm.*", "im.vm.deleted", True),
        ("*.vm.*", "im.net.deleted", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("im.vm.created", "im.vm.created", True),
    ],
)
def test_topic_matching_follows_amqp_rules(pattern, key, expected):
    assert topic_matches(pattern, key) is expected


def test_bus_validates_names_and_types():
    bus = Bus("memory:///events-validate", service="orchestrator")
    with pytest.raises(ValueError, match="service"):
        Bus("memory://", service="Bad Name")
    with pytest.raises(ValueError, match="topic pattern"):
        bus.on_event("orchestrator..created")
    with pytest.raises(ValueError, match="queue"):
        bus.on_event("a.b.c", queue="x.dlq")
    with pytest.raises(ValueError, match="sessions"):
        bus.emit(None, "orchestrator.deployment.created")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="bus_url"):
        Bus("http://broker", service="x")
