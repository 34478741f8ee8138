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


def test_named_notification_targets_come_from_the_environment_not_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backup.settings import is_notify_target_name, notify_target, notify_target_variable

    url = "mailto://me:hunter22@smtp.example.com?to=ops@example.com"
    assert notify_target("ops") is None
    monkeypatch.setenv("BACKUP_NOTIFY_OPS", f"  {url}\n json://127.0.0.1:8080/x ")
    # read when asked (a worker started with it defines it), names not case-sensitive
    assert notify_target("ops") == notify_target("OPS") == [url, "json://127.0.0.1:8080/x"]
    assert notify_target_variable("on_call") == "BACKUP_NOTIFY_ON_CALL"
    monkeypatch.setenv("BACKUP_NOTIFY_EMPTY", " ")
    assert notify_target("empty") is None
    # printing the settings never shows a target's credentials
    assert "hunter22" not in repr(Settings()) + Settings().model_dump_json()
    assert [is_notify_target_name(n) for n in ("ops", "on_call2", "2ops", "a-b", "x" * 65)] == [
        True, True, False, False, False
    ]  # fmt: skip


def test_data_directory_is_private_whichever_process_creates_it(tmp_path: Path) -> None:
    """`backup serve` creates it for its SQLite broker before the inventory is opened."""
    import stat

    from backup.inventory import Inventory
    from workers.app import broker_url

    data = tmp_path / "xdg-data" / "backup"
    assert broker_url(Settings()) == f"sqla+sqlite:///{data / 'broker.sqlite'}"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    Inventory(Settings().inventory_url).close()
    assert stat.S_IMODE((data / "inventory.db").stat().st_mode) == 0o600
