"""Following a deployment as it advances: its events stream (Server-Sent Events) drives a
live display and tells when the deployment has left `*_IN_PROGRESS`.

The orchestrator replays a deployment's events, then pushes new ones, with keep-alive
comments in between, and closes the stream with an `end` event once the deployment is no
longer in progress (or is gone). A stream that drops (orchestrator restart, proxy timeout,
the server's own stream limit) is re-opened from the last event id, so nothing is shown twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from hdc_cli.api import (
    EXIT_NOT_FOUND,
    EXIT_NOT_RUNNING,
    EXIT_SERVER,
    EXIT_TIMEOUT,
    Api,
    CliError,
)
from hdc_cli.output import console
from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

ORCH = "/orchestrator"
IN_PROGRESS = {"CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS", "DELETE_IN_PROGRESS"}
# The server sends a keep-alive at least every second or so; silence this long is a dead link.
STREAM_READ_TIMEOUT_S = 30.0
# Errors worth waiting out: the orchestrator or the gateway restarting, a stream the
# deployment's removal cut (the next look says DELETE_COMPLETE).
TRANSIENT = {EXIT_NOT_FOUND, EXIT_NOT_RUNNING, EXIT_SERVER}
# Re-opened streams back off up to this long (the orchestrator may be restarting).
MAX_RECONNECT_DELAY_S = 5.0


def sse_messages(api: Api, uuid: str, last_id: str | None = None) -> Iterator[tuple[str, Any]]:
    """(event name, payload) of the deployment's events stream; ("", None) on a keep-alive."""
    headers = {"Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    name, data, event_id = "message", [], None
    for line in api.stream_lines(
        f"{ORCH}/deployments/{uuid}/events", headers=headers, read_timeout_s=STREAM_READ_TIMEOUT_S
    ):
        if line.startswith(":"):
            yield "", None
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            text = "\n".join(data)
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {"message": text}
            if isinstance(payload, dict) and event_id:
                payload.setdefault("id", event_id)
            yield name, payload
            name, data, event_id = "message", [], None


def event_line(event: dict[str, Any]) -> str:
    when = event.get("time") or ""
    what = event.get("kind") or ""
    msg = event.get("message") or ""
    return f"{when}  {event.get('status', ''):18} {what:18} {msg}".rstrip()


class _Display:
    """A spinner with the deployment's status and its latest event; each event is printed
    above it as it arrives, so the history stays on screen when the spinner goes."""

    def __init__(self, uuid: str, quiet: bool) -> None:
        self.uuid = uuid
        self.status = ""
        self.last = ""
        self.live = (
            None
            if quiet
            else Live(self._render(), console=console, transient=True, refresh_per_second=8)
        )

    def _render(self) -> Group:
        spinner = Spinner("dots", text=Text(f"{self.uuid} {self.status}".rstrip()))
        return Group(spinner, Text(f"  {self.last}", style="dim")) if self.last else Group(spinner)

    def __enter__(self) -> _Display:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.stop()

    def status_is(self, status: str) -> None:
        self.status = status
        if self.live:
            self.live.update(self._render())

    def event(self, event: dict[str, Any]) -> None:
        self.status = event.get("status") or self.status
        self.last = event.get("message") or event.get("kind") or ""
        if self.live:
            self.live.console.print(event_line(event), highlight=False)
            self.live.update(self._render())


def follow(api: Api, uuid: str, timeout_s: int, quiet: bool = False) -> dict[str, Any]:
    """Follow the deployment's events until it is no longer in progress; its final document.

    A deployment that a delete removed comes back as `{"uuid", "status": "DELETE_COMPLETE"}`.
    """
    deadline = time.monotonic() + timeout_s
    last_id: str | None = None
    delay = 0.5
    with _Display(uuid, quiet) as display:
        while True:
            try:
                doc = _current(api, uuid)
                if doc is None:
                    return {"uuid": uuid, "status": "DELETE_COMPLETE"}
                display.status_is(doc["status"])
                if doc["status"] not in IN_PROGRESS:
                    return doc
                for name, payload in sse_messages(api, uuid, last_id):
                    if name == "end" or time.monotonic() > deadline:
                        break
                    if payload is not None:
                        last_id = str(payload.get("id") or last_id or "") or None
                        display.event(payload)
                        delay = 0.5
            except CliError as exc:
                if exc.exit_code not in TRANSIENT:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY_S)
            except (httpx.TransportError, httpx.StreamError):
                time.sleep(delay)  # dropped: look again, then re-open from the last event
                delay = min(delay * 2, MAX_RECONNECT_DELAY_S)
            if time.monotonic() > deadline:
                doc = _current(api, uuid)
                if doc is None:
                    return {"uuid": uuid, "status": "DELETE_COMPLETE"}
                if doc["status"] in IN_PROGRESS:
                    raise CliError(
                        f"{uuid} still {doc['status']} after {timeout_s}s; "
                        f"`hdc deployment events {uuid} --follow` keeps watching",
                        EXIT_TIMEOUT,
                    )
                return doc


def _current(api: Api, uuid: str) -> dict[str, Any] | None:
    try:
        return api.request("GET", f"{ORCH}/deployments/{uuid}")
    except CliError as exc:
        if exc.exit_code == EXIT_NOT_FOUND:
            return None
        raise
