"""``backup worker``, ``backup scheduler`` and ``backup serve``: the long-running processes
that carry jobs out (Celery workers) and start them (the scheduler).

Invariants: a ``--config`` given on the command line reaches the worker processes (they
read settings from the environment); the queue names given are checked before Celery
starts; the scheduler stops cleanly on SIGTERM and SIGINT.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..settings import Settings
from ..threads import start_thread
from .context import Ctx
from .output import handled

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])

ALL_QUEUES = "pack,restore,poll,notify,default"


def _export_settings(settings: Settings) -> None:
    """Worker processes read settings from the environment: pass on a ``--config``."""
    os.environ["BACKUP_CONFIG"] = str(settings.config)
    from ..settings import get_settings

    get_settings.cache_clear()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _queues(text: str) -> list[str]:
    from ..jobs.dispatch import QUEUES

    names = [q.strip() for q in text.split(",") if q.strip()]
    bad = [q for q in names if q not in QUEUES and not re.fullmatch(r"pack-[\w.-]+", q)]
    if bad or not names:
        raise click.BadParameter(
            f"unknown queue(s) {', '.join(bad) or '(none)'}; queues are {', '.join(QUEUES)}, "
            "and pack-NAME for policies with queue = NAME",
            param_hint="--queues",
        )
    return names


def _worker_argv(
    settings: Settings, queues: list[str], concurrency: int, pool: str, level: str
) -> list[str]:
    from ..jobs.dispatch import queue_name

    return [
        "worker",
        "-Q",
        ",".join(queue_name(settings, q) for q in queues),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-l",
        level,
        "-n",
        f"backup-{os.getpid()}@%h",
        "-O",
        "fair",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def _worker_options(f: F) -> F:
    """The options of the commands that run a Celery worker (worker, serve)."""
    f = click.option("--loglevel", default="info", show_default=True)(f)
    f = click.option(
        "--pool",
        type=click.Choice(["prefork", "threads", "solo"]),
        default="prefork",
        show_default=True,
    )(f)
    return click.option(
        "--concurrency",
        type=click.IntRange(1),
        default=os.cpu_count() or 1,
        show_default="CPU count",
    )(f)


def _metrics_option(f: Any) -> Any:
    return click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        default=None,
        help="Serve Prometheus metrics at /metrics on this port (BACKUP_METRICS_PORT).",
    )(f)


def _serve_metrics(obj: Ctx, port: int | None, scheduler_name: str | None) -> None:
    """Serve /metrics when a port is given: the inventory-wide series only while
    ``scheduler_name`` is the active scheduler (so a cluster counts nothing twice), this
    process's own series always."""
    port = port or obj.settings.metrics_port
    if not port:
        return
    from ..jobs.metrics import holds_lease, policies_of, registry_for, serve

    if scheduler_name is None:
        active = lambda: False  # noqa: E731 - a worker reports its process only
    else:
        active = holds_lease(obj.inventory, scheduler_name)
    serve(port, registry_for(obj.inventory, policies_of(obj.settings), active=active))
    logging.getLogger("backup").info("metrics on :%d/metrics", port)


@click.command()
@click.option("--queues", default=ALL_QUEUES, show_default=True, help="Queues to consume.")
@_worker_options
@_metrics_option
@click.pass_obj
@handled
def worker(
    obj: Ctx, queues: str, concurrency: int, pool: str, loglevel: str, metrics_port: int | None
) -> None:
    """Run a Celery worker. Restore workers (queue 'restore') need BACKUP_IDENTITY;
    backup workers need only the policies' recipients."""
    names = _queues(queues)
    _export_settings(obj.settings)
    from workers.tasks import app

    from ..jobs.dispatch import broker_url, redact

    _logging(loglevel)
    _serve_metrics(obj, metrics_port, None)
    logging.getLogger("backup").info(
        "worker on %s, queues %s", redact(broker_url(obj.settings)), ",".join(names)
    )
    app.worker_main(_worker_argv(obj.settings, names, concurrency, pool, loglevel))


@click.command()
@click.option("--loglevel", default="info", show_default=True)
@_metrics_option
@click.pass_obj
@handled
def scheduler(obj: Ctx, loglevel: str, metrics_port: int | None) -> None:
    """Run the scheduler: policies on their schedules, and the sweep that re-queues lost
    and orphaned jobs. Start several for availability: one is active at a time."""
    _export_settings(obj.settings)
    from workers.scheduler import Scheduler
    from workers.tasks import app

    _logging(loglevel)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sched = Scheduler(obj.settings, app)
    _serve_metrics(obj, metrics_port, sched.name)
    sched.run(stop)


@click.command()
@_worker_options
@_metrics_option
@click.pass_obj
@handled
def serve(obj: Ctx, concurrency: int, pool: str, loglevel: str, metrics_port: int | None) -> None:
    """Worker and scheduler in one process, for a single machine. Without
    BACKUP_BROKER_URL it needs no server: the queue is a SQLite file."""
    _export_settings(obj.settings)
    from workers.scheduler import Scheduler
    from workers.tasks import app

    from ..jobs.dispatch import QUEUES, broker_url, redact

    _logging(loglevel)
    logging.getLogger("backup").info("serving on %s", redact(broker_url(obj.settings)))
    stop = threading.Event()
    sched = Scheduler(obj.settings, app)
    _serve_metrics(obj, metrics_port, sched.name)
    t = start_thread(sched.run, "scheduler", stop)
    try:
        app.worker_main(_worker_argv(obj.settings, list(QUEUES), concurrency, pool, loglevel))
    finally:
        stop.set()
        t.join(timeout=10)


def register(cli: click.Group) -> None:
    """Add ``worker``, ``scheduler`` and ``serve`` to the ``backup`` group."""
    cli.add_command(worker)
    cli.add_command(scheduler)
    cli.add_command(serve)
