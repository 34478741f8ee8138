"""The Celery application of the workers.

Design (docs/cluster.md):

- The broker carries job ids as JSON and nothing else: no pickle, no bytes, no secrets. The
  inventory database holds every job's state; the broker is a doorbell. What every process
  that talks to the broker shares (serializers, transport, queues) is
  :func:`backup.jobs.dispatch.broker_config`; this module adds the worker's own settings.
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

from celery import Celery

from backup.jobs.dispatch import QUEUES, broker_config, broker_url, queue_name, redact
from backup.settings import Settings, get_settings

__all__ = ["QUEUES", "app", "broker_url", "make_app", "queue_name", "redact"]


def make_app(settings: Settings | None = None) -> Celery:
    """Build the Celery application for these settings.

    Args:
        settings: defaults to the process's settings (``BACKUP_*`` environment).

    Returns:
        The application, with the tasks of :mod:`workers.tasks` registered.
    """
    settings = settings or get_settings()
    config = broker_config(settings)
    app = Celery("backup", broker=config["broker_url"], include=["workers.tasks"])
    app.conf.update(
        **config,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


app = make_app()
