"""Backup runs: a policy's actions in order (snapshot, archive, fork), around the engine.

The engine is given its source; taking it is here. For a bucket source: take a snapshot
named ``POLICY-archive-YYYYmmddTHHMMSSZ``, list the objects as of it, hand them to the engine
(a full archive, or an incremental of what changed since the parent), then, after the
archive is complete, protect the target with a snapshot (``target_snapshots``) and record the
source's snapshot with the archive.

Invariants:

- The archive id is recorded on the job before the first byte is written, so the sweep knows
  what a dead worker left behind (:mod:`.sweep`).
- Two runs of one policy never overlap: the run holds the policy's lock, after failing the
  policy's runs whose process died.
- A failed target snapshot never fails the archive (it is logged as an error); a notification
  never fails a job (:mod:`.notifying`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..engine import BackupResult, new_archive_id, run_backup
from ..errors import Error
from ..inventory import Inventory
from ..inventory.models import Job
from ..inventory_copy import export_after_run
from ..policy import Policy
from ..progress import Progress
from .context import JobCancelled, JobContext, JobProgress, error_message, now
from .notifying import notify_after
from .pings import Outcome, ping
from .states import BackupOutcome, BackupParams, JobState
from .sweep import settle_dead_runs

__all__ = ["back_up", "run"]

log = logging.getLogger("backup.runner")

_RUNNING = [JobState.PACKING, JobState.UPLOADING, JobState.RECORDED]


def back_up(
    policy: Policy,
    inventory: Inventory,
    *,
    full: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
    archive_id: str | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> BackupResult:
    """The ``archive`` action of a policy: its source (a local tree, or a bucket as of a
    snapshot taken now) through the engine, then what follows a complete archive. The
    snapshot modules (and botocore) are imported only for a policy that uses them: a local
    no-change run is mostly start-up.

    Args:
        policy: what to back up.
        inventory: where the archive (and a bucket's snapshot) is recorded.
        full: start a new chain.
        progress: told of bytes packed.
        now: the run's time (tests).
        archive_id: a pre-assigned archive id (jobs).
        on_phase: told of the run's phases.

    Returns:
        The engine's result.
    """
    snap = None
    if policy.source is None:
        res = run_backup(
            policy, inventory, full=full, progress=progress, now=now,
            archive_id=archive_id, on_phase=on_phase,
        )  # fmt: skip
    else:
        from ..snapshot_actions import record_snapshot
        from ..snapshots import open_provider
        from ..snapshots.source import bucket_scan

        now = now or datetime.now(UTC)
        p = open_provider(policy.source)
        snap = p.take(f"{policy.name}-archive-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}")
        res = run_backup(
            policy,
            inventory,
            full=full,
            progress=progress,
            now=now,
            archive_id=archive_id,
            on_phase=on_phase,
            scanned=bucket_scan(p, snap, policy.exclude),
            source_info={
                "bucket": policy.source,
                "kind": p.kind,
                "snapshot": snap.version,
                "snapshot_name": snap.name,
            },
        )
    if policy.target_snapshots:
        _protect(policy, res.archive.id, inventory)
    if snap is not None:
        assert policy.source is not None
        record_snapshot(  # imported above, with the bucket source
            policy.source, snap, policy=policy.name, archive_id=res.archive.id, inventory=inventory
        )
    return res


def _protect(policy: Policy, archive_id: str, inventory: Inventory) -> None:
    """Snapshot the target bucket now that the archive landed (docs/snapshots.md). The
    archive is complete either way; a failed snapshot is logged as an error."""
    from ..snapshot_actions import protect_archive

    try:
        protect_archive(policy.target, policy.name, archive_id, inventory)
    except Error as e:
        inventory.log(
            "snapshot",
            f"archive {archive_id} landed but the target snapshot failed: {e.get_message()}",
            level="error",
            policy=policy.name,
            archive_id=archive_id,
        )


def run(ctx: JobContext, job_id: str, progress: Progress | None = None) -> str:
    """Carry out a queued backup job.

    Args:
        ctx: the runner.
        job_id: the job.
        progress: told of bytes packed (the in-process CLI shows it).

    Returns:
        The job's state afterwards.
    """
    store = ctx.store
    job = store.get(job_id)
    if not store.claim(job.id, JobState.QUEUED, JobState.PACKING, ctx.worker):
        log.info("job %s is %s, not queued: nothing to do", job.id, store.get(job.id).state)
        return store.get(job.id).state
    assert job.policy is not None
    try:
        policy = ctx.policy(job.policy)
    except Exception as e:
        msg = e.get_message() if isinstance(e, Error) else f"no policy {job.policy!r}: {e}"
        store.cas(job.id, [JobState.PACKING], JobState.FAILED, error=msg)
        notify_after(ctx, job.id)
        return JobState.FAILED
    # a run killed without a word (SIGKILL, the OOM killer) must not lock its policy out
    settle_dead_runs(ctx, policy.name, job.id)
    holder = store.lock_policy(policy.name, job.id)
    if holder is not None and store.release_orphan_locks():
        holder = store.lock_policy(policy.name, job.id)
    if holder is not None:
        store.cas(
            job.id,
            [JobState.PACKING],
            JobState.SKIPPED,
            error=f"job {holder} of policy {policy.name!r} was still running",
        )
        ctx.inventory.log(
            "skipped",
            f"run of {policy.name} skipped: job {holder} was still running",
            level="warning",
            policy=policy.name,
        )
        return JobState.SKIPPED
    monitor = policy.monitor.ping_url if policy.monitor else None
    _ping(ctx, policy.name, monitor, Outcome.START)
    try:
        params = BackupParams.from_json(job.params)
        jp = JobProgress(progress)
        t0 = time.monotonic()
        result = BackupOutcome(actions=list(policy.actions))
        store.update(job.id, result=result.to_json())  # the sweep reads the plan
        warning: str | None = None
        if "snapshot" in policy.actions:
            result.snapshot = _snapshot_action(ctx, policy, job.id, jp)
        if "archive" in policy.actions:
            archive_id = new_archive_id(now())
            store.update(job.id, archive_id=archive_id)
            with ctx.heartbeat(job.id, jp):
                res = back_up(
                    policy,
                    ctx.inventory,
                    full=bool(params.full),
                    progress=jp,
                    archive_id=archive_id,
                    on_phase=lambda phase: _phase(ctx, job.id, phase),
                )
            a = res.archive
            result.archive_id = a.id
            result.kind = a.kind
            result.entries = a.entries
            result.bytes_in = a.size_in
            result.bytes_stored = a.size_stored
            result.target = a.target
            result.unreadable = len(res.unreadable)
            if res.unreadable:
                warning = f"{len(res.unreadable)} files could not be read"
        if "fork" in policy.actions:
            result.drill = _fork_action(ctx, policy, job.id, jp)
        result.seconds = round(time.monotonic() - t0, 3)
        store.cas(
            job.id,
            _RUNNING,
            JobState.DONE,
            result=result.to_json(),
            bytes_done=int(result.bytes_in or 0),
            error=warning,
        )
    except JobCancelled:
        log.warning("job %s was taken over by another worker; this attempt stopped", job.id)
        return store.get(job.id).state
    except BaseException as e:
        store.cas(job.id, _RUNNING, JobState.FAILED, error=error_message(e))
        if not isinstance(e, Exception):
            raise
    finally:
        store.unlock_policy(policy.name, job.id)
        _ping_outcome(ctx, policy.name, monitor, store.get(job.id))
    if "archive" in policy.actions and store.get(job.id).state == JobState.DONE:
        _export_inventory(ctx, policy)
    notify_after(ctx, job.id)
    return store.get(job.id).state


def _ping(ctx: JobContext, policy: str, url: str | None, outcome: Outcome, msg: str = "") -> None:
    """A dead-man ping that never fails the run; a ping that fails for good is logged."""
    if url:
        ping(
            url,
            outcome,
            msg,
            log_event=lambda level, text: ctx.inventory.log(
                "monitor", text, level=level, policy=policy
            ),
        )


def _ping_outcome(ctx: JobContext, policy: str, url: str | None, job: Job) -> None:
    """How the run ended, as its monitor hears it: success, partial (exit 3: files that
    could not be read) or failure. A run another worker took over says nothing here."""
    if not url or job.state not in (JobState.DONE, JobState.FAILED):
        return
    if job.state == JobState.FAILED:
        _ping(ctx, policy, url, Outcome.FAILURE, (job.error or "failed")[:200])
    elif BackupOutcome.from_json(job.result).unreadable:
        _ping(ctx, policy, url, Outcome.PARTIAL, (job.error or "partial")[:200])
    else:
        _ping(ctx, policy, url, Outcome.SUCCESS)


def _export_inventory(ctx: JobContext, policy: Policy) -> None:
    """Copy the inventory, this job's record included, into the policy's target: what
    brings the job history back on a bare machine. Never fails the backup."""
    if not ctx.settings.inventory_export_after_run:
        return
    export_after_run(
        ctx.inventory,
        policy.target,
        policy.recipients,
        keep=ctx.settings.inventory_export_keep,
        min_interval=ctx.settings.inventory_export_interval,
        policy=policy.name,
    )


def _snapshot_action(
    ctx: JobContext, policy: Policy, job_id: str, jp: JobProgress
) -> dict[str, Any]:
    """Snapshot a bucket source and prune the policy's snapshots by its retention
    (beating the job's heartbeat: a portable snapshot lists every key)."""
    from ..snapshot_actions import snapshot_source

    assert policy.source is not None
    with ctx.heartbeat(job_id, jp):
        r = snapshot_source(policy.source, policy.name, policy.retention, ctx.inventory)
    return {
        "taken": {"version": r.taken.version, "name": r.taken.name},
        "deleted": [s.version for s in r.deleted],
    }


def _fork_action(ctx: JobContext, policy: Policy, job_id: str, jp: JobProgress) -> dict[str, Any]:
    """A restore drill: fork the latest snapshot, run the check, then remove drill forks
    older than ``keep_for``, beating the job's heartbeat throughout (the check may run
    for as long as ``drill.timeout``).

    Raises:
        DrillFailed: the check failed (after old forks were removed all the same).
    """
    from ..snapshot_actions import DrillFailed, expire_drills, fork_drill

    assert policy.source is not None and policy.drill is not None
    with ctx.heartbeat(job_id, jp):
        res = fork_drill(
            policy.source,
            policy.name,
            ctx.inventory,
            bucket_pattern=policy.drill.bucket,
            check_command=policy.drill.check,
            timeout=policy.drill.timeout.total_seconds(),
        )
        removed = expire_drills(ctx.inventory, policy.drill.keep_for)
    if not res.ok:
        raise DrillFailed(policy.source, res.bucket, res.verdict)
    return {
        "bucket": res.bucket,
        "snapshot": res.snapshot.version,
        "ok": res.ok,
        "returncode": res.returncode,
        "seconds": round(res.seconds, 3),
        "removed": removed,
    }


def _phase(ctx: JobContext, job_id: str, phase: str) -> None:
    ctx.store.cas(job_id, [JobState.PACKING, JobState.UPLOADING], phase)
