"""Schedules: a policy's next run times, and the scheduler's lease name. Light on purpose:
``backup schedule`` and ``backup status`` import it (the tick is :mod:`.scheduler`)."""

from __future__ import annotations

from datetime import datetime

from ..cron import parse_cron
from ..policy import Policy

__all__ = ["LEASE", "next_runs"]

#: the inventory lease that makes one scheduler the active one
LEASE = "scheduler"


def next_runs(policy: Policy, after: datetime, n: int = 3) -> list[datetime]:
    """Returns: the next ``n`` run times of a policy after ``after`` (UTC), or [] when the
    policy has no schedule."""
    if not policy.schedule:
        return []
    return parse_cron(policy.schedule).next_runs(after, policy.timezone, n)
