"""The one way a task reaches the workers: queue names, the broker, and :class:`Dispatcher`.

Invariants:

- The broker carries a task name and a job id as JSON, nothing else (docs/cluster.md); the
  database holds the job. Every send of a job is recorded on it (``sent_at``), so the
  scheduler's sweep knows what to send again after a broker lost it.
- A policy's run goes to its own ``pack-<queue>`` when the policy names one, whoever sends
  it (the CLI, the scheduler, a resend after a lost message).
- The library builds a send-only Celery client here; the worker application and its
  configuration stay in ``workers/app.py``, which imports its queue names from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import platformdirs

from ..errors import Error
from ..policy import Policy
from ..redact import hide_password
from ..settings import Settings
from .store import Job, JobStore

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "QUEUES",
    "TASK_QUEUES",
    "VISIBILITY_TIMEOUT",
    "Dispatch",
    "Dispatcher",
    "Sender",
    "broker_config",
    "broker_url",
    "client_app",
    "queue_name",
    "redact",
    "task_queue",
]

log = logging.getLogger("backup.scheduler")

#: every queue, in the order ``backup worker`` lists them
QUEUES = ("pack", "restore", "poll", "notify", "default")

#: Celery task name -> queue (before the settings' prefix)
TASK_QUEUES = {
    "backup.run": "pack",
    # the restore hosts: a restore's start proves their identity before any retrieval
    "backup.start_restore": "restore",
    "backup.extract": "restore",
    "backup.poll": "poll",
    "backup.notify": "notify",
}

#: seconds; see workers/app.py for why it barely matters here
VISIBILITY_TIMEOUT = 3600

Dispatch = Callable[[str, str], None]
"""Hands a follow-up task (name, job id) to whoever runs tasks."""


class Sender(Protocol):
    """What sends a task: a Celery application (``send_task``)."""

    def send_task(self, name: str, args: Any = ..., queue: Any = ..., **kw: Any) -> Any: ...

    def connection_for_write(self) -> Any: ...


def task_queue(task: str, policy: Policy | None = None) -> str:
    """Returns: the queue (before the settings' prefix) a task goes to; a policy with its own
    ``queue`` sends its runs to ``pack-<queue>``, consumed only by the hosts that can read
    its sources."""
    if task == "backup.run" and policy is not None and policy.queue:
        return f"pack-{policy.queue}"
    return TASK_QUEUES[task]


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
    return hide_password(url)


def broker_config(settings: Settings) -> dict[str, Any]:
    """Returns: the Celery settings every process that talks to the broker shares, sender
    or worker: JSON only, the transport's options, connections retried, the queues' routes.
    The worker's own settings (prefetch, acknowledgement, logging) are in workers/app.py."""
    url = broker_url(settings)
    # (the SQLAlchemy transport hands its options to create_engine, which takes no such key)
    transport: dict[str, Any] = (
        {} if url.startswith("sqla+") else {"visibility_timeout": VISIBILITY_TIMEOUT}
    )
    return {
        "broker_url": url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "event_serializer": "json",
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "task_default_queue": queue_name(settings, "default"),
        "task_routes": {
            name: {"queue": queue_name(settings, q)} for name, q in TASK_QUEUES.items()
        },
        "enable_utc": True,
        "timezone": "UTC",
    }


def client_app(settings: Settings) -> Celery:
    """Returns: a Celery application that only sends, for a process that runs no worker (a
    ``backup run`` or ``restore`` that queues)."""
    from celery import Celery  # the broker's client: only commands that queue pay for it

    config = broker_config(settings)
    app = Celery("backup", broker=config["broker_url"])
    app.conf.update(config)
    return app


class Dispatcher:
    """Sends tasks through a broker and records each send on its job.

    Args:
        settings: the queue prefix.
        store: where sends are recorded.
        sender: the Celery application (a worker's own, or :func:`client_app`).
        policies: the current policies by name, to route a run to its policy's queue.
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        sender: Sender,
        policies: Callable[[], Mapping[str, Policy]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sender = sender
        self.policies = policies

    def queue(self, task: str, job_id: str, policy: Policy | None = None) -> str:
        """Returns: the broker's name of the queue a task of this job goes to."""
        if policy is None and task == "backup.run" and self.policies is not None and job_id:
            try:
                policy = self.policies().get(self.store.get(job_id).policy or "")
            except Exception:  # an unreadable policy file: its default queue, as before
                policy = None
        return queue_name(self.settings, task_queue(task, policy))

    def send(self, task: str, job_id: str, *, policy: Policy | None = None) -> None:
        """Hand a task to the broker and record when (a poll carries no job)."""
        self.sender.send_task(task, args=[job_id], queue=self.queue(task, job_id, policy))
        if job_id:
            self.store.mark_sent([job_id])

    __call__ = send  # a Dispatcher is a Dispatch

    def waiting(self, queue: str) -> int | None:
        """Returns: messages waiting in a queue (its broker name), or None when the broker
        cannot tell."""
        try:
            with self.sender.connection_for_write() as conn:
                ch: Any = conn.default_channel
                return int(ch.queue_declare(queue=queue, passive=True).message_count)
        except Exception as e:
            if "NOT_FOUND" in str(e) or "no queue" in str(e).lower():
                return 0
            log.debug("cannot read length of queue %s: %s", queue, e)
            return None

    def poll(self) -> None:
        """Ask a worker to check the pending retrievals."""
        self.send("backup.poll", "")

    def try_send(self, job: Job, task: str, *, policy: Policy | None = None) -> str | None:
        """Hand a recorded job to the broker, for a command that cannot wait on it.

        Returns:
            None once the broker has it; why not when the broker does not answer (the job
            stays as recorded: the scheduler's sweep sends jobs that were never sent).

        Raises:
            Error: the broker URL is one no transport takes (the job is failed: no later
                send would work either).
        """
        from kombu.exceptions import OperationalError

        url = redact(broker_url(self.settings))
        try:
            self.sender.send_task(task, args=[job.id], queue=self.queue(task, job.id, policy))
        except (OperationalError, OSError) as e:  # after kombu's own retries
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"the broker {url} does not answer ({why})"
        except Exception as e:
            why = f"cannot send to the broker {url}: {type(e).__name__}: {e}"
            self.store.cas(job.id, [job.state], "failed", error=why)
            raise Error(why) from None
        self.store.mark_sent([job.id])
        return None
