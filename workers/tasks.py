"""Tasks: each takes a job id and is one call into :class:`backup.jobs.runner.Runner`.
Nothing else lives here; the state, the checks and the work are the library's."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import worker_process_init

from backup.inventory import Inventory
from backup.jobs.dispatch import Dispatcher
from backup.jobs.runner import Runner
from backup.jobs.store import JobStore
from backup.notify import RetryLater
from backup.settings import get_settings

from .app import app

__all__ = ["app", "extract", "notify", "poll", "run", "runner", "start_restore"]

_inventory: Inventory | None = None


@worker_process_init.connect
def _forget_parent_connections(**_: Any) -> None:
    # a forked pool process must not share the parent's database connections
    global _inventory
    if _inventory is not None:
        _inventory.engine.dispose(close=False)
    _inventory = None


def runner() -> Runner:
    """Returns: this process's runner (one inventory connection pool per process), whose
    follow-up tasks go through the broker."""
    global _inventory
    settings = get_settings()
    if _inventory is None:
        _inventory = Inventory(settings.inventory_url)
    return Runner(_inventory, settings, Dispatcher(settings, JobStore(_inventory), app))


@app.task(name="backup.run")
def run(job_id: str) -> str:
    """Carry out a queued backup."""
    return runner().run_backup(job_id)


@app.task(name="backup.start_restore")
def start_restore(job_id: str) -> str:
    """Request the objects a restore needs."""
    return runner().start_restore(job_id)


@app.task(name="backup.extract")
def extract(job_id: str) -> str:
    """Restore a request whose objects are ready (needs this worker's identity)."""
    return runner().extract(job_id)


@app.task(name="backup.poll")
def poll(_: str = "") -> int:
    """Check the pending retrievals that are due."""
    return runner().poll()


#: how often Celery tries a notification's failed URLs again, after 2, 4, 8, 16, 32 s (well
#: inside the five heartbeat periods after which the sweep takes a ``sending`` one back)
NOTIFY_RETRIES = 5


@app.task(name="backup.notify", bind=True, max_retries=NOTIFY_RETRIES)
def notify(self: Task, job_id: str, again: list[int] | None = None) -> bool:
    """Send a finished job's notification: each URL once; those that failed are sent again
    by Celery's retry with exponential backoff (no worker sleeps; the broker carries their
    positions, never a URL)."""
    final = self.request.retries >= NOTIFY_RETRIES
    try:
        return runner().notify(job_id, attempts=1, again=again, final=final)
    except RetryLater as e:
        wait = 2 ** (self.request.retries + 1)
        raise self.retry(kwargs={"again": e.pending}, countdown=wait) from None
