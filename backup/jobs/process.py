"""Who runs a job, and whether that process still runs.

A running job records its worker as ``[role@]host:pid:start.machine`` (:func:`process_name`):
on the same host and PID namespace that is enough to tell for certain whether the process is
gone, even after its PID was reused; from elsewhere only the heartbeat can tell
(:func:`holder_gone`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from ..inventory.models import Job
from .states import RUNNING

__all__ = [
    "WorkerId",
    "holder_gone",
    "parse_worker",
    "process_alive",
    "process_name",
    "worker_name",
]


@dataclass(frozen=True, slots=True)
class WorkerId:
    """Who runs a job, as :func:`process_name` wrote it.

    Attributes:
        role: ``cli`` for a command that runs the job in-process; empty for a worker.
        host: the host name.
        pid: the process id.
        start: the process's start time (``/proc/PID/stat`` field 22, clock ticks since
            boot), or None where there is no ``/proc``.
        machine: which kernel and PID namespace ``pid`` belongs to (a digest of the boot id
            and the PID namespace), or None: two containers may share a host name, never
            both.
    """

    role: str
    host: str
    pid: int
    start: int | None
    machine: str | None


_WORKER = re.compile(
    r"(?:(?P<role>[^@:]+)@)?(?P<host>[^@:]+):(?P<pid>\d+)(?::(?P<start>\d+)\.(?P<machine>\w+))?"
)


def _proc_start(pid: int) -> int | None:
    """Returns: a process's start time in clock ticks since boot, or None when there is no
    such process (or no ``/proc``). A zombie counts as gone: it runs nothing any more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces and parentheses itself
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


@cache
def _this_machine() -> str | None:
    """Returns: this kernel's boot and PID namespace, as :attr:`WorkerId.machine`."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot} {ns}".encode()).hexdigest()[:12]


def worker_name() -> str:
    """Returns: ``host:pid`` of this process (a scheduler's name in its lease)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_name(role: str = "") -> str:
    """Returns: ``[role@]host:pid:start.machine`` of this process, as recorded on the jobs
    it claims (``host:pid`` where there is no ``/proc``): enough for :func:`process_alive`
    to tell on this host whether the process still runs, even after its PID was reused.

    Args:
        role: ``cli`` for a command that runs a job in-process; empty for a worker.
    """
    pid = os.getpid()
    name = f"{role}@" if role else ""
    name += f"{socket.gethostname()}:{pid}"
    start, machine = _proc_start(pid), _this_machine()
    if start is not None and machine is not None:
        name += f":{start}.{machine}"
    return name


def parse_worker(name: str | None) -> WorkerId | None:
    """Returns: the parts of a job's ``worker``, or None when it is not one :func:`process_name`
    wrote (an older inventory's ``host:pid`` parses, without a start time)."""
    m = _WORKER.fullmatch(name or "")
    if m is None:
        return None
    start = m["start"]
    return WorkerId(
        m["role"] or "", m["host"], int(m["pid"]), int(start) if start else None, m["machine"]
    )


def process_alive(worker: WorkerId) -> bool | None:
    """Tell whether a job's process still runs, where this process can see it.

    Returns:
        True or False for a process of this host (the same kernel and PID namespace) that
        recorded its start time: False when no process has its PID now, or when the one
        that has it started at another time (the PID was reused). None when this cannot be
        told from here: another host, or a worker that recorded no start time.
    """
    if worker.start is None or worker.machine is None:
        return None
    if worker.host != socket.gethostname() or worker.machine != _this_machine():
        return None
    return _proc_start(worker.pid) == worker.start


def holder_gone(job: Job, stale_after: timedelta, now: datetime | None = None) -> str | None:
    """Tell whether a running job's worker is dead.

    Args:
        job: the job.
        stale_after: how long a heartbeat may be silent before its worker counts as dead,
            when its process cannot be seen from here.
        now: the time to judge at.

    Returns:
        Why the job's process is gone (one line), or None while it may be running (or the
        job is not running).
    """
    if job.state not in RUNNING:
        return None
    who = parse_worker(job.worker)
    if who is not None and (alive := process_alive(who)) is not None:
        # what this host sees is certain; a heartbeat may lag behind a paused process
        return None if alive else f"process {who.pid} on {who.host} is gone"
    if job.heartbeat is None:
        return f"no heartbeat from {job.worker}"
    silent = (now or _now()) - job.heartbeat
    if silent < stale_after:
        return None
    return f"no heartbeat from {job.worker} for {silent.total_seconds():.0f} s"


def _now() -> datetime:
    return datetime.now(UTC)
