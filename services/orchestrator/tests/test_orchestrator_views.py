"""INDIGO JSON shapes and secret redaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hdc_orchestrator.redact import MASK, redact, redact_text
from hdc_orchestrator.views import fmt_date, page_json


def test_dates_have_minute_precision_and_numeric_offset() -> None:
    assert fmt_date(datetime(2023, 10, 27, 13, 24, 59, 999, tzinfo=UTC)) == "2023-10-27T13:24+0000"
    cet = timezone(timedelta(hours=2))
    assert fmt_date(datetime(2023, 10, 27, 15, 24, tzinfo=cet)) == "2023-10-27T13:24+0000"
    assert fmt_date(None) is None


def test_page_envelope_links() -> None:
    p = page_json(
        [{"a": 1}], total=25, page=1, size=10, url="http://o/deployments", query={"createdBy": "me"}
    )
    assert p["page"] == {"size": 10, "totalElements": 25, "totalPages": 3, "number": 1}
    rels = {link["rel"]: link["href"] for link in p["links"]}
    assert list(rels) == ["first", "prev", "self", "next", "last"]
    assert rels["next"] == "http://o/deployments?createdBy=me&page=2&size=10"
    assert rels["last"].endswith("page=2&size=10")
    empty = page_json([], total=0, page=0, size=10, url="u", query={})
    assert [x["rel"] for x in empty["links"]] == ["first", "self", "last"]
    assert empty["page"]["totalPages"] == 0


def test_redaction() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----"
    out = redact(
        {
            "node_ip": "1.2.3.4",
            "admin_password": "x",
            "ssh": key,
            "nested": [{"token": "t"}, "pw is s3cr3t!"],
        },
        ["s3cr3t!"],
    )
    assert out == {
        "node_ip": "1.2.3.4",
        "admin_password": MASK,
        "ssh": MASK,
        "nested": [{"token": MASK}, f"pw is {MASK}"],
    }
    assert (
        redact_text("failed: password=hunter2 and token: abc")
        == f"failed: password={MASK} and token: {MASK}"
    )


def test_smallest_fitting_flavor() -> None:
    from hdc.infoprovider.v1 import infoprovider_pb2 as pb
    from hdc_orchestrator.placement import requirements_message, smallest_flavor

    flavors = [
        pb.Flavor(
            id="xl",
            name="xlarge",
            cpus=16,
            ram_mb=65536,
            disk_gb=160,
            gpus=2,
            gpu_vendor="NVIDIA",
            gpu_model="Tesla V100",
        ),
        pb.Flavor(id="m", name="medium", cpus=4, ram_mb=8192, disk_gb=40),
        pb.Flavor(
            id="g1",
            name="gpu.small",
            cpus=8,
            ram_mb=32768,
            disk_gb=80,
            gpus=1,
            gpu_vendor="NVIDIA",
            gpu_model="Tesla T4",
        ),
        pb.Flavor(id="s", name="small", cpus=2, ram_mb=4096, disk_gb=20),
    ]
    req = requirements_message({"cpus": 2, "ram_mb": 4000}, "")
    assert smallest_flavor(flavors, req).id == "s"
    req = requirements_message(
        {"cpus": 2, "ram_mb": 4000, "gpu": {"count": 1, "vendor": "nvidia"}}, ""
    )
    assert smallest_flavor(flavors, req).id == "g1"
    req = requirements_message({"gpu": {"count": 1, "model": "V100"}}, "")
    assert smallest_flavor(flavors, req).id == "xl"
    assert smallest_flavor(flavors, requirements_message({"cpus": 64}, "")) is None
