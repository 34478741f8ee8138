from __future__ import annotations

from pathlib import Path

import pytest

from backup.settings import Settings


def test_defaults_are_under_the_users_directories(tmp_path: Path) -> None:
    s = Settings()
    assert s.config == tmp_path / "xdg-config" / "backup" / "policies.toml"
    assert s.inventory_url == f"sqlite:///{tmp_path / 'xdg-data' / 'backup' / 'inventory.db'}"
    assert s.identity is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_CONFIG", "/etc/backup/p.toml")
    monkeypatch.setenv("BACKUP_INVENTORY_URL", "postgresql+psycopg://db/backup")
    monkeypatch.setenv("BACKUP_IDENTITY", "/root/key.txt")
    s = Settings()
    assert s.config == Path("/etc/backup/p.toml")
    assert s.inventory_url == "postgresql+psycopg://db/backup"
    assert s.identity == Path("/root/key.txt")
