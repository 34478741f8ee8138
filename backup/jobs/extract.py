"""Extraction: a restore request whose objects are ready (ready -> extracting -> done), into
a directory or into a bucket.

Invariants:

- A restored copy may expire between the poll that saw it ready and the extraction: each is
  asked about again first, and the request goes back to ``retrieving`` if one expired.
- The job ends ``done`` with its result, or ``failed`` with one message; then it notifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ..bucket_restore import restore_to_bucket
from ..inventory.models import Job
from ..progress import Progress
from ..restore import identities_from, restore
from ..targets import Readiness, open_target
from .context import JobCancelled, JobContext, JobProgress, error_message, now
from .notifying import notify_after
from .retrieval import next_check
from .states import JobState, RestoreOutcome, RestoreParams

__all__ = ["extract"]


def extract(ctx: JobContext, job_id: str, progress: Progress | None = None) -> str:
    """Restore a request whose objects are ready (ready -> extracting -> done).

    Returns:
        The job's state afterwards.
    """
    store = ctx.store
    job = store.get(job_id)
    if not store.claim(job.id, JobState.READY, JobState.EXTRACTING, ctx.worker):
        return store.get(job.id).state
    params = RestoreParams.from_json(job.params)
    # a restored copy may have expired since the poll saw it ready: ask again
    expired = []
    for r in store.retrievals(job.id):
        with suppress(Exception):
            if open_target(r.target).retrieval_status(r.ref).state is not Readiness.READY:
                expired.append(r)
    if expired:
        for r in expired:
            st = open_target(r.target).request_retrieval(r.ref, tier=r.tier)
            t = now()
            cls = st.storage_class or r.storage_class
            store.update_retrieval(
                r.id, state="pending", requested=t, next_check=next_check(ctx, cls, r.tier, t, t)
            )
        store.cas(job.id, [JobState.EXTRACTING], JobState.RETRIEVING)
        return JobState.RETRIEVING
    jp = JobProgress(progress)
    if params.to_bucket:
        return _extract_to_bucket(ctx, job, params, jp)

    def work() -> tuple[RestoreOutcome, int]:
        with ctx.heartbeat(job.id, jp):
            res = restore(
                job.policy or "",
                ctx.inventory,
                Path(params.to),
                identities_from(ctx.settings.identity, ask=False),
                archive_id=params.archive_id,
                include=params.include,
                force=bool(params.force),
                allow_external_symlinks=bool(params.allow_external_symlinks),
                progress=jp,
            )
        result = RestoreOutcome(
            archive_id=params.archive_id,
            archives=res.archives,
            files=res.files,
            bytes=res.bytes,
            seconds=round(res.seconds, 3),
            destination=str(res.destination),
        )
        return result, res.bytes

    return _settle(ctx, job.id, work)


def _extract_to_bucket(ctx: JobContext, job: Job, params: RestoreParams, jp: JobProgress) -> str:
    """Restore a bucket source's archived state into a bucket (out of place, or in place
    with new versions and delete markers only)."""

    def work() -> tuple[RestoreOutcome, int]:
        policy = ctx.policy(job.policy)
        t0 = time.monotonic()
        with ctx.heartbeat(job.id, jp):
            res = restore_to_bucket(
                policy,
                ctx.inventory,
                params.to,
                identities_from(ctx.settings.identity, ask=False),
                archive_id=params.archive_id,
                include=params.include,
                in_place=bool(params.in_place),
                progress=jp,
            )
        result = RestoreOutcome(
            archive_id=params.archive_id,
            archives=res.archives,
            files=res.uploaded,
            unchanged=res.unchanged,
            deleted=res.deleted,
            bytes=res.bytes,
            seconds=round(time.monotonic() - t0, 3),
            destination=res.destination,
        )
        return result, res.bytes

    return _settle(ctx, job.id, work)


def _settle(ctx: JobContext, job_id: str, work: Callable[[], tuple[RestoreOutcome, int]]) -> str:
    """Run an extracting job's work: ``done`` with its result, or ``failed`` with one
    message; then notify.

    Returns:
        The job's state afterwards.
    """
    store = ctx.store
    try:
        result, nbytes = work()
        store.cas(
            job_id, [JobState.EXTRACTING], JobState.DONE, result=result.to_json(), bytes_done=nbytes
        )
    except JobCancelled:
        return store.get(job_id).state
    except BaseException as e:
        store.cas(job_id, [JobState.EXTRACTING], JobState.FAILED, error=error_message(e))
        if not isinstance(e, Exception):
            raise
    notify_after(ctx, job_id)
    return store.get(job_id).state
