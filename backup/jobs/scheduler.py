"""The scheduler's tick (the process loop that calls it is ``workers/scheduler.py``).

Exactly one scheduler is active across a cluster however many are started: each tick, a
scheduler takes or renews the ``scheduler`` lease in the inventory (a compare-and-set with a
short expiry, ``BACKUP_LEASE_SECONDS``), and only the holder acts. If it dies, another takes
over when the lease expires. As a second guard, a job records its schedule slot and the
inventory allows one job per policy and slot, so even two schedulers that both believed they
led could not run a slot twice.

Each tick the active scheduler:

1. re-queues jobs whose worker died (:func:`~.sweep.sweep_dead`: a process gone on this
   host, a heartbeat expired elsewhere) and fails in-process runs whose command died, first,
   so a slot due now is not skipped for a run that is already dead;
2. queues the policies whose latest slot has no job yet: on time if the slot is recent, and
   after a downtime only when the policy says ``catch_up = true`` (once, for the latest
   missed slot); a slot whose previous run is still queued or running is recorded
   ``skipped``;
3. sends again jobs that waited too long for a worker while their queue is empty (the broker
   lost them: a Redis restart keeps nothing);
4. sends a ``poll`` task when a pending retrieval is due.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from ..errors import Error
from ..inventory import Inventory
from ..policy import Policy, PolicyFile, PolicySchedule
from ..settings import Settings
from ..targets import open_target
from .dispatch import Dispatcher, Sender
from .process import worker_name
from .runner import Runner
from .schedule import LEASE, latest_slot
from .states import ACTIVE, JobState
from .store import JobStore

__all__ = ["Scheduler"]

log = logging.getLogger("backup.scheduler")

#: how often the active scheduler aborts abandoned uploads, and how old they must be
PARTIAL_SWEEP_EVERY = timedelta(hours=1)
PARTIAL_MAX_AGE = timedelta(hours=24)

#: the task that moves a job on from each waiting state
_TASK_FOR_STATE = {
    JobState.QUEUED: "backup.run",
    JobState.REQUESTED: "backup.start_restore",
    JobState.READY: "backup.extract",
}


class Scheduler:
    """One scheduler (a process, or a thread in ``backup serve``): the tick.

    Args:
        settings: intervals, policy file, inventory.
        app: the Celery application tasks are sent through.
        name: this scheduler's name in the lease (``scheduler@host:pid`` by default).
    """

    def __init__(self, settings: Settings, app: Sender, name: str | None = None) -> None:
        self.settings = settings
        self.app = app
        self.name = name or f"scheduler@{worker_name()}"
        self.inventory = Inventory(settings.inventory_url)
        self.store = JobStore(self.inventory)
        self._policies: PolicyFile | None = None
        self.dispatcher = Dispatcher(settings, self.store, app, self._current_policies)
        self.runner = Runner(self.inventory, settings, self.dispatcher, self.name)
        self.leading = False
        self._last_poll: datetime | None = None
        self._policy_error: str | None = None
        self._last_partial_sweep: datetime | None = None

    def _current_policies(self) -> Mapping[str, Policy]:
        # routing a run to its policy's queue: the file as the last tick read it
        return self._policies if self._policies is not None else {}

    def send(self, task: str, job_id: str) -> None:
        """Hand a task to the broker (the policy's own pack queue for a run of a policy that
        names one) and record when."""
        self.dispatcher.send(task, job_id)

    def tick(self, now: datetime | None = None) -> bool:
        """Do one round of work if this scheduler holds the lease.

        Returns:
            Whether this scheduler is the active one.
        """
        now = now or datetime.now(UTC)
        lease = timedelta(seconds=self.settings.lease_seconds)
        leading = self.store.acquire_lease(LEASE, self.name, lease)
        if leading != self.leading:
            log.info(
                "%s is %s", self.name, "now the active scheduler" if leading else "standing by"
            )
            self.leading = leading
        if not leading:
            return False
        # the sweep first: a slot that comes due in this tick is not skipped for a run whose
        # process is already gone
        for job_id in self.runner.sweep_dead():
            job = self.store.get(job_id)
            if job.state in _TASK_FOR_STATE:
                self.send(_TASK_FOR_STATE[JobState(job.state)], job.id)
        self._schedule(now)
        self._resend(now)
        self._poll(now)
        self._sweep_partial(now)
        return True

    def _sweep_partial(self, now: datetime) -> None:
        """Hourly: abort uploads the product started and abandoned more than a day ago in
        every policy's target (multipart uploads on S3 and Glacier, partial files locally).
        A dead worker's own upload is removed at once by the dead-job sweep; this catches
        what nothing recorded (a crash before the job noted its archive)."""
        if self._last_partial_sweep and now - self._last_partial_sweep < PARTIAL_SWEEP_EVERY:
            return
        self._last_partial_sweep = now
        policies: Mapping[str, Policy] = self._current_policies()
        urls = set()
        for name in policies:
            try:
                urls.add(policies[name].target)
            except Error:
                continue  # a broken policy: its runs fail and say why; its target is unknown
        for url in sorted(urls):
            try:
                n = open_target(url).sweep_partial(older_than=PARTIAL_MAX_AGE)
                if n:
                    log.warning("aborted %d abandoned upload(s) in %s", n, url)
            except Exception as e:
                log.warning("sweep of abandoned uploads in %s failed: %s", url, e)

    def _schedule(self, now: datetime) -> None:
        try:
            # re-parsed only when the file changes; the tick reads every policy's schedule
            # fields only, and validates in full (opening its target) the policy it queues
            policies = self.runner.policies()
            scheduled = policies.schedules()
            self._policies = policies
            self._policy_error = None
        except Error as e:
            if self._policy_error != e.get_message():  # say it once, not every tick
                log.error("cannot read policies: %s", e.get_message())
                self._policy_error = e.get_message()
            return
        window = timedelta(
            seconds=max(120.0, 3 * self.settings.lease_seconds, 3 * self.settings.tick_seconds)
        )
        for policy in scheduled:
            slot = latest_slot(policy, now)
            if slot is None or self.store.has_slot(policy.name, slot):
                continue
            late = now - slot > window
            if late and not policy.catch_up:
                continue
            self._fire(policy, slot, "catch-up" if late else "schedule")

    def _fire(self, policy: PolicySchedule, slot: datetime, origin: str) -> None:
        running = self.store.jobs(states=ACTIVE, kind="backup", policy=policy.name, limit=1)
        if running:
            job = self.store.create(
                "backup",
                policy=policy.name,
                state=JobState.SKIPPED,
                origin=origin,
                scheduled_for=slot,
                error=f"job {running[0].id} of this policy was still {running[0].state}",
            )
            if job is not None:
                log.warning("%s at %s skipped: %s", policy.name, slot.isoformat(), job.error)
                self.inventory.log(
                    "skipped",
                    f"scheduled run of {policy.name} at {slot.isoformat()} skipped: "
                    f"job {running[0].id} was still {running[0].state}",
                    level="warning",
                    policy=policy.name,
                )
            return
        job = self.store.create(
            "backup", policy=policy.name, state=JobState.QUEUED, origin=origin, scheduled_for=slot
        )
        if job is None:
            return  # another scheduler recorded this slot first
        log.info("queued %s (%s, slot %s): job %s", policy.name, origin, slot.isoformat(), job.id)
        try:
            full = self._policies[policy.name] if self._policies is not None else None
        except Error as e:
            # queued all the same: the run fails with this error on the job, where `backup
            # status` and the policy's owner see it, while the other policies run on
            log.error("%s: %s", policy.name, e.get_message())
            full = None
        self.dispatcher.send("backup.run", job.id, policy=full)

    def _resend(self, now: datetime) -> None:
        waited = timedelta(seconds=self.settings.resend_after_seconds)
        lengths: dict[str, int | None] = {}
        for job in self.store.waiting(waited, now):
            if job.notify_state == "pending" and job.state not in _TASK_FOR_STATE:
                task = "backup.notify"
            elif job.state in _TASK_FOR_STATE:
                task = _TASK_FOR_STATE[JobState(job.state)]
            else:
                continue
            queue = self.dispatcher.queue(task, job.id)
            if queue not in lengths:
                lengths[queue] = self.dispatcher.waiting(queue)
            if lengths[queue]:  # its message may still be waiting there
                continue
            log.warning("job %s waited %s without a worker: sending it again", job.id, waited)
            self.send(task, job.id)
        # a restore request whose worker died between claiming it and recording retrievals
        stale = now - timedelta(seconds=self.settings.stale_after_seconds)
        for job in self.store.jobs(states=[JobState.RETRIEVING], kind="restore"):
            if (
                job.updated < stale
                and not self.store.retrievals(job.id)
                and self.store.cas(job.id, [JobState.RETRIEVING], JobState.REQUESTED)
            ):
                self.send("backup.start_restore", job.id)

    def _poll(self, now: datetime) -> None:
        due = self.store.next_retrieval_check()
        if due is None:
            return
        if self.settings.restore_events_queue and self._last_poll:
            # readiness may arrive as an S3 event at any time: read the queue regularly
            due = min(due, self._last_poll + timedelta(seconds=self.settings.poll_seconds))
        if due > now:
            return
        if self._last_poll and now - self._last_poll < timedelta(
            seconds=self.settings.tick_seconds
        ):
            return
        self._last_poll = now
        self.dispatcher.poll()
