"""Telling how a job ended: once, after its final state is recorded.

Invariants:

- A notification never fails a job: it is requested only once the job is ``done`` or
  ``failed`` (``none`` -> ``pending``, a compare-and-set), and sent by its own task.
- A notify task delivered twice sends once (``pending`` -> ``sending``).
- A URL that took the message is recorded at once (``notify_deliveries``, a digest, never
  the URL), and no later send of that job tells it again: not a Celery retry, not a fresh
  send after the sweep took back a send whose worker died.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import suppress

from ..inventory.models import Job
from ..notify import (
    RetryLater,
    format_backup_message,
    format_restore_message,
    resolve_targets,
    send,
)
from .context import JobContext
from .process import parse_worker
from .states import BackupOutcome, JobState, RestoreOutcome, RestoreParams

__all__ = ["message_for", "notify", "notify_after", "url_digest"]


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


def notify(
    ctx: JobContext,
    job_id: str,
    *,
    attempts: int = 3,
    again: Sequence[int] | None = None,
    final: bool = True,
) -> bool:
    """Send a finished job's notification once (``pending`` -> ``sending`` -> ``sent`` or
    ``failed``). A failure is logged and never raised.

    Args:
        attempts: tries per URL here, with backoff between them (a worker gives 1).
        again: a retry of a send already claimed: the positions of the URLs still to send
            (the ones that took the message are not sent twice).
        final: False while the task queue may retry: URLs that failed but may take it
            later raise :class:`~backup.notify.RetryLater` (the job stays ``sending``).

    Returns:
        True when every URL took the message.
    """
    store = ctx.store
    if again is None:
        if not store.claim_notify(job_id):
            return False
    elif store.get(job_id).notify_state != "sending":
        return False  # the sweep gave it back as pending: a fresh send has it
    job = store.get(job_id)
    title, body = message_for(job)
    urls, undefined = resolve_targets(_urls(ctx, job))
    urls = list(dict.fromkeys(urls))
    digests = [url_digest(job.id, u) for u in urls]
    done = store.delivered(job.id)  # a send taken over: who already has it is not told twice
    chosen = [
        i for i in range(len(urls)) if (again is None or i in again) and digests[i] not in done
    ]
    res = send(
        [urls[i] for i in chosen],
        title,
        body,
        attempts=attempts,
        on_sent=lambda k: store.mark_delivered(job.id, digests[chosen[k]]),
    )
    if not final and res.retryable:
        store.update(job.id)  # still sending: the sweep leaves a fresh one alone
        raise RetryLater([chosen[i] for i in res.retryable])
    ok = res.ok and not undefined
    store.update(job.id, notify_state="sent" if ok else "failed")
    missing = f" (targets not defined here: {', '.join(undefined)})" if undefined else ""
    ctx.inventory.log(
        "notify",
        f"notification for job {job.id} {'sent' if ok else 'failed'}{missing}",
        level="info" if ok else "warning",
        policy=job.policy,
    )
    return ok


def url_digest(job_id: str, url: str) -> str:
    """Returns: what the inventory keeps of a URL that took a job's notification (never the
    URL: it holds tokens), keyed by the job so equal URLs of two jobs do not match."""
    return hashlib.sha256(f"{job_id}\0{url}".encode()).hexdigest()


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
