"""Sending a report to the registry: a CloudEvent over AMQP (hdc bus), or HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from hdc_infoprovider.agent.config import PublishConfig

REPORT_COMMAND = "infoprovider.site.report"


class PublishError(Exception):
    pass


class AmqpPublisher:
    """`infoprovider.site.report` on hdc.commands, routing key `infoprovider`, confirmed."""

    def __init__(self, cfg: PublishConfig) -> None:
        from hdc_common.bus import Bus

        self.bus = Bus(cfg.bus_url, service="info-agent", publish_timeout=cfg.timeout_s)

    def publish(self, report: dict[str, Any], token: str) -> str:
        from hdc_common.bus import COMMANDS, BusUnavailable

        event = self.bus.new_event(
            REPORT_COMMAND, {"access_token": token, "report": report}, subject=report["site"]["id"]
        )
        try:
            self.bus.publish(event, exchange=COMMANDS, routing_key="infoprovider")
        except BusUnavailable as exc:
            raise PublishError(f"broker unavailable: {exc}") from None
        return event.id

    def close(self) -> None:
        self.bus.stop()


class HttpPublisher:
    def __init__(self, cfg: PublishConfig) -> None:
        self.url = cfg.registry_url.rstrip("/") + "/v1/reports"
        self.client = httpx.Client(timeout=cfg.timeout_s)

    def publish(self, report: dict[str, Any], token: str) -> str:
        try:
            resp = self.client.post(
                self.url, json=report, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise PublishError(f"registry unreachable: {exc}") from None
        if resp.status_code != 202:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise PublishError(f"registry refused the report ({resp.status_code}): {detail}")
        return resp.headers.get("x-request-id", "")

    def close(self) -> None:
        self.client.close()


def make_publisher(cfg: PublishConfig) -> AmqpPublisher | HttpPublisher:
    return AmqpPublisher(cfg) if cfg.transport == "amqp" else HttpPublisher(cfg)
