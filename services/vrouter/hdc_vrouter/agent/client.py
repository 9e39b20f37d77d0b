"""The agent's side of the controller's agent API (HTTP, JSON, problem+json errors)."""

from __future__ import annotations

from typing import Any

import httpx


class ControllerError(RuntimeError):
    """The controller answered with an error; `status` 401 means this router is no longer known."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"controller answered {status}: {detail}")
        self.status = status
        self.detail = detail


class ControllerClient:
    def __init__(
        self,
        base_url: str,
        secret: str | None = None,
        timeout_s: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self._http = httpx.Client(base_url=self.base_url + "/v1", timeout=timeout_s, verify=verify)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        resp = self._http.request(method, path, json=json, headers=headers)
        if resp.status_code >= 400:
            try:
                body = resp.json()
                detail = body.get("detail") or body.get("title") or resp.text
            except ValueError:
                detail = resp.text
            raise ControllerError(resp.status_code, str(detail))
        return resp.json()

    def enrol(self, token: str, public_key: str, endpoint: str | None) -> dict[str, Any]:
        body = {"token": token, "public_key": public_key}
        if endpoint:
            body["endpoint"] = endpoint
        result = self._call("POST", "/agent/enrol", body)
        self.secret = result["agent_secret"]
        return result

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/agent/config")

    def rotate_key(self, public_key: str) -> dict[str, Any]:
        return self._call("PUT", "/agent/key", {"public_key": public_key})

    def heartbeat(self, config_version: int, peers: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call(
            "POST", "/agent/heartbeat", {"config_version": config_version, "peers": peers}
        )
