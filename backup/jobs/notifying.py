"""Telling how a job ended: once, after its final state is recorded.

Invariants:

- A notification never fails a job: it is requested only once the job is ``done`` or
  ``failed`` (``none`` -> ``pending``, a compare-and-set), and sent by its own task.
- A notify task delivered twice sends once (``pending`` -> ``sending``).
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

from ..inventory.models import Job
from ..notify import format_backup_message, format_restore_message, resolve_targets, send
from .context import JobContext
from .process import parse_worker
from .states import BackupOutcome, JobState, RestoreOutcome, RestoreParams

__all__ = ["message_for", "notify", "notify_after"]


def _urls(ctx: JobContext, job: Job) -> list[str]:
    """Returns: the job's notification targets, URLs and names (resolved when sent)."""
    urls: list[str] = list(json.loads(job.notify or "[]"))
    if job.kind == "backup" and job.policy:
        with suppress(Exception):
            n = ctx.policies()[job.policy].notify
            urls = (n.on_success if job.state == JobState.DONE else n.on_failure) + urls
    return list(dict.fromkeys(urls))


def notify_after(ctx: JobContext, job_id: str) -> None:
    """Hand a finished job's notification to a notify task, if it has anyone to tell."""
    job = ctx.store.get(job_id)
    if job.state not in (JobState.DONE, JobState.FAILED) or not _urls(ctx, job):
        return
    if ctx.store.request_notify(job.id):
        ctx.dispatch("backup.notify", job.id)


def notify(ctx: JobContext, job_id: str) -> bool:
    """Send a finished job's notification once (``pending`` -> ``sending`` -> ``sent`` or
    ``failed``). A failure is retried inside, logged, and never raised.

    Returns:
        True when every URL took the message.
    """
    store = ctx.store
    if not store.claim_notify(job_id):
        return False
    job = store.get(job_id)
    title, body = message_for(job)
    urls, undefined = resolve_targets(_urls(ctx, job))
    res: Any = send(urls, title, body)
    ok = bool(getattr(res, "ok", res)) and not undefined
    store.update(job.id, notify_state="sent" if ok else "failed")
    missing = f" (targets not defined here: {', '.join(undefined)})" if undefined else ""
    ctx.inventory.log(
        "notify",
        f"notification for job {job.id} {'sent' if ok else 'failed'}{missing}",
        level="info" if ok else "warning",
        policy=job.policy,
    )
    return ok


def message_for(job: Job) -> tuple[str, str]:
    """Returns: the title and body telling how a job ended."""
    ok = job.state == JobState.DONE
    if job.kind == "restore":
        r = RestoreOutcome.from_json(job.result)
        params = RestoreParams.from_json(job.params)
        return format_restore_message(
            ok=ok,
            destination=str(r.destination or params.to or "?"),
            policy=job.policy,
            request_id=job.id,
            archive_id=r.archive_id or params.archive_id or None,
            size_bytes=r.bytes,
            files=r.files,
            started=job.created,
            finished=job.finished,
            error=None if ok else job.error,
        )
    b = BackupOutcome.from_json(job.result)
    return format_backup_message(
        policy=job.policy or "?",
        ok=ok,
        target=b.target,
        archive_id=b.archive_id or job.archive_id,
        kind=b.kind,
        size_bytes=b.bytes_stored,
        source_bytes=b.bytes_in,
        files=b.entries,
        unreadable=int(b.unreadable or 0),
        started=job.started,
        finished=job.finished,
        error=None if ok else job.error,
        host=who.host if (who := parse_worker(job.worker)) else None,
    )
