from __future__ import annotations

import pytest
from hdc_common.errors import ConfigError
from hdc_common.settings import ServiceSettings, load_settings, service_config


class DemoSettings(ServiceSettings):
    model_config = service_config("demo")
    http_port: int = 9999
    max_items: int = 10


def test_env_and_yaml_merge_env_wins(tmp_path, monkeypatch):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("max_items: 3\nhttp_port: 1234\n")
    monkeypatch.setenv("HDC_DEMO_HTTP_PORT", "4321")
    s = load_settings(DemoSettings, cfg)
    assert s.max_items == 3
    assert s.http_port == 4321
    assert s.service_name == "demo"


def test_unknown_yaml_key_is_named(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("max_itemz: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_itemz'"):
        load_settings(DemoSettings, cfg)


def test_unknown_env_key_is_named(monkeypatch):
    monkeypatch.setenv("HDC_DEMO_MAXITEMS", "3")
    with pytest.raises(ConfigError, match="HDC_DEMO_MAXITEMS"):
        load_settings(DemoSettings)


def test_invalid_value_names_key(monkeypatch):
    monkeypatch.setenv("HDC_DEMO_MAX_ITEMS", "lots")
    with pytest.raises(ConfigError, match="'max_items'"):
        load_settings(DemoSettings)


def test_config_file_from_env_and_bad_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("max_items: [1\n")
    monkeypatch.setenv("HDC_DEMO_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(DemoSettings)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(DemoSettings, tmp_path / "nope.yaml")


def test_default_sqlite_url_under_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HDC_DEMO_DATA_DIR", str(tmp_path))
    s = load_settings(DemoSettings)
    assert s.resolved_database_url() == f"sqlite:///{tmp_path}/demo.db"
