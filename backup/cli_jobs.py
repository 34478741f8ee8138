"""The ``backup`` commands that run and watch workers: ``worker``, ``scheduler``, ``serve``,
``status``, ``schedule``, ``job``; and the queueing halves of ``run`` and ``restore``.

Celery is imported only by the commands that need a broker, so the everyday commands stay
quick to start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from .errors import Error, OptionError
from .progress import Progress
from .settings import Settings

if TYPE_CHECKING:
    # the job store and the runner (SQLAlchemy) are imported by the functions that use them:
    # this module is loaded with every `backup` command, and `backup run` starts its walk
    # before paying for those imports (backup/archive/scan.py, prefetch)
    from .inventory.models import Job
    from .jobs import JobStore
    from .jobs.dispatch import Dispatch
    from .jobs.runner import Runner

__all__ = ["register"]


def _cli() -> Any:
    from . import cli

    return cli


def _export_settings(settings: Settings) -> None:
    """Worker processes read settings from the environment: pass on a ``--config``."""
    os.environ["BACKUP_CONFIG"] = str(settings.config)
    from .settings import get_settings

    get_settings.cache_clear()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# dispatching --------------------------------------------------------------------------------


def broker_dispatch(settings: Settings, store: JobStore) -> Dispatch:
    """Returns: a Dispatch sending tasks through the configured broker."""
    from .jobs.dispatch import Dispatcher, client_app

    return Dispatcher(settings, store, client_app(settings))


def inline_dispatch(runner_box: list[Runner]) -> Dispatch:
    """Returns: a Dispatch that carries follow-up tasks out at once, in this process."""

    def dispatch(task: str, job_id: str) -> None:
        runner_box[0].run_task(task, job_id)

    return dispatch


def inline_runner(obj: Any) -> Runner:
    from .jobs import process_name
    from .jobs.runner import Runner

    box: list[Runner] = []
    # "cli@": if this process dies, the job is failed, not handed to a worker later
    runner = Runner(obj.inventory, obj.settings, inline_dispatch(box), process_name("cli"))
    box.append(runner)
    return runner


# following a job ----------------------------------------------------------------------------


def follow(
    store: JobStore,
    job_id: str,
    progress: Progress,
    interval: float = 0.5,
    report: Callable[[str], None] | None = None,
) -> Job:
    """Show a queued job's progress until it ends.

    Args:
        store: the job store.
        job_id: the job.
        progress: the progress bar of the phases that move bytes.
        interval: seconds between looks at the job.
        report: told a line when the job changes phase, and, while a restore waits on cold
            storage, whenever its retrievals move (one ready, or checked again): a wait of
            hours shows it is alive.

    Returns:
        The job in its final state.
    """
    from .jobs import RUNNING, TERMINAL

    state = None
    started = False
    said = ""
    while True:
        job = store.get(job_id)
        if report is not None and job.kind == "restore" and job.state not in TERMINAL:
            rp = retrieval_progress(store, job)
            line = f"{job.id} {job.state}" + (f": {retrieval_text(rp)}" if rp else "")
            if line != said:
                report(line)
                said = line
        if job.state != state:
            state = job.state
            if started:
                progress.finish()
                started = False
            if job.state in RUNNING:
                progress.start(f"{job.policy}: {job.state}", job.bytes_total)
                started = True
                seen = 0
        if started:
            progress.advance(max(0, job.bytes_done - seen))
            seen = job.bytes_done
        if job.state in TERMINAL:
            if started:
                progress.finish()
            return job
        time.sleep(interval)


def retrieval_progress(
    store: JobStore, job: Job, now: datetime | None = None
) -> dict[str, Any] | None:
    """Where a restore request's retrievals stand, from its RetrievalJob rows.

    Returns:
        Objects ready of total (and bytes), the same by storage class and tier, when every
        object still pending is expected to be ready (the window of its class and tier from
        its request; ``late`` once that has passed), and the earliest next status check.
        None for a job that has requested no retrieval.
    """
    from .cli import _iso
    from .coldplan import COLD_CLASSES, effective_tier, expected_ready

    rows = store.retrievals(job.id)
    if not rows:
        return None
    now = now or datetime.now(UTC)
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for r in rows:
        cls = r.storage_class or "unknown"
        # a tier means something for a thaw only (a hot object is read as it is), and the
        # one shown is the one used (DEEP_ARCHIVE has no Expedited: Standard is used)
        tier = effective_tier(cls, r.tier or "Standard") if cls in COLD_CLASSES else None
        g = groups.setdefault(
            (cls, tier),
            {"storage_class": cls, "tier": tier, "objects": 0, "ready": 0, "bytes": 0},
        )
        g["objects"] += 1
        g["ready"] += r.state == "ready"
        g["bytes"] += r.size
    pending = [r for r in rows if r.state != "ready"]
    windows = []
    for r in pending:
        if r.storage_class in COLD_CLASSES:
            first, last = expected_ready(r.storage_class, r.tier or "Standard")
            windows.append((r.requested + first, r.requested + last))
    checks = [r.next_check for r in pending if r.next_check is not None]
    expected = None
    if windows:
        # the request is ready when its last object is
        latest = max(w[1] for w in windows)
        expected = {
            "earliest": _iso(max(w[0] for w in windows)),
            "latest": _iso(latest),
            "late": now > latest,
        }
    return {
        "objects": len(rows),
        "ready": sum(r.state == "ready" for r in rows),
        "bytes": sum(r.size for r in rows),
        "bytes_ready": sum(r.size for r in rows if r.state == "ready"),
        "classes": list(groups.values()),
        "expected_ready": expected,
        "next_check": _iso(min(checks)) if checks else None,
    }


def retrieval_text(p: dict[str, Any]) -> str:
    """Returns: :func:`retrieval_progress` in one line (times to the second)."""

    def t(iso: str) -> str:
        return re.sub(r"\.\d+Z$", "Z", iso)

    classes = ", ".join(
        f"{g['storage_class']}{' ' + g['tier'] if g['tier'] else ''} {g['ready']} of {g['objects']}"
        for g in p["classes"]
    )
    text = f"{p['ready']} of {p['objects']} objects ready ({classes})"
    exp = p["expected_ready"]
    if exp:
        text += f"; expected ready {t(exp['earliest'])} to {t(exp['latest'])}"
        if exp["late"]:
            text += " (late)"
    if p["next_check"]:
        text += f"; next check {t(p['next_check'])}"
    return text


def _job_json(j: Job, stale_after: float | None = None) -> dict[str, Any]:
    """A job as ``status``, ``job`` and ``run`` print it; with ``stale_after`` (seconds), a
    running job says whether its process is gone (``process_gone``: why, or null)."""
    from .cli import _iso
    from .jobs import RUNNING, holder_gone

    extra: dict[str, Any] = {}
    if stale_after is not None and j.state in RUNNING:
        extra["process_gone"] = holder_gone(j, timedelta(seconds=stale_after))
    return {
        "id": j.id,
        "kind": j.kind,
        "policy": j.policy,
        "state": j.state,
        "origin": j.origin,
        "scheduled_for": _iso(j.scheduled_for),
        "created": _iso(j.created),
        "started": _iso(j.started),
        "finished": _iso(j.finished),
        "heartbeat": _iso(j.heartbeat),
        "worker": j.worker,
        "attempts": j.attempts,
        "archive_id": j.archive_id,
        "bytes_done": j.bytes_done,
        "bytes_total": j.bytes_total,
        "params": json.loads(j.params or "{}"),
        "notify": [_redact(u) for u in json.loads(j.notify or "[]")],
        "notify_state": j.notify_state,
        "result": json.loads(j.result or "{}"),
        "error": j.error,
        "sent_at": _iso(j.sent_at),
        **extra,
    }


def _redact(url: str) -> str:
    try:
        from .notify import shown_target

        return shown_target(url)
    except ImportError:  # pragma: no cover
        return url.split("://", 1)[0] + "://***"


def finish_run(obj: Any, job: Job, as_json: bool) -> None:
    """Print how a backup job ended and exit with the run's code."""
    cli = _cli()
    if job.state != "done":
        if as_json:
            cli._dump(_job_json(job))
        raise Error(f"job {job.id} {job.state}: {job.error}")
    if job.archive_id is None:  # a bucket policy's snapshot or drill only
        result = json.loads(job.result or "{}")
        if as_json:
            cli._dump(dict(result, job=job.id))
        else:
            if "snapshot" in result:
                t = result["snapshot"]["taken"]
                click.echo(
                    f"snapshot {t['version']} ({t['name']}); "
                    f"{len(result['snapshot']['deleted'])} deleted by retention"
                )
            if "drill" in result:
                d = result["drill"]
                click.echo(f"drill in {d['bucket']} at {d['snapshot']}: passed")
        sys.exit(0)
    a = obj.inventory.get(job.archive_id)
    if as_json:
        d = cli._archive_json(a)
        d["job"] = job.id
        d["deleted_paths"] = a.deleted_paths
        d["unreadable"] = json.loads(a.unreadable)
        d["changed_while_reading"] = json.loads(a.changed)
        cli._dump(d)
    else:
        click.echo(
            f"{a.kind} archive {a.id}: {a.entries} entries, {cli._size(a.size_in)} read, "
            f"{cli._size(a.size_stored)} stored, {a.deleted_paths} deleted paths"
        )
        for p in json.loads(a.changed):
            click.echo(f"warning: changed while being read: {p}", err=True)
        for u in json.loads(a.unreadable):
            click.echo(f"warning: could not read {u['path']}: {u['error']}", err=True)
    sys.exit(3 if json.loads(a.unreadable) else 0)


# commands -----------------------------------------------------------------------------------


def _queues(text: str) -> list[str]:
    from .jobs.dispatch import QUEUES

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
    from .jobs.dispatch import queue_name

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


F = TypeVar("F", bound=Callable[..., Any])


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


def register(cli: click.Group) -> None:
    """Add the worker commands to the ``backup`` group."""
    from .cli import _dump, _handled, _iso, _size, _table, err, out

    all_queues = "pack,restore,poll,notify,default"

    @cli.command()
    @click.option("--queues", default=all_queues, show_default=True, help="Queues to consume.")
    @_worker_options
    @click.pass_obj
    @_handled
    def worker(obj: Any, queues: str, concurrency: int, pool: str, loglevel: str) -> None:
        """Run a Celery worker. Restore workers (queue 'restore') need BACKUP_IDENTITY;
        backup workers need only the policies' recipients."""
        names = _queues(queues)
        _export_settings(obj.settings)
        from workers.tasks import app

        from .jobs.dispatch import broker_url, redact

        _logging(loglevel)
        logging.getLogger("backup").info(
            "worker on %s, queues %s", redact(broker_url(obj.settings)), ",".join(names)
        )
        app.worker_main(_worker_argv(obj.settings, names, concurrency, pool, loglevel))

    @cli.command()
    @click.option("--loglevel", default="info", show_default=True)
    @click.pass_obj
    @_handled
    def scheduler(obj: Any, loglevel: str) -> None:
        """Run the scheduler: policies on their schedules, and the sweep that re-queues lost
        and orphaned jobs. Start several for availability: one is active at a time."""
        _export_settings(obj.settings)
        from workers.scheduler import Scheduler
        from workers.tasks import app

        _logging(loglevel)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        Scheduler(obj.settings, app).run(stop)

    @cli.command()
    @_worker_options
    @click.pass_obj
    @_handled
    def serve(obj: Any, concurrency: int, pool: str, loglevel: str) -> None:
        """Worker and scheduler in one process, for a single machine. Without
        BACKUP_BROKER_URL it needs no server: the queue is a SQLite file."""
        _export_settings(obj.settings)
        from workers.scheduler import Scheduler
        from workers.tasks import app

        from .jobs.dispatch import QUEUES, broker_url, redact

        _logging(loglevel)
        logging.getLogger("backup").info("serving on %s", redact(broker_url(obj.settings)))
        stop = threading.Event()
        t = threading.Thread(
            target=Scheduler(obj.settings, app).run, args=(stop,), name="scheduler", daemon=True
        )
        t.start()
        try:
            app.worker_main(_worker_argv(obj.settings, list(QUEUES), concurrency, pool, loglevel))
        finally:
            stop.set()
            t.join(timeout=10)

    @cli.command()
    @click.option("--count", type=click.IntRange(1, 100), default=3, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    @click.pass_obj
    @_handled
    def schedule(obj: Any, count: int, as_json: bool) -> None:
        """List each policy's next run times."""
        from .jobs.schedule import next_runs

        now = datetime.now(UTC)
        rows = []
        for p in obj.policies.values():
            rows.append(
                {
                    "policy": p.name,
                    "schedule": p.schedule,
                    "timezone": p.timezone,
                    "catch_up": p.catch_up,
                    "next_runs": [_iso(t) for t in next_runs(p, now, count)],
                }
            )
        if as_json:
            _dump(rows)
            return
        t = Table(
            "policy", "schedule", "timezone", "catch up", "next runs (local time of the policy)"
        )
        from zoneinfo import ZoneInfo

        for p in obj.policies.values():
            times = next_runs(p, now, count)
            zone = ZoneInfo(p.timezone)
            t.add_row(
                p.name,
                p.schedule or "-",
                p.timezone,
                "yes" if p.catch_up else "no",
                ", ".join(x.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") for x in times) or "-",
            )
        _table(t)

    @cli.command()
    @click.option("--since", default="24h", show_default=True, help="Finished jobs this recent.")
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    @click.pass_obj
    @_handled
    def status(obj: Any, since: str, as_json: bool) -> None:
        """Running, queued, failed and recent jobs, pending restore requests with their phase,
        the active scheduler, and the next scheduled runs."""
        from .jobs import ACTIVE, RUNNING, TERMINAL, JobStore, holder_gone
        from .jobs.schedule import LEASE, next_runs
        from .policy import parse_duration

        try:
            window = parse_duration(since)
        except ValueError as e:
            raise OptionError("--since", str(e)) from None
        store = JobStore(obj.inventory)
        now = datetime.now(UTC)
        stale_after = obj.settings.stale_after_seconds
        active = store.jobs(states=ACTIVE, limit=1000)
        ended = store.jobs(states=TERMINAL, since=now - window, limit=1000)
        holder = store.lease_holder(LEASE)
        try:
            policies = obj.policies
        except Error:
            policies = {}
        upcoming = sorted((t, p.name) for p in policies.values() for t in next_runs(p, now, 1))
        data = {
            "scheduler": {"active": holder[0], "lease_expires": _iso(holder[1])}
            if holder
            else None,
            "running": [_job_json(j, stale_after) for j in active if j.state in RUNNING],
            "queued": [_job_json(j) for j in active if j.kind == "backup" and j.state == "queued"],
            "restores": [
                dict(_job_json(j), retrieval=retrieval_progress(store, j, now))
                for j in active
                if j.kind == "restore" and j.state not in RUNNING
            ],
            "failed": [_job_json(j) for j in ended if j.state == "failed"],
            "recent": [_job_json(j) for j in ended if j.state != "failed"],
            "next_runs": [{"policy": n, "at": _iso(t)} for t, n in upcoming],
        }
        if as_json:
            _dump(data)
            return
        out.print(
            f"scheduler: {holder[0]} (lease until {_iso(holder[1])})"
            if holder
            else "scheduler: none active"
        )

        def table(title: str, jobs: list[Job], extra: str) -> None:
            if not jobs:
                out.print(f"{title}: none")
                return
            t = Table(
                "job",
                "kind",
                "policy",
                "state",
                "created",
                extra,
                title=title,
                title_justify="left",
            )
            for j in jobs:
                state = j.state
                if extra == "progress":
                    ex = _size(j.bytes_done) + (
                        f" / {_size(j.bytes_total)}" if j.bytes_total else ""
                    )
                    ex += f" on {j.worker}"
                    gone = holder_gone(j, timedelta(seconds=stale_after))
                    if gone:
                        state += " (process gone)"
                        ex += f": {gone}; the next run of the policy or the sweep fails it"
                elif extra == "error":
                    ex = j.error or ""
                elif extra == "retrieval":
                    rp = retrieval_progress(store, j, now)
                    ex = retrieval_text(rp) if rp else "-"
                else:
                    r = json.loads(j.result or "{}")
                    ex = r.get("archive_id") or r.get("destination") or (j.error or "")
                    if j.state == "queued" and j.sent_at is None:
                        ex = ex or "not sent to the broker yet"
                t.add_row(j.id, j.kind, j.policy or "-", state, _iso(j.created) or "", ex)
            _table(t)

        table("running", [j for j in active if j.state in RUNNING], "progress")
        table("queued", [j for j in active if j.kind == "backup" and j.state == "queued"], "detail")
        table(
            "restore requests",
            [j for j in active if j.kind == "restore" and j.state not in RUNNING],
            "retrieval",
        )
        table("failed", [j for j in ended if j.state == "failed"], "error")
        table(f"finished in the last {since}", [j for j in ended if j.state != "failed"], "detail")
        if upcoming:
            out.print("next runs: " + ", ".join(f"{n} at {_iso(t)}" for t, n in upcoming))

    @cli.command("job")
    @click.argument("job_id")
    @click.option("--wait", is_flag=True, help="Follow the job until it ends.")
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    @click.pass_obj
    @_handled
    def job_(obj: Any, job_id: str, wait: bool, as_json: bool) -> None:
        """Show one job (a backup run or a restore request)."""
        from .cli import _progress
        from .jobs import JobStore

        store = JobStore(obj.inventory)
        j = store.get(job_id)
        if wait:
            report = (
                None if as_json else (lambda line: err.print(line, soft_wrap=True, markup=False))
            )
            j = follow(store, j.id, _progress(as_json), report=report)
        d = _job_json(j, obj.settings.stale_after_seconds)
        if j.kind == "restore":
            d["retrieval"] = retrieval_progress(store, j)
        if as_json:
            _dump(d)
        else:
            for k, v in d.items():
                if k == "retrieval" and v:
                    v = retrieval_text(v)
                if v not in (None, {}, []):
                    out.print(f"{k:>14}: {v if not isinstance(v, dict | list) else json.dumps(v)}")
        if wait and j.state == "failed":
            sys.exit(1)


def queue_restore(
    obj: Any, params: dict[str, Any], policy: str, notify: tuple[str, ...]
) -> tuple[Job, str | None]:
    """Record a restore request and hand it to the workers.

    Returns:
        The request, and why the broker did not take it (None once it has): the request
        stays recorded and the scheduler's sweep sends it when the broker answers.
    """
    from .jobs import JobStore

    store = JobStore(obj.inventory)
    job = store.create("restore", policy=policy, state="requested", params=params, notify=notify)
    assert job is not None
    return job, _send(obj, store, job, "backup.start_restore")


def _send(obj: Any, store: JobStore, job: Job, task: str, policy: Any = None) -> str | None:
    """Hand a recorded job to the broker.

    Returns:
        None once the broker has it; why not when the broker does not answer (the job stays
        as recorded: the scheduler's sweep sends jobs that were never sent).

    Raises:
        Error: the broker URL is one no transport takes (the job is failed: no later send
            would work either).
    """
    from .jobs.dispatch import Dispatcher, client_app

    return Dispatcher(obj.settings, store, client_app(obj.settings)).try_send(
        job, task, policy=policy
    )


@dataclass(frozen=True, slots=True)
class Queued:
    """A backup run recorded for the workers.

    Attributes:
        job: the job.
        again: a retry found this run already queued instead of recording a second one.
        unsent: why the broker did not take it (it stays queued, and the scheduler's sweep
            sends it when the broker answers); None once the broker has it.
    """

    job: Job
    again: bool = False
    unsent: str | None = None

    def message(self) -> str:
        """Returns: one line telling the user where the run is."""
        j = self.job
        follow = f"follow it: backup job {j.id} --wait"
        if self.unsent:
            head = f"queued job {j.id} ({j.policy})"
            if self.again:
                head = f"job {j.id} of {j.policy} is already queued"
            return (
                f"{head}, not sent yet: {self.unsent}; the scheduler sends it when the broker "
                f"answers; {follow}"
            )
        if self.again:
            return f"job {j.id} of {j.policy} is already queued; {follow}"
        return f"queued job {j.id} ({j.policy}); {follow}"


def queue_backup(obj: Any, policy: str, full: bool) -> Queued:
    """Record a backup run and hand it to the workers (to the policy's own pack queue when
    it names one). A run of the policy already queued with the same options is not recorded
    twice (a retry after the broker did not answer): it is sent now if it never was.

    Returns:
        The run, and whether the broker took it.
    """
    from .jobs import JobStore

    store = JobStore(obj.inventory)
    pol = obj.policy(policy)
    waiting = [
        j
        for j in store.jobs(states=["queued"], kind="backup", policy=policy)
        if bool(json.loads(j.params or "{}").get("full")) == full
    ]
    if waiting:
        job = waiting[-1]  # the oldest
        if job.sent_at is not None:  # its message waits in the broker, or the sweep resends
            return Queued(job, again=True)
    else:
        created = store.create("backup", policy=policy, state="queued", params={"full": full})
        assert created is not None
        job = created
    return Queued(job, again=bool(waiting), unsent=_send(obj, store, job, "backup.run", pol))


def wait_seconds(job: Job) -> float:
    """Returns: how long a finished job took."""
    if job.started and job.finished:
        return (job.finished - job.started).total_seconds()
    return 0.0
