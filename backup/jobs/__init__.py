"""Jobs: the inventory's record of every backup run and restore request, what carries them
out, and the one way tasks reach the workers.

Layout (each module imports only those listed before it):

- :mod:`.states`: job states (a StrEnum), typed parameters and results;
- :mod:`.process`: who runs a job, and whether that process still runs;
- :mod:`.store`: :class:`JobStore`, compare-and-set access to jobs, locks, leases and
  retrievals (every query on those tables is here);
- :mod:`.dispatch`: queue names, the broker URL, and :class:`~.dispatch.Dispatcher`, the one
  sender of tasks;
- :mod:`.context`: what every step of a job shares (policies, heartbeat, cancellation);
- :mod:`.notifying`, :mod:`.sweep`, :mod:`.backups`, :mod:`.retrieval`, :mod:`.extract`:
  one responsibility each; :mod:`.runner`: the façade the workers' tasks call;
- :mod:`.schedule`: next run times; :mod:`.scheduler`: the scheduler's tick.

The database, not the broker, is the source of truth: see :mod:`.store`.

This package's ``__init__`` loads the store only (no engine, no Celery): the CLI imports it
on every command.
"""

from .process import WorkerId, holder_gone, parse_worker, process_alive, process_name, worker_name
from .states import ACTIVE, BACKUP_STATES, RESTORE_STATES, RUNNING, TERMINAL, JobState
from .store import Job, JobNotFound, JobStore

__all__ = [
    "ACTIVE",
    "BACKUP_STATES",
    "RESTORE_STATES",
    "RUNNING",
    "TERMINAL",
    "Job",
    "JobNotFound",
    "JobState",
    "JobStore",
    "WorkerId",
    "holder_gone",
    "parse_worker",
    "process_alive",
    "process_name",
    "worker_name",
]
