"""Carrying out jobs: the library side of every worker task, also used in-process.

A task is a job id; the runner re-reads the job and the policy file, claims the job with a
compare-and-set, and calls the library. What comes next (extract a restore whose objects are
ready, send a notification) is handed to a :data:`~.dispatch.Dispatch`, which a worker turns
into a Celery task (:class:`~.dispatch.Dispatcher`) and the in-process mode runs at once.

:class:`Runner` is a façade: each method is one call into the module that owns the step
(:mod:`.backups`, :mod:`.retrieval`, :mod:`.extract`, :mod:`.notifying`, :mod:`.sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..progress import Progress
from . import backups, notifying, sweep
from .context import JobCancelled, JobContext
from .dispatch import TASK_QUEUES, Dispatch, task_queue
from .notifying import message_for

__all__ = ["TASK_QUEUES", "Dispatch", "JobCancelled", "Runner", "message_for", "task_queue"]


@dataclass(slots=True)
class Runner(JobContext):
    """Carries out jobs of one inventory (see :class:`~.context.JobContext` for its fields)."""

    def run_backup(self, job_id: str, progress: Progress | None = None) -> str:
        """Carry out a queued backup job; returns its state afterwards."""
        return backups.run(self, job_id, progress)

    def start_restore(self, job_id: str) -> str:
        """Request the objects a restore needs; returns its state afterwards."""
        from . import retrieval  # restores only: not imported by a backup run

        return retrieval.start_restore(self, job_id)

    def poll(self) -> int:
        """Check the pending retrievals that are due; returns how many were asked about."""
        from . import retrieval

        return retrieval.poll(self)

    def extract(self, job_id: str, progress: Progress | None = None) -> str:
        """Restore a request whose objects are ready; returns its state afterwards."""
        from . import extract

        return extract.extract(self, job_id, progress)

    def notify(
        self,
        job_id: str,
        *,
        attempts: int = 3,
        again: Sequence[int] | None = None,
        final: bool = True,
    ) -> bool:
        """Send a finished job's notification once; returns whether every URL took it (see
        :func:`backup.jobs.notifying.notify`)."""
        return notifying.notify(self, job_id, attempts=attempts, again=again, final=final)

    def sweep_dead(self) -> list[str]:
        """Reset running jobs whose worker died; returns the ids handed out again."""
        return sweep.sweep_dead(self)

    def run_task(self, task: str, job_id: str) -> None:
        """Carry out a task in this process (the in-process mode's dispatch)."""
        if task == "backup.notify":
            self.notify(job_id)
        elif task == "backup.extract":
            self.extract(job_id)
        elif task == "backup.start_restore":
            self.start_restore(job_id)
        elif task == "backup.run":
            self.run_backup(job_id)
