"""Carrying out jobs: the library side of every worker task, also used in-process.

A task is a job id; the runner re-reads the job and the policy file, claims the job with a
compare-and-set, and calls the library (``engine``, ``restore``). What comes next (extract a
restore whose objects are ready, send a notification) is handed to a :data:`Dispatch`,
which a worker turns into a Celery task and the in-process mode runs at once.

Invariants:

- A running job beats a heartbeat on its own thread; when the beat finds the job is no
  longer this worker's (the sweep judged it dead and gave it away), the run is cancelled at
  the next progress report, and it removes what it wrote.
- The archive id is recorded on the job before the first byte is written, so the sweep knows
  what a dead worker left behind (``sweep_dead``).
- A notification never fails a job: it is sent after the job's final state is recorded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import Error
from .inventory import Inventory
from .inventory.models import Archive, Job, RetrievalJob
from .jobs import RESET_TO, JobStore, parse_worker, process_name
from .policy import Policy, get_policy, load_policies
from .progress import Progress
from .settings import Settings
from .targets import Readiness, RetrievalStatus, open_target

__all__ = [
    "TASK_QUEUES",
    "Dispatch",
    "JobCancelled",
    "Runner",
    "task_queue",
]

log = logging.getLogger("backup.runner")

#: Celery task name -> queue (before the settings' prefix)
TASK_QUEUES = {
    "backup.run": "pack",
    # the restore hosts: a restore's start proves their identity before any retrieval
    "backup.start_restore": "restore",
    "backup.extract": "restore",
    "backup.poll": "poll",
    "backup.notify": "notify",
}


def task_queue(task: str, policy: Policy | None = None) -> str:
    """Returns: the queue (before the settings' prefix) a task goes to; a policy with its own
    ``queue`` sends its runs to ``pack-<queue>``, consumed only by the hosts that can read
    its sources."""
    if task == "backup.run" and policy is not None and policy.queue:
        return f"pack-{policy.queue}"
    return TASK_QUEUES[task]


_POLICY_CACHE: dict[str, tuple[tuple[str, int, int, int], dict[str, Policy]]] = {}

Dispatch = Callable[[str, str], None]
"""Hands a follow-up task (name, job id) to whoever runs tasks."""


class JobCancelled(Error):
    """Job {} was given to another worker: this worker stops"""


def _now() -> datetime:
    return datetime.now(UTC)


class JobProgress(Progress):
    """Counts bytes for the heartbeat and cancels the run when the job was lost."""

    def __init__(self, inner: Progress | None = None) -> None:
        self.inner = inner or Progress()
        self.done = 0
        self.total: int | None = None
        self.cancelled: str | None = None

    def start(self, description: str, total_bytes: int | None) -> None:
        self.done, self.total = 0, total_bytes
        self.inner.start(description, total_bytes)

    def advance(self, nbytes: int) -> None:
        if self.cancelled:
            raise JobCancelled(self.cancelled)
        self.done += nbytes
        self.inner.advance(nbytes)

    def finish(self) -> None:
        self.inner.finish()


@dataclass(slots=True)
class Runner:
    """Carries out jobs of one inventory.

    Args:
        inventory: the inventory holding jobs and archives.
        settings: this process's settings (policy file, identity, intervals).
        dispatch: hands follow-up tasks on.
        worker: the name recorded on claimed jobs.
    """

    inventory: Inventory
    settings: Settings
    dispatch: Dispatch
    worker: str = ""

    def __post_init__(self) -> None:
        self.worker = self.worker or process_name()

    @property
    def store(self) -> JobStore:
        return JobStore(self.inventory)

    def policies(self) -> dict[str, Policy]:
        """The policy file, re-read whenever it changed (each task sees the current file;
        an unchanged file of hundreds of policies is not parsed again for every job)."""
        path = Path(self.settings.config)
        try:
            st = path.stat()
            stamp = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return load_policies(path)  # raises the clear error
        cached = _POLICY_CACHE.get(str(path))
        if cached is None or cached[0] != stamp:
            cached = (stamp, load_policies(path))
            _POLICY_CACHE[str(path)] = cached
        return cached[1]

    def policy(self, name: str | None) -> Policy:
        """Returns: the named policy of the current policy file; a PolicyError naming the
        file and the policies it has when it is gone (renamed or removed since the job was
        recorded)."""
        return get_policy(self.policies(), name or "", Path(self.settings.config))

    # heartbeat --------------------------------------------------------------------------

    @contextmanager
    def _heartbeat(self, job_id: str, progress: JobProgress) -> Iterator[None]:
        stop = threading.Event()
        store = JobStore(self.inventory)

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_seconds):
                try:
                    mine = store.beat(
                        job_id, self.worker, bytes_done=progress.done, bytes_total=progress.total
                    )
                except Exception as e:  # the database is away for a moment: try again
                    log.warning("heartbeat of job %s failed: %s", job_id, e)
                    continue
                if not mine:
                    progress.cancelled = job_id
                    return

        t = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
        # a step that reports no progress (a drill's check) still must not record its
        # outcome on a job the sweep gave away while it ran
        if progress.cancelled:
            raise JobCancelled(progress.cancelled)

    # backup -----------------------------------------------------------------------------

    def run_backup(self, job_id: str, progress: Progress | None = None) -> str:
        """Carry out a queued backup job.

        Args:
            job_id: the job.
            progress: told of bytes packed (the in-process CLI shows it).

        Returns:
            The job's state afterwards.
        """
        from .engine import new_archive_id, run_backup

        store = self.store
        job = store.get(job_id)
        if not store.claim(job.id, "queued", "packing", self.worker):
            log.info("job %s is %s, not queued: nothing to do", job.id, store.get(job.id).state)
            return store.get(job.id).state
        assert job.policy is not None
        try:
            policy = self.policy(job.policy)
        except Exception as e:
            msg = e.get_message() if isinstance(e, Error) else f"no policy {job.policy!r}: {e}"
            store.cas(job.id, ["packing"], "failed", error=msg)
            self._notify_after(job.id)
            return "failed"
        # a run killed without a word (SIGKILL, the OOM killer) must not lock its policy out
        self._settle_dead_runs(policy.name, job.id)
        holder = store.lock_policy(policy.name, job.id)
        if holder is not None and store.release_orphan_locks():
            holder = store.lock_policy(policy.name, job.id)
        if holder is not None:
            store.cas(
                job.id,
                ["packing"],
                "skipped",
                error=f"job {holder} of policy {policy.name!r} was still running",
            )
            self.inventory.log(
                "skipped",
                f"run of {policy.name} skipped: job {holder} was still running",
                level="warning",
                policy=policy.name,
            )
            return "skipped"
        try:
            params = json.loads(job.params)
            jp = JobProgress(progress)
            t0 = time.monotonic()
            result: dict[str, Any] = {"actions": list(policy.actions)}
            store.update(job.id, result=json.dumps(result))  # the sweep reads the plan
            warning: str | None = None
            if "snapshot" in policy.actions:
                result["snapshot"] = self._snapshot_action(policy, job.id, jp)
            if "archive" in policy.actions:
                archive_id = new_archive_id(_now())
                store.update(job.id, archive_id=archive_id)
                with self._heartbeat(job.id, jp):
                    res = run_backup(
                        policy,
                        self.inventory,
                        full=bool(params.get("full")),
                        progress=jp,
                        archive_id=archive_id,
                        on_phase=lambda phase: self._phase(job.id, phase),
                    )
                a = res.archive
                result.update(
                    archive_id=a.id,
                    kind=a.kind,
                    entries=a.entries,
                    bytes_in=a.size_in,
                    bytes_stored=a.size_stored,
                    target=a.target,
                    unreadable=len(res.unreadable),
                )
                if res.unreadable:
                    warning = f"{len(res.unreadable)} files could not be read"
            if "fork" in policy.actions:
                result["drill"] = self._fork_action(policy, job.id, jp)
            result["seconds"] = round(time.monotonic() - t0, 3)
            store.cas(
                job.id,
                ["packing", "uploading", "recorded"],
                "done",
                result=json.dumps(result),
                bytes_done=int(result.get("bytes_in", 0)),
                error=warning,
            )
        except JobCancelled:
            log.warning("job %s was taken over by another worker; this attempt stopped", job.id)
            return store.get(job.id).state
        except BaseException as e:
            msg = e.get_message() if isinstance(e, Error) else f"{type(e).__name__}: {e}"
            store.cas(job.id, ["packing", "uploading", "recorded"], "failed", error=msg)
            if not isinstance(e, Exception):
                raise
        finally:
            store.unlock_policy(policy.name, job.id)
        if "archive" in policy.actions and store.get(job.id).state == "done":
            self._export_inventory(policy)
        self._notify_after(job.id)
        return store.get(job.id).state

    def _export_inventory(self, policy: Policy) -> None:
        """Copy the inventory, this job's record included, into the policy's target: what
        brings the job history back on a bare machine. Never fails the backup."""
        if not self.settings.inventory_export_after_run:
            return
        from .inventory_copy import export_after_run

        export_after_run(
            self.inventory,
            policy.target,
            policy.recipients,
            keep=self.settings.inventory_export_keep,
            min_interval=self.settings.inventory_export_interval,
            policy=policy.name,
        )

    def _snapshot_action(self, policy: Policy, job_id: str, jp: JobProgress) -> dict[str, Any]:
        """Snapshot a bucket source and prune the policy's snapshots by its retention
        (beating the job's heartbeat: a portable snapshot lists every key)."""
        from .snapshots.actions import snapshot_source

        assert policy.source is not None
        with self._heartbeat(job_id, jp):
            r = snapshot_source(policy.source, policy.name, policy.retention, self.inventory)
        return {
            "taken": {"version": r.taken.version, "name": r.taken.name},
            "deleted": [s.version for s in r.deleted],
        }

    def _fork_action(self, policy: Policy, job_id: str, jp: JobProgress) -> dict[str, Any]:
        """A restore drill: fork the latest snapshot, run the check, then remove drill forks
        older than ``keep_for``, beating the job's heartbeat throughout (the check may run
        for as long as ``drill.timeout``).

        Raises:
            DrillFailed: the check failed (after old forks were removed all the same).
        """
        from .snapshots.actions import DrillFailed, expire_drills, fork_drill

        assert policy.source is not None and policy.drill is not None
        with self._heartbeat(job_id, jp):
            res = fork_drill(
                policy.source,
                policy.name,
                self.inventory,
                bucket_pattern=policy.drill.bucket,
                check_command=policy.drill.check,
                timeout=policy.drill.timeout.total_seconds(),
            )
            removed = expire_drills(self.inventory, policy.drill.keep_for)
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

    def _phase(self, job_id: str, phase: str) -> None:
        self.store.cas(job_id, ["packing", "uploading"], phase)

    # restore ----------------------------------------------------------------------------

    def start_restore(self, job_id: str) -> str:
        """Ask the targets for every object a restore request needs (requested ->
        retrieving), and pass it on to extraction when all are ready at once.

        Returns:
            The job's state afterwards.
        """
        store = self.store
        job = store.get(job_id)
        if not store.cas(job.id, ["requested"], "retrieving", worker=self.worker):
            return store.get(job.id).state
        params = json.loads(job.params)
        try:
            chain = self.inventory.chain(params["archive_id"])
            # a retrieval takes hours and is paid for: what would fail the restore when the
            # data arrives is found first
            if str(params["to"]).startswith("s3://"):
                from .snapshots.source import check_bucket_destination

                check_bucket_destination(
                    self.policy(job.policy),
                    params["to"],
                    in_place=bool(params.get("in_place")),
                )
            self._prove_identity(chain)
            tier = params.get("tier")
            rows: list[RetrievalJob] = []
            now = _now()
            for a in chain:
                target = open_target(a.target)
                for ref, size in ((a.location, a.size_stored), (a.manifest_location, 0)):
                    st = target.request_retrieval(ref, tier=tier)
                    rows.append(self._retrieval_row(job.id, a, ref, size, tier, st, now))
            with self.inventory.session() as s:
                s.query(RetrievalJob).filter(RetrievalJob.job_id == job.id).delete()
                s.add_all(rows)
        except BaseException as e:
            msg = e.get_message() if isinstance(e, Error) else f"{type(e).__name__}: {e}"
            store.cas(job.id, ["retrieving"], "failed", error=msg)
            self._notify_after(job.id)
            if not isinstance(e, Exception):
                raise
            return "failed"
        self._ready_if_all(job.id)
        return store.get(job.id).state

    def _prove_identity(self, chain: list[Archive]) -> None:
        """Decrypt the manifest of every archive of a restore with the identity the
        extraction will use. Manifests are kept hot, so this costs no retrieval. Where one is
        not (a vault's manifest needs a retrieval job too), the identity is proved on the
        manifest's age header, which the backup recorded in the inventory: the file key is
        unwrapped and authenticates the header, as decrypting the manifest would begin.

        Raises:
            IdentityError: no identity, an unreadable one, or one that is not a recipient.
        """
        from .crypto.age import NoIdentityMatch, prove_identity
        from .errors import IdentityError
        from .restore import identities_from, read_manifest

        path = self.settings.identity
        if path is None:
            raise IdentityError(
                f"no identity to decrypt with: BACKUP_IDENTITY is not set where the restore "
                f"runs ({self.worker}); nothing was retrieved"
            )
        identities = identities_from(path)
        for a in chain:
            target = open_target(a.target)
            try:
                if target.retrieval_status(a.manifest_location).state is Readiness.READY:
                    read_manifest(target, a, identities)
                elif (header := self.inventory.manifest_header(a.id)) is not None:
                    prove_identity(header, identities, name=a.id)
                # else: an archive recorded before headers were; its manifest proves it
                # when read, after the retrieval
            except NoIdentityMatch:
                raise IdentityError(
                    f"the identity in {path} (on {self.worker}) is not a recipient of archive "
                    f"{a.id}: it cannot decrypt it; nothing was retrieved"
                ) from None

    def _retrieval_row(
        self,
        job_id: str,
        a: Archive,
        ref: str,
        size: int,
        tier: str | None,
        st: RetrievalStatus,
        now: datetime,
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
            requested=now,
            next_check=None if ready else self._next_check(st.storage_class, tier, now, now),
            storage_class=st.storage_class,
            size=size,
            checks=0,
            expires=st.expires,
            completed=now if ready else None,
        )

    def _next_check(
        self, storage_class: str | None, tier: str | None, requested: datetime, now: datetime
    ) -> datetime:
        """When to ask again about a pending retrieval: by its class and tier (no point asking
        about a Bulk DEEP_ARCHIVE restore every minute for 48 hours), never sooner than
        ``poll_seconds`` and never later than ``poll_max_seconds`` when that is set."""
        from .coldplan import next_check

        floor = timedelta(seconds=self.settings.poll_seconds)
        when = now + floor
        if storage_class:
            with suppress(Exception):
                when = next_check(
                    storage_class, tier or "Standard", requested, now, min_interval=floor
                )
        if self.settings.poll_max_seconds is not None:
            when = min(when, now + timedelta(seconds=self.settings.poll_max_seconds))
        return when

    def _ready_if_all(self, job_id: str) -> bool:
        rows = self.store.retrievals(job_id)
        if rows and all(r.state == "ready" for r in rows):
            if self.store.cas(job_id, ["retrieving"], "ready", sent_at=_now()):
                self.dispatch("backup.extract", job_id)
            return True
        return False

    def poll(self) -> int:
        """Check every pending retrieval that is due, and pass restore requests whose objects
        are all ready on to extraction.

        Returns:
            How many status requests were sent.
        """
        store = self.store
        sent = 0
        now = _now()
        waiting_jobs: set[str] = set()
        for r in store.due_retrievals(now) + self._announced(now):
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
            fields: dict[Any, Any] = {"checks": RetrievalJob.checks + 1}
            if st.state is Readiness.READY:
                fields.update(state="ready", completed=now, next_check=None, expires=st.expires)
            else:
                cls = st.storage_class or r.storage_class
                fields["next_check"] = self._next_check(cls, r.tier, r.requested, now)
            with self.inventory.session() as s:
                s.query(RetrievalJob).filter(RetrievalJob.id == r.id).update(fields)
            if r.job_id:
                waiting_jobs.add(r.job_id)
        for job in store.jobs(states=["retrieving"], kind="restore"):
            waiting_jobs.add(job.id)
        for jid in sorted(waiting_jobs):
            self._ready_if_all(jid)
        return sent

    def _announced(self, now: datetime) -> list[RetrievalJob]:
        """Pending retrievals that S3 event notifications (``s3:ObjectRestore:Completed`` on
        the SQS queue ``restore_events_queue``) say are done: checked at once rather than
        at their scheduled time."""
        if not self.settings.restore_events_queue:
            return []
        from .coldplan import read_restore_events, refs_ready

        try:
            events = read_restore_events(self.settings.restore_events_queue)
        except Exception as e:
            log.warning("cannot read restore events: %s", e)
            return []
        if not events:
            return []
        pending = [
            r
            for r in self.store.jobs_pending_retrievals()
            if r.next_check is None or r.next_check > now
        ]
        ready: dict[str, set[str]] = {}
        for r in pending:
            if r.target not in ready:
                ready[r.target] = refs_ready(open_target(r.target), events)
        return [r for r in pending if r.ref in ready[r.target]]

    def extract(self, job_id: str, progress: Progress | None = None) -> str:
        """Restore a request whose objects are ready (ready -> extracting -> done).

        Returns:
            The job's state afterwards.
        """
        from .restore import identities_from, restore

        store = self.store
        job = store.get(job_id)
        if not store.claim(job.id, "ready", "extracting", self.worker):
            return store.get(job.id).state
        params = json.loads(job.params)
        # a restored copy may have expired since the poll saw it ready: ask again
        expired = []
        for r in store.retrievals(job.id):
            with suppress(Exception):
                if open_target(r.target).retrieval_status(r.ref).state is not Readiness.READY:
                    expired.append(r)
        if expired:
            with self.inventory.session() as s:
                for r in expired:
                    st = open_target(r.target).request_retrieval(r.ref, tier=r.tier)
                    now = _now()
                    cls = st.storage_class or r.storage_class
                    s.query(RetrievalJob).filter(RetrievalJob.id == r.id).update(
                        {
                            "state": "pending",
                            "requested": now,
                            "next_check": self._next_check(cls, r.tier, now, now),
                        }
                    )
            store.cas(job.id, ["extracting"], "retrieving")
            return "retrieving"
        jp = JobProgress(progress)
        if str(params["to"]).startswith("s3://"):
            return self._extract_to_bucket(job, params, jp)

        def work() -> tuple[dict[str, Any], int]:
            with self._heartbeat(job.id, jp):
                res = restore(
                    job.policy or "",
                    self.inventory,
                    Path(params["to"]),
                    identities_from(self.settings.identity),
                    archive_id=params["archive_id"],
                    include=params.get("include", []),
                    force=bool(params.get("force")),
                    allow_external_symlinks=bool(params.get("allow_external_symlinks")),
                    progress=jp,
                )
            result = {
                "archive_id": params["archive_id"],
                "archives": res.archives,
                "files": res.files,
                "bytes": res.bytes,
                "seconds": round(res.seconds, 3),
                "destination": str(res.destination),
            }
            return result, res.bytes

        return self._settle_extract(job.id, work)

    def _extract_to_bucket(self, job: Job, params: dict[str, Any], jp: JobProgress) -> str:
        """Restore a bucket source's archived state into a bucket (out of place, or in place
        with new versions and delete markers only)."""
        from .restore import identities_from
        from .snapshots.source import restore_to_bucket

        def work() -> tuple[dict[str, Any], int]:
            policy = self.policy(job.policy)
            t0 = time.monotonic()
            with self._heartbeat(job.id, jp):
                res = restore_to_bucket(
                    policy,
                    self.inventory,
                    params["to"],
                    identities_from(self.settings.identity),
                    archive_id=params["archive_id"],
                    include=params.get("include", []),
                    in_place=bool(params.get("in_place")),
                    progress=jp,
                )
            result = {
                "archive_id": params["archive_id"],
                "archives": res.archives,
                "files": res.uploaded,
                "unchanged": res.unchanged,
                "deleted": res.deleted,
                "bytes": res.bytes,
                "seconds": round(time.monotonic() - t0, 3),
                "destination": res.destination,
            }
            return result, res.bytes

        return self._settle_extract(job.id, work)

    def _settle_extract(self, job_id: str, work: Callable[[], tuple[dict[str, Any], int]]) -> str:
        """Run an extracting job's work: ``done`` with its result, or ``failed`` with one
        message; then notify.

        Returns:
            The job's state afterwards.
        """
        store = self.store
        try:
            result, nbytes = work()
            store.cas(job_id, ["extracting"], "done", result=json.dumps(result), bytes_done=nbytes)
        except JobCancelled:
            return store.get(job_id).state
        except BaseException as e:
            msg = e.get_message() if isinstance(e, Error) else f"{type(e).__name__}: {e}"
            store.cas(job_id, ["extracting"], "failed", error=msg)
            if not isinstance(e, Exception):
                raise
        self._notify_after(job_id)
        return store.get(job_id).state

    # notifications ----------------------------------------------------------------------

    def _urls(self, job: Job) -> list[str]:
        """Returns: the job's notification targets, URLs and names (resolved when sent)."""
        urls: list[str] = list(json.loads(job.notify or "[]"))
        if job.kind == "backup" and job.policy:
            with suppress(Exception):
                n = self.policies()[job.policy].notify
                urls = (n.on_success if job.state == "done" else n.on_failure) + urls
        return list(dict.fromkeys(urls))

    def _notify_after(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job.state not in ("done", "failed") or not self._urls(job):
            return
        if self.store.request_notify(job.id):
            self.dispatch("backup.notify", job.id)

    def notify(
        self,
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
        from .notify import RetryLater, resolve_targets, send

        store = self.store
        if again is None:
            if not store.claim_notify(job_id):
                return False
        elif store.get(job_id).notify_state != "sending":
            return False  # the sweep gave it back as pending: a fresh send has it
        job = store.get(job_id)
        title, body = message_for(job)
        urls, undefined = resolve_targets(self._urls(job))
        chosen = [i for i in range(len(urls)) if again is None or i in again]
        res = send([urls[i] for i in chosen], title, body, attempts=attempts)
        if not final and res.retryable:
            store.update(job.id)  # still sending: the sweep leaves a fresh one alone
            raise RetryLater([chosen[i] for i in res.retryable])
        ok = res.ok and not undefined
        store.update(job.id, notify_state="sent" if ok else "failed")
        missing = f" (targets not defined here: {', '.join(undefined)})" if undefined else ""
        self.inventory.log(
            "notify",
            f"notification for job {job.id} {'sent' if ok else 'failed'}{missing}",
            level="info" if ok else "warning",
            policy=job.policy,
        )
        return ok

    # the sweep --------------------------------------------------------------------------

    def sweep_dead(self) -> list[str]:
        """Reset running jobs whose worker stopped beating: remove what the dead attempt
        wrote, then put the job back where it was claimed from and hand it out again.

        Returns:
            The ids of the jobs handed out again.
        """
        store = self.store
        again: list[str] = []
        for job, why in store.dead(timedelta(seconds=self.settings.stale_after_seconds)):
            who = parse_worker(job.worker)
            # a job a command ran in-process has no queue to go back to: it failed
            if self._settle_dead(job, why, requeue=who is None or who.role != "cli"):
                again.append(job.id)
        store.release_orphan_locks()
        store.stuck_notifications(timedelta(seconds=self.settings.stale_after_seconds * 5))
        return again

    def _settle_dead_runs(self, policy: str, job_id: str) -> None:
        """Before a run of ``policy`` takes its lock: fail the policy's runs whose process
        died (this run takes their place)."""
        stale_after = timedelta(seconds=self.settings.stale_after_seconds)
        for dead, why in self.store.dead(stale_after, policy=policy):
            if dead.id != job_id:
                self._settle_dead(dead, why, requeue=False)

    def _settle_dead(self, job: Job, why: str, *, requeue: bool) -> bool:
        """Clean up after a running job whose worker died: remove what its attempt wrote,
        then put the job back where it was claimed from (``requeue``) or fail it, and
        release its lock.

        Returns:
            True when the job was put back and is to be handed out again.
        """
        store = self.store
        if job.kind == "backup" and job.archive_id:
            if self._finish_if_recorded(job):
                return False
            self._discard_attempt(job.archive_id, f"the process writing it died: {why}")
        if requeue:
            back = RESET_TO[job.state]
            if not store.cas(job.id, [job.state], back, worker=None, heartbeat=None, sent_at=None):
                return False
            message = f"job {job.id}: worker {job.worker} stopped beating in {job.state} ({why})"
            message += f"; back to {back}"
        else:
            error = f"interrupted in {job.state}: {why}"
            if not store.cas(job.id, [job.state], "failed", error=error):
                return False
            message = f"job {job.id} failed: {error}"
        if job.policy:
            store.unlock_policy(job.policy, job.id)
        self.inventory.log(
            "requeued" if requeue else "failed", message, level="warning", policy=job.policy
        )
        if not requeue:
            self._notify_after(job.id)
        return requeue

    def _finish_if_recorded(self, job: Job) -> bool:
        """A worker that died after the archive was complete: the archive is not redone.

        The job is done only when the archive was its last step. When a step came after it
        (the restore drill), nobody knows how that step ended, so the job fails saying so:
        a run whose outcome is unknown is never reported as a success.
        """
        try:
            a = self.inventory.get(job.archive_id or "")
        except Error:
            return False
        if a.state != "complete":
            return False
        after = self._steps_after_archive(job)
        result = json.dumps({"archive_id": a.id})
        if not after:
            ended = self.store.cas(job.id, [job.state], "done", result=result)
        else:
            ended = self.store.cas(
                job.id,
                [job.state],
                "failed",
                result=result,
                error=f"worker {job.worker} stopped beating after archive {a.id} was recorded: "
                f"the outcome of its {after} is unknown",
            )
        if ended:
            if job.policy:
                self.store.unlock_policy(job.policy, job.id)
            self._notify_after(job.id)
        return True

    def _steps_after_archive(self, job: Job) -> str:
        """Returns: the steps a backup job runs after its archive (``""`` when the archive is
        the last), by the plan the job recorded when it started, else by its policy."""
        actions = json.loads(job.result or "{}").get("actions")
        if actions is None:
            try:
                actions = list(self.policies()[job.policy or ""].actions)
            except Exception:
                return "remaining steps"  # the plan cannot be read: the outcome is unknown
        return "restore drill (fork action)" if "fork" in actions else ""

    def _discard_attempt(self, archive_id: str, why: str = "the worker writing it died") -> None:
        try:
            a = self.inventory.get(archive_id)
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
        self.inventory.update_archive(a.id, state="failed", error=why, finished=_now())


def message_for(job: Job) -> tuple[str, str]:
    """Returns: the title and body telling how a job ended."""
    from .notify import format_backup_message, format_restore_message

    r: dict[str, Any] = json.loads(job.result or "{}")
    ok = job.state == "done"
    if job.kind == "restore":
        params = json.loads(job.params or "{}")
        return format_restore_message(
            ok=ok,
            destination=str(r.get("destination") or params.get("to") or "?"),
            policy=job.policy,
            request_id=job.id,
            archive_id=r.get("archive_id") or params.get("archive_id"),
            size_bytes=r.get("bytes"),
            files=r.get("files"),
            started=job.created,
            finished=job.finished,
            error=None if ok else job.error,
        )
    return format_backup_message(
        policy=job.policy or "?",
        ok=ok,
        target=r.get("target"),
        archive_id=r.get("archive_id") or job.archive_id,
        kind=r.get("kind"),
        size_bytes=r.get("bytes_stored"),
        source_bytes=r.get("bytes_in"),
        files=r.get("entries"),
        unreadable=int(r.get("unreadable", 0)),
        started=job.started,
        finished=job.finished,
        error=None if ok else job.error,
        host=who.host if (who := parse_worker(job.worker)) else None,
    )
