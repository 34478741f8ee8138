"""Restore requests, until their objects are ready: the start (prove the identity, ask the
targets for every object), and the poll that watches cold storage.

Invariants:

- A retrieval takes hours and is paid for: what would fail the restore when the data arrives
  (an identity that is not a recipient, a bucket destination that overlaps its source) is
  found before anything is requested.
- A request moves on to extraction (``retrieving`` -> ``ready``, a compare-and-set) once,
  when every one of its objects is ready.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import datetime, timedelta

from ..bucket_restore import check_bucket_destination
from ..coldplan import next_check as coldplan_next_check
from ..coldplan import read_restore_events, refs_ready
from ..crypto.age import NoIdentityMatch, prove_identity
from ..errors import IdentityError
from ..inventory.models import Archive, RetrievalJob
from ..restore import identities_from, read_manifest
from ..targets import Readiness, RetrievalStatus, open_target
from .context import JobContext, error_message, now
from .notifying import notify_after
from .states import JobState, RestoreParams

__all__ = ["next_check", "poll", "ready_if_all", "start_restore"]

log = logging.getLogger("backup.runner")


def start_restore(ctx: JobContext, job_id: str) -> str:
    """Ask the targets for every object a restore request needs (requested ->
    retrieving), and pass it on to extraction when all are ready at once.

    Returns:
        The job's state afterwards.
    """
    store = ctx.store
    job = store.get(job_id)
    if not store.cas(job.id, [JobState.REQUESTED], JobState.RETRIEVING, worker=ctx.worker):
        return store.get(job.id).state
    params = RestoreParams.from_json(job.params)
    try:
        chain = ctx.inventory.chain(params.archive_id)
        # a retrieval takes hours and is paid for: what would fail the restore when the
        # data arrives is found first
        if params.to_bucket:
            check_bucket_destination(
                ctx.policy(job.policy), params.to, in_place=bool(params.in_place)
            )
        _prove_identity(ctx, chain)
        rows: list[RetrievalJob] = []
        t = now()
        for a in chain:
            target = open_target(a.target)
            for ref, size in ((a.location, a.size_stored), (a.manifest_location, 0)):
                st = target.request_retrieval(ref, tier=params.tier)
                rows.append(_retrieval_row(ctx, job.id, a, ref, size, params.tier, st, t))
        store.replace_retrievals(job.id, rows)
    except BaseException as e:
        store.cas(job.id, [JobState.RETRIEVING], JobState.FAILED, error=error_message(e))
        notify_after(ctx, job.id)
        if not isinstance(e, Exception):
            raise
        return JobState.FAILED
    ready_if_all(ctx, job.id)
    return store.get(job.id).state


def _prove_identity(ctx: JobContext, chain: list[Archive]) -> None:
    """Decrypt the manifest of every archive of a restore with the identity the
    extraction will use. Manifests are kept hot, so this costs no retrieval. Where one is
    not (a vault's manifest needs a retrieval job too), the identity is proved on the
    manifest's age header, which the backup recorded in the inventory: the file key is
    unwrapped and authenticates the header, as decrypting the manifest would begin.

    Raises:
        IdentityError: no identity, an unreadable one, or one that is not a recipient.
    """
    path = ctx.settings.identity
    if path is None:
        raise IdentityError(
            f"no identity to decrypt with: BACKUP_IDENTITY is not set where the restore "
            f"runs ({ctx.worker}); nothing was retrieved"
        )
    identities = identities_from(path, ask=False)
    for a in chain:
        target = open_target(a.target)
        try:
            if target.retrieval_status(a.manifest_location).state is Readiness.READY:
                read_manifest(target, a, identities).close()  # decrypts: proves the identity
            elif (header := ctx.inventory.manifest_header(a.id)) is not None:
                prove_identity(header, identities, name=a.id)
            # else: an archive recorded before headers were; its manifest proves it
            # when read, after the retrieval
        except NoIdentityMatch:
            raise IdentityError(
                f"the identity in {path} (on {ctx.worker}) is not a recipient of archive "
                f"{a.id}: it cannot decrypt it; nothing was retrieved"
            ) from None


def _retrieval_row(
    ctx: JobContext,
    job_id: str,
    a: Archive,
    ref: str,
    size: int,
    tier: str | None,
    st: RetrievalStatus,
    t: datetime,
) -> RetrievalJob:
    ready = st.state is Readiness.READY
    return RetrievalJob(
        job_id=job_id,
        archive_id=a.id,
        target=a.target,
        ref=ref,
        remote_job_id=st.job_id,
        tier=tier,
        state="ready" if ready else "pending",
        requested=t,
        next_check=None if ready else next_check(ctx, st.storage_class, tier, t, t),
        storage_class=st.storage_class,
        size=size,
        checks=0,
        expires=st.expires,
        completed=t if ready else None,
    )


def next_check(
    ctx: JobContext, storage_class: str | None, tier: str | None, requested: datetime, t: datetime
) -> datetime:
    """When to ask again about a pending retrieval: by its class and tier (no point asking
    about a Bulk DEEP_ARCHIVE restore every minute for 48 hours), never sooner than
    ``poll_seconds`` and never later than ``poll_max_seconds`` when that is set."""
    floor = timedelta(seconds=ctx.settings.poll_seconds)
    when = t + floor
    if storage_class:
        with suppress(Exception):
            when = coldplan_next_check(
                storage_class, tier or "Standard", requested, t, min_interval=floor
            )
    if ctx.settings.poll_max_seconds is not None:
        when = min(when, t + timedelta(seconds=ctx.settings.poll_max_seconds))
    return when


def ready_if_all(ctx: JobContext, job_id: str) -> bool:
    """Pass a request on to extraction when every one of its retrievals is ready.

    Returns:
        Whether all were ready.
    """
    rows = ctx.store.retrievals(job_id)
    if rows and all(r.state == "ready" for r in rows):
        if ctx.store.cas(job_id, [JobState.RETRIEVING], JobState.READY, sent_at=now()):
            ctx.dispatch("backup.extract", job_id)
        return True
    return False


def poll(ctx: JobContext) -> int:
    """Check every pending retrieval that is due, and pass restore requests whose objects
    are all ready on to extraction.

    Returns:
        How many status requests were sent.
    """
    store = ctx.store
    sent = 0
    t = now()
    waiting_jobs: set[str] = set()
    for r in store.due_retrievals(t) + _announced(ctx, t):
        target = open_target(r.target)
        try:
            st = target.retrieval_status(r.ref)
            sent += 1
            if st.state is Readiness.NOT_REQUESTED:
                # the restored copy expired before it was read (or was never requested)
                st = target.request_retrieval(r.ref, tier=r.tier)
                sent += 1
        except Exception as e:
            log.warning("status of %s in %s failed: %s", r.ref, r.target, e)
            st = RetrievalStatus(Readiness.PENDING)
        if st.state is Readiness.READY:
            store.update_retrieval(
                r.id, checked=True, state="ready", completed=t, next_check=None, expires=st.expires
            )
        else:
            cls = st.storage_class or r.storage_class
            store.update_retrieval(
                r.id, checked=True, next_check=next_check(ctx, cls, r.tier, r.requested, t)
            )
        if r.job_id:
            waiting_jobs.add(r.job_id)
    for job in store.jobs(states=[JobState.RETRIEVING], kind="restore"):
        waiting_jobs.add(job.id)
    for jid in sorted(waiting_jobs):
        ready_if_all(ctx, jid)
    return sent


def _announced(ctx: JobContext, t: datetime) -> list[RetrievalJob]:
    """Pending retrievals that S3 event notifications (``s3:ObjectRestore:Completed`` on
    the SQS queue ``restore_events_queue``) say are done: checked at once rather than
    at their scheduled time."""
    if not ctx.settings.restore_events_queue:
        return []
    try:
        events = read_restore_events(ctx.settings.restore_events_queue)
    except Exception as e:
        log.warning("cannot read restore events: %s", e)
        return []
    if not events:
        return []
    pending = [
        r for r in ctx.store.jobs_pending_retrievals() if r.next_check is None or r.next_check > t
    ]
    ready: dict[str, set[str]] = {}
    for r in pending:
        if r.target not in ready:
            ready[r.target] = refs_ready(open_target(r.target), events)
    return [r for r in pending if r.ref in ready[r.target]]
