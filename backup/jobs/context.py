"""What every step of a job shares: the inventory, the settings, the policies as the file
says now, the follow-up dispatch, and the heartbeat that cancels a lost run.

Invariants:

- A running job beats a heartbeat on its own thread; when the beat finds the job is no
  longer this worker's (the sweep judged it dead and gave it away), the run is cancelled at
  the next progress report, and it removes what it wrote.
- Each task sees the current policy file (re-read whenever it changed), and validates
  only the policies it uses: a broken policy fails the jobs of that policy alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import Error
from ..inventory import Inventory
from ..policy import Policy, PolicyFile, get_policy, read_policies
from ..progress import Progress
from ..settings import Settings
from ..threads import start_thread
from .dispatch import Dispatch
from .process import process_name
from .store import JobStore

__all__ = ["JobCancelled", "JobContext", "JobProgress", "error_message"]

log = logging.getLogger("backup.runner")


class JobCancelled(Error):
    """Job {} was given to another worker: this worker stops"""


def now() -> datetime:
    return datetime.now(UTC)


def error_message(e: BaseException) -> str:
    """Returns: the one line a failed job records."""
    return e.get_message() if isinstance(e, Error) else f"{type(e).__name__}: {e}"


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
class JobContext:
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

    def policies(self) -> PolicyFile:
        """The policy file as it is now (each task sees the current file; an unchanged file
        of hundreds of policies is not parsed again for every job, and each of its policies
        is validated when a job first uses it, once)."""
        return read_policies(Path(self.settings.config))

    def policy(self, name: str | None) -> Policy:
        """Returns: the named policy of the current policy file; a PolicyError naming the
        file and the policies it has when it is gone (renamed or removed since the job was
        recorded)."""
        return get_policy(self.policies(), name or "", Path(self.settings.config))

    @contextmanager
    def heartbeat(self, job_id: str, progress: JobProgress) -> Iterator[None]:
        """Beat the job's heartbeat (with its progress) while the block runs.

        Raises:
            JobCancelled: the sweep gave the job away meanwhile.
        """
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

        t = start_thread(beat, f"heartbeat-{job_id}")
        try:
            yield
        finally:
            stop.set()
            t.join()
        # a step that reports no progress (a drill's check) still must not record its
        # outcome on a job the sweep gave away while it ran
        if progress.cancelled:
            raise JobCancelled(progress.cancelled)
