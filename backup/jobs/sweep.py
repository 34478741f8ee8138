"""The dead-job sweep: clean up after a running job whose worker died.

Invariants:

- What the dead attempt wrote is removed before the job is handed out again (the archive id
  is recorded on the job before the first byte is written, so the sweep knows what to look
  for); an archive that was already complete is not redone.
- A job a command ran in-process has no queue to go back to: it is failed, not re-queued.
- A run whose outcome is unknown is never reported as a success.
"""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import timedelta

from ..errors import Error
from ..inventory.models import Job
from ..targets import open_target
from .context import JobContext, now
from .notifying import notify_after
from .process import parse_worker
from .states import RESET_TO, BackupOutcome, JobState

__all__ = ["discard_attempt", "settle_dead_runs", "sweep_dead"]


def sweep_dead(ctx: JobContext) -> list[str]:
    """Reset running jobs whose worker stopped beating: remove what the dead attempt
    wrote, then put the job back where it was claimed from and hand it out again.

    Returns:
        The ids of the jobs handed out again.
    """
    store = ctx.store
    again: list[str] = []
    for job, why in store.dead(timedelta(seconds=ctx.settings.stale_after_seconds)):
        who = parse_worker(job.worker)
        # a job a command ran in-process has no queue to go back to: it failed
        if _settle_dead(ctx, job, why, requeue=who is None or who.role != "cli"):
            again.append(job.id)
    store.release_orphan_locks()
    store.stuck_notifications(timedelta(seconds=ctx.settings.stale_after_seconds * 5))
    return again


def settle_dead_runs(ctx: JobContext, policy: str, job_id: str) -> None:
    """Before a run of ``policy`` takes its lock: fail the policy's runs whose process
    died (this run takes their place)."""
    stale_after = timedelta(seconds=ctx.settings.stale_after_seconds)
    for dead, why in ctx.store.dead(stale_after, policy=policy):
        if dead.id != job_id:
            _settle_dead(ctx, dead, why, requeue=False)


def _settle_dead(ctx: JobContext, job: Job, why: str, *, requeue: bool) -> bool:
    """Clean up after a running job whose worker died: remove what its attempt wrote,
    then put the job back where it was claimed from (``requeue``) or fail it, and
    release its lock.

    Returns:
        True when the job was put back and is to be handed out again.
    """
    store = ctx.store
    if job.kind == "backup" and job.archive_id:
        if _finish_if_recorded(ctx, job):
            return False
        discard_attempt(ctx, job.archive_id, f"the process writing it died: {why}")
    if requeue:
        back = RESET_TO[JobState(job.state)]
        if not store.cas(job.id, [job.state], back, worker=None, heartbeat=None, sent_at=None):
            return False
        message = f"job {job.id}: worker {job.worker} stopped beating in {job.state} ({why})"
        message += f"; back to {back}"
    else:
        error = f"interrupted in {job.state}: {why}"
        if not store.cas(job.id, [job.state], JobState.FAILED, error=error):
            return False
        message = f"job {job.id} failed: {error}"
    if job.policy:
        store.unlock_policy(job.policy, job.id)
    ctx.inventory.log(
        "requeued" if requeue else "failed", message, level="warning", policy=job.policy
    )
    if not requeue:
        notify_after(ctx, job.id)
    return requeue


def _finish_if_recorded(ctx: JobContext, job: Job) -> bool:
    """A worker that died after the archive was complete: the archive is not redone.

    The job is done only when the archive was its last step. When a step came after it
    (the restore drill), nobody knows how that step ended, so the job fails saying so:
    a run whose outcome is unknown is never reported as a success.
    """
    try:
        a = ctx.inventory.get(job.archive_id or "")
    except Error:
        return False
    if a.state != "complete":
        return False
    after = _steps_after_archive(ctx, job)
    result = json.dumps({"archive_id": a.id})
    if not after:
        ended = ctx.store.cas(job.id, [job.state], JobState.DONE, result=result)
    else:
        ended = ctx.store.cas(
            job.id,
            [job.state],
            JobState.FAILED,
            result=result,
            error=f"worker {job.worker} stopped beating after archive {a.id} was recorded: "
            f"the outcome of its {after} is unknown",
        )
    if ended:
        if job.policy:
            ctx.store.unlock_policy(job.policy, job.id)
        notify_after(ctx, job.id)
    return True


def _steps_after_archive(ctx: JobContext, job: Job) -> str:
    """Returns: the steps a backup job runs after its archive (``""`` when the archive is
    the last), by the plan the job recorded when it started, else by its policy."""
    actions = BackupOutcome.from_json(job.result).actions
    if actions is None:
        try:
            actions = list(ctx.policies()[job.policy or ""].actions)
        except Exception:
            return "remaining steps"  # the plan cannot be read: the outcome is unknown
    return "restore drill (fork action)" if "fork" in actions else ""


def discard_attempt(
    ctx: JobContext, archive_id: str, why: str = "the worker writing it died"
) -> None:
    """Remove what a dead attempt stored of an archive still ``writing``, and fail its row."""
    try:
        a = ctx.inventory.get(archive_id)
    except Error:
        return
    if a.state != "writing":
        return
    target = open_target(a.target)
    for key in (a.location, a.manifest_location):
        with suppress(Exception):
            target.abandon_partial(key)
        with suppress(Exception):
            target.delete(key)
    ctx.inventory.update_archive(a.id, state="failed", error=why, finished=now())
    # the file index chunks it recorded while its manifest was streamed describe nothing
    with suppress(Exception):
        ctx.inventory.delete_file_records(a.id)
