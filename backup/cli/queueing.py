"""The command line's side of jobs: recording a backup run or a restore request and handing
it to the broker, running one in this process instead, following one until it ends, and
showing a job as ``status``, ``job``, ``run`` and ``restore`` print it.

Invariants: a job is recorded before it is sent, so a broker that does not answer leaves a
recorded job the scheduler's sweep sends later, never a lost one; a retried run is not
recorded twice; a job run here is named for this process (``cli@``), so if the process dies
the job is failed, not handed to a worker.

Nothing here imports a command module or the package's ``__init__``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..progress import Progress
from ..settings import Settings
from .context import Ctx
from .output import iso

if TYPE_CHECKING:
    from ..inventory.models import Job
    from ..jobs import JobStore
    from ..jobs.dispatch import Dispatch
    from ..jobs.runner import Runner

__all__ = [
    "Queued",
    "broker_dispatch",
    "follow",
    "inline_runner",
    "job_json",
    "queue_backup",
    "queue_restore",
    "retrieval_progress",
    "retrieval_text",
]


# dispatching --------------------------------------------------------------------------------


def broker_dispatch(settings: Settings, store: JobStore) -> Dispatch:
    """Returns: a Dispatch sending tasks through the configured broker."""
    from ..jobs.dispatch import Dispatcher, client_app

    return Dispatcher(settings, store, client_app(settings))


def inline_dispatch(runner_box: list[Runner]) -> Dispatch:
    """Returns: a Dispatch that carries follow-up tasks out at once, in this process."""

    def dispatch(task: str, job_id: str) -> None:
        runner_box[0].run_task(task, job_id)

    return dispatch


def inline_runner(obj: Ctx) -> Runner:
    """Returns: a Runner that carries jobs out in this process."""
    from ..jobs import process_name
    from ..jobs.runner import Runner

    box: list[Runner] = []
    # "cli@": if this process dies, the job is failed, not handed to a worker later
    runner = Runner(obj.inventory, obj.settings, inline_dispatch(box), process_name("cli"))
    box.append(runner)
    return runner


def _send(obj: Ctx, store: JobStore, job: Job, task: str, policy: Any = None) -> str | None:
    """Hand a recorded job to the broker.

    Returns:
        None once the broker has it; why not when the broker does not answer (the job stays
        as recorded: the scheduler's sweep sends jobs that were never sent).

    Raises:
        Error: the broker URL is one no transport takes (the job is failed: no later send
            would work either).
    """
    from ..jobs.dispatch import Dispatcher, client_app

    return Dispatcher(obj.settings, store, client_app(obj.settings)).try_send(
        job, task, policy=policy
    )


def queue_restore(
    obj: Ctx, params: dict[str, Any], policy: str, notify: tuple[str, ...]
) -> tuple[Job, str | None]:
    """Record a restore request and hand it to the workers.

    Returns:
        The request, and why the broker did not take it (None once it has): the request
        stays recorded and the scheduler's sweep sends it when the broker answers.
    """
    from ..jobs import JobStore

    store = JobStore(obj.inventory)
    job = store.create("restore", policy=policy, state="requested", params=params, notify=notify)
    assert job is not None
    return job, _send(obj, store, job, "backup.start_restore")


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


def queue_backup(obj: Ctx, policy: str, full: bool) -> Queued:
    """Record a backup run and hand it to the workers (to the policy's own pack queue when
    it names one). A run of the policy already queued with the same options is not recorded
    twice (a retry after the broker did not answer): it is sent now if it never was.

    Returns:
        The run, and whether the broker took it.
    """
    from ..jobs import JobStore
    from ..jobs.states import BackupParams

    store = JobStore(obj.inventory)
    pol = obj.policy(policy)
    waiting = [
        j
        for j in store.jobs(states=["queued"], kind="backup", policy=policy)
        if BackupParams.from_json(j.params).full == full
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


# following and showing a job ----------------------------------------------------------------


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
    from ..jobs import RUNNING, TERMINAL

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
    from ..coldplan import COLD_CLASSES, effective_tier, expected_ready

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
            "earliest": iso(max(w[0] for w in windows)),
            "latest": iso(latest),
            "late": now > latest,
        }
    return {
        "objects": len(rows),
        "ready": sum(r.state == "ready" for r in rows),
        "bytes": sum(r.size for r in rows),
        "bytes_ready": sum(r.size for r in rows if r.state == "ready"),
        "classes": list(groups.values()),
        "expected_ready": expected,
        "next_check": iso(min(checks)) if checks else None,
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


def job_json(j: Job, stale_after: float | None = None) -> dict[str, Any]:
    """A job as ``status``, ``job`` and ``run`` print it; with ``stale_after`` (seconds), a
    running job says whether its process is gone (``process_gone``: why, or null)."""
    from ..jobs import RUNNING, holder_gone
    from ..notify import shown_target

    extra: dict[str, Any] = {}
    if stale_after is not None and j.state in RUNNING:
        extra["process_gone"] = holder_gone(j, timedelta(seconds=stale_after))
    return {
        "id": j.id,
        "kind": j.kind,
        "policy": j.policy,
        "state": j.state,
        "origin": j.origin,
        "scheduled_for": iso(j.scheduled_for),
        "created": iso(j.created),
        "started": iso(j.started),
        "finished": iso(j.finished),
        "heartbeat": iso(j.heartbeat),
        "worker": j.worker,
        "attempts": j.attempts,
        "archive_id": j.archive_id,
        "bytes_done": j.bytes_done,
        "bytes_total": j.bytes_total,
        "params": json.loads(j.params or "{}"),
        "notify": [shown_target(u) for u in json.loads(j.notify or "[]")],
        "notify_state": j.notify_state,
        "result": json.loads(j.result or "{}"),
        "error": j.error,
        "sent_at": iso(j.sent_at),
        **extra,
    }
