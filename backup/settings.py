"""Process settings, read from the environment with the ``BACKUP_`` prefix.

Settings say where things are (policy file, inventory, identity); policies say what to back
up. Settings never hold a secret key's content, only the path of the identity file, so that
printing the settings can never leak one. Named notification targets
(``BACKUP_NOTIFY_<NAME>``), whose URLs carry passwords and tokens, are read by
:func:`notify_target` when a notification is sent, outside :class:`Settings` for the same
reason.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_RETRIEVAL_PRICES",
    "Settings",
    "default_config_path",
    "default_inventory_url",
    "get_settings",
    "is_notify_target_name",
    "notify_target",
    "notify_target_variable",
]

#: AWS us-east-1 list prices of a retrieval, per "CLASS/Tier": (USD per GB, USD per 1,000
#: requests). Bulk from GLACIER (Flexible Retrieval) is free; GLACIER_IR and the IA classes
#: charge per GB read with no restore. "VAULT/..." is the legacy Glacier vault API.
#: Override any entry with BACKUP_RETRIEVAL_PRICES (JSON).
DEFAULT_RETRIEVAL_PRICES: dict[str, tuple[float, float]] = {
    "GLACIER/Expedited": (0.03, 10.0),
    "GLACIER/Standard": (0.01, 0.05),
    "GLACIER/Bulk": (0.0, 0.0),
    "DEEP_ARCHIVE/Standard": (0.02, 0.10),
    "DEEP_ARCHIVE/Bulk": (0.0025, 0.025),
    "GLACIER_IR/Standard": (0.03, 0.01),
    "STANDARD_IA/Standard": (0.01, 0.001),
    "ONEZONE_IA/Standard": (0.01, 0.001),
    "STANDARD/Standard": (0.0, 0.0004),
    "VAULT/Expedited": (0.03, 10.0),
    "VAULT/Standard": (0.01, 0.05),
    "VAULT/Bulk": (0.0025, 0.025),
}


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
        broker_url: Celery broker (``BACKUP_BROKER_URL``, e.g. ``redis://host:6379/0``);
            unset means commands run in-process and ``backup serve`` uses a local SQLite
            broker.
        queue_prefix: prepended to every queue name, so several installations can share one
            Redis (``BACKUP_QUEUE_PREFIX``).
        heartbeat_seconds: how often a running job proves its worker is alive.
        stale_after_seconds: a running job of another host whose heartbeat is older is
            taken for dead (on the job's own host, a gone process is seen at once): a
            worker's job is re-queued, a job a command ran in-process is failed.
        resend_after_seconds: a job waiting this long for a worker is handed to the broker
            again when its queue is empty (the broker lost it, e.g. a Redis restart).
        lease_seconds: the active scheduler's lease; another scheduler takes over this long
            after the active one dies.
        tick_seconds: how often the scheduler looks at schedules, jobs and retrievals.
        metrics_port: where ``backup serve``, ``scheduler`` and ``worker`` serve Prometheus
            metrics at ``/metrics`` (``BACKUP_METRICS_PORT``; none by default).
        poll_seconds: the least time between two status checks of one pending retrieval.
        poll_max_seconds: the most time between two status checks (unset: by the storage
            class and tier, hours apart for DEEP_ARCHIVE; set it low for S3-compatible
            stores whose restores take minutes).
        retrieval_prices: cold-storage retrieval prices used to estimate what a restore
            costs, per ``"CLASS/Tier"``: ``[USD per GB, USD per 1,000 requests]``
            (``BACKUP_RETRIEVAL_PRICES``, JSON; merged over the defaults, which are AWS
            us-east-1 list prices; see docs/cold-storage.md).
        storage_prices: USD per GB-month per storage class (``BACKUP_STORAGE_PRICES``, JSON,
            merged over AWS us-east-1 list prices: backup/economics.py).
        min_storage_days: minimum storage duration per class, in days
            (``BACKUP_MIN_STORAGE_DAYS``, JSON; ``{"DEEP_ARCHIVE": 0, "GLACIER": 0}`` for a
            store without minimums such as Tigris or MinIO).
        put_prices: USD per 1,000 PUT requests per class (``BACKUP_PUT_PRICES``, JSON).
        transfer_out_per_gb: USD per GB downloaded out of the provider's network
            (``BACKUP_TRANSFER_OUT_PER_GB``; 0 when restoring inside the same region).
        restore_events_queue: SQS queue (URL or name) that receives the buckets'
            ``s3:ObjectRestore:Completed`` events, so restores are known ready at once
            (``BACKUP_RESTORE_EVENTS_QUEUE``; unset: polling only).
        glacier_sns_topic: SNS topic ARN named in every Glacier vault job this product
            starts (archive and inventory retrievals); the vault publishes to it when the job
            finishes. Subscribe the restore events queue to it so finished jobs are checked
            at once (``BACKUP_GLACIER_SNS_TOPIC``; unset: polling only).
        inventory_export_after_run: after each successful backup, copy the inventory into
            the policy's target (``BACKUP_INVENTORY_EXPORT_AFTER_RUN``; docs/usage.md).
        inventory_export_interval: seconds that must pass after a target's last copy
            before a run makes another (``BACKUP_INVENTORY_EXPORT_INTERVAL``; 0: every run).
            A copy holds the whole file index: a year of daily runs of 20,000 files with
            weekly fulls copies in about 3 s, 45 MB (docs/performance.md).
        inventory_export_keep: how many copies of this host's inventory a target keeps
            (``BACKUP_INVENTORY_EXPORT_KEEP``).
    """

    model_config = SettingsConfigDict(env_prefix="BACKUP_", extra="ignore")

    config: Path = Field(default_factory=default_config_path)
    inventory_url: str = Field(default_factory=default_inventory_url)
    identity: Path | None = None
    # workers (docs/cluster.md): the broker carries job ids only; the inventory holds state
    broker_url: str | None = None
    queue_prefix: str = ""
    heartbeat_seconds: float = 10.0
    stale_after_seconds: float = 60.0
    resend_after_seconds: float = 30.0
    lease_seconds: float = 30.0
    tick_seconds: float = 2.0
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    poll_seconds: float = 30.0
    poll_max_seconds: float | None = None
    # cold storage (docs/cold-storage.md)
    retrieval_prices: dict[str, tuple[float, float]] = {}
    storage_prices: dict[str, float] = {}
    min_storage_days: dict[str, int] = {}
    put_prices: dict[str, float] = {}
    transfer_out_per_gb: float = 0.09
    restore_events_queue: str | None = None
    glacier_sns_topic: str | None = None
    # copies of the inventory in the targets (backup/inventory_copy.py)
    inventory_export_after_run: bool = True
    inventory_export_interval: float = Field(default=3600.0, ge=0)
    inventory_export_keep: int = Field(default=5, ge=1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Returns: the settings of this process, read once."""
    return Settings()


_NOTIFY_TARGET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def is_notify_target_name(text: str) -> bool:
    """Returns: whether ``text`` is a notification target's name (``ops``,
    ``oncall_mail``): a letter, then letters, digits or ``_``, 64 at most."""
    return bool(_NOTIFY_TARGET_NAME.match(text))


def notify_target_variable(name: str) -> str:
    """Returns: the environment variable defining a named notification target: ``ops`` ->
    ``BACKUP_NOTIFY_OPS`` (names are not case-sensitive)."""
    return f"BACKUP_NOTIFY_{name.upper()}"


def notify_target(name: str) -> list[str] | None:
    """The Apprise URLs of a named notification target, read from the environment now (a
    worker started with it defines it; nothing is cached).

    Args:
        name: the target's name, as given to ``--notify``.

    Returns:
        The URLs of ``BACKUP_NOTIFY_<NAME>`` (one or more, separated by whitespace), or None
        when it is unset or empty.
    """
    urls = os.environ.get(notify_target_variable(name), "").split()
    return urls or None
