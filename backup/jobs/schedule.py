"""Schedules: a policy's next run times, and the scheduler's lease name. Light on purpose:
``backup schedule`` and ``backup status`` import it (the tick is :mod:`.scheduler`).

Invariant: run times depend only on (cron text, zone, instant), so they are computed once
per distinct triple: a file of a thousand policies sharing a few schedules costs a few
searches, not a thousand.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Protocol

from ..cron import parse_cron

__all__ = ["LEASE", "Scheduled", "latest_slot", "next_runs"]

#: the inventory lease that makes one scheduler the active one
LEASE = "scheduler"


class Scheduled(Protocol):
    """What a schedule is read from: a Policy, or its schedule fields alone
    (:class:`~backup.policy.PolicySchedule`)."""

    @property
    def schedule(self) -> str | None: ...

    @property
    def timezone(self) -> str: ...


@functools.lru_cache(maxsize=1024)
def _next_runs(schedule: str, timezone: str, after: datetime, n: int) -> tuple[datetime, ...]:
    return tuple(parse_cron(schedule).next_runs(after, timezone, n))


@functools.lru_cache(maxsize=1024)
def _latest(schedule: str, timezone: str, at: datetime) -> datetime:
    return parse_cron(schedule).prev_at_or_before(at, timezone)


def next_runs(policy: Scheduled, after: datetime, n: int = 3) -> list[datetime]:
    """Returns: the next ``n`` run times of a policy after ``after`` (UTC), or [] when the
    policy has no schedule."""
    if not policy.schedule:
        return []
    return list(_next_runs(policy.schedule, policy.timezone, after, n))


def latest_slot(policy: Scheduled, at: datetime) -> datetime | None:
    """Returns: the policy's latest run time at or before ``at`` (UTC), or None when it has
    no schedule."""
    if not policy.schedule:
        return None
    return _latest(policy.schedule, policy.timezone, at)
