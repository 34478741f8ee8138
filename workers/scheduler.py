"""The scheduler process: ticks :class:`backup.jobs.scheduler.Scheduler` until stopped, and
gives the lease up on the way out. What a tick does is the library's (backup/jobs/scheduler.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from backup.jobs.schedule import LEASE, next_runs
from backup.jobs.scheduler import Scheduler as _Tick

__all__ = ["LEASE", "Scheduler", "next_runs"]

log = logging.getLogger("backup.scheduler")


class Scheduler(_Tick):
    """One scheduler process (or thread, in ``backup serve``)."""

    def run(self, stop: threading.Event, on_tick: Callable[[bool], None] | None = None) -> None:
        """Tick until ``stop`` is set; give the lease up on the way out."""
        log.info("scheduler %s started", self.name)
        try:
            while not stop.is_set():
                try:
                    leading = self.tick()
                    if on_tick:
                        on_tick(leading)
                except Exception:
                    # the database or the broker is away for a moment: keep going
                    log.exception("scheduler tick failed")
                stop.wait(self.settings.tick_seconds)
        finally:
            try:
                self.store.release_lease(LEASE, self.name)
            except Exception:
                log.warning("could not release the scheduler lease; it expires by itself")
            self.inventory.close()
