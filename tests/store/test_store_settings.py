"""Settings: everything defaults into one home directory; KFAC_* variables override."""

from pathlib import Path

import pytest

from backend.settings import Settings
from backend.store.db import normalise_url


def test_defaults_live_in_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KFAC_HOME", str(tmp_path))
    settings = Settings(_env_file=None)
    assert settings.database_url == f"sqlite:///{tmp_path / 'kfac.db'}"
    assert settings.artifacts_dir == tmp_path / "artifacts"
    assert settings.data_dir == tmp_path / "data"
    assert settings.broker_url is None and settings.admin_token is None
    assert settings.cors_origins == []


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFAC_DATABASE_URL", "postgresql://u@db/kfac")
    monkeypatch.setenv("KFAC_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("KFAC_ADMIN_TOKEN", "secret")
    monkeypatch.setenv("KFAC_HEARTBEAT_TIMEOUT_S", "10")
    settings = Settings(_env_file=None)
    assert settings.database_url == "postgresql://u@db/kfac"
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.heartbeat_timeout_s == 10
    assert "secret" not in repr(settings)


def test_postgres_urls_use_psycopg() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
