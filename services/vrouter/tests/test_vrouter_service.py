"""The service is registered for `hdc up` and starts from settings alone (embedded defaults)."""

from __future__ import annotations

from importlib.metadata import entry_points

from hdc_common.settings import load_settings
from hdc_vrouter.service import SERVICE
from hdc_vrouter.settings import VRouterSettings


def test_registered_and_buildable_with_defaults(tmp_path, monkeypatch):
    # What `hdc up` discovers (loading only ours: other services' imports are not this test's).
    (entry,) = entry_points(group="hdc.services", name="vrouter")
    assert entry.load() is SERVICE
    monkeypatch.setenv("HDC_VROUTER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HDC_VROUTER_HEARTBEAT_TIMEOUT_S", "12")
    settings = load_settings(VRouterSettings)
    assert (settings.http_port, settings.grpc_port, settings.heartbeat_timeout_s) == (
        8105,
        9105,
        12,
    )
    components = SERVICE.build(settings)
    assert components.asgi_app is not None
    assert [name for _, _, name in components.grpc_servicers] == ["hdc.vrouter.v1.VRouter"]
    assert len(components.background) == 2  # bus relay, offline sweeper
    assert (tmp_path / "vrouter.db").exists()
    assert settings.agent_url() == "http://127.0.0.1:8105"
