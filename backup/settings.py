"""Process settings, read from the environment with the ``BACKUP_`` prefix.

Settings say where things are (policy file, inventory, identity); policies say what to back
up. Settings never hold a secret key's content, only the path of the identity file, so that
printing the settings can never leak one.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_config_path", "default_inventory_url", "get_settings"]


def default_config_path() -> Path:
    """Returns: the policy file used when ``BACKUP_CONFIG`` is unset."""
    return Path(platformdirs.user_config_dir("backup")) / "policies.toml"


def default_inventory_url() -> str:
    """Returns: the SQLite inventory in the user's data directory (the embedded default)."""
    return f"sqlite:///{Path(platformdirs.user_data_dir('backup')) / 'inventory.db'}"


class Settings(BaseSettings):
    """Settings of one process.

    Attributes:
        config: policy file (``BACKUP_CONFIG``).
        inventory_url: SQLAlchemy URL of the inventory (``BACKUP_INVENTORY_URL``).
        identity: age identity file used by restore and verify (``BACKUP_IDENTITY``).
    """

    model_config = SettingsConfigDict(env_prefix="BACKUP_", extra="ignore")

    config: Path = Field(default_factory=default_config_path)
    inventory_url: str = Field(default_factory=default_inventory_url)
    identity: Path | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Returns: the settings of this process, read once."""
    return Settings()
