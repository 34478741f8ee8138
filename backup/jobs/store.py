"""The job store: the inventory's record of every backup run and restore request, and their states.

The database, not the broker, is the source of truth. The broker carries a job's id and
nothing else, and may lose it (a Redis restart) or deliver it twice (a visibility timeout);
both are harmless because:

- every change of state is a compare-and-set (``UPDATE ... WHERE state IN (...)``), so a
  second delivery finds the job already claimed and does nothing;
- a job waiting for a worker records when it was last handed to the broker (``sent_at``),
  and the scheduler's sweep hands it over again when it has waited too long;
- a running job beats a heartbeat, and records who runs it (``worker``: host, PID and the
  process's start time, :func:`process_name`); the sweep resets a job whose worker died to the
  state it was claimed from, after removing what the dead attempt left behind (a job that a
  command ran in-process is failed instead: nobody waits on a queue for it);
- a policy's running job holds the policy's row in ``policy_locks``, so two runs of one
  policy never overlap: the second is recorded as ``skipped``, unless the holder is dead
  (:func:`~backup.jobs.process.holder_gone`: its process on this host is gone, or, seen from another host, its
  heartbeat expired): then the dead job is failed, its leftovers removed, and the run goes on.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import Error
from ..inventory import Inventory
from ..inventory.models import Job, Lease, NotifyDelivery, PolicyLock, RetrievalJob
from .process import holder_gone
from .states import ACTIVE, RUNNING, TERMINAL, WAITING, NotifyState

__all__ = ["Job", "JobNotFound", "JobStore", "RetrievalJob"]


def _now() -> datetime:
    return datetime.now(UTC)


class JobNotFound(Error):
    """No job matches {!r}{}"""


class JobStore:
    """Compare-and-set access to the jobs of one inventory.

    Args:
        inventory: the inventory that holds the jobs.
    """

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.engine = inventory.engine

    # creating and reading ---------------------------------------------------------------

    @staticmethod
    def new_id(kind: str, now: datetime | None = None) -> str:
        """Returns: a sortable id such as ``b20261121T020000-3f9a1c2e`` (b = backup)."""
        now = now or _now()
        return f"{kind[0]}{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"

    def create(
        self,
        kind: str,
        *,
        policy: str | None,
        state: str,
        params: dict[str, Any] | None = None,
        notify: Sequence[str] = (),
        origin: str = "cli",
        scheduled_for: datetime | None = None,
        error: str | None = None,
    ) -> Job | None:
        """Record a new job.

        Args:
            kind: ``backup`` or ``restore``.
            policy: the policy it belongs to.
            state: its first state (``queued``, ``requested``, or ``skipped``).
            params: JSON-able parameters (never a secret).
            notify: Apprise URLs told when it ends.
            origin: ``cli``, ``schedule`` or ``catch-up``.
            scheduled_for: the schedule slot it fills; one job per policy and slot.
            error: why, for a job created ``skipped``.

        Returns:
            The job, or None when a job for this policy and slot already exists (another
            scheduler recorded it first).
        """
        now = _now()
        job = Job(
            id=self.new_id(kind, now),
            kind=kind,
            policy=policy,
            state=state,
            origin=origin,
            scheduled_for=scheduled_for,
            params=json.dumps(params or {}),
            notify=json.dumps(list(notify)),
            notify_state="none",
            created=now,
            updated=now,
            finished=now if state in TERMINAL else None,
            attempts=0,
            bytes_done=0,
            result="{}",
            error=error,
        )
        try:
            with self.inventory.session() as s:
                s.add(job)
        except IntegrityError:
            return None
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id, or the only one whose id starts with it.

        Raises:
            JobNotFound: no job, or several, match.
        """
        with self.inventory.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                return job
            found = list(s.scalars(select(Job).where(Job.id.startswith(job_id)).limit(2)))
        if len(found) != 1:
            raise JobNotFound(job_id, " (ambiguous prefix: give more of the id)" if found else "")
        return found[0]

    def jobs(
        self,
        *,
        states: Iterable[str] | None = None,
        kind: str | None = None,
        policy: str | None = None,
        since: datetime | None = None,
        limit: int = 200,
    ) -> list[Job]:
        """Jobs, newest first, filtered by state, kind, policy and creation time."""
        q = select(Job).order_by(Job.created.desc(), Job.id.desc()).limit(limit)
        if states is not None:
            q = q.where(Job.state.in_(list(states)))
        if kind:
            q = q.where(Job.kind == kind)
        if policy:
            q = q.where(Job.policy == policy)
        if since:
            q = q.where(Job.updated >= since)
        with self.inventory.session() as s:
            return list(s.scalars(q))

    def has_slot(self, policy: str, slot: datetime) -> bool:
        """Tell whether a job for this policy's schedule slot was recorded."""
        with self.inventory.session() as s:
            q = select(Job.id).where(Job.policy == policy, Job.scheduled_for == slot)
            return s.scalar(q) is not None

    # state changes ----------------------------------------------------------------------

    def cas(self, job_id: str, from_states: Sequence[str], to: str, **fields: Any) -> bool:
        """Move a job to ``to`` if it is in one of ``from_states``.

        Returns:
            True if this call made the change; False if the job was elsewhere.
        """
        now = _now()
        values: dict[str, Any] = {"state": to, "updated": now, **fields}
        if to in TERMINAL:
            values.setdefault("finished", now)
        with self.engine.begin() as c:
            r = c.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(list(from_states)))
                .values(**values)
            )
            return bool(r.rowcount == 1)

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job without a state check (progress, result)."""
        with self.engine.begin() as c:
            c.execute(update(Job).where(Job.id == job_id).values(updated=_now(), **fields))

    def claim(self, job_id: str, from_state: str, to: str, worker: str) -> bool:
        """Take a job for this worker: the CAS, plus worker, start time and first heartbeat."""
        now = _now()
        with self.engine.begin() as c:
            r = c.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == from_state)
                .values(
                    state=to,
                    updated=now,
                    started=now,
                    heartbeat=now,
                    worker=worker,
                    attempts=Job.attempts + 1,
                )
            )
            return bool(r.rowcount == 1)

    def beat(self, job_id: str, worker: str, **fields: Any) -> bool:
        """Renew a running job's heartbeat (and progress fields).

        Returns:
            False when the job is no longer this worker's (the sweep gave it away).
        """
        with self.engine.begin() as c:
            r = c.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state.in_(RUNNING))
                .values(heartbeat=_now(), **fields)
            )
            return bool(r.rowcount == 1)

    def mark_sent(self, job_ids: Iterable[str]) -> None:
        """Record that these jobs were handed to the broker now."""
        ids = list(job_ids)
        if ids:
            with self.engine.begin() as c:
                c.execute(update(Job).where(Job.id.in_(ids)).values(sent_at=_now()))

    def request_notify(self, job_id: str) -> bool:
        """Mark a finished job's notification as due (once: ``none`` -> ``pending``)."""
        with self.engine.begin() as c:
            r = c.execute(
                update(Job)
                .where(Job.id == job_id, Job.notify_state == "none", Job.state.in_(TERMINAL))
                .values(notify_state="pending", sent_at=_now())
            )
            return bool(r.rowcount == 1)

    def claim_notify(self, job_id: str) -> bool:
        """Take a job's pending notification for sending (``pending`` -> ``sending``), so a
        notify task delivered twice sends once."""
        with self.engine.begin() as c:
            r = c.execute(
                update(Job)
                .where(Job.id == job_id, Job.notify_state == "pending")
                .values(notify_state="sending", updated=_now())
            )
            return bool(r.rowcount == 1)

    def delivered(self, job_id: str) -> set[str]:
        """Returns: the digests of the URLs that already took this job's notification."""
        with self.inventory.session() as s:
            q = select(NotifyDelivery.url_digest).where(NotifyDelivery.job_id == job_id)
            return set(s.scalars(q))

    def mark_delivered(self, job_id: str, url_digest: str) -> None:
        """Record that a URL took the job's notification (again is a no-op)."""
        try:
            with self.engine.begin() as c:
                c.execute(
                    insert(NotifyDelivery).values(
                        job_id=job_id, url_digest=url_digest, delivered=_now()
                    )
                )
        except IntegrityError:
            pass  # recorded by an earlier send

    # policy locks -----------------------------------------------------------------------

    def lock_policy(self, policy: str, job_id: str) -> str | None:
        """Take the policy's run lock for a job.

        Returns:
            None when the job holds it now; else the id of the job that holds it.
        """
        try:
            with self.engine.begin() as c:
                c.execute(insert(PolicyLock).values(policy=policy, job_id=job_id, acquired=_now()))
            return None
        except IntegrityError:
            with self.engine.connect() as c:
                holder = c.execute(
                    select(PolicyLock.job_id).where(PolicyLock.policy == policy)
                ).scalar()
            if holder is None:  # released in between: try once more
                return self.lock_policy(policy, job_id)
            return None if holder == job_id else str(holder)

    def unlock_policy(self, policy: str, job_id: str) -> None:
        """Release the policy's run lock if this job holds it."""
        with self.engine.begin() as c:
            c.execute(
                delete(PolicyLock).where(PolicyLock.policy == policy, PolicyLock.job_id == job_id)
            )

    def release_orphan_locks(self) -> int:
        """Drop locks whose job has ended or vanished (a worker died between its last two
        statements). Returns how many."""
        with self.engine.begin() as c:
            live = select(Job.id).where(Job.state.in_(ACTIVE))
            r = c.execute(delete(PolicyLock).where(PolicyLock.job_id.not_in(live)))
            return int(r.rowcount or 0)

    # sweeping ---------------------------------------------------------------------------

    def stale(self, older_than: timedelta, now: datetime | None = None) -> list[Job]:
        """Running jobs whose heartbeat is older than ``older_than``: their worker died."""
        cutoff = (now or _now()) - older_than
        with self.inventory.session() as s:
            q = select(Job).where(
                Job.state.in_(RUNNING), or_(Job.heartbeat.is_(None), Job.heartbeat < cutoff)
            )
            return list(s.scalars(q))

    def dead(
        self, stale_after: timedelta, now: datetime | None = None, *, policy: str | None = None
    ) -> list[tuple[Job, str]]:
        """Running jobs (of one policy, or all) whose worker is dead (:func:`holder_gone`),
        each with why."""
        q = select(Job).where(Job.state.in_(RUNNING))
        if policy is not None:
            q = q.where(Job.policy == policy)
        with self.inventory.session() as s:
            running = list(s.scalars(q))
        return [(j, why) for j in running if (why := holder_gone(j, stale_after, now))]

    def waiting(self, older_than: timedelta, now: datetime | None = None) -> list[Job]:
        """Jobs waiting for a task (queued, requested, ready, or a pending notification) that
        were last handed to the broker longer ago than ``older_than``, oldest first."""
        cutoff = (now or _now()) - older_than
        with self.inventory.session() as s:
            q = (
                select(Job)
                .where(
                    or_(
                        Job.state.in_(WAITING),
                        Job.notify_state == NotifyState.PENDING,
                    ),
                    or_(Job.sent_at.is_(None), Job.sent_at < cutoff),
                )
                .order_by(Job.created)
            )
            return list(s.scalars(q))

    def stuck_notifications(self, older_than: timedelta) -> int:
        """Notifications left ``sending`` by a worker that died: back to ``pending``."""
        cutoff = _now() - older_than
        with self.engine.begin() as c:
            r = c.execute(
                update(Job)
                .where(Job.notify_state == "sending", Job.updated < cutoff)
                .values(notify_state="pending", sent_at=None)
            )
            return int(r.rowcount or 0)

    # retrievals -------------------------------------------------------------------------

    def retrievals(self, job_id: str) -> list[RetrievalJob]:
        """The retrievals a restore request waits on."""
        with self.inventory.session() as s:
            q = select(RetrievalJob).where(RetrievalJob.job_id == job_id).order_by(RetrievalJob.id)
            return list(s.scalars(q))

    def due_retrievals(self, now: datetime | None = None) -> list[RetrievalJob]:
        """Pending retrievals whose next check is due."""
        now = now or _now()
        with self.inventory.session() as s:
            q = select(RetrievalJob).where(
                RetrievalJob.state == "pending",
                or_(RetrievalJob.next_check.is_(None), RetrievalJob.next_check <= now),
            )
            return list(s.scalars(q))

    def replace_retrievals(self, job_id: str, rows: Sequence[RetrievalJob]) -> None:
        """Record the retrievals a restore request waits on, in place of any an earlier
        attempt recorded (one transaction: the poll never sees half of them)."""
        with self.inventory.session() as s:
            s.query(RetrievalJob).filter(RetrievalJob.job_id == job_id).delete()
            s.add_all(rows)

    def update_retrieval(self, retrieval_id: int, *, checked: bool = False, **fields: Any) -> None:
        """Set fields of a retrieval (``checked``: count one more status request)."""
        values: dict[Any, Any] = dict(fields)
        if checked:
            values["checks"] = RetrievalJob.checks + 1
        with self.inventory.session() as s:
            s.query(RetrievalJob).filter(RetrievalJob.id == retrieval_id).update(values)

    def jobs_pending_retrievals(self) -> list[RetrievalJob]:
        """Every pending retrieval, due or not."""
        with self.inventory.session() as s:
            return list(s.scalars(select(RetrievalJob).where(RetrievalJob.state == "pending")))

    def next_retrieval_check(self) -> datetime | None:
        """When the earliest pending retrieval is next due, if any."""
        with self.inventory.session() as s:
            q = select(RetrievalJob.next_check).where(RetrievalJob.state == "pending")
            times = [t for t in s.scalars(q)]
        if not times:
            return None
        return min((t for t in times if t is not None), default=_now())

    # leases -----------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: timedelta) -> bool:
        """Take or renew a named lease.

        Returns:
            True when ``holder`` holds it until now + ``ttl``.
        """
        now = _now()
        with self.engine.begin() as c:
            r = c.execute(
                update(Lease)
                .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires < now))
                .values(holder=holder, expires=now + ttl)
            )
            if r.rowcount == 1:
                return True
        try:
            with self.engine.begin() as c:
                c.execute(insert(Lease).values(name=name, holder=holder, expires=now + ttl))
            return True
        except IntegrityError:
            return False

    def release_lease(self, name: str, holder: str) -> None:
        """Give a lease up at once (a clean shutdown), so another holder need not wait."""
        with self.engine.begin() as c:
            c.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        """Returns: who holds a lease and until when, or None if nobody does."""
        with self.engine.connect() as c:
            row = c.execute(select(Lease.holder, Lease.expires).where(Lease.name == name)).first()
        if row is None:
            return None
        expires = row[1] if row[1].tzinfo else row[1].replace(tzinfo=UTC)
        return (str(row[0]), expires) if expires >= _now() else None
