"""The Celery application.

Design (docs/cluster.md):

- The broker carries job ids as JSON and nothing else: no pickle, no bytes, no secrets. The
  inventory database holds every job's state; the broker is a doorbell.
- Tasks are acknowledged early (``task_acks_late = False``). With the Redis broker a task
  not acknowledged within ``visibility_timeout`` is delivered again even while it still
  runs (celery 5935, 4766, 2481; kombu 337), and a backup or a restore can run for hours,
  longer than any sane timeout. Instead of redelivery by the broker, a running job beats a
  heartbeat in the database and the scheduler's sweep re-queues a job whose heartbeat
  stopped. So no countdown or ETA is ever used, and the visibility timeout only matters for
  the one message a worker may have reserved but not started (prefetch multiplier 1); it is
  set the same in the broker and result transport options for that reason.
- ``worker_prefetch_multiplier = 1``: a worker takes one long job at a time per process,
  so a queued job never waits behind a busy process while another worker is idle.
- Connections are retried forever: a Redis restart pauses the workers, it does not stop them;
  what the restart lost, the sweep sends again from the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import platformdirs
from celery import Celery

from backup.runner import TASK_QUEUES
from backup.settings import Settings, get_settings

__all__ = ["QUEUES", "app", "broker_url", "make_app", "queue_name", "redact"]

#: every queue, in the order ``backup worker`` lists them
QUEUES = ("pack", "restore", "poll", "notify", "default")

#: seconds; see the module docstring for why it barely matters here
VISIBILITY_TIMEOUT = 3600


def queue_name(settings: Settings, queue: str) -> str:
    """Returns: the broker's name of a queue, with the installation's prefix."""
    return f"{settings.queue_prefix}{queue}"


def broker_url(settings: Settings) -> str:
    """Returns: the configured broker, or the embedded one: Kombu's SQLAlchemy transport
    over a SQLite file in the data directory, which survives a restart."""
    if settings.broker_url:
        return settings.broker_url
    path = Path(platformdirs.user_data_dir("backup")) / "broker.sqlite"
    # the inventory's directory too: created here first, it must be as private (0700)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqla+sqlite:///{path}"


def redact(url: str) -> str:
    """Returns: a broker URL fit for a log line (any password masked)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def make_app(settings: Settings | None = None) -> Celery:
    """Build the Celery application for these settings.

    Args:
        settings: defaults to the process's settings (``BACKUP_*`` environment).

    Returns:
        The application, with the tasks of :mod:`workers.tasks` registered.
    """
    settings = settings or get_settings()
    url = broker_url(settings)
    # (the SQLAlchemy transport hands its options to create_engine, which takes no such key)
    transport: dict[str, Any] = (
        {} if url.startswith("sqla+") else {"visibility_timeout": VISIBILITY_TIMEOUT}
    )
    app = Celery("backup", broker=url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        task_default_queue=queue_name(settings, "default"),
        task_routes={name: {"queue": queue_name(settings, q)} for name, q in TASK_QUEUES.items()},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app


app = make_app()
